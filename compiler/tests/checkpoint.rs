//! Integration tests of `llamagen_compiler::checkpoint`: the official-format golden
//! checkpoints (written by torch.save), round trips through both writers (every wrapper, f32 /
//! f16 / bf16), truncated writer output and the key/shape error contract. Hand-made zip
//! checkpoints (malicious, strided, broken) are in `checkpoint_hand_made.rs`.
//!
//! Tolerance level: exact. Every value is compared bit for bit (f16/bf16 -> f32 is exact; the
//! golden values are the f32 values numpy read from the raw zip entries), except one f64 sum of
//! a whole tensor checked against numpy's to 1e-9 (a one-off level, summation order).

use std::path::PathBuf;

use half::{bf16, f16};
use llamagen_compiler::checkpoint::{write_safetensors, Checkpoint, CheckpointError, DType};
use llamagen_test_support::torch::{self, write_torch_zip, TorchStorage, TorchTensor};
use llamagen_test_support::Tolerance;

type Raw = (String, DType, Vec<usize>, Vec<u8>);

/// `tensors` through the test-support torch writer (its dtypes named as the reader names them).
fn write_torch(path: &std::path::Path, wrapper: Option<&str>, tensors: &[Raw]) {
    let entries: Vec<_> = tensors
        .iter()
        .map(|(n, d, shape, bytes)| {
            let dtype = torch::DType::from_name(d.name()).expect("a torch dtype");
            (n.clone(), dtype, shape.clone(), bytes.clone())
        })
        .collect();
    torch::write_torch_checkpoint(path, wrapper, &entries).expect("write torch checkpoint");
}

/// The official tiny c2i fixtures (`tests/golden/tiny-c2i`).
fn tiny_c2i_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-c2i")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32, f16, bf16 and an i64 buffer, with awkward values (negative zero, subnormal, inf).
fn sample_tensors() -> Vec<Raw> {
    let a: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect();
    let h: Vec<u16> = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 6.0e-8, f32::INFINITY]
        .iter()
        .map(|&x| f16::from_f32(x).to_bits())
        .collect();
    let b: Vec<u16> = [1.0f32, -3.140625, 1.0e-20, 3.0e38, 0.5, -7.0]
        .iter()
        .map(|&x| bf16::from_f32(x).to_bits())
        .collect();
    vec![
        (
            "layers.0.attention.wqkv.weight".into(),
            DType::F32,
            vec![3, 4],
            f32_bytes(&a),
        ),
        (
            "norm.weight".into(),
            DType::F16,
            vec![7],
            h.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            "output.weight".into(),
            DType::BF16,
            vec![2, 3],
            b.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            "steps_buffer".into(),
            DType::I64,
            vec![2],
            [5i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        ("scalar".into(), DType::F32, vec![], f32_bytes(&[42.0])),
        ("empty".into(), DType::F32, vec![0, 4], vec![]),
    ]
}

/// The f32 values the sample tensors must read back as (exact half -> f32 conversion).
fn expected(t: &Raw) -> Vec<f32> {
    let (_, dtype, _, bytes) = t;
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        _ => unreachable!(),
    }
}

fn assert_same(ck: &Checkpoint, tensors: &[Raw]) {
    assert_eq!(ck.keys().count(), tensors.len());
    for t in tensors {
        let view = ck.get(&t.0).unwrap();
        assert_eq!(
            (view.name(), view.dtype(), view.shape()),
            (t.0.as_str(), t.1, t.2.as_slice())
        );
        assert_eq!(view.numel(), t.2.iter().product::<usize>());
        if t.1 == DType::I64 {
            assert!(
                matches!(view.to_f32(), Err(CheckpointError::UnsupportedDtype { ref key, .. }) if key == &t.0)
            );
            continue;
        }
        let got = ck.get_f32(&t.0, &t.2).unwrap();
        let want = expected(t);
        let same_bits = got
            .iter()
            .map(|x| x.to_bits())
            .eq(want.iter().map(|x| x.to_bits()));
        assert!(same_bits, "{}: {got:?} != {want:?}", t.0);
    }
}

