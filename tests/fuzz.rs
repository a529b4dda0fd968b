//! Issue 11, structured fuzzing on stable Rust (proptest): the PyTorch zip + pickle reader, the
//! safetensors reader, the manifest loader with bundle verification, and the `.npy` reader.
//! The property everywhere: any input gives `Ok` or a named error, never a panic, an abort or
//! an allocation the input size does not justify.
//!
//! Each target starts from its seed corpus (`tests/fuzz/corpus/<target>/`, small files checked
//! in; `LLAMAGEN_FUZZ_WRITE_CORPUS=1` regenerates them) and mutates it: raw byte edits
//! (flip, set, insert, truncate, splice) and format-aware edits (pickle opcodes spliced into
//! `data.pkl`, numbers in the safetensors and npy headers, manifest values and paths). CI runs
//! a fixed budget per target ([`CI_CASES`]); `LLAMAGEN_FUZZ_CASES=N` runs N cases per target
//! locally, `PROPTEST_RNG_SEED` varies the stream. Every failure proptest ever reported is kept
//! as a named regression test at the end of this file.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llamagen_bundle::files::write_manifest;
use llamagen_bundle::initializers::Initializers;
use llamagen_bundle::verify::{sha256_file, unseal_manifest};
use llamagen_bundle::{load_manifest, GraphRole, Manifest, MANIFEST_FILE};
use llamagen_compiler::checkpoint::Checkpoint;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per target in CI (the whole file stays under about 30 s on 2 cores).
const CI_CASES: u32 = 48;

fn cases(ci: u32) -> u32 {
    std::env::var("LLAMAGEN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci)
}

fn runner(ci: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(ci),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    })
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// The seed files of `target` (written first when `LLAMAGEN_FUZZ_WRITE_CORPUS` is set).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    if std::env::var_os("LLAMAGEN_FUZZ_WRITE_CORPUS").is_some() {
        write_corpus(target);
    }
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty seed corpus", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A stored-only zip of `entries` (name, bytes), as torch.save writes it.
fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// The entries of zip `bytes` (None when it is not a readable zip).
fn unzip(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut a = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let mut out = Vec::new();
    for i in 0..a.len() {
        let mut f = a.by_index(i).ok()?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).ok()?;
        out.push((f.name().to_string(), v));
    }
    Some(out)
}

fn write_corpus(target: &str) {
    use llamagen_test_support::torch::{write_torch_checkpoint, DType};
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    match target {
        "torch" => {
            let t = |name: &str, shape: Vec<usize>| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
                (name.to_string(), DType::F32, shape, f32_bytes(&v))
            };
            write_torch_checkpoint(
                &dir.join("model_wrapped.pt"),
                Some("model"),
                &[
                    t("tok_embeddings.weight", vec![4, 3]),
                    t("norm.weight", vec![3]),
                ],
            )
            .unwrap();
            let h: Vec<u8> = [1.0f32, -2.0, 0.5, 8.0]
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            write_torch_checkpoint(
                &dir.join("bare_f16.pt"),
                None,
                &[("w".to_string(), DType::F16, vec![2, 2], h)],
            )
            .unwrap();
        }
        "safetensors" => {
            let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},"__metadata__":{"format":"pt"}}"#;
            let mut h = header.as_bytes().to_vec();
            while !h.len().is_multiple_of(8) {
                h.push(b' ');
            }
            let mut file = (h.len() as u64).to_le_bytes().to_vec();
            file.extend(&h);
            file.extend(f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
            for x in [0.5f32, -1.0, 2.0] {
                file.extend(half::f16::from_f32(x).to_le_bytes());
            }
            std::fs::write(dir.join("two_tensors.safetensors"), file).unwrap();
        }
        "npy" => {
            llamagen_runtime::npy::write_npy_f32(&dir.join("f32_2x3.npy"), &[2, 3], &[0.5; 6])
                .unwrap();
            llamagen_runtime::npy::write_npy_i64(&dir.join("i64_4.npy"), &[4], &[1, 2, 3, 4])
                .unwrap();
        }
        other => panic!("no corpus writer for {other}"),
    }
}

