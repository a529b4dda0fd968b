//! Softmax attention of a token block over the valid slots of a static KV cache and the
//! block's own keys, no mask (VAR's step), on AVX-512 f32.
//!
//! A tile is up to 64 queries of one (row, head) pair; a task is one pair's tiles in turn (its
//! keys and values stay in L2 between them). Everything is laid out with the queries
//! along the vector lanes, so no key is ever transposed:
//! - scores `S[j][i] = sum_d K[j][d] Q[i][d]`: each key element is broadcast against the
//!   transposed query tile `Qt[d][i]` (a register block of keys x up to 4 vectors of queries,
//!   24 accumulators, the shape of MLAS's SGEMM kernel);
//! - the softmax over `j` is then lane-wise (max, exp, sum down the rows of `S`);
//! - the output `O[i][d] = sum_j V[j][d] P[j][i] / sum_i`: each value element is broadcast
//!   against the rows of `P` (a block of head dims x the query vectors), and written out
//!   token-major, `[batch, tokens, heads, head_dim]`, the layout the output projection reads.
//!
//! The scores never leave the task (`tokens_total x 64` floats, L2-resident), and the cache
//! is read in place, slots `0..position`, then the block's keys: the slices, concatenations,
//! transposes and full score tensors of the ONNX graph are gone.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use crate::simd::exp_nonpositive;
use std::cell::RefCell;

use half::slice::HalfFloatSliceExt;

use crate::parallel::ParallelFor;

/// Queries per task (four 16-lane vectors); a block's last task takes the vectors it needs.
pub const TILE: usize = 64;
/// Lanes of a vector.
const LANES: usize = 16;
/// `head_dim` must be a multiple of this (the output blocks' remainders step by 2).
const HEAD_DIM_STEP: usize = 8;

/// The sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    /// Queries (the block's tokens).
    pub tokens: usize,
    pub head_dim: usize,
    /// Slots of each cache tensor.
    pub cache_len: usize,
    /// Valid cache slots (the block's first slot).
    pub position: usize,
}

impl Dims {
    /// Why these sizes cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(HEAD_DIM_STEP) {
            return Err(format!(
                "head_dim {} is not a positive multiple of {HEAD_DIM_STEP}",
                self.head_dim
            ));
        }
        if self.position > self.cache_len {
            return Err(format!(
                "position {} is past the cache's {} slots",
                self.position, self.cache_len
            ));
        }
        Ok(())
    }

    /// Tasks of one call: one per (row, head).
    pub fn tasks(&self) -> usize {
        self.batch * self.heads
    }

    pub(super) fn block_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.head_dim
    }

    pub(super) fn cache_tensor_len(&self) -> usize {
        self.batch * self.heads * self.cache_len * self.head_dim
    }
}

/// The tensors of one call: `q`, `k`, `v` `[batch, heads, tokens, head_dim]` (the block's,
/// `q` already scaled), `past_k`, `past_v` `[batch, heads, cache_len, head_dim]`.
pub struct Inputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub past_k: Cache<'a>,
    pub past_v: Cache<'a>,
}

/// A cache tensor, f32 or f16 (whose valid slots each task widens to f32 once, for all its
/// query tiles).
#[derive(Clone, Copy)]
pub enum Cache<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl Cache<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Cache::F32(c) => c.len(),
            Cache::F16(c) => c.len(),
        }
    }
}

/// Whether this CPU runs the kernel (AVX-512 F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out` `[batch, tokens, heads, head_dim]` = softmax(q k^T) v over the cache slots
/// `0..position` and the block's own keys. `par(count, f)` runs `f(0..count)`, in any order
/// and on any threads.
pub fn attend(
    d: &Dims,
    x: &Inputs<'_>,
    out: &mut [f32],
    par: ParallelFor<'_>,
) -> Result<(), String> {
    let (block, cache) = (d.block_len(), d.cache_tensor_len());
    ready(
        d,
        &[
            ("q", x.q.len(), block),
            ("k", x.k.len(), block),
            ("v", x.v.len(), block),
            ("past_k", x.past_k.len(), cache),
            ("past_v", x.past_v.len(), cache),
            ("output", out.len(), block),
        ],
    )?;
    let out = OutPtr(out.as_mut_ptr());
    // One task per (row, head), its query tiles in turn: the pair's keys and values (348 KB at
    // 680 slots) stay in this core's L2 from one tile to the next.
    let task = |bh: usize| {
        let (t, hd) = (d.tokens, d.head_dim);
        let own = [rows(x.k, bh, t, hd), rows(x.v, bh, t, hd)];
        // SAFETY: AVX-512 F is present (checked above); the lengths were checked above; task
        // `bh` writes only pair `bh`'s rows of `out`.
        unsafe { attend_pair(d, rows(x.q, bh, t, hd), [x.past_k, x.past_v], own, &out, bh) }
    };
    par(d.tasks(), &task);
    Ok(())
}

