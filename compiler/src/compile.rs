//! The compile driver: options as in the official `sample_c2i.py` -> a verified bundle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bundle::manifest::GenerationInfo;
use crate::bundle::manifest::PrecisionDetails;
use crate::bundle::{
    write_bundle, BundleGraph, GraphRole, Manifest, ModelFamily, Precision, SCHEMA_VERSION,
};
use crate::checkpoint::Checkpoint;
use crate::config::{gpt_arch, vq_arch, GptConfig, VqConfig};
use crate::models::precision::{expose_probes, ActivationScales, ConvRanges, Emitter, OpPrecision};
use crate::models::{gpt, vq, CheckpointWeights, RandomWeights, WeightSource};
use crate::Error;

/// Where weights come from.
#[derive(Clone, Debug)]
pub enum Weights {
    Checkpoints { gpt: PathBuf, vq: PathBuf },
    Random { seed: u64 },
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub gpt_model: String,
    pub vq_model: String,
    pub weights: Weights,
    pub image_size: usize,
    /// Must match the VQ model's factor when given.
    pub downsample_size: Option<usize>,
    pub codebook_size: usize,
    pub codebook_embed_dim: usize,
    pub num_classes: usize,
    pub cls_token_num: usize,
    pub precision: Precision,
    /// Calibrated activation scales for int8 (operator name -> scale): Q/DQ activations where a
    /// scale exists. None: weight-only int8 (f32 activations).
    pub activation_scales: Option<ActivationScales>,
    /// Expose every weight-bearing operator's input as an extra `probe.<op>` output (the fp32
    /// graphs that calibration runs).
    pub probes: bool,
    /// int8 without scales: quantize every GEMM's activations per tensor at run time
    /// (`DynamicQuantizeLinear` + `MatMulInteger`) instead of weight-only.
    pub dynamic_int8: bool,
    /// With `probes`: also expose every convolution's output (calibrating int8 convolutions).
    pub probe_conv_outputs: bool,
    /// int8: the VQ decoder's convolutions with both ranges here run on int8 activations
    /// (see `models::precision`).
    pub conv_ranges: Option<ConvRanges>,
    pub out: PathBuf,
}

impl Default for CompileOptions {
    /// The official sample_c2i.py defaults (image size 256 as the c2i_B_256 release).
    fn default() -> Self {
        CompileOptions {
            gpt_model: "GPT-B".into(),
            vq_model: "VQ-16".into(),
            weights: Weights::Random { seed: 0 },
            image_size: 256,
            downsample_size: None,
            codebook_size: 16384,
            codebook_embed_dim: 8,
            num_classes: 1000,
            cls_token_num: 1,
            precision: Precision::Fp32,
            activation_scales: None,
            probes: false,
            dynamic_int8: false,
            probe_conv_outputs: false,
            conv_ranges: None,
            out: PathBuf::from("bundle"),
        }
    }
}

impl CompileOptions {
    /// The precision of the weight-bearing operators (int8 with the calibrated scales).
    pub fn precision_mode(&self) -> OpPrecision {
        match self.precision {
            Precision::Fp32 => OpPrecision::Fp32,
            Precision::Fp16 => OpPrecision::Fp16,
            Precision::Int8 => {
                OpPrecision::Int8(self.activation_scales.clone().map(std::sync::Arc::new))
            }
        }
    }
}

/// What stays in higher precision than the bundle's, and why (recorded in bundle.yaml).
fn higher_precision(
    p: &OpPrecision,
    dynamic: bool,
    emitters: [&Emitter; 2],
) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    if matches!(p, OpPrecision::Fp32) {
        return kept;
    }
    let f32_ops = "f32 by design: accuracy, and cheap next to the weight-bearing operators";
    for what in [
        "rms_norm",
        "softmax",
        "rotary",
        "group_norm",
        "residual_adds",
        "logits",
    ] {
        kept.insert(what.to_string(), f32_ops.to_string());
    }
    kept.insert(
        "embeddings".into(),
        "f16 table (a gather: nothing to compute in int8)".into(),
    );
    if let OpPrecision::Int8(None) = p {
        let int8_convs = emitters.iter().any(|e| e.conv_ranges.is_some());
        kept.insert(
            "activations".into(),
            int8_activations_note(dynamic, int8_convs),
        );
    }
    kept.insert(
        llamagen_bundle::names::vq::NORMALIZED_CODEBOOK.into(),
        "f32 VQ codebook (0.5 MB)".into(),
    );
    for em in emitters {
        kept.extend(em.kept.clone());
    }
    kept
}

/// Progress events of a compile.
pub enum Progress<'a> {
    Stage(&'a str),
    Weights { done: usize, total: usize },
}

/// Resolves the configs from the options (no file is touched).
pub fn resolve_configs(o: &CompileOptions) -> Result<(GptConfig, VqConfig), Error> {
    let va = vq_arch(&o.vq_model)?;
    if let Some(d) = o.downsample_size {
        if d != va.downsample {
            return Err(Error::InvalidOption {
                option: "--downsample-size",
                reason: format!(
                    "{d} does not match {} (downsample {})",
                    va.name, va.downsample
                ),
            });
        }
    }
    let vqc = VqConfig::new(&va, o.codebook_size, o.codebook_embed_dim, o.image_size)?;
    let ga = gpt_arch(&o.gpt_model)?;
    let gc = GptConfig::new(
        &ga,
        o.codebook_size,
        o.num_classes,
        o.cls_token_num,
        vqc.grid * vqc.grid,
    )?;
    Ok((gc, vqc))
}

