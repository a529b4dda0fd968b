//! llamagen-compiler: official LlamaGen checkpoints -> typed graph IR -> ONNX bundles.
//!
//! Data flow: [`checkpoint`] reads `.pt` / `.safetensors` files without executing code,
//! [`config`] holds the model zoo (graphs/*.yaml), [`models`] maps checkpoint keys onto graphs
//! built with the [`ir`] builder, [`onnx`] lowers the IR to protobuf with external weights, and
//! [`bundle`] writes the bundle directory and its `bundle.yaml` manifest atomically;
//! [`calibrated`] compiles lower-precision bundles, calibrated and measured against fp32.

pub mod bundle;
pub mod calibrated;
pub mod checkpoint;
pub mod compile;
pub mod compile_var;
pub mod config;
mod error;
pub mod ir;
pub mod models;
pub mod onnx;
pub mod var_calibration;

pub use error::Error;
/// Graph input/output and initializer names: the bundle contract's.
pub use llamagen_bundle::names as io_names;
