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

use half::f16;
use llamagen_bundle::sampling::TopPRule;
use llamagen_bundle::VarConfig;

use crate::device::{DType, DevSlice, Device, Gemm};
use crate::error::CudaError;
use crate::ops::sampler::{self, RowKey, SampleIo, SampleParams};
use crate::ops::var::{self as k, Ada, AttnShape, Block, Cache, MapShape, ScaleTokens};
use crate::var_weights::{phi_slot, BlockAda, Linear, VarWeights};

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
        let mut bytes = vec![0u8; n * 4];
        d.download(&self.logits, 0, &mut bytes)?;
        out.clear();
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }

    /// Every scale's tokens, `[n][L]` (waits for the device).
    pub fn read_tokens(&self, d: &D, c: &VarConfig) -> Result<Vec<Vec<u32>>, CudaError> {
        let mut bytes = vec![0u8; self.n * c.tokens * 4];
        d.download(&self.tokens, 0, &mut bytes)?;
        let flat: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
            .collect();
        Ok(flat.chunks(c.tokens).map(<[u32]>::to_vec).collect())
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

/// The launches of one session, with typed views of its buffers.
struct Pass<'a, D: Device> {
    d: &'a D,
    w: &'a VarWeights<D>,
    s: &'a VarSession<D>,
}

