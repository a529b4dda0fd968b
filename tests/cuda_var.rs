//! VAR on the CUDA backend end to end against the official fixtures (tests/golden/tiny-var, and
//! the variants of tiny-var-variants: shared AdaLN, other phi sharings, identity phi) and the
//! CPU backend: on the kernel emulator (feature `cuda-emu`, any machine) and on a GPU
//! (feature `cuda`; skipped with a message when there is none).
//!
//! Levels: greedy tokens identical to the official ones (cfg 1.5 and 4, the fused loop of
//! captured scales); per-token logits at the fp16 level (FP16_VS_FP32: cosine >= 0.999 against
//! the official logits, teacher-forced on the official tokens), because the device keeps GEMM
//! weights, GEMM inputs and the KV caches in fp16; images (the VQVAE decode of `f_hat` on the
//! device) within FP16_DEVICE_IMAGE of the CPU backend's and of the official decode; sampled
//! tokens (top-k / VAR's top-p) of the fused device loop identical to the CPU sampler's on the
//! device's logits (the samplers are bit-exact), also with per-row seeds of a merged batch; the
//! captured scales and per-scale launches give identical tokens.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod support;

use std::path::Path;

use llamagen_compiler::bundle::Precision;
use llamagen_runtime::compare::cosine;
use llamagen_runtime::{
    BackendKind, CudaOptions, GenerateRequest, Observer, Pipeline, RowSeed, RunOptions,
    SamplingOptions, VqConv,
};
use llamagen_test_support::{FP16_DEVICE_IMAGE, FP16_VS_FP32};
use support::backend::load_on;
use support::golden::{compile_tiny_var, read_f32, read_i64, tiny_var_dir};
use support::recorder::LogitsRecorder;
use support::var_greedy::{rows, TOKENS, VOCAB};

fn load(bundle: &Path, kind: BackendKind, cuda_graph: bool) -> Option<Pipeline> {
    let cuda = CudaOptions {
        graph: cuda_graph,
        ..CudaOptions::default()
    };
    load_on(bundle, kind, cuda)
}

fn bundle(precision: Precision) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    compile_tiny_var(&dir, precision);
    (tmp, dir)
}

fn request(cfg_scale: f32, sampling: SamplingOptions, seed: u64) -> GenerateRequest {
    GenerateRequest {
        labels: vec![1, 7],
        cfg_scale,
        cfg_interval: -1.0,
        sampling,
        seed,
    }
}

/// The golden requests: top-k 1 (top-p 0 = off).
fn greedy() -> SamplingOptions {
    SamplingOptions {
        temperature: 1.0,
        top_k: 1,
        top_p: 0.0,
    }
}

fn flat(tokens: &[Vec<u32>]) -> Vec<i64> {
    tokens.iter().flatten().map(|&t| t as i64).collect()
}

/// Progress-only observer: lets the backend run the whole loop on the device.
fn progress() -> impl FnMut(usize, usize) {
    |_, _| {}
}

/// The fused loop's greedy tokens equal the official `<dir>/greedy_<cfg>.tokens.npy`; twice:
/// the first run captures the scales, the second replays every one.
fn check_greedy_tokens(p: &Pipeline, kind: BackendKind, dir: &Path, cfg: &str, scale: f32) {
    let (_, want) = read_i64(&dir.join(format!("greedy_{cfg}.tokens.npy")));
    for run in 0..2 {
        let out = p
            .generate_tokens(&request(scale, greedy(), 0), &mut progress())
            .unwrap();
        let what = format!("{kind:?} greedy tokens {} {cfg}, run {run}", dir.display());
        assert_eq!(flat(&out.tokens), want, "{what}");
    }
}

/// Teacher-forced on the official tokens, the device's logits meet FP16_VS_FP32 against the
/// official `<dir>/greedy_<cfg>.logits.npy`.
fn check_logits(p: &Pipeline, kind: BackendKind, dir: &Path, cfg: &str, scale: f32) {
    let (_, tokens) = read_i64(&dir.join(format!("greedy_{cfg}.tokens.npy")));
    let (shape, want) = read_f32(&dir.join(format!("greedy_{cfg}.logits.npy")));
    assert_eq!(shape, vec![2, TOKENS, VOCAB]);
    let mut rec = LogitsRecorder::default();
    p.score_tokens(&request(scale, greedy(), 0), &rows(&tokens), &mut rec)
        .unwrap();
    let got: Vec<f32> = rec.0.into_iter().flatten().flatten().collect();
    let cos: Vec<f64> = got
        .chunks(VOCAB)
        .zip(want.chunks(VOCAB))
        .map(|(a, b)| cosine(a, b))
        .collect();
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let max_err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let what = format!("{kind:?} {} {cfg}", dir.display());
    eprintln!("{what}: logits cosine min {min:.7} mean {mean:.7}, max abs error {max_err:.3e}");
    FP16_VS_FP32.assert_meets(&format!("{what} logits"), min, mean, f64::INFINITY);
}

