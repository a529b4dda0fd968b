//! The generation pipeline: a loaded bundle on a backend, requests validated against its
//! manifest, then the generation loop (`runner.rs`): prefill, the KV-cached decode loop with CFG
//! and sampling, VQ decode. [`Pipeline::score_tokens`] runs the same loop teacher-forced: it
//! feeds given tokens instead of sampling and reports every step's logits (what
//! `llamagen compare` measures).

use std::path::{Path, PathBuf};
use std::time::Instant;

use llamagen_bundle::{load_manifest, Manifest};

use crate::backend::{self, BackendChoice, BackendKind, CpuKernels};
use crate::error::RuntimeError;
use crate::request::{GenerateRequest, RunOptions};
use crate::runner::{Generator, NextToken};

/// How to load a bundle.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The backend and its own options (default: the CPU with every core).
    pub backend: BackendChoice,
    /// Check the sha256 of every bundle file on load (default on).
    pub verify_hashes: bool,
    /// The most labels (images) one request may ask for (default
    /// [`PipelineOptions::DEFAULT_MAX_LABELS`]); more is [`RuntimeError::TooManyLabels`], not an
    /// allocation that kills the process. Each label holds KV caches for its rows (two with
    /// CFG): about 38 MB for GPT-B at 256 px, 0.2 GB for GPT-XXL at 384 px.
    pub max_labels: usize,
}

impl PipelineOptions {
    /// 64 labels: GPT-B at 256 px with CFG then needs about 2.4 GB of KV caches on the CPU.
    pub const DEFAULT_MAX_LABELS: usize = 64;
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            backend: BackendChoice::default(),
            verify_hashes: true,
            max_labels: Self::DEFAULT_MAX_LABELS,
        }
    }
}

/// A loaded bundle, ready to generate. `Send + Sync`: share it across a service's threads.
pub struct Pipeline {
    dir: PathBuf,
    manifest: Manifest,
    max_labels: usize,
    generator: Box<dyn Generator>,
}

/// Watches a generation: progress after every token, and the logits each token is sampled from.
/// Any `FnMut(done, total)` closure is an observer of progress only.
///
/// Backends that run the whole loop on a GPU can do so only for observers that do not need
/// every step's logits ([`Observer::wants_logits`] false); they then report progress once, at
/// the end.
pub trait Observer {
    /// Whether [`Observer::on_logits`] must be called (default true, so an observer that
    /// overrides `on_logits` is always served; progress-only observers say false).
    fn wants_logits(&self) -> bool {
        true
    }
    fn on_token(&mut self, _done: usize, _total: usize) {}
    /// `logits` of request row `row` at `step` (0 = the prefill's token): CFG-combined when
    /// guidance is on, before temperature / top-k / top-p, as the official `sample()` receives them.
    fn on_logits(&mut self, _step: usize, _row: usize, _logits: &[f32]) {}
    /// An extra graph output (a calibration probe `probe.<op>`, present only in calibration
    /// bundles) after every GPT step and VQ decode.
    fn on_probe(&mut self, _name: &str, _data: &[f32]) {}
    /// Asked after every token of the host loop (after [`Observer::on_token`]): true ends the
    /// generation there with [`RuntimeError::Cancelled`], so a stop takes effect within one
    /// step. Default false. A backend's fused loop (CUDA) asks only before it starts and after
    /// it ends; an observer that must stop mid-generation there says
    /// [`Observer::wants_logits`] true, which runs the host loop.
    fn should_stop(&mut self) -> bool {
        false
    }
}

impl<F: FnMut(usize, usize)> Observer for F {
    fn wants_logits(&self) -> bool {
        false
    }
    fn on_token(&mut self, done: usize, total: usize) {
        self(done, total)
    }
}

/// Tokens of one request and the time each phase took.
#[derive(Clone, Debug)]
pub struct TokenOutput {
    /// `[labels.len()][tokens_per_image]`.
    pub tokens: Vec<Vec<u32>>,
    pub prefill_ms: f64,
    /// Time of every decode step (graph + cache write + CFG + sampling): wall time in host
    /// loops; device time between events recorded around each replayed step in the CUDA
    /// backend's fused loop (no per-step synchronisation); empty where a loop times no steps.
    pub decode_step_ms: Vec<f64>,
    /// All decode steps (everything after the prefill).
    pub decode_ms: f64,
    /// Prefill + all decode steps + sampling.
    pub gpt_ms: f64,
}

