//! A c2i LlamaGen bundle on a [`Device`]: the fused generation loop (prefill eagerly, then the
//! captured step replayed once per token with no host synchronisation), a per-step path for
//! teacher-forced scoring, and the VQ decoder. The runtime's CUDA backend is a thin adapter over
//! [`Engine`].
//!
//! One generation runs on the device at a time (`exec`): stream capture is per stream, and a
//! second thread's launches must not land inside another's capture. Services batch requests
//! instead.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use llamagen_bundle::{GraphRole, Manifest};

use crate::device::{CaptureGuard, Device};
use crate::error::CudaError;
use crate::gemm_weight::DecodeGemm;
use crate::gpt::{issue_step, AttentionPath, GptWeights, Session, WeightBytes};
use crate::ops::sampler::{RowKey, SampleParams};
use crate::session_pool::SessionPool;
use crate::vq::VqDecoder;
use crate::weights::BundleWeights;

/// Tokens of a fused generation, `[n][tokens_per_image]`, and its timings.
#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<Vec<u32>>,
    pub prefill_ms: f64,
    /// Prefill plus all decode steps.
    pub gpt_ms: f64,
    /// Each decode step's time on the device stream, in order: events recorded between steps
    /// (no host sync per step). Empty where a loop does not time its steps.
    pub decode_step_ms: Vec<f64>,
}

/// Fields drop in declaration order: every buffer and graph goes before the device (its
/// context, stream and modules), which is last.
pub struct Engine<D: Device> {
    name: &'static str,
    gpt: GptWeights<D>,
    vq: VqDecoder<D>,
    tokens_per_image: usize,
    /// Capture the decode step into a graph (off: the same launches, issued per token).
    use_graph: bool,
    /// The decode attention every session's step launches.
    attention: AttentionPath,
    /// Sessions of finished generations, reused by the next one of the same shape (their
    /// graphs included).
    sessions: SessionPool<Session<D>>,
    exec: Mutex<()>,
    device: D,
}

impl<D: Device> Engine<D> {
    /// How the VQ decoder runs its 3x3 convolutions (default cuBLAS).
    pub fn set_vq_conv(&mut self, conv: crate::ops::vq_gemm::Conv3x3) {
        self.vq.set_conv(conv);
    }

