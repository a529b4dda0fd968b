//! Building blocks of the GPT step graph: RMSNorm, linear, 2D rotary, cached attention, SwiGLU.
//!
//! Shapes: hidden states `[B, T, dim]`; per-head tensors `[B, H, T, head_dim]`; caches
//! `[B, H, max_len, head_dim]`.

use crate::ir::{Graph, Op, ValueId};

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

/// x @ w, with w already `[in, out]`.
pub fn linear(g: &mut Graph, name: &str, x: ValueId, w: ValueId) -> ValueId {
    g.wire(name, Op::MatMul, &[x, w])
}

/// Rotary on `[B, T, H, head_dim]` with cos/sin broadcastable as `[1, T, 1, head_dim/2, 1]`.
pub fn rotary(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    cos: ValueId,
    sin: ValueId,
    hd: usize,
) -> ValueId {
    let pairs_shape = g.const_i64(
        &format!("const.shape.pairs.{hd}"),
        &[0, 0, 0, (hd / 2) as i64, 2],
    );
    let heads_shape = g.const_i64(&format!("const.shape.heads.{hd}"), &[0, 0, 0, hd as i64]);
    let ones = g.const_i64("const.split.1_1", &[1, 1]);
    let xr = g.wire(&format!("{name}.pairs"), Op::Reshape, &[x, pairs_shape]);
    let parts = g.wire_n(
        &format!("{name}.split"),
        Op::Split { axis: -1 },
        &[xr, ones],
        2,
    );
    let (x0, x1) = (parts[0], parts[1]);
    let x0c = g.wire(&format!("{name}.x0c"), Op::Mul, &[x0, cos]);
    let x1s = g.wire(&format!("{name}.x1s"), Op::Mul, &[x1, sin]);
    let x1c = g.wire(&format!("{name}.x1c"), Op::Mul, &[x1, cos]);
    let x0s = g.wire(&format!("{name}.x0s"), Op::Mul, &[x0, sin]);
    let o0 = g.wire(&format!("{name}.o0"), Op::Sub, &[x0c, x1s]);
    let o1 = g.wire(&format!("{name}.o1"), Op::Add, &[x1c, x0s]);
    let o = g.wire(&format!("{name}.join"), Op::Concat { axis: -1 }, &[o0, o1]);
    g.wire(&format!("{name}.out"), Op::Reshape, &[o, heads_shape])
}

/// Masks shared by every layer of one step.
pub struct StepMasks {
    /// `[max_len]`: 0 for cache slots < position, -inf for the rest.
    pub cache_bias: ValueId,
    /// `[T, T]`: causal bias among the step's own tokens.
    pub local_bias: ValueId,
    /// `[2]` split sizes `[max_len, T]` for the concatenated attention weights.
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
    let gu = linear(g, &format!("{name}.w13"), x, w13);
    let parts = g.wire_n(
        &format!("{name}.split"),
        Op::Split { axis: -1 },
        &[gu, sizes],
        2,
    );
    let sig = g.wire(&format!("{name}.sigmoid"), Op::Sigmoid, &[parts[0]]);
    let silu = g.wire(&format!("{name}.silu"), Op::Mul, &[parts[0], sig]);
    let gated = g.wire(&format!("{name}.gate"), Op::Mul, &[silu, parts[1]]);
    linear(g, &format!("{name}.w2"), gated, w2)
}
