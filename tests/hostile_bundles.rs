//! Issue 11, hostile bundles: every test takes a valid tiny bundle (random weights), makes it
//! hostile the way an attacker who controls the folder could (paths, the sealed manifest, the
//! graphs, single flipped bytes, files swapped after verification) and checks for a named error
//! and no panic, before anything is allocated from the hostile values.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen_bundle::confine::OpenedFile;
use llamagen_bundle::files::write_manifest;
use llamagen_bundle::initializers::Initializers;
use llamagen_bundle::onnx_proto::{ModelProto, StringStringEntryProto};
use llamagen_bundle::verify::{sha256_file, unseal_manifest};
use llamagen_bundle::{load_manifest, BundleError, GraphRole, Manifest, MANIFEST_FILE};
use llamagen_compiler::compile::{compile, Weights};
use prost::Message;
use support::golden::tiny_options;

const LLAMAGEN: &str = env!("CARGO_BIN_EXE_llamagen");

/// A valid tiny bundle with random weights at `dir/name`.
fn tiny_bundle(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    compile(
        &tiny_options(&out, Weights::Random { seed: 7 }),
        &mut |_| {},
    )
    .expect("compile the tiny bundle");
    out
}

/// A copy of bundle `src` at `dir/name` (a fresh victim per case).
fn copy_bundle(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    out
}

/// The manifest as written (no checks), for editing.
fn raw_manifest(bundle: &Path) -> Manifest {
    let path = bundle.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(unseal_manifest(&path, &text).unwrap()).unwrap()
}

/// Applies `edit` to the manifest and seals it again (a hostile writer can always do that).
fn edit(bundle: &Path, edit: impl FnOnce(&mut Manifest)) {
    let mut m = raw_manifest(bundle);
    edit(&mut m);
    write_manifest(bundle, &m).unwrap();
}

/// Re-hashes file `name` into the manifest after it was changed.
fn rehash(bundle: &Path, name: &str) {
    let (sha, bytes) = sha256_file(&bundle.join(name)).unwrap();
    edit(bundle, |m| {
        let e = m.files.get_mut(name).unwrap();
        e.sha256 = sha;
        e.bytes = bytes;
    });
}

/// Rewrites graph file `name` with `edit` applied to its model, and re-hashes it.
fn edit_onnx(bundle: &Path, name: &str, edit: impl FnOnce(&mut ModelProto)) {
    let path = bundle.join(name);
    let mut model = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    edit(&mut model);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    rehash(bundle, name);
}

/// `load_manifest` fails (no panic) with an error whose message holds every needle.
fn refused(bundle: &Path, verify: bool, needles: &[&str]) -> BundleError {
    let e = match std::panic::catch_unwind(|| load_manifest(bundle, verify)) {
        Ok(Ok(_)) => panic!(
            "{}: hostile bundle accepted (needles {needles:?})",
            bundle.display()
        ),
        Ok(Err(e)) => e,
        Err(_) => panic!("{}: load_manifest panicked", bundle.display()),
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error does not mention '{n}': {msg}");
    }
    e
}

