//! The device VQ decoder (`backend::cuda::vq::VqDecoder`) on the kernel emulator against the CPU
//! pipeline (ONNX Runtime running the bundle's `vq_decoder` graph) on the same bundle, and against
//! the official decoded images of tests/golden/tiny-c2i.
//!
//! Level: PSNR >= 40 dB (the `compare` tool's metric, images mapped from [-1, 1] to [0, 1]) and
//! `FP16_DEVICE_IMAGE`, a max abs error of at most 1e-2. The device stores activations and
//! weights in f16 (relative error 2^-11 = 4.9e-4 per rounding) with f32 accumulation, residual
//! stream and statistics; through the tiny decoders' ~20 convolutions that is ~1e-3 of the
//! activation scale, so 1e-2 absolute on outputs of about [-1, 1] (40 dB is an RMS error of 1e-2
//! on [0, 1]) leaves margin without hiding a wrong layer, which moves pixels by O(0.1..1).
#![cfg(feature = "cuda-emu")]

mod support;

use std::path::Path;

use llamagen_compiler::bundle::Manifest;
use llamagen_compiler::compile::{compile, resolve_configs, Weights};
use llamagen_compiler::config::VqConfig;
use llamagen_compiler::models::vq;
use llamagen_cuda::emu::EmuDevice;
use llamagen_cuda::vq::VqDecoder;
use llamagen_cuda::weights::BundleWeights;
use llamagen_runtime::compare::psnr_db;
use llamagen_runtime::{Pipeline, PipelineOptions};
use llamagen_test_support::torch::{write_torch_checkpoint, DType};
use llamagen_test_support::FP16_DEVICE_IMAGE;
use support::golden::{compile_tiny, read_f32, read_i64, tiny_dir, tiny_options};

const MIN_PSNR_DB: f64 = 40.0;

/// `[batch][3 * size * size]` images of the CPU pipeline for `tokens` (rows of the grid).
fn cpu_decode(bundle: &Path, tokens: &[i64], per: usize) -> Vec<Vec<f32>> {
    let p = Pipeline::load(bundle, &PipelineOptions::default()).expect("load bundle on CPU");
    let rows: Vec<Vec<u32>> = tokens
        .chunks(per)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    p.decode_images(&rows).expect("CPU decode").pixels
}

fn device_decoder(d: &EmuDevice, bundle: &Path, m: &Manifest) -> VqDecoder<EmuDevice> {
    let w = BundleWeights::open(
        bundle,
        m,
        &m.graphs[&llamagen_compiler::bundle::GraphRole::VqDecoder],
    )
    .expect("bundle weights");
    VqDecoder::load(d, &w, &m.vq).expect("load the VQ decoder on the emulator")
}

/// Splits `flat` f32 `[batch, 3, size, size]` into images.
fn images(flat: &[f32], batch: usize) -> Vec<Vec<f32>> {
    assert_eq!(flat.len() % batch, 0);
    flat.chunks(flat.len() / batch)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Asserts the level, returning (PSNR, max abs error).
fn assert_level(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, f32) {
    let psnr = psnr_db(got, want);
    let (got_flat, want_flat): (Vec<f32>, Vec<f32>) = (got.concat(), want.concat());
    let range = want_flat.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Measured first, asserted after the figures are printed (a failure names the worst pixel).
    let measured = FP16_DEVICE_IMAGE.check(what, &got_flat, &want_flat);
    let max_abs = match &measured {
        Ok(m) => format!("{:.3e}", m.max_abs),
        Err(_) => format!("over {}", FP16_DEVICE_IMAGE.name),
    };
    eprintln!("{what}: PSNR {psnr:.1} dB, max abs error {max_abs} (max |reference| {range:.3})");
    assert!(
        psnr >= MIN_PSNR_DB,
        "{what}: PSNR {psnr:.1} dB (min {MIN_PSNR_DB}), max abs error {max_abs}"
    );
    match measured {
        Ok(m) => (psnr, m.max_abs),
        Err(msg) => panic!("{msg}"),
    }
}

#[test]
fn golden_tiny_vq_matches_cpu_and_official_images() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let m = compile_tiny(&bundle);
    let per = m.generation.tokens_per_image;
    let (shape, tokens) = read_i64(&tiny_dir().join("greedy_cfg4.tokens.npy"));
    assert_eq!(shape, vec![2, per]);

    let d = EmuDevice::new().expect("emulator");
    let vq = device_decoder(&d, &bundle, &m);
    let got = images(&vq.decode(&d, &tokens, 2).expect("device decode"), 2);
    let cpu = cpu_decode(&bundle, &tokens, per);
    assert_level("tiny VQ, device vs CPU", &got, &cpu);

    let (shape, official) = read_f32(&tiny_dir().join("vq_decode.images.npy"));
    assert_eq!(shape, vec![2, 3, 8, 8]);
    assert_level("tiny VQ, device vs official", &got, &images(&official, 2));

    // Bad input is an error, not a panic or an out-of-bounds read.
    assert!(vq.decode(&d, &tokens[..per + 1], 2).is_err());
    assert!(vq.decode(&d, &tokens, 0).is_err());
    let mut bad = tokens.clone();
    bad[3] = m.vq.codebook_size as i64;
    assert!(vq.decode(&d, &bad, 2).is_err());
}

