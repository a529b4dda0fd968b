//! The VQ decoder kernels and GEMM convolutions (`ops::vq`) against naive CPU references (f64
//! math on the same f16-rounded inputs), on random inputs from a small deterministic generator,
//! with odd sizes, on every available device (emulator and/or GPU).
//!
//! Tolerance levels (`llamagen_test_support::tolerance`, `|got - ref| <= rtol * |ref| + atol`
//! elementwise, computed in f64 against the f64 references; the reasons for each figure are
//! documented on the levels):
//! - `EXACT`: conversions and copies (upsample/pad of `x + bias` rounds once, like the reference).
//! - `VQ_KERNEL_FP32_NORMALISE`: the codebook's L2 normalisation in f32 (rtol 1e-6, atol 1e-9).
//! - `VQ_KERNEL_FP16_OUT`: one f32 -> f16 rounding of an f32 result (rtol 5e-4, atol 1e-7).
//! - `VQ_KERNEL_FP16_NORM`: GroupNorm output rounded to f16 (rtol 5e-4, atol 1e-4).
//! - `VQ_KERNEL_FP32_GEMM`: f32-accumulated GEMM convolutions (rtol 1e-6, atol 1e-4).
//! - `VQ_KERNEL_FP16_ATTN`: attention output (rtol 5e-4, atol 6e-4).
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use cuda_common::{
    download_f16, download_f32, round_f16, upload_bytes, upload_f16, upload_f32, upload_i32, Rng,
};

use half::f16;
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::vq::{
    bias_f16, bias_residual, codebook_gather, conv_input_rows, group_norm_f16, l2_normalize_rows,
    softmax_rows_f16, upsample_pad_f16, ConvShape, GroupNormArgs, MapF32, MAX_STAT_CHUNKS,
};
use llamagen_cuda::ops::vq_gemm::{
    attention_scores, attention_values, conv1x1, conv3x3, conv3x3_mma, conv3x3_mma_fits,
};
use llamagen_test_support::{
    EXACT, VQ_KERNEL_FP16_ATTN, VQ_KERNEL_FP16_NORM, VQ_KERNEL_FP16_OUT, VQ_KERNEL_FP32_GEMM,
    VQ_KERNEL_FP32_NORMALISE,
};

/// A device buffer of `bytes` bytes filled with 0xff (f16 and f32 NaN): whatever a kernel
/// leaves unwritten shows up.
fn poisoned<D: Device>(d: &D, bytes: usize) -> D::Buf {
    upload_bytes(d, &vec![0xff; bytes])
}

/// `v` widened to f64 (exact): device results are compared with the f64 references in f64.
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// A host feature map `[batch, h, w, c]` stored with row pitch `pitch` (positions) and junk
/// (NaN) in the `pitch - w` extra positions of each row, as a 3x3 conv writes it.
struct HostMap {
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    pitch: usize,
    data: Vec<f32>,
}

impl HostMap {
    fn random(rng: &mut Rng, batch: usize, h: usize, w: usize, c: usize, pitch: usize) -> Self {
        let mut data = rng.vec_f32(batch * h * pitch * c, -4.0, 4.0);
        for b in 0..batch {
            for y in 0..h {
                for x in w..pitch {
                    for ch in 0..c {
                        data[((b * h + y) * pitch + x) * c + ch] = f32::NAN;
                    }
                }
            }
        }
        HostMap {
            batch,
            h,
            w,
            c,
            pitch,
            data,
        }
    }

    fn at(&self, b: usize, y: usize, x: usize, ch: usize) -> f32 {
        self.data[((b * self.h + y) * self.pitch + x) * self.c + ch]
    }

    fn device(&self, data: DevSlice<f32>) -> MapF32 {
        MapF32 {
            pitch: self.pitch,
            img_stride: self.h * self.pitch * self.c,
            ..MapF32::compact(data, self.batch, self.h, self.w, self.c)
        }
    }
}

