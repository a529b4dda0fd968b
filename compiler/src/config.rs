//! Model configurations: the zoo in `graphs/*.yaml` (architecture sizes, embedded at build time)
//! resolved with the per-run options of `sample_c2i.py` (codebook size, image size, ...).

use serde::{Deserialize, Serialize};

use crate::Error;

/// The YAML files of `graphs/`, embedded so the binaries work from any directory.
const ZOO: &[(&str, &str)] = &[
    ("gpt-b.yaml", include_str!("../../graphs/gpt-b.yaml")),
    ("gpt-l.yaml", include_str!("../../graphs/gpt-l.yaml")),
    ("gpt-xl.yaml", include_str!("../../graphs/gpt-xl.yaml")),
    ("gpt-xxl.yaml", include_str!("../../graphs/gpt-xxl.yaml")),
    ("gpt-xxxl.yaml", include_str!("../../graphs/gpt-xxxl.yaml")),
    ("gpt-1b.yaml", include_str!("../../graphs/gpt-1b.yaml")),
    ("gpt-3b.yaml", include_str!("../../graphs/gpt-3b.yaml")),
    ("gpt-7b.yaml", include_str!("../../graphs/gpt-7b.yaml")),
    ("vq-16.yaml", include_str!("../../graphs/vq-16.yaml")),
    ("vq-8.yaml", include_str!("../../graphs/vq-8.yaml")),
];

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

fn zoo_entries<T: for<'de> Deserialize<'de>>(prefix: &str) -> Result<Vec<T>, Error> {
    ZOO.iter()
        .filter(|(file, _)| file.starts_with(prefix))
        .map(|(file, text)| {
            serde_yaml::from_str(text).map_err(|e| Error::Config {
                path: format!("graphs/{file}"),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Reads an architecture from a YAML file given instead of a zoo name (custom sizes).
fn arch_file<T: for<'de> Deserialize<'de>>(name: &str) -> Option<Result<T, Error>> {
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
        return None;
    }
    Some(
        std::fs::read_to_string(name)
            .map_err(|e| Error::Config {
                path: name.to_string(),
                reason: e.to_string(),
            })
            .and_then(|text| {
                serde_yaml::from_str(&text).map_err(|e| Error::Config {
                    path: name.to_string(),
                    reason: e.to_string(),
                })
            }),
    )
}

/// An architecture of the zoo (`graphs/<prefix>*.yaml`) by its `name` field.
trait Named {
    fn name(&self) -> &str;
}

impl Named for GptArch {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for VqArch {
    fn name(&self) -> &str {
        &self.name
    }
}

/// `name` from the zoo files starting with `prefix`, or a YAML file when `name` ends in `.yaml`.
fn lookup<T: Named + for<'de> Deserialize<'de>>(
    name: &str,
    prefix: &str,
    kind: &'static str,
) -> Result<T, Error> {
    if let Some(r) = arch_file(name) {
        return r;
    }
    let all: Vec<T> = zoo_entries(prefix)?;
    let known = all.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
    all.into_iter()
        .find(|a| a.name() == name)
        .ok_or_else(|| Error::UnknownModel {
            kind,
            name: name.to_string(),
            known,
        })
}

/// Looks up a GPT size by its official name (`GPT-B`, ..., `GPT-7B`), or reads a YAML file
/// of the same fields as `graphs/gpt-*.yaml` when `name` ends in `.yaml`.
pub fn gpt_arch(name: &str) -> Result<GptArch, Error> {
    lookup(name, "gpt-", "GPT")
}

/// Looks up a VQ tokenizer by its official name (`VQ-16`, `VQ-8`), or reads a YAML file.
pub fn vq_arch(name: &str) -> Result<VqArch, Error> {
    lookup(name, "vq-", "VQ")
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
    ) -> Result<Self, Error> {
        let grid = (block_size as f64).sqrt().round() as usize;
        if grid * grid != block_size || block_size == 0 {
            return Err(Error::InvalidOption {
                option: "--image-size",
                reason: format!("{block_size} image tokens is not a square grid"),
            });
        }
        if arch.dim % arch.n_head != 0 || (arch.dim / arch.n_head) % 4 != 0 {
            return Err(Error::Config {
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
                return Err(Error::InvalidOption {
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
}

impl VqConfig {
    pub fn new(
        arch: &VqArch,
        codebook_size: usize,
        codebook_embed_dim: usize,
        image_size: usize,
    ) -> Result<Self, Error> {
        if image_size == 0 {
            return Err(Error::InvalidOption {
                option: "--image-size",
                reason: format!("must be at least the downsample factor {}", arch.downsample),
            });
        }
        if image_size % arch.downsample != 0 {
            return Err(Error::InvalidOption {
                option: "--image-size",
                reason: format!(
                    "{image_size} is not a multiple of the downsample factor {} of {}",
                    arch.downsample, arch.name
                ),
            });
        }
        let levels = arch.ch_mult.len();
        if levels == 0 || 1usize << (levels - 1) != arch.downsample {
            return Err(Error::Config {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_official_size_resolves() {
        for (name, layers, dim) in [
            ("GPT-B", 12, 768),
            ("GPT-L", 24, 1024),
            ("GPT-XL", 36, 1280),
            ("GPT-XXL", 48, 1536),
            ("GPT-XXXL", 48, 2560),
            ("GPT-1B", 22, 2048),
            ("GPT-3B", 24, 3200),
            ("GPT-7B", 32, 4096),
        ] {
            let a = gpt_arch(name).unwrap();
            assert_eq!((a.n_layer, a.dim), (layers, dim), "{name}");
            GptConfig::new(&a, 16384, 1000, 1, 256).unwrap();
        }
        for name in ["VQ-16", "VQ-8"] {
            let a = vq_arch(name).unwrap();
            VqConfig::new(&a, 16384, 8, 256).unwrap();
        }
    }

    #[test]
    fn gpt_b_derived_sizes_match_the_official_code() {
        let c = GptConfig::new(&gpt_arch("GPT-B").unwrap(), 16384, 1000, 1, 256).unwrap();
        assert_eq!(c.ffn_hidden, 2048); // find_multiple(int(2*3072/3)=2048, 256)
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.max_len, 264); // find_multiple(1 + 256, 8)
        let xl = GptConfig::new(&gpt_arch("GPT-XL").unwrap(), 16384, 1000, 1, 576).unwrap();
        assert_eq!(xl.ffn_hidden, 3584); // int(2*5120/3)=3413 -> 3584
                                         // GPT-B: ~111M parameters per the official comment.
        let p = c.parameter_count() as f64 / 1e6;
        assert!((105.0..115.0).contains(&p), "{p}");
    }

    #[test]
    fn bad_names_and_sizes_are_named() {
        let e = gpt_arch("GPT-Q").unwrap_err().to_string();
        assert!(e.contains("GPT-Q") && e.contains("GPT-B"), "{e}");
        let e = VqConfig::new(&vq_arch("VQ-16").unwrap(), 16384, 8, 250)
            .unwrap_err()
            .to_string();
        assert!(e.contains("250") && e.contains("16"), "{e}");
    }
}
