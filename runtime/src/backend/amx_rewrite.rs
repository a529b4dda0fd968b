//! Puts the AMX convolution ([`crate::amx::qconv`]) into a VQ decoder graph whose convolutions
//! quantize their activations (`--int8-activations dynamic-convs` bundles), at load, in memory.
//! The bundle on disk stays standard ONNX (Python onnxruntime runs it as it is).
//!
//! Each match of
//!
//! ```text
//! x -> QuantizeLinear(s_x, z_x) -> DequantizeLinear(s_x, z_x) ─┐
//! w_int8 -> DequantizeLinear(s_w, 0) ──────────────────────────┼─> Conv 3x3, pad 1, stride 1
//!                                                       bias ──┘   -> QuantizeLinear(s_y, z_y)
//!                                                                  -> DequantizeLinear -> y
//! ```
//!
//! (every intermediate value used only by the next node) is replaced by one
//! `llamagen.cpu::QConv3x3(x) -> y` node whose weights are packed here and held by the operator
//! (`QConv3x3(x, r)` for `Add(r, y)` where that `Add` alone reads `y`: a residual block's
//! second convolution); the other nodes (1x1 convolutions, norms, attention) stay as they are.
//! Initializers no longer used are dropped and the rest are inlined, so the model loads from
//! memory without its external weights file. `decoder_rewrite` runs this pass.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use llamagen_bundle::initializers::Initializers;
use llamagen_bundle::onnx_proto::{
    attribute_type, data_type, AttributeProto, ModelProto, NodeProto, TensorProto,
    DATA_LOCATION_EXTERNAL,
};

use super::graph_rewrite::{bad_model, ints, splice, Index};
use crate::amx::op::{CONV_ATTRIBUTE, DOMAIN, OP_TYPE};
use crate::amx::qconv::{QConv3x3, Quant};
use crate::error::RuntimeError;

/// Replaces every matched convolution chain of `model` (the graph of `path`) and inlines the
/// initializers still used (the weights the operator packed are dropped); returns the packed
/// convolutions by node name (none: `model` is unchanged).
pub(crate) fn rewrite_convs(
    path: &Path,
    model: &mut ModelProto,
    inits: &Initializers,
) -> Result<HashMap<String, Arc<QConv3x3>>, RuntimeError> {
    let bad = |reason: String| bad_model(path, reason);
    let mut convs = HashMap::new();
    let Some(graph) = model.graph.as_ref() else {
        return Ok(convs);
    };
    let index = Index::new(&graph.node, graph.output.iter().map(|o| o.name.as_str()));
    let mut replaced: HashMap<usize, NodeProto> = HashMap::new();
    let mut dropped = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate() {
        let Some(m) = match_conv(&index, &graph.node, i) else {
            continue;
        };
        let Some(conv) = build(&m, inits).map_err(|e| bad(format!("{}: {e}", node.name)))? else {
            continue;
        };
        for n in m.nodes {
            dropped[n] = true;
        }
        convs.insert(node.name.clone(), Arc::new(conv));
        // A residual block's `Add(r, conv(..))` goes into the convolution's epilogue: the
        // output then takes the convolution input's buffer and `r` dies at this node (with a
        // separate Add, ONNX Runtime kept three 42 MB maps live at 160 x 256 x 256).
        match residual_add(&index, &graph.node, &m.y) {
            Some((add, r)) => {
                dropped[add] = true;
                let y = &graph.node[add].output[0];
                replaced.insert(add, fused_node(node, &m.x, Some(r), y));
            }
            None => {
                replaced.insert(i, fused_node(node, &m.x, None, &m.y));
            }
        }
    }
    if convs.is_empty() {
        return Ok(convs);
    }
    splice(model, replaced, &dropped);
    let Some(graph) = model.graph.as_mut() else {
        return Ok(convs);
    };
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut kept = Vec::new();
    for t in std::mem::take(&mut graph.initializer) {
        if used.contains(t.name.as_str()) {
            kept.push(inline(t, inits).map_err(|e| bad(e.to_string()))?);
        }
    }
    graph.initializer = kept;
    Ok(convs)
}

/// The names one convolution's Q/DQ chain reads, and the nodes it spans.
struct ConvMatch {
    x: String,
    y: String,
    weight_base: String,
    bias: Option<String>,
    x_quant: (String, String),
    y_quant: (String, String),
    nodes: Vec<usize>,
}

fn match_conv(index: &Index<'_>, nodes: &[NodeProto], i: usize) -> Option<ConvMatch> {
    let conv = &nodes[i];
    if conv.op_type != "Conv" || !conv.domain.is_empty() || !is_3x3_same(conv) {
        return None;
    }
    let (x_dq, w_dq) = (conv.input.first()?, conv.input.get(1)?);
    let dq = index.sole_producer(nodes, x_dq, "DequantizeLinear", i)?;
    let q = index.sole_producer(nodes, nodes[dq].input.first()?, "QuantizeLinear", dq)?;
    let wq = index.sole_producer(nodes, w_dq, "DequantizeLinear", i)?;
    let out = conv.output.first()?;
    let yq = index.sole_consumer(nodes, out, "QuantizeLinear")?;
    let ydq = index.sole_consumer(nodes, nodes[yq].output.first()?, "DequantizeLinear")?;
    let pair = |n: &NodeProto| Some((n.input.get(1)?.clone(), n.input.get(2)?.clone()));
    let x_quant = pair(&nodes[q])?;
    let y_quant = pair(&nodes[yq])?;
    // Each dequantization must undo its quantization (the same scale and zero point).
    if pair(&nodes[dq])? != x_quant || pair(&nodes[ydq])? != y_quant {
        return None;
    }
    let weight = nodes[wq].input.first()?;
    Some(ConvMatch {
        x: nodes[q].input.first()?.clone(),
        y: nodes[ydq].output.first()?.clone(),
        weight_base: weight.strip_suffix(".int8")?.to_string(),
        bias: conv.input.get(2).filter(|b| !b.is_empty()).cloned(),
        x_quant,
        y_quant,
        nodes: vec![q, dq, wq, i, yq, ydq],
    })
}

