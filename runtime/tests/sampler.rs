//! Sampler and Philox RNG: hand-checked filtering sets and probabilities, greedy behaviour,
//! determinism, and a statistical check of the inverse-CDF draw.
//!
//! Tolerance levels (`llamagen_test_support::tolerance`): probabilities are compared at
//! `FP32_PROBS` (atol 1e-6, fp32 softmax of small rows); the statistical test allows
//! `FREQUENCY`, 0.02 absolute per token frequency over 20000 draws (the standard error is at
//! most 0.0036, so this is > 5 sigma); `portable_exp` is held to 1 ulp.

use std::path::PathBuf;

use llamagen_runtime::npy::read_npy;
use llamagen_runtime::npy::NpyData;
use llamagen_runtime::rng::Philox;
use llamagen_runtime::sampler::{
    argmax, cfg_combine, filtered_probs, portable_exp, sample_token, weight, SamplerScratch,
    SamplingOptions, WEIGHT_ONE,
};
use llamagen_test_support::{Tolerance, FP32_PROBS};

/// Token frequencies of 20000 draws vs their probabilities: the standard error is at most
/// 0.0036, so 0.02 absolute is > 5 sigma (a statistical bound of this file only).
const FREQUENCY: Tolerance = Tolerance::abs("token frequency of 20000 draws (0.02 abs)", 0.02);

fn opts(temperature: f32, top_k: usize, top_p: f32) -> SamplingOptions {
    SamplingOptions {
        temperature,
        top_k,
        top_p,
    }
}

fn probs(logits: &[f32], o: &SamplingOptions) -> Vec<f32> {
    let mut s = SamplerScratch::new(logits.len());
    filtered_probs(logits, o, &mut s).to_vec()
}

fn kept(logits: &[f32], o: &SamplingOptions) -> Vec<usize> {
    probs(logits, o)
        .iter()
        .enumerate()
        .filter(|(_, &p)| p > 0.0)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn defaults_are_the_official_sample_c2i_ones() {
    assert_eq!(SamplingOptions::default(), opts(1.0, 2000, 1.0));
}

#[test]
fn cfg_combine_arithmetic() {
    let mut cond = [1.0f32, 2.0, 3.0, -1.0];
    let uncond = [0.5f32, 2.0, 5.0, 1.0];
    cfg_combine(&mut cond, &uncond, 4.0);
    // 0.5 + 0.5*4, 2 + 0*4, 5 + (-2)*4, 1 + (-2)*4
    assert_eq!(cond, [2.5, 2.0, -3.0, -7.0]);

    let mut cond = [1.0f32, -2.0];
    cfg_combine(&mut cond, &[7.0, 9.0], 1.0);
    assert_eq!(cond, [1.0, -2.0], "scale 1 returns cond");
}

#[test]
fn argmax_takes_first_of_equal_maxima() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[5.0, 3.0, 5.0]), 0);
    assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    assert_eq!(argmax(&[0.0, f32::NAN, 1.0]), 2);
}

#[test]
fn top_k_keeps_exactly_the_k_largest_plus_ties() {
    let l = [0.3f32, 2.0, -1.0, 1.5, 2.0, 0.9, 1.5, 1.5, -4.0];
    // k = 2: the 2nd largest is 2.0 -> {1, 4}.
    assert_eq!(kept(&l, &opts(1.0, 2, 1.0)), vec![1, 4]);
    // k = 3: the 3rd largest is 1.5, which has three copies: all kept (torch's `< kth` rule).
    assert_eq!(kept(&l, &opts(1.0, 3, 1.0)), vec![1, 3, 4, 6, 7]);
    // k = 6: 6th largest is 0.9 -> everything >= 0.9.
    assert_eq!(kept(&l, &opts(1.0, 6, 1.0)), vec![1, 3, 4, 5, 6, 7]);
    // k clamped to the vocabulary; k = 0 is off.
    assert_eq!(kept(&l, &opts(1.0, 1000, 1.0)), (0..9).collect::<Vec<_>>());
    assert_eq!(kept(&l, &opts(1.0, 0, 1.0)), (0..9).collect::<Vec<_>>());
}

