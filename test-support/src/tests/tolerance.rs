//! Unit tests of `tolerance.rs`.

use super::*;

const ABS: Tolerance = Tolerance::abs("test abs 0.5", 0.5);
const REL: Tolerance = Tolerance::rel("test rel", 0.0, 0.25);

#[test]
fn passes_within_the_bound_and_measures() {
    let m = ABS.assert_close("abs", &[1.0f32, 2.5, -3.0], &[1.25f32, 2.0, -3.0]);
    assert_eq!(m.max_abs, 0.5);
    assert_eq!(m.index, 1);
    assert_eq!(m.bound, 0.5);
    // Relative: 0.25 x |expected| allows 1 at 4 and 2 at -8, exactly.
    REL.assert_close("rel", &[5.0f32, -10.0], &[4.0f32, -8.0]);
    // Range: 1e-3 of a range of 1000 is 1 everywhere, also at small values.
    let m = FP32_LOGITS.assert_close("logits", &[1.0f32, 1000.0], &[0.0f32, 1000.0]);
    assert_eq!((m.max_abs, m.bound), (1.0, 1e-3f32 * 1000.0));
    // A given range instead of the data's own.
    FP32_LOGITS.assert_close_with_range("slice", &[1.0f32], &[0.0f32], 1000.0);
    EXACT.assert_scalar("scalar", 3.0f32, 3.0f32);
    EXACT.assert_close::<f32>("empty", &[], &[]);
}

#[test]
#[should_panic(
    expected = "abs: 1 of 3 values out of tolerance `test abs 0.5` (|got - expected| <= 5e-1); \
                worst at index 2: got -3.5000002, expected -3, |got - expected| 0.50000024 > \
                bound 0.5; max abs error 0.50000024 at index 2"
)]
fn fails_just_outside_the_bound() {
    // -3.5000002 is the f32 after -3.5: one ulp beyond the bound (index 1 is exactly on it).
    let got = f32::from_bits((-3.5f32).to_bits() + 1);
    ABS.assert_close("abs", &[1.0f32, 2.5, got], &[1.25f32, 2.0, -3.0]);
}

#[test]
#[should_panic(
    expected = "worst at index 1: got -10.5, expected -8, |got - expected| 2.5 > \
                           bound 2"
)]
fn relative_bound_fails_just_outside() {
    REL.assert_close("rel", &[5.0f32, -10.5], &[4.0f32, -8.0]);
}

#[test]
#[should_panic(
    expected = "`fp32 logits (1e-3 of range)` (|got - expected| <= 0e0 + 1e-3 x \
                           range); worst at index 0: got 1.0625"
)]
fn range_bound_fails_just_outside() {
    FP32_LOGITS.assert_close("logits", &[1.0625f32, 1000.0], &[0.0f32, 1000.0]);
}

#[test]
fn the_worst_excess_is_reported() {
    // Index 0 has the larger |diff| but index 1 the larger excess over its bound.
    let err = REL
        .check("w", &[13.0f32, 1.0], &[10.0f32, 0.0])
        .unwrap_err();
    assert!(err.contains("2 of 2 values"), "{err}");
    assert!(err.contains("worst at index 1: got 1, expected 0"), "{err}");
    assert!(err.contains("max abs error 3 at index 0"), "{err}");
}

#[test]
fn nan_never_passes_by_default() {
    for (g, e) in [(f32::NAN, 1.0), (1.0, f32::NAN), (f32::NAN, f32::NAN)] {
        let err = FP32_IMAGE.check("nan", &[0.0, g], &[0.0, e]).unwrap_err();
        assert!(err.contains("worst at index 1"), "{err}");
        assert!(err.contains("max abs error inf at index 1"), "{err}");
    }
    // Infinities: never within a bound, even an infinite one (rtol x inf), even identical.
    for (g, e) in [
        (f32::INFINITY, 1.0),
        (1.0, f32::INFINITY),
        (f32::INFINITY, f32::INFINITY),
    ] {
        assert!(REL.check("inf", &[g], &[e]).is_err(), "{g} vs {e}");
    }
    // A range made infinite by the data does not let NaN through either.
    assert!(FP32_LOGITS
        .check("range", &[f32::NAN, f32::INFINITY], &[0.0, f32::INFINITY])
        .is_err());
}

#[test]
#[should_panic(expected = "worst at index 0: got NaN, expected 1")]
fn nan_panics_with_the_values() {
    EXACT.assert_close("nan", &[f32::NAN], &[1.0f32]);
}

#[test]
fn nan_equal_lets_identical_non_finite_pairs_pass_only() {
    let t = EXACT.nan_equal();
    let m = t.assert_close(
        "copy",
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0],
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0],
    );
    assert_eq!(m.max_abs, 0.0);
    for (g, e) in [
        (f32::NAN, 1.0),
        (1.0, f32::NAN),
        (f32::INFINITY, f32::NEG_INFINITY),
        (1.0, f32::INFINITY),
    ] {
        assert!(t.check("x", &[g], &[e]).is_err(), "{g} vs {e}");
    }
    assert!(t.formula().contains("identical NaN/inf pass"));
}

#[test]
fn f64_data_compares_in_f64() {
    // 1 + 2^-30 is not an f32: against f64 the f32 result 1.0, widened, is 2^-30 off.
    let e = 1.0 + 2f64.powi(-30);
    assert!(EXACT.check("f64", &[f64::from(1.0f32)], &[e]).is_err());
    Tolerance::abs("2^-30", 2f64.powi(-30)).assert_close("f64", &[1.0f64], &[e]);
    // In f32 the same values are equal.
    EXACT.assert_scalar("f32", 1.0f32, e as f32);
    Tolerance::abs("1e-12", 1e-12).assert_scalar("kl", 0.5f64 + 1e-13, 0.5);
}

#[test]
fn lengths_must_match() {
    let err = EXACT.check("len", &[1.0f32], &[1.0f32, 2.0]).unwrap_err();
    assert_eq!(err, "len: length 1 != expected length 2");
}

/// The levels' coefficients, rounded to f32 for f32 data, are exactly the f32 literals the
/// tests used before the levels moved here (so every f32 bound is unchanged).
#[test]
fn f32_coefficients_equal_the_former_f32_literals() {
    let pairs: [(f64, f32); 9] = [
        (FP32_LOGITS.range_rel, 1e-3),
        (FP32_IMAGE.atol, 1e-3),
        (FP32_PROBS.atol, 1e-6),
        (FP16_DEVICE_IMAGE.atol, 1e-2),
        (GEMM_FP32_OUT.atol, 1e-4),
        (GEMM_FP32_OUT.rtol, 1e-5),
        (GEMM_FP16_OUT.rtol, 1.0 / 1024.0 + 1e-5),
        (GPT_KERNEL_FP16_OUT.atol, 1e-6),
        (GPT_KERNEL_FP16_ATTN.atol, 1e-5),
    ];
    for (level, literal) in pairs {
        assert_eq!(f32::from_f64(level), literal, "{level:e}");
    }
    assert_eq!(f32::from_f64(GPT_KERNEL_FP16_OUT.rtol), 5e-4f32);
}
