//! Threshold and scale estimators on hand-made histograms, plus statistical sanity checks.
//!
//! Tolerance levels: thresholds from hand-made histograms are exact (f32 ==, every value is
//! a short binary fraction); KL divergences are compared to the hand-derived closed forms at
//! `KL` (atol 1e-12, f64 sums of a few terms) and the closed forms to their 7-digit decimals at
//! `SEVEN_DIGITS`; the statistical checks assert ranges in sigma.

use llamagen_calib::estimate::{
    entropy_divergences, entropy_threshold, entropy_threshold_with, percentile_threshold,
};
use llamagen_calib::{scale, threshold, CalibError, Histogram, Method};
use llamagen_test_support::Tolerance;

/// A KL divergence vs its hand-derived closed form: both are f64 sums of a few terms, so they
/// agree to a few ulp of values < 1; 1e-12 absolute.
const KL: Tolerance = Tolerance::abs("KL vs closed form (1e-12 abs)", 1e-12);

/// A closed form vs the 7-digit decimal written beside it in the comments (rounding <= 5e-8).
const SEVEN_DIGITS: Tolerance = Tolerance::abs("7-digit decimal (1e-7 abs)", 1e-7);

/// A histogram with `counts[j]` values at the centre of bin j, width 1: the top non-empty
/// bin must be >= n/2 so that the range (power of two above max) is exactly n.
fn hist_from_counts(counts: &[u64]) -> Histogram {
    let mut h = Histogram::new(counts.len()).unwrap();
    let data: Vec<f32> = counts
        .iter()
        .enumerate()
        .flat_map(|(j, &c)| std::iter::repeat_n(j as f32 + 0.5, c as usize))
        .collect();
    h.add(&data);
    assert_eq!(h.counts(), counts);
    assert_eq!(h.bin_width(), 1.0);
    h
}

fn assert_kl(got: &[(usize, f64)], expected: &[(usize, f64)]) {
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (&(i, kl), &(ei, ekl)) in got.iter().zip(expected) {
        assert_eq!(i, ei);
        if ekl.is_infinite() {
            assert!(kl.is_infinite() && kl > 0.0, "i = {i}: {kl}, expected +inf");
        } else {
            KL.assert_scalar(&format!("i = {i}"), kl, ekl);
        }
    }
}

#[test]
fn max_is_the_exact_largest_magnitude() {
    let mut h = Histogram::new(4).unwrap();
    h.add(&[0.1, -2.5, 1.0]);
    assert_eq!(threshold(&h, Method::Max), 2.5);
    assert_eq!(scale(&h, Method::Max).unwrap(), 2.5 / 127.0);
}

#[test]
fn percentile_interpolates_within_the_bin() {
    // max 1.2 -> range 2, width 0.5. 0.1, 0.2 -> bin 0; 0.6, 0.7, 0.8, 0.9 -> bin 1;
    // 1.1, 1.2 -> bin 2. Counts [2, 4, 2, 0], 8 values.
    let mut h = Histogram::new(4).unwrap();
    h.add(&[0.1, 0.2, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2]);
    assert_eq!(h.counts(), &[2, 4, 2, 0]);
    // p = 12.5: rank 1 of 8; bin 0 holds ranks (0, 2] -> 1/2 of the way: 0.5 * 0.5 = 0.25.
    assert_eq!(percentile_threshold(&h, 12.5), 0.25);
    // p = 50: rank 4; 2 below bin 1 which holds 4 -> (1 + 2/4) * 0.5 = 0.75.
    assert_eq!(percentile_threshold(&h, 50.0), 0.75);
    // p = 75: rank 6 = end of bin 1 -> (1 + 4/4) * 0.5 = 1.0.
    assert_eq!(percentile_threshold(&h, 75.0), 1.0);
    // p = 87.5: rank 7; 6 below bin 2 which holds 2 -> (2 + 1/2) * 0.5 = 1.25, above the
    // max 1.2 -> clamped to 1.2. p = 100 likewise ends at max.
    assert_eq!(percentile_threshold(&h, 87.5), 1.2);
    assert_eq!(threshold(&h, Method::Percentile(100.0)), 1.2);
    assert_eq!(scale(&h, Method::Percentile(50.0)).unwrap(), 0.75 / 127.0);
}