/// Compiles the GPT step graph and the VQ decoder into the bundle at `o.out`.
pub fn compile(
    o: &CompileOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Manifest, Error> {
    let (gc, vqc) = resolve_configs(o)?;
    let _span = tracing::info_span!(
        "compile",
        gpt = %gc.name,
        vq = %vqc.name,
        image_size = vqc.image_size,
        precision = %o.precision,
        out = %o.out.display()
    )
    .entered();
    let mut sources = BTreeMap::new();
    let (gpt_src, vq_src): (Arc<dyn WeightSource>, Arc<dyn WeightSource>) = match &o.weights {
        Weights::Checkpoints { gpt, vq } => {
            progress(Progress::Stage("opening checkpoints"));
            sources.insert("gpt".into(), gpt.display().to_string());
            sources.insert("vq".into(), vq.display().to_string());
            (
                Arc::new(CheckpointWeights(Checkpoint::open(gpt)?)),
                Arc::new(CheckpointWeights(Checkpoint::open(vq)?)),
            )
        }
        Weights::Random { seed } => {
            sources.insert("gpt".into(), format!("random(seed={seed})"));
            sources.insert("vq".into(), format!("random(seed={seed})"));
            let r: Arc<dyn WeightSource> = Arc::new(RandomWeights::new(*seed));
            (Arc::clone(&r), r)
        }
    };
    progress(Progress::Stage("building graphs"));
    let precision = o.precision_mode();
    let mut gpt_em = Emitter::new(precision.clone(), gpt_src);
    gpt_em.dynamic_activations = o.dynamic_int8;
    let mut gpt_graph = gpt::build_step_graph(&gc, &mut gpt_em)?;
    let mut vq_em = Emitter::new(precision.clone(), vq_src);
    vq_em.dynamic_activations = o.dynamic_int8;
    vq_em.probe_conv_outputs = o.probes && o.probe_conv_outputs;
    vq_em.conv_ranges = o.conv_ranges.clone().map(std::sync::Arc::new);
    let mut vq_graph = vq::build_decoder_graph(&vqc, &mut vq_em)?;
    let mut probe_tensors = BTreeMap::new();
    if o.probes {
        for (graph, em) in [(&mut gpt_graph, &gpt_em), (&mut vq_graph, &vq_em)] {
            for p in &em.probes {
                probe_tensors.insert(p.op.clone(), graph.value(p.input).name.clone());
            }
            expose_probes(graph, &em.probes);
        }
    }

    let mut roles = BTreeMap::new();
    roles.insert(
        "prefill".into(),
        "gpt_step with input_ids = class ids + class_token_offset (and the null class for CFG), position 0, empty caches".into(),
    );
    roles.insert(
        "decode".into(),
        "gpt_step with one image token per row, position = cls_token_num + token index; write present_* at position".into(),
    );
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        tool_version: format!("llamagen-rs {}", env!("CARGO_PKG_VERSION")),
        family: ModelFamily::LlamagenC2i,
        precision: o.precision,
        sources,
        generation: GenerationInfo {
            class_token_offset: gc.vocab_size,
            null_class: gc.num_classes,
            tokens_per_image: gc.block_size,
            image_size: vqc.image_size,
            roles,
        },
        gpt: Some(gc),
        var: None,
        vq: vqc,
        graphs: BTreeMap::new(),
        files: BTreeMap::new(),
        precision_details: PrecisionDetails {
            higher_precision: higher_precision(&precision, o.dynamic_int8, [&gpt_em, &vq_em]),
            probe_tensors,
            ..Default::default()
        },
    };
    progress(Progress::Stage("writing weights"));
    let graphs = [
        BundleGraph {
            role: GraphRole::GptStep,
            stem: "gpt",
            graph: &gpt_graph,
        },
        BundleGraph {
            role: GraphRole::VqDecoder,
            stem: "vq",
            graph: &vq_graph,
        },
    ];
    write_bundle(&o.out, &graphs, manifest, &mut |done, total| {
        progress(Progress::Weights { done, total })
    })
}

/// What bundle.yaml says of the activations of an int8 bundle without calibrated scales:
/// GEMMs dynamic or weight-only, convolutions on calibrated int8 activations or weight-only.
pub fn int8_activations_note(dynamic: bool, int8_convs: bool) -> String {
    match (dynamic, int8_convs) {
        (true, false) => {
            "int8 per tensor, quantized at run time (DynamicQuantizeLinear + \
                          MatMulInteger) for every GEMM; convolutions weight-only (f32 activations)"
                .into()
        }
        (false, false) => {
            "f32: weight-only int8 (per-channel int8 weights, f32 activations)".into()
        }
        (dynamic, true) => {
            let gemms = if dynamic {
                "int8 per tensor, quantized at run time (DynamicQuantizeLinear + MatMulInteger) \
                 for every GEMM"
            } else {
                "f32 for GEMMs (per-channel int8 weights)"
            };
            format!(
                "{gemms}; convolutions on int8 activations (u8 per tensor, from the calibrated \
                 range of each input and output)"
            )
        }
    }
}
