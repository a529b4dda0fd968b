//! Sampling options of one request, with the official `sample_c2i.py` defaults. The CPU
//! sampler (llamagen-runtime) and the device sampler (the CUDA backend) take the same options
//! and draw from the same Philox stream ([`crate::philox`]).

/// Largest vocabulary the samplers' fixed-point weights support: `2^20 * 2^40` (plus rounding)
/// fits in u64.
pub const MAX_VOCAB: usize = 1 << 20;

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Logits are divided by `max(temperature, 1e-5)`.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (ties with the k-th kept); 0 = off. Clamped to the vocab.
    pub top_k: usize,
    /// Nucleus threshold; `1.0` (or more) = off.
    pub top_p: f32,
}

impl Default for SamplingOptions {
    /// Official `sample_c2i.py` defaults: temperature 1.0, top-k 2000, top-p 1.0.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 2000,
            top_p: 1.0,
        }
    }
}

/// Which sorted prefix top-p keeps (tokens sorted by descending probability, ties by id). Both
/// rules always keep the most likely token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopPRule {
    /// LlamaGen's `top_k_top_p_filtering`: a token is kept while the mass before it is
    /// `<= top_p` (keep up to the first position whose cumulative mass exceeds the threshold).
    #[default]
    LlamaGen,
    /// VAR's `sample_with_top_k_top_p_` (ascending cumulative probability `<= 1 - top_p`
    /// removed): a token is kept while the mass before it is `< top_p` (keep up to the first
    /// position whose cumulative mass reaches the threshold).
    Var,
}

impl TopPRule {
    /// The fixed-point threshold the shared `cum > thr` search uses for `thr`, the trunc of
    /// `top_p` times the total weight: `cum >= thr` is `cum > thr - 1` on integers, and at
    /// `thr = 0` both rules keep the first token only.
    pub fn strict_threshold(self, thr: u64) -> u64 {
        match self {
            TopPRule::LlamaGen => thr,
            TopPRule::Var => thr.saturating_sub(1),
        }
    }
}

impl SamplingOptions {
    /// Greedy decoding (top-k 1): every sampler returns the argmax of the logits.
    pub fn greedy() -> Self {
        Self {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        }
    }
}
