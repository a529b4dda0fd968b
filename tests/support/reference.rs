//! The naive reference (`llamagen_test_support::reference`) plus the one piece that needs the
//! compiler: reading its weights from an official-format checkpoint.
#![allow(dead_code)]

use std::path::Path;

pub use llamagen_test_support::reference::*;

/// Reads an official-format checkpoint (`.pt` zip or `.safetensors`) into [`Weights`], widening
/// every floating-point tensor to f32. Non-float buffers are skipped. Wrapper prefixes that a
/// reader might leave on keys (`model.`, `module.`, `state_dict.`) are stripped.
pub fn load_weights(path: &Path) -> Weights {
    use llamagen_compiler::checkpoint::Checkpoint;
    let ckpt = Checkpoint::open(path)
        .unwrap_or_else(|e| panic!("cannot open checkpoint {}: {e}", path.display()));
    let keys: Vec<String> = ckpt.keys().map(|k| k.to_string()).collect();
    let mut out = Weights::new();
    for key in keys {
        let t = ckpt
            .get(&key)
            .unwrap_or_else(|e| panic!("{}: tensor {key}: {e}", path.display()));
        if !t.dtype().is_float() {
            continue;
        }
        let shape = t.shape().to_vec();
        let data = t
            .to_f32()
            .unwrap_or_else(|e| panic!("{}: tensor {key} to f32: {e}", path.display()));
        let mut name = key.as_str();
        for prefix in ["model.", "module.", "state_dict."] {
            if let Some(rest) = name.strip_prefix(prefix) {
                name = rest;
            }
        }
        out.insert(name.to_string(), (shape, data));
    }
    out
}
