//! The naive VAR quantizer side (`models/quant.py`, `VectorQuantizer2` at inference): codebook
//! lookup, torch's bicubic and area resizes written out per output pixel, the phi convolutions
//! and their selection by `np.linspace` ticks, and the multi-scale `f_hat` accumulation.
//!
//! Feature maps are CHW of one image (`Fm`). Resizes follow `F.interpolate(..., size=(n, n))`:
//! - `mode="bicubic"`, `align_corners=False`: source coordinate `(i + 0.5) * in / out - 0.5`
//!   (not clamped at 0 for cubic), taps `floor - 1 ..= floor + 2` clamped into the image, Keys'
//!   cubic convolution with `A = -0.75`, separable (rows, then columns);
//! - `mode="area"` = `adaptive_avg_pool2d`: output cell `i` averages input rows
//!   `floor(i * in / out) .. ceil((i + 1) * in / out)`, and the same for columns.

use super::vq::{conv2d, Fm};
use super::{tensor, Weights};

/// The codebook key of the VQVAE checkpoint (`quantize.embedding`, used raw: VAR does not
/// normalise on lookup).
pub const VAR_CODEBOOK: &str = "quantize.embedding.weight";

/// How the VQVAE's phi convolutions are shared (`share_quant_resi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhiShare {
    /// `share_quant_resi = 0`: one phi per scale (`quantize.quant_resi.{k}`).
    NonShared,
    /// `share_quant_resi = 1`: one phi for all scales (`quantize.quant_resi.qresi`).
    Shared,
    /// `share_quant_resi = K > 1`: K phis (`quantize.quant_resi.qresi_ls.{k}`).
    Partially(usize),
}

/// The quantizer's inference configuration.
#[derive(Clone, Debug)]
pub struct VarQuantRef {
    pub vocab_size: usize,
    pub cvae: usize,
    /// `v_patch_nums`: the side of each scale's token map; the last is `f_hat`'s side.
    pub patch_nums: Vec<usize>,
    pub phi: PhiShare,
    /// `quant_resi`: phi(x) = (1 - r) x + r conv3x3(x).
    pub quant_resi: f32,
}

/// Keys' cubic convolution weights of the four taps at fractional offset `t` (torch's
/// `get_cubic_upsample_coefficients`, A = -0.75).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the four clamped source indices and their weights.
fn bicubic_taps(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let src = (i as f32 + 0.5) * scale - 0.5;
            let x0 = src.floor();
            let w = cubic_weights(src - x0);
            let clamp = |k: f32| (k.max(0.0) as usize).min(n_in - 1);
            let idx = [clamp(x0 - 1.0), clamp(x0), clamp(x0 + 1.0), clamp(x0 + 2.0)];
            (idx, w)
        })
        .collect()
}

/// `F.interpolate(x, size=(n, n), mode="bicubic", align_corners=False)`.
pub(crate) fn bicubic(x: &Fm, n: usize) -> Fm {
    let ty = bicubic_taps(x.h, n);
    let tx = bicubic_taps(x.w, n);
    let mut out = Fm::zeros(x.c, n, n);
    for c in 0..x.c {
        let src = x.plane(c);
        for (oy, (iy, wy)) in ty.iter().enumerate() {
            for (ox, (ix, wx)) in tx.iter().enumerate() {
                let mut acc = 0f32;
                for a in 0..4 {
                    let mut row = 0f32;
                    for b in 0..4 {
                        row += wx[b] * src[iy[a] * x.w + ix[b]];
                    }
                    acc += wy[a] * row;
                }
                out.data[(c * n + oy) * n + ox] = acc;
            }
        }
    }
    out
}

/// `[start, end)` of the input cells that output cell `i` of `n_out` averages.
fn area_span(i: usize, n_in: usize, n_out: usize) -> (usize, usize) {
    let start = (i * n_in) / n_out;
    let end = ((i + 1) * n_in).div_ceil(n_out);
    (start, end)
}

