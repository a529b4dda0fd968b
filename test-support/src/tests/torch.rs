//! Unit tests of `torch.rs` (the round trip through the checkpoint reader is in
//! `compiler/tests/checkpoint.rs`).

use super::*;

#[test]
fn ints_use_the_smallest_opcode() {
    let cases: [(u64, &[u8]); 6] = [
        (0, &[b'K', 0]),
        (255, &[b'K', 255]),
        (256, &[b'M', 0, 1]),
        (65536, &[b'J', 0, 0, 1, 0]),
        // LONG1 with a sign byte: 2^31 has its top bit set in four bytes.
        (1 << 31, &[0x8a, 5, 0, 0, 0, 0x80, 0]),
        ((1 << 32) + 7, &[0x8a, 5, 7, 0, 0, 0, 1]),
    ];
    for (v, want) in cases {
        let mut w = PickleWriter::default();
        w.int(v);
        assert_eq!(w.buf, want, "{v}");
    }
}

#[test]
fn archive_folder_follows_the_stem() {
    assert_eq!(archive_folder(Path::new("/x/gpt.pt")), "gpt");
    assert_eq!(archive_folder(Path::new("/x/c2i B 256.pt")), "archive");
}

#[test]
fn byte_counts_must_match_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    let bad = vec![("w".to_string(), DType::F32, vec![2, 2], vec![0u8; 15])];
    let e = write_torch_checkpoint(&dir.path().join("bad.pt"), None, &bad).unwrap_err();
    assert!(
        e.to_string().contains("15 bytes given for shape [2, 2]"),
        "{e}"
    );
}
