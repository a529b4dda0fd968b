//! Compiling a lower-precision bundle end to end: calibrate, compile, measure, install.
//!
//! 1. An fp32 bundle whose graphs also output every weight-bearing operator's input
//!    (`probe.<op>`) is written to a staging folder beside the target.
//! 2. int8 only: it generates the calibration set (and VQ-decodes it); each probe feeds a
//!    [`Histogram`]; the estimator turns histograms into per-operator activation scales.
//! 3. The bundle is compiled at the requested precision into staging, with the scales (and
//!    their JSON and TensorRT-cache files) inside.
//! 4. `llamagen compare` figures against the fp32 bundle on the calibration set go into its
//!    `bundle.yaml`; only then is the staged bundle renamed into place.

use std::collections::BTreeMap;

use crate::bundle::manifest::{AccuracyVsFp32, CalibrationInfo};
use crate::bundle::{
    check_out, hash_files, load_manifest, parent_dir, replace_dir, write_manifest, Manifest,
    Precision,
};
use crate::compile::{compile, CompileOptions, Progress};
use crate::models::precision::PROBE_PREFIX;
use llamagen_runtime::compare::{compare, CompareReport};
use llamagen_runtime::{
    GenerateRequest, Observer, Pipeline, PipelineOptions, RuntimeError, SamplingOptions,
};

use llamagen_calib::cache::{format_tensorrt_cache, scales_json};
use llamagen_calib::estimate::{scale, Method};
use llamagen_calib::{CalibError, CalibSet, Histogram};

use crate::conv_calibration::{ranges_json, ProbeRanges, CONV_RANGES_FILE};
use crate::models::precision::ConvRanges;

/// Scales of the int8 graphs, as our JSON (operator -> scale).
pub const SCALES_FILE: &str = "calibration.json";
/// The same scales keyed by fp32 tensor name, in TensorRT's calibration-cache format, for
/// TensorRT versions that calibrate implicitly (the int8 graphs carry explicit Q/DQ).
pub const TENSORRT_CACHE_FILE: &str = "calibration.cache";
const TENSORRT_HEADER: &str = "TRT-8601-EntropyCalibration2";

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Compile(#[from] crate::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Write(#[from] crate::bundle::WriteError),
}

/// Progress of a calibrated compile.
pub enum Step<'a> {
    Stage(&'a str),
    Compile(Progress<'a>),
    /// Calibration or comparison sample `done` of `total`.
    Sample {
        done: usize,
        total: usize,
    },
}

/// Collects |x| histograms of every `probe.<op>` output.
#[derive(Default)]
struct ProbeHistograms(BTreeMap<String, Histogram>);

impl Observer for ProbeHistograms {
    fn on_probe(&mut self, name: &str, data: &[f32]) {
        let op = name.strip_prefix(PROBE_PREFIX).unwrap_or(name);
        self.0.entry(op.to_string()).or_default().add(data);
    }
}

fn request(set: &CalibSet, labels: Vec<usize>, seed: u64) -> GenerateRequest {
    GenerateRequest {
        labels,
        cfg_scale: set.cfg_scale,
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: set.temperature,
            top_k: set.top_k,
            top_p: set.top_p,
        },
        seed,
    }
}

/// Both statistics of every probe: |x| histograms and (min, max).
#[derive(Default)]
struct ProbeStats(ProbeHistograms, ProbeRanges);

impl Observer for ProbeStats {
    fn on_probe(&mut self, name: &str, data: &[f32]) {
        self.0.on_probe(name, data);
        self.1.on_probe(name, data);
    }
}

/// Runs the calibration set through a probe bundle: one histogram per operator, and the range
/// of every probed tensor (what int8 convolutions use).
pub fn collect_histograms(
    probes: &Pipeline,
    set: &CalibSet,
    on_sample: &mut dyn FnMut(usize, usize),
) -> Result<(BTreeMap<String, Histogram>, ConvRanges), CalibrateError> {
    let pairs = set.requests();
    let mut stats = ProbeStats::default();
    for (i, &(label, seed)) in pairs.iter().enumerate() {
        let req = request(set, vec![label], seed);
        let out = probes.generate_tokens(&req, &mut stats)?;
        probes.decode_images_observed(&out.tokens, &mut stats)?;
        on_sample(i + 1, pairs.len());
    }
    Ok((stats.0 .0, stats.1.into_ranges()))
}