impl<D: Device> Pass<'_, D> {
    fn f32s(&self, b: &D::Buf) -> DevSlice<f32> {
        self.d.slice(b)
    }
    fn f16s(&self, b: &D::Buf) -> DevSlice<f16> {
        self.d.slice(b)
    }

    /// `out[m, out_n] = a[m, k] . W` (f32 or f16 out).
    fn gemm(
        &self,
        a: &D::Buf,
        w: &D::Buf,
        out: &D::Buf,
        [m, kd, n]: [usize; 3],
        ty: DType,
    ) -> Result<(), CudaError> {
        let d = self.d;
        self.f16s(a).require("a VAR GEMM", "input", m * kd)?;
        self.f16s(w).require("a VAR GEMM", "weight", kd * n)?;
        let elems = match ty {
            DType::F16 => self.f16s(out).len(),
            DType::F32 => self.f32s(out).len(),
        };
        if elems < m * n {
            return Err(CudaError::call(
                "a VAR GEMM",
                format!("output holds {elems} values, the shape needs {}", m * n),
            ));
        }
        d.gemm(&Gemm::dense(
            m,
            n,
            kd,
            d.addr(a),
            d.addr(w),
            d.addr(out),
            ty,
        ))
    }

    /// Scale 0's prologue: conditions, AdaLN vectors, first inputs, `f_hat = 0`.
    fn prologue(&self) -> Result<(), CudaError> {
        let (d, w, s) = (self.d, self.w, self.s);
        let c = &w.config;
        let (rows, dim) = (s.rows, c.embed_dim);
        let labels = d.slice::<i32>(&s.labels);
        k::cond_silu(
            d,
            self.f16s(&s.cond),
            self.f32s(&w.class_emb),
            labels,
            rows,
            dim,
        )?;
        let ada = |lin: &Linear<D>, out: &D::Buf, n: usize| -> Result<(), CudaError> {
            self.gemm(&s.cond, &lin.w, out, [rows, dim, n], DType::F32)?;
            k::bias_rows(
                d,
                self.f32s(out),
                self.f32s(out),
                self.f32s(&lin.b),
                rows,
                n,
            )
        };
        if let Some(shared) = &w.shared_ada {
            // Every block's vectors = shared linear + its own ada_gss.
            let first = s
                .ada
                .first()
                .ok_or_else(|| CudaError::call("VAR", "no blocks"))?;
            ada(shared, first, 6 * dim)?;
            for (b, out) in w.blocks.iter().zip(&s.ada).rev() {
                if let BlockAda::Shared(gss) = &b.ada {
                    k::bias_rows(
                        d,
                        self.f32s(out),
                        self.f32s(first),
                        self.f32s(gss),
                        rows,
                        6 * dim,
                    )?;
                }
            }
        } else {
            for (b, out) in w.blocks.iter().zip(&s.ada) {
                if let BlockAda::Own(lin) = &b.ada {
                    ada(lin, out, 6 * dim)?;
                }
            }
        }
        ada(&w.head_ada, &s.head_ada, 2 * dim)?;
        let first = c.scale_range(0).len();
        k::first_inputs(
            d,
            self.f32s(&s.x),
            self.f32s(&w.class_emb),
            labels,
            self.f32s(&w.positions),
            [rows, first, dim],
        )?;
        k::zero(d, self.f32s(&s.f_hat))
    }

    /// `f_hat += phi(resize(codebook[tokens of scale j]))`.
    fn accumulate(&self, j: usize) -> Result<(), CudaError> {
        let (d, w, s) = (self.d, self.w, self.s);
        let c = &w.config;
        let m = MapShape {
            rows: s.rows,
            side: c.last_side(),
            cvae: c.cvae,
        };
        let st = ScaleTokens {
            tokens: d.slice(&s.tokens),
            n: s.n,
            tokens_total: c.tokens,
            begin: c.scale_range(j).start,
            pn: c.patch_nums[j],
        };
        let up = &w.upsample[j];
        k::embed_resize(
            d,
            self.f32s(&s.fmap),
            &st,
            self.f32s(&w.codebook),
            self.f32s(up),
            m,
        )?;
        // Checked when the weights were loaded.
        let phi = &w.phis[phi_slot(c, j).unwrap_or(0)];
        let pw = [self.f32s(&phi.w), self.f32s(&phi.b)];
        k::phi_accumulate(
            d,
            self.f32s(&s.f_hat),
            self.f32s(&s.fmap),
            pw,
            c.quant_resi,
            m,
        )
    }

    /// Scale `si > 0`'s inputs from `f_hat`: area down, `word_embed`, `+ bias + positions`.
    fn next_inputs(&self, si: usize) -> Result<(), CudaError> {
        let (d, w, s) = (self.d, self.w, self.s);
        let c = &w.config;
        let pn = c.patch_nums[si];
        let tokens = pn * pn;
        let m = MapShape {
            rows: s.rows,
            side: c.last_side(),
            cvae: c.cvae,
        };
        let down = &w.downsample[si];
        k::area_tokens(
            d,
            self.f16s(&s.next),
            self.f32s(&s.f_hat),
            self.f32s(down),
            pn,
            m,
        )?;
        let rows = s.rows * tokens;
        self.gemm(
            &s.next,
            &w.word_embed.w,
            &s.x,
            [rows, c.cvae, c.embed_dim],
            DType::F32,
        )?;
        let b = Block {
            rows: s.rows,
            tokens,
            dim: c.embed_dim,
        };
        let (bias, pos) = (self.f32s(&w.word_embed.b), self.f32s(&w.positions));
        k::add_positions(d, self.f32s(&s.x), bias, pos, c.scale_range(si).start, b)
    }

    /// The transformer over scale `si`'s block and the head: CFG-combined logits.
    fn transformer(&self, si: usize) -> Result<(), CudaError> {
        let (d, w, s) = (self.d, self.w, self.s);
        let c = &w.config;
        let range = c.scale_range(si);
        let (dim, hid) = (c.embed_dim, c.ffn_hidden);
        let b = Block {
            rows: s.rows,
            tokens: range.len(),
            dim,
        };
        let tr = s.rows * range.len();
        let shape = AttnShape {
            rows: s.rows,
            tokens: range.len(),
            heads: c.num_heads,
            head_dim: c.head_dim,
            cache_len: c.tokens,
            pos: range.start,
        };
        let x = self.f32s(&s.x);
        let t = self.f32s(&s.t);
        for (l, blk) in w.blocks.iter().enumerate() {
            let ada = Ada {
                ada: self.f32s(&s.ada[l]),
                width: 6 * dim,
            };
            // Chunks: gamma1, gamma2, scale1, scale2, shift1, shift2.
            let chunk = |i: usize| i * dim;
            let cache = Cache {
                k: self.f16s(&s.cache_k[l]),
                v: self.f16s(&s.cache_v[l]),
            };
            k::adaln(
                d,
                self.f16s(&s.h),
                x,
                ada,
                [chunk(2), chunk(4)],
                b,
                c.norm_eps,
            )?;
            self.gemm(&s.h, &blk.qkv.w, &s.t, [tr, dim, 3 * dim], DType::F32)?;
            let qb = [self.f32s(&blk.qkv.b), self.f32s(&blk.q_scale)];
            k::qkv(d, self.f32s(&s.q), cache, t, qb, c.attn_l2_norm, &shape)?;
            k::attention(d, self.f16s(&s.h), self.f32s(&s.q), cache, &shape)?;
            self.gemm(&s.h, &blk.proj.w, &s.t, [tr, dim, dim], DType::F32)?;
            k::gate_residual(d, x, t, self.f32s(&blk.proj.b), ada, chunk(0), b)?;
            k::adaln(
                d,
                self.f16s(&s.h),
                x,
                ada,
                [chunk(3), chunk(5)],
                b,
                c.norm_eps,
            )?;
            self.gemm(&s.h, &blk.fc1.w, &s.t, [tr, dim, hid], DType::F32)?;
            k::gelu_bias(d, self.f16s(&s.h), t, self.f32s(&blk.fc1.b), tr, hid)?;
            self.gemm(&s.h, &blk.fc2.w, &s.t, [tr, hid, dim], DType::F32)?;
            k::gate_residual(d, x, t, self.f32s(&blk.fc2.b), ada, chunk(1), b)?;
        }
        let head_ada = Ada {
            ada: self.f32s(&s.head_ada),
            width: 2 * dim,
        };
        k::adaln(d, self.f16s(&s.h), x, head_ada, [0, dim], b, c.norm_eps)?;
        let v = c.vocab_size;
        self.gemm(&s.h, &w.head.w, &s.logits, [tr, dim, v], DType::F32)?;
        let guidance = self.f32s(&s.guidance).at("VAR guidance", si, 1)?;
        let m = s.n * range.len();
        k::head_cfg(
            d,
            self.f32s(&s.logits),
            self.f32s(&w.head.b),
            guidance,
            m,
            s.cfg,
            v,
        )
    }

    /// The device sampler over scale `si`'s `n T` cond token rows.
    fn sample(&self, si: usize) -> Result<(), CudaError> {
        let (d, s, c) = (self.d, self.s, &self.w.config);
        let bytes = sampler::params_bytes(s.n);
        let params = d
            .slice::<u8>(&s.params)
            .at("VAR sampling parameters", si * bytes, bytes)?;
        let io = SampleIo {
            tokens: d.slice(&s.tokens),
            ids: d.slice(&s.ids),
            logits: self.f32s(&s.logits),
            params,
            step: d.slice::<i32>(&s.begins).at("VAR scale begins", si, 1)?,
            scratch: d.slice(&s.scratch),
        };
        sampler::sample(d, &io, s.n * c.scale_range(si).len(), c.vocab_size)
    }
}

