//! What the load-time graph rewrites share (`amx_rewrite` for the VQ decoders' convolutions,
//! `attention_rewrite` for VAR's step attention): an index of producers and consumers, the
//! splice that swaps matched nodes for fused ones, and the session built from the result.
//! The bundle on disk never changes; only the in-memory model does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use llamagen_bundle::onnx_proto::{
    data_type, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
};
use ort::operator::OperatorDomain;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use prost::Message;

use crate::amx::op::DOMAIN;
use crate::backend::CpuKernels;
use crate::error::RuntimeError;

/// A rewritten graph: the model to load, the operators its fused nodes need, and how many
/// nodes were fused.
pub(crate) struct Rewritten {
    pub path: PathBuf,
    pub model: Vec<u8>,
    pub domain: OperatorDomain,
    pub fused: CpuKernels,
    /// Where the model's external weights are (`None`: every initializer is inline).
    pub weights_dir: Option<PathBuf>,
}

impl Rewritten {
    /// The session of the rewritten graph, and how many nodes were fused.
    pub(crate) fn commit(
        self,
        builder: SessionBuilder,
    ) -> Result<(Session, CpuKernels), RuntimeError> {
        let err = |e: ort::Error| RuntimeError::ort(format!("loading {}", self.path.display()), e);
        let mut builder = builder
            .with_operators(self.domain)
            .map_err(|e| err(e.into()))?;
        if let Some(dir) = &self.weights_dir {
            // A model loaded from memory has no folder of its own to resolve its external
            // weights file against.
            builder = builder
                .with_config_entry(
                    "session.model_external_initializers_file_folder_path",
                    dir.to_string_lossy(),
                )
                .map_err(|e| err(e.into()))?;
        }
        // ONNX Runtime registers a custom domain's schemas in ONNX's process-wide version map
        // with a check-then-insert: two sessions with our domain created at once on two
        // threads can both insert, and the second fails ("the domain is already exist").
        static REGISTERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = REGISTERING.lock().unwrap_or_else(|p| p.into_inner());
        let session = builder.commit_from_memory(&self.model).map_err(err)?;
        Ok((session, self.fused))
    }
}

/// Where `graph` keeps its weights, for [`Rewritten::weights_dir`]: `None` once every
/// initializer is inline.
pub(crate) fn external_weights(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.initializer
            .iter()
            .any(|t| t.data_location == llamagen_bundle::onnx_proto::DATA_LOCATION_EXTERNAL)
    })
}

/// Producer and consumers of every value.
pub(crate) struct Index<'a> {
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(
        nodes: &'a [NodeProto],
        graph_outputs: impl Iterator<Item = &'a str>,
    ) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        // A graph output counts as a consumer nobody may take away.
        for o in graph_outputs {
            consumers.entry(o).or_default().push(usize::MAX);
        }
        Index {
            producer,
            consumers,
        }
    }

    /// The node producing `value`, if it is an `op` whose output only `consumer` reads.
    pub(crate) fn sole_producer(
        &self,
        nodes: &'a [NodeProto],
        value: &str,
        op: &str,
        consumer: usize,
    ) -> Option<usize> {
        let p = *self.producer.get(value)?;
        let n = &nodes[p];
        (n.op_type == op && n.domain.is_empty() && self.consumers.get(value)? == &vec![consumer])
            .then_some(p)
    }

    /// The node producing `value`.
    pub(crate) fn producer(&self, value: &str) -> Option<usize> {
        self.producer.get(value).copied()
    }

    /// Every reader of `value` (`usize::MAX` for a graph output).
    pub(crate) fn consumers(&self, value: &str) -> Option<&Vec<usize>> {
        self.consumers.get(value)
    }

    /// The only node reading `value`, if it is an `op`.
    pub(crate) fn sole_consumer(
        &self,
        nodes: &'a [NodeProto],
        value: &str,
        op: &str,
    ) -> Option<usize> {
        match self.consumers.get(value)?.as_slice() {
            [c] if *c != usize::MAX && nodes[*c].op_type == op && nodes[*c].domain.is_empty() => {
                Some(*c)
            }
            _ => None,
        }
    }
}

/// Integer list attribute `name` of `node`.
pub(crate) fn ints<'n>(node: &'n NodeProto, name: &str) -> Option<&'n Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| &a.ints)
}

/// Integer attribute `name` of `node`.
pub(crate) fn int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// The values of an inline int64 initializer.
pub(crate) fn const_i64s(graph: &GraphProto, name: &str) -> Option<Vec<i64>> {
    let t = graph.initializer.iter().find(|t| t.name == name)?;
    if t.data_type != data_type::INT64 || t.raw_data.len() % 8 != 0 || t.raw_data.is_empty() {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
    )
}

/// The values of an inline f32 initializer.
pub(crate) fn const_f32s(graph: &GraphProto, name: &str) -> Option<Vec<f32>> {
    let t = graph.initializer.iter().find(|t| t.name == name)?;
    if t.data_type != data_type::FLOAT || t.raw_data.is_empty() || t.raw_data.len() % 4 != 0 {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Puts each node of `fused` (keyed by the index it takes) in place of the matched nodes
/// (`dropped`), drops shape records of values no longer produced and declares our domain.
pub(crate) fn splice(
    model: &mut ModelProto,
    mut fused: HashMap<usize, NodeProto>,
    dropped: &[bool],
) {
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| match fused.remove(&i) {
            Some(f) => Some(f),
            None => (!dropped[i]).then_some(n),
        })
        .collect();
    let produced: HashSet<String> = graph.node.iter().flat_map(|n| n.output.clone()).collect();
    graph.value_info.retain(|v| produced.contains(&v.name));
    if !model.opset_import.iter().any(|o| o.domain == DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: DOMAIN.into(),
            version: 1,
        });
    }
}

/// The model's error for `path`.
pub(crate) fn bad_model(path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::ort(format!("rewriting {}", path.display()), reason.to_string())
}

/// Decodes a model.
pub(crate) fn decode(path: &Path, onnx: &[u8]) -> Result<ModelProto, RuntimeError> {
    ModelProto::decode(onnx).map_err(|e| bad_model(path, e))
}
