//! `.safetensors` reading (memory-mapped, zero-copy) and writing (via the `safetensors` crate).
//!
//! Layout: 8-byte little-endian header length, a JSON header mapping each tensor name to
//! `{dtype, shape, data_offsets}` (plus an optional `__metadata__` map), then the packed,
//! contiguous, little-endian tensor bytes. A safetensors file is always a bare state dict.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};

use super::check_tensor_bytes;
use super::dtype::DType;
use super::error::CheckpointError;
use super::tensor::{contiguous_strides, Backing, Storage, TensorView};

/// Length of the header-size prefix.
const N_LEN: usize = 8;

/// True when `bytes` starts like a safetensors file (a plausible header length, then `{`).
pub(crate) fn sniff(bytes: &[u8]) -> bool {
    let Some(len) = bytes
        .get(..N_LEN)
        .and_then(|b| <[u8; N_LEN]>::try_from(b).ok())
    else {
        return false;
    };
    let n = u64::from_le_bytes(len);
    n >= 2 && n <= (bytes.len() - N_LEN) as u64 && bytes.get(N_LEN) == Some(&b'{')
}

fn from_st(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

fn to_st(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

fn st_error(path: &Path, e: SafeTensorError) -> CheckpointError {
    match e {
        SafeTensorError::IoError(source) => CheckpointError::io(path, source),
        other => CheckpointError::malformed(path, format!("safetensors: {other}")),
    }
}

/// Reads every tensor of the safetensors file `path` whose bytes are `backing`.
pub(crate) fn read(
    path: &Path,
    backing: &Arc<Backing>,
) -> Result<BTreeMap<String, TensorView>, CheckpointError> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(backing.bytes()).map_err(|e| st_error(path, e))?;
    let data_start = N_LEN
        .checked_add(header_len)
        .ok_or_else(|| CheckpointError::malformed(path, "safetensors header length overflows"))?;
    let path_arc = Arc::new(path.to_path_buf());
    let mut out = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let dtype = from_st(info.dtype).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (begin, end) = info.data_offsets;
        let storage = data_start
            .checked_add(begin)
            .zip(end.checked_sub(begin))
            .and_then(|(start, len)| Storage::new(Arc::clone(backing), start, len))
            .ok_or_else(|| {
                CheckpointError::malformed(
                    path,
                    format!("tensor `{name}`: data offsets {begin}..{end} are out of range"),
                )
            })?;
        let view = TensorView::new(
            Arc::clone(&path_arc),
            name.clone(),
            dtype,
            info.shape.clone(),
            contiguous_strides(&info.shape),
            0,
            storage,
        );
        view.check()?;
        out.insert(name, view);
    }
    Ok(out)
}

/// A borrowed tensor in the shape the `safetensors` serializer wants.
struct StView<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl View for StView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Same for safetensors (use the safetensors crate).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, DType, Vec<usize>, Vec<u8>)],
) -> Result<(), CheckpointError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in tensors {
        check_tensor_bytes(path, name, *dtype, shape, data)?;
        let view = StView {
            dtype: to_st(*dtype),
            shape,
            data,
        };
        views.push((name.clone(), view));
    }
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| st_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        let mut ok = 2u64.to_le_bytes().to_vec();
        ok.extend_from_slice(b"{}");
        assert!(sniff(&ok));
        assert!(!sniff(b"PK\x03\x04rest-of-zip"));
        assert!(!sniff(&ok[..9]));
        assert!(!sniff(&[0xff; 16]));
        assert!(!sniff(b""));
    }

    #[test]
    fn dtype_mapping_round_trips() {
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I64,
            DType::I32,
            DType::U8,
            DType::Bool,
        ] {
            assert_eq!(from_st(to_st(d)), Some(d));
            assert_eq!(to_st(d).bitsize(), 8 * d.size_in_bytes());
        }
        assert_eq!(from_st(Dtype::I8), None);
    }
}
