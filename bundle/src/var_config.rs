//! VAR (next-scale prediction, FoundationVision/VAR) configurations: the architecture files in
//! the official constructors' argument names (`VAR(...)`, `VQVAE(...)`), and the resolved
//! [`VarConfig`] that bundle.yaml records, with every derived size computed once.
//!
//! Facts of the official code this follows (models/var.py, basic_var.py, quant.py, vqvae.py):
//! - a scale of side `pn` holds `pn * pn` tokens; scales are concatenated in order, so
//!   `tokens = sum(pn^2)` (680 for 1,2,3,4,5,6,8,10,13,16) and scale `si` occupies
//!   `begin(si)..end(si)`; the KV cache holds all of them;
//! - FFN hidden = `round(embed_dim * mlp_ratio)`; head_dim = `embed_dim / num_heads`;
//! - the VQVAE decoder is the taming decoder at `16 x` the last scale (ch_mult (1,1,2,2,4));
//! - the residual convolutions phi are chosen per scale by the nearest tick to `si / (S-1)`.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, VqConfig};
pub use crate::var_arch::{default_patch_nums, VaeArch, VarArch};

/// How the phi convolutions are shared, as `share_quant_resi` selects in `VectorQuantizer2`:
/// it decides the checkpoint keys and which phi a scale uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhiSharing {
    /// `share_quant_resi == 0`: one phi per scale (`quantize.quant_resi.{k}`).
    NonShared,
    /// `share_quant_resi == 1`: one phi for all scales (`quantize.quant_resi.qresi`).
    Shared,
    /// `share_quant_resi == K > 1`: K phis (`quantize.quant_resi.qresi_ls.{k}`).
    PartiallyShared,
}

/// A resolved VAR model: transformer, its multi-scale quantizer, and the sizes both sides use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarConfig {
    pub name: String,
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    /// `round(embed_dim * mlp_ratio)`.
    pub ffn_hidden: usize,
    pub num_classes: usize,
    /// Rows of `class_emb`: num_classes + 1 (the null class `num_classes` used for CFG).
    pub class_rows: usize,
    pub patch_nums: Vec<usize>,
    /// Tokens of all scales: sum of `pn^2` (also the KV-cache length).
    pub tokens: usize,
    /// The VQVAE's vocabulary (`V`) and code width (`Cvae`).
    pub vocab_size: usize,
    pub cvae: usize,
    pub attn_l2_norm: bool,
    pub shared_aln: bool,
    pub norm_eps: f32,
    /// phi(x) = (1 - quant_resi) x + quant_resi conv3x3(x); 0 (|q| < 1e-6) means identity.
    pub quant_resi: f32,
    pub phi_sharing: PhiSharing,
    /// Number of distinct phi convolutions (0 when phi is the identity).
    pub phi_count: usize,
    /// Index of the phi each scale uses.
    pub phi_of_scale: Vec<usize>,
    pub image_size: usize,
}