/// Item "Confined bundles": absolute, `..` and symlinked paths in bundle.yaml and in the ONNX
/// external data, and files that are not listed, are refused by name.
#[test]
fn confined_bundle_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_bundle(tmp.path(), "good");
    load_manifest(&good, true).expect("the untouched bundle loads");

    // A `files` key naming /proc/self/pagemap (used to be hashed: 256 GiB of reading).
    let b = copy_bundle(&good, tmp.path(), "pagemap");
    edit(&b, |m| {
        let e = m.files["gpt.onnx"].clone();
        m.files.insert("/proc/self/pagemap".into(), e);
    });
    let e = refused(&b, true, &["/proc/self/pagemap", "absolute"]);
    assert!(matches!(e, BundleError::PathEscapes { .. }), "{e:?}");

    // A graph file outside the bundle, listed in files.
    let b = copy_bundle(&good, tmp.path(), "dotdot");
    std::fs::copy(good.join("gpt.onnx"), tmp.path().join("outside.onnx")).unwrap();
    edit(&b, |m| {
        let e = m.files.remove("gpt.onnx").unwrap();
        m.files.insert("../outside.onnx".into(), e);
        m.graphs.get_mut(&GraphRole::GptStep).unwrap().file = "../outside.onnx".into();
    });
    let e = refused(&b, false, &["../outside.onnx", "'..'"]);
    assert!(matches!(e, BundleError::PathEscapes { .. }), "{e:?}");

    // An absolute graph file.
    let b = copy_bundle(&good, tmp.path(), "absolute");
    let abs = good.join("gpt.onnx").display().to_string();
    edit(&b, |m| {
        let e = m.files.remove("gpt.onnx").unwrap();
        m.files.insert(abs.clone(), e);
        m.graphs.get_mut(&GraphRole::GptStep).unwrap().file = abs.clone();
    });
    refused(&b, false, &["absolute"]);

    // A graph file that is not listed in files would never be verified.
    let b = copy_bundle(&good, tmp.path(), "unlisted");
    edit(&b, |m| {
        m.files.remove("gpt.onnx");
    });
    let e = refused(&b, false, &["gpt.onnx", "not listed"]);
    assert!(matches!(e, BundleError::UnlistedFile { .. }), "{e:?}");

    // A listed file that is a symlink to a file outside the bundle (same bytes).
    #[cfg(unix)]
    {
        let b = copy_bundle(&good, tmp.path(), "symlink");
        let outside = tmp.path().join("outside.weights");
        std::fs::copy(good.join("gpt.weights"), &outside).unwrap();
        std::fs::remove_file(b.join("gpt.weights")).unwrap();
        std::os::unix::fs::symlink(&outside, b.join("gpt.weights")).unwrap();
        let e = refused(&b, true, &["gpt.weights", "outside the bundle"]);
        assert!(matches!(e, BundleError::PathEscapes { .. }), "{e:?}");
    }

    // ONNX external data pointing out of the bundle, or at a file the manifest does not list.
    for (name, location, needle) in [
        ("ext-dotdot", "../outside.weights", "'..'"),
        ("ext-absolute", "/etc/passwd", "absolute"),
        ("ext-unlisted", "extra.bin", "not listed"),
    ] {
        let b = copy_bundle(&good, tmp.path(), name);
        std::fs::copy(good.join("gpt.weights"), b.join("extra.bin")).unwrap();
        edit_onnx(&b, "gpt.onnx", |model| {
            let g = model.graph.as_mut().unwrap();
            let t = g
                .initializer
                .iter_mut()
                .find(|t| !t.external_data.is_empty())
                .expect("an external initializer");
            for e in &mut t.external_data {
                if e.key == "location" {
                    e.value = location.into();
                }
            }
        });
        refused(&b, true, &[location, needle]);
        // The native backend's reader refuses it the same way.
        let m = raw_manifest(&b);
        let r = Initializers::open(&b, &m, &m.graphs[&GraphRole::GptStep]);
        let e = r.err().expect("the initializer reader accepted it");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

/// Item "bundle.yaml's own digest": the manifest is sealed; a changed byte, a removed or
/// changed digest line are named errors, and bundles without a digest must be recompiled.
#[test]
fn manifest_digest_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_bundle(tmp.path(), "good");
    let path = good.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("manifest_sha256: "),
        "{text}"
    );

    // Same length, one character of a file's hash changed: the files table is covered.
    let b = copy_bundle(&good, tmp.path(), "files-table");
    let sha = raw_manifest(&good).files["vq.weights"].sha256.clone();
    let flipped = format!(
        "{}{}",
        if sha.starts_with('0') { "1" } else { "0" },
        &sha[1..]
    );
    std::fs::write(b.join(MANIFEST_FILE), text.replacen(&sha, &flipped, 1)).unwrap();
    let e = refused(&b, false, &["manifest digest"]);
    assert!(matches!(e, BundleError::ManifestDigest { .. }), "{e:?}");

    // No digest line (a bundle written before manifests were sealed).
    let b = copy_bundle(&good, tmp.path(), "old");
    let body = unseal_manifest(&path, &text).unwrap();
    std::fs::write(b.join(MANIFEST_FILE), body).unwrap();
    refused(&b, false, &["manifest digest", "recompile"]);
}

