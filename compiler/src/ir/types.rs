//! Initializer payloads of the IR; element types and shapes are the bundle contract's.

use std::fmt;
use std::sync::Arc;

pub use llamagen_bundle::tensor_type::{Dim, ElemType, TensorType};

/// Produces the little-endian bytes of one initializer when the model is written.
pub type LazyProducer = Arc<dyn Fn() -> Result<Vec<u8>, crate::Error> + Send + Sync>;

/// The payload of an initializer.
#[derive(Clone)]
pub enum InitData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// Bytes produced on demand (weights converted from a checkpoint while writing).
    Lazy(LazyProducer),
}

impl fmt::Debug for InitData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitData::F32(v) => write!(f, "F32[{}]", v.len()),
            InitData::I64(v) => write!(f, "I64[{}]", v.len()),
            InitData::Lazy(_) => f.write_str("Lazy"),
        }
    }
}

impl InitData {
    /// The little-endian bytes, producing them if lazy.
    pub fn to_bytes(&self) -> Result<Vec<u8>, crate::Error> {
        Ok(match self {
            InitData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            InitData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            InitData::Lazy(p) => p()?,
        })
    }
}
