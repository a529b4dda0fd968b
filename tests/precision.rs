//! Every precision round-trips through compile -> generate on the golden tiny model, and the
//! calibrated compile records what it measured. Levels: FP16_VS_FP32, INT8_VS_FP32 and
//! INT8_QDQ_VS_FP32_TINY (`llamagen_test_support::precision`).

mod support;

use std::path::Path;

use llamagen_calib::{read_scales_json, read_tensorrt_cache, CalibSet, Method};
use llamagen_compiler::bundle::{load_manifest, Manifest};
use llamagen_compiler::calibrated::{
    compile_calibrated, Int8Activations, SCALES_FILE, TENSORRT_CACHE_FILE,
};
use llamagen_compiler::compile::Weights;
use llamagen_runtime::compare::compare;
use llamagen_runtime::{GenerateRequest, Pipeline, PipelineOptions, SamplingOptions};
use llamagen_test_support::{PrecisionLevel, FP16_VS_FP32, INT8_QDQ_VS_FP32_TINY, INT8_VS_FP32};
use support::golden::{compile_tiny, tiny_dir, tiny_options};

fn tiny_set() -> CalibSet {
    CalibSet::from_yaml(
        "name: tiny\nlabels: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nseeds: [0]\nsamples: 10\ntop_k: 100\n",
        "test",
    )
    .unwrap()
}

fn compile_tiny_at(precision: &str, activations: Int8Activations, out: &Path) -> Manifest {
    let dir = tiny_dir();
    let weights = Weights::Checkpoints {
        gpt: dir.join("gpt.pt"),
        vq: dir.join("vq.pt"),
    };
    let mut opts = tiny_options(out, weights);
    opts.precision = precision.parse().unwrap();
    compile_calibrated(
        &opts,
        &tiny_set(),
        Method::Entropy,
        activations,
        &mut |_| {},
    )
    .unwrap()
}

fn check(precision: &str, activations: Int8Activations, level: PrecisionLevel) -> Manifest {
    let tmp = tempfile::tempdir().unwrap();
    let low_dir = tmp.path().join(precision);
    let manifest = compile_tiny_at(precision, activations, &low_dir);
    let graph = std::fs::read(low_dir.join("gpt.onnx")).unwrap();
    let count = |pat: &[u8]| graph.windows(pat.len()).filter(|w| *w == pat).count();
    let has_qdq = count(b"QuantizeLinear") > count(b"DynamicQuantizeLinear");
    let int8 = precision == "int8";
    assert_eq!(has_qdq, activations == Int8Activations::Qdq && int8);
    let dynamic = matches!(
        activations,
        Int8Activations::Dynamic | Int8Activations::DynamicConvs
    );
    assert_eq!(count(b"MatMulInteger") > 0, dynamic && int8);
    assert_eq!(manifest.precision.name(), precision);
    let fp32_dir = tmp.path().join("fp32");
    compile_tiny(&fp32_dir);

    // The recorded figures meet the level...
    let acc = manifest
        .precision_details
        .accuracy_vs_fp32
        .expect("accuracy figures in bundle.yaml");
    level.assert_meets(
        &format!("{precision} bundle.yaml"),
        acc.logits_cosine_min,
        acc.logits_cosine_mean,
        acc.image_psnr_db,
    );
    // ...and so does a fresh comparison on other requests (labels and seed not calibrated on).
    let opts = PipelineOptions::default();
    let low = Pipeline::load(&low_dir, &opts).unwrap();
    let reference = Pipeline::load(&fp32_dir, &opts).unwrap();
    let req = GenerateRequest {
        labels: vec![3, 7],
        cfg_scale: 4.0,
        sampling: SamplingOptions {
            top_k: 100,
            ..SamplingOptions::default()
        },
        seed: 11,
        ..GenerateRequest::default()
    };
    let r = compare(&low, &reference, &req).unwrap();
    eprintln!("{precision} vs fp32: {r:?}");
    level.assert_meets(
        precision,
        r.logits_cosine_min,
        r.logits_cosine_mean,
        r.image_psnr_db,
    );

    // It generates: greedy tokens and images of the right shape.
    let greedy = GenerateRequest {
        sampling: SamplingOptions::greedy(),
        ..req
    };
    let out = low
        .generate_tokens(&greedy, &mut |_: usize, _: usize| {})
        .unwrap();
    let images = low.decode_images(&out.tokens).unwrap();
    assert_eq!(images.pixels.len(), 2);
    assert!(images.pixels.iter().flatten().all(|x| x.is_finite()));
    manifest
}

#[test]
fn fp16_round_trips_within_the_fp16_level() {
    let m = check("fp16", Int8Activations::WeightOnly, FP16_VS_FP32);
    assert!(m.precision_details.calibration.is_none());
    assert!(m
        .precision_details
        .higher_precision
        .contains_key("rms_norm"));
}

#[test]
fn int8_weight_only_round_trips_within_the_int8_level() {
    let m = check("int8", Int8Activations::WeightOnly, INT8_VS_FP32);
    assert!(m
        .precision_details
        .higher_precision
        .contains_key("activations"));
}