/// Values of an `h x w` image whose position (y, x) holds `f(b, y, x, ch)`: the compact
/// `[batch, h*w, c]` f16 buffer, or with `pad` the 3-tap conv input
/// `[batch, conv_input_rows(h, w), 3c]` of its zero-padded map (see [`three_tap`]).
fn layout(
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    pad: bool,
    f: impl Fn(usize, usize, usize, usize) -> f64,
) -> Vec<f64> {
    if !pad {
        let mut out = vec![0f64; batch * h * w * c];
        for (i, v) in out.iter_mut().enumerate() {
            let (b, p, ch) = (i / (h * w * c), (i / c) % (h * w), i % c);
            *v = f(b, p / w, p % w, ch);
        }
        return out;
    }
    three_tap(&padded_positions(batch, h, w, c, f), batch, h, w, c)
}

/// The zero-padded map of an image whose (y, x) holds `f(b, y, x, ch)`: per image the
/// `(h+2)(w+2)` positions plus the 2 (zero) positions past them, `c` values each.
fn padded_positions(
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    f: impl Fn(usize, usize, usize, usize) -> f64,
) -> Vec<f64> {
    let (wp, n) = (w + 2, conv_input_rows(h, w) + 2);
    let mut out = vec![0f64; batch * n * c];
    for b in 0..batch {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out[(b * n + (y + 1) * wp + x + 1) * c + ch] = f(b, y, x, ch);
                }
            }
        }
    }
    out
}

/// [`padded_positions`] in the 3-tap layout: row `j` holds positions `j, j+1, j+2`.
fn three_tap(positions: &[f64], batch: usize, h: usize, w: usize, c: usize) -> Vec<f64> {
    let (rows, n) = (conv_input_rows(h, w), conv_input_rows(h, w) + 2);
    let mut out = vec![0f64; batch * rows * 3 * c];
    for b in 0..batch {
        for j in 0..rows {
            for kx in 0..3 {
                let src = &positions[(b * n + j + kx) * c..][..c];
                out[((b * rows + j) * 3 + kx) * c..][..c].copy_from_slice(src);
            }
        }
    }
    out
}

/// f16 values of a writer's output for `batch` images of `h x w x c` (see [`layout`]).
fn input_len(batch: usize, h: usize, w: usize, c: usize, pad: bool) -> usize {
    batch
        * c
        * if pad {
            3 * conv_input_rows(h, w)
        } else {
            h * w
        }
}

fn check_codebook_normalise_and_gather<D: Device>(d: &D) {
    let mut rng = Rng(1);
    let (n, dim) = (37, 8);
    let mut book = rng.vec_f32(n * dim, -2.0, 2.0);
    book[3 * dim..4 * dim].fill(0.0); // zero row stays zero (eps, no NaN)
    book[5 * dim..6 * dim].fill(1e-20); // tiny row: divided by eps 1e-12, as F.normalize
    let book_buf = upload_f32(d, &book);
    l2_normalize_rows(d, d.slice(&book_buf), n, dim).unwrap();
    let want: Vec<f64> = book
        .chunks(dim)
        .flat_map(|row| {
            let norm = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm = norm.max(1e-12);
            row.iter().map(move |&x| f64::from(x) / norm)
        })
        .collect();
    let normalised = download_f32(d, &book_buf, n * dim);
    VQ_KERNEL_FP32_NORMALISE.assert_close("normalised codebook", &f64s(&normalised), &want);

    // Ids outside the codebook are clamped, never read out of bounds.
    let tokens: Vec<i32> = vec![0, 36, 3, 5, 17, 17, -4, 99, 1, 2, 30];
    let tok_buf = upload_i32(d, &tokens);
    let out = poisoned(d, 2 * tokens.len() * dim);
    let (book_ptr, tok_ptr) = (d.slice(&book_buf), d.slice(&tok_buf));
    codebook_gather(d, d.slice(&out), book_ptr, tok_ptr, tokens.len(), dim, n).unwrap();
    let want: Vec<f64> = tokens
        .iter()
        .flat_map(|&t| {
            let t = t.clamp(0, n as i32 - 1) as usize;
            normalised[t * dim..(t + 1) * dim]
                .iter()
                .map(|&x| f64::from(round_f16(x)))
        })
        .collect();
    EXACT.assert_close(
        "gathered rows",
        &f64s(&download_f16(d, &out, tokens.len() * dim)),
        &want,
    );
}

