//! [`TensorView`]: a typed, possibly strided window onto shared checkpoint bytes.
//!
//! Contract: a view is `shape` elements of `dtype`, element `i` (multi-index `idx`) living at
//! element `offset + Σ idx[d] * strides[d]` of its storage (strides in elements, as torch
//! records them). Storages share one [`Backing`] (the file's memory map, or owned bytes for
//! in-memory and compressed entries) through an `Arc`, so views are cheap to clone and the
//! file is read lazily. Every access re-checks the bounds, so a corrupt file yields
//! [`CheckpointError::Malformed`], never a panic.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::dtype::{extend_f32, DType};
use super::error::CheckpointError;

/// Bytes all storages of one checkpoint point into.
pub(crate) enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Mmap(m) => write!(f, "Mmap({} bytes)", m.len()),
            Backing::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// A byte range of a [`Backing`] (one torch storage or one safetensors tensor).
#[derive(Clone, Debug)]
pub(crate) struct Storage {
    backing: Arc<Backing>,
    start: usize,
    len: usize,
}

impl Storage {
    /// Range `start..start + len` of `backing`; `None` when it does not lie inside.
    pub(crate) fn new(backing: Arc<Backing>, start: usize, len: usize) -> Option<Storage> {
        let end = start.checked_add(len)?;
        (end <= backing.bytes().len()).then_some(Storage {
            backing,
            start,
            len,
        })
    }

    /// The whole of `bytes`, owned.
    pub(crate) fn owned(bytes: Vec<u8>) -> Storage {
        let len = bytes.len();
        Storage {
            backing: Arc::new(Backing::Owned(bytes)),
            start: 0,
            len,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.backing
            .bytes()
            .get(self.start..self.start.saturating_add(self.len))
            .unwrap_or(&[])
    }
}

/// One named tensor of a checkpoint (see the module doc for the layout contract).
#[derive(Clone, Debug)]
pub struct TensorView {
    path: Arc<PathBuf>,
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    storage: Storage,
}

/// Row-major contiguous strides for `shape`, saturating on overflow (checked later).
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    let mut acc = 1usize;
    for (s, &dim) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(dim);
    }
    strides
}

