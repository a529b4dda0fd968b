//! How close a (lower-precision) bundle is to a reference bundle of the same model, measured
//! teacher-forced on the same inputs (what `llamagen compare` prints).
//!
//! Procedure of [`compare`]: the reference generates tokens for the request (its sampling options
//! and seed); both pipelines then score exactly those tokens ([`Pipeline::score_tokens`]), so every
//! step of both sees the same prefix even where the two would sample differently; per (step, row)
//! the CFG-combined logits (`[vocab]` f32, as the sampler receives them) are compared; finally
//! both decode the same tokens to images.
//!
//! Metrics (all accumulated in f64):
//! - `logits_cosine_min` / `_mean`: cosine similarity of each (step, row) pair of logit rows
//!   ([`cosine`]; two all-zero rows count as 1, one all-zero row as 0);
//! - `logits_max_abs`: the largest |low - reference| over all logits;
//! - `token_agreement`: the fraction of (step, row) where the argmax of both rows is the same token
//!   (greedy-token agreement; ties go to the lowest index, as [`argmax`]);
//! - `image_psnr_db`: PSNR over all pixels of all images, pixels mapped to [0, 1] as
//!   `clamp((x + 1) / 2, 0, 1)` (the range `save_image` writes), MAX = 1: `10 log10(1 / MSE)`
//!   ([`psnr_db`]). Identical images give `f64::INFINITY`; since JSON has no infinity, the report
//!   serializes it as `f64::MAX` (1.7976931348623157e308), so "PSNR >= threshold" checks on the
//!   JSON still pass for identical images. NaN (non-finite pixels) serializes as `null`.
//!
//! Non-finite logits (fp16 overflow) make the affected cosine, `logits_cosine_min`, `_mean` and
//! `logits_max_abs` NaN rather than being skipped.

use serde::{Serialize, Serializer};

use crate::error::RuntimeError;
use crate::pipeline::{Observer, Pipeline};
use crate::request::GenerateRequest;
use crate::sampler::argmax;
use llamagen_bundle::Manifest;

/// Closeness of a bundle to a reference bundle (see the module doc for each metric).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareReport {
    pub logits_cosine_min: f64,
    pub logits_cosine_mean: f64,
    pub logits_max_abs: f64,
    /// Fraction in [0, 1] of (step, row) with the same argmax token.
    pub token_agreement: f64,
    /// `f64::INFINITY` for identical images, serialized as `f64::MAX`; NaN as `null`.
    #[serde(serialize_with = "serialize_psnr")]
    pub image_psnr_db: f64,
    /// Token steps per image (`tokens_per_image`).
    pub steps: usize,
    /// Images (labels) of the request.
    pub images: usize,
}

fn serialize_psnr<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_none()
    } else if *v == f64::INFINITY {
        s.serialize_f64(f64::MAX)
    } else {
        s.serialize_f64(*v)
    }
}

/// Cosine similarity of two equally long rows, accumulated in f64. Two all-zero rows give 1,
/// exactly one all-zero row gives 0; any NaN/infinity gives NaN.
///
/// # Panics
/// If the rows differ in length (a caller bug).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine: rows differ in length");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if !(dot.is_finite() && na.is_finite() && nb.is_finite()) {
        return f64::NAN;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (na.sqrt() * nb.sqrt()),
    }
}

/// Largest |a - b| (in f64); NaN if any difference is NaN; 0 for empty rows.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0, nan_max)
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// PSNR in dB of images in about [-1, 1] (`[image][pixels]`, same shapes), over all pixels of all
/// images after mapping each value to `clamp((x + 1) / 2, 0, 1)`, MAX = 1. `f64::INFINITY` when
/// the mapped pixels are identical, NaN when a pixel is NaN or there are no pixels.
///
/// # Panics
/// If the image lists differ in count or size (a caller bug).
pub fn psnr_db(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "psnr: image counts differ");
    let unit = |x: f32| ((f64::from(x) + 1.0) / 2.0).clamp(0.0, 1.0);
    let (mut sum, mut count) = (0f64, 0usize);
    for (ia, ib) in a.iter().zip(b) {
        assert_eq!(ia.len(), ib.len(), "psnr: image sizes differ");
        for (&x, &y) in ia.iter().zip(ib) {
            let d = unit(x) - unit(y);
            sum += d * d;
        }
        count += ia.len();
    }
    if count == 0 {
        return f64::NAN;
    }
    let mse = sum / count as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// The fields in which two serialized configs differ, as `prefix.field: bundle X, reference Y`.
