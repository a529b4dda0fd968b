//! The VAR transformer step over one scale's token block (`AdaLNSelfAttn` blocks with the KV
//! cache, `AdaLNBeforeHead`, `head`), modulated by the cond graph's AdaLN vectors.
//!
//! Contract (names in `llamagen_bundle::names`):
//! - inputs: `inputs_embeds` f32 `[batch, tokens, C]` (the scale's inputs, from the embed
//!   graph); `adaln` f32 `[batch, 6 depth + 2, C]` (every AdaLN's vectors, from the cond
//!   graph, once per request); `position`
//!   i64 `[1]`, the number of tokens already cached (the scale's first slot); per layer
//!   `past_key.i` / `past_value.i` f32 `[batch, heads, tokens_total, head_dim]`.
//! - outputs: `logits` f32 `[batch, tokens, V]`; per layer `present_key.i` / `present_value.i`
//!   f32 `[batch, heads, tokens, head_dim]`, which the runtime writes at `position`.
//!
//! No mask inside the block (a scale sees itself and every earlier scale, as the official
//! inference with `attn_bias=None`); only cache slots < `position` are read, so the caches keep
//! one static shape, stale slots never matter, and one graph serves every scale (`tokens` is
//! symbolic).

use std::sync::Arc;

use llamagen_bundle::names as io_names;
use llamagen_bundle::VarConfig;

use crate::ir::{Dim, ElemType, Graph, Op, TensorType, ValueId};
use crate::models::precision::{Emitter, WeightFn};
use crate::Error;

use super::blocks::{gelu_tanh, l2_normalize, linear, modulate};
use super::keys;

/// Checks every key, then builds the step graph (weights stay lazy).
pub fn build_step_graph(c: &VarConfig, em: &mut Emitter) -> Result<Graph, Error> {
    for (key, shape) in keys::step_keys(c) {
        em.source.check(&key, &shape)?;
    }
    let (d, heads, hd) = (c.embed_dim, c.num_heads, c.head_dim);
    let mut g = Graph::new(&format!("{}-step", c.name));
    let batch = Dim::sym("batch");
    let tokens = Dim::sym("tokens");
    let f32_of = |dims: Vec<Dim>| TensorType::new(ElemType::F32, dims);
    let cache_ty = f32_of(vec![
        batch.clone(),
        Dim::Fixed(heads),
        Dim::Fixed(c.tokens),
        Dim::Fixed(hd),
    ]);
    let slice_ty = f32_of(vec![
        batch.clone(),
        Dim::Fixed(heads),
        tokens.clone(),
        Dim::Fixed(hd),
    ]);
    let mut x = g.input(
        io_names::INPUTS_EMBEDS,
        f32_of(vec![batch.clone(), tokens.clone(), Dim::Fixed(d)]),
    );
    let ada_rows = 6 * c.depth + 2;
    let adaln = g.input(
        io_names::ADALN,
        f32_of(vec![batch.clone(), Dim::Fixed(ada_rows), Dim::Fixed(d)]),
    );
    let position = g.input(
        io_names::POSITION,
        TensorType::new(ElemType::I64, vec![Dim::Fixed(1)]),
    );
    // One [B, 1, C] vector per row of `adaln`: block i's six, then the head's two.
    let ones = g.const_i64("const.split.adaln", &vec![1; ada_rows]);
    let ada = g.wire_n(
        "adaln.split",
        Op::Split { axis: 1 },
        &[adaln, ones],
        ada_rows,
    );

    let to_heads = g.const_i64(
        "const.shape.qkv_heads",
        &[0, -1, 3 * heads as i64, hd as i64],
    );
    let split_qkv = g.const_i64("const.split.qkv", &[heads as i64; 3]);
    let merge = g.const_i64("const.shape.merge", &[0, -1, d as i64]);
    let perm = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };

    for i in 0..c.depth {
        let p = format!("blocks.{i}");
        let past_k = g.input(&io_names::past_key(i), cache_ty.clone());
        let past_v = g.input(&io_names::past_value(i), cache_ty.clone());
        // gamma1, gamma2, scale1, scale2, shift1, shift2.
        let m = &ada[6 * i..6 * i + 6];

        let a = format!("{p}.attn");
        let h = modulate(&mut g, &format!("{a}.norm"), x, [m[2], m[4]], d, c.norm_eps);
        let qkv = linear(&mut g, em, &format!("{a}.mat_qkv"), h, 3 * d, d, false);
        let qkv_bias = qkv_bias(&mut g, em, i, d);
        let qkv = g.wire(&format!("{a}.add_qkv_bias"), Op::Add, &[qkv, qkv_bias]);
        let qkv = g.wire(&format!("{a}.heads"), Op::Reshape, &[qkv, to_heads]);
        let qkv = g.wire(&format!("{a}.heads_first"), perm.clone(), &[qkv]);
        let parts = g.wire_n(
            &format!("{a}.split_qkv"),
            Op::Split { axis: 1 },
            &[qkv, split_qkv],
            3,
        );
        let (q, k, v) = (parts[0], parts[1], parts[2]);
        let q_scale = q_scale(&mut g, em, c, i);
        let (q, k) = if c.attn_l2_norm {
            (
                l2_normalize(&mut g, &format!("{a}.q_scaled"), q, Some(q_scale)),
                l2_normalize(&mut g, &format!("{a}.k_l2"), k, None),
            )
        } else {
            (g.wire(&format!("{a}.q_scaled"), Op::Mul, &[q, q_scale]), k)
        };
        g.output(k, &io_names::present_key(i), slice_ty.clone());
        g.output(v, &io_names::present_value(i), slice_ty.clone());

        let o = cached_attention(&mut g, &a, [q, k, v], [past_k, past_v], position);
        let o = g.wire(&format!("{a}.o_tokens"), perm.clone(), &[o]);
        let o = g.wire(&format!("{a}.o_merged"), Op::Reshape, &[o, merge]);
        let o = linear(&mut g, em, &format!("{a}.proj"), o, d, d, true);
        let o = g.wire(&format!("{a}.gamma"), Op::Mul, &[o, m[0]]);
        x = g.wire(&format!("{a}.residual"), Op::Add, &[x, o]);

        let f = format!("{p}.ffn");
        let h = modulate(&mut g, &format!("{f}.norm"), x, [m[3], m[5]], d, c.norm_eps);
        let h = linear(&mut g, em, &format!("{f}.fc1"), h, c.ffn_hidden, d, true);
        let h = gelu_tanh(&mut g, &format!("{f}.gelu"), h);
        let h = linear(&mut g, em, &format!("{f}.fc2"), h, d, c.ffn_hidden, true);
        let h = g.wire(&format!("{f}.gamma"), Op::Mul, &[h, m[1]]);
        x = g.wire(&format!("{f}.residual"), Op::Add, &[x, h]);
    }

    // AdaLNBeforeHead: scale, shift.
    let m = &ada[6 * c.depth..];
    let h = modulate(&mut g, "head_nm", x, [m[0], m[1]], d, c.norm_eps);
    let logits = linear(&mut g, em, keys::HEAD, h, c.vocab_size, d, true);
    g.output(
        logits,
        io_names::LOGITS,
        f32_of(vec![batch, tokens, Dim::Fixed(c.vocab_size)]),
    );
    Ok(g)
}

