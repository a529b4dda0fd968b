//! The GPT on the device: weights from the bundle, per-batch sessions (KV caches, activations,
//! request scalars), and the launch sequence of one decode step, which is captured once per
//! session into a graph and replayed for every token.

use llamagen_bundle::config::GptConfig;
use llamagen_bundle::names::gpt as names;
use llamagen_bundle::rotary;

use crate::device::{download_f32, download_tokens, Device};
use crate::error::CudaError;
use crate::gemm_weight::{DecodeGemm, GemmWeight, WeightDType};
use crate::ops::gpt_split_attention::{self as split, SplitScratch};
use crate::ops::sampler::{self, SampleParams};
use crate::weights::{check_dims, upload_f32, upload_weight_f16, BundleWeights};

mod step;
use step::attn_shape;
pub use step::issue_step;

/// One transformer layer's weights: GEMM matrices `[in, out]` (f16, or int8 from an int8
/// bundle; in the layout of the decode GEMM, [`GemmWeight`]), norm weights f32.
struct Layer<D: Device> {
    wqkv: GemmWeight<D>,
    wo: GemmWeight<D>,
    w13: GemmWeight<D>,
    w2: GemmWeight<D>,
    attention_norm: D::Buf,
    ffn_norm: D::Buf,
}

/// The GPT's device weights and the sizes the launches need.
pub struct GptWeights<D: Device> {
    pub config: GptConfig,
    /// `[vocab + class_rows, dim]` f16: image tokens, then class embeddings.
    embeddings: D::Buf,
    layers: Vec<Layer<D>>,
    norm: D::Buf,
    /// `[dim, vocab]`.
    output: GemmWeight<D>,
    /// Rotary tables f32 `[max_len, head_dim]`.
    cos: D::Buf,
    sin: D::Buf,
}

