//! Puts our fused attention ([`crate::attention`]) into VAR's step graph, at load, in memory.
//! The bundle on disk stays standard ONNX (Python onnxruntime runs it as it is).
//!
//! Each match of (`compiler/src/models/var/step.rs`, `cached_attention`)
//!
//! ```text
//! past_k -> Slice(0, position, axis 2) -> Concat(axis 2, k) -> Transpose(0,1,3,2) ─┐
//!                                                      q ─> MatMul -> Softmax(-1) ─┼─> MatMul
//! past_v -> Slice(0, position, axis 2) -> Concat(axis 2, v) ───────────────────────┘
//!        -> Transpose(0,2,1,3) -> out
//! ```
//!
//! (every intermediate value used only by the next node) becomes one
//! `llamagen.cpu::CachedAttention(q, k, v, past_k, past_v, position) -> out` node. Where q, k
//! and v come from VAR's preparation (`step.rs`: the biased `qkv` reshaped to heads,
//! transposed, split, q and k L2-normalised, q scaled per head), that goes in too:
//! `CachedAttentionQkv(qkv, q_scale, past_k, past_v, position) -> (out, k, v)`. The weights
//! stay in the bundle's external file, read by ONNX Runtime as usual.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use llamagen_bundle::confine::OpenedFile;
use llamagen_bundle::names::{past_key, past_value};
use llamagen_bundle::onnx_proto::{
    attribute_type, data_type, AttributeProto, DimensionValue, GraphProto, NodeProto,
};
use prost::Message;

use super::graph_rewrite::{
    bad_model, const_f32s, const_i64s, decode, int, ints, splice, Index, Rewritten,
};
use crate::attention::op::{OP_TYPE, OP_TYPE_F16_CACHE};
use crate::attention::qkv_op::{EPS, HEADS, OP_TYPE as QKV, OP_TYPE_F16_CACHE as QKV_F16_CACHE};
use crate::backend::CpuKernels;
use crate::error::RuntimeError;

/// The symbolic length the rewrite gives the fused layers' cache inputs (dimension 2).
pub(crate) const CACHE_SLOTS: &str = "cache_slots";

/// The step graph of `onnx` with its attention fused, when this CPU runs our kernel and the
/// graph has the pattern; the weights are read from `dir`. With `f16_cache` the fused layers'
/// cache inputs (`past_key.i`, `past_value.i`) become f16 graph inputs.
pub(crate) fn attention_graph(
    dir: &Path,
    onnx: &OpenedFile,
    f16_cache: bool,
) -> Result<Option<Rewritten>, RuntimeError> {
    if !crate::attention::kernel::available() {
        return Ok(None);
    }
    let rewritten = rewrite(&onnx.path, &onnx.read_all()?, dir, f16_cache)?;
    if let Some(r) = &rewritten {
        tracing::debug!(
            layers = r.fused.fused_attention,
            "VAR step on the fused CPU attention"
        );
    }
    Ok(rewritten)
}

