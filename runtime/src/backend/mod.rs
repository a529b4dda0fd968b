//! Backends behind one trait, and the one place that knows which exist (`cfg(feature)` lives
//! here only). Selecting an unavailable backend is an error, never a silent CPU fallback.

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
mod cuda;
mod cuda_options;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
mod cuda_var;
pub use cuda_options::{CudaAttention, CudaOptions, DecodeGemm, VqConv};
#[cfg(target_arch = "x86_64")]
mod amx_rewrite;
#[cfg(target_arch = "x86_64")]
mod attention_rewrite;
#[cfg(target_arch = "x86_64")]
mod decoder_rewrite;
#[cfg(target_arch = "x86_64")]
mod graph_rewrite;
#[cfg(target_arch = "x86_64")]
mod group_norm_rewrite;
pub(crate) mod ort_cpu;

#[cfg(target_arch = "x86_64")]
use attention_rewrite::attention_graph;
#[cfg(target_arch = "x86_64")]
use decoder_rewrite::decoder_graph;

/// Without x86-64 there are no AMX or AVX-512 kernels: graphs load as they are.
#[cfg(not(target_arch = "x86_64"))]
fn decoder_graph(
    _: &std::path::Path,
    _: &llamagen_bundle::Manifest,
    _: &llamagen_bundle::GraphEntry,
    _: &llamagen_bundle::confine::OpenedFile,
    _: [bool; 2],
    _: usize,
) -> Result<Option<NoRewrite>, crate::error::RuntimeError> {
    Ok(None)
}

#[cfg(not(target_arch = "x86_64"))]
fn attention_graph(
    _: &std::path::Path,
    _: &llamagen_bundle::confine::OpenedFile,
    _: bool,
) -> Result<Option<NoRewrite>, crate::error::RuntimeError> {
    Ok(None)
}

#[cfg(not(target_arch = "x86_64"))]
enum NoRewrite {}

#[cfg(not(target_arch = "x86_64"))]
impl NoRewrite {
    fn commit(
        self,
        _: ort::session::builder::SessionBuilder,
    ) -> Result<(ort::session::Session, usize), crate::error::RuntimeError> {
        match self {}
    }
}

pub use ort_cpu::OrtCpu;

use std::path::Path;

use llamagen_bundle::{Manifest, ModelFamily};

use crate::error::RuntimeError;
use crate::runner::{Generator, Runner};
use crate::sampler::SamplingOptions;

/// One GPT step's input: one token id per row (`[rows]`), fed at cache slot `position`.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    pub ids: &'a [i64],
    pub position: usize,
}

/// One whole generation for [`FusedLoop::generate`]: prefill, sampling and every decode step on
/// the backend, with the same semantics as the host loop in `Pipeline`.
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
    /// Each request row's random stream (`n` entries).
    pub row_seeds: Vec<crate::request::RowSeed>,
}

/// Tokens of a fused generation, `[n][tokens_per_image]`, and its timings.
#[derive(Clone, Debug)]
pub struct FusedTokens {
    pub tokens: Vec<Vec<u32>>,
    pub prefill_ms: f64,
    /// Prefill plus all decode steps.
    pub gpt_ms: f64,
    /// Each decode step's device time (events between the steps), or empty.
    pub decode_step_ms: Vec<f64>,
}

/// What a device backend's GPT weights occupy on the device (for `bench` and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWeights {
    /// The GEMM matrices (qkv, wo, w1|w3, w2 of every layer, the output projection; int8 scales
    /// included): what every decode step reads in full.
    pub gemm_bytes: usize,
    /// Embeddings, norm weights, rotary tables.
    pub other_bytes: usize,
    /// The GEMM weights' element type on the device (`f16`, `int8`).
    pub gemm_dtype: &'static str,
    /// The GEMM of decode steps: `cublas`, or `own` (ours, norm and SwiGLU fused; always for
    /// int8).
    pub decode_gemm: &'static str,
}

/// A backend that runs the whole generation loop itself (the CUDA backend: the decode step
/// replayed from a captured graph with no host synchronisation per token).
pub trait FusedLoop: Send + Sync {
    fn generate(&self, job: &FusedJob) -> Result<FusedTokens, RuntimeError>;
}