/// Writes an official-format VQ checkpoint for `c` with random values everywhere (biases and
/// GroupNorm affines included, which `Weights::Random` leaves at 0 and 1): conv weights uniform
/// with variance 1/fan_in, biases in [-0.3, 0.3], norm weights in [0.5, 1.5].
fn write_random_vq(path: &Path, c: &VqConfig) {
    let mut state = 0x5eed_u64;
    let mut uniform = move |lo: f32, hi: f32| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        lo + (hi - lo) * ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    let entries: Vec<_> = vq::required_keys(c)
        .into_iter()
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            let (lo, hi) = if shape.len() == 4 {
                let bound = (3.0 / (shape[1] * shape[2] * shape[3]) as f32).sqrt();
                (-bound, bound)
            } else if key.contains("norm") && key.ends_with(".weight") {
                (0.5, 1.5)
            } else if key.ends_with(".bias") {
                (-0.3, 0.3)
            } else {
                (-1.0, 1.0) // the codebook (normalised by the compiler)
            };
            let bytes = (0..n).flat_map(|_| uniform(lo, hi).to_le_bytes()).collect();
            (key, DType::F32, shape, bytes)
        })
        .collect();
    write_torch_checkpoint(path, Some("model"), &entries).expect("write vq.pt");
}

/// A decoder with a channel change (`nin_shortcut`), attention at the deepest level and an
/// upsample, every weight random: `ch 64, ch_mult [1, 2]` gives mid 128 channels, level 0 at
/// 128 (res, attn, res, attn, upsample), level 1 at 64 (res.0: 128 -> 64 through the shortcut).
/// At least 2 channels per GroupNorm group everywhere: with 1, a per-channel constant (a wrong
/// bias) would be normalised away and go unnoticed.
#[test]
fn shortcut_decoder_matches_cpu_for_several_batch_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = tmp.path().join("vq-shortcut.yaml");
    std::fs::write(
        &yaml,
        "name: vq-shortcut\nch: 64\nch_mult: [1, 2]\nnum_res_blocks: 1\nz_channels: 16\n\
         downsample: 2\n",
    )
    .unwrap();
    let bundle = tmp.path().join("bundle");
    let vq_pt = tmp.path().join("vq.pt");
    let mut opts = tiny_options(
        &bundle,
        Weights::Checkpoints {
            gpt: tiny_dir().join("gpt.pt"),
            vq: vq_pt.clone(),
        },
    );
    opts.vq_model = yaml.display().to_string();
    let (_, vq_config) = resolve_configs(&opts).expect("resolve the shortcut decoder");
    write_random_vq(&vq_pt, &vq_config);
    let m = compile(&opts, &mut |_| {}).expect("compile the shortcut decoder");
    let per = m.generation.tokens_per_image;
    let tokens: Vec<i64> = (0..3 * per as i64)
        .map(|i| (i * 7919 + 13) % m.vq.codebook_size as i64)
        .collect();

    let d = EmuDevice::new().expect("emulator");
    let vq = device_decoder(&d, &bundle, &m);
    let cpu = cpu_decode(&bundle, &tokens, per);
    let got = images(&vq.decode(&d, &tokens, 3).expect("decode 3"), 3);
    assert_level("shortcut VQ, batch 3", &got, &cpu);
    // A smaller batch reuses the buffers of the larger one.
    let one = images(
        &vq.decode(&d, &tokens[per..2 * per], 1).expect("decode 1"),
        1,
    );
    assert_level("shortcut VQ, batch 1", &one, &cpu[1..2]);
}

/// An fp16 bundle's weights load (f16 initializers, f16 conv biases) and decode like the CPU
/// running the same bundle.
#[test]
fn fp16_bundle_decodes_like_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let dir = tiny_dir();
    let mut opts = tiny_options(
        &bundle,
        Weights::Checkpoints {
            gpt: dir.join("gpt.pt"),
            vq: dir.join("vq.pt"),
        },
    );
    opts.precision = llamagen_compiler::bundle::Precision::Fp16;
    let m = compile(&opts, &mut |_| {}).expect("compile fp16");
    let per = m.generation.tokens_per_image;
    let (_, tokens) = read_i64(&dir.join("greedy_cfg1.tokens.npy"));
    let d = EmuDevice::new().expect("emulator");
    let got = images(
        &device_decoder(&d, &bundle, &m)
            .decode(&d, &tokens, 2)
            .expect("device decode"),
        2,
    );
    assert_level(
        "tiny VQ fp16 bundle",
        &got,
        &cpu_decode(&bundle, &tokens, per),
    );
}
