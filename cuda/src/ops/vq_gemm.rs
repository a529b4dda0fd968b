//! The VQ decoder's convolutions and mid-block attention as cuBLAS GEMMs (see `vq.rs` for the
//! layouts and why a 3x3 conv is 9 shifted GEMMs).

use super::vq::{padded_rows, ConvShape, F16};
use crate::device::{DType, Device, Gemm};
use crate::error::CudaError;

/// 3x3 conv, stride 1, zero padding 1, no bias, as 9 accumulated GEMMs (module doc):
/// `out` f32 `[batch, h, w + 2, cout]` ([`super::vq::MapF32::conv_out`]) from `input` f16
/// `[batch, padded_rows(h, w), cin]` and `weights` f16 `[9, cin, cout]`.
pub fn conv3x3<D: Device>(
    d: &D,
    s: &ConvShape,
    input: u64,
    weights: u64,
    out: u64,
) -> Result<(), CudaError> {
    let wp = s.w + 2;
    for tap in 0..9 {
        let (ky, kx) = (tap / 3, tap % 3);
        let shift = (ky * wp + kx) * s.cin;
        d.gemm(&Gemm {
            lda: s.cin,
            beta: if tap == 0 { 0.0 } else { 1.0 },
            batch: s.batch,
            stride_a: padded_rows(s.h, s.w) * s.cin,
            stride_b: 0,
            stride_c: s.h * wp * s.cout,
            ..Gemm::dense(
                s.h * wp,
                s.cout,
                s.cin,
                input + (shift * F16) as u64,
                weights + (tap * s.cin * s.cout * F16) as u64,
                out,
                DType::F32,
            )
        })?;
    }
    Ok(())
}

/// 1x1 conv (no bias) over `rows` positions: `out` f32 `[rows, cout]` = `input` f16
/// `[rows, cin]` . `weights` f16 `[cin, cout]`.
pub fn conv1x1<D: Device>(
    d: &D,
    out: u64,
    input: u64,
    weights: u64,
    rows: usize,
    cin: usize,
    cout: usize,
) -> Result<(), CudaError> {
    d.gemm(&Gemm::dense(
        rows,
        cout,
        cin,
        input,
        weights,
        out,
        DType::F32,
    ))
}

/// Attention scores per image: `scores` f32 `[batch, hw, hw]` = `scale * q . k^T`, with q and k
/// read from `qkv` f16 `[batch, hw, 3c]` (each row q | k | v).
pub fn attention_scores<D: Device>(
    d: &D,
    scores: u64,
    qkv: u64,
    batch: usize,
    hw: usize,
    c: usize,
    scale: f32,
) -> Result<(), CudaError> {
    d.gemm(&Gemm {
        lda: 3 * c,
        ldb: 3 * c,
        b_trans: true,
        alpha: scale,
        batch,
        stride_a: hw * 3 * c,
        stride_b: hw * 3 * c,
        stride_c: hw * hw,
        ..Gemm::dense(hw, hw, c, qkv, qkv + (c * F16) as u64, scores, DType::F32)
    })
}

/// Attention output per image: `out` f16 `[batch, hw, c]` = `probs` f16 `[batch, hw, hw]` . v,
/// with v read from `qkv` f16 `[batch, hw, 3c]`.
pub fn attention_values<D: Device>(
    d: &D,
    out: u64,
    probs: u64,
    qkv: u64,
    batch: usize,
    hw: usize,
    c: usize,
) -> Result<(), CudaError> {
    d.gemm(&Gemm {
        ldb: 3 * c,
        batch,
        stride_a: hw * hw,
        stride_b: hw * 3 * c,
        stride_c: hw * c,
        ..Gemm::dense(
            hw,
            c,
            hw,
            probs,
            qkv + (2 * c * F16) as u64,
            out,
            DType::F16,
        )
    })
}
