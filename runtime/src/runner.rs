//! The c2i LlamaGen generation loop over any [`Backend`]: the prefill, the KV-cached decode loop
//! with CFG and sampling (or teacher forcing), the fused loop of backends that have one, and the
//! VQ decode. Generic over the backend, so each backend's step state keeps its own type; the
//! [`Generator`] trait is what `Pipeline` holds.
//!
//! Mirrors the official `generate()`: the batch is `[cond; uncond]` when cfg_scale > 1; the
//! prefill feeds the class ids at position 0 and samples the first token from its logits; decode
//! step i feeds the last token to both halves at position `1 + i` (`cls_token_num + i`).

use std::sync::Mutex;
use std::time::Instant;

use llamagen_bundle::{GraphRole, Manifest};

use crate::backend::{Backend, BackendKind, CpuKernels, FusedJob, StepInput};
use crate::error::RuntimeError;
use crate::pipeline::{Images, Observer, TokenOutput};
use crate::request::{GenerateRequest, RowSeed};
use crate::rng::Philox;
use crate::sampler::{cfg_combine, sample_token, SamplerScratch};

/// How the decode loop picks each row's next token.
pub(crate) enum NextToken<'a> {
    /// Sample from the (CFG-combined) logits with the request's options; row r draws from
    /// `rows[r]` = (Philox keyed by its seed, its stream).
    Sample {
        rows: Vec<(Philox, u64)>,
        scratch: SamplerScratch,
    },
    /// Teacher forcing: feed the given tokens, `[labels.len()][tokens_per_image]`.
    Feed(&'a [Vec<u32>]),
}

impl NextToken<'_> {
    /// Sampling with one random stream per request row over a vocabulary of `vocab`.
    pub(crate) fn sample(seeds: &[RowSeed], vocab: usize) -> Self {
        NextToken::Sample {
            rows: seeds
                .iter()
                .map(|s| (Philox::new(s.seed), s.stream))
                .collect(),
            scratch: SamplerScratch::new(vocab),
        }
    }
}

/// Per-request state of one pass of the decode loop.
struct Sampling<'a> {
    req: &'a GenerateRequest,
    next: NextToken<'a>,
    observer: &'a mut dyn Observer,
}

/// A bundle's generation on one backend, with the backend's type erased (what `Pipeline`
/// holds). Requests and tokens are validated by the caller.
pub(crate) trait Generator: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The prefill and decode loop shared by generation and scoring; `next` picks the tokens.
    fn run_tokens(
        &self,
        m: &Manifest,
        req: &GenerateRequest,
        next: NextToken<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError>;
    /// Whether the backend runs the whole loop itself ([`Self::generate_fused`]).
    fn has_fused_loop(&self) -> bool;
    /// The whole loop on the backend; an error on backends without one.
    fn generate_fused(
        &self,
        m: &Manifest,
        req: &GenerateRequest,
        row_seeds: &[RowSeed],
    ) -> Result<TokenOutput, RuntimeError>;
    /// VQ decode of `tokens` `[batch, tokens_per_image]` to images.
    fn decode(
        &self,
        m: &Manifest,
        tokens: &[Vec<u32>],
        observer: &mut dyn Observer,
    ) -> Result<Images, RuntimeError>;
    /// Test hook: every pooled state's caches filled with `value` (default: nothing pooled).
    #[cfg(feature = "test-hooks")]
    fn poison_pooled(&self, _value: f32) {}
    /// Device backends: what the GPT weights occupy on the device.
    fn device_weights(&self) -> Option<crate::backend::DeviceWeights> {
        None
    }
    /// Device backends: the decode step's attention (`fused`, `separate`).
    fn device_attention(&self) -> Option<&'static str> {
        None
    }
    /// CPU: which nodes run on our kernels.
    fn cpu_kernels(&self) -> CpuKernels {
        CpuKernels::default()
    }
}

