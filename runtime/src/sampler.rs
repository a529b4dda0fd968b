//! Token sampling on the CPU, matching the official LlamaGen `generate.py` (`sample`,
//! `top_k_top_p_filtering`) step for step, with the random draw supplied by the caller.
//!
//! Shape contract: one row of logits `[vocab]` (fp32, already CFG-combined) in, one token id out.
//! Order of operations (as the official code): `logits / max(temperature, 1e-5)`; top-k (keep
//! logits `>=` the k-th largest, so ties with the k-th are kept); top-p (sort descending with ties
//! broken by token id, drop tokens whose *preceding* cumulative probability exceeds `top_p`, so the
//! most likely token always survives); softmax; draw. The official code draws with
//! `torch.multinomial`; here the draw is an inverse CDF over the kept tokens in index order with a
//! caller-supplied uniform `u` in [0, 1) (from [`crate::rng::Philox`]), so CPU and GPU samplers can
//! share one random stream.
//!
//! Exactly specified arithmetic, so the CUDA sampler (`backend/cuda/kernels/sampler.cu`) returns
//! the same token bit for bit (the two files must change together):
//! - scaling is the f32 division `x / t`; `m` is the max over the top-k candidates;
//! - softmax weights are fixed point: `w = trunc(portable_exp(y - m) * 2^40)` as u64, where
//!   [`portable_exp`] is a fixed sequence of f32 multiplies and adds (no libm, no FMA; the kernel
//!   file is compiled with `--fmad=false`). The max token weighs exactly `2^40`; tokens below
//!   `2^-40` of the max weigh 0 and are never drawn. With vocab <= 2^20 every sum fits in u64,
//!   and integer sums do not depend on the order (or parallelism) of the accumulation;
//! - top-p keeps sorted positions `0..=j`, `j` the first whose cumulative weight exceeds
//!   `thr = trunc(f64(top_p) * f64(total))` (top_p < 0 counts as 0); VAR's rule
//!   ([`TopPRule::Var`]) takes the first that reaches it (`thr - 1` in the same search);
//! - the draw returns the first kept id (index order) whose cumulative weight exceeds
//!   `target = trunc(f64(u) * f64(kept total))`. f64 products of u64-to-f64 conversions are
//!   correctly rounded on both sides.
//!
//! Nothing allocates per token once a [`SamplerScratch`] of the right vocabulary size exists.

use std::cmp::Ordering;

pub use llamagen_bundle::sampling::{SamplingOptions, TopPRule, MAX_VOCAB};

/// Classifier-free guidance as the official `generate()`: `uncond + (cond - uncond) * scale`,
/// written in place into `cond`.
///
/// # Panics
/// If `cond` and `uncond` differ in length (a caller bug: both rows come from one batch).
pub fn cfg_combine(cond: &mut [f32], uncond: &[f32], scale: f32) {
    assert_eq!(
        cond.len(),
        uncond.len(),
        "cfg_combine: cond and uncond rows differ in length"
    );
    for (c, &u) in cond.iter_mut().zip(uncond) {
        *c = u + (*c - u) * scale;
    }
}

/// Index of the largest logit; the first index among equal maxima. NaNs are ignored
/// (0 is returned for an empty or all-NaN row).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v || (!found && v == best_v) {
            best = i;
            best_v = v;
            found = true;
        }
    }
    best as u32
}

/// The weight of the most likely token: weights are `exp(y - m)` in fixed point with 40
/// fractional bits.
pub const WEIGHT_ONE: u64 = 1 << 40;

// Constants of `portable_exp`; `sampler.cu` spells them as decimal literals that round to the
// same f32 bits (the device test `check_exp_and_weights_match_cpu` compares results bit for bit).
const EXP_MIN: f32 = -87.0;
const LOG2E: f32 = std::f32::consts::LOG2_E; // 0x3fb8aa3b, sampler.cu's 1.442695f
/// Rounds an f32 of magnitude < 2^22 to the nearest integer: `(t + 1.5 * 2^23) - 1.5 * 2^23`.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split so that `k * LN2_HI` is exact for |k| < 2^15 (Cody and Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2 / 2 (Cephes `expf` coefficients, highest first).
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for `x` in [-87, 0] as a fixed sequence of f32 operations (no libm, no FMA), so the CPU
/// and the CUDA sampler compute the same bits; 0 for `x < -87`, `-inf` and NaN. Exactly 1 at 0.
/// Accuracy: at most 1 ulp from the correctly rounded `e^x` (checked exhaustively over every
/// f32 in [-87, 0] against f64 `exp`; `tests/sampler.rs` samples the range).
///
/// Range reduction `x = k ln2 + r` with `k = round(x log2 e)`, then a degree-7 polynomial for
/// `e^r`, then a multiply by `2^k` built from its exponent bits.
#[inline]
pub fn portable_exp(x: f32) -> f32 {
    if x.is_nan() || x < EXP_MIN {
        return 0.0;
    }
    let k = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p * r + c;
    }
    let e = (r * r) * p + r + 1.0;
    // k in [-126, 0] here, so 2^k is a normal float.
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Fixed-point softmax weight of a logit `d = y - m <= 0` below the max: `trunc(e^d * 2^40)`.
#[inline]
pub fn weight(d: f32) -> u64 {
    truncate(scaled_exp(d))
}

