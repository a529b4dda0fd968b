//! VAR's four graphs on ONNX Runtime's CPU execution provider: the cond graph (labels ->
//! AdaLN vectors, once per request), the step (one scale's token block with the KV cache), the
//! embed graph (tokens -> next inputs and `f_hat`) and the VQVAE decoder. Shapes are checked on
//! every output.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;

use llamagen_bundle::names as io_names;
use llamagen_bundle::{GraphRole, Manifest, VarConfig};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorElementType;

use crate::backend::ort_cpu::{
    output_f32 as output, probes, report_probes, session, session_counting, tensor, Activations,
    CacheNames,
};
use crate::backend::{CpuKernels, CpuOptions};
use crate::error::RuntimeError;
use crate::kv_cache::KvCache;

pub(crate) struct VarSessions {
    cond: Mutex<Session>,
    step: Mutex<Session>,
    embed: Mutex<Session>,
    decoder: Mutex<Session>,
    /// The decoder's calibration probes (`probe.*` outputs; calibration bundles only).
    decoder_probes: Vec<String>,
    /// The nodes of the step and the decoder on our kernels.
    pub kernels: CpuKernels,
    names: CacheNames,
    /// The step session's CPU allocator (the shared arena), for the KV caches.
    arena: Mutex<Allocator>,
    /// The step takes its caches in f16.
    f16_cache: bool,
    /// The caches' length in slots.
    cache_slots: usize,
}

/// A generation's KV cache, in the element type the step takes.
pub(crate) enum VarCache {
    F32(KvCache<f32>),
    F16(KvCache<half::f16>),
}

/// Outputs of the embed graph for `rows` rows.
pub(crate) struct Embedded {
    /// `[rows, block, C]`: each row's inputs of the requested block of tokens.
    pub inputs: Vec<f32>,
    /// `[rows, Cvae, P, P]`.
    pub f_hat: Vec<f32>,
}

impl VarSessions {
    pub(crate) fn load(
        dir: &Path,
        m: &Manifest,
        c: &VarConfig,
        opts: &CpuOptions,
    ) -> Result<Self, RuntimeError> {
        let open = |role, act| -> Result<Mutex<Session>, RuntimeError> {
            Ok(Mutex::new(session(dir, m, role, opts, act)?))
        };
        let layers = c.depth;
        let (decoder, decoder_kernels) =
            session_counting(dir, m, GraphRole::VqDecoder, opts, Activations::Arena)?;
        let (step, step_kernels) =
            session_counting(dir, m, GraphRole::VarStep, opts, Activations::Arena)?;
        let arena = arena_allocator(&step)?;
        let past_key = step
            .inputs()
            .iter()
            .find(|i| i.name() == io_names::past_key(0))
            .map(|i| i.dtype().clone());
        let f16_cache = past_key
            .as_ref()
            .is_some_and(|t| t.tensor_type() == Some(TensorElementType::Float16));
        // The bundle's step declares caches of every token's slots; where our fused attention
        // took them, their length is free, and the last scale's slots are left out: nothing
        // reads them (the generation ends there). VAR-d16: 424 of 680 slots, 35 MB less.
        let declared = past_key
            .as_ref()
            .and_then(|t| t.tensor_shape().and_then(|s| s.get(2).copied()))
            .filter(|&d| d > 0);
        let cache_slots = match declared {
            Some(d) => d as usize,
            None => c.scale_range(c.scales() - 1).start.max(1),
        };
        Ok(VarSessions {
            cond: open(GraphRole::VarCond, Activations::Arena)?,
            step: Mutex::new(step),
            kernels: step_kernels.plus(decoder_kernels),
            embed: open(GraphRole::VarEmbed, Activations::Arena)?,
            decoder_probes: probes(&decoder),
            decoder: Mutex::new(decoder),
            names: CacheNames::new(layers),
            arena: Mutex::new(arena),
            f16_cache,
            cache_slots,
        })
    }

    /// A zeroed KV cache for `rows` rows, in ONNX Runtime's CPU arena: after a request the
    /// arena holds the VQ decoder's freed activations, which the next request's cache then
    /// reuses; a heap cache came on top of them (VAR-d16 int8: peak RSS 829 MB with the heap
    /// cache, 725 in the arena). f16 where the step takes its caches in f16 (lower-precision
    /// bundles on our fused attention), of `cache_slots` slots.
    pub(crate) fn new_cache(&self, c: &VarConfig, rows: usize) -> Result<VarCache, RuntimeError> {
        let arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        let dims = (c.depth, rows, c.num_heads, self.cache_slots, c.head_dim);
        let err = |e| RuntimeError::ort("var KV cache", e);
        Ok(if self.f16_cache {
            VarCache::F16(
                KvCache::in_arena(&arena, dims.0, dims.1, dims.2, dims.3, dims.4).map_err(err)?,
            )
        } else {
            VarCache::F32(
                KvCache::in_arena(&arena, dims.0, dims.1, dims.2, dims.3, dims.4).map_err(err)?,
            )
        })
    }

    /// The cond graph on `labels`: every AdaLN's vectors, `[rows, 6 depth + 2, C]`.
    pub(crate) fn cond(&self, c: &VarConfig, labels: &[i64]) -> Result<Vec<f32>, RuntimeError> {
        let rows = labels.len();
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![(
            io_names::LABELS.into(),
            tensor(vec![rows], labels, io_names::LABELS)?,
        )];
        let mut session = self.cond.lock().unwrap_or_else(|p| p.into_inner());
        let out = session
            .run(inputs)
            .map_err(|e| RuntimeError::ort("var cond", e))?;
        let dims = vec![rows, adaln_rows(c), c.embed_dim];
        Ok(output(&out, GraphRole::VarCond, io_names::ADALN, dims)?.to_vec())
    }