/// The device's images of the official `<dir>/greedy_<cfg>` tokens are within
/// FP16_DEVICE_IMAGE of the official ones (autoregressive_infer_cfg: (clamp(-1, 1) + 1) / 2).
fn check_images(p: &Pipeline, kind: BackendKind, dir: &Path, cfg: &str) {
    let (_, tokens) = read_i64(&dir.join(format!("greedy_{cfg}.tokens.npy")));
    let got: Vec<f32> = p.decode_images(&rows(&tokens)).unwrap().pixels.concat();
    let got: Vec<f32> = got
        .iter()
        .map(|&x| (x.clamp(-1.0, 1.0) + 1.0) * 0.5)
        .collect();
    let (_, want) = read_f32(&dir.join(format!("greedy_{cfg}.images.npy")));
    let (max, _) = image_error(&got, &want);
    let what = format!(
        "{kind:?} greedy {cfg} images of {} vs official",
        dir.display()
    );
    eprintln!("{what}: max abs error {max:.3e}");
    FP16_DEVICE_IMAGE.assert_close(&what, &got, &want);
}

fn greedy_matches_official(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    for (cfg, scale) in [("cfg1.5", 1.5), ("cfg4", 4.0)] {
        check_greedy_tokens(&p, kind, &tiny_var_dir(), cfg, scale);
    }
}

fn per_token_logits_match_official(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    for (cfg, scale) in [("cfg1.5", 1.5), ("cfg4", 4.0)] {
        check_logits(&p, kind, &tiny_var_dir(), cfg, scale);
    }
}

/// The official variants of tests/golden/tiny-var-variants (shared AdaLN, the other phi
/// sharings, identity phi): greedy tokens, logits and images at the levels above.
fn variants_match_official(kind: BackendKind) {
    for v in support::var_variants::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        v.compile(&dir, Precision::Fp32);
        let Some(p) = load(&dir, kind, true) else {
            return;
        };
        check_greedy_tokens(&p, kind, &v.dir(), "cfg1.5", 1.5);
        check_logits(&p, kind, &v.dir(), "cfg1.5", 1.5);
        check_images(&p, kind, &v.dir(), "cfg1.5");
    }
}

/// Max abs error and PSNR (peak-to-peak 2) of `got` against `want`.
fn image_error(got: &[f32], want: &[f32]) -> (f32, f64) {
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mse = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / got.len() as f64;
    (max, 10.0 * (4.0 / mse).log10())
}

fn images_match_cpu_and_official(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    let cpu = load(&dir, BackendKind::Cpu, true).unwrap();
    let golden = tiny_var_dir();
    check_official_decode(&p, &format!("{kind:?}"));
    // The greedy generation's images against the CPU backend's (raw decoder output) and the
    // official ones (autoregressive_infer_cfg: (clamp(-1, 1) + 1) / 2).
    let (_, tokens) = read_i64(&golden.join("greedy_cfg4.tokens.npy"));
    let got: Vec<f32> = p.decode_images(&rows(&tokens)).unwrap().pixels.concat();
    let want: Vec<f32> = cpu.decode_images(&rows(&tokens)).unwrap().pixels.concat();
    let (max, psnr) = image_error(&got, &want);
    eprintln!("{kind:?} greedy cfg4 images vs CPU: max abs error {max:.3e}, {psnr:.1} dB");
    FP16_DEVICE_IMAGE.assert_close(&format!("{kind:?} images vs CPU"), &got, &want);
    check_images(&p, kind, &golden, "cfg4");
}

/// The VQVAE decode with the 3x3 convolutions on the tensor cores (`VqConv::Mma`; the tiny
/// decoder's 32/64-channel convolutions take it, its 8-channel ones stay on cuBLAS) against the
/// official decode, as `images_match_cpu_and_official` checks the default.
fn tensor_core_convs_match_official(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let cuda = CudaOptions {
        vq_conv: Some(VqConv::Mma),
        ..CudaOptions::default()
    };
    let Some(p) = load_on(&dir, kind, cuda) else {
        return;
    };
    check_official_decode(&p, &format!("{kind:?} with mma convs"));
}

/// `p`'s VQVAE decode of the golden random multi-scale tokens against the official one
/// (`idxBl_to_img(last_one=True)`, clamped to [-1, 1]).
fn check_official_decode(p: &Pipeline, what: &str) {
    let golden = tiny_var_dir();
    let (_, tokens) = read_i64(&golden.join("vae_decode.tokens.npy"));
    let (_, want) = read_f32(&golden.join("vae_decode.images.npy"));
    let got: Vec<f32> = p.decode_images(&rows(&tokens)).unwrap().pixels.concat();
    let got: Vec<f32> = got.iter().map(|&x| x.clamp(-1.0, 1.0)).collect();
    let (max, psnr) = image_error(&got, &want);
    eprintln!("{what} VQVAE decode vs official: max abs error {max:.3e}, {psnr:.1} dB");
    FP16_DEVICE_IMAGE.assert_close(&format!("{what} VQVAE decode vs official"), &got, &want);
}

