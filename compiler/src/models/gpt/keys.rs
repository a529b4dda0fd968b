//! Official GPT state-dict keys and the shapes our graphs expect of them (autoregressive/models/gpt.py).

use crate::config::GptConfig;

pub const TOK_EMBEDDINGS: &str = "tok_embeddings.weight";
pub const CLS_EMBEDDING: &str = "cls_embedding.embedding_table.weight";
pub const FINAL_NORM: &str = "norm.weight";
pub const OUTPUT: &str = "output.weight";

pub fn layer(i: usize, leaf: &str) -> String {
    format!("layers.{i}.{leaf}")
}

/// Every key a c2i GPT needs, with its official shape. Extra keys (e.g. `freqs_cis`) are ignored.
pub fn required(c: &GptConfig) -> Vec<(String, Vec<usize>)> {
    let d = c.dim;
    let qkv = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
    let mut keys = vec![
        (TOK_EMBEDDINGS.to_string(), vec![c.vocab_size, d]),
        (CLS_EMBEDDING.to_string(), vec![c.class_rows, d]),
        (FINAL_NORM.to_string(), vec![d]),
        (OUTPUT.to_string(), vec![c.vocab_size, d]),
    ];
    for i in 0..c.n_layer {
        keys.extend([
            (layer(i, "attention.wqkv.weight"), vec![qkv, d]),
            (layer(i, "attention.wo.weight"), vec![d, d]),
            (layer(i, "feed_forward.w1.weight"), vec![c.ffn_hidden, d]),
            (layer(i, "feed_forward.w3.weight"), vec![c.ffn_hidden, d]),
            (layer(i, "feed_forward.w2.weight"), vec![d, c.ffn_hidden]),
            (layer(i, "attention_norm.weight"), vec![d]),
            (layer(i, "ffn_norm.weight"), vec![d]),
        ]);
    }
    keys
}
