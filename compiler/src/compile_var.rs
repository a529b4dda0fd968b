//! The VAR compile driver: `--var-model` / `--var-ckpt` / `--vae-ckpt` -> a verified bundle of
//! four graphs (`var_cond`, `var_step`, `var_embed`, `vq_decoder`; see `models::var`).
//!
//! fp16 and int8 (weight-only, per output channel) go through the same precision emitter as
//! LlamaGen; the embed graph stays f32 (it is small and feeds every scale). A lower-precision
//! bundle is measured against an fp32 compile of the same weights (`llamagen compare`:
//! teacher-forced logits and images) and the figures are written into its bundle.yaml.
//!
//! int8 with a calibration set ([`VarCompileOptions::conv_calibration`]) also runs the decoder's
//! convolutions on int8 activations: the fp32 reference is built with every convolution's input
//! and output as a probe, generates the set's images, and the ranges it saw
//! ([`crate::conv_calibration`]) become u8 Q/DQ pairs around each convolution (ONNX Runtime's
//! QLinearConv). The ranges ship in the bundle as [`CONV_RANGES_FILE`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use llamagen_bundle::files::{check_out, hash_files, parent_dir, replace_dir, write_manifest};
use llamagen_bundle::manifest::{CalibrationInfo, GenerationInfo, PrecisionDetails};
use llamagen_bundle::{
    load_manifest, GraphRole, Manifest, ModelFamily, Precision, VarConfig, VqConfig, SCHEMA_VERSION,
};
use llamagen_calib::CalibSet;
use llamagen_runtime::compare::compare;
use llamagen_runtime::{GenerateRequest, Pipeline, PipelineOptions, SamplingOptions};

use crate::bundle::{write_bundle, BundleGraph};
use crate::calibrated::report_figures;
use crate::checkpoint::Checkpoint;
use crate::compile::Progress;
use crate::config::{vae_arch, var_arch};
use crate::models::precision::{expose_probes, ConvRanges, Emitter, OpPrecision};
use crate::models::var::keys::VarAndVae;
use crate::models::{var, CheckpointWeights, RandomWeights, WeightSource};
use crate::Error;

/// Where VAR weights come from.
#[derive(Clone, Debug)]
pub enum VarWeights {
    /// `var_d*.pth` and `vae_ch160v4096z32.pth` (or files of the same format).
    Checkpoints {
        var: PathBuf,
        vae: PathBuf,
    },
    Random {
        seed: u64,
    },
}

#[derive(Clone, Debug)]
pub struct VarCompileOptions {
    /// `d16` .. `d36`, `VAR-d16`, or a YAML of `VAR(...)`'s argument names.
    pub var_model: String,
    /// A YAML of `VQVAE(...)`'s argument names; None = the released VQVAE.
    pub vae_model: Option<String>,
    pub weights: VarWeights,
    /// Must equal 16 x the last patch side when given.
    pub image_size: Option<usize>,
    pub precision: Precision,
    /// int8: quantize GEMM activations per tensor at run time instead of weight-only.
    pub dynamic_int8: bool,
    /// int8: calibrate the decoder's convolutions on this set and run them on int8
    /// activations (module doc); None: convolutions weight-only.
    pub conv_calibration: Option<CalibSet>,
    pub out: PathBuf,
}

pub use crate::conv_calibration::CONV_RANGES_FILE;

/// What a build adds to the graphs beyond the options: calibration probes on the decoder's
/// convolutions, or the ranges that make them int8.
#[derive(Default)]
struct DecoderExtras {
    probe_convs: bool,
    conv_ranges: Option<Arc<ConvRanges>>,
}

/// Resolves the transformer and decoder configs (no file is touched).
pub fn resolve_var_configs(o: &VarCompileOptions) -> Result<(VarConfig, VqConfig), Error> {
    let arch = var_arch(&o.var_model)?;
    let vae = vae_arch(o.vae_model.as_deref())?;
    let c = VarConfig::new(&arch, &vae)?;
    if let Some(size) = o.image_size {
        if size != c.image_size {
            return Err(Error::InvalidOption {
                option: "--image-size",
                reason: format!(
                    "{size} disagrees with {}: patch_nums {:?} end at {} tokens a side, so \
                     images are {} px",
                    c.name,
                    c.patch_nums,
                    c.last_side(),
                    c.image_size
                ),
            });
        }
    }
    let vq = c.decoder_config(&vae);
    Ok((c, vq))
}

