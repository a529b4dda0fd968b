//! The fused VAR attention kernel (`attention::kernel::attend`) against an f64 reference of
//! softmax(q k^T) v over the cache's valid slots and the block's own keys, on shapes that hit
//! every register block (1-4 query vectors, partial tiles, head-dim remainders of 4 and 2),
//! with the cache's stale slots set to NaN (they must never be read). Level: f32 rounding,
//! max abs error <= 2 eps (sqrt(keys) + max |score|) x the largest |output|: each f32 score
//! carries ~eps |score| into its softmax weight, each sum ~eps sqrt(terms).

use llamagen_runtime::attention::kernel::{self, Cache, Dims, Inputs};

/// A deterministic pseudo-random fill in [-scale, scale).
fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// f16 copies of a case's caches.
struct Halves {
    k: Vec<half::f16>,
    v: Vec<half::f16>,
}

impl Halves {
    fn of(k: &[f32], v: &[f32]) -> Self {
        let half = |c: &[f32]| c.iter().map(|&x| half::f16::from_f32(x)).collect();
        Halves {
            k: half(k),
            v: half(v),
        }
    }

    /// The caches as the kernel takes them: these f16 copies, or `k` and `v` themselves.
    fn pick<'a>(&'a self, f16: bool, k: &'a [f32], v: &'a [f32]) -> [Cache<'a>; 2] {
        if f16 {
            [Cache::F16(&self.k), Cache::F16(&self.v)]
        } else {
            [Cache::F32(k), Cache::F32(v)]
        }
    }
}

/// The tensors of one case, the caches as f32 (for f16 caches: their rounded values).
struct Case<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    past_k: &'a [f32],
    past_v: &'a [f32],
}

/// `[batch, tokens, heads, head_dim]` in f64, and the largest |score|.
fn reference(d: &Dims, x: &Case<'_>) -> (Vec<f64>, f64) {
    let mut max_score = 0f64;
    let (hd, t, l) = (d.head_dim, d.tokens, d.cache_len);
    let mut out = vec![0f64; d.batch * t * d.heads * hd];
    for b in 0..d.batch {
        for h in 0..d.heads {
            let bh = b * d.heads + h;
            let row = |cache: &[f32], own: &[f32], j: usize| -> Vec<f64> {
                let src = if j < d.position {
                    &cache[(bh * l + j) * hd..(bh * l + j + 1) * hd]
                } else {
                    let j = j - d.position;
                    &own[(bh * t + j) * hd..(bh * t + j + 1) * hd]
                };
                src.iter().map(|&v| v as f64).collect()
            };
            let n = d.position + t;
            for i in 0..t {
                let q = &x.q[(bh * t + i) * hd..(bh * t + i + 1) * hd];
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        let k = row(x.past_k, x.k, j);
                        q.iter().zip(&k).map(|(&a, b)| a as f64 * b).sum()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                max_score = s.iter().fold(max_score, |a, v| a.max(v.abs()));
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    let v = row(x.past_v, x.v, j);
                    for c in 0..hd {
                        out[((b * t + i) * d.heads + h) * hd + c] += w / z * v[c];
                    }
                }
            }
        }
    }
    (out, max_score)
}

fn check(d: Dims, q_scale: f32) {
    check_with(d, q_scale, false);
    check_with(d, q_scale, true);
}

/// One case, with f32 or f16 caches.
fn check_with(d: Dims, q_scale: f32, f16: bool) {
    let block = d.batch * d.heads * d.tokens * d.head_dim;
    let cache = d.batch * d.heads * d.cache_len * d.head_dim;
    let (q, k, v) = (
        fill(block, 1, q_scale),
        fill(block, 2, 1.0),
        fill(block, 3, 1.0),
    );
    let (mut past_k, mut past_v) = (fill(cache, 4, 1.0), fill(cache, 5, 1.0));
    // Stale slots (>= position) hold NaN: reading one would poison the output.
    for past in [&mut past_k, &mut past_v] {
        for (i, x) in past.iter_mut().enumerate() {
            if (i / d.head_dim) % d.cache_len >= d.position {
                *x = f32::NAN;
            } else if f16 {
                *x = half::f16::from_f32(*x).to_f32();
            }
        }
    }
    let halves = Halves::of(&past_k, &past_v);
    let [pk, pv] = halves.pick(f16, &past_k, &past_v);
    let x = Inputs {
        q: &q,
        k: &k,
        v: &v,
        past_k: pk,
        past_v: pv,
    };
    let case = Case {
        q: &q,
        k: &k,
        v: &v,
        past_k: &past_k,
        past_v: &past_v,
    };
    let mut out = vec![0f32; block];
    let par = llamagen_test_support::threads::scoped(3);
    kernel::attend(&d, &x, &mut out, &par).unwrap();
    let (want, max_score) = reference(&d, &case);
    let peak = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = out
        .iter()
        .zip(&want)
        .map(|(&g, w)| (g as f64 - w).abs())
        .fold(0f64, f64::max);
    let keys = (d.position + d.tokens) as f64;
    let level = 2.0 * f32::EPSILON as f64 * (keys.sqrt() + max_score) * peak;
    assert!(
        out.iter().all(|v| v.is_finite()) && worst <= level,
        "{d:?} f16 {f16}: max abs error {worst:.3e} > {level:.3e} (peak {peak:.3e}, max score {max_score:.1})"
    );
}