/// A raw byte edit; positions are taken modulo the input length.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    /// Copy `len` bytes from `from` over `to` (duplicates structure: headers, opcodes).
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(a, b)| Edit::Flip(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(from, to, len)| Edit::Splice {
            from,
            to,
            len
        }),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match e {
            Edit::Flip(a, bit) => b[a % n] ^= 1 << bit,
            Edit::Set(a, v) => b[a % n] = *v,
            Edit::Insert(a, v) => {
                let at = a % (n + 1);
                b.splice(at..at, v.iter().copied());
            }
            Edit::Truncate(a) => b.truncate(a % n),
            Edit::Splice { from, to, len } => {
                let (from, to) = (from % n, to % n);
                let len = (*len).min(n - from).min(n - to);
                let chunk = b[from..from + len].to_vec();
                b[to..to + len].copy_from_slice(&chunk);
            }
        }
    }
    b
}

/// Writes `bytes` to a fresh file in `dir` and returns its path.
fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Opens a checkpoint and converts every tensor (errors are fine, panics are not).
fn read_checkpoint(path: &Path) {
    if let Ok(c) = Checkpoint::open(path) {
        for t in c.tensors() {
            let _ = t.to_f32();
        }
    }
}

/// Pickle opcodes with plausible arguments, spliced into `data.pkl`.
fn pickle_ops() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        Just(b"}".to_vec()),
        Just(b"]".to_vec()),
        Just(b")".to_vec()),
        Just(b"(".to_vec()),
        Just(b"t".to_vec()),
        Just(b"s".to_vec()),
        Just(b"u".to_vec()),
        Just(b"a".to_vec()),
        Just(b"e".to_vec()),
        Just(b"R".to_vec()),
        Just(b"b".to_vec()),
        Just(b"Q".to_vec()),
        Just(b"N".to_vec()),
        Just(b"2".to_vec()),
        Just(b"0".to_vec()),
        Just(b"1".to_vec()),
        Just(b"\x85".to_vec()),
        Just(b"\x86".to_vec()),
        Just(b"\x87".to_vec()),
        Just(b"\x81".to_vec()),
        Just(b"\x88".to_vec()),
        any::<u8>().prop_map(|i| vec![b'q', i]),
        any::<u8>().prop_map(|i| vec![b'h', i]),
        any::<u8>().prop_map(|i| vec![b'K', i]),
        any::<u16>().prop_map(|i| {
            let mut v = vec![b'M'];
            v.extend(i.to_le_bytes());
            v
        }),
        any::<i32>().prop_map(|i| {
            let mut v = vec![b'J'];
            v.extend(i.to_le_bytes());
            v
        }),
        "[a-z._0-9]{0,12}".prop_map(|s| {
            let mut v = vec![b'X'];
            v.extend((s.len() as u32).to_le_bytes());
            v.extend(s.as_bytes());
            v
        }),
        Just(b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec()),
        Just(b"ctorch\nFloatStorage\n".to_vec()),
        Just(b"ccollections\nOrderedDict\n".to_vec()),
        Just(b"cos\nsystem\n".to_vec()),
    ];
    proptest::collection::vec(op, 1..12).prop_map(|v| v.concat())
}

