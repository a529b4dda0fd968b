//! A GEMM weight matrix on the device in the form its bundle stores it, and the GEMM that reads
//! it: fp16 and fp32 bundles upload f16 `[k, n]` for cuBLAS; int8 bundles keep their int8 values
//! and per-output-channel scales (half the bytes of f16) for the weight-only int8 kernel
//! ([`crate::ops::gemm_w8a16`]). Either way the caller asks for `out (+)= a . W`.

use half::f16;

use crate::device::{DType, DevSlice, Device, Gemm};
use crate::error::CudaError;
use crate::ops::gemm_w8a16::{self as w8, Int8Matrix, W8Out};
use crate::weights::{check_dims, upload_bytes, upload_f32, upload_weight_f16, BundleWeights};

/// The element type GEMM weights have on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F16,
    /// int8 values with one f32 scale per output channel.
    Int8,
}

impl WeightDType {
    pub fn name(self) -> &'static str {
        match self {
            WeightDType::F16 => "f16",
            WeightDType::Int8 => "int8",
        }
    }
}

/// One GEMM's weights, `[k, n]` as the GEMM reads them (k inputs, n output channels).
pub enum GemmWeight<D: Device> {
    /// f16 `[k, n]`.
    F16 { w: D::Buf, k: usize, n: usize },
    /// i8 `[n, row_stride(k)]` (output-channel-major) and f32 scales `[n]`.
    Int8 {
        w: D::Buf,
        scale: D::Buf,
        k: usize,
        n: usize,
    },
}

/// Where a [`GemmWeight::apply`] writes.
#[derive(Clone, Copy, Debug)]
pub enum GemmOut {
    F16(DevSlice<f16>),
    /// `accumulate`: `out += a . W` (the residual add) instead of `out = a . W`.
    F32 {
        out: DevSlice<f32>,
        accumulate: bool,
    },
}

impl<D: Device> GemmWeight<D> {
    /// Weight `name` of shape `[k, n]` (`dims`) from the bundle: int8 as stored when the bundle
    /// is int8 (quantized per output channel, axis 1), else as f16.
    pub fn load(d: &D, w: &BundleWeights, name: &str, dims: [usize; 2]) -> Result<Self, CudaError> {
        let [k, n] = dims;
        if let Some(q) = w.get_int8(name)? {
            check_dims(name, &q.dims, &dims)?;
            if q.axis != 1 {
                return Err(CudaError::call(
                    format!("loading {name}"),
                    format!(
                        "int8 scales along axis {}, the GEMM needs output channels (axis 1)",
                        q.axis
                    ),
                ));
            }
            return Ok(GemmWeight::Int8 {
                w: upload_bytes(d, &channel_major(&q.values, k, n))?,
                scale: upload_f32(d, &q.scales)?,
                k,
                n,
            });
        }
        Ok(GemmWeight::F16 {
            w: upload_weight_f16(d, w, name, &dims)?,
            k,
            n,
        })
    }

    pub fn dtype(&self) -> WeightDType {
        match self {
            GemmWeight::F16 { .. } => WeightDType::F16,
            GemmWeight::Int8 { .. } => WeightDType::Int8,
        }
    }

    /// Device bytes of the weights (scales and row padding included).
    pub fn bytes(&self, d: &D) -> usize {
        match self {
            GemmWeight::F16 { w, .. } => d.len_bytes(w),
            GemmWeight::Int8 { w, scale, .. } => d.len_bytes(w) + d.len_bytes(scale),
        }
    }

    /// `out[rows, n] (+)= a[rows, k] . W`, f32 accumulation: cuBLAS for f16 weights, the W8A16
    /// kernel for int8 ones.
    pub fn apply(
        &self,
        d: &D,
        a: DevSlice<f16>,
        out: GemmOut,
        rows: usize,
    ) -> Result<(), CudaError> {
        match self {
            GemmWeight::F16 { w, k, n } => {
                let (c, c_type, beta) = match out {
                    GemmOut::F16(o) => (o.addr(), DType::F16, 0.0),
                    GemmOut::F32 { out, accumulate } => {
                        (out.addr(), DType::F32, if accumulate { 1.0 } else { 0.0 })
                    }
                };
                let mut g = Gemm::dense(rows, *n, *k, a.addr(), d.addr(w), c, c_type);
                g.beta = beta;
                d.gemm(&g)
            }
            GemmWeight::Int8 { w, scale, k, n } => {
                let m = Int8Matrix {
                    w: d.slice(w),
                    scale: d.slice(scale),
                    k: *k,
                    n: *n,
                };
                let out = match out {
                    GemmOut::F16(o) => W8Out::F16(o),
                    GemmOut::F32 { out, accumulate } => W8Out::F32 { out, accumulate },
                };
                w8::gemm_w8a16(d, out, a, &m, rows)
            }
        }
    }
}

/// `[k, n]` int8 values as `[n, row_stride(k)]` bytes: each output channel's weights contiguous
/// (what the kernel streams), rows zero-padded.
fn channel_major(values: &[i8], k: usize, n: usize) -> Vec<u8> {
    let ldw = w8::row_stride(k);
    let mut out = vec![0u8; n * ldw];
    for (i, row) in values.chunks_exact(n).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * ldw + i] = v as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn int8_rows_become_padded_output_channels() {
        // k = 2, n = 3: [[1, 2, 3], [4, 5, 6]] -> channel c holds (row0[c], row1[c]) then zeros.
        let got = super::channel_major(&[1, 2, 3, 4, 5, 6], 2, 3);
        let mut want = vec![0u8; 3 * 16];
        for (c, pair) in [(1, 4), (2, 5), (3, 6)].into_iter().enumerate() {
            want[c * 16] = pair.0;
            want[c * 16 + 1] = pair.1;
        }
        assert_eq!(got, want);
        let neg = super::channel_major(&[-1, -128], 1, 2);
        assert_eq!((neg[0], neg[16]), (0xff, 0x80));
    }
}
