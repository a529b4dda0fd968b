//! ONNX emission: the protobuf subset ([`proto`]) and the IR lowering ([`lower`]).

pub mod lower;
pub use llamagen_bundle::onnx_proto as proto;

/// ONNX IR version we write (9: accepted by onnxruntime >= 1.15 and onnx.checker).
pub const IR_VERSION: i64 = 9;
/// Default-domain opset we target: a graph is written at the newest of this and its
/// operators' [`crate::ir::Op::min_opset`].
pub const OPSET: i64 = 17;

pub use lower::{write_model, WrittenModel};
