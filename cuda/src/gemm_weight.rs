//! A GEMM weight matrix on the device in the layout its GEMM reads, and the GEMM that reads it.
//! fp16 and fp32 bundles upload f16: `[k, n]` for cuBLAS ([`DecodeGemm::Cublas`]), or
//! output-channel-major `[n, ldw]` for our weight-streaming decode GEMM ([`DecodeGemm::Own`],
//! [`crate::ops::decode_gemm`]), which cuBLAS also reads (transposed) when the rows are too many
//! for it. int8 bundles keep their int8 values and per-output-channel scales (half the bytes of
//! f16), output-channel-major, always for our kernel (cuBLAS has no W8A16 GEMM). Either way the
//! caller asks for `out (+)= in . W`; with our kernel, `in` may be RMSNorm of the f32 residual
//! stream and `out` the SwiGLU of w1|w3 pairs ([`GemmWeight::fuses`]).

use half::f16;

use crate::device::{DType, DevSlice, Device, Gemm};
use crate::error::CudaError;
use crate::ops::decode_gemm::{self as dg, DecodeMatrix, DecodeWeights};
use crate::weights::{
    check_dims, upload_bytes, upload_f16, upload_f32, upload_weight_f16, BundleWeights,
};

pub use crate::ops::decode_gemm::{DecodeInput as GemmIn, DecodeOut as GemmOut};

/// Our decode GEMM runs for steps of at most this many rows; cuBLAS for more. Two row groups of
/// 16 (the kernel's largest): each group streams the weights once (the second mostly from L2,
/// both run at once), and every weight feeds 16 rows of CUDA-core FMAs, which at 16 rows already
/// asks about as much FMA throughput of an H200 as its memory gives weights. Beyond 32 rows the
/// GEMM stops being bound by the weight stream and cuBLAS's tensor-core tiles win (prefill of
/// large batches, VAR, VQ never come here). Unmeasured on hardware: scripts/gpu_bench.sh times
/// both.
pub const OWN_MAX_ROWS: usize = 32;

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

/// Which GEMM runs the decode step's f16 weights (int8 weights always take ours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeGemm {
    /// cuBLAS on `[k, n]` weights, with separate rms_norm and swiglu launches.
    #[default]
    Cublas,
    /// Our weight-streaming GEMM (norm and SwiGLU fused) for steps of up to [`OWN_MAX_ROWS`]
    /// rows, cuBLAS on the same (channel-major) weights for more.
    Own,
}

impl DecodeGemm {
    pub fn name(self) -> &'static str {
        match self {
            DecodeGemm::Cublas => "cublas",
            DecodeGemm::Own => "own",
        }
    }
}

/// One GEMM's weights, `[k, n]` as the GEMM reads them (k inputs, n output channels).
pub enum GemmWeight<D: Device> {
    /// f16 `[k, n]` for cuBLAS.
    F16 { w: D::Buf, k: usize, n: usize },
    /// f16 `[n, row_stride(k)]` (output-channel-major) for our GEMM.
    F16Rows {
        w: D::Buf,
        k: usize,
        n: usize,
        pairs: bool,
    },
    /// i8 `[n, row_stride(k)]` (output-channel-major) and f32 scales `[n]`.
    Int8 {
        w: D::Buf,
        scale: D::Buf,
        k: usize,
        n: usize,
        pairs: bool,
    },
}