/// Target 1: the PyTorch zip reader and its restricted unpickler.
#[test]
fn fuzz_torch_zip_and_pickle() {
    let seeds = corpus("torch");
    let tmp = tempfile::tempdir().unwrap();
    let strategy = (
        0..seeds.len(),
        proptest::bool::ANY,
        proptest::collection::vec(edit(), 1..6),
        any::<usize>(),
        pickle_ops(),
    );
    runner(CI_CASES)
        .run(&strategy, |(seed, raw, edits, at, ops)| {
            let bytes = if raw {
                apply(seeds[seed].clone(), &edits)
            } else {
                // Splice opcodes into data.pkl and re-zip, so the pickle VM sees them.
                let mut entries = unzip(&seeds[seed]).expect("seed is a zip");
                if let Some((_, pkl)) = entries.iter_mut().find(|(n, _)| n.ends_with("data.pkl")) {
                    let at = at % pkl.len();
                    pkl.splice(at..at, ops.iter().copied());
                    *pkl = apply(std::mem::take(pkl), &edits[..edits.len().min(1)]);
                }
                zip_of(&entries)
            };
            let p = temp_file(tmp.path(), "case.pt", &bytes);
            read_checkpoint(&p);
            Ok(())
        })
        .unwrap();
}

/// A number that stresses size arithmetic: small, near a power of two, or huge.
fn size_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        (0u32..64).prop_map(|s| 1u64 << s),
        (0u32..64).prop_map(|s| (1u64 << s).wrapping_sub(1)),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// Replaces the `k`-th decimal number of `text` (modulo their count) by `v`.
fn replace_number(text: &str, k: usize, v: u64) -> String {
    let mut spans = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return text.to_string();
    }
    let (s, e) = spans[k % spans.len()];
    format!("{}{v}{}", &text[..s], &text[e..])
}

/// Target 2: the safetensors reader (header numbers and raw bytes).
#[test]
fn fuzz_safetensors() {
    let seeds = corpus("safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let strategy = (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), size_number()), 0..4),
        proptest::collection::vec(edit(), 0..4),
    );
    runner(CI_CASES)
        .run(&strategy, |(seed, numbers, edits)| {
            let seed = &seeds[seed];
            let hlen = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
            let mut header = String::from_utf8(seed[8..8 + hlen].to_vec()).unwrap();
            for (k, v) in &numbers {
                header = replace_number(&header, *k, *v);
            }
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(&seed[8 + hlen..]);
            let bytes = apply(bytes, &edits);
            let p = temp_file(tmp.path(), "case.safetensors", &bytes);
            read_checkpoint(&p);
            Ok(())
        })
        .unwrap();
}

/// Target 4: the `.npy` reader (header numbers, shapes and raw bytes).
#[test]
fn fuzz_npy() {
    let seeds = corpus("npy");
    let tmp = tempfile::tempdir().unwrap();
    let strategy = (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), size_number()), 0..3),
        proptest::collection::vec(edit(), 0..4),
    );
    runner(CI_CASES * 2)
        .run(&strategy, |(seed, numbers, edits)| {
            let seed = &seeds[seed];
            // The header is ASCII after the 10-byte preamble (version 1).
            let hlen = u16::from_le_bytes([seed[8], seed[9]]) as usize;
            let header = String::from_utf8_lossy(&seed[10..10 + hlen]).into_owned();
            let mut h = header.clone();
            for (k, v) in &numbers {
                h = replace_number(&h, *k, *v);
            }
            let mut bytes = seed[..8].to_vec();
            bytes.extend((h.len() as u16).to_le_bytes());
            bytes.extend(h.as_bytes());
            bytes.extend(&seed[10 + hlen..]);
            let bytes = apply(bytes, &edits);
            let p = temp_file(tmp.path(), "case.npy", &bytes);
            let _ = llamagen_runtime::npy::read_npy(&p);
            Ok(())
        })
        .unwrap();
}

/// The tiny bundle the manifest target mutates (compiled once per test process).
fn seed_bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed folder under cargo's per-target temp dir, replaced on every run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seed-bundle");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = support::golden::tiny_options(
            &dir,
            llamagen_compiler::compile::Weights::Random { seed: 1 },
        );
        llamagen_compiler::compile::compile(&opts, &mut |_| {}).expect("compile the seed bundle");
        dir
    })
}

