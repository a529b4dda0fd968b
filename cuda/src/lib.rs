//! llamagen-cuda: LlamaGen bundles on NVIDIA GPUs. The whole GPT decode step (embedding,
//! RMSNorm, rotary + KV-cache write, decode attention, SwiGLU, residual adds, logits, CFG,
//! sampling) as our own NVRTC kernels plus cuBLAS GEMMs, captured once per (rows, max_len) into a
//! CUDA graph and replayed per token with no host synchronisation; and the VQ decoder as
//! GEMM-based convolutions.
//!
//! Shape contract (fp16 weights and KV caches, f32 accumulation, norms and softmax; int8 bundles
//! keep their int8 GPT GEMM weights and run them through our weight-streaming decode GEMM, which
//! also takes f16 weights when chosen ([`gemm_weight::DecodeGemm`]) and fuses RMSNorm and SwiGLU;
//! VAR and the VQ decoder stay f16):
//! - residual stream `x` f32 `[rows, dim]`; normed activations f16 `[rows, dim]`;
//! - `qkv` f16 `[rows, (heads + 2 kv_heads) * head_dim]` (q heads, then k, then v);
//! - caches f16 per layer `[rows, kv_heads, max_len, head_dim]`, written at slot `pos`;
//! - logits f32 `[rows, vocab]`; rows are `[cond; uncond]` with CFG, as on the CPU.
//!
//! Everything a request changes (ids, position, step, sampling parameters, seed) lives in device
//! memory, because kernel arguments are frozen when the graph is captured.
//!
//! VAR bundles run on [`var_engine::VarEngine`]: each scale's token block through AdaLN blocks
//! over the KV cache with no mask, VAR's guidance and the same device sampler, the between-scale
//! work (codebook lookup, resampling, phi, `word_embed`) on the device, one graph per scale.
//!
//! The code is generic over [`device::Device`]: [`driver`] (feature `driver`) runs it on a GPU
//! through cudarc, [`emu`] (feature `emu`) runs the same kernel sources on the host so the whole
//! backend is tested without a GPU. [`engine::Engine`] is what a runtime drives; [`doctor`] says
//! whether this machine can run it.

pub mod device;
pub mod doctor;
pub mod engine;
mod error;
pub mod gemm_weight;
pub mod gpt;
pub mod kernels;
pub mod ops;
mod session_pool;
pub mod var;
pub mod var_engine;
mod var_weights;
pub mod vq;
mod vq_weights;
pub mod weights;

#[cfg(feature = "driver")]
pub mod driver;
#[cfg(feature = "driver")]
mod gemm_map;
#[cfg(feature = "driver")]
pub mod kernel_cache;
#[cfg(feature = "driver")]
pub mod libs;
#[cfg(feature = "driver")]
pub mod nvrtc;

#[cfg(feature = "emu")]
pub mod emu;

pub use engine::{Engine, Generated};
pub use error::CudaError;
pub use var_engine::VarEngine;
