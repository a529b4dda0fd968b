//! Shape handling and parity at the official GPT-B / VQ-16 sizes (vocab 16384, 1000 classes,
//! 256 px = 256 image tokens), where no official outputs exist.
//!
//! Random weights are written in the official checkpoint format (`torch.save` zip wrapped in
//! `{"model": state_dict}`, every official key and shape, an extra `freqs_cis` buffer, VQ encoder
//! keys that must be ignored, a mix of f32 / bf16 / fp16 tensors), compiled with `compile`, and
//! run on ONNX Runtime's CPU provider. The expected values come from the independent naive f32
//! reference (tests/support/reference.rs, itself checked against the official goldens), which
//! reads the same `.pt` files through `load_weights` (bf16 / fp16 are widened exactly, so both
//! sides see identical weights).
//!
//! Checks, in one test because every stage shares the ~0.5 GB checkpoints and bundles:
//! 1. bundle.yaml at 256 px: configs and graph I/O names / dtypes / shapes;
//! 2. GPT-B, labels [207, 360], cfg 4, greedy (all 256 steps run): the CFG-combined logits of
//!    the prefill and the first 19 decode steps vs the reference fed the same tokens (level
//!    `FP32_LOGITS`), and the greedy tokens agree with the reference's argmax;
//! 3. VQ-16 at 256 px: decoding the generated tokens gives `[2][3 * 256 * 256]` finite pixels,
//!    and the second image matches the reference (`FP32_IMAGE`);
//! 4. a second bundle at 32 px (grid 2, block_size 4) from the same checkpoints: every GPT step
//!    (the grid's second row exercises the row half of the 2D rotary embedding) vs the reference
//!    (`FP32_LOGITS`), and VQ-16 decoding of 2x2 token grids vs the reference (`FP32_IMAGE`).

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use half::{bf16, f16};
use llamagen_compiler::bundle::{IoSpec, Manifest};
use llamagen_compiler::checkpoint::Checkpoint;
use llamagen_compiler::compile::{compile, resolve_configs, CompileOptions, Weights};
use llamagen_compiler::ir::{Dim, ElemType};
use llamagen_compiler::models::{gpt, vq};
use llamagen_runtime::{GenerateRequest, Observer, Pipeline, PipelineOptions, SamplingOptions};
use llamagen_test_support::torch::{write_torch_checkpoint, DType};
use llamagen_test_support::{FP32_IMAGE, FP32_LOGITS};
use support::reference::{
    argmax, load_weights, rope_2d_table, GptArch, GptRef, VqRef, Weights as RefWeights,
};

const VOCAB: usize = 16384;
const NUM_CLASSES: usize = 1000;
const LABELS: [usize; 2] = [207, 360];
const CFG_SCALE: f32 = 4.0;
const VQ_CODEBOOK: &str = "quantize.embedding.weight";
/// Steps compared with the reference at 256 px: the prefill and 19 decode steps, so the fed image
/// tokens 16..19 sit on the second row of the 16x16 grid (the row half of the 2D rotary table).
const COMPARED_STEPS: usize = 20;

// ------------------------------------------------------------------------------------------------
// Random weights in the official format
// ------------------------------------------------------------------------------------------------

/// splitmix64: a cheap, seedable generator.
struct Rng(u64);

impl Rng {
    /// One stream per state-dict key, so a tensor's values do not depend on the key order.
    fn for_key(seed: u64, key: &str) -> Self {
        let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// About N(0, 1): the Irwin-Hall sum of four 16-bit uniforms, centred and scaled to unit
    /// variance (bounded by +-3.46, which is all random test weights need).
    fn normal(&mut self) -> f32 {
        let r = self.next_u64();
        let s: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xffff) as u32).sum();
        (s as f32 / 65536.0 - 2.0) * 3f32.sqrt()
    }
}

/// How the values of one tensor are drawn: `mean + std * N(0, 1)`.
#[derive(Clone, Copy)]
struct Init {
    mean: f32,
    std: f32,
}

/// One checkpoint entry as `write_torch_checkpoint` takes it.
type Entry = (String, DType, Vec<usize>, Vec<u8>);

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("no encoder for {other:?}"),
    }
}

fn random_entry(seed: u64, key: &str, shape: &[usize], init: Init, dtype: DType) -> Entry {
    let n: usize = shape.iter().product();
    let mut rng = Rng::for_key(seed, key);
    let values: Vec<f32> = (0..n)
        .map(|_| init.mean + init.std * rng.normal())
        .collect();
    (
        key.to_string(),
        dtype,
        shape.to_vec(),
        encode(&values, dtype),
    )
}