/// Rewrites the graph of `onnx` (the bytes of `path`); `None` when nothing matches.
fn rewrite(
    path: &Path,
    onnx: &[u8],
    dir: &Path,
    f16_cache: bool,
) -> Result<Option<Rewritten>, RuntimeError> {
    let mut model = decode(path, onnx)?;
    let Some(graph) = model.graph.as_ref() else {
        return Ok(None);
    };
    let index = Index::new(&graph.node, graph.output.iter().map(|o| o.name.as_str()));
    let mut fused = HashMap::new();
    let mut dropped = vec![false; graph.node.len()];
    let mut caches = HashSet::new();
    // The fused layers' new keys and values, emitted in f16 (with f16 caches).
    let mut f16_outputs = HashSet::new();
    // Whether the caches' length may change: only our operators read them.
    let mut free_length = true;
    let mut prologues = 0;
    for i in 0..graph.node.len() {
        let Some(m) = match_attention(&index, graph, i) else {
            continue;
        };
        let [_, k, v, past_k, past_v, _] = &m.inputs;
        let is_input = |name: &String| graph.input.iter().any(|v| &v.name == name);
        if f16_cache && !(is_input(past_k) && is_input(past_v)) {
            continue;
        }
        caches.extend([past_k.clone(), past_v.clone()]);
        // Whether nothing but the replaced nodes (and the graph's outputs) reads `value`.
        let read_only_here = |value: &String| {
            index
                .consumers(value)
                .is_none_or(|c| c.iter().all(|n| *n == usize::MAX || m.nodes.contains(n)))
        };
        free_length &= read_only_here(past_k) && read_only_here(past_v);
        let at = *m.nodes.last().unwrap_or(&i);
        let name = &graph.node[i].name;
        // With f16 caches the operator's new keys and values come out in f16 too (half the
        // step's output memory): only where they are graph outputs and nothing else.
        let prologue = match_prologue(&index, graph, &m)
            .filter(|_| !f16_cache || (read_only_here(k) && read_only_here(v)));
        let node = match prologue {
            Some(p) => {
                for &n in &p.nodes {
                    dropped[n] = true;
                }
                prologues += 1;
                if f16_cache {
                    f16_outputs.extend([k.clone(), v.clone()]);
                }
                fused_qkv_node(name, &m, p, f16_cache)
            }
            None => fused_node(name, m.clone(), f16_cache),
        };
        for &n in &m.nodes {
            dropped[n] = true;
        }
        fused.insert(at, node);
    }
    if fused.is_empty() {
        return Ok(None);
    }
    let count = fused.len();
    tracing::debug!(
        layers = count,
        with_qkv = prologues,
        f16_cache,
        "VAR step attention rewritten"
    );
    // Every layer's cache must be one of them: the runtime sizes all caches alike.
    let is_cache =
        |name: &str| (0..graph.input.len()).any(|j| name == past_key(j) || name == past_value(j));
    free_length &= graph
        .input
        .iter()
        .all(|v| !is_cache(&v.name) || caches.contains(&v.name));
    splice(&mut model, fused, &dropped);
    let graph = model.graph.get_or_insert_with(Default::default);
    for input in graph.input.iter_mut().filter(|v| caches.contains(&v.name)) {
        let Some(t) = input.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) else {
            continue;
        };
        if f16_cache {
            t.elem_type = data_type::FLOAT16;
        }
        // Our operator reads the cache's valid slots whatever its length, so the runtime may
        // leave out the slots of the last scale, which nothing reads (VAR-d16: 424 of 680).
        if let Some(slots) = t.shape.as_mut().and_then(|s| s.dim.get_mut(2)) {
            if free_length {
                slots.value = Some(DimensionValue::DimParam(CACHE_SLOTS.into()));
            }
        }
    }
    for output in graph
        .output
        .iter_mut()
        .filter(|v| f16_outputs.contains(&v.name))
    {
        if let Some(t) = output.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
            t.elem_type = data_type::FLOAT16;
        }
    }
    let domain =
        crate::attention::op::domain().map_err(|e| bad_model(path, format!("operators: {e}")))?;
    Ok(Some(Rewritten {
        path: path.to_path_buf(),
        model: model.encode_to_vec(),
        domain,
        fused: CpuKernels {
            fused_attention: count,
            ..CpuKernels::default()
        },
        weights_dir: Some(dir.to_path_buf()),
    }))
}

/// One layer's attention: the fused node's inputs and output, and the nodes it replaces (the
/// last one, the head transpose, is where the fused node goes).
#[derive(Clone)]
struct AttentionMatch {
    inputs: [String; 6],
    output: String,
    nodes: Vec<usize>,
}

/// The pattern around the `Softmax` node `s`.
fn match_attention(index: &Index<'_>, graph: &GraphProto, s: usize) -> Option<AttentionMatch> {
    let nodes = &graph.node;
    let softmax = &nodes[s];
    if softmax.op_type != "Softmax" || !softmax.domain.is_empty() {
        return None;
    }
    if !matches!(int(softmax, "axis"), Some(-1) | Some(3)) {
        return None;
    }
    let scores = index.sole_producer(nodes, softmax.input.first()?, "MatMul", s)?;
    let (q, kt) = (nodes[scores].input.first()?, nodes[scores].input.get(1)?);
    let kt = index.sole_producer(nodes, kt, "Transpose", scores)?;
    if ints(&nodes[kt], "perm")? != &[0, 1, 3, 2] {
        return None;
    }
    let (past_k, k, k_slice, k_cat, position) =
        cache_and_block(index, graph, nodes[kt].input.first()?, kt)?;

    let out = index.sole_consumer(nodes, softmax.output.first()?, "MatMul")?;
    if nodes[out].input.first() != softmax.output.first() {
        return None;
    }
    let (past_v, v, v_slice, v_cat, v_position) =
        cache_and_block(index, graph, nodes[out].input.get(1)?, out)?;
    if v_position != position {
        return None;
    }
    let heads_last = index.sole_consumer(nodes, nodes[out].output.first()?, "Transpose")?;
    if ints(&nodes[heads_last], "perm")? != &[0, 2, 1, 3] {
        return None;
    }
    Some(AttentionMatch {
        inputs: [q.clone(), k, v, past_k, past_v, position],
        output: nodes[heads_last].output.first()?.clone(),
        nodes: vec![
            k_slice, k_cat, kt, scores, s, v_slice, v_cat, out, heads_last,
        ],
    })
}