/// Sampling with top-k and VAR's top-p.
fn nucleus() -> SamplingOptions {
    SamplingOptions {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.8,
    }
}

fn sampled_tokens_match_cpu_sampler(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    for (scale, seed) in [(4.0, 1), (1.5, 7), (0.0, 3)] {
        let req = request(scale, nucleus(), seed);
        // The fused loop samples on the device; with an observer of the logits the host loop
        // samples on the CPU from the device's logits.
        let fused = p.generate_tokens(&req, &mut progress()).unwrap();
        let mut rec = LogitsRecorder::default();
        let host = p.generate_tokens(&req, &mut rec).unwrap();
        assert_eq!(
            fused.tokens, host.tokens,
            "{kind:?} cfg {scale} seed {seed}: device sampler vs CPU sampler"
        );
    }
}

/// A merged batch with per-row seeds (`RunOptions::row_seeds`): on the fused device loop each
/// row draws from its own stream exactly as the CPU sampler does on the device's logits (the
/// host loop), as its request alone does, and as the CPU backend does (top-k 4 keeps few CDF
/// boundaries for the fp16 logits to cross).
fn per_row_seeds_follow_the_cpu_streams(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    let cpu = load(&dir, BackendKind::Cpu, true).unwrap();
    let sampling = SamplingOptions {
        temperature: 1.0,
        top_k: 4,
        top_p: 0.9,
    };
    let a = request(4.0, sampling, 5);
    let b = GenerateRequest {
        labels: vec![3],
        seed: 9,
        ..a.clone()
    };
    let merged = GenerateRequest {
        labels: [a.labels.clone(), b.labels.clone()].concat(),
        ..a.clone()
    };
    let run = RunOptions {
        row_seeds: [RowSeed::of_request(&a), RowSeed::of_request(&b)].concat(),
        ..RunOptions::default()
    };
    let tokens = |p: &Pipeline, obs: &mut dyn Observer| {
        p.generate_tokens_with(&merged, &run, obs).unwrap().tokens
    };
    let fused = tokens(&p, &mut progress());
    let host = tokens(&p, &mut LogitsRecorder::default());
    assert_eq!(
        fused, host,
        "{kind:?}: device sampler vs CPU sampler, per-row seeds"
    );
    let alone: Vec<Vec<u32>> = [&a, &b]
        .iter()
        .flat_map(|r| p.generate_tokens(r, &mut progress()).unwrap().tokens)
        .collect();
    assert_eq!(fused, alone, "{kind:?}: merged batch vs requests alone");
    assert_eq!(
        fused,
        tokens(&cpu, &mut progress()),
        "{kind:?} vs the CPU backend, per-row seeds"
    );
    // Without per-row seeds row 2 draws (seed 5, stream 2): the test is not vacuous.
    let plain = p.generate_tokens(&merged, &mut progress()).unwrap().tokens;
    assert_ne!(plain[2], fused[2]);
}

fn graph_replay_equals_per_scale_launches(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp32);
    let (Some(graph), Some(eager)) = (load(&dir, kind, true), load(&dir, kind, false)) else {
        return;
    };
    for seed in [5, 6] {
        let req = request(4.0, nucleus(), seed);
        let a = graph.generate_tokens(&req, &mut progress()).unwrap();
        let b = eager.generate_tokens(&req, &mut progress()).unwrap();
        assert_eq!(
            a.tokens, b.tokens,
            "{kind:?} seed {seed}: replay vs launches"
        );
    }
}

fn fp16_bundle_runs(kind: BackendKind) {
    let (_tmp, dir) = bundle(Precision::Fp16);
    let Some(p) = load(&dir, kind, true) else {
        return;
    };
    let (_, want) = read_i64(&tiny_var_dir().join("greedy_cfg4.tokens.npy"));
    let out = p
        .generate_tokens(&request(4.0, greedy(), 0), &mut progress())
        .unwrap();
    assert_eq!(
        flat(&out.tokens),
        want,
        "{kind:?} fp16 bundle greedy tokens"
    );
}

backend_tests!(
    greedy_matches_official,
    per_token_logits_match_official,
    images_match_cpu_and_official,
    tensor_core_convs_match_official,
    sampled_tokens_match_cpu_sampler,
    graph_replay_equals_per_scale_launches,
    fp16_bundle_runs,
    variants_match_official,
    per_row_seeds_follow_the_cpu_streams,
);