/// Whether a call of sizes `d` can run here, with every tensor of the length it should have
/// (`(name, length, expected)`).
pub(super) fn ready(d: &Dims, lengths: &[(&str, usize, usize)]) -> Result<(), String> {
    d.check()?;
    if !available() {
        return Err("this CPU has no AVX-512".into());
    }
    for &(name, len, want) in lengths {
        if len != want {
            return Err(format!(
                "{name} holds {len} values, expected {want} for {d:?}"
            ));
        }
    }
    Ok(())
}

/// The output pointer, shared by tasks that write disjoint parts of it.
pub(super) struct OutPtr<T = f32>(pub(super) *mut T);
// SAFETY: tasks write disjoint elements (see `attend_pair`).
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(super) fn ptr(&self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// A task's transposed queries and scores, reused across calls on each thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A task's valid cache slots widened from f16 (keys, then values).
    static WIDENED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Pair `bh`'s attention: its queries `q` (`tokens x head_dim`), the caches' valid slots and
/// its block's own keys and values `own` (`tokens x head_dim` each), out to its rows of `out`.
///
/// # Safety
/// AVX-512 F must be present; the caches must hold `batch x heads x cache_len x head_dim`
/// values and `out` `batch x tokens x heads x head_dim`; no other task writes pair `bh`.
pub(super) unsafe fn attend_pair(
    d: &Dims,
    q: &[f32],
    [past_k, past_v]: [Cache<'_>; 2],
    [own_k, own_v]: [&[f32]; 2],
    out: &OutPtr,
    bh: usize,
) {
    let tiles = d.tokens.div_ceil(TILE);
    WIDENED.with_borrow_mut(|wide| {
        let hd = d.head_dim;
        let valid = d.position * hd;
        let at = bh * d.cache_len * hd;
        let (keys, values) = match (past_k, past_v) {
            (Cache::F32(k), Cache::F32(v)) => {
                ([&k[at..at + valid], own_k], [&v[at..at + valid], own_v])
            }
            _ => {
                wide.resize(2 * valid, 0.0);
                let (wk, wv) = wide.split_at_mut(valid);
                for (cache, dst) in [(past_k, &mut *wk), (past_v, &mut *wv)] {
                    match cache {
                        Cache::F32(c) => dst.copy_from_slice(&c[at..at + valid]),
                        Cache::F16(c) => c[at..at + valid].convert_to_f32_slice(dst),
                    }
                }
                ([&*wk, own_k], [&*wv, own_v])
            }
        };
        SCRATCH.with_borrow_mut(|s| {
            for tile in 0..tiles {
                #[cfg(target_arch = "x86_64")]
                run_task(d, q, [keys, values], out, bh, tile, s)
            }
        });
    });
}

/// One (row, head) pair's rows of a `[.., len, head_dim]` tensor.
pub(super) fn rows(t: &[f32], bh: usize, len: usize, hd: usize) -> &[f32] {
    &t[bh * len * hd..(bh + 1) * len * hd]
}

/// One task: its queries' vector count picks the register blocks (keys x vectors and head
/// dims x vectors of at most 24 accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_task(
    d: &Dims,
    q: &[f32],
    kv: [[&[f32]; 2]; 2],
    out: &OutPtr,
    bh: usize,
    tile: usize,
    scratch: &mut Vec<f32>,
) {
    let nq = TILE.min(d.tokens - tile * TILE);
    match nq.div_ceil(LANES) {
        1 => task::<1, 16, 16>(d, q, kv, out, bh, tile, scratch),
        2 => task::<2, 12, 12>(d, q, kv, out, bh, tile, scratch),
        3 => task::<3, 8, 8>(d, q, kv, out, bh, tile, scratch),
        _ => task::<4, 6, 6>(d, q, kv, out, bh, tile, scratch),
    }
}

/// A task of `V` query vectors, scoring `R` keys and summing `D` head dims a block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task<const V: usize, const R: usize, const D: usize>(
    d: &Dims,
    q: &[f32],
    [keys, values]: [[&[f32]; 2]; 2],
    out: &OutPtr,
    bh: usize,
    tile: usize,
    scratch: &mut Vec<f32>,
) {
    let hd = d.head_dim;
    let width = V * LANES;
    let t0 = tile * TILE;
    let nq = width.min(d.tokens - t0);
    let n = d.position + d.tokens;
    if scratch.len() < (hd + n) * width {
        scratch.resize((hd + n) * width, 0.0);
    }
    let (qt, s) = scratch.split_at_mut(hd * width);
    // Lanes past the block's last query score zeros and are never written out.
    qt.fill(0.0);
    for i in 0..nq {
        for (c, &v) in q[(t0 + i) * hd..(t0 + i + 1) * hd].iter().enumerate() {
            qt[c * width + i] = v;
        }
    }

    let mut j = 0;
    for seg in keys {
        let count = seg.len() / hd;
        let mut r = 0;
        while r + R <= count {
            scores::<V, R>(&seg[r * hd..], hd, qt, &mut s[(j + r) * width..]);
            r += R;
        }
        while r < count {
            scores::<V, 1>(&seg[r * hd..], hd, qt, &mut s[(j + r) * width..]);
            r += 1;
        }
        j += count;
    }

    let sums = softmax_rows::<V>(s, n);
    let inv = sums.map(|v| _mm512_div_ps(_mm512_set1_ps(1.0), v));
    let (b, h) = (bh / d.heads, bh % d.heads);
    // At most 24 accumulators of 16 lanes (`D x V`).
    let mut block = [0f32; 24 * LANES];
    let mut c0 = 0;
    while c0 < hd {
        let dims = if c0 + D <= hd {
            weighted_sum::<V, D>(&values, hd, c0, s, inv, &mut block);
            D
        } else if c0 + 4 <= hd {
            weighted_sum::<V, 4>(&values, hd, c0, s, inv, &mut block);
            4
        } else {
            weighted_sum::<V, 2>(&values, hd, c0, s, inv, &mut block);
            2
        };
        // Token-major: out[b][t0 + i][h][c0 + c].
        for i in 0..nq {
            let at = ((b * d.tokens + t0 + i) * d.heads + h) * hd + c0;
            for c in 0..dims {
                *out.0.add(at + c) = block[c * width + i];
            }
        }
        c0 += dims;
    }
}

