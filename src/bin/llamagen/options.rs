//! Flags shared by `generate` and `bench` (names and defaults as the official sample_c2i.py).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use llamagen_runtime::{
    BackendChoice, CpuOptions, CudaOptions, GenerateRequest, Pipeline, PipelineOptions,
    SamplingOptions,
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

#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    /// Bundle directory written by llamagen-compile.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Comma-separated class labels, one image each.
    #[arg(long, value_delimiter = ',', default_value = "207")]
    pub labels: Vec<usize>,
    #[arg(long, default_value_t = 4.0, allow_negative_numbers = true)]
    pub cfg_scale: f32,
    /// Guidance off for decode steps after this one; -1 = always on.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub cfg_interval: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, default_value_t = 2000)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
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
    /// cpu: intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip the sha256 check of the bundle's files on load.
    #[arg(long)]
    pub no_verify: bool,
}

impl RunFlags {
    pub fn request(&self) -> GenerateRequest {
        GenerateRequest {
            labels: self.labels.clone(),
            cfg_scale: self.cfg_scale,
            cfg_interval: self.cfg_interval,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            seed: self.seed,
        }
    }

    /// The backend with the options its flags give.
    pub fn backend(&self) -> BackendChoice {
        let cuda = CudaOptions {
            device: self.cuda_device,
            graph: !self.no_cuda_graph,
        };
        match self.backend {
            BackendArg::Cpu => BackendChoice::Cpu(CpuOptions {
                threads: self.threads,
            }),
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
