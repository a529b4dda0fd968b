//! Tests of the VQ decoder graph: structure for the official sizes, key/shape errors, and the
//! golden tiny VQ checkpoint (written to ONNX; numerics are compared in onnxruntime elsewhere).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::checkpoint::CheckpointError;
use crate::config::vq_arch;
use crate::ir::ValueOrigin;
use crate::models::precision::{Emitter, OpPrecision};
use crate::models::{RandomWeights, WeightSource};
use llamagen_test_support::Tolerance;

fn official(name: &str, image_size: usize) -> VqConfig {
    VqConfig::new(&vq_arch(name).unwrap(), 16384, 8, image_size).unwrap()
}

/// The golden tiny VQ of tests/golden/tiny-c2i (README.json): codebook 512x8, ch 128,
/// ch_mult [1, 1], z_channels 32, 2 res blocks, downsample 2, 4x4 tokens -> 8x8 images.
fn tiny() -> VqConfig {
    VqConfig {
        name: "tiny-vq".into(),
        codebook_size: 512,
        codebook_embed_dim: 8,
        ch: 128,
        ch_mult: vec![1, 1],
        num_res_blocks: 2,
        z_channels: 32,
        downsample: 2,
        grid: 4,
        image_size: 8,
        post_quant_kernel: 1,
    }
}

fn op_count(g: &Graph, op_type: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.op_type() == op_type).count()
}

/// An fp32 emitter over `source`.
fn fp32(source: Arc<dyn WeightSource>) -> Emitter {
    Emitter::new(OpPrecision::Fp32, source)
}

#[test]
fn official_sizes_build_with_random_weights() {
    for (name, size, levels) in [("VQ-16", 256, 5), ("VQ-8", 256, 4), ("VQ-16", 384, 5)] {
        let c = official(name, size);
        let g = build_decoder_graph(&c, &mut fp32(Arc::new(RandomWeights::new(0)))).unwrap();
        let (ins, outs) = (g.signature(false), g.signature(true));
        assert_eq!(ins.len(), 1);
        assert_eq!(ins[0].0, io_names::VQ_TOKENS);
        assert_eq!(ins[0].1.dtype, ElemType::I64);
        assert_eq!(
            ins[0].1.shape,
            vec![Dim::sym("batch"), Dim::Fixed(c.grid * c.grid)]
        );
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].0, io_names::VQ_IMAGE);
        let s = Dim::Fixed(size);
        assert_eq!(
            outs[0].1.shape,
            vec![Dim::sym("batch"), Dim::Fixed(3), s.clone(), s]
        );

        // One initializer per required key (the codebook renamed), plus 3 shared constants;
        // every weight is lazy (nothing of the checkpoint is held in the graph).
        let keys = required_keys(&c);
        let lazy = g
            .initializers
            .iter()
            .filter(|i| matches!(i.data, crate::ir::InitData::Lazy(_)))
            .count();
        assert_eq!(lazy, keys.len(), "{name}");
        let by_name: HashMap<_, _> = g
            .initializers
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        assert_eq!(
            by_name["decoder.conv_blocks.0.attn.0.q.weight"].dims,
            vec![512, 512, 1, 1]
        );
        assert_eq!(by_name["decoder.mid.0.norm1.weight"].dims, vec![512, 1, 1]);
        assert_eq!(
            by_name["quantize.embedding.normalized"].dims,
            vec![16384, 8]
        );

        // Attention blocks: mid.1 plus num_res_blocks + 1 in conv_blocks.0.
        assert_eq!(op_count(&g, "Softmax"), 4, "{name}");
        assert_eq!(op_count(&g, "Resize"), levels - 1, "{name}");
        // conv_in + post_quant + conv_out + q/k/v/proj per attn + 2 per res + shortcuts + ups.
        let res = 2 + levels * 3;
        assert_eq!(
            op_count(&g, "Conv"),
            3 + 4 * 4 + 2 * res + 2 + (levels - 1),
            "{name}"
        );
        // GroupNorms: 2 per res, 1 per attn, norm_out.
        assert_eq!(
            op_count(&g, "InstanceNormalization"),
            2 * res + 4 + 1,
            "{name}"
        );
        // Deterministic names in the official key scheme.
        for n in [
            "decoder.conv_blocks.1.res.2.conv1",
            "decoder.conv_blocks.0.attn.2.probs",
            "decoder.conv_blocks.2.upsample.resize",
            "decoder.mid.1.residual",
            "decoder.conv_out",
        ] {
            assert!(g.nodes.iter().any(|x| x.name == n), "{name}: no node {n}");
        }
    }
}

