//! The fused, split-K decode attention (`ops::gpt_split_attention`) against an f64 reference and
//! against the separate pair it replaces (`rotary_kv_write` + `decode_attention`), on every
//! available device (emulator and/or GPU).
//!
//! Tolerance levels (`|got - ref| <= atol + rtol * |ref|` elementwise):
//! - `EXACT_COPY`: cache contents. The fused kernel's k and v at slot pos are the bits
//!   rotary_kv_write writes (both rotate through `rotary_pair`, explicitly rounded f32 with no
//!   FMA contraction, which the host model here repeats), and every other slot keeps its value.
//! - `GPT_KERNEL_FP16_ATTN` (atol 1e-5, rtol 5e-4): the output vs the f64 reference, one f16
//!   rounding of an f32 softmax-weighted sum of <= 150 terms.
//! - `FUSED_VS_SEPARATE` (atol 2e-5, rtol 1e-3): fused vs separate output. Both round to f16 an
//!   f32 result accumulated in another order (the separate kernel strides its 32 groups over all
//!   slots, the fused one over one 64-slot chunk, then merges the chunks): the two f32 values
//!   differ by ~1e-6 relative, so their f16 roundings are equal or one ulp (2^-10 relative)
//!   apart; atol as `GPT_KERNEL_FP16_ATTN`'s, doubled for the two sides.
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

mod attention;

use attention::{big_f16, cache_at, Claims, BIG};
use cuda_common::{download_f16, download_i32, round_f16, upload_f16, upload_f32, Rng};
use half::f16;
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::gpt::{decode_attention, rotary_kv_write, AttnShape, LayerCache, Rotary};
use llamagen_cuda::ops::gpt_split_attention::{
    attn_splits, decode_attention_fused, SplitScratch, ATTN_SPLIT_CHUNK,
};
use llamagen_test_support::{Tolerance, EXACT, GPT_KERNEL_FP16_ATTN};

const EXACT_COPY: Tolerance = EXACT.nan_equal();
const FUSED_VS_SEPARATE: Tolerance =
    Tolerance::rel("fused vs separate attention (one f16 ulp)", 2e-5, 1e-3);

/// (shape, positions): GQA (heads 4 on kv 2 and 1), rows 1 and 17, pos 0, at the chunk
/// boundaries (chunk - 1, chunk, chunk + 1), max_len - 1, max_len a multiple of the chunk and
/// not, and the head sizes the kernel takes besides 64 (8, 16: the golden tiny model; 128).
fn cases() -> Vec<(AttnShape, Vec<usize>)> {
    let c = ATTN_SPLIT_CHUNK;
    let shape = |rows, heads, kv_heads, head_dim, max_len| AttnShape {
        rows,
        heads,
        kv_heads,
        head_dim,
        max_len,
    };
    vec![
        (
            shape(1, 2, 2, 64, 130),
            vec![0, c - 1, c, c + 1, 2 * c, 129],
        ),
        (shape(17, 4, 2, 64, 70), vec![0, c - 1, c, c + 1, 69]),
        (shape(2, 4, 1, 64, 2 * c), vec![1, c, 2 * c - 1]),
        (shape(3, 4, 2, 16, c), vec![0, 1, c - 1]),
        (shape(2, 2, 2, 128, 100), vec![0, c + 1, 99]),
        (shape(1, 3, 1, 8, 65), vec![c - 1, c]),
    ]
}

/// One head rotated as `rotary_pair` does: f32 products and difference/sum, each exactly rounded
/// (Rust does not contract), then rounded to f16.
fn rotate_f16(x: &[f32], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    x.chunks(2)
        .enumerate()
        .flat_map(|(j, p)| {
            let (a, b, e) = (p[0], p[1], 2 * j);
            [
                round_f16(a * cos[e] - b * sin[e]),
                round_f16(b * cos[e + 1] + a * sin[e + 1]),
            ]
        })
        .collect()
}

