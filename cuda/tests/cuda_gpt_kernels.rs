//! The GPT decode-step kernels (`ops::gpt`) against naive f32 CPU references, on random inputs
//! from a small deterministic generator, on every available device (emulator and/or GPU).
//!
//! Tolerance levels (`llamagen_test_support::tolerance`, `|got - ref| <= atol + rtol * |ref|`
//! elementwise):
//! - `EXACT_COPY`: embedding rows are f16 -> f32 conversions and untouched cache slots keep their
//!   values, bit exact.
//! - `GPT_KERNEL_FP16_OUT`: one f32 -> f16 rounding of an f32 result (atol 1e-6, rtol 5e-4).
//! - `GPT_KERNEL_FP16_ATTN`: as `GPT_KERNEL_FP16_OUT`, with atol 1e-5 for the softmax-weighted
//!   sum (atol 1e-5, rtol 5e-4).
//!
//! The reasons for each figure are documented on the levels.
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

mod attention;

use attention::{big_f16, cache_at, Claims};
use cuda_common::{download_f16, download_f32, upload_f16, upload_f32, upload_i32, Rng};
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::gpt::{
    decode_attention, embed_rows, rms_norm, rotary_kv_write, swiglu, AttnShape, LayerCache, Rotary,
};
use llamagen_test_support::{Tolerance, EXACT, GPT_KERNEL_FP16_ATTN, GPT_KERNEL_FP16_OUT};

/// `EXACT` where a NaN copied as NaN (or an infinity as itself) also passes: these checks always
/// allowed identical non-finite values, like the other kernel levels of this file.
const EXACT_COPY: Tolerance = EXACT.nan_equal();

fn check_embed_rows<D: Device>(d: &D) {
    let mut rng = Rng(1);
    // dim 300: not a multiple of the 256-thread block.
    for (rows, dim, num_ids) in [(1, 64, 7), (3, 300, 11), (5, 768, 20)] {
        let table = rng.vec_f16(num_ids * dim, -4.0, 4.0);
        let ids: Vec<i32> = (0..rows).map(|_| rng.below(num_ids) as i32).collect();
        let table_buf = upload_f16(d, &table);
        let ids_buf = upload_i32(d, &ids);
        let x = d.alloc(rows * dim * 4).unwrap();
        embed_rows(
            d,
            d.slice(&x),
            d.slice(&table_buf),
            d.slice(&ids_buf),
            rows,
            dim,
        )
        .unwrap();
        let expected: Vec<f32> = ids
            .iter()
            .flat_map(|&id| table[id as usize * dim..(id as usize + 1) * dim].to_vec())
            .collect();
        EXACT_COPY.assert_close(
            &format!("embed rows {rows} dim {dim}"),
            &download_f32(d, &x, rows * dim),
            &expected,
        );
    }
}

fn rms_norm_ref(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let rms = (mean + eps).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, wi)| v / rms * wi)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn check_rms_norm<D: Device>(d: &D) {
    let mut rng = Rng(2);
    // dim 20 (less than a warp), 300 (not a multiple of 256), 768 (GPT-B); the small range
    // makes mean(x^2) ~3e-6, so eps = 1e-5 dominates and is checked too.
    for (rows, dim, range) in [(1, 20, 3.0), (3, 300, 3.0), (5, 768, 3.0), (2, 1280, 3e-3)] {
        let eps = 1e-5;
        let x = rng.vec_f32(rows * dim, -range, range);
        let w = rng.vec_f32(dim, 0.5, 1.5);
        let x_buf = upload_f32(d, &x);
        let w_buf = upload_f32(d, &w);
        let out = d.alloc(rows * dim * 2).unwrap();
        rms_norm(
            d,
            d.slice(&out),
            d.slice(&x_buf),
            d.slice(&w_buf),
            rows,
            dim,
            eps,
        )
        .unwrap();
        GPT_KERNEL_FP16_OUT.assert_close(
            &format!("rms_norm rows {rows} dim {dim}"),
            &download_f16(d, &out, rows * dim),
            &rms_norm_ref(&x, &w, dim, eps),
        );
    }
}

fn swiglu_ref(h13: &[f32], hidden: usize) -> Vec<f32> {
    h13.chunks(2 * hidden)
        .flat_map(|row| {
            (0..hidden).map(move |c| {
                let (a, b) = (row[c], row[hidden + c]);
                a / (1.0 + (-a).exp()) * b
            })
        })
        .collect()
}

