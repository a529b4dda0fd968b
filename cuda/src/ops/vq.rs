//! Launch wrappers of the VQ decoder (kernels/vq.cu); its convolutions and attention as GEMMs
//! are in `vq_gemm.rs`.
//!
//! Layouts (NHWC, `batch` images of `h x w` positions, `C` channels):
//! - f32 feature maps ([`MapF32`]): the residual stream (compact, pitch `w`) and every GEMM output
//!   (a 3x3 conv writes rows of pitch `w + 2`, the last two positions junk);
//! - f16 GEMM inputs: compact `[batch, h*w, C]`, or for a 3x3 conv the zero-padded map in the
//!   3-tap layout `[batch, conv_input_rows(h, w), 3C]`: padded position `(y+1)(w+2) + (x+1)`
//!   holds (y, x), and row `j` holds positions `j, j+1, j+2` (see [`conv_input_rows`]);
//! - conv weights f16: 3x3 as `[9, cin, cout]` (tap `ky*3 + kx`), 1x1 as `[cin, cout]`.
//!
//! A 3x3 conv is 3 GEMMs accumulated into one f32 output, one per kernel row: output row
//! `y(w+2) + x` of tap (ky, kx) reads padded position `(y+ky)(w+2) + x+kx`, so with the 3-tap
//! rows the three kx taps of one ky are one GEMM with `K = 3 cin` over the input shifted by
//! `ky(w+2)` rows (`beta` 0 for ky 0, 1 after), and the weights of ky are the contiguous
//! `[3 cin, cout]` block of taps `3ky..3ky+3`. The input is 3x the padded map (the writers store
//! each value three times), against 9x for a full im2col (2.4 GB for 16 images at 256 px); the
//! f32 output is read and written 3 times instead of 9 with one GEMM per tap. The price: the
//! two junk columns per row (`2 / (w+2)` extra work) that the next kernel skips.

use half::f16;

use crate::device::{blocks_for, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

pub use super::vq_map::MapF32;

/// Block size of every VQ kernel (the reduction kernels assume exactly this).
pub const THREADS: u32 = 256;
/// Grid cap of the elementwise kernels (they loop over the rest).
const MAX_BLOCKS: u32 = 8192;
/// Most slices per GroupNorm group in the statistics pass (sizes the `partial` scratch).
pub const MAX_STAT_CHUNKS: usize = 64;
/// Values per statistics slice below which no further split is made.
const STAT_CHUNK_VALUES: usize = 4096;
const F16: usize = 2;
const F32: usize = 4;

/// Rows per image of a 3x3 conv's 3-tap input for an `h x w` map (`3 c` values each): the
/// padded map's `(h+2)(w+2)` positions, enough for the last output row's ky = 2 (row
/// `(h+1)(w+2) + w - 1`); its kx = 1, 2 parts are the 2 zero positions past the padded map.
pub fn conv_input_rows(h: usize, w: usize) -> usize {
    (h + 2) * (w + 2)
}

/// f16 values per image that a writer of an `h x w` map of `c` channels stores: the 3-tap conv
/// input when `pad`, else compact `[h*w, c]`; and the positions its kernel visits (the padded
/// map and the 2 positions past it, or `h*w`).
fn f16_input_layout(h: usize, w: usize, c: usize, pad: bool) -> (usize, usize) {
    if pad {
        (conv_input_rows(h, w) * 3 * c, conv_input_rows(h, w) + 2)
    } else {
        (h * w * c, h * w)
    }
}

/// GroupNorm parameters and scratch: `gamma`, `beta` f32 `[c]`, `stats` f32
/// `[batch, groups, 2]`, `partial` f32 `[batch, groups, MAX_STAT_CHUNKS, 3]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormArgs {
    pub gamma: DevSlice<f32>,
    pub beta: DevSlice<f32>,
    pub groups: usize,
    pub eps: f32,
    pub stats: DevSlice<f32>,
    pub partial: DevSlice<f32>,
    /// Apply swish (`x * sigmoid(x)`) after the affine.
    pub swish: bool,
}

/// Shape of a convolution: `batch` images of `h x w`, `cin -> cout` channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
}

pub(super) fn int(v: usize) -> Result<KArg, CudaError> {
    i32::try_from(v).map(KArg::I32).map_err(|_| {
        CudaError::call(
            "vq kernel arguments",
            format!("{v} does not fit a 32-bit kernel argument"),
        )
    })
}

fn flag(b: bool) -> KArg {
    KArg::I32(i32::from(b))
}

/// Grid of an elementwise kernel over `n` items (grid-stride beyond the cap).
fn grid_for(n: usize) -> [u32; 3] {
    [blocks_for(n, THREADS as usize).min(MAX_BLOCKS), 1, 1]
}

