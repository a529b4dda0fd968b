//! The ONNX Runtime custom operator that runs [`GroupNorm`] inside a session:
//! `llamagen.cpu::GroupNormSilu(x, weight, bias) -> y`, `x` and `y` f32 `[n, c, h, w]`,
//! `weight` and `bias` f32 with `c` values (any shape), attributes `groups` (int), `epsilon`
//! (float) and `silu` (int, 0 or 1). The groups run on the session's intra-op threads.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::TensorElementType;

use super::GroupNorm;
use crate::custom_op::{first_input, on_threads};

pub const OP_TYPE: &str = "GroupNormSilu";
pub const GROUPS: &str = "groups";
pub const EPSILON: &str = "epsilon";
pub const SILU: &str = "silu";

struct GroupNormOp;

impl Operator for GroupNormOp {
    type Kernel<'attr> = GroupNorm;

    /// The output may take the input's buffer when the input dies here (the second norm of a
    /// residual block; the first one's input is still needed by the residual add).
    const INPLACES: &[(u32, u32)] = &[(0, 0)];

    fn name(&self) -> &str {
        OP_TYPE
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f = || OperatorInput::required(TensorElementType::Float32);
        [f(), f(), f()]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    /// The input's type and shape.
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        ctx.set_output(0, &first_input(ctx, OP_TYPE)?)
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<GroupNorm> {
        let groups: i64 = k
            .get(GROUPS)
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no '{GROUPS}'")))?;
        let eps: f32 = k
            .get(EPSILON)
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no '{EPSILON}'")))?;
        let silu: i64 = k.get(SILU).unwrap_or(0);
        Ok(GroupNorm {
            groups: usize::try_from(groups)
                .map_err(|_| ort::Error::new(format!("{OP_TYPE}: {groups} groups")))?,
            eps,
            silu: silu != 0,
        })
    }
}

impl Kernel for GroupNorm {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let bad = |what: String| ort::Error::new(format!("{OP_TYPE}: {what}"));
        let input = |i: usize| ctx.input(i)?.ok_or_else(|| bad(format!("no input {i}")));
        let (x, weight, bias) = (input(0)?, input(1)?, input(2)?);
        let (shape, xs) = x.try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let [n, c, ..] = dims[..] else {
            return Err(bad(format!(
                "input of shape {dims:?}, expected [n, c, ...]"
            )));
        };
        let hw: usize = dims[2..].iter().product();
        // Pointers from here: the output may be the input's buffer.
        let x_ptr = xs.as_ptr();
        let weight = weight.try_extract_tensor::<f32>()?.1;
        let bias = bias.try_extract_tensor::<f32>()?.1;
        let mut output = ctx
            .output(0, shape.to_vec())?
            .ok_or_else(|| bad("no output".into()))?;
        let y = output.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr();
        let this = *self;
        // SAFETY: ONNX Runtime gave `x` and `y` with `n * c * hw` values each (the output was
        // made with the input's shape); they are one buffer (in place) or disjoint.
        on_threads(ctx, OP_TYPE, |par| unsafe {
            this.run_raw(x_ptr, y, n, c, hw, weight, bias, par)
        })
    }
}

/// `domain` with the GroupNorm operator added.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    domain.add(GroupNormOp)
}
