//! Launch wrapper of the decode step's weight-streaming GEMM (`kernels/decode_gemm.cu`, which
//! says why it is ours and not cuBLAS's): `out[rows, n] = in[rows, k] . W`, f16 activations,
//! int8 weights with one f32 scale per output channel (W8A16) or f16 weights (W16A16), f32
//! accumulation; optionally RMSNorm fused into the prologue ([`DecodeInput::Norm`]) and SwiGLU
//! into the epilogue ([`DecodeOut::SwiGlu`]).
//!
//! Layouts (row-major, packed): `a` f16 `[rows, k]` or `x` f32 `[rows, k]` with the norm weight
//! f32 `[k]`; weights `[n, ldw]`, output-channel-major with `ldw` = [`row_stride`]`(k)` (rows
//! zero-padded, so every 16-value load stays inside its row), int8 `scale` f32 `[n]`; `out` f16 or
//! f32 `[rows, n]`, or f16 `[rows, n / 2]` for SwiGLU, whose weight rows `2j` and `2j + 1` are the
//! w1 and w3 channels of hidden unit `j`. Any `k >= 1`, any `rows` (groups of up to 16 rows, each
//! streaming the weights again) and any `a` work: the kernel stages activations in shared memory
//! with 16-byte loads when `a` is 16-byte aligned and `k % 8 == 0`, one f16 at a time otherwise.
//! The weights must be 16-byte aligned (device allocations are).

use half::f16;

