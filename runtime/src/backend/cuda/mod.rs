//! The CUDA backend: the whole GPT decode step (embedding, RMSNorm, rotary + KV-cache write,
//! decode attention, SwiGLU, residual adds, logits, CFG, sampling) as our own NVRTC kernels plus
//! cuBLAS GEMMs, captured once per (rows, max_len) into a CUDA graph and replayed per token with
//! no host synchronisation; and the VQ decoder as GEMM-based convolutions.
//!
//! Shape contract (fp16 weights and KV caches, f32 accumulation, norms and softmax):
//! - residual stream `x` f32 `[rows, dim]`; normed activations f16 `[rows, dim]`;
//! - `qkv` f16 `[rows, (heads + 2 kv_heads) * head_dim]` (q heads, then k, then v);
//! - caches f16 per layer `[rows, kv_heads, max_len, head_dim]`, written at slot `pos`;
//! - logits f32 `[rows, vocab]`; rows are `[cond; uncond]` with CFG, as on the CPU.
//!
//! Everything a request changes (ids, position, step, sampling parameters, seed) lives in device
//! memory, because kernel arguments are frozen when the graph is captured.
//!
//! The code is generic over [`device::Device`]: `driver` runs it on a GPU through cudarc, `emu`
//! runs the same kernel sources on the host so the whole backend is tested without a GPU.

pub mod device;
pub mod kernels;
pub mod ops;
pub mod weights;

#[cfg(feature = "cuda")]
pub mod driver;
#[cfg(feature = "cuda")]
mod gemm_map;
#[cfg(feature = "cuda")]
pub mod libs;
#[cfg(feature = "cuda")]
pub mod nvrtc;

#[cfg(feature = "cuda-emu")]
pub mod emu;

pub mod backend;
pub mod gpt;
pub mod vq;
mod vq_weights;
