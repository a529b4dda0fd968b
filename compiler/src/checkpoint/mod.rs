//! Safe reading of LlamaGen checkpoints: PyTorch zip files (`.pt`/`.pth`/`.bin`, as
//! `torch.save` writes them) and `.safetensors`, both memory-mapped.
//!
//! Contract: [`Checkpoint::open`] sniffs the format from the content, never executes code
//! (the pickle in a `.pt` file runs on a restricted VM with an allow-list of globals), unwraps
//! a top-level `{"model" | "module" | "state_dict": state_dict}` wrapper (first present, in
//! that order) or accepts a bare state dict (FSDP exports), and keeps only the tensor entries.
//! Tensors stay views into the mapped file until [`TensorView::to_f32`] /
//! [`Checkpoint::get_f32`] copy them out row-major. Malformed or truncated input is an error
//! naming the file (and key / opcode / global), never a panic.
//!
//! Files: `error` (the error enum), `dtype` (element types), `tensor` (views and storage),
//! `pickle` + `pickle_calls` + `pickle_value` (restricted unpickler), `torch_zip` (zip reader),
//! `safetensors_file` (safetensors read/write). The torch-format writer of the tests is
//! `llamagen_test_support::torch`.

mod dtype;
mod error;
mod pickle;
mod pickle_calls;
mod pickle_input;
mod pickle_value;
mod safetensors_file;
mod tensor;
mod torch_zip;

#[cfg(test)]
mod pickle_tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dtype::DType;
pub use error::CheckpointError;
pub use safetensors_file::write_safetensors;
pub use tensor::TensorView;

use pickle_value::{TensorMeta, Unpickled, Value};
use tensor::{contiguous_strides, Backing, Storage};

/// Wrapper keys tried, in order, before falling back to a bare state dict.
const WRAPPER_KEYS: [&str; 3] = ["model", "module", "state_dict"];

/// The tensors of one checkpoint file, by state-dict key.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: BTreeMap<String, TensorView>,
}

impl Checkpoint {
    /// Opens `.pt`/`.pth`/`.bin` (PyTorch zip format) or `.safetensors` (by content sniffing: zip magic "PK\x03\x04" vs safetensors header), memory-mapped.
    /// Unwraps a top-level dict holding "model", "module" or "state_dict" (first that exists, in that order) or accepts a bare state dict (FSDP exports). Non-tensor entries in the state dict (e.g. nested dicts/ints) are skipped.
    pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let _span = tracing::debug_span!("checkpoint.open", path = %path.display()).entered();
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| CheckpointError::io(path, e))?
            .len();
        if len < 8 {
            return Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: the map is read-only and private to this process. Like every mmap-based
        // weight loader we rely on the file not being truncated or rewritten while it is
        // open; all parsing is bounds-checked against the length seen at map time.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let backing = Arc::new(Backing::Mmap(map));
        let bytes = backing.bytes();
        let tensors = if bytes.starts_with(b"PK\x03\x04") {
            torch_zip::read(path, &backing)?
        } else if safetensors_file::sniff(bytes) {
            safetensors_file::read(path, &backing)?
        } else {
            return Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
            });
        };
        tracing::debug!(tensors = tensors.len(), "checkpoint opened");
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// In-memory checkpoint from little-endian, contiguous raw bytes (for `--random-weights`
    /// and tests). A later duplicate name wins; a byte length that does not match the shape
    /// surfaces as [`CheckpointError::Malformed`] from [`TensorView::to_f32`].
    pub fn from_tensors(
        path: PathBuf,
        tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)>,
    ) -> Checkpoint {
        let path_arc = Arc::new(path.clone());
        let tensors = tensors
            .into_iter()
            .map(|(name, dtype, shape, data)| {
                let strides = contiguous_strides(&shape);
                let view = TensorView::new(
                    Arc::clone(&path_arc),
                    name.clone(),
                    dtype,
                    shape,
                    strides,
                    0,
                    Storage::owned(data),
                );
                (name, view)
            })
            .collect();
        Checkpoint { path, tensors }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// State-dict keys in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// All tensors, sorted by key.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorView> {
        self.tensors.values()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Result<&TensorView, CheckpointError> {
        self.tensors
            .get(key)
            .ok_or_else(|| CheckpointError::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// Checks the shape then converts: ShapeMismatch { key, path, expected: Vec<usize>, got: Vec<usize> }.
    pub fn get_f32(
        &self,
        key: &str,
        expected_shape: &[usize],
    ) -> Result<Vec<f32>, CheckpointError> {
        let t = self.get(key)?;
        if t.shape() != expected_shape {
            return Err(CheckpointError::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected_shape.to_vec(),
                got: t.shape().to_vec(),
            });
        }
        t.to_f32()
    }
}

/// Checks that `data` holds exactly `shape` elements of `dtype` (for the writers).
pub(crate) fn check_tensor_bytes(
    path: &Path,
    name: &str,
    dtype: DType,
    shape: &[usize],
    data: &[u8],
) -> Result<(), CheckpointError> {
    let needed = shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |a, &d| a.checked_mul(d));
    if needed != Some(data.len()) {
        return Err(CheckpointError::malformed(
            path,
            format!(
                "tensor `{name}`: {} bytes given for shape {shape:?} of {dtype}",
                data.len()
            ),
        ));
    }
    Ok(())
}

/// Picks the state dict out of an unpickled `.pt` object (see [`Checkpoint::open`]) and
/// returns its tensor entries sorted by key; a later duplicate key wins.
pub(crate) fn select_state_dict(
    path: &Path,
    u: &Unpickled,
) -> Result<Vec<(String, TensorMeta)>, CheckpointError> {
    let no_state_dict = |keys_found: Vec<String>| CheckpointError::NoStateDict {
        path: path.to_path_buf(),
        keys_found,
    };
    let Some(top) = u.dict(&u.root) else {
        return Err(no_state_dict(vec![format!(
            "<top level is a {}, not a dict>",
            u.kind(&u.root)
        )]));
    };
    let lookup = |key: &str| -> Option<&Value> {
        top.iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    };
    let chosen = WRAPPER_KEYS
        .iter()
        .find_map(|w| lookup(w).and_then(|v| u.dict(v)).map(|d| (*w, d)));
    let (source, entries) = match chosen {
        Some((w, d)) => (w, d),
        None if top.iter().any(|(_, v)| u.tensor(v).is_some()) => ("<bare state dict>", top),
        None => {
            let keys = top
                .iter()
                .map(|(k, _)| {
                    k.as_str()
                        .map_or_else(|| format!("<{}>", u.kind(k)), str::to_string)
                })
                .collect();
            return Err(no_state_dict(keys));
        }
    };
    // Borrow first so that a name repeated through the memo is copied once, not per entry.
    let mut unique: BTreeMap<&str, &TensorMeta> = BTreeMap::new();
    let mut skipped = 0usize;
    for (k, v) in entries {
        match (k.as_str(), u.tensor(v)) {
            (Some(name), Some(meta)) => {
                unique.insert(name, meta);
            }
            _ => skipped += 1,
        }
    }
    let out: Vec<(String, TensorMeta)> = unique
        .into_iter()
        .map(|(name, meta)| (name.to_string(), meta.clone()))
        .collect();
    tracing::debug!(source, tensors = out.len(), skipped, "state dict selected");
    Ok(out)
}