    /// The embed graph on `tokens` `[rows, tokens_total]` with `scales_done` scales set; of
    /// its inputs for every token, only `block`'s are copied out (the step's next input).
    pub(crate) fn embed(
        &self,
        c: &VarConfig,
        tokens: &[i64],
        labels: &[i64],
        scales_done: usize,
        block: std::ops::Range<usize>,
    ) -> Result<Embedded, RuntimeError> {
        let rows = labels.len();
        let done = [scales_done as i64];
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                io_names::VQ_TOKENS.into(),
                tensor(vec![rows, c.tokens], tokens, io_names::VQ_TOKENS)?,
            ),
            (
                io_names::SCALES_DONE.into(),
                tensor(vec![1], &done, io_names::SCALES_DONE)?,
            ),
            (
                io_names::LABELS.into(),
                tensor(vec![rows], labels, io_names::LABELS)?,
            ),
        ];
        let mut session = self.embed.lock().unwrap_or_else(|p| p.into_inner());
        let out = session
            .run(inputs)
            .map_err(|e| RuntimeError::ort("var embed", e))?;
        let p = c.last_side();
        let role = GraphRole::VarEmbed;
        let all = output(
            &out,
            role,
            io_names::INPUTS_EMBEDS,
            vec![rows, c.tokens, c.embed_dim],
        )?;
        let d = c.embed_dim;
        let inputs = all
            .chunks(c.tokens * d)
            .flat_map(|row| &row[block.start * d..block.end * d])
            .copied()
            .collect();
        Ok(Embedded {
            inputs,
            f_hat: output(&out, role, io_names::VQ_FEATURES, vec![rows, c.cvae, p, p])?.to_vec(),
        })
    }

    /// One scale: `x` `[rows, n, C]` at cache slot `position` with the cond graph's `adaln`;
    /// writes the new keys and values into `cache` (but the last scale's) and the logits
    /// `[rows, n, V]` into `logits`.
    pub(crate) fn step(
        &self,
        c: &VarConfig,
        x: &[f32],
        adaln: &[f32],
        position: usize,
        cache: &mut VarCache,
        logits: &mut Vec<f32>,
    ) -> Result<(), RuntimeError> {
        let ada_dims = [adaln_rows(c), c.embed_dim];
        let rows = adaln.len() / (ada_dims[0] * ada_dims[1]).max(1);
        let n = x.len() / (rows * c.embed_dim).max(1);
        let pos = [position as i64];
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + 2 * c.depth);
        inputs.push((
            io_names::INPUTS_EMBEDS.into(),
            tensor(vec![rows, n, c.embed_dim], x, io_names::INPUTS_EMBEDS)?,
        ));
        inputs.push((
            io_names::ADALN.into(),
            tensor(vec![rows, ada_dims[0], ada_dims[1]], adaln, io_names::ADALN)?,
        ));
        inputs.push((
            io_names::POSITION.into(),
            tensor(vec![1], &pos, io_names::POSITION)?,
        ));
        match &*cache {
            VarCache::F32(c) => self.names.push_inputs(&mut inputs, c)?,
            VarCache::F16(c) => self.names.push_inputs(&mut inputs, c)?,
        }
        let mut session = self.step.lock().unwrap_or_else(|p| p.into_inner());
        let out = session
            .run(inputs)
            .map_err(|e| RuntimeError::ort("var step", e))?;
        let role = GraphRole::VarStep;
        logits.clear();
        logits.extend_from_slice(output(
            &out,
            role,
            io_names::LOGITS,
            vec![rows, n, c.vocab_size],
        )?);
        // The last scale's keys and values are never read (and may have no slots).
        if position + n >= c.tokens {
            return Ok(());
        }
        match cache {
            VarCache::F32(c) => self.names.write_outputs(&out, role, c, position, n)?,
            VarCache::F16(c) => self.names.write_outputs(&out, role, c, position, n)?,
        }
        Ok(())
    }

    /// The VQVAE decoder on `f_hat` `[rows, Cvae, P, P]`: images `[rows, 3, size, size]`;
    /// calibration probes go to `on_probe`.
    pub(crate) fn decode(
        &self,
        c: &VarConfig,
        f_hat: &[f32],
        rows: usize,
        size: usize,
        on_probe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>, RuntimeError> {
        let p = c.last_side();
        let input = tensor(vec![rows, c.cvae, p, p], f_hat, io_names::VQ_FEATURES)?;
        let mut session = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
        let out = session
            .run(vec![(Cow::from(io_names::VQ_FEATURES), input)])
            .map_err(|e| RuntimeError::ort("vq decode", e))?;
        report_probes(&out, &self.decoder_probes, on_probe)?;
        Ok(output(
            &out,
            GraphRole::VqDecoder,
            io_names::VQ_IMAGE,
            vec![rows, 3, size, size],
        )?
        .to_vec())
    }
}

/// Rows of `adaln`: six per block, two for the head.
fn adaln_rows(c: &VarConfig) -> usize {
    6 * c.depth + 2
}

/// The CPU arena allocator `session` runs on.
fn arena_allocator(session: &Session) -> Result<Allocator, RuntimeError> {
    let err = |e: ort::Error| RuntimeError::ort("var step allocator", e);
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(err)?;
    Allocator::new(session, info).map_err(err)
}