/// `e^d * 2^40` in f32 (the scaling is exact).
#[inline]
fn scaled_exp(d: f32) -> f32 {
    portable_exp(d) * WEIGHT_ONE as f32
}

/// A scaled weight (in [0, 2^41)) truncated to an integer, as the kernel's f32 -> u64
/// conversion; through i64, whose conversion is a single instruction.
#[inline]
fn truncate(v: f32) -> u64 {
    v as i64 as u64
}

/// Reusable buffers for [`sample_token`] / [`filtered_probs`]; one per decode thread.
#[derive(Clone, Debug, Default)]
pub struct SamplerScratch {
    /// Order keys of the scaled logits for the top-k selection.
    select: Vec<i32>,
    /// Candidate token ids (survivors of top-k), ascending.
    ids: Vec<u32>,
    /// The candidates' scaled logits.
    vals: Vec<f32>,
    /// The candidates' fixed-point softmax weights (0 for tokens top-p removed).
    weights: Vec<u64>,
    /// The candidates' weights before truncation (see `weights()`).
    scaled: Vec<f32>,
    /// Positions into `ids`, sorted by descending logit for top-p.
    perm: Vec<u32>,
    /// Dense probabilities for [`filtered_probs`].
    dense: Vec<f32>,
}

impl SamplerScratch {
    /// Buffers sized for a vocabulary of `vocab` tokens.
    pub fn new(vocab: usize) -> Self {
        Self {
            select: Vec::with_capacity(vocab),
            ids: Vec::with_capacity(vocab),
            vals: Vec::with_capacity(vocab),
            weights: Vec::with_capacity(vocab),
            scaled: Vec::with_capacity(vocab),
            perm: Vec::with_capacity(vocab),
            dense: Vec::with_capacity(vocab),
        }
    }
}

/// Descending order on logits (callers have ruled out NaN).
#[inline]
fn desc(a: &f32, b: &f32) -> Ordering {
    b.total_cmp(a)
}

/// An i32 whose order is `f32::total_cmp`'s (integer compares make the top-k selection ~2x
/// faster than comparing floats); an involution on the bits. The CUDA sampler's radix select
/// uses the same key.
#[inline]
fn order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The inverse of [`order_key`].
#[inline]
fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// `trunc(f64(fraction) * f64(total))`: the cumulative weight a fraction in [0, 1] of `total`
/// must exceed (top-p threshold, draw target). Both conversions and the product are correctly
/// rounded, so the kernel's identical expression gives the same integer.
#[inline]
fn mass_threshold(fraction: f32, total: u64) -> u64 {
    (f64::from(fraction) * total as f64) as u64
}

/// Temperature, top-k and top-p; leaves the surviving token ids (ascending) in `s.ids` and their
/// fixed-point softmax weights in `s.weights` (0 for tokens top-p removed). Returns the kept
/// weight total, or `None` for a degenerate row (NaN, +inf after scaling, no finite logit, or a
/// vocabulary over [`MAX_VOCAB`]), where the callers fall back to argmax.
fn weights(
    logits: &[f32],
    opts: &SamplingOptions,
    rule: TopPRule,
    s: &mut SamplerScratch,
) -> Option<u64> {
    let n = logits.len();
    if n == 0 || n > MAX_VOCAB || logits.iter().any(|x| x.is_nan()) {
        return None;
    }
    let t = opts.temperature.max(1e-5);
    s.ids.clear();
    s.vals.clear();
    s.weights.clear();

    // Top-k: remove logits < the k-th largest (torch: `logits < topk(logits, k)[0][..., -1]`),
    // so ties with the k-th survive. O(n) selection on a copy of order keys, no sort. Tokens at
    // -inf carry no probability and are dropped from the candidates either way.
    let k = if opts.top_k > 0 { opts.top_k.min(n) } else { n };
    let kth = if k < n {
        s.select.clear();
        s.select.extend(logits.iter().map(|&x| order_key(x / t)));
        from_order_key(*s.select.select_nth_unstable(n - k).1)
    } else {
        f32::NEG_INFINITY
    };
    let mut m = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        let y = x / t;
        if y >= kth && y != f32::NEG_INFINITY {
            s.ids.push(i as u32);
            s.vals.push(y);
            if y > m {
                m = y;
            }
        }
    }
    if !m.is_finite() {
        return None;
    }
    // Two passes: the exp loop vectorises, the float -> integer conversion does not.
    s.scaled.clear();
    s.scaled.extend(s.vals.iter().map(|&y| scaled_exp(y - m)));
    s.weights.extend(s.scaled.iter().map(|&v| truncate(v)));
    let mut total: u64 = s.weights.iter().sum();

    // Top-p: sort the candidates descending (stable, so equal logits stay in id order) and keep
    // sorted positions 0..=j, j the first whose cumulative weight exceeds top_p of the total
    // (torch's removal mask `cumsum > top_p` shifted right by one).
    if opts.top_p < 1.0 {
        let thr = rule.strict_threshold(mass_threshold(opts.top_p.max(0.0), total));
        s.perm.clear();
        s.perm.extend(0..s.ids.len() as u32);
        let v = &s.vals;
        s.perm
            .sort_by(|&a, &b| desc(&v[a as usize], &v[b as usize]));
        let mut cum = 0u64;
        let mut keep = s.perm.len();
        for (pos, &j) in s.perm.iter().enumerate() {
            cum += s.weights[j as usize];
            if cum > thr {
                keep = pos + 1;
                break;
            }
        }
        for &j in &s.perm[keep..] {
            s.weights[j as usize] = 0;
        }
        total = cum;
    }
    Some(total)
}