#[test]
fn top_k_renormalises_over_the_kept_set() {
    // exp logits 1, 2, 4, 8 (ln); top-2 keeps 4 and 8 -> 1/3, 2/3.
    let l: Vec<f32> = [1.0f32, 2.0, 4.0, 8.0].iter().map(|x| x.ln()).collect();
    FP32_PROBS.assert_close(
        "top-2 probabilities",
        &probs(&l, &opts(1.0, 2, 1.0)),
        &[0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0],
    );
}

#[test]
fn top_k_on_a_large_vocab_matches_a_full_sort() {
    // Deterministic pseudo-random logits, vocab 16384, k 2000 (the official defaults).
    let p = Philox::new(99);
    let l: Vec<f32> = (0..16384).map(|i| p.uniform(0, i) * 20.0 - 10.0).collect();
    let mut sorted = l.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[1999];
    let want: Vec<usize> = (0..l.len()).filter(|&i| l[i] >= kth).collect();
    assert!(want.len() >= 2000);
    assert_eq!(kept(&l, &opts(1.0, 2000, 1.0)), want);
}

/// probabilities 0.5, 0.3, 0.15, 0.05 placed at token ids 2, 0, 3, 1.
fn nucleus_row() -> Vec<f32> {
    [0.3f32, 0.05, 0.5, 0.15].iter().map(|p| p.ln()).collect()
}

#[test]
fn top_p_keeps_the_prefix_up_to_the_first_crossing() {
    let l = nucleus_row();
    // sorted cumsum 0.5, 0.8, 0.95, 1.0; top_p 0.6: remove [F,T,T,T] -> shifted [F,F,T,T].
    assert_eq!(kept(&l, &opts(1.0, 0, 0.6)), vec![0, 2]);
    FP32_PROBS.assert_close(
        "top-p 0.6 probabilities",
        &probs(&l, &opts(1.0, 0, 0.6)),
        &[0.375, 0.0, 0.625, 0.0],
    );
    // top_p 0.85: remove [F,F,T,T] -> shifted [F,F,F,T].
    assert_eq!(kept(&l, &opts(1.0, 0, 0.85)), vec![0, 2, 3]);
    // top_p 0.99: nothing crosses before the last -> all kept.
    assert_eq!(kept(&l, &opts(1.0, 0, 0.99)), vec![0, 1, 2, 3]);
}

#[test]
fn top_p_always_keeps_the_most_likely_token() {
    let l = nucleus_row();
    // The top token alone (0.5) already exceeds 0.1 / 0.0 but survives the shift.
    assert_eq!(kept(&l, &opts(1.0, 0, 0.1)), vec![2]);
    assert_eq!(kept(&l, &opts(1.0, 0, 0.0)), vec![2]);
    FP32_PROBS.assert_close(
        "top-p 0.1 probabilities",
        &probs(&l, &opts(1.0, 0, 0.1)),
        &[0.0, 0.0, 1.0, 0.0],
    );
    let mut s = SamplerScratch::new(4);
    for u in [0.0f32, 0.3, 0.999_999] {
        assert_eq!(sample_token(&l, &opts(1.0, 0, 0.1), u, &mut s), 2);
    }
}

#[test]
fn top_p_applies_after_top_k() {
    let l = nucleus_row();
    // top-3 keeps 0.5, 0.3, 0.15 -> renormalised 0.526, 0.316, 0.158; cumsum 0.526, 0.842, 1.0;
    // top_p 0.8 -> remove [F,T,T] -> shifted [F,F,T]: ids 2 and 0.
    assert_eq!(kept(&l, &opts(1.0, 3, 0.8)), vec![0, 2]);
    // Without top-k the cumsum is 0.5, 0.8, 0.95: top_p 0.81 keeps 3 tokens.
    assert_eq!(kept(&l, &opts(1.0, 0, 0.81)), vec![0, 2, 3]);
}