impl TensorView {
    /// Builds a view without checking; call [`TensorView::check`] before handing it out
    /// from a file (in-memory tensors are checked lazily by [`TensorView::to_f32`]).
    pub(crate) fn new(
        path: Arc<PathBuf>,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        storage: Storage,
    ) -> TensorView {
        TensorView {
            path,
            name,
            dtype,
            shape,
            strides,
            offset,
            storage,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Strides in elements (torch convention).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of element 0 into the storage, in elements.
    pub fn storage_offset(&self) -> usize {
        self.offset
    }

    /// Number of elements (saturating; a shape that overflows fails [`TensorView::to_f32`]).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// True when the elements are stored row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.shape
            .iter()
            .zip(self.strides.iter().zip(contiguous_strides(&self.shape)))
            .all(|(&dim, (&s, c))| dim <= 1 || s == c)
    }

    /// The raw little-endian bytes of a contiguous, in-bounds view; `None` otherwise.
    pub fn contiguous_bytes(&self) -> Option<&[u8]> {
        if !self.is_contiguous() {
            return None;
        }
        let size = self.dtype.size_in_bytes();
        let start = self.offset.checked_mul(size)?;
        let len = self.checked_numel()?.checked_mul(size)?;
        self.storage.bytes().get(start..start.checked_add(len)?)
    }

    fn checked_numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    fn malformed(&self, reason: String) -> CheckpointError {
        CheckpointError::malformed(&self.path, format!("tensor `{}`: {reason}", self.name))
    }

    /// Checks that every element the view addresses lies inside its storage.
    pub(crate) fn check(&self) -> Result<(), CheckpointError> {
        if self.strides.len() != self.shape.len() {
            return Err(self.malformed(format!(
                "{} strides for {} dimensions",
                self.strides.len(),
                self.shape.len()
            )));
        }
        let numel = self
            .checked_numel()
            .ok_or_else(|| self.malformed(format!("shape {:?} overflows", self.shape)))?;
        if numel == 0 {
            return Ok(());
        }
        let overflow = || self.malformed("offset/stride arithmetic overflows".to_string());
        let mut last = self.offset;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides) {
            let step = (dim - 1).checked_mul(stride).ok_or_else(overflow)?;
            last = last.checked_add(step).ok_or_else(overflow)?;
        }
        let needed = last
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.dtype.size_in_bytes()))
            .ok_or_else(overflow)?;
        let have = self.storage.bytes().len();
        if needed > have {
            return Err(self.malformed(format!(
                "needs {needed} bytes of storage (shape {:?}, strides {:?}, offset {}, {}) \
                 but the storage holds {have}",
                self.shape, self.strides, self.offset, self.dtype
            )));
        }
        Ok(())
    }

    /// Row-major contiguous f32 copy, honouring storage offset and strides (torch tensors may be views).
    pub fn to_f32(&self) -> Result<Vec<f32>, CheckpointError> {
        let decode = self
            .dtype
            .decoder()
            .ok_or_else(|| CheckpointError::UnsupportedDtype {
                path: self.path.to_path_buf(),
                key: self.name.clone(),
                dtype: self.dtype.name().to_string(),
            })?;
        self.check()?;
        let numel = self.numel();
        let size = self.dtype.size_in_bytes();
        let bytes = self.storage.bytes();
        // Fallible: a broadcast (stride 0) view can address far more elements than its file
        // holds, and an impossible allocation must be an error, not an abort.
        let mut out = Vec::new();
        out.try_reserve_exact(numel).map_err(|_| {
            self.malformed(format!(
                "cannot allocate {numel} f32 values for shape {:?}",
                self.shape
            ))
        })?;
        if let Some(raw) = self.contiguous_bytes() {
            extend_f32(decode, size, raw, &mut out);
            return Ok(out);
        }
        if numel == 0 {
            return Ok(out);
        }
        // Strided: walk the multi-index as an odometer; `check` bounded every address.
        let mut idx = vec![0usize; self.shape.len()];
        let mut pos = self.offset;
        // Wrapping arithmetic: a size-1 dimension may carry any stride (torch allows it), so
        // intermediate sums may wrap, while every address actually read is in bounds.
        for _ in 0..numel {
            let at = pos.wrapping_mul(size);
            out.push(
                bytes
                    .get(at..at.wrapping_add(size))
                    .map_or(f32::NAN, decode),
            );
            for ((i, &dim), &stride) in idx.iter_mut().zip(&self.shape).zip(&self.strides).rev() {
                *i += 1;
                pos = pos.wrapping_add(stride);
                if *i < dim {
                    break;
                }
                pos = pos.wrapping_sub(stride.wrapping_mul(dim));
                *i = 0;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn view(shape: Vec<usize>, strides: Vec<usize>, offset: usize, data: &[f32]) -> TensorView {
        TensorView::new(
            Arc::new(PathBuf::from("mem")),
            "t".into(),
            DType::F32,
            shape,
            strides,
            offset,
            Storage::owned(f32_bytes(data)),
        )
    }

    #[test]
    fn strided_views_read_transposed_and_offset() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        // 3x4 row-major, viewed as its 4x3 transpose.
        let t = view(vec![4, 3], vec![1, 4], 0, &data);
        assert!(!t.is_contiguous());
        assert_eq!(
            t.to_f32().unwrap(),
            vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        // Row 1 of the 3x4 matrix as a [4] view with an offset.
        let r = view(vec![4], vec![1], 4, &data);
        assert!(r.is_contiguous());
        assert_eq!(r.to_f32().unwrap(), vec![4., 5., 6., 7.]);
        // Broadcast (stride 0) is allowed by torch.
        let b = view(vec![2, 2], vec![0, 1], 2, &data);
        assert_eq!(b.to_f32().unwrap(), vec![2., 3., 2., 3.]);
        assert!(view(vec![0, 5], vec![5, 1], 0, &[])
            .to_f32()
            .unwrap()
            .is_empty());
        // A size-1 dimension with a huge stride must not overflow.
        let h = view(vec![2, 1, 2], vec![1, usize::MAX, 2], 0, &data);
        assert_eq!(h.to_f32().unwrap(), vec![0., 2., 1., 3.]);
    }

    #[test]
    fn out_of_bounds_and_overflow_are_malformed() {
        let data = [1.0f32; 4];
        for v in [
            view(vec![5], vec![1], 0, &data),
            view(vec![2, 2], vec![2, 1], 1, &data),
            view(vec![2], vec![usize::MAX], 0, &data),
            view(vec![usize::MAX, 3], vec![3, 1], 0, &data),
            view(vec![2], vec![1, 1], 0, &data),
            // A broadcast view of 2^60 elements over 4 floats: an error, not an abort.
            view(vec![1 << 60], vec![0], 0, &data),
        ] {
            assert!(
                matches!(v.to_f32(), Err(CheckpointError::Malformed { .. })),
                "{v:?}"
            );
        }
    }

    #[test]
    fn storage_range_must_fit() {
        let b = Arc::new(Backing::Owned(vec![0; 8]));
        assert!(Storage::new(b.clone(), 4, 4).is_some());
        assert!(Storage::new(b.clone(), 5, 4).is_none());
        assert!(Storage::new(b, usize::MAX, 2).is_none());
    }
}
