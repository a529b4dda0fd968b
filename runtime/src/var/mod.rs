//! The VAR generation loop (official `VAR.autoregressive_infer_cfg`) over its three graphs.
//!
//! Per scale s of S: the embed graph turns the tokens of scales `< s` into the scale's inputs
//! (block s of `inputs_embeds`); the step graph runs the block at cache slot `begin(s)` and its
//! keys/values are written there; the logits are CFG-combined as
//! `(1 + t) cond - t uncond` with `t = cfg * s / (S - 1)` (VAR always guides; cfg 0 drops the
//! unconditional rows); each token is sampled. After the last scale the embed graph gives
//! `f_hat` and the VQVAE decoder the images (`Pipeline::decode_images`).
//!
//! Sampling: top-k as LlamaGen's (ties with the k-th kept), then VAR's top-p (ascending
//! cumulative probability `<= 1 - top_p` removed, the most likely token always kept; off for
//! top_p <= 0 or >= 1), through the shared fixed-point sampler with [`TopPRule::Var`]: VAR's
//! rule keeps the sorted prefix whose preceding mass is `< top_p` where LlamaGen's keeps
//! `<= top_p` (they differ only when a cumulative weight equals the threshold exactly). The draw uses the Philox stream
//! (the row's stream, counter = token index), not torch's generator, so sampled tokens are ours; greedy
//! (top-k 1) tokens are the official ones.

mod sessions;

use std::path::Path;
use std::time::Instant;

use llamagen_bundle::{Manifest, VarConfig};

use crate::backend::{BackendKind, CpuKernels, CpuOptions};
use crate::error::RuntimeError;
use crate::pipeline::{Images, Observer, TokenOutput};
use crate::request::GenerateRequest;
use crate::runner::{Generator, NextToken};
use crate::sampler::{sample_token_with, SamplingOptions, TopPRule};

use sessions::VarSessions;

/// A VAR bundle on ONNX Runtime's CPU provider.
pub(crate) struct VarOrtCpu {
    config: VarConfig,
    sessions: VarSessions,
}

impl VarOrtCpu {
    pub(crate) fn load(dir: &Path, m: &Manifest, opts: &CpuOptions) -> Result<Self, RuntimeError> {
        let config = m.var()?.clone();
        let sessions = VarSessions::load(dir, m, &config, opts)?;
        Ok(VarOrtCpu { config, sessions })
    }
}

/// VAR's sampling options from the request's: top-p off outside (0, 1).
pub(crate) fn var_sampling(s: &SamplingOptions) -> SamplingOptions {
    let mut o = s.clone();
    if !(o.top_p > 0.0 && o.top_p < 1.0) {
        o.top_p = 1.0;
    }
    o
}

/// The token of request row `r` at `pos`: sampled from `row` with VAR's rules, or the fed one.
pub(crate) fn pick_token(
    next: &mut NextToken<'_>,
    row: &[f32],
    opts: &SamplingOptions,
    r: usize,
    pos: usize,
) -> u32 {
    match next {
        NextToken::Sample { rows, scratch } => {
            let (rng, stream) = &rows[r];
            let u = rng.uniform(*stream, pos as u64);
            sample_token_with(row, opts, TopPRule::Var, u, scratch)
        }
        NextToken::Feed(fed) => fed[r][pos],
    }
}

/// Progress after a scale; a stop (or a passed deadline) ends the generation at the next scale
/// boundary.
pub(crate) fn end_of_scale(
    observer: &mut dyn Observer,
    end: usize,
    total: usize,
) -> Result<(), RuntimeError> {
    observer.on_token(end, total);
    if end < total && observer.should_stop() {
        return Err(RuntimeError::Cancelled {
            done: end,
            steps: total,
        });
    }
    Ok(())
}

/// The tokens and timings of a scale-by-scale run: scale 0 as the prefill, the rest as steps.
pub(crate) fn token_output(tokens: Vec<Vec<u32>>, scale_ms: &[f64], start: Instant) -> TokenOutput {
    let decode_step_ms = scale_ms.get(1..).unwrap_or_default().to_vec();
    TokenOutput {
        tokens,
        prefill_ms: scale_ms.first().copied().unwrap_or(0.0),
        decode_ms: decode_step_ms.iter().sum(),
        decode_step_ms,
        gpt_ms: start.elapsed().as_secs_f64() * 1e3,
    }
}

