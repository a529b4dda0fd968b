//! The one tolerance type of the numeric tests. Every comparison names its level.
//!
//! Levels (fp32 graphs vs the official fp32 PyTorch outputs or our f32 reference):
//! - `FP32_LOGITS`: max |got - expected| <= 1e-3 x (max - min of the expected logits). Logit
//!   ranges are ~100 on the golden fixtures, so this allows ~0.1 absolute; we measure ~1e-5.
//! - `FP32_IMAGE`: max |got - expected| <= 1e-3 absolute on decoder outputs in about [-1, 1].
#![allow(dead_code)]

#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub name: &'static str,
    /// Absolute bound.
    pub atol: f32,
    /// Bound relative to the expected data's range (max - min), added to `atol`.
    pub range_rel: f32,
}

pub const FP32_LOGITS: Tolerance = Tolerance {
    name: "fp32 logits (1e-3 of range)",
    atol: 0.0,
    range_rel: 1e-3,
};

pub const FP32_IMAGE: Tolerance = Tolerance {
    name: "fp32 image (1e-3 abs)",
    atol: 1e-3,
    range_rel: 0.0,
};

/// What a comparison measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub max_abs: f32,
    pub bound: f32,
}

impl Tolerance {
    /// Panics with the level, the worst index and the values when out of tolerance (or on NaN).
    pub fn assert_close(&self, what: &str, got: &[f32], expected: &[f32]) -> Measured {
        assert_eq!(got.len(), expected.len(), "{what}: length differs");
        let (lo, hi) = expected
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        let bound = self.atol + self.range_rel * (hi - lo);
        let mut worst = (0usize, 0f32);
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            let d = (g - e).abs();
            assert!(
                d.is_finite(),
                "{what}: non-finite at {i}: got {g}, expected {e}"
            );
            if d > worst.1 {
                worst = (i, d);
            }
        }
        assert!(
            worst.1 <= bound,
            "{what}: max abs error {} at index {} (got {}, expected {}) exceeds {} bound {bound}",
            worst.1,
            worst.0,
            got[worst.0],
            expected[worst.0],
            self.name
        );
        Measured {
            max_abs: worst.1,
            bound,
        }
    }
}