/// Naive GroupNorm (+ swish) of `m` (+ bias) in f64: `[batch, h, w, c]` values by position.
fn group_norm_ref<'a>(
    m: &'a HostMap,
    bias: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    groups: usize,
    swish: bool,
) -> impl Fn(usize, usize, usize, usize) -> f64 + 'a {
    let cpg = m.c / groups;
    let value = move |b, y, x, ch: usize| f64::from(m.at(b, y, x, ch)) + f64::from(bias[ch]);
    let mut stats = vec![(0f64, 0f64); m.batch * groups];
    for (i, st) in stats.iter_mut().enumerate() {
        let (b, g) = (i / groups, i % groups);
        let mut vals = Vec::new();
        for y in 0..m.h {
            for x in 0..m.w {
                for ch in g * cpg..(g + 1) * cpg {
                    vals.push(value(b, y, x, ch));
                }
            }
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        *st = (mean, 1.0 / (var + 1e-6).sqrt());
    }
    move |b, y, x, ch| {
        let (mean, rstd) = stats[b * groups + ch / cpg];
        let v = (value(b, y, x, ch) - mean) * rstd * f64::from(gamma[ch]) + f64::from(beta[ch]);
        if swish {
            v / (1.0 + (-v).exp())
        } else {
            v
        }
    }
}

fn check_group_norm<D: Device>(d: &D) {
    let mut rng = Rng(2);
    let groups = 32;
    // (batch, h, w, c, pitch, offset): odd sides, conv-output pitch with junk, channels per
    // group 1..4, a mean offset (stable variance), and one map big enough for several
    // statistics slices per group (36 * 36 * 4 values > 4096).
    for (batch, h, w, c, pitch, offset) in [
        (2, 5, 3, 64, 5, 0.0),
        (1, 7, 9, 32, 9, 3.0),
        (3, 4, 4, 128, 4, -2.0),
        (2, 36, 36, 128, 38, 1.0),
    ] {
        let mut m = HostMap::random(&mut rng, batch, h, w, c, pitch);
        m.data.iter_mut().for_each(|v| *v += offset);
        let bias = rng.vec_f32(c, -1.0, 1.0);
        let gamma = rng.vec_f32(c, 0.5, 1.5);
        let beta = rng.vec_f32(c, -0.5, 0.5);
        let src = upload_f32(d, &m.data);
        let (bias_b, gamma_b, beta_b) = (
            upload_f32(d, &bias),
            upload_f32(d, &gamma),
            upload_f32(d, &beta),
        );
        let stats = d.alloc(4 * batch * groups * 2).unwrap();
        let partial = d.alloc(4 * batch * groups * MAX_STAT_CHUNKS * 3).unwrap();
        let map = m.device(d.slice(&src)).with_bias(d.slice(&bias_b));
        for (pad, swish) in [(true, true), (false, false), (true, false)] {
            let gn = GroupNormArgs {
                gamma: d.slice(&gamma_b),
                beta: d.slice(&beta_b),
                groups,
                eps: 1e-6,
                stats: d.slice(&stats),
                partial: d.slice(&partial),
                swish,
            };
            let n = input_len(batch, h, w, c, pad);
            let f = group_norm_ref(&m, &bias, &gamma, &beta, groups, swish);
            let want = layout(batch, h, w, c, pad, f);
            // At the buffer's start (16-byte aligned: the 8-channel kernel) and one element in
            // (the one-channel kernel).
            for skip in [0, 1] {
                let out = poisoned(d, 2 * (n + skip));
                let view = d.slice(&out).at("test", skip, n).unwrap();
                group_norm_f16(d, view, &map, &gn, pad).unwrap();
                VQ_KERNEL_FP16_NORM.assert_close(
                    &format!("group norm {batch}x{h}x{w}x{c} pad {pad} swish {swish} at {skip}"),
                    &f64s(&download_f16(d, &out, n + skip)[skip..]),
                    &want,
                );
            }
        }
    }
}