/// [`Generator`] on backend `B`, with a pool of its step states.
pub(crate) struct Runner<B: Backend> {
    backend: B,
    /// States (KV caches) of finished requests, reused by the next one of the same batch size:
    /// a service then allocates its caches once instead of growing the heap request after
    /// request. Each is reset ([`Backend::reset_state`]) when it is taken: a masked slot still
    /// enters the attention with probability 0, and 0 times a stale NaN or Inf is NaN.
    states: Mutex<Vec<(usize, B::State)>>,
}

impl<B: Backend> Runner<B> {
    pub(crate) fn new(backend: B) -> Self {
        Runner {
            backend,
            states: Mutex::new(Vec::new()),
        }
    }

    fn take_state(&self, rows: usize) -> Result<B::State, RuntimeError> {
        let mut pool = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|(r, _)| *r == rows) {
            Some(i) => {
                let mut state = pool.swap_remove(i).1;
                drop(pool);
                self.backend.reset_state(&mut state)?;
                Ok(state)
            }
            None => {
                drop(pool);
                self.backend.new_state(rows)
            }
        }
    }

    /// Keeps at most a few states, so one odd batch size does not pin memory for good.
    fn return_state(&self, rows: usize, state: B::State) {
        const POOL: usize = 2;
        let mut pool = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOL {
            pool.remove(0);
        }
        pool.push((rows, state));
    }
}

/// The prefill's ids: the class ids of the labels, then with CFG the null class once per label.
fn prefill_ids(m: &Manifest, req: &GenerateRequest) -> Vec<i64> {
    let gen = &m.generation;
    let n = req.labels.len();
    let mut ids: Vec<i64> = req
        .labels
        .iter()
        .map(|&l| (gen.class_token_offset + l) as i64)
        .collect();
    if req.uses_cfg() {
        ids.extend(std::iter::repeat_n(
            (gen.class_token_offset + gen.null_class) as i64,
            n,
        ));
    }
    ids
}

impl<B: Backend> Generator for Runner<B> {
    fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    fn device_weights(&self) -> Option<crate::backend::DeviceWeights> {
        self.backend.device_weights()
    }