/// Issues scale `si` on session `s`: its inputs (the prologue at scale 0, else from the
/// tokens of the scales before), the transformer and the head; with `sample`, the device
/// sampler writes the scale's tokens.
pub fn issue_scale<D: Device>(
    d: &D,
    w: &VarWeights<D>,
    s: &VarSession<D>,
    si: usize,
    sample: bool,
) -> Result<(), CudaError> {
    let c = &w.config;
    if si >= c.scales() {
        return Err(CudaError::call(
            "a VAR scale",
            format!("scale {si} of {}", c.scales()),
        ));
    }
    let pass = Pass { d, w, s };
    if si == 0 {
        pass.prologue()?;
    } else {
        pass.accumulate(si - 1)?;
        pass.next_inputs(si)?;
    }
    pass.transformer(si)?;
    if sample {
        pass.sample(si)?;
    }
    Ok(())
}

/// `f_hat` of every scale's tokens (already in the session), from zero.
pub fn issue_f_hat<D: Device>(
    d: &D,
    w: &VarWeights<D>,
    s: &VarSession<D>,
) -> Result<(), CudaError> {
    let pass = Pass { d, w, s };
    k::zero(d, d.slice(&s.f_hat))?;
    for j in 0..w.config.scales() {
        pass.accumulate(j)?;
    }
    Ok(())
}
