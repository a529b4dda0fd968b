//! `llamagen-compile`: official LlamaGen or VAR checkpoints (or random weights) -> a bundle
//! directory. LlamaGen flag names and defaults mirror the official
//! `autoregressive/sample/sample_c2i.py`; `--var-model` selects a VAR model instead.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use llamagen_calib::{CalibSet, Method};
use llamagen_compiler::bundle::Precision;
use llamagen_compiler::calibrated::{compile_calibrated, Int8Activations, Step};
use llamagen_compiler::compile::{CompileOptions, Progress, Weights};
use llamagen_compiler::compile_var::{compile_var, VarCompileOptions, VarWeights};

#[derive(Parser, Debug)]
#[command(
    name = "llamagen-compile",
    version,
    about = "Compile LlamaGen or VAR checkpoints into an ONNX bundle"
)]
struct Args {
    /// GPT size: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B.
    #[arg(long, default_value = "GPT-B")]
    gpt_model: String,
    /// Official GPT checkpoint (.pt or .safetensors).
    #[arg(long, required_unless_present_any = ["random_weights", "var_model"])]
    gpt_ckpt: Option<PathBuf>,
    /// Condition type; only class-conditional (c2i) models are supported so far.
    #[arg(long, default_value = "c2i")]
    gpt_type: String,
    /// VQ tokenizer: VQ-16 or VQ-8.
    #[arg(long, default_value = "VQ-16")]
    vq_model: String,
    /// Official VQ checkpoint (.pt or .safetensors).
    #[arg(long, required_unless_present_any = ["random_weights", "var_model"])]
    vq_ckpt: Option<PathBuf>,
    /// Image side in pixels: 384 by default for LlamaGen; for VAR it follows from patch_nums
    /// (16 x the last) and a different value is an error.
    #[arg(long)]
    image_size: Option<usize>,
    /// VAR instead of LlamaGen: d16, d20, d24, d30, d36 (or VAR-d16 ...), or a YAML file of
    /// `VAR(...)`'s argument names (depth, embed_dim, num_heads, mlp_ratio, num_classes,
    /// patch_nums, attn_l2_norm, shared_aln, norm_eps).
    #[arg(long, conflicts_with_all = ["gpt_ckpt", "vq_ckpt"])]
    var_model: Option<String>,
    /// Official VAR checkpoint (var_d16.pth ...), with --var-model.
    #[arg(long, requires = "var_model")]
    var_ckpt: Option<PathBuf>,
    /// Official VQVAE checkpoint (vae_ch160v4096z32.pth), with --var-model.
    #[arg(long, requires = "var_model")]
    vae_ckpt: Option<PathBuf>,
    /// The VQVAE of a VAR model: default the released one, or a YAML file of `VQVAE(...)`'s
    /// argument names (vocab_size, z_channels, ch, share_quant_resi, quant_resi, v_patch_nums).
    #[arg(long, requires = "var_model")]
    vae_model: Option<String>,
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
    /// Activation-scale estimator for LlamaGen int8: entropy (TensorRT's KL search; the
    /// default), percentile (99.99, or percentile:P) or max.
    #[arg(long, value_parser = |s: &str| s.parse::<Method>())]
    calib_method: Option<Method>,
    /// int8 activations: weights-only (f32 activations), qdq (calibrated Q/DQ on every GEMM/conv
    /// input: TensorRT explicit quantization), dynamic (GEMM inputs quantized at run time), or,
    /// for VAR, dynamic-convs (dynamic, plus the decoder's convolutions on int8 activations
    /// with ranges calibrated on --calib: the fastest on CPU).
    #[arg(long, value_enum, default_value_t = ActivationsArg::WeightsOnly)]
    int8_activations: ActivationsArg,
    /// Use seeded random weights instead of checkpoints (demos, latency benchmarks).
    #[arg(long, conflicts_with_all = ["gpt_ckpt", "vq_ckpt", "var_ckpt", "vae_ckpt"])]
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
    /// GEMM inputs quantized per tensor at run time (ONNX Runtime's int8 GEMM; fastest on CPUs
    /// with int8 dot products); convolutions weight-only.
    Dynamic,
    /// VAR: `dynamic`, and the decoder's convolutions on int8 activations (calibrated u8
    /// ranges of each input and output; ONNX Runtime's QLinearConv).
    DynamicConvs,
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

fn precision(p: PrecisionArg) -> Precision {
    match p {
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Fp16 => Precision::Fp16,
        PrecisionArg::Int8 => Precision::Int8,
    }
}

/// Each checkpoint flag names an existing file.
fn require_files(files: [(&str, &PathBuf); 2]) -> anyhow::Result<()> {
    for (flag, p) in files {
        if !p.is_file() {
            anyhow::bail!("{flag} {}: no such file", p.display());
        }
    }
    Ok(())
}

/// The closing line: what was written where.
fn print_written(out: &std::path::Path, m: &llamagen_compiler::bundle::Manifest) {
    println!(
        "wrote {} ({} + {}, {}, {:.1} MB)",
        out.display(),
        m.model_name(),
        m.vq.name,
        m.precision,
        m.total_bytes() as f64 / 1e6
    );
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn run(a: Args) -> anyhow::Result<()> {
    if let Some(model) = a.var_model.clone() {
        return run_var(a, model);
    }
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
            require_files([("--gpt-ckpt", &gpt), ("--vq-ckpt", &vq)])?;
            Weights::Checkpoints { gpt, vq }
        }
        _ => anyhow::bail!("give --gpt-ckpt and --vq-ckpt, or --random-weights"),
    };
    let opts = CompileOptions {
        gpt_model: a.gpt_model,
        vq_model: a.vq_model,
        weights,
        image_size: a.image_size.unwrap_or(384),
        downsample_size: a.downsample_size,
        codebook_size: a.codebook_size,
        codebook_embed_dim: a.codebook_embed_dim,
        num_classes: a.num_classes,
        cls_token_num: a.cls_token_num,
        precision: precision(a.precision),
        activation_scales: None,
        probes: false,
        dynamic_int8: false,
        out: a.out,
    };
    let set = match &a.calib {
        Some(path) => CalibSet::load(path)?,
        None => CalibSet::default_set(),
    };
    let method = a.calib_method.unwrap_or(Method::Entropy);
    let activations = match a.int8_activations {
        ActivationsArg::WeightsOnly => Int8Activations::WeightOnly,
        ActivationsArg::Qdq => Int8Activations::Qdq,
        ActivationsArg::Dynamic => Int8Activations::Dynamic,
        ActivationsArg::DynamicConvs => anyhow::bail!(
            "--int8-activations dynamic-convs: VAR bundles only so far (LlamaGen: weights-only, \
             qdq or dynamic)"
        ),
    };
    let bar = progress_bar();
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
    print_written(&opts.out, &manifest);
    Ok(())
}