/// A manifest value a hostile writer may set.
#[derive(Clone, Debug)]
enum ManifestEdit {
    Number(usize, u64),
    Path(usize, String),
    FilesBytes(usize, u64),
    ChMult(usize),
}

const NUMBER_FIELDS: usize = 16;

fn set_number(m: &mut Manifest, field: usize, v: u64) {
    let v = usize::try_from(v).unwrap_or(usize::MAX);
    let Some(gpt) = m.gpt.as_mut() else {
        return;
    };
    match field % NUMBER_FIELDS {
        0 => m.generation.tokens_per_image = v,
        1 => gpt.max_len = v,
        2 => gpt.num_classes = v,
        3 => gpt.class_rows = v,
        4 => m.generation.class_token_offset = v,
        5 => m.generation.null_class = v,
        6 => gpt.vocab_size = v,
        7 => gpt.block_size = v,
        8 => gpt.n_layer = v,
        9 => gpt.n_head = v,
        10 => gpt.head_dim = v,
        11 => gpt.dim = v,
        12 => m.vq.image_size = v,
        13 => m.vq.grid = v,
        14 => m.vq.downsample = v,
        _ => m.vq.codebook_size = v,
    }
}

fn manifest_edit() -> impl Strategy<Value = ManifestEdit> {
    let path = prop_oneof![
        Just("../gpt.weights".to_string()),
        Just("/proc/self/pagemap".to_string()),
        Just("".to_string()),
        Just(".".to_string()),
        Just("gpt.weights".to_string()),
        Just("vq.onnx".to_string()),
        Just("a/b".to_string()),
        "[a-z./]{1,12}",
    ];
    let small = prop_oneof![size_number(), 0u64..1100];
    prop_oneof![
        (any::<usize>(), small).prop_map(|(f, v)| ManifestEdit::Number(f, v)),
        (any::<usize>(), path).prop_map(|(f, p)| ManifestEdit::Path(f, p)),
        (any::<usize>(), size_number()).prop_map(|(f, v)| ManifestEdit::FilesBytes(f, v)),
        (0usize..80).prop_map(ManifestEdit::ChMult),
    ]
}

fn apply_manifest_edit(m: &mut Manifest, e: &ManifestEdit) {
    match e {
        ManifestEdit::Number(f, v) => set_number(m, *f, *v),
        ManifestEdit::Path(f, p) => {
            let role = if f % 2 == 0 {
                GraphRole::GptStep
            } else {
                GraphRole::VqDecoder
            };
            let g = m.graphs.get_mut(&role).unwrap();
            match (f / 2) % 3 {
                0 => g.file = p.clone(),
                1 => g.weights = p.clone(),
                _ => {
                    let e = g.file.clone();
                    if let Some(entry) = m.files.remove(&e) {
                        m.files.insert(p.clone(), entry);
                    }
                }
            }
        }
        ManifestEdit::FilesBytes(f, v) => {
            let n = m.files.len();
            if let Some(e) = m.files.values_mut().nth(f % n) {
                e.bytes = *v;
            }
        }
        ManifestEdit::ChMult(n) => m.vq.ch_mult = vec![1; *n],
    }
}

