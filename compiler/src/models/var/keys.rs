//! Official VAR and VQVAE state-dict keys (`var_d16.pth`, `vae_ch160v4096z32.pth`: plain
//! `state_dict()`s) with the shapes our graphs expect, and the adapter that lets the shared VQ
//! decoder builder read the VQVAE decoder.
//!
//! Buffers (`lvl_1L`, `attn_bias_for_masking`, `blocks.i.attn.zero_k_bias`,
//! `quantize.ema_vocab_hit_SV`) and the VQVAE encoder are ignored: inference derives or does
//! not need them.

use std::sync::Arc;

use llamagen_bundle::var_config::{PhiSharing, VarConfig};
use llamagen_bundle::VqConfig;

use crate::models::WeightSource;
use crate::Error;

type Keys = Vec<(String, Vec<usize>)>;

pub const WORD_EMBED: &str = "word_embed";
pub const CLASS_EMB: &str = llamagen_bundle::names::var::CLASS_EMB;
pub const POS_START: &str = "pos_start";
pub const POS_1LC: &str = "pos_1LC";
pub const LVL_EMBED: &str = "lvl_embed.weight";
pub const SHARED_ADA_LIN: &str = "shared_ada_lin.1";
pub const HEAD_ADA_LIN: &str = "head_nm.ada_lin.1";
pub const HEAD: &str = "head";
/// The VQVAE codebook `[V, Cvae]`, used raw (VAR's quantizer does not normalise on lookup).
pub const CODEBOOK: &str = llamagen_bundle::names::var::CODEBOOK;

/// `blocks.{i}.{leaf}`.
pub fn block(i: usize, leaf: &str) -> String {
    format!("blocks.{i}.{leaf}")
}

fn linear(keys: &mut Keys, prefix: &str, out: usize, inp: usize, bias: bool) {
    keys.push((format!("{prefix}.weight"), vec![out, inp]));
    if bias {
        keys.push((format!("{prefix}.bias"), vec![out]));
    }
}

/// Every key the step graph reads, with its official shape.
pub fn step_keys(c: &VarConfig) -> Keys {
    let (d, h, heads) = (c.embed_dim, c.ffn_hidden, c.num_heads);
    let mut keys = Vec::new();
    for i in 0..c.depth {
        if c.attn_l2_norm {
            keys.push((block(i, "attn.scale_mul_1H11"), vec![1, heads, 1, 1]));
        }
        keys.push((block(i, "attn.q_bias"), vec![d]));
        keys.push((block(i, "attn.v_bias"), vec![d]));
        linear(&mut keys, &block(i, "attn.mat_qkv"), 3 * d, d, false);
        linear(&mut keys, &block(i, "attn.proj"), d, d, true);
        linear(&mut keys, &block(i, "ffn.fc1"), h, d, true);
        linear(&mut keys, &block(i, "ffn.fc2"), d, h, true);
    }
    linear(&mut keys, HEAD, c.vocab_size, d, true);
    keys
}

/// Every key the cond graph reads: the class embedding and every AdaLN linear.
pub fn cond_keys(c: &VarConfig) -> Keys {
    let d = c.embed_dim;
    let mut keys = vec![(CLASS_EMB.to_string(), vec![c.class_rows, d])];
    if c.shared_aln {
        linear(&mut keys, SHARED_ADA_LIN, 6 * d, d, true);
    }
    for i in 0..c.depth {
        if c.shared_aln {
            keys.push((block(i, "ada_gss"), vec![1, 1, 6, d]));
        } else {
            linear(&mut keys, &block(i, "ada_lin.1"), 6 * d, d, true);
        }
    }
    linear(&mut keys, HEAD_ADA_LIN, 2 * d, d, true);
    keys
}

/// The phi convolution `k` (`[Cvae, Cvae, 3, 3]` weight and bias) under `sharing`.
pub fn phi_prefix(sharing: PhiSharing, k: usize) -> String {
    llamagen_bundle::names::var::phi(sharing, k)
}

/// Every key the embed graph reads: the transformer's input side and the quantizer's.
pub fn embed_keys(c: &VarConfig) -> Keys {
    let (d, first) = (c.embed_dim, c.patch_nums[0] * c.patch_nums[0]);
    let mut keys = vec![(CLASS_EMB.to_string(), vec![c.class_rows, d])];
    linear(&mut keys, WORD_EMBED, d, c.cvae, true);
    keys.push((POS_START.into(), vec![1, first, d]));
    keys.push((POS_1LC.into(), vec![1, c.tokens, d]));
    keys.push((LVL_EMBED.into(), vec![c.scales(), d]));
    keys.push((CODEBOOK.into(), vec![c.vocab_size, c.cvae]));
    for k in 0..c.phi_count {
        let p = phi_prefix(c.phi_sharing, k);
        keys.push((format!("{p}.weight"), vec![c.cvae, c.cvae, 3, 3]));
        keys.push((format!("{p}.bias"), vec![c.cvae]));
    }
    keys
}

/// The transformer's weights from the VAR checkpoint and the quantizer's (`quantize.*`) from
/// the VQVAE checkpoint, behind one [`WeightSource`] (the embed graph reads both).
pub struct VarAndVae {
    pub var: Arc<dyn WeightSource>,
    pub vae: Arc<dyn WeightSource>,
}

impl VarAndVae {
    fn pick(&self, key: &str) -> &dyn WeightSource {
        if key.starts_with("quantize.") {
            self.vae.as_ref()
        } else {
            self.var.as_ref()
        }
    }
}

