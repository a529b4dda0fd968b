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
