//! llamagen-runtime: load a bundle and generate images.
//!
//! ```no_run
//! use llamagen_runtime::{GenerateRequest, Pipeline, PipelineOptions};
//! let pipeline = Pipeline::load("bundle".as_ref(), &PipelineOptions::default())?;
//! let req = GenerateRequest { labels: vec![207, 360], seed: 0, ..Default::default() };
//! let out = pipeline.generate_tokens(&req, &mut |_, _| {})?;
//! let images = pipeline.decode_images(&out.tokens)?;
//! # Ok::<(), llamagen_runtime::RuntimeError>(())
//! ```

pub mod amx;
pub mod attention;
pub mod backend;
pub mod bench;
pub mod compare;
#[cfg(target_arch = "x86_64")]
mod custom_op;
pub mod doctor;
mod error;
pub mod group_norm;
pub mod image;
pub mod kv_cache;
pub mod npy;
pub mod ort_env;
mod out_file;
pub mod parallel;
mod pipeline;
mod request;
mod runner;
pub mod sampler;
#[cfg(target_arch = "x86_64")]
mod simd;
mod var;

pub use backend::{
    BackendChoice, BackendKind, CpuKernels, CpuOptions, CudaAttention, CudaOptions, DecodeGemm,
    DeviceWeights, VqConv,
};
pub use error::{BundleError, RuntimeError};
/// The Philox stream both samplers draw from (the bundle contract's).
pub use llamagen_bundle::philox as rng;
pub use llamagen_bundle::{load_manifest, Manifest, ModelFamily};
pub use pipeline::{Images, Observer, Pipeline, PipelineOptions, TokenOutput};
pub use request::{GenerateRequest, RowSeed, RunOptions};
pub use sampler::SamplingOptions;
