//! VAR on the device: per-request sessions (KV caches of every scale, activations, the request
//! scalars in device memory) and the launch sequence of one scale, captured once per session
//! into a graph per scale and replayed for the whole multi-scale loop with no host
//! synchronisation.
//!
//! Scale `k`'s sequence (`rows` = `[cond; uncond]` with CFG, `T` = `pn_k^2` tokens):
//! - k = 0: SiLU(class embedding) -> every block's AdaLN GEMM (+ bias, or + `ada_gss` with a
//!   shared AdaLN) and the head's; the first inputs `class_emb + positions`; `f_hat = 0`;
//! - k > 0: scale k-1's tokens -> codebook rows resized to the last side (bicubic matrix) ->
//!   `f_hat += phi(.)`; the area-downsampled `f_hat` as `[rows, T, Cvae]` f16 -> `word_embed` GEMM
//!   -> `+ bias + positions`: the scale's inputs `x` f32 `[rows, T, C]`;
//! - per block: AdaLN -> qkv GEMM (f32) -> bias, L2 norm, q scale, k/v into the caches at slots
//!   `begin..begin + T` -> attention over slots `0..begin + T` (no mask) -> proj GEMM -> `x +=
//!   gamma1 (. + b)`; AdaLN -> fc1 GEMM -> GELU-tanh(. + b) -> fc2 GEMM -> `x += gamma2 (. + b)`;
//! - head: AdaLN -> logits GEMM -> `+ b` and `(1 + t) cond - t uncond` (`t` from device memory)
//!   -> the device sampler over the `n T` cond token rows (request row r's Philox stream from
//!   the session's row-key table, counter = token index), writing `tokens[r, begin + j]`.
//!
//! Everything a request changes (labels, guidance per scale, sampling parameters per scale)
//! lives in device memory; sizes and cache slots are per scale, fixed in its graph.

use llamagen_bundle::sampling::TopPRule;
use llamagen_bundle::VarConfig;

use crate::device::{download_f32, download_tokens, DevSlice, Device};
use crate::error::CudaError;
use crate::ops::sampler::{self, RowKey, SampleParams};

mod pass;
pub use pass::{issue_f_hat, issue_scale};

/// Device buffers of one batch shape: `n` requests, `rows` = `2n` with CFG else `n`.
pub struct VarSession<D: Device> {
    pub n: usize,
    pub cfg: bool,
    pub rows: usize,
    /// i32 `[rows]`.
    labels: D::Buf,
    /// f16 `[rows, C]`.
    cond: D::Buf,
    /// Per block f32 `[rows, 6C]`; the head's f32 `[rows, 2C]`.
    ada: Vec<D::Buf>,
    head_ada: D::Buf,
    /// f32 `[rows, Tmax, C]`: the residual stream.
    x: D::Buf,
    /// f16 `[rows, Tmax, max(C, hidden)]`: GEMM inputs.
    h: D::Buf,
    /// f32 `[rows, Tmax, max(3C, hidden)]`: GEMM outputs.
    t: D::Buf,
    /// f32 `[rows, H, Tmax, hd]`.
    q: D::Buf,
    /// f32 `[rows, Tmax, V]`.
    logits: D::Buf,
    cache_k: Vec<D::Buf>,
    cache_v: Vec<D::Buf>,
    /// i32 `[n, L]`: every scale's tokens.
    tokens: D::Buf,
    /// i32 `[n Tmax]`: the sampler's next-ids output (unused by VAR).
    ids: D::Buf,
    /// Per scale [`sampler::params_bytes`]`(n)`: the scale's [`SampleParams`] and the request
    /// rows' random streams.
    params: D::Buf,
    /// i32 `[S]`: each scale's first token index.
    begins: D::Buf,
    /// f32 `[S]`: each scale's guidance `t`.
    guidance: D::Buf,
    scratch: D::Buf,
    /// f32 NHWC `[rows, P, P, Cvae]`: one scale's resized codes, and the running `f_hat`.
    fmap: D::Buf,
    f_hat: D::Buf,
    /// f16 `[rows, Tmax, Cvae]`: the next scale's downsampled tokens.
    next: D::Buf,
    /// The captured scales, once a generation has run on this session.
    pub graphs: Vec<D::Graph>,
}

