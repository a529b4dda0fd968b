//! Official VQ decoder state-dict keys, the decoder's structure, and the shapes our graph expects
//! (tokenizer/tokenizer_image/vq_model.py: `VQModel.decode_code`, `Decoder`, `ResnetBlock`,
//! `AttnBlock`, `Upsample`).
//!
//! Structure (L = `ch_mult.len()`): `decoder.conv_in` maps `z_channels` to `ch * ch_mult[L-1]`;
//! `decoder.mid.{0,1,2}` = ResnetBlock, AttnBlock, ResnetBlock; `decoder.conv_blocks.{j}` for
//! j = 0..L runs the levels deepest first (level `L-1-j`, `ch * ch_mult[L-1-j]` output channels),
//! each with `num_res_blocks + 1` ResnetBlocks (`res.{r}`), AttnBlocks after each of them only in
//! `conv_blocks.0` (`attn.{r}`), and `upsample.conv` (nearest x2 + 3x3 conv) in every block but
//! the last. A ResnetBlock has `nin_shortcut` (1x1 conv) exactly when its input and output
//! channels differ. Conv weights are `[out, in, kh, kw]`, biases and GroupNorm affines `[C]`.
//! Encoder keys (and `quantize.codebook_used`) are ignored.

use crate::config::VqConfig;

/// `quantize.embedding.weight`, `[codebook_size, codebook_embed_dim]` (L2-normalised on use).
pub const CODEBOOK: &str = "quantize.embedding.weight";
/// 1x1 conv `codebook_embed_dim -> z_channels` before the decoder.
pub const POST_QUANT_CONV: &str = "post_quant_conv";
/// Image channels of `decoder.conv_out`.
pub const OUT_CHANNELS: usize = 3;

/// One ResnetBlock: `in_ch -> out_ch` (with a `nin_shortcut` when they differ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResSpec {
    pub prefix: String,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl ResSpec {
    pub fn has_shortcut(&self) -> bool {
        self.in_ch != self.out_ch
    }
}

/// One entry of `decoder.conv_blocks`, at spatial side `side` (before its upsample).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    pub prefix: String,
    pub side: usize,
    /// Resnet blocks, each followed by `attn[r]` when `attn` is non-empty.
    pub res: Vec<ResSpec>,
    /// AttnBlock prefixes (only in the deepest level), all with `out_ch` channels.
    pub attn: Vec<String>,
    /// Output channels of the level (and of its upsample conv).
    pub out_ch: usize,
    /// `upsample` prefix (its conv is `{upsample}.conv`), absent for the last level.
    pub upsample: Option<String>,
}

/// The decoder's structure, derived from the config exactly as `Decoder.__init__` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderPlan {
    /// Channels after `conv_in` (and through `mid`): `ch * ch_mult[L-1]`.
    pub mid_ch: usize,
    pub levels: Vec<LevelSpec>,
    /// Channels into `norm_out` / `conv_out`: `ch * ch_mult[0]`.
    pub out_ch: usize,
}

impl DecoderPlan {
    pub fn new(c: &VqConfig) -> Self {
        let n = c.ch_mult.len();
        let mid_ch = c.ch * c.ch_mult.last().copied().unwrap_or(1);
        let mut block_in = mid_ch;
        let mut side = c.grid;
        let mut levels = Vec::with_capacity(n);
        for j in 0..n {
            let prefix = format!("decoder.conv_blocks.{j}");
            let block_out = c.ch * c.ch_mult[n - 1 - j];
            let res = (0..=c.num_res_blocks)
                .map(|r| {
                    let spec = ResSpec {
                        prefix: format!("{prefix}.res.{r}"),
                        in_ch: block_in,
                        out_ch: block_out,
                    };
                    block_in = block_out;
                    spec
                })
                .collect();
            let attn = if j == 0 {
                (0..=c.num_res_blocks)
                    .map(|r| format!("{prefix}.attn.{r}"))
                    .collect()
            } else {
                Vec::new()
            };
            let upsample = (j + 1 != n).then(|| format!("{prefix}.upsample"));
            levels.push(LevelSpec {
                prefix,
                side,
                res,
                attn,
                out_ch: block_out,
                upsample: upsample.clone(),
            });
            if upsample.is_some() {
                side *= 2;
            }
        }
        DecoderPlan {
            mid_ch,
            levels,
            out_ch: block_in,
        }
    }

    /// The mid blocks: `mid.0` (res), `mid.1` (attn), `mid.2` (res), all at `mid_ch`.
    pub fn mid_res(&self, i: usize) -> ResSpec {
        ResSpec {
            prefix: format!("decoder.mid.{i}"),
            in_ch: self.mid_ch,
            out_ch: self.mid_ch,
        }
    }
}

type Keys = Vec<(String, Vec<usize>)>;

fn conv(keys: &mut Keys, prefix: &str, out: usize, inp: usize, k: usize) {
    keys.push((format!("{prefix}.weight"), vec![out, inp, k, k]));
    keys.push((format!("{prefix}.bias"), vec![out]));
}

fn norm(keys: &mut Keys, prefix: &str, ch: usize) {
    keys.push((format!("{prefix}.weight"), vec![ch]));
    keys.push((format!("{prefix}.bias"), vec![ch]));
}

fn res_block(keys: &mut Keys, r: &ResSpec) {
    let p = &r.prefix;
    norm(keys, &format!("{p}.norm1"), r.in_ch);
    conv(keys, &format!("{p}.conv1"), r.out_ch, r.in_ch, 3);
    norm(keys, &format!("{p}.norm2"), r.out_ch);
    conv(keys, &format!("{p}.conv2"), r.out_ch, r.out_ch, 3);
    if r.has_shortcut() {
        conv(keys, &format!("{p}.nin_shortcut"), r.out_ch, r.in_ch, 1);
    }
}

