//! VAR's tensor-core attention (`ops::var::attention_mma`, what `attention` runs for head_dim 64
//! and 16) against an f64 reference over the same f16-rounded q, on every available device
//! (emulator and/or GPU), within `VAR_KERNEL_FP16_MMA_ATTN`.
//!
//! The shapes cover a first scale (one token, one slot), token tiles that end mid-warp and
//! mid-block, slot chunks that end mid-chunk, and VAR's last scale at 256 px (256 tokens over
//! 680 slots), at head_dim 64 (released VARs) and 16 (the golden tiny models). Cache slots past
//! the valid length hold NaN, so a kernel that reads them fails.
#![cfg(any(feature = "driver", feature = "emu"))]

use half::f16;
use llamagen_cuda::device::Device;
use llamagen_cuda::ops::var::{attention, attention_mma, AttnShape, Cache};
use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;
use llamagen_test_support::{EXACT, VAR_KERNEL_FP16_MMA_ATTN};

use cuda_common::{download_f16, upload_f16, upload_f32, Rng};

/// q as VAR makes it: L2-normalised per head, times a per-head scale (<= 100 in the official
/// code; 1..30 here, which already makes peaked softmaxes).
fn var_like_q(rng: &mut Rng, s: &AttnShape) -> Vec<f32> {
    let (heads, tokens) = (s.heads, s.tokens);
    let mut q = rng.vec_f32(s.rows * heads * tokens * s.head_dim, -1.0, 1.0);
    let scales = rng.vec_f32(heads, 1.0, 30.0);
    for (i, v) in q.chunks_mut(s.head_dim).enumerate() {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let scale = scales[(i / tokens) % heads];
        v.iter_mut().for_each(|x| *x *= scale / norm);
    }
    q
}

/// softmax(q . K^T) . V per (row, head, token) in f64, q rounded to f16 first, as the kernel
/// reads it; out `[rows, T, H * hd]`.
fn reference(q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) -> Vec<f32> {
    let (len, hd) = (s.pos + s.tokens, s.head_dim);
    let mut out = vec![0f32; s.rows * s.tokens * s.heads * hd];
    for r in 0..s.rows {
        for h in 0..s.heads {
            let base = (r * s.heads + h) * s.cache_len * hd;
            for t in 0..s.tokens {
                let qv: Vec<f64> = q[((r * s.heads + h) * s.tokens + t) * hd..][..hd]
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f64())
                    .collect();
                let scores: Vec<f64> = (0..len)
                    .map(|j| (0..hd).map(|e| qv[e] * k[base + j * hd + e] as f64).sum())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for e in 0..hd {
                    let o: f64 = (0..len).map(|j| w[j] * v[base + j * hd + e] as f64).sum();
                    out[((r * s.tokens + t) * s.heads + h) * hd + e] = (o / total) as f32;
                }
            }
        }
    }
    out
}

fn check_attention_mma<D: Device>(d: &D) {
    let mut rng = Rng(31);
    for (hd, rows, heads, tokens, pos, cache_len) in [
        (64, 1, 1, 1, 0, 8),
        (64, 2, 3, 9, 5, 20),
        (64, 2, 2, 70, 60, 140),
        (64, 1, 1, 256, 424, 700),
        (16, 2, 4, 9, 5, 30),
        (16, 1, 2, 100, 155, 256),
    ] {
        let s = AttnShape {
            rows,
            tokens,
            heads,
            head_dim: hd,
            cache_len,
            pos,
        };
        let len = pos + tokens;
        let q = var_like_q(&mut rng, &s);
        let mut k = rng.vec_f16(rows * heads * cache_len * hd, -0.3, 0.3);
        let mut v = rng.vec_f16(rows * heads * cache_len * hd, -1.0, 1.0);
        for slot in (0..rows * heads * cache_len).filter(|i| i % cache_len >= len) {
            k[slot * hd..][..hd].fill(f32::NAN);
            v[slot * hd..][..hd].fill(f32::NAN);
        }
        let (qb, kb, vb) = (upload_f32(d, &q), upload_f16(d, &k), upload_f16(d, &v));
        let cache = Cache {
            k: d.slice(&kb),
            v: d.slice(&vb),
        };
        let n = rows * tokens * heads * hd;
        let out = d.alloc(n * 2).unwrap();
        let via_dispatch = d.alloc(n * 2).unwrap();
        attention_mma(d, d.slice(&out), d.slice(&qb), cache, &s).unwrap();
        attention(d, d.slice(&via_dispatch), d.slice(&qb), cache, &s).unwrap();
        let name = format!("hd {hd} rows {rows} heads {heads} tokens {tokens} pos {pos}");
        let got = download_f16(d, &out, n);
        VAR_KERNEL_FP16_MMA_ATTN.assert_close(
            &format!("attention_mma, {name}"),
            &got,
            &reference(&q, &k, &v, &s),
        );
        EXACT.assert_close(
            &format!("attention dispatches to attention_mma, {name}"),
            &download_f16(d, &via_dispatch, n),
            &got,
        );
    }
}

device_tests!(check_attention_mma);
