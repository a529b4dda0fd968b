//! Public input/output names of every graph we emit, in one place. Runtimes (ours, Python
//! onnxruntime, trtexec, Triton) drive the graphs by these names; bundle.yaml records them too.

/// GPT step graph: token ids `[batch, 1]` (image tokens `0..vocab`, class `c` as `vocab + c`).
pub const INPUT_IDS: &str = "input_ids";
/// GPT step graph: cache slot of `input_ids[:, 0]`, int64 `[1]`.
pub const POSITION: &str = "position";
/// GPT step graph: logits of the last input position, f32 `[batch, vocab]`.
pub const LOGITS: &str = "logits";

/// Cache input of layer `i`, f32 `[batch, heads, max_len, head_dim]`.
pub fn past_key(i: usize) -> String {
    format!("past_key.{i}")
}
pub fn past_value(i: usize) -> String {
    format!("past_value.{i}")
}
/// New cache slice of layer `i`, f32 `[batch, heads, 1, head_dim]`, to be written at `position`.
pub fn present_key(i: usize) -> String {
    format!("present_key.{i}")
}
pub fn present_value(i: usize) -> String {
    format!("present_value.{i}")
}

/// VQ decoder graph: codebook indices, int64 `[batch, grid * grid]` (row-major token order).
pub const VQ_TOKENS: &str = "tokens";
/// VQ decoder graph: image, f32 `[batch, 3, size, size]`, about [-1, 1].
pub const VQ_IMAGE: &str = "image";
