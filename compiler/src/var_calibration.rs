//! Calibrating a VAR bundle's int8 decoder convolutions: the fp32 reference bundle, built with
//! every convolution's input and output exposed as probes, generates the calibration set's
//! images, and the min and max each probe saw become the u8 ranges of that convolution's
//! activations ([`crate::models::precision::ConvRanges`]).
//!
//! Ranges are plain min/max (asymmetric u8 needs signed bounds, which `Method`'s |x|
//! estimators do not give); the samples are the set's labels and seeds with VAR's FID sampling
//! (top-k 900, top-p 0.96) and the set's guidance scale.

use std::collections::BTreeMap;

use llamagen_calib::CalibSet;
use llamagen_runtime::{GenerateRequest, Observer, Pipeline, RuntimeError, SamplingOptions};

use crate::models::precision::{ConvRanges, PROBE_PREFIX};

/// The min and max of every probe output seen.
#[derive(Default)]
struct ProbeRanges(BTreeMap<String, (f32, f32)>);

impl Observer for ProbeRanges {
    fn on_probe(&mut self, name: &str, data: &[f32]) {
        let op = name.strip_prefix(PROBE_PREFIX).unwrap_or(name);
        let r = self
            .0
            .entry(op.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for &v in data.iter().filter(|v| v.is_finite()) {
            r.0 = r.0.min(v);
            r.1 = r.1.max(v);
        }
    }
}

/// Runs `set` through `probes` (a VAR calibration bundle) one sample at a time and returns
/// each probed tensor's range; tensors that saw no finite value are left out.
pub fn conv_ranges(
    probes: &Pipeline,
    set: &CalibSet,
    on_sample: &mut dyn FnMut(usize, usize),
) -> Result<ConvRanges, RuntimeError> {
    let vocab = probes.manifest().vocab_size();
    let pairs = set.requests();
    let mut ranges = ProbeRanges::default();
    for (i, &(label, seed)) in pairs.iter().enumerate() {
        let req = GenerateRequest {
            labels: vec![label],
            cfg_scale: set.cfg_scale,
            cfg_interval: -1.0,
            sampling: SamplingOptions {
                temperature: set.temperature,
                top_k: 900.min(vocab),
                top_p: 0.96,
            },
            seed,
        };
        let out = probes.generate_tokens(&req, &mut ranges)?;
        probes.decode_images_observed(&out.tokens, &mut ranges)?;
        on_sample(i + 1, pairs.len());
    }
    Ok(ranges
        .0
        .into_iter()
        .filter(|(_, (lo, hi))| lo <= hi)
        .collect())
}
