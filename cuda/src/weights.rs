//! Uploads of host weights to the device. The weights themselves come from the bundle's ONNX
//! graphs through the contract's reader (`llamagen_bundle::initializers`), as f32 whatever their
//! stored precision (GEMM weights of int8 bundles also as stored, see [`crate::gemm_weight`]).

use crate::device::Device;
use crate::error::CudaError;

pub use llamagen_bundle::initializers::{HostTensor, Initializers as BundleWeights};

/// `data` uploaded as f16 (round to nearest even), converted on every core: loading converts
/// gigabytes (GPT-XL's 775M weights) and one core made that a large part of the load time.
pub fn upload_f16<D: Device>(d: &D, data: &[f32]) -> Result<D::Buf, CudaError> {
    let mut bytes = vec![0u8; 2 * data.len()];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Chunks of at least 1M values, so small tensors take no thread at all.
    let chunk = data.len().div_ceil(threads).max(1 << 20);
    std::thread::scope(|s| {
        for (src, dst) in data.chunks(chunk).zip(bytes.chunks_mut(2 * chunk)) {
            let mut convert = move || {
                for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
                    out.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
                }
            };
            if src.len() == data.len() {
                convert();
            } else {
                s.spawn(convert);
            }
        }
    });
    upload_bytes(d, &bytes)
}

/// Weight `name` of shape `dims` as f16 on the device: an f16 bundle's bytes exactly as stored
/// (no conversion at all), any other precision through [`upload_f16`].
pub fn upload_weight_f16<D: Device>(
    d: &D,
    w: &BundleWeights,
    name: &str,
    dims: &[usize],
) -> Result<D::Buf, CudaError> {
    if let Some(f16) = w.get_f16_bytes(name)? {
        check_dims(name, &f16.dims, dims)?;
        return upload_bytes(d, f16.bytes);
    }
    let t = w.get(name)?;
    check_dims(name, &t.dims, dims)?;
    upload_f16(d, &t.data)
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
