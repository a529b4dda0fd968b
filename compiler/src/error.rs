//! The compiler's error type: every variant names the file, key or value at fault.

use std::path::{Path, PathBuf};

use llamagen_bundle::config::ConfigError;
use llamagen_bundle::files::WriteError;

use crate::checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ConfigError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown {kind} model '{name}'; known: {known}")]
    UnknownModel {
        kind: &'static str,
        name: String,
        known: String,
    },
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// Running a bundle this compile wrote (to measure a lower precision against fp32).
    #[error("measuring the compiled bundle: {0}")]
    Measure(#[from] llamagen_runtime::RuntimeError),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
