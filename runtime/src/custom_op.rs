//! What our ONNX Runtime custom operators (`amx::op`, `attention::op`, `attention::qkv_op`,
//! `group_norm::op`) share: the first input's type for shape inference, and the session's
//! intra-op threads as a kernel's parallel-for.

use ort::operator::{ComputeContext, ShapeInferenceContext};
use ort::value::ValueType;

use crate::parallel::ParallelFor;

/// The type (and shape) of operator `op`'s first input.
pub(crate) fn first_input(ctx: &ShapeInferenceContext, op: &str) -> ort::Result<ValueType> {
    ctx.inputs()
        .into_iter()
        .next()
        .ok_or_else(|| ort::Error::new(format!("{op}: no input")))
}

/// Runs `f` with the session's intra-op threads as its parallel-for; a failed hand-off to the
/// pool is an error, as is `f`'s (both named after `op`).
pub(crate) fn on_threads(
    ctx: &ComputeContext,
    op: &str,
    f: impl FnOnce(ParallelFor<'_>) -> Result<(), String>,
) -> ort::Result<()> {
    let failed = std::sync::Mutex::new(None);
    let par = |count: usize, f: &(dyn Fn(usize) + Sync)| {
        if let Err(e) = ctx.par_for(count, count, f) {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    };
    f(&par).map_err(|e| ort::Error::new(format!("{op}: {e}")))?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(ort::Error::new(format!("{op}: parallel run: {e}"))),
        None => Ok(()),
    }
}
