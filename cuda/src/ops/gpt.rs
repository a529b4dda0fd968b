//! Launch wrappers of the GPT decode-step kernels (`kernels/gpt.cu`, `kernels/attention.cu`).
//!
//! Buffers are typed device slices ([`DevSlice`]); layouts are row-major and stated per
//! function. The decode position `pos` is an `i32` in device memory, read by the kernels, so a
//! step captured once into a graph serves every position: grids are sized for the worst case
//! (`max_len`) and the kernels stop at `pos`. A `pos` outside `0..max_len` makes the
//! position-dependent kernels write nothing. Shapes are checked here, against every slice's
//! length too, so a bad shape is an error, never an out-of-bounds launch; empty shapes launch
//! nothing.

use half::f16;

use crate::device::{blocks_for, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Threads per block of the elementwise kernels.
const ELEMENTWISE_THREADS: usize = 256;
/// `decode_attention` is specialised for this head size (LlamaGen's only one).
const ATTN_HEAD_DIM: usize = 64;
/// Must equal `ATTN_THREADS` in attention.cu.
const ATTN_THREADS: u32 = 256;
/// CUDA's limit on `gridDim.y`, where the row index goes.
const MAX_GRID_Y: usize = 65_535;

/// x[r, :] = f32(table[ids[r], :]); table f16 [num_ids, dim], ids i32 [rows], x f32 [rows, dim].
///
/// The ids must be valid rows of `table` (the kernel has no bound to check them against).
pub fn embed_rows<D: Device>(
    d: &D,
    x: DevSlice<f32>,
    table: DevSlice<f16>,
    ids: DevSlice<i32>,
    rows: usize,
    dim: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "embed_rows";
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    check_rows(CTX, rows)?;
    x.require(CTX, "x", rows * dim)?;
    table.require(CTX, "table", dim)?;
    ids.require(CTX, "ids", rows)?;
    let grid = [blocks_for(dim, ELEMENTWISE_THREADS), rows as u32, 1];
    let args = [
        x.into(),
        table.into(),
        ids.into(),
        i32_arg(CTX, "dim", dim)?,
    ];
    d.launch(CTX, &elementwise(grid), &args)
}

/// out f16 [rows, dim] = rmsnorm(x f32 [rows, dim]) * weight f32 [dim].
///
/// `x / sqrt(mean(x^2) + eps) * weight` in f32, rounded once to f16. One block per row.
pub fn rms_norm<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    x: DevSlice<f32>,
    weight: DevSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), CudaError> {
    const CTX: &str = "rms_norm";
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    out.require(CTX, "out", rows * dim)?;
    x.require(CTX, "x", rows * dim)?;
    weight.require(CTX, "weight", dim)?;
    let grid_x = u32::try_from(rows).map_err(|_| CudaError::call(CTX, "rows exceed u32"))?;
    let threads = rms_norm_threads(dim) as u32;
    let args = [
        out.into(),
        x.into(),
        weight.into(),
        i32_arg(CTX, "dim", dim)?,
        KArg::F32(eps),
    ];
    d.launch(
        CTX,
        &LaunchConfig::new([grid_x, 1, 1], [threads, 1, 1]),
        &args,
    )
}

/// Threads of `rms_norm`'s block for rows of `dim`, which fix its order of additions (the
/// decode GEMM's norm prologue adds in the same order): small rows get one warp per 32 columns,
/// wide rows 256 threads, each striding over dim / 256 columns (a few per thread for every
/// LlamaGen size).
pub(crate) fn rms_norm_threads(dim: usize) -> usize {
    dim.next_multiple_of(32).min(ELEMENTWISE_THREADS)
}

