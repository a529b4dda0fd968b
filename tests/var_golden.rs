//! Parity with the official VAR code on tests/golden/tiny-var: the official-format state dicts
//! (`var.pth`, `vae.pth`) are compiled to a bundle and run on ONNX Runtime's CPU provider.
//! Levels: greedy tokens identical; per-scale logits FP32_LOGITS (1e-3 of the range); images
//! and the VQVAE decode FP32_IMAGE (1e-3 abs). fp16 and int8 bundles: the same tokens and a
//! logits cosine >= 0.999 against the official logits.

mod support;

use llamagen_compiler::bundle::Precision;
use llamagen_runtime::compare::cosine;
use llamagen_runtime::{GenerateRequest, Observer, Pipeline, PipelineOptions, SamplingOptions};
use llamagen_test_support::{FP32_IMAGE, FP32_LOGITS};
use support::golden::{compile_tiny_var, read_f32, read_i64, tiny_var_dir};

/// Tokens of all scales.
const TOKENS: usize = 30;
const VOCAB: usize = 64;

/// Records the logits each token was sampled from: `[row][token][vocab]`.
struct LogitsRecorder(Vec<Vec<Vec<f32>>>);

impl Observer for LogitsRecorder {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        if self.0.len() <= row {
            self.0.resize(row + 1, Vec::new());
        }
        assert_eq!(self.0[row].len(), step, "tokens arrive in order");
        self.0[row].push(logits.to_vec());
    }
}

/// The golden requests: labels 1 and 7, top-k 1 (top-p 0 = off).
fn greedy(cfg_scale: f32) -> GenerateRequest {
    GenerateRequest {
        labels: vec![1, 7],
        cfg_scale,
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_k: 1,
            top_p: 0.0,
        },
        seed: 0,
    }
}

fn load(precision: Precision) -> (tempfile::TempDir, Pipeline) {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    compile_tiny_var(&bundle, precision);
    let p = Pipeline::load(&bundle, &PipelineOptions::default()).unwrap();
    (tmp, p)
}

fn rows(tokens: &[i64]) -> Vec<Vec<u32>> {
    tokens
        .chunks(TOKENS)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect()
}

/// Tokens identical, logits at FP32_LOGITS, images at FP32_IMAGE against `greedy_<cfg>`.
fn check_greedy(cfg: &str, cfg_scale: f32) {
    let (_tmp, p) = load(Precision::Fp32);
    let mut rec = LogitsRecorder(Vec::new());
    let out = p.generate_tokens(&greedy(cfg_scale), &mut rec).unwrap();
    let dir = tiny_var_dir();

    let (shape, want) = read_i64(&dir.join(format!("greedy_{cfg}.tokens.npy")));
    assert_eq!(shape, vec![2, TOKENS]);
    let got: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
    assert_eq!(got, want, "greedy tokens, {cfg}");

    let (shape, want) = read_f32(&dir.join(format!("greedy_{cfg}.logits.npy")));
    assert_eq!(shape, vec![2, TOKENS, VOCAB]);
    let got: Vec<f32> = rec.0.into_iter().flatten().flatten().collect();
    let m = FP32_LOGITS.assert_close(&format!("logits {cfg}"), &got, &want);
    eprintln!(
        "{cfg}: logits max abs error {:.3e} (bound {:.3e})",
        m.max_abs, m.bound
    );

    // autoregressive_infer_cfg returns (decoder(...).clamp(-1, 1) + 1) / 2.
    let images = p.decode_images(&out.tokens).unwrap();
    let got: Vec<f32> = images
        .pixels
        .iter()
        .flatten()
        .map(|&x| (x.clamp(-1.0, 1.0) + 1.0) * 0.5)
        .collect();
    let (shape, want) = read_f32(&dir.join(format!("greedy_{cfg}.images.npy")));
    assert_eq!(shape, vec![2, 3, 64, 64]);
    let m = FP32_IMAGE.assert_close(&format!("images {cfg}"), &got, &want);
    eprintln!("{cfg}: images max abs error {:.3e}", m.max_abs);
}

#[test]
fn greedy_cfg1_5_matches_official_tokens_logits_and_images() {
    check_greedy("cfg1.5", 1.5);
}

#[test]
fn greedy_cfg4_matches_official_tokens_logits_and_images() {
    check_greedy("cfg4", 4.0);
}

#[test]
fn vae_decode_of_given_multiscale_tokens_matches_official() {
    let (_tmp, p) = load(Precision::Fp32);
    let dir = tiny_var_dir();
    let (shape, tokens) = read_i64(&dir.join("vae_decode.tokens.npy"));
    assert_eq!(shape[1], TOKENS);
    let images = p.decode_images(&rows(&tokens)).unwrap();
    // idxBl_to_img(last_one=True) is clamped to [-1, 1].
    let got: Vec<f32> = images
        .pixels
        .iter()
        .flatten()
        .map(|&x| x.clamp(-1.0, 1.0))
        .collect();
    let (shape, want) = read_f32(&dir.join("vae_decode.images.npy"));
    assert_eq!(shape, vec![2, 3, 64, 64]);
    let m = FP32_IMAGE.assert_close("vae decode", &got, &want);
    eprintln!("vae decode: max abs error {:.3e}", m.max_abs);
}

/// Teacher-forced on the official cfg-4 tokens, the lower precisions stay within cosine 0.999
/// of the official logits at every token; their bundle.yaml carries the measured figures.
#[test]
fn fp16_and_int8_bundles_stay_close_to_the_official_logits() {
    let dir = tiny_var_dir();
    let (_, tokens) = read_i64(&dir.join("greedy_cfg4.tokens.npy"));
    let (_, want) = read_f32(&dir.join("greedy_cfg4.logits.npy"));
    for precision in [Precision::Fp16, Precision::Int8] {
        let (_tmp, p) = load(precision);
        let acc = p.manifest().precision_details.accuracy_vs_fp32.unwrap();
        assert!(acc.logits_cosine_min > 0.99, "{precision}: {acc:?}");
        let mut rec = LogitsRecorder(Vec::new());
        p.score_tokens(&greedy(4.0), &rows(&tokens), &mut rec)
            .unwrap();
        let got: Vec<f32> = rec.0.into_iter().flatten().flatten().collect();
        let min = got
            .chunks(VOCAB)
            .zip(want.chunks(VOCAB))
            .map(|(a, b)| cosine(a, b))
            .fold(f64::INFINITY, f64::min);
        eprintln!("{precision}: min logits cosine vs official {min:.6}");
        assert!(min >= 0.999, "{precision}: min cosine {min}");
    }
}
