//! Token sampling on the CPU, matching the official LlamaGen `generate.py` (`sample`,
//! `top_k_top_p_filtering`) step for step, with the random draw supplied by the caller.
//!
//! Shape contract: one row of logits `[vocab]` (fp32, already CFG-combined) in, one token id out.
//! Order of operations (as the official code): `logits / max(temperature, 1e-5)`; top-k (keep
//! logits `>=` the k-th largest, so ties with the k-th are kept); top-p (sort descending, softmax,
//! cumulative sum, drop tokens whose *preceding* cumulative probability exceeds `top_p`, so the
//! most likely token always survives); softmax; draw. The official code draws with
//! `torch.multinomial`; here the draw is an inverse CDF over the kept tokens in index order with a
//! caller-supplied uniform `u` in [0, 1) (from [`crate::rng::Philox`]), so CPU and GPU samplers can
//! share one random stream. Ties in the top-p sort are broken by token index (stable sort).
//!
//! Nothing allocates per token once a [`SamplerScratch`] of the right vocabulary size exists.

use std::cmp::Ordering;

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Logits are divided by `max(temperature, 1e-5)`.
    pub temperature: f32,
    /// Keep the `top_k` largest logits (ties with the k-th kept); 0 = off. Clamped to the vocab.
    pub top_k: usize,
    /// Nucleus threshold; `1.0` (or more) = off.
    pub top_p: f32,
}

impl Default for SamplingOptions {
    /// Official `sample_c2i.py` defaults: temperature 1.0, top-k 2000, top-p 1.0.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 2000,
            top_p: 1.0,
        }
    }
}

impl SamplingOptions {
    /// Greedy decoding (top-k 1): [`sample_token`] returns [`argmax`] of the logits.
    pub fn greedy() -> Self {
        Self {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        }
    }
}

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

/// Reusable buffers for [`sample_token`] / [`filtered_probs`]; one per decode thread.
#[derive(Clone, Debug, Default)]
pub struct SamplerScratch {
    /// Order keys of the scaled logits for the top-k selection.
    select: Vec<i32>,
    /// Candidate token ids (survivors of top-k), ascending.
    ids: Vec<u32>,
    /// The candidates' scaled logits (top-p removals become -inf), then their softmax weights.
    vals: Vec<f32>,
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
/// faster than comparing floats); an involution on the bits.
#[inline]
fn order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

#[inline]
fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// Temperature, top-k and top-p; leaves the surviving token ids (ascending) in `s.ids` and their
/// unnormalised softmax weights in `s.vals` (0 for tokens top-p removed). Returns the weight total
/// (f64, accumulated in id order), or `None` for a degenerate row (NaN, +inf after scaling, or no
/// finite logit), where the callers fall back to argmax.
fn weights(logits: &[f32], opts: &SamplingOptions, s: &mut SamplerScratch) -> Option<f64> {
    let n = logits.len();
    if n == 0 || n > u32::MAX as usize || logits.iter().any(|x| x.is_nan()) {
        return None;
    }
    let t = opts.temperature.max(1e-5);
    s.ids.clear();
    s.vals.clear();

    // Top-k: remove logits < the k-th largest (torch: `logits < topk(logits, k)[0][..., -1]`),
    // so ties with the k-th survive. O(n) selection on a copy of order keys, no sort. Tokens at -inf carry no
    // probability and are dropped from the candidates either way.
    let k = if opts.top_k > 0 { opts.top_k.min(n) } else { n };
    let kth = if k < n {
        s.select.clear();
        s.select.extend(logits.iter().map(|&x| order_key(x / t)));
        from_order_key(*s.select.select_nth_unstable(n - k).1)
    } else {
        f32::NEG_INFINITY
    };
    for (i, &x) in logits.iter().enumerate() {
        let y = x / t;
        if y >= kth && y != f32::NEG_INFINITY {
            s.ids.push(i as u32);
            s.vals.push(y);
        }
    }
    let m = s.vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return None;
    }

    // Top-p: sort the candidates descending (stable, so equal logits stay in id order), softmax,
    // cumulative sum; keep sorted positions 0..=j where j is the first whose cumulative
    // probability exceeds top_p (torch's removal mask shifted right by one).
    if opts.top_p < 1.0 {
        s.perm.clear();
        s.perm.extend(0..s.ids.len() as u32);
        let v = &s.vals;
        s.perm
            .sort_by(|&a, &b| desc(&v[a as usize], &v[b as usize]));
        let total: f64 = s
            .perm
            .iter()
            .map(|&j| f64::from((v[j as usize] - m).exp()))
            .sum();
        let mut keep = s.perm.len();
        let mut cum = 0f64;
        for (pos, &j) in s.perm.iter().enumerate() {
            cum += f64::from((v[j as usize] - m).exp()) / total;
            if cum > f64::from(opts.top_p) {
                keep = pos + 1;
                break;
            }
        }
        for &j in &s.perm[keep..] {
            s.vals[j as usize] = f32::NEG_INFINITY;
        }
    }

    // Softmax weights (the max survives top-p, so m is still the max).
    let mut total = 0f64;
    for v in s.vals.iter_mut() {
        *v = (*v - m).exp();
        total += f64::from(*v);
    }
    (total > 0.0 && total.is_finite()).then_some(total)
}

/// The probability vector the official `logits_to_probs` returns (temperature, top-k, top-p,
/// softmax), in index order; filtered tokens are exactly 0. For a degenerate row (NaN, +inf, or
/// no finite logit) this is one-hot at [`argmax`].
pub fn filtered_probs<'a>(
    logits: &[f32],
    opts: &SamplingOptions,
    scratch: &'a mut SamplerScratch,
) -> &'a [f32] {
    let total = weights(logits, opts, scratch);
    let s = scratch;
    s.dense.clear();
    s.dense.resize(logits.len(), 0.0);
    match total {
        Some(total) => {
            for (&i, &w) in s.ids.iter().zip(&s.vals) {
                s.dense[i as usize] = (f64::from(w) / total) as f32;
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
/// the first id (in index order) whose cumulative weight exceeds `u * total`.
/// With `top_k == 1` the result is [`argmax`] (first index among equal maxima). A degenerate row
/// (NaN, +inf, or no finite logit) also falls back to [`argmax`].
pub fn sample_token(
    logits: &[f32],
    opts: &SamplingOptions,
    u: f32,
    scratch: &mut SamplerScratch,
) -> u32 {
    if opts.top_k == 1 {
        return argmax(logits);
    }
    let Some(total) = weights(logits, opts, scratch) else {
        return argmax(logits);
    };
    let target = f64::from(u.clamp(0.0, 1.0)) * total;
    let mut cum = 0f64;
    let mut last = None;
    for (&i, &w) in scratch.ids.iter().zip(&scratch.vals) {
        if w > 0.0 {
            cum += f64::from(w);
            if cum > target {
                return i;
            }
            last = Some(i);
        }
    }
    // Only reachable through rounding with u at the top of [0, 1): the last kept token.
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
