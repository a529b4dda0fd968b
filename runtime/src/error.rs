//! The runtime's error type: every variant says what was wrong and with which value or file.

use std::path::PathBuf;

pub use llamagen_bundle::BundleError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    OrtLibrary(String),
    #[error("ONNX Runtime failed in {context}: {message}")]
    Ort { context: String, message: String },
    #[error("invalid request: {field} = {value}: {reason}")]
    InvalidRequest {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// More labels in one request than `PipelineOptions::max_labels` allows.
    #[error(
        "too many labels: {got} in one request, the limit is {max} (PipelineOptions::max_labels)"
    )]
    TooManyLabels { got: usize, max: usize },
    /// The observer asked to stop ([`crate::Observer::should_stop`]) after `done` of `steps`
    /// tokens.
    #[error("generation cancelled after {done} of {steps} tokens")]
    Cancelled { done: usize, steps: usize },
    /// The call's deadline ([`crate::RunOptions::deadline`]) passed after `done` of `steps`
    /// tokens.
    #[error("generation deadline exceeded after {done} of {steps} tokens")]
    DeadlineExceeded { done: usize, steps: usize },
    /// An option (or the environment variable that sets it) with a value it does not take.
    #[error("invalid option {name} = {value:?}: expected {expected}")]
    InvalidOption {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("backend '{name}' is not available: {reason}")]
    BackendUnavailable { name: String, reason: String },
    /// A CUDA driver, NVRTC, cuBLAS or kernel-emulator call failed.
    #[error("CUDA failed in {context}: {message}")]
    Cuda { context: String, message: String },
    #[error("graph {graph} returned {what} of shape {got:?}, expected {expected:?}")]
    OutputShape {
        graph: llamagen_bundle::GraphRole,
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Npy(#[from] crate::npy::NpyError),
}

impl RuntimeError {
    /// A [`RuntimeError::Cuda`] naming what was being done.
    pub fn cuda(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        RuntimeError::Cuda {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn ort(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        RuntimeError::Ort {
            context: context.into(),
            message: e.to_string(),
        }
    }
}