#[test]
fn temperature_scales_logits() {
    let l = [0.0f32, 2f32.ln()];
    FP32_PROBS.assert_close(
        "T = 1 probabilities",
        &probs(&l, &opts(1.0, 0, 1.0)),
        &[1.0 / 3.0, 2.0 / 3.0],
    );
    // T = 2: weights 1 and sqrt(2).
    let r2 = 2f32.sqrt();
    FP32_PROBS.assert_close(
        "T = 2 probabilities",
        &probs(&l, &opts(2.0, 0, 1.0)),
        &[1.0 / (1.0 + r2), r2 / (1.0 + r2)],
    );
    // T = 0.5: weights 1 and 4.
    FP32_PROBS.assert_close(
        "T = 0.5 probabilities",
        &probs(&l, &opts(0.5, 0, 1.0)),
        &[0.2, 0.8],
    );
    // T = 0 is clamped to 1e-5: a one-hot at the max.
    FP32_PROBS.assert_close(
        "T = 0 probabilities",
        &probs(&l, &opts(0.0, 0, 1.0)),
        &[0.0, 1.0],
    );
    // Temperature is applied before top-p: at T = 0.5 the top token has 0.8 > 0.7 alone.
    assert_eq!(kept(&l, &opts(0.5, 0, 0.7)), vec![1]);
    assert_eq!(kept(&l, &opts(1.0, 0, 0.7)), vec![0, 1]);
}

#[test]
fn inverse_cdf_walks_tokens_in_index_order() {
    let l: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
    let o = opts(1.0, 0, 1.0);
    let mut s = SamplerScratch::new(4);
    let cases = [
        (0.0, 0),
        (0.05, 0),
        (0.15, 1),
        (0.29, 1),
        (0.35, 2),
        (0.59, 2),
        (0.65, 3),
        (0.999_999_94, 3),
    ];
    for (u, want) in cases {
        assert_eq!(sample_token(&l, &o, u, &mut s), want, "u = {u}");
    }
}

#[test]
fn filtered_tokens_are_never_drawn() {
    // top-2 keeps ids 1 and 3; every u maps to one of them.
    let l = [0.0f32, 3.0, 1.0, 2.5];
    let o = opts(1.0, 2, 1.0);
    let mut s = SamplerScratch::new(4);
    for i in 0..1000 {
        let u = i as f32 / 1000.0;
        let t = sample_token(&l, &o, u, &mut s);
        assert!(t == 1 || t == 3, "u = {u} drew {t}");
    }
}

#[test]
fn top_k_one_is_argmax_even_with_ties() {
    let l = [0.5f32, 4.0, -2.0, 4.0, 4.0];
    let mut s = SamplerScratch::new(l.len());
    for u in [0.0f32, 0.5, 0.999_999_94] {
        assert_eq!(sample_token(&l, &SamplingOptions::greedy(), u, &mut s), 1);
        assert_eq!(sample_token(&l, &opts(0.3, 1, 0.5), u, &mut s), 1);
    }
}

#[test]
fn statistical_frequencies_and_determinism() {
    let p_true = [0.1f64, 0.2, 0.3, 0.4];
    let l: Vec<f32> = p_true.iter().map(|p| (*p as f32).ln()).collect();
    let o = opts(1.0, 0, 1.0);
    let draw = |seed: u64| -> Vec<u32> {
        let rng = Philox::new(seed);
        let mut s = SamplerScratch::new(4);
        (0..20_000u64)
            .map(|step| sample_token(&l, &o, rng.uniform(5, step), &mut s))
            .collect()
    };
    let a = draw(1234);
    let mut counts = [0usize; 4];
    for &t in &a {
        counts[t as usize] += 1;
    }
    let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / a.len() as f64).collect();
    FREQUENCY.assert_close("token frequencies vs probabilities", &freq, &p_true);
    assert_eq!(a, draw(1234), "same seed -> same tokens");
    assert_ne!(a, draw(1235), "another seed -> other tokens");
}

