//! The naive VQ decoder: `VQModel.decode_code` with CHW feature maps, one image at a time.

use super::{dot, silu, tensor, Weights};

/// A CHW feature map of one image.
#[derive(Clone, Debug)]
pub(crate) struct Fm {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) data: Vec<f32>,
}

impl Fm {
    pub(crate) fn zeros(c: usize, h: usize, w: usize) -> Self {
        Fm {
            c,
            h,
            w,
            data: vec![0f32; c * h * w],
        }
    }
    pub(crate) fn plane(&self, c: usize) -> &[f32] {
        &self.data[c * self.h * self.w..(c + 1) * self.h * self.w]
    }
}

/// `nn.Conv2d(cin, cout, k, stride 1, padding k / 2)` with bias; weight `[cout, cin, k, k]`.
pub(crate) fn conv2d(x: &Fm, weights: &Weights, name: &str, cout: usize, k: usize) -> Fm {
    let cin = x.c;
    let wt = tensor(weights, &format!("{name}.weight"), &[cout, cin, k, k]);
    let bias = tensor(weights, &format!("{name}.bias"), &[cout]);
    let (h, w) = (x.h, x.w);
    let pad = k / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    // zero-padded copy of the input
    let mut xp = vec![0f32; cin * hp * wp];
    for c in 0..cin {
        let src = x.plane(c);
        for y in 0..h {
            let dst = &mut xp[c * hp * wp + (y + pad) * wp + pad..][..w];
            dst.copy_from_slice(&src[y * w..(y + 1) * w]);
        }
    }
    let mut out = Fm::zeros(cout, h, w);
    // Output rows y0..y1 of one output plane: every input plane times its k x k taps, row by
    // row. Each output element still sums bias, then (ic, ky, kx) in order, so the banding
    // below changes no result; it keeps a band of every input plane in cache (at 256 x 256 and
    // 160 channels a whole input is 42 MB, a band of 8 rows 1.7 MB).
    let band = |oc: usize, o_plane: &mut [f32], y0: usize, y1: usize| {
        for ic in 0..cin {
            let in_plane = &xp[ic * hp * wp..(ic + 1) * hp * wp];
            let wk = &wt[(oc * cin + ic) * k * k..(oc * cin + ic + 1) * k * k];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = wk[ky * k + kx];
                    for y in y0..y1 {
                        let o_row = &mut o_plane[y * w..(y + 1) * w];
                        let i_row = &in_plane[(y + ky) * wp + kx..][..w];
                        for (o, i) in o_row.iter_mut().zip(i_row) {
                            *o += wv * i;
                        }
                    }
                }
            }
        }
    };
    const BAND_ROWS: usize = 8;
    // Output channels split over the cores (each element's arithmetic is unchanged, so the
    // result does not depend on the thread count).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = cout.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (t, chunk) in out.data.chunks_mut(per * h * w).enumerate() {
            let band = &band;
            scope.spawn(move || {
                for (i, o_plane) in chunk.chunks_exact_mut(h * w).enumerate() {
                    o_plane.fill(bias[t * per + i]);
                }
                for y0 in (0..h).step_by(BAND_ROWS) {
                    let y1 = (y0 + BAND_ROWS).min(h);
                    for (i, o_plane) in chunk.chunks_exact_mut(h * w).enumerate() {
                        band(t * per + i, o_plane, y0, y1);
                    }
                }
            });
        }
    });
    out
}

/// `nn.GroupNorm(32, C, eps=1e-6, affine=True)` (biased variance), statistics in f64.
pub(crate) fn group_norm(x: &Fm, weights: &Weights, name: &str) -> Fm {
    const GROUPS: usize = 32;
    const EPS: f64 = 1e-6;
    assert!(
        x.c.is_multiple_of(GROUPS),
        "GroupNorm: {} channels not divisible by {GROUPS}",
        x.c
    );
    let gamma = tensor(weights, &format!("{name}.weight"), &[x.c]);
    let beta = tensor(weights, &format!("{name}.bias"), &[x.c]);
    let per = x.c / GROUPS;
    let hw = x.h * x.w;
    let mut out = x.clone();
    for g in 0..GROUPS {
        let span = &x.data[g * per * hw..(g + 1) * per * hw];
        let n = span.len() as f64;
        let mean = span.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = span.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + EPS).sqrt();
        for c in g * per..(g + 1) * per {
            let (ga, be) = (gamma[c] as f64, beta[c] as f64);
            for v in &mut out.data[c * hw..(c + 1) * hw] {
                *v = (((*v as f64) - mean) * inv * ga + be) as f32;
            }
        }
    }
    out
}

