//! ONNX Runtime on its CPU execution provider.
//!
//! The caches are passed to the step graph as borrowed tensors (no copy); only the new
//! `[batch, heads, seq, head_dim]` slices come back and are written into the cache in place.
//! Sessions sit behind a mutex because `Session::run` needs `&mut`; one request at a time uses
//! all cores anyway.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;

use llamagen_bundle::confine::OpenedFile;
use llamagen_bundle::names as io_names;
use llamagen_bundle::names::PROBE_PREFIX;
use llamagen_bundle::{GraphRole, Manifest};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef};

use super::{Backend, BackendKind, CpuKernels, CpuOptions, StepInput};
use crate::error::RuntimeError;
use crate::kv_cache::{CacheElement, KvCache};

pub struct OrtCpu {
    gpt: Mutex<Session>,
    vq: Mutex<Session>,
    /// Calibration probe outputs (`probe.*`) of each session; empty in normal bundles.
    gpt_probes: Vec<String>,
    vq_probes: Vec<String>,
    /// The VQ decoder's nodes on our kernels.
    kernels: CpuKernels,
    layers: usize,
    vocab: usize,
    config: llamagen_bundle::config::GptConfig,
    names: CacheNames,
}

/// Per-layer cache input/output names, built once, and the two things every cached step does
/// with them: pass the caches in (borrowed, no copy) and write the new slices back.
pub(crate) struct CacheNames {
    past_key: Vec<String>,
    past_value: Vec<String>,
    present_key: Vec<String>,
    present_value: Vec<String>,
}

impl CacheNames {
    pub(crate) fn new(layers: usize) -> Self {
        CacheNames {
            past_key: (0..layers).map(io_names::past_key).collect(),
            past_value: (0..layers).map(io_names::past_value).collect(),
            present_key: (0..layers).map(io_names::present_key).collect(),
            present_value: (0..layers).map(io_names::present_value).collect(),
        }
    }

