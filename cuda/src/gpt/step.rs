//! One decode step's launch sequence on a session ([`issue_step`]), which the engine captures
//! once per session into a graph.

use half::f16;
use llamagen_bundle::config::GptConfig;

use super::{AttnBuffers, GptWeights, Session};
use crate::device::Device;
use crate::error::CudaError;
use crate::gemm_weight::{GemmIn, GemmOut, GemmWeight};
use crate::ops::gpt::{self as k, AttnShape, LayerCache, Rotary};
use crate::ops::gpt_split_attention::{self as split, SplitScratch};
use crate::ops::sampler::{self, SampleIo};

/// The attention shape of `rows` rows of model `c`.
pub(super) fn attn_shape(c: &GptConfig, rows: usize) -> AttnShape {
    AttnShape {
        rows,
        heads: c.n_head,
        kv_heads: c.n_kv_head,
        head_dim: c.head_dim,
        max_len: c.max_len,
    }
}

/// Issues one decode step on `s`: all layers and the logits; with `sample`, also CFG + sampling
/// (writing the token and the next ids) and the position/step advance, so that replaying the
/// captured sequence runs the whole generation loop without the host.
///
/// Per layer, with our decode GEMM ([`GptWeights::fused`]): qkv (RMSNorm in its prologue), the
/// attention (the session's [`super::AttentionPath`]: one fused split-K launch that also rotates and
/// writes the cache, or rotary_kv_write + decode_attention), wo (+ residual), w1|w3 (RMSNorm in,
/// SwiGLU out), w2 (+ residual); the logits GEMM normalises too. With cuBLAS an rms_norm launch
/// precedes the qkv, w1|w3 and logits GEMMs, and a swiglu launch follows w1|w3.
pub fn issue_step<D: Device>(
    d: &D,
    w: &GptWeights<D>,
    s: &Session<D>,
    sample: bool,
) -> Result<(), CudaError> {
    let (c, rows) = (&w.config, s.rows);
    let st = Step {
        d,
        s,
        eps: c.norm_eps,
        dim: c.dim,
        hidden: c.ffn_hidden,
        fused: w.fused(rows),
    };
    let f16s = |b: &D::Buf| d.slice::<f16>(b);
    let f32s = |b: &D::Buf| d.slice::<f32>(b);
    let i32s = |b: &D::Buf| d.slice::<i32>(b);
    let shape = attn_shape(c, rows);
    let rotary = Rotary {
        cos: f32s(&w.cos),
        sin: f32s(&w.sin),
    };
    k::embed_rows(
        d,
        f32s(&s.x),
        f16s(&w.embeddings),
        i32s(&s.ids),
        rows,
        c.dim,
    )?;
    for (l, lw) in w.layers.iter().enumerate() {
        let cache = LayerCache {
            k: f16s(&s.cache_k[l]),
            v: f16s(&s.cache_v[l]),
            pos: i32s(&s.pos),
        };
        let qkv = GemmOut::F16(f16s(&s.qkv));
        lw.wqkv
            .apply(d, st.normed(&lw.attention_norm)?, qkv, rows)?;
        st.attention(cache, rotary, &shape)?;
        st.residual(&s.attn, &lw.wo)?;
        st.feed_forward_act(&lw.ffn_norm, &lw.w13)?;
        st.residual(&s.act, &lw.w2)?;
    }
    let logits = GemmOut::F32 {
        out: f32s(&s.logits),
        accumulate: false,
    };
    w.output.apply(d, st.normed(&w.norm)?, logits, rows)?;
    if sample {
        let io = SampleIo {
            tokens: i32s(&s.tokens),
            ids: i32s(&s.ids),
            logits: f32s(&s.logits),
            params: d.slice::<u8>(&s.params),
            step: i32s(&s.step),
            scratch: d.slice::<u64>(&s.scratch),
        };
        sampler::sample(d, &io, s.n, c.vocab_size)?;
        sampler::advance(d, i32s(&s.pos), i32s(&s.step))?;
    }
    Ok(())
}

/// The launches [`issue_step`] repeats, on one session.
struct Step<'a, D: Device> {
    d: &'a D,
    s: &'a Session<D>,
    eps: f32,
    dim: usize,
    hidden: usize,
    /// Our decode GEMM: RMSNorm and SwiGLU fused into it.
    fused: bool,
}

impl<D: Device> Step<'_, D> {
    /// The GEMM input `rmsnorm(x) * weight`: fused into our GEMM's prologue, else an rms_norm
    /// launch into `normed`.
    fn normed(&self, weight: &D::Buf) -> Result<GemmIn, CudaError> {
        let (d, s) = (self.d, self.s);
        let (x, weight) = (d.slice::<f32>(&s.x), d.slice::<f32>(weight));
        if self.fused {
            return Ok(GemmIn::Norm {
                x,
                weight,
                eps: self.eps,
            });
        }
        let normed = d.slice::<f16>(&s.normed);
        k::rms_norm(d, normed, x, weight, s.rows, self.dim, self.eps)?;
        Ok(GemmIn::F16(normed))
    }

    /// The layer's attention on the qkv projection into `attn`, by the session's path.
    fn attention(
        &self,
        cache: LayerCache,
        rotary: Rotary,
        shape: &AttnShape,
    ) -> Result<(), CudaError> {
        let (d, s) = (self.d, self.s);
        let (attn, qkv) = (d.slice::<f16>(&s.attn), d.slice::<f16>(&s.qkv));
        match &s.attention {
            AttnBuffers::Fused { partials, counters } => {
                let scratch = SplitScratch {
                    partials: d.slice::<f32>(partials),
                    counters: d.slice::<u32>(counters),
                };
                split::decode_attention_fused(d, attn, cache, qkv, rotary, scratch, shape)
            }
            AttnBuffers::Separate { q } => {
                let q = d.slice::<f16>(q);
                k::rotary_kv_write(d, q, cache, qkv, rotary, shape)?;
                k::decode_attention(d, attn, q, cache, shape)
            }
        }
    }

    /// x += inp . W: the residual add fused into the GEMM.
    fn residual(&self, inp: &D::Buf, wt: &GemmWeight<D>) -> Result<(), CudaError> {
        let x = GemmOut::F32 {
            out: self.d.slice::<f32>(&self.s.x),
            accumulate: true,
        };
        wt.apply(self.d, GemmIn::F16(self.d.slice(inp)), x, self.s.rows)
    }

    /// act = swiglu(rmsnorm(x) * norm . w13): one GEMM with the SwiGLU epilogue, else the
    /// GEMM into `h13` and a swiglu launch.
    fn feed_forward_act(&self, norm: &D::Buf, w13: &GemmWeight<D>) -> Result<(), CudaError> {
        let (d, s) = (self.d, self.s);
        let act = d.slice::<f16>(&s.act);
        let input = self.normed(norm)?;
        if self.fused {
            return w13.apply(d, input, GemmOut::SwiGlu(act), s.rows);
        }
        let h13 = d.slice::<f16>(&s.h13);
        w13.apply(d, input, GemmOut::F16(h13), s.rows)?;
        k::swiglu(d, act, h13, s.rows, self.hidden)
    }
}
