//! Histogram binning, growth by doubling, merging and the exactness contract.
//!
//! Tolerance level: exact. Counts are integers and every expected bin is worked out by hand
//! in the comments (bin j holds j * width <= |x| < (j + 1) * width).

use llamagen_calib::{CalibError, Histogram};

fn hist4(data: &[f32]) -> Histogram {
    let mut h = Histogram::new(4).unwrap();
    h.add(data);
    h
}

#[test]
fn bins_small_input_by_hand() {
    // max |x| = 1.5 -> range = smallest power of two > 1.5 = 2, width 0.5.
    // 0.1 -> 0, 0.5 -> 1 (edge goes up), 0.9 -> 1, 1.5 -> 3, |-0.6| -> 1, 0.0 -> 0.
    let h = hist4(&[0.1, 0.5, 0.9, 1.5, -0.6, 0.0]);
    assert_eq!(h.range(), 2.0);
    assert_eq!(h.bin_width(), 0.5);
    assert_eq!(h.counts(), &[2, 3, 0, 1]);
    assert_eq!(h.count(), 6);
    assert_eq!(h.max_abs(), 1.5);
    assert_eq!(h.ignored(), 0);
}

#[test]
fn grows_by_doubling_and_merging_pairwise() {
    let mut h = hist4(&[0.1, 0.5, 0.9, 1.5, -0.6, 0.0]); // [2, 3, 0, 1] over [0, 2)
                                                         // 3.0 >= 2: range doubles once to 4 (width 1); bins merge pairwise:
                                                         // [2 + 3, 0 + 1, 0, 0] = [5, 1, 0, 0]; then 3.0 -> bin 3.
    h.add(&[3.0]);
    assert_eq!(h.range(), 4.0);
    assert_eq!(h.counts(), &[5, 1, 0, 1]);
    // 100: range 4 -> 128 is five doublings (width 32): every old bin j >> 5 = 0, so
    // [7, 0, 0, 0]; 100 / 32 = 3.125 -> bin 3.
    h.add(&[100.0]);
    assert_eq!(h.range(), 128.0);
    assert_eq!(h.counts(), &[7, 0, 0, 1]);
    assert_eq!(h.max_abs(), 100.0);
    assert_eq!(h.count(), 8);
    // The same data in one batch gives the same histogram.
    let once = hist4(&[0.1, 0.5, 0.9, 1.5, -0.6, 0.0, 3.0, 100.0]);
    assert_eq!(h, once);
}

#[test]
fn values_on_power_of_two_edges_stay_exact() {
    // 1.0 is not < 1, so range = 2 (width 0.5) and 1.0 -> bin 2.
    let mut h = hist4(&[1.0]);
    assert_eq!((h.range(), h.counts()), (2.0, &[0u64, 0, 1, 0][..]));
    // 2.0 -> range 4 (width 1): old bin 2 -> 1; 2.0 -> bin 2. Directly at range 4:
    // 1.0 -> 1, 2.0 -> 2. Both agree.
    h.add(&[2.0]);
    assert_eq!(h.counts(), &[0, 1, 1, 0]);
    assert_eq!(h, hist4(&[1.0, 2.0]));
}

#[test]
fn nan_and_infinities_are_ignored() {
    // Only 0.5 counts: range 1 (width 0.25), 0.5 -> bin 2.
    let h = hist4(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5]);
    assert_eq!(h.counts(), &[0, 0, 1, 0]);
    assert_eq!((h.count(), h.ignored(), h.max_abs()), (1, 3, 0.5));
}

#[test]
fn zeros_wait_in_bin_zero_until_a_range_exists() {
    let mut h = hist4(&[0.0, -0.0]);
    assert_eq!((h.range(), h.counts()), (0.0, &[2u64, 0, 0, 0][..]));
    assert_eq!(h.max_abs(), 0.0);
    // 3.0 -> range 4, width 1, bin 3; the zeros stay in bin 0.
    h.add(&[3.0]);
    assert_eq!((h.range(), h.counts()), (4.0, &[2u64, 0, 0, 1][..]));
}

#[test]
fn merge_equals_histogram_of_all_data() {
    let mut a = hist4(&[0.1, 0.9]); // range 1, [1, 0, 0, 1]
    let b = hist4(&[3.0, 0.2]); // range 4, [1, 0, 0, 1]
    a.merge(&b).unwrap();
    // At range 4 (width 1): 0.1, 0.9, 0.2 -> bin 0; 3.0 -> bin 3.
    assert_eq!(a.counts(), &[3, 0, 0, 1]);
    assert_eq!(a, hist4(&[0.1, 0.9, 3.0, 0.2]));
    // Merging the other way round gives the same.
    let mut b2 = hist4(&[3.0, 0.2]);
    b2.merge(&hist4(&[0.1, 0.9])).unwrap();
    assert_eq!(b2, a);

    let wrong = Histogram::new(8).unwrap();
    let err = a.merge(&wrong).unwrap_err();
    assert!(matches!(
        err,
        CalibError::InvalidHistogram {
            field: "num_bins",
            ..
        }
    ));
}

#[test]
fn batches_in_any_order_give_the_one_shot_histogram() {
    // Values over 12 orders of magnitude from a fixed LCG, in 7 uneven batches.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..5000)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let mantissa = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let exponent = ((state >> 20) % 40) as i32 - 20;
            mantissa * 2f32.powi(exponent)
        })
        .collect();
    let mut once = Histogram::default();
    once.add(&data);
    let cuts = [0, 1, 10, 300, 301, 2000, 4000, 5000];
    let mut forward = Histogram::default();
    let mut backward = Histogram::default();
    for w in cuts.windows(2) {
        forward.add(&data[w[0]..w[1]]);
    }
    for w in cuts.windows(2).rev() {
        backward.add(&data[w[0]..w[1]]);
    }
    assert_eq!(forward, once);
    assert_eq!(backward, once);
    assert_eq!(once.count(), 5000);
    assert_eq!(once.counts().iter().sum::<u64>(), 5000);
    let max = data.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_eq!(once.max_abs(), max);
    assert!(once.range() > f64::from(max) && once.range() <= 2.0 * f64::from(max));
}

#[test]
fn bin_count_must_be_even_and_at_least_two() {
    for bad in [0, 1, 3, 2047] {
        let err = Histogram::new(bad).unwrap_err();
        assert!(
            matches!(err, CalibError::InvalidHistogram { field: "num_bins", ref value, .. } if *value == bad.to_string()),
            "{bad}: {err}"
        );
    }
    assert_eq!(Histogram::default().num_bins(), 2048);
}