pub(crate) fn swish(mut x: Fm) -> Fm {
    for v in &mut x.data {
        *v = silu(*v);
    }
    x
}

/// ResnetBlock: norm1, swish, conv1, norm2, swish, (dropout), conv2; 1x1 nin_shortcut when the
/// channel count changes; residual add.
pub(crate) fn resnet_block(x: &Fm, weights: &Weights, name: &str, cout: usize) -> Fm {
    let h = swish(group_norm(x, weights, &format!("{name}.norm1")));
    let h = conv2d(&h, weights, &format!("{name}.conv1"), cout, 3);
    let h = swish(group_norm(&h, weights, &format!("{name}.norm2")));
    let mut h = conv2d(&h, weights, &format!("{name}.conv2"), cout, 3);
    let skip;
    let skip_ref = if x.c != cout {
        skip = conv2d(x, weights, &format!("{name}.nin_shortcut"), cout, 1);
        &skip
    } else {
        x
    };
    for (a, b) in h.data.iter_mut().zip(&skip_ref.data) {
        *a += b;
    }
    h
}

/// AttnBlock: single-head self-attention over the h*w positions, scale c^-0.5, then proj_out and
/// residual add.
fn attn_block(x: &Fm, weights: &Weights, name: &str) -> Fm {
    let c = x.c;
    let hw = x.h * x.w;
    let hn = group_norm(x, weights, &format!("{name}.norm"));
    let q = conv2d(&hn, weights, &format!("{name}.q"), c, 1);
    let k = conv2d(&hn, weights, &format!("{name}.k"), c, 1);
    let v = conv2d(&hn, weights, &format!("{name}.v"), c, 1);
    // position-major copies so dot products run over channels contiguously
    let transpose = |m: &Fm| -> Vec<f32> {
        let mut t = vec![0f32; hw * c];
        for ch in 0..c {
            for p in 0..hw {
                t[p * c + ch] = m.data[ch * hw + p];
            }
        }
        t
    };
    let (qt, kt) = (transpose(&q), transpose(&k));
    let scale = (c as f32).powf(-0.5);
    let mut out = Fm::zeros(c, x.h, x.w);
    let mut probs = vec![0f32; hw];
    for i in 0..hw {
        let qi = &qt[i * c..(i + 1) * c];
        for j in 0..hw {
            probs[j] = dot(qi, &kt[j * c..(j + 1) * c]) * scale;
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
            out.data[ch * hw + i] = dot(&v.data[ch * hw..(ch + 1) * hw], &probs);
        }
    }
    let proj = conv2d(&out, weights, &format!("{name}.proj_out"), c, 1);
    let mut y = x.clone();
    for (a, b) in y.data.iter_mut().zip(&proj.data) {
        *a += b;
    }
    y
}

/// `F.interpolate(scale_factor=2, mode="nearest")`.
pub(crate) fn upsample_nearest2(x: &Fm) -> Fm {
    let (h2, w2) = (2 * x.h, 2 * x.w);
    let mut out = Fm::zeros(x.c, h2, w2);
    for c in 0..x.c {
        let src = x.plane(c);
        for y in 0..h2 {
            for xx in 0..w2 {
                out.data[c * h2 * w2 + y * w2 + xx] = src[(y / 2) * x.w + xx / 2];
            }
        }
    }
    out
}

/// VQ decoder configuration (the official `ModelArgs` / `Decoder` arguments that matter).
#[derive(Clone, Debug)]
pub struct VqRef {
    pub codebook_embed_dim: usize,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
}

