//! The between-scale resampling matrices live in the bundle contract
//! ([`llamagen_bundle::resample`]), so the graph builder and the CUDA backend use the same ones.

pub use llamagen_bundle::resample::{area, bicubic};

/// Transpose of a row-major `[rows, cols]` matrix.
pub fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    crate::models::weights::transpose(m, rows, cols)
}