#[test]
fn entropy_clips_a_far_outlier_by_hand() {
    // 8 bins, 4 levels. counts [8, 4, 2, 2, 0, 0, 0, 1]: 17 values, one far outlier.
    let h = hist_from_counts(&[8, 4, 2, 2, 0, 0, 0, 1]);
    // i = 4: one bin per level. P = [8, 4, 2, 2 + 1] (sum 17), Q = [8, 4, 2, 2] (sum 16).
    //   KL = 8/17 ln(8/17 / (8/16)) + 4/17 ln(16/17) + 2/17 ln(16/17) + 3/17 ln(3/17 / (2/16))
    //      = 14/17 ln(16/17) + 3/17 ln(24/17) = -0.0499262 + 0.0608542 = 0.0109280
    let kl4 = 14.0 / 17.0 * (16.0f64 / 17.0).ln() + 3.0 / 17.0 * (24.0f64 / 17.0).ln();
    // i = 5: level of bin j is j*4/5 -> [0, 0, 1, 2, 3]; level 3 = {bin 4}: candidate mass
    //   h[4] = 0 but P[4] = 0 + 1 (the outlier) -> Q[4] = 0 < P[4] -> +inf.
    // i = 6: levels [0, 0, 1, 2, 2, 3]; level 3 = {bin 5}, h[5] = 0, P[5] = 1 -> +inf.
    // i = 7: levels [0, 0, 1, 1, 2, 2, 3]; level 3 = {bin 6}, h[6] = 0, P[6] = 1 -> +inf.
    // i = 8: no outliers, P = h. Levels {0,1} {2,3} {4,5} {6,7} hold 12, 4, 0, 1; bins
    //   where P > 0 share them: Q = [6, 6, 2, 2, 0, 0, 0, 1] (sum 17).
    //   KL = 8/17 ln(8/6) + 4/17 ln(4/6) + 0 + 0 + 1/17 ln(1/1)
    //      = (8 ln(4/3) + 4 ln(2/3)) / 17 = 0.0399762
    let kl8 = (8.0 * (4.0f64 / 3.0).ln() + 4.0 * (2.0f64 / 3.0).ln()) / 17.0;
    SEVEN_DIGITS.assert_scalar("kl4", kl4, 0.0109280);
    SEVEN_DIGITS.assert_scalar("kl8", kl8, 0.0399762);
    let inf = f64::INFINITY;
    assert_kl(
        &entropy_divergences(&h, 4),
        &[(4, kl4), (5, inf), (6, inf), (7, inf), (8, kl8)],
    );
    // Best i = 4 -> threshold (4 + 0.5) * 1 = 4.5; max stays at the outlier, 7.5.
    assert_eq!(entropy_threshold_with(&h, 4), 4.5);
    assert_eq!(h.max_abs(), 7.5);
    // A percentile below the outlier's share (1/17 = 5.9 %) clips it as well: p = 50 is
    // rank 8.5; bin 0 holds 8, bin 1 holds 4 -> (1 + 0.5/4) * 1 = 1.125.
    assert_eq!(percentile_threshold(&h, 50.0), 1.125);
}