/// Launches an elementwise kernel over `n` items (32-bit indices in the kernel).
fn launch_elementwise<D: Device>(
    d: &D,
    name: &str,
    n: usize,
    args: &[KArg],
) -> Result<(), CudaError> {
    int(n)?;
    d.launch(name, &LaunchConfig::new(grid_for(n), [THREADS, 1, 1]), args)
}

/// Launches a per-image kernel: `n_img` items of each of `batch` images (image = blockIdx.y).
fn launch_per_image<D: Device>(
    d: &D,
    name: &str,
    batch: usize,
    n_img: usize,
    args: &[KArg],
) -> Result<(), CudaError> {
    int(n_img)?;
    let [x, ..] = grid_for(n_img);
    d.launch(
        name,
        &LaunchConfig::new([x, grid_dim(batch)?, 1], [THREADS, 1, 1]),
        args,
    )
}

/// A grid y or z extent (at most 65535).
fn grid_dim(n: usize) -> Result<u32, CudaError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= 65535)
        .ok_or_else(|| {
            CudaError::call(
                "vq kernel arguments",
                format!("{n} exceeds a grid's y/z extent (65535)"),
            )
        })
}

/// `rows` f32 `[n, dim]` divided in place by `max(||row||, 1e-12)` (`F.normalize`).
pub fn l2_normalize_rows<D: Device>(
    d: &D,
    rows: DevSlice<f32>,
    n: usize,
    dim: usize,
) -> Result<(), CudaError> {
    rows.require("vq_l2_normalize_rows", "rows", n * dim)?;
    let args = [rows.into(), int(n)?, int(dim)?];
    launch_elementwise(d, "vq_l2_normalize_rows", n, &args)
}

/// `out` f16 `[n_tokens, dim]` = `codebook` f32 `[codebook_size, dim]` rows at `tokens` i32
/// `[n_tokens]` (ids clamped into the codebook).
pub fn codebook_gather<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    codebook: DevSlice<f32>,
    tokens: DevSlice<i32>,
    n_tokens: usize,
    dim: usize,
    codebook_size: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "vq_codebook_gather";
    out.require(CTX, "out", n_tokens * dim)?;
    codebook.require(CTX, "codebook", codebook_size * dim)?;
    tokens.require(CTX, "tokens", n_tokens)?;
    let args = [
        out.into(),
        codebook.into(),
        tokens.into(),
        int(n_tokens)?,
        int(dim)?,
        int(codebook_size)?,
    ];
    launch_elementwise(d, "vq_codebook_gather", n_tokens * dim, &args)
}

/// Slices per group of the statistics pass for `map`.
fn stat_chunks(map: &MapF32, groups: usize) -> usize {
    let values = map.h * map.w * (map.c / groups.max(1));
    values.div_ceil(STAT_CHUNK_VALUES).clamp(1, MAX_STAT_CHUNKS)
}

/// `out` f16 = GroupNorm(`map`) with `gn`'s affine (and swish), f32 statistics (two-pass per
/// slice, merged with Chan's update). `pad`: write the zero-padded 3-tap 3x3 conv input of the
/// map (borders included), else compact `[batch, h*w, c]`.
pub fn group_norm_f16<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    map: &MapF32,
    gn: &GroupNormArgs,
    pad: bool,
) -> Result<(), CudaError> {
    const CTX: &str = "vq group norm";
    if gn.groups == 0 || !map.c.is_multiple_of(gn.groups) {
        return Err(CudaError::call(
            CTX,
            format!("{} channels in {} groups", map.c, gn.groups),
        ));
    }
    let (src, [h, w, pitch, stride, c]) = map.args()?;
    gn.gamma.require(CTX, "gamma", map.c)?;
    gn.beta.require(CTX, "beta", map.c)?;
    gn.stats.require(CTX, "stats", map.batch * gn.groups * 2)?;
    let partial = map.batch * gn.groups * MAX_STAT_CHUNKS * 3;
    gn.partial.require(CTX, "partial", partial)?;
    let chunks = stat_chunks(map, gn.groups);
    int(map.h * map.w * map.c)?; // one image's values, indexed in 32 bits
    let grid = [chunks as u32, grid_dim(gn.groups)?, grid_dim(map.batch)?];
    let partial_args = [
        gn.partial.into(),
        src[0],
        src[1],
        h,
        w,
        pitch,
        stride,
        c,
        int(gn.groups)?,
    ];
    d.launch(
        "vq_group_stats_partial",
        &LaunchConfig::new(grid, [THREADS, 1, 1]),
        &partial_args,
    )?;
    let n = map.batch * gn.groups;
    let finalize_args = [
        gn.stats.into(),
        gn.partial.into(),
        int(n)?,
        int(chunks)?,
        KArg::F32(gn.eps),
    ];
    launch_elementwise(d, "vq_group_stats_finalize", n, &finalize_args)?;
    let (len, positions) = f16_input_layout(map.h, map.w, map.c, pad);
    out.require(CTX, "out", map.batch * len)?;
    int(len)?;
    let args = [
        out.into(),
        src[0],
        src[1],
        gn.stats.into(),
        gn.gamma.into(),
        gn.beta.into(),
        h,
        w,
        pitch,
        stride,
        c,
        int(gn.groups)?,
        flag(pad),
        flag(gn.swish),
    ];
    let (name, per_thread) = if map.vec8(out) {
        ("vq_group_norm_f16_x8", 8)
    } else {
        ("vq_group_norm_f16", 1)
    };
    launch_per_image(d, name, map.batch, positions * map.c / per_thread, &args)
}