impl<D: Device> VarSession<D> {
    /// A session for generations of `n` requests (`2n` rows with `cfg`).
    pub fn new(d: &D, c: &VarConfig, n: usize, cfg: bool) -> Result<Self, CudaError> {
        Self::alloc(d, c, n, cfg, true)
    }

    /// A session that only turns `n` rows of tokens into `f_hat` ([`issue_f_hat`]): no KV
    /// caches or activations (their one-element stand-ins fail every other launch's shape
    /// check).
    pub fn for_decode(d: &D, c: &VarConfig, n: usize) -> Result<Self, CudaError> {
        Self::alloc(d, c, n, false, false)
    }

    fn alloc(d: &D, c: &VarConfig, n: usize, cfg: bool, full: bool) -> Result<Self, CudaError> {
        let rows = if cfg { 2 * n } else { n };
        let (dim, hid, l) = (c.embed_dim, c.ffn_hidden, c.tokens);
        let p = c.last_side();
        let tmax = p * p;
        let (f16b, f32b) = (2, 4);
        // Elements of a buffer the step needs (one for a decode-only session).
        let sz = |elems: usize| if full { elems.max(1) } else { 1 };
        let cache = sz(rows * c.num_heads * l * c.head_dim) * f16b;
        let f32s = |elems: usize| d.alloc(sz(elems) * f32b);
        let f16s = |elems: usize| d.alloc(sz(elems) * f16b);
        let begins: Vec<u8> = (0..c.scales())
            .flat_map(|s| (c.scale_range(s).start as i32).to_le_bytes())
            .collect();
        let s = VarSession {
            n,
            cfg,
            rows,
            labels: d.alloc(rows * 4)?,
            cond: f16s(rows * dim)?,
            ada: (0..c.depth)
                .map(|_| f32s(rows * 6 * dim))
                .collect::<Result<_, _>>()?,
            head_ada: f32s(rows * 2 * dim)?,
            x: f32s(rows * tmax * dim)?,
            h: f16s(rows * tmax * dim.max(hid))?,
            t: f32s(rows * tmax * (3 * dim).max(hid))?,
            q: f32s(rows * tmax * dim)?,
            logits: f32s(rows * tmax * c.vocab_size)?,
            cache_k: (0..c.depth)
                .map(|_| d.alloc(cache))
                .collect::<Result<_, _>>()?,
            cache_v: (0..c.depth)
                .map(|_| d.alloc(cache))
                .collect::<Result<_, _>>()?,
            tokens: d.alloc(n * l * 4)?,
            ids: d.alloc(sz(n * tmax) * 4)?,
            params: d.alloc(c.scales() * sampler::params_bytes(n))?,
            begins: d.alloc(begins.len())?,
            guidance: f32s(c.scales())?,
            scratch: d.alloc(sz(sampler::scratch_bytes(n * tmax, c.vocab_size)))?,
            // The maps serve decode-only sessions too.
            fmap: d.alloc(rows * p * p * c.cvae * f32b)?,
            f_hat: d.alloc(rows * p * p * c.cvae * f32b)?,
            next: f16s(rows * tmax * c.cvae)?,
            graphs: Vec::new(),
        };
        d.upload(&s.begins, 0, &begins)?;
        Ok(s)
    }

