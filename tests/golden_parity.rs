//! Parity with the official LlamaGen code on tests/golden/tiny-c2i: the official-format `.pt`
//! checkpoints are compiled to a bundle and run on ONNX Runtime's CPU provider.
//! Levels: tokens identical; logits FP32_LOGITS; VQ images FP32_IMAGE (llamagen_test_support).

mod support;

use llamagen_runtime::{GenerateRequest, Pipeline, PipelineOptions, SamplingOptions};
use llamagen_test_support::{FP32_IMAGE, FP32_LOGITS};
use support::golden::{compile_tiny, read_f32, read_i64, tiny_dir};
use support::recorder::LogitsRecorder;

fn greedy(cfg_scale: f32) -> GenerateRequest {
    GenerateRequest {
        labels: vec![3, 7],
        cfg_scale,
        cfg_interval: -1.0,
        sampling: SamplingOptions::greedy(),
        seed: 0,
    }
}

fn check_greedy(cfg: &str, cfg_scale: f32) {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny(&bundle);
    let p = Pipeline::load(&bundle, &PipelineOptions::default()).unwrap();
    let mut rec = LogitsRecorder(Vec::new());
    let out = p.generate_tokens(&greedy(cfg_scale), &mut rec).unwrap();

    let (shape, want) = read_i64(&tiny_dir().join(format!("greedy_{cfg}.tokens.npy")));
    assert_eq!(shape, vec![2, 16]);
    let got: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
    assert_eq!(got, want, "greedy tokens, {cfg}");

    let (shape, want) = read_f32(&tiny_dir().join(format!("greedy_{cfg}.logits.npy")));
    assert_eq!(shape, vec![2, 16, 512]);
    let got: Vec<f32> = rec.0.into_iter().flatten().flatten().collect();
    let m = FP32_LOGITS.assert_close(&format!("logits {cfg}"), &got, &want);
    eprintln!(
        "{cfg}: logits max abs error {:.3e} (bound {:.3e})",
        m.max_abs, m.bound
    );
}

#[test]
fn greedy_cfg1_matches_official_tokens_and_logits() {
    check_greedy("cfg1", 1.0);
}

#[test]
fn greedy_cfg4_matches_official_tokens_and_logits() {
    check_greedy("cfg4", 4.0);
}

#[test]
fn vq_decode_matches_official_images() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny(&bundle);
    let p = Pipeline::load(&bundle, &PipelineOptions::default()).unwrap();
    let (_, tokens) = read_i64(&tiny_dir().join("greedy_cfg4.tokens.npy"));
    let rows: Vec<Vec<u32>> = tokens
        .chunks(16)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let images = p.decode_images(&rows).unwrap();
    let (shape, want) = read_f32(&tiny_dir().join("vq_decode.images.npy"));
    assert_eq!(shape, vec![2, 3, 8, 8]);
    let got: Vec<f32> = images.pixels.into_iter().flatten().collect();
    let m = FP32_IMAGE.assert_close("vq images", &got, &want);
    eprintln!("vq: max abs error {:.3e}", m.max_abs);
}