impl VarConfig {
    /// Resolves `arch` with `vae`; fails naming the file or field at fault.
    pub fn new(arch: &VarArch, vae: &VaeArch) -> Result<Self, ConfigError> {
        let bad = |path: &str, reason: String| ConfigError::Config {
            path: path.to_string(),
            reason,
        };
        let an = arch.name.as_str();
        if arch.depth == 0 || arch.num_heads == 0 || arch.embed_dim == 0 {
            return Err(bad(
                an,
                format!(
                    "depth {}, num_heads {} and embed_dim {} must be at least 1",
                    arch.depth, arch.num_heads, arch.embed_dim
                ),
            ));
        }
        if !arch.embed_dim.is_multiple_of(arch.num_heads) {
            return Err(bad(
                an,
                format!(
                    "embed_dim {} is not a multiple of num_heads {}",
                    arch.embed_dim, arch.num_heads
                ),
            ));
        }
        let ffn = (arch.embed_dim as f64 * arch.mlp_ratio as f64).round();
        if !(1.0..1e9).contains(&ffn) {
            return Err(bad(
                an,
                format!("mlp_ratio {} is out of range", arch.mlp_ratio),
            ));
        }
        if arch.num_classes == 0 {
            return Err(bad(an, "num_classes must be at least 1".into()));
        }
        if !(arch.norm_eps > 0.0 && arch.norm_eps.is_finite()) {
            return Err(bad(an, format!("norm_eps {} must be > 0", arch.norm_eps)));
        }
        let pn = &arch.patch_nums;
        if pn.len() < 2 || pn.contains(&0) || pn.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                an,
                format!("patch_nums {pn:?} must be at least 2 increasing sides >= 1"),
            ));
        }
        let last = *pn.last().unwrap_or(&1);
        if last > 1024 {
            return Err(bad(an, format!("the last patch side {last} is above 1024")));
        }
        let vn = &vae.name;
        if let Some(v) = &vae.v_patch_nums {
            if v != pn {
                return Err(bad(
                    vn,
                    format!("v_patch_nums {v:?} differ from the transformer's patch_nums {pn:?}"),
                ));
            }
        }
        if vae.vocab_size == 0 || vae.z_channels == 0 || vae.ch == 0 {
            return Err(bad(
                vn,
                format!(
                    "vocab_size {}, z_channels {} and ch {} must be at least 1",
                    vae.vocab_size, vae.z_channels, vae.ch
                ),
            ));
        }
        if !vae.quant_resi.is_finite() {
            return Err(bad(vn, "quant_resi must be a number".into()));
        }
        if vae.ch_mult.is_empty() || vae.ch_mult.len() > 8 {
            return Err(bad(
                vn,
                format!("ch_mult {:?} must have 1 to 8 levels", vae.ch_mult),
            ));
        }
        let s = pn.len();
        let (phi_sharing, k) = match vae.share_quant_resi {
            0 => (PhiSharing::NonShared, s),
            1 => (PhiSharing::Shared, 1),
            k => (PhiSharing::PartiallyShared, k),
        };
        if k > 64 {
            return Err(bad(
                vn,
                format!("share_quant_resi {k} is above 64 phi convolutions"),
            ));
        }
        let phi_of_scale = (0..s)
            .map(|si| phi_index(k, si as f64 / (s - 1) as f64))
            .collect();
        let identity = vae.quant_resi.abs() <= 1e-6;
        let downsample = 1usize << (vae.ch_mult.len() - 1);
        Ok(VarConfig {
            name: arch.name.clone(),
            depth: arch.depth,
            embed_dim: arch.embed_dim,
            num_heads: arch.num_heads,
            head_dim: arch.embed_dim / arch.num_heads,
            ffn_hidden: ffn as usize,
            num_classes: arch.num_classes,
            class_rows: arch.num_classes + 1,
            patch_nums: pn.clone(),
            tokens: pn.iter().map(|p| p * p).sum(),
            vocab_size: vae.vocab_size,
            cvae: vae.z_channels,
            attn_l2_norm: arch.attn_l2_norm,
            shared_aln: arch.shared_aln,
            norm_eps: arch.norm_eps,
            quant_resi: if identity { 0.0 } else { vae.quant_resi.abs() },
            phi_sharing,
            phi_count: if identity { 0 } else { k },
            phi_of_scale,
            image_size: last * downsample,
        })
    }

    /// Number of scales (steps of the generation loop).
    pub fn scales(&self) -> usize {
        self.patch_nums.len()
    }

    /// Side of the last (largest) scale: the VQVAE decoder's grid.
    pub fn last_side(&self) -> usize {
        *self.patch_nums.last().unwrap_or(&1)
    }

    /// Token range `begin..end` of scale `si` in the concatenated order.
    pub fn scale_range(&self, si: usize) -> std::ops::Range<usize> {
        let begin: usize = self.patch_nums[..si].iter().map(|p| p * p).sum();
        begin..begin + self.patch_nums[si] * self.patch_nums[si]
    }

    /// The CFG ratio of scale `si`: `cfg * si / (S - 1)`.
    pub fn guidance(&self, cfg: f32, si: usize) -> f32 {
        cfg * (si as f32 / (self.scales() - 1) as f32)
    }

    /// The VQVAE decoder as the shared VQ decoder structure (`vq_plan`): codes of width Cvae,
    /// a 3x3 `post_quant_conv` (`quant_conv_ks`), GroupNorm decoder at 16x the last scale.
    pub fn decoder_config(&self, vae: &VaeArch) -> VqConfig {
        let downsample = 1usize << (vae.ch_mult.len() - 1);
        VqConfig {
            name: if vae.name.is_empty() {
                "VQVAE".into()
            } else {
                vae.name.clone()
            },
            codebook_size: vae.vocab_size,
            codebook_embed_dim: vae.z_channels,
            ch: vae.ch,
            ch_mult: vae.ch_mult.clone(),
            num_res_blocks: vae.num_res_blocks,
            z_channels: vae.z_channels,
            downsample,
            grid: self.last_side(),
            image_size: self.last_side() * downsample,
            post_quant_kernel: 3,
        }
    }

    /// Parameters of the transformer, for progress and sizes.
    pub fn parameter_count(&self) -> usize {
        let (c, h) = (self.embed_dim, self.ffn_hidden);
        let ada = if self.shared_aln {
            6 * c
        } else {
            c * 6 * c + 6 * c
        };
        let block = c * 3 * c + 2 * c + self.num_heads + c * c + c + 2 * c * h + h + c + ada;
        let shared = if self.shared_aln {
            c * 6 * c + 6 * c
        } else {
            0
        };
        self.depth * block
            + shared
            + self.cvae * c
            + c
            + self.class_rows * c
            + (1 + self.tokens + self.scales()) * c
            + c * 2 * c
            + 2 * c
            + c * self.vocab_size
            + self.vocab_size
    }
}