fn dims(tokens: usize, head_dim: usize, position: usize, cache_len: usize) -> Dims {
    Dims {
        batch: 2,
        heads: 3,
        tokens,
        head_dim,
        cache_len,
        position,
    }
}

#[test]
fn matches_the_f64_reference_on_every_register_block() {
    if !kernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    // Query counts: 1-4 vectors, full and partial tiles of 64.
    for tokens in [1, 5, 16, 17, 33, 48, 64, 65, 100, 130] {
        check(dims(tokens, 64, 7, 200), 4.0);
    }
    // Head dims with D-block remainders (6-blocks leave 4 or 2; 16- and 12-blocks too).
    for hd in [8, 16, 24, 40, 56, 72] {
        for tokens in [3, 20, 40, 64] {
            check(dims(tokens, hd, 11, 80), 4.0);
        }
    }
}

#[test]
fn reads_no_stale_slot_at_any_position() {
    if !kernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    // No cache at all, a full cache, and a key count that leaves every block remainder.
    for (position, tokens) in [(0, 1), (0, 64), (50, 30), (23, 9), (120, 16), (127, 1)] {
        check(dims(tokens, 64, position, position + tokens), 4.0);
        check(dims(tokens, 16, position, 160), 4.0);
    }
}

#[test]
fn stays_exact_with_peaked_softmax_scores() {
    if !kernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    // VAR's q is L2-normalised times exp(scale_mul) <= 100: scores up to ~100, a softmax
    // dominated by a few keys (exp of large negative arguments must not underflow to NaN).
    for tokens in [4, 37] {
        check(dims(tokens, 64, 31, 100), 100.0);
    }
}

#[test]
fn refuses_bad_sizes_with_a_reason() {
    if !kernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    let par = |count: usize, f: &(dyn Fn(usize) + Sync)| (0..count).for_each(f);
    let d = dims(4, 64, 3, 10);
    let block = vec![0f32; 2 * 3 * 4 * 64];
    let cache = vec![0f32; 2 * 3 * 10 * 64];
    let x = Inputs {
        q: &block,
        k: &block,
        v: &block,
        past_k: Cache::F32(&cache),
        past_v: Cache::F32(&cache),
    };
    let mut out = vec![0f32; block.len()];
    let err = kernel::attend(&Dims { position: 11, ..d }, &x, &mut out, &par).unwrap_err();
    assert!(err.contains("position 11"), "{err}");
    let err = kernel::attend(&Dims { head_dim: 12, ..d }, &x, &mut out, &par).unwrap_err();
    assert!(err.contains("head_dim 12"), "{err}");
    let short = Inputs {
        past_v: Cache::F32(&cache[1..]),
        ..x
    };
    let err = kernel::attend(&d, &short, &mut out, &par).unwrap_err();
    assert!(err.contains("past_v"), "{err}");
    kernel::attend(&d, &x, &mut out, &par).unwrap();
}