fn check_upsample_pad<D: Device>(d: &D) {
    let mut rng = Rng(3);
    for (batch, h, w, c, pitch) in [(2, 3, 5, 7, 7), (1, 4, 4, 32, 4)] {
        let m = HostMap::random(&mut rng, batch, h, w, c, pitch);
        let bias = rng.vec_f32(c, -1.0, 1.0);
        let src = upload_f32(d, &m.data);
        let bias_b = upload_f32(d, &bias);
        for (factor, pad, with_bias) in [(2, true, true), (1, true, false), (1, false, true)] {
            let map = m.device(d.slice(&src));
            let map = if with_bias {
                map.with_bias(d.slice(&bias_b))
            } else {
                map
            };
            let (fh, fw) = (h * factor, w * factor);
            let n = input_len(batch, fh, fw, c, pad);
            let out = poisoned(d, 2 * n);
            upsample_pad_f16(d, d.slice(&out), &map, factor, pad).unwrap();
            let want = layout(batch, fh, fw, c, pad, |b, y, x, ch| {
                let v = m.at(b, y / factor, x / factor, ch);
                f64::from(round_f16(if with_bias { v + bias[ch] } else { v }))
            });
            EXACT.assert_close(
                &format!("upsample x{factor} pad {pad} of {batch}x{h}x{w}x{c}"),
                &f64s(&download_f16(d, &out, n)),
                &want,
            );
        }
    }
}

/// Naive 3x3 (`k` = 3) or 1x1 conv, stride 1, zero padding k/2, of NHWC `x` with torch-layout
/// weights `[cout, cin, k, k]`: f64 `[batch, h, w, cout]`.
fn conv_ref(x: &[f32], w: &[f32], s: &ConvShape, k: usize) -> Vec<f64> {
    let r = (k / 2) as isize;
    let mut out = vec![0f64; s.batch * s.h * s.w * s.cout];
    for b in 0..s.batch {
        for y in 0..s.h {
            for xx in 0..s.w {
                for o in 0..s.cout {
                    let mut acc = 0f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (sy, sx) =
                                (y as isize + ky as isize - r, xx as isize + kx as isize - r);
                            if sy < 0 || sx < 0 || sy >= s.h as isize || sx >= s.w as isize {
                                continue;
                            }
                            let p = (b * s.h + sy as usize) * s.w + sx as usize;
                            for i in 0..s.cin {
                                acc += f64::from(x[p * s.cin + i])
                                    * f64::from(w[((o * s.cin + i) * k + ky) * k + kx]);
                            }
                        }
                    }
                    out[((b * s.h + y) * s.w + xx) * s.cout + o] = acc;
                }
            }
        }
    }
    out
}

/// Torch-layout conv weights `[cout, cin, k*k]` as the device's `[k*k, cin, cout]`.
fn gemm_layout(w: &[f32], cout: usize, cin: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..taps {
                out[(t * cin + i) * cout + o] = w[(o * cin + i) * taps + t];
            }
        }
    }
    out
}