/// The `Add` node that alone reads `y`, and its other input (`y` not read twice).
fn residual_add<'n>(
    index: &Index<'_>,
    nodes: &'n [NodeProto],
    y: &str,
) -> Option<(usize, &'n str)> {
    let add = index.sole_consumer(nodes, y, "Add")?;
    let node = &nodes[add];
    let [a, b] = &node.input[..] else {
        return None;
    };
    let r = match (a == y, b == y) {
        (true, false) => b,
        (false, true) => a,
        _ => return None,
    };
    (node.output.len() == 1 && !r.is_empty()).then_some((add, r.as_str()))
}

/// A 3x3 kernel, padding 1 on every side, stride 1, no dilation, one group.
fn is_3x3_same(conv: &NodeProto) -> bool {
    let ints = |name: &str| ints(conv, name);
    let ones = |v: Option<&Vec<i64>>| v.is_none_or(|v| v.iter().all(|&d| d == 1));
    let group = conv.attribute.iter().find(|a| a.name == "group");
    ints("kernel_shape").is_none_or(|k| k == &[3, 3])
        && ints("pads").is_some_and(|p| p == &[1, 1, 1, 1])
        && ones(ints("strides"))
        && ones(ints("dilations"))
        && group.is_none_or(|g| g.i == 1)
        && conv
            .attribute
            .iter()
            .all(|a| a.name != "auto_pad" || a.s.is_empty() || a.s == b"NOTSET")
}

/// The packed convolution of a match; `None` when its shapes or quantization are not ours.
fn build(m: &ConvMatch, inits: &Initializers) -> Result<Option<QConv3x3>, String> {
    let Some(w) = inits.get_int8(&m.weight_base).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let [cout, cin, 3, 3] = w.dims[..] else {
        return Ok(None);
    };
    let zero_point = format!("{}.zero_point", m.weight_base);
    let symmetric = match inits.raw(&zero_point).map_err(|e| e.to_string())? {
        Some((_, bytes)) => bytes.iter().all(|&b| b == 0),
        None => true,
    };
    if w.axis != 0 || !symmetric || !QConv3x3::fits(cout) {
        return Ok(None);
    }
    let bias = match &m.bias {
        Some(b) => Some(inits.get(b).map_err(|e| e.to_string())?.data),
        None => None,
    };
    let (Some(x), Some(y)) = (quant(inits, &m.x_quant)?, quant(inits, &m.y_quant)?) else {
        return Ok(None);
    };
    QConv3x3::new(cin, cout, &w.values, &w.scales, bias.as_deref(), x, y).map(Some)
}

/// A scalar f32 scale and a scalar u8 zero point; `None` for other kinds (per-channel, int8).
fn quant(inits: &Initializers, (scale, zero): &(String, String)) -> Result<Option<Quant>, String> {
    let read = |name: &str| inits.raw(name).map_err(|e| e.to_string());
    let (Some((s, s_bytes)), Some((z, z_bytes))) = (read(scale)?, read(zero)?) else {
        return Ok(None);
    };
    if s.data_type != data_type::FLOAT || s_bytes.len() != 4 {
        return Ok(None);
    }
    if z.data_type != data_type::UINT8 || z_bytes.len() != 1 {
        return Ok(None);
    }
    let scale = f32::from_le_bytes([s_bytes[0], s_bytes[1], s_bytes[2], s_bytes[3]]);
    let valid = scale.is_finite() && scale > 0.0;
    Ok(valid.then_some(Quant {
        scale,
        zero_point: z_bytes[0],
    }))
}

fn fused_node(conv: &NodeProto, x: &str, residual: Option<&str>, y: &str) -> NodeProto {
    NodeProto {
        input: std::iter::once(x)
            .chain(residual)
            .map(str::to_string)
            .collect(),
        output: vec![y.to_string()],
        name: conv.name.clone(),
        op_type: OP_TYPE.into(),
        domain: DOMAIN.into(),
        attribute: vec![AttributeProto {
            name: CONV_ATTRIBUTE.into(),
            r#type: attribute_type::STRING,
            s: conv.name.clone().into_bytes(),
            ..AttributeProto::default()
        }],
    }
}

/// `t` with its bytes inline.
fn inline(mut t: TensorProto, inits: &Initializers) -> Result<TensorProto, RuntimeError> {
    if t.data_location != DATA_LOCATION_EXTERNAL {
        return Ok(t);
    }
    let bytes = match inits.raw(&t.name)? {
        Some((_, bytes)) => bytes.to_vec(),
        None => Vec::new(),
    };
    t.raw_data = bytes;
    t.external_data.clear();
    t.data_location = 0;
    Ok(t)
}
