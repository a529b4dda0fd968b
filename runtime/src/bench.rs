//! Latency of every phase of a generation and peak memory, as `llamagen bench` reports them,
//! with the bandwidth model of the decode step on device backends.

use std::time::Instant;

use llamagen_bundle::{GptConfig, ModelFamily, Precision};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::error::RuntimeError;
use crate::pipeline::Pipeline;
use crate::request::GenerateRequest;

/// What one benchmark measured: medians over the timed runs (the first run, a warm-up, is not
/// counted). Serialises to the keys of `llamagen bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub model: String,
    pub precision: Precision,
    pub backend: String,
    pub image_size: usize,
    pub batch: usize,
    pub cfg_scale: f32,
    pub runs: usize,
    pub load_ms: f64,
    pub prefill_ms: f64,
    /// All decode steps over their count (wall time, host syncs included).
    pub decode_ms_per_token_mean: f64,
    /// Device backends: GEMM weights + KV cache one step reads (the weights as the device holds
    /// them, [`Self::gemm_weight_mb`]; the KV cache by arithmetic, [`kv_step_bytes`]), in MB.
    pub decode_mb_per_token: Option<f64>,
    /// Device backends: those bytes over the measured step time.
    pub decode_gb_per_s: Option<f64>,
    /// Quantiles of the individual decode steps: host loops time each step; the CUDA backend
    /// records events between the replayed steps (device time, no host sync per step).
    pub decode_ms_per_token_p50: Option<f64>,
    pub decode_ms_per_token_p99: Option<f64>,
    /// Device backends (LlamaGen): the element type of the GPT's GEMM weights on the device
    /// (`f16`; `int8` for int8 bundles, which keep their int8 weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_weight_dtype: Option<&'static str>,
    /// Device backends (LlamaGen): the GEMM of decode steps, `cublas` or `own` (our
    /// weight-streaming GEMM with RMSNorm and SwiGLU fused: int8 bundles, or f16 with
    /// `LLAMAGEN_CUDA_DECODE_GEMM=own`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_gemm: Option<&'static str>,
    /// Device backends (LlamaGen): the GPT's GEMM weights on the device, in MB (every decode
    /// step reads them in full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm_weight_mb: Option<f64>,
    /// The CUDA backend (LlamaGen): the decode step's attention, `fused` (one split-K launch
    /// per layer) or `separate` (rotary_kv_write + decode_attention); `LLAMAGEN_CUDA_ATTENTION`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<&'static str>,
    /// The CPU backend: how many VQ decoder convolutions ran on our AMX kernel (int8-activation
    /// decoders on CPUs with AMX; 0 elsewhere or with `--cpu-no-amx`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_amx_convolutions: Option<usize>,
    /// CPU: VAR step attention layers on our fused AVX-512 kernel (0 elsewhere or with
    /// `--cpu-ort-attention`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_fused_attention: Option<usize>,
    /// CPU: VQ decoder GroupNorm (+ SiLU) chains on our fused AVX-512 kernel (0 elsewhere or
    /// with `--cpu-ort-group-norm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_fused_group_norms: Option<usize>,
    /// Device backends (LlamaGen): all GPT weights on the device (GEMMs, embeddings, norms,
    /// rotary tables), in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpt_device_weight_mb: Option<f64>,
    /// How many step times (over all timed runs) the quantiles come from; 0 where steps are
    /// not timed one by one.
    pub decode_steps_timed: usize,
    /// VAR: median wall time of each scale's step (embed, transformer, CFG, sampling), in
    /// scale order; `prefill_ms` is the first. Absent for LlamaGen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_ms: Option<Vec<f64>>,
    pub gpt_ms: f64,
    pub vq_ms: f64,
    pub total_ms: f64,
    pub peak_rss_mb: f64,
    pub bundle_mb: f64,
}