    /// Appends every layer's `past_key.i` / `past_value.i` as views of `cache`.
    pub(crate) fn push_inputs<'a, T: CacheElement>(
        &'a self,
        inputs: &mut Vec<(Cow<'a, str>, SessionInputValue<'a>)>,
        cache: &'a KvCache<T>,
    ) -> Result<(), RuntimeError> {
        let shape = cache.shape();
        for (i, (k, v)) in self.past_key.iter().zip(&self.past_value).enumerate() {
            inputs.push((k.as_str().into(), tensor(shape.to_vec(), cache.keys(i), k)?));
            inputs.push((
                v.as_str().into(),
                tensor(shape.to_vec(), cache.values(i), v)?,
            ));
        }
        Ok(())
    }

    /// Writes every layer's `present_*` slice of `n` tokens into `cache` at `position`.
    pub(crate) fn write_outputs<T: CacheElement>(
        &self,
        outputs: &ort::session::SessionOutputs<'_>,
        role: GraphRole,
        cache: &mut KvCache<T>,
        position: usize,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let shape = cache.shape();
        let slice = vec![shape[0], shape[1], n, shape[3]];
        for (i, (k, v)) in self.present_key.iter().zip(&self.present_value).enumerate() {
            let (keys, values) = cache.layer_mut(i);
            for (name, dst) in [(k, keys), (v, values)] {
                // f16 where our fused attention emits the cache's own type.
                match output_type(outputs, name) {
                    Some(TensorElementType::Float16) => {
                        let data = output_of::<half::f16>(outputs, role, name, slice.clone())?;
                        KvCache::write(dst, data, shape, position, n);
                    }
                    _ => {
                        let data = output_f32(outputs, role, name, slice.clone())?;
                        KvCache::write(dst, data, shape, position, n);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How a session plans its activation memory.
#[derive(Clone, Copy)]
pub(crate) enum Activations {
    /// Memory patterns on: best for the small, repeated GPT step.
    Planned,
    /// Memory patterns off: the VQ decoder's activations are ~100 MB at 256 px, and the
    /// pattern block ONNX Runtime adds on the second run (beside the arena chunks of the first)
    /// measured +90 MB of peak memory. With the arena alone, memory plateaus after one run.
    Arena,
}

/// A session of graph `role`. ONNX Runtime opens the graph and its weights by path, so both
/// are opened here first (confined, listed, of the verified size and identity) and checked
/// again once the session exists: a file swapped or rewritten in between is an error.
pub(crate) fn session(
    dir: &Path,
    m: &Manifest,
    role: GraphRole,
    opts: &CpuOptions,
    activations: Activations,
) -> Result<Session, RuntimeError> {
    Ok(session_counting(dir, m, role, opts, activations)?.0)
}

/// [`session`], and how many of its nodes run on our kernels: convolutions on AMX (an
/// int8-activation VQ decoder on an AMX CPU, unless `opts.no_amx`; see `decoder_rewrite`,
/// which also puts every decoder's GroupNorms on our kernel unless `opts.ort_group_norm`), or
/// attention layers (VAR's step on an AVX-512 CPU, unless `opts.ort_attention`; see
/// `attention_rewrite`).
pub(crate) fn session_counting(
    dir: &Path,
    m: &Manifest,
    role: GraphRole,
    opts: &CpuOptions,
    activations: Activations,
) -> Result<(Session, CpuKernels), RuntimeError> {
    let entry = m.graph(dir, role)?;
    let source = dir.join(llamagen_bundle::MANIFEST_FILE);
    let onnx = OpenedFile::open(dir, m, &source, &entry.file)?;
    let weights = OpenedFile::open(dir, m, &source, &entry.weights)?;
    for f in [&onnx, &weights] {
        f.check_unchanged()?;
    }
    // Decoder convolutions fuse into int8 kernels only in graphs that quantize their
    // activations themselves.
    let qdq = !matches!(role, GraphRole::VqDecoder) || entry.int8_activations;
    let builder = builder(&onnx.path, opts, activations, qdq)?;
    let rewritten = match role {
        GraphRole::VqDecoder => {
            let amx = entry.int8_activations && !opts.no_amx;
            let ours = [amx, !opts.ort_group_norm];
            super::decoder_graph(dir, m, entry, &onnx, ours, opts.thread_count())?
        }
        // Lower-precision bundles keep their caches in f16 (half the memory; their accuracy
        // is measured against fp32 with this runtime); fp32 bundles keep f32.
        GraphRole::VarStep if !opts.ort_attention => {
            let f16_cache = m.precision != llamagen_bundle::Precision::Fp32;
            super::attention_graph(dir, &onnx, f16_cache)?
        }
        _ => None,
    };
    let (session, fused) = match rewritten {
        Some(graph) => graph.commit(builder)?,
        None => (commit_file(builder, &onnx.path)?, CpuKernels::default()),
    };
    for f in [&onnx, &weights] {
        f.check_unchanged()?;
    }
    Ok((session, fused))
}

/// The session options every CPU graph gets. `qdq`: ONNX Runtime's Q/DQ fusions on (see below
/// for why decoders turn them off).
fn builder(
    path: &Path,
    opts: &CpuOptions,
    activations: Activations,
    qdq: bool,
) -> Result<SessionBuilder, RuntimeError> {
    let env = crate::ort_env::environment()?;
    let err =
        |e: &dyn std::fmt::Display| RuntimeError::ort(format!("loading {}", path.display()), e);
    Session::builder(env)
        .map_err(|e| err(&e))?
        .with_memory_pattern(matches!(activations, Activations::Planned))
        .map_err(|e| err(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(&e))?
        // Weight-only int8 decoder convolutions never fuse into int8 kernels (no Q/DQ on their
        // activations), and with QDQ handling on, ONNX Runtime keeps each int8 weight's
        // DequantizeLinear in the graph: the convolution then runs on a weight made anew every
        // run, without its prepacked layout (VAR's VQVAE decode measured 2.17 s vs 1.84 s for
        // the same int8 bundle, 1.86 s in fp32). Off, the weights are folded to f32 once at
        // load: the same numbers, fp32's speed, at fp32's memory for the decoder.
        .with_quant_qdq(qdq)
        .map_err(|e| err(&e))?
        .with_intra_threads(opts.thread_count())
        .map_err(|e| err(&e))?
        .with_intra_op_spinning(opts.idle_spin)
        .map_err(|e| err(&e))?
        // The process-wide arena of `ort_env` (one for all graphs, not one each).
        .with_env_allocators()
        .map_err(|e| err(&e))
}

fn commit_file(mut builder: SessionBuilder, path: &Path) -> Result<Session, RuntimeError> {
    builder
        .commit_from_file(path)
        .map_err(|e| RuntimeError::ort(format!("loading {}", path.display()), e))
}

impl OrtCpu {
    pub fn load(dir: &Path, m: &Manifest, opts: &CpuOptions) -> Result<Self, RuntimeError> {
        let config = m.gpt()?.clone();
        let layers = config.n_layer;
        let gpt = session(dir, m, GraphRole::GptStep, opts, Activations::Planned)?;
        let (vq, kernels) =
            session_counting(dir, m, GraphRole::VqDecoder, opts, Activations::Arena)?;
        Ok(OrtCpu {
            gpt_probes: probes(&gpt),
            vq_probes: probes(&vq),
            kernels,
            gpt: Mutex::new(gpt),
            vq: Mutex::new(vq),
            layers,
            vocab: m.vocab_size(),
            config,
            names: CacheNames::new(layers),
        })
    }
}

/// Output `name` of a run of graph `role`, checked to have shape `expected`.
pub(crate) fn output_f32<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    role: GraphRole,
    name: &str,
    expected: Vec<usize>,
) -> Result<&'a [f32], RuntimeError> {
    output_of(outputs, role, name, expected)
}

/// The element type of output `name`, if it is a tensor.
fn output_type(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
) -> Option<TensorElementType> {
    outputs.get(name)?.dtype().tensor_type()
}

/// [`output_f32`] for any element type.
fn output_of<'a, T: ort::value::PrimitiveTensorElementType>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    role: GraphRole,
    name: &str,
    expected: Vec<usize>,
) -> Result<&'a [T], RuntimeError> {
    let value = outputs
        .get(name)
        .ok_or_else(|| RuntimeError::ort(role.name(), format!("no output {name}")))?;
    let (s, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| RuntimeError::ort(format!("output {name}"), e))?;
    let got: Vec<usize> = s.iter().map(|&d| d as usize).collect();
    if got != expected {
        return Err(RuntimeError::OutputShape {
            graph: role,
            what: name.to_string(),
            expected,
            got,
        });
    }
    Ok(data)
}

pub(crate) fn tensor<'a, T>(
    shape: Vec<usize>,
    data: &'a [T],
    what: &str,
) -> Result<SessionInputValue<'a>, RuntimeError>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    TensorRef::from_array_view((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| RuntimeError::ort(format!("input {what}"), e))
}