#[test]
fn golden_gpt_checkpoint_loads() {
    let dir = tiny_c2i_dir();
    let ck = Checkpoint::open(&dir.join("gpt.pt")).unwrap();
    assert_eq!(ck.keys().count(), 18);
    for (key, shape) in [
        ("cls_embedding.embedding_table.weight", &[11, 64][..]),
        ("tok_embeddings.weight", &[512, 64]),
        ("layers.0.attention.wqkv.weight", &[192, 64]),
        ("layers.1.attention.wo.weight", &[64, 64]),
        ("layers.1.feed_forward.w1.weight", &[256, 64]),
        ("layers.1.feed_forward.w2.weight", &[64, 256]),
        ("layers.0.attention_norm.weight", &[64]),
        ("norm.weight", &[64]),
        ("output.weight", &[512, 64]),
    ] {
        assert_eq!(ck.get(key).unwrap().shape(), shape, "{key}");
        assert_eq!(ck.get(key).unwrap().dtype(), DType::F32);
    }
    // Values obtained independently with python: zipfile.ZipFile(gpt.pt).read('gpt/data/<N>')
    // + numpy.frombuffer(dtype=float32) at the storage offset/strides from data.pkl; first four
    // and last two elements of each tensor, printed as repr(np.float32(x)).
    let cls = ck
        .get_f32("cls_embedding.embedding_table.weight", &[11, 64])
        .unwrap();
    assert_eq!(
        &cls[..4],
        &[-0.19069949, -0.093778975, -0.081747614, -0.2011856]
    );
    assert_eq!(&cls[cls.len() - 2..], &[0.079461575, -0.020160995]);
    let out = ck.get_f32("output.weight", &[512, 64]).unwrap();
    assert_eq!(
        &out[..4],
        &[-0.0024016362, 0.18000045, -0.16660029, -0.0024380097]
    );
    assert_eq!(&out[out.len() - 2..], &[1.0991557, 0.051023778]);
    let w2 = ck
        .get_f32("layers.1.feed_forward.w2.weight", &[64, 256])
        .unwrap();
    assert_eq!(
        &w2[..4],
        &[0.0033168679, 0.08273358, -0.029827943, -0.00768052]
    );
    assert_eq!(&w2[w2.len() - 2..], &[0.0059390278, -0.0040554786]);
    // numpy float64 sum of the whole tensor: 79.48390150331943.
    let sum: f64 = out.iter().map(|&x| f64::from(x)).sum();
    // An f64 sum in another order than numpy's pairwise one: far closer than 1e-9.
    Tolerance::abs("f64 tensor sum vs numpy (1e-9 abs)", 1e-9).assert_scalar(
        "output.weight sum",
        sum,
        79.48390150331943,
    );
}

#[test]
fn golden_vq_checkpoint_loads() {
    let dir = tiny_c2i_dir();
    let ck = Checkpoint::open(&dir.join("vq.pt")).unwrap();
    assert_eq!(ck.keys().count(), 204);
    assert!(ck.contains("quantize.codebook_used"));
    // Same independent python/numpy read as for gpt.pt.
    let emb = ck.get_f32("quantize.embedding.weight", &[512, 8]).unwrap();
    assert_eq!(&emb[..4], &[0.23420787, 0.056814205, 0.10064882, 0.3925584]);
    assert_eq!(&emb[emb.len() - 2..], &[0.7685781, 0.05299756]);
    let conv = ck
        .get_f32("decoder.conv_out.weight", &[3, 128, 3, 3])
        .unwrap();
    assert_eq!(
        &conv[..4],
        &[-0.000554476, 0.019988582, -0.025253132, 0.02977578]
    );
    assert_eq!(&conv[conv.len() - 2..], &[0.0036467689, 0.051307995]);
    let conv_in = ck
        .get_f32("encoder.conv_in.weight", &[128, 3, 3, 3])
        .unwrap();
    assert_eq!(
        &conv_in[..4],
        &[-0.20030227, 0.17640056, -0.25099155, -0.2135577]
    );
}

#[test]
fn torch_round_trip_with_every_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = sample_tensors();
    for wrapper in [Some("model"), Some("module"), Some("state_dict"), None] {
        let path = dir
            .path()
            .join(format!("ck-{}.pt", wrapper.unwrap_or("bare")));
        write_torch(&path, wrapper, &tensors);
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.path(), path);
        assert_same(&ck, &tensors);
    }
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = sample_tensors();
    let path = dir.path().join("model.safetensors");
    write_safetensors(&path, &tensors).unwrap();
    assert_same(&Checkpoint::open(&path).unwrap(), &tensors);
    // Content sniffing, not the extension, decides the format.
    let renamed = dir.path().join("model.bin");
    std::fs::copy(&path, &renamed).unwrap();
    assert_same(&Checkpoint::open(&renamed).unwrap(), &tensors);
}

#[test]
fn writers_reject_inconsistent_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = vec![("w".to_string(), DType::F32, vec![2, 2], vec![0u8; 15])];
    let p = dir.path().join("bad.pt");
    assert!(matches!(
        write_safetensors(&p, &bad),
        Err(CheckpointError::Malformed { .. })
    ));
}