impl<D: Device> GemmWeight<D> {
    /// Weight `name` of shape `[k, n]` (`dims`) from the bundle: int8 as stored when the bundle
    /// is int8 (quantized per output channel, axis 1), else as f16 in the layout `decode` reads.
    /// With `pairs` (the w1|w3 matrix: n = 2 hidden, w1's channels first), the channel-major
    /// layouts interleave w1 and w3 (row 2j = w1 channel j, 2j + 1 = w3 channel j) for the SwiGLU
    /// epilogue.
    pub fn load(
        d: &D,
        w: &BundleWeights,
        name: &str,
        dims: [usize; 2],
        decode: DecodeGemm,
        pairs: bool,
    ) -> Result<Self, CudaError> {
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
            let values: Vec<u8> = q.values.iter().map(|&v| v as u8).collect();
            let scales = channel_order(&q.scales, pairs);
            return Ok(GemmWeight::Int8 {
                w: upload_bytes(d, &channel_major(&values, k, n, pairs))?,
                scale: upload_f32(d, &scales)?,
                k,
                n,
                pairs,
            });
        }
        if decode == DecodeGemm::Cublas {
            return Ok(GemmWeight::F16 {
                w: upload_weight_f16(d, w, name, &dims)?,
                k,
                n,
            });
        }
        // One copy on the device, in our layout: transposed on the host.
        let Some(h) = w.get_f16_bytes(name)? else {
            let t = w.get(name)?;
            check_dims(name, &t.dims, &dims)?;
            return Self::from_f32(d, &t.data, dims, decode, pairs);
        };
        check_dims(name, &h.dims, &dims)?;
        let values: Vec<u16> = h
            .bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let bytes: Vec<u8> = channel_major(&values, k, n, pairs)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let w = upload_bytes(d, &bytes)?;
        Ok(GemmWeight::F16Rows { w, k, n, pairs })
    }

    /// Host values `[k, n]` (`dims`) as f16 weights in the layout `decode` reads (`pairs` as in
    /// [`Self::load`]).
    pub fn from_f32(
        d: &D,
        values: &[f32],
        dims: [usize; 2],
        decode: DecodeGemm,
        pairs: bool,
    ) -> Result<Self, CudaError> {
        let [k, n] = dims;
        if values.len() != k * n {
            return Err(CudaError::call(
                "f16 GEMM weights",
                format!("{} values for [{k}, {n}]", values.len()),
            ));
        }
        Ok(match decode {
            DecodeGemm::Cublas => GemmWeight::F16 {
                w: upload_f16(d, values)?,
                k,
                n,
            },
            DecodeGemm::Own => GemmWeight::F16Rows {
                w: upload_f16(d, &channel_major(values, k, n, pairs))?,
                k,
                n,
                pairs,
            },
        })
    }

    pub fn dtype(&self) -> WeightDType {
        match self {
            GemmWeight::F16 { .. } | GemmWeight::F16Rows { .. } => WeightDType::F16,
            GemmWeight::Int8 { .. } => WeightDType::Int8,
        }
    }

    /// The GEMM decode steps use for these weights (int8: always ours).
    pub fn decode_gemm(&self) -> DecodeGemm {
        match self {
            GemmWeight::F16 { .. } => DecodeGemm::Cublas,
            GemmWeight::F16Rows { .. } | GemmWeight::Int8 { .. } => DecodeGemm::Own,
        }
    }

    /// Whether a step of `rows` rows runs our GEMM, which takes [`GemmIn::Norm`] and
    /// [`GemmOut::SwiGlu`]; else only f16 inputs and f16/f32 outputs.
    pub fn fuses(&self, rows: usize) -> bool {
        match self {
            GemmWeight::F16 { .. } => false,
            GemmWeight::F16Rows { .. } => rows <= OWN_MAX_ROWS,
            GemmWeight::Int8 { .. } => true,
        }
    }

    /// Device bytes of the weights (scales and row padding included).
    pub fn bytes(&self, d: &D) -> usize {
        match self {
            GemmWeight::F16 { w, .. } | GemmWeight::F16Rows { w, .. } => d.len_bytes(w),
            GemmWeight::Int8 { w, scale, .. } => d.len_bytes(w) + d.len_bytes(scale),
        }
    }

    /// `out[rows, n] (+)= in[rows, k] . W`, f32 accumulation, output channels in the bundle's
    /// order (w1 then w3 for an f16 output of the w1|w3 matrix); [`GemmOut::SwiGlu`] (w1|w3 only)
    /// and [`GemmIn::Norm`] need [`Self::fuses`]`(rows)`.
    pub fn apply(&self, d: &D, input: GemmIn, out: GemmOut, rows: usize) -> Result<(), CudaError> {
        let own = |w: DecodeWeights, k: usize, n: usize, pairs: bool| {
            if pairs != matches!(out, GemmOut::SwiGlu(_)) {
                return Err(CudaError::call(
                    "decode GEMM",
                    "w1|w3 weights stored for the SwiGLU epilogue give SwiGLU output only",
                ));
            }
            dg::decode_gemm(d, out, input, &DecodeMatrix { w, k, n }, rows)
        };
        match self {
            GemmWeight::Int8 {
                w,
                scale,
                k,
                n,
                pairs,
            } => {
                let w = DecodeWeights::Int8 {
                    w: d.slice(w),
                    scale: d.slice(scale),
                };
                own(w, *k, *n, *pairs)
            }
            GemmWeight::F16Rows { w, k, n, pairs } if rows <= OWN_MAX_ROWS => {
                own(DecodeWeights::F16(d.slice(w)), *k, *n, *pairs)
            }
            GemmWeight::F16Rows { w, k, n, pairs } => {
                let a = cublas_input(input)?;
                // B^T: weights [n, ldw]; a w1|w3 pair matrix as two GEMMs over every other row,
                // into the two halves of the output.
                let ldw = dg::row_stride(*k);
                let halves = if *pairs { 2 } else { 1 };
                for h in 0..halves {
                    let b = d.addr(w) + (h * ldw * 2) as u64;
                    let cols = *n / halves;
                    let mut g = cublas_gemm(a, out, rows, cols, *k, b, h * cols)?;
                    g.b_trans = true;
                    g.ldb = ldw * halves;
                    g.ldc = *n;
                    d.gemm(&g)?;
                }
                Ok(())
            }
            GemmWeight::F16 { w, k, n } => {
                let a = cublas_input(input)?;
                d.gemm(&cublas_gemm(a, out, rows, *n, *k, d.addr(w), 0)?)
            }
        }
    }
}