/// `value` = `Concat(axis 2)(Slice(cache, [0], position, [2]), block)` read only by
/// `consumer`: the cache, the block, the two nodes and `position`.
fn cache_and_block(
    index: &Index<'_>,
    graph: &GraphProto,
    value: &str,
    consumer: usize,
) -> Option<(String, String, usize, usize, String)> {
    let nodes = &graph.node;
    let cat = index.sole_producer(nodes, value, "Concat", consumer)?;
    let [valid, block] = &nodes[cat].input[..] else {
        return None;
    };
    if !matches!(int(&nodes[cat], "axis"), Some(2) | Some(-2)) {
        return None;
    }
    let slice = index.sole_producer(nodes, valid, "Slice", cat)?;
    let [cache, starts, ends, axes] = &nodes[slice].input[..] else {
        return None;
    };
    if const_i64s(graph, starts)? != [0] || !matches!(const_i64s(graph, axes)?[..], [2] | [-2]) {
        return None;
    }
    Some((cache.clone(), block.clone(), slice, cat, ends.clone()))
}

fn fused_node(name: &str, m: AttentionMatch, f16_cache: bool) -> NodeProto {
    NodeProto {
        input: m.inputs.to_vec(),
        output: vec![m.output],
        name: format!("{name}.fused"),
        op_type: if f16_cache {
            OP_TYPE_F16_CACHE
        } else {
            OP_TYPE
        }
        .into(),
        domain: crate::amx::op::DOMAIN.into(),
        attribute: Vec::new(),
    }
}

/// VAR's q/k/v preparation before an attention match: its `qkv` input, the per-head q scale,
/// the norms' floor, the head count and the nodes it spans.
struct PrologueMatch {
    qkv: String,
    q_scale: String,
    eps: f32,
    heads: i64,
    nodes: Vec<usize>,
}

/// `q = Mul(s0, Div(q_scale, Clip(ReduceL2(s0), eps)))`, `k = Div(s1, Clip(ReduceL2(s1), eps))`,
/// `[s0, s1, v] = Split(Transpose(0,2,1,3)(Reshape(qkv, [0, -1, 3H, hd])), axis 1)`, every
/// intermediate read only inside the pattern (k and v may also be graph outputs).
fn match_prologue(
    index: &Index<'_>,
    graph: &GraphProto,
    m: &AttentionMatch,
) -> Option<PrologueMatch> {
    let nodes = &graph.node;
    let [q, k, v, ..] = &m.inputs;
    let scores = m.nodes[3];
    if index.consumers(q)? != &vec![scores] {
        return None;
    }
    let mul_q = index.sole_producer(nodes, q, "Mul", scores)?;
    let split = producer(index, nodes, v, "Split")?;
    let [s0, s1, s2] = &nodes[split].output[..] else {
        return None;
    };
    if s2 != v || !matches!(int(&nodes[split], "axis"), Some(1)) {
        return None;
    }
    let (q_norm, q_scale, eps_q) = normalized(index, graph, mul_q, s0, true)?;
    let div_k = producer(index, nodes, k, "Div")?;
    let (k_norm, _, eps_k) = normalized(index, graph, div_k, s1, false)?;
    if eps_q != eps_k {
        return None;
    }
    let transpose = index.sole_producer(nodes, nodes[split].input.first()?, "Transpose", split)?;
    if ints(&nodes[transpose], "perm")? != &[0, 2, 1, 3] {
        return None;
    }
    let reshape =
        index.sole_producer(nodes, nodes[transpose].input.first()?, "Reshape", transpose)?;
    let [qkv, shape] = &nodes[reshape].input[..] else {
        return None;
    };
    let heads = match const_i64s(graph, shape)?[..] {
        [0, -1, h3, hd] if h3 > 0 && h3 % 3 == 0 && hd > 0 => h3 / 3,
        _ => return None,
    };
    if let Some(sizes) = nodes[split].input.get(1).filter(|s| !s.is_empty()) {
        if const_i64s(graph, sizes)? != [heads; 3] {
            return None;
        }
    }
    if const_f32s(graph, q_scale.as_str())?.len() != heads as usize {
        return None;
    }
    let mut span = vec![reshape, transpose, split, mul_q, div_k];
    span.extend(q_norm);
    span.extend(k_norm);
    Some(PrologueMatch {
        qkv: qkv.clone(),
        q_scale,
        eps: eps_q,
        heads,
        nodes: span,
    })
}

