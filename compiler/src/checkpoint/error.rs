//! The one error type of the checkpoint reader and writers.
//!
//! Every variant names the file it is about and, where there is one, the state-dict key,
//! pickle opcode (with its byte offset in `data.pkl`) or pickle global that caused it, so a
//! user can tell which checkpoint and which weight to look at without a debugger.

use std::path::PathBuf;

/// Errors from opening, reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The operating system refused a read, map or write.
    #[error("{}: I/O error", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither a PyTorch zip checkpoint (`PK\x03\x04`) nor a safetensors file.
    #[error(
        "{}: unknown checkpoint format (expected a PyTorch zip checkpoint (.pt/.pth/.bin) or a \
         .safetensors file; legacy non-zip torch.save files are not supported)",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    /// The pickle uses an opcode the restricted unpickler does not implement.
    #[error("{}: unsupported pickle opcode 0x{opcode:02x} at byte {offset} of data.pkl", path.display())]
    UnsupportedPickleOpcode {
        path: PathBuf,
        opcode: u8,
        offset: usize,
    },
    /// The pickle references a global outside the allow-list (it would run code in Python).
    #[error(
        "{}: pickle references forbidden global {module}.{name}; refusing to load (only \
         OrderedDict, torch tensor-rebuild functions and torch storage types are allowed)",
        path.display()
    )]
    ForbiddenGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
    /// The pickle would need more memory than its size allows (see
    /// `pickle::PICKLE_MEMORY_FACTOR`).
    #[error(
        "{}: data.pkl needs more than {limit} bytes of memory at byte {offset} (the limit for \
         {input} bytes of pickle); refusing it",
        path.display()
    )]
    PickleMemory {
        path: PathBuf,
        offset: usize,
        input: usize,
        limit: usize,
    },
    /// Structurally invalid or truncated file.
    #[error("{}: malformed checkpoint: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// The requested key is not in the state dict.
    #[error("{}: missing key `{key}` in state dict", path.display())]
    MissingKey { path: PathBuf, key: String },
    /// The tensor exists but has another shape than the model expects.
    #[error("{}: tensor `{key}` has shape {got:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The tensor's element type cannot be represented or converted.
    #[error("{}: tensor `{key}` has unsupported dtype {dtype}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    /// No "model"/"module"/"state_dict" wrapper and no tensors at the top level.
    #[error(
        "{}: no state dict found (looked for \"model\", \"module\", \"state_dict\" or a bare \
         dict of tensors); top-level keys: {keys_found:?}",
        path.display()
    )]
    NoStateDict {
        path: PathBuf,
        keys_found: Vec<String>,
    },
}

impl CheckpointError {
    /// Shorthand for [`CheckpointError::Malformed`].
    pub(crate) fn malformed(path: &std::path::Path, reason: impl Into<String>) -> Self {
        CheckpointError::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CheckpointError::Io`].
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