    /// Uploads the bundle's weights (any precision) to `device`, f16 GEMM weights for the
    /// `decode` GEMM; the decode steps will launch `attention` (an error where it cannot run the
    /// model's head size).
    pub fn load(
        name: &'static str,
        device: D,
        dir: &Path,
        m: &Manifest,
        use_graph: bool,
        attention: AttentionPath,
        decode: DecodeGemm,
    ) -> Result<Self, CudaError> {
        attention.check_head_dim(m.gpt()?.head_dim)?;
        let t0 = Instant::now();
        let gpt = GptWeights::load(
            &device,
            &BundleWeights::open(dir, m, m.graph(dir, GraphRole::GptStep)?)?,
            m.gpt()?,
            decode,
        )?;
        let vq = VqDecoder::load(
            &device,
            &BundleWeights::open(dir, m, m.graph(dir, GraphRole::VqDecoder)?)?,
            &m.vq,
        )?;
        tracing::info!(
            device = %device.describe(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "weights on the device"
        );
        Ok(Engine {
            name,
            device,
            gpt,
            vq,
            tokens_per_image: m.generation.tokens_per_image,
            use_graph,
            attention,
            sessions: SessionPool::new(),
            exec: Mutex::new(()),
        })
    }

    fn run_fused(
        &self,
        prefill_ids: &[i64],
        params: &SampleParams,
        rows: Option<&[RowKey]>,
        s: &mut Session<D>,
    ) -> Result<Generated, CudaError> {
        let d = &self.device;
        let per = self.tokens_per_image;
        match rows {
            Some(rows) => s.set_params_rows(d, params, rows)?,
            None => s.set_params(d, params)?,
        }
        let ids: Vec<i32> = prefill_ids.iter().map(|&x| x as i32).collect();
        s.set_inputs(d, &ids, 0, 0)?;
        let start = Instant::now();
        // The prefill samples token 0 and advances to slot 1; it runs eagerly, which also warms
        // up cuBLAS and module loading before any capture.
        issue_step(d, &self.gpt, s, true)?;
        d.synchronize()?;
        let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
        let decode_steps = per.saturating_sub(1);
        // marks[i] follows decode step i (marks[0]: before the first).
        let marks = (0..=decode_steps)
            .map(|_| d.new_event())
            .collect::<Result<Vec<_>, _>>()?;
        if self.use_graph && decode_steps > 0 {
            if s.graph.is_none() {
                let capture = CaptureGuard::begin(d)?;
                let issued = issue_step(d, &self.gpt, s, true);
                let graph = capture.end();
                issued?;
                s.graph = Some(graph?);
            }
            let graph = s.graph.as_ref().expect("captured above");
            d.record(&marks[0])?;
            for mark in &marks[1..] {
                d.replay(graph)?;
                d.record(mark)?;
            }
        } else {
            d.record(&marks[0])?;
            for mark in &marks[1..] {
                issue_step(d, &self.gpt, s, true)?;
                d.record(mark)?;
            }
        }
        let tokens = s.read_tokens(d, per)?;
        let gpt_ms = start.elapsed().as_secs_f64() * 1e3;
        let decode_step_ms = marks
            .windows(2)
            .map(|w| d.elapsed_ms(&w[0], &w[1]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Generated {
            tokens,
            prefill_ms,
            gpt_ms,
            decode_step_ms,
        })
    }

    /// Image tokens each generation produces per request.
    pub fn tokens_per_image(&self) -> usize {
        self.tokens_per_image
    }

    /// The GPT's weights on the device, in bytes (int8 bundles keep int8 GEMM weights).
    pub fn gpt_weight_bytes(&self) -> WeightBytes {
        self.gpt.bytes(&self.device)
    }

    /// The decode attention the steps launch.
    pub fn attention(&self) -> AttentionPath {
        self.attention
    }

    /// The backend's name (`cuda`, `cuda-emu`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A fresh per-step session of `rows` rows (its own KV caches), for [`Self::step`].
    pub fn new_session(&self, rows: usize) -> Result<Session<D>, CudaError> {
        // Allocating while another thread captures could land in its graph.
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        Session::new(
            &self.device,
            &self.gpt.config,
            rows,
            rows,
            self.tokens_per_image,
            self.attention,
        )
    }

    /// One GPT step of session `s`: `ids` (one token per row) at cache slot `position`; writes
    /// the logits `[rows, vocab]` into `logits`.
    pub fn step(
        &self,
        s: &mut Session<D>,
        ids: &[i64],
        position: usize,
        logits: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        if ids.len() != s.rows {
            return Err(CudaError::call(
                "the GPT step",
                format!(
                    "{} ids for {} rows; the device step takes one token per row",
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

    /// The launch sequence of one decode step of `rows` rows, captured on a fresh session (what
    /// the fused loop replays per token), for counting and inspecting launches.
    pub fn step_graph(&self, rows: usize) -> Result<D::Graph, CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let d = &self.device;
        let c = &self.gpt.config;
        let s = Session::new(d, c, rows, rows, self.tokens_per_image, self.attention)?;
        let capture = CaptureGuard::begin(d)?;
        let issued = issue_step(d, &self.gpt, &s, true);
        let graph = capture.end();
        issued?;
        graph
    }

    /// VQ decode of `tokens` `[batch, tokens_per_image]` to images `[batch, 3, size, size]`.
    pub fn vq_decode(&self, tokens: &[i64], batch: usize) -> Result<Vec<f32>, CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.vq.decode(&self.device, tokens, batch)
    }

    /// A whole generation on the device: the prefill with `prefill_ids` (`[cond; uncond]` rows
    /// with CFG), then every decode step, sampling as `params` says.
    pub fn generate(
        &self,
        prefill_ids: &[i64],
        params: &SampleParams,
    ) -> Result<Generated, CudaError> {
        self.generate_rows(prefill_ids, params, None)
    }

    /// [`Self::generate`] where request row r draws from `row_keys[r]` (its own seed and
    /// stream: a service's merged batch) instead of (the params' seed, stream r). The captured
    /// step is the same: the table sits in the parameter buffer it reads.
    pub fn generate_rows(
        &self,
        prefill_ids: &[i64],
        params: &SampleParams,
        row_keys: Option<&[RowKey]>,
    ) -> Result<Generated, CudaError> {
        let (n, rows) = (params.n as usize, prefill_ids.len());
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let (d, c, per) = (&self.device, &self.gpt.config, self.tokens_per_image);
        let mut s = self.sessions.take(
            |s| s.rows == rows && s.n == n,
            || Session::new(d, c, rows, n, per, self.attention),
        )?;
        let out = self.run_fused(prefill_ids, params, row_keys, &mut s);
        if out.is_ok() {
            self.sessions.put(s);
        }
        out
    }
}
