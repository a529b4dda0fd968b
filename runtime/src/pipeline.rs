//! The generation pipeline: prefill, the KV-cached decode loop with CFG and sampling, VQ decode.
//!
//! Mirrors the official `generate()`: the batch is `[cond; uncond]` when cfg_scale > 1; the
//! prefill feeds the class ids at position 0 and samples the first token from its logits; decode
//! step i feeds the last token to both halves at position `1 + i` (`cls_token_num + i`).
//! [`Pipeline::score_tokens`] runs the same loop teacher-forced: it feeds given tokens instead of
//! sampling and reports every step's logits (what `llamagen compare` measures).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use llamagen_bundle::{load_manifest, Manifest};

use crate::backend::{self, Backend, BackendKind, BackendOptions, FusedJob, StepState};
use crate::error::RuntimeError;
use crate::request::GenerateRequest;
use crate::rng::Philox;
use crate::sampler::{cfg_combine, sample_token, SamplerScratch};

/// How to load a bundle.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub backend: BackendKind,
    /// Check the sha256 of every bundle file on load (default on).
    pub verify_hashes: bool,
    pub threads: Option<usize>,
    /// GPU backends: capture the decode step into a CUDA graph (default on).
    pub cuda_graph: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            backend: BackendKind::Cpu,
            verify_hashes: true,
            threads: None,
            cuda_graph: true,
        }
    }
}

/// A loaded bundle, ready to generate. `Send + Sync`: share it across a service's threads.
pub struct Pipeline {
    dir: PathBuf,
    manifest: Manifest,
    backend: Box<dyn Backend>,
    /// Caches of finished requests, reused by the next one of the same batch size: a service
    /// then allocates its caches once instead of growing the heap request after request.
    /// Stale slots need no clearing: slots >= position are masked and hold finite values.
    caches: Mutex<Vec<(usize, StepState)>>,
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
    /// Wall time of every decode step (graph + cache write + CFG + sampling); empty when the
    /// backend ran the loop on the device without per-step synchronisation.
    pub decode_step_ms: Vec<f64>,
    /// All decode steps (everything after the prefill).
    pub decode_ms: f64,
    /// Prefill + all decode steps + sampling.
    pub gpt_ms: f64,
}

/// How the decode loop picks each row's next token.
enum NextToken<'a> {
    /// Sample from the (CFG-combined) logits with the request's options and seed.
    Sample {
        rng: Philox,
        scratch: SamplerScratch,
    },
    /// Teacher forcing: feed the given tokens, `[labels.len()][tokens_per_image]`.
    Feed(&'a [Vec<u32>]),
}

