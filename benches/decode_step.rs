//! Criterion benches of the generation loop's hot path.
//!
//! - `sampler/top_k_2000_vocab_16384`: guards the per-token sampling cost (select, not sort).
//! - `decode_step/tiny_batch2`: guards the runtime's fixed per-step overhead (ONNX Runtime
//!   dispatch, borrowed cache tensors, cache write) on the golden tiny model.
//! - `decode_step/gpt_b_batch2` (only with LLAMAGEN_BENCH_FULL=1; compiles random GPT-B weights
//!   first, ~5 s and 0.6 GB): guards the memory-bound GPT-B step, cfg 4 (batch 2), at slot 128.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use llamagen_compiler::bundle::load_manifest;
use llamagen_compiler::compile::{compile, CompileOptions, Weights};
use llamagen_runtime::backend::{Backend, CpuOptions, OrtCpu, StepInput};
use llamagen_runtime::sampler::{sample_token, SamplerScratch, SamplingOptions};

fn sampler(c: &mut Criterion) {
    let vocab = 16384;
    let logits: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let opts = SamplingOptions::default();
    let mut scratch = SamplerScratch::new(vocab);
    c.bench_function("sampler/top_k_2000_vocab_16384", |b| {
        b.iter(|| sample_token(&logits, &opts, 0.37, &mut scratch))
    });
}

/// Times one step at `position` with batch 2 (one label with CFG).
fn bench_step(c: &mut Criterion, name: &str, bundle: &Path) {
    let m = load_manifest(bundle, false).expect("bundle manifest");
    let backend = OrtCpu::load(bundle, &m, &CpuOptions::default()).expect("backend");
    let g = m.gpt.as_ref().expect("a LlamaGen bundle");
    let mut cache = backend.new_state(2).expect("step state");
    let mut logits = Vec::new();
    let position = (g.max_len / 2).min(g.cls_token_num + g.block_size - 1);
    let ids = [1i64, 1];
    c.bench_function(name, |b| {
        b.iter(|| {
            backend
                .gpt_step(
                    StepInput {
                        ids: &ids,
                        position,
                    },
                    &mut cache,
                    &mut logits,
                    &mut |_, _| {},
                )
                .expect("step")
        })
    });
}

fn decode_steps(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let golden = llamagen_test_support::golden_dir().join("tiny-c2i");
    let fixture = |f: &str| llamagen_test_support::fixture(f).display().to_string();
    let tiny = tmp.path().join("tiny");
    let opts = CompileOptions {
        gpt_model: fixture("tiny-gpt.yaml"),
        vq_model: fixture("tiny-vq.yaml"),
        weights: Weights::Checkpoints {
            gpt: golden.join("gpt.pt"),
            vq: golden.join("vq.pt"),
        },
        image_size: 8,
        downsample_size: Some(2),
        codebook_size: 512,
        num_classes: 10,
        out: tiny.clone(),
        ..CompileOptions::default()
    };
    compile(&opts, &mut |_| {}).expect("compile tiny");
    bench_step(c, "decode_step/tiny_batch2", &tiny);

    if std::env::var_os("LLAMAGEN_BENCH_FULL").is_some() {
        let b = tmp.path().join("gpt-b");
        let opts = CompileOptions {
            weights: Weights::Random { seed: 0 },
            out: b.clone(),
            ..CompileOptions::default()
        };
        compile(&opts, &mut |_| {}).expect("compile GPT-B");
        bench_step(c, "decode_step/gpt_b_batch2", &b);
    }
}

criterion_group!(benches, sampler, decode_steps);
criterion_main!(benches);
