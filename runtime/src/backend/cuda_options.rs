//! The CUDA backend's options (and its emulator's): which GPU, the graph, and the decode-step
//! kernels to compare on hardware (attention path, decode GEMM), each settable in code or, where
//! left open, by an environment variable read once at load.

use crate::error::RuntimeError;

/// Options of the CUDA backend (and its emulator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Which GPU (ordinal), for `Cuda`.
    pub device: usize,
    /// Capture the decode step into a CUDA graph (default on; off issues the same launches per
    /// token, for debugging and for measuring what the graph saves).
    pub graph: bool,
    /// The GPT decode step's attention; `None` (the default): [`CudaAttention::ENV`] if set,
    /// else fused, read once when the pipeline loads.
    pub attention: Option<CudaAttention>,
    /// The GEMM of LlamaGen decode steps with f16 weights; `None`: [`DecodeGemm::ENV`] if set,
    /// else cuBLAS. int8 bundles always run ours.
    pub decode_gemm: Option<DecodeGemm>,
    /// The VQ decoder's 3x3 convolutions (both families); `None`: [`VqConv::ENV`] if set, else
    /// cuBLAS.
    pub vq_conv: Option<VqConv>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            graph: true,
            attention: None,
            decode_gemm: None,
            vq_conv: None,
        }
    }
}

impl CudaOptions {
    /// The attention these options select (the environment's where they leave it open).
    pub fn attention(&self) -> Result<CudaAttention, RuntimeError> {
        self.attention.map_or_else(CudaAttention::from_env, Ok)
    }

    /// The decode GEMM these options select (the environment's where they leave it open).
    pub fn decode_gemm(&self) -> Result<DecodeGemm, RuntimeError> {
        self.decode_gemm.map_or_else(DecodeGemm::from_env, Ok)
    }

    /// The VQ convolution these options select (the environment's where they leave it open).
    pub fn vq_conv(&self) -> Result<VqConv, RuntimeError> {
        self.vq_conv.map_or_else(VqConv::from_env, Ok)
    }
}

/// The CUDA backend's decode attention for LlamaGen (VAR has its own, untouched by this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CudaAttention {
    /// One fused split-K launch per layer: rotary, the KV-cache write, attention over chunks of
    /// the cache in parallel, and their merge.
    #[default]
    Fused,
    /// The previous pair: `rotary_kv_write`, then `decode_attention` (one block per row and
    /// head), kept to compare against.
    Separate,
}

impl CudaAttention {
    /// The environment variable that selects it: `fused` or `separate`.
    pub const ENV: &'static str = "LLAMAGEN_CUDA_ATTENTION";

    /// The name options, the variable and reports use.
    pub fn name(self) -> &'static str {
        match self {
            CudaAttention::Fused => "fused",
            CudaAttention::Separate => "separate",
        }
    }

    /// `fused` or `separate`.
    pub fn parse(value: &str) -> Result<Self, RuntimeError> {
        match value {
            "fused" => Ok(CudaAttention::Fused),
            "separate" => Ok(CudaAttention::Separate),
            _ => Err(RuntimeError::InvalidOption {
                name: Self::ENV,
                value: value.into(),
                expected: "fused or separate",
            }),
        }
    }

    /// [`Self::ENV`] if set and not empty, else fused.
    pub fn from_env() -> Result<Self, RuntimeError> {
        env_choice(Self::ENV, "fused or separate", Self::parse)
    }
}

/// The GEMM of the CUDA backend's LlamaGen decode steps for f16 weights (int8 bundles always
/// run ours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeGemm {
    /// cuBLAS, with rms_norm and swiglu launches of their own (the default until our GEMM is
    /// measured on hardware).
    #[default]
    Cublas,
    /// Our weight-streaming GEMM with RMSNorm and SwiGLU fused, for steps of up to 32 rows
    /// (cuBLAS beyond).
    Own,
}