impl WeightSource for VarAndVae {
    fn check(&self, key: &str, shape: &[usize]) -> Result<(), Error> {
        self.pick(key).check(key, shape)
    }
    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        self.pick(key).load(key, shape)
    }
}

/// The VQVAE decoder under the shared VQ decoder's key names (`llamagen_bundle::vq_plan`,
/// LlamaGen's structure), read from VAR's names:
/// - `decoder.conv_blocks.{j}` is `decoder.up.{L-1-j}` (VAR indexes levels shallow-first and
///   runs them reversed), with `res.{r}` as `block.{r}`;
/// - `decoder.mid.{0,1,2}` are `mid.block_1`, `mid.attn_1`, `mid.block_2`;
/// - an attention's `q`, `k`, `v` are the three thirds of VAR's fused 1x1 `qkv` conv.
///
/// The math of the two decoders is the same (taming's), so the graph, and a native backend
/// reading the bundle by these names, serve both families.
pub struct VaeDecoderKeys {
    pub vae: Arc<dyn WeightSource>,
    pub levels: usize,
}

impl VaeDecoderKeys {
    pub fn new(vae: Arc<dyn WeightSource>, c: &VqConfig) -> Self {
        VaeDecoderKeys {
            vae,
            levels: c.ch_mult.len(),
        }
    }

    /// VAR's key for a plan key, and for q/k/v the third of `qkv` it is.
    fn map(&self, key: &str) -> (String, Option<usize>) {
        let mut k = key.to_string();
        if let Some(rest) = key.strip_prefix("decoder.conv_blocks.") {
            let (j, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let j: usize = j.parse().unwrap_or(0);
            let level = self.levels.saturating_sub(1 + j);
            let tail = tail
                .strip_prefix("res.")
                .map_or(tail.to_string(), |t| format!("block.{t}"));
            k = format!("decoder.up.{level}.{tail}");
        }
        for (ours, theirs) in [
            ("decoder.mid.0.", "decoder.mid.block_1."),
            ("decoder.mid.1.", "decoder.mid.attn_1."),
            ("decoder.mid.2.", "decoder.mid.block_2."),
        ] {
            if let Some(t) = k.strip_prefix(ours) {
                k = format!("{theirs}{t}");
            }
        }
        for (i, part) in ["q", "k", "v"].iter().enumerate() {
            for leaf in ["weight", "bias"] {
                let suffix = format!(".{part}.{leaf}");
                if let Some(stem) = k.strip_suffix(&suffix) {
                    return (format!("{stem}.qkv.{leaf}"), Some(i));
                }
            }
        }
        (k, None)
    }

    /// The official shape of the fused tensor a third of which has `shape`.
    fn fused(shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        if let Some(first) = s.first_mut() {
            *first *= 3;
        }
        s
    }
}

impl WeightSource for VaeDecoderKeys {
    fn check(&self, key: &str, shape: &[usize]) -> Result<(), Error> {
        match self.map(key) {
            (k, None) => self.vae.check(&k, shape),
            (k, Some(_)) => self.vae.check(&k, &Self::fused(shape)),
        }
    }

    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        match self.map(key) {
            (k, None) => self.vae.load(&k, shape),
            (k, Some(i)) => {
                let all = self.vae.load(&k, &Self::fused(shape))?;
                let n: usize = shape.iter().product();
                Ok(all[i * n..(i + 1) * n].to_vec())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Names;
    impl WeightSource for Names {
        fn check(&self, _: &str, _: &[usize]) -> Result<(), Error> {
            Ok(())
        }
        fn load(&self, _: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
            Ok((0..shape.iter().product::<usize>())
                .map(|i| i as f32)
                .collect())
        }
    }

    fn keys() -> VaeDecoderKeys {
        VaeDecoderKeys {
            vae: Arc::new(Names),
            levels: 5,
        }
    }

    #[test]
    fn plan_keys_map_onto_vars_decoder() {
        let k = keys();
        let cases = [
            ("decoder.conv_in.weight", "decoder.conv_in.weight", None),
            (
                "decoder.conv_blocks.0.res.2.conv1.weight",
                "decoder.up.4.block.2.conv1.weight",
                None,
            ),
            (
                "decoder.conv_blocks.0.attn.1.k.bias",
                "decoder.up.4.attn.1.qkv.bias",
                Some(1),
            ),
            (
                "decoder.conv_blocks.3.upsample.conv.weight",
                "decoder.up.1.upsample.conv.weight",
                None,
            ),
            (
                "decoder.mid.1.proj_out.weight",
                "decoder.mid.attn_1.proj_out.weight",
                None,
            ),
            (
                "decoder.mid.1.v.weight",
                "decoder.mid.attn_1.qkv.weight",
                Some(2),
            ),
            (
                "decoder.mid.2.norm1.bias",
                "decoder.mid.block_2.norm1.bias",
                None,
            ),
            ("post_quant_conv.weight", "post_quant_conv.weight", None),
        ];
        for (ours, theirs, part) in cases {
            assert_eq!(k.map(ours), (theirs.to_string(), part), "{ours}");
        }
    }

    #[test]
    fn q_k_v_are_thirds_of_the_fused_conv() {
        let k = keys();
        let v = k.load("decoder.mid.1.v.weight", &[2, 2, 1, 1]).unwrap();
        assert_eq!(v, vec![8.0, 9.0, 10.0, 11.0]);
    }
}