impl VqRef {
    /// VQ-16: ch 128, ch_mult [1, 1, 2, 2, 4], z_channels 256, codebook_embed_dim 8, 2 res blocks.
    pub fn vq16() -> Self {
        VqRef {
            codebook_embed_dim: 8,
            ch: 128,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            z_channels: 256,
        }
    }

    /// Official `decode_code(tokens, shape=[1, embed_dim, grid, grid])` for one image:
    /// `tokens` row-major over the grid -> image `[3, H, W]`, H = W = grid * 2^(levels - 1).
    pub fn decode(&self, weights: &Weights, tokens: &[usize], grid: usize) -> Vec<f32> {
        assert_eq!(
            tokens.len(),
            grid * grid,
            "vq_decode: {} tokens for a {grid}x{grid} grid",
            tokens.len()
        );
        let ed = self.codebook_embed_dim;
        let ecb = &weights
            .get("quantize.embedding.weight")
            .unwrap_or_else(|| panic!("reference: missing weight 'quantize.embedding.weight'"));
        assert_eq!(ecb.0.len(), 2, "codebook must be 2-D");
        assert_eq!(ecb.0[1], ed, "codebook embed dim");
        let n_codes = ecb.0[0];
        let codebook = &ecb.1;
        // get_codebook_entry: F.normalize(p=2, dim=-1, eps=1e-12), lookup, [B, h, w, C] -> BCHW
        let mut z = Fm::zeros(ed, grid, grid);
        for (p, &tok) in tokens.iter().enumerate() {
            assert!(tok < n_codes, "token {tok} >= codebook size {n_codes}");
            let row = &codebook[tok * ed..(tok + 1) * ed];
            let norm = row
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for (c, &v) in row.iter().enumerate() {
                z.data[c * grid * grid + p] = (v as f64 / norm) as f32;
            }
        }
        let h = conv2d(&z, weights, "post_quant_conv", self.z_channels, 1);

        // Decoder
        let levels = self.ch_mult.len();
        let mut block_in = self.ch * self.ch_mult[levels - 1];
        let mut h = conv2d(&h, weights, "decoder.conv_in", block_in, 3);
        h = resnet_block(&h, weights, "decoder.mid.0", block_in);
        h = attn_block(&h, weights, "decoder.mid.1");
        h = resnet_block(&h, weights, "decoder.mid.2", block_in);
        // conv_blocks.i corresponds to i_level = levels - 1 - i (built over reversed levels)
        for (i, i_level) in (0..levels).rev().enumerate() {
            let block_out = self.ch * self.ch_mult[i_level];
            for j in 0..=self.num_res_blocks {
                h = resnet_block(
                    &h,
                    weights,
                    &format!("decoder.conv_blocks.{i}.res.{j}"),
                    block_out,
                );
                block_in = block_out;
                if i_level == levels - 1 {
                    h = attn_block(&h, weights, &format!("decoder.conv_blocks.{i}.attn.{j}"));
                }
            }
            if i != levels - 1 {
                h = upsample_nearest2(&h);
                h = conv2d(
                    &h,
                    weights,
                    &format!("decoder.conv_blocks.{i}.upsample.conv"),
                    block_in,
                    3,
                );
            }
        }
        let h = swish(group_norm(&h, weights, "decoder.norm_out"));
        conv2d(&h, weights, "decoder.conv_out", 3, 3).data
    }
}

/// Official `VQModel.decode_code` for one image (see [`VqRef::decode`]); returns `[3, H, W]`.
#[allow(clippy::too_many_arguments)]
pub fn vq_decode(
    weights: &Weights,
    codebook_embed_dim: usize,
    ch: usize,
    ch_mult: &[usize],
    num_res_blocks: usize,
    z_channels: usize,
    tokens: &[usize],
    grid: usize,
) -> Vec<f32> {
    VqRef {
        codebook_embed_dim,
        ch,
        ch_mult: ch_mult.to_vec(),
        num_res_blocks,
        z_channels,
    }
    .decode(weights, tokens, grid)
}
