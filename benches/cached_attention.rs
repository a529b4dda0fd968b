//! Criterion bench of the CPU backend's fused VAR attention (`llamagen_runtime::attention`).
//!
//! - `cached_attention/256x680`: VAR-d16's last scale, one layer: 2 rows x 16 heads, 256
//!   queries over the 424 cached slots and the block's own 256 keys, head_dim 64 (1.43 GFLOP),
//!   2 threads. Skipped where AVX-512 is not available.
//! - `cached_attention/36x91`: a small scale (6 x 6 tokens after 55 cached), where the tile's
//!   unused lanes and per-task overhead show.
//! - `cached_attention/256x680/f16`: the last scale with f16 caches (lower-precision bundles),
//!   widened to f32 once per (row, head).

use criterion::{criterion_group, criterion_main, Criterion};
use llamagen_runtime::attention::kernel::{self, Cache, Dims, Inputs};

fn attention(c: &mut Criterion, tokens: usize, position: usize, f16: bool) {
    let d = Dims {
        batch: 2,
        heads: 16,
        tokens,
        head_dim: 64,
        cache_len: 680,
        position,
    };
    let fill = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0) * 0.2)
            .collect()
    };
    let block = d.batch * d.heads * tokens * d.head_dim;
    let cache = d.batch * d.heads * d.cache_len * d.head_dim;
    let (q, k, v) = (fill(block, 1), fill(block, 2), fill(block, 3));
    let (past_k, past_v) = (fill(cache, 4), fill(cache, 5));
    let half =
        |c: &[f32]| -> Vec<half::f16> { c.iter().map(|&v| half::f16::from_f32(v)).collect() };
    let (hk, hv) = (half(&past_k), half(&past_v));
    let (past_k, past_v) = if f16 {
        (Cache::F16(&hk), Cache::F16(&hv))
    } else {
        (Cache::F32(&past_k), Cache::F32(&past_v))
    };
    let x = Inputs {
        q: &q,
        k: &k,
        v: &v,
        past_k,
        past_v,
    };
    let mut out = vec![0f32; block];
    // Two threads taking every other task (as a pool would).
    let par = llamagen_test_support::threads::scoped(2);
    let n = position + tokens;
    let suffix = if f16 { "/f16" } else { "" };
    c.bench_function(&format!("cached_attention/{tokens}x{n}{suffix}"), |b| {
        b.iter(|| kernel::attend(&d, &x, &mut out, &par).unwrap())
    });
}

fn cached_attention(c: &mut Criterion) {
    if !kernel::available() {
        eprintln!("SKIP cached_attention: no AVX-512 on this CPU");
        return;
    }
    attention(c, 256, 424, false);
    attention(c, 36, 55, false);
    attention(c, 256, 424, true);
}

criterion_group!(benches, cached_attention);
criterion_main!(benches);