/// Whether the request runs the unconditional rows (VAR guides at every cfg but 0).
pub(crate) fn guided(req: &GenerateRequest) -> bool {
    req.cfg_scale != 0.0
}

impl Generator for VarOrtCpu {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn run_tokens(
        &self,
        _m: &Manifest,
        req: &GenerateRequest,
        mut next: NextToken<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        let c = &self.config;
        let n = req.labels.len();
        let cfg = guided(req);
        let rows = if cfg { 2 * n } else { n };
        let (total, vocab) = (c.tokens, c.vocab_size);
        let _span = tracing::debug_span!("var.generate", rows, scales = c.scales()).entered();
        let mut labels: Vec<i64> = req.labels.iter().map(|&l| l as i64).collect();
        if cfg {
            labels.extend(std::iter::repeat_n(c.num_classes as i64, n));
        }
        // The step reads only the slots before the scale's position (the graph slices the cache
        // there, our fused attention stops there).
        let mut cache = self.sessions.new_cache(c, rows)?;
        let mut token_ids = vec![0i64; rows * total];
        let mut tokens = vec![vec![0u32; total]; n];
        let mut logits = Vec::new();
        let opts = var_sampling(&req.sampling);
        let start = Instant::now();
        let adaln = self.sessions.cond(c, &labels)?;
        let mut scale_ms = Vec::with_capacity(c.scales());
        for si in 0..c.scales() {
            let t0 = Instant::now();
            let range = c.scale_range(si);
            let x = self
                .sessions
                .embed(c, &token_ids, &labels, si, range.clone())?
                .inputs;
            self.sessions
                .step(c, &x, &adaln, range.start, &mut cache, &mut logits)?;
            let t = c.guidance(req.cfg_scale, si);
            let per_row = range.len() * vocab;
            let (cond, uncond) = logits.split_at_mut(n * per_row);
            for r in 0..n {
                for (j, pos) in range.clone().enumerate() {
                    let at = r * per_row + j * vocab;
                    let row = &mut cond[at..at + vocab];
                    if cfg {
                        let u = &uncond[at..at + vocab];
                        row.iter_mut()
                            .zip(u)
                            .for_each(|(x, &u)| *x = (1.0 + t) * *x - t * u);
                    }
                    observer.on_logits(pos, r, row);
                    let token = pick_token(&mut next, row, &opts, r, pos);
                    tokens[r][pos] = token;
                    token_ids[r * total + pos] = token as i64;
                    if cfg {
                        token_ids[(n + r) * total + pos] = token as i64;
                    }
                }
            }
            scale_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            end_of_scale(observer, range.end, total)?;
        }
        Ok(token_output(tokens, &scale_ms, start))
    }

    fn cpu_kernels(&self) -> CpuKernels {
        self.sessions.kernels
    }

    fn has_fused_loop(&self) -> bool {
        false
    }

    fn generate_fused(
        &self,
        _m: &Manifest,
        _req: &GenerateRequest,
        _row_seeds: &[crate::request::RowSeed],
    ) -> Result<TokenOutput, RuntimeError> {
        Err(RuntimeError::BackendUnavailable {
            name: "cpu".into(),
            reason: "the CPU backend runs VAR's loop scale by scale".into(),
        })
    }

    fn decode(
        &self,
        m: &Manifest,
        tokens: &[Vec<u32>],
        observer: &mut dyn Observer,
    ) -> Result<Images, RuntimeError> {
        let c = &self.config;
        let t0 = Instant::now();
        let rows = tokens.len();
        let ids: Vec<i64> = tokens.iter().flatten().map(|&t| t as i64).collect();
        // Any valid label: block 0 of the inputs is not used here.
        let labels = vec![0i64; rows];
        let embedded = self.sessions.embed(c, &ids, &labels, c.scales(), 0..0)?;
        let size = m.vq.image_size;
        let data = self
            .sessions
            .decode(c, &embedded.f_hat, rows, size, &mut |name, data| {
                observer.on_probe(name, data)
            })?;
        let per_image = 3 * size * size;
        Ok(Images {
            size,
            pixels: data.chunks(per_image).map(<[f32]>::to_vec).collect(),
            vq_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }
}
