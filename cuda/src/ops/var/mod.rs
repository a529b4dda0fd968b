//! Launch wrappers of the VAR kernels (`kernels/var.cu`): the AdaLN step over one scale's token
//! block and the between-scale work. Every slice is checked against the shape before a launch
//! (a short buffer is a named error, never an out-of-bounds launch); empty shapes launch
//! nothing.
//!
//! Shapes (row-major): token rows `[rows, T, C]` (`rows` = `[cond; uncond]` with CFG, `T` the
//! scale's token count); AdaLN vectors f32 `[rows, k C]`; q f32 `[rows, H, T, hd]`; KV caches f16
//! `[rows, H, L, hd]` (L = every scale's tokens); feature maps f32 NHWC `[rows, P, P, Cv]`.

mod attention;
mod between_scales;

pub use attention::{attention, attention_mma, attention_per_token, attention_tiled};
pub use between_scales::{area_tokens, embed_resize, phi_accumulate, MapShape, ScaleTokens};

use half::f16;

use crate::device::{blocks_for, DevElem, DevSlice, Device, KArg, LaunchConfig};
use crate::error::CudaError;

/// Threads per block of the elementwise and per-row kernels (`VAR_THREADS`).
const THREADS: usize = 256;
/// Must equal `VAR_ATTN_THREADS` in var.cu.
const ATTN_THREADS: u32 = 128;
/// CUDA's limit on `gridDim.y` and `gridDim.z`.
const MAX_GRID_YZ: usize = 65_535;
/// Default dynamic shared memory limit of a launch.
const MAX_SHARED: usize = 48 * 1024;

fn int(ctx: &str, what: &str, v: usize) -> Result<KArg, CudaError> {
    i32::try_from(v)
        .map(KArg::I32)
        .map_err(|_| CudaError::call(ctx, format!("{what} = {v} does not fit in i32")))
}

fn grid_yz(ctx: &str, what: &str, v: usize) -> Result<u32, CudaError> {
    if v > MAX_GRID_YZ {
        return Err(CudaError::call(
            ctx,
            format!("{what} = {v} exceeds the grid limit {MAX_GRID_YZ}"),
        ));
    }
    Ok(v as u32)
}

fn grid_x(ctx: &str, what: &str, v: usize) -> Result<u32, CudaError> {
    u32::try_from(v).map_err(|_| CudaError::call(ctx, format!("{what} = {v} exceeds u32")))
}

fn threads(grid: [u32; 3]) -> LaunchConfig {
    LaunchConfig::new(grid, [THREADS as u32, 1, 1])
}

