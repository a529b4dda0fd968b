//! Scale estimators for symmetric int8: `scale = threshold / 127`, threshold from a
//! [`Histogram`] of |x|.
//!
//! - [`Method::Max`]: the exact max |x| seen (no clipping).
//! - [`Method::Percentile`]: the p-th percentile of |x|, interpolated linearly inside the bin
//!   that holds it (values are taken as spread evenly over their bin).
//! - [`Method::Entropy`]: TensorRT's entropy calibration (KL-divergence threshold search) as
//!   described in Szymon Migacz, "8-bit Inference with TensorRT" (GTC 2017). For every
//!   candidate `i` in `L..=n` (n bins, L = 128 quantized levels):
//!   1. reference P = `hist[0..i]`, with the outliers `sum(hist[i..])` added to `P[i-1]`;
//!   2. candidate Q: `hist[0..i]` (without the outliers) merged into L levels, bin `j` going
//!      to level `j * L / i` (integer division, so levels differ by at most one bin), then
//!      expanded back: each bin where P is non-zero gets an equal share of its level's mass,
//!      bins where P is zero stay zero;
//!   3. both normalised to sum 1; `KL(P||Q) = sum over P_j > 0 of P_j ln(P_j / Q_j)`, +inf
//!      when some `P_j > 0` has `Q_j = 0` (a level whose whole candidate mass is 0 but that
//!      receives the outliers: such a clip point is never chosen). No epsilon smoothing is
//!      applied: with Q's non-zero pattern taken from P, it is only needed for that case.
//!
//!   The smallest divergence wins; ties (within [`KL_TIE`]) go to the larger `i` (less
//!   clipping, as NVIDIA's pytorch-quantization `_compute_amax_entropy` picks its last
//!   argmin). threshold = `(i + 0.5) * bin_width`, as
//!   in the slides (pytorch-quantization uses the bin edge `i * bin_width`; the difference
//!   is half a bin, 1/4096 of the range).
//!
//! Every threshold is clamped to the histogram's exact max |x|: no estimator spends int8
//! levels above the largest value seen (with i = n the entropy formula lands half a bin past
//! the range). An empty or all-zero histogram has threshold 0, and [`scale`] refuses it.

use std::fmt;
use std::str::FromStr;

use crate::error::CalibError;
use crate::histogram::Histogram;

/// Largest int8 magnitude in symmetric quantization: `q = clamp(round(x / scale), -127, 127)`.
pub const INT8_MAX: f32 = 127.0;
/// Percentile used when `"percentile"` is given without a value.
pub const DEFAULT_PERCENTILE: f32 = 99.99;
/// Quantized levels of the entropy search: 128 magnitudes of int8 (sign handled by |x|).
pub const ENTROPY_QUANTIZED_BINS: usize = 128;
/// Divergences this close to the minimum are ties (resolved towards less clipping).
pub const KL_TIE: f64 = 1e-12;

/// How a threshold is derived from a histogram. Parses from `"max"`, `"entropy"`,
/// `"percentile"` (= [`DEFAULT_PERCENTILE`]) or `"percentile:<p>"` with 0 < p <= 100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Max,
    /// The p-th percentile of |x|, p in (0, 100].
    Percentile(f32),
    Entropy,
}

impl Method {
    /// A percentile method, with `p` checked to lie in (0, 100].
    pub fn percentile(p: f32) -> Result<Method, CalibError> {
        let m = Method::Percentile(p);
        m.check()?;
        Ok(m)
    }

