//! VAR on the CUDA backend: the [`Generator`] of a VAR bundle over `llamagen_cuda::VarEngine`,
//! on a GPU (feature `cuda`) or the kernel emulator (feature `cuda-emu`). The fused loop runs
//! every scale on the device (one captured graph per scale, replayed with no host
//! synchronisation); observers and teacher forcing take the per-scale path (device logits, the
//! CPU sampler with VAR's rule or the fed tokens), as the CPU loop in `crate::var` does.

use std::path::Path;
use std::time::Instant;

use llamagen_bundle::Manifest;
use llamagen_cuda::device::Device;
use llamagen_cuda::ops::sampler::SampleParams;
use llamagen_cuda::VarEngine;

use super::cuda::{device_row_keys, refuse_calibration, vq_conv};
use super::BackendKind;
use super::CudaOptions;
use crate::error::RuntimeError;
use crate::pipeline::{Images, Observer, TokenOutput};
use crate::request::{GenerateRequest, RowSeed};
use crate::runner::{Generator, NextToken};
use crate::var::{end_of_scale, guided, pick_token, token_output, var_sampling};

pub(crate) struct VarCuda<D: Device> {
    kind: BackendKind,
    engine: VarEngine<D>,
}

impl<D: Device> VarCuda<D> {
    pub(crate) fn load(
        kind: BackendKind,
        device: D,
        dir: &Path,
        m: &Manifest,
        o: &CudaOptions,
    ) -> Result<Self, RuntimeError> {
        refuse_calibration(kind, dir, m)?;
        let mut engine = VarEngine::load(kind.name(), device, dir, m, o.graph)?;
        engine.set_vq_conv(vq_conv(o)?);
        Ok(VarCuda { kind, engine })
    }
}

fn labels(req: &GenerateRequest) -> Vec<i64> {
    req.labels.iter().map(|&l| l as i64).collect()
}

/// Request's guidance as the engine takes it: 0 runs no unconditional rows.
fn cfg_scale(req: &GenerateRequest) -> f32 {
    if guided(req) {
        req.cfg_scale
    } else {
        0.0
    }
}

impl<D: Device> Generator for VarCuda<D> {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn run_tokens(
        &self,
        _m: &Manifest,
        req: &GenerateRequest,
        mut next: NextToken<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TokenOutput, RuntimeError> {
        let c = self.engine.config().clone();
        let n = req.labels.len();
        let (total, vocab) = (c.tokens, c.vocab_size);
        let s = self.engine.new_session(&labels(req), cfg_scale(req))?;
        let mut tokens = vec![vec![0u32; total]; n];
        let mut logits = Vec::new();
        let opts = var_sampling(&req.sampling);
        let start = Instant::now();
        let mut scale_ms = Vec::with_capacity(c.scales());
        for si in 0..c.scales() {
            let t0 = Instant::now();
            let range = c.scale_range(si);
            self.engine.scale_logits(&s, si, &mut logits)?;
            for (r, row_tokens) in tokens.iter_mut().enumerate() {
                for (j, pos) in range.clone().enumerate() {
                    let at = (r * range.len() + j) * vocab;
                    let row = &mut logits[at..at + vocab];
                    observer.on_logits(pos, r, row);
                    row_tokens[pos] = pick_token(&mut next, row, &opts, r, pos);
                }
            }
            self.engine.set_scale_tokens(&s, si, &tokens)?;
            scale_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            end_of_scale(observer, range.end, total)?;
        }
        Ok(token_output(tokens, &scale_ms, start))
    }

    fn has_fused_loop(&self) -> bool {
        true
    }

    fn generate_fused(
        &self,
        _m: &Manifest,
        req: &GenerateRequest,
        row_seeds: &[RowSeed],
    ) -> Result<TokenOutput, RuntimeError> {
        // Row r draws from row_seeds[r] (the request's own seed and stream r when alone), as
        // the CPU loop does.
        let keys = device_row_keys(row_seeds)?;
        let c = self.engine.config();
        let n = req.labels.len();
        let params = SampleParams::new(
            &var_sampling(&req.sampling),
            0.0,
            -1.0,
            req.seed,
            n,
            false,
            c.tokens,
        );
        let g = self
            .engine
            .generate(&labels(req), cfg_scale(req), &params, &keys)?;
        Ok(TokenOutput {
            tokens: g.tokens,
            prefill_ms: g.prefill_ms,
            decode_step_ms: Vec::new(),
            decode_ms: g.gpt_ms - g.prefill_ms,
            gpt_ms: g.gpt_ms,
        })
    }

    fn decode(
        &self,
        m: &Manifest,
        tokens: &[Vec<u32>],
        _observer: &mut dyn Observer,
    ) -> Result<Images, RuntimeError> {
        let t0 = Instant::now();
        let data = self.engine.decode(tokens)?;
        let size = m.vq.image_size;
        let per_image = 3 * size * size;
        Ok(Images {
            size,
            pixels: data.chunks(per_image).map(<[f32]>::to_vec).collect(),
            vq_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }
}
