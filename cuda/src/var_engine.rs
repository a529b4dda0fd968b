//! A VAR bundle on a [`Device`]: the fused multi-scale loop (every scale captured once per
//! session into its own graph, then the whole loop replayed with no host synchronisation), a
//! host-driven per-scale path (logits out, tokens in: teacher forcing, observers, the CPU
//! sampler), and the VQVAE decode of `f_hat`. The runtime's CUDA VAR generator adapts
//! [`VarEngine`].
//!
//! One generation runs on the device at a time (`exec`), as in [`crate::Engine`].

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use llamagen_bundle::{GraphRole, Manifest, VarConfig};

use crate::device::Device;
use crate::engine::Generated;
use crate::error::CudaError;
use crate::ops::sampler::{RowKey, SampleParams};
use crate::session_pool::SessionPool;
use crate::var::{issue_f_hat, issue_scale, VarSession};
use crate::var_weights::VarWeights;
use crate::vq::VqDecoder;
use crate::weights::BundleWeights;

/// Fields drop in declaration order: buffers and graphs before the device.
pub struct VarEngine<D: Device> {
    name: &'static str,
    weights: VarWeights<D>,
    vq: VqDecoder<D>,
    /// Capture each scale into a graph (off: the same launches, issued per scale).
    use_graph: bool,
    sessions: SessionPool<VarSession<D>>,
    /// The decode-only session of the last decode (tokens and `f_hat` buffers only).
    decode_session: Mutex<Option<VarSession<D>>>,
    exec: Mutex<()>,
    device: D,
}

impl<D: Device> VarEngine<D> {
    /// How the VQ decoder runs its 3x3 convolutions (default cuBLAS).
    pub fn set_vq_conv(&mut self, conv: crate::ops::vq_gemm::Conv3x3) {
        self.vq.set_conv(conv);
    }

    /// Uploads the bundle's VAR weights (any precision) and its VQVAE decoder to `device`.
    pub fn load(
        name: &'static str,
        device: D,
        dir: &Path,
        m: &Manifest,
        use_graph: bool,
    ) -> Result<Self, CudaError> {
        let t0 = Instant::now();
        let c = m.var()?;
        let open = |role| BundleWeights::open(dir, m, m.graph(dir, role)?);
        let cond = open(GraphRole::VarCond)?;
        let step = open(GraphRole::VarStep)?;
        let embed = open(GraphRole::VarEmbed)?;
        let weights = VarWeights::load(&device, [&cond, &step, &embed], c)?;
        let vq = VqDecoder::load(
            &device,
            &BundleWeights::open(dir, m, m.graph(dir, GraphRole::VqDecoder)?)?,
            &m.vq,
        )?;
        if m.vq.grid != c.last_side() || m.vq.codebook_embed_dim != c.cvae {
            return Err(CudaError::call(
                "loading a VAR bundle",
                format!(
                    "the decoder takes {}x{}x{} maps, f_hat is {}x{}x{}",
                    m.vq.grid,
                    m.vq.grid,
                    m.vq.codebook_embed_dim,
                    c.last_side(),
                    c.last_side(),
                    c.cvae
                ),
            ));
        }
        tracing::info!(
            device = %device.describe(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "VAR weights on the device"
        );
        Ok(VarEngine {
            name,
            weights,
            vq,
            use_graph,
            sessions: SessionPool::new(),
            decode_session: Mutex::new(None),
            exec: Mutex::new(()),
            device,
        })
    }

    /// The backend's name (`cuda`, `cuda-emu`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn config(&self) -> &VarConfig {
        &self.weights.config
    }

    /// A whole generation on the device for `labels` (CFG rows when `cfg_scale != 0`),
    /// sampling as `params` says (`SampleParams::new` for the `n` requests; each scale samples
    /// its token block with VAR's top-p rule); request row r draws from `row_keys[r]` (its
    /// seed and stream: `row_key(seed, r)` for a request alone, a service's merged batch gives
    /// each row its own), a table in the parameter buffer the captured scales read.
    /// `prefill_ms` is scale 0's time when it ran eagerly (a session's first generation), else
    /// 0: replays never wait for the device.
    pub fn generate(
        &self,
        labels: &[i64],
        cfg_scale: f32,
        params: &SampleParams,
        row_keys: &[RowKey],
    ) -> Result<Generated, CudaError> {
        let cfg = cfg_scale != 0.0;
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let n = labels.len();
        let mut s = self.sessions.take(
            |s| s.n == n && s.cfg == cfg,
            || VarSession::new(&self.device, self.config(), n, cfg),
        )?;
        let out = self.run_fused(labels, cfg_scale, params, row_keys, &mut s);
        if out.is_ok() {
            self.sessions.put(s);
        }
        out
    }

