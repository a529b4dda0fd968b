//! The greedy generation of the tiny VAR goldens (tests/golden/tiny-var and
//! tiny-var-variants) and its check against the official tokens, logits and images.
//! Levels: tokens identical; per-scale logits FP32_LOGITS (1e-3 of the range); images
//! FP32_IMAGE (1e-3 abs).

use std::path::Path;

use llamagen_runtime::{GenerateRequest, Pipeline, SamplingOptions};
use llamagen_test_support::{FP32_IMAGE, FP32_LOGITS};

use super::golden::{read_f32, read_i64};
use super::recorder::LogitsRecorder;

/// Tokens of all scales (1x1 .. 4x4) and the vocabulary of the tiny VAR.
pub const TOKENS: usize = 30;
pub const VOCAB: usize = 64;

/// The golden requests: labels 1 and 7, top-k 1 (top-p 0 = off).
pub fn greedy(cfg_scale: f32) -> GenerateRequest {
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

/// Concatenated token rows of a `[B, TOKENS]` golden.
pub fn rows(tokens: &[i64]) -> Vec<Vec<u32>> {
    tokens
        .chunks(TOKENS)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect()
}

/// Runs the golden request on `p` and asserts tokens identical, logits within FP32_LOGITS and
/// images within FP32_IMAGE of `<dir>/greedy_<cfg>.{tokens,logits,images}.npy`.
pub fn check_greedy(p: &Pipeline, dir: &Path, cfg: &str, cfg_scale: f32) {
    let what = format!("{} {cfg}", dir.display());
    let mut rec = LogitsRecorder(Vec::new());
    let out = p.generate_tokens(&greedy(cfg_scale), &mut rec).unwrap();

    let (shape, want) = read_i64(&dir.join(format!("greedy_{cfg}.tokens.npy")));
    assert_eq!(shape, vec![2, TOKENS]);
    let got: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
    assert_eq!(got, want, "greedy tokens, {what}");

    let (shape, want) = read_f32(&dir.join(format!("greedy_{cfg}.logits.npy")));
    assert_eq!(shape, vec![2, TOKENS, VOCAB]);
    let got: Vec<f32> = rec.0.into_iter().flatten().flatten().collect();
    let logits = FP32_LOGITS.assert_close(&format!("logits {what}"), &got, &want);

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
    let images = FP32_IMAGE.assert_close(&format!("images {what}"), &got, &want);
    eprintln!(
        "{what}: logits max abs error {:.3e} (bound {:.3e}), images {:.3e}",
        logits.max_abs, logits.bound, images.max_abs
    );
}
