//! The official VAR variants of `tests/golden/tiny-var-variants` (see its README.json and
//! scripts/make_var_variant_goldens.py): which YAMLs describe each, and how its checkpoints are
//! assembled from tiny-var's plus the variant's own files, then compiled.
//!
//! A variant with its own phis has as VQVAE tiny-var's `vae.pth` without its
//! `quantize.quant_resi.*` keys plus the variant's `vae_quant_resi.pth` (if any: identity phis
//! have no keys); the VQVAE decoder is 10 MB even at the smallest official width, so it is
//! vendored once. The merged state dict is written as safetensors.

use std::path::{Path, PathBuf};

use llamagen_compiler::bundle::{Manifest, Precision};
use llamagen_compiler::checkpoint::{write_safetensors, Checkpoint};
use llamagen_compiler::compile_var::{compile_var, VarWeights};

use super::golden::{fixture, tiny_var_dir, tiny_var_options};

/// The phi convolutions' keys, the only VQVAE keys a phi variant changes.
const PHI_PREFIX: &str = "quantize.quant_resi.";

/// One variant: its folder under tiny-var-variants, its `--var-model` / `--vae-model`, and
/// whether its VQVAE has other phis than tiny-var's.
#[derive(Clone, Copy, Debug)]
pub struct VarVariant {
    pub name: &'static str,
    pub var_yaml: &'static str,
    pub vae_yaml: &'static str,
    pub own_phis: bool,
}

pub const SHARED_ALN: VarVariant = VarVariant {
    name: "shared_aln",
    var_yaml: "tiny-var-shared-aln.yaml",
    vae_yaml: "tiny-vae.yaml",
    own_phis: false,
};
pub const SHARE_QUANT_RESI0: VarVariant = VarVariant {
    name: "share_quant_resi0",
    var_yaml: "tiny-var.yaml",
    vae_yaml: "tiny-vae-share-quant-resi0.yaml",
    own_phis: true,
};
pub const SHARE_QUANT_RESI1: VarVariant = VarVariant {
    name: "share_quant_resi1",
    var_yaml: "tiny-var.yaml",
    vae_yaml: "tiny-vae-share-quant-resi1.yaml",
    own_phis: true,
};
pub const QUANT_RESI0: VarVariant = VarVariant {
    name: "quant_resi0",
    var_yaml: "tiny-var.yaml",
    vae_yaml: "tiny-vae-quant-resi0.yaml",
    own_phis: true,
};
pub const ALL: [VarVariant; 4] = [
    SHARED_ALN,
    SHARE_QUANT_RESI0,
    SHARE_QUANT_RESI1,
    QUANT_RESI0,
];

impl VarVariant {
    /// `tests/golden/tiny-var-variants/<name>`.
    pub fn dir(&self) -> PathBuf {
        llamagen_test_support::golden_dir()
            .join("tiny-var-variants")
            .join(self.name)
    }

    /// The variant's `var.pth`, or tiny-var's when it has none.
    fn var_checkpoint(&self) -> PathBuf {
        let own = self.dir().join("var.pth");
        if own.exists() {
            own
        } else {
            tiny_var_dir().join("var.pth")
        }
    }

    /// Writes the VQVAE state dict of a variant with its own phis to `out` (module doc).
    fn write_vae(&self, out: &Path) {
        let base = Checkpoint::open(&tiny_var_dir().join("vae.pth")).expect("tiny-var vae.pth");
        let phis = self.dir().join("vae_quant_resi.pth");
        let phis = phis
            .exists()
            .then(|| Checkpoint::open(&phis).expect("vae_quant_resi.pth"));
        let kept = base.tensors().filter(|t| !t.name().starts_with(PHI_PREFIX));
        let tensors: Vec<_> = kept
            .chain(phis.iter().flat_map(|c| c.tensors()))
            .map(|t| {
                let bytes = t.contiguous_bytes().expect("contiguous tensor").to_vec();
                (t.name().to_string(), t.dtype(), t.shape().to_vec(), bytes)
            })
            .collect();
        write_safetensors(out, &tensors).expect("write the merged vae");
    }

    /// Compiles the variant into `out` at `precision` (a merged VQVAE goes beside `out`).
    pub fn compile(&self, out: &Path, precision: Precision) -> Manifest {
        let vae = if self.own_phis {
            let merged = out.with_extension("vae.safetensors");
            self.write_vae(&merged);
            merged
        } else {
            tiny_var_dir().join("vae.pth")
        };
        let weights = VarWeights::Checkpoints {
            var: self.var_checkpoint(),
            vae,
        };
        let opts = llamagen_compiler::compile_var::VarCompileOptions {
            var_model: fixture(self.var_yaml),
            vae_model: Some(fixture(self.vae_yaml)),
            ..tiny_var_options(out, weights, precision)
        };
        compile_var(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("compile {}: {e}", self.name))
    }
}