/// Official GPT init scale (std 0.02) for linear and embedding weights; RMSNorm weights near 1
/// (perturbed, so a graph that ignored them would fail parity).
fn gpt_init(key: &str) -> Init {
    if key.ends_with("norm.weight") {
        Init {
            mean: 1.0,
            std: 0.05,
        }
    } else {
        Init {
            mean: 0.0,
            std: 0.02,
        }
    }
}

/// Storage type per GPT key: layers 0..6 and the class table in bf16, the image-token
/// embeddings in fp16, the rest in f32 (official checkpoints come in all three).
fn gpt_dtype(key: &str) -> DType {
    if key == "tok_embeddings.weight" {
        return DType::F16;
    }
    if key.starts_with("cls_embedding.") {
        return DType::BF16;
    }
    let layer = key
        .strip_prefix("layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i) if i < 6 => DType::BF16,
        _ => DType::F32,
    }
}

/// Conv weights `[out, in, kh, kw]` with std 1/sqrt(in * kh * kw) (keeps activations O(1)),
/// GroupNorm affines near (1, 0), conv biases small; the codebook ~N(0, 1) (it is L2-normalised).
fn vq_init(key: &str, shape: &[usize]) -> Init {
    if key == VQ_CODEBOOK {
        return Init {
            mean: 0.0,
            std: 1.0,
        };
    }
    if shape.len() == 4 {
        let fan_in = shape[1] * shape[2] * shape[3];
        return Init {
            mean: 0.0,
            std: 1.0 / (fan_in as f32).sqrt(),
        };
    }
    let is_norm = key.contains(".norm");
    match (is_norm, key.ends_with(".weight")) {
        (true, true) => Init {
            mean: 1.0,
            std: 0.05,
        },
        (true, false) => Init {
            mean: 0.0,
            std: 0.02,
        },
        _ => Init {
            mean: 0.0,
            std: 0.01,
        },
    }
}

/// Storage type per VQ key: the mid blocks in bf16, the deepest level in fp16, the rest f32.
fn vq_dtype(key: &str) -> DType {
    if key.starts_with("decoder.mid.") {
        DType::BF16
    } else if key.starts_with("decoder.conv_blocks.0.") {
        DType::F16
    } else {
        DType::F32
    }
}

fn options(out: &Path, gpt_pt: &Path, vq_pt: &Path, image_size: usize) -> CompileOptions {
    CompileOptions {
        gpt_model: "GPT-B".into(),
        vq_model: "VQ-16".into(),
        weights: Weights::Checkpoints {
            gpt: gpt_pt.to_path_buf(),
            vq: vq_pt.to_path_buf(),
        },
        image_size,
        downsample_size: None,
        codebook_size: VOCAB,
        codebook_embed_dim: 8,
        num_classes: NUM_CLASSES,
        out: out.to_path_buf(),
        ..CompileOptions::default()
    }
}

/// Writes `gpt.pt` and `vq.pt` (official keys at 256 px, `{"model": ...}` wrapper) into `dir`.
/// Returns their paths and the number of parameters that must reach each bundle.
fn write_checkpoints(dir: &Path) -> (PathBuf, PathBuf, usize, usize) {
    let probe = options(dir, dir, dir, 256);
    let (gc, vqc) = resolve_configs(&probe).expect("resolve GPT-B / VQ-16 configs");

    let gpt_keys = gpt::required_keys(&gc);
    let gpt_params: usize = gpt_keys
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut entries: Vec<Entry> = gpt_keys
        .iter()
        .map(|(k, s)| random_entry(1, k, s, gpt_init(k), gpt_dtype(k)))
        .collect();
    // Official checkpoints carry the rotary table as an extra buffer: [257, 32, 2] here.
    let grid = vqc.grid;
    let half = gc.head_dim / 2;
    let table = rope_2d_table(grid, gc.head_dim, 10000.0, gc.cls_token_num);
    entries.push((
        "freqs_cis".into(),
        DType::F32,
        vec![gc.cls_token_num + grid * grid, half, 2],
        encode(&table, DType::F32),
    ));
    let gpt_pt = dir.join("gpt.pt");
    write_torch_checkpoint(&gpt_pt, Some("model"), &entries).expect("write gpt.pt");
    drop(entries);

    let vq_keys = vq::required_keys(&vqc);
    let vq_params: usize = vq_keys
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut entries: Vec<Entry> = vq_keys
        .iter()
        .map(|(k, s)| random_entry(2, k, s, vq_init(k, s), vq_dtype(k)))
        .collect();
    // Encoder-side keys a real VQ checkpoint holds; the decoder graph must ignore them.
    let ch = vqc.ch;
    let extra: [(&str, Vec<usize>); 5] = [
        ("encoder.conv_in.weight", vec![ch, 3, 3, 3]),
        ("encoder.conv_in.bias", vec![ch]),
        (
            "quant_conv.weight",
            vec![vqc.codebook_embed_dim, vqc.z_channels, 1, 1],
        ),
        ("quant_conv.bias", vec![vqc.codebook_embed_dim]),
        ("quantize.codebook_used", vec![65536]),
    ];
    for (k, s) in extra {
        entries.push(random_entry(2, k, &s, vq_init(k, &s), DType::F32));
    }
    let vq_pt = dir.join("vq.pt");
    write_torch_checkpoint(&vq_pt, Some("model"), &entries).expect("write vq.pt");
    (gpt_pt, vq_pt, gpt_params, vq_params)
}

