//! The model zoo: `graphs/*.yaml` (architecture sizes, embedded at build time), looked up by
//! official name or read from a YAML file. The resolved configurations (`GptConfig`,
//! `VqConfig`) are the bundle contract's (`llamagen_bundle::config`), re-exported here.

use serde::Deserialize;

pub use llamagen_bundle::config::{
    find_multiple, ConfigError, GptArch, GptConfig, VqArch, VqConfig,
};
pub use llamagen_bundle::var_config::{VaeArch, VarArch, VarConfig};

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
    ("var-d16.yaml", include_str!("../../graphs/var-d16.yaml")),
    ("var-d20.yaml", include_str!("../../graphs/var-d20.yaml")),
    ("var-d24.yaml", include_str!("../../graphs/var-d24.yaml")),
    ("var-d30.yaml", include_str!("../../graphs/var-d30.yaml")),
    ("var-d36.yaml", include_str!("../../graphs/var-d36.yaml")),
    ("vae-var.yaml", include_str!("../../graphs/vae-var.yaml")),
];

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

impl Named for VarArch {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for VaeArch {
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

/// Looks up a VAR size (`VAR-d16` or `d16`, ..., `d36`), or reads a YAML file of
/// `VAR(...)`'s argument names when `name` ends in `.yaml`.
pub fn var_arch(name: &str) -> Result<VarArch, Error> {
    let full = if name.starts_with('d') && !name.ends_with(".yaml") && !name.ends_with(".yml") {
        format!("VAR-{name}")
    } else {
        name.to_string()
    };
    let mut a: VarArch = lookup(&full, "var-", "VAR")?;
    if a.name.is_empty() {
        a.name = file_stem(name);
    }
    Ok(a)
}

/// The VQVAE: the released one (`None`), or a YAML file of `VQVAE(...)`'s argument names.
pub fn vae_arch(name: Option<&str>) -> Result<VaeArch, Error> {
    let mut a: VaeArch = lookup(name.unwrap_or("vae_ch160v4096z32"), "vae-", "VQVAE")?;
    if a.name.is_empty() {
        a.name = file_stem(name.unwrap_or("VQVAE"));
    }
    Ok(a)
}

fn file_stem(path: &str) -> String {
    std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
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
        let vae = vae_arch(None).unwrap();
        assert_eq!((vae.vocab_size, vae.z_channels, vae.ch), (4096, 32, 160));
        for (name, depth, size) in [
            ("d16", 16, 256),
            ("VAR-d20", 20, 256),
            ("d24", 24, 256),
            ("d30", 30, 256),
            ("d36", 36, 512),
        ] {
            let a = var_arch(name).unwrap();
            assert_eq!(
                (a.depth, a.embed_dim, a.num_heads),
                (depth, 64 * depth, depth)
            );
            let c = VarConfig::new(&a, &vae).unwrap();
            assert_eq!(c.image_size, size, "{name}");
            assert_eq!(c.shared_aln, name == "d36");
        }
        assert!(var_arch("d17").unwrap_err().to_string().contains("VAR-d16"));
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
