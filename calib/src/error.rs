//! The calibration error type: every variant names the file, field or value at fault and why.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// A file could not be read or written (`op` is "read" or "write").
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A calibration-set file is not valid YAML or does not match the schema.
    #[error("{origin}: invalid calibration set YAML")]
    Yaml {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    /// A scales file is not valid JSON or not a map of tensor name -> number.
    #[error("{path}: invalid scales JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A calibration set parsed but one of its fields is unusable.
    #[error("calibration set '{set}': {field} = {value}: {reason}")]
    InvalidSet {
        set: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A scale-estimation method string or parameter is not understood.
    #[error("invalid calibration method '{value}': {reason}")]
    InvalidMethod { value: String, reason: String },
    /// A histogram parameter is unusable (or two histograms cannot be merged).
    #[error("invalid histogram {field} = {value}: {reason}")]
    InvalidHistogram {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// Nothing to derive a scale from: no finite non-zero value was observed.
    #[error("no data to calibrate from: {reason}")]
    NoData { reason: String },
    /// A scale (or the tensor name or header written with it) cannot go into a scales file.
    #[error("cannot write scale for '{tensor}' = {value}: {reason}")]
    InvalidScale {
        tensor: String,
        value: String,
        reason: String,
    },
    /// A TensorRT calibration cache does not follow the format; `line` is 1-based.
    #[error("{path}:{line}: {reason}")]
    CacheFormat {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl CalibError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        CalibError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