/// `--var-model`: a VAR bundle (a calibration set only for `--int8-activations dynamic-convs`).
fn run_var(a: Args, model: String) -> anyhow::Result<()> {
    let convs = matches!(a.int8_activations, ActivationsArg::DynamicConvs);
    if matches!(a.int8_activations, ActivationsArg::Qdq) {
        anyhow::bail!(
            "--int8-activations qdq: VAR bundles take weights-only, dynamic or dynamic-convs"
        );
    }
    if a.calib.is_some() && !convs {
        anyhow::bail!("--calib: VAR bundles calibrate only with --int8-activations dynamic-convs");
    }
    if a.calib_method.is_some() {
        anyhow::bail!(
            "--calib-method: VAR's calibrated convolutions use the min and max of each input and \
             output; the estimators apply to LlamaGen's activation scales"
        );
    }
    let conv_calibration = match (convs, &a.calib) {
        (false, _) => None,
        (true, Some(path)) => Some(CalibSet::load(path)?),
        (true, None) => Some(CalibSet::default_set()),
    };
    let weights = match (a.random_weights, a.var_ckpt, a.vae_ckpt) {
        (true, _, _) => VarWeights::Random { seed: a.seed },
        (false, Some(var), Some(vae)) => {
            require_files([("--var-ckpt", &var), ("--vae-ckpt", &vae)])?;
            VarWeights::Checkpoints { var, vae }
        }
        _ => anyhow::bail!("give --var-ckpt and --vae-ckpt, or --random-weights"),
    };
    let opts = VarCompileOptions {
        var_model: model,
        vae_model: a.vae_model,
        weights,
        image_size: a.image_size,
        precision: precision(a.precision),
        dynamic_int8: matches!(
            a.int8_activations,
            ActivationsArg::Dynamic | ActivationsArg::DynamicConvs
        ),
        conv_calibration,
        out: a.out,
    };
    let bar = progress_bar();
    let manifest = compile_var(&opts, &mut |p| match p {
        Progress::Stage(s) => bar.set_message(s.to_string()),
        Progress::Weights { done, total } => {
            bar.set_message("writing tensors");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    for (k, v) in manifest
        .precision_details
        .accuracy_vs_fp32
        .iter()
        .flat_map(|a| a.figures())
    {
        println!("{k:<20} {v:.6} (vs fp32, 2 labels, cfg 1.5)");
    }
    print_written(&opts.out, &manifest);
    Ok(())
}
