//! Typed ONNX operators (default domain) with their attributes. Graphs are opset 17 unless an
//! operator needs a newer one ([`Op::min_opset`]).

use super::ElemType;

/// An operator and its attributes. Inputs are passed to [`super::Graph::wire`] in ONNX order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Identity,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Sqrt,
    Neg,
    Sigmoid,
    Tanh,
    /// `Gelu(approximate="tanh")` (opset 20): one kernel where the formula takes nine.
    GeluTanh,
    /// x, min, max (optional scalars): clamps x.
    Clip,
    MatMul,
    Less,
    Where,
    /// start, limit, delta (scalars).
    Range,
    Softmax {
        axis: i64,
    },
    /// data, shape.
    Reshape,
    Transpose {
        perm: Vec<i64>,
    },
    /// data, indices.
    Gather {
        axis: i64,
    },
    Concat {
        axis: i64,
    },
    /// data, split sizes (i64 1-D).
    Split {
        axis: i64,
    },
    /// data, starts, ends, axes (all i64 1-D).
    Slice,
    /// data, axes (i64 1-D).
    Unsqueeze,
    Cast {
        to: ElemType,
    },
    ReduceMean {
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// `sqrt(sum(x^2))` over `axes`.
    ReduceL2 {
        axes: Vec<i64>,
        keepdims: bool,
    },
    Shape {
        start: Option<i64>,
        end: Option<i64>,
    },
    /// X, W, B (optional).
    Conv {
        kernel: [i64; 2],
        pads: [i64; 4],
        strides: [i64; 2],
    },
    /// X, scale, bias.
    InstanceNormalization {
        epsilon: f32,
    },
    /// X, scale, bias (optional): normalises over the axes from `axis` on.
    LayerNormalization {
        axis: i64,
        epsilon: f32,
    },
    /// X, roi (empty), scales: nearest-neighbour upsampling as torch's `mode="nearest"`.
    ResizeNearest,
    /// x, scale, zero point: `axis` for per-channel scales (ignored for per-tensor).
    QuantizeLinear {
        axis: i64,
    },
    /// x, scale, zero point.
    DequantizeLinear {
        axis: i64,
    },
    /// x (f32) -> (uint8 x, f32 scale, uint8 zero point): per-tensor, computed at run time.
    DynamicQuantizeLinear,
    /// a, b, a zero point, b zero point (optional) -> int32 product.
    MatMulInteger,
}

impl Op {
    /// A reduction's axes (empty once lowered to the form that takes them as an input).
    pub fn reduce_axes_mut(&mut self) -> Option<&mut Vec<i64>> {
        match self {
            Op::ReduceMean { axes, .. } | Op::ReduceL2 { axes, .. } => Some(axes),
            _ => None,
        }
    }

    /// The oldest default-domain opset that has this operator in this form.
    pub fn min_opset(&self) -> i64 {
        match self {
            Op::GeluTanh => 20,
            _ => crate::onnx::OPSET,
        }
    }

    /// The ONNX `op_type` string.
    pub fn op_type(&self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Pow => "Pow",
            Op::Sqrt => "Sqrt",
            Op::Neg => "Neg",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::GeluTanh => "Gelu",
            Op::Clip => "Clip",
            Op::MatMul => "MatMul",
            Op::Less => "Less",
            Op::Where => "Where",
            Op::Range => "Range",
            Op::Softmax { .. } => "Softmax",
            Op::Reshape => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Gather { .. } => "Gather",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Slice => "Slice",
            Op::Unsqueeze => "Unsqueeze",
            Op::Cast { .. } => "Cast",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::ReduceL2 { .. } => "ReduceL2",
            Op::Shape { .. } => "Shape",
            Op::Conv { .. } => "Conv",
            Op::InstanceNormalization { .. } => "InstanceNormalization",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::ResizeNearest => "Resize",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
            Op::DynamicQuantizeLinear => "DynamicQuantizeLinear",
            Op::MatMulInteger => "MatMulInteger",
        }
    }
}