/// Executes the bundle's graphs.
pub trait Backend: Send + Sync + 'static {
    /// Per-generation state of [`Backend::gpt_step`]: the KV caches of one batch shape (host
    /// arrays, or device buffers the backend owns).
    type State: Send;

    fn kind(&self) -> BackendKind;
    /// A fresh state for `rows` rows.
    fn new_state(&self, rows: usize) -> Result<Self::State, RuntimeError>;
    /// Makes a pooled state (one a finished or failed request used) as clean as a fresh one,
    /// before the next request: every slot the step reads must hold what [`Self::new_state`]
    /// put there, so that nothing a request left (NaN, Inf) can leak into another.
    fn reset_state(&self, state: &mut Self::State) -> Result<(), RuntimeError>;
    /// Test hook: fills every cache slot of `state` with `value` (a request that left NaN).
    #[cfg(feature = "test-hooks")]
    fn poison_state(&self, _state: &mut Self::State, _value: f32) {}
    /// One GPT step. Writes the logits (`[rows, vocab]`) into `logits` and the new key/value
    /// slices into `state`; extra outputs of calibration graphs (`probe.*`) go to
    /// `probes(name, data)` (backends that refuse calibration bundles never call it).
    fn gpt_step(
        &self,
        input: StepInput<'_>,
        state: &mut Self::State,
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
    /// The whole generation loop on the backend, when it has one (else the caller runs the
    /// loop with [`Self::gpt_step`] and the CPU sampler).
    fn fused(&self) -> Option<&dyn FusedLoop> {
        None
    }
    /// Device backends: what the GPT weights occupy on the device.
    fn device_weights(&self) -> Option<DeviceWeights> {
        None
    }
    /// Device backends: the decode step's attention ([`CudaAttention::name`]).
    fn device_attention(&self) -> Option<&'static str> {
        None
    }
    /// CPU: which nodes run on our kernels.
    fn cpu_kernels(&self) -> CpuKernels {
        CpuKernels::default()
    }
}

/// CPU backend: how many nodes of the loaded graphs run on our kernels instead of ONNX
/// Runtime's (see `ort_cpu::session_counting`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuKernels {
    /// VQ decoder int8 3x3 convolutions on AMX tiles.
    pub amx_convolutions: usize,
    /// VAR step attention layers on the fused AVX-512 kernel.
    pub fused_attention: usize,
    /// VQ decoder GroupNorm (+ SiLU) chains on the fused AVX-512 kernel.
    pub fused_group_norms: usize,
}

impl CpuKernels {
    /// Both counts together.
    pub fn plus(self, o: CpuKernels) -> CpuKernels {
        CpuKernels {
            amx_convolutions: self.amx_convolutions + o.amx_convolutions,
            fused_attention: self.fused_attention + o.fused_attention,
            fused_group_norms: self.fused_group_norms + o.fused_group_norms,
        }
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

impl BackendKind {
    /// The name the CLI and reports use (`cpu`, `cuda`, `cuda-emu`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::CudaEmu => "cuda-emu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of the ONNX Runtime CPU backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Intra-op threads; `None` = all available cores.
    pub threads: Option<usize>,
    /// Let ONNX Runtime's worker threads spin between operators instead of sleeping. It saves
    /// a wake-up per operator on an otherwise idle machine, and burns the cores other work
    /// needs on a shared one (see `ort_cpu::commit`).
    pub idle_spin: bool,
    /// Keep the VQ decoder's int8 3x3 convolutions on ONNX Runtime's kernels where our AMX
    /// kernel would run them (`amx`; int8-activation decoders on AMX CPUs only).
    pub no_amx: bool,
    /// Keep VAR's step attention on ONNX Runtime's operators (slices, concatenations,
    /// products, softmax) where our fused kernel would run it (`attention`; AVX-512 CPUs).
    pub ort_attention: bool,
    /// Keep the VQ decoders' GroupNorm (+ SiLU) chains on ONNX Runtime's operators where our
    /// fused kernel would run them (`group_norm`; AVX-512 CPUs).
    pub ort_group_norm: bool,
}

impl CpuOptions {
    /// The intra-op thread count: the option, else every available core.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// A backend and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu(CpuOptions),
    Cuda(CudaOptions),
    CudaEmu(CudaOptions),
}

impl Default for BackendChoice {
    fn default() -> Self {
        BackendChoice::Cpu(CpuOptions::default())
    }
}

impl BackendChoice {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendChoice::Cpu(_) => BackendKind::Cpu,
            BackendChoice::Cuda(_) => BackendKind::Cuda,
            BackendChoice::CudaEmu(_) => BackendKind::CudaEmu,
        }
    }
}