fn check_conv3x3<D: Device>(d: &D) {
    let mut rng = Rng(4);
    for s in [
        ConvShape {
            batch: 2,
            h: 5,
            w: 7,
            cin: 13,
            cout: 9,
        },
        ConvShape {
            batch: 1,
            h: 4,
            w: 3,
            cin: 16,
            cout: 3,
        },
        ConvShape {
            batch: 3,
            h: 1,
            w: 1,
            cin: 5,
            cout: 6,
        },
        // Shapes the tensor-core kernel takes too: 216 output rows across images and a
        // 128-row tile, 40 channels (a partial 32-channel tile), a 1x1 map.
        ConvShape {
            batch: 3,
            h: 9,
            w: 6,
            cin: 16,
            cout: 40,
        },
        ConvShape {
            batch: 2,
            h: 1,
            w: 1,
            cin: 16,
            cout: 8,
        },
    ] {
        let x = rng.vec_f16(s.batch * s.h * s.w * s.cin, -1.0, 1.0);
        let w = rng.vec_f16(s.cout * s.cin * 9, -1.0, 1.0);
        let bias = rng.vec_f32(s.cout, -1.0, 1.0);
        let residual = rng.vec_f32(s.batch * s.h * s.w * s.cout, -1.0, 1.0);
        // The 3-tap input with NaN at the two positions past the padded map: they may feed
        // only junk columns.
        let n = conv_input_rows(s.h, s.w) + 2;
        let mut positions = padded_positions(s.batch, s.h, s.w, s.cin, |b, y, xx, i| {
            f64::from(x[((b * s.h + y) * s.w + xx) * s.cin + i])
        });
        for b in 0..s.batch {
            positions[((b + 1) * n - 2) * s.cin..(b + 1) * n * s.cin].fill(f64::NAN);
        }
        let padded: Vec<f32> = three_tap(&positions, s.batch, s.h, s.w, s.cin)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let input = upload_f16(d, &padded);
        let weights = upload_f16(d, &gemm_layout(&w, s.cout, s.cin, 9));
        let bias_b = upload_f32(d, &bias);
        let conv = conv_ref(&x, &w, &s, 3);
        for mma in [false, true] {
            if mma && !conv3x3_mma_fits(&s) {
                continue;
            }
            let t = poisoned(d, 4 * s.batch * s.h * (s.w + 2) * s.cout);
            let (input, weights, out) = (d.slice(&input), d.slice(&weights), d.slice(&t));
            if mma {
                conv3x3_mma(d, &s, input, weights, out).unwrap();
            } else {
                conv3x3(d, &s, input, weights, out).unwrap();
            }
            let map = MapF32::conv_out(d.slice(&t), s.batch, s.h, s.w, s.cout)
                .with_bias(d.slice(&bias_b));
            check_conv_epilogues(d, &s, &map, &conv, &bias, &residual, mma);
        }
    }
}

/// The epilogues of a conv output `map` (bias `bias`) against the reference `conv`: into NHWC
/// with `residual` added in place, and into NCHW.
fn check_conv_epilogues<D: Device>(
    d: &D,
    s: &ConvShape,
    map: &MapF32,
    conv: &[f64],
    bias: &[f32],
    residual: &[f32],
    mma: bool,
) {
    // Epilogue into NHWC with the residual added in place.
    let out = upload_f32(d, residual);
    bias_residual(d, d.slice(&out), map, Some(d.slice(&out)), false).unwrap();
    let n = residual.len();
    let want: Vec<f64> = (0..n)
        .map(|i| conv[i] + f64::from(bias[i % s.cout]) + f64::from(residual[i]))
        .collect();
    VQ_KERNEL_FP32_GEMM.assert_close(
        &format!("conv3x3 (mma {mma}) {s:?} + bias + residual"),
        &f64s(&download_f32(d, &out, n)),
        &want,
    );

    // Epilogue into NCHW (the decoder's image), no residual.
    let img = poisoned(d, 4 * n);
    bias_residual(d, d.slice(&img), map, None, true).unwrap();
    let hw = s.h * s.w;
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let (b, ch, p) = (i / (s.cout * hw), (i / hw) % s.cout, i % hw);
            conv[(b * hw + p) * s.cout + ch] + f64::from(bias[ch])
        })
        .collect();
    VQ_KERNEL_FP32_GEMM.assert_close(
        &format!("conv3x3 (mma {mma}) {s:?} NCHW"),
        &f64s(&download_f32(d, &img, n)),
        &want,
    );
}