/// The inputs of one step: qkv, rotary tables, and the caches before it (random in every slot).
struct Step {
    qkv: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Step {
    fn random(rng: &mut Rng, s: &AttnShape, q_scale: f32) -> Step {
        let width = (s.heads + 2 * s.kv_heads) * s.head_dim;
        let cache_len = s.rows * s.kv_heads * s.max_len * s.head_dim;
        let angles = rng.vec_f32(s.max_len * s.head_dim / 2, -3.0, 3.0);
        let mut qkv = rng.vec_f16(s.rows * width, -1.0, 1.0);
        for r in 0..s.rows {
            for x in &mut qkv[r * width..][..s.heads * s.head_dim] {
                *x = round_f16(*x * q_scale);
            }
        }
        Step {
            qkv,
            cos: angles.iter().flat_map(|a| [a.cos(); 2]).collect(),
            sin: angles.iter().flat_map(|a| [a.sin(); 2]).collect(),
            k: rng.vec_f16(cache_len, -1.0, 1.0),
            v: rng.vec_f16(cache_len, -1.0, 1.0),
        }
    }

    /// Rotated q `[rows, heads * head_dim]` and the caches after the write at `pos`, as
    /// rotary_kv_write leaves them.
    fn expected(&self, s: &AttnShape, pos: usize) -> [Vec<f32>; 3] {
        let hd = s.head_dim;
        let width = (s.heads + 2 * s.kv_heads) * hd;
        let (c, sn) = (&self.cos[pos * hd..][..hd], &self.sin[pos * hd..][..hd]);
        let (mut q, mut k, mut v) = (Vec::new(), self.k.clone(), self.v.clone());
        for r in 0..s.rows {
            let row = &self.qkv[r * width..][..width];
            for h in 0..s.heads {
                q.extend(rotate_f16(&row[h * hd..][..hd], c, sn));
            }
            for h in 0..s.kv_heads {
                let at = cache_at(s, r, h, pos, 0);
                k[at..at + hd].copy_from_slice(&rotate_f16(
                    &row[(s.heads + h) * hd..][..hd],
                    c,
                    sn,
                ));
                v[at..at + hd].copy_from_slice(&row[(s.heads + s.kv_heads + h) * hd..][..hd]);
            }
        }
        [q, k, v]
    }
}

/// softmax(q . K[0..=pos]^T) . V[0..=pos] per (row, head), in f64.
fn attention_f64(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], pos: usize) -> Vec<f32> {
    let hd = s.head_dim;
    let mut out = Vec::with_capacity(s.rows * s.heads * hd);
    for r in 0..s.rows {
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qh = &q[(r * s.heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    let kt = &k[cache_at(s, r, kvh, t, 0)..][..hd];
                    qh.iter().zip(kt).map(|(&a, &b)| a as f64 * b as f64).sum()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for e in 0..hd {
                let o: f64 = (0..=pos)
                    .map(|t| p[t] * v[cache_at(s, r, kvh, t, e)] as f64)
                    .sum();
                out.push((o / sum) as f32);
            }
        }
    }
    out
}

/// Device buffers of one shape: inputs, caches, output and the fused kernel's scratch.
struct Bufs<D: Device> {
    qkv: D::Buf,
    cos: D::Buf,
    sin: D::Buf,
    k: D::Buf,
    v: D::Buf,
    out: D::Buf,
    pos: D::Buf,
    partials: D::Buf,
    counters: D::Buf,
}

impl<D: Device> Bufs<D> {
    fn new(d: &D, s: &AttnShape, step: &Step) -> Self {
        Bufs {
            qkv: upload_f16(d, &step.qkv),
            cos: upload_f32(d, &step.cos),
            sin: upload_f32(d, &step.sin),
            k: upload_f16(d, &step.k),
            v: upload_f16(d, &step.v),
            out: d.alloc(s.q_elems() * 2).unwrap(),
            pos: d.alloc(4).unwrap(),
            partials: d.alloc(SplitScratch::partials_len(s) * 4).unwrap(),
            counters: d.alloc(SplitScratch::counters_len(s) * 4).unwrap(),
        }
    }

    fn cache(&self, d: &D) -> LayerCache {
        LayerCache {
            k: d.slice(&self.k),
            v: d.slice(&self.v),
            pos: d.slice(&self.pos),
        }
    }

    fn rotary(&self, d: &D) -> Rotary {
        Rotary {
            cos: d.slice(&self.cos),
            sin: d.slice(&self.sin),
        }
    }

    fn scratch(&self, d: &D) -> SplitScratch {
        SplitScratch {
            partials: d.slice(&self.partials),
            counters: d.slice(&self.counters),
        }
    }

    fn fused(&self, d: &D, s: &AttnShape) {
        let qkv = d.slice(&self.qkv);
        let (cache, rotary, scratch) = (self.cache(d), self.rotary(d), self.scratch(d));
        decode_attention_fused(d, d.slice(&self.out), cache, qkv, rotary, scratch, s).unwrap();
    }

    /// rotary_kv_write + decode_attention, with q in `q`.
    fn separate(&self, d: &D, s: &AttnShape, q: &D::Buf) {
        let cache = self.cache(d);
        rotary_kv_write(d, d.slice(q), cache, d.slice(&self.qkv), self.rotary(d), s).unwrap();
        decode_attention(d, d.slice(&self.out), d.slice(q), cache, s).unwrap();
    }

    /// The caches' contents after a launch, restored to `step`'s for the next one.
    fn take_caches(&self, d: &D, s: &AttnShape, step: &Step) -> [Vec<f32>; 2] {
        let n = s.cache_elems();
        let got = [download_f16(d, &self.k, n), download_f16(d, &self.v, n)];
        d.upload(&self.k, 0, &f16_bytes(&step.k)).unwrap();
        d.upload(&self.v, 0, &f16_bytes(&step.v)).unwrap();
        got
    }

    fn assert_counters_zero(&self, d: &D, s: &AttnShape, what: &str) {
        let c = download_i32(d, &self.counters, SplitScratch::counters_len(s));
        assert!(c.iter().all(|&x| x == 0), "{what}: counters left {c:?}");
    }
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Element counts of a shape's q/out and one cache.
trait Elems {
    fn q_elems(&self) -> usize;
    fn cache_elems(&self) -> usize;
}

impl Elems for AttnShape {
    fn q_elems(&self) -> usize {
        self.rows * self.heads * self.head_dim
    }
    fn cache_elems(&self) -> usize {
        self.rows * self.kv_heads * self.max_len * self.head_dim
    }
}

/// The fused kernel vs the f64 reference (output) and the host model of rotary_kv_write
/// (caches, bit exact), for every case and position, one scratch reused throughout as a session
/// reuses it (the counters must come back to zero after every launch).
fn check_fused_matches_reference<D: Device>(d: &D) {
    let mut rng = Rng(11);
    for (s, positions) in cases() {
        // Queries up to ±8: scores up to ~±60, far apart, so the merge must rescale right.
        for q_scale in [1.0, 8.0] {
            let step = Step::random(&mut rng, &s, q_scale);
            let b = Bufs::new(d, &s, &step);
            for &pos in &positions {
                d.upload(&b.pos, 0, &(pos as i32).to_le_bytes()).unwrap();
                b.fused(d, &s);
                let what = format!("fused {s:?} q x{q_scale} pos {pos}");
                let [q, want_k, want_v] = step.expected(&s, pos);
                GPT_KERNEL_FP16_ATTN.assert_close(
                    &format!("{what} out"),
                    &download_f16(d, &b.out, s.q_elems()),
                    &attention_f64(&s, &q, &want_k, &want_v, pos),
                );
                let [k, v] = b.take_caches(d, &s, &step);
                EXACT_COPY.assert_close(&format!("{what} k"), &k, &want_k);
                EXACT_COPY.assert_close(&format!("{what} v"), &v, &want_v);
                b.assert_counters_zero(d, &s, &what);
            }
        }
    }
}

/// The fused kernel vs the separate pair on the same inputs: caches bit-identical, outputs
/// within `FUSED_VS_SEPARATE`.
fn check_fused_matches_separate<D: Device>(d: &D) {
    let mut rng = Rng(12);
    for (s, positions) in cases() {
        let step = Step::random(&mut rng, &s, 4.0);
        let b = Bufs::new(d, &s, &step);
        let q = d.alloc(s.q_elems() * 2).unwrap();
        for &pos in &positions {
            d.upload(&b.pos, 0, &(pos as i32).to_le_bytes()).unwrap();
            b.separate(d, &s, &q);
            let want = download_f16(d, &b.out, s.q_elems());
            let [want_k, want_v] = b.take_caches(d, &s, &step);
            b.fused(d, &s);
            let what = format!("fused vs separate {s:?} pos {pos}");
            FUSED_VS_SEPARATE.assert_close(
                &format!("{what} out"),
                &download_f16(d, &b.out, s.q_elems()),
                &want,
            );
            let [k, v] = b.take_caches(d, &s, &step);
            EXACT_COPY.assert_close(&format!("{what} k"), &k, &want_k);
            EXACT_COPY.assert_close(&format!("{what} v"), &v, &want_v);
        }
    }
}

/// A whole decode loop as the engine runs it: the fused launch captured once into a graph and
/// replayed with pos advancing from 0 to max_len - 1 (new qkv each step), against the separate
/// pair launched directly on caches of their own. Every step's output within
/// `FUSED_VS_SEPARATE`, and the caches the two loops built bit-identical at the end.
fn check_fused_replay_builds_the_same_cache<D: Device>(d: &D) {
    let mut rng = Rng(13);
    let s = AttnShape {
        rows: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        max_len: ATTN_SPLIT_CHUNK + 6,
    };
    let first = Step::random(&mut rng, &s, 2.0);
    let fused = Bufs::new(d, &s, &first);
    let separate = Bufs::new(d, &s, &first);
    let q = d.alloc(s.q_elems() * 2).unwrap();
    d.upload(&fused.pos, 0, &0i32.to_le_bytes()).unwrap();
    d.begin_capture().unwrap();
    fused.fused(d, &s);
    let graph = d.end_capture().unwrap();
    for pos in 0..s.max_len {
        let qkv = f16_bytes(&Step::random(&mut rng, &s, 2.0).qkv);
        for b in [&fused, &separate] {
            d.upload(&b.qkv, 0, &qkv).unwrap();
            d.upload(&b.pos, 0, &(pos as i32).to_le_bytes()).unwrap();
        }
        d.replay(&graph).unwrap();
        separate.separate(d, &s, &q);
        FUSED_VS_SEPARATE.assert_close(
            &format!("replayed fused vs separate pos {pos}"),
            &download_f16(d, &fused.out, s.q_elems()),
            &download_f16(d, &separate.out, s.q_elems()),
        );
    }
    fused.assert_counters_zero(d, &s, "after the loop");
    let n = s.cache_elems();
    for (what, a, b) in [("k", &fused.k, &separate.k), ("v", &fused.v, &separate.v)] {
        EXACT_COPY.assert_close(
            &format!("cache {what} after the loop"),
            &download_f16(d, a, n),
            &download_f16(d, b, n),
        );
    }
}

/// Positions outside `0..max_len` write nothing (caches, output, counters), and shapes the
/// kernel cannot run are errors before any launch, never panics.
fn check_fused_bad_positions_and_shapes<D: Device>(d: &D) {
    let mut rng = Rng(14);
    let s = cases()[1].0;
    let step = Step::random(&mut rng, &s, 1.0);
    let b = Bufs::new(d, &s, &step);
    let sentinel = rng.vec_f16(s.q_elems(), -1.0, 1.0);
    for bad in [-1, s.max_len as i32, i32::MAX] {
        d.upload(&b.out, 0, &f16_bytes(&sentinel)).unwrap();
        d.upload(&b.pos, 0, &bad.to_le_bytes()).unwrap();
        b.fused(d, &s);
        let what = format!("pos {bad}");
        let [k, v] = b.take_caches(d, &s, &step);
        EXACT_COPY.assert_close(&format!("{what} k"), &k, &step.k);
        EXACT_COPY.assert_close(&format!("{what} v"), &v, &step.v);
        EXACT_COPY.assert_close(
            &format!("{what} out"),
            &download_f16(d, &b.out, s.q_elems()),
            &sentinel,
        );
        b.assert_counters_zero(d, &s, &what);
    }

    let claims = Claims::new(d);
    let (p, cache, rotary, f16s) = (claims.p, claims.cache, claims.rotary, big_f16);
    let scratch = SplitScratch {
        partials: DevSlice::from_raw(p, BIG),
        counters: DevSlice::from_raw(p, BIG),
    };
    let run = |out: u64, cache: LayerCache, qkv: u64, scratch: SplitScratch, s: &AttnShape| {
        decode_attention_fused(d, f16s(out), cache, f16s(qkv), rotary, scratch, s)
    };
    let expect_err = |r: Result<(), llamagen_cuda::CudaError>, what: &str, needle: &str| {
        let e = r.expect_err(what).to_string();
        assert!(e.contains(needle), "{what}: {e}");
    };
    expect_err(
        run(p, cache, p, scratch, &AttnShape { kv_heads: 3, ..s }),
        "bad GQA",
        "not a multiple of kv_heads",
    );
    for head_dim in [48, 512, 4] {
        expect_err(
            run(p, cache, p, scratch, &AttnShape { head_dim, ..s }),
            "unsupported head_dim",
            "is not one of",
        );
    }
    expect_err(
        run(p, cache, p + 2, scratch, &s),
        "misaligned qkv",
        "qkv at",
    );
    expect_err(
        run(p + 8, cache, p, scratch, &s),
        "misaligned out",
        "out at",
    );
    let short = |len| SplitScratch {
        partials: DevSlice::from_raw(p, len),
        ..scratch
    };
    expect_err(
        run(p, cache, p, short(SplitScratch::partials_len(&s) - 1), &s),
        "short partials",
        "partials holds",
    );
    let few = SplitScratch {
        counters: DevSlice::from_raw(p, SplitScratch::counters_len(&s) - 1),
        ..scratch
    };
    expect_err(
        run(p, cache, p, few, &s),
        "short counters",
        "counters holds",
    );
    let short_cache = LayerCache {
        v: DevSlice::from_raw(p, 128),
        ..cache
    };
    expect_err(
        run(p, short_cache, p, scratch, &s),
        "short cache",
        "cache_v holds",
    );
    let rows = AttnShape { rows: 70_000, ..s };
    expect_err(run(p, cache, p, scratch, &rows), "rows", "grid limit");
    // Empty shapes launch nothing.
    run(p, cache, p, scratch, &AttnShape { rows: 0, ..s }).unwrap();
    assert_eq!(attn_splits(s.max_len), 2);
}

device_tests!(
    check_fused_matches_reference,
    check_fused_matches_separate,
    check_fused_replay_builds_the_same_cache,
    check_fused_bad_positions_and_shapes,
);