#[test]
fn entropy_interior_minimum_by_hand() {
    // counts [5, 5, 5, 1, 1, 1, 1, 1]: 20 values, a flat tail. Every candidate is finite.
    let h = hist_from_counts(&[5, 5, 5, 1, 1, 1, 1, 1]);
    // i = 4: P = [5, 5, 5, 1 + 4] (SP = 20), Q = [5, 5, 5, 1] (SQ = 16). Bins 0-2 have
    //   P = Q, so KL = sum P/SP ln((P/SP) / (Q/SQ)) = ln(16/20) + 5/20 ln(5/1).
    let kl4 = (16.0f64 / 20.0).ln() + 5.0 / 20.0 * 5f64.ln(); // 0.1792159
                                                              // i = 5: levels [0, 0, 1, 2, 3]. P = [5, 5, 5, 1, 1 + 3]; masses 10, 5, 1, 1 ->
                                                              //   Q = [5, 5, 5, 1, 1] (SQ = 17). KL = ln(17/20) + 4/20 ln(4/1).
    let kl5 = (17.0f64 / 20.0).ln() + 4.0 / 20.0 * 4f64.ln(); // 0.1147399
                                                              // i = 6: levels [0, 0, 1, 2, 2, 3]. P = [5, 5, 5, 1, 1, 1 + 2]; masses 10, 5, 2, 1 ->
                                                              //   Q = [5, 5, 5, 1, 1, 1] (SQ = 18). KL = ln(18/20) + 3/20 ln(3/1).
    let kl6 = (18.0f64 / 20.0).ln() + 3.0 / 20.0 * 3f64.ln(); // 0.0594313
                                                              // i = 7: levels [0, 0, 1, 1, 2, 2, 3]. P = [5, 5, 5, 1, 1, 1, 1 + 1]; masses 10, 6, 2,
                                                              //   1 -> Q = [5, 5, 3, 3, 1, 1, 1] (SQ = 19).
                                                              //   KL = ln(19/20) + (5 ln(5/3) + 1 ln(1/3) + 2 ln(2/1)) / 20.
    let kl7 = (19.0f64 / 20.0).ln()
        + (5.0 * (5.0f64 / 3.0).ln() + (1.0f64 / 3.0).ln() + 2.0 * 2f64.ln()) / 20.0; // 0.0907972
                                                                                      // i = 8: levels {0,1} {2,3} {4,5} {6,7}, masses 10, 6, 2, 2 -> Q = [5, 5, 3, 3, 1, 1,
                                                                                      //   1, 1] (SQ = 20). KL = (5 ln(5/3) + 1 ln(1/3)) / 20.
    let kl8 = (5.0 * (5.0f64 / 3.0).ln() + (1.0f64 / 3.0).ln()) / 20.0; // 0.0727758
    for (kl, hand) in [
        (kl4, 0.1792159),
        (kl5, 0.1147399),
        (kl6, 0.0594313),
        (kl7, 0.0907972),
        (kl8, 0.0727758),
    ] {
        SEVEN_DIGITS.assert_scalar("closed form", kl, hand);
    }
    assert_kl(
        &entropy_divergences(&h, 4),
        &[(4, kl4), (5, kl5), (6, kl6), (7, kl7), (8, kl8)],
    );
    // Minimum at i = 6 -> threshold 6.5 (max is 7.5).
    assert_eq!(entropy_threshold_with(&h, 4), 6.5);
    assert_eq!(
        scale(&h, Method::Max).unwrap() * 127.0,
        7.5,
        "max ignores the KL search"
    );
}

