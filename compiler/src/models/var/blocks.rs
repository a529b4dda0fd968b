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

/// `nn.LayerNorm(elementwise_affine=False)` over the last axis, in f32.
pub fn layer_norm(g: &mut Graph, name: &str, x: ValueId, eps: f32) -> ValueId {
    let mean = |g: &mut Graph, n: &str, v: ValueId| {
        g.wire(
            n,
            Op::ReduceMean {
                axes: vec![-1],
                keepdims: true,
            },
            &[v],
        )
    };
    let mu = mean(g, &format!("{name}.mean"), x);
    let d = g.wire(&format!("{name}.center"), Op::Sub, &[x, mu]);
    let sq = g.wire(&format!("{name}.sq"), Op::Mul, &[d, d]);
    let var = mean(g, &format!("{name}.var"), sq);
    let eps = g.scalar_f32(&format!("const.eps.{eps:e}"), eps);
    let var = g.wire(&format!("{name}.add_eps"), Op::Add, &[var, eps]);
    let sd = g.wire(&format!("{name}.sqrt"), Op::Sqrt, &[var]);
    g.wire(&format!("{name}.div"), Op::Div, &[d, sd])
}

/// `LN(x) * (1 + scale) + shift` with `scale`, `shift` `[B, 1, C]`.
pub fn modulate(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    scale: ValueId,
    shift: ValueId,
    eps: f32,
) -> ValueId {
    let one = g.scalar_f32("const.one", 1.0);
    let n = layer_norm(g, &format!("{name}.ln"), x, eps);
    let s1 = g.wire(&format!("{name}.one_plus_scale"), Op::Add, &[scale, one]);
    let y = g.wire(&format!("{name}.scale"), Op::Mul, &[n, s1]);
    g.wire(&format!("{name}.shift"), Op::Add, &[y, shift])
}

/// `x * sigmoid(x)` (SiLU).
pub fn silu(g: &mut Graph, name: &str, x: ValueId) -> ValueId {
    let s = g.wire(&format!("{name}.sigmoid"), Op::Sigmoid, &[x]);
    g.wire(name, Op::Mul, &[x, s])
}

/// `nn.GELU(approximate='tanh')`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(g: &mut Graph, name: &str, x: ValueId) -> ValueId {
    let c = g.scalar_f32("const.gelu.cubic", 0.044715);
    let k = g.scalar_f32(
        "const.gelu.sqrt_2_over_pi",
        (2.0f64 / std::f64::consts::PI).sqrt() as f32,
    );
    let half = g.scalar_f32("const.half", 0.5);
    let one = g.scalar_f32("const.one", 1.0);
    let x2 = g.wire(&format!("{name}.x2"), Op::Mul, &[x, x]);
    let x3 = g.wire(&format!("{name}.x3"), Op::Mul, &[x2, x]);
    let cx3 = g.wire(&format!("{name}.cx3"), Op::Mul, &[x3, c]);
    let inner = g.wire(&format!("{name}.inner"), Op::Add, &[x, cx3]);
    let inner = g.wire(&format!("{name}.inner_k"), Op::Mul, &[inner, k]);
    let t = g.wire(&format!("{name}.tanh"), Op::Tanh, &[inner]);
    let t1 = g.wire(&format!("{name}.one_plus"), Op::Add, &[t, one]);
    let hx = g.wire(&format!("{name}.half_x"), Op::Mul, &[x, half]);
    g.wire(name, Op::Mul, &[hx, t1])
}

/// `F.normalize(x, dim=-1)` over a last axis of `dim`: `x / max(||x||, 1e-12)`. The sum of
/// squares is `dim * ReduceMean` (opset 17's ReduceSum takes its axes as an input; ReduceMean
/// keeps one reduction form across the graphs).
pub fn l2_normalize(g: &mut Graph, name: &str, x: ValueId, dim: usize) -> ValueId {
    let eps = g.scalar_f32("const.l2_eps", 1e-12);
    let n = g.scalar_f32(&format!("const.n.{dim}"), dim as f32);
    let sq = g.wire(&format!("{name}.sq"), Op::Mul, &[x, x]);
    let mean = g.wire(
        &format!("{name}.mean"),
        Op::ReduceMean {
            axes: vec![-1],
            keepdims: true,
        },
        &[sq],
    );
    let sum = g.wire(&format!("{name}.sum"), Op::Mul, &[mean, n]);
    let norm = g.wire(&format!("{name}.norm"), Op::Sqrt, &[sum]);
    let absent = g.absent();
    let norm = g.wire(&format!("{name}.clip"), Op::Clip, &[norm, eps, absent]);
    g.wire(name, Op::Div, &[x, norm])
}

/// Splits `[B, k * C]` into k `[B, 1, C]` modulation vectors (AdaLN's `view(-1, 1, k, C)
/// .unbind(2)`).
pub fn split_modulation(
    g: &mut Graph,
    name: &str,
    ada: ValueId,
    k: usize,
    c: usize,
) -> Vec<ValueId> {
    let shape = g.const_i64(&format!("const.shape.ada{k}.{c}"), &[0, k as i64, c as i64]);
    let r = g.wire(&format!("{name}.rows"), Op::Reshape, &[ada, shape]);
    let ones = g.const_i64(&format!("const.split.ones{k}"), &vec![1; k]);
    g.wire_n(
        &format!("{name}.split"),
        Op::Split { axis: 1 },
        &[r, ones],
        k,
    )
}