#[test]
fn large_fixture_is_aligned_and_zero_copy() {
    // A GPT-B-sized embedding row count (16384 x 256 f32 = 16 MiB) through the torch writer.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..16384 * 256).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let tensors = vec![
        (
            "tok_embeddings.weight".to_string(),
            DType::F32,
            vec![16384, 256],
            f32_bytes(&data),
        ),
        (
            "norm.weight".to_string(),
            DType::F32,
            vec![3],
            f32_bytes(&[1.0, 2.0, 3.0]),
        ),
    ];
    let path = dir.path().join("big.pt");
    write_torch(&path, Some("model"), &tensors);
    let ck = Checkpoint::open(&path).unwrap();
    for key in ["tok_embeddings.weight", "norm.weight"] {
        let raw = ck.get(key).unwrap().contiguous_bytes().unwrap();
        // The map is page aligned, so this checks torch's 64-byte entry alignment in the file.
        assert_eq!(raw.as_ptr() as usize % 64, 0, "{key}");
    }
    assert_eq!(
        ck.get_f32("tok_embeddings.weight", &[16384, 256]).unwrap(),
        data
    );
}

#[test]
fn missing_key_and_shape_mismatch_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.pt");
    write_torch(&path, Some("model"), &sample_tensors());
    let ck = Checkpoint::open(&path).unwrap();
    match ck.get_f32("layers.9.attention.wo.weight", &[4, 4]) {
        Err(e @ CheckpointError::MissingKey { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("layers.9.attention.wo.weight") && msg.contains("ck.pt"),
                "{msg}"
            );
            let CheckpointError::MissingKey { key, path: p } = e else {
                unreachable!()
            };
            assert_eq!(
                (key.as_str(), p.as_path()),
                ("layers.9.attention.wo.weight", path.as_path())
            );
        }
        other => panic!("{other:?}"),
    }
    match ck.get_f32("output.weight", &[3, 2]) {
        Err(CheckpointError::ShapeMismatch {
            key,
            expected,
            got,
            path: p,
        }) => {
            assert_eq!(key, "output.weight");
            assert_eq!((expected, got), (vec![3, 2], vec![2, 3]));
            assert_eq!(p, path);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn checkpoints_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<llamagen_compiler::checkpoint::TensorView>();
}

#[test]
fn in_memory_checkpoints() {
    let tensors = sample_tensors();
    let ck = Checkpoint::from_tensors(PathBuf::from("<random>"), tensors.clone());
    assert_same(&ck, &tensors);
    let bad = Checkpoint::from_tensors(
        PathBuf::from("<random>"),
        vec![("w".into(), DType::F32, vec![4], vec![0u8; 12])],
    );
    assert!(matches!(
        bad.get_f32("w", &[4]),
        Err(CheckpointError::Malformed { .. })
    ));
}

#[test]
fn truncated_writer_output_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.pt");
    // Every 7th truncation of real writer output: an error, never a panic.
    let full = dir.path().join("full.pt");
    write_torch(&full, Some("model"), &sample_tensors());
    let st = dir.path().join("full.safetensors");
    write_safetensors(&st, &sample_tensors()).unwrap();
    for src in [full, st] {
        let bytes = std::fs::read(&src).unwrap();
        for n in (0..bytes.len()).step_by(7) {
            std::fs::write(&path, &bytes[..n]).unwrap();
            match Checkpoint::open(&path) {
                Err(CheckpointError::Malformed { .. } | CheckpointError::UnknownFormat { .. }) => {}
                other => panic!("{} cut at {n}: {other:?}", src.display()),
            }
        }
    }
}

/// Views sharing one storage (a matrix, its transpose, a row at an offset) read back with their
/// strides and offsets.
#[test]
fn views_sharing_one_storage_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.pt");
    let data: Vec<u8> = (0..6u8)
        .flat_map(|i| bf16::from_f32(f32::from(i)).to_bits().to_le_bytes())
        .collect();
    let storages = [TorchStorage {
        dtype: torch::DType::BF16,
        data: &data,
    }];
    let view = |name, shape, strides: Vec<usize>, offset| TorchTensor {
        name,
        shape,
        strides,
        offset,
        storage: 0,
    };
    let tensors = [
        view("m", &[2, 3][..], vec![3, 1], 0),
        view("m_t", &[3, 2], vec![1, 3], 0),
        view("row1", &[3], vec![1], 3),
    ];
    write_torch_zip(&path, Some("state_dict"), &tensors, &storages).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.get_f32("m", &[2, 3]).unwrap(), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(
        ck.get_f32("m_t", &[3, 2]).unwrap(),
        [0., 3., 1., 4., 2., 5.]
    );
    assert_eq!(ck.get_f32("row1", &[3]).unwrap(), [3., 4., 5.]);
    assert_eq!(ck.get("row1").unwrap().storage_offset(), 3);
}
