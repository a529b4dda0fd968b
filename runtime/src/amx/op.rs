//! The ONNX Runtime custom operator that runs [`QConv3x3`] inside a session:
//! `llamagen.cpu::QConv3x3(x f32 [n, cin, h, w], residual f32 [n, cout, h, w] optional) -> y
//! f32 [n, cout, h, w]`, one node per convolution, its weights and quantization named by the
//! string attribute `conv` and held by the operator (packed once at load, see
//! `backend::amx_rewrite`); the residual, where given, is added to the result. The work runs
//! on the session's intra-op threads (ONNX Runtime's parallel-for).

use std::collections::HashMap;
use std::sync::Arc;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueType};

use super::qconv::QConv3x3;
use crate::custom_op::{first_input, on_threads};

/// The operator domain of the rewritten graphs (never in a bundle).
pub const DOMAIN: &str = "llamagen.cpu";
pub const OP_TYPE: &str = "QConv3x3";
/// The node attribute naming the convolution (a key of the operator's table).
pub const CONV_ATTRIBUTE: &str = "conv";

/// The operator, with every convolution of the graph it serves.
struct QConvOp {
    convs: Arc<HashMap<String, Arc<QConv3x3>>>,
    threads: usize,
}

struct QConvKernel {
    conv: Arc<QConv3x3>,
    threads: usize,
}

impl Operator for QConvOp {
    type Kernel<'attr> = QConvKernel;

    /// The output may take the input's buffer (when the input dies here and the sizes match):
    /// a 3x3 convolution's f32 input and output are 42 MB each at 160 x 256 x 256, and the
    /// Q/DQ path ONNX Runtime replaced had only u8 copies live around its convolution (+90 MB
    /// peak RSS for VAR-d16 without this).
    const INPLACES: &[(u32, u32)] = &[(0, 0)];

    fn name(&self) -> &str {
        OP_TYPE
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    /// `[n, cout, h, w]` from the input's `[n, cin, h, w]`: without it every shape after the
    /// node is unknown to ONNX Runtime's planner, which then neither reuses the input's buffer
    /// nor plans the rest of the decoder's buffers.
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let name: String = ctx.attr(CONV_ATTRIBUTE)?;
        let conv = self
            .convs
            .get(&name)
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no convolution '{name}'")))?;
        let mut ty = first_input(ctx, OP_TYPE)?;
        if let ValueType::Tensor { shape, .. } = &mut ty {
            if shape.len() == 4 {
                shape[1] = conv.cout() as i64;
            }
        }
        ctx.set_output(0, &ty)
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<QConvKernel> {
        let name: String = kctx.get(CONV_ATTRIBUTE).ok_or_else(|| {
            ort::Error::new(format!("{OP_TYPE}: no '{CONV_ATTRIBUTE}' attribute"))
        })?;
        let conv = self
            .convs
            .get(&name)
            .cloned()
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no convolution '{name}'")))?;
        Ok(QConvKernel {
            conv,
            threads: self.threads,
        })
    }
}

impl Kernel for QConvKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = ctx
            .input(0)?
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no input")))?;
        let (shape, x) = input.try_extract_tensor::<f32>()?;
        // Pointers, not slices, from here: the output may be the input's buffer.
        let x = x.as_ptr();
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let [n, c, h, w] = dims[..] else {
            return Err(ort::Error::new(format!(
                "{OP_TYPE}: input of shape {dims:?}, expected [n, c, h, w]"
            )));
        };
        if c != self.conv.cin() {
            return Err(ort::Error::new(format!(
                "{OP_TYPE}: input has {c} channels, expected {}",
                self.conv.cin()
            )));
        }
        let mut output = ctx
            .output(
                0,
                vec![n as i64, self.conv.cout() as i64, h as i64, w as i64],
            )?
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no output")))?;
        let y = output.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr();
        let residual_input = ctx.input(1)?;
        let residual = match &residual_input {
            Some(r) => {
                let (r_shape, r) = r.try_extract_tensor::<f32>()?;
                let expected = [n, self.conv.cout(), h, w];
                if !r_shape.iter().map(|&d| d.max(0) as usize).eq(expected) {
                    return Err(ort::Error::new(format!(
                        "{OP_TYPE}: residual of shape {r_shape:?}, expected {expected:?}"
                    )));
                }
                Some(r.as_ptr())
            }
            None => None,
        };

        // The scratch comes from the session's allocator (the shared arena); one static
        // buffer for all convolutions measured 13 MB more peak RSS for VAR-d16.
        let len = self.conv.scratch_len(h, w);
        let info = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Arena,
            MemoryType::Default,
        )?;
        let allocator = ctx.allocator(&info)?;
        let mut block = allocator.alloc::<u8>(len)?;
        // SAFETY: the block holds `len` bytes, is only used through this slice and lives
        // until the end of this call; `run` fills it before reading it.
        let scratch =
            unsafe { std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<u8>(), len) };
        let (conv, threads) = (&self.conv, self.threads);
        // SAFETY: ONNX Runtime gave `x` as `[n, cin, h, w]` (checked above), `y` and the
        // residual as `[n, cout, h, w]`; `y` is `x`'s buffer (in place, the only reuse
        // declared) or disjoint from the inputs.
        on_threads(ctx, OP_TYPE, |par| unsafe {
            conv.run_raw(x, residual, n, h, w, y, scratch, threads, par)
        })
    }
}

/// `domain` with the operator serving `convs` added, the work cut into `threads` parts.
pub fn add_to(
    domain: OperatorDomain,
    convs: HashMap<String, Arc<QConv3x3>>,
    threads: usize,
) -> ort::Result<OperatorDomain> {
    domain.add(QConvOp {
        convs: Arc::new(convs),
        threads,
    })
}