/// `out` f16 = `map` nearest-upsampled by `factor` (1 or 2), as the zero-padded 3-tap 3x3 conv
/// input when `pad`, else compact (factor 1 without pad converts f32 to f16).
pub fn upsample_pad_f16<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    map: &MapF32,
    factor: usize,
    pad: bool,
) -> Result<(), CudaError> {
    let (src, [h, w, pitch, stride, c]) = map.args()?;
    let (fh, fw) = (map.h * factor, map.w * factor);
    let (len, positions) = f16_input_layout(fh, fw, map.c, pad);
    out.require("vq_upsample_pad_f16", "out", map.batch * len)?;
    int(len)?;
    let args = [
        out.into(),
        src[0],
        src[1],
        h,
        w,
        pitch,
        stride,
        c,
        int(factor)?,
        flag(pad),
    ];
    let (name, per_thread) = if map.vec8(out) {
        ("vq_upsample_pad_f16_x8", 8)
    } else {
        ("vq_upsample_pad_f16", 1)
    };
    launch_per_image(d, name, map.batch, positions * map.c / per_thread, &args)
}

/// `out` f32 = `map` (+ its bias) + `residual` (compact NHWC, may be `out`), compact NHWC, or
/// NCHW `[batch, c, h, w]` when `nchw`. `out` must not overlap `map` unless `map` is compact.
pub fn bias_residual<D: Device>(
    d: &D,
    out: DevSlice<f32>,
    map: &MapF32,
    residual: Option<DevSlice<f32>>,
    nchw: bool,
) -> Result<(), CudaError> {
    const CTX: &str = "vq_bias_residual";
    let (src, [h, w, pitch, stride, c]) = map.args()?;
    let n = map.batch * map.h * map.w * map.c;
    out.require(CTX, "out", n)?;
    let residual = match residual {
        Some(r) => {
            r.require(CTX, "residual", n)?;
            r.into()
        }
        None => KArg::Ptr(0),
    };
    let args = [
        out.into(),
        src[0],
        src[1],
        residual,
        h,
        w,
        pitch,
        stride,
        c,
        flag(nchw),
    ];
    launch_per_image(
        d,
        "vq_bias_residual",
        map.batch,
        map.h * map.w * map.c,
        &args,
    )
}

/// `out` f16 `[rows, cols]` = `src` f32 `[rows, cols]` + `bias` f32 `[cols]`.
pub fn bias_f16<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    src: DevSlice<f32>,
    bias: DevSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "vq_bias_f16";
    out.require(CTX, "out", rows * cols)?;
    src.require(CTX, "src", rows * cols)?;
    bias.require(CTX, "bias", cols)?;
    let args = [out.into(), src.into(), bias.into(), int(rows)?, int(cols)?];
    launch_elementwise(d, "vq_bias_f16", rows * cols, &args)
}

/// `out` f16 `[rows, cols]` = row-wise softmax of `scores` f32 `[rows, cols]` (f32 math).
pub fn softmax_rows_f16<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    scores: DevSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "vq_softmax_rows_f16";
    int(rows)?; // grid.x holds up to 2^31 - 1 blocks
    out.require(CTX, "out", rows * cols)?;
    scores.require(CTX, "scores", rows * cols)?;
    let grid = [rows as u32, 1, 1];
    let args = [out.into(), scores.into(), int(cols)?];
    d.launch(
        "vq_softmax_rows_f16",
        &LaunchConfig::new(grid, [THREADS, 1, 1]),
        &args,
    )
}

/// Bytes of `n` f32 values (for address arithmetic by callers).
pub const fn f32_bytes(n: usize) -> usize {
    n * F32
}

/// Bytes of `n` f16 values.
pub const fn f16_bytes(n: usize) -> usize {
    n * F16
}