/// Target 3: the manifest loader with bundle verification. A case is a copy of the seed bundle
/// (hard links; changed files are rewritten) with sealed manifest edits, raw manifest byte
/// edits, or ONNX byte edits re-hashed into a resealed manifest; `load_manifest(dir, true)` and,
/// when it accepts, the initializer reader must never panic.
#[test]
fn fuzz_manifest_loader_with_verification() {
    let seed = seed_bundle();
    let tmp = tempfile::tempdir().unwrap();
    let strategy = (
        0u8..3,
        proptest::collection::vec(manifest_edit(), 1..4),
        proptest::collection::vec(edit(), 1..4),
        proptest::bool::ANY,
    );
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner(CI_CASES / 2)
        .run(&strategy, |(kind, medits, edits, gpt)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = tmp.path().join(format!("case{n}"));
            std::fs::create_dir(&dir).unwrap();
            for e in std::fs::read_dir(seed).unwrap() {
                let e = e.unwrap();
                std::fs::hard_link(e.path(), dir.join(e.file_name())).unwrap();
            }
            let manifest_path = dir.join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&manifest_path).unwrap();
            let mut m: Manifest =
                serde_yaml::from_str(unseal_manifest(&manifest_path, &text).unwrap()).unwrap();
            std::fs::remove_file(&manifest_path).unwrap();
            match kind {
                0 => {
                    for e in &medits {
                        apply_manifest_edit(&mut m, e);
                    }
                    write_manifest(&dir, &m).unwrap();
                }
                1 => {
                    std::fs::write(&manifest_path, apply(text.into_bytes(), &edits)).unwrap();
                }
                _ => {
                    let name = if gpt { "gpt.onnx" } else { "vq.onnx" };
                    let onnx = dir.join(name);
                    let bytes = apply(std::fs::read(&onnx).unwrap(), &edits);
                    std::fs::remove_file(&onnx).unwrap();
                    std::fs::write(&onnx, bytes).unwrap();
                    let (sha, len) = sha256_file(&onnx).unwrap();
                    let e = m.files.get_mut(name).unwrap();
                    e.sha256 = sha;
                    e.bytes = len;
                    write_manifest(&dir, &m).unwrap();
                }
            }
            if let Ok(m) = load_manifest(&dir, true) {
                for g in m.graphs.values() {
                    if let Ok(w) = Initializers::open(&dir, &m, g) {
                        for name in w.names() {
                            let _ = w.get(name);
                        }
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
        .unwrap();
}

// ---- regression cases: every failure the fuzz targets found, by name ----
//
// 30,000 cases per target (`LLAMAGEN_FUZZ_CASES=30000 PROPTEST_RNG_SEED=12345`, 849 s) found
// no failure after the issue-11 fixes; the cases below are the crashes issue 11 found by
// reading the code, replayed through the fuzz targets' entry points.

/// A checkpoint whose `data.pkl` is a megabyte of EMPTY_DICT (used to cost ~114 B per byte).
#[test]
fn regression_pickle_empty_dict_bomb_in_a_checkpoint() {
    let seeds = corpus("torch");
    let mut entries = unzip(&seeds[0]).unwrap();
    let (_, pkl) = entries
        .iter_mut()
        .find(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let mut bomb = vec![0x80, 2];
    bomb.extend(std::iter::repeat_n(b'}', 1 << 20));
    bomb.push(b'.');
    *pkl = bomb;
    let tmp = tempfile::tempdir().unwrap();
    let p = temp_file(tmp.path(), "bomb.pt", &zip_of(&entries));
    let e = Checkpoint::open(&p).expect_err("the bomb was accepted");
    assert!(e.to_string().contains("memory"), "{e}");
}

/// npy headers whose shape overflows `usize` or needs more bytes than the file holds.
#[test]
fn regression_npy_shape_overflow() {
    let seeds = corpus("npy");
    let tmp = tempfile::tempdir().unwrap();
    for shape in [
        "(18446744073709551615, 2)",
        "(4294967296, 4294967296)",
        "(1000000000,)",
    ] {
        let hlen = u16::from_le_bytes([seeds[0][8], seeds[0][9]]) as usize;
        let header = String::from_utf8_lossy(&seeds[0][10..10 + hlen]).into_owned();
        let h = header.replace("(2, 3)", shape);
        let mut bytes = seeds[0][..8].to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        bytes.extend(&seeds[0][10 + hlen..]);
        let p = temp_file(tmp.path(), "case.npy", &bytes);
        assert!(
            llamagen_runtime::npy::read_npy(&p).is_err(),
            "{shape} accepted"
        );
    }
}
