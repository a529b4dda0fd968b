//! A small typed graph IR in front of ONNX protobuf.
//!
//! Values live in an arena and are referred to by `Copy` ids ([`ValueId`]); nodes are added with
//! [`Graph::wire`] and carry deterministic names (`layers.3.attn.qkv`). Operators and their
//! attributes are typed ([`Op`]); only [`crate::onnx::lower`] knows how they become protobuf.
//! Weights are held as [`InitData`], which may be produced lazily so that multi-GB checkpoints
//! stream to disk one tensor at a time.

mod graph;
mod op;
mod types;

pub use graph::{Graph, Initializer, Node, Value, ValueId, ValueOrigin};
pub use op::Op;
pub use types::{Dim, ElemType, InitData, LazyProducer, TensorType};
