//! Calibration sets: which generations feed activation statistics, described in YAML.
//!
//! ```yaml
//! name: imagenet-classes
//! description: ...            # optional
//! labels: [207, 360, 387]     # class labels (ImageNet-1k indices for c2i models)
//! seeds: [0, 1]               # one generation per (label, seed)
//! samples: 4                  # use the first N (label, seed) pairs, label-major
//! cfg_scale: 4.0              # optional; these four default to the official
//! temperature: 1.0            #   sample_c2i.py values (4.0, 1.0, 2000, 1.0)
//! top_k: 2000                 #   0 = top-k off, as in the runtime's sampler
//! top_p: 1.0
//! ```
//!
//! The pairs are enumerated label-major: `(l0, s0), (l0, s1), .., (l1, s0), ..`, and the
//! first `samples` of them are used. Unknown keys are rejected (a typo is an error, not a
//! silently ignored option). The sampling fields follow the runtime's `GenerateRequest` rules
//! (cfg_scale and temperature finite and >= 0, top_p in (0, 1]) so a set that loads here is
//! a valid request there; only `labels < num_classes` needs the model and is checked by
//! [`CalibSet::validate`].

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CalibError;

/// The embedded default set (`calib/imagenet-classes.yaml`): 16 diverse ImageNet classes.
pub const DEFAULT_SET_YAML: &str = include_str!("../imagenet-classes.yaml");

/// A calibration set: the (label, seed) generations whose activations are recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibSet {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub labels: Vec<usize>,
    pub seeds: Vec<u64>,
    /// How many (label, seed) pairs to use, counted label-major from the first.
    pub samples: usize,
    #[serde(default = "default_cfg_scale")]
    pub cfg_scale: f32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
}

fn default_cfg_scale() -> f32 {
    4.0
}
fn default_temperature() -> f32 {
    1.0
}
fn default_top_k() -> usize {
    2000
}
fn default_top_p() -> f32 {
    1.0
}

impl CalibSet {
    /// Reads, parses and checks a set file (everything but the label range; see
    /// [`CalibSet::validate`]).
    pub fn load(path: impl AsRef<Path>) -> Result<CalibSet, CalibError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CalibError::io("read", path, e))?;
        let set = CalibSet::from_yaml(&text, &path.display().to_string())?;
        tracing::debug!(path = %path.display(), name = %set.name, samples = set.samples, "loaded calibration set");
        Ok(set)
    }

    /// Parses and checks a set from YAML text; `origin` names it in errors (a path, say).
    pub fn from_yaml(text: &str, origin: &str) -> Result<CalibSet, CalibError> {
        let set: CalibSet = serde_yaml::from_str(text).map_err(|source| CalibError::Yaml {
            origin: origin.to_string(),
            source,
        })?;
        set.check()?;
        Ok(set)
    }

    /// The embedded default set (see [`DEFAULT_SET_YAML`]).
    pub fn default_set() -> CalibSet {
        // The embedded file is a compile-time constant, checked by this crate's tests.
        CalibSet::from_yaml(DEFAULT_SET_YAML, "<embedded imagenet-classes.yaml>")
            .expect("the embedded default calibration set is valid")
    }

    /// How many distinct (label, seed) pairs the set can produce.
    pub fn pairs_available(&self) -> usize {
        self.labels.len().saturating_mul(self.seeds.len())
    }

    /// The first `samples` (label, seed) pairs, label-major.
    pub fn requests(&self) -> Vec<(usize, u64)> {
        self.labels
            .iter()
            .flat_map(|&label| self.seeds.iter().map(move |&seed| (label, seed)))
            .take(self.samples)
            .collect()
    }

    /// Everything [`CalibSet::check`] checks, plus every label `< num_classes`.
    pub fn validate(&self, num_classes: usize) -> Result<(), CalibError> {
        self.check()?;
        if let Some(&l) = self.labels.iter().find(|&&l| l >= num_classes) {
            return Err(self.invalid(
                "labels",
                l,
                format!("must be < num_classes = {num_classes}"),
            ));
        }
        Ok(())
    }

    /// Checks what needs no model: non-empty name, labels and seeds without duplicates,
    /// 1 <= samples <= pairs available, and the sampling options.
    pub fn check(&self) -> Result<(), CalibError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "\"\"", "must not be empty"));
        }
        if self.labels.is_empty() {
            return Err(self.invalid("labels", "[]", "at least one label is needed"));
        }
        if let Some(l) = first_duplicate(&self.labels) {
            return Err(self.invalid("labels", l, "appears more than once"));
        }
        if self.seeds.is_empty() {
            return Err(self.invalid("seeds", "[]", "at least one seed is needed"));
        }
        if let Some(s) = first_duplicate(&self.seeds) {
            return Err(self.invalid("seeds", s, "appears more than once"));
        }
        if self.samples == 0 {
            return Err(self.invalid("samples", 0, "must be >= 1"));
        }
        let available = self.pairs_available();
        if self.samples > available {
            return Err(self.invalid(
                "samples",
                self.samples,
                format!(
                    "only {available} (label, seed) pairs are available ({} labels x {} seeds)",
                    self.labels.len(),
                    self.seeds.len()
                ),
            ));
        }
        if !(self.cfg_scale >= 0.0 && self.cfg_scale.is_finite()) {
            return Err(self.invalid("cfg_scale", self.cfg_scale, "must be a finite number >= 0"));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(self.invalid(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(self.invalid("top_p", self.top_p, "must be in (0, 1]"));
        }
        Ok(())
    }

    fn invalid(
        &self,
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> CalibError {
        CalibError::InvalidSet {
            set: self.name.clone(),
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

fn first_duplicate<T: Copy + Eq + std::hash::Hash>(items: &[T]) -> Option<T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().copied().find(|&x| !seen.insert(x))
}
