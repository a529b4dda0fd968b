//! Building blocks of the VAR graphs: Linear with bias, LayerNorm without affine, AdaLN
//! modulation, GELU(tanh), L2 normalisation and the unmasked cached attention.
//!
//! Shapes: hidden states `[B, T, C]` (T, the scale's token count, is symbolic); per-head
//! tensors `[B, H, T, hd]`; caches `[B, H, tokens, hd]`.

use std::sync::Arc;

use llamagen_bundle::names;

use crate::ir::{Graph, Op, ValueId};
use crate::models::precision::{Emitter, WeightFn};
use crate::models::weights::transpose;

/// A torch `Linear` named `prefix` (`[out, in]` weight, stored transposed as `prefix.weight.T`
/// at the emitter's precision; f32 bias) applied to `x`.
pub fn linear(
    g: &mut Graph,
    em: &mut Emitter,
    prefix: &str,
    x: ValueId,
    out: usize,
    inp: usize,
    bias: bool,
) -> ValueId {
    let key = format!("{prefix}.weight");
    let name = names::gpt::transposed(&key);
    let f: WeightFn = Arc::new(move |s| Ok(transpose(&s.load(&key, &[out, inp])?, out, inp)));
    let w = em.weight(g, &name, vec![inp, out], 1, f);
    let y = em.apply(g, prefix, Op::MatMul, x, &[w]);
    if !bias {
        return y;
    }
    let b = vector(g, em, &format!("{prefix}.bias"), out);
    g.wire(&format!("{prefix}.add_bias"), Op::Add, &[y, b])
}

/// An f32 vector of the checkpoint, stored under its key.
pub fn vector(g: &mut Graph, em: &mut Emitter, key: &str, n: usize) -> ValueId {
    let k = key.to_string();
    let f: WeightFn = Arc::new(move |s| s.load(&k, &[n]));
    em.vector(g, key, vec![n], f)
}

/// `nn.LayerNorm(elementwise_affine=False)` over the last axis (of width `dim`), in f32: ONNX's
/// LayerNormalization (opset 17) with unit scale, one kernel instead of seven elementwise passes.
pub fn layer_norm(g: &mut Graph, name: &str, x: ValueId, dim: usize, eps: f32) -> ValueId {
    let one = g.shared_f32(&format!("const.ln_scale.{dim}"), vec![dim], vec![1.0; dim]);
    g.wire(
        name,
        Op::LayerNormalization {
            axis: -1,
            epsilon: eps,
        },
        &[x, one],
    )
}

/// `LN(x) * (1 + scale) + shift` with `scale`, `shift` `[B, 1, C]`.
pub fn modulate(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    [scale, shift]: [ValueId; 2],
    dim: usize,
    eps: f32,
) -> ValueId {
    let one = g.scalar_f32("const.one", 1.0);
    let n = layer_norm(g, &format!("{name}.ln"), x, dim, eps);
    let s1 = g.wire(&format!("{name}.one_plus_scale"), Op::Add, &[scale, one]);
    let y = g.wire(&format!("{name}.scale"), Op::Mul, &[n, s1]);
    g.wire(&format!("{name}.shift"), Op::Add, &[y, shift])
}

/// `x * sigmoid(x)` (SiLU).
pub fn silu(g: &mut Graph, name: &str, x: ValueId) -> ValueId {
    let s = g.wire(&format!("{name}.sigmoid"), Op::Sigmoid, &[x]);
    g.wire(name, Op::Mul, &[x, s])
}

/// `nn.GELU(approximate='tanh')`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, as ONNX's
/// `Gelu` (opset 20, which makes this graph opset 20). ONNX Runtime runs it as one kernel; the
/// nine elementwise ops of the formula measured 4x its time on `[2, 256, 4096]` (16.9 ms vs
/// 4.0 ms, max difference 4.8e-7), and its fusion pass did not match them.
pub fn gelu_tanh(g: &mut Graph, name: &str, x: ValueId) -> ValueId {
    g.wire(name, Op::GeluTanh, &[x])
}

/// `F.normalize(x, dim=-1) * scale`: `x * (scale / max(||x||, 1e-12))` with `scale`
/// broadcast against the `[.., 1]` norms (`None`: 1). Dividing the small norm tensor first
/// leaves one pass over `x` (ReduceL2, Clip on the norms, one Div or Mul), where the
/// square/mean/sqrt/divide/scale chain took five (VAR-d16's step: ~5% of the loop).
pub fn l2_normalize(g: &mut Graph, name: &str, x: ValueId, scale: Option<ValueId>) -> ValueId {
    let eps = g.scalar_f32("const.l2_eps", 1e-12);
    let norm = g.wire(
        &format!("{name}.norm"),
        Op::ReduceL2 {
            axes: vec![-1],
            keepdims: true,
        },
        &[x],
    );
    let absent = g.absent();
    let norm = g.wire(&format!("{name}.clip"), Op::Clip, &[norm, eps, absent]);
    match scale {
        None => g.wire(name, Op::Div, &[x, norm]),
        Some(s) => {
            let factor = g.wire(&format!("{name}.factor"), Op::Div, &[s, norm]);
            g.wire(name, Op::Mul, &[x, factor])
        }
    }
}
