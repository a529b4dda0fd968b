//! The class-conditional GPT as one ONNX "step" graph used for both prefill and decode.
//!
//! Contract (names in [`crate::io_names`]):
//! - inputs: `input_ids` i64 `[batch, seq]` (image token t as t, class c as `vocab + c`, the
//!   null class `num_classes` as `vocab + num_classes`); `position` i64 `[1]`, the cache slot of
//!   `input_ids[:, 0]`; per layer `past_key.i` / `past_value.i` f32 `[batch, heads, max_len, head_dim]`.
//! - outputs: `logits` f32 `[batch, vocab]` of the last input position; per layer
//!   `present_key.i` / `present_value.i` f32 `[batch, heads, seq, head_dim]`, the new cache slice
//!   that the runtime writes at `position`. Cache slots >= `position` are masked, so the caches
//!   keep one static shape and are never copied or grown by the graph.
//!
//! Prefill is the call with the class ids at position 0 (seq = cls_token_num); decode is the call
//! with one image token (seq = 1). One graph means one copy of the weights in memory: two
//! sessions over two graphs measured 1.87x the resident memory of one (see DESIGN notes in README).

mod keys;
mod layers;
mod rotary;

use std::sync::Arc;

use crate::config::GptConfig;
use crate::io_names;
use crate::ir::{Dim, ElemType, Graph, InitData, Op, TensorType, ValueId};
use crate::Error;

use super::weights::{lazy, transpose};
use super::WeightSource;
use layers::StepMasks;

pub use keys::required as required_keys;