/// `cat(q_bias, zero_k_bias, v_bias)`, `[3C]` f32 (the k bias is a zero buffer).
fn qkv_bias(g: &mut Graph, em: &mut Emitter, i: usize, d: usize) -> ValueId {
    let (qk, vk) = (keys::block(i, "attn.q_bias"), keys::block(i, "attn.v_bias"));
    let f: WeightFn = Arc::new(move |s| {
        let mut b = s.load(&qk, &[d])?;
        b.extend(std::iter::repeat_n(0.0, d));
        b.extend(s.load(&vk, &[d])?);
        Ok(b)
    });
    em.vector(g, &io_names::var::qkv_bias(i), vec![3 * d], f)
}

/// The per-head multiplier of q, `[1, H, 1, 1]`: `exp(min(scale_mul_1H11, ln 100))` with the
/// L2-normalised attention (whose softmax scale is then 1), else `0.25 / sqrt(head_dim)`.
fn q_scale(g: &mut Graph, em: &mut Emitter, c: &VarConfig, i: usize) -> ValueId {
    let heads = c.num_heads;
    let f: WeightFn = if c.attn_l2_norm {
        let key = keys::block(i, "attn.scale_mul_1H11");
        Arc::new(move |s| {
            let max = (100f32).ln();
            Ok(s.load(&key, &[1, heads, 1, 1])?
                .into_iter()
                .map(|v| v.min(max).exp())
                .collect())
        })
    } else {
        let v = 0.25 / (c.head_dim as f32).sqrt();
        Arc::new(move |_| Ok(vec![v; heads]))
    };
    em.vector(g, &io_names::var::q_scale(i), vec![1, heads, 1, 1], f)
}

/// Softmax attention of `q` over the cache slots before `position` and the block's own keys
/// (all of them: no mask), `[B, H, T, hd]` out. Only the valid slots are read: the cache is
/// sliced to `position` and the block's keys/values appended (small copies: the scores, which
/// are T times larger, are never concatenated or split), so stale slots are never touched.
fn cached_attention(
    g: &mut Graph,
    name: &str,
    [q, k, v]: [ValueId; 3],
    [past_k, past_v]: [ValueId; 2],
    position: ValueId,
) -> ValueId {
    let zero = g.const_i64("const.zero_1", &[0]);
    let axis2 = g.const_i64("const.axes.2", &[2]);
    let kv = |g: &mut Graph, what: &str, past: ValueId, new: ValueId| {
        let valid = g.wire(
            &format!("{name}.{what}_valid"),
            Op::Slice,
            &[past, zero, position, axis2],
        );
        g.wire(
            &format!("{name}.{what}_all"),
            Op::Concat { axis: 2 },
            &[valid, new],
        )
    };
    let k_all = kv(g, "k", past_k, k);
    let v_all = kv(g, "v", past_v, v);
    let kt = g.wire(
        &format!("{name}.kt"),
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        &[k_all],
    );
    let s = g.wire(&format!("{name}.scores"), Op::MatMul, &[q, kt]);
    let p = g.wire(&format!("{name}.probs"), Op::Softmax { axis: -1 }, &[s]);
    g.wire(&format!("{name}.out"), Op::MatMul, &[p, v_all])
}
