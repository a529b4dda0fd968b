//! Criterion bench of the device sampler (`sample_rows`), device time per decode step from
//! events around the launches: guards the cost of CFG + top-k/top-p + draw for 8 request rows
//! with CFG (16 x 16384 logits), 47 us on an H200 before issue 8 restructured it.
//!
//! On a GPU (feature `driver`; `scripts/gpu_bench.sh` runs it from the GPU kit) the times are
//! the device's. Without one (feature `emu`) it runs on the kernel emulator: host time, which
//! guards only the emulator, with few samples.

#[cfg(any(feature = "driver", feature = "emu"))]
mod bench {
    use std::time::Duration;

    use criterion::Criterion;
    use llamagen_bundle::sampling::SamplingOptions;
    use llamagen_cuda::device::Device;
    use llamagen_cuda::ops::sampler::{sample, scratch_bytes, SampleIo, SampleParams};
    use llamagen_test_support::device::{upload_bytes, upload_f32, upload_i32, Rng};

    const VOCAB: usize = 16384;
    const REQUESTS: usize = 8;

    fn settings() -> [(&'static str, SamplingOptions); 3] {
        let opts = |temperature, top_k, top_p| SamplingOptions {
            temperature,
            top_k,
            top_p,
        };
        [
            ("llamagen_default_top_k_2000", SamplingOptions::default()),
            ("var_top_k_900_top_p_0.95", opts(1.0, 900, 0.95)),
            ("top_p_0.9", opts(1.0, 0, 0.9)),
        ]
    }

    /// Times `iters` sampling launches on `d` (host clock for the emulator, events on a GPU).
    fn run<D: Device>(c: &mut Criterion, d: &D, group: &str) {
        let logits = Rng(8).vec_f32(2 * REQUESTS * VOCAB, -10.0, 10.0);
        let logits = upload_f32(d, &logits);
        let tokens = upload_i32(d, &vec![0; REQUESTS * 256]);
        let ids = upload_i32(d, &[0; 2 * REQUESTS]);
        let step = upload_i32(d, &[5]);
        let scratch = d.alloc(scratch_bytes(REQUESTS, VOCAB)).expect("scratch");
        let mut g = c.benchmark_group(group);
        if cfg!(not(feature = "driver")) {
            g.sample_size(10).measurement_time(Duration::from_secs(5));
        }
        for (name, o) in settings() {
            // cfg scale 1 keeps the rewritten cond rows equal to themselves, launch after launch.
            let p = SampleParams::new(&o, 1.0, -1.0, 7, REQUESTS, true, 256);
            let params = upload_bytes(d, &p.to_bytes());
            let io = SampleIo {
                tokens: d.slice(&tokens),
                ids: d.slice(&ids),
                logits: d.slice(&logits),
                params: d.slice(&params),
                step: d.slice(&step),
                scratch: d.slice(&scratch),
            };
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let (start, end) = (d.new_event().unwrap(), d.new_event().unwrap());
                    d.record(&start).unwrap();
                    for _ in 0..iters {
                        sample(d, &io, REQUESTS, VOCAB).unwrap();
                    }
                    d.record(&end).unwrap();
                    Duration::from_secs_f64(d.elapsed_ms(&start, &end).unwrap() / 1e3)
                })
            });
        }
        g.finish();
    }

    pub fn device_sampler(c: &mut Criterion) {
        #[cfg(feature = "driver")]
        match llamagen_cuda::driver::CudaDevice::open(0) {
            Ok(d) => return run(c, &d, "device_sampler_gpu"),
            Err(e) => eprintln!("no CUDA GPU ({e})"),
        }
        #[cfg(feature = "emu")]
        run(
            c,
            &llamagen_cuda::emu::EmuDevice::new().expect("the emulator"),
            "device_sampler_emu",
        );
    }
}

#[cfg(any(feature = "driver", feature = "emu"))]
criterion::criterion_group!(benches, bench::device_sampler);
#[cfg(any(feature = "driver", feature = "emu"))]
criterion::criterion_main!(benches);

#[cfg(not(any(feature = "driver", feature = "emu")))]
fn main() {
    eprintln!("device_sampler: build with --features driver (a GPU) or emu (the emulator)");
}
