//! What a service needs from one request on a tiny random-weights bundle (8 px, 16 tokens): the
//! label cap, cancellation by the observer and by a deadline, and per-row random streams (a
//! merged batch gives every request exactly the tokens it gets alone), on the CPU and, with
//! feature `cuda-emu`, on the CUDA backend's emulator (fused loop with the captured step).
//! Levels: tokens identical (no numeric tolerance involved).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use llamagen_compiler::compile::{compile, Weights};
use llamagen_runtime::{
    BackendChoice, GenerateRequest, Observer, Pipeline, PipelineOptions, RowSeed, RunOptions,
    RuntimeError, SamplingOptions,
};
use support::golden::tiny_options;

/// Compiles the tiny model with random weights into `tmp/bundle` and returns that folder.
fn compile_random(tmp: &Path) -> std::path::PathBuf {
    let out = tmp.join("bundle");
    compile(
        &tiny_options(&out, Weights::Random { seed: 3 }),
        &mut |_| {},
    )
    .expect("compile tiny model with random weights");
    out
}

fn load(dir: &Path, backend: BackendChoice) -> Pipeline {
    let opts = PipelineOptions {
        backend,
        max_labels: 8,
        ..PipelineOptions::default()
    };
    Pipeline::load(dir, &opts).expect("load bundle")
}

fn request(labels: Vec<usize>, seed: u64) -> GenerateRequest {
    GenerateRequest {
        labels,
        cfg_scale: 4.0,
        cfg_interval: -1.0,
        sampling: SamplingOptions {
            temperature: 1.0,
            top_k: 100,
            top_p: 0.95,
        },
        seed,
    }
}

/// Counts tokens and asks to stop once `stop_at` tokens are done.
struct StopAt {
    stop_at: usize,
    seen: usize,
}

impl Observer for StopAt {
    fn on_token(&mut self, done: usize, _total: usize) {
        self.seen = done;
    }
    fn should_stop(&mut self) -> bool {
        self.seen >= self.stop_at
    }
}

#[test]
fn labels_over_the_limit_are_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let p = load(&dir, BackendChoice::default());
    assert_eq!(p.max_labels(), 8);
    let err = p
        .generate_tokens(&request(vec![1; 9], 0), &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::TooManyLabels { got: 9, max: 8 }),
        "{err}"
    );
    assert!(err.to_string().contains("max_labels"), "{err}");
    let err = p.decode_images(&vec![vec![0; 16]; 9]).unwrap_err();
    assert!(matches!(err, RuntimeError::TooManyLabels { .. }), "{err}");
    // At the limit it runs.
    let out = p
        .generate_tokens(&request(vec![1; 8], 0), &mut |_, _| {})
        .unwrap();
    assert_eq!(out.tokens.len(), 8);
    assert_eq!(
        PipelineOptions::default().max_labels,
        PipelineOptions::DEFAULT_MAX_LABELS
    );
}

#[test]
fn a_poisoned_pooled_cache_does_not_leak_into_the_next_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let p = load(&dir, BackendChoice::default());
    let first = request(vec![1, 2], 4);
    let next = request(vec![5, 6], 8);
    p.generate_tokens(&first, &mut |_, _| {}).unwrap();
    // The pool now holds the caches of a 2-label CFG batch (4 rows): poison them.
    p.poison_pooled_caches(f32::NAN);
    let got = p.generate_tokens(&next, &mut |_, _| {}).unwrap().tokens;
    let fresh = load(&dir, BackendChoice::default());
    let want = fresh.generate_tokens(&next, &mut |_, _| {}).unwrap().tokens;
    assert_eq!(
        got, want,
        "tokens after a poisoned cache vs a fresh pipeline"
    );
    p.poison_pooled_caches(f32::INFINITY);
    let got = p.generate_tokens(&next, &mut |_, _| {}).unwrap().tokens;
    assert_eq!(got, want, "tokens after an Inf-poisoned cache");
}