fn check_swiglu<D: Device>(d: &D) {
    let mut rng = Rng(3);
    // hidden 8 * k takes the 128-bit path, 300 and 37 the scalar one; 2064 is not a multiple of
    // 8 * 256 (a partial last block on the wide path).
    for (rows, hidden) in [(1, 37), (3, 300), (2, 512), (5, 2064)] {
        let h13 = rng.vec_f16(rows * 2 * hidden, -6.0, 6.0);
        let h13_buf = upload_f16(d, &h13);
        let out = d.alloc(rows * hidden * 2).unwrap();
        swiglu(d, d.slice(&out), d.slice(&h13_buf), rows, hidden).unwrap();
        GPT_KERNEL_FP16_OUT.assert_close(
            &format!("swiglu rows {rows} hidden {hidden}"),
            &download_f16(d, &out, rows * hidden),
            &swiglu_ref(&h13, hidden),
        );
    }
}

/// `x * cos + swap(x) * sin` for one head at one position (the CPU graph's formula).
fn rotate_ref(x: &[f32], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    (0..x.len())
        .map(|e| {
            let swapped = if e % 2 == 0 { -x[e + 1] } else { x[e - 1] };
            x[e] * cos[e] + swapped * sin[e]
        })
        .collect()
}

/// Attention shapes of the tests: heads 2..4, GQA cases, head_dim 64, max_len 40 (one pass of
/// decode_attention's 64-slot loop) and 150 (three passes, the last partial).
fn shapes() -> Vec<AttnShape> {
    let shape = |rows, heads, kv_heads, max_len| AttnShape {
        rows,
        heads,
        kv_heads,
        head_dim: 64,
        max_len,
    };
    vec![
        shape(1, 2, 2, 40),
        shape(3, 3, 3, 40),
        shape(2, 4, 2, 40),
        shape(5, 4, 4, 40),
        shape(2, 2, 1, 150),
    ]
}

fn check_rotary_kv_write<D: Device>(d: &D) {
    let mut rng = Rng(4);
    for s in shapes() {
        let hd = s.head_dim;
        let width = (s.heads + 2 * s.kv_heads) * hd;
        let cache_len = s.rows * s.kv_heads * s.max_len * hd;
        let qkv = rng.vec_f16(s.rows * width, -2.0, 2.0);
        let angles = rng.vec_f32(s.max_len * hd / 2, -3.0, 3.0);
        let cos: Vec<f32> = angles.iter().flat_map(|a| [a.cos(); 2]).collect();
        let sin: Vec<f32> = angles.iter().flat_map(|a| [a.sin(); 2]).collect();
        // Sentinels: every cache slot starts with random values that must survive.
        let old_k = rng.vec_f16(cache_len, -1.0, 1.0);
        let old_v = rng.vec_f16(cache_len, -1.0, 1.0);
        let qkv_buf = upload_f16(d, &qkv);
        let cos_buf = upload_f32(d, &cos);
        let sin_buf = upload_f32(d, &sin);
        for pos in [0, s.max_len / 2 + 1, s.max_len - 1] {
            let k_buf = upload_f16(d, &old_k);
            let v_buf = upload_f16(d, &old_v);
            let q_buf = d.alloc(s.rows * s.heads * hd * 2).unwrap();
            let pos_buf = upload_i32(d, &[pos as i32]);
            let cache = LayerCache {
                k: d.slice(&k_buf),
                v: d.slice(&v_buf),
                pos: d.slice(&pos_buf),
            };
            let rotary = Rotary {
                cos: d.slice(&cos_buf),
                sin: d.slice(&sin_buf),
            };
            rotary_kv_write(d, d.slice(&q_buf), cache, d.slice(&qkv_buf), rotary, &s).unwrap();

            let (c, sn) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
            let mut want_q = Vec::new();
            let (mut want_k, mut want_v) = (old_k.clone(), old_v.clone());
            for r in 0..s.rows {
                let row = &qkv[r * width..][..width];
                for h in 0..s.heads {
                    want_q.extend(rotate_ref(&row[h * hd..][..hd], c, sn));
                }
                for h in 0..s.kv_heads {
                    let k = rotate_ref(&row[(s.heads + h) * hd..][..hd], c, sn);
                    let v = &row[(s.heads + s.kv_heads + h) * hd..][..hd];
                    let at = cache_at(&s, r, h, pos, 0);
                    want_k[at..at + hd].copy_from_slice(&k);
                    want_v[at..at + hd].copy_from_slice(v);
                }
            }
            let what = format!("rotary {s:?} pos {pos}");
            GPT_KERNEL_FP16_OUT.assert_close(
                &format!("{what} q"),
                &download_f16(d, &q_buf, want_q.len()),
                &want_q,
            );
            // Slots other than pos hold their exact old values; slot pos the rotated k.
            GPT_KERNEL_FP16_OUT.assert_close(
                &format!("{what} k"),
                &download_f16(d, &k_buf, cache_len),
                &want_k,
            );
            EXACT_COPY.assert_close(
                &format!("{what} v"),
                &download_f16(d, &v_buf, cache_len),
                &want_v,
            );
        }
    }
}