/// `F.interpolate(x, size=(n, n), mode="area")` (adaptive average pooling).
pub(crate) fn area(x: &Fm, n: usize) -> Fm {
    let mut out = Fm::zeros(x.c, n, n);
    for c in 0..x.c {
        let src = x.plane(c);
        for oy in 0..n {
            let (y0, y1) = area_span(oy, x.h, n);
            for ox in 0..n {
                let (x0, x1) = area_span(ox, x.w, n);
                let mut sum = 0f32;
                for y in y0..y1 {
                    for xx in x0..x1 {
                        sum += src[y * x.w + xx];
                    }
                }
                out.data[(c * n + oy) * n + ox] = sum / ((y1 - y0) * (x1 - x0)) as f32;
            }
        }
    }
    out
}

/// `np.argmin(np.abs(ticks - at))` with `ticks = np.linspace(lo, 1 - lo, k)`, where
/// `lo = 1 / (3k)` for k = 4 and `1 / (2k)` otherwise (first minimum on ties).
pub fn phi_index(k: usize, at: f64) -> usize {
    if k == 1 {
        return 0;
    }
    let lo = if k == 4 {
        1.0 / 3.0 / k as f64
    } else {
        1.0 / 2.0 / k as f64
    };
    let hi = 1.0 - lo;
    let step = (hi - lo) / (k - 1) as f64;
    let mut best = (0, f64::INFINITY);
    for i in 0..k {
        // np.linspace: start + i * step, with the last value exactly `stop`.
        let tick = if i == k - 1 { hi } else { lo + i as f64 * step };
        let d = (tick - at).abs();
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

impl VarQuantRef {
    /// The released VQVAE's quantizer (vocab 4096, Cvae 32, 4 partially shared phis, 0.5).
    pub fn released(patch_nums: &[usize]) -> Self {
        VarQuantRef {
            vocab_size: 4096,
            cvae: 32,
            patch_nums: patch_nums.to_vec(),
            phi: PhiShare::Partially(4),
            quant_resi: 0.5,
        }
    }

    /// `f_hat`'s side (`v_patch_nums[-1]`).
    pub fn side(&self) -> usize {
        *self.patch_nums.last().expect("patch_nums is not empty")
    }

    /// `self.embedding(idx).transpose(1, 2).view(Cvae, pn, pn)`: token `p` is pixel
    /// `(p / pn, p % pn)`.
    pub(crate) fn embed(&self, weights: &Weights, tokens: &[usize]) -> Fm {
        let pn = (tokens.len() as f64).sqrt().round() as usize;
        assert_eq!(
            pn * pn,
            tokens.len(),
            "{} tokens are not a square",
            tokens.len()
        );
        let cb = tensor(weights, VAR_CODEBOOK, &[self.vocab_size, self.cvae]);
        let mut h = Fm::zeros(self.cvae, pn, pn);
        for (p, &t) in tokens.iter().enumerate() {
            assert!(
                t < self.vocab_size,
                "token {t} >= vocab {}",
                self.vocab_size
            );
            for c in 0..self.cvae {
                h.data[c * pn * pn + p] = cb[t * self.cvae + c];
            }
        }
        h
    }

    /// `quant_resi[si / (S - 1)](h)`: phi(h) = (1 - r) h + r conv3x3(h).
    pub(crate) fn phi(&self, weights: &Weights, si: usize, scales: usize, h: &Fm) -> Fm {
        let at = if scales > 1 {
            si as f64 / (scales - 1) as f64
        } else {
            0.0
        };
        let name = match self.phi {
            PhiShare::Shared => "quantize.quant_resi.qresi".to_string(),
            PhiShare::NonShared => format!("quantize.quant_resi.{}", phi_index(scales, at)),
            PhiShare::Partially(k) => {
                format!("quantize.quant_resi.qresi_ls.{}", phi_index(k, at))
            }
        };
        let conv = conv2d(h, weights, &name, self.cvae, 3);
        // Phi keeps `abs(quant_resi)` as its ratio.
        let r = self.quant_resi.abs();
        let mut out = h.clone();
        for (o, c) in out.data.iter_mut().zip(&conv.data) {
            *o = *o * (1.0 - r) + c * r;
        }
        out
    }

    /// `get_next_autoregressive_input(si, S, f_hat, h)` for one image: adds scale `si`'s
    /// tokens to `f_hat` (`[Cvae, side, side]`, CHW) and returns the next scale's input
    /// `area(f_hat, pn_next)` as `[pn_next^2][Cvae]` rows (None after the last scale).
    pub fn add_scale(
        &self,
        weights: &Weights,
        si: usize,
        tokens: &[usize],
        f_hat: &mut [f32],
    ) -> Option<Vec<Vec<f32>>> {
        let scales = self.patch_nums.len();
        let side = self.side();
        assert_eq!(f_hat.len(), self.cvae * side * side, "f_hat size");
        let h = self.embed(weights, tokens);
        let last = si == scales - 1;
        let up = if last { h } else { bicubic(&h, side) };
        let add = self.phi(weights, si, scales, &up);
        for (f, a) in f_hat.iter_mut().zip(&add.data) {
            *f += a;
        }
        if last {
            return None;
        }
        let fm = Fm {
            c: self.cvae,
            h: side,
            w: side,
            data: f_hat.to_vec(),
        };
        let pn = self.patch_nums[si + 1];
        let next = area(&fm, pn);
        Some(
            (0..pn * pn)
                .map(|p| (0..self.cvae).map(|c| next.data[c * pn * pn + p]).collect())
                .collect(),
        )
    }

    /// `embed_to_fhat(all_to_max_scale=True, last_one=True)` of one image's tokens (all scales
    /// concatenated): `f_hat` as `[Cvae, side, side]`.
    pub fn f_hat(&self, weights: &Weights, tokens: &[usize]) -> Vec<f32> {
        let side = self.side();
        let mut f_hat = vec![0f32; self.cvae * side * side];
        let mut begin = 0;
        for (si, &pn) in self.patch_nums.iter().enumerate() {
            let end = begin + pn * pn;
            self.add_scale(weights, si, &tokens[begin..end], &mut f_hat);
            begin = end;
        }
        assert_eq!(begin, tokens.len(), "tokens of all scales");
        f_hat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_ticks_follow_numpy_linspace() {
        // K = 4: ticks 1/12, 13/36, 23/36, 11/12; 10 scales at si / 9.
        let picks: Vec<usize> = (0..10).map(|si| phi_index(4, si as f64 / 9.0)).collect();
        assert_eq!(picks, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
        // K = 3: ticks 1/6, 1/2, 5/6.
        assert_eq!(phi_index(3, 0.0), 0);
        assert_eq!(phi_index(3, 0.6), 1);
        assert_eq!(phi_index(3, 1.0), 2);
    }

    #[test]
    fn bicubic_keeps_constants_and_identity() {
        let x = Fm {
            c: 1,
            h: 3,
            w: 3,
            data: vec![2.5; 9],
        };
        let up = bicubic(&x, 7);
        assert!(
            up.data.iter().all(|&v| (v - 2.5).abs() < 1e-5),
            "{:?}",
            up.data
        );
        let y = Fm {
            c: 1,
            h: 2,
            w: 2,
            data: vec![1.0, 2.0, 3.0, 4.0],
        };
        assert_eq!(bicubic(&y, 2).data, y.data);
    }

    #[test]
    fn bicubic_matches_torch_on_a_ramp() {
        // torch: F.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4), mode="bicubic")
        // gives [-0.10546875, 0.2265625, 0.7734375, 1.10546875] (edge taps clamped).
        let x = Fm {
            c: 1,
            h: 1,
            w: 2,
            data: vec![0.0, 1.0],
        };
        let tx = bicubic_taps(x.w, 4);
        let row: Vec<f32> = tx
            .iter()
            .map(|(ix, wx)| (0..4).map(|b| wx[b] * x.data[ix[b]]).sum())
            .collect();
        // torch's values, exact in f32: -27/256, 58/256, 198/256, 283/256.
        let want = [-27.0 / 256.0, 58.0 / 256.0, 198.0 / 256.0, 283.0 / 256.0];
        for (g, w) in row.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn area_averages_overlapping_cells() {
        // 3 -> 2: cells [0, 2) and [1, 3).
        let x = Fm {
            c: 1,
            h: 1,
            w: 3,
            data: vec![1.0, 2.0, 6.0],
        };
        assert_eq!(area_span(0, 3, 2), (0, 2));
        assert_eq!(area_span(1, 3, 2), (1, 3));
        let fm = Fm {
            c: 1,
            h: 3,
            w: 3,
            data: [x.data.clone(), x.data.clone(), x.data].concat(),
        };
        assert_eq!(area(&fm, 2).data, vec![1.5, 4.0, 1.5, 4.0]);
    }
}