/// The probability vector the official `logits_to_probs` returns (temperature, top-k, top-p,
/// softmax), in index order; filtered tokens are exactly 0. For a degenerate row (NaN, +inf, or
/// no finite logit) this is one-hot at [`argmax`].
pub fn filtered_probs<'a>(
    logits: &[f32],
    opts: &SamplingOptions,
    scratch: &'a mut SamplerScratch,
) -> &'a [f32] {
    let total = weights(logits, opts, TopPRule::LlamaGen, scratch);
    let s = scratch;
    s.dense.clear();
    s.dense.resize(logits.len(), 0.0);
    match total {
        Some(total) => {
            for (&i, &w) in s.ids.iter().zip(&s.weights) {
                s.dense[i as usize] = (w as f64 / total as f64) as f32;
            }
        }
        None => {
            if !logits.is_empty() {
                s.dense[argmax(logits) as usize] = 1.0;
            }
        }
    }
    &s.dense
}

/// One token from one row of (CFG-combined) logits. `u` is a uniform draw in [0, 1); the token is
/// the first id (in index order) whose cumulative weight exceeds `trunc(u * total)`.
/// With `top_k == 1` the result is [`argmax`] (first index among equal maxima). A degenerate row
/// (NaN, +inf, or no finite logit) also falls back to [`argmax`].
pub fn sample_token(
    logits: &[f32],
    opts: &SamplingOptions,
    u: f32,
    scratch: &mut SamplerScratch,
) -> u32 {
    sample_token_with(logits, opts, TopPRule::LlamaGen, u, scratch)
}

/// [`sample_token`] with top-p's `rule` (VAR's loop passes [`TopPRule::Var`]).
pub fn sample_token_with(
    logits: &[f32],
    opts: &SamplingOptions,
    rule: TopPRule,
    u: f32,
    scratch: &mut SamplerScratch,
) -> u32 {
    if opts.top_k == 1 {
        return argmax(logits);
    }
    let Some(total) = weights(logits, opts, rule, scratch) else {
        return argmax(logits);
    };
    // u < 1 makes target < total, so some kept token crosses it.
    let target = mass_threshold(u.clamp(0.0, 1.0), total);
    let mut cum = 0u64;
    let mut last = None;
    for (&i, &w) in scratch.ids.iter().zip(&scratch.weights) {
        if w > 0 {
            cum += w;
            if cum > target {
                return i;
            }
            last = Some(i);
        }
    }
    // Only reachable with u = 1 (outside the documented range): the last kept token.
    last.unwrap_or_else(|| argmax(logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(logits: &[f32], opts: &SamplingOptions) -> Vec<usize> {
        let mut s = SamplerScratch::new(logits.len());
        filtered_probs(logits, opts, &mut s)
            .iter()
            .enumerate()
            .filter(|(_, &p)| p > 0.0)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn top_k_keeps_ties_with_kth() {
        let l = [1.0, 5.0, 3.0, 3.0, 0.0, 4.0];
        let o = SamplingOptions {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
        };
        // 3rd largest is 3.0; both 3.0s are kept (torch's `logits < kth` removal rule).
        assert_eq!(kept(&l, &o), vec![1, 2, 3, 5]);
    }

    #[test]
    fn order_key_is_total_order_and_invertible() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn degenerate_rows_fall_back_to_argmax() {
        let mut s = SamplerScratch::new(3);
        let o = SamplingOptions::default();
        let l = [f32::NEG_INFINITY; 3];
        assert_eq!(sample_token(&l, &o, 0.5, &mut s), 0);
        let l = [0.0, f32::INFINITY, f32::INFINITY];
        assert_eq!(sample_token(&l, &o, 0.9, &mut s), 1);
        assert_eq!(filtered_probs(&l, &o, &mut s), &[0.0, 1.0, 0.0]);
    }
}