/// Checks every required key and shape, then builds the step graph (weights stay lazy).
pub fn build_step_graph(c: &GptConfig, source: Arc<dyn WeightSource>) -> Result<Graph, Error> {
    for (key, shape) in keys::required(c) {
        source.check(&key, &shape)?;
    }
    let mut g = Graph::new(&format!("{}-step", c.name));
    let batch = Dim::sym("batch");
    let seq = Dim::sym("seq");
    let cache_ty = TensorType::new(
        ElemType::F32,
        vec![
            batch.clone(),
            Dim::Fixed(c.n_kv_head),
            Dim::Fixed(c.max_len),
            Dim::Fixed(c.head_dim),
        ],
    );
    let slice_ty = TensorType::new(
        ElemType::F32,
        vec![
            batch.clone(),
            Dim::Fixed(c.n_kv_head),
            seq.clone(),
            Dim::Fixed(c.head_dim),
        ],
    );

    let ids = g.input(
        io_names::INPUT_IDS,
        TensorType::new(ElemType::I64, vec![batch.clone(), seq]),
    );
    let position = g.input(
        io_names::POSITION,
        TensorType::new(ElemType::I64, vec![Dim::Fixed(1)]),
    );

    // Embedding: image tokens and class labels share one table (tok_embeddings ++ cls_embedding).
    let table = embedding_table(c, &source);
    let table = g.initializer(
        "embeddings",
        ElemType::F32,
        vec![c.vocab_size + c.class_rows, c.dim],
        table,
    );
    let mut x = g.wire("embed", Op::Gather { axis: 0 }, &[table, ids]);

    let (seq_len, positions) = step_positions(&mut g, ids, position);
    let (cos, sin) = rotary_for_step(&mut g, c, positions, seq_len);
    let masks = step_masks(&mut g, c, position, seq_len);
    let q_scale = g.scalar_f32("const.q_scale", 1.0 / (c.head_dim as f32).sqrt());

    let split_qkv = g.const_i64(
        "const.split.qkv",
        &[
            c.dim as i64,
            (c.n_kv_head * c.head_dim) as i64,
            (c.n_kv_head * c.head_dim) as i64,
        ],
    );
    let heads_q = g.const_i64("const.shape.q", &[0, 0, c.n_head as i64, c.head_dim as i64]);
    let heads_kv = g.const_i64(
        "const.shape.kv",
        &[0, 0, c.n_kv_head as i64, c.head_dim as i64],
    );
    let merge = g.const_i64("const.shape.merge", &[0, 0, c.dim as i64]);
    let to_heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };

    for i in 0..c.n_layer {
        let p = format!("layers.{i}");
        let past_k = g.input(&io_names::past_key(i), cache_ty.clone());
        let past_v = g.input(&io_names::past_value(i), cache_ty.clone());
        let w = LayerWeights::new(&mut g, c, &source, i);

        let h = layers::rms_norm(
            &mut g,
            &format!("{p}.attention_norm"),
            x,
            w.attention_norm,
            c.norm_eps,
        );
        let qkv = layers::linear(&mut g, &format!("{p}.attn.qkv"), h, w.wqkv);
        let parts = g.wire_n(
            &format!("{p}.attn.split"),
            Op::Split { axis: -1 },
            &[qkv, split_qkv],
            3,
        );
        let q = g.wire(
            &format!("{p}.attn.q_heads"),
            Op::Reshape,
            &[parts[0], heads_q],
        );
        let k = g.wire(
            &format!("{p}.attn.k_heads"),
            Op::Reshape,
            &[parts[1], heads_kv],
        );
        let v = g.wire(
            &format!("{p}.attn.v_heads"),
            Op::Reshape,
            &[parts[2], heads_kv],
        );
        let q = layers::rotary(&mut g, &format!("{p}.attn.rope_q"), q, cos, sin, c.head_dim);
        let k = layers::rotary(&mut g, &format!("{p}.attn.rope_k"), k, cos, sin, c.head_dim);
        let q = g.wire(&format!("{p}.attn.q"), to_heads.clone(), &[q]);
        let q = g.wire(&format!("{p}.attn.q_scaled"), Op::Mul, &[q, q_scale]);
        let k = g.wire(&format!("{p}.attn.k"), to_heads.clone(), &[k]);
        let v = g.wire(&format!("{p}.attn.v"), to_heads.clone(), &[v]);
        g.output(k, &io_names::present_key(i), slice_ty.clone());
        g.output(v, &io_names::present_value(i), slice_ty.clone());

        let o = layers::cached_attention(
            &mut g,
            &format!("{p}.attn"),
            q,
            k,
            v,
            past_k,
            past_v,
            &masks,
        );
        let o = g.wire(&format!("{p}.attn.o_tokens"), to_heads.clone(), &[o]);
        let o = g.wire(&format!("{p}.attn.o_merged"), Op::Reshape, &[o, merge]);
        let o = layers::linear(&mut g, &format!("{p}.attn.wo"), o, w.wo);
        x = g.wire(&format!("{p}.attn.residual"), Op::Add, &[x, o]);

        let h = layers::rms_norm(&mut g, &format!("{p}.ffn_norm"), x, w.ffn_norm, c.norm_eps);
        let f = layers::swiglu(&mut g, &format!("{p}.ffn"), h, w.w13, w.w2, c.ffn_hidden);
        x = g.wire(&format!("{p}.ffn.residual"), Op::Add, &[x, f]);
    }

    // Logits of the last position only: norm and output projection on [B, 1, dim].
    let last = g.const_i64("const.last.start", &[-1]);
    let end = g.const_i64("const.last.end", &[i64::MAX]);
    let axis1 = g.const_i64("const.axes.1", &[1]);
    let x_last = g.wire("last_position", Op::Slice, &[x, last, end, axis1]);
    let norm_w = vector(&mut g, &source, keys::FINAL_NORM, c.dim);
    let h = layers::rms_norm(&mut g, "norm", x_last, norm_w, c.norm_eps);
    let out_w = matmul_weight(&mut g, &source, keys::OUTPUT, c.vocab_size, c.dim);
    let logits = layers::linear(&mut g, "output", h, out_w);
    let flat = g.const_i64("const.shape.logits", &[0, -1]);
    let logits = g.wire("logits_flat", Op::Reshape, &[logits, flat]);
    g.output(
        logits,
        io_names::LOGITS,
        TensorType::new(ElemType::F32, vec![batch, Dim::Fixed(c.vocab_size)]),
    );
    Ok(g)
}

fn embedding_table(c: &GptConfig, source: &Arc<dyn WeightSource>) -> InitData {
    let (v, k, d) = (c.vocab_size, c.class_rows, c.dim);
    lazy(source, move |s| {
        let mut t = s.load(keys::TOK_EMBEDDINGS, &[v, d])?;
        t.extend(s.load(keys::CLS_EMBEDDING, &[k, d])?);
        Ok(t)
    })
}

/// A torch Linear weight `[out, in]` stored transposed `[in, out]` for MatMul, named `<key>.T`.
fn matmul_weight(
    g: &mut Graph,
    source: &Arc<dyn WeightSource>,
    key: &str,
    out: usize,
    inp: usize,
) -> ValueId {
    let name = format!("{key}.T");
    let key = key.to_string();
    let data = lazy(source, move |s| {
        Ok(transpose(&s.load(&key, &[out, inp])?, out, inp))
    });
    g.initializer(&name, ElemType::F32, vec![inp, out], data)
}

fn vector(g: &mut Graph, source: &Arc<dyn WeightSource>, key: &str, n: usize) -> ValueId {
    let k = key.to_string();
    let data = lazy(source, move |s| s.load(&k, &[n]));
    g.initializer(
        key.trim_end_matches(".weight"),
        ElemType::F32,
        vec![n],
        data,
    )
}

