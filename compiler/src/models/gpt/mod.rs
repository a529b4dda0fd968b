//! The class-conditional GPT as one ONNX "step" graph used for both prefill and decode.
//!
//! Contract (names in [`crate::io_names`]):
//! - inputs: `input_ids` i64 `[batch, 1]` (image token t as t, class c as `vocab + c`, the
//!   null class `num_classes` as `vocab + num_classes`); `position` i64 `[1]`, the cache slot of
//!   the token; per layer `past_key.i` / `past_value.i` f32 `[batch, heads, max_len, head_dim]`.
//! - outputs: `logits` f32 `[batch, vocab]` of the last input position; per layer
//!   `present_key.i` / `present_value.i` f32 `[batch, heads, 1, head_dim]`, the new cache slice
//!   that the runtime writes at `position`. Cache slots >= `position` are masked, so the caches
//!   keep one static shape and are never copied or grown by the graph.
//!
//! Prefill is the call with the class ids at position 0; decode is the call with one image token
//! per row, so `seq` is the static 1 of [`STEP_TOKENS`]. One graph means one copy of the weights
//! in memory: two ONNX Runtime sessions over separate prefill and decode graphs measured 1.87x
//! the resident memory of one (README, "Design decisions").

mod keys;
mod layers;
pub use llamagen_bundle::rotary;
mod weights;

use crate::config::GptConfig;
use crate::io_names;
use crate::ir::{Dim, ElemType, Graph, InitData, Op, TensorType, ValueId};
use crate::Error;

use super::precision::Emitter;
use layers::{RotaryInputs, StepMasks};

pub use keys::required as required_keys;

/// Tokens per call: c2i feeds its single condition token and then one image token per step, so
/// every call of the step graph has exactly one token per row (static shapes throughout).
pub const STEP_TOKENS: usize = 1;

/// Checks every required key and shape, then builds the step graph (weights stay lazy).
pub fn build_step_graph(c: &GptConfig, em: &mut Emitter) -> Result<Graph, Error> {
    for (key, shape) in keys::required(c) {
        em.source.check(&key, &shape)?;
    }
    let t = STEP_TOKENS;
    let mut g = Graph::new(&format!("{}-step", c.name));
    let batch = Dim::sym("batch");
    let cache_dims = |len: usize| {
        vec![
            batch.clone(),
            Dim::Fixed(c.n_kv_head),
            Dim::Fixed(len),
            Dim::Fixed(c.head_dim),
        ]
    };
    let cache_ty = TensorType::new(ElemType::F32, cache_dims(c.max_len));
    let slice_ty = TensorType::new(ElemType::F32, cache_dims(t));

    let ids = g.input(
        io_names::INPUT_IDS,
        TensorType::new(ElemType::I64, vec![batch.clone(), Dim::Fixed(t)]),
    );
    let position = g.input(
        io_names::POSITION,
        TensorType::new(ElemType::I64, vec![Dim::Fixed(1)]),
    );

    // Embedding: image tokens and class labels share one table (tok_embeddings ++ cls_embedding).
    let table = weights::embedding_table(&mut g, c, em);
    let x = g.wire("embed", Op::Gather { axis: 0 }, &[table, ids]);
    let mut x = em.table_to_f32(&mut g, "embed_f32", x);

    let rope = rotary_for_step(&mut g, c, position, t);
    let masks = step_masks(&mut g, c, position, t);

    let (h, hkv, hd) = (c.n_head as i64, c.n_kv_head as i64, c.head_dim as i64);
    let kv_width = (c.n_kv_head * c.head_dim) as i64;
    let split_qk_v = g.const_i64("const.split.qk_v", &[c.dim as i64 + kv_width, kv_width]);
    let split_q_k = g.const_i64("const.split.q_k", &[h, hkv]);
    let qk_heads = g.const_i64("const.shape.qk", &[0, t as i64, h + hkv, hd]);
    let v_heads = g.const_i64("const.shape.v", &[0, t as i64, hkv, hd]);
    let merge = g.const_i64("const.shape.merge", &[0, t as i64, c.dim as i64]);
    let to_heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };

    for i in 0..c.n_layer {
        let p = format!("layers.{i}");
        let past_k = g.input(&io_names::past_key(i), cache_ty.clone());
        let past_v = g.input(&io_names::past_value(i), cache_ty.clone());
        let w = weights::LayerWeights::new(&mut g, c, em, i);

        let a = format!("{p}.attn");
        let hn = layers::rms_norm(
            &mut g,
            &format!("{p}.attention_norm"),
            x,
            w.attention_norm,
            c.norm_eps,
        );
        let qkv = em.apply(&mut g, &format!("{a}.qkv"), Op::MatMul, hn, &[w.wqkv]);
        let parts = g.wire_n(
            &format!("{a}.split_qk_v"),
            Op::Split { axis: -1 },
            &[qkv, split_qk_v],
            2,
        );
        // q and k rotate together as [B, T, H + Hkv, hd]; q's 1/sqrt(hd) is folded into wqkv.
        let qk = g.wire(&format!("{a}.qk_heads"), Op::Reshape, &[parts[0], qk_heads]);
        let qk = layers::rotary(&mut g, &format!("{a}.rope"), qk, &rope);
        let qk = g.wire(&format!("{a}.qk"), to_heads.clone(), &[qk]);
        let qk = g.wire_n(
            &format!("{a}.split_q_k"),
            Op::Split { axis: 1 },
            &[qk, split_q_k],
            2,
        );
        let (q, k) = (qk[0], qk[1]);
        let v = g.wire(&format!("{a}.v_heads"), Op::Reshape, &[parts[1], v_heads]);
        let v = g.wire(&format!("{a}.v"), to_heads.clone(), &[v]);
        g.output(k, &io_names::present_key(i), slice_ty.clone());
        g.output(v, &io_names::present_value(i), slice_ty.clone());

        let o = layers::cached_attention(&mut g, &a, q, k, v, past_k, past_v, &masks);
        let o = g.wire(&format!("{a}.o_tokens"), to_heads.clone(), &[o]);
        let o = g.wire(&format!("{a}.o_merged"), Op::Reshape, &[o, merge]);
        let o = em.apply(&mut g, &format!("{a}.wo"), Op::MatMul, o, &[w.wo]);
        x = g.wire(&format!("{a}.residual"), Op::Add, &[x, o]);

        let hn = layers::rms_norm(&mut g, &format!("{p}.ffn_norm"), x, w.ffn_norm, c.norm_eps);
        let f = layers::swiglu(
            &mut g,
            em,
            &format!("{p}.ffn"),
            hn,
            w.w13,
            w.w2,
            c.ffn_hidden,
        );
        x = g.wire(&format!("{p}.ffn.residual"), Op::Add, &[x, f]);
    }

    // Logits of the last position only: norm and output projection on [B, 1, dim].
    if t > 1 {
        let last = g.const_i64("const.last.start", &[-1]);
        let end = g.const_i64("const.last.end", &[i64::MAX]);
        let axis1 = g.const_i64("const.axes.1", &[1]);
        x = g.wire("last_position", Op::Slice, &[x, last, end, axis1]);
    }
    let norm_w = weights::vector(&mut g, em, keys::FINAL_NORM, c.dim);
    let hn = layers::rms_norm(&mut g, "norm", x, norm_w, c.norm_eps);
    let out_w = weights::matmul(&mut g, em, keys::OUTPUT, c.vocab_size, c.dim, None);
    let logits = em.apply(&mut g, "output", Op::MatMul, hn, &[out_w]);
    let flat = g.const_i64("const.shape.logits", &[0, -1]);
    let logits = g.wire("logits_flat", Op::Reshape, &[logits, flat]);
    g.output(
        logits,
        io_names::LOGITS,
        TensorType::new(ElemType::F32, vec![batch, Dim::Fixed(c.vocab_size)]),
    );
    Ok(g)
}