/// The calibration probe outputs (`probe.*`) of `s`; none in normal bundles.
pub(crate) fn probes(s: &Session) -> Vec<String> {
    s.outputs()
        .iter()
        .map(|o| o.name().to_string())
        .filter(|n| n.starts_with(PROBE_PREFIX))
        .collect()
}

/// Hands each probe output of a run to `probes`.
pub(crate) fn report_probes(
    outputs: &ort::session::SessionOutputs<'_>,
    names: &[String],
    probes: &mut dyn FnMut(&str, &[f32]),
) -> Result<(), RuntimeError> {
    for name in names {
        if let Some(value) = outputs.get(name.as_str()) {
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| RuntimeError::ort(format!("output {name}"), e))?;
            probes(name, data);
        }
    }
    Ok(())
}

impl Backend for OrtCpu {
    type State = KvCache;

    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn cpu_kernels(&self) -> CpuKernels {
        self.kernels
    }

    fn new_state(&self, rows: usize) -> Result<KvCache, RuntimeError> {
        let c = &self.config;
        Ok(KvCache::new(
            c.n_layer,
            rows,
            c.n_kv_head,
            c.max_len,
            c.head_dim,
        ))
    }

    /// The step graph reads every slot (masked ones with probability 0, which times a stale NaN
    /// is NaN), so all of them are zeroed. GPT-B at 256 px with CFG (2 rows, 38 MB of caches):
    /// 3.3 ms on the 2-core reference machine, 0.1% of its 3.2 s generation; zeroing is cheaper
    /// to land than masking with `Where` in the graph, which would need every bundle recompiled.
    fn reset_state(&self, cache: &mut KvCache) -> Result<(), RuntimeError> {
        cache.clear();
        Ok(())
    }

    #[cfg(feature = "test-hooks")]
    fn poison_state(&self, cache: &mut KvCache, value: f32) {
        cache.fill(value);
    }

    fn gpt_step(
        &self,
        input: StepInput<'_>,
        cache: &mut KvCache,
        logits: &mut Vec<f32>,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError> {
        let StepInput { ids, position } = input;
        let batch = cache.batch;
        let pos = [position as i64];
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(2 + 2 * self.layers);
        inputs.push((
            io_names::INPUT_IDS.into(),
            tensor(vec![batch, 1], ids, io_names::INPUT_IDS)?,
        ));
        inputs.push((
            io_names::POSITION.into(),
            tensor(vec![1], &pos, io_names::POSITION)?,
        ));
        self.names.push_inputs(&mut inputs, cache)?;
        let mut session = self.gpt.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(inputs)
            .map_err(|e| RuntimeError::ort("gpt step", e))?;

        let extract = |name: &str, expected: Vec<usize>| {
            output_f32(&outputs, GraphRole::GptStep, name, expected)
        };
        logits.clear();
        logits.extend_from_slice(extract(io_names::LOGITS, vec![batch, self.vocab])?);
        self.names
            .write_outputs(&outputs, GraphRole::GptStep, cache, position, 1)?;
        report_probes(&outputs, &self.gpt_probes, probes)
    }

    fn vq_decode(
        &self,
        tokens: &[i64],
        batch: usize,
        probes: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError> {
        let per_image = tokens.len() / batch.max(1);
        let input = tensor(vec![batch, per_image], tokens, io_names::VQ_TOKENS)?;
        let mut session = self.vq.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(vec![(Cow::from(io_names::VQ_TOKENS), input)])
            .map_err(|e| RuntimeError::ort("vq decode", e))?;
        let value = outputs
            .get(io_names::VQ_IMAGE)
            .ok_or_else(|| RuntimeError::ort("vq decode", "no output image"))?;
        let (_, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| RuntimeError::ort("vq decode output", e))?;
        let image = data.to_vec();
        report_probes(&outputs, &self.vq_probes, probes)?;
        Ok(image)
    }
}
