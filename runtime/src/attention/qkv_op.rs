//! The ONNX Runtime custom operator that runs [`qkv::attend_qkv`] inside a session:
//! `llamagen.cpu::CachedAttentionQkv(qkv, q_scale, past_k, past_v, position) -> (out,
//! present_k, present_v)`, with `qkv` f32 `[batch, tokens, 3 C]` (the biased projection),
//! `q_scale` f32 (one value per head), the caches `[batch, heads, cache_len, head_dim]` (f32;
//! f16 for `CachedAttentionQkvF16Cache`), `position` i64 `[1]`; attributes `heads` (int) and
//! `eps` (float, the norms' floor). Outputs: `out` f32 `[batch, tokens, heads, head_dim]`,
//! `present_k` / `present_v` `[batch, heads, tokens, head_dim]` in the caches' type (f32; f16
//! for `CachedAttentionQkvF16Cache`, so the step's outputs take half the memory).

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueType};

use super::op::{
    cache_input, cache_type, cached_dims, dims_of, element_type, on_threads, position_input,
};
use super::qkv::{self, Present, QkvInputs, QkvOutputs};
use crate::custom_op::first_input;

pub const OP_TYPE: &str = "CachedAttentionQkv";
pub const OP_TYPE_F16_CACHE: &str = "CachedAttentionQkvF16Cache";
pub const HEADS: &str = "heads";
pub const EPS: &str = "eps";

struct QkvAttentionOp {
    f16_cache: bool,
}

struct QkvAttentionKernel {
    f16_cache: bool,
    heads: usize,
    eps: f32,
}

impl Operator for QkvAttentionOp {
    type Kernel<'attr> = QkvAttentionKernel;

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
            cache(),
            cache(),
            OperatorInput::required(TensorElementType::Int64),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let present = || OperatorOutput::required(element_type(self.f16_cache));
        [
            OperatorOutput::required(TensorElementType::Float32),
            present(),
            present(),
        ]
    }

    /// From `qkv`'s `[batch, tokens, 3 C]`: `[batch, tokens, heads, head_dim]` and twice
    /// `[batch, heads, tokens, head_dim]` (unknown dims stay unknown).
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let heads: i64 = ctx.attr(HEADS)?;
        let ty = first_input(ctx, OP_TYPE)?;
        let (ValueType::Tensor { shape, .. }, true) = (&ty, heads > 0) else {
            return Err(ort::Error::new(format!("{OP_TYPE}: qkv is not a tensor")));
        };
        let [b, t, c3] = shape[..] else {
            return Err(ort::Error::new(format!(
                "{OP_TYPE}: qkv of {} dims, expected 3",
                shape.len()
            )));
        };
        let hd = if c3 > 0 { c3 / 3 / heads } else { -1 };
        let with = |dims: Vec<i64>, element: TensorElementType| {
            let mut t = ty.clone();
            if let ValueType::Tensor { shape, ty, .. } = &mut t {
                *shape = dims.into();
                *ty = element;
            }
            t
        };
        let present = element_type(self.f16_cache);
        ctx.set_output(0, &with(vec![b, t, heads, hd], TensorElementType::Float32))?;
        ctx.set_output(1, &with(vec![b, heads, t, hd], present))?;
        ctx.set_output(2, &with(vec![b, heads, t, hd], present))
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<QkvAttentionKernel> {
        let heads: i64 = k
            .get(HEADS)
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no '{HEADS}'")))?;
        let eps: f32 = k
            .get(EPS)
            .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: no '{EPS}'")))?;
        Ok(QkvAttentionKernel {
            f16_cache: self.f16_cache,
            heads: usize::try_from(heads)
                .ok()
                .filter(|&h| h > 0)
                .ok_or_else(|| ort::Error::new(format!("{OP_TYPE}: {heads} heads")))?,
            eps,
        })
    }
}

impl Kernel for QkvAttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let bad = |what: String| ort::Error::new(format!("{OP_TYPE}: {what}"));
        let values = (0..4)
            .map(|i| ctx.input(i)?.ok_or_else(|| bad(format!("no input {i}"))))
            .collect::<ort::Result<Vec<_>>>()?;
        let (shape, qkv) = values[0].try_extract_tensor::<f32>()?;
        let q_scale = values[1].try_extract_tensor::<f32>()?.1;
        let (pk_dims, past_k) = cache_input(&values[2], self.f16_cache)?;
        let (pv_dims, past_v) = cache_input(&values[3], self.f16_cache)?;
        let position = position_input(ctx, 4, OP_TYPE)?;
        let qkv_dims = dims_of(shape);
        let heads = self.heads;
        let [batch, tokens, c3] = qkv_dims[..] else {
            return Err(bad(format!("qkv of shape {qkv_dims:?}, expected 3 dims")));
        };
        if c3 == 0 || !c3.is_multiple_of(3 * heads) {
            return Err(bad(format!(
                "qkv width {c3} is not 3 x {heads} heads x head_dim"
            )));
        }
        let head_dim = c3 / 3 / heads;
        let block = [batch, heads, tokens, head_dim];
        let dims = cached_dims(OP_TYPE, block, &pk_dims, &pv_dims, position)?;
        let shape = |d: [usize; 4]| d.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let no_output = || bad("no output".into());
        let mut out = ctx
            .output(0, shape([batch, tokens, heads, head_dim]))?
            .ok_or_else(no_output)?;
        let mut k = ctx
            .output(1, shape([batch, heads, tokens, head_dim]))?
            .ok_or_else(no_output)?;
        let mut v = ctx
            .output(2, shape([batch, heads, tokens, head_dim]))?
            .ok_or_else(no_output)?;
        let outputs = QkvOutputs {
            out: out.try_extract_tensor_mut::<f32>()?.1,
            k: present(&mut k, self.f16_cache)?,
            v: present(&mut v, self.f16_cache)?,
        };
        let inputs = QkvInputs {
            qkv,
            q_scale,
            eps: self.eps,
            past_k,
            past_v,
        };
        on_threads(ctx, OP_TYPE, |par| {
            qkv::attend_qkv(&dims, &inputs, outputs, par)
        })
    }
}

/// An output of new keys or values, f16 or f32 as the operator declares.
fn present<'a>(t: &'a mut ort::value::ValueRefMut<'_>, f16: bool) -> ort::Result<Present<'a>> {
    Ok(if f16 {
        Present::F16(t.try_extract_tensor_mut::<half::f16>()?.1)
    } else {
        Present::F32(t.try_extract_tensor_mut::<f32>()?.1)
    })
}

/// `domain` with the operator added (f16 or f32 caches).
pub fn add_to(domain: OperatorDomain, f16_cache: bool) -> ort::Result<OperatorDomain> {
    domain.add(QkvAttentionOp { f16_cache })
}