#[test]
fn an_observer_stop_ends_the_generation_within_one_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let p = load(&dir, BackendChoice::default());
    let req = request(vec![1, 2], 4);
    let mut obs = StopAt {
        stop_at: 3,
        seen: 0,
    };
    let err = p.generate_tokens(&req, &mut obs).unwrap_err();
    assert!(
        matches!(err, RuntimeError::Cancelled { done: 3, steps: 16 }),
        "{err}"
    );
    assert_eq!(obs.seen, 3, "no token after the stop");
    // The pipeline (and its pooled caches) serve the next request as if nothing happened.
    let fresh = load(&dir, BackendChoice::default());
    let a = p.generate_tokens(&req, &mut |_, _| {}).unwrap().tokens;
    let b = fresh.generate_tokens(&req, &mut |_, _| {}).unwrap().tokens;
    assert_eq!(a, b);
}

#[test]
fn a_deadline_ends_the_generation_with_its_own_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let p = load(&dir, BackendChoice::default());
    let req = request(vec![1], 4);
    // Already passed: nothing runs.
    let run = RunOptions {
        deadline: Some(Instant::now()),
        ..RunOptions::default()
    };
    let err = p
        .generate_tokens_with(&req, &run, &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::DeadlineExceeded { done: 0, .. }),
        "{err}"
    );
    // Passing at token 2 at the latest (earlier on a slow machine): the generation ends right
    // after the token during which it passed.
    let deadline = Instant::now() + Duration::from_millis(20);
    let run = RunOptions {
        deadline: Some(deadline),
        ..RunOptions::default()
    };
    let mut last = 0;
    let mut wait_at_2 = |done: usize, _: usize| {
        last = done;
        if done == 2 {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let err = p
        .generate_tokens_with(&req, &run, &mut wait_at_2)
        .unwrap_err();
    let RuntimeError::DeadlineExceeded { done, steps: 16 } = err else {
        panic!("{err}");
    };
    assert!(done <= 2, "{err}");
    assert_eq!(last, done, "no token after the deadline's step");
    // A far deadline changes nothing.
    let run = RunOptions {
        deadline: Some(Instant::now() + Duration::from_secs(3600)),
        ..RunOptions::default()
    };
    let a = p.generate_tokens_with(&req, &run, &mut |_, _| {}).unwrap();
    let b = p.generate_tokens(&req, &mut |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
}

/// Requests alone, then merged into one batch with per-row seeds: the same tokens each.
fn merged_batch_equals_requests_alone(p: &Pipeline) {
    let a = request(vec![1, 2], 5);
    let b = request(vec![3], 9);
    let c = request(vec![2, 2, 7], 11);
    let alone: Vec<Vec<u32>> = [&a, &b, &c]
        .iter()
        .flat_map(|r| p.generate_tokens(r, &mut |_, _| {}).unwrap().tokens)
        .collect();
    let mut merged = a.clone();
    let mut row_seeds = RowSeed::of_request(&a);
    for r in [&b, &c] {
        merged.labels.extend(&r.labels);
        row_seeds.extend(RowSeed::of_request(r));
    }
    let run = RunOptions {
        row_seeds,
        ..RunOptions::default()
    };
    let together = p
        .generate_tokens_with(&merged, &run, &mut |_, _| {})
        .unwrap()
        .tokens;
    assert_eq!(together, alone, "merged batch vs requests alone");
    // Without per-row seeds the merged batch draws other streams (the test is not vacuous).
    let plain = p.generate_tokens(&merged, &mut |_, _| {}).unwrap().tokens;
    assert_ne!(plain, alone);
    // The seed count must match the labels.
    let bad = RunOptions {
        row_seeds: RowSeed::of_request(&a),
        ..RunOptions::default()
    };
    let err = p
        .generate_tokens_with(&merged, &bad, &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::InvalidRequest {
                field: "row_seeds",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_merged_batch_gives_each_request_its_own_tokens_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    merged_batch_equals_requests_alone(&load(&dir, BackendChoice::default()));
}

#[cfg(feature = "cuda-emu")]
#[test]
fn a_merged_batch_gives_each_request_its_own_tokens_on_the_cuda_emulator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compile_random(tmp.path());
    let emu = BackendChoice::CudaEmu(llamagen_runtime::CudaOptions::default());
    merged_batch_equals_requests_alone(&load(&dir, emu));
}