/// `out` f16 `[rows, dim]` = SiLU(`table[labels[r]]`); table f32 `[class_rows, dim]`, labels i32
/// `[rows]` (valid rows of the table: the kernel has nothing to check them against).
pub fn cond_silu<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    table: DevSlice<f32>,
    labels: DevSlice<i32>,
    rows: usize,
    dim: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "var_cond_silu";
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    out.require(CTX, "out", rows * dim)?;
    table.require(CTX, "table", dim)?;
    labels.require(CTX, "labels", rows)?;
    let grid = [blocks_for(dim, THREADS), grid_yz(CTX, "rows", rows)?, 1];
    let args = [
        out.into(),
        table.into(),
        labels.into(),
        int(CTX, "dim", dim)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `x` f32 `[rows, first, dim]` = `table[labels[r]] + pos[t]` (the first scale's inputs); pos
/// f32 `[>= first, dim]`.
pub fn first_inputs<D: Device>(
    d: &D,
    x: DevSlice<f32>,
    table: DevSlice<f32>,
    labels: DevSlice<i32>,
    pos: DevSlice<f32>,
    [rows, first, dim]: [usize; 3],
) -> Result<(), CudaError> {
    const CTX: &str = "var_first_inputs";
    if rows == 0 || first == 0 || dim == 0 {
        return Ok(());
    }
    x.require(CTX, "x", rows * first * dim)?;
    table.require(CTX, "table", dim)?;
    labels.require(CTX, "labels", rows)?;
    pos.require(CTX, "pos", first * dim)?;
    let grid = [
        blocks_for(dim, THREADS),
        grid_yz(CTX, "first", first)?,
        grid_yz(CTX, "rows", rows)?,
    ];
    let args = [
        x.into(),
        table.into(),
        labels.into(),
        pos.into(),
        int(CTX, "first", first)?,
        int(CTX, "dim", dim)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `out` f32 `[rows, n]` = `inp + bias` (`out == inp` adds in place).
pub fn bias_rows<D: Device>(
    d: &D,
    out: DevSlice<f32>,
    inp: DevSlice<f32>,
    bias: DevSlice<f32>,
    rows: usize,
    n: usize,
) -> Result<(), CudaError> {
    row_bias_launch(d, "var_bias_rows", out, inp, bias, rows, n)
}

/// Launches `ctx`, a kernel of (out `[rows, n]`, inp f32 `[rows, n]`, bias `[n]`, n) with a
/// thread per column and a grid row per row.
fn row_bias_launch<D: Device, T: DevElem>(
    d: &D,
    ctx: &str,
    out: DevSlice<T>,
    inp: DevSlice<f32>,
    bias: DevSlice<f32>,
    rows: usize,
    n: usize,
) -> Result<(), CudaError> {
    if rows == 0 || n == 0 {
        return Ok(());
    }
    out.require(ctx, "out", rows * n)?;
    inp.require(ctx, "in", rows * n)?;
    bias.require(ctx, "bias", n)?;
    let grid = [blocks_for(n, THREADS), grid_yz(ctx, "rows", rows)?, 1];
    let args = [out.into(), inp.into(), bias.into(), int(ctx, "n", n)?];
    d.launch(ctx, &threads(grid), &args)
}

/// Which AdaLN vectors a modulation reads: `ada` f32 `[rows, width]`, chunks at column offsets.
#[derive(Clone, Copy, Debug)]
pub struct Ada {
    pub ada: DevSlice<f32>,
    /// Columns per row of `ada` (`k C`).
    pub width: usize,
}

impl Ada {
    fn check(
        &self,
        ctx: &str,
        rows: usize,
        offsets: &[usize],
        dim: usize,
    ) -> Result<(), CudaError> {
        self.ada.require(ctx, "ada", rows * self.width)?;
        match offsets.iter().find(|&&o| o + dim > self.width) {
            Some(o) => Err(CudaError::call(
                ctx,
                format!("ada chunk at {o} of {dim} outside rows of {}", self.width),
            )),
            None => Ok(()),
        }
    }
}

/// Token-block sizes of a step: `rows` sequences of `tokens` tokens of width `dim`.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub rows: usize,
    pub tokens: usize,
    pub dim: usize,
}

impl Block {
    fn token_rows(&self) -> usize {
        self.rows * self.tokens
    }
    fn is_empty(&self) -> bool {
        self.rows == 0 || self.tokens == 0 || self.dim == 0
    }
    fn len(&self) -> usize {
        self.token_rows() * self.dim
    }
}

/// AdaLN: `out` f16 `[rows, T, dim]` = `LN(x) * (1 + ada[b, scale..]) + ada[b, shift..]`, LN
/// without affine (eps `eps`), `b` the sequence of the token; `x` f32 `[rows, T, dim]`.
pub fn adaln<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    x: DevSlice<f32>,
    ada: Ada,
    [scale_off, shift_off]: [usize; 2],
    b: Block,
    eps: f32,
) -> Result<(), CudaError> {
    const CTX: &str = "var_adaln";
    if b.is_empty() {
        return Ok(());
    }
    out.require(CTX, "out", b.len())?;
    x.require(CTX, "x", b.len())?;
    ada.check(CTX, b.rows, &[scale_off, shift_off], b.dim)?;
    let block = b.dim.next_multiple_of(32).min(THREADS) as u32;
    let grid = [grid_x(CTX, "token rows", b.token_rows())?, 1, 1];
    let args = [
        out.into(),
        x.into(),
        ada.ada.into(),
        int(CTX, "ada width", ada.width)?,
        int(CTX, "scale offset", scale_off)?,
        int(CTX, "shift offset", shift_off)?,
        int(CTX, "tokens", b.tokens)?,
        int(CTX, "dim", b.dim)?,
        KArg::F32(eps),
    ];
    d.launch(CTX, &LaunchConfig::new(grid, [block, 1, 1]), &args)
}

/// Attention sizes of one scale.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub rows: usize,
    /// The scale's tokens (queries).
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Slots per (row, head) of the caches: every scale's tokens.
    pub cache_len: usize,
    /// The scale's first slot (tokens already cached).
    pub pos: usize,
}

impl AttnShape {
    fn is_empty(&self) -> bool {
        self.rows == 0 || self.tokens == 0 || self.heads == 0 || self.head_dim == 0
    }
    fn check(&self, ctx: &str) -> Result<(), CudaError> {
        if self.pos + self.tokens > self.cache_len {
            return Err(CudaError::call(
                ctx,
                format!(
                    "slots {}..{} outside a cache of {}",
                    self.pos,
                    self.pos + self.tokens,
                    self.cache_len
                ),
            ));
        }
        grid_yz(ctx, "rows", self.rows)?;
        int(ctx, "qkv width", 3 * self.heads * self.head_dim)?;
        Ok(())
    }
    fn q_len(&self) -> usize {
        self.rows * self.heads * self.tokens * self.head_dim
    }
    fn cache_elems(&self) -> usize {
        self.rows * self.heads * self.cache_len * self.head_dim
    }
}

/// One layer's KV caches, f16 `[rows, H, L, hd]`.
#[derive(Clone, Copy, Debug)]
pub struct Cache {
    pub k: DevSlice<f16>,
    pub v: DevSlice<f16>,
}

/// `qkv` f32 `[rows, T, 3 H hd]` + `bias` f32 `[3 H hd]` -> q f32 `[rows, H, T, hd]` (L2-normalised
/// when `l2`, times `q_scale[h]`), k (L2-normalised when `l2`) and v into the caches at slots
/// `pos..pos + T`.
pub fn qkv<D: Device>(
    d: &D,
    q_out: DevSlice<f32>,
    cache: Cache,
    qkv: DevSlice<f32>,
    [bias, q_scale]: [DevSlice<f32>; 2],
    l2: bool,
    s: &AttnShape,
) -> Result<(), CudaError> {
    const CTX: &str = "var_qkv";
    if s.is_empty() {
        return Ok(());
    }
    s.check(CTX)?;
    let width = 3 * s.heads * s.head_dim;
    q_out.require(CTX, "q", s.q_len())?;
    cache.k.require(CTX, "cache_k", s.cache_elems())?;
    cache.v.require(CTX, "cache_v", s.cache_elems())?;
    qkv.require(CTX, "qkv", s.rows * s.tokens * width)?;
    bias.require(CTX, "bias", width)?;
    q_scale.require(CTX, "q_scale", s.heads)?;
    let grid = [
        grid_x(CTX, "tokens", s.tokens)?,
        grid_yz(CTX, "3 heads", 3 * s.heads)?,
        grid_yz(CTX, "rows", s.rows)?,
    ];
    let args = [
        q_out.into(),
        cache.k.into(),
        cache.v.into(),
        qkv.into(),
        bias.into(),
        q_scale.into(),
        KArg::I32(i32::from(l2)),
        int(CTX, "tokens", s.tokens)?,
        int(CTX, "heads", s.heads)?,
        int(CTX, "head_dim", s.head_dim)?,
        int(CTX, "cache_len", s.cache_len)?,
        int(CTX, "pos", s.pos)?,
    ];
    d.launch(CTX, &LaunchConfig::new(grid, [32, 1, 1]), &args)
}

/// `x` f32 `[rows, T, dim]` += `ada[b, gamma..] * (y + bias)`; y f32 `[rows, T, dim]`.
pub fn gate_residual<D: Device>(
    d: &D,
    x: DevSlice<f32>,
    y: DevSlice<f32>,
    bias: DevSlice<f32>,
    ada: Ada,
    gamma_off: usize,
    b: Block,
) -> Result<(), CudaError> {
    const CTX: &str = "var_gate_residual";
    if b.is_empty() {
        return Ok(());
    }
    x.require(CTX, "x", b.len())?;
    y.require(CTX, "y", b.len())?;
    bias.require(CTX, "bias", b.dim)?;
    ada.check(CTX, b.rows, &[gamma_off], b.dim)?;
    let grid = [
        blocks_for(b.dim, THREADS),
        grid_yz(CTX, "token rows", b.token_rows())?,
        1,
    ];
    let args = [
        x.into(),
        y.into(),
        bias.into(),
        ada.ada.into(),
        int(CTX, "ada width", ada.width)?,
        int(CTX, "gamma offset", gamma_off)?,
        int(CTX, "tokens", b.tokens)?,
        int(CTX, "dim", b.dim)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `out` f16 `[rows, n]` = GELU-tanh(`inp` f32 `[rows, n]` + `bias` `[n]`).
pub fn gelu_bias<D: Device>(
    d: &D,
    out: DevSlice<f16>,
    inp: DevSlice<f32>,
    bias: DevSlice<f32>,
    rows: usize,
    n: usize,
) -> Result<(), CudaError> {
    row_bias_launch(d, "var_gelu_bias", out, inp, bias, rows, n)
}

/// The head's bias and VAR's guidance on `logits` f32 `[rows, vocab]`: the first `m` rows
/// become `y = logits + bias`, with `cfg` then `(1 + t) y - t u` where `u` is row `m + i` plus
/// the bias and `t` f32 `[1]` lives in device memory. `rows` is `2 m` with `cfg`, else `m`.
pub fn head_cfg<D: Device>(
    d: &D,
    logits: DevSlice<f32>,
    bias: DevSlice<f32>,
    t: DevSlice<f32>,
    m: usize,
    cfg: bool,
    vocab: usize,
) -> Result<(), CudaError> {
    const CTX: &str = "var_head_cfg";
    if m == 0 || vocab == 0 {
        return Ok(());
    }
    let rows = if cfg { 2 * m } else { m };
    logits.require(CTX, "logits", rows * vocab)?;
    bias.require(CTX, "bias", vocab)?;
    t.require(CTX, "t", 1)?;
    let grid = [blocks_for(vocab, THREADS), grid_yz(CTX, "rows", m)?, 1];
    let args = [
        logits.into(),
        bias.into(),
        t.into(),
        int(CTX, "m", m)?,
        KArg::I32(i32::from(cfg)),
        int(CTX, "vocab", vocab)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `x` f32 `[rows, T, dim]` += `bias + pos[begin + t]`; pos f32 `[L, dim]`.
pub fn add_positions<D: Device>(
    d: &D,
    x: DevSlice<f32>,
    bias: DevSlice<f32>,
    pos: DevSlice<f32>,
    begin: usize,
    b: Block,
) -> Result<(), CudaError> {
    const CTX: &str = "var_add_positions";
    if b.is_empty() {
        return Ok(());
    }
    x.require(CTX, "x", b.len())?;
    bias.require(CTX, "bias", b.dim)?;
    pos.require(CTX, "pos", (begin + b.tokens) * b.dim)?;
    let grid = [
        blocks_for(b.dim, THREADS),
        grid_yz(CTX, "tokens", b.tokens)?,
        grid_yz(CTX, "rows", b.rows)?,
    ];
    let args = [
        x.into(),
        bias.into(),
        pos.into(),
        int(CTX, "tokens", b.tokens)?,
        int(CTX, "begin", begin)?,
        int(CTX, "dim", b.dim)?,
    ];
    d.launch(CTX, &threads(grid), &args)
}

/// `x` f32 = 0 (its whole length).
pub fn zero<D: Device>(d: &D, x: DevSlice<f32>) -> Result<(), CudaError> {
    const CTX: &str = "var_zero_f32";
    if x.is_empty() {
        return Ok(());
    }
    let n = int(CTX, "len", x.len())?;
    let grid = [blocks_for(x.len(), THREADS).min(1024), 1, 1];
    d.launch(CTX, &threads(grid), &[x.into(), n])
}
