//! Paths of the official fixtures (shared/golden beside the checkout) and bundle helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use llamagen_compiler::compile::{compile, CompileOptions, Weights};

/// `shared/golden/tiny-c2i`, beside the repository (override with LLAMAGEN_GOLDEN).
pub fn tiny_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LLAMAGEN_GOLDEN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/tiny-c2i")
}

/// `tests/fixtures/<name>` of the checkout the tests were built in, else of the current
/// directory (test binaries carried to another machine run from a copy of the repository).
pub fn fixture(name: &str) -> String {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures")
    };
    dir.join(name).display().to_string()
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
