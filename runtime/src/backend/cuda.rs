//! The CUDA backend: [`Backend`] over `llamagen_cuda::Engine`, on a GPU (feature `cuda`) or on
//! the kernel emulator (feature `cuda-emu`). Everything device-side lives in the CUDA crate;
//! this adapter only maps the trait's calls and errors.

use std::any::Any;
use std::path::Path;

use llamagen_bundle::Manifest;
use llamagen_cuda::device::Device;
use llamagen_cuda::gpt::Session;
use llamagen_cuda::ops::sampler::SampleParams;
use llamagen_cuda::{CudaError, Engine};

use super::{Backend, FusedJob, FusedTokens, StepState};
use crate::error::RuntimeError;

impl From<CudaError> for RuntimeError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Unavailable { reason } => RuntimeError::BackendUnavailable {
                name: "cuda".into(),
                reason,
            },
            CudaError::Call { context, message } => RuntimeError::Cuda { context, message },
            CudaError::Bundle(e) => RuntimeError::Bundle(e),
            e @ CudaError::WeightShape { .. } => RuntimeError::Cuda {
                context: "loading the bundle".into(),
                message: e.to_string(),
            },
        }
    }
}

pub struct CudaBackend<D: Device>(Engine<D>);

impl<D: Device> CudaBackend<D> {
    pub fn load(
        name: &'static str,
        device: D,
        dir: &Path,
        m: &Manifest,
        use_graph: bool,
    ) -> Result<Self, RuntimeError> {
        Ok(CudaBackend(Engine::load(name, device, dir, m, use_graph)?))
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn new_state(&self, rows: usize) -> Result<StepState, RuntimeError> {
        Ok(StepState::Device(Box::new(self.0.new_session(rows)?)))
    }

    fn gpt_step(
        &self,
        ids: &[i64],
        seq: usize,
        position: usize,
        state: &mut StepState,
        logits: &mut Vec<f32>,
        _probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError> {
        let step = "the GPT step";
        let StepState::Device(state) = state else {
            return Err(RuntimeError::cuda(
                step,
                "the step state is not a device state",
            ));
        };
        let Some(s) = (state.as_mut() as &mut dyn Any).downcast_mut::<Session<D>>() else {
            return Err(RuntimeError::cuda(
                step,
                "the step state belongs to another device",
            ));
        };
        if seq != 1 {
            return Err(RuntimeError::cuda(
                step,
                "the device step takes one token per row",
            ));
        }
        Ok(self.0.step(s, ids, position, logits)?)
    }

    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        _probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError> {
        Ok(self.0.vq_decode(tokens, batch)?)
    }

    fn generate_fused(&self, job: &FusedJob) -> Option<Result<FusedTokens, RuntimeError>> {
        let per = self.0.tokens_per_image();
        let params = SampleParams::new(
            &job.sampling,
            job.cfg_scale,
            job.cfg_interval,
            job.seed,
            job.n,
            job.cfg,
            per,
        );
        Some(
            self.0
                .generate(&job.prefill_ids, &params)
                .map(|g| FusedTokens {
                    tokens: g.tokens,
                    prefill_ms: g.prefill_ms,
                    gpt_ms: g.gpt_ms,
                })
                .map_err(RuntimeError::from),
        )
    }
}

/// The CUDA crate's doctor lines as the runtime's.
pub fn checks() -> (Vec<crate::doctor::Check>, Result<(), String>) {
    let (lines, verdict) = llamagen_cuda::doctor::checks();
    let lines = lines
        .into_iter()
        .map(|c| crate::doctor::Check {
            name: c.name,
            ok: c.ok,
            detail: c.detail,
        })
        .collect();
    (lines, verdict)
}

/// Every kernel file through NVRTC (see `llamagen_cuda::doctor::compile_kernels`).
pub fn compile_kernels(archs: &[String]) -> Result<Vec<crate::doctor::KernelCheck>, RuntimeError> {
    Ok(llamagen_cuda::doctor::compile_kernels(archs)?
        .into_iter()
        .map(|k| crate::doctor::KernelCheck {
            file: k.file,
            arch: k.arch,
            ms: k.ms,
            result: k.result,
        })
        .collect())
}
