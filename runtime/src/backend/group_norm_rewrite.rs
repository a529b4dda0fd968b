//! Puts our GroupNorm (+ SiLU) operator ([`crate::group_norm`]) into a VQ decoder graph, at
//! load, in memory. The bundle on disk stays standard ONNX.
//!
//! Each match of (`compiler/src/models/vq`, `group_norm` and `swish`)
//!
//! ```text
//! x -> Reshape([0, G, -1]) -> InstanceNormalization(ones, zeros, eps) -> Reshape([0, C, ..])
//!   -> Mul(weight) -> Add(bias) [-> Sigmoid, Mul(itself, sigmoid)] -> y
//! ```
//!
//! (every intermediate value used only inside the chain; f32 initializers for the norm's
//! constants, weight and bias) becomes one `llamagen.cpu::GroupNormSilu(x, weight, bias) -> y`.

use std::collections::HashMap;

use llamagen_bundle::onnx_proto::{
    attribute_type, AttributeProto, GraphProto, ModelProto, NodeProto,
};

use super::graph_rewrite::{const_f32s, const_i64s, splice, Index};
use crate::amx::op::DOMAIN;
use crate::group_norm::op::{EPSILON, GROUPS, OP_TYPE, SILU};

/// Replaces every matched chain of `model`; returns how many.
pub(crate) fn rewrite_norms(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_ref() else {
        return 0;
    };
    let index = Index::new(&graph.node, graph.output.iter().map(|o| o.name.as_str()));
    let mut fused = HashMap::new();
    let mut dropped = vec![false; graph.node.len()];
    for i in 0..graph.node.len() {
        let Some(m) = match_norm(&index, graph, i) else {
            continue;
        };
        for &n in &m.nodes {
            dropped[n] = true;
        }
        let at = *m.nodes.last().unwrap_or(&i);
        fused.insert(at, fused_node(&graph.node[i].name, m));
    }
    let count = fused.len();
    if count > 0 {
        splice(model, fused, &dropped);
    }
    count
}

struct NormMatch {
    x: String,
    weight: String,
    bias: String,
    y: String,
    groups: i64,
    eps: f32,
    silu: bool,
    /// In graph order; the last one is where the fused node goes.
    nodes: Vec<usize>,
}

/// The chain around the `InstanceNormalization` node `i`.
fn match_norm(index: &Index<'_>, graph: &GraphProto, i: usize) -> Option<NormMatch> {
    let nodes = &graph.node;
    let norm = &nodes[i];
    if norm.op_type != "InstanceNormalization" || !norm.domain.is_empty() {
        return None;
    }
    let grouped = index.sole_producer(nodes, norm.input.first()?, "Reshape", i)?;
    let [x, group_shape] = &nodes[grouped].input[..] else {
        return None;
    };
    let groups = match const_i64s(graph, group_shape)?[..] {
        [0, g, -1] if g > 0 => g,
        _ => return None,
    };
    let g = groups as usize;
    // InstanceNormalization's own scale and bias must be the identity.
    let (ones, zeros) = (norm.input.get(1)?, norm.input.get(2)?);
    if const_f32s(graph, ones)? != vec![1.0; g] || const_f32s(graph, zeros)? != vec![0.0; g] {
        return None;
    }
    let eps = norm
        .attribute
        .iter()
        .find(|a| a.name == "epsilon")
        .map_or(1e-5, |a| a.f);
    let ungrouped = index.sole_consumer(nodes, norm.output.first()?, "Reshape")?;
    let channels = match const_i64s(graph, nodes[ungrouped].input.get(1)?)?[..] {
        [0, c, _, _] if c > 0 && c % groups == 0 => c as usize,
        _ => return None,
    };
    let scale = index.sole_consumer(nodes, nodes[ungrouped].output.first()?, "Mul")?;
    let weight = other_input(&nodes[scale], nodes[ungrouped].output.first()?)?;
    let shift = index.sole_consumer(nodes, nodes[scale].output.first()?, "Add")?;
    let bias = other_input(&nodes[shift], nodes[scale].output.first()?)?;
    for p in [&weight, &bias] {
        if const_f32s(graph, p)?.len() != channels {
            return None;
        }
    }
    let mut m = NormMatch {
        x: x.clone(),
        weight,
        bias,
        y: nodes[shift].output.first()?.clone(),
        groups,
        eps,
        silu: false,
        nodes: vec![grouped, i, ungrouped, scale, shift],
    };
    if let Some((sigmoid, product)) = silu_after(index, nodes, &m.y) {
        m.y = nodes[product].output.first()?.clone();
        m.silu = true;
        m.nodes.extend([sigmoid, product]);
    }
    Some(m)
}

/// `Sigmoid(t)` and `Mul(t, sigmoid)`, when they are the only readers of `t`.
fn silu_after(index: &Index<'_>, nodes: &[NodeProto], t: &str) -> Option<(usize, usize)> {
    let readers = index.consumers(t)?;
    let [a, b] = readers[..] else {
        return None;
    };
    let (sigmoid, product) = if nodes.get(a)?.op_type == "Sigmoid" {
        (a, b)
    } else {
        (b, a)
    };
    let s = &nodes[sigmoid];
    if s.op_type != "Sigmoid" || !s.domain.is_empty() || s.input.first()? != t {
        return None;
    }
    let sig_out = s.output.first()?;
    if index.sole_consumer(nodes, sig_out, "Mul")? != product {
        return None;
    }
    let p = &nodes[product];
    let ins: Vec<&str> = p.input.iter().map(String::as_str).collect();
    (ins == [t, sig_out.as_str()] || ins == [sig_out.as_str(), t]).then_some((sigmoid, product))
}

/// The input of a two-input `node` that is not `value`.
fn other_input(node: &NodeProto, value: &str) -> Option<String> {
    match &node.input[..] {
        [a, b] if a == value => Some(b.clone()),
        [a, b] if b == value => Some(a.clone()),
        _ => None,
    }
}

fn fused_node(name: &str, m: NormMatch) -> NodeProto {
    let int = |name: &str, i: i64| AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..AttributeProto::default()
    };
    NodeProto {
        input: vec![m.x, m.weight, m.bias],
        output: vec![m.y],
        name: format!("{name}.fused"),
        op_type: OP_TYPE.into(),
        domain: DOMAIN.into(),
        attribute: vec![
            int(GROUPS, m.groups),
            AttributeProto {
                name: EPSILON.into(),
                r#type: attribute_type::FLOAT,
                f: m.eps,
                ..AttributeProto::default()
            },
            int(SILU, i64::from(m.silu)),
        ],
    }
}