fn config_diff<T: Serialize>(prefix: &str, low: &T, reference: &T) -> Vec<String> {
    use serde_yaml::Value;
    fn show(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Sequence(items) => {
                format!(
                    "[{}]",
                    items.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            other => format!("{other:?}"),
        }
    }
    let (l, r) = match (serde_yaml::to_value(low), serde_yaml::to_value(reference)) {
        (Ok(l), Ok(r)) => (l, r),
        _ => return vec![format!("{prefix}: cannot be serialized for comparison")],
    };
    match (&l, &r) {
        (Value::Mapping(ml), Value::Mapping(mr)) => {
            let mut keys: Vec<&Value> = ml.keys().collect();
            keys.extend(mr.keys().filter(|k| !ml.contains_key(*k)));
            keys.into_iter()
                .filter_map(|k| {
                    let (a, b) = (ml.get(k), mr.get(k));
                    (a != b).then(|| {
                        let s = |v: Option<&Value>| v.map_or("(missing)".into(), show);
                        format!("{prefix}.{}: bundle {}, reference {}", show(k), s(a), s(b))
                    })
                })
                .collect()
        }
        _ if l != r => vec![format!(
            "{prefix}: bundle {}, reference {}",
            show(&l),
            show(&r)
        )],
        _ => Vec::new(),
    }
}

/// Errors unless both bundles hold the same model: equal `gpt` and `vq` configs (the error names
/// every differing field). Precision, sources and graphs may differ.
pub fn check_same_model(low: &Manifest, reference: &Manifest) -> Result<(), RuntimeError> {
    let mut diffs = config_diff("gpt", &low.gpt, &reference.gpt);
    diffs.extend(config_diff("var", &low.var, &reference.var));
    diffs.extend(config_diff("vq", &low.vq, &reference.vq));
    if diffs.is_empty() {
        return Ok(());
    }
    Err(RuntimeError::InvalidRequest {
        field: "model",
        value: diffs.join("; "),
        reason: "the bundle and the reference must have the same gpt (or var) and vq configs"
            .into(),
    })
}

/// Keeps every (step, row) logit row of the reference: `[step][row][vocab]`.
struct Recorder {
    rows: usize,
    vocab: usize,
    logits: Vec<f32>,
    seen: usize,
}

impl Observer for Recorder {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        let at = (step * self.rows + row) * self.vocab;
        if let Some(dst) = self.logits.get_mut(at..at + self.vocab) {
            if logits.len() == self.vocab {
                dst.copy_from_slice(logits);
                self.seen += 1;
            }
        }
    }
}

/// Compares each (step, row) of the scored bundle with the recorded reference as it arrives.
struct Accumulator<'a> {
    reference: &'a Recorder,
    cos_min: f64,
    cos_sum: f64,
    max_abs: f64,
    agree: usize,
    seen: usize,
}

impl Observer for Accumulator<'_> {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        let r = self.reference;
        let at = (step * r.rows + row) * r.vocab;
        let Some(want) = r.logits.get(at..at + r.vocab) else {
            return;
        };
        if logits.len() != want.len() {
            return;
        }
        let c = cosine(logits, want);
        self.cos_min = nan_min(self.cos_min, c);
        self.cos_sum += c;
        self.max_abs = nan_max(self.max_abs, max_abs_diff(logits, want));
        self.agree += usize::from(argmax(logits) == argmax(want));
        self.seen += 1;
    }
}