struct LayerWeights {
    wqkv: ValueId,
    wo: ValueId,
    w13: ValueId,
    w2: ValueId,
    attention_norm: ValueId,
    ffn_norm: ValueId,
}

impl LayerWeights {
    fn new(g: &mut Graph, c: &GptConfig, source: &Arc<dyn WeightSource>, i: usize) -> Self {
        let (d, hid) = (c.dim, c.ffn_hidden);
        let qkv = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
        let p = format!("layers.{i}");
        let (k1, k3) = (
            keys::layer(i, "feed_forward.w1.weight"),
            keys::layer(i, "feed_forward.w3.weight"),
        );
        let w13 = lazy(source, move |s| {
            // [hid, d] ++ [hid, d] = [2 hid, d], transposed to [d, 2 hid]: w1 columns then w3.
            let mut m = s.load(&k1, &[hid, d])?;
            m.extend(s.load(&k3, &[hid, d])?);
            Ok(transpose(&m, 2 * hid, d))
        });
        LayerWeights {
            wqkv: matmul_weight(g, source, &keys::layer(i, "attention.wqkv.weight"), qkv, d),
            wo: matmul_weight(g, source, &keys::layer(i, "attention.wo.weight"), d, d),
            w13: g.initializer(
                &format!("{p}.feed_forward.w13.weight.T"),
                ElemType::F32,
                vec![d, 2 * hid],
                w13,
            ),
            w2: matmul_weight(g, source, &keys::layer(i, "feed_forward.w2.weight"), d, hid),
            attention_norm: vector(g, source, &keys::layer(i, "attention_norm.weight"), d),
            ffn_norm: vector(g, source, &keys::layer(i, "ffn_norm.weight"), d),
        }
    }
}

/// (seq length as i64 `[1]`, cache slots of this step's tokens `[seq]`).
fn step_positions(g: &mut Graph, ids: ValueId, position: ValueId) -> (ValueId, ValueId) {
    let seq_len = g.wire(
        "seq_len",
        Op::Shape {
            start: Some(1),
            end: Some(2),
        },
        &[ids],
    );
    let scalar = g.const_i64("const.shape.scalar", &[]);
    let start = g.wire("position_scalar", Op::Reshape, &[position, scalar]);
    let end = g.wire("position_end", Op::Add, &[position, seq_len]);
    let end = g.wire("position_end_scalar", Op::Reshape, &[end, scalar]);
    let one = g.scalar_i64("const.one", 1);
    let positions = g.wire("positions", Op::Range, &[start, end, one]);
    (seq_len, positions)
}

/// cos/sin rows of this step's slots, shaped `[1, seq, 1, head_dim/2, 1]` for broadcasting.
fn rotary_for_step(
    g: &mut Graph,
    c: &GptConfig,
    positions: ValueId,
    _seq_len: ValueId,
) -> (ValueId, ValueId) {
    let (cos, sin) = rotary::tables(c);
    let pairs = c.head_dim / 2;
    let shape = g.const_i64("const.shape.rope", &[1, -1, 1, pairs as i64, 1]);
    let mut rows = |name: &str, table: Vec<f32>| {
        let t = g.init_f32(&format!("rope.{name}"), vec![c.max_len, pairs], table);
        let r = g.wire(
            &format!("rope.{name}_rows"),
            Op::Gather { axis: 0 },
            &[t, positions],
        );
        g.wire(&format!("rope.{name}_step"), Op::Reshape, &[r, shape])
    };
    (rows("cos", cos), rows("sin", sin))
}

fn step_masks(g: &mut Graph, c: &GptConfig, position: ValueId, seq_len: ValueId) -> StepMasks {
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

    let scalar = g.const_i64("const.shape.scalar", &[]);
    let zero_i = g.scalar_i64("const.zero_i64", 0);
    let one = g.scalar_i64("const.one", 1);
    let n = g.wire("mask.seq_scalar", Op::Reshape, &[seq_len, scalar]);
    let local = g.wire("mask.local_range", Op::Range, &[zero_i, n, one]);
    let ax1 = g.const_i64("const.axes.1", &[1]);
    let ax0 = g.const_i64("const.axes.0", &[0]);
    let rows = g.wire("mask.rows", Op::Unsqueeze, &[local, ax1]);
    let cols = g.wire("mask.cols", Op::Unsqueeze, &[local, ax0]);
    let future = g.wire("mask.future", Op::Less, &[rows, cols]);
    let local_bias = g.wire("mask.local_bias", Op::Where, &[future, neg_inf, zero]);

    let max_len = g.const_i64("const.max_len", &[c.max_len as i64]);
    let split_sizes = g.wire(
        "mask.split_sizes",
        Op::Concat { axis: 0 },
        &[max_len, seq_len],
    );
    StepMasks {
        cache_bias,
        local_bias,
        split_sizes,
    }
}
