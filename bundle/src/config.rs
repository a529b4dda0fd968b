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

/// Largest model width (`dim`, `ch`, embedding dims) an architecture may have.
pub const MAX_DIM: usize = 1 << 16;
/// Most transformer layers an architecture may have.
pub const MAX_LAYERS: usize = 1024;

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
        use crate::check::{MAX_COND_TOKENS, MAX_IMAGE_SIZE, MAX_NUM_CLASSES, MAX_VOCAB};
        let max_tokens = (MAX_IMAGE_SIZE / 2) * (MAX_IMAGE_SIZE / 2);
        if block_size > max_tokens {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!("{block_size} image tokens is over the limit {max_tokens}"),
            });
        }
        let grid = (block_size as f64).sqrt().round() as usize;
        if grid * grid != block_size || block_size == 0 {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!("{block_size} image tokens is not a square grid"),
            });
        }
        for (field, v) in [
            ("n_layer", arch.n_layer),
            ("n_head", arch.n_head),
            ("dim", arch.dim),
        ] {
            if v == 0 {
                return Err(ConfigError::Config {
                    path: arch.name.clone(),
                    reason: format!("{field} must be at least 1"),
                });
            }
        }
        if arch.dim > MAX_DIM || arch.n_layer > MAX_LAYERS {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: format!(
                    "dim {} / n_layer {} over the limits {MAX_DIM} / {MAX_LAYERS}",
                    arch.dim, arch.n_layer
                ),
            });
        }
        if !arch.dim.is_multiple_of(arch.n_head) || !(arch.dim / arch.n_head).is_multiple_of(4) {
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
        for (option, v, limit) in [
            ("--codebook-size", vocab_size, MAX_VOCAB),
            ("--num-classes", num_classes, MAX_NUM_CLASSES),
            ("--cls-token-num", cls_token_num, MAX_COND_TOKENS),
        ] {
            if v > limit {
                return Err(ConfigError::InvalidOption {
                    option,
                    reason: format!("{v} is over the limit {limit}"),
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

    /// Number of weights (parameters) of the graph's initializers, for progress and sizes;
    /// `None` when it overflows.
    pub fn checked_parameter_count(&self) -> Option<usize> {
        let d = self.dim;
        let qkv = d
            .checked_mul(self.n_head.checked_add(self.n_kv_head.checked_mul(2)?)?)?
            .checked_mul(self.head_dim)?;
        let per_layer = qkv
            .checked_add(d.checked_mul(d)?)?
            .checked_add(d.checked_mul(3)?.checked_mul(self.ffn_hidden)?)?
            .checked_add(d.checked_mul(2)?)?;
        let embeddings = self
            .vocab_size
            .checked_add(self.class_rows)?
            .checked_mul(d)?;
        self.n_layer
            .checked_mul(per_layer)?
            .checked_add(embeddings)?
            .checked_add(d)?
            .checked_add(d.checked_mul(self.vocab_size)?)
    }

    /// [`Self::checked_parameter_count`], saturating (for display).
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count().unwrap_or(usize::MAX)
    }
}

/// Most ResnetBlocks per VQ decoder level.
pub const MAX_RES_BLOCKS: usize = 64;

/// Why VQ widths are refused: a level's channels `ch * ch_mult[i]` or `z_channels` over
/// [`MAX_DIM`] (or overflowing), or more than [`MAX_RES_BLOCKS`] blocks per level.
pub fn vq_width_problem(
    ch: usize,
    ch_mult: &[usize],
    z_channels: usize,
    num_res_blocks: usize,
) -> Option<String> {
    if num_res_blocks > MAX_RES_BLOCKS {
        return Some(format!(
            "num_res_blocks {num_res_blocks} is over the limit {MAX_RES_BLOCKS}"
        ));
    }
    if z_channels > MAX_DIM {
        return Some(format!(
            "z_channels {z_channels} is over the limit {MAX_DIM}"
        ));
    }
    for &m in ch_mult {
        if ch.checked_mul(m).is_none_or(|c| c > MAX_DIM) {
            return Some(format!(
                "ch {ch} * ch_mult {m} is over the limit {MAX_DIM} channels"
            ));
        }
    }
    None
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
        if arch.downsample == 0 {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: "downsample must be at least 1".into(),
            });
        }
        let levels = arch.ch_mult.len();
        if levels > crate::check::MAX_VQ_LEVELS {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: format!(
                    "{levels} ch_mult entries, over the limit {}",
                    crate::check::MAX_VQ_LEVELS
                ),
            });
        }
        if arch.ch == 0 || arch.z_channels == 0 || arch.ch_mult.contains(&0) {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason: "ch, z_channels and every ch_mult entry must be at least 1".into(),
            });
        }
        if let Some(reason) =
            vq_width_problem(arch.ch, &arch.ch_mult, arch.z_channels, arch.num_res_blocks)
        {
            return Err(ConfigError::Config {
                path: arch.name.clone(),
                reason,
            });
        }
        if image_size > crate::check::MAX_IMAGE_SIZE {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!(
                    "{image_size} is over the limit {}",
                    crate::check::MAX_IMAGE_SIZE
                ),
            });
        }
        for (option, v, limit) in [
            ("--codebook-size", codebook_size, crate::check::MAX_VOCAB),
            ("--codebook-embed-dim", codebook_embed_dim, MAX_DIM),
        ] {
            if v == 0 || v > limit {
                return Err(ConfigError::InvalidOption {
                    option,
                    reason: format!("{v} must be in 1..={limit}"),
                });
            }
        }
        if image_size == 0 {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!("must be at least the downsample factor {}", arch.downsample),
            });
        }
        if !image_size.is_multiple_of(arch.downsample) {
            return Err(ConfigError::InvalidOption {
                option: "--image-size",
                reason: format!(
                    "{image_size} is not a multiple of the downsample factor {} of {}",
                    arch.downsample, arch.name
                ),
            });
        }
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
