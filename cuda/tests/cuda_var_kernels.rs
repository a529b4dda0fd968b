//! The VAR kernels (`ops::var`) against naive f64 CPU references, on random inputs from a small
//! deterministic generator, on every available device (emulator and/or GPU).
//!
//! Tolerance levels (`llamagen_test_support::tolerance`, `|got - ref| <= atol + rtol * |ref|`):
//! - `GPT_KERNEL_FP16_OUT`: one f32 -> f16 rounding of an f32 result (SiLU, GELU, cache writes,
//!   area-downsampled tokens);
//! - `VQ_KERNEL_FP16_NORM`: the AdaLN's LayerNorm (f32 statistics) rounded to f16;
//! - `GPT_KERNEL_FP16_ATTN`: the unmasked attention (f32 softmax, f16 output);
//! - `VAR_KERNEL_FP32`: f32 outputs (q, gated residual, resampled maps, phi, positions);
//! - `EXACT`: the head's CFG combine is the CPU loop's expression, each operation rounded.
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use cuda_common::{download_f16, download_f32, upload_f16, upload_f32, upload_i32, Rng};
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::var::{
    adaln, add_positions, area_tokens, attention, attention_mma, attention_per_token,
    attention_tiled, bias_rows, cond_silu, embed_resize, first_inputs, gate_residual, gelu_bias,
    head_cfg, phi_accumulate, qkv, zero, Ada, AttnShape, Block, Cache, MapShape, ScaleTokens,
};
use llamagen_test_support::{
    EXACT, GPT_KERNEL_FP16_ATTN, GPT_KERNEL_FP16_OUT, VAR_KERNEL_FP32, VQ_KERNEL_FP16_NORM,
};

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn check_cond_and_first_inputs<D: Device>(d: &D) {
    let mut rng = Rng(21);
    for (rows, dim, classes, first) in [(2, 64, 11, 1), (3, 300, 5, 4)] {
        let table = rng.vec_f32(classes * dim, -3.0, 3.0);
        let pos = rng.vec_f32(first * dim, -1.0, 1.0);
        let labels: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
        let (tb, pb, lb) = (
            upload_f32(d, &table),
            upload_f32(d, &pos),
            upload_i32(d, &labels),
        );
        let out = d.alloc(rows * dim * 2).unwrap();
        cond_silu(d, d.slice(&out), d.slice(&tb), d.slice(&lb), rows, dim).unwrap();
        let want: Vec<f32> = labels
            .iter()
            .flat_map(|&l| {
                table[l as usize * dim..(l as usize + 1) * dim]
                    .iter()
                    .map(|&x| silu(x as f64) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        GPT_KERNEL_FP16_OUT.assert_close(
            &format!("cond_silu rows {rows} dim {dim}"),
            &download_f16(d, &out, rows * dim),
            &want,
        );
        let x = d.alloc(rows * first * dim * 4).unwrap();
        first_inputs(
            d,
            d.slice(&x),
            d.slice(&tb),
            d.slice(&lb),
            d.slice(&pb),
            [rows, first, dim],
        )
        .unwrap();
        let mut want = Vec::new();
        for &l in &labels {
            for t in 0..first {
                for c in 0..dim {
                    want.push(table[l as usize * dim + c] + pos[t * dim + c]);
                }
            }
        }
        EXACT.assert_close(
            "first_inputs",
            &download_f32(d, &x, rows * first * dim),
            &want,
        );
        // bias_rows in place.
        let bias = rng.vec_f32(dim, -1.0, 1.0);
        let bb = upload_f32(d, &bias);
        bias_rows(d, d.slice(&x), d.slice(&x), d.slice(&bb), rows * first, dim).unwrap();
        let want: Vec<f32> = want
            .iter()
            .enumerate()
            .map(|(i, &v)| v + bias[i % dim])
            .collect();
        EXACT.assert_close("bias_rows", &download_f32(d, &x, rows * first * dim), &want);
    }
}

fn check_adaln<D: Device>(d: &D) {
    let mut rng = Rng(22);
    // dim 20 (under a warp), 300 (not a multiple of 256), 1024 (VAR-d16).
    for (rows, tokens, dim) in [(2, 3, 20), (3, 4, 300), (2, 2, 1024)] {
        let eps = 1e-6;
        let width = 6 * dim;
        let x = rng.vec_f32(rows * tokens * dim, -3.0, 5.0);
        let ada = rng.vec_f32(rows * width, -1.0, 1.0);
        let (xb, ab) = (upload_f32(d, &x), upload_f32(d, &ada));
        let out = d.alloc(rows * tokens * dim * 2).unwrap();
        let (so, sh) = (2 * dim, 4 * dim);
        let ada_arg = Ada {
            ada: d.slice(&ab),
            width,
        };
        let b = Block { rows, tokens, dim };
        adaln(d, d.slice(&out), d.slice(&xb), ada_arg, [so, sh], b, eps).unwrap();
        let mut want = Vec::new();
        for (i, row) in x.chunks(dim).enumerate() {
            let a = &ada[(i / tokens) * width..];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let sd = (var + eps as f64).sqrt();
            for c in 0..dim {
                let n = (row[c] as f64 - mean) / sd;
                want.push((n * (1.0 + a[so + c] as f64) + a[sh + c] as f64) as f32);
            }
        }
        VQ_KERNEL_FP16_NORM.assert_close(
            &format!("adaln rows {rows} tokens {tokens} dim {dim}"),
            &download_f16(d, &out, rows * tokens * dim),
            &want,
        );
    }
}

/// q, k, v per (row, head, token) from qkv + bias, L2-normalised q/k when `l2`, q scaled.
fn qkv_ref(qkv: &[f32], bias: &[f32], scale: &[f32], l2: bool, s: &AttnShape) -> [Vec<f32>; 3] {
    let (h, hd, t) = (s.heads, s.head_dim, s.tokens);
    let width = 3 * h * hd;
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for (part, o) in out.iter_mut().enumerate() {
        for r in 0..s.rows {
            for (head, &head_scale) in scale.iter().enumerate().take(h) {
                for tok in 0..t {
                    let col = (part * h + head) * hd;
                    let v: Vec<f64> = (0..hd)
                        .map(|e| (qkv[(r * t + tok) * width + col + e] + bias[col + e]) as f64)
                        .collect();
                    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    let mul = if l2 && part < 2 { 1.0 / norm } else { 1.0 };
                    let sc = if part == 0 { head_scale as f64 } else { 1.0 };
                    o.extend(v.iter().map(|x| (x * mul * sc) as f32));
                }
            }
        }
    }
    out
}

fn check_qkv_and_attention<D: Device>(d: &D) {
    let mut rng = Rng(23);
    // head_dim 16 (the golden tiny model) and 64 (every released VAR); a first scale (pos 0,
    // one token) and a later one reading earlier slots.
    for (rows, heads, hd, tokens, pos, cache_len, l2) in [
        (2, 4, 16, 1, 0, 30, true),
        (2, 4, 16, 9, 5, 30, true),
        (3, 2, 64, 16, 14, 40, false),
        (2, 2, 64, 36, 40, 80, true),
    ] {
        let s = AttnShape {
            rows,
            tokens,
            heads,
            head_dim: hd,
            cache_len,
            pos,
        };
        let width = 3 * heads * hd;
        let qkv_in = rng.vec_f32(rows * tokens * width, -2.0, 2.0);
        let bias = rng.vec_f32(width, -0.5, 0.5);
        let scale = rng.vec_f32(heads, 1.0, 30.0);
        let cache_elems = rows * heads * cache_len * hd;
        // Earlier slots hold unit-scale keys and values; later slots garbage that must not be
        // read (finite, so a wrong read shows as a wrong value, not a NaN).
        let init_k = rng.vec_f16(cache_elems, -0.3, 0.3);
        let init_v = rng.vec_f16(cache_elems, -1.0, 1.0);
        let (kb, vb) = (upload_f16(d, &init_k), upload_f16(d, &init_v));
        let (qb, bb, sb) = (
            upload_f32(d, &qkv_in),
            upload_f32(d, &bias),
            upload_f32(d, &scale),
        );
        let q = d.alloc(rows * heads * tokens * hd * 4).unwrap();
        let cache = Cache {
            k: d.slice(&kb),
            v: d.slice(&vb),
        };
        qkv(
            d,
            d.slice(&q),
            cache,
            d.slice(&qb),
            [d.slice(&bb), d.slice(&sb)],
            l2,
            &s,
        )
        .unwrap();
        let [want_q, want_k, want_v] = qkv_ref(&qkv_in, &bias, &scale, l2, &s);
        let name = format!("rows {rows} heads {heads} hd {hd} tokens {tokens} pos {pos}");
        VAR_KERNEL_FP32.assert_close(
            &format!("qkv q, {name}"),
            &download_f32(d, &q, want_q.len()),
            &want_q,
        );
        let got_k = download_f16(d, &kb, cache_elems);
        let got_v = download_f16(d, &vb, cache_elems);
        let mut exp_k = init_k.clone();
        let mut exp_v = init_v.clone();
        for r in 0..rows {
            for h in 0..heads {
                for t in 0..tokens {
                    let src = ((r * heads + h) * tokens + t) * hd;
                    let dst = ((r * heads + h) * cache_len + pos + t) * hd;
                    exp_k[dst..dst + hd].copy_from_slice(&want_k[src..src + hd]);
                    exp_v[dst..dst + hd].copy_from_slice(&want_v[src..src + hd]);
                }
            }
        }
        GPT_KERNEL_FP16_OUT.assert_close(&format!("qkv k, {name}"), &got_k, &exp_k);
        GPT_KERNEL_FP16_OUT.assert_close(&format!("qkv v, {name}"), &got_v, &exp_v);

        // Attention over slots 0..pos + tokens of what the caches now hold, both kernels.
        let out = d.alloc(rows * tokens * heads * hd * 2).unwrap();
        let out_simple = d.alloc(rows * tokens * heads * hd * 2).unwrap();
        attention_tiled(d, d.slice(&out), d.slice(&q), cache, &s).unwrap();
        attention_per_token(d, d.slice(&out_simple), d.slice(&q), cache, &s).unwrap();
        let q_dev = download_f32(d, &q, want_q.len());
        let len = pos + tokens;
        let mut want = vec![0f32; rows * tokens * heads * hd];
        for r in 0..rows {
            for h in 0..heads {
                let base = (r * heads + h) * cache_len * hd;
                for t in 0..tokens {
                    let qv = &q_dev[((r * heads + h) * tokens + t) * hd..][..hd];
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..hd)
                                .map(|e| qv[e] as f64 * got_k[base + j * hd + e] as f64)
                                .sum()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for e in 0..hd {
                        let o: f64 = (0..len)
                            .map(|j| w[j] * got_v[base + j * hd + e] as f64)
                            .sum();
                        want[((r * tokens + t) * heads + h) * hd + e] = (o / total) as f32;
                    }
                }
            }
        }
        GPT_KERNEL_FP16_ATTN.assert_close(
            &format!("attention (tiled), {name}"),
            &download_f16(d, &out, want.len()),
            &want,
        );
        GPT_KERNEL_FP16_ATTN.assert_close(
            &format!("attention (per token), {name}"),
            &download_f16(d, &out_simple, want.len()),
            &want,
        );
    }
}

fn check_gate_gelu_head<D: Device>(d: &D) {
    let mut rng = Rng(24);
    let (rows, tokens, dim) = (2, 5, 300);
    let width = 6 * dim;
    let x = rng.vec_f32(rows * tokens * dim, -3.0, 3.0);
    let y = rng.vec_f32(rows * tokens * dim, -3.0, 3.0);
    let bias = rng.vec_f32(dim, -1.0, 1.0);
    let ada = rng.vec_f32(rows * width, -1.0, 1.0);
    let (xb, yb, bb, ab) = (
        upload_f32(d, &x),
        upload_f32(d, &y),
        upload_f32(d, &bias),
        upload_f32(d, &ada),
    );
    let off = dim;
    let ada_arg = Ada {
        ada: d.slice(&ab),
        width,
    };
    let b = Block { rows, tokens, dim };
    gate_residual(d, d.slice(&xb), d.slice(&yb), d.slice(&bb), ada_arg, off, b).unwrap();
    let want: Vec<f32> = (0..x.len())
        .map(|i| {
            let (row, c) = (i / dim, i % dim);
            let g = ada[(row / tokens) * width + off + c] as f64;
            (x[i] as f64 + g * (y[i] as f64 + bias[c] as f64)) as f32
        })
        .collect();
    VAR_KERNEL_FP32.assert_close("gate_residual", &download_f32(d, &xb, x.len()), &want);

    // GELU-tanh with bias; hidden 37 (a partial block) and 1200.
    for n in [37, 1200] {
        let inp = rng.vec_f32(3 * n, -5.0, 5.0);
        let bias = rng.vec_f32(n, -1.0, 1.0);
        let (ib, bb) = (upload_f32(d, &inp), upload_f32(d, &bias));
        let out = d.alloc(3 * n * 2).unwrap();
        gelu_bias(d, d.slice(&out), d.slice(&ib), d.slice(&bb), 3, n).unwrap();
        let k = (2.0f64 / std::f64::consts::PI).sqrt();
        let want: Vec<f32> = (0..3 * n)
            .map(|i| {
                let x = inp[i] as f64 + bias[i % n] as f64;
                (0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())) as f32
            })
            .collect();
        GPT_KERNEL_FP16_OUT.assert_close(
            &format!("gelu_bias n {n}"),
            &download_f16(d, &out, 3 * n),
            &want,
        );
    }

    // The head's bias and VAR's CFG, exactly the CPU loop's expression.
    let (m, vocab) = (6, 300);
    for (cfg, t) in [(true, 2.5f32), (false, 0.0)] {
        let rows = if cfg { 2 * m } else { m };
        let logits = rng.vec_f32(rows * vocab, -8.0, 8.0);
        let bias = rng.vec_f32(vocab, -1.0, 1.0);
        let (lb, bb, tb) = (
            upload_f32(d, &logits),
            upload_f32(d, &bias),
            upload_f32(d, &[t]),
        );
        head_cfg(d, d.slice(&lb), d.slice(&bb), d.slice(&tb), m, cfg, vocab).unwrap();
        let want: Vec<f32> = (0..m * vocab)
            .map(|i| {
                let y = logits[i] + bias[i % vocab];
                if cfg {
                    let u = logits[i + m * vocab] + bias[i % vocab];
                    (1.0 + t) * y - t * u
                } else {
                    y
                }
            })
            .collect();
        EXACT.assert_close(
            &format!("head_cfg cfg {cfg}"),
            &download_f32(d, &lb, m * vocab),
            &want,
        );
    }
}

/// `R X R^T` of one channel, X `[n, n]` row-major, R `[m, n]`.
fn resize_ref(x: &[f64], r: &[f32], n: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            let mut acc = 0.0;
            for p in 0..n {
                for q in 0..n {
                    acc += r[i * n + p] as f64 * x[p * n + q] * r[j * n + q] as f64;
                }
            }
            out[i * m + j] = acc;
        }
    }
    out
}

