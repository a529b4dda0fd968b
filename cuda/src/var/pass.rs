//! The launch sequence of one VAR scale on a session ([`issue_scale`]) and of `f_hat`
//! ([`issue_f_hat`]); see the parent module for the sequence.

use half::f16;

use super::VarSession;
use crate::device::{DType, DevSlice, Device, Gemm};
use crate::error::CudaError;
use crate::ops::sampler::{self, SampleIo};
use crate::ops::var::{self as k, Ada, AttnShape, Block, Cache, MapShape, ScaleTokens};
use crate::var_weights::{phi_slot, BlockAda, Linear, VarWeights};

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