/// softmax(q . K[0..=pos]^T) . V[0..=pos] per (row, head), in f32.
fn attention_ref(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], pos: usize) -> Vec<f32> {
    let hd = s.head_dim;
    let mut out = Vec::with_capacity(s.rows * s.heads * hd);
    for r in 0..s.rows {
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qh = &q[(r * s.heads + h) * hd..][..hd];
            let scores: Vec<f32> = (0..=pos)
                .map(|t| {
                    let kt = &k[cache_at(s, r, kvh, t, 0)..][..hd];
                    qh.iter().zip(kt).map(|(a, b)| a * b).sum()
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = p.iter().sum();
            for e in 0..hd {
                let o: f32 = (0..=pos).map(|t| p[t] * v[cache_at(s, r, kvh, t, e)]).sum();
                out.push(o / sum);
            }
        }
    }
    out
}

/// How a decode-attention case draws its inputs.
#[derive(Clone, Copy, Debug)]
enum Scores {
    /// q uniform in ±scale, K and V uniform in ±1.
    Uniform(f32),
    /// q = 4 and K on a 1/4 grid in ±0.5, so every score is an exact integer in ±128, with
    /// slot 0 at -128: scores far apart (exp of their differences overflows f32 unless each
    /// group and the merge subtract the global max), and a reference free of score rounding.
    WideExact,
}

/// (q, K, V) of one case; K and V hold random values in every slot, past `pos` too.
fn attention_inputs(rng: &mut Rng, s: &AttnShape, scores: Scores) -> [Vec<f32>; 3] {
    let q_len = s.rows * s.heads * s.head_dim;
    let cache_len = s.rows * s.kv_heads * s.max_len * s.head_dim;
    let v = rng.vec_f16(cache_len, -1.0, 1.0);
    match scores {
        Scores::Uniform(scale) => [
            rng.vec_f16(q_len, -scale, scale),
            rng.vec_f16(cache_len, -1.0, 1.0),
            v,
        ],
        Scores::WideExact => {
            let mut k: Vec<f32> = (0..cache_len)
                .map(|_| (rng.below(5) as f32 - 2.0) * 0.25)
                .collect();
            for r in 0..s.rows {
                for h in 0..s.kv_heads {
                    let at = cache_at(s, r, h, 0, 0);
                    k[at..at + s.head_dim].fill(-0.5);
                }
            }
            [vec![4.0; q_len], k, v]
        }
    }
}

fn check_decode_attention<D: Device>(d: &D) {
    let mut rng = Rng(5);
    let shapes = shapes();
    let mut cases: Vec<(AttnShape, Scores)> =
        shapes.iter().map(|&s| (s, Scores::Uniform(1.0))).collect();
    // Scores up to ~±100 from random large queries.
    cases.push((shapes[3], Scores::Uniform(8.0)));
    cases.push((shapes[2], Scores::WideExact));
    // head_dim != 64 takes the generic kernel (the golden tiny model has 16).
    for head_dim in [16, 48] {
        cases.push((
            AttnShape {
                head_dim,
                ..shapes[2]
            },
            Scores::Uniform(1.0),
        ));
        cases.push((
            AttnShape {
                head_dim,
                ..shapes[4]
            },
            Scores::Uniform(8.0),
        ));
    }
    for (s, scores) in cases {
        let [q, k, v] = attention_inputs(&mut rng, &s, scores);
        let q_buf = upload_f16(d, &q);
        let k_buf = upload_f16(d, &k);
        let v_buf = upload_f16(d, &v);
        let out = d.alloc(q.len() * 2).unwrap();
        for pos in [0, 1, s.max_len / 2 - 3, s.max_len - 1] {
            let pos_buf = upload_i32(d, &[pos as i32]);
            let cache = LayerCache {
                k: d.slice(&k_buf),
                v: d.slice(&v_buf),
                pos: d.slice(&pos_buf),
            };
            decode_attention(d, d.slice(&out), d.slice(&q_buf), cache, &s).unwrap();
            GPT_KERNEL_FP16_ATTN.assert_close(
                &format!("attention {s:?} {scores:?} pos {pos}"),
                &download_f16(d, &out, q.len()),
                &attention_ref(&s, &q, &k, &v, pos),
            );
        }
    }
}

/// Positions outside `0..max_len` write nothing (rather than out of bounds), and shapes the
/// kernels cannot run are errors before any launch.
fn check_bad_positions_and_shapes<D: Device>(d: &D) {
    let s = shapes()[2];
    let hd = s.head_dim;
    let cache_len = s.rows * s.kv_heads * s.max_len * hd;
    let q_len = s.rows * s.heads * hd;
    let mut rng = Rng(6);
    let sentinel = rng.vec_f16(cache_len, -1.0, 1.0);
    let qkv_len = s.rows * (s.heads + 2 * s.kv_heads) * hd;
    let qkv = upload_f16(d, &rng.vec_f16(qkv_len, -1.0, 1.0));
    let table = upload_f32(d, &vec![0.5; s.max_len * hd]);
    for bad in [-1, s.max_len as i32] {
        let pos = upload_i32(d, &[bad]);
        let k = upload_f16(d, &sentinel);
        let v = upload_f16(d, &sentinel);
        let q = upload_f16(d, &sentinel[..q_len]);
        let out = upload_f16(d, &sentinel[..q_len]);
        let cache = LayerCache {
            k: d.slice(&k),
            v: d.slice(&v),
            pos: d.slice(&pos),
        };
        let rotary = Rotary {
            cos: d.slice(&table),
            sin: d.slice(&table),
        };
        rotary_kv_write(d, d.slice(&q), cache, d.slice(&qkv), rotary, &s).unwrap();
        decode_attention(d, d.slice(&out), d.slice(&q), cache, &s).unwrap();
        let what = format!("pos {bad}");
        EXACT_COPY.assert_close(
            &format!("{what} k"),
            &download_f16(d, &k, cache_len),
            &sentinel,
        );
        EXACT_COPY.assert_close(
            &format!("{what} v"),
            &download_f16(d, &v, cache_len),
            &sentinel,
        );
        EXACT_COPY.assert_close(
            &format!("{what} q"),
            &download_f16(d, &q, q_len),
            &sentinel[..q_len],
        );
        EXACT_COPY.assert_close(
            &format!("{what} out"),
            &download_f16(d, &out, q_len),
            &sentinel[..q_len],
        );
    }

    let claims = Claims::new(d);
    let (p, cache, rotary, f16s) = (claims.p, claims.cache, claims.rotary, big_f16);
    // The generic kernel keeps max_len scores in shared memory: past 48 KiB is an error.
    let too_long = AttnShape {
        head_dim: 48,
        max_len: 20_000,
        ..s
    };
    assert!(decode_attention(d, f16s(p), f16s(p), cache, &too_long).is_err());
    let bad_gqa = AttnShape { kv_heads: 3, ..s };
    assert!(decode_attention(d, f16s(p), f16s(p), cache, &bad_gqa).is_err());
    assert!(rotary_kv_write(d, f16s(p), cache, f16s(p), rotary, &bad_gqa).is_err());
    assert!(
        decode_attention(d, f16s(p + 2), f16s(p), cache, &s).is_err(),
        "misaligned out"
    );
    // A buffer shorter than the shape is an error, not an out-of-bounds launch.
    let short = LayerCache {
        k: DevSlice::from_raw(p, 128),
        ..cache
    };
    let err = decode_attention(d, f16s(p), f16s(p), short, &s).unwrap_err();
    assert!(
        err.to_string().contains("cache_k holds 128 f16 values"),
        "{err}"
    );
}

device_tests!(
    check_embed_rows,
    check_rms_norm,
    check_swiglu,
    check_rotary_kv_write,
    check_decode_attention,
    check_bad_positions_and_shapes,
);
