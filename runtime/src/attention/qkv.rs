//! VAR's q/k/v preparation fused in front of the attention: from the biased `qkv` projection
//! `[batch, tokens, 3 C]` to the L2-normalised, scaled queries, the normalised keys and the
//! values, per (row, head) pair, then that pair's attention ([`super::kernel`]).
//!
//! The graph did this as Reshape, a head Transpose (a copy of all of `qkv`), Split (three
//! more), and per q and k a ReduceL2, a Clip and a Div (and q's Mul): eight passes over
//! activations the attention then read again. Here each pair's rows are read once; the keys
//! and values are still written out (`present_key` / `present_value`, the cache contract; in
//! f16 for an f16 cache, while the block's own attention reads them in f32) and the queries
//! stay in a thread-local buffer.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::kernel::{attend_pair, ready, Cache, Dims, OutPtr};
use crate::parallel::ParallelFor;

/// The inputs: `qkv` `[batch, tokens, 3 heads head_dim]` (q, k, v blocks, each head-major),
/// `q_scale` one factor per head, `eps` the norms' floor, and the caches.
pub struct QkvInputs<'a> {
    pub qkv: &'a [f32],
    pub q_scale: &'a [f32],
    pub eps: f32,
    pub past_k: Cache<'a>,
    pub past_v: Cache<'a>,
}

/// The outputs: `out` `[batch, tokens, heads, head_dim]`, and the block's normalised keys and
/// its values `[batch, heads, tokens, head_dim]`.
pub struct QkvOutputs<'a> {
    pub out: &'a mut [f32],
    pub k: Present<'a>,
    pub v: Present<'a>,
}

/// New keys or values for the cache, in its element type.
pub enum Present<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
}

impl Present<'_> {
    fn len(&self) -> usize {
        match self {
            Present::F32(p) => p.len(),
            Present::F16(p) => p.len(),
        }
    }

    fn ptr(&mut self) -> PresentPtr {
        match self {
            Present::F32(p) => PresentPtr::F32(OutPtr(p.as_mut_ptr())),
            Present::F16(p) => PresentPtr::F16(OutPtr(p.as_mut_ptr())),
        }
    }
}

enum PresentPtr {
    F32(OutPtr<f32>),
    F16(OutPtr<f16>),
}

thread_local! {
    /// A task's queries, and its keys and values where the outputs are f16 (each `tokens x
    /// head_dim`).
    static PAIR: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// `q = q / max(|q|, eps) * q_scale[h]`, `k = k / max(|k|, eps)`, `v` as is (the official
/// `F.normalize(q) * scale_mul`, `F.normalize(k)`), then softmax(q k^T) v over the cache slots
/// `0..position` and the block's keys.
pub fn attend_qkv(
    d: &Dims,
    x: &QkvInputs<'_>,
    mut o: QkvOutputs<'_>,
    par: ParallelFor<'_>,
) -> Result<(), String> {
    let (block, cache) = (d.block_len(), d.cache_tensor_len());
    ready(
        d,
        &[
            ("qkv", x.qkv.len(), 3 * block),
            ("q_scale", x.q_scale.len(), d.heads),
            ("past_k", x.past_k.len(), cache),
            ("past_v", x.past_v.len(), cache),
            ("output", o.out.len(), block),
            ("present_k", o.k.len(), block),
            ("present_v", o.v.len(), block),
        ],
    )?;
    let (out, ko, vo) = (OutPtr(o.out.as_mut_ptr()), o.k.ptr(), o.v.ptr());
    let task = |bh: usize| {
        PAIR.with_borrow_mut(|[q, k_buf, v_buf]| {
            let n = d.tokens * d.head_dim;
            let at = bh * n;
            q.resize(n, 0.0);
            // SAFETY: task `bh` alone writes pair `bh`'s rows of the key and value outputs
            // (lengths checked above), and reads them back only after writing them.
            let (k, v) = unsafe { (rows_of(&ko, at, n, k_buf), rows_of(&vo, at, n, v_buf)) };
            prepare_pair(d, x, bh, [q, k, v]);
            for (p, src) in [(&ko, &*k), (&vo, &*v)] {
                if let PresentPtr::F16(p) = p {
                    // SAFETY: as above, pair `bh`'s rows of an f16 output.
                    let dst = unsafe { std::slice::from_raw_parts_mut(p.ptr().add(at), n) };
                    dst.convert_from_f32_slice(src);
                }
            }
            // SAFETY: AVX-512 F is present (checked above); lengths checked above; task `bh`
            // writes only pair `bh`'s rows of `out`.
            unsafe { attend_pair(d, q, [x.past_k, x.past_v], [k, v], &out, bh) }
        });
    };
    par(d.tasks(), &task);
    Ok(())
}

/// Where pair `bh`'s keys (or values) go first, `n` values from `at`: an f32 output in place;
/// for an f16 output the thread's f32 buffer (the block attends in f32; the caller rounds).
///
/// # Safety
/// For an f32 output, `at..at + n` must be in bounds and written by this task alone.
unsafe fn rows_of<'a>(p: &PresentPtr, at: usize, n: usize, buf: &'a mut Vec<f32>) -> &'a mut [f32] {
    match p {
        PresentPtr::F32(p) => std::slice::from_raw_parts_mut(p.ptr().add(at), n),
        PresentPtr::F16(_) => {
            buf.resize(n, 0.0);
            buf
        }
    }
}

/// Pair `bh`'s queries, keys and values (`tokens x head_dim` each) from `qkv`.
fn prepare_pair(d: &Dims, x: &QkvInputs<'_>, bh: usize, [q, k, v]: [&mut [f32]; 3]) {
    let (b, h) = (bh / d.heads, bh % d.heads);
    let (hd, width) = (d.head_dim, d.heads * d.head_dim);
    let scale = x.q_scale[h];
    for t in 0..d.tokens {
        let row = &x.qkv[(b * d.tokens + t) * 3 * width..][..3 * width];
        let part = |i: usize| &row[i * width + h * hd..i * width + (h + 1) * hd];
        let dst = t * hd..(t + 1) * hd;
        let factor = scale / norm(part(0)).max(x.eps);
        for (o, &a) in q[dst.clone()].iter_mut().zip(part(0)) {
            *o = a * factor;
        }
        let n = norm(part(1)).max(x.eps);
        for (o, &a) in k[dst.clone()].iter_mut().zip(part(1)) {
            *o = a / n;
        }
        v[dst].copy_from_slice(part(2));
    }
}

/// The L2 norm, summed in f32 (as ONNX Runtime's ReduceL2).
fn norm(a: &[f32]) -> f32 {
    a.iter().map(|v| v * v).sum::<f32>().sqrt()
}
