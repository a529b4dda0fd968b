//! Flags shared by `generate` and `bench` (names as the official sample_c2i.py). Sampling
//! defaults follow the bundle's family: LlamaGen's sample_c2i.py (cfg 4, top-k 2000, top-p 1)
//! or VAR's FID settings (cfg 1.5, top-k 900, top-p 0.96).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use llamagen_runtime::{
    BackendChoice, CpuOptions, CudaOptions, GenerateRequest, Manifest, ModelFamily, Pipeline,
    PipelineOptions, SamplingOptions,
};

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// Our CUDA kernels (a build with `--features cuda`, an NVIDIA driver, and the
    /// nvidia-cuda-nvrtc / nvidia-cublas wheels).
    Cuda,
    /// The CUDA backend on the host kernel emulator (`--features cuda-emu`; tests only, slow).
    CudaEmu,
}

/// The CPU backend's flags (`generate`, `bench`, `compare`, `serve`).
#[derive(Args, Debug, Clone)]
pub struct CpuFlags {
    /// cpu: intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu: let idle worker threads spin between operators instead of sleeping (a little
    /// faster on an idle machine, much slower when other work shares the cores).
    #[arg(long)]
    pub cpu_spin: bool,
    /// cpu: run an int8-activation VQ decoder's 3x3 convolutions on ONNX Runtime's kernels,
    /// not on ours for Intel AMX (used only where the CPU has AMX).
    #[arg(long)]
    pub cpu_no_amx: bool,
    /// cpu: run VAR's step attention on ONNX Runtime's operators, not on our fused kernel
    /// (used only where the CPU has AVX-512).
    #[arg(long)]
    pub cpu_ort_attention: bool,
    /// cpu: run the VQ decoder's GroupNorm + SiLU on ONNX Runtime's operators, not on our
    /// fused kernel (used only where the CPU has AVX-512).
    #[arg(long)]
    pub cpu_ort_group_norm: bool,
}

impl CpuFlags {
    pub fn options(&self) -> CpuOptions {
        CpuOptions {
            threads: self.threads,
            idle_spin: self.cpu_spin,
            no_amx: self.cpu_no_amx,
            ort_attention: self.cpu_ort_attention,
            ort_group_norm: self.cpu_ort_group_norm,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    /// Bundle directory written by llamagen-compile.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Comma-separated class labels, one image each.
    #[arg(long, value_delimiter = ',', default_value = "207")]
    pub labels: Vec<usize>,
    /// Guidance scale [default: 4 for LlamaGen, 1.5 for VAR].
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f32>,
    /// Guidance off for decode steps after this one; -1 = always on.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub cfg_interval: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Top-k (0 = off) [default: 2000 for LlamaGen, 900 for VAR].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p [default: 1.0 (off) for LlamaGen, 0.96 for VAR, where 0 is also off].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// cuda: issue the decode step's launches per token instead of replaying a CUDA graph.
    #[arg(long)]
    pub no_cuda_graph: bool,
    /// cuda: which GPU (ordinal).
    #[arg(long, default_value_t = 0)]
    pub cuda_device: usize,
    #[command(flatten)]
    pub cpu: CpuFlags,
    /// Skip the sha256 check of the bundle's files on load.
    #[arg(long)]
    pub no_verify: bool,
}

impl RunFlags {
    /// The request, with the sampling defaults of the bundle's family where a flag is absent
    /// (a default top-k is clamped to the vocabulary; an explicit one is checked against it).
    pub fn request(&self, m: &Manifest) -> GenerateRequest {
        let (cfg, top_k, top_p) = match m.family {
            ModelFamily::LlamagenC2i => (4.0, 2000, 1.0),
            ModelFamily::Var => (1.5, 900, 0.96),
        };
        let top_k = top_k.min(m.vocab_size());
        GenerateRequest {
            labels: self.labels.clone(),
            cfg_scale: self.cfg_scale.unwrap_or(cfg),
            cfg_interval: self.cfg_interval,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k.unwrap_or(top_k),
                top_p: self.top_p.unwrap_or(top_p),
            },
            seed: self.seed,
        }
    }

    /// The bundle's manifest (no verification: loading verifies).
    pub fn manifest(&self) -> anyhow::Result<Manifest> {
        Ok(llamagen_runtime::load_manifest(&self.bundle, false)?)
    }

    /// The backend with the options its flags give.
    pub fn backend(&self) -> BackendChoice {
        let cuda = CudaOptions {
            device: self.cuda_device,
            graph: !self.no_cuda_graph,
            // The attention (LLAMAGEN_CUDA_ATTENTION, else fused) and the decode GEMM
            // (LLAMAGEN_CUDA_DECODE_GEMM, else cublas).
            ..CudaOptions::default()
        };
        match self.backend {
            BackendArg::Cpu => BackendChoice::Cpu(self.cpu.options()),
            BackendArg::Cuda => BackendChoice::Cuda(cuda),
            BackendArg::CudaEmu => BackendChoice::CudaEmu(cuda),
        }
    }

    /// Loads the bundle on the chosen backend.
    pub fn load(&self) -> anyhow::Result<Pipeline> {
        let opts = PipelineOptions {
            backend: self.backend(),
            verify_hashes: !self.no_verify,
            ..PipelineOptions::default()
        };
        Ok(Pipeline::load(&self.bundle, &opts)?)
    }
}