#[test]
fn scratch_is_reusable_across_rows_and_sizes() {
    let mut s = SamplerScratch::new(2);
    let o = opts(1.0, 2, 0.9);
    let big: Vec<f32> = (0..100).map(|i| i as f32 * 0.01).collect();
    let t1 = sample_token(&big, &o, 0.3, &mut s);
    assert!(t1 == 98 || t1 == 99);
    let small = [5.0f32, 0.0];
    assert_eq!(sample_token(&small, &o, 0.3, &mut s), 0);
    assert_eq!(
        sample_token(&big, &o, 0.3, &mut SamplerScratch::new(100)),
        t1
    );
}

/// The official tiny c2i fixtures (`tests/golden/tiny-c2i`).
fn tiny_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-c2i")
}

#[test]
fn greedy_matches_official_golden_tokens() {
    let dir = tiny_dir();
    for name in ["greedy_cfg1", "greedy_cfg4"] {
        let (ls, logits) = read_npy(&dir.join(format!("{name}.logits.npy"))).unwrap();
        let (ts, tokens) = read_npy(&dir.join(format!("{name}.tokens.npy"))).unwrap();
        let (NpyData::F32(logits), NpyData::I64(tokens)) = (logits, tokens) else {
            panic!("{name}: unexpected dtypes");
        };
        assert_eq!(ls[..2], ts[..]);
        let vocab = ls[2];
        let mut s = SamplerScratch::new(vocab);
        for (row, &tok) in logits.chunks_exact(vocab).zip(&tokens) {
            assert_eq!(i64::from(argmax(row)), tok, "{name}");
            let t = sample_token(row, &SamplingOptions::greedy(), 0.7, &mut s);
            assert_eq!(i64::from(t), tok, "{name}");
        }
    }
}

/// Distance in units in the last place between `got` and the f64 value `want` (rounded to f32).
fn ulps(got: f32, want: f64) -> u32 {
    let w = want as f32;
    (got.to_bits() as i64 - w.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn portable_exp_is_within_1_ulp_of_f64_exp() {
    // Tolerance: 1 ulp of f32 from the correctly rounded e^x over the whole domain [-87, 0]
    // (an exhaustive run over all 1.1e9 f32 values found 99.2 % exact and the rest 1 ulp off;
    // Cody-Waite reduction + degree-7 polynomial without FMA). Here every 97th bit pattern of
    // the domain, plus both ends.
    let lo = (-87.0f32).to_bits();
    let mut worst = (0u32, 0f32);
    let mut check = |x: f32| {
        let e = ulps(portable_exp(x), f64::from(x).exp());
        if e > worst.0 {
            worst = (e, x);
        }
    };
    // Negative floats: bit patterns from 0x8000_0000 (-0.0) up to -87's.
    let mut b = 0x8000_0000u32;
    while b <= lo {
        check(f32::from_bits(b));
        b += 97;
    }
    check(-87.0);
    check(0.0);
    assert!(worst.0 <= 1, "{} ulp at x = {:e}", worst.0, worst.1);
}

#[test]
fn portable_exp_edges() {
    assert_eq!(portable_exp(0.0), 1.0);
    assert_eq!(portable_exp(-0.0), 1.0);
    assert_eq!(portable_exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(portable_exp(f32::NAN), 0.0);
    assert_eq!(portable_exp(-87.5), 0.0);
    assert!(portable_exp(-87.0) > 0.0);
    // The max token weighs exactly WEIGHT_ONE; weights vanish below 2^-40 of the max.
    assert_eq!(weight(0.0), WEIGHT_ONE);
    assert_eq!(weight(-28.0), 0);
    assert!(weight(-27.0) > 0);
}