/// cos/sin rows of this step's slots `[1, T, 1, head_dim]` and the pair-swap matrix.
fn rotary_for_step(g: &mut Graph, c: &GptConfig, position: ValueId, t: usize) -> RotaryInputs {
    let (cos, sin) = rotary::tables(c);
    let hd = c.head_dim;
    let positions = if t == 1 {
        position
    } else {
        let offsets: Vec<i64> = (0..t as i64).collect();
        let offsets = g.const_i64("const.step_offsets", &offsets);
        g.wire("positions", Op::Add, &[position, offsets])
    };
    let shape = g.const_i64("const.shape.rope", &[1, t as i64, 1, hd as i64]);
    let mut rows = |name: &str, table: Vec<f32>| {
        let tbl = g.init_f32(&format!("rope.{name}"), vec![c.max_len, hd], table);
        let r = g.wire(
            &format!("rope.{name}_rows"),
            Op::Gather { axis: 0 },
            &[tbl, positions],
        );
        g.wire(&format!("rope.{name}_step"), Op::Reshape, &[r, shape])
    };
    let cos = rows("cos", cos);
    let sin = rows("sin", sin);
    let swap = g.init_f32("rope.swap", vec![hd, hd], rotary::swap_matrix(hd));
    RotaryInputs { cos, sin, swap }
}

fn step_masks(g: &mut Graph, c: &GptConfig, position: ValueId, t: usize) -> StepMasks {
    let zero = g.scalar_f32("const.zero", 0.0);
    let neg_inf = g.scalar_f32("const.neg_inf", f32::NEG_INFINITY);
    let slots: Vec<i64> = (0..c.max_len as i64).collect();
    let slots = g.initializer(
        "cache_slots",
        ElemType::I64,
        vec![c.max_len],
        InitData::I64(slots),
    );
    let valid = g.wire("mask.cache_valid", Op::Less, &[slots, position]);
    let cache_bias = g.wire("mask.cache_bias", Op::Where, &[valid, zero, neg_inf]);
    // Token i of the step sees the step's tokens 0..=i.
    let local: Vec<f32> = (0..t * t)
        .map(|ij| {
            if ij % t > ij / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let local_bias = g.init_f32("mask.local_bias", vec![t, t], local);
    let split_sizes = g.const_i64("const.split.attn", &[c.max_len as i64, t as i64]);
    StepMasks {
        cache_bias,
        local_bias,
        split_sizes,
    }
}
