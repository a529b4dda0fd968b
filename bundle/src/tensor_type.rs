//! Element types and shapes of graph inputs, outputs and initializers, as bundle.yaml records
//! them.

use std::fmt;

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