use super::gpt::{check_aligned, check_rows, i32_arg, rms_norm_threads};
use crate::device::{blocks_for, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Weights are read 16 values at a time (16 bytes of int8, 32 of f16).
pub const VECTOR: usize = 16;
/// Output channels of one warp; must equal `DG_CH` in decode_gemm.cu (even: a SwiGLU pair
/// stays in one warp).
const CHANNELS_PER_WARP: usize = 2;
/// Warps per block: 8 channels a block, so even a 768-wide GEMM spreads over ~100 blocks (the
/// decode GEMMs are bound by reading weights, which needs many SMs streaming).
const WARPS: usize = 4;
/// Row-group sizes of the kernels (`gemm_w8a16_r<R>`, `gemm_w16a16_r<R>`), smallest first.
const ROW_GROUPS: [usize; 4] = [2, 4, 8, 16];
/// Epilogue modes; must equal `DG_OUT_*` in decode_gemm.cu.
const OUT_F16: i32 = 0;
const OUT_F32: i32 = 1;
const OUT_F32_ADD: i32 = 2;
const OUT_SWIGLU: i32 = 3;

/// The padded row length (in values) of a weight matrix with `k` inputs.
pub fn row_stride(k: usize) -> usize {
    k.next_multiple_of(VECTOR)
}

/// One GEMM's weights on the device, `[n, row_stride(k)]` output-channel-major.
#[derive(Clone, Copy, Debug)]
pub enum DecodeWeights {
    /// i8 values; output channel c's weights are `w[c, :] * scale[c]` (f32 `[n]`).
    Int8 {
        w: DevSlice<i8>,
        scale: DevSlice<f32>,
    },
    F16(DevSlice<f16>),
}

/// A weight matrix: `k` inputs, `n` output channels.
#[derive(Clone, Copy, Debug)]
pub struct DecodeMatrix {
    pub w: DecodeWeights,
    pub k: usize,
    pub n: usize,
}

/// What the GEMM multiplies the weights with.
#[derive(Clone, Copy, Debug)]
pub enum DecodeInput {
    /// f16 activations `[rows, k]`.
    F16(DevSlice<f16>),
    /// `rmsnorm(x) * weight`, x f32 `[rows, k]`, weight f32 `[k]`: bit for bit the f16 values
    /// `ops::gpt::rms_norm` writes.
    Norm {
        x: DevSlice<f32>,
        weight: DevSlice<f32>,
        eps: f32,
    },
}

/// Where the GEMM writes, and how.
#[derive(Clone, Copy, Debug)]
pub enum DecodeOut {
    /// `out = in . W`, rounded once to f16.
    F16(DevSlice<f16>),
    /// `out = in . W`, or `out += in . W` with `accumulate` (the residual add of the decode step).
    F32 {
        out: DevSlice<f32>,
        accumulate: bool,
    },
    /// f16 `[rows, n / 2]`: `silu(h1) * h3` with `h1`, `h3` the f16-rounded outputs of weight
    /// rows `2j`, `2j + 1` (what `ops::gpt::swiglu` gives from the f16 GEMM output).
    SwiGlu(DevSlice<f16>),
}

/// `out (+)= in . W^T` for weights `w` `[n, ldw]` (module doc for layouts).
pub fn decode_gemm<D: Device>(
    d: &D,
    out: DecodeOut,
    input: DecodeInput,
    m: &DecodeMatrix,
    rows: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "decode_gemm";
    if rows == 0 || m.n == 0 {
        return Ok(());
    }
    if m.k == 0 {
        return Err(CudaError::call(CTX, "k = 0: a GEMM with no inputs"));
    }
    let ldw = row_stride(m.k);
    let (name, w, scale) = match m.w {
        DecodeWeights::Int8 { w, scale } => {
            w.require(CTX, "weights", m.n * ldw)?;
            scale.require(CTX, "scale", m.n)?;
            ("gemm_w8a16", w.addr(), KArg::from(scale))
        }
        DecodeWeights::F16(w) => {
            w.require(CTX, "weights", m.n * ldw)?;
            ("gemm_w16a16", w.addr(), KArg::Ptr(0))
        }
    };
    check_aligned(CTX, &[("weights", w)])?;
    let null = KArg::Ptr(0);
    let (a, x, nw, eps, norm_threads, a_vec) = match input {
        DecodeInput::F16(a) => {
            a.require(CTX, "a", rows * m.k)?;
            let a_vec = a.addr() % 16 == 0 && m.k.is_multiple_of(8);
            (a.into(), null, null, 0.0, 0, a_vec)
        }
        DecodeInput::Norm { x, weight, eps } => {
            x.require(CTX, "x", rows * m.k)?;
            weight.require(CTX, "norm weight", m.k)?;
            let threads = rms_norm_threads(m.k) as i32;
            (null, x.into(), weight.into(), eps, threads, false)
        }
    };
    let (out_ptr, mode) = match out {
        DecodeOut::F16(o) => {
            o.require(CTX, "out", rows * m.n)?;
            (KArg::from(o), OUT_F16)
        }
        DecodeOut::F32 { out, accumulate } => {
            out.require(CTX, "out", rows * m.n)?;
            (
                KArg::from(out),
                if accumulate { OUT_F32_ADD } else { OUT_F32 },
            )
        }
        DecodeOut::SwiGlu(o) => {
            if !m.n.is_multiple_of(2) {
                return Err(CudaError::call(
                    CTX,
                    format!("SwiGLU output from n = {} channels: needs w1/w3 pairs", m.n),
                ));
            }
            o.require(CTX, "out", rows * m.n / 2)?;
            (KArg::from(o), OUT_SWIGLU)
        }
    };
    let group = ROW_GROUPS
        .iter()
        .copied()
        .find(|&g| g >= rows)
        .unwrap_or(ROW_GROUPS[ROW_GROUPS.len() - 1]);
    let row_groups = rows.div_ceil(group);
    check_rows(CTX, row_groups)?;
    let args = [
        out_ptr,
        a,
        x,
        nw,
        KArg::Ptr(w),
        scale,
        i32_arg(CTX, "rows", rows)?,
        i32_arg(CTX, "n", m.n)?,
        i32_arg(CTX, "k", m.k)?,
        i32_arg(CTX, "ldw", ldw)?,
        KArg::I32(mode),
        KArg::I32(a_vec as i32),
        KArg::I32(norm_threads),
        KArg::F32(eps),
    ];
    let grid = [
        blocks_for(m.n, WARPS * CHANNELS_PER_WARP),
        row_groups as u32,
        1,
    ];
    let block = [(WARPS * 32) as u32, 1, 1];
    d.launch(
        &format!("{name}_r{group}"),
        &LaunchConfig::new(grid, block),
        &args,
    )
}
