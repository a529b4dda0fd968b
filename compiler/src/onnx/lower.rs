//! Lowers an IR [`Graph`] to an ONNX `ModelProto` and writes it with its weights as external
//! data (one `.weights` file beside the `.onnx`), so models above protobuf's 2 GB limit work.
//!
//! Initializers of 1 KiB or more go to the weights file at 64-byte aligned offsets (so runtimes
//! can map them directly); smaller ones stay inline.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;

use super::proto::{self, attribute_type, data_type};
use crate::ir::{Dim, ElemType, Graph, Op, TensorType, ValueOrigin};
use crate::Error;

const INLINE_LIMIT: usize = 1024;
const ALIGN: u64 = 64;

/// What [`write_model`] produced.
#[derive(Debug, Clone)]
pub struct WrittenModel {
    pub onnx_bytes: u64,
    pub weights_bytes: u64,
}

/// Writes `graph` to `dir/<stem>.onnx` and its large weights to `dir/<stem>.weights`.
/// `progress` is called with (initializers written, total).
pub fn write_model(
    graph: &Graph,
    dir: &Path,
    stem: &str,
    producer_version: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<WrittenModel, Error> {
    graph.check_unique_names()?;
    let weights_name = format!("{stem}.weights");
    let weights_path = dir.join(&weights_name);
    let file = File::create(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
    let mut out = BufWriter::with_capacity(1 << 22, file);
    let mut offset = 0u64;
    let mut initializers = Vec::with_capacity(graph.initializers.len());
    let total = graph.initializers.len();
    for (i, init) in graph.initializers.iter().enumerate() {
        let bytes = init.data.to_bytes()?;
        let expected = init.dims.iter().product::<usize>() * init.dtype.size_bytes();
        if bytes.len() != expected {
            return Err(Error::Internal(format!(
                "initializer {} has {} bytes, its shape {:?} needs {expected}",
                init.name,
                bytes.len(),
                init.dims
            )));
        }
        let mut t = proto::TensorProto {
            dims: init.dims.iter().map(|&d| d as i64).collect(),
            data_type: elem_type(init.dtype),
            name: init.name.clone(),
            ..Default::default()
        };
        if bytes.len() < INLINE_LIMIT {
            t.raw_data = bytes;
        } else {
            let pad = (ALIGN - offset % ALIGN) % ALIGN;
            out.write_all(&vec![0u8; pad as usize])
                .map_err(|e| Error::io(&weights_path, e))?;
            offset += pad;
            out.write_all(&bytes)
                .map_err(|e| Error::io(&weights_path, e))?;
            t.data_location = proto::DATA_LOCATION_EXTERNAL;
            t.external_data = vec![
                entry("location", &weights_name),
                entry("offset", &offset.to_string()),
                entry("length", &bytes.len().to_string()),
            ];
            offset += bytes.len() as u64;
        }
        initializers.push(t);
        progress(i + 1, total);
    }
    out.flush().map_err(|e| Error::io(&weights_path, e))?;

    let opset = graph_opset(graph);
    let model = proto::ModelProto {
        ir_version: super::IR_VERSION,
        producer_name: "llamagen-rs".into(),
        producer_version: producer_version.into(),
        doc_string: String::new(),
        graph: Some(lower_graph(graph, initializers, opset)),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
    };
    let onnx_path = dir.join(format!("{stem}.onnx"));
    let encoded = model.encode_to_vec();
    std::fs::write(&onnx_path, &encoded).map_err(|e| Error::io(&onnx_path, e))?;
    Ok(WrittenModel {
        onnx_bytes: encoded.len() as u64,
        weights_bytes: offset,
    })
}

/// An inline 1-D i64 tensor.
fn i64_tensor(name: &str, v: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        dims: vec![v.len() as i64],
        data_type: data_type::INT64,
        name: name.into(),
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn entry(key: &str, value: &str) -> proto::StringStringEntryProto {
    proto::StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

/// The opset a graph is written at: ours, or the newest one an operator of it needs.
pub fn graph_opset(graph: &Graph) -> i64 {
    graph
        .nodes
        .iter()
        .map(|n| n.op.min_opset())
        .fold(super::OPSET, i64::max)
}

/// Reductions take their axes as an input from opset 18 on (an attribute before).
const AXES_AS_INPUT: i64 = 18;

fn lower_graph(
    graph: &Graph,
    mut initializer: Vec<proto::TensorProto>,
    opset: i64,
) -> proto::GraphProto {
    let name_of = |id| graph.value(id).name.clone();
    let mut node = Vec::with_capacity(graph.nodes.len());
    for n in &graph.nodes {
        let mut input: Vec<String> = n.inputs.iter().map(|&i| name_of(i)).collect();
        let mut op = n.op.clone();
        if let Some(axes) = op.reduce_axes_mut() {
            if opset >= AXES_AS_INPUT {
                let name = format!("{}.axes", n.name);
                initializer.push(i64_tensor(&name, &std::mem::take(axes)));
                input.push(name);
            }
        }
        node.push(proto::NodeProto {
            input,
            output: n.outputs.iter().map(|&o| name_of(o)).collect(),
            name: n.name.clone(),
            op_type: op.op_type().into(),
            attribute: attributes(&op),
            domain: String::new(),
        });
    }
    let io = |list: &[(crate::ir::ValueId, TensorType)]| {
        list.iter()
            .map(|(id, ty)| value_info(&name_of(*id), ty))
            .collect()
    };
    debug_assert!(graph
        .values
        .iter()
        .all(|v| !matches!(v.origin, ValueOrigin::Absent) || v.name.is_empty()));
    proto::GraphProto {
        node,
        name: graph.name.clone(),
        initializer,
        doc_string: String::new(),
        input: io(&graph.inputs),
        output: io(&graph.outputs),
        value_info: Vec::new(),
    }
}

fn value_info(name: &str, ty: &TensorType) -> proto::ValueInfoProto {
    let dim = ty
        .shape
        .iter()
        .map(|d| proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => proto::DimensionValue::DimValue(*n as i64),
                Dim::Sym(s) => proto::DimensionValue::DimParam(s.clone()),
            }),
        })
        .collect();
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type: elem_type(ty.dtype),
                shape: (!ty.any_shape).then_some(proto::TensorShapeProto { dim }),
            }),
        }),
    }
}

