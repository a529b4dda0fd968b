//! Where weights come from: a checkpoint, or seeded random values (demos and benchmarks).

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::Error;

/// A named source of f32 tensors in official (PyTorch) layout.
pub trait WeightSource: Send + Sync {
    /// Fails with the key, expected and found shape if the tensor is absent or mis-shaped.
    fn check(&self, key: &str, shape: &[usize]) -> Result<(), Error>;
    /// The tensor as row-major f32.
    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error>;
}

/// Weights read from an official checkpoint.
pub struct CheckpointWeights(pub Checkpoint);

impl WeightSource for CheckpointWeights {
    fn check(&self, key: &str, shape: &[usize]) -> Result<(), Error> {
        let t = self.0.get(key)?;
        if t.shape() != shape {
            return Err(CheckpointError::ShapeMismatch {
                path: self.0.path().to_path_buf(),
                key: key.to_string(),
                expected: shape.to_vec(),
                got: t.shape().to_vec(),
            }
            .into());
        }
        Ok(())
    }

    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        Ok(self.0.get_f32(key, shape)?)
    }
}

/// Transposes a row-major `[rows, cols]` matrix (torch Linear `[out, in]` -> MatMul `[in, out]`).
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_swaps_rows_and_columns() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        assert_eq!(
            super::transpose(&m, 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