/// Per-request state of one pass of the decode loop.
struct Sampling<'a> {
    req: &'a GenerateRequest,
    next: NextToken<'a>,
    observer: &'a mut dyn Observer,
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
        let backend = backend::create(
            opts.backend,
            dir,
            &manifest,
            &BackendOptions {
                threads: opts.threads,
                cuda_graph: opts.cuda_graph,
                ..BackendOptions::default()
            },
        )?;
        tracing::info!(
            gpt = %manifest.gpt.name,
            vq = %manifest.vq.name,
            precision = %manifest.precision,
            backend = backend.name(),
            "bundle loaded"
        );
        Ok(Pipeline {
            dir: dir.to_path_buf(),
            manifest,
            backend,
            caches: Mutex::new(Vec::new()),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Generates the image tokens, reporting progress (and logits) to `observer`.
    pub fn generate_tokens(
        &self,
        req: &GenerateRequest,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        req.validate(&self.manifest)?;
        if !observer.wants_logits() {
            if let Some(out) = self.generate_fused(req) {
                let out = out?;
                let steps = self.manifest.generation.tokens_per_image;
                observer.on_token(steps, steps);
                return Ok(out);
            }
        }
        let next = NextToken::Sample {
            rng: Philox::new(req.seed),
            scratch: SamplerScratch::new(self.manifest.gpt.vocab_size),
        };
        self.run_tokens(req, next, observer)
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
        req.validate(&self.manifest)?;
        let per = self.manifest.generation.tokens_per_image;
        let vocab = self.manifest.gpt.vocab_size;
        if tokens.len() != req.labels.len() {
            return Err(RuntimeError::InvalidRequest {
                field: "tokens",
                value: format!("{} rows", tokens.len()),
                reason: format!("expected one row per label ({})", req.labels.len()),
            });
        }
        check_token_rows(tokens, per, vocab, "vocab size")?;
        self.run_tokens(req, NextToken::Feed(tokens), observer)
            .map(|_| ())
    }

    /// The whole loop on the backend, when it offers one.
    fn generate_fused(&self, req: &GenerateRequest) -> Option<Result<TokenOutput, RuntimeError>> {
        let gen = &self.manifest.generation;
        let n = req.labels.len();
        let cfg = req.uses_cfg();
        let mut prefill_ids: Vec<i64> = req
            .labels
            .iter()
            .map(|&l| (gen.class_token_offset + l) as i64)
            .collect();
        if cfg {
            prefill_ids.extend(std::iter::repeat_n(
                (gen.class_token_offset + gen.null_class) as i64,
                n,
            ));
        }
        let job = FusedJob {
            prefill_ids,
            n,
            cfg,
            cfg_scale: req.cfg_scale,
            cfg_interval: req.cfg_interval,
            sampling: req.sampling.clone(),
            seed: req.seed,
        };
        let _span = tracing::debug_span!("generate_fused", n, cfg).entered();
        let out = self.backend.generate_fused(&job)?;
        Some(out.map(|f| TokenOutput {
            tokens: f.tokens,
            prefill_ms: f.prefill_ms,
            decode_step_ms: Vec::new(),
            decode_ms: f.gpt_ms - f.prefill_ms,
            gpt_ms: f.gpt_ms,
        }))
    }

    /// The prefill and decode loop shared by generation and scoring; `next` picks the tokens.
    /// The request (and fed tokens) must already be validated.
    fn run_tokens(
        &self,
        req: &GenerateRequest,
        next: NextToken<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        let g = &self.manifest.gpt;
        let gen = &self.manifest.generation;
        let n = req.labels.len();
        let cfg = req.uses_cfg();
        let rows = if cfg { 2 * n } else { n };
        let _span = tracing::debug_span!("generate", rows, steps = gen.tokens_per_image).entered();
        let steps = gen.tokens_per_image;
        let vocab = g.vocab_size;
        let mut cache = self.take_cache(rows)?;
        let mut logits = Vec::with_capacity(rows * vocab);
        let mut tokens = vec![Vec::with_capacity(steps); n];
        let mut ids: Vec<i64> = Vec::with_capacity(rows);

        let start = Instant::now();
        // Prefill: class ids [cond; null] at position 0.
        ids.extend(
            req.labels
                .iter()
                .map(|&l| (gen.class_token_offset + l) as i64),
        );
        if cfg {
            ids.extend(std::iter::repeat_n(
                (gen.class_token_offset + gen.null_class) as i64,
                n,
            ));
        }
        self.backend
            .gpt_step(&ids, 1, 0, &mut cache, &mut logits, &mut |name, data| {
                observer.on_probe(name, data)
            })?;
        let mut sampling = Sampling {
            req,
            next,
            observer,
        };
        self.sample_rows(&mut sampling, &mut logits, true, 0, &mut tokens);
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
        sampling.observer.on_token(1, steps);

        let mut decode_step_ms = Vec::with_capacity(steps.saturating_sub(1));
        for i in 0..steps.saturating_sub(1) {
            let t0 = Instant::now();
            ids.clear();
            ids.extend(tokens.iter().map(|row| row[i] as i64));
            if cfg {
                ids.extend_from_within(..n);
            }
            let position = g.cls_token_num + i;
            let observer = &mut *sampling.observer;
            self.backend.gpt_step(
                &ids,
                1,
                position,
                &mut cache,
                &mut logits,
                &mut |name, data| observer.on_probe(name, data),
            )?;
            let guided = !(req.cfg_interval > -1.0 && i as f32 > req.cfg_interval);
            self.sample_rows(&mut sampling, &mut logits, guided, i + 1, &mut tokens);
            decode_step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            sampling.observer.on_token(i + 2, steps);
        }
        self.return_cache(rows, cache);
        Ok(TokenOutput {
            tokens,
            prefill_ms,
            decode_ms: decode_step_ms.iter().sum(),
            decode_step_ms,
            gpt_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn take_cache(&self, rows: usize) -> Result<StepState, RuntimeError> {
        let mut pool = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|(r, _)| *r == rows) {
            Some(i) => Ok(pool.swap_remove(i).1),
            None => {
                drop(pool);
                self.backend.new_state(rows)
            }
        }
    }

    /// Keeps at most a few caches, so one odd batch size does not pin memory for good.
    fn return_cache(&self, rows: usize, cache: StepState) {
        const POOL: usize = 2;
        let mut pool = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOL {
            pool.remove(0);
        }
        pool.push((rows, cache));
    }

    /// CFG-combines (when the batch has uncond rows and `guided`) and picks one token per request
    /// row: sampled, or the fed token at `step`.
    fn sample_rows(
        &self,
        s: &mut Sampling<'_>,
        logits: &mut [f32],
        guided: bool,
        step: usize,
        tokens: &mut [Vec<u32>],
    ) {
        let vocab = self.manifest.gpt.vocab_size;
        let n = s.req.labels.len();
        let (cond, uncond) = logits.split_at_mut(n * vocab);
        for (r, row_tokens) in tokens.iter_mut().enumerate() {
            let row = &mut cond[r * vocab..(r + 1) * vocab];
            if s.req.uses_cfg() && guided {
                cfg_combine(row, &uncond[r * vocab..(r + 1) * vocab], s.req.cfg_scale);
            }
            s.observer.on_logits(step, r, row);
            let token = match &mut s.next {
                NextToken::Sample { rng, scratch } => {
                    let u = rng.uniform(r as u64, step as u64);
                    sample_token(row, &s.req.sampling, u, scratch)
                }
                NextToken::Feed(fed) => fed[r][step],
            };
            row_tokens.push(token);
        }
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
        check_token_rows(tokens, per, codebook, "codebook size")?;
        let flat: Vec<i64> = tokens.iter().flatten().map(|&t| t as i64).collect();
        let t0 = Instant::now();
        let data = self
            .backend
            .vq_decode(&flat, tokens.len(), &mut |name, data| {
                observer.on_probe(name, data)
            })?;
        let size = self.manifest.vq.image_size;
        let per_image = 3 * size * size;
        if data.len() != per_image * tokens.len() {
            return Err(RuntimeError::OutputShape {
                graph: llamagen_bundle::GraphRole::VqDecoder,
                what: "image".into(),
                expected: vec![tokens.len(), 3, size, size],
                got: vec![data.len()],
            });
        }
        Ok(Images {
            size,
            pixels: data.chunks(per_image).map(<[f32]>::to_vec).collect(),
            vq_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
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