#[test]
fn clipped_outliers_share_their_level_where_p_is_non_zero() {
    // 16 bins, 4 levels. counts: 4 in bin 0, 1 in bin 8, 1 in bin 15 (6 values).
    let mut counts = [0u64; 16];
    (counts[0], counts[8], counts[15]) = (4, 1, 1);
    let h = hist_from_counts(&counts);
    // i = 10: level of j is j*4/10 -> bins 0-2 level 0, 3-4 level 1, 5-7 level 2, 8-9
    //   level 3. The outlier (bin 15) joins P[9]: P = [4, 0 x 7, 1, 1] (SP = 6). Level 3's
    //   candidate mass is h[8] + h[9] = 1, shared by the two bins where P > 0 (8 and 9,
    //   although h[9] = 0): Q = [4, 0 x 7, 1/2, 1/2] (SQ = 5).
    //   KL = 4/6 ln((4/6) / (4/5)) + 2 * 1/6 ln((1/6) / (1/10))
    //      = 2/3 ln(5/6) + 1/3 ln(5/3) = -0.1215477 + 0.1702752 = 0.0487275
    //   (Masking Q by the candidate's own zeros instead would make Q[9] = 0 and KL = +inf.)
    // i = 9: level 3 = bins 7-8; the outlier joins bin 8: P = [4, 0 x 7, 2], Q = [4, 0 x 7,
    //   1] (SQ = 5): KL = 2/3 ln(5/6) + 2/6 ln((2/6) / (1/5)), the same value.
    // i = 16: no outliers and every level holds one non-zero bin alone: KL = 0.
    let kl = 2.0 / 3.0 * (5.0f64 / 6.0).ln() + (5.0f64 / 3.0).ln() / 3.0;
    SEVEN_DIGITS.assert_scalar("kl", kl, 0.0487275);
    let d = entropy_divergences(&h, 4);
    assert_eq!(d.len(), 13);
    for &(i, got) in &d {
        match i {
            9 | 10 => {
                KL.assert_scalar(&format!("i = {i}"), got, kl);
            }
            16 => assert_eq!(got, 0.0),
            _ => assert!(got.is_infinite(), "i = {i}: {got}"),
        }
    }
    // KL = 0 at i = 16 wins: threshold 16.5 clamped to the max, 15.5.
    assert_eq!(entropy_threshold_with(&h, 4), 15.5);
}

#[test]
fn entropy_ties_go_to_less_clipping() {
    // counts [0, 0, 0, 0, 2, 0, 0, 1] (3 values; max 7.5).
    let h = hist_from_counts(&[0, 0, 0, 0, 2, 0, 0, 1]);
    // i = 4: P = [0, 0, 0, 0 + 3]; bin 3 is its own level with mass 0 -> +inf.
    // i = 5: levels [0, 0, 1, 2, 3]; P = [0, 0, 0, 0, 2 + 1], level 3 = {4} with mass 2:
    //   Q = [0, 0, 0, 0, 2]; normalised both are [0, 0, 0, 0, 1] -> KL = 0.
    // i = 6: levels [0, 0, 1, 2, 2, 3]; P[5] = 0 + 1 but level 3 = {5} has mass 0 -> +inf.
    // i = 7: levels [0, 0, 1, 1, 2, 2, 3]; P[6] = 1, level 3 = {6} mass 0 -> +inf.
    // i = 8: no outliers; levels {4,5} and {6,7} hold 2 and 1, each on its one non-zero
    //   bin: Q = P -> KL = 0.
    let inf = f64::INFINITY;
    assert_kl(
        &entropy_divergences(&h, 4),
        &[(4, inf), (5, 0.0), (6, inf), (7, inf), (8, 0.0)],
    );
    // Tie between i = 5 (threshold 5.5, clips the 7.5) and i = 8 (8.5, clamped to the max
    // 7.5): the larger i wins.
    assert_eq!(entropy_threshold_with(&h, 4), 7.5);
}