// ------------------------------------------------------------------------------------------------
// Manifest checks
// ------------------------------------------------------------------------------------------------

fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

fn fixed(n: usize) -> Dim {
    Dim::Fixed(n)
}

fn io<'m>(specs: &'m [IoSpec], name: &str, what: &str) -> &'m IoSpec {
    specs
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{what}: no `{name}` in {:?}", names(specs)))
}

fn names(specs: &[IoSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

fn check_io(specs: &[IoSpec], name: &str, dtype: ElemType, shape: &[Dim], what: &str) {
    let s = io(specs, name, what);
    assert_eq!(s.dtype, dtype, "{what}: dtype of `{name}`");
    assert_eq!(s.shape, shape, "{what}: shape of `{name}`");
}

/// Configs and graph signatures of a GPT-B / VQ-16 bundle at `image_size`.
fn check_manifest(m: &Manifest, image_size: usize, gpt_params: usize, vq_params: usize) {
    let grid = image_size / 16;
    let tokens = grid * grid;
    let max_len = (1 + tokens).div_ceil(8) * 8;
    let what = format!("bundle.yaml at {image_size} px");

    let g = m.gpt.as_ref().expect("a LlamaGen bundle");
    assert_eq!(
        (g.n_layer, g.n_head, g.n_kv_head, g.dim, g.head_dim),
        (12, 12, 12, 768, 64),
        "{what}: GPT-B arch"
    );
    assert_eq!(
        g.ffn_hidden, 2048,
        "{what}: find_multiple(int(2*4*768/3), 256)"
    );
    assert_eq!(
        (g.vocab_size, g.num_classes, g.class_rows),
        (VOCAB, NUM_CLASSES, 1001)
    );
    assert_eq!(
        (g.block_size, g.max_len, g.cls_token_num),
        (tokens, max_len, 1)
    );
    assert_eq!(m.vq.grid, grid, "{what}: VQ grid");
    assert_eq!(m.vq.image_size, image_size);
    assert_eq!(m.generation.tokens_per_image, tokens);
    assert_eq!(m.generation.class_token_offset, VOCAB);
    assert_eq!(m.generation.null_class, NUM_CLASSES);
    assert_eq!(m.generation.image_size, image_size);

    let step = m
        .graphs
        .get(&llamagen_compiler::bundle::GraphRole::GptStep)
        .unwrap_or_else(|| panic!("{what}: no gpt_step graph in {:?}", m.graphs.keys()));
    let w = format!("{what} gpt_step");
    assert_eq!(
        step.inputs.len(),
        2 + 2 * 12,
        "{w}: inputs {:?}",
        names(&step.inputs)
    );
    assert_eq!(
        step.outputs.len(),
        1 + 2 * 12,
        "{w}: outputs {:?}",
        names(&step.outputs)
    );
    // The token axis: symbolic `seq`, or the static 1 of a one-token-per-call step graph (c2i
    // only ever feeds one token per row); the cache slices follow it.
    let seq = io(&step.inputs, "input_ids", &w)
        .shape
        .get(1)
        .cloned()
        .unwrap_or_else(|| panic!("{w}: input_ids is not 2-D"));
    assert!(
        seq == sym("seq") || seq == fixed(1),
        "{w}: token axis of input_ids is {seq:?}"
    );
    check_io(
        &step.inputs,
        "input_ids",
        ElemType::I64,
        &[sym("batch"), seq.clone()],
        &w,
    );
    check_io(&step.inputs, "position", ElemType::I64, &[fixed(1)], &w);
    let cache = [sym("batch"), fixed(12), fixed(max_len), fixed(64)];
    let slice = [sym("batch"), fixed(12), seq, fixed(64)];
    for i in 0..12 {
        check_io(
            &step.inputs,
            &format!("past_key.{i}"),
            ElemType::F32,
            &cache,
            &w,
        );
        check_io(
            &step.inputs,
            &format!("past_value.{i}"),
            ElemType::F32,
            &cache,
            &w,
        );
        check_io(
            &step.outputs,
            &format!("present_key.{i}"),
            ElemType::F32,
            &slice,
            &w,
        );
        check_io(
            &step.outputs,
            &format!("present_value.{i}"),
            ElemType::F32,
            &slice,
            &w,
        );
    }
    check_io(
        &step.outputs,
        "logits",
        ElemType::F32,
        &[sym("batch"), fixed(VOCAB)],
        &w,
    );

    let dec = m
        .graphs
        .get(&llamagen_compiler::bundle::GraphRole::VqDecoder)
        .unwrap_or_else(|| panic!("{what}: no vq_decoder graph in {:?}", m.graphs.keys()));
    let w = format!("{what} vq_decoder");
    assert_eq!(names(&dec.inputs), ["tokens"], "{w}");
    assert_eq!(names(&dec.outputs), ["image"], "{w}");
    check_io(
        &dec.inputs,
        "tokens",
        ElemType::I64,
        &[sym("batch"), fixed(tokens)],
        &w,
    );
    let image = [sym("batch"), fixed(3), fixed(image_size), fixed(image_size)];
    check_io(&dec.outputs, "image", ElemType::F32, &image, &w);

    // Every checkpoint parameter reached the bundle as f32 (bf16 / fp16 widened, nothing dropped;
    // the extra keys were not copied in wholesale). Initializers under 1 KiB stay inline in the
    // .onnx, so the two files are counted together.
    for (graph, params) in [(step, gpt_params), (dec, vq_params)] {
        let size = |file: &str| {
            m.files
                .get(file)
                .unwrap_or_else(|| panic!("{what}: {file} not in files {:?}", m.files.keys()))
                .bytes as usize
        };
        let bytes = size(&graph.weights) + size(&graph.file);
        let want = 4 * params;
        assert!(
            bytes >= want && bytes < want + want / 50,
            "{what}: {} + {} hold {bytes} bytes for {params} f32 parameters",
            graph.file,
            graph.weights
        );
    }
}

// ------------------------------------------------------------------------------------------------
// GPT parity
// ------------------------------------------------------------------------------------------------

/// Records the logits each token was sampled from, `[row][step][vocab]`, for the first steps.
struct LogitsRecorder {
    steps: usize,
    logits: Vec<Vec<Vec<f32>>>,
}

impl Observer for LogitsRecorder {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        if self.logits.len() <= row {
            self.logits.resize(row + 1, Vec::new());
        }
        if step < self.steps {
            assert_eq!(self.logits[row].len(), step, "steps arrive in order");
            self.logits[row].push(logits.to_vec());
        }
    }
}

fn greedy_request() -> GenerateRequest {
    GenerateRequest {
        labels: LABELS.to_vec(),
        cfg_scale: CFG_SCALE,
        cfg_interval: -1.0,
        sampling: SamplingOptions::greedy(),
        seed: 0,
    }
}

/// Worst error over the compared steps.
struct Parity {
    max_abs: f32,
    min_bound: f32,
}

/// Feeds the pipeline's tokens to the reference (batch `[cond; uncond]`) and compares the
/// CFG-combined logits of the first `steps` steps; the greedy tokens must be the reference's argmax.
fn gpt_parity(
    weights: &RefWeights,
    block_size: usize,
    tokens: &[Vec<u32>],
    recorded: &[Vec<Vec<f32>>],
    steps: usize,
    what: &str,
) -> Parity {
    let n = LABELS.len();
    let arch = GptArch::gpt_b(VOCAB, block_size);
    let mut model = GptRef::from_arch(weights, &arch, 2 * n);
    let mut parity = Parity {
        max_abs: 0.0,
        min_bound: f32::INFINITY,
    };
    for step in 0..steps {
        let raw = if step == 0 {
            let mut cond: Vec<usize> = LABELS.to_vec();
            cond.extend(std::iter::repeat_n(NUM_CLASSES, n));
            model.prefill(&cond)
        } else {
            let mut fed: Vec<usize> = tokens.iter().map(|r| r[step - 1] as usize).collect();
            fed.extend_from_within(..);
            model.decode(&fed, step - 1)
        };
        for r in 0..n {
            let want: Vec<f32> = raw[r]
                .iter()
                .zip(&raw[n + r])
                .map(|(&c, &u)| u + (c - u) * CFG_SCALE)
                .collect();
            let got = &recorded[r][step];
            let m =
                FP32_LOGITS.assert_close(&format!("{what} logits row {r} step {step}"), got, &want);
            parity.max_abs = parity.max_abs.max(m.max_abs);
            parity.min_bound = parity.min_bound.min(m.bound);
            let token = tokens[r][step] as usize;
            assert_eq!(
                argmax(got),
                token,
                "{what}: greedy token is not the argmax of its logits"
            );
            let best = argmax(&want);
            assert_eq!(
                token, best,
                "{what}: row {r} step {step}: greedy token {token} (reference logit {}) differs \
                 from the reference's argmax {best} (logit {})",
                want[token], want[best]
            );
        }
    }
    parity
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[test]
fn gpt_b_vq16_official_sizes_shapes_and_parity() {
    let total = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");

    // --- official-format checkpoints ---
    let t = Instant::now();
    let (gpt_pt, vq_pt, gpt_params, vq_params) = write_checkpoints(tmp.path());
    let ckpt = Checkpoint::open(&gpt_pt).expect("reopen gpt.pt");
    assert_eq!(
        ckpt.get("layers.0.attention.wqkv.weight")
            .unwrap()
            .dtype()
            .name(),
        "BF16"
    );
    assert_eq!(
        ckpt.get("layers.11.attention.wqkv.weight")
            .unwrap()
            .dtype()
            .name(),
        "F32"
    );
    assert_eq!(
        ckpt.get("tok_embeddings.weight").unwrap().dtype().name(),
        "F16"
    );
    assert_eq!(ckpt.get("freqs_cis").unwrap().shape(), [257, 32, 2]);
    drop(ckpt);
    eprintln!(
        "checkpoints: GPT-B {:.1}M params, VQ-16 decoder {:.1}M params, written in {:.1} s",
        gpt_params as f64 / 1e6,
        vq_params as f64 / 1e6,
        secs(t)
    );

    // --- 1. bundle at 256 px ---
    let t = Instant::now();
    let bundle = tmp.path().join("bundle-256");
    let manifest = compile(&options(&bundle, &gpt_pt, &vq_pt, 256), &mut |_| {})
        .expect("compile GPT-B / VQ-16 at 256 px");
    check_manifest(&manifest, 256, gpt_params, vq_params);
    let p = Pipeline::load(&bundle, &PipelineOptions::default()).expect("load the 256 px bundle");
    assert_eq!(
        p.manifest(),
        &manifest,
        "bundle.yaml on disk == compile's manifest"
    );
    eprintln!("256 px bundle: compiled and loaded in {:.1} s", secs(t));

    // --- 2. GPT-B generation vs the reference ---
    let t = Instant::now();
    let mut rec = LogitsRecorder {
        steps: COMPARED_STEPS,
        logits: Vec::new(),
    };
    let out = p
        .generate_tokens(&greedy_request(), &mut rec)
        .expect("generate");
    assert_eq!(out.tokens.len(), 2);
    assert!(out.tokens.iter().all(|r| r.len() == 256));
    assert!(out.tokens.iter().flatten().all(|&t| (t as usize) < VOCAB));
    eprintln!(
        "256 px: 256 greedy steps (batch 4) in {:.1} s (prefill {:.0} ms, mean decode step {:.1} ms)",
        secs(t),
        out.prefill_ms,
        out.decode_step_ms.iter().sum::<f64>() / out.decode_step_ms.len() as f64
    );

    let t = Instant::now();
    let gpt_w = load_weights(&gpt_pt);
    assert!(
        gpt_w.contains_key("freqs_cis"),
        "load_weights keeps every float tensor"
    );
    let par = gpt_parity(
        &gpt_w,
        256,
        &out.tokens,
        &rec.logits,
        COMPARED_STEPS,
        "256 px",
    );
    eprintln!(
        "256 px GPT-B logits (prefill + {} decode steps, cfg {CFG_SCALE}): max abs error {:.3e} \
         (smallest bound {:.3e}, level {}); greedy tokens agree; reference took {:.1} s",
        COMPARED_STEPS - 1,
        par.max_abs,
        par.min_bound,
        FP32_LOGITS.name,
        secs(t)
    );

    // --- 3. VQ-16 at 256 px on the generated tokens ---
    let t = Instant::now();
    let images = p.decode_images(&out.tokens).expect("decode 256 px images");
    assert_eq!(images.size, 256);
    assert_eq!(images.pixels.len(), 2);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (i, img) in images.pixels.iter().enumerate() {
        assert_eq!(img.len(), 3 * 256 * 256, "image {i}");
        for &v in img {
            assert!(v.is_finite(), "image {i}: non-finite pixel {v}");
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    eprintln!(
        "256 px VQ-16 decode of 2 images: {:.1} s (graph {:.0} ms), values in [{lo:.3}, {hi:.3}]",
        secs(t),
        images.vq_ms
    );
    // One full-size image against the reference (~10-15 s of naive convolutions): the real
    // 16x16 attention, all five levels and every upsample at their official shapes.
    let t = Instant::now();
    let vq_w = load_weights(&vq_pt);
    let vq_ref = VqRef::vq16();
    let toks: Vec<usize> = out.tokens[1].iter().map(|&t| t as usize).collect();
    let want = vq_ref.decode(&vq_w, &toks, 16);
    let m = FP32_IMAGE.assert_close("256 px VQ-16 image 1", &images.pixels[1], &want);
    eprintln!(
        "256 px VQ-16 image 1 vs the reference: max abs error {:.3e} (level {}); reference took \
         {:.1} s",
        m.max_abs,
        FP32_IMAGE.name,
        secs(t)
    );
    drop(p);

    // --- 4. bundle at 32 px (grid 2) from the same checkpoints ---
    let t = Instant::now();
    let small = tmp.path().join("bundle-32");
    let manifest = compile(&options(&small, &gpt_pt, &vq_pt, 32), &mut |_| {})
        .expect("compile GPT-B / VQ-16 at 32 px");
    check_manifest(&manifest, 32, gpt_params, vq_params);
    let p = Pipeline::load(&small, &PipelineOptions::default()).expect("load the 32 px bundle");
    eprintln!("32 px bundle: compiled and loaded in {:.1} s", secs(t));

    // Every step of a 2x2 grid: tokens 2 and 3 sit on the grid's second row.
    let t = Instant::now();
    let mut rec = LogitsRecorder {
        steps: 4,
        logits: Vec::new(),
    };
    let out = p
        .generate_tokens(&greedy_request(), &mut rec)
        .expect("generate at 32 px");
    assert!(out.tokens.iter().all(|r| r.len() == 4));
    let par = gpt_parity(&gpt_w, 4, &out.tokens, &rec.logits, 4, "32 px");
    eprintln!(
        "32 px GPT-B logits (all 4 steps of a 2x2 grid): max abs error {:.3e} (smallest bound \
         {:.3e}); greedy tokens agree; {:.1} s",
        par.max_abs,
        par.min_bound,
        secs(t)
    );
    drop(gpt_w);

    let t = Instant::now();
    let rows: Vec<Vec<u32>> = vec![out.tokens[0].clone(), vec![0, 16383, 4242, 9999]];
    let images = p.decode_images(&rows).expect("decode 32 px images");
    assert_eq!(images.size, 32);
    let mut worst = 0f32;
    for (i, row) in rows.iter().enumerate() {
        let toks: Vec<usize> = row.iter().map(|&t| t as usize).collect();
        let want = vq_ref.decode(&vq_w, &toks, 2);
        assert_eq!(want.len(), 3 * 32 * 32);
        let m =
            FP32_IMAGE.assert_close(&format!("32 px VQ-16 image {i}"), &images.pixels[i], &want);
        worst = worst.max(m.max_abs);
    }
    eprintln!(
        "32 px VQ-16 images (2x2 tokens, 2 images): max abs error {worst:.3e} (level {}); {:.1} s",
        FP32_IMAGE.name,
        secs(t)
    );
    eprintln!("total {:.1} s", secs(total));
}