/// Runs `req` once to warm up, then `runs` timed times (generation and VQ decode), on
/// `pipeline`, which took `load_ms` to load.
pub fn bench(
    pipeline: &Pipeline,
    req: &GenerateRequest,
    runs: usize,
    load_ms: f64,
) -> Result<BenchReport, RuntimeError> {
    req.validate(pipeline.manifest())?;
    let m = pipeline.manifest();
    let (mut prefill, mut gpt, mut vq, mut total, mut steps, mut per_token) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let var = m.family == ModelFamily::Var;
    let mut scales: Vec<Vec<f64>> = Vec::new();
    let decode_steps = m.generation.tokens_per_image.saturating_sub(1).max(1) as f64;
    for run in 0..=runs {
        let t = Instant::now();
        let out = pipeline.generate_tokens(req, &mut |_, _| {})?;
        let images = pipeline.decode_images(&out.tokens)?;
        if run == 0 {
            continue; // warm-up
        }
        total.push(t.elapsed().as_secs_f64() * 1e3);
        prefill.push(out.prefill_ms);
        gpt.push(out.gpt_ms);
        vq.push(images.vq_ms);
        per_token.push(out.decode_ms / decode_steps);
        if var {
            let this = std::iter::once(out.prefill_ms).chain(out.decode_step_ms.iter().copied());
            for (i, ms) in this.enumerate() {
                if scales.len() <= i {
                    scales.push(Vec::new());
                }
                scales[i].push(ms);
            }
        } else {
            steps.extend(out.decode_step_ms);
        }
    }
    steps.sort_by(f64::total_cmp);
    let per_token_ms = median(per_token);
    let rows = req.labels.len() * if req.uses_cfg() { 2 } else { 1 };
    let device = pipeline.backend() != BackendKind::Cpu;
    let weights = pipeline.device_weights();
    let step_bytes = match (&m.gpt, device) {
        (Some(g), true) => {
            let gemm = weights.map_or_else(|| fp16_gemm_bytes(g), |w| w.gemm_bytes as f64);
            Some(gemm + kv_step_bytes(g, m.generation.tokens_per_image, rows))
        }
        _ => None,
    };
    let cpu = (pipeline.backend() == BackendKind::Cpu).then(|| pipeline.cpu_kernels());
    Ok(BenchReport {
        bundle: pipeline.dir().display().to_string(),
        model: format!("{} + {}", m.model_name(), m.vq.name),
        precision: m.precision,
        backend: pipeline.backend().name().to_string(),
        image_size: m.vq.image_size,
        batch: req.labels.len(),
        cfg_scale: req.cfg_scale,
        runs,
        load_ms,
        prefill_ms: median(prefill),
        decode_ms_per_token_mean: per_token_ms,
        decode_mb_per_token: step_bytes.map(|b| b / 1e6),
        decode_gb_per_s: step_bytes.map(|b| b / 1e9 / (per_token_ms / 1e3)),
        decode_ms_per_token_p50: (!steps.is_empty()).then(|| quantile(&steps, 0.5)),
        decode_ms_per_token_p99: (!steps.is_empty()).then(|| quantile(&steps, 0.99)),
        gemm_weight_dtype: weights.map(|w| w.gemm_dtype),
        decode_gemm: weights.map(|w| w.decode_gemm),
        gemm_weight_mb: weights.map(|w| w.gemm_bytes as f64 / 1e6),
        attention: pipeline.device_attention(),
        cpu_amx_convolutions: cpu.map(|k| k.amx_convolutions),
        cpu_fused_attention: cpu.map(|k| k.fused_attention),
        cpu_fused_group_norms: cpu.map(|k| k.fused_group_norms),
        gpt_device_weight_mb: weights.map(|w| (w.gemm_bytes + w.other_bytes) as f64 / 1e6),
        decode_steps_timed: steps.len(),
        scale_ms: var.then(|| scales.into_iter().map(median).collect()),
        gpt_ms: median(gpt),
        vq_ms: median(vq),
        total_ms: median(total),
        peak_rss_mb: peak_rss_mb(),
        bundle_mb: m.total_bytes() as f64 / 1e6,
    })
}

/// Value at quantile q (0..=1) of sorted data, nearest-rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// Peak resident set size of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Bytes one decode step of a device backend reads, averaged over the generation, with fp16
/// GEMM weights: [`fp16_gemm_bytes`] + [`kv_step_bytes`]. Arithmetic, not measured: divided by
/// the measured step time it says how close the step is to the memory-bandwidth limit.
pub fn device_step_bytes(g: &GptConfig, tokens_per_image: usize, rows: usize) -> f64 {
    fp16_gemm_bytes(g) + kv_step_bytes(g, tokens_per_image, rows)
}

/// The fp16 GEMM weights (every layer's qkv, wo, w1|w3, w2, and the output projection), which
/// every decode step reads in full.
pub fn fp16_gemm_bytes(g: &GptConfig) -> f64 {
    let qkv = (g.n_head + 2 * g.n_kv_head) * g.head_dim;
    let layer = g.dim * qkv + g.n_head * g.head_dim * g.dim + 3 * g.dim * g.ffn_hidden;
    2.0 * (g.n_layer * layer + g.dim * g.vocab_size) as f64
}

/// The fp16 KV-cache slots `0..=pos` of every layer and row one decode step reads, averaged over
/// the generation.
pub fn kv_step_bytes(g: &GptConfig, tokens_per_image: usize, rows: usize) -> f64 {
    // Decode step i (0-based) attends slots 0..=cls_token_num + i.
    let steps = tokens_per_image.saturating_sub(1).max(1) as f64;
    let mean_slots = g.cls_token_num as f64 + 1.0 + (steps - 1.0) / 2.0;
    let kv_per_slot = 2.0 * 2.0 * (rows * g.n_kv_head * g.head_dim * g.n_layer) as f64;
    kv_per_slot * mean_slots
}

#[cfg(test)]
mod tests {
    use llamagen_bundle::config::{GptArch, GptConfig};

    /// GPT-B at 384 px, 8 labels with CFG (rows 32): ~195 MB of fp16 weights and, on average,
    /// ~341 MB of KV cache per step (docs/cuda-backend-plan.md, Step 7).
    #[test]
    fn gpt_b_384_step_bytes_match_the_hand_count() {
        let gpt_b = GptArch {
            name: "GPT-B".into(),
            n_layer: 12,
            n_head: 12,
            dim: 768,
            released_type: "c2i".into(),
        };
        let c = GptConfig::new(&gpt_b, 16384, 1000, 1, 576).unwrap();
        let weights = 2.0
            * (12.0 * (768.0 * 2304.0 + 768.0 * 768.0 + 3.0 * 768.0 * 2048.0) + 768.0 * 16384.0);
        let kv = 2.0 * 2.0 * 32.0 * 12.0 * 64.0 * 12.0 * (1.0 + 1.0 + 574.0 / 2.0);
        let got = super::device_step_bytes(&c, 576, 32);
        assert!(
            (got - (weights + kv)).abs() < 1.0,
            "{got} vs {}",
            weights + kv
        );
        assert!((got / 1e6 - 536.0).abs() < 10.0, "{} MB", got / 1e6);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::quantile(&v, 0.5), 50.0);
        assert_eq!(super::quantile(&v, 0.99), 99.0);
        assert_eq!(super::quantile(&[3.0], 0.99), 3.0);
    }
}
