//! Launch wrapper of the weight-only int8 GEMM (`kernels/gemm_w8a16.cu`, which says why it is
//! ours and not cuBLAS's): `out[rows, n] = a[rows, k] . dequant(w)`, f16 activations, int8
//! weights with one f32 scale per output channel, f32 accumulation.
//!
//! Layouts (row-major, packed): `a` f16 `[rows, k]`; weights i8 `[n, ldw]`, output-channel-major
//! with `ldw` = [`row_stride`]`(k)` (rows zero-padded, so every 16-byte load stays inside its
//! row), `scale` f32 `[n]`; `out` f16 or f32 `[rows, n]`. Any `k >= 1` and any `a` work: the
//! kernel stages activations in shared memory with 16-byte loads when `a` is 16-byte aligned and
//! `k % 8 == 0`, one f16 at a time otherwise. The weights must be 16-byte aligned (device
//! allocations are).

use half::f16;

use super::gpt::{check_aligned, check_rows, i32_arg};
use crate::device::{blocks_for, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Int8 weights are read 16 bytes (16 values) at a time.
pub const VECTOR_BYTES: usize = 16;
/// Output channels of one warp; must equal `W8A16_CH` in gemm_w8a16.cu.
const CHANNELS_PER_WARP: usize = 2;
/// Warps per block: 8 channels a block, so even a 768-wide GEMM spreads over ~100 blocks (the
/// decode GEMMs are bound by reading weights, which needs many SMs streaming).
const WARPS: usize = 4;
/// Row-group sizes of the kernels (`gemm_w8a16_r<R>`), smallest first.
const ROW_GROUPS: [usize; 4] = [2, 4, 8, 16];

/// The padded row length (in int8 values) of a weight matrix with `k` inputs.
pub fn row_stride(k: usize) -> usize {
    k.next_multiple_of(VECTOR_BYTES)
}

/// One GEMM's int8 weights on the device.
#[derive(Clone, Copy, Debug)]
pub struct Int8Matrix {
    /// i8 `[n, row_stride(k)]`.
    pub w: DevSlice<i8>,
    /// f32 `[n]`: output channel c's weights are `w[c, :] * scale[c]`.
    pub scale: DevSlice<f32>,
    /// Inputs (the GEMM's k).
    pub k: usize,
    /// Output channels (the GEMM's n).
    pub n: usize,
}

/// Where the GEMM writes, and how.
#[derive(Clone, Copy, Debug)]
pub enum W8Out {
    /// `out = a . W`, rounded once to f16.
    F16(DevSlice<f16>),
    /// `out = a . W`, or `out += a . W` with `accumulate` (the residual add of the decode step).
    F32 {
        out: DevSlice<f32>,
        accumulate: bool,
    },
}

/// `out[rows, n] (+)= a[rows, k] . (w * scale)^T` (module doc for layouts).
pub fn gemm_w8a16<D: Device>(
    d: &D,
    out: W8Out,
    a: DevSlice<f16>,
    w: &Int8Matrix,
    rows: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "gemm_w8a16";
    if rows == 0 || w.n == 0 {
        return Ok(());
    }
    if w.k == 0 {
        return Err(CudaError::call(CTX, "k = 0: a GEMM with no inputs"));
    }
    let ldw = row_stride(w.k);
    w.w.require(CTX, "weights", w.n * ldw)?;
    w.scale.require(CTX, "scale", w.n)?;
    a.require(CTX, "a", rows * w.k)?;
    check_aligned(CTX, &[("weights", w.w.addr())])?;
    let (out_ptr, accumulate, out_f32) = match out {
        W8Out::F16(o) => {
            o.require(CTX, "out", rows * w.n)?;
            (KArg::from(o), false, 0)
        }
        W8Out::F32 { out, accumulate } => {
            out.require(CTX, "out", rows * w.n)?;
            (KArg::from(out), accumulate, 1)
        }
    };
    let group = ROW_GROUPS
        .iter()
        .copied()
        .find(|&g| g >= rows)
        .unwrap_or(ROW_GROUPS[ROW_GROUPS.len() - 1]);
    let row_groups = rows.div_ceil(group);
    check_rows(CTX, row_groups)?;
    let a_vec = a.addr() % 16 == 0 && w.k % 8 == 0;
    let args = [
        out_ptr,
        a.into(),
        w.w.into(),
        w.scale.into(),
        i32_arg(CTX, "rows", rows)?,
        i32_arg(CTX, "n", w.n)?,
        i32_arg(CTX, "k", w.k)?,
        i32_arg(CTX, "ldw", ldw)?,
        KArg::I32(accumulate as i32),
        KArg::I32(out_f32),
        KArg::I32(a_vec as i32),
    ];
    let grid = [
        blocks_for(w.n, WARPS * CHANNELS_PER_WARP),
        row_groups as u32,
        1,
    ];
    let block = [(WARPS * 32) as u32, 1, 1];
    d.launch(
        &format!("gemm_w8a16_r{group}"),
        &LaunchConfig::new(grid, block),
        &args,
    )
}