impl<D: Device> GptWeights<D> {
    /// Uploads the step graph's weights: GEMM weights int8 from int8 bundles, else f16, laid
    /// out for `decode` (int8: always our GEMM).
    pub fn load(
        d: &D,
        w: &BundleWeights,
        c: &GptConfig,
        decode: DecodeGemm,
    ) -> Result<Self, CudaError> {
        let (dim, hd) = (c.dim, c.head_dim);
        let qkv = (c.n_head + 2 * c.n_kv_head) * hd;
        // `pairs`: w1|w3, interleaved for the SwiGLU epilogue in our layouts.
        let gemm = |name: &str, dims: [usize; 2], pairs: bool| {
            GemmWeight::load(d, w, name, dims, decode, pairs)
        };
        let matrix = |name: &str, dims: [usize; 2]| gemm(name, dims, false);
        let table = |name: &str, dims: [usize; 2]| upload_weight_f16(d, w, name, &dims);
        let vector = |name: &str, n: usize| -> Result<D::Buf, CudaError> {
            let t = w.get(name)?;
            check_dims(name, &t.dims, &[n])?;
            upload_f32(d, &t.data)
        };
        let layers = (0..c.n_layer)
            .map(|i| {
                Ok(Layer {
                    wqkv: matrix(&names::wqkv(i), [dim, qkv])?,
                    wo: matrix(&names::wo(i), [c.n_head * hd, dim])?,
                    w13: gemm(&names::w13(i), [dim, 2 * c.ffn_hidden], true)?,
                    w2: matrix(&names::w2(i), [c.ffn_hidden, dim])?,
                    attention_norm: vector(&names::attention_norm(i), dim)?,
                    ffn_norm: vector(&names::ffn_norm(i), dim)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let (cos, sin) = rotary::tables(c);
        Ok(GptWeights {
            embeddings: table(names::EMBEDDINGS, [c.vocab_size + c.class_rows, dim])?,
            layers,
            norm: vector(names::NORM, dim)?,
            output: matrix(names::OUTPUT, [dim, c.vocab_size])?,
            cos: upload_f32(d, &cos)?,
            sin: upload_f32(d, &sin)?,
            config: c.clone(),
        })
    }
}

impl<D: Device> GptWeights<D> {
    /// What the weights occupy on the device.
    pub fn bytes(&self, d: &D) -> WeightBytes {
        let vectors = self
            .layers
            .iter()
            .flat_map(|l| [&l.attention_norm, &l.ffn_norm])
            .chain([&self.embeddings, &self.norm, &self.cos, &self.sin]);
        WeightBytes {
            gemm: self.gemms().map(|g| g.bytes(d)).sum(),
            other: vectors.map(|b| d.len_bytes(b)).sum(),
            gemm_dtype: self.output.dtype(),
            decode_gemm: self.output.decode_gemm(),
        }
    }

    /// Whether a step of `rows` rows runs our GEMM with RMSNorm and SwiGLU fused: every matrix
    /// takes it (one bundle's share a layout).
    fn fused(&self, rows: usize) -> bool {
        self.gemms().all(|g| g.fuses(rows))
    }

    fn gemms(&self) -> impl Iterator<Item = &GemmWeight<D>> {
        self.layers
            .iter()
            .flat_map(|l| [&l.wqkv, &l.wo, &l.w13, &l.w2])
            .chain([&self.output])
    }
}

/// The GPT's weights on the device, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightBytes {
    /// The GEMM matrices (every layer's qkv, wo, w1|w3, w2 and the output projection, int8
    /// scales included): what every decode step reads in full.
    pub gemm: usize,
    /// Everything else: embeddings, norm weights, rotary tables.
    pub other: usize,
    /// The GEMM weights' element type (all of one bundle share it).
    pub gemm_dtype: WeightDType,
    /// The GEMM of decode steps (int8: always ours; ours runs up to
    /// [`crate::gemm_weight::OWN_MAX_ROWS`] rows, cuBLAS beyond).
    pub decode_gemm: DecodeGemm,
}

/// Which decode attention the step launches per layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// `decode_attention_fused`: rotary, the cache write and split-K attention with the merge,
    /// one launch per layer (`ops::gpt_split_attention`).
    #[default]
    Fused,
    /// `rotary_kv_write` then `decode_attention` (one block per (row, head)): the previous pair,
    /// kept to compare against.
    Separate,
}

impl AttentionPath {
    /// The name options and reports use (`fused`, `separate`).
    pub fn name(self) -> &'static str {
        match self {
            AttentionPath::Fused => "fused",
            AttentionPath::Separate => "separate",
        }
    }

    /// Whether this path runs a model whose heads are `head_dim` wide (the separate pair takes
    /// any; the fused kernel 8..256, see [`split::fused_attention_supports`]).
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), CudaError> {
        if self == AttentionPath::Fused && !split::fused_attention_supports(head_dim) {
            return Err(CudaError::call(
                "the fused decode attention",
                format!(
                    "head_dim {head_dim} is not one of 8, 16, 32, 64, 128, 256; use the \
                     separate attention (LLAMAGEN_CUDA_ATTENTION=separate)"
                ),
            ));
        }
        Ok(())
    }
}

/// The attention path's own buffers in a session.
enum AttnBuffers<D: Device> {
    /// f32 partials `[rows, heads, splits, head_dim + 2]` and u32 counters `[rows, heads]`
    /// (zero-filled; every launch leaves them zero), shared by all layers.
    Fused { partials: D::Buf, counters: D::Buf },
    /// Rotated q `[rows, heads * head_dim]` f16, between the two launches.
    Separate { q: D::Buf },
}

/// Device buffers of one batch shape: `rows` GPT rows serving `n` requests (`rows = 2n` with
/// CFG). Owned by one generation at a time; its graph stays valid because no buffer moves.
pub struct Session<D: Device> {
    pub rows: usize,
    pub n: usize,
    x: D::Buf,
    normed: D::Buf,
    qkv: D::Buf,
    attention: AttnBuffers<D>,
    attn: D::Buf,
    h13: D::Buf,
    act: D::Buf,
    logits: D::Buf,
    cache_k: Vec<D::Buf>,
    cache_v: Vec<D::Buf>,
    /// i32 `[rows]`: the step's input ids (written by the sampler for the next step).
    ids: D::Buf,
    /// i32 scalars: cache slot and sampling step of the next step.
    pos: D::Buf,
    step: D::Buf,
    /// i32 `[n, tokens_per_image]`.
    tokens: D::Buf,
    params: D::Buf,
    scratch: D::Buf,
    /// The captured step, once a generation has run on this session.
    pub graph: Option<D::Graph>,
}