pub(crate) fn elem_type(t: ElemType) -> i32 {
    match t {
        ElemType::F32 => data_type::FLOAT,
        ElemType::F16 => data_type::FLOAT16,
        ElemType::I64 => data_type::INT64,
        ElemType::I32 => data_type::INT32,
        ElemType::I8 => data_type::INT8,
        ElemType::U8 => data_type::UINT8,
        ElemType::Bool => data_type::BOOL,
    }
}

fn int(name: &str, i: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        i,
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        f,
        r#type: attribute_type::FLOAT,
        ..Default::default()
    }
}

fn string(name: &str, s: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        s: s.as_bytes().to_vec(),
        r#type: attribute_type::STRING,
        ..Default::default()
    }
}

fn attributes(op: &Op) -> Vec<proto::AttributeProto> {
    match op {
        Op::Softmax { axis }
        | Op::Gather { axis }
        | Op::Concat { axis }
        | Op::Split { axis }
        | Op::QuantizeLinear { axis }
        | Op::DequantizeLinear { axis } => {
            vec![int("axis", *axis)]
        }
        Op::Transpose { perm } => vec![ints("perm", perm)],
        Op::Cast { to } => vec![int("to", elem_type(*to) as i64)],
        // Empty axes: the opset-18 form, where they are an input.
        Op::ReduceMean { axes, keepdims } | Op::ReduceL2 { axes, keepdims } if axes.is_empty() => {
            vec![int("keepdims", *keepdims as i64)]
        }
        Op::ReduceMean { axes, keepdims } | Op::ReduceL2 { axes, keepdims } => {
            vec![ints("axes", axes), int("keepdims", *keepdims as i64)]
        }
        Op::GeluTanh => vec![string("approximate", "tanh")],
        Op::Shape { start, end } => {
            let mut a = Vec::new();
            if let Some(s) = start {
                a.push(int("start", *s));
            }
            if let Some(e) = end {
                a.push(int("end", *e));
            }
            a
        }
        Op::Conv {
            kernel,
            pads,
            strides,
        } => vec![
            ints("kernel_shape", kernel),
            ints("pads", pads),
            ints("strides", strides),
        ],
        Op::InstanceNormalization { epsilon } => vec![float("epsilon", *epsilon)],
        Op::LayerNormalization { axis, epsilon } => {
            vec![int("axis", *axis), float("epsilon", *epsilon)]
        }
        Op::ResizeNearest => vec![
            string("mode", "nearest"),
            string("coordinate_transformation_mode", "asymmetric"),
            string("nearest_mode", "floor"),
        ],
        _ => Vec::new(),
    }
}