/// Images as `[batch][3 * size * size]` f32 in about [-1, 1] (CHW).
#[derive(Clone, Debug)]
pub struct Images {
    pub size: usize,
    pub pixels: Vec<Vec<f32>>,
    pub vq_ms: f64,
}

impl Pipeline {
    pub fn load(dir: &Path, opts: &PipelineOptions) -> Result<Self, RuntimeError> {
        let _span = tracing::info_span!("pipeline.load", bundle = %dir.display()).entered();
        let manifest = load_manifest(dir, opts.verify_hashes)?;
        let generator = backend::load(&opts.backend, dir, &manifest)?;
        if generator.kind() == BackendKind::Cpu {
            let version = crate::ort_env::library_version().unwrap_or_default();
            if let Some(w) = crate::ort_env::slow_precision_warning(manifest.precision, &version) {
                tracing::warn!(bundle = %dir.display(), "{w}");
            }
        }
        tracing::info!(
            gpt = %manifest.model_name(),
            vq = %manifest.vq.name,
            precision = %manifest.precision,
            backend = generator.kind().name(),
            "bundle loaded"
        );
        Ok(Pipeline {
            dir: dir.to_path_buf(),
            manifest,
            max_labels: opts.max_labels,
            generator,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend the bundle runs on.
    pub fn backend(&self) -> BackendKind {
        self.generator.kind()
    }

    /// What the GPT weights occupy on the device (device backends; `None` on the CPU and for
    /// VAR bundles).
    pub fn device_weights(&self) -> Option<crate::backend::DeviceWeights> {
        self.generator.device_weights()
    }

    /// The CUDA backend's decode attention for LlamaGen (`fused`, `separate`; `None` on the
    /// CPU and for VAR bundles).
    pub fn device_attention(&self) -> Option<&'static str> {
        self.generator.device_attention()
    }

    /// CPU: how many VQ decoder convolutions run on our AMX kernel (0 elsewhere).
    pub fn cpu_kernels(&self) -> CpuKernels {
        self.generator.cpu_kernels()
    }

    /// The most labels one request may carry ([`PipelineOptions::max_labels`]).
    pub fn max_labels(&self) -> usize {
        self.max_labels
    }

    /// Checks `req` against the bundle and the label limit (what every generation does first).
    pub fn validate(&self, req: &GenerateRequest) -> Result<(), RuntimeError> {
        req.validate_with_limit(&self.manifest, self.max_labels)
    }

    /// Generates the image tokens, reporting progress (and logits) to `observer`.
    pub fn generate_tokens(
        &self,
        req: &GenerateRequest,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        self.generate_tokens_with(req, &RunOptions::default(), observer)
    }

    /// [`Self::generate_tokens`] with per-call options: each row's random stream (a service's
    /// merged batch) and a deadline. A stop asked by the observer is
    /// [`RuntimeError::Cancelled`], a passed deadline [`RuntimeError::DeadlineExceeded`].
    pub fn generate_tokens_with(
        &self,
        req: &GenerateRequest,
        run: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        self.validate(req)?;
        let seeds = run.seeds_for(req)?;
        let steps = self.manifest.generation.tokens_per_image;
        let mut guarded = Guarded {
            inner: observer,
            deadline: run.deadline,
            expired: false,
        };
        if guarded.should_stop() {
            return Err(guarded.stopped(0, steps));
        }
        let out = if !guarded.wants_logits() && self.generator.has_fused_loop() {
            let out = self.generator.generate_fused(&self.manifest, req, &seeds)?;
            if guarded.should_stop() {
                return Err(guarded.stopped(steps, steps));
            }
            guarded.on_token(steps, steps);
            Ok(out)
        } else {
            let next = NextToken::sample(&seeds, self.manifest.vocab_size());
            self.generator
                .run_tokens(&self.manifest, req, next, &mut guarded)
        };
        match out {
            Err(RuntimeError::Cancelled { done, steps }) => Err(guarded.stopped(done, steps)),
            out => out,
        }
    }

    /// Test hook (feature `test-hooks`): fills the KV caches the pipeline keeps for reuse with
    /// `value`, as a request that left NaN or Inf in them would.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn poison_pooled_caches(&self, value: f32) {
        self.generator.poison_pooled(value)
    }

    /// Teacher-forced scoring: runs the prefill and the decode loop of [`Self::generate_tokens`]
    /// but feeds `tokens` (one row per label, `tokens_per_image` each) instead of sampling, and
    /// reports the logits of every step to `observer.on_logits(step, row, logits)` exactly as
    /// `generate_tokens` does (CFG-combined when guidance is on for the step). Step `s`'s logits
    /// are the ones token `s` would be sampled from. The request is validated in full (its
    /// sampling options are unused here); `on_token` reports progress as during generation.
    pub fn score_tokens(
        &self,
        req: &GenerateRequest,
        tokens: &[Vec<u32>],
        observer: &mut dyn Observer,
    ) -> Result<(), RuntimeError> {
        self.validate(req)?;
        let per = self.manifest.generation.tokens_per_image;
        let vocab = self.manifest.vocab_size();
        if tokens.len() != req.labels.len() {
            return Err(RuntimeError::InvalidRequest {
                field: "tokens",
                value: format!("{} rows", tokens.len()),
                reason: format!("expected one row per label ({})", req.labels.len()),
            });
        }
        check_token_rows(tokens, per, vocab, "vocab size")?;
        self.generator
            .run_tokens(&self.manifest, req, NextToken::Feed(tokens), observer)
            .map(|_| ())
    }

    /// Decodes token rows (each `tokens_per_image` long) to images.
    pub fn decode_images(&self, tokens: &[Vec<u32>]) -> Result<Images, RuntimeError> {
        self.decode_images_observed(tokens, &mut |_: usize, _: usize| {})
    }

    /// [`Self::decode_images`], reporting calibration probes to `observer`.
    pub fn decode_images_observed(
        &self,
        tokens: &[Vec<u32>],
        observer: &mut dyn Observer,
    ) -> Result<Images, RuntimeError> {
        let per = self.manifest.generation.tokens_per_image;
        let codebook = self.manifest.vq.codebook_size;
        if tokens.len() > self.max_labels {
            return Err(RuntimeError::TooManyLabels {
                got: tokens.len(),
                max: self.max_labels,
            });
        }
        check_token_rows(tokens, per, codebook, "codebook size")?;
        self.generator.decode(&self.manifest, tokens, observer)
    }
}

/// An observer with a deadline: stops once it has passed, and remembers that it did.
struct Guarded<'a> {
    inner: &'a mut dyn Observer,
    deadline: Option<Instant>,
    expired: bool,
}

