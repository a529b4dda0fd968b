//! `llamagen serve`: the bundle behind an HTTP API with request batching (llamagen-serve).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;
use llamagen_runtime::{CudaOptions, Pipeline, PipelineOptions};
use llamagen_serve::ServeOptions;

use crate::options::{BackendArg, CpuFlags};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Bundle directory written by llamagen-compile.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Most labels (images) one batch holds; requests with identical sampling options that
    /// wait together share a batch. 1 = one request at a time.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Most requests waiting; more are answered 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Wait this long after a request arrives for others to batch with it (0 = only those that
    /// arrived while the previous batch ran).
    #[arg(long, default_value_t = 0)]
    pub batch_window_ms: u64,
    /// Most labels one request may carry.
    #[arg(long, default_value_t = PipelineOptions::DEFAULT_MAX_LABELS)]
    pub max_labels: usize,
    #[command(flatten)]
    pub cpu: CpuFlags,
    /// cuda: which GPU (ordinal).
    #[arg(long, default_value_t = 0)]
    pub cuda_device: usize,
    /// Skip the sha256 check of the bundle's files on load.
    #[arg(long)]
    pub no_verify: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cuda = CudaOptions {
        device: a.cuda_device,
        graph: true,
        // The attention (LLAMAGEN_CUDA_ATTENTION, else fused) and the decode GEMM
        // (LLAMAGEN_CUDA_DECODE_GEMM, else cublas).
        ..CudaOptions::default()
    };
    let backend = match a.backend {
        BackendArg::Cpu => llamagen_runtime::BackendChoice::Cpu(a.cpu.options()),
        BackendArg::Cuda => llamagen_runtime::BackendChoice::Cuda(cuda),
        BackendArg::CudaEmu => llamagen_runtime::BackendChoice::CudaEmu(cuda),
    };
    let opts = PipelineOptions {
        backend,
        verify_hashes: !a.no_verify,
        max_labels: a.max_labels,
    };
    let pipeline = Arc::new(Pipeline::load(&a.bundle, &opts)?);
    let serve = ServeOptions {
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        batch_window: Duration::from_millis(a.batch_window_ms),
    };
    llamagen_serve::run_blocking(pipeline, &a.addr, serve, |addr| {
        println!("listening on http://{addr}");
    })?;
    println!("drained, exiting");
    Ok(())
}
