//! Launch wrapper of the fused, split-K decode attention (`decode_attention_fused` in
//! `kernels/attention.cu`): rotary on q and the new k, the KV-cache write at slot `pos`, and
//! attention over slots `0..=pos`, in one launch per layer, replacing
//! [`rotary_kv_write`](super::gpt::rotary_kv_write) + [`decode_attention`](super::gpt::decode_attention).
//!
//! Shape contract: qkv f16 `[rows, (heads + 2 kv_heads) * head_dim]`; caches f16 `[rows,
//! kv_heads, max_len, head_dim]`; cos/sin f32 `[max_len, head_dim]`; out f16 `[rows, heads *
//! head_dim]`; scratch: partials f32 `[rows, heads, splits, head_dim + 2]` and counters u32
//! `[rows, heads]` (see [`SplitScratch`]), `splits = ceil(max_len / ATTN_SPLIT_CHUNK)`. Grid
//! `(heads, rows, splits)`, sized by shape only, so one captured launch serves every `pos`. The
//! kernel file states the design (chunk size, the last block of each (row, head) merging).

use half::f16;

use super::gpt::{shape_args, AttnShape, LayerCache, Rotary};
use crate::device::{DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Cache slots per split; must equal `ATTN_SPLIT_CHUNK` in attention.cu.
pub const ATTN_SPLIT_CHUNK: usize = 64;
/// Must equal `ATTN_SPLIT_THREADS` in attention.cu.
const ATTN_SPLIT_THREADS: u32 = 256;
/// CUDA's limit on `gridDim.z`, where the split index goes.
const MAX_GRID_Z: usize = 65_535;

/// Whether the fused kernel takes this head size: each lane owns 8 dims and a key's lanes sit
/// in one warp, so `head_dim / 8` must be a power of two up to 32 (8, 16, 32, 64, 128, 256).
pub fn fused_attention_supports(head_dim: usize) -> bool {
    head_dim.is_multiple_of(8) && (head_dim / 8).is_power_of_two() && head_dim / 8 <= 32
}

/// Splits of a cache of `max_len` slots: `ceil(max_len / ATTN_SPLIT_CHUNK)`.
pub fn attn_splits(max_len: usize) -> usize {
    max_len.div_ceil(ATTN_SPLIT_CHUNK)
}

/// The fused attention's scratch: per (row, head, split) the partial softmax state (running
/// max, sum, `head_dim` unnormalised outputs; f32), and per (row, head) a u32 counter of the
/// splits done. The counters must be zero before the first launch (a fresh allocation is); each
/// launch leaves them zero again. One scratch serves every layer (the launches are ordered).
#[derive(Clone, Copy, Debug)]
pub struct SplitScratch {
    pub partials: DevSlice<f32>,
    pub counters: DevSlice<u32>,
}

impl SplitScratch {
    /// f32 elements of `partials` for shape `s`.
    pub fn partials_len(s: &AttnShape) -> usize {
        s.rows * s.heads * attn_splits(s.max_len) * (s.head_dim + 2)
    }

    /// u32 elements of `counters` for shape `s`.
    pub fn counters_len(s: &AttnShape) -> usize {
        s.rows * s.heads
    }
}

/// out = softmax(q . K[0..=pos]^T) . V[0..=pos] per (row, head), with q and the new k rotated
/// from `qkv` at `pos` (read from device memory) and k, v written into cache slot `pos`: the
/// results of [`rotary_kv_write`](super::gpt::rotary_kv_write) followed by
/// [`decode_attention`](super::gpt::decode_attention), the cache bit for bit, `out` up to f32
/// summation order. A `pos` outside `0..max_len` writes nothing.
///
/// Needs [`fused_attention_supports`]`(head_dim)` and `out`, `qkv` and the caches 16-byte
/// aligned (8 f16 per load).
pub fn decode_attention_fused<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    cache: LayerCache,
    qkv: DevSlice<f16>,
    rotary: Rotary,
    scratch: SplitScratch,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "decode_attention_fused";
    if s.is_empty() {
        return Ok(());
    }
    s.check(CTX)?;
    if !fused_attention_supports(s.head_dim) {
        return Err(CudaError::call(
            CTX,
            format!(
                "head_dim {} is not one of 8, 16, 32, 64, 128, 256; use the separate \
                 attention (LLAMAGEN_CUDA_ATTENTION=separate)",
                s.head_dim
            ),
        ));
    }
    let splits = attn_splits(s.max_len);
    if splits > MAX_GRID_Z {
        return Err(CudaError::call(
            CTX,
            format!(
                "max_len {} needs {splits} splits (> {MAX_GRID_Z})",
                s.max_len
            ),
        ));
    }
    cache.check(CTX, s)?;
    out.require(CTX, "out", s.q_len())?;
    qkv.require(CTX, "qkv", s.qkv_len())?;
    rotary.check(CTX, s)?;
    scratch
        .partials
        .require(CTX, "partials", SplitScratch::partials_len(s))?;
    scratch
        .counters
        .require(CTX, "counters", SplitScratch::counters_len(s))?;
    cache.check_aligned_with(CTX, [("out", out), ("qkv", qkv)])?;
    let mut args: Vec<KArg> = vec![
        out.into(),
        cache.k.into(),
        cache.v.into(),
        qkv.into(),
        rotary.cos.into(),
        rotary.sin.into(),
        cache.pos.into(),
        scratch.partials.into(),
        scratch.counters.into(),
    ];
    args.extend(shape_args(CTX, s)?);
    let grid = [s.heads as u32, s.rows as u32, splits as u32];
    d.launch(
        CTX,
        &LaunchConfig::new(grid, [ATTN_SPLIT_THREADS, 1, 1]),
        &args,
    )
}