#[test]
fn entropy_without_room_to_clip_falls_back_to_max() {
    // 4 bins but 128 levels: nothing to search.
    let mut h = Histogram::new(4).unwrap();
    h.add(&[0.3, 1.7]);
    assert!(entropy_divergences(&h, 128).is_empty());
    assert_eq!(entropy_threshold(&h), 1.7);
    // All values in bin 4 (4.5): i = 4 is +inf (the clipped values land in an empty level),
    // i = 5..=8 all have P = Q, KL = 0; the tie goes to i = 8 whose threshold 8.5 is
    // clamped to the max, 4.5.
    let h = hist_from_counts(&[0, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(entropy_threshold_with(&h, 4), 4.5);
}

#[test]
fn no_data_means_threshold_zero_and_no_scale() {
    let mut h = Histogram::default();
    for m in [Method::Max, Method::Percentile(99.99), Method::Entropy] {
        assert_eq!(threshold(&h, m), 0.0);
        assert!(matches!(scale(&h, m), Err(CalibError::NoData { .. })));
    }
    h.add(&[0.0, 0.0, f32::NAN]);
    assert_eq!(threshold(&h, Method::Entropy), 0.0);
    assert!(matches!(
        scale(&h, Method::Entropy),
        Err(CalibError::NoData { .. })
    ));
}

#[test]
fn method_parses_and_prints() {
    assert_eq!("max".parse::<Method>().unwrap(), Method::Max);
    assert_eq!("entropy".parse::<Method>().unwrap(), Method::Entropy);
    assert_eq!(
        "percentile".parse::<Method>().unwrap(),
        Method::Percentile(99.99)
    );
    assert_eq!(
        "percentile:99.9".parse::<Method>().unwrap(),
        Method::Percentile(99.9)
    );
    for m in [Method::Max, Method::Entropy, Method::Percentile(99.99)] {
        assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
    }
    assert_eq!(Method::Percentile(99.99).to_string(), "percentile:99.99");
    for bad in [
        "",
        "Max",
        "kl",
        "percentile:",
        "percentile:abc",
        "percentile:0",
        "percentile:-1",
        "percentile:100.5",
        "percentile:NaN",
    ] {
        let err = bad.parse::<Method>().unwrap_err();
        match &err {
            CalibError::InvalidMethod { value, reason } => {
                assert_eq!(value, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad}: unexpected {other}"),
        }
    }
    assert!(Method::percentile(100.0).is_ok());
    assert!(Method::percentile(0.0).is_err());
    // A hand-built out-of-range percentile is refused by scale().
    let mut h = Histogram::new(4).unwrap();
    h.add(&[1.0]);
    assert!(matches!(
        scale(&h, Method::Percentile(150.0)),
        Err(CalibError::InvalidMethod { .. })
    ));
}

/// Deterministic standard normal samples (splitmix64 + Box-Muller).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut uniform = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64 // in (0, 1)
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

#[test]
fn gaussian_thresholds_are_a_few_sigma() {
    let data = gaussian(200_000, 7);
    let mut h = Histogram::default();
    h.add(&data);
    let max = threshold(&h, Method::Max);
    let entropy = threshold(&h, Method::Entropy);
    let p9999 = threshold(&h, Method::Percentile(99.99));
    // |x| of N(0, 1): P(|x| > 3.8906) = 1e-4, so the 99.99th percentile is ~3.89 sigma.
    assert!((3.7..4.1).contains(&p9999), "p99.99 = {p9999}");
    assert!((2.0..5.0).contains(&entropy), "entropy = {entropy}");
    assert!(
        max >= 4.0 && entropy <= max,
        "max = {max}, entropy = {entropy}"
    );
}

#[test]
fn outliers_move_max_but_not_entropy_or_percentile() {
    let mut data = gaussian(100_000, 11);
    data.extend_from_slice(&[20.0, -20.0, 19.5]);
    let mut h = Histogram::default();
    h.add(&data);
    assert_eq!(threshold(&h, Method::Max), 20.0);
    let entropy = threshold(&h, Method::Entropy);
    let p9999 = threshold(&h, Method::Percentile(99.99));
    assert!((2.0..5.0).contains(&entropy), "entropy = {entropy}");
    assert!((3.5..4.5).contains(&p9999), "p99.99 = {p9999}");
}

#[test]
fn uniform_data_is_not_clipped_by_entropy() {
    // Uniform |x| on [0, 1): every quantized level is equally used, clipping only hurts.
    let data: Vec<f32> = (0..100_000).map(|k| k as f32 / 100_000.0).collect();
    let mut h = Histogram::default();
    h.add(&data);
    let entropy = threshold(&h, Method::Entropy);
    assert!(
        entropy >= 0.95 * h.max_abs(),
        "entropy = {entropy}, max = {}",
        h.max_abs()
    );
}