/// The f16 activations a cuBLAS GEMM takes.
fn cublas_input(input: GemmIn) -> Result<DevSlice<f16>, CudaError> {
    match input {
        GemmIn::F16(a) => Ok(a),
        GemmIn::Norm { .. } => Err(CudaError::call(
            "cuBLAS GEMM",
            "the norm prologue needs our decode GEMM; normalise first",
        )),
    }
}

/// `out[:, col0 .. col0 + n] (+)= a . B` with B `[k, n]` at `b` (packed; callers change the
/// layout fields for other ones).
fn cublas_gemm(
    a: DevSlice<f16>,
    out: GemmOut,
    rows: usize,
    n: usize,
    k: usize,
    b: u64,
    col0: usize,
) -> Result<Gemm, CudaError> {
    let (c, c_type, beta) = match out {
        GemmOut::F16(o) => (o.addr() + 2 * col0 as u64, DType::F16, 0.0),
        GemmOut::F32 { out, accumulate } => (
            out.addr() + 4 * col0 as u64,
            DType::F32,
            if accumulate { 1.0 } else { 0.0 },
        ),
        GemmOut::SwiGlu(_) => {
            return Err(CudaError::call(
                "cuBLAS GEMM",
                "the SwiGLU epilogue needs our decode GEMM",
            ))
        }
    };
    let mut g = Gemm::dense(rows, n, k, a.addr(), b, c, c_type);
    g.beta = beta;
    Ok(g)
}

/// Output channel `c`'s row in the channel-major layouts: itself, or for w1|w3 `pairs` (n = 2
/// hidden) w1 channel j at row 2j and w3 channel j at row 2j + 1.
fn channel_row(c: usize, n: usize, pairs: bool) -> usize {
    let hidden = n / 2;
    match (pairs, c < hidden) {
        (false, _) => c,
        (true, true) => 2 * c,
        (true, false) => 2 * (c - hidden) + 1,
    }
}

/// Per-channel values `[n]` in the order of [`channel_row`].
fn channel_order(values: &[f32], pairs: bool) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (c, &v) in values.iter().enumerate() {
        out[channel_row(c, values.len(), pairs)] = v;
    }
    out
}

/// `[k, n]` values as `[n, row_stride(k)]`: each output channel's weights contiguous (what our
/// GEMM streams), in the order of [`channel_row`], rows zero-padded.
fn channel_major<T: Copy + Default>(values: &[T], k: usize, n: usize, pairs: bool) -> Vec<T> {
    let ldw = dg::row_stride(k);
    let mut out = vec![T::default(); n * ldw];
    for (i, row) in values.chunks_exact(n).take(k).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[channel_row(c, n, pairs) * ldw + i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn int8_rows_become_padded_output_channels() {
        // k = 2, n = 3: [[1, 2, 3], [4, 5, 6]] -> channel c holds (row0[c], row1[c]) then zeros.
        let got = super::channel_major(&[1u8, 2, 3, 4, 5, 6], 2, 3, false);
        let mut want = vec![0u8; 3 * 16];
        for (c, pair) in [(1, 4), (2, 5), (3, 6)].into_iter().enumerate() {
            want[c * 16] = pair.0;
            want[c * 16 + 1] = pair.1;
        }
        assert_eq!(got, want);
        let neg: Vec<u8> = [-1i8, -128].iter().map(|&v| v as u8).collect();
        let neg = super::channel_major(&neg, 1, 2, false);
        assert_eq!((neg[0], neg[16]), (0xff, 0x80));
    }

    #[test]
    fn w1_w3_pairs_interleave() {
        // k = 1, n = 4 (hidden 2): w1 = [10, 11], w3 = [20, 21] -> rows 10, 20, 11, 21.
        let got = super::channel_major(&[10u16, 11, 20, 21], 1, 4, true);
        let firsts: Vec<u16> = got.chunks(16).map(|r| r[0]).collect();
        assert_eq!(firsts, [10, 20, 11, 21]);
        assert_eq!(
            super::channel_order(&[1.0, 2.0, 3.0, 4.0], true),
            [1.0, 3.0, 2.0, 4.0]
        );
    }
}
