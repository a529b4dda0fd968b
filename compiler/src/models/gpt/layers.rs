//! Building blocks of the GPT step graph: RMSNorm, 2D rotary, cached attention, SwiGLU.
//!
//! Shapes: hidden states `[B, T, dim]`; per-head tensors `[B, H, T, head_dim]`; caches
//! `[B, H, max_len, head_dim]`. T (the step's token count) is static.

use crate::ir::{Graph, Op, ValueId};
use crate::models::precision::Emitter;

/// RMSNorm in the form ONNX Runtime fuses (Pow, ReduceMean, Add, Sqrt, Div, Mul); fp32.
pub fn rms_norm(g: &mut Graph, name: &str, x: ValueId, weight: ValueId, eps: f32) -> ValueId {
    let two = g.scalar_f32("const.two", 2.0);
    let eps = g.scalar_f32(&format!("const.eps.{eps:e}"), eps);
    let sq = g.wire(&format!("{name}.sq"), Op::Pow, &[x, two]);
    let mean = g.wire(
        &format!("{name}.mean"),
        Op::ReduceMean {
            axes: vec![-1],
            keepdims: true,
        },
        &[sq],
    );
    let var = g.wire(&format!("{name}.add_eps"), Op::Add, &[mean, eps]);
    let rms = g.wire(&format!("{name}.sqrt"), Op::Sqrt, &[var]);
    let normed = g.wire(&format!("{name}.div"), Op::Div, &[x, rms]);
    g.wire(&format!("{name}.scale"), Op::Mul, &[normed, weight])
}

/// Rotary on `[..., head_dim]` as `x * cos + (x @ swap) * sin` (see `rotary.rs`), with cos/sin
/// broadcastable to `x`.
pub fn rotary(g: &mut Graph, name: &str, x: ValueId, tables: &RotaryInputs) -> ValueId {
    let xc = g.wire(&format!("{name}.x_cos"), Op::Mul, &[x, tables.cos]);
    let swapped = g.wire(&format!("{name}.swap"), Op::MatMul, &[x, tables.swap]);
    let xs = g.wire(&format!("{name}.x_sin"), Op::Mul, &[swapped, tables.sin]);
    g.wire(&format!("{name}.out"), Op::Add, &[xc, xs])
}

/// Rotary inputs of one step, shared by all layers.
pub struct RotaryInputs {
    pub cos: ValueId,
    pub sin: ValueId,
    /// `[head_dim, head_dim]` pair-swap matrix.
    pub swap: ValueId,
}

/// Masks shared by every layer of one step.
pub struct StepMasks {
    /// `[max_len]`: 0 for cache slots < position, -inf for the rest.
    pub cache_bias: ValueId,
    /// `[T, T]`: causal bias among the step's own tokens (constant).
    pub local_bias: ValueId,
    /// `[2]` split sizes `[max_len, T]` of the concatenated attention weights (constant).
    pub split_sizes: ValueId,
}

/// Attention of `q` `[B,H,T,hd]` (already scaled) over the cache slots before `position` and
/// the step's own keys/values `k`, `v` `[B,H,T,hd]`. The cache is read, never copied or grown.
#[allow(clippy::too_many_arguments)]
pub fn cached_attention(
    g: &mut Graph,
    name: &str,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    past_k: ValueId,
    past_v: ValueId,
    masks: &StepMasks,
) -> ValueId {
    // Transpose + MatMul: ONNX Runtime fuses the pair into one FusedMatMul (transB).
    let kt = Op::Transpose {
        perm: vec![0, 1, 3, 2],
    };
    let past_kt = g.wire(&format!("{name}.past_kt"), kt.clone(), &[past_k]);
    let s_cache = g.wire(&format!("{name}.scores_cache"), Op::MatMul, &[q, past_kt]);
    let s_cache = g.wire(
        &format!("{name}.scores_cache_masked"),
        Op::Add,
        &[s_cache, masks.cache_bias],
    );
    let new_kt = g.wire(&format!("{name}.new_kt"), kt, &[k]);
    let s_new = g.wire(&format!("{name}.scores_new"), Op::MatMul, &[q, new_kt]);
    let s_new = g.wire(
        &format!("{name}.scores_new_masked"),
        Op::Add,
        &[s_new, masks.local_bias],
    );
    let s = g.wire(
        &format!("{name}.scores"),
        Op::Concat { axis: -1 },
        &[s_cache, s_new],
    );
    let p = g.wire(&format!("{name}.probs"), Op::Softmax { axis: -1 }, &[s]);
    let parts = g.wire_n(
        &format!("{name}.probs_split"),
        Op::Split { axis: -1 },
        &[p, masks.split_sizes],
        2,
    );
    let o_cache = g.wire(
        &format!("{name}.out_cache"),
        Op::MatMul,
        &[parts[0], past_v],
    );
    let o_new = g.wire(&format!("{name}.out_new"), Op::MatMul, &[parts[1], v]);
    g.wire(&format!("{name}.out"), Op::Add, &[o_cache, o_new])
}

/// SwiGLU: w2(silu(x w1) * (x w3)), with w1|w3 fused into one `[dim, 2 * hidden]` matrix.
pub fn swiglu(
    g: &mut Graph,
    em: &mut Emitter,
    name: &str,
    x: ValueId,
    w13: ValueId,
    w2: ValueId,
    hidden: usize,
) -> ValueId {
    let sizes = g.const_i64(
        &format!("const.split.ffn.{hidden}"),
        &[hidden as i64, hidden as i64],
    );
    let gu = em.apply(g, &format!("{name}.w13"), Op::MatMul, x, &[w13]);
    let parts = g.wire_n(
        &format!("{name}.split"),
        Op::Split { axis: -1 },
        &[gu, sizes],
        2,
    );
    let sig = g.wire(&format!("{name}.sigmoid"), Op::Sigmoid, &[parts[0]]);
    let silu = g.wire(&format!("{name}.silu"), Op::Mul, &[parts[0], sig]);
    let gated = g.wire(&format!("{name}.gate"), Op::Mul, &[silu, parts[1]]);
    em.apply(g, &format!("{name}.w2"), Op::MatMul, gated, &[w2])
}
