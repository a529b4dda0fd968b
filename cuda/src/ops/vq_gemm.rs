//! The VQ decoder's convolutions and mid-block attention as cuBLAS GEMMs (see `vq.rs` for the
//! layouts and why a 3x3 conv is 3 shifted GEMMs).

use half::f16;

use super::vq::{conv_input_rows, int, ConvShape};
use crate::device::{blocks_for, DType, DevSlice, Device, Gemm, LaunchConfig};
use crate::error::CudaError;

/// 3x3 conv, stride 1, zero padding 1, no bias, as 3 accumulated GEMMs (module doc of
/// `vq.rs`): `out` f32 `[batch, h, w + 2, cout]` ([`super::vq::MapF32::conv_out`]) from `input`
/// f16 `[batch, conv_input_rows(h, w), 3 cin]` (3-tap) and `weights` f16 `[9, cin, cout]`.
pub fn conv3x3<D: Device>(
    d: &D,
    s: &ConvShape,
    input: DevSlice<f16>,
    weights: DevSlice<f16>,
    out: DevSlice<f32>,
) -> Result<(), CudaError> {
    const CTX: &str = "conv3x3";
    let (wp, rows) = conv_buffers(CTX, s, input, weights, out)?;
    let k = 3 * s.cin;
    for ky in 0..3 {
        // Kernel row ky reads the 3-tap rows shifted by ky whole map rows; the last image's
        // last output row reads row (h+1)(w+2) + w - 1, inside its block.
        let shift = ky * wp * k;
        d.gemm(&Gemm {
            lda: k,
            beta: if ky == 0 { 0.0 } else { 1.0 },
            batch: s.batch,
            stride_a: rows * k,
            stride_b: 0,
            stride_c: s.h * wp * s.cout,
            ..Gemm::dense(
                s.h * wp,
                s.cout,
                k,
                input.addr() + (shift * 2) as u64,
                weights.at(CTX, ky * k * s.cout, k * s.cout)?.addr(),
                out.addr(),
                DType::F32,
            )
        })?;
    }
    Ok(())
}

/// Checks a 3x3 conv's buffers against `s` and gives its padded width `w + 2` and the input's
/// rows per image.
fn conv_buffers(
    ctx: &str,
    s: &ConvShape,
    input: DevSlice<f16>,
    weights: DevSlice<f16>,
    out: DevSlice<f32>,
) -> Result<(usize, usize), CudaError> {
    let (wp, rows) = (s.w + 2, conv_input_rows(s.h, s.w));
    input.require(ctx, "input", s.batch * rows * 3 * s.cin)?;
    weights.require(ctx, "weights", 9 * s.cin * s.cout)?;
    out.require(ctx, "out", s.batch * s.h * wp * s.cout)?;
    Ok((wp, rows))
}

/// How the VQ decoder runs its 3x3 convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Conv3x3 {
    /// [`conv3x3`]: 3 cuBLAS GEMMs (the default until the other is measured on hardware).
    #[default]
    Cublas,
    /// [`conv3x3_mma`] where the shape fits ([`conv3x3_mma_fits`]) and the buffers are aligned,
    /// else [`conv3x3`].
    Mma,
}

/// `s`'s convolution the way `how` says (same contract as [`conv3x3`]).
pub fn conv3x3_with<D: Device>(
    d: &D,
    how: Conv3x3,
    s: &ConvShape,
    input: DevSlice<f16>,
    weights: DevSlice<f16>,
    out: DevSlice<f32>,
) -> Result<(), CudaError> {
    match how {
        Conv3x3::Mma if conv3x3_mma_fits(s) && mma_aligned(input, weights, out) => {
            conv3x3_mma(d, s, input, weights, out)
        }
        _ => conv3x3(d, s, input, weights, out),
    }
}