/// The node producing `value`, if it is an `op` (other readers allowed: graph outputs, and
/// nodes the caller drops).
fn producer(index: &Index<'_>, nodes: &[NodeProto], value: &str, op: &str) -> Option<usize> {
    let p = index.producer(value)?;
    (nodes[p].op_type == op && nodes[p].domain.is_empty()).then_some(p)
}

/// `out = x * Div(scale, Clip(ReduceL2(x), eps))` (`scaled`, `out` from the Mul node `at`)
/// or `x / Clip(ReduceL2(x), eps)` (the Div node `at`), `x` read only by the ReduceL2 and
/// `at`: the ReduceL2, Clip (and factor Div) nodes, the scale's name (`scaled`) and eps.
fn normalized(
    index: &Index<'_>,
    graph: &GraphProto,
    at: usize,
    x: &str,
    scaled: bool,
) -> Option<(Vec<usize>, String, f32)> {
    let nodes = &graph.node;
    let ins: Vec<&str> = nodes[at].input.iter().map(String::as_str).collect();
    let other = match ins[..] {
        [a, b] if a == x => b,
        [a, b] if b == x && scaled => a,
        _ => return None,
    };
    let (clip_out, factor, scale) = if scaled {
        let f = index.sole_producer(nodes, other, "Div", at)?;
        let [scale, clip_out] = &nodes[f].input[..] else {
            return None;
        };
        (clip_out.as_str(), Some(f), scale.clone())
    } else {
        (other, None, String::new())
    };
    let clip = index.sole_producer(nodes, clip_out, "Clip", factor.unwrap_or(at))?;
    let (norm_out, eps) = match &nodes[clip].input[..] {
        [n, e] => (n, e),
        [n, e, max] if max.is_empty() => (n, e),
        _ => return None,
    };
    let eps = match const_f32s(graph, eps)?[..] {
        [e] if e > 0.0 => e,
        _ => return None,
    };
    let norm = index.sole_producer(nodes, norm_out, "ReduceL2", clip)?;
    let [src, axes] = &nodes[norm].input[..] else {
        return None;
    };
    if src != x || !matches!(const_i64s(graph, axes)?[..], [-1] | [3]) {
        return None;
    }
    if !matches!(int(&nodes[norm], "keepdims"), None | Some(1)) {
        return None;
    }
    let mut readers = index.consumers(x)?.clone();
    readers.sort_unstable();
    let mut want = vec![norm, at];
    want.sort_unstable();
    if readers != want {
        return None;
    }
    let mut span = vec![norm, clip];
    span.extend(factor);
    Some((span, scale, eps))
}

fn fused_qkv_node(name: &str, m: &AttentionMatch, p: PrologueMatch, f16_cache: bool) -> NodeProto {
    let [_, k, v, past_k, past_v, position] = &m.inputs;
    NodeProto {
        input: vec![
            p.qkv,
            p.q_scale,
            past_k.clone(),
            past_v.clone(),
            position.clone(),
        ],
        output: vec![m.output.clone(), k.clone(), v.clone()],
        name: format!("{name}.fused_qkv"),
        op_type: if f16_cache { QKV_F16_CACHE } else { QKV }.into(),
        domain: crate::amx::op::DOMAIN.into(),
        attribute: vec![
            AttributeProto {
                name: HEADS.into(),
                r#type: attribute_type::INT,
                i: p.heads,
                ..AttributeProto::default()
            },
            AttributeProto {
                name: EPS.into(),
                r#type: attribute_type::FLOAT,
                f: p.eps,
                ..AttributeProto::default()
            },
        ],
    }
}