/// Compiles a VAR bundle at `o.out`; lower precisions are measured against fp32 first.
pub fn compile_var(
    o: &VarCompileOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Manifest, Error> {
    let calibration = match (&o.conv_calibration, o.precision) {
        (None, _) => None,
        (Some(set), Precision::Int8) => Some(set),
        (Some(_), p) => {
            return Err(Error::InvalidOption {
                option: "--int8-activations",
                reason: format!("calibrated int8 convolutions need --precision int8, not {p}"),
            })
        }
    };
    if let Some(set) = calibration {
        let (c, _) = resolve_var_configs(o)?;
        set.validate(c.num_classes)
            .map_err(|e| Error::InvalidOption {
                option: "--calib",
                reason: e.to_string(),
            })?;
    }
    if o.precision == Precision::Fp32 {
        return write_var(o, &DecoderExtras::default(), progress);
    }
    check_out(&o.out)?;
    let parent = parent_dir(&o.out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".llamagen-var-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    progress(Progress::Stage("compiling the fp32 reference"));
    let reference_dir = staging.path().join("fp32");
    let probes = DecoderExtras {
        probe_convs: calibration.is_some(),
        conv_ranges: None,
    };
    write_var(
        &VarCompileOptions {
            precision: Precision::Fp32,
            out: reference_dir.clone(),
            ..o.clone()
        },
        &probes,
        progress,
    )?;
    let load = PipelineOptions {
        verify_hashes: false,
        ..PipelineOptions::default()
    };
    let reference = Pipeline::load(&reference_dir, &load)?;
    let mut extras = DecoderExtras::default();
    if let Some(set) = calibration {
        progress(Progress::Stage("calibrating the decoder's convolutions"));
        let ranges = crate::conv_calibration::conv_ranges(&reference, set, &mut |done, total| {
            progress(Progress::Stage(&format!(
                "calibrating the decoder's convolutions: sample {done} of {total}"
            )))
        })?;
        tracing::info!(tensors = ranges.len(), "convolution ranges calibrated");
        extras.conv_ranges = Some(Arc::new(ranges));
    }
    let low_dir = staging.path().join("bundle");
    write_var(
        &VarCompileOptions {
            out: low_dir.clone(),
            ..o.clone()
        },
        &extras,
        progress,
    )?;
    progress(Progress::Stage("measuring against fp32"));
    let low = Pipeline::load(&low_dir, &load)?;
    let report = compare(&low, &reference, &measure_request(reference.manifest()))?;
    drop((low, reference));
    let mut manifest =
        load_manifest(&low_dir, false).map_err(llamagen_runtime::RuntimeError::from)?;
    manifest.precision_details.accuracy_vs_fp32 = Some(report_figures(&report));
    if let (Some(set), Some(ranges)) = (calibration, &extras.conv_ranges) {
        let path = low_dir.join(CONV_RANGES_FILE);
        let json = crate::conv_calibration::ranges_json(ranges);
        std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
        manifest.precision_details.calibration = Some(CalibrationInfo {
            set: set.name.clone(),
            method: "min and max of each convolution's input and output (asymmetric u8)".into(),
            samples: set.requests().len(),
            files: vec![CONV_RANGES_FILE.into()],
        });
    }
    manifest.files = hash_files(&low_dir)?;
    write_manifest(&low_dir, &manifest)?;
    replace_dir(&low_dir, &o.out)?;
    Ok(manifest)
}

/// Two labels spread over the classes, the FID settings (cfg 1.5, top-k 900, top-p 0.96).
fn measure_request(m: &Manifest) -> GenerateRequest {
    let classes = m.num_classes();
    GenerateRequest {
        labels: vec![0, classes / 2],
        cfg_scale: 1.5,
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_k: 900.min(m.vocab_size()),
            top_p: 0.96,
        },
        seed: 0,
    }
}

fn write_var(
    o: &VarCompileOptions,
    extras: &DecoderExtras,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Manifest, Error> {
    let (c, vq) = resolve_var_configs(o)?;
    let _span = tracing::info_span!(
        "compile_var",
        var = %c.name,
        image_size = c.image_size,
        precision = %o.precision,
        out = %o.out.display()
    )
    .entered();
    let mut sources = BTreeMap::new();
    let (var_src, vae_src): (Arc<dyn WeightSource>, Arc<dyn WeightSource>) = match &o.weights {
        VarWeights::Checkpoints { var, vae } => {
            progress(Progress::Stage("opening checkpoints"));
            sources.insert("var".into(), var.display().to_string());
            sources.insert("vae".into(), vae.display().to_string());
            (
                Arc::new(CheckpointWeights(Checkpoint::open(var)?)),
                Arc::new(CheckpointWeights(Checkpoint::open(vae)?)),
            )
        }
        VarWeights::Random { seed } => {
            for k in ["var", "vae"] {
                sources.insert(k.into(), format!("random(seed={seed})"));
            }
            let r: Arc<dyn WeightSource> = Arc::new(RandomWeights::new(*seed));
            (Arc::clone(&r), r)
        }
    };
    progress(Progress::Stage("building graphs"));
    let precision = match o.precision {
        Precision::Fp32 => OpPrecision::Fp32,
        Precision::Fp16 => OpPrecision::Fp16,
        Precision::Int8 => OpPrecision::Int8(None),
    };
    let both: Arc<dyn WeightSource> = Arc::new(VarAndVae {
        var: Arc::clone(&var_src),
        vae: Arc::clone(&vae_src),
    });
    let mut cond_em = Emitter::new(precision.clone(), Arc::clone(&var_src));
    cond_em.dynamic_activations = o.dynamic_int8;
    let cond = var::build_cond_graph(&c, &mut cond_em)?;
    let mut step_em = Emitter::new(precision.clone(), var_src);
    step_em.dynamic_activations = o.dynamic_int8;
    let step = var::build_step_graph(&c, &mut step_em)?;
    let mut embed_em = Emitter::new(OpPrecision::Fp32, both);
    let embed = var::build_embed_graph(&c, &mut embed_em)?;
    let mut vq_em = Emitter::new(precision.clone(), vae_src);
    vq_em.dynamic_activations = o.dynamic_int8;
    vq_em.probe_conv_outputs = extras.probe_convs;
    vq_em.conv_ranges = extras.conv_ranges.clone();
    let mut decoder = var::build_decoder_graph(&vq, &mut vq_em)?;
    let mut probe_tensors = BTreeMap::new();
    if extras.probe_convs {
        for p in &vq_em.probes {
            probe_tensors.insert(p.op.clone(), decoder.value(p.input).name.clone());
        }
        expose_probes(&mut decoder, &vq_em.probes);
    }

    let mut roles = BTreeMap::new();
    roles.insert(
        "request".into(),
        "once per request: var_cond(labels) gives adaln, which every var_step reads".into(),
    );
    roles.insert(
        "scale".into(),
        "for scale s: var_embed(tokens, scales_done = s, labels) gives inputs_embeds, whose \
         block s (tokens begin(s)..end(s)) is var_step's input (with adaln) at position = \
         begin(s); write present_* at position; logits are CFG-combined \
         (1 + t) cond - t uncond with t = cfg * s / (S - 1), the batch being \
         [labels; null class]"
            .into(),
    );
    roles.insert(
        "decode".into(),
        "var_embed(tokens, scales_done = S) gives f_hat; vq_decoder(f_hat) gives the image in \
         about [-1, 1] (clamp, then (x + 1) / 2)"
            .into(),
    );
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        tool_version: format!("llamagen-rs {}", env!("CARGO_PKG_VERSION")),
        family: ModelFamily::Var,
        precision: o.precision,
        sources,
        generation: GenerationInfo {
            class_token_offset: 0,
            null_class: c.num_classes,
            tokens_per_image: c.tokens,
            image_size: c.image_size,
            roles,
        },
        gpt: None,
        var: Some(c),
        vq,
        graphs: BTreeMap::new(),
        files: BTreeMap::new(),
        precision_details: PrecisionDetails {
            higher_precision: higher_precision(
                &precision,
                o.dynamic_int8,
                extras.conv_ranges.is_some(),
            ),
            probe_tensors,
            ..Default::default()
        },
    };
    progress(Progress::Stage("writing weights"));
    let graphs = [
        BundleGraph {
            role: GraphRole::VarCond,
            stem: "var_cond",
            graph: &cond,
        },
        BundleGraph {
            role: GraphRole::VarStep,
            stem: "var_step",
            graph: &step,
        },
        BundleGraph {
            role: GraphRole::VarEmbed,
            stem: "var_embed",
            graph: &embed,
        },
        BundleGraph {
            role: GraphRole::VqDecoder,
            stem: "vq",
            graph: &decoder,
        },
    ];
    write_bundle(&o.out, &graphs, manifest, &mut |done, total| {
        progress(Progress::Weights { done, total })
    })
}

/// What stays above the bundle's precision, and why (recorded in bundle.yaml).
fn higher_precision(p: &OpPrecision, dynamic: bool, int8_convs: bool) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    if matches!(p, OpPrecision::Fp32) {
        return kept;
    }
    let f32_ops = "f32 by design: accuracy, and cheap next to the weight-bearing operators";
    for what in [
        "layer_norm",
        "ada_ln_modulation",
        "l2_norm",
        "softmax",
        "group_norm",
        "residual_adds",
        "logits",
    ] {
        kept.insert(what.to_string(), f32_ops.to_string());
    }
    kept.insert(
        "var_embed".into(),
        "f32 graph: the between-scale work (codebook, resampling, phi, word_embed) is small and \
         feeds every scale"
            .into(),
    );
    kept.insert(
        "class_emb".into(),
        "f16 table in var_cond (a gather: nothing to compute in int8)".into(),
    );
    if let OpPrecision::Int8(None) = p {
        let note = crate::compile::int8_activations_note(dynamic, int8_convs);
        kept.insert("activations".into(), note);
    }
    kept
}
