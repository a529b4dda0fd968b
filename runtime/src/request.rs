//! A generation request and its validation against the bundle.

use llamagen_bundle::Manifest;

use crate::error::RuntimeError;
use crate::sampler::SamplingOptions;

/// What to generate: one image per label, with the official `sample_c2i.py` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub labels: Vec<usize>,
    /// Classifier-free guidance scale; guidance runs only when > 1.0 (as the official code).
    pub cfg_scale: f32,
    /// Guidance is switched off for decode steps i > cfg_interval; -1 keeps it on throughout.
    pub cfg_interval: f32,
    pub sampling: SamplingOptions,
    /// Same seed -> same tokens on the same backend. Row r of the batch draws from stream r.
    pub seed: u64,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            labels: vec![207],
            cfg_scale: 4.0,
            cfg_interval: -1.0,
            sampling: SamplingOptions::default(),
            seed: 0,
        }
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidRequest {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl GenerateRequest {
    /// Rejects values the official code would fail on or silently misuse.
    pub fn validate(&self, m: &Manifest) -> Result<(), RuntimeError> {
        if self.labels.is_empty() {
            return Err(invalid("labels", "[]", "at least one label is needed"));
        }
        if let Some(&l) = self.labels.iter().find(|&&l| l >= m.num_classes()) {
            return Err(invalid(
                "labels",
                l,
                format!("must be < num_classes = {}", m.num_classes()),
            ));
        }
        if !(self.cfg_scale >= 0.0 && self.cfg_scale.is_finite()) {
            return Err(invalid(
                "cfg_scale",
                self.cfg_scale,
                "must be a finite number >= 0",
            ));
        }
        if self.cfg_interval.is_nan() {
            return Err(invalid(
                "cfg_interval",
                self.cfg_interval,
                "must be a number (-1 = always)",
            ));
        }
        let s = &self.sampling;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(invalid(
                "temperature",
                s.temperature,
                "must be a finite number >= 0",
            ));
        }
        if s.top_k > m.vocab_size() {
            return Err(invalid(
                "top_k",
                s.top_k,
                format!(
                    "must be <= the vocabulary size {} (0 = off)",
                    m.vocab_size()
                ),
            ));
        }
        // VAR's sampler takes top_p 0 as "off" (its default); LlamaGen's would keep one token.
        if m.family == llamagen_bundle::ModelFamily::Var {
            if !(0.0..=1.0).contains(&s.top_p) {
                return Err(invalid("top_p", s.top_p, "must be in [0, 1] (0 = off)"));
            }
        } else if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(invalid("top_p", s.top_p, "must be in (0, 1]"));
        }
        Ok(())
    }

    /// Whether the batch carries unconditional rows (official: cfg_scale > 1.0).
    pub fn uses_cfg(&self) -> bool {
        self.cfg_scale > 1.0
    }
}