impl<D: Device> Session<D> {
    /// Buffers for `rows` GPT rows serving `n` requests of `per` tokens, with the buffers of
    /// `attention` (the step this session launches).
    pub fn new(
        d: &D,
        c: &GptConfig,
        rows: usize,
        n: usize,
        per: usize,
        attention: AttentionPath,
    ) -> Result<Self, CudaError> {
        let (f16, f32, i32) = (2, 4, 4);
        let hd = c.head_dim;
        let cache = rows * c.n_kv_head * c.max_len * hd * f16;
        let layers = |_| d.alloc(cache);
        let attention = match attention {
            AttentionPath::Fused => {
                let shape = attn_shape(c, rows);
                AttnBuffers::Fused {
                    partials: d.alloc(SplitScratch::partials_len(&shape) * f32)?,
                    counters: d.alloc(SplitScratch::counters_len(&shape) * 4)?,
                }
            }
            AttentionPath::Separate => AttnBuffers::Separate {
                q: d.alloc(rows * c.n_head * hd * f16)?,
            },
        };
        Ok(Session {
            rows,
            n,
            x: d.alloc(rows * c.dim * f32)?,
            normed: d.alloc(rows * c.dim * f16)?,
            qkv: d.alloc(rows * (c.n_head + 2 * c.n_kv_head) * hd * f16)?,
            attention,
            attn: d.alloc(rows * c.n_head * hd * f16)?,
            h13: d.alloc(rows * 2 * c.ffn_hidden * f16)?,
            act: d.alloc(rows * c.ffn_hidden * f16)?,
            logits: d.alloc(rows * c.vocab_size * f32)?,
            cache_k: (0..c.n_layer).map(layers).collect::<Result<_, _>>()?,
            cache_v: (0..c.n_layer).map(layers).collect::<Result<_, _>>()?,
            ids: d.alloc(rows * i32)?,
            pos: d.alloc(i32)?,
            step: d.alloc(i32)?,
            tokens: d.alloc(n * per * i32)?,
            params: d.alloc(sampler::params_bytes(n))?,
            scratch: d.alloc(sampler::scratch_bytes(n, c.vocab_size))?,
            graph: None,
        })
    }

    /// Sets the next step's input ids and cache slot / sampling step.
    pub fn set_inputs(&self, d: &D, ids: &[i32], pos: i32, step: i32) -> Result<(), CudaError> {
        let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        d.upload(&self.ids, 0, &bytes)?;
        d.upload(&self.pos, 0, &pos.to_le_bytes())?;
        d.upload(&self.step, 0, &step.to_le_bytes())
    }

    pub fn set_params(&self, d: &D, p: &SampleParams) -> Result<(), CudaError> {
        d.upload(&self.params, 0, &p.to_bytes())
    }

    /// [`Self::set_params`] with one random stream per request row (`n` of them).
    pub fn set_params_rows(
        &self,
        d: &D,
        p: &SampleParams,
        rows: &[sampler::RowKey],
    ) -> Result<(), CudaError> {
        d.upload(&self.params, 0, &p.bytes_with_rows(rows)?)
    }

    /// The logits of the last step, `[rows, vocab]` (waits for the device).
    pub fn read_logits(&self, d: &D, vocab: usize, out: &mut Vec<f32>) -> Result<(), CudaError> {
        download_f32(d, &self.logits, self.rows * vocab, out)
    }

    /// The sampled tokens, `[n][per]` (waits for the device).
    pub fn read_tokens(&self, d: &D, per: usize) -> Result<Vec<Vec<u32>>, CudaError> {
        download_tokens(d, &self.tokens, self.n, per)
    }
}
