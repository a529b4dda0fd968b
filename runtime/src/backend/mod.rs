//! Backends behind one trait, and the one place that knows which exist (`cfg(feature)` lives
//! here only). Selecting an unavailable backend is an error, never a silent CPU fallback.

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda;
mod ort_cpu;

use std::path::Path;

use llamagen_compiler::bundle::Manifest;

use crate::error::RuntimeError;
use crate::kv_cache::KvCache;

/// Executes the bundle's graphs.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// One GPT step: `ids` `[batch, seq]` at cache slot `position`. Writes the logits of the
    /// last position (`[batch, vocab]`) into `logits` and the new key/value slices into `cache`;
    /// extra outputs of calibration graphs (`probe.*`) go to `probes(name, data)`.
    fn gpt_step(
        &self,
        ids: &[i64],
        seq: usize,
        position: usize,
        cache: &mut KvCache,
        logits: &mut Vec<f32>,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError>;
    /// VQ decode of `tokens` `[batch, tokens_per_image]` to images `[batch, 3, size, size]`.
    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError>;
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// ONNX Runtime, CPU execution provider (the embedded default).
    #[default]
    Cpu,
}

impl std::str::FromStr for BackendKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" | "tensorrt" => Err(RuntimeError::BackendUnavailable {
                name: s.into(),
                reason: "this build has no GPU backend yet; use --backend cpu".into(),
            }),
            other => Err(RuntimeError::BackendUnavailable {
                name: other.into(),
                reason: "unknown backend; known: cpu".into(),
            }),
        }
    }
}

/// Options of backend creation.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Intra-op threads; `None` = all available cores.
    pub threads: Option<usize>,
}

pub fn create(
    kind: BackendKind,
    dir: &Path,
    manifest: &Manifest,
    opts: &BackendOptions,
) -> Result<Box<dyn Backend>, RuntimeError> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(ort_cpu::OrtCpu::load(dir, manifest, opts)?)),
    }
}
