//! The ONNX Runtime custom operator that runs [`kernel::attend`] inside a session:
//! `llamagen.cpu::CachedAttention(q, k, v, past_k, past_v, position) -> out`, with `q`, `k`,
//! `v` f32 `[batch, heads, tokens, head_dim]`, the caches f32 `[batch, heads, cache_len,
//! head_dim]`, `position` i64 `[1]` (the valid cache slots) and `out` f32 `[batch, tokens,
//! heads, head_dim]`; `llamagen.cpu::CachedAttentionF16Cache` takes the caches in f16. The
//! tasks run on the session's intra-op threads.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueRef, ValueType};

use super::kernel::{self, Cache, Dims, Inputs};
use crate::amx::op::DOMAIN;
use crate::custom_op::first_input;
pub(super) use crate::custom_op::on_threads;

pub const OP_TYPE: &str = "CachedAttention";
/// The same with f16 caches (`past_k`, `past_v`), widened to f32 inside.
pub const OP_TYPE_F16_CACHE: &str = "CachedAttentionF16Cache";

struct CachedAttentionOp {
    f16_cache: bool,
}

struct CachedAttentionKernel {
    f16_cache: bool,
}

impl Operator for CachedAttentionOp {
    type Kernel<'attr> = CachedAttentionKernel;

    fn name(&self) -> &str {
        if self.f16_cache {
            OP_TYPE_F16_CACHE
        } else {
            OP_TYPE
        }
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f = || OperatorInput::required(TensorElementType::Float32);
        let cache = || cache_type(self.f16_cache);
        [
            f(),
            f(),
            f(),
            cache(),
            cache(),
            OperatorInput::required(TensorElementType::Int64),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    /// `[batch, tokens, heads, head_dim]` from `q`'s `[batch, heads, tokens, head_dim]`, so the
    /// planner knows every shape after the node.
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let mut ty = first_input(ctx, OP_TYPE)?;
        if let ValueType::Tensor { shape, .. } = &mut ty {
            if shape.len() == 4 {
                shape.swap(1, 2);
            }
        }
        ctx.set_output(0, &ty)
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<CachedAttentionKernel> {
        Ok(CachedAttentionKernel {
            f16_cache: self.f16_cache,
        })
    }
}

impl Kernel for CachedAttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let bad = |what: String| ort::Error::new(format!("{OP_TYPE}: {what}"));
        let values = (0..5)
            .map(|i| ctx.input(i)?.ok_or_else(|| bad(format!("no input {i}"))))
            .collect::<ort::Result<Vec<_>>>()?;
        let mut tensors = Vec::with_capacity(3);
        for v in &values[..3] {
            let (shape, data) = v.try_extract_tensor::<f32>()?;
            tensors.push((dims_of(shape), data));
        }
        let [(q_dims, q), (k_dims, k), (v_dims, v)] = &tensors[..] else {
            return Err(bad("expected 3 f32 inputs".into()));
        };
        let (pk_dims, past_k) = cache_input(&values[3], self.f16_cache)?;
        let (pv_dims, past_v) = cache_input(&values[4], self.f16_cache)?;
        let position = position_input(ctx, 5, OP_TYPE)?;
        let q_dims = q_dims.clone();
        let [batch, heads, tokens, head_dim] = q_dims[..] else {
            return Err(bad(format!("q of shape {q_dims:?}, expected 4 dims")));
        };
        if *k_dims != q_dims || *v_dims != q_dims {
            return Err(bad(format!(
                "q {q_dims:?}, k {k_dims:?} and v {v_dims:?} differ"
            )));
        }
        let block = [batch, heads, tokens, head_dim];
        let dims = cached_dims(OP_TYPE, block, &pk_dims, &pv_dims, position)?;
        let mut output = ctx
            .output(
                0,
                [batch, tokens, heads, head_dim]
                    .iter()
                    .map(|&d| d as i64)
                    .collect::<Vec<_>>(),
            )?
            .ok_or_else(|| bad("no output".into()))?;
        let out = output.try_extract_tensor_mut::<f32>()?.1;
        let inputs = Inputs {
            q,
            k,
            v,
            past_k,
            past_v,
        };
        on_threads(ctx, OP_TYPE, |par| kernel::attend(&dims, &inputs, out, par))
    }
}

/// The kernel's dims for a `[batch, heads, tokens, head_dim]` block over caches of shapes
/// `pk_dims` and `pv_dims`, which must be `[batch, heads, cache_len, head_dim]` alike.
pub(super) fn cached_dims(
    op: &str,
    [batch, heads, tokens, head_dim]: [usize; 4],
    pk_dims: &[usize],
    pv_dims: &[usize],
    position: usize,
) -> ort::Result<Dims> {
    let cache_len = pk_dims.get(2).copied().unwrap_or(0);
    let cache_dims = [batch, heads, cache_len, head_dim];
    if pk_dims != cache_dims || pv_dims != cache_dims {
        return Err(ort::Error::new(format!(
            "{op}: caches of shapes {pk_dims:?} and {pv_dims:?}, expected {cache_dims:?}"
        )));
    }
    Ok(Dims {
        batch,
        heads,
        tokens,
        head_dim,
        cache_len,
        position,
    })
}

/// A cache input: f16 or f32.
pub(super) fn cache_type(f16: bool) -> OperatorInput {
    OperatorInput::required(element_type(f16))
}

/// f16 or f32.
pub(super) fn element_type(f16: bool) -> TensorElementType {
    if f16 {
        TensorElementType::Float16
    } else {
        TensorElementType::Float32
    }
}

/// The dims of a tensor's shape (symbolic ones as 0).
pub(super) fn dims_of(s: &ort::value::Shape) -> Vec<usize> {
    s.iter().map(|&d| d.max(0) as usize).collect()
}

/// A cache input, f16 or f32 as the operator declares.
pub(super) fn cache_input<'a>(
    value: &'a ValueRef<'_>,
    f16: bool,
) -> ort::Result<(Vec<usize>, Cache<'a>)> {
    Ok(if f16 {
        let (shape, data) = value.try_extract_tensor::<half::f16>()?;
        (dims_of(shape), Cache::F16(data))
    } else {
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        (dims_of(shape), Cache::F32(data))
    })
}

/// Input `i`, the valid cache slots: i64 `[1]`, not negative.
pub(super) fn position_input(ctx: &ComputeContext, i: usize, op: &str) -> ort::Result<usize> {
    let bad = |what: String| ort::Error::new(format!("{op}: {what}"));
    let value = ctx.input(i)?.ok_or_else(|| bad("no position".into()))?;
    let (_, position) = value.try_extract_tensor::<i64>()?;
    let &[position] = position else {
        return Err(bad(format!(
            "position holds {} values, expected 1",
            position.len()
        )));
    };
    usize::try_from(position).map_err(|_| bad(format!("position {position} is negative")))
}

/// The `llamagen.cpu` domain with the attention operators (f32 and f16 caches, with and
/// without the q/k/v preparation).
pub fn domain() -> ort::Result<OperatorDomain> {
    let mut domain = OperatorDomain::new(DOMAIN)?;
    for f16_cache in [false, true] {
        domain = domain.add(CachedAttentionOp { f16_cache })?;
        domain = super::qkv_op::add_to(domain, f16_cache)?;
    }
    Ok(domain)
}
