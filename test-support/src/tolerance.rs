//! The one tolerance type of the numeric tests: element-wise `got` vs `expected` within a named
//! level. Every comparison names its level (a const below, or a one-off built at the call site
//! with a const constructor and a comment saying why).
//!
//! An element passes when `|got - expected| <= bound`, with
//!
//! ```text
//! bound = atol + rtol * |expected| + range_rel * (max - min of expected)
//! ```
//!
//! (terms with a zero coefficient are left out, so an infinite `expected` elsewhere cannot turn a
//! bound into NaN). A difference that is not finite never passes: NaN anywhere, or an infinity
//! against anything, fails, unless the level is [`Tolerance::nan_equal`], where an identical
//! pair (the same infinity, or NaN against NaN) passes.
//!
//! `got` and `expected` have one type ([`Real`]: `f32` or `f64`), and the comparison is computed
//! in it: widen `f32` results to `f64` to compare them with an `f64` reference (exact), so that an
//! unannotated literal `expected` never silently switches an `f32` comparison to `f64`. The
//! level's coefficients are stored as `f64` and rounded to `f32` for `f32` data, which
//! gives exactly the `f32` literals the tests used to write (checked by this module's tests).
//!
//! On failure the panic message names the level and its formula, the worst element (largest
//! excess over its bound; the first non-finite one counts as infinite) with its index, got,
//! expected, difference and bound, how many elements failed, and the largest absolute error.

use std::fmt;
use std::ops::{Add, Mul, Sub};

/// An element-wise tolerance level: `|got - expected| <= atol + rtol * |expected| + range_rel *
/// (max - min of expected)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// What the level is for; every failure message names it.
    pub name: &'static str,
    /// Absolute bound.
    pub atol: f64,
    /// Bound relative to `|expected|` of the element, added to `atol`.
    pub rtol: f64,
    /// Bound relative to the range (max - min) of the expected data, added to `atol`.
    pub range_rel: f64,
    /// Whether an identical non-finite pair (NaN vs NaN, an infinity vs the same infinity)
    /// passes. Off unless a level says otherwise: NaN never passes by default.
    pub nan_equal: bool,
}

// --- Levels -----------------------------------------------------------------------------------

/// Bit-exact data (copies, f16 <-> f32 conversions, integers, values a test builds exactly):
/// zero difference. NaN fails.
pub const EXACT: Tolerance = Tolerance::abs("exact", 0.0);

/// fp32 graph logits vs the official fp32 PyTorch logits or the f32 reference: max abs error
/// <= 1e-3 x (max - min of the expected logits). Logit ranges are ~100 on the golden fixtures,
/// so this allows ~0.1 absolute; we measure ~1e-5.
pub const FP32_LOGITS: Tolerance = Tolerance::of_range("fp32 logits (1e-3 of range)", 1e-3);

/// fp32 VQ decoder images (about [-1, 1]) vs the official ones or the f32 reference: 1e-3
/// absolute.
pub const FP32_IMAGE: Tolerance = Tolerance::abs("fp32 image (1e-3 abs)", 1e-3);

/// fp32 softmax probabilities of small rows (the CPU sampler's filtered probabilities) vs hand
/// values: 1e-6 absolute (a few f32 roundings of values <= 1).
pub const FP32_PROBS: Tolerance = Tolerance::abs("fp32 probabilities (1e-6 abs)", 1e-6);

/// The device VQ decoder's images (f16 activations and weights, relative error 2^-11 per
/// rounding, f32 accumulation, residual stream and statistics) vs the fp32 CPU pipeline or the
/// official images: through the tiny decoders' ~20 convolutions that is ~1e-3 of the activation
/// scale, so 1e-2 absolute on outputs of about [-1, 1] leaves margin without hiding a wrong
/// layer, which moves pixels by O(0.1..1).
pub const FP16_DEVICE_IMAGE: Tolerance = Tolerance::abs("fp16 device VQ image (1e-2 abs)", 1e-2);

/// A device GEMM with f32 output vs an f64 reference (rounded to f32): f32 accumulation of
/// k <= 300 products of f16 values in [-1, 1] (exact in f32), in any order (cuBLAS may split k):
/// <= k * 2^-24 * k = 5.4e-3 worst case, ~1e-5 relative in practice (errors grow like sqrt(k));
/// atol 1e-4 + rtol 1e-5. Identical non-finite values pass (the kernel comparer's rule).
pub const GEMM_FP32_OUT: Tolerance =
    Tolerance::rel("f32 GEMM output (1e-4 abs + 1e-5 rel)", 1e-4, 1e-5).nan_equal();

