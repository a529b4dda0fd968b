//! `llamagen-compile`: official LlamaGen checkpoints (or random weights) -> a bundle directory.
//! Flag names and defaults mirror the official `autoregressive/sample/sample_c2i.py`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use llamagen_calib::{CalibSet, Method};
use llamagen_compiler::bundle::Precision;
use llamagen_compiler::calibrated::{compile_calibrated, Int8Activations, Step};
use llamagen_compiler::compile::{CompileOptions, Progress, Weights};

#[derive(Parser, Debug)]
#[command(
    name = "llamagen-compile",
    version,
    about = "Compile LlamaGen checkpoints into an ONNX bundle"
)]
struct Args {
    /// GPT size: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B.
    #[arg(long, default_value = "GPT-B")]
    gpt_model: String,
    /// Official GPT checkpoint (.pt or .safetensors).
    #[arg(long, required_unless_present = "random_weights")]
    gpt_ckpt: Option<PathBuf>,
    /// Condition type; only class-conditional (c2i) models are supported so far.
    #[arg(long, default_value = "c2i")]
    gpt_type: String,
    /// VQ tokenizer: VQ-16 or VQ-8.
    #[arg(long, default_value = "VQ-16")]
    vq_model: String,
    /// Official VQ checkpoint (.pt or .safetensors).
    #[arg(long, required_unless_present = "random_weights")]
    vq_ckpt: Option<PathBuf>,
    #[arg(long, default_value_t = 384)]
    image_size: usize,
    /// Must match the VQ model (16 for VQ-16, 8 for VQ-8).
    #[arg(long)]
    downsample_size: Option<usize>,
    #[arg(long, default_value_t = 16384)]
    codebook_size: usize,
    #[arg(long, default_value_t = 8)]
    codebook_embed_dim: usize,
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    #[arg(long, default_value_t = 1)]
    cls_token_num: usize,
    /// fp32, fp16 or int8. fp16/int8 bundles are measured against fp32 on the calibration set
    /// (figures in bundle.yaml); int8 also calibrates activation scales on it.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    precision: PrecisionArg,
    /// Calibration set (YAML: labels, seeds, samples, sampling); default: the 16-class set
    /// shipped in calib/imagenet-classes.yaml.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Activation-scale estimator for int8: entropy (TensorRT's KL search), percentile
    /// (99.99, or percentile:P) or max.
    #[arg(long, default_value = "entropy", value_parser = |s: &str| s.parse::<Method>())]
    calib_method: Method,
    /// int8 activations: weights-only (f32 activations; fastest and most accurate on CPU here)
    /// or qdq (calibrated Q/DQ on every GEMM/conv input: TensorRT explicit quantization).
    #[arg(long, value_enum, default_value_t = ActivationsArg::WeightsOnly)]
    int8_activations: ActivationsArg,
    /// Use seeded random weights instead of checkpoints (demos, latency benchmarks).
    #[arg(long, conflicts_with_all = ["gpt_ckpt", "vq_ckpt"])]
    random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bundle directory to create (replaced atomically if it is an existing bundle).
    #[arg(long)]
    out: PathBuf,
}

/// `--precision`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Fp16,
    Int8,
}

/// `--int8-activations`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ActivationsArg {
    /// f32 activations, int8 weights.
    WeightsOnly,
    /// Calibrated Q/DQ on every GEMM/conv input.
    Qdq,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    if a.gpt_type != "c2i" {
        anyhow::bail!(
            "--gpt-type {}: only class-conditional (c2i) models are supported so far",
            a.gpt_type
        );
    }
    if a.cls_token_num != 1 {
        anyhow::bail!(
            "--cls-token-num {}: class-conditional models use one condition token (the official generate() feeds exactly one)",
            a.cls_token_num
        );
    }
    let weights = match (a.random_weights, a.gpt_ckpt, a.vq_ckpt) {
        (true, _, _) => Weights::Random { seed: a.seed },
        (false, Some(gpt), Some(vq)) => {
            for (flag, p) in [("--gpt-ckpt", &gpt), ("--vq-ckpt", &vq)] {
                if !p.is_file() {
                    anyhow::bail!("{flag} {}: no such file", p.display());
                }
            }
            Weights::Checkpoints { gpt, vq }
        }
        _ => anyhow::bail!("give --gpt-ckpt and --vq-ckpt, or --random-weights"),
    };
    let opts = CompileOptions {
        gpt_model: a.gpt_model,
        vq_model: a.vq_model,
        weights,
        image_size: a.image_size,
        downsample_size: a.downsample_size,
        codebook_size: a.codebook_size,
        codebook_embed_dim: a.codebook_embed_dim,
        num_classes: a.num_classes,
        cls_token_num: a.cls_token_num,
        precision: match a.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp16 => Precision::Fp16,
            PrecisionArg::Int8 => Precision::Int8,
        },
        activation_scales: None,
        probes: false,
        out: a.out,
    };
    let set = match &a.calib {
        Some(path) => CalibSet::load(path)?,
        None => CalibSet::default_set(),
    };
    let method = a.calib_method;
    let activations = match a.int8_activations {
        ActivationsArg::WeightsOnly => Int8Activations::WeightOnly,
        ActivationsArg::Qdq => Int8Activations::Qdq,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let show = |what: &str, done: usize, total: usize| {
        bar.set_message(what.to_string());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let manifest = compile_calibrated(&opts, &set, method, activations, &mut |step| match step {
        Step::Stage(s) | Step::Compile(Progress::Stage(s)) => bar.set_message(s.to_string()),
        Step::Compile(Progress::Weights { done, total }) => show("writing tensors", done, total),
        Step::Sample { done, total } => show("samples", done, total),
    })?;
    bar.finish_and_clear();
    let accuracy = manifest.precision_details.accuracy_vs_fp32;
    for (k, v) in accuracy.iter().flat_map(|a| a.figures()) {
        println!("{k:<20} {v:.6} (vs fp32 on calibration set '{}')", set.name);
    }
    let mb = manifest.total_bytes() as f64 / 1e6;
    println!(
        "wrote {} ({} + {}, {}, {:.1} MB)",
        opts.out.display(),
        manifest.gpt.name,
        manifest.vq.name,
        manifest.precision,
        mb
    );
    Ok(())
}