/// Shapes of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Sequences in the batch (`[cond; uncond]` with CFG).
    pub rows: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads` (GQA when smaller).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Cache slots per (row, kv head).
    pub max_len: usize,
}

impl AttnShape {
    pub(crate) fn check(&self, ctx: &str) -> Result<(), CudaError> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(CudaError::call(
                ctx,
                format!(
                    "heads {} is not a multiple of kv_heads {}",
                    self.heads, self.kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(CudaError::call(
                ctx,
                format!("head_dim {} is odd; rotary needs pairs", self.head_dim),
            ));
        }
        check_rows(ctx, self.rows)?;
        let width = (self.heads + 2 * self.kv_heads) * self.head_dim;
        i32_arg(ctx, "qkv width", width)?;
        i32_arg(ctx, "max_len", self.max_len)?;
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows == 0 || self.heads == 0 || self.head_dim == 0 || self.max_len == 0
    }

    /// Elements of one layer's cache `[rows, kv_heads, max_len, head_dim]`.
    pub(crate) fn cache_len(&self) -> usize {
        self.rows * self.kv_heads * self.max_len * self.head_dim
    }

    /// Elements of q (or the attention output) `[rows, heads * head_dim]`.
    pub(crate) fn q_len(&self) -> usize {
        self.rows * self.heads * self.head_dim
    }

    /// Elements of qkv `[rows, (heads + 2 kv_heads) * head_dim]`.
    pub(crate) fn qkv_len(&self) -> usize {
        self.rows * (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// One layer's KV cache and the decode position (i32 in device memory).
#[derive(Clone, Copy, Debug)]
pub struct LayerCache {
    pub k: DevSlice<f16>,
    pub v: DevSlice<f16>,
    pub pos: DevSlice<i32>,
}

impl LayerCache {
    pub(crate) fn check(&self, ctx: &str, s: &AttnShape) -> Result<(), CudaError> {
        self.k.require(ctx, "cache_k", s.cache_len())?;
        self.v.require(ctx, "cache_v", s.cache_len())?;
        self.pos.require(ctx, "pos", 1)
    }

    /// Fails unless the two named `views` (the output and q or qkv) and the caches are 16-byte
    /// aligned: the attention kernels that load 8 f16 at a time need it.
    pub(crate) fn check_aligned_with(
        &self,
        ctx: &str,
        views: [(&str, DevSlice<f16>); 2],
    ) -> Result<(), CudaError> {
        let [(a, x), (b, y)] = views;
        check_aligned(
            ctx,
            &[
                (a, x.addr()),
                (b, y.addr()),
                ("cache_k", self.k.addr()),
                ("cache_v", self.v.addr()),
            ],
        )
    }
}

/// The rotary tables, f32 `[max_len, head_dim]` each.
#[derive(Clone, Copy, Debug)]
pub struct Rotary {
    pub cos: DevSlice<f32>,
    pub sin: DevSlice<f32>,
}

impl Rotary {
    /// Fails unless both tables hold `[max_len, head_dim]`.
    pub(crate) fn check(&self, ctx: &str, s: &AttnShape) -> Result<(), CudaError> {
        self.cos.require(ctx, "cos", s.max_len * s.head_dim)?;
        self.sin.require(ctx, "sin", s.max_len * s.head_dim)
    }
}

/// Reads `pos` (i32, device memory) and qkv f16 [rows, (heads + 2 kv_heads) * head_dim]; writes
/// rotated q to q_out f16 [rows, heads * head_dim], rotated k and plain v into slot `pos` of the
/// caches f16 [rows, kv_heads, max_len, head_dim]. cos/sin: f32 [max_len, head_dim].
///
/// Rotation of each pair `(a, b) = (x[2j], x[2j+1])`: `(a cos[2j] - b sin[2j],
/// b cos[2j+1] + a sin[2j+1])`, as the CPU graph's `x * cos + swap(x) * sin`, in f32 with every
/// operation rounded (no FMA contraction; `rotary_pair` in common.cuh, which the fused attention
/// of [`super::gpt_split_attention`] shares, so both write the same cache bits).
pub fn rotary_kv_write<D: Device>(
    d: &D,
    q_out: DevSlice<f16>,
    cache: LayerCache,
    qkv: DevSlice<f16>,
    rotary: Rotary,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "rotary_kv_write";
    if s.is_empty() {
        return Ok(());
    }
    s.check(CTX)?;
    cache.check(CTX, s)?;
    q_out.require(CTX, "q_out", s.q_len())?;
    qkv.require(CTX, "qkv", s.qkv_len())?;
    rotary.check(CTX, s)?;
    // One block per (head of q|k|v, row), one thread per pair: a warp for head_dim 64.
    let grid = [(s.heads + 2 * s.kv_heads) as u32, s.rows as u32, 1];
    let threads = (s.head_dim / 2)
        .next_multiple_of(32)
        .min(ELEMENTWISE_THREADS) as u32;
    let mut args: Vec<KArg> = vec![
        q_out.into(),
        cache.k.into(),
        cache.v.into(),
        qkv.into(),
        rotary.cos.into(),
        rotary.sin.into(),
        cache.pos.into(),
    ];
    args.extend(shape_args(CTX, s)?);
    d.launch(CTX, &LaunchConfig::new(grid, [threads, 1, 1]), &args)
}

/// out f16 [rows, heads * head_dim] = softmax(q . K[0..=pos]^T) . V[0..=pos] per (row, head);
/// q already scaled; pos read from device memory; f32 softmax.
///
/// q f16 [rows, heads * head_dim]; caches f16 [rows, kv_heads, max_len, head_dim]; q head `h`
/// reads kv head `h / (heads / kv_heads)`. head_dim 64 (every LlamaGen model) takes the fast
/// kernel, which needs `out`, `q` and the caches 16-byte aligned (it reads 8 f16 at a time);
/// other head sizes take a plain kernel with the scores in shared memory (max_len <= ~12000).
pub fn decode_attention<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    q: DevSlice<f16>,
    cache: LayerCache,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "decode_attention";
    if s.is_empty() {
        return Ok(());
    }
    s.check(CTX)?;
    cache.check(CTX, s)?;
    out.require(CTX, "out", s.q_len())?;
    q.require(CTX, "q", s.q_len())?;
    let mut args: Vec<KArg> = vec![
        out.into(),
        q.into(),
        cache.k.into(),
        cache.v.into(),
        cache.pos.into(),
    ];
    let grid = [s.heads as u32, s.rows as u32, 1];
    if s.head_dim != ATTN_HEAD_DIM {
        return decode_attention_generic(d, args, s);
    }
    cache.check_aligned_with(CTX, [("out", out), ("q", q)])?;
    // One block per (head, row); grid sized by shape only, the kernel loops to pos. The fast
    // kernel is specialised for head_dim 64: it takes no head_dim argument.
    let [heads, kv_heads, _, max_len] = shape_args(CTX, s)?;
    args.extend([heads, kv_heads, max_len]);
    d.launch(CTX, &LaunchConfig::new(grid, [ATTN_THREADS, 1, 1]), &args)
}