impl From<BackendKind> for BackendChoice {
    /// `kind` with its default options.
    fn from(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Cpu => BackendChoice::Cpu(CpuOptions::default()),
            BackendKind::Cuda => BackendChoice::Cuda(CudaOptions::default()),
            BackendKind::CudaEmu => BackendChoice::CudaEmu(CudaOptions::default()),
        }
    }
}

/// Loads the bundle's graphs on the chosen backend, behind the generation loop of its model
/// family (the only place that knows which backends this build has).
pub(crate) fn load(
    choice: &BackendChoice,
    dir: &Path,
    manifest: &Manifest,
) -> Result<Box<dyn Generator>, RuntimeError> {
    if manifest.family == ModelFamily::Var {
        return match choice {
            BackendChoice::Cpu(o) => Ok(Box::new(crate::var::VarOrtCpu::load(dir, manifest, o)?)),
            BackendChoice::Cuda(o) => load_var_cuda(dir, manifest, o),
            BackendChoice::CudaEmu(o) => load_var_cuda_emu(dir, manifest, o),
        };
    }
    Ok(match choice {
        BackendChoice::Cpu(o) => generator(ort_cpu::OrtCpu::load(dir, manifest, o)?),
        BackendChoice::Cuda(o) => load_cuda(dir, manifest, o)?,
        BackendChoice::CudaEmu(o) => load_cuda_emu(dir, manifest, o)?,
    })
}

/// The c2i generation loop over backend `b` (VAR bundles took their own path in [`load`]).
fn generator<B: Backend>(b: B) -> Box<dyn Generator> {
    Box::new(Runner::new(b))
}

#[cfg(feature = "cuda")]
fn load_cuda(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    let device = llamagen_cuda::driver::CudaDevice::open(o.device)?;
    let b = cuda::CudaBackend::load(BackendKind::Cuda, device, dir, manifest, o)?;
    Ok(generator(b))
}

#[cfg(feature = "cuda")]
fn load_var_cuda(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    let device = llamagen_cuda::driver::CudaDevice::open(o.device)?;
    let kind = BackendKind::Cuda;
    let g = cuda_var::VarCuda::load(kind, device, dir, manifest, o)?;
    Ok(Box::new(g))
}

#[cfg(not(feature = "cuda"))]
fn load_var_cuda(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    load_cuda(dir, manifest, o)
}

#[cfg(feature = "cuda-emu")]
fn load_var_cuda_emu(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    let device = llamagen_cuda::emu::EmuDevice::new()?;
    let kind = BackendKind::CudaEmu;
    let g = cuda_var::VarCuda::load(kind, device, dir, manifest, o)?;
    Ok(Box::new(g))
}

#[cfg(not(feature = "cuda-emu"))]
fn load_var_cuda_emu(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    load_cuda_emu(dir, manifest, o)
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_: &Path, _: &Manifest, _: &CudaOptions) -> Result<Box<dyn Generator>, RuntimeError> {
    Err(RuntimeError::BackendUnavailable {
        name: "cuda".into(),
        reason: "this build has no CUDA backend; rebuild with `--features cuda`".into(),
    })
}

#[cfg(feature = "cuda-emu")]
fn load_cuda_emu(
    dir: &Path,
    manifest: &Manifest,
    o: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
    let device = llamagen_cuda::emu::EmuDevice::new()?;
    let b = cuda::CudaBackend::load(BackendKind::CudaEmu, device, dir, manifest, o)?;
    Ok(generator(b))
}

#[cfg(not(feature = "cuda-emu"))]
fn load_cuda_emu(
    _: &Path,
    _: &Manifest,
    _: &CudaOptions,
) -> Result<Box<dyn Generator>, RuntimeError> {
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
