//! Uploads of host weights to the device. The weights themselves come from the bundle's ONNX
//! graphs through the contract's reader (`llamagen_bundle::initializers`), as f32 whatever their
//! stored precision (GEMM weights of int8 bundles also as stored, see [`crate::gemm_weight`]).

use crate::device::Device;
use crate::error::CudaError;

pub use llamagen_bundle::initializers::{HostTensor, Initializers as BundleWeights};

/// `data` uploaded as f16 (round to nearest even).
pub fn upload_f16<D: Device>(d: &D, data: &[f32]) -> Result<D::Buf, CudaError> {
    let bytes: Vec<u8> = data
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    upload_bytes(d, &bytes)
}

/// `data` uploaded as f32.
pub fn upload_f32<D: Device>(d: &D, data: &[f32]) -> Result<D::Buf, CudaError> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    upload_bytes(d, &bytes)
}

/// `data` uploaded as i32.
pub fn upload_i32<D: Device>(d: &D, data: &[i32]) -> Result<D::Buf, CudaError> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    upload_bytes(d, &bytes)
}

/// `bytes` uploaded as they are.
pub fn upload_bytes<D: Device>(d: &D, bytes: &[u8]) -> Result<D::Buf, CudaError> {
    let buf = d.alloc(bytes.len().max(1))?;
    d.upload(&buf, 0, bytes)?;
    Ok(buf)
}

/// A [`CudaError::WeightShape`] unless weight `name` has the dims the config gives.
pub(crate) fn check_dims(name: &str, got: &[usize], want: &[usize]) -> Result<(), CudaError> {
    if got == want {
        return Ok(());
    }
    Err(CudaError::WeightShape {
        name: name.to_string(),
        expected: want.to_vec(),
        got: got.to_vec(),
    })
}
