//! The CUDA crate's error type: what failed, in which call, with which values.

use llamagen_bundle::BundleError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No driver, no GPU, a missing or too new library: the backend cannot run here.
    #[error("backend 'cuda' is not available: {reason}")]
    Unavailable { reason: String },
    /// A driver, NVRTC, cuBLAS, kernel-emulator or launch call failed, or its arguments were
    /// refused before it ran.
    #[error("CUDA failed in {context}: {message}")]
    Call { context: String, message: String },
    /// A weight of the bundle has another shape than the model's config gives.
    #[error("weight {name}: shape {got:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl CudaError {
    /// A [`CudaError::Call`] naming what was being done.
    pub fn call(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        CudaError::Call {
            context: context.into(),
            message: e.to_string(),
        }
    }
}
