//! Dev-only helpers shared by every test crate of the workspace. Nothing here is built into a
//! shipped binary. It depends on no crate of the workspace but, behind its `cuda` feature, the
//! CUDA crate whose tests use it: the runtime and the compiler dev-depend on it, so it must not
//! depend on them.
//!
//! - `device` (feature `cuda`): the CUDA tests' `device_tests!` macro, random inputs and
//!   typed uploads/downloads over any `llamagen_cuda::device::Device`.
//! - [`paths`]: where the golden fixtures (`tests/golden`, copies of `shared/golden`, produced
//!   by the official code) and the small test inputs (`tests/fixtures`) are, on a checkout or in
//!   a carried GPU kit.
//! - [`tolerance`]: the one element-wise [`Tolerance`] type of the numeric tests and its named
//!   levels (`EXACT`, `FP32_LOGITS`, `FP32_IMAGE`, the kernel levels, ...).
//! - [`precision`]: accuracy bars of lower-precision bundles vs fp32 ([`PrecisionLevel`]:
//!   cosine and PSNR figures).
//! - [`reference`]: an independent naive f32 reference of the official GPT and VQ decoder.
//! - [`torch`]: a writer of official-format PyTorch checkpoints without torch, for fixtures of
//!   any size and the checkpoint reader's round-trip tests.

#[cfg(feature = "cuda")]
pub mod device;
pub mod paths;
pub mod precision;
pub mod reference;
pub mod threads;
pub mod tolerance;
pub mod torch;

pub use paths::{fixture, golden_dir, test_data_root};
pub use precision::{PrecisionLevel, FP16_VS_FP32, INT8_QDQ_VS_FP32_TINY, INT8_VS_FP32};
pub use tolerance::{
    range_of, Measured, Real, Tolerance, EXACT, FP16_DEVICE_IMAGE, FP32_IMAGE, FP32_LOGITS,
    FP32_PROBS, GEMM_FP16_OUT, GEMM_FP32_OUT, GPT_KERNEL_FP16_ATTN, GPT_KERNEL_FP16_OUT,
    VAR_KERNEL_FP16_MMA_ATTN, VAR_KERNEL_FP32, VQ_KERNEL_FP16_ATTN, VQ_KERNEL_FP16_NORM,
    VQ_KERNEL_FP16_OUT, VQ_KERNEL_FP32_GEMM, VQ_KERNEL_FP32_NORMALISE,
};