/// Per-operator scales; operators that saw no usable data are left out (weight-only int8).
pub fn scales_from(hists: &BTreeMap<String, Histogram>, method: Method) -> BTreeMap<String, f32> {
    hists
        .iter()
        .filter_map(|(op, h)| scale(h, method).ok().map(|s| (op.clone(), s)))
        .collect()
}

/// How int8 bundles treat activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Int8Activations {
    /// f32 activations, int8 weights (the default: see `models::precision` for the figures).
    #[default]
    WeightOnly,
    /// Calibrated Q/DQ on every GEMM/conv input (TensorRT's explicit quantization).
    Qdq,
    /// Every GEMM input quantized per tensor at run time (`DynamicQuantizeLinear` +
    /// `MatMulInteger`: ONNX Runtime's int8 GEMM); convolutions weight-only.
    Dynamic,
    /// `Dynamic`, and the VQ decoder's convolutions on int8 activations (u8 from the calibrated
    /// min/max of each input and output: ONNX Runtime's QLinearConv).
    DynamicConvs,
}

impl std::str::FromStr for Int8Activations {
    type Err = CalibError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "weights-only" => Ok(Int8Activations::WeightOnly),
            "qdq" => Ok(Int8Activations::Qdq),
            "dynamic" => Ok(Int8Activations::Dynamic),
            "dynamic-convs" => Ok(Int8Activations::DynamicConvs),
            other => Err(CalibError::InvalidMethod {
                value: other.to_string(),
                reason: "int8 activations are 'weights-only', 'qdq', 'dynamic' or 'dynamic-convs'"
                    .into(),
            }),
        }
    }
}

