//! Backends behind one trait, and the one place that knows which exist (`cfg(feature)` lives
//! here only). Selecting an unavailable backend is an error, never a silent CPU fallback.

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
mod cuda;
mod ort_cpu;

use std::path::Path;

use llamagen_bundle::Manifest;

use crate::error::RuntimeError;
use crate::kv_cache::KvCache;
use crate::sampler::SamplingOptions;

/// Per-generation state of [`Backend::gpt_step`]: the KV caches of one batch shape, on the
/// host (ONNX Runtime) or owned by a device backend.
pub enum StepState {
    Host(KvCache),
    Device(Box<dyn std::any::Any + Send>),
}

/// One whole generation for [`Backend::generate_fused`]: prefill, sampling and every decode
/// step on the backend, with the same semantics as the host loop in `Pipeline`.
#[derive(Clone, Debug)]
pub struct FusedJob {
    /// The prefill's ids, `[cond; uncond]` with CFG (`rows` ids).
    pub prefill_ids: Vec<i64>,
    /// Requests (labels); rows are `2 n` with CFG, else `n`.
    pub n: usize,
    pub cfg: bool,
    pub cfg_scale: f32,
    pub cfg_interval: f32,
    pub sampling: SamplingOptions,
    pub seed: u64,
}

/// Tokens of a fused generation, `[n][tokens_per_image]`, and its timings.
#[derive(Clone, Debug)]
pub struct FusedTokens {
    pub tokens: Vec<Vec<u32>>,
    pub prefill_ms: f64,
    /// Prefill plus all decode steps.
    pub gpt_ms: f64,
}

/// Executes the bundle's graphs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// A fresh state (KV caches) for `rows` rows of [`Self::gpt_step`].
    fn new_state(&self, rows: usize) -> Result<StepState, RuntimeError>;
    /// One GPT step: `ids` `[batch, seq]` at cache slot `position`. Writes the logits of the
    /// last position (`[batch, vocab]`) into `logits` and the new key/value slices into `state`;
    /// extra outputs of calibration graphs (`probe.*`) go to `probes(name, data)`.
    fn gpt_step(
        &self,
        ids: &[i64],
        seq: usize,
        position: usize,
        state: &mut StepState,
        logits: &mut Vec<f32>,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError>;
    /// VQ decode of `tokens` `[batch, tokens_per_image]` to images `[batch, 3, size, size]`.
    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError>;
    /// The whole generation loop on the backend, when it has one (`None`: the caller runs the
    /// loop with [`Self::gpt_step`] and the CPU sampler).
    fn generate_fused(&self, _job: &FusedJob) -> Option<Result<FusedTokens, RuntimeError>> {
        None
    }
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// ONNX Runtime, CPU execution provider (the embedded default).
    #[default]
    Cpu,
    /// Our CUDA kernels + cuBLAS on an NVIDIA GPU (feature `cuda`).
    Cuda,
    /// The CUDA backend on the kernel emulator (feature `cuda-emu`): tests only, very slow.
    CudaEmu,
}

impl std::str::FromStr for BackendKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "cuda-emu" => Ok(BackendKind::CudaEmu),
            "tensorrt" => Err(RuntimeError::BackendUnavailable {
                name: s.into(),
                reason: "not implemented; use --backend cuda (native kernels) or cpu".into(),
            }),
            other => Err(RuntimeError::BackendUnavailable {
                name: other.into(),
                reason: "unknown backend; known: cpu, cuda".into(),
            }),
        }
    }
}

/// Options of backend creation.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Intra-op threads; `None` = all available cores.
    pub threads: Option<usize>,
    /// CUDA: capture the decode step into a CUDA graph (default on; off issues the same
    /// launches per token, for debugging and for measuring what the graph saves).
    pub cuda_graph: bool,
    /// CUDA: which GPU.
    pub device: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            threads: None,
            cuda_graph: true,
            device: 0,
        }
    }
}

pub fn create(
    kind: BackendKind,
    dir: &Path,
    manifest: &Manifest,
    opts: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(ort_cpu::OrtCpu::load(dir, manifest, opts)?)),
        BackendKind::Cuda => create_cuda(dir, manifest, opts),
        BackendKind::CudaEmu => create_cuda_emu(dir, manifest, opts),
    }
}

#[cfg(feature = "cuda")]
fn create_cuda(
    dir: &Path,
    manifest: &Manifest,
    opts: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    let device = llamagen_cuda::driver::CudaDevice::open(opts.device)?;
    let b = cuda::CudaBackend::load("cuda", device, dir, manifest, opts.cuda_graph)?;
    Ok(Box::new(b))
}

#[cfg(not(feature = "cuda"))]
fn create_cuda(
    _: &Path,
    _: &Manifest,
    _: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    Err(RuntimeError::BackendUnavailable {
        name: "cuda".into(),
        reason: "this build has no CUDA backend; rebuild with `--features cuda`".into(),
    })
}

#[cfg(feature = "cuda-emu")]
fn create_cuda_emu(
    dir: &Path,
    manifest: &Manifest,
    opts: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    let device = llamagen_cuda::emu::EmuDevice::new()?;
    let b = cuda::CudaBackend::load("cuda-emu", device, dir, manifest, opts.cuda_graph)?;
    Ok(Box::new(b))
}

#[cfg(not(feature = "cuda-emu"))]
fn create_cuda_emu(
    _: &Path,
    _: &Manifest,
    _: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    Err(RuntimeError::BackendUnavailable {
        name: "cuda-emu".into(),
        reason: "this build has no CUDA emulator; rebuild with `--features cuda-emu`".into(),
    })
}

/// The doctor's CUDA lines (NVRTC, cuBLAS, driver, GPU) and whether the backend can run.
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub(crate) fn cuda_checks() -> (Vec<crate::doctor::Check>, Result<(), String>) {
    cuda::checks()
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
pub(crate) fn cuda_checks() -> (Vec<crate::doctor::Check>, Result<(), String>) {
    let line = crate::doctor::Check {
        name: "cuda",
        ok: false,
        detail: NO_CUDA.into(),
    };
    (vec![line], Err(NO_CUDA.into()))
}

/// Every CUDA kernel file through NVRTC, for `doctor --compile-kernels`.
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub(crate) fn compile_cuda_kernels(
    archs: &[String],
) -> Result<Vec<crate::doctor::KernelCheck>, RuntimeError> {
    cuda::compile_kernels(archs)
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
pub(crate) fn compile_cuda_kernels(
    _: &[String],
) -> Result<Vec<crate::doctor::KernelCheck>, RuntimeError> {
    Err(RuntimeError::BackendUnavailable {
        name: "cuda".into(),
        reason: format!("{NO_CUDA}; --compile-kernels needs it"),
    })
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
const NO_CUDA: &str = "not built (rebuild with --features cuda)";