#[test]
fn graph_is_deterministic_and_well_formed() {
    let c = official("VQ-8", 256);
    let a = build_decoder_graph(&c, &mut fp32(Arc::new(RandomWeights::new(1)))).unwrap();
    let b = build_decoder_graph(&c, &mut fp32(Arc::new(RandomWeights::new(2)))).unwrap();
    let names = |g: &Graph| g.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    // Every node input is defined before use (graph inputs, initializers, earlier nodes).
    let mut defined = vec![false; a.values.len()];
    for (i, v) in a.values.iter().enumerate() {
        if !matches!(v.origin, ValueOrigin::Node(_)) {
            defined[i] = true;
        }
    }
    for n in &a.nodes {
        for id in &n.inputs {
            assert!(
                defined[id.0 as usize],
                "{}: input {} used before defined",
                n.name,
                a.value(*id).name
            );
        }
        for id in &n.outputs {
            defined[id.0 as usize] = true;
        }
    }
}

#[test]
fn codebook_rows_are_l2_normalised_like_f_normalize() {
    let mut t = vec![3.0, 4.0, 0.0, 0.0, 1e-20, 0.0];
    l2_normalize_rows(&mut t, 2);
    assert_eq!(&t[..2], &[0.6, 0.8]);
    assert_eq!(&t[2..4], &[0.0, 0.0]); // zero row stays zero (eps, no NaN)
                                       // Tiny row divided by eps 1e-12, as torch: 1e-20 / 1e-12 in f32, within 1e-12 of 1e-8.
    Tolerance::abs("f32 quotient (1e-12 abs)", 1e-12).assert_scalar("tiny row", t[4], 1e-8);
}

