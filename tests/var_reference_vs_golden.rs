//! The naive VAR reference (`llamagen_test_support::reference::VarModelRef`) against the
//! official VAR goldens in tests/golden/tiny-var (official code, random weights, fp32, CPU). The
//! reference is what `tests/var_official_sizes.rs` trusts at the official sizes, so it must
//! itself reproduce the official outputs:
//!
//! - greedy tokens (cfg 1.5 and cfg 4, labels [1, 7], 4 scales = 30 tokens): identical;
//! - the CFG-combined logits of every token: level `FP32_LOGITS` (1e-3 of the golden range);
//! - the images of those runs (`(decoder(...).clamp(-1, 1) + 1) / 2`) and the VQVAE decode of
//!   the given multi-scale tokens (`idxBl_to_img(last_one=True)`, clamped): `FP32_IMAGE`.
//!
//! No graph and no ONNX Runtime here: only the reference and the golden files.

mod support;

use llamagen_test_support::{FP32_IMAGE, FP32_LOGITS};
use support::golden::{read_f32, read_i64, tiny_var_dir};
use support::reference::{load_weights, PhiShare, VarArch, VarModelRef, VarQuantRef, VarVaeRef};

const TOKENS: usize = 30;
const VOCAB: usize = 64;
const LABELS: [usize; 2] = [1, 7];

/// The golden tiny VAR and VQVAE (README.json: config).
fn tiny<'w>(
    var: &'w support::reference::Weights,
    vae: &'w support::reference::Weights,
) -> VarModelRef<'w> {
    let patch_nums = [1, 2, 3, 4];
    VarModelRef {
        var,
        vae,
        arch: VarArch {
            depth: 2,
            embed_dim: 64,
            num_heads: 4,
            ffn_hidden: 256,
            num_classes: 10,
            vocab_size: VOCAB,
            cvae: 8,
            patch_nums: patch_nums.to_vec(),
            norm_eps: 1e-6,
            attn_l2_norm: true,
            shared_aln: false,
        },
        quant: VarQuantRef {
            vocab_size: VOCAB,
            cvae: 8,
            patch_nums: patch_nums.to_vec(),
            phi: PhiShare::Partially(4),
            quant_resi: 0.5,
        },
        decoder: VarVaeRef {
            cvae: 8,
            ch: 32,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
        },
    }
}

fn check_greedy(stem: &str, cfg: f32) {
    let dir = tiny_var_dir();
    let var = load_weights(&dir.join("var.pth"));
    let vae = load_weights(&dir.join("vae.pth"));
    let model = tiny(&var, &vae);
    let run = model.run(&LABELS, cfg, 4, None);

    let (shape, want) = read_i64(&dir.join(format!("{stem}.tokens.npy")));
    assert_eq!(shape, vec![2, TOKENS]);
    let got: Vec<i64> = run.tokens.iter().flatten().map(|&t| t as i64).collect();
    assert_eq!(
        got, want,
        "{stem}: greedy tokens differ from the official ones"
    );

    let (shape, want) = read_f32(&dir.join(format!("{stem}.logits.npy")));
    assert_eq!(shape, vec![2, TOKENS, VOCAB]);
    let got: Vec<f32> = run.logits.iter().flatten().flatten().copied().collect();
    let m = FP32_LOGITS.assert_close(&format!("{stem} logits"), &got, &want);
    eprintln!(
        "{stem}: reference logits max abs error {:.3e} (bound {:.3e}, level {})",
        m.max_abs, m.bound, FP32_LOGITS.name
    );

    let got: Vec<f32> = run
        .f_hat
        .iter()
        .flat_map(|f| model.decode(f))
        .map(|x| (x.clamp(-1.0, 1.0) + 1.0) * 0.5)
        .collect();
    let (shape, want) = read_f32(&dir.join(format!("{stem}.images.npy")));
    assert_eq!(shape, vec![2, 3, 64, 64]);
    let m = FP32_IMAGE.assert_close(&format!("{stem} images"), &got, &want);
    eprintln!(
        "{stem}: reference images max abs error {:.3e} (level {})",
        m.max_abs, FP32_IMAGE.name
    );
}

#[test]
fn reference_greedy_cfg1_5_matches_official() {
    check_greedy("greedy_cfg1.5", 1.5);
}

#[test]
fn reference_greedy_cfg4_matches_official() {
    check_greedy("greedy_cfg4", 4.0);
}

/// Teacher forcing reproduces the greedy run's logits (the forced path the official-size test
/// uses is the same loop).
#[test]
fn reference_teacher_forced_logits_match_official() {
    let dir = tiny_var_dir();
    let var = load_weights(&dir.join("var.pth"));
    let vae = load_weights(&dir.join("vae.pth"));
    let model = tiny(&var, &vae);
    let (_, tokens) = read_i64(&dir.join("greedy_cfg4.tokens.npy"));
    let forced: Vec<Vec<usize>> = tokens
        .chunks(TOKENS)
        .map(|r| r.iter().map(|&t| t as usize).collect())
        .collect();
    let run = model.run(&LABELS, 4.0, 4, Some(&forced));
    assert_eq!(run.tokens, forced);
    let (_, want) = read_f32(&dir.join("greedy_cfg4.logits.npy"));
    let got: Vec<f32> = run.logits.iter().flatten().flatten().copied().collect();
    FP32_LOGITS.assert_close("teacher-forced cfg4 logits", &got, &want);
}

#[test]
fn reference_vae_decode_matches_official() {
    let dir = tiny_var_dir();
    let var = load_weights(&dir.join("var.pth"));
    let vae = load_weights(&dir.join("vae.pth"));
    let model = tiny(&var, &vae);
    let (shape, tokens) = read_i64(&dir.join("vae_decode.tokens.npy"));
    assert_eq!(shape[1], TOKENS);
    let got: Vec<f32> = tokens
        .chunks(TOKENS)
        .flat_map(|r| {
            let toks: Vec<usize> = r.iter().map(|&t| t as usize).collect();
            model.decode_tokens(&toks)
        })
        .map(|x| x.clamp(-1.0, 1.0))
        .collect();
    let (shape, want) = read_f32(&dir.join("vae_decode.images.npy"));
    assert_eq!(shape, vec![2, 3, 64, 64]);
    let m = FP32_IMAGE.assert_close("reference vae decode", &got, &want);
    eprintln!(
        "vae decode: reference max abs error {:.3e} (level {})",
        m.max_abs, FP32_IMAGE.name
    );
}