    /// Sets a request: `labels` of the `n` requests (the uncond rows get the null class),
    /// `cfg_scale`, the sampling parameters `base` (`SampleParams::new` for `n` rows) that
    /// every scale uses with its own token block and VAR's top-p rule, and request row r's
    /// random stream `row_keys[r]` (the table always travels: `row_key(seed, r)` draws what
    /// `(base's key, stream r)` does).
    pub fn set_request(
        &self,
        d: &D,
        c: &VarConfig,
        labels: &[i64],
        cfg_scale: f32,
        base: &SampleParams,
        row_keys: &[RowKey],
    ) -> Result<(), CudaError> {
        if labels.len() != self.n {
            return Err(CudaError::call(
                "a VAR request",
                format!("{} labels for a session of {}", labels.len(), self.n),
            ));
        }
        let mut rows: Vec<i32> = Vec::with_capacity(self.rows);
        for &l in labels {
            let ok = usize::try_from(l).is_ok_and(|v| v < c.num_classes);
            if !ok {
                return Err(CudaError::call(
                    "a VAR request",
                    format!("label {l} outside 0..{}", c.num_classes),
                ));
            }
            rows.push(l as i32);
        }
        if self.cfg {
            rows.extend(std::iter::repeat_n(c.num_classes as i32, self.n));
        }
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        d.upload(&self.labels, 0, &bytes)?;
        let t: Vec<u8> = (0..c.scales())
            .flat_map(|s| c.guidance(cfg_scale, s).to_le_bytes())
            .collect();
        d.upload(&self.guidance, 0, &t)?;
        let mut params = Vec::with_capacity(c.scales() * sampler::params_bytes(self.n));
        for s in 0..c.scales() {
            let scale = base.token_blocks(c.scale_range(s).len(), TopPRule::Var);
            params.extend(scale.bytes_with_rows(row_keys)?);
        }
        d.upload(&self.params, 0, &params)
    }

    /// Writes request row `r`'s tokens of scale `si` (for the host-driven loop).
    pub fn set_scale_tokens(
        &self,
        d: &D,
        c: &VarConfig,
        si: usize,
        tokens: &[Vec<u32>],
    ) -> Result<(), CudaError> {
        let range = c.scale_range(si);
        for (r, row) in tokens.iter().enumerate().take(self.n) {
            let part = row.get(range.clone()).ok_or_else(|| {
                CudaError::call("VAR tokens", format!("row {r} has {} tokens", row.len()))
            })?;
            let bytes = token_bytes(c, part)?;
            d.upload(&self.tokens, (r * c.tokens + range.start) * 4, &bytes)?;
        }
        Ok(())
    }

    /// Writes every scale's tokens `[n][L]` (for decoding given tokens).
    pub fn set_tokens(&self, d: &D, c: &VarConfig, tokens: &[Vec<u32>]) -> Result<(), CudaError> {
        if tokens.len() != self.n || tokens.iter().any(|t| t.len() != c.tokens) {
            return Err(CudaError::call(
                "VAR tokens",
                format!("expected {} rows of {} tokens", self.n, c.tokens),
            ));
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        d.upload(&self.tokens, 0, &token_bytes(c, &flat)?)
    }

    /// The cond rows' CFG-combined logits of scale `si`, `[n, T, V]` (waits for the device).
    pub fn read_logits(
        &self,
        d: &D,
        c: &VarConfig,
        si: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        let n = self.n * c.scale_range(si).len() * c.vocab_size;
        download_f32(d, &self.logits, n, out)
    }

    /// Every scale's tokens, `[n][L]` (waits for the device).
    pub fn read_tokens(&self, d: &D, c: &VarConfig) -> Result<Vec<Vec<u32>>, CudaError> {
        download_tokens(d, &self.tokens, self.n, c.tokens)
    }

    /// `f_hat` of the first `n` rows, f32 NHWC `[n, P, P, Cvae]`.
    pub(crate) fn f_hat(&self, d: &D, c: &VarConfig) -> DevSlice<f32> {
        let p = c.last_side();
        let s = d.slice::<f32>(&self.f_hat);
        DevSlice::from_raw(s.addr(), self.n * p * p * c.cvae)
    }
}

fn token_bytes(c: &VarConfig, tokens: &[u32]) -> Result<Vec<u8>, CudaError> {
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
        return Err(CudaError::call(
            "VAR tokens",
            format!("token {t} outside the codebook of {}", c.vocab_size),
        ));
    }
    Ok(tokens
        .iter()
        .flat_map(|&t| (t as i32).to_le_bytes())
        .collect())
}