    fn run_fused(
        &self,
        labels: &[i64],
        cfg_scale: f32,
        params: &SampleParams,
        row_keys: &[RowKey],
        s: &mut VarSession<D>,
    ) -> Result<Generated, CudaError> {
        let (d, w) = (&self.device, &self.weights);
        let c = self.config();
        s.set_request(d, c, labels, cfg_scale, params, row_keys)?;
        let start = Instant::now();
        let mut prefill_ms = 0.0;
        if !self.use_graph {
            for si in 0..c.scales() {
                issue_scale(d, w, s, si, true)?;
            }
        } else {
            let mut first = 0;
            if s.graphs.is_empty() {
                // Scale 0 eagerly warms up the libraries and modules before any capture; then
                // every scale is captured (capture records, it does not run).
                issue_scale(d, w, s, 0, true)?;
                d.synchronize()?;
                prefill_ms = start.elapsed().as_secs_f64() * 1e3;
                first = 1;
                let mut graphs = Vec::with_capacity(c.scales());
                for si in 0..c.scales() {
                    d.begin_capture()?;
                    let issued = issue_scale(d, w, s, si, true);
                    let graph = d.end_capture();
                    issued?;
                    graphs.push(graph?);
                }
                s.graphs = graphs;
            }
            for g in &s.graphs[first..] {
                d.replay(g)?;
            }
        }
        let tokens = s.read_tokens(d, c)?;
        Ok(Generated {
            tokens,
            prefill_ms,
            gpt_ms: start.elapsed().as_secs_f64() * 1e3,
            // Per-scale times come from the host-driven VAR loop (`bench`'s scale_ms).
            decode_step_ms: Vec::new(),
        })
    }

    /// A session for the host-driven loop, set for `labels` and `cfg_scale` (CFG rows when
    /// `cfg_scale != 0`).
    pub fn new_session(&self, labels: &[i64], cfg_scale: f32) -> Result<VarSession<D>, CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let d = &self.device;
        let c = self.config();
        let s = VarSession::new(d, c, labels.len(), cfg_scale != 0.0)?;
        let unused = SampleParams::new(&Default::default(), 0.0, -1.0, 0, labels.len(), false, 0);
        // The host loop samples on the CPU: any streams of the right count.
        let unused_keys = vec![[0u32; 3]; labels.len()];
        s.set_request(d, c, labels, cfg_scale, &unused, &unused_keys)?;
        Ok(s)
    }

    /// Scale `si` of session `s` without sampling (the tokens of scales `< si` must be set):
    /// the cond rows' CFG-combined logits `[n, T, V]` into `logits`.
    pub fn scale_logits(
        &self,
        s: &VarSession<D>,
        si: usize,
        logits: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let d = &self.device;
        issue_scale(d, &self.weights, s, si, false)?;
        s.read_logits(d, self.config(), si, logits)
    }

    /// Sets scale `si`'s tokens of session `s` (`tokens[r]` holds at least the scale's range).
    pub fn set_scale_tokens(
        &self,
        s: &VarSession<D>,
        si: usize,
        tokens: &[Vec<u32>],
    ) -> Result<(), CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        s.set_scale_tokens(&self.device, self.config(), si, tokens)
    }

    /// Images f32 NCHW `[n, 3, size, size]` of every scale's tokens `[n][L]`: `f_hat` on the
    /// device, then the VQVAE decoder.
    pub fn decode(&self, tokens: &[Vec<u32>]) -> Result<Vec<f32>, CudaError> {
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let (d, c) = (&self.device, self.config());
        let mut slot = self
            .decode_session
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|s| s.n != tokens.len()) {
            *slot = None; // free the other size first
            *slot = Some(VarSession::for_decode(d, c, tokens.len())?);
        }
        let s = slot
            .as_ref()
            .ok_or_else(|| CudaError::call("VAR decode", "no session"))?;
        s.set_tokens(d, c, tokens)?;
        issue_f_hat(d, &self.weights, s)?;
        self.vq.decode_features(d, s.f_hat(d, c), tokens.len())
    }
}
