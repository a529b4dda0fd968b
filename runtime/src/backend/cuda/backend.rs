//! [`Backend`] on a [`Device`]: the fused generation loop (prefill eagerly, then the captured
//! step replayed once per token with no host synchronisation), a per-step path for teacher-forced
//! scoring, and the VQ decoder.
//!
//! One generation runs on the device at a time (`exec`): stream capture is per stream, and a
//! second thread's launches must not land inside another's capture. Services batch requests
//! instead.

use std::any::Any;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use llamagen_compiler::bundle::Manifest;

use super::device::Device;
use super::gpt::{issue_step, GptWeights, Session};
use super::ops::sampler::SampleParams;
use super::vq::VqDecoder;
use super::weights::BundleWeights;
use crate::backend::{Backend, FusedJob, FusedTokens, StepState};
use crate::error::RuntimeError;

/// Fields drop in declaration order: every buffer and graph goes before the device (its
/// context, stream and modules), which is last.
pub struct CudaBackend<D: Device> {
    name: &'static str,
    gpt: GptWeights<D>,
    vq: VqDecoder<D>,
    tokens_per_image: usize,
    /// Capture the decode step into a graph (off: the same launches, issued per token).
    use_graph: bool,
    /// Sessions of finished generations, reused by the next one of the same shape (their
    /// graphs included).
    sessions: Mutex<Vec<Session<D>>>,
    exec: Mutex<()>,
    device: D,
}

/// The per-step state of [`Backend::gpt_step`] on a device.
struct DeviceState<D: Device>(Session<D>);

impl<D: Device> CudaBackend<D> {
    pub fn load(
        name: &'static str,
        device: D,
        dir: &Path,
        m: &Manifest,
        use_graph: bool,
    ) -> Result<Self, RuntimeError> {
        let graph = |role: &str| {
            m.graphs.get(role).ok_or_else(|| {
                RuntimeError::cuda(
                    "loading the bundle",
                    format!("no graph '{role}' in the manifest"),
                )
            })
        };
        let t0 = Instant::now();
        let gpt = GptWeights::load(
            &device,
            &BundleWeights::open(dir, graph("gpt_step")?)?,
            &m.gpt,
        )?;
        let vq = VqDecoder::load(
            &device,
            &BundleWeights::open(dir, graph("vq_decoder")?)?,
            &m.vq,
        )?;
        tracing::info!(
            device = %device.describe(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "weights on the device"
        );
        Ok(CudaBackend {
            name,
            device,
            gpt,
            vq,
            tokens_per_image: m.generation.tokens_per_image,
            use_graph,
            sessions: Mutex::new(Vec::new()),
            exec: Mutex::new(()),
        })
    }

    fn take_session(&self, rows: usize, n: usize) -> Result<Session<D>, RuntimeError> {
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|s| s.rows == rows && s.n == n) {
            Some(i) => Ok(pool.swap_remove(i)),
            None => Session::new(
                &self.device,
                &self.gpt.config,
                rows,
                n,
                self.tokens_per_image,
            ),
        }
    }

    /// Keeps a few sessions (each holds full-length KV caches).
    fn return_session(&self, s: Session<D>) {
        const POOL: usize = 2;
        let mut pool = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOL {
            pool.remove(0);
        }
        pool.push(s);
    }

    fn run_fused(&self, job: &FusedJob, s: &mut Session<D>) -> Result<FusedTokens, RuntimeError> {
        let d = &self.device;
        let per = self.tokens_per_image;
        let params = SampleParams::new(
            &job.sampling,
            job.cfg_scale,
            job.cfg_interval,
            job.seed,
            job.n,
            job.cfg,
            per,
        );
        s.set_params(d, &params)?;
        let ids: Vec<i32> = job.prefill_ids.iter().map(|&x| x as i32).collect();
        s.set_inputs(d, &ids, 0, 0)?;
        let start = Instant::now();
        // The prefill samples token 0 and advances to slot 1; it runs eagerly, which also warms
        // up cuBLAS and module loading before any capture.
        issue_step(d, &self.gpt, s, true)?;
        d.synchronize()?;
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
        let decode_steps = per.saturating_sub(1);
        if self.use_graph && decode_steps > 0 {
            if s.graph.is_none() {
                d.begin_capture()?;
                let issued = issue_step(d, &self.gpt, s, true);
                let graph = d.end_capture();
                issued?;
                s.graph = Some(graph?);
            }
            let graph = s.graph.as_ref().expect("captured above");
            for _ in 0..decode_steps {
                d.replay(graph)?;
            }
        } else {
            for _ in 0..decode_steps {
                issue_step(d, &self.gpt, s, true)?;
            }
        }
        let tokens = s.read_tokens(d, per)?;
        Ok(FusedTokens {
            tokens,
            prefill_ms,
            gpt_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn new_state(&self, rows: usize) -> Result<StepState, RuntimeError> {
        // Allocating while another thread captures could land in its graph.
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let s = Session::new(
            &self.device,
            &self.gpt.config,
            rows,
            rows,
            self.tokens_per_image,
        )?;
        Ok(StepState::Device(Box::new(DeviceState(s))))
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
        let StepState::Device(state) = state else {
            return Err(RuntimeError::cuda(
                "gpt_step",
                "the step state is not a device state",
            ));
        };
        let Some(DeviceState(s)) =
            (state.as_mut() as &mut dyn Any).downcast_mut::<DeviceState<D>>()
        else {
            return Err(RuntimeError::cuda(
                "gpt_step",
                "the step state belongs to another device",
            ));
        };
        if seq != 1 || ids.len() != s.rows {
            return Err(RuntimeError::cuda(
                "gpt_step",
                format!(
                    "{} ids with seq {seq} for {} rows; the device step takes one token per row",
                    ids.len(),
                    s.rows
                ),
            ));
        }
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let d = &self.device;
        let ids: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        s.set_inputs(d, &ids, position as i32, 0)?;
        issue_step(d, &self.gpt, s, false)?;
        s.read_logits(d, self.gpt.config.vocab_size, logits)
    }

    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        _probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.vq.decode(&self.device, tokens, batch)
    }

    fn generate_fused(&self, job: &FusedJob) -> Option<Result<FusedTokens, RuntimeError>> {
        let rows = if job.cfg { 2 * job.n } else { job.n };
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.take_session(rows, job.n).and_then(|mut s| {
            let out = self.run_fused(job, &mut s);
            if out.is_ok() {
                self.return_session(s);
            }
            out
        });
        Some(result)
    }
}
