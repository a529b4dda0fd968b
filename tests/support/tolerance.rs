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

/// Agreement of a lower-precision bundle with fp32 (`llamagen compare` figures).
#[derive(Clone, Copy, Debug)]
pub struct PrecisionLevel {
    pub name: &'static str,
    pub cosine_min: f64,
    pub cosine_mean: f64,
    pub psnr_db: f64,
}

/// fp16 vs fp32, any model (the bar): logits cosine min 0.999, images 40 dB.
pub const FP16_VS_FP32: PrecisionLevel = PrecisionLevel {
    name: "fp16 vs fp32",
    cosine_min: 0.999,
    cosine_mean: 0.999,
    psnr_db: 40.0,
};

/// int8 (weight-only, the default) vs fp32: the bar, logits cosine min 0.99, 30 dB.
pub const INT8_VS_FP32: PrecisionLevel = PrecisionLevel {
    name: "int8 vs fp32",
    cosine_min: 0.99,
    cosine_mean: 0.99,
    psnr_db: 30.0,
};

/// int8 with calibrated Q/DQ activations vs fp32 on the golden tiny model. Its random weights
/// give logits spanning ~170, far wider than a trained model's, and per-tensor activation
/// scales cost accuracy (README), so the per-step minimum is looser.
pub const INT8_QDQ_VS_FP32_TINY: PrecisionLevel = PrecisionLevel {
    name: "int8 Q/DQ vs fp32 (tiny random model)",
    cosine_min: 0.9,
    cosine_mean: 0.99,
    psnr_db: 30.0,
};

impl PrecisionLevel {
    pub fn assert_meets(&self, what: &str, cosine_min: f64, cosine_mean: f64, psnr_db: f64) {
        assert!(
            cosine_min >= self.cosine_min && cosine_mean >= self.cosine_mean && psnr_db >= self.psnr_db,
            "{what}: cosine min {cosine_min}, mean {cosine_mean}, PSNR {psnr_db} dB miss the {} bar \
             (min {}, mean {}, {} dB)",
            self.name,
            self.cosine_min,
            self.cosine_mean,
            self.psnr_db
        );
    }
}