/// The q/k/v preparation fused in front (`attention::qkv`): from the biased projection
/// `[batch, tokens, 3 heads head_dim]`, q L2-normalised and scaled per head, k normalised,
/// v as is; the keys and values written out `[batch, heads, tokens, head_dim]`, the attention
/// as above. Against the same f64 reference fed the f64-prepared q, k, v.
#[test]
fn the_qkv_preparation_matches_the_reference() {
    use llamagen_runtime::attention::qkv::{attend_qkv, Present, QkvInputs, QkvOutputs};
    if !kernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    for (tokens, hd, position, f16) in [(5, 16, 7, false), (70, 64, 30, true), (16, 24, 0, false)] {
        let d = Dims {
            batch: 2,
            heads: 3,
            tokens,
            head_dim: hd,
            cache_len: position + tokens + 3,
            position,
        };
        let width = d.heads * hd;
        let qkv = fill(d.batch * tokens * 3 * width, 11, 1.0);
        let q_scale = [4.0f32, 17.5, 100.0];
        let eps = 1e-12f32;
        let cache = d.batch * d.heads * d.cache_len * hd;
        let round = |v: Vec<f32>| -> Vec<f32> {
            if f16 {
                v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
            } else {
                v
            }
        };
        let (past_k, past_v) = (round(fill(cache, 12, 1.0)), round(fill(cache, 13, 1.0)));
        // The preparation in f64, laid out [batch, heads, tokens, head_dim].
        let block = d.batch * d.heads * tokens * hd;
        let (mut q, mut k, mut v) = (vec![0f32; block], vec![0f32; block], vec![0f32; block]);
        for b in 0..d.batch {
            for t in 0..tokens {
                for h in 0..d.heads {
                    let row = &qkv[(b * tokens + t) * 3 * width..];
                    let part = |i: usize| &row[i * width + h * hd..i * width + (h + 1) * hd];
                    let norm = |a: &[f32]| {
                        a.iter()
                            .map(|&x| (x as f64).powi(2))
                            .sum::<f64>()
                            .sqrt()
                            .max(eps as f64)
                    };
                    let at = ((b * d.heads + h) * tokens + t) * hd;
                    let (nq, nk) = (norm(part(0)), norm(part(1)));
                    for c in 0..hd {
                        q[at + c] = (part(0)[c] as f64 / nq * q_scale[h] as f64) as f32;
                        k[at + c] = (part(1)[c] as f64 / nk) as f32;
                        v[at + c] = part(2)[c];
                    }
                }
            }
        }
        let case = Case {
            q: &q,
            k: &k,
            v: &v,
            past_k: &past_k,
            past_v: &past_v,
        };
        let (want, max_score) = reference(&d, &case);
        let halves = Halves::of(&past_k, &past_v);
        let [pk, pv] = halves.pick(f16, &past_k, &past_v);
        let x = QkvInputs {
            qkv: &qkv,
            q_scale: &q_scale,
            eps,
            past_k: pk,
            past_v: pv,
        };
        let (mut out, mut ko, mut vo) = (vec![0f32; block], vec![0f32; block], vec![0f32; block]);
        let zero = half::f16::from_f32(0.0);
        let (mut ko16, mut vo16) = (vec![zero; block], vec![zero; block]);
        let par = llamagen_test_support::threads::scoped(2);
        // With an f16 cache the new keys and values come out in f16 (the block's own
        // attention still reads them in f32: the output tolerance below is f32's).
        let o = if f16 {
            QkvOutputs {
                out: &mut out,
                k: Present::F16(&mut ko16),
                v: Present::F16(&mut vo16),
            }
        } else {
            QkvOutputs {
                out: &mut out,
                k: Present::F32(&mut ko),
                v: Present::F32(&mut vo),
            }
        };
        attend_qkv(&d, &x, o, &par).unwrap();
        let (key_level, ko, vo) = if f16 {
            let wide = |h: &[half::f16]| h.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            // Half an f16 step of a unit vector's entries (below 1), plus f32's part.
            (
                2f32.powi(-11) + 4.0 * f32::EPSILON,
                wide(&ko16),
                wide(&vo16),
            )
        } else {
            (4.0 * f32::EPSILON, ko, vo)
        };
        assert_eq!(
            vo,
            round(v.clone()),
            "values are copied as they are (rounded to f16)"
        );
        let worst_k = ko
            .iter()
            .zip(&k)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst_k <= key_level, "keys: {worst_k:.3e}");
        let peak = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst = out
            .iter()
            .zip(&want)
            .map(|(&g, w)| (g as f64 - w).abs())
            .fold(0f64, f64::max);
        let keys = (d.position + tokens) as f64;
        // The queries' own rounding (f32 norm and scale) adds ~eps |score| to each score.
        let level = 4.0 * f32::EPSILON as f64 * (keys.sqrt() + max_score) * peak;
        assert!(worst <= level, "{d:?} f16 {f16}: {worst:.3e} > {level:.3e}");
    }
}
