//! Launch wrappers: one Rust function per kernel, owning its launch configuration, so callers
//! pass device addresses and sizes only.

pub mod decode_gemm;
pub mod gpt;
pub mod gpt_split_attention;
pub mod sampler;
pub mod var;
pub mod vq;
pub mod vq_gemm;
mod vq_map;
