//! A histogram of |x| with a fixed number of bins over `[0, range)` that grows by doubling.
//!
//! Contract:
//! - `num_bins` is fixed at construction (default [`DEFAULT_BINS`] = 2048, as TensorRT's
//!   entropy calibrator) and must be even (growth merges bins pairwise).
//! - Bin `j` holds the values with `j * width <= |x| < (j + 1) * width`, `width = range /
//!   num_bins`. Every counted value is strictly below `range`.
//! - `range` is 0 until the first finite non-zero value arrives (zeros wait in bin 0); it is
//!   then the smallest power of two strictly greater than that batch's max |x|. When a later
//!   value reaches `range`, the range doubles until it exceeds the value and each doubling
//!   merges bins `2k` and `2k + 1` into bin `k` of the upper half-empty histogram.
//!
//! Exactness: `range` is a power of two, so `|x| / range` and the halving on each doubling
//! are exact in f64 and `floor(x / 2) == floor(floor(x) / 2)`. Hence a histogram built
//! batch by batch equals (bit for bit) the one built from all the data at the final range,
//! whatever the batch order, and two histograms of equal `num_bins` merge exactly.
//! The cost: the data's max |x| lies in `[range / 2, range)`, so it spans between half and
//! all of the bins.
//!
//! NaN and ±inf are not counted (an infinite value has no int8 scale); [`Histogram::ignored`]
//! says how many were skipped. Signs are dropped (symmetric quantization).

use crate::error::CalibError;

/// TensorRT's histogram size for entropy calibration.
pub const DEFAULT_BINS: usize = 2048;

/// Histogram of absolute values; see the module doc for the binning contract.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    /// 0, or a power of two strictly greater than every counted value.
    range: f64,
    max_abs: f32,
    count: u64,
    ignored: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::empty(DEFAULT_BINS)
    }
}

impl Histogram {
    /// An empty histogram of `num_bins` bins (even, >= 2).
    pub fn new(num_bins: usize) -> Result<Histogram, CalibError> {
        if num_bins < 2 || !num_bins.is_multiple_of(2) {
            return Err(CalibError::InvalidHistogram {
                field: "num_bins",
                value: num_bins.to_string(),
                reason: "must be even and >= 2 (growing the range merges bins pairwise)".into(),
            });
        }
        Ok(Histogram::empty(num_bins))
    }

    fn empty(num_bins: usize) -> Histogram {
        Histogram {
            counts: vec![0; num_bins],
            range: 0.0,
            max_abs: 0.0,
            count: 0,
            ignored: 0,
        }
    }

    /// Counts |x| for every finite x of `data`; NaN and ±inf are skipped (see `ignored`).
    pub fn add(&mut self, data: &[f32]) {
        let batch_max = data
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f32, |m, x| m.max(x.abs()));
        if f64::from(batch_max) >= self.range && batch_max > 0.0 {
            self.grow_to(pow2_above(f64::from(batch_max)));
        }
        self.max_abs = self.max_abs.max(batch_max);
        let n = self.counts.len();
        for &x in data {
            if !x.is_finite() {
                self.ignored += 1;
                continue;
            }
            let j = if self.range == 0.0 {
                0 // only zeros so far (batch_max == 0)
            } else {
                bin_index(x.abs(), self.range, n)
            };
            self.counts[j] += 1;
            self.count += 1;
        }
    }

    /// Adds `other`'s counts (same `num_bins` required); the result is the histogram of both
    /// data sets, exactly (see the module doc).
    pub fn merge(&mut self, other: &Histogram) -> Result<(), CalibError> {
        if other.counts.len() != self.counts.len() {
            return Err(CalibError::InvalidHistogram {
                field: "num_bins",
                value: other.counts.len().to_string(),
                reason: format!(
                    "cannot merge into a histogram of {} bins",
                    self.counts.len()
                ),
            });
        }
        if other.range > self.range {
            self.grow_to(other.range);
        }
        let shift = doublings(other.range, self.range);
        for (j, &c) in other.counts.iter().enumerate() {
            self.counts[j >> shift] += c;
        }
        self.max_abs = self.max_abs.max(other.max_abs);
        self.count += other.count;
        self.ignored += other.ignored;
        Ok(())
    }

    /// Doubles `range` until it equals `new_range` (a power of two), merging bins pairwise.
    fn grow_to(&mut self, new_range: f64) {
        if self.range == 0.0 {
            // Only zeros were counted: they stay in bin 0 at any range.
            self.range = new_range;
            return;
        }
        let shift = doublings(self.range, new_range);
        if shift == 0 {
            return;
        }
        let mut merged = vec![0u64; self.counts.len()];
        for (j, &c) in self.counts.iter().enumerate() {
            merged[j >> shift] += c;
        }
        self.counts = merged;
        self.range = new_range;
    }

    pub fn num_bins(&self) -> usize {
        self.counts.len()
    }

    /// Per-bin counts, bin 0 first.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Upper end of the binned interval: 0 before any non-zero value, else a power of two.
    pub fn range(&self) -> f64 {
        self.range
    }

    /// `range / num_bins` (0 before any non-zero value).
    pub fn bin_width(&self) -> f64 {
        self.range / self.counts.len() as f64
    }

    /// The largest |x| counted (exact, not binned); 0 when empty.
    pub fn max_abs(&self) -> f32 {
        self.max_abs
    }

    /// How many finite values were counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many NaN / ±inf values were skipped.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

/// Bin of `a` (finite, >= 0, < range): `floor(a / range * n)`. Exact for a power-of-two
/// `range`; the clamp only guards against a caller breaking `a < range`.
fn bin_index(a: f32, range: f64, n: usize) -> usize {
    let j = (f64::from(a) / range * n as f64).floor() as usize;
    j.min(n - 1)
}

/// The smallest power of two strictly greater than `x` (finite, > 0; an f32 widened to f64,
/// so always a normal f64 and the result is at most 2^128).
fn pow2_above(x: f64) -> f64 {
    let biased = (x.to_bits() >> 52) & 0x7ff; // x in [2^(biased - 1023), 2^(biased - 1022))
    f64::from_bits((biased + 1) << 52)
}

/// How many doublings take power of two `from` to power of two `to` (>= from); 0 when
/// `from` is 0 (a histogram of zeros, which only has counts in bin 0). Capped at 63 so the
/// shift stays defined: by then every bin index maps to 0 anyway.
fn doublings(from: f64, to: f64) -> u32 {
    if from == 0.0 || to <= from {
        return 0;
    }
    let e = |x: f64| ((x.to_bits() >> 52) & 0x7ff) as u32;
    (e(to) - e(from)).min(63)
}