/// `PhiPartiallyShared.__getitem__`: the phi whose tick is nearest to `at` (the first on a
/// tie, as `np.argmin`). Ticks: `linspace(1/3/K, 1-1/3/K, K)` for K = 4, else
/// `linspace(1/2/K, 1-1/2/K, K)`.
pub fn phi_index(k: usize, at: f64) -> usize {
    if k <= 1 {
        return 0;
    }
    let kf = k as f64;
    let (lo, hi) = if k == 4 {
        (1.0 / 3.0 / kf, 1.0 - 1.0 / 3.0 / kf)
    } else {
        (1.0 / 2.0 / kf, 1.0 - 1.0 / 2.0 / kf)
    };
    // np.linspace's arithmetic (`i * step + start`, the last tick exactly `stop`): ties such as
    // si = 2 and 7 of 10 scales are decided by its rounding.
    let step = (hi - lo) / (kf - 1.0);
    let mut best = (0, f64::INFINITY);
    for i in 0..k {
        let tick = if i + 1 == k { hi } else { i as f64 * step + lo };
        let d = (tick - at).abs();
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d16() -> VarArch {
        VarArch {
            name: "VAR-d16".into(),
            depth: 16,
            embed_dim: 1024,
            num_heads: 16,
            mlp_ratio: 4.0,
            num_classes: 1000,
            patch_nums: default_patch_nums(),
            attn_l2_norm: true,
            shared_aln: false,
            norm_eps: 1e-6,
        }
    }

    #[test]
    fn d16_sizes_follow_the_official_constructor() {
        let c = VarConfig::new(&d16(), &VaeArch::default()).unwrap();
        assert_eq!(c.tokens, 680);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.ffn_hidden, 4096);
        assert_eq!(c.image_size, 256);
        assert_eq!(c.scale_range(9), 424..680);
        assert_eq!(c.scale_range(0), 0..1);
        // np.argmin(|linspace(1/12, 11/12, 4) - si/9|), printed by numpy 2.4.
        assert_eq!(c.phi_of_scale, vec![0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
        let vq = c.decoder_config(&VaeArch::default());
        assert_eq!((vq.grid, vq.downsample, vq.z_channels), (16, 16, 32));
        // VAR-d16 is the 310M model of the release.
        let p = c.parameter_count() as f64 / 1e6;
        assert!((300.0..320.0).contains(&p), "{p}M parameters");
    }

    #[test]
    fn bad_sizes_are_named() {
        let mut a = d16();
        a.num_heads = 0;
        assert!(VarConfig::new(&a, &VaeArch::default())
            .unwrap_err()
            .to_string()
            .contains("num_heads 0"));
        let mut a = d16();
        a.patch_nums = vec![1, 3, 2];
        assert!(VarConfig::new(&a, &VaeArch::default())
            .unwrap_err()
            .to_string()
            .contains("increasing"));
        let vae = VaeArch {
            v_patch_nums: Some(vec![1, 2]),
            ..VaeArch::default()
        };
        assert!(VarConfig::new(&d16(), &vae)
            .unwrap_err()
            .to_string()
            .contains("v_patch_nums"));
    }

    #[test]
    fn phi_ticks_match_numpy_argmin() {
        // K = 2: ticks 0.25, 0.75; 0.5 is a tie and argmin takes the first.
        assert_eq!(phi_index(2, 0.5), 0);
        assert_eq!(phi_index(2, 4.0 / 9.0), 0);
        assert_eq!(phi_index(2, 0.9), 1);
        assert_eq!(phi_index(1, 0.7), 0);
        // Non-shared with S = 4 (K = 4 ticks 1/12..11/12) at 0, 1/3, 2/3, 1.
        let got: Vec<_> = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]
            .iter()
            .map(|&a| phi_index(4, a))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
        // More schedules, as numpy 2.4 prints them.
        for (k, s, want) in [
            (3, 10, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]),
            (6, 10, vec![0, 0, 1, 1, 2, 3, 3, 4, 5, 5]),
            (4, 6, vec![0, 0, 1, 2, 3, 3]),
        ] {
            let got: Vec<_> = (0..s)
                .map(|si| phi_index(k, si as f64 / (s - 1) as f64))
                .collect();
            assert_eq!(got, want, "K {k}, S {s}");
        }
    }
}
