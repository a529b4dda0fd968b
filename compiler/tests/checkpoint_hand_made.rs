//! Integration tests of `llamagen_compiler::checkpoint` on hand-made zip checkpoints: a
//! pickle calling `os.system`, strided (transposed / offset) views, truncated and broken
//! archives, unknown formats and files without a state dict.
//!
//! Tolerance level: exact (values are compared bit for bit).

use std::io::Write;
use std::path::Path;

use llamagen_compiler::checkpoint::{Checkpoint, CheckpointError};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// BINUNICODE.
fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(x.len() as u32).to_le_bytes());
    v.extend_from_slice(x.as_bytes());
    v
}

fn g(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// Writes a zip with `entries` under folder `dir/`, stored (uncompressed).
fn write_zip(path: &Path, dir: &str, entries: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(format!("{dir}/{name}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn pickle_calling_os_system_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.pt");
    // GLOBAL 'os system', 'touch /tmp/pwned', TUPLE1, REDUCE, STOP
    let pkl = [
        &b"\x80\x02"[..],
        &g("os", "system"),
        &s("touch /tmp/pwned"),
        b"\x85R.",
    ]
    .concat();
    write_zip(
        &path,
        "archive",
        &[("data.pkl", &pkl), ("byteorder", b"little")],
    );
    let err = Checkpoint::open(&path).unwrap_err();
    match &err {
        CheckpointError::ForbiddenGlobal {
            path: p,
            module,
            name,
        } => {
            assert_eq!(
                (p.as_path(), module.as_str(), name.as_str()),
                (path.as_path(), "os", "system")
            )
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("os.system") && msg.contains("evil.pt"),
        "{msg}"
    );
}

/// A hand-written pickle: {"model": OrderedDict(w = 3x2 transposed view of a 2x3 storage,
/// row = row 1 of that storage as a [3] view at offset 3)}.
fn strided_pickle() -> Vec<u8> {
    let rebuild = |offset: u8, size: &[u8], stride: &[u8]| -> Vec<u8> {
        [
            &g("torch._utils", "_rebuild_tensor_v2")[..],
            b"((",
            &s("storage"),
            &g("torch", "FloatStorage"),
            &s("0"),
            &s("cpu"),
            b"K\x06tQK",
            &[offset],
            size,
            stride,
            b"\x89",
            &g("collections", "OrderedDict"),
            b")RtR",
        ]
        .concat()
    };
    [
        &b"\x80\x02}"[..],
        &s("model"),
        &g("collections", "OrderedDict"),
        b")R(",
        &s("w"),
        &rebuild(0, b"K\x03K\x02\x86", b"K\x01K\x03\x86"),
        &s("row"),
        &rebuild(3, b"K\x03\x85", b"K\x01\x85"),
        b"us.",
    ]
    .concat()
}

#[test]
fn hand_written_strided_tensors_read_transposed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strided.pt");
    let storage = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // [[1,2,3],[4,5,6]]
    write_zip(
        &path,
        "weird-name",
        &[("data.pkl", &strided_pickle()), ("data/0", &storage)],
    );
    let ck = Checkpoint::open(&path).unwrap();
    let w = ck.get("w").unwrap();
    assert_eq!(w.strides(), &[1, 3]);
    assert!(!w.is_contiguous() && w.contiguous_bytes().is_none());
    assert_eq!(
        ck.get_f32("w", &[3, 2]).unwrap(),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
    assert_eq!(ck.get_f32("row", &[3]).unwrap(), vec![4.0, 5.0, 6.0]);
}

#[test]
fn truncated_and_broken_files_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.pt");
    let storage = f32_bytes(&[1.0; 6]);
    let pkl = strided_pickle();
    // Truncated pickle inside an intact zip.
    write_zip(
        &path,
        "archive",
        &[("data.pkl", &pkl[..pkl.len() / 2]), ("data/0", &storage)],
    );
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::Malformed { .. })
    ));
    // Storage entry shorter than the pickle declares.
    write_zip(
        &path,
        "archive",
        &[("data.pkl", &pkl), ("data/0", &storage[..20])],
    );
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::Malformed { .. })
    ));
    // Missing storage entry.
    write_zip(&path, "archive", &[("data.pkl", &pkl)]);
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::Malformed { .. })
    ));
    // Big-endian byteorder.
    write_zip(
        &path,
        "archive",
        &[
            ("data.pkl", &pkl),
            ("byteorder", b"big"),
            ("data/0", &storage),
        ],
    );
    match Checkpoint::open(&path) {
        Err(CheckpointError::Malformed { reason, .. }) => {
            assert!(reason.contains("big"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A zip that is not a torch checkpoint.
    write_zip(&path, "archive", &[("readme.txt", b"hi")]);
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::Malformed { .. })
    ));
}

#[test]
fn unknown_format_and_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.pt");
    std::fs::write(&path, b"this is not a checkpoint at all").unwrap();
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::UnknownFormat { .. })
    ));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        Checkpoint::open(&path),
        Err(CheckpointError::UnknownFormat { .. })
    ));
    let missing = dir.path().join("missing.pt");
    match Checkpoint::open(&missing) {
        Err(CheckpointError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_state_dict_lists_top_level_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.pt");
    let pkl = [
        &b"\x80\x02}("[..],
        &s("steps"),
        b"K\x05",
        &s("lr"),
        b"G\x3f\x50\x62\x4d\xd2\xf1\xa9\xfcu.",
    ]
    .concat();
    write_zip(&path, "archive", &[("data.pkl", &pkl)]);
    match Checkpoint::open(&path) {
        Err(CheckpointError::NoStateDict { keys_found, .. }) => {
            assert_eq!(keys_found, vec!["steps", "lr"])
        }
        other => panic!("{other:?}"),
    }
}