/// Flips byte `at` of `file`.
fn flip(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

/// Item "any single byte flipped": every byte of bundle.yaml (each one without hashing the
/// other files), and bytes spread over every other file with verification, fail with a named
/// error; through the CLI, `inspect --verify` and `generate` (which verifies by default) fail
/// with a one-line error naming the file.
#[test]
fn every_flipped_byte_is_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_bundle(tmp.path(), "good");
    let b = copy_bundle(&good, tmp.path(), "victim");
    let manifest = b.join(MANIFEST_FILE);
    let original = std::fs::read(&manifest).unwrap();
    for at in 0..original.len() {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&manifest, &bytes).unwrap();
        match load_manifest(&b, false) {
            Ok(_) => panic!("bundle.yaml with byte {at} flipped was accepted"),
            Err(
                BundleError::ManifestDigest { .. }
                | BundleError::SchemaVersion { .. }
                | BundleError::BadManifest { .. },
            ) => {}
            Err(e) => panic!("byte {at}: unexpected error {e:?}"),
        }
    }
    std::fs::write(&manifest, &original).unwrap();

    for name in ["gpt.onnx", "gpt.weights", "vq.onnx", "vq.weights"] {
        let file = b.join(name);
        let original = std::fs::read(&file).unwrap();
        let n = original.len();
        for at in [0, 1, n / 3, n / 2, 2 * n / 3, n - 2, n - 1] {
            flip(&file, at);
            let e = refused(&b, true, &[name]);
            assert!(
                matches!(e, BundleError::HashMismatch { .. }),
                "{name} byte {at}: {e:?}"
            );
            std::fs::write(&file, &original).unwrap();
        }
    }

    let out = tmp.path().join("out");
    let (bs, os) = (b.display().to_string(), out.display().to_string());
    for name in [
        MANIFEST_FILE,
        "gpt.onnx",
        "gpt.weights",
        "vq.onnx",
        "vq.weights",
    ] {
        let file = b.join(name);
        let original = std::fs::read(&file).unwrap();
        flip(&file, original.len() / 2);
        for args in [
            vec!["inspect", "--bundle", &bs, "--verify"],
            vec![
                "generate", "--bundle", &bs, "--out", &os, "--labels", "3", "--top-k", "1",
            ],
        ] {
            let o = Command::new(LLAMAGEN)
                .args(&args)
                .env_remove("LLAMAGEN_LOG")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{name} flipped: {args:?} succeeded");
            assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
            let line = stderr.trim();
            assert!(
                line.starts_with("error:") && line.lines().count() == 1 && line.contains(name),
                "{name} flipped, {args:?}: {stderr}"
            );
        }
        assert!(!out.exists(), "a refused bundle wrote images");
        std::fs::write(&file, &original).unwrap();
    }
}