fn check_between_scales<D: Device>(d: &D) {
    let mut rng = Rng(25);
    let (n, rows, vocab, cvae, side) = (2, 4, 11, 5, 6);
    let patch = [1usize, 2, 4, 6];
    let total: usize = patch.iter().map(|p| p * p).sum();
    let tokens: Vec<i32> = (0..n * total).map(|_| rng.below(vocab) as i32).collect();
    let codebook = rng.vec_f32(vocab * cvae, -1.0, 1.0);
    let (tb, cb) = (upload_i32(d, &tokens), upload_f32(d, &codebook));
    let m = MapShape { rows, side, cvae };
    let per = side * side * cvae;
    let h = d.alloc(rows * per * 4).unwrap();
    // f_hat starts as garbage: zero must clear it.
    let fb = upload_f32(d, &rng.vec_f32(rows * per, -9.0, 9.0));
    zero(d, d.slice(&fb)).unwrap();
    EXACT.assert_close(
        "zero",
        &download_f32(d, &fb, rows * per),
        &vec![0.0; rows * per],
    );
    let w = rng.vec_f32(cvae * cvae * 9, -0.3, 0.3);
    let wb_bias = rng.vec_f32(cvae, -0.5, 0.5);
    let (wb, bb) = (upload_f32(d, &w), upload_f32(d, &wb_bias));
    let ratio = 0.5f32;
    let mut want_f = vec![0f64; rows * per];
    let mut begin = 0;
    for &pn in &patch {
        let r = llamagen_bundle::resample::bicubic(pn, side);
        let rb = upload_f32(d, &r);
        let st = ScaleTokens {
            tokens: d.slice(&tb),
            n,
            tokens_total: total,
            begin,
            pn,
        };
        embed_resize(d, d.slice(&h), &st, d.slice(&cb), d.slice(&rb), m).unwrap();
        // Reference: per row and channel, R E R^T, NHWC.
        let mut want_h = vec![0f64; rows * per];
        for row in 0..rows {
            let ids = &tokens[(row % n) * total + begin..][..pn * pn];
            for c in 0..cvae {
                let x: Vec<f64> = ids
                    .iter()
                    .map(|&id| codebook[id as usize * cvae + c] as f64)
                    .collect();
                let y = resize_ref(&x, &r, pn, side);
                for (i, v) in y.iter().enumerate() {
                    want_h[row * per + i * cvae + c] = *v;
                }
            }
        }
        let got_h = download_f32(d, &h, rows * per);
        let want_h32: Vec<f32> = want_h.iter().map(|&v| v as f32).collect();
        VAR_KERNEL_FP32.assert_close(&format!("embed_resize pn {pn}"), &got_h, &want_h32);

        phi_accumulate(
            d,
            d.slice(&fb),
            d.slice(&h),
            [d.slice(&wb), d.slice(&bb)],
            ratio,
            m,
        )
        .unwrap();
        // Reference phi on the device's h (so the check isolates the conv).
        for row in 0..rows {
            let hr = &got_h[row * per..(row + 1) * per];
            for y in 0..side {
                for x in 0..side {
                    for co in 0..cvae {
                        let mut conv = wb_bias[co] as f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) = (y as i64 + ky - 1, x as i64 + kx - 1);
                                if yy < 0 || xx < 0 || yy >= side as i64 || xx >= side as i64 {
                                    continue;
                                }
                                for ci in 0..cvae {
                                    let wv =
                                        w[((co * cvae + ci) * 3 + ky as usize) * 3 + kx as usize];
                                    let hv = hr[(yy as usize * side + xx as usize) * cvae + ci];
                                    conv += wv as f64 * hv as f64;
                                }
                            }
                        }
                        let i = (y * side + x) * cvae + co;
                        want_f[row * per + i] +=
                            (1.0 - ratio as f64) * hr[i] as f64 + ratio as f64 * conv;
                    }
                }
            }
        }
        let want_f32: Vec<f32> = want_f.iter().map(|&v| v as f32).collect();
        VAR_KERNEL_FP32.assert_close(
            &format!("phi_accumulate pn {pn}"),
            &download_f32(d, &fb, rows * per),
            &want_f32,
        );
        begin += pn * pn;
    }

    // Area tokens of the accumulated map, then positions.
    let f_dev = download_f32(d, &fb, rows * per);
    for pn in [2usize, 4, 6] {
        let a = llamagen_bundle::resample::area(side, pn);
        let ab = upload_f32(d, &a);
        let out = d.alloc(rows * pn * pn * cvae * 2).unwrap();
        area_tokens(d, d.slice(&out), d.slice(&fb), d.slice(&ab), pn, m).unwrap();
        let mut want = vec![0f32; rows * pn * pn * cvae];
        for row in 0..rows {
            for c in 0..cvae {
                let x: Vec<f64> = (0..side * side)
                    .map(|i| f_dev[row * per + i * cvae + c] as f64)
                    .collect();
                let y = resize_ref(&x, &a, side, pn);
                for (i, v) in y.iter().enumerate() {
                    want[row * pn * pn * cvae + i * cvae + c] = *v as f32;
                }
            }
        }
        GPT_KERNEL_FP16_OUT.assert_close(
            &format!("area_tokens pn {pn}"),
            &download_f16(d, &out, want.len()),
            &want,
        );
    }

    let (tokens_n, dim, begin) = (4, 40, 3);
    let x = rng.vec_f32(rows * tokens_n * dim, -2.0, 2.0);
    let bias = rng.vec_f32(dim, -1.0, 1.0);
    let pos = rng.vec_f32((begin + tokens_n) * dim, -1.0, 1.0);
    let (xb, bb, pb) = (upload_f32(d, &x), upload_f32(d, &bias), upload_f32(d, &pos));
    let b = Block {
        rows,
        tokens: tokens_n,
        dim,
    };
    add_positions(d, d.slice(&xb), d.slice(&bb), d.slice(&pb), begin, b).unwrap();
    let want: Vec<f32> = (0..x.len())
        .map(|i| {
            let (t, c) = ((i / dim) % tokens_n, i % dim);
            x[i] + bias[c] + pos[(begin + t) * dim + c]
        })
        .collect();
    VAR_KERNEL_FP32.assert_close("add_positions", &download_f32(d, &xb, x.len()), &want);
}