/// A device GEMM with f16 output: [`GEMM_FP32_OUT`] plus one f16 ulp (2^-10 relative), not half
/// of one, since a library may round `alpha * acc` to f16 before adding `beta * c` and rounding
/// again (cuBLAS's f16-output kernels on an H200 do: 0.0017 off at 2.26, and 0.04297 for
/// 0.04273 from terms of ~2, with beta = 1). Callers scale the relative term by the magnitude
/// of the terms, `|alpha| sum |a b| + |beta c|`, not by the result.
pub const GEMM_FP16_OUT: Tolerance = Tolerance::rel(
    "f16 GEMM output (1e-4 abs + one f16 ulp 2^-10 + 1e-5 rel)",
    1e-4,
    (1.0f32 / 1024.0 + 1e-5f32) as f64,
)
.nan_equal();

/// GPT decode kernels, one f32 -> f16 rounding of an f32 result vs an f32 reference: half an ulp
/// is <= 2^-11 (4.9e-4) of |ref|; rtol 5e-4 adds room for the kernel's f32 arithmetic (rsqrtf,
/// expf, FMA contraction, summation order: ~1e-6 relative); atol 1e-6 covers f16 subnormals
/// (half ulp 3e-8) and the f32 cancellation error of rotary's `a cos - b sin` (terms < 4, eps
/// 1.2e-7). Identical non-finite values pass (the kernel comparer's rule).
pub const GPT_KERNEL_FP16_OUT: Tolerance =
    Tolerance::rel("GPT kernel fp16 output (1e-6 abs + 5e-4 rel)", 1e-6, 5e-4).nan_equal();

/// GPT decode attention: as [`GPT_KERNEL_FP16_OUT`], with atol 1e-5 for the f32
/// softmax-weighted sum over up to 150 values in [-1, 1], accumulated in another order than the
/// reference (roundings of <= 6e-8 each, plus expf's error): outputs near zero are only known to
/// ~1e-6..1e-5 absolute.
pub const GPT_KERNEL_FP16_ATTN: Tolerance = Tolerance::rel(
    "GPT kernel fp16 attention (1e-5 abs + 5e-4 rel)",
    1e-5,
    5e-4,
)
.nan_equal();

/// VAR's tensor-core attention vs an f64 reference over the same f16-rounded q: the softmax
/// weights enter P . V rounded to f16 (half an ulp, 2^-11 of each weight, moves a weighted mean
/// of values |v| <= 1 by at most 4.9e-4) and the output is rounded to f16 (4.9e-4 relative):
/// atol 1e-3, rtol 5e-4.
pub const VAR_KERNEL_FP16_MMA_ATTN: Tolerance = Tolerance::rel(
    "VAR kernel tensor-core attention (1e-3 abs + 5e-4 rel)",
    1e-3,
    5e-4,
);

/// VQ decoder kernels: the codebook's L2 normalisation in f32 vs f64 (sum of 8 squares, sqrt,
/// divide: a few ulp, 1.2e-7 each; the GPU may contract the sum into FMAs): rtol 1e-6, atol 1e-9.
pub const VQ_KERNEL_FP32_NORMALISE: Tolerance = Tolerance::rel(
    "VQ kernel f32 normalisation (1e-9 abs + 1e-6 rel)",
    1e-9,
    1e-6,
);

/// VQ decoder kernels: one f32 -> f16 rounding of an f32 result vs f64 (half an ulp is 2^-11 =
/// 4.9e-4 of |ref|) plus f32 arithmetic (expf, summation order: ~1e-6 relative): rtol 5e-4;
/// atol 1e-7 covers f16 subnormals (half ulp 3e-8).
pub const VQ_KERNEL_FP16_OUT: Tolerance =
    Tolerance::rel("VQ kernel fp16 output (1e-7 abs + 5e-4 rel)", 1e-7, 5e-4);