fn check_conv1x1<D: Device>(d: &D) {
    let mut rng = Rng(5);
    let s = ConvShape {
        batch: 1,
        h: 5,
        w: 7,
        cin: 13,
        cout: 7,
    };
    let rows = s.h * s.w;
    let x = rng.vec_f16(rows * s.cin, -1.0, 1.0);
    let w = rng.vec_f16(s.cout * s.cin, -1.0, 1.0);
    let bias = rng.vec_f32(s.cout, -1.0, 1.0);
    let input = upload_f16(d, &x);
    let weights = upload_f16(d, &gemm_layout(&w, s.cout, s.cin, 1));
    let bias_b = upload_f32(d, &bias);
    let t = poisoned(d, 4 * rows * s.cout);
    conv1x1(
        d,
        d.slice(&t),
        d.slice(&input),
        d.slice(&weights),
        rows,
        s.cin,
        s.cout,
    )
    .unwrap();
    // A compact map may be its own epilogue's output.
    let map = MapF32::compact(d.slice(&t), 1, s.h, s.w, s.cout).with_bias(d.slice(&bias_b));
    bias_residual(d, d.slice(&t), &map, None, false).unwrap();
    let conv = conv_ref(&x, &w, &s, 1);
    let want: Vec<f64> = (0..conv.len())
        .map(|i| conv[i] + f64::from(bias[i % s.cout]))
        .collect();
    VQ_KERNEL_FP32_GEMM.assert_close(
        "conv1x1 + bias",
        &f64s(&download_f32(d, &t, conv.len())),
        &want,
    );
}

