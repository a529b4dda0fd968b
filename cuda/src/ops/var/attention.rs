//! VAR's attention over a scale's token block and the KV cache (no mask): flash-style tiles,
//! or one block per token where the tiles' shared memory does not fit.

use half::f16;

use super::{grid_x, grid_yz, int, AttnShape, Cache, ATTN_THREADS, MAX_SHARED};
use crate::device::{blocks_for, DevSlice, Device, LaunchConfig};
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

/// `out` f16 `[rows, T, H hd]` = softmax(q . K^T) . V over cache slots `0..pos + T` (no mask);
/// q f32 `[rows, H, T, hd]` already scaled. Flash-style tiles (16 tokens share each K/V chunk,
/// online softmax) when their shared memory fits 48 KiB (head_dim <= 96, every released VAR
/// has 64); else [`attention_per_token`].
pub fn attention<D: Device>(
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
    s.check(CTX)?;
    out.require(CTX, "out", s.q_len())?;
    q.require(CTX, "q", s.q_len())?;
    cache.k.require(CTX, "cache_k", s.cache_elems())?;
    cache.v.require(CTX, "cache_v", s.cache_elems())?;
    let grid = [
        blocks_for(s.tokens, TILE_Q),
        grid_yz(CTX, "heads", s.heads)?,
        grid_yz(CTX, "rows", s.rows)?,
    ];
    let args = [
        out.into(),
        q.into(),
        cache.k.into(),
        cache.v.into(),
        int(CTX, "tokens", s.tokens)?,
        int(CTX, "heads", s.heads)?,
        int(CTX, "head_dim", s.head_dim)?,
        int(CTX, "cache_len", s.cache_len)?,
        int(CTX, "len", s.pos + s.tokens)?,
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
    s.check(CTX)?;
    let len = s.pos + s.tokens;
    out.require(CTX, "out", s.q_len())?;
    q.require(CTX, "q", s.q_len())?;
    cache.k.require(CTX, "cache_k", s.cache_elems())?;
    cache.v.require(CTX, "cache_v", s.cache_elems())?;
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
    let args = [
        out.into(),
        q.into(),
        cache.k.into(),
        cache.v.into(),
        int(CTX, "tokens", s.tokens)?,
        int(CTX, "heads", s.heads)?,
        int(CTX, "head_dim", s.head_dim)?,
        int(CTX, "cache_len", s.cache_len)?,
        int(CTX, "len", len)?,
    ];
    let cfg = LaunchConfig::new(grid, [ATTN_THREADS, 1, 1]).with_shared(shared as u32);
    d.launch(CTX, &cfg, &args)
}