/// Item "Cross-checked manifests": values that size allocations or index tables are checked
/// against each other, the limits and the graphs before anything is allocated.
#[test]
fn manifest_values_are_cross_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_bundle(tmp.path(), "good");
    type Edit = fn(&mut Manifest);
    let cases: &[(&str, Edit, &[&str])] = &[
        // CUDA panicked on chunks(0).
        (
            "tokens-per-image-0",
            |m| m.generation.tokens_per_image = 0,
            &["generation.tokens_per_image", "expected 16, got 0"],
        ),
        (
            "block-size-0",
            |m| {
                m.gpt.as_mut().unwrap().block_size = 0;
                m.generation.tokens_per_image = 0;
            },
            &["gpt.block_size"],
        ),
        // rotary.rs panicked on a cache shorter than the tokens.
        (
            "max-len-short",
            |m| m.gpt.as_mut().unwrap().max_len = 10,
            &["gpt.max_len", "got 10"],
        ),
        // kv_cache.rs aborted on a capacity overflow.
        (
            "max-len-huge",
            |m| m.gpt.as_mut().unwrap().max_len = usize::MAX / 4,
            &["gpt.max_len"],
        ),
        // The class table has 11 rows: class 500 was an out-of-bounds device read.
        (
            "num-classes-beyond-rows",
            |m| {
                m.gpt.as_mut().unwrap().num_classes = 1000;
                m.gpt.as_mut().unwrap().class_rows = 1001;
                m.generation.null_class = 1000;
            },
            &["embeddings", "1513", "523"],
        ),
        (
            "class-token-offset",
            |m| m.generation.class_token_offset = 500,
            &["generation.class_token_offset", "expected 512, got 500"],
        ),
        (
            "null-class",
            |m| m.generation.null_class = 3,
            &["generation.null_class"],
        ),
        // manifest.rs summed file sizes unchecked.
        (
            "files-bytes-overflow",
            |m| {
                for e in m.files.values_mut() {
                    e.bytes = u64::MAX / 2;
                }
            },
            &["files.bytes"],
        ),
        // The CPU sampler fell back to argmax above 2^20 (CUDA errors).
        (
            "vocab-over-sampler-limit",
            |m| {
                m.gpt.as_mut().unwrap().vocab_size = (1 << 20) + 1;
                m.vq.codebook_size = (1 << 20) + 1;
                m.generation.class_token_offset = (1 << 20) + 1;
            },
            &["gpt.vocab_size", "1048577", "1048576"],
        ),
        (
            "n-head-0",
            |m| m.gpt.as_mut().unwrap().n_head = 0,
            &["gpt.n_head"],
        ),
        (
            "ch-mult-65",
            |m| m.vq.ch_mult = vec![1; 65],
            &["vq.ch_mult", "65"],
        ),
        (
            "image-size",
            |m| {
                m.vq.image_size = 16;
                m.generation.image_size = 16;
            },
            &["vq.grid"],
        ),
        (
            "graph-io-record",
            |m| {
                let g = m.graphs.get_mut(&GraphRole::GptStep).unwrap();
                g.inputs.pop();
            },
            &["graphs.gpt_step.inputs"],
        ),
    ];
    for (name, f, needles) in cases {
        let b = copy_bundle(&good, tmp.path(), name);
        edit(&b, f);
        let e = refused(&b, false, needles);
        assert!(
            matches!(
                e,
                BundleError::Inconsistent { .. } | BundleError::OverLimit { .. }
            ),
            "{name}: {e:?}"
        );
    }

    // The graph declaring another cache length than the manifest (both consistent otherwise).
    let b = copy_bundle(&good, tmp.path(), "graph-cache-len");
    edit_onnx(&b, "gpt.onnx", |model| {
        let g = model.graph.as_mut().unwrap();
        let v = g.input.iter_mut().find(|v| v.name == "past_key.1").unwrap();
        let shape = v
            .r#type
            .as_mut()
            .and_then(|t| t.tensor_type.as_mut())
            .and_then(|t| t.shape.as_mut())
            .unwrap();
        shape.dim[2].value = Some(llamagen_bundle::onnx_proto::DimensionValue::DimValue(
            1 << 40,
        ));
    });
    refused(&b, false, &["past_key.1"]);

    // External data whose offset + length overflows or runs past the weights file.
    for (name, offset) in [
        ("ext-overflow", u64::MAX.to_string()),
        ("ext-past-end", "1000000000".into()),
    ] {
        let b = copy_bundle(&good, tmp.path(), name);
        edit_onnx(&b, "gpt.onnx", |model| {
            let g = model.graph.as_mut().unwrap();
            let t = g
                .initializer
                .iter_mut()
                .find(|t| !t.external_data.is_empty())
                .unwrap();
            t.external_data.retain(|e| e.key != "offset");
            t.external_data.push(StringStringEntryProto {
                key: "offset".into(),
                value: offset.clone(),
            });
        });
        refused(&b, false, &["lie outside gpt.weights"]);
    }
}

/// Item "time of check / time of use": a file swapped (same bytes, new inode) or rewritten in
/// place after `load_manifest` verified it is refused by every later open.
#[test]
fn files_changed_after_verification_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_bundle(tmp.path(), "good");

    let b = copy_bundle(&good, tmp.path(), "swapped");
    let m = load_manifest(&b, true).unwrap();
    let weights = b.join("gpt.weights");
    let staged = b.join("gpt.weights.new");
    std::fs::copy(&weights, &staged).unwrap();
    std::fs::rename(&staged, &weights).unwrap();
    let r = Initializers::open(&b, &m, &m.graphs[&GraphRole::GptStep]);
    assert!(
        matches!(r, Err(BundleError::FileChanged { .. })),
        "{:?}",
        r.err()
    );

    let b = copy_bundle(&good, tmp.path(), "rewritten");
    let m = load_manifest(&b, true).unwrap();
    let onnx = b.join("vq.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&onnx, &bytes).unwrap();
    let r = OpenedFile::open(&b, &m, &b.join(MANIFEST_FILE), "vq.onnx");
    assert!(
        matches!(r, Err(BundleError::FileChanged { .. })),
        "{:?}",
        r.err()
    );

    // A file opened before the swap notices it too (what the ONNX Runtime backend checks
    // around session creation, which opens by path).
    let b = copy_bundle(&good, tmp.path(), "late");
    let m = load_manifest(&b, true).unwrap();
    let opened = OpenedFile::open(&b, &m, &b.join(MANIFEST_FILE), "gpt.onnx").unwrap();
    opened.check_unchanged().unwrap();
    let staged = b.join("gpt.onnx.new");
    std::fs::copy(b.join("gpt.onnx"), &staged).unwrap();
    std::fs::rename(&staged, b.join("gpt.onnx")).unwrap();
    assert!(matches!(
        opened.check_unchanged(),
        Err(BundleError::FileChanged { .. })
    ));
}