fn check_bad_shapes_are_errors<D: Device>(d: &D) {
    let small = d.alloc(64).unwrap();
    let s = AttnShape {
        rows: 1,
        tokens: 4,
        heads: 2,
        head_dim: 8,
        cache_len: 8,
        pos: 6,
    };
    let cache = Cache {
        k: d.slice(&small),
        v: d.slice(&small),
    };
    let err = attention(d, d.slice(&small), d.slice(&small), cache, &s).unwrap_err();
    assert!(err.to_string().contains("outside a cache"), "{err}");
    // The tensor-core kernels take head_dim 16 and 64 only.
    let err = attention_mma(d, d.slice(&small), d.slice(&small), cache, &s).unwrap_err();
    assert!(err.to_string().contains("head_dim 8"), "{err}");
    let odd = Cache {
        k: DevSlice::from_raw(d.addr(&small) + 2, 1 << 20),
        ..cache
    };
    let s64 = AttnShape { head_dim: 64, ..s };
    let err = attention_mma(d, d.slice(&small), d.slice(&small), odd, &s64).unwrap_err();
    assert!(err.to_string().contains("aligned"), "{err}");
    let b = Block {
        rows: 2,
        tokens: 3,
        dim: 64,
    };
    let ada = Ada {
        ada: d.slice(&small),
        width: 64,
    };
    let err = adaln(d, d.slice(&small), d.slice(&small), ada, [0, 0], b, 1e-6).unwrap_err();
    assert!(err.to_string().contains("holds"), "{err}");
}

device_tests!(
    check_cond_and_first_inputs,
    check_adaln,
    check_qkv_and_attention,
    check_gate_gelu_head,
    check_between_scales,
    check_bad_shapes_are_errors,
);
