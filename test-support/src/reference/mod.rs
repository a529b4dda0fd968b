//! An independent, naive f32 reference of the official LlamaGen class-conditional GPT
//! (`autoregressive/models/gpt.py` + `generate.py`) and of the VQ decoder
//! (`tokenizer/tokenizer_image/vq_model.py`), and of VAR (`models/var.py`, `basic_var.py`,
//! `quant.py`, `vqvae.py`, `basic_vae.py`: [`VarModelRef`]), written from the official Python
//! code in plain Rust.
//!
//! It is the "own seeded reference" the end-to-end tests compare our ONNX graphs against where no
//! official outputs exist (official sizes such as GPT-B / VQ-16). It is itself checked against the
//! official goldens in `tests/reference_vs_golden.rs` and `tests/var_reference_vs_golden.rs`.
//!
//! Clarity over speed, but the loops are cache friendly (row-major weights read contiguously,
//! convolutions accumulate whole output rows) so a GPT-B decode step and a small VQ-16 decode stay
//! fast with the test profile's opt-level 2.
//!
//! Weights: a map from the official state-dict key (e.g. `layers.0.attention.wqkv.weight`) to
//! (shape, f32 data in C order); the tests read them from official-format checkpoints with the
//! compiler's checkpoint reader (this crate depends on no crate of the workspace).
//!
//! Shape conventions: GPT activations are `[batch][dim]` per position; the KV cache is
//! `[layer][batch][head][max_len][head_dim]` with `max_len = cls_token_num + block_size`; VQ feature
//! maps are CHW (one image at a time) and the decoded image is `[3, H, W]` in C order.
use std::collections::HashMap;

mod gpt;
mod var;
mod var_arch;
mod var_quant;
mod var_vae;
mod vq;

pub use gpt::*;
pub use var::*;
pub use var_arch::*;
pub use var_quant::*;
pub use var_vae::*;
pub use vq::*;

/// Official state-dict key -> (shape, f32 data in C order).
pub type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The tensor `key`, checked against the expected shape (panics with a clear message otherwise).
pub(crate) fn tensor<'w>(weights: &'w Weights, key: &str, shape: &[usize]) -> &'w [f32] {
    let (got_shape, data) = weights
        .get(key)
        .unwrap_or_else(|| panic!("reference: missing weight '{key}' (expected shape {shape:?})"));
    assert_eq!(
        got_shape.as_slice(),
        shape,
        "reference: weight '{key}' has shape {got_shape:?}, expected {shape:?}"
    );
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "reference: weight '{key}' data length"
    );
    data
}

/// `find_multiple(n, k)` from gpt.py: n rounded up to a multiple of k.
pub fn find_multiple(n: usize, k: usize) -> usize {
    if n.is_multiple_of(k) {
        n
    } else {
        n + k - n % k
    }
}

/// SwiGLU hidden size of the official FeedForward (no ffn_dim_multiplier, multiple_of 256).
pub fn ffn_hidden(dim: usize) -> usize {
    find_multiple(2 * (4 * dim) / 3, 256)
}

/// Dot product with 8 independent accumulators (lets the compiler vectorise; also a little more
/// accurate than one running sum).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `nn.Linear` without bias: `w` is `[out, in]` row-major; applied to every row of `xs`.
pub(crate) fn linear(w: &[f32], out_dim: usize, in_dim: usize, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    assert_eq!(w.len(), out_dim * in_dim);
    let mut ys = vec![vec![0f32; out_dim]; xs.len()];
    for (o, row) in w.chunks_exact(in_dim).enumerate() {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            y[o] = dot(row, x);
        }
    }
    ys
}

/// Official RMSNorm in f32: `x * rsqrt(mean(x^2) + eps) * weight`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let ms = (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64) as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(weight).map(|(&v, &g)| (v * r) * g).collect()
}

pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Argmax (first maximum), what greedy sampling (top_k = 1) picks.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
