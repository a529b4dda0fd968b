//! VAR's architecture files in the official constructors' argument names: `VAR(...)`
//! ([`VarArch`]) and `VQVAE(...)` ([`VaeArch`]), with the official defaults; `var_config.rs`
//! resolves them into the [`crate::VarConfig`] that bundle.yaml records.

use serde::Deserialize;

fn default_mlp_ratio() -> f32 {
    4.0
}
fn default_num_classes() -> usize {
    1000
}
fn default_norm_eps() -> f32 {
    1e-6
}
fn default_true() -> bool {
    true
}
/// The released 256 px schedule.
pub fn default_patch_nums() -> Vec<usize> {
    vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
}

/// A VAR transformer in `VAR(...)`'s argument names (as `graphs/var-*.yaml`). `build_vae_var`
/// sets `embed_dim = 64 * depth` and `num_heads = depth`; a YAML may set any size.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarArch {
    #[serde(default)]
    pub name: String,
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f32,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_patch_nums")]
    pub patch_nums: Vec<usize>,
    /// `build_vae_var` passes True (the constructor's own default is False).
    #[serde(default = "default_true")]
    pub attn_l2_norm: bool,
    #[serde(default)]
    pub shared_aln: bool,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
}

fn default_vae_vocab() -> usize {
    4096
}
fn default_z_channels() -> usize {
    32
}
fn default_vae_ch() -> usize {
    160
}
fn default_share_quant_resi() -> usize {
    4
}
fn default_quant_resi() -> f32 {
    0.5
}
fn default_ch_mult() -> Vec<usize> {
    vec![1, 1, 2, 2, 4]
}
fn default_num_res_blocks() -> usize {
    2
}

/// The multi-scale VQVAE in `VQVAE(...)`'s argument names; defaults are the released
/// `vae_ch160v4096z32.pth`. `v_patch_nums` defaults to the transformer's `patch_nums`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeArch {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_vae_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_z_channels")]
    pub z_channels: usize,
    #[serde(default = "default_vae_ch")]
    pub ch: usize,
    #[serde(default = "default_share_quant_resi")]
    pub share_quant_resi: usize,
    #[serde(default = "default_quant_resi")]
    pub quant_resi: f32,
    #[serde(default)]
    pub v_patch_nums: Option<Vec<usize>>,
    /// Fixed in the official `VQVAE` (the vq-f16 ddconfig); exposed for custom decoders.
    #[serde(default = "default_ch_mult")]
    pub ch_mult: Vec<usize>,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
}

impl Default for VaeArch {
    fn default() -> Self {
        VaeArch {
            name: "vae_ch160v4096z32".into(),
            vocab_size: default_vae_vocab(),
            z_channels: default_z_channels(),
            ch: default_vae_ch(),
            share_quant_resi: default_share_quant_resi(),
            quant_resi: default_quant_resi(),
            v_patch_nums: None,
            ch_mult: default_ch_mult(),
            num_res_blocks: default_num_res_blocks(),
        }
    }
}
