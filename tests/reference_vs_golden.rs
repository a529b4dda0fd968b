//! The naive Rust reference (tests/support/reference.rs) against the official LlamaGen goldens in
//! tests/golden/tiny-c2i (official code, random weights, fp32, CPU). The reference is what the
//! end-to-end tests trust at official sizes, so it must itself reproduce the official outputs:
//!
//! - greedy tokens (cfg 1 and cfg 4, labels [3, 7], 16 tokens): identical;
//! - per-step combined logits: max abs error <= 1e-3 * (max - min) of the golden logits
//!   (level `FP32_LOGITS`);
//! - VQ decode of the greedy cfg-4 tokens: max abs error <= 1e-3 on the [-1, 1] image
//!   (level `FP32_IMAGE`).
//!
//! Fixture paths come from `support::golden::tiny_dir` (override with `LLAMAGEN_GOLDEN`); the
//! levels are `llamagen_test_support::{FP32_LOGITS, FP32_IMAGE}`.

mod support;

use llamagen_runtime::npy::{read_npy_f32, read_npy_i64};
use llamagen_test_support::{range_of, FP32_IMAGE, FP32_LOGITS};
use support::golden::tiny_dir as golden_dir;
use support::reference::{greedy_generate, load_weights, vq_decode, GptArch, GptRef, Weights};

/// The tiny c2i GPT the goldens were made with (README.json: model_args).
fn tiny_arch() -> GptArch {
    GptArch {
        n_layer: 2,
        n_head: 4,
        dim: 64,
        vocab: 512,
        num_classes: 10,
        cls_token_num: 1,
        block_size: 16,
    }
}

const LABELS: [usize; 2] = [3, 7];

fn gpt_weights() -> Weights {
    load_weights(&golden_dir().join("gpt.pt"))
}

fn check_greedy(cfg_scale: f32, stem: &str) {
    let dir = golden_dir();
    let weights = gpt_weights();
    let arch = tiny_arch();
    let (tokens, logits) = greedy_generate(&weights, &arch, &LABELS, cfg_scale);

    let (tshape, gold_tokens) = read_npy_i64(&dir.join(format!("{stem}.tokens.npy"))).unwrap();
    assert_eq!(tshape, vec![2, 16]);
    let gold_tokens: Vec<Vec<usize>> = gold_tokens
        .chunks(16)
        .map(|r| r.iter().map(|&t| t as usize).collect())
        .collect();
    assert_eq!(
        tokens, gold_tokens,
        "{stem}: greedy tokens differ from the official ones"
    );

    let (lshape, gold_logits) = read_npy_f32(&dir.join(format!("{stem}.logits.npy"))).unwrap();
    assert_eq!(lshape, vec![2, 16, 512]);
    let flat: Vec<f32> = logits.iter().flatten().flatten().copied().collect();
    let m = FP32_LOGITS.assert_close(&format!("{stem} logits"), &flat, &gold_logits);
    eprintln!(
        "{stem}: tokens identical; logits max abs err {:.3e} (bound {:.3e}, level {})",
        m.max_abs, m.bound, FP32_LOGITS.name
    );
}

#[test]
fn greedy_cfg1_matches_official() {
    check_greedy(1.0, "greedy_cfg1");
}

#[test]
fn greedy_cfg4_matches_official() {
    check_greedy(4.0, "greedy_cfg4");
}

/// Prefill + decode through GptRef directly reproduce the first two cfg-1 steps (the API the
/// end-to-end tests drive step by step).
#[test]
fn gpt_ref_step_api_matches_official() {
    let dir = golden_dir();
    let a = tiny_arch();
    let mut g = GptRef::new(
        gpt_weights(),
        a.n_layer,
        a.n_head,
        a.dim,
        a.vocab,
        a.num_classes,
        a.cls_token_num,
        a.block_size,
        2,
    );
    let (_, gold_tokens) = read_npy_i64(&dir.join("greedy_cfg1.tokens.npy")).unwrap();
    let (_, gold_logits) = read_npy_f32(&dir.join("greedy_cfg1.logits.npy")).unwrap();
    let l0 = g.prefill(&LABELS);
    let l1 = g.decode(&[gold_tokens[0] as usize, gold_tokens[16] as usize], 0);
    // The bound is relative to the range of all the golden logits, as `check_greedy`'s.
    let range = range_of(&gold_logits);
    for (step, l) in [(0usize, &l0), (1, &l1)] {
        for (b, row) in l.iter().enumerate() {
            let gold = &gold_logits[(b * 16 + step) * 512..][..512];
            FP32_LOGITS.assert_close_with_range(&format!("step {step} row {b}"), row, gold, range);
        }
    }
}

#[test]
fn vq_decode_matches_official() {
    let dir = golden_dir();
    let weights = load_weights(&dir.join("vq.pt"));
    let (_, tokens) = read_npy_i64(&dir.join("greedy_cfg4.tokens.npy")).unwrap();
    let (ishape, gold) = read_npy_f32(&dir.join("vq_decode.images.npy")).unwrap();
    assert_eq!(ishape, vec![2, 3, 8, 8]);
    let mut got = Vec::with_capacity(gold.len());
    for toks in tokens.chunks(16) {
        let toks: Vec<usize> = toks.iter().map(|&t| t as usize).collect();
        let out = vq_decode(&weights, 8, 128, &[1, 1], 2, 32, &toks, 4);
        assert_eq!(out.len(), 3 * 8 * 8);
        got.extend(out);
    }
    let m = FP32_IMAGE.assert_close("vq_decode image", &got, &gold);
    eprintln!(
        "vq_decode: image max abs err {:.3e} (bound {:.0e}, level {})",
        m.max_abs, m.bound, FP32_IMAGE.name
    );
}