impl Guarded<'_> {
    /// The error of a stop after `done` of `steps` tokens: the deadline's when it had passed.
    fn stopped(&self, done: usize, steps: usize) -> RuntimeError {
        if self.expired {
            RuntimeError::DeadlineExceeded { done, steps }
        } else {
            RuntimeError::Cancelled { done, steps }
        }
    }
}

impl Observer for Guarded<'_> {
    fn wants_logits(&self) -> bool {
        self.inner.wants_logits()
    }
    fn on_token(&mut self, done: usize, total: usize) {
        self.inner.on_token(done, total)
    }
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        self.inner.on_logits(step, row, logits)
    }
    fn on_probe(&mut self, name: &str, data: &[f32]) {
        self.inner.on_probe(name, data)
    }
    fn should_stop(&mut self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.expired = true;
            return true;
        }
        self.inner.should_stop()
    }
}

/// Every row holds `per` tokens, each below `limit` (named `limit_name` in the error).
fn check_token_rows(
    tokens: &[Vec<u32>],
    per: usize,
    limit: usize,
    limit_name: &str,
) -> Result<(), RuntimeError> {
    for (i, row) in tokens.iter().enumerate() {
        if row.len() != per {
            return Err(RuntimeError::InvalidRequest {
                field: "tokens",
                value: format!("row {i} has {} tokens", row.len()),
                reason: format!("expected tokens_per_image = {per}"),
            });
        }
        if let Some((j, &t)) = row.iter().enumerate().find(|(_, &t)| t as usize >= limit) {
            return Err(RuntimeError::InvalidRequest {
                field: "tokens",
                value: format!("{t} (row {i}, position {j})"),
                reason: format!("must be < {limit_name} {limit}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn pipeline_is_send_and_sync() {
        assert_send_sync::<super::Pipeline>();
    }
}
