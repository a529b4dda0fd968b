//! Element types, shapes and initializer payloads of the IR.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Tensor element types that appear in our graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    F32,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl ElemType {
    pub fn size_bytes(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 => 2,
            ElemType::I64 => 8,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ElemType::F32 => "f32",
            ElemType::F16 => "f16",
            ElemType::I64 => "i64",
            ElemType::I32 => "i32",
            ElemType::I8 => "i8",
            ElemType::U8 => "u8",
            ElemType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// One dimension of a graph input/output: fixed, or a named symbol (`batch`, `seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// Element type and shape of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: ElemType,
    pub shape: Vec<Dim>,
    /// Shape left unspecified (only calibration probes, whose ranks vary).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_shape: bool,
}

impl TensorType {
    pub fn new(dtype: ElemType, shape: Vec<Dim>) -> Self {
        TensorType {
            dtype,
            shape,
            any_shape: false,
        }
    }

    /// A tensor of any rank and shape.
    pub fn any_shape(dtype: ElemType) -> Self {
        TensorType {
            dtype,
            shape: Vec::new(),
            any_shape: true,
        }
    }
}

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