/// Measures how close `low` is to `reference` on `req` (see the module doc): the reference
/// generates the tokens, both score them teacher-forced and decode them to images.
pub fn compare(
    low: &Pipeline,
    reference: &Pipeline,
    req: &GenerateRequest,
) -> Result<CompareReport, RuntimeError> {
    let _span = tracing::info_span!("compare", labels = req.labels.len()).entered();
    check_same_model(low.manifest(), reference.manifest())?;
    req.validate(reference.manifest())?;
    let tokens = reference.generate_tokens(req, &mut |_, _| {})?.tokens;

    let rows = req.labels.len();
    let steps = reference.manifest().generation.tokens_per_image;
    let vocab = reference.manifest().vocab_size();
    let mut rec = Recorder {
        rows,
        vocab,
        logits: vec![0.0; steps * rows * vocab],
        seen: 0,
    };
    reference.score_tokens(req, &tokens, &mut rec)?;
    let mut acc = Accumulator {
        reference: &rec,
        cos_min: f64::INFINITY,
        cos_sum: 0.0,
        max_abs: 0.0,
        agree: 0,
        seen: 0,
    };
    low.score_tokens(req, &tokens, &mut acc)?;
    let expected = steps * rows;
    for (who, seen) in [("reference", rec.seen), ("bundle", acc.seen)] {
        if seen != expected {
            return Err(RuntimeError::OutputShape {
                graph: llamagen_bundle::GraphRole::GptStep,
                what: format!("{who} logit rows (steps x labels)"),
                expected: vec![steps, rows],
                got: vec![seen],
            });
        }
    }
    tracing::debug!(steps, rows, "scored both bundles");

    let want = reference.decode_images(&tokens)?;
    let got = low.decode_images(&tokens)?;
    Ok(CompareReport {
        logits_cosine_min: acc.cos_min,
        logits_cosine_mean: acc.cos_sum / expected as f64,
        logits_max_abs: acc.max_abs,
        token_agreement: acc.agree as f64 / expected as f64,
        image_psnr_db: psnr_db(&got.pixels, &want.pixels),
        steps,
        images: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_hand_checked() {
        // Parallel, opposite, orthogonal, and a 3-4-5 case: (1,0).(3,4)/(1*5) = 0.6.
        assert!((cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-15);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-15);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 5.0]), 0.0);
        assert!((cosine(&[1.0, 0.0], &[3.0, 4.0]) - 0.6).abs() < 1e-15);
        // (1,1).(1,0) / (sqrt2 * 1) = 1/sqrt2.
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!(cosine(&[f32::NAN, 1.0], &[1.0, 1.0]).is_nan());
        assert!(cosine(&[f32::INFINITY, 1.0], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn cosine_accumulates_in_f64() {
        // 1e20^2 overflows f32 but not f64.
        assert!((cosine(&[1e20, 1e20], &[1e20, 1e20]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn max_abs_diff_hand_checked() {
        assert_eq!(max_abs_diff(&[1.0, -2.0, 3.0], &[1.5, 2.0, 3.0]), 4.0);
        assert_eq!(max_abs_diff(&[], &[]), 0.0);
        assert!(max_abs_diff(&[f32::NAN, 9.0], &[0.0, 0.0]).is_nan());
        assert!(max_abs_diff(&[9.0, f32::NAN], &[0.0, 0.0]).is_nan());
    }

    #[test]
    fn psnr_hand_checked() {
        // x = 0 -> 0.5, x = 1 -> 1.0: every pixel differs by 0.5, MSE 0.25, PSNR 10 log10(4).
        let a = vec![vec![0.0f32; 12]];
        let b = vec![vec![1.0f32; 12]];
        assert!((psnr_db(&a, &b) - 6.020599913279624).abs() < 1e-12);
        // One pixel of 4 off by 0.1 in [0, 1] (0.2 in [-1, 1]): MSE 0.0025, PSNR 26.0206 dB.
        let a = vec![vec![0.0f32, 0.0], vec![0.0, 0.0]];
        let b = vec![vec![0.0f32, 0.0], vec![0.2, 0.0]];
        let want = 10.0 * (1.0f64 / 0.0025).log10();
        assert!((psnr_db(&a, &b) - want).abs() < 1e-5, "{}", psnr_db(&a, &b));
        assert!((want - 26.020599913279625).abs() < 1e-12);
        // Clamping: values beyond [-1, 1] map to the ends, so 5 vs 1 and -3 vs -1 are identical.
        assert_eq!(
            psnr_db(&[vec![5.0, -3.0]], &[vec![1.0, -1.0]]),
            f64::INFINITY
        );
        // Full-range error everywhere (-1 vs 1): MSE 1, 0 dB.
        assert_eq!(psnr_db(&[vec![-1.0; 3]], &[vec![1.0; 3]]), 0.0);
        assert!(psnr_db(&[vec![f32::NAN]], &[vec![0.0]]).is_nan());
    }

    fn report(psnr: f64) -> CompareReport {
        CompareReport {
            logits_cosine_min: 0.5,
            logits_cosine_mean: 0.75,
            logits_max_abs: 2.0,
            token_agreement: 0.25,
            image_psnr_db: psnr,
            steps: 16,
            images: 2,
        }
    }

    #[test]
    fn infinite_psnr_serializes_as_f64_max_and_nan_as_null() {
        let v = serde_yaml::to_value(report(f64::INFINITY)).unwrap();
        assert_eq!(v["image_psnr_db"].as_f64(), Some(f64::MAX));
        assert_eq!(v["token_agreement"].as_f64(), Some(0.25));
        assert_eq!(v["steps"].as_u64(), Some(16));
        let v = serde_yaml::to_value(report(f64::NAN)).unwrap();
        assert!(v["image_psnr_db"].is_null());
        let v = serde_yaml::to_value(report(31.5)).unwrap();
        assert_eq!(v["image_psnr_db"].as_f64(), Some(31.5));
    }

    #[derive(Serialize)]
    struct Cfg {
        name: String,
        dim: usize,
        ch_mult: Vec<usize>,
    }

    #[test]
    fn config_diff_names_each_differing_field() {
        let a = Cfg {
            name: "GPT-B".into(),
            dim: 768,
            ch_mult: vec![1, 2],
        };
        let b = Cfg {
            name: "GPT-B".into(),
            dim: 1024,
            ch_mult: vec![1, 4],
        };
        assert_eq!(
            config_diff("gpt", &a, &b),
            vec![
                "gpt.dim: bundle 768, reference 1024".to_string(),
                "gpt.ch_mult: bundle [1, 2], reference [1, 4]".to_string(),
            ]
        );
        assert!(config_diff("gpt", &a, &a).is_empty());
    }
}
