//! Criterion bench of the CPU backend's AMX 3x3 convolution (`llamagen_runtime::amx`).
//!
//! - `amx_conv/160x64x64` and `amx_conv/640x16x16`: guard the kernel's throughput (tile
//!   loop, input quantization, Q/DQ epilogue) at a VQ decoder's top-level channel count on a
//!   smaller map and at its widest level, 2 threads. Skipped where AMX is not available.

use criterion::{criterion_group, criterion_main, Criterion};
use llamagen_runtime::amx;
use llamagen_runtime::amx::qconv::{QConv3x3, Quant};

fn conv(c: &mut Criterion, channels: usize, side: usize) {
    let x: Vec<f32> = (0..channels * side * side)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let w: Vec<i8> = (0..channels * channels * 9)
        .map(|i| ((i * 31) % 255) as i32 as i8)
        .collect();
    let q = |scale| Quant {
        scale,
        zero_point: 128,
    };
    let conv = QConv3x3::new(channels, channels, &w, &[1e-3], None, q(0.01), q(0.05)).unwrap();
    let mut out = vec![0f32; x.len()];
    let mut scratch = vec![0u8; conv.scratch_len(side, side)];
    // Two threads taking every other part (as a pool would).
    let par = |count: usize, f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for t in 0..2 {
                s.spawn(move || (t..count).step_by(2).for_each(f));
            }
        })
    };
    c.bench_function(&format!("amx_conv/{channels}x{side}x{side}"), |b| {
        b.iter(|| {
            conv.run(&x, None, 1, side, side, &mut out, &mut scratch, 2, &par)
                .unwrap()
        })
    });
}

fn amx_conv(c: &mut Criterion) {
    if !amx::available() {
        eprintln!("SKIP amx_conv: AMX is not available on this CPU / kernel");
        return;
    }
    conv(c, 160, 64);
    conv(c, 640, 16);
}

criterion_group!(benches, amx_conv);
criterion_main!(benches);