    fn device_attention(&self) -> Option<&'static str> {
        self.backend.device_attention()
    }

    fn cpu_kernels(&self) -> CpuKernels {
        self.backend.cpu_kernels()
    }

    #[cfg(feature = "test-hooks")]
    fn poison_pooled(&self, value: f32) {
        let mut pool = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for (_, state) in pool.iter_mut() {
            self.backend.poison_state(state, value);
        }
    }

    fn has_fused_loop(&self) -> bool {
        self.backend.fused().is_some()
    }

    fn generate_fused(
        &self,
        m: &Manifest,
        req: &GenerateRequest,
        row_seeds: &[RowSeed],
    ) -> Result<TokenOutput, RuntimeError> {
        let Some(fused) = self.backend.fused() else {
            return Err(RuntimeError::BackendUnavailable {
                name: self.kind().name().into(),
                reason: "it has no fused generation loop".into(),
            });
        };
        let (n, cfg) = (req.labels.len(), req.uses_cfg());
        let job = FusedJob {
            prefill_ids: prefill_ids(m, req),
            n,
            cfg,
            cfg_scale: req.cfg_scale,
            cfg_interval: req.cfg_interval,
            sampling: req.sampling.clone(),
            seed: req.seed,
            row_seeds: row_seeds.to_vec(),
        };
        let _span = tracing::debug_span!("generate_fused", n, cfg).entered();
        let f = fused.generate(&job)?;
        Ok(TokenOutput {
            tokens: f.tokens,
            prefill_ms: f.prefill_ms,
            decode_step_ms: f.decode_step_ms,
            decode_ms: f.gpt_ms - f.prefill_ms,
            gpt_ms: f.gpt_ms,
        })
    }

    fn run_tokens(
        &self,
        m: &Manifest,
        req: &GenerateRequest,
        next: NextToken<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        let g = m.gpt()?;
        let gen = &m.generation;
        let n = req.labels.len();
        let cfg = req.uses_cfg();
        let rows = if cfg { 2 * n } else { n };
        let _span = tracing::debug_span!("generate", rows, steps = gen.tokens_per_image).entered();
        let steps = gen.tokens_per_image;
        let vocab = g.vocab_size;
        let mut state = self.take_state(rows)?;
        let mut logits = Vec::with_capacity(rows * vocab);
        let mut tokens = vec![Vec::with_capacity(steps); n];
        let start = Instant::now();
        // Prefill: class ids [cond; null] at position 0.
        let mut ids = prefill_ids(m, req);
        let input = StepInput {
            ids: &ids,
            position: 0,
        };
        self.backend
            .gpt_step(input, &mut state, &mut logits, &mut |name, data| {
                observer.on_probe(name, data)
            })?;
        let mut sampling = Sampling {
            req,
            next,
            observer,
        };
        sample_rows(vocab, &mut sampling, &mut logits, true, 0, &mut tokens);
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
        sampling.observer.on_token(1, steps);
        if 1 < steps && sampling.observer.should_stop() {
            self.return_state(rows, state);
            return Err(RuntimeError::Cancelled { done: 1, steps });
        }

        let mut decode_step_ms = Vec::with_capacity(steps.saturating_sub(1));
        for i in 0..steps.saturating_sub(1) {
            let t0 = Instant::now();
            ids.clear();
            ids.extend(tokens.iter().map(|row| row[i] as i64));
            if cfg {
                ids.extend_from_within(..n);
            }
            let input = StepInput {
                ids: &ids,
                position: g.cls_token_num + i,
            };
            let observer = &mut *sampling.observer;
            self.backend
                .gpt_step(input, &mut state, &mut logits, &mut |name, data| {
                    observer.on_probe(name, data)
                })?;
            let guided = !(req.cfg_interval > -1.0 && i as f32 > req.cfg_interval);
            sample_rows(
                vocab,
                &mut sampling,
                &mut logits,
                guided,
                i + 1,
                &mut tokens,
            );
            decode_step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            sampling.observer.on_token(i + 2, steps);
            if i + 2 < steps && sampling.observer.should_stop() {
                self.return_state(rows, state);
                return Err(RuntimeError::Cancelled { done: i + 2, steps });
            }
        }
        self.return_state(rows, state);
        Ok(TokenOutput {
            tokens,
            prefill_ms,
            decode_ms: decode_step_ms.iter().sum(),
            decode_step_ms,
            gpt_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn decode(
        &self,
        m: &Manifest,
        tokens: &[Vec<u32>],
        observer: &mut dyn Observer,
    ) -> Result<Images, RuntimeError> {
        let flat: Vec<i64> = tokens.iter().flatten().map(|&t| t as i64).collect();
        let t0 = Instant::now();
        let data = self
            .backend
            .vq_decode(&flat, tokens.len(), &mut |name, data| {
                observer.on_probe(name, data)
            })?;
        let size = m.vq.image_size;
        let per_image = 3 * size * size;
        if data.len() != per_image * tokens.len() {
            return Err(RuntimeError::OutputShape {
                graph: GraphRole::VqDecoder,
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

/// CFG-combines (when the batch has uncond rows and `guided`) and picks one token per request
/// row: sampled, or the fed token at `step`.
fn sample_rows(
    vocab: usize,
    s: &mut Sampling<'_>,
    logits: &mut [f32],
    guided: bool,
    step: usize,
    tokens: &mut [Vec<u32>],
) {
    let n = s.req.labels.len();
    let (cond, uncond) = logits.split_at_mut(n * vocab);
    for (r, row_tokens) in tokens.iter_mut().enumerate() {
        let row = &mut cond[r * vocab..(r + 1) * vocab];
        if s.req.uses_cfg() && guided {
            cfg_combine(row, &uncond[r * vocab..(r + 1) * vocab], s.req.cfg_scale);
        }
        s.observer.on_logits(step, r, row);
        let token = match &mut s.next {
            NextToken::Sample { rows, scratch } => {
                let (rng, stream) = rows[r];
                let u = rng.uniform(stream, step as u64);
                sample_token(row, &s.req.sampling, u, scratch)
            }
            NextToken::Feed(fed) => fed[r][step],
        };
        row_tokens.push(token);
    }
}