/// [`decode_attention`] for any head_dim: correctness path for small test models.
/// `args` are the pointer arguments (out, q, cache_k, cache_v, pos), checked by the caller.
fn decode_attention_generic<D: Device>(
    d: &D,
    mut args: Vec<KArg>,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "decode_attention_generic";
    const THREADS: u32 = 128;
    let shared = (s.max_len + s.head_dim) * 4;
    if shared > 48 * 1024 {
        return Err(CudaError::call(
            CTX,
            format!(
                "head_dim {} with max_len {} needs {shared} bytes of shared memory (> 48 KiB)",
                s.head_dim, s.max_len
            ),
        ));
    }
    args.extend(shape_args(CTX, s)?);
    let grid = [s.heads as u32, s.rows as u32, 1];
    let cfg = LaunchConfig::new(grid, [THREADS, 1, 1]).with_shared(shared as u32);
    d.launch(CTX, &cfg, &args)
}

/// out f16 [rows, hidden] = silu(h13[:, :hidden]) * h13[:, hidden..]; h13 f16 [rows, 2 hidden].
///
/// 128-bit loads when `hidden % 8 == 0` and both buffers are 16-byte aligned (every LlamaGen
/// size), one element per thread otherwise.
pub fn swiglu<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    h13: DevSlice<f16>,
    rows: usize,
    hidden: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "swiglu";
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    check_rows(CTX, rows)?;
    out.require(CTX, "out", rows * hidden)?;
    h13.require(CTX, "h13", rows * 2 * hidden)?;
    // The kernel indexes a row of h13 with i32 columns up to 2 * hidden.
    i32_arg(CTX, "2 * hidden", 2 * hidden)?;
    let args = [out.into(), h13.into(), i32_arg(CTX, "hidden", hidden)?];
    if hidden.is_multiple_of(8) && out.addr().is_multiple_of(16) && h13.addr().is_multiple_of(16) {
        let grid = [blocks_for(hidden / 8, ELEMENTWISE_THREADS), rows as u32, 1];
        d.launch("swiglu_x8", &elementwise(grid), &args)
    } else {
        let grid = [blocks_for(hidden, ELEMENTWISE_THREADS), rows as u32, 1];
        d.launch(CTX, &elementwise(grid), &args)
    }
}

/// `grid` blocks of [`ELEMENTWISE_THREADS`].
fn elementwise(grid: [u32; 3]) -> LaunchConfig {
    LaunchConfig::new(grid, [ELEMENTWISE_THREADS as u32, 1, 1])
}

/// heads, kv_heads, head_dim, max_len as i32 kernel arguments.
pub(crate) fn shape_args(ctx: &str, s: &AttnShape) -> Result<[KArg; 4], CudaError> {
    Ok([
        i32_arg(ctx, "heads", s.heads)?,
        i32_arg(ctx, "kv_heads", s.kv_heads)?,
        i32_arg(ctx, "head_dim", s.head_dim)?,
        i32_arg(ctx, "max_len", s.max_len)?,
    ])
}

/// `v` as an `i32` kernel argument, or an error naming `what`.
pub(crate) fn i32_arg(ctx: &str, what: &str, v: usize) -> Result<KArg, CudaError> {
    i32::try_from(v)
        .map(KArg::I32)
        .map_err(|_| CudaError::call(ctx, format!("{what} = {v} does not fit in i32")))
}

pub(crate) fn check_rows(ctx: &str, rows: usize) -> Result<(), CudaError> {
    if rows > MAX_GRID_Y {
        return Err(CudaError::call(
            ctx,
            format!("rows = {rows} exceeds the grid limit {MAX_GRID_Y}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_aligned(ctx: &str, ptrs: &[(&str, u64)]) -> Result<(), CudaError> {
    match ptrs.iter().find(|(_, p)| p % 16 != 0) {
        Some((what, p)) => Err(CudaError::call(
            ctx,
            format!("{what} at {p:#x} is not 16-byte aligned"),
        )),
        None => Ok(()),
    }
}