#[test]
fn bad_configs_are_named() {
    let mut c = tiny();
    c.image_size = 16;
    let e = build_decoder_graph(&c, &mut fp32(Arc::new(RandomWeights::new(0))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiny-vq") && e.contains("image_size 16"), "{e}");
    let mut c = tiny();
    c.ch = 40;
    let e = build_decoder_graph(&c, &mut fp32(Arc::new(RandomWeights::new(0))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("32 GroupNorm groups"), "{e}");
}

/// A source with a fixed table of shapes: the error paths of a real checkpoint, without a file.
struct FakeSource {
    shapes: HashMap<String, Vec<usize>>,
}

impl FakeSource {
    fn path() -> PathBuf {
        PathBuf::from("fake-vq.pt")
    }
}

impl WeightSource for FakeSource {
    fn check(&self, key: &str, shape: &[usize]) -> Result<(), Error> {
        match self.shapes.get(key) {
            None => Err(CheckpointError::MissingKey {
                path: Self::path(),
                key: key.to_string(),
            }
            .into()),
            Some(got) if got != shape => Err(CheckpointError::ShapeMismatch {
                path: Self::path(),
                key: key.to_string(),
                expected: shape.to_vec(),
                got: got.clone(),
            }
            .into()),
            Some(_) => Ok(()),
        }
    }

    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        self.check(key, shape)?;
        Ok(vec![0.5; shape.iter().product()])
    }
}

#[test]
fn missing_and_mis_shaped_keys_are_named_before_building() {
    let c = tiny();
    let full: HashMap<_, _> = required_keys(&c).into_iter().collect();
    // The complete table (plus encoder keys, which are ignored) builds.
    let mut shapes = full.clone();
    shapes.insert("encoder.conv_in.weight".into(), vec![128, 3, 3, 3]);
    build_decoder_graph(&c, &mut fp32(Arc::new(FakeSource { shapes }))).unwrap();

    let mut shapes = full.clone();
    shapes.remove("decoder.conv_blocks.0.attn.1.k.bias");
    let e = build_decoder_graph(&c, &mut fp32(Arc::new(FakeSource { shapes }))).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint(CheckpointError::MissingKey { key, .. }) if key == "decoder.conv_blocks.0.attn.1.k.bias"),
        "{e}"
    );
    assert!(e.to_string().contains("fake-vq.pt"), "{e}");

    let mut shapes = full;
    shapes.insert("quantize.embedding.weight".into(), vec![16384, 8]);
    let e = build_decoder_graph(&c, &mut fp32(Arc::new(FakeSource { shapes }))).unwrap_err();
    match &e {
        Error::Checkpoint(CheckpointError::ShapeMismatch {
            key, expected, got, ..
        }) => {
            assert_eq!(key, "quantize.embedding.weight");
            assert_eq!(expected, &vec![512, 8]);
            assert_eq!(got, &vec![16384, 8]);
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn tiny_graph_writes_with_fake_weights() {
    let c = tiny();
    let shapes: HashMap<_, _> = required_keys(&c).into_iter().collect();
    let g = build_decoder_graph(&c, &mut fp32(Arc::new(FakeSource { shapes }))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = crate::onnx::write_model(&g, dir.path(), "vq", "test", &mut |_, _| {}).unwrap();
    assert!(w.onnx_bytes > 0 && w.weights_bytes > 0);
    // The codebook reached the file normalised: rows of 0.5 * 8 have norm sqrt(2).
    let init = g
        .initializers
        .iter()
        .find(|i| i.name == "quantize.embedding.normalized")
        .unwrap();
    let bytes = init.data.to_bytes().unwrap();
    let first = f32::from_le_bytes(bytes[..4].try_into().unwrap());
    // One f32 rounding of a value < 1 is < 6e-8 (one-off level).
    Tolerance::abs("f32 rounding (1e-7 abs)", 1e-7).assert_scalar(
        "normalised codebook value",
        first,
        0.5 / 2f32.sqrt(),
    );
}

/// The official tiny c2i fixtures (`tests/golden/tiny-c2i`).
fn tiny_c2i_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-c2i")
}

/// Builds the golden tiny VQ from the official checkpoint and writes it as ONNX, into
/// `$LLAMAGEN_VQ_ONNX_OUT` when set (for the onnxruntime comparison script), else a temp dir.
#[test]
fn golden_tiny_vq_checkpoint_builds_and_writes() {
    let dir = tiny_c2i_dir();
    let ckpt = crate::checkpoint::Checkpoint::open(&dir.join("vq.pt")).unwrap();
    // Our key list is exactly the decoder part of the official state dict.
    let mut ours: Vec<String> = required_keys(&tiny()).into_iter().map(|(k, _)| k).collect();
    let mut theirs: Vec<String> = ckpt
        .keys()
        .filter(|k| {
            k.starts_with("decoder.")
                || k.starts_with("post_quant_conv.")
                || k.starts_with("quantize.embedding.")
        })
        .map(str::to_string)
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    let source: Arc<dyn WeightSource> = Arc::new(crate::models::CheckpointWeights(ckpt));
    let g = build_decoder_graph(&tiny(), &mut fp32(source)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("LLAMAGEN_VQ_ONNX_OUT").map(PathBuf::from);
    let out: &Path = out.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(out).unwrap();
    crate::onnx::write_model(&g, out, "vq", "test", &mut |_, _| {}).unwrap();
    assert!(out.join("vq.onnx").is_file() && out.join("vq.weights").is_file());
}
