//! Resolved model configurations, as bundle.yaml records them: the architecture of one official
//! size (the compiler's zoo, `graphs/*.yaml`) plus the per-run options of `sample_c2i.py`
//! (codebook size, image size, ...). Every derived size (head_dim, SwiGLU hidden, cache length)
//! is computed here once, for the compiler and every runtime.

use serde::{Deserialize, Serialize};

/// A configuration that cannot be built; names the option or architecture at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
}

/// Architecture of one GPT size, as in `graphs/gpt-*.yaml`.
#[derive(Clone, Debug, Deserialize)]
pub struct GptArch {
    pub name: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub dim: usize,
    pub released_type: String,
}

/// Architecture of one VQ tokenizer, as in `graphs/vq-*.yaml`.
#[derive(Clone, Debug, Deserialize)]
pub struct VqArch {
    pub name: String,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub downsample: usize,
}

/// `find_multiple` of the official code: n rounded up to a multiple of k.
pub fn find_multiple(n: usize, k: usize) -> usize {
    n.div_ceil(k) * k
}

/// A fully resolved class-conditional GPT: architecture plus the run options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub name: String,
    pub model_type: String,
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub vocab_size: usize,
    pub num_classes: usize,
    pub cls_token_num: usize,
    /// Image tokens per image: (image_size / downsample)^2.
    pub block_size: usize,
    /// Rows of the class embedding table: num_classes + 1 (the null class used for CFG).
    pub class_rows: usize,
    /// Static KV-cache length: find_multiple(cls_token_num + block_size, 8), as setup_caches.
    pub max_len: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
}

impl GptConfig {
    /// `block_size` must be a square (the 2D rotary grid).
    pub fn new(
        arch: &GptArch,
        vocab_size: usize,
        num_classes: usize,
        cls_token_num: usize,
        block_size: usize,
    ) -> Result<Self, ConfigError> {
        let grid = (block_size as f64).sqrt().round() as usize;
        if grid * grid != block_size || block_size == 0 {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!("{block_size} image tokens is not a square grid"),
            });
        }
        if arch.dim % arch.n_head != 0 || (arch.dim / arch.n_head) % 4 != 0 {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: format!(
                    "dim {} / n_head {} must give a head_dim divisible by 4 (2D rotary)",
                    arch.dim, arch.n_head
                ),
            });
        }
        for (option, v) in [
            ("--codebook-size", vocab_size),
            ("--num-classes", num_classes),
            ("--cls-token-num", cls_token_num),
        ] {
            if v == 0 {
                return Err(ConfigError::InvalidOption {
                    option,
                    reason: "must be at least 1".into(),
                });
            }
        }
        // SwiGLU hidden size: find_multiple(int(2 * 4 * dim / 3), 256), as FeedForward.
        let ffn_hidden = find_multiple(2 * (4 * arch.dim) / 3, 256);
        Ok(GptConfig {
            name: arch.name.clone(),
            model_type: "c2i".into(),
            dim: arch.dim,
            n_layer: arch.n_layer,
            n_head: arch.n_head,
            n_kv_head: arch.n_head,
            head_dim: arch.dim / arch.n_head,
            ffn_hidden,
            vocab_size,
            num_classes,
            cls_token_num,
            block_size,
            class_rows: num_classes + 1,
            max_len: find_multiple(cls_token_num + block_size, 8),
            rope_base: 10000.0,
            norm_eps: 1e-5,
        })
    }

    /// Side of the square token grid.
    pub fn grid(&self) -> usize {
        (self.block_size as f64).sqrt().round() as usize
    }

    /// Number of weights (parameters) of the graph's initializers, for progress and sizes.
    pub fn parameter_count(&self) -> usize {
        let d = self.dim;
        let per_layer = d * (self.n_head + 2 * self.n_kv_head) * self.head_dim
            + d * d
            + 3 * d * self.ffn_hidden
            + 2 * d;
        self.n_layer * per_layer + (self.vocab_size + self.class_rows) * d + d + d * self.vocab_size
    }
}

/// A resolved VQ decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqConfig {
    pub name: String,
    pub codebook_size: usize,
    pub codebook_embed_dim: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub downsample: usize,
    /// Side of the token grid the decoder takes (image_size / downsample).
    pub grid: usize,
    pub image_size: usize,
    /// Kernel side of `post_quant_conv`: 1 in LlamaGen's VQModel, 3 in VAR's VQVAE
    /// (`quant_conv_ks`). Bundles written before the field existed are LlamaGen's.
    #[serde(default = "one")]
    pub post_quant_kernel: usize,
}

fn one() -> usize {
    1
}

impl VqConfig {
    pub fn new(
        arch: &VqArch,
        codebook_size: usize,
        codebook_embed_dim: usize,
        image_size: usize,
    ) -> Result<Self, ConfigError> {
        if image_size == 0 {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!("must be at least the downsample factor {}", arch.downsample),
            });
        }
        if image_size % arch.downsample != 0 {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!(
                    "{image_size} is not a multiple of the downsample factor {} of {}",
                    arch.downsample, arch.name
                ),
            });
        }
        let levels = arch.ch_mult.len();
        if levels == 0 || 1usize << (levels - 1) != arch.downsample {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: format!(
                    "{} decoder levels do not give downsample {}",
                    levels, arch.downsample
                ),
            });
        }
        Ok(VqConfig {
            name: arch.name.clone(),
            codebook_size,
            codebook_embed_dim,
            ch: arch.ch,
            ch_mult: arch.ch_mult.clone(),
            num_res_blocks: arch.num_res_blocks,
            z_channels: arch.z_channels,
            downsample: arch.downsample,
            grid: image_size / arch.downsample,
            image_size,
            post_quant_kernel: 1,
        })
    }
}
