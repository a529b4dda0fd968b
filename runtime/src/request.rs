//! A generation request and its validation against the bundle, and the per-call options of
//! [`crate::Pipeline::generate_tokens_with`] (per-row random streams, a deadline).

use std::time::Instant;

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
    /// Same seed -> same tokens on the same backend. Row r of the batch draws from stream r
    /// (unless [`RunOptions::row_seeds`] says otherwise).
    pub seed: u64,
}

/// The random stream one request row samples from: Philox keyed by `seed`, stream `stream`,
/// counter = step. A request with seed `s` alone uses `RowSeed { seed: s, stream: r }` for its
/// row `r`; a service that merges requests into one batch gives every row its own request's
/// seed and its index within that request, so the tokens do not depend on the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowSeed {
    pub seed: u64,
    pub stream: u64,
}

impl RowSeed {
    /// The streams a request uses when it runs alone: `(req.seed, r)` for row `r`.
    pub fn of_request(req: &GenerateRequest) -> Vec<RowSeed> {
        (0..req.labels.len() as u64)
            .map(|stream| RowSeed {
                seed: req.seed,
                stream,
            })
            .collect()
    }
}

/// Per-call options of a generation (what a service adds to a [`GenerateRequest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// One random stream per label; empty = [`RowSeed::of_request`] (the request's own seed,
    /// stream = row).
    pub row_seeds: Vec<RowSeed>,
    /// Give up once this instant has passed ([`crate::RuntimeError::DeadlineExceeded`]); checked
    /// before the prefill and after every step of the host loop (and before and after a
    /// backend's fused loop, which cannot stop in the middle).
    pub deadline: Option<Instant>,
}

impl RunOptions {
    /// The rows' streams for `req`: `row_seeds`, or the request's own when empty. An error when
    /// the count differs from the labels'.
    pub fn seeds_for(&self, req: &GenerateRequest) -> Result<Vec<RowSeed>, RuntimeError> {
        if self.row_seeds.is_empty() {
            return Ok(RowSeed::of_request(req));
        }
        if self.row_seeds.len() != req.labels.len() {
            return Err(invalid(
                "row_seeds",
                format!("{} seeds", self.row_seeds.len()),
                format!("expected one per label ({})", req.labels.len()),
            ));
        }
        Ok(self.row_seeds.clone())
    }
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
        self.validate_with_limit(m, usize::MAX)
    }

    /// [`Self::validate`], and at most `max_labels` labels ([`RuntimeError::TooManyLabels`]).
    pub fn validate_with_limit(&self, m: &Manifest, max_labels: usize) -> Result<(), RuntimeError> {
        if self.labels.is_empty() {
            return Err(invalid("labels", "[]", "at least one label is needed"));
        }
        if self.labels.len() > max_labels {
            return Err(RuntimeError::TooManyLabels {
                got: self.labels.len(),
                max: max_labels,
            });
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
