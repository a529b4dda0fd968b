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
    /// Scaled (and filtered: removed = -inf) logits, index order.
    logits: Vec<f32>,
    /// Copy for the top-k selection.
    select: Vec<f32>,
    /// Kept token ids, sorted for top-p.
    order: Vec<u32>,
    /// Unnormalised (then, for `filtered_probs`, normalised) probabilities, index order.
    probs: Vec<f32>,
}

impl SamplerScratch {
    /// Buffers sized for a vocabulary of `vocab` tokens.
    pub fn new(vocab: usize) -> Self {
        Self {
            logits: Vec::with_capacity(vocab),
            select: Vec::with_capacity(vocab),
            order: Vec::with_capacity(vocab),
            probs: Vec::with_capacity(vocab),
        }
    }
}

/// Descending total order on logits (NaN sorts as largest, as in torch's topk).
#[inline]
fn desc(a: &f32, b: &f32) -> Ordering {
    b.total_cmp(a)
}

/// Temperature, top-k, top-p and the unnormalised softmax weights into `s.probs` (removed tokens
/// get weight 0). Returns the weight total (f64 accumulation, index order), or `None` when the row
/// is degenerate (no finite logit, +inf or NaN), where the caller falls back to argmax.
fn weights(logits: &[f32], opts: &SamplingOptions, s: &mut SamplerScratch) -> Option<f64> {
    let n = logits.len();
    if n == 0 {
        return None;
    }
    let t = opts.temperature.max(1e-5);
    s.logits.clear();
    s.logits.extend(logits.iter().map(|&x| x / t));

    // Top-k: remove logits < the k-th largest (torch: `logits < topk(logits, k)[0][..., -1]`).
    if opts.top_k > 0 {
        let k = opts.top_k.min(n);
        if k < n {
            s.select.clear();
            s.select.extend_from_slice(&s.logits);
            let (_, kth, _) = s.select.select_nth_unstable_by(k - 1, desc);
            let kth = *kth;
            for x in s.logits.iter_mut() {
                if *x < kth {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }

    // Top-p over the surviving tokens (removed ones have probability 0 and do not move the
    // cumulative sum, so leaving them out of the sort changes nothing).
    if opts.top_p < 1.0 {
        s.order.clear();
        s.order
            .extend((0..n as u32).filter(|&i| s.logits[i as usize] != f32::NEG_INFINITY));
        let l = &s.logits;
        // Stable: equal logits stay in index order.
        s.order
            .sort_by(|&a, &b| desc(&l[a as usize], &l[b as usize]));
        if let Some(&first) = s.order.first() {
            let m = l[first as usize];
            let mut total = 0f64;
            for &i in s.order.iter() {
                total += f64::from((l[i as usize] - m).exp());
            }
            // Keep sorted positions 0..=j where j is the first position whose cumulative
            // probability exceeds top_p (the removal mask shifted right by one).
            let mut keep = s.order.len();
            let mut cum = 0f64;
            for (j, &i) in s.order.iter().enumerate() {
                cum += f64::from((l[i as usize] - m).exp()) / total;
                if cum > f64::from(opts.top_p) {
                    keep = j + 1;
                    break;
                }
            }
            for &i in &s.order[keep..] {
                s.logits[i as usize] = f32::NEG_INFINITY;
            }
        }
    }

    let m = s.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() || s.logits.iter().any(|x| x.is_nan()) {
        return None;
    }
    s.probs.clear();
    let mut total = 0f64;
    for &x in s.logits.iter() {
        let p = (x - m).exp();
        total += f64::from(p);
        s.probs.push(p);
    }
    (total > 0.0 && total.is_finite()).then_some(total)
}

/// The probability vector the official `logits_to_probs` returns (temperature, top-k, top-p,
/// softmax), in index order; filtered tokens are exactly 0. For a degenerate row (no finite
/// logit, +inf or NaN) this is one-hot at [`argmax`].
pub fn filtered_probs<'a>(
    logits: &[f32],
    opts: &SamplingOptions,
    scratch: &'a mut SamplerScratch,
) -> &'a [f32] {
    match weights(logits, opts, scratch) {
        Some(total) => {
            for p in scratch.probs.iter_mut() {
                *p = (f64::from(*p) / total) as f32;
            }
        }
        None => {
            scratch.probs.clear();
            scratch.probs.resize(logits.len(), 0.0);
            if !logits.is_empty() {
                scratch.probs[argmax(logits) as usize] = 1.0;
            }
        }
    }
    &scratch.probs
}

/// One token from one row of (CFG-combined) logits. `u` is a uniform draw in [0, 1); the token is
/// the first index whose cumulative (unnormalised, index-order) weight exceeds `u * total`.
/// With `top_k == 1` the result is [`argmax`] (first index among equal maxima). A degenerate row
/// (no finite logit, +inf or NaN) also falls back to [`argmax`].
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
    for (i, &p) in scratch.probs.iter().enumerate() {
        if p > 0.0 {
            cum += f64::from(p);
            if cum > target {
                return i as u32;
            }
            last = Some(i);
        }
    }
    // Only reachable through rounding with u at the top of [0, 1): the last kept token.
    last.map_or_else(|| argmax(logits), |i| i as u32)
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