/// VQ decoder kernels: GroupNorm output rounded to f16 (4.9e-4 relative), plus the f32
/// statistics: a mean of ~5000 values of magnitude <= 4 summed in f32 is off by ~1e-6 absolute,
/// which a standard deviation of ~0.5 turns into ~1e-5 of the normalised value; atol 1e-4.
pub const VQ_KERNEL_FP16_NORM: Tolerance = Tolerance::rel(
    "VQ kernel fp16 group norm (1e-4 abs + 5e-4 rel)",
    1e-4,
    5e-4,
);

/// VQ decoder kernels: f32-accumulated GEMM convolutions vs f64. f16 x f16 products are exact in
/// f32; a sum of k <= 9 * 16 products of magnitude <= 1 accumulated in f32 (any order, as cuBLAS
/// chooses) is within k * 2^-24 * sum|terms|, below 1e-4 for these sizes: atol 1e-4, rtol 1e-6.
pub const VQ_KERNEL_FP32_GEMM: Tolerance = Tolerance::rel(
    "VQ kernel f32-accumulated GEMM (1e-4 abs + 1e-6 rel)",
    1e-4,
    1e-6,
);

/// VQ decoder kernels: attention output, f16 probabilities (4.9e-4 relative each) times values
/// in [-1, 1] summed (<= 4.9e-4 absolute: atol 6e-4), then rounded to f16 (rtol 5e-4).
pub const VQ_KERNEL_FP16_ATTN: Tolerance =
    Tolerance::rel("VQ kernel fp16 attention (6e-4 abs + 5e-4 rel)", 6e-4, 5e-4);

/// VAR kernels with f32 outputs (L2-normalised q, gated residuals, resampled code maps, phi)
/// vs an f64 reference: sums of <= 300 f32 products of terms <= ~10 accumulated in another order
/// (and FMA-contracted on the GPU), ~1e-6 of the terms' magnitude: atol 1e-5 + rtol 1e-5.
pub const VAR_KERNEL_FP32: Tolerance =
    Tolerance::rel("VAR kernel f32 output (1e-5 abs + 1e-5 rel)", 1e-5, 1e-5);

// --- The type -----------------------------------------------------------------------------------

impl Tolerance {
    /// `|got - expected| <= atol`.
    pub const fn abs(name: &'static str, atol: f64) -> Self {
        Tolerance {
            name,
            atol,
            rtol: 0.0,
            range_rel: 0.0,
            nan_equal: false,
        }
    }

    /// `|got - expected| <= atol + rtol * |expected|`.
    pub const fn rel(name: &'static str, atol: f64, rtol: f64) -> Self {
        Tolerance {
            rtol,
            ..Tolerance::abs(name, atol)
        }
    }

    /// `|got - expected| <= range_rel * (max - min of expected)`.
    pub const fn of_range(name: &'static str, range_rel: f64) -> Self {
        Tolerance {
            range_rel,
            ..Tolerance::abs(name, 0.0)
        }
    }

    /// This level, where an identical non-finite pair (NaN vs NaN, the same infinity) passes.
    pub const fn nan_equal(self) -> Self {
        Tolerance {
            nan_equal: true,
            ..self
        }
    }

    /// The bound for one expected value `e` of data whose range (max - min) is `range`.
    pub fn bound<E: Real>(&self, e: E, range: E) -> E {
        let mut b = E::from_f64(self.atol);
        if self.rtol != 0.0 {
            b = b + E::from_f64(self.rtol) * e.abs();
        }
        if self.range_rel != 0.0 {
            b = b + E::from_f64(self.range_rel) * range;
        }
        b
    }

    /// Checks `got` against `expected` element-wise; the range-relative term uses the range of
    /// `expected`. Returns what was measured, or the failure message.
    pub fn check<E: Real>(
        &self,
        what: &str,
        got: &[E],
        expected: &[E],
    ) -> Result<Measured<E>, String> {
        self.check_with_range(what, got, expected, range_of(expected))
    }

