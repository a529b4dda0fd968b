//! The naive VAR VQVAE decode (`VQVAE.fhat_to_img` without the clamp, `models/basic_vae.py`'s
//! `Decoder`), under the official VQVAE key names:
//! `post_quant_conv` (3x3), `decoder.conv_in`, `decoder.mid.block_1` / `attn_1` / `block_2`,
//! then for `i_level` from deep to shallow `decoder.up.{i_level}.block.{r}` (r = 0 ..=
//! num_res_blocks), `decoder.up.{i_level}.attn.{r}` at the deepest level, and
//! `decoder.up.{i_level}.upsample.conv` (nearest x2, then the conv) above level 0; then
//! `decoder.norm_out`, swish, `decoder.conv_out`.
//!
//! The attention block reads its fused 1x1 `qkv` conv (q, k, v are its three channel thirds).
//! ResnetBlocks, GroupNorm, convolutions and the nearest upsampling are the LlamaGen reference's
//! (`vq.rs`): the math is taming's in both code bases.

use super::vq::{conv2d, group_norm, resnet_block, swish, upsample_nearest2, Fm};
use super::{dot, Weights};

/// The VQVAE decoder's configuration (`VQVAE(...)`'s `ddconfig`).
#[derive(Clone, Debug)]
pub struct VarVaeRef {
    /// `Cvae` (= `z_channels`).
    pub cvae: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    /// Encoder res blocks per level; the decoder has one more.
    pub num_res_blocks: usize,
}

impl VarVaeRef {
    /// The released `vae_ch160v4096z32.pth`: Cvae 32, ch 160, ch_mult (1, 1, 2, 2, 4), 2 res
    /// blocks.
    pub fn released() -> Self {
        VarVaeRef {
            cvae: 32,
            ch: 160,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
        }
    }

    /// `decoder(post_quant_conv(f_hat))` of one image: `f_hat` is `[Cvae, side, side]` (CHW);
    /// returns the unclamped image `[3, H, W]`, H = side * 2^(levels - 1).
    pub fn decode(&self, weights: &Weights, f_hat: &[f32], side: usize) -> Vec<f32> {
        assert_eq!(f_hat.len(), self.cvae * side * side, "f_hat size");
        let z = Fm {
            c: self.cvae,
            h: side,
            w: side,
            data: f_hat.to_vec(),
        };
        let z = conv2d(&z, weights, "post_quant_conv", self.cvae, 3);
        let levels = self.ch_mult.len();
        let mut block_in = self.ch * self.ch_mult[levels - 1];
        let mut h = conv2d(&z, weights, "decoder.conv_in", block_in, 3);
        h = resnet_block(&h, weights, "decoder.mid.block_1", block_in);
        h = attn_block(&h, weights, "decoder.mid.attn_1");
        h = resnet_block(&h, weights, "decoder.mid.block_2", block_in);
        for level in (0..levels).rev() {
            let block_out = self.ch * self.ch_mult[level];
            for r in 0..=self.num_res_blocks {
                h = resnet_block(
                    &h,
                    weights,
                    &format!("decoder.up.{level}.block.{r}"),
                    block_out,
                );
                block_in = block_out;
                if level == levels - 1 {
                    h = attn_block(&h, weights, &format!("decoder.up.{level}.attn.{r}"));
                }
            }
            if level != 0 {
                h = upsample_nearest2(&h);
                h = conv2d(
                    &h,
                    weights,
                    &format!("decoder.up.{level}.upsample.conv"),
                    block_in,
                    3,
                );
            }
        }
        let h = swish(group_norm(&h, weights, "decoder.norm_out"));
        conv2d(&h, weights, "decoder.conv_out", 3, 3).data
    }
}

/// `AttnBlock`: GroupNorm, the fused 1x1 `qkv` conv, single-head attention over the h*w
/// positions with scale C^-0.5, `proj_out`, residual add.
fn attn_block(x: &Fm, weights: &Weights, name: &str) -> Fm {
    let c = x.c;
    let hw = x.h * x.w;
    let hn = group_norm(x, weights, &format!("{name}.norm"));
    let qkv = conv2d(&hn, weights, &format!("{name}.qkv"), 3 * c, 1);
    // position-major q and k: [hw][c]
    let rows = |part: usize| -> Vec<f32> {
        let mut t = vec![0f32; hw * c];
        for ch in 0..c {
            for p in 0..hw {
                t[p * c + ch] = qkv.data[(part * c + ch) * hw + p];
            }
        }
        t
    };
    let (q, k) = (rows(0), rows(1));
    let v = &qkv.data[2 * c * hw..3 * c * hw];
    let scale = (c as f32).powf(-0.5);
    let mut out = Fm::zeros(c, x.h, x.w);
    let mut probs = vec![0f32; hw];
    for i in 0..hw {
        let qi = &q[i * c..(i + 1) * c];
        for (j, p) in probs.iter_mut().enumerate() {
            *p = dot(qi, &k[j * c..(j + 1) * c]) * scale;
        }
        let m = probs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for p in probs.iter_mut() {
            *p = (*p - m).exp();
            z += *p;
        }
        for p in probs.iter_mut() {
            *p /= z;
        }
        for ch in 0..c {
            out.data[ch * hw + i] = dot(&v[ch * hw..(ch + 1) * hw], &probs);
        }
    }
    let proj = conv2d(&out, weights, &format!("{name}.proj_out"), c, 1);
    let mut y = x.clone();
    for (a, b) in y.data.iter_mut().zip(&proj.data) {
        *a += b;
    }
    y
}
