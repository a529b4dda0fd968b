//! The CUDA backend: [`Backend`] over `llamagen_cuda::Engine`, on a GPU (feature `cuda`) or on
//! the kernel emulator (feature `cuda-emu`). Everything device-side lives in the CUDA crate;
//! this adapter only maps the trait's calls and errors.

use std::path::Path;

use llamagen_bundle::names::PROBE_PREFIX;
use llamagen_bundle::Manifest;
use llamagen_cuda::device::Device;
use llamagen_cuda::gpt::{AttentionPath, Session};
use llamagen_cuda::ops::sampler::{row_key, RowKey, SampleParams};
use llamagen_cuda::ops::vq_gemm::Conv3x3;
use llamagen_cuda::{CudaError, Engine};

use super::{
    Backend, BackendKind, CudaAttention, CudaOptions, DecodeGemm, DeviceWeights, FusedJob,
    FusedLoop, FusedTokens, StepInput, VqConv,
};
use crate::error::RuntimeError;
use crate::request::RowSeed;

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

pub struct CudaBackend<D: Device> {
    kind: BackendKind,
    engine: Engine<D>,
}

impl<D: Device> CudaBackend<D> {
    /// Loads `m`'s graphs on `device` with options `o` (the attention resolved here, once).
    /// Calibration bundles (graphs with `probe.*` outputs) are refused: the device step
    /// computes no probes, and calibration runs on the CPU.
    pub fn load(
        kind: BackendKind,
        device: D,
        dir: &Path,
        m: &Manifest,
        o: &CudaOptions,
    ) -> Result<Self, RuntimeError> {
        refuse_calibration(kind, dir, m)?;
        let attention = match o.attention()? {
            CudaAttention::Fused => AttentionPath::Fused,
            CudaAttention::Separate => AttentionPath::Separate,
        };
        let decode = match o.decode_gemm()? {
            DecodeGemm::Cublas => llamagen_cuda::gemm_weight::DecodeGemm::Cublas,
            DecodeGemm::Own => llamagen_cuda::gemm_weight::DecodeGemm::Own,
        };
        let mut engine = Engine::load(kind.name(), device, dir, m, o.graph, attention, decode)?;
        engine.set_vq_conv(vq_conv(o)?);
        Ok(CudaBackend { kind, engine })
    }
}

/// The VQ decoder's convolution `o` selects, as the CUDA crate names it.
pub(super) fn vq_conv(o: &CudaOptions) -> Result<Conv3x3, RuntimeError> {
    Ok(match o.vq_conv()? {
        VqConv::Cublas => Conv3x3::Cublas,
        VqConv::Mma => Conv3x3::Mma,
    })
}

/// Calibration bundles (graphs with `probe.*` outputs) are refused: the device computes no
/// probes, and calibration runs on the CPU.
pub(super) fn refuse_calibration(
    kind: BackendKind,
    dir: &Path,
    m: &Manifest,
) -> Result<(), RuntimeError> {
    let probes = m
        .graphs
        .values()
        .flat_map(|g| &g.outputs)
        .any(|o| o.name.starts_with(PROBE_PREFIX));
    if probes {
        return Err(RuntimeError::BackendUnavailable {
            name: kind.name().into(),
            reason: format!(
                "{} is a calibration bundle ({PROBE_PREFIX}* outputs); run it on the cpu \
                 backend",
                dir.display()
            ),
        });
    }
    Ok(())
}

impl<D: Device> Backend for CudaBackend<D> {
    type State = Session<D>;

    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn new_state(&self, rows: usize) -> Result<Session<D>, RuntimeError> {
        Ok(self.engine.new_session(rows)?)
    }

    /// Nothing to clear: the device attention reads slots `0..=position` only (never a stale
    /// one), and every one of them is written by this request before it is read.
    fn reset_state(&self, _session: &mut Session<D>) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn gpt_step(
        &self,
        input: StepInput<'_>,
        session: &mut Session<D>,
        logits: &mut Vec<f32>,
        _probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError> {
        Ok(self
            .engine
            .step(session, input.ids, input.position, logits)?)
    }

    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        _probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError> {
        Ok(self.engine.vq_decode(tokens, batch)?)
    }

    fn fused(&self) -> Option<&dyn FusedLoop> {
        Some(self)
    }

    fn device_weights(&self) -> Option<DeviceWeights> {
        let b = self.engine.gpt_weight_bytes();
        Some(DeviceWeights {
            gemm_bytes: b.gemm,
            other_bytes: b.other,
            gemm_dtype: b.gemm_dtype.name(),
            decode_gemm: b.decode_gemm.name(),
        })
    }

    fn device_attention(&self) -> Option<&'static str> {
        Some(self.engine.attention().name())
    }
}

impl<D: Device> FusedLoop for CudaBackend<D> {
    fn generate(&self, job: &FusedJob) -> Result<FusedTokens, RuntimeError> {
        let params = SampleParams::new(
            &job.sampling,
            job.cfg_scale,
            job.cfg_interval,
            job.seed,
            job.n,
            job.cfg,
            self.engine.tokens_per_image(),
        );
        // A request alone keeps today's stream (key = its seed, stream = row) bit for bit; a
        // merged batch uploads one (seed, stream) per row.
        let alone = job
            .row_seeds
            .iter()
            .enumerate()
            .all(|(r, s)| s.seed == job.seed && s.stream == r as u64);
        let g = if alone {
            self.engine.generate(&job.prefill_ids, &params)?
        } else {
            let keys = device_row_keys(&job.row_seeds)?;
            self.engine
                .generate_rows(&job.prefill_ids, &params, Some(&keys))?
        };
        Ok(FusedTokens {
            tokens: g.tokens,
            prefill_ms: g.prefill_ms,
            gpt_ms: g.gpt_ms,
            decode_step_ms: g.decode_step_ms,
        })
    }
}

/// The device sampler's random stream of each row (`row_key(seed, stream)`); an error for a
/// stream beyond the device's 32 bits.
pub(super) fn device_row_keys(row_seeds: &[RowSeed]) -> Result<Vec<RowKey>, RuntimeError> {
    row_seeds
        .iter()
        .map(|s| {
            u32::try_from(s.stream)
                .map(|stream| row_key(s.seed, stream))
                .map_err(|_| RuntimeError::InvalidRequest {
                    field: "row_seeds",
                    value: s.stream.to_string(),
                    reason: "the CUDA sampler's streams are 32-bit".into(),
                })
        })
        .collect()
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
