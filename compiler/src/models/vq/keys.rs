//! Official VQ decoder state-dict keys and the shapes our graph expects
//! (tokenizer/tokenizer_image/vq_model.py: `VQModel.decode_code`, `Decoder`, `ResnetBlock`,
//! `AttnBlock`, `Upsample`).
//!
//! The decoder's structure is `llamagen_bundle::vq_plan` (re-exported here). Conv weights are
//! `[out, in, kh, kw]`, biases and GroupNorm affines `[C]`.
//! Encoder keys (and `quantize.codebook_used`) are ignored.

use crate::config::VqConfig;

pub use llamagen_bundle::vq_plan::{DecoderPlan, ResSpec, CODEBOOK, OUT_CHANNELS, POST_QUANT_CONV};

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
    let mut keys = vec![(
        CODEBOOK.to_string(),
        vec![c.codebook_size, c.codebook_embed_dim],
    )];
    keys.extend(decoder_keys(c));
    keys
}

/// The keys from `post_quant_conv` on (what decoding a feature map needs: VAR's VQVAE decodes
/// its `f_hat`, not tokens).
pub fn decoder_keys(c: &VqConfig) -> Vec<(String, Vec<usize>)> {
    let plan = DecoderPlan::new(c);
    let mut keys = Vec::new();
    conv(
        &mut keys,
        POST_QUANT_CONV,
        c.z_channels,
        c.codebook_embed_dim,
        c.post_quant_kernel,
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
