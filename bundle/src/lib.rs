//! llamagen-bundle: the contract between the compiler, which writes bundles, and every runtime
//! that reads them (the ONNX Runtime backends and the native CUDA backend). Nothing here knows
//! how a graph is built or run.
//!
//! - [`manifest`]: the `bundle.yaml` types ([`Precision`], [`GraphRole`], the resolved
//!   [`config`]s, how to drive the graphs), [`verify`] loads and checks them, [`files`] writes
//!   bundles atomically;
//! - [`names`]: every graph input, output and initializer name, defined once;
//! - [`onnx_proto`] and [`initializers`]: the ONNX subset we write and a reader of a graph's
//!   initializers (any stored precision, as f32);
//! - [`var_config`]: VAR's architecture files and resolved config;
//! - [`rotary`] and [`vq_plan`]: derived tables and structure both sides must agree on;
//! - [`sampling`] and [`philox`]: the sampling options and the counter-based random stream that
//!   the CPU and device samplers share;
//! - [`site_packages`]: where pip-installed native libraries live, for every backend's finder.

pub mod check;
mod check_graph;
pub mod check_var;
pub mod config;
pub mod confine;
pub mod files;
pub mod initializers;
pub mod manifest;
pub mod names;
pub mod onnx_proto;
pub mod philox;
pub mod resample;
pub mod rotary;
pub mod sampling;
pub mod site_packages;
pub mod tensor_type;
mod var_arch;
pub mod var_config;
pub mod verify;
pub mod vq_plan;

pub use config::{GptConfig, VqConfig};
pub use manifest::{
    FileEntry, GraphEntry, GraphRole, IoSpec, Manifest, ModelFamily, Precision, MANIFEST_FILE,
    SCHEMA_VERSION,
};
pub use sampling::{SamplingOptions, TopPRule};
pub use var_config::{VaeArch, VarArch, VarConfig};
pub use verify::{load_manifest, BundleError};