/// [`conv3x3`] as one implicit GEMM on the tensor cores (`vq_conv.cu`: mma.sync, f32
/// accumulation, the output written once): the same contract, for `cin` a multiple of 16 and
/// `cout` a multiple of 8 (every released VQ decoder's convolution but the image's, 3 channels).
pub fn conv3x3_mma<D: Device>(
    d: &D,
    s: &ConvShape,
    input: DevSlice<f16>,
    weights: DevSlice<f16>,
    out: DevSlice<f32>,
) -> Result<(), CudaError> {
    const CTX: &str = "vq_conv3x3_mma";
    if !conv3x3_mma_fits(s) {
        return Err(CudaError::call(
            CTX,
            format!(
                "cin {} and cout {} (the kernel takes cin % 16 == 0, cout % 8 == 0)",
                s.cin, s.cout
            ),
        ));
    }
    if !mma_aligned(input, weights, out) {
        return Err(CudaError::call(
            CTX,
            "input and weights must be 16-byte aligned, out 8-byte aligned (16-byte and \
             8-byte accesses)",
        ));
    }
    let (wp, rows) = conv_buffers(CTX, s, input, weights, out)?;
    let rows_out = s.h * wp;
    // Output rows are 64-bit in the kernel; 32 bits here keep the grid within its x extent.
    int(s.batch * rows_out)?;
    let grid = [
        blocks_for(s.batch * rows_out, CONV_MMA_ROWS),
        blocks_for(s.cout, CONV_MMA_COLS),
        1,
    ];
    let args = [
        out.into(),
        input.into(),
        weights.into(),
        int(rows_out)?,
        int(s.batch)?,
        int(wp)?,
        int(rows)?,
        int(s.cin)?,
        int(s.cout)?,
    ];
    d.launch(CTX, &LaunchConfig::new(grid, [128, 1, 1]), &args)
}

/// Output rows and channels of a `vq_conv3x3_mma` block (`VQ_CONV_BM`, `VQ_CONV_BN`).
const CONV_MMA_ROWS: usize = 128;
const CONV_MMA_COLS: usize = 32;

/// Whether [`conv3x3_mma`] takes this shape.
pub fn conv3x3_mma_fits(s: &ConvShape) -> bool {
    s.cin.is_multiple_of(16) && s.cout.is_multiple_of(8) && s.cin > 0 && s.cout > 0
}

/// Whether the buffers suit [`conv3x3_mma`]'s 16-byte loads and 8-byte stores.
fn mma_aligned(input: DevSlice<f16>, weights: DevSlice<f16>, out: DevSlice<f32>) -> bool {
    input.addr().is_multiple_of(16)
        && weights.addr().is_multiple_of(16)
        && out.addr().is_multiple_of(8)
}

/// 1x1 conv (no bias) over `rows` positions: `out` f32 `[rows, cout]` = `input` f16
/// `[rows, cin]` . `weights` f16 `[cin, cout]`.
pub fn conv1x1<D: Device>(
    d: &D,
    out: DevSlice<f32>,
    input: DevSlice<f16>,
    weights: DevSlice<f16>,
    rows: usize,
    cin: usize,
    cout: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "conv1x1";
    out.require(CTX, "out", rows * cout)?;
    input.require(CTX, "input", rows * cin)?;
    weights.require(CTX, "weights", cin * cout)?;
    d.gemm(&Gemm::dense(
        rows,
        cout,
        cin,
        input.addr(),
        weights.addr(),
        out.addr(),
        DType::F32,
    ))
}

/// Attention scores per image: `scores` f32 `[batch, hw, hw]` = `scale * q . k^T`, with q and k
/// read from `qkv` f16 `[batch, hw, 3c]` (each row q | k | v).
pub fn attention_scores<D: Device>(
    d: &D,
    scores: DevSlice<f32>,
    qkv: DevSlice<f16>,
    batch: usize,
    hw: usize,
    c: usize,
    scale: f32,
) -> Result<(), CudaError> {
    const CTX: &str = "attention_scores";
    scores.require(CTX, "scores", batch * hw * hw)?;
    qkv.require(CTX, "qkv", batch * hw * 3 * c)?;
    let (q, k) = (qkv.addr(), qkv.at(CTX, c, 0)?.addr());
    d.gemm(&Gemm {
        lda: 3 * c,
        ldb: 3 * c,
        b_trans: true,
        alpha: scale,
        batch,
        stride_a: hw * 3 * c,
        stride_b: hw * 3 * c,
        stride_c: hw * hw,
        ..Gemm::dense(hw, hw, c, q, k, scores.addr(), DType::F32)
    })
}

/// Attention output per image: `out` f16 `[batch, hw, c]` = `probs` f16 `[batch, hw, hw]` . v,
/// with v read from `qkv` f16 `[batch, hw, 3c]`.
pub fn attention_values<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    probs: DevSlice<f16>,
    qkv: DevSlice<f16>,
    batch: usize,
    hw: usize,
    c: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "attention_values";
    out.require(CTX, "out", batch * hw * c)?;
    probs.require(CTX, "probs", batch * hw * hw)?;
    qkv.require(CTX, "qkv", batch * hw * 3 * c)?;
    let v = qkv.at(CTX, 2 * c, 0)?.addr();
    d.gemm(&Gemm {
        ldb: 3 * c,
        batch,
        stride_a: hw * hw,
        stride_b: hw * 3 * c,
        stride_c: hw * c,
        ..Gemm::dense(hw, c, hw, probs.addr(), v, out.addr(), DType::F16)
    })
}