fn attn_block(keys: &mut Keys, p: &str, ch: usize) {
    norm(keys, &format!("{p}.norm"), ch);
    for leaf in ["q", "k", "v", "proj_out"] {
        conv(keys, &format!("{p}.{leaf}"), ch, ch, 1);
    }
}

/// Every key `decode_code` needs, with its official shape, in state-dict order.
pub fn required(c: &VqConfig) -> Vec<(String, Vec<usize>)> {
    let plan = DecoderPlan::new(c);
    let mut keys = vec![(
        CODEBOOK.to_string(),
        vec![c.codebook_size, c.codebook_embed_dim],
    )];
    conv(
        &mut keys,
        POST_QUANT_CONV,
        c.z_channels,
        c.codebook_embed_dim,
        1,
    );
    conv(&mut keys, "decoder.conv_in", plan.mid_ch, c.z_channels, 3);
    res_block(&mut keys, &plan.mid_res(0));
    attn_block(&mut keys, "decoder.mid.1", plan.mid_ch);
    res_block(&mut keys, &plan.mid_res(2));
    for level in &plan.levels {
        for r in &level.res {
            res_block(&mut keys, r);
        }
        for a in &level.attn {
            attn_block(&mut keys, a, level.out_ch);
        }
        if let Some(up) = &level.upsample {
            conv(
                &mut keys,
                &format!("{up}.conv"),
                level.out_ch,
                level.out_ch,
                3,
            );
        }
    }
    norm(&mut keys, "decoder.norm_out", plan.out_ch);
    conv(&mut keys, "decoder.conv_out", OUT_CHANNELS, plan.out_ch, 3);
    keys
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{vq_arch, VqConfig};

    fn vq(name: &str, size: usize) -> VqConfig {
        VqConfig::new(&vq_arch(name).unwrap(), 16384, 8, size).unwrap()
    }

    #[test]
    fn vq16_keys_match_the_official_module_structure() {
        let keys = required(&vq("VQ-16", 256));
        let map: HashMap<_, _> = keys.iter().cloned().collect();
        assert_eq!(map.len(), keys.len(), "duplicate keys");
        // codebook 1 + post_quant 2 + conv_in 2 + mid (8 + 10 + 8) + 15 res * 8 + 2 nin * 2
        // + 3 attn * 10 + 4 upsample * 2 + norm_out 2 + conv_out 2.
        assert_eq!(keys.len(), 1 + 2 + 2 + 26 + 120 + 4 + 30 + 8 + 2 + 2);
        assert_eq!(map[CODEBOOK], vec![16384, 8]);
        assert_eq!(map["post_quant_conv.weight"], vec![256, 8, 1, 1]);
        assert_eq!(map["decoder.conv_in.weight"], vec![512, 256, 3, 3]);
        assert_eq!(map["decoder.mid.1.q.weight"], vec![512, 512, 1, 1]);
        assert_eq!(
            map["decoder.conv_blocks.0.attn.0.q.weight"],
            vec![512, 512, 1, 1]
        );
        assert!(map.contains_key("decoder.conv_blocks.0.attn.2.proj_out.bias"));
        assert!(!map.contains_key("decoder.conv_blocks.0.attn.3.q.weight"));
        assert!(!map
            .keys()
            .any(|k| k.starts_with("decoder.conv_blocks.1.attn")));
        assert!(map.contains_key("decoder.conv_blocks.3.upsample.conv.weight"));
        assert!(!map
            .keys()
            .any(|k| k.starts_with("decoder.conv_blocks.4.upsample")));
        // conv_in 512, then levels 512, 256, 256, 128, 128: shortcuts at the two changes only.
        let mut nin: Vec<_> = map
            .keys()
            .filter(|k| k.ends_with("nin_shortcut.weight"))
            .cloned()
            .collect();
        nin.sort();
        assert_eq!(
            nin,
            vec![
                "decoder.conv_blocks.1.res.0.nin_shortcut.weight",
                "decoder.conv_blocks.3.res.0.nin_shortcut.weight",
            ]
        );
        assert_eq!(
            map["decoder.conv_blocks.1.res.0.nin_shortcut.weight"],
            vec![256, 512, 1, 1]
        );
        assert_eq!(map["decoder.conv_blocks.1.res.0.norm1.weight"], vec![512]);
        assert_eq!(
            map["decoder.conv_blocks.1.res.1.conv1.weight"],
            vec![256, 256, 3, 3]
        );
        assert_eq!(
            map["decoder.conv_blocks.3.upsample.conv.weight"],
            vec![128, 128, 3, 3]
        );
        assert_eq!(map["decoder.norm_out.weight"], vec![128]);
        assert_eq!(map["decoder.conv_out.weight"], vec![3, 128, 3, 3]);
    }

    #[test]
    fn vq8_plan_has_four_levels_and_three_upsamples() {
        let c = vq("VQ-8", 256);
        let plan = DecoderPlan::new(&c);
        assert_eq!(plan.levels.len(), 4);
        let sides: Vec<_> = plan.levels.iter().map(|l| l.side).collect();
        assert_eq!(sides, vec![32, 64, 128, 256]);
        let outs: Vec<_> = plan.levels.iter().map(|l| l.out_ch).collect();
        assert_eq!(outs, vec![512, 256, 256, 128]);
        assert_eq!(
            plan.levels.iter().filter(|l| l.upsample.is_some()).count(),
            3
        );
        let keys = required(&c);
        // 1 + 2 + 2 + 26 + 12 res * 8 + 2 nin * 2 + 30 + 3 * 2 + 2 + 2.
        assert_eq!(keys.len(), 1 + 2 + 2 + 26 + 96 + 4 + 30 + 6 + 2 + 2);
    }
}
