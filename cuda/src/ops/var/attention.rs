//! VAR's attention over a scale's token block and the KV cache (no mask): on the tensor cores
//! for head_dim 64 (every released VAR) and 16 (the golden tiny models), else flash-style f32
//! tiles, or one block per token where the tiles' shared memory does not fit.

use half::f16;

use super::{grid_x, grid_yz, int, AttnShape, Cache, ATTN_THREADS, MAX_SHARED};
use crate::device::{blocks_for, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Tokens and slots per tile of `var_attention_tiled` (`VAR_TILE_Q`, `VAR_TILE_K` in var.cu).
const TILE_Q: usize = 16;
const TILE_K: usize = 32;

/// Shared memory of `var_attention_tiled` for `head_dim` (see the kernel).
fn tiled_shared_bytes(head_dim: usize) -> usize {
    let floats = TILE_Q * head_dim * 2
        + TILE_K * (head_dim + 1)
        + TILE_K * head_dim
        + TILE_Q * TILE_K
        + 3 * TILE_Q;
    floats * 4
}

/// Tokens per block of the tensor-core kernels (16 per warp, `VAR_MMA_WARPS` warps).
const MMA_WARPS: usize = 4;

/// The tensor-core kernel for `head_dim`, if there is one.
fn mma_kernel(head_dim: usize) -> Option<&'static str> {
    match head_dim {
        64 => Some("var_attention_mma64"),
        16 => Some("var_attention_mma16"),
        _ => None,
    }
}

/// Whether the buffers suit the tensor-core kernels' 16-byte cache loads and 4-byte stores.
fn mma_aligned(out: DevSlice<f16>, cache: Cache) -> bool {
    cache.k.addr().is_multiple_of(16)
        && cache.v.addr().is_multiple_of(16)
        && out.addr().is_multiple_of(4)
}

/// `out` f16 `[rows, T, H hd]` = softmax(q . K^T) . V over cache slots `0..pos + T` (no mask);
/// q f32 `[rows, H, T, hd]` already scaled. [`attention_mma`] for head_dim 64 (every released
/// VAR) and 16 with aligned buffers, else [`attention_tiled`].
pub fn attention<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    q: DevSlice<f32>,
    cache: Cache,
    s: &AttnShape,
) -> Result<(), CudaError> {
    if mma_kernel(s.head_dim).is_some() && mma_aligned(out, cache) {
        attention_mma(d, out, q, cache, s)
    } else {
        attention_tiled(d, out, q, cache, s)
    }
}

/// [`attention`] on the tensor cores (mma.sync, sm_80 and later), flash-style, head_dim 64 or
/// 16: q and the softmax weights are rounded to f16 for the products (as the official fp16
/// autocast attention does); the softmax and the output accumulate in f32.
pub fn attention_mma<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    q: DevSlice<f32>,
    cache: Cache,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_attention_mma";
    let Some(kernel) = mma_kernel(s.head_dim) else {
        return Err(CudaError::call(
            CTX,
            format!("head_dim {} (the kernels take 16 or 64)", s.head_dim),
        ));
    };
    if !mma_aligned(out, cache) {
        return Err(CudaError::call(
            CTX,
            "the caches must be 16-byte aligned and out 4-byte aligned (16-byte loads, 4-byte \
             stores)",
        ));
    }
    if s.is_empty() {
        return Ok(());
    }
    let [out, q, k, v, tokens, heads, _head_dim, cache_len, len] =
        checked_args(kernel, out, q, cache, s)?;
    let grid = [
        blocks_for(s.tokens, 16 * MMA_WARPS),
        grid_yz(kernel, "heads", s.heads)?,
        grid_yz(kernel, "rows", s.rows)?,
    ];
    let block = [32 * MMA_WARPS as u32, 1, 1];
    d.launch(
        kernel,
        &LaunchConfig::new(grid, block),
        &[out, q, k, v, tokens, heads, cache_len, len],
    )
}

/// [`attention`] with flash-style f32 tiles (16 tokens share each K/V chunk, online softmax) when
/// their shared memory fits 48 KiB (head_dim <= 96); else [`attention_per_token`].
pub fn attention_tiled<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    q: DevSlice<f32>,
    cache: Cache,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_attention_tiled";
    if s.is_empty() {
        return Ok(());
    }
    let shared = tiled_shared_bytes(s.head_dim);
    if shared > MAX_SHARED {
        return attention_per_token(d, out, q, cache, s);
    }
    let args = checked_args(CTX, out, q, cache, s)?;
    let grid = [
        blocks_for(s.tokens, TILE_Q),
        grid_yz(CTX, "heads", s.heads)?,
        grid_yz(CTX, "rows", s.rows)?,
    ];
    let cfg = LaunchConfig::new(grid, [ATTN_THREADS, 1, 1]).with_shared(shared as u32);
    d.launch(CTX, &cfg, &args)
}

/// [`attention`] with one block per token: the scores of all `pos + T` slots in shared memory
/// (`pos + T + head_dim` floats must fit in 48 KiB, about 12000 slots). Any head_dim.
pub fn attention_per_token<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    q: DevSlice<f32>,
    cache: Cache,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_attention";
    if s.is_empty() {
        return Ok(());
    }
    let args = checked_args(CTX, out, q, cache, s)?;
    let len = s.pos + s.tokens;
    let shared = (len + s.head_dim) * 4;
    if shared > MAX_SHARED {
        return Err(CudaError::call(
            CTX,
            format!("{len} slots need {shared} bytes of shared memory (> {MAX_SHARED})"),
        ));
    }
    let grid = [
        grid_x(CTX, "tokens", s.tokens)?,
        grid_yz(CTX, "heads", s.heads)?,
        grid_yz(CTX, "rows", s.rows)?,
    ];
    let cfg = LaunchConfig::new(grid, [ATTN_THREADS, 1, 1]).with_shared(shared as u32);
    d.launch(CTX, &cfg, &args)
}

/// Checks the shape and the buffers, and gives the arguments both attention kernels take:
/// out, q, the caches, tokens, heads, head_dim, cache_len and the valid length `pos + tokens`.
fn checked_args(
    ctx: &str,
    out: DevSlice<f16>,
    q: DevSlice<f32>,
    cache: Cache,
    s: &AttnShape,
) -> Result<[KArg; 9], CudaError> {
    s.check(ctx)?;
    out.require(ctx, "out", s.q_len())?;
    q.require(ctx, "q", s.q_len())?;
    cache.k.require(ctx, "cache_k", s.cache_elems())?;
    cache.v.require(ctx, "cache_v", s.cache_elems())?;
    Ok([
        out.into(),
        q.into(),
        cache.k.into(),
        cache.v.into(),
        int(ctx, "tokens", s.tokens)?,
        int(ctx, "heads", s.heads)?,
        int(ctx, "head_dim", s.head_dim)?,
        int(ctx, "cache_len", s.cache_len)?,
        int(ctx, "len", s.pos + s.tokens)?,
    ])
}
