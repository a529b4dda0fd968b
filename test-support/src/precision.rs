//! Accuracy bars of a lower-precision bundle against fp32: aggregate agreement figures (logits
//! cosine minimum and mean over steps, image PSNR, as `llamagen compare` reports them), not an
//! element-wise tolerance (that is [`crate::Tolerance`]).

/// Agreement of a lower-precision bundle with fp32 (`llamagen compare` figures).
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// Panics, naming the level and both sets of figures, when a figure misses its bar (NaN
    /// misses every bar).
    #[track_caller]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_inclusive() {
        FP16_VS_FP32.assert_meets("at the bar", 0.999, 0.999, 40.0);
        INT8_QDQ_VS_FP32_TINY.assert_meets("loose min", 0.9, 0.99, f64::INFINITY);
    }

    #[test]
    #[should_panic(
        expected = "x: cosine min 0.98, mean 0.995, PSNR 35 dB miss the int8 vs fp32 bar"
    )]
    fn a_missed_bar_is_named() {
        INT8_VS_FP32.assert_meets("x", 0.98, 0.995, 35.0);
    }

    #[test]
    #[should_panic(expected = "miss the fp16 vs fp32 bar")]
    fn nan_misses() {
        FP16_VS_FP32.assert_meets("nan", f64::NAN, 1.0, 50.0);
    }
}
