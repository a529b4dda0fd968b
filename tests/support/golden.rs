//! The official fixtures (`tests/golden`, see `llamagen_test_support::paths`) and bundle helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use llamagen_compiler::compile::{compile, CompileOptions, Weights};

/// The official tiny c2i fixtures (`tests/golden/tiny-c2i`; `LLAMAGEN_GOLDEN` overrides the
/// folder that holds it).
pub fn tiny_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-c2i")
}

/// `tests/fixtures/<name>` as a string (the compile options take model names or YAML paths).
pub fn fixture(name: &str) -> String {
    llamagen_test_support::fixture(name).display().to_string()
}

/// Compile options of the golden tiny model (see its README.json).
pub fn tiny_options(out: &Path, weights: Weights) -> CompileOptions {
    CompileOptions {
        gpt_model: fixture("tiny-gpt.yaml"),
        vq_model: fixture("tiny-vq.yaml"),
        weights,
        image_size: 8,
        downsample_size: Some(2),
        codebook_size: 512,
        codebook_embed_dim: 8,
        num_classes: 10,
        out: out.to_path_buf(),
        ..CompileOptions::default()
    }
}

/// Compiles the golden checkpoints into `out`.
pub fn compile_tiny(out: &Path) -> llamagen_compiler::bundle::Manifest {
    let dir = tiny_dir();
    let weights = Weights::Checkpoints {
        gpt: dir.join("gpt.pt"),
        vq: dir.join("vq.pt"),
    };
    compile(&tiny_options(out, weights), &mut |_| {}).expect("compile golden tiny model")
}

pub fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    match llamagen_runtime::npy::read_npy(path).expect("read npy") {
        (shape, llamagen_runtime::npy::NpyData::F32(v)) => (shape, v),
        _ => panic!("{}: expected float32", path.display()),
    }
}

pub fn read_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    match llamagen_runtime::npy::read_npy(path).expect("read npy") {
        (shape, llamagen_runtime::npy::NpyData::I64(v)) => (shape, v),
        _ => panic!("{}: expected int64", path.display()),
    }
}

/// The official tiny VAR fixtures (`tests/golden/tiny-var`).
pub fn tiny_var_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-var")
}

/// Compile options of the golden tiny VAR (see its README.json) at `precision`.
pub fn tiny_var_options(
    out: &Path,
    weights: llamagen_compiler::compile_var::VarWeights,
    precision: llamagen_compiler::bundle::Precision,
) -> llamagen_compiler::compile_var::VarCompileOptions {
    llamagen_compiler::compile_var::VarCompileOptions {
        var_model: fixture("tiny-var.yaml"),
        vae_model: Some(fixture("tiny-vae.yaml")),
        weights,
        image_size: Some(64),
        precision,
        dynamic_int8: false,
        conv_calibration: None,
        out: out.to_path_buf(),
    }
}

/// Compiles the golden tiny VAR checkpoints into `out` at `precision`.
pub fn compile_tiny_var(
    out: &Path,
    precision: llamagen_compiler::bundle::Precision,
) -> llamagen_compiler::bundle::Manifest {
    compile_tiny_var_with(out, precision, false)
}

/// [`compile_tiny_var`], with int8 activations quantized at run time when `dynamic_int8`.
pub fn compile_tiny_var_with(
    out: &Path,
    precision: llamagen_compiler::bundle::Precision,
    dynamic_int8: bool,
) -> llamagen_compiler::bundle::Manifest {
    let dir = tiny_var_dir();
    let weights = llamagen_compiler::compile_var::VarWeights::Checkpoints {
        var: dir.join("var.pth"),
        vae: dir.join("vae.pth"),
    };
    let opts = llamagen_compiler::compile_var::VarCompileOptions {
        dynamic_int8,
        ..tiny_var_options(out, weights, precision)
    };
    llamagen_compiler::compile_var::compile_var(&opts, &mut |_| {})
        .expect("compile golden tiny VAR")
}