    /// Rejects a percentile outside (0, 100] (or NaN).
    pub fn check(&self) -> Result<(), CalibError> {
        match *self {
            Method::Percentile(p) if !(p > 0.0 && p <= 100.0) => Err(CalibError::InvalidMethod {
                value: self.to_string(),
                reason: "the percentile must be in (0, 100], e.g. 99.99".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Max => f.write_str("max"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Entropy => f.write_str("entropy"),
        }
    }
}

impl FromStr for Method {
    type Err = CalibError;

    fn from_str(s: &str) -> Result<Method, CalibError> {
        let invalid = |reason: &str| CalibError::InvalidMethod {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        match s {
            "max" => Ok(Method::Max),
            "entropy" => Ok(Method::Entropy),
            "percentile" => Ok(Method::Percentile(DEFAULT_PERCENTILE)),
            _ => match s.strip_prefix("percentile:") {
                Some(p) => {
                    let p: f32 = p.trim().parse().map_err(|_| {
                        invalid("expected percentile:<number>, e.g. percentile:99.99")
                    })?;
                    Method::percentile(p).map_err(|_| {
                        invalid("the percentile must be in (0, 100], e.g. percentile:99.99")
                    })
                }
                None => Err(invalid(
                    "expected one of: max, entropy, percentile, percentile:<p> (0 < p <= 100)",
                )),
            },
        }
    }
}

/// The clipping threshold (>= 0, <= `hist.max_abs()`). A percentile outside (0, 100] is
/// clamped into [0, 100] here (NaN reads as 100); [`scale`] and `FromStr` reject it instead.
pub fn threshold(hist: &Histogram, method: Method) -> f32 {
    match method {
        Method::Max => hist.max_abs(),
        Method::Percentile(p) => percentile_threshold(hist, p),
        Method::Entropy => entropy_threshold(hist),
    }
}

/// `threshold / 127`; an error for an invalid method or when there is no non-zero data (a
/// zero scale would make QuantizeLinear divide by zero).
pub fn scale(hist: &Histogram, method: Method) -> Result<f32, CalibError> {
    method.check()?;
    let s = threshold(hist, method) / INT8_MAX;
    if s > 0.0 {
        Ok(s)
    } else {
        Err(CalibError::NoData {
            reason: format!(
                "{} finite values with max |x| = {} give threshold 0 ({method}); \
                 skip int8 for this tensor or choose a scale by hand",
                hist.count(),
                hist.max_abs()
            ),
        })
    }
}

/// The p-th percentile of |x| (p clamped to [0, 100], NaN = 100), linearly interpolated
/// within its bin: with `below` values in bins `< j` and `c` in bin `j`, the target rank
/// `p / 100 * count` sits at `(j + (target - below) / c) * bin_width`.
pub fn percentile_threshold(hist: &Histogram, p: f32) -> f32 {
    if hist.count() == 0 || hist.range() == 0.0 {
        return 0.0;
    }
    let p = if p.is_nan() {
        100.0
    } else {
        p.clamp(0.0, 100.0)
    };
    let target = f64::from(p) / 100.0 * hist.count() as f64;
    let width = hist.bin_width();
    let mut below = 0u64;
    for (j, &c) in hist.counts().iter().enumerate() {
        if c > 0 && (below + c) as f64 >= target {
            let frac = ((target - below as f64) / c as f64).max(0.0);
            return clamp_to_max((j as f64 + frac) * width, hist);
        }
        below += c;
    }
    hist.max_abs()
}

/// [`entropy_threshold_with`] at TensorRT's 128 quantized levels.
pub fn entropy_threshold(hist: &Histogram) -> f32 {
    entropy_threshold_with(hist, ENTROPY_QUANTIZED_BINS)
}

/// The KL-divergence threshold with `num_quantized_bins` levels (see the module doc).
/// Falls back to max |x| when the histogram has fewer bins than levels (nothing to clip
/// into) and returns 0 for an empty or all-zero histogram.
pub fn entropy_threshold_with(hist: &Histogram, num_quantized_bins: usize) -> f32 {
    if hist.count() == 0 || hist.range() == 0.0 {
        return 0.0;
    }
    let divergences = entropy_divergences(hist, num_quantized_bins);
    // Smallest divergence; candidates within KL_TIE of it count as tied and the largest
    // wins, so f64 rounding cannot pick between mathematically equal candidates.
    let min = divergences
        .iter()
        .map(|&(_, kl)| kl)
        .fold(f64::INFINITY, f64::min);
    let Some(&(i, kl)) = divergences
        .iter()
        .rev()
        .find(|&&(_, kl)| kl.is_finite() && kl <= min + KL_TIE)
    else {
        return hist.max_abs();
    };
    let t = clamp_to_max((i as f64 + 0.5) * hist.bin_width(), hist);
    tracing::trace!(bins = i, kl, threshold = t, "entropy calibration");
    t
}

/// `(i, KL(P_i || Q_i))` for every candidate `i` in `num_quantized_bins..=num_bins`, in
/// order (+inf where Q misses mass P has). Empty when there are fewer bins than levels, no
/// levels, or no counts.
pub fn entropy_divergences(hist: &Histogram, num_quantized_bins: usize) -> Vec<(usize, f64)> {
    let h = hist.counts();
    let (n, levels) = (h.len(), num_quantized_bins);
    if levels == 0 || n < levels || hist.count() == 0 {
        return Vec::new();
    }
    let total: u64 = h.iter().sum();
    // KL = sum_j P_j/SP ln((P_j/SP) / (Q_j/SQ)) = (1/SP) sum_j P_j (ln P_j - ln Q_j) + ln(SQ/SP):
    // ln of each bin once, ln of each level's share once per candidate.
    let ln_h: Vec<f64> = h.iter().map(|&c| ln_count(c)).collect();
    let mut kept: u64 = h[..levels].iter().sum(); // sum(h[0..i]) for the current i
    let mut mass = vec![0u64; levels];
    let mut nonzero = vec![0u64; levels];
    let mut ln_share = vec![0f64; levels];
    let mut out = Vec::with_capacity(n - levels + 1);
    for i in levels..=n {
        if i > levels {
            kept += h[i - 1];
        }
        let outliers = total - kept;
        // P_j = h_j, except P_{i-1} = h_{i-1} + outliers.
        let p_at = |j: usize| if j == i - 1 { h[j] + outliers } else { h[j] };
        mass.fill(0);
        nonzero.fill(0);
        for (j, &c) in h[..i].iter().enumerate() {
            let l = j * levels / i;
            mass[l] += c;
            nonzero[l] += u64::from(p_at(j) > 0);
        }
        // Q_j = mass / nonzero of its level where P_j > 0. P sums to `total`, Q to `kept`
        // (a level with mass has a bin with h_j > 0, hence P_j > 0).
        for ((ln_q, &m), &nz) in ln_share.iter_mut().zip(&mass).zip(&nonzero) {
            if m > 0 {
                *ln_q = (m as f64 / nz as f64).ln();
            }
        }
        let mut acc = 0.0f64;
        for (j, &ln_hj) in ln_h[..i].iter().enumerate() {
            let p = p_at(j);
            if p == 0 {
                continue;
            }
            let l = j * levels / i;
            if mass[l] == 0 {
                acc = f64::INFINITY;
                break;
            }
            let ln_p = if j == i - 1 { ln_count(p) } else { ln_hj };
            acc += p as f64 * (ln_p - ln_share[l]);
        }
        let (sum_p, sum_q) = (total as f64, kept as f64);
        let kl = if acc.is_finite() {
            acc / sum_p + (sum_q / sum_p).ln()
        } else {
            f64::INFINITY
        };
        out.push((i, kl));
    }
    out
}

fn ln_count(c: u64) -> f64 {
    if c > 0 {
        (c as f64).ln()
    } else {
        0.0
    }
}

fn clamp_to_max(t: f64, hist: &Histogram) -> f32 {
    (t.min(f64::from(hist.max_abs()))) as f32
}
