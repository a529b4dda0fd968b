//! Every name another program reads from a bundle, in one place: the graphs' inputs and outputs
//! (runtimes such as ours, Python onnxruntime, trtexec and Triton drive the graphs by them;
//! bundle.yaml records them too) and the initializers a native backend reads its weights from.

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
/// VQ decoder graph of a feature map (VAR's VQVAE): `f_hat` f32 `[batch, Cvae, side, side]`.
pub const VQ_FEATURES: &str = "f_hat";
/// VQ decoder graph: image, f32 `[batch, 3, size, size]`, about [-1, 1].
pub const VQ_IMAGE: &str = "image";

/// VAR step graph: the input embeddings of one scale's tokens, f32 `[batch, tokens, dim]`;
/// also the VAR embed graph's output (every scale's inputs, `[batch, all tokens, dim]`).
pub const INPUTS_EMBEDS: &str = "inputs_embeds";
/// VAR cond and embed graphs: class label per row, int64 `[batch]` (the null class
/// `num_classes` for the unconditional CFG rows).
pub const LABELS: &str = "labels";
/// VAR cond graph output, step graph input: every AdaLN's vectors of a row, f32
/// `[batch, 6 depth + 2, dim]`: per block `gamma1, gamma2, scale1, scale2, shift1, shift2`
/// (rows `6 i ..`), then the head's `scale, shift`. They depend on the label alone, so they are
/// computed once per request.
pub const ADALN: &str = "adaln";
/// VAR embed graph: how many scales of `tokens` are set, int64 `[1]`.
pub const SCALES_DONE: &str = "scales_done";

/// Calibration bundles only: extra graph outputs `probe.<op>` carrying an operator's input.
pub const PROBE_PREFIX: &str = "probe.";

/// Initializer names of the GPT step graph. GEMM weights are stored transposed (`[in, out]`,
/// the `.T` suffix) so the graph's `MatMul` reads them as they are; int8 bundles store
/// `<name>.int8` with a per-channel `<name>.scale` instead (see `initializers`).
pub mod gpt {
    /// Image-token rows, then the class rows (`[vocab + class_rows, dim]`).
    pub const EMBEDDINGS: &str = "embeddings";
    /// Final RMSNorm weight `[dim]`.
    pub const NORM: &str = "norm";
    /// Logits projection, `[dim, vocab]`.
    pub const OUTPUT: &str = "output.weight.T";

    /// Name of the stored (transposed) weight of checkpoint linear `key` (`...weight`).
    pub fn transposed(key: &str) -> String {
        format!("{key}.T")
    }
    /// Fused q|k|v projection of layer `i`, `[dim, (heads + 2 kv_heads) * head_dim]`.
    pub fn wqkv(i: usize) -> String {
        transposed(&format!("layers.{i}.attention.wqkv.weight"))
    }
    /// Attention output projection of layer `i`, `[heads * head_dim, dim]`.
    pub fn wo(i: usize) -> String {
        transposed(&format!("layers.{i}.attention.wo.weight"))
    }
    /// Fused SwiGLU w1|w3 of layer `i`, `[dim, 2 * ffn_hidden]`.
    pub fn w13(i: usize) -> String {
        transposed(&format!("layers.{i}.feed_forward.w13.weight"))
    }
    /// SwiGLU down projection of layer `i`, `[ffn_hidden, dim]`.
    pub fn w2(i: usize) -> String {
        transposed(&format!("layers.{i}.feed_forward.w2.weight"))
    }
    /// RMSNorm before attention of layer `i`, `[dim]`.
    pub fn attention_norm(i: usize) -> String {
        format!("layers.{i}.attention_norm")
    }
    /// RMSNorm before the feed-forward of layer `i`, `[dim]`.
    pub fn ffn_norm(i: usize) -> String {
        format!("layers.{i}.ffn_norm")
    }
}

/// Initializer names of the VQ decoder graph (besides the checkpoint's own decoder keys, see
/// `vq_plan`).
pub mod vq {
    /// The codebook, L2-normalised at compile time, f32 `[codebook_size, embed_dim]`.
    pub const NORMALIZED_CODEBOOK: &str = "quantize.embedding.normalized";
}

/// Initializer names of the VAR graphs (`var_step`, `var_embed`) that a native backend reads.
/// Linear weights are stored transposed (`<prefix>.weight.T`, `[in, out]`, at the bundle's
/// precision) with f32 biases `<prefix>.bias`; the compiler's graph builders
/// (`compiler/src/models/var`) store them under these names.
pub mod var {
    use super::gpt::transposed;
    use crate::var_config::PhiSharing;

    /// `[class_rows, dim]` (both graphs; the null class last).
    pub const CLASS_EMB: &str = "class_emb.weight";
    /// `shared_aln` models: the shared AdaLN linear `[dim, 6 dim]`.
    pub const SHARED_ADA_LIN: &str = "shared_ada_lin.1";
    /// The head's AdaLN linear `[dim, 2 dim]` (scale, shift).
    pub const HEAD_ADA_LIN: &str = "head_nm.ada_lin.1";
    /// The logits linear `[dim, vocab]`.
    pub const HEAD: &str = "head";
    /// Embed graph: the VQVAE codebook `[V, Cvae]`, raw (not normalised).
    pub const CODEBOOK: &str = "quantize.embedding.weight";
    /// Embed graph: `word_embed` linear `[Cvae, dim]`.
    pub const WORD_EMBED: &str = "word_embed";
    /// Embed graph: `pos_1LC + lvl_embed(scale) (+ pos_start on the first scale)`, f32
    /// `[tokens, dim]`.
    pub const POSITIONS: &str = "var.positions";

    /// The stored weight of linear `prefix` (`[in, out]`).
    pub fn weight(prefix: &str) -> String {
        transposed(&format!("{prefix}.weight"))
    }
    /// The f32 bias of linear `prefix`.
    pub fn bias(prefix: &str) -> String {
        format!("{prefix}.bias")
    }
    /// Linear `leaf` of block `i` (`attn.mat_qkv`, `attn.proj`, `ffn.fc1`, `ffn.fc2`,
    /// `ada_lin.1`).
    pub fn block(i: usize, leaf: &str) -> String {
        format!("blocks.{i}.{leaf}")
    }
    /// `cat(q_bias, 0, v_bias)` of block `i`, f32 `[3 dim]`.
    pub fn qkv_bias(i: usize) -> String {
        block(i, "attn.qkv_bias")
    }
    /// Per-head q multiplier of block `i`, f32 `[1, heads, 1, 1]` (already `exp(min(., ln
    /// 100))` with L2-normalised attention, else `0.25 / sqrt(head_dim)`).
    pub fn q_scale(i: usize) -> String {
        block(i, "attn.q_scale")
    }
    /// `shared_aln` models: block `i`'s `ada_gss`, f32 `[1, 6 dim]`.
    pub fn ada_gss(i: usize) -> String {
        block(i, "ada_gss")
    }
    /// Embed graph: prefix of phi convolution `k` (`<prefix>.weight` f32 `[Cvae, Cvae, 3, 3]`,
    /// `<prefix>.bias` f32 `[Cvae]`), as the checkpoint names it under `sharing`.
    pub fn phi(sharing: PhiSharing, k: usize) -> String {
        match sharing {
            PhiSharing::NonShared => format!("quantize.quant_resi.{k}"),
            PhiSharing::Shared => "quantize.quant_resi.qresi".into(),
            PhiSharing::PartiallyShared => format!("quantize.quant_resi.qresi_ls.{k}"),
        }
    }
}