/// `s[r][..] = sum_d k[r][d] qt[d][..]` for `R` consecutive keys of `k` (rows of `hd`), `V`
/// vectors of queries.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores<const V: usize, const R: usize>(k: &[f32], hd: usize, qt: &[f32], s: &mut [f32]) {
    let width = V * LANES;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let (k, qt) = (k.as_ptr(), qt.as_ptr());
    for c in 0..hd {
        let mut q = [_mm512_setzero_ps(); V];
        for (v, qv) in q.iter_mut().enumerate() {
            *qv = _mm512_loadu_ps(qt.add(c * width + v * LANES));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let kb = _mm512_set1_ps(*k.add(r * hd + c));
            for v in 0..V {
                a[v] = _mm512_fmadd_ps(kb, q[v], a[v]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (v, av) in a.iter().enumerate() {
            _mm512_storeu_ps(s.as_mut_ptr().add(r * width + v * LANES), *av);
        }
    }
}

/// Each lane's softmax down the `n` rows of `s` (rows of `V` vectors), unnormalized: the rows
/// become `exp(s - max)`; returns the lanes' sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows<const V: usize>(s: &mut [f32], n: usize) -> [__m512; V] {
    let width = V * LANES;
    let p = s.as_mut_ptr();
    let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); V];
    for j in 0..n {
        for (v, mv) in m.iter_mut().enumerate() {
            *mv = _mm512_max_ps(*mv, _mm512_loadu_ps(p.add(j * width + v * LANES)));
        }
    }
    let mut sum = [_mm512_setzero_ps(); V];
    for j in 0..n {
        for v in 0..V {
            let at = p.add(j * width + v * LANES);
            let e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(at), m[v]));
            _mm512_storeu_ps(at, e);
            sum[v] = _mm512_add_ps(sum[v], e);
        }
    }
    sum
}

/// `block[c][..] = inv * sum_j v[j][c0 + c] p[j][..]` for the `D` head dims from `c0`, `v` in
/// segments (cache slots, then the block's), `p` the rows of `exp(s - max)` (`V` vectors).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum<const V: usize, const D: usize>(
    values: &[&[f32]; 2],
    hd: usize,
    c0: usize,
    p: &[f32],
    inv: [__m512; V],
    block: &mut [f32],
) {
    let width = V * LANES;
    let mut acc = [[_mm512_setzero_ps(); V]; D];
    let mut pj = p.as_ptr();
    for seg in values {
        let count = seg.len() / hd;
        let mut v = seg.as_ptr().add(c0);
        for _ in 0..count {
            let mut pv = [_mm512_setzero_ps(); V];
            for (u, x) in pv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(pj.add(u * LANES));
            }
            for (c, a) in acc.iter_mut().enumerate() {
                let vb = _mm512_set1_ps(*v.add(c));
                for u in 0..V {
                    a[u] = _mm512_fmadd_ps(vb, pv[u], a[u]);
                }
            }
            pj = pj.add(width);
            v = v.add(hd);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        for (u, au) in a.iter().enumerate() {
            _mm512_storeu_ps(
                block.as_mut_ptr().add(c * width + u * LANES),
                _mm512_mul_ps(*au, inv[u]),
            );
        }
    }
}
