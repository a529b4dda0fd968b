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
//! `llamagen.cpu::CachedAttention(q, k, v, past_k, past_v, position) -> out` node. The
//! weights stay in the bundle's external file, read by ONNX Runtime as usual.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use llamagen_bundle::confine::OpenedFile;
use llamagen_bundle::onnx_proto::{data_type, GraphProto, NodeProto};
use prost::Message;

use super::graph_rewrite::{bad_model, const_i64s, decode, int, ints, splice, Index, Rewritten};
use crate::attention::op::{OP_TYPE, OP_TYPE_F16_CACHE};
use crate::backend::CpuKernels;
use crate::error::RuntimeError;

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
    for i in 0..graph.node.len() {
        let Some(m) = match_attention(&index, graph, i) else {
            continue;
        };
        let [_, _, _, past_k, past_v, _] = &m.inputs;
        let is_input = |name: &String| graph.input.iter().any(|v| &v.name == name);
        if f16_cache && !(is_input(past_k) && is_input(past_v)) {
            continue;
        }
        caches.extend([past_k.clone(), past_v.clone()]);
        for &n in &m.nodes {
            dropped[n] = true;
        }
        let at = *m.nodes.last().unwrap_or(&i);
        fused.insert(at, fused_node(&graph.node[i].name, m, f16_cache));
    }
    if fused.is_empty() {
        return Ok(None);
    }
    let count = fused.len();
    splice(&mut model, fused, &dropped);
    if f16_cache {
        for input in model.graph.iter_mut().flat_map(|g| g.input.iter_mut()) {
            if caches.contains(&input.name) {
                if let Some(t) = input.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
                    t.elem_type = data_type::FLOAT16;
                }
            }
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