#[test]
fn int8_qdq_round_trips_and_ships_its_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("int8");
    let m = compile_tiny_at("int8", Int8Activations::Qdq, &dir);
    let cal = m.precision_details.calibration.as_ref().unwrap();
    assert_eq!(
        (cal.set.as_str(), cal.method.as_str(), cal.samples),
        ("tiny", "entropy", 10)
    );
    // Scales for every linear layer and convolution input, by operator and by fp32 tensor.
    let scales = read_scales_json(dir.join(SCALES_FILE)).unwrap();
    assert!(scales.contains_key("layers.0.attn.qkv") && scales.contains_key("decoder.conv_in"));
    assert!(scales.values().all(|s| s.is_finite() && *s > 0.0));
    let cache = read_tensorrt_cache(dir.join(TENSORRT_CACHE_FILE)).unwrap();
    assert!(cache.header.starts_with("TRT-"));
    // Keyed by fp32 tensor: operators sharing an input (q, k, v) share one entry.
    assert!(!cache.scales.is_empty() && cache.scales.len() <= scales.len());
    assert!(cache
        .scales
        .values()
        .all(|s| scales.values().any(|o| o == s)));
    // Both files are hashed like the graphs.
    load_manifest(&dir, true).unwrap();
    drop(tmp);
    check("int8", Int8Activations::Qdq, INT8_QDQ_VS_FP32_TINY);
}

#[test]
fn lower_precision_bundles_are_smaller() {
    let tmp = tempfile::tempdir().unwrap();
    let size = |p: &str| {
        let m = compile_tiny_at(p, Int8Activations::WeightOnly, &tmp.path().join(p));
        m.files
            .iter()
            .filter(|(name, _)| name.ends_with(".weights"))
            .map(|(_, f)| f.bytes)
            .sum::<u64>() as f64
    };
    let fp32 = {
        let m = compile_tiny(&tmp.path().join("fp32"));
        m.files
            .iter()
            .filter(|(name, _)| name.ends_with(".weights"))
            .map(|(_, f)| f.bytes)
            .sum::<u64>() as f64
    };
    let (fp16, int8) = (size("fp16"), size("int8"));
    eprintln!(
        "weights: fp32 {fp32}, fp16 {fp16} ({:.3}x), int8 {int8} ({:.3}x)",
        fp16 / fp32,
        int8 / fp32
    );
    assert!(fp16 / fp32 <= 0.55, "fp16 {}", fp16 / fp32);
    assert!(int8 / fp32 <= 0.35, "int8 {}", int8 / fp32);
}

/// GEMM activations quantized per tensor at run time (ONNX Runtime's int8 GEMM) stay within
/// the int8 level too, and bundle.yaml says so.
#[test]
fn int8_dynamic_activations_round_trip_within_the_int8_level() {
    let m = check("int8", Int8Activations::Dynamic, INT8_VS_FP32);
    let note = &m.precision_details.higher_precision["activations"];
    assert!(note.contains("DynamicQuantizeLinear"), "{note}");
}

#[test]
fn weight_only_int8_lists_its_activations_once() {
    let tmp = tempfile::tempdir().unwrap();
    let m = compile_tiny_at("int8", Int8Activations::WeightOnly, &tmp.path().join("w"));
    let kept = &m.precision_details.higher_precision;
    assert!(kept.contains_key("activations"));
    assert!(!kept.keys().any(|k| k.starts_with("layers.")), "{kept:?}");
}

/// `dynamic-convs`: the VQ decoder's convolutions on int8 activations (u8 Q/DQ on each input
/// and output from calibrated ranges), on top of dynamic GEMMs. It stays within the int8 level,
/// ships its ranges, and its images are not the dynamic bundle's (the Q/DQ pairs are used).
#[test]
fn int8_convolutions_round_trip_within_the_int8_level_and_ship_their_ranges() {
    use llamagen_compiler::conv_calibration::CONV_RANGES_FILE;
    let m = check("int8", Int8Activations::DynamicConvs, INT8_VS_FP32);
    let note = &m.precision_details.higher_precision["activations"];
    assert!(note.contains("convolutions on int8 activations"), "{note}");
    let cal = m.precision_details.calibration.as_ref().unwrap();
    assert!(cal.files.contains(&CONV_RANGES_FILE.to_string()), "{cal:?}");
    assert!(m.files.contains_key(CONV_RANGES_FILE));
    assert!(m.graphs[&llamagen_bundle::GraphRole::VqDecoder].int8_activations);

    let tmp = tempfile::tempdir().unwrap();
    let convs = compile_tiny_at("int8", Int8Activations::DynamicConvs, &tmp.path().join("c"));
    let dynamic = compile_tiny_at("int8", Int8Activations::Dynamic, &tmp.path().join("d"));
    let vq = std::fs::read(tmp.path().join("c/vq.onnx")).unwrap();
    let quantize = vq.windows(14).filter(|w| *w == b"QuantizeLinear").count();
    let ranges: std::collections::BTreeMap<String, (f32, f32)> = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("c").join(CONV_RANGES_FILE)).unwrap(),
    )
    .unwrap();
    let convolutions = ranges.keys().filter(|k| k.ends_with(".output")).count();
    assert!(
        convolutions > 5 && quantize >= 2 * convolutions,
        "{quantize} for {convolutions}"
    );
    let (a, b) = (
        convs.precision_details.accuracy_vs_fp32.unwrap(),
        dynamic.precision_details.accuracy_vs_fp32.unwrap(),
    );
    eprintln!(
        "image PSNR vs fp32: int8 convolutions {:.1} dB, dynamic {:.1} dB",
        a.image_psnr_db, b.image_psnr_db
    );
    assert_ne!(a.image_psnr_db, b.image_psnr_db);
}