fn softmax_ref(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn check_softmax<D: Device>(d: &D) {
    let mut rng = Rng(6);
    // cols 300: more columns than threads; 5: fewer than a warp; scores to 200: exp overflows
    // f32 unless the row max is subtracted.
    for (rows, cols, range) in [(7, 37, 20.0), (3, 300, 20.0), (4, 5, 20.0), (2, 40, 200.0)] {
        let scores = rng.vec_f32(rows * cols, -range, range);
        let src = upload_f32(d, &scores);
        let out = poisoned(d, 2 * rows * cols);
        softmax_rows_f16(d, d.slice(&out), d.slice(&src), rows, cols).unwrap();
        let want: Vec<f64> = f64s(&scores).chunks(cols).flat_map(softmax_ref).collect();
        VQ_KERNEL_FP16_OUT.assert_close(
            &format!("softmax {rows}x{cols}"),
            &f64s(&download_f16(d, &out, rows * cols)),
            &want,
        );
    }
}

/// The attention block's middle: q|k|v bias -> f16, scores, softmax, probs . v.
fn check_attention<D: Device>(d: &D) {
    let mut rng = Rng(7);
    let (batch, hw, c) = (2, 10, 32);
    let rows = batch * hw;
    let pre = rng.vec_f32(rows * 3 * c, -1.0, 1.0);
    let bias = rng.vec_f32(3 * c, -0.5, 0.5);
    let (pre_b, bias_b) = (upload_f32(d, &pre), upload_f32(d, &bias));
    let qkv = poisoned(d, 2 * rows * 3 * c);
    bias_f16(
        d,
        d.slice(&qkv),
        d.slice(&pre_b),
        d.slice(&bias_b),
        rows,
        3 * c,
    )
    .unwrap();
    let qkv_ref: Vec<f32> = pre
        .iter()
        .enumerate()
        .map(|(i, &v)| round_f16(v + bias[i % (3 * c)]))
        .collect();
    EXACT.assert_close(
        "q|k|v + bias",
        &f64s(&download_f16(d, &qkv, rows * 3 * c)),
        &f64s(&qkv_ref),
    );

    let scale = 1.0 / (c as f32).sqrt();
    let scores = poisoned(d, 4 * batch * hw * hw);
    attention_scores(d, d.slice(&scores), d.slice(&qkv), batch, hw, c, scale).unwrap();
    let at = |b: usize, i: usize, part: usize, ch: usize| {
        f64::from(qkv_ref[(b * hw + i) * 3 * c + part * c + ch])
    };
    let mut want_scores = vec![0f64; batch * hw * hw];
    for b in 0..batch {
        for i in 0..hw {
            for j in 0..hw {
                let dot: f64 = (0..c).map(|ch| at(b, i, 0, ch) * at(b, j, 1, ch)).sum();
                want_scores[(b * hw + i) * hw + j] = dot * f64::from(scale);
            }
        }
    }
    VQ_KERNEL_FP32_GEMM.assert_close(
        "scores",
        &f64s(&download_f32(d, &scores, batch * hw * hw)),
        &want_scores,
    );

    let probs = poisoned(d, 2 * batch * hw * hw);
    softmax_rows_f16(d, d.slice(&probs), d.slice(&scores), batch * hw, hw).unwrap();
    let out = poisoned(d, 2 * rows * c);
    attention_values(
        d,
        d.slice(&out),
        d.slice(&probs),
        d.slice(&qkv),
        batch,
        hw,
        c,
    )
    .unwrap();
    let p: Vec<f64> = want_scores.chunks(hw).flat_map(softmax_ref).collect();
    let mut want = vec![0f64; rows * c];
    for b in 0..batch {
        for i in 0..hw {
            for ch in 0..c {
                want[(b * hw + i) * c + ch] = (0..hw)
                    .map(|j| p[(b * hw + i) * hw + j] * at(b, j, 2, ch))
                    .sum();
            }
        }
    }
    VQ_KERNEL_FP16_ATTN.assert_close(
        "attention output",
        &f64s(&download_f16(d, &out, rows * c)),
        &want,
    );
}

fn check_bad_shapes_are_errors<D: Device>(d: &D) {
    // Views that claim enough elements, so each call fails for the reason it tests (the
    // checks run before any launch, so nothing reads them).
    let buf = d.alloc(4096).unwrap();
    let big = 1 << 40;
    let p = DevSlice::<f32>::from_raw(d.addr(&buf), big);
    let h = DevSlice::<f16>::from_raw(d.addr(&buf), big);
    let gn = GroupNormArgs {
        gamma: p,
        beta: p,
        groups: 32,
        eps: 1e-6,
        stats: p,
        partial: p,
        swish: true,
    };
    let map = MapF32::compact(p, 1, 2, 2, 48); // 48 channels: not a multiple of 32 groups
    assert!(group_norm_f16(d, h, &map, &gn, true).is_err());
    let narrow = MapF32 {
        pitch: 1,
        ..MapF32::compact(p, 1, 2, 2, 32)
    };
    assert!(upsample_pad_f16(d, h, &narrow, 2, true).is_err());
    assert!(bias_residual(d, p, &narrow, None, false).is_err());
    let huge = MapF32::compact(p, 1, 1 << 16, 1 << 16, 32); // img_stride beyond i32
    assert!(bias_residual(d, p, &huge, None, false).is_err());
    let many = MapF32::compact(p, 70_000, 1, 1, 32); // more images than a grid's y extent
    assert!(group_norm_f16(d, h, &many, &gn, false).is_err());
    assert!(bias_residual(d, p, &many, None, false).is_err());
    // A buffer shorter than the map is an error, not an out-of-bounds launch.
    let short = MapF32::compact(d.slice(&buf), 2, 8, 8, 32);
    let e = bias_residual(d, p, &short, None, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("the feature map holds 1024 f32 values"),
        "{e}"
    );
    // The tensor-core conv: shapes it does not take, and buffers its 16-byte loads cannot read.
    let s = ConvShape {
        batch: 1,
        h: 2,
        w: 2,
        cin: 8,
        cout: 8,
    };
    let e = conv3x3_mma(d, &s, h, h, p).unwrap_err();
    assert!(e.to_string().contains("cin 8"), "{e}");
    let odd = DevSlice::<f16>::from_raw(d.addr(&buf) + 2, big);
    let e = conv3x3_mma(d, &ConvShape { cin: 16, ..s }, odd, h, p).unwrap_err();
    assert!(e.to_string().contains("aligned"), "{e}");
}

device_tests!(
    check_codebook_normalise_and_gather,
    check_group_norm,
    check_upsample_pad,
    check_conv3x3,
    check_conv1x1,
    check_softmax,
    check_attention,
    check_bad_shapes_are_errors,
);