/// Compiles `opts` (precision fp16 or int8) with calibration and accuracy figures; see the
/// module doc. fp32 is passed straight to [`compile`]. int8 always calibrates (the scales ship
/// in the bundle for TensorRT); `activations` decides whether the graphs use them.
pub fn compile_calibrated(
    opts: &CompileOptions,
    set: &CalibSet,
    method: Method,
    activations: Int8Activations,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Manifest, CalibrateError> {
    if opts.precision == Precision::Fp32 {
        return Ok(compile(opts, &mut |p| progress(Step::Compile(p)))?);
    }
    check_out(&opts.out)?;
    let (gpt, _) = crate::compile::resolve_configs(opts)?;
    set.validate(gpt.num_classes)?;
    if set.top_k > gpt.vocab_size {
        return Err(CalibError::InvalidSet {
            set: set.name.clone(),
            field: "top_k",
            value: set.top_k.to_string(),
            reason: format!(
                "must be <= the vocabulary size {} (0 = off)",
                gpt.vocab_size
            ),
        }
        .into());
    }
    method.check()?;
    let _span = tracing::info_span!(
        "compile_calibrated",
        precision = %opts.precision,
        set = %set.name,
        method = %method
    )
    .entered();
    let parent = parent_dir(&opts.out);
    std::fs::create_dir_all(&parent).map_err(|e| crate::Error::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".llamagen-calibrate-")
        .tempdir_in(&parent)
        .map_err(|e| crate::Error::io(&parent, e))?;

    progress(Step::Stage("compiling the fp32 reference"));
    let reference_dir = staging.path().join("fp32");
    let reference_opts = CompileOptions {
        precision: Precision::Fp32,
        probes: true,
        probe_conv_outputs: activations == Int8Activations::DynamicConvs,
        activation_scales: None,
        out: reference_dir.clone(),
        ..opts.clone()
    };
    let reference_manifest = compile(&reference_opts, &mut |p| progress(Step::Compile(p)))?;
    let load = PipelineOptions {
        verify_hashes: false,
        ..PipelineOptions::default()
    };
    let reference = Pipeline::load(&reference_dir, &load)?;

    let mut low_opts = CompileOptions {
        out: staging.path().join("bundle"),
        ..opts.clone()
    };
    let mut extra_files: Vec<(String, String)> = Vec::new();
    let mut calibration = None;
    if opts.precision == Precision::Int8 {
        progress(Step::Stage("calibrating"));
        let (hists, ranges) = collect_histograms(&reference, set, &mut |done, total| {
            progress(Step::Sample { done, total })
        })?;
        let scales = scales_from(&hists, method);
        tracing::info!(
            operators = scales.len(),
            of = hists.len(),
            "activation scales estimated"
        );
        let tensors = &reference_manifest.precision_details.probe_tensors;
        let by_tensor: BTreeMap<String, f32> = scales
            .iter()
            .filter_map(|(op, s)| tensors.get(op).map(|t| (t.clone(), *s)))
            .collect();
        extra_files.push((SCALES_FILE.into(), scales_json(&scales)?));
        extra_files.push((
            TENSORRT_CACHE_FILE.into(),
            format_tensorrt_cache(TENSORRT_HEADER, &by_tensor)?,
        ));
        calibration = Some(CalibrationInfo {
            set: set.name.clone(),
            method: method.to_string(),
            samples: set.requests().len(),
            files: vec![SCALES_FILE.into(), TENSORRT_CACHE_FILE.into()],
        });
        match activations {
            Int8Activations::Qdq => low_opts.activation_scales = Some(scales),
            Int8Activations::Dynamic => low_opts.dynamic_int8 = true,
            Int8Activations::DynamicConvs => {
                low_opts.dynamic_int8 = true;
                extra_files.push((CONV_RANGES_FILE.into(), ranges_json(&ranges)));
                if let Some(c) = calibration.as_mut() {
                    c.method = format!(
                        "{method} (activation scales); min and max of each convolution's input \
                         and output (int8 convolutions)"
                    );
                    c.files.push(CONV_RANGES_FILE.into());
                }
                low_opts.conv_ranges = Some(ranges);
            }
            Int8Activations::WeightOnly => {}
        }
    }

    progress(Step::Stage("compiling"));
    compile(&low_opts, &mut |p| progress(Step::Compile(p)))?;
    for (name, text) in &extra_files {
        let path = low_opts.out.join(name);
        std::fs::write(&path, text).map_err(|e| crate::Error::io(&path, e))?;
    }

    progress(Step::Stage("measuring against fp32"));
    let low = Pipeline::load(&low_opts.out, &load)?;
    let report = accuracy(&low, &reference, set)?;
    tracing::info!(?report, "measured against fp32");
    let mut manifest = load_manifest(&low_opts.out, false)?;
    manifest.precision_details.calibration = calibration;
    manifest.precision_details.accuracy_vs_fp32 = Some(report_figures(&report));
    manifest.files = hash_files(&low_opts.out)?;
    write_manifest(&low_opts.out, &manifest)?;
    drop(low);
    drop(reference);
    replace_dir(&low_opts.out, &opts.out)?;
    Ok(manifest)
}

/// `llamagen compare` of `low` against `reference` on the calibration set (one batch of all its
/// labels, first seed).
pub fn accuracy(
    low: &Pipeline,
    reference: &Pipeline,
    set: &CalibSet,
) -> Result<CompareReport, CalibrateError> {
    let pairs = set.requests();
    let labels: Vec<usize> = pairs.iter().map(|&(l, _)| l).collect();
    let seed = pairs.first().map(|&(_, s)| s).unwrap_or(0);
    Ok(compare(low, reference, &request(set, labels, seed))?)
}

/// The figures bundle.yaml records of a comparison (identical images as `f64::MAX` dB).
pub(crate) fn report_figures(r: &CompareReport) -> AccuracyVsFp32 {
    AccuracyVsFp32 {
        image_psnr_db: if r.image_psnr_db.is_finite() {
            r.image_psnr_db
        } else {
            f64::MAX
        },
        logits_cosine_mean: r.logits_cosine_mean,
        logits_cosine_min: r.logits_cosine_min,
        logits_max_abs: r.logits_max_abs,
        token_agreement: r.token_agreement,
    }
}
