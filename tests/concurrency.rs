//! One `Pipeline` shared by 8 threads, on a tiny random-weights bundle (8 px, 16 tokens): mixed
//! batch sizes (1-3 labels, with and without CFG) give every request the tokens of a serial
//! run; an observer that panics in one request leaves the others (and later requests) correct;
//! the process's memory stays flat over 500 requests.
//! Levels: tokens identical; memory growth after warm-up under 24 MiB (RSS from /proc/self/statm).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use llamagen_compiler::compile::{compile, Weights};
use llamagen_runtime::{GenerateRequest, Observer, Pipeline, PipelineOptions, SamplingOptions};
use support::golden::tiny_options;

const THREADS: usize = 8;

fn compile_random(tmp: &Path) -> PathBuf {
    let out = tmp.join("bundle");
    compile(
        &tiny_options(&out, Weights::Random { seed: 7 }),
        &mut |_| {},
    )
    .expect("compile tiny model with random weights");
    out
}

/// Request `i`: 1-3 labels, CFG on two of three, its own seed.
fn request(i: usize) -> GenerateRequest {
    GenerateRequest {
        labels: (0..1 + i % 3).map(|j| (i + j) % 10).collect(),
        cfg_scale: if i % 3 == 2 { 1.0 } else { 4.0 },
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
        },
        seed: i as u64,
    }
}

fn tokens(p: &Pipeline, req: &GenerateRequest) -> Vec<Vec<u32>> {
    p.generate_tokens(req, &mut |_, _| {}).unwrap().tokens
}

/// Panics at token 5.
struct Panicker;

impl Observer for Panicker {
    fn wants_logits(&self) -> bool {
        false
    }
    fn on_token(&mut self, done: usize, _total: usize) {
        if done == 5 {
            panic!("observer panics on purpose");
        }
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm resident pages");
    pages * 4096
}

#[test]
fn shared_pipeline_matches_a_serial_run_survives_a_panicking_observer_and_keeps_memory_flat() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let opts = PipelineOptions {
        backend: llamagen_runtime::BackendChoice::Cpu(llamagen_runtime::CpuOptions {
            threads: Some(1),
            ..Default::default()
        }),
        ..PipelineOptions::default()
    };
    let p = Arc::new(Pipeline::load(&dir, &opts).unwrap());

    // Serial reference.
    const REQUESTS: usize = 48;
    let expected: Vec<_> = (0..REQUESTS).map(|i| tokens(&p, &request(i))).collect();

    // 8 threads, mixed sizes; thread 3 also runs a request whose observer panics.
    let panicked = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (p, expected, panicked) = (&p, &expected, &panicked);
            s.spawn(move || {
                for i in (t..REQUESTS).step_by(THREADS) {
                    if t == 3 && i == t + THREADS {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            p.generate_tokens(&request(i), &mut Panicker)
                        }));
                        assert!(r.is_err(), "the observer should have panicked");
                        panicked.fetch_add(1, Ordering::Relaxed);
                    }
                    assert_eq!(
                        tokens(p, &request(i)),
                        expected[i],
                        "request {i} on thread {t}"
                    );
                }
            });
        }
    });
    assert_eq!(panicked.load(Ordering::Relaxed), 1);

    // Memory flat over 500 requests: warm up (every batch shape, allocator arenas per thread),
    // then 500 more across the threads.
    let run = |count: usize| {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let req = request(i % REQUESTS);
                    assert_eq!(tokens(&p, &req), expected[i % REQUESTS], "request {i}");
                });
            }
        });
    };
    run(100);
    let before = rss_bytes();
    run(500);
    let after = rss_bytes();
    let growth = after.saturating_sub(before) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "RSS before {:.1} MiB, after 500 requests {:.1} MiB (+{growth:.1} MiB)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(
        growth < 24.0,
        "RSS grew by {growth:.1} MiB over 500 requests"
    );
}