    /// [`Tolerance::check`] with the range-relative term taken from `range` (for example the
    /// range of a whole tensor of which `expected` is a slice).
    pub fn check_with_range<E: Real>(
        &self,
        what: &str,
        got: &[E],
        expected: &[E],
        range: E,
    ) -> Result<Measured<E>, String> {
        if got.len() != expected.len() {
            return Err(format!(
                "{what}: length {} != expected length {}",
                got.len(),
                expected.len()
            ));
        }
        let mut measured = Measured {
            max_abs: E::ZERO,
            index: 0,
            bound: E::ZERO,
        };
        // (index, excess over the bound, |diff|, bound) of the worst failure.
        let mut worst: Option<(usize, E, E, E)> = None;
        let mut failures = 0usize;
        for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
            let b = self.bound(e, range);
            if i == 0 {
                measured.bound = b;
            }
            if self.nan_equal && (g == e || (g.is_nan() && e.is_nan())) {
                continue;
            }
            let d = (g - e).abs();
            let finite = d.is_finite();
            // The first non-finite difference is the largest; later ones do not move it.
            if measured.max_abs.is_finite() && (!finite || d > measured.max_abs) {
                measured.max_abs = if finite { d } else { E::INFINITY };
                measured.index = i;
                measured.bound = b;
            }
            if finite && d <= b {
                continue;
            }
            failures += 1;
            let excess = if finite && (d - b).is_finite() {
                d - b
            } else {
                E::INFINITY
            };
            if worst.is_none_or(|(_, x, _, _)| excess > x) {
                worst = Some((i, excess, d, b));
            }
        }
        match worst {
            None => Ok(measured),
            Some((i, _, d, b)) => Err(format!(
                "{what}: {failures} of {} values out of tolerance `{}` ({}); worst at index {i}: \
                 got {}, expected {}, |got - expected| {d} > bound {b}; max abs error {} at index \
                 {}",
                got.len(),
                self.name,
                self.formula(),
                got[i],
                expected[i],
                measured.max_abs,
                measured.index,
            )),
        }
    }

    /// Asserts `got` is within this level of `expected`, element-wise (the range-relative term
    /// uses the range of `expected`); panics with the level, the worst index, got, expected and
    /// bound otherwise. Returns what was measured.
    #[track_caller]
    pub fn assert_close<E: Real>(&self, what: &str, got: &[E], expected: &[E]) -> Measured<E> {
        match self.check(what, got, expected) {
            Ok(m) => m,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// [`Tolerance::assert_close`] with the range-relative term taken from `range`.
    #[track_caller]
    pub fn assert_close_with_range<E: Real>(
        &self,
        what: &str,
        got: &[E],
        expected: &[E],
        range: E,
    ) -> Measured<E> {
        match self.check_with_range(what, got, expected, range) {
            Ok(m) => m,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// [`Tolerance::assert_close`] of one value (its range is 0).
    #[track_caller]
    pub fn assert_scalar<E: Real>(&self, what: &str, got: E, expected: E) -> Measured<E> {
        self.assert_close(what, &[got], &[expected])
    }

    /// The bound's formula with this level's coefficients, e.g. `1e-6 + 5e-4 x |expected|`.
    pub fn formula(&self) -> String {
        let mut terms = vec![format!("{:e}", self.atol)];
        if self.rtol != 0.0 {
            terms.push(format!("{:e} x |expected|", self.rtol));
        }
        if self.range_rel != 0.0 {
            terms.push(format!("{:e} x range", self.range_rel));
        }
        let mut s = format!("|got - expected| <= {}", terms.join(" + "));
        if self.nan_equal {
            s.push_str("; identical NaN/inf pass");
        }
        s
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.formula())
    }
}

/// What a passing comparison measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured<E> {
    /// The largest `|got - expected|` (infinite where a difference is not finite; identical
    /// pairs of a `nan_equal` level count as 0).
    pub max_abs: E,
    /// Where `max_abs` is (0 when every difference is 0).
    pub index: usize,
    /// The bound at `index`: the same for every element of a level without `rtol`.
    pub bound: E,
}

/// max - min of `values`, NaN ignored (0 for none).
pub fn range_of<E: Real>(values: &[E]) -> E {
    let (lo, hi) = values
        .iter()
        .fold((E::INFINITY, E::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    if lo > hi {
        E::ZERO
    } else {
        hi - lo
    }
}

/// The float types expected values come in; a comparison is computed in this type.
pub trait Real:
    Copy
    + PartialOrd
    + fmt::Display
    + fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + private::Sealed
{
    const ZERO: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    /// A level coefficient in this type (rounded to nearest).
    fn from_f64(x: f64) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    fn is_finite(self) -> bool;
    /// The smaller of two values, ignoring a NaN.
    fn min(self, other: Self) -> Self;
    /// The larger of two values, ignoring a NaN.
    fn max(self, other: Self) -> Self;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
real!(f32);
real!(f64);

#[cfg(test)]
#[path = "tests/tolerance.rs"]
mod tests;