impl DecodeGemm {
    /// The environment variable that selects it: `cublas` or `own`.
    pub const ENV: &'static str = "LLAMAGEN_CUDA_DECODE_GEMM";

    /// `cublas` or `own` (the names the CUDA crate reports, `DeviceWeights::decode_gemm`).
    pub fn parse(value: &str) -> Result<Self, RuntimeError> {
        match value {
            "cublas" => Ok(DecodeGemm::Cublas),
            "own" => Ok(DecodeGemm::Own),
            _ => Err(RuntimeError::InvalidOption {
                name: Self::ENV,
                value: value.into(),
                expected: "cublas or own",
            }),
        }
    }

    /// [`Self::ENV`] if set and not empty, else cuBLAS.
    pub fn from_env() -> Result<Self, RuntimeError> {
        env_choice(Self::ENV, "cublas or own", Self::parse)
    }
}

/// How the CUDA backend's VQ decoder runs its 3x3 convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VqConv {
    /// 3 cuBLAS GEMMs per convolution (the default until the other is measured on hardware).
    #[default]
    Cublas,
    /// One implicit-GEMM tensor-core launch per convolution (`vq_conv.cu`), where the shape
    /// fits (cin % 16, cout % 8: all but the image's convolution); cuBLAS elsewhere.
    Mma,
}

impl VqConv {
    /// The environment variable that selects it: `cublas` or `mma`.
    pub const ENV: &'static str = "LLAMAGEN_CUDA_VQ_CONV";

    /// `cublas` or `mma`.
    pub fn parse(value: &str) -> Result<Self, RuntimeError> {
        match value {
            "cublas" => Ok(VqConv::Cublas),
            "mma" => Ok(VqConv::Mma),
            _ => Err(RuntimeError::InvalidOption {
                name: Self::ENV,
                value: value.into(),
                expected: "cublas or mma",
            }),
        }
    }

    /// [`Self::ENV`] if set and not empty, else cuBLAS.
    pub fn from_env() -> Result<Self, RuntimeError> {
        env_choice(Self::ENV, "cublas or mma", Self::parse)
    }
}

/// The choice environment variable `var` makes through `parse`, or `T`'s default where it is
/// unset or empty; a value that is not UTF-8 is an [`RuntimeError::InvalidOption`] naming
/// `expected`.
fn env_choice<T: Default>(
    var: &'static str,
    expected: &'static str,
    parse: fn(&str) -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => parse(&v),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(T::default()),
        Err(std::env::VarError::NotUnicode(v)) => Err(RuntimeError::InvalidOption {
            name: var,
            value: v.to_string_lossy().into_owned(),
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_attention_names_parse_back_and_others_are_refused() {
        for a in [CudaAttention::Fused, CudaAttention::Separate] {
            assert_eq!(CudaAttention::parse(a.name()).unwrap(), a);
        }
        let e = CudaAttention::parse("flash").unwrap_err().to_string();
        assert!(
            e.contains("LLAMAGEN_CUDA_ATTENTION") && e.contains("\"flash\""),
            "{e}"
        );
        // Options that name the attention never consult the environment.
        let o = CudaOptions {
            attention: Some(CudaAttention::Separate),
            ..CudaOptions::default()
        };
        assert_eq!(o.attention().unwrap(), CudaAttention::Separate);
    }

    #[test]
    fn vq_conv_names_parse_and_others_are_refused() {
        assert_eq!(VqConv::parse("cublas").unwrap(), VqConv::Cublas);
        assert_eq!(VqConv::parse("mma").unwrap(), VqConv::Mma);
        let e = VqConv::parse("cudnn").unwrap_err().to_string();
        assert!(
            e.contains("LLAMAGEN_CUDA_VQ_CONV") && e.contains("\"cudnn\""),
            "{e}"
        );
        let o = CudaOptions {
            vq_conv: Some(VqConv::Mma),
            ..CudaOptions::default()
        };
        assert_eq!(o.vq_conv().unwrap(), VqConv::Mma);
    }
}
