//! Image output (torchvision save_image conversion, make_grid layout, PNG round trip) and the
//! `.npy` reader/writer (official goldens, round trips, hand-made headers, rejections).
//!
//! Tolerance level: exact. Pixel bytes, grid layout and npy data are compared bit for bit.

use std::path::{Path, PathBuf};

use llamagen_runtime::image::{make_grid, to_u8_pixels, write_png, ImageError};
use llamagen_runtime::npy::{
    read_npy, read_npy_f32, read_npy_i64, write_npy_f32, write_npy_i64, NpyData, NpyError,
};

/// The official tiny c2i fixtures (`tests/golden/tiny-c2i`).
fn tiny_dir() -> PathBuf {
    llamagen_test_support::golden_dir().join("tiny-c2i")
}

fn read_png(path: &Path) -> (Vec<u8>, u32, u32, png::ColorType, png::BitDepth) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (
        buf,
        info.width,
        info.height,
        info.color_type,
        info.bit_depth,
    )
}

// ---------------------------------------------------------------- image

#[test]
fn pixels_follow_torchvision_save_image() {
    // Expected bytes computed with numpy float32: clip(-1, 1), (x + 1) / 2, * 255 + 0.5,
    // clip(0, 255), astype(uint8).
    let xs = [
        (0.5f32, 191u8),
        (-0.5, 64),
        (0.999, 255),
        (0.996, 254),
        (-0.2, 102),
        (0.0, 128),
        (1.5, 255),
        (-7.0, 0),
        (0.25, 159),
        (0.1, 140),
        (-0.1, 115),
        (-1.0, 0),
        (1.0, 255),
    ];
    let chw: Vec<f32> = xs.iter().map(|x| x.0).collect();
    let out = to_u8_pixels(&chw, 1, 1, xs.len());
    for (i, (x, want)) in xs.iter().enumerate() {
        assert_eq!(out[i * 3..i * 3 + 3], [*want; 3], "x = {x}");
    }
}

#[test]
fn pixels_are_interleaved_hwc() {
    // [3, 2, 2]: R plane, G plane, B plane.
    let chw = [
        -1.0f32, 1.0, 0.0, 0.5, // R
        0.5, -0.5, -1.0, 1.0, // G
        0.0, 0.0, 1.0, -1.0, // B
    ];
    let out = to_u8_pixels(&chw, 3, 2, 2);
    assert_eq!(
        out,
        vec![0, 191, 128, 255, 64, 128, 128, 0, 255, 191, 255, 0]
    );
}

#[test]
fn grid_layout_matches_torchvision_make_grid() {
    // 5 images of 2x3, nrow (images per row) 2, padding 1 -> 2 columns, 3 rows,
    // height 3 * (2 + 1) + 1 = 10, width 2 * (3 + 1) + 1 = 9.
    let (h, w) = (2, 3);
    let images: Vec<Vec<u8>> = (0..5u8)
        .map(|k| {
            (0..h * w * 3)
                .map(|i| 10 * (k + 1) + (i % 3) as u8)
                .collect()
        })
        .collect();
    let (grid, gh, gw) = make_grid(&images, h, w, 2, 1);
    assert_eq!((gh, gw), (10, 9));
    assert_eq!(grid.len(), gh * gw * 3);
    let px = |y: usize, x: usize| &grid[(y * gw + x) * 3..(y * gw + x) * 3 + 3];
    for y in 0..gh {
        for x in 0..gw {
            let (cy, cx) = (y.checked_sub(1).map(|v| (v / 3, v % 3)), x.checked_sub(1));
            let inside = match (cy, cx) {
                (Some((row, oy)), Some(xx)) if oy < h && xx % 4 < w => {
                    let k = row * 2 + xx / 4;
                    (k < 5).then_some(k)
                }
                _ => None,
            };
            match inside {
                Some(k) => {
                    let base = 10 * (k as u8 + 1);
                    assert_eq!(px(y, x), [base, base + 1, base + 2], "pixel ({y}, {x})");
                }
                None => assert_eq!(px(y, x), [0, 0, 0], "padding at ({y}, {x})"),
            }
        }
    }
    // Image 4 starts at row 2 * 3 + 1 = 7, column 1; the cell right of it is empty.
    assert_eq!(px(7, 1), [50, 51, 52]);
    assert_eq!(px(7, 5), [0, 0, 0]);
}

#[test]
fn grid_of_official_sample_layout() {
    // sample_c2i.py: 8 labels, nrow=4, padding 2 -> 2 rows of 4.
    let (h, w) = (4, 4);
    let images = vec![vec![200u8; h * w * 3]; 8];
    let (grid, gh, gw) = make_grid(&images, h, w, 4, 2);
    assert_eq!((gh, gw), (2 * (h + 2) + 2, 4 * (w + 2) + 2));
    assert_eq!(grid.iter().filter(|&&b| b == 200).count(), 8 * h * w * 3);
    // nrow larger than the batch: one row of n.
    let (_, gh, gw) = make_grid(&images[..3], h, w, 8, 2);
    assert_eq!((gh, gw), (h + 4, 3 * (w + 2) + 2));
}

#[test]
fn single_image_grid_is_unpadded() {
    // torchvision returns a lone image as is.
    let img = vec![(0..12).collect::<Vec<u8>>()];
    assert_eq!(make_grid(&img, 2, 2, 4, 2), (img[0].clone(), 2, 2));
    assert_eq!(make_grid(&[], 2, 2, 4, 2), (vec![], 0, 0));
}

#[test]
fn png_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.png");
    let (w, h) = (5usize, 3usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
    write_png(&path, &rgb, w, h).unwrap();
    let (got, gw, gh, color, depth) = read_png(&path);
    assert_eq!((gw as usize, gh as usize), (w, h));
    assert_eq!(color, png::ColorType::Rgb);
    assert_eq!(depth, png::BitDepth::Eight);
    assert_eq!(got, rgb);
}

#[test]
fn png_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let err = write_png(&path, &[0; 10], 2, 2).unwrap_err();
    assert!(matches!(
        err,
        ImageError::Size {
            expected: 12,
            got: 10,
            ..
        }
    ));
    assert!(err.to_string().contains("bad.png"), "{err}");
    let missing = dir.path().join("no/such/dir/x.png");
    let err = write_png(&missing, &[0; 12], 2, 2).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }));
    assert!(err.to_string().contains("x.png"), "{err}");
}

#[test]
fn official_vq_images_to_png_grid() {
    let dir = tiny_dir();
    let (shape, data) = read_npy_f32(&dir.join("vq_decode.images.npy")).unwrap();
    assert_eq!(shape, vec![2, 3, 8, 8]);
    let per = 3 * 8 * 8;
    let images: Vec<Vec<u8>> = data
        .chunks_exact(per)
        .map(|c| to_u8_pixels(c, 3, 8, 8))
        .collect();
    let (grid, gh, gw) = make_grid(&images, 8, 8, 4, 2);
    assert_eq!((gh, gw), (12, 22));
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("grid.png");
    write_png(&path, &grid, gw, gh).unwrap();
    let (got, w, h, _, _) = read_png(&path);
    assert_eq!((w, h), (22, 12));
    assert_eq!(got, grid);
    // Second image's first pixel sits at (2, 12).
    assert_eq!(
        grid[(2 * gw + 12) * 3..(2 * gw + 12) * 3 + 3],
        images[1][..3]
    );
}

// ---------------------------------------------------------------- npy

#[test]
fn reads_official_golden_tokens_and_logits() {
    let dir = tiny_dir();
    let (shape, data) = read_npy(&dir.join("greedy_cfg4.tokens.npy")).unwrap();
    assert_eq!(shape, vec![2, 16]);
    let NpyData::I64(tokens) = data else {
        panic!("tokens are not int64");
    };
    assert_eq!(tokens[..4], [379, 284, 25, 406]);
    assert!(tokens.iter().all(|&t| (0..512).contains(&t)));

    let (shape, logits) = read_npy_f32(&dir.join("greedy_cfg4.logits.npy")).unwrap();
    assert_eq!(shape, vec![2, 16, 512]);
    assert_eq!(logits.len(), 2 * 16 * 512);
    assert_eq!(logits[0], -30.421_347);
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");

    let ints: Vec<i64> = (0..24).map(|i| i * 1_000_000_007 - 5).collect();
    write_npy_i64(&p, &[2, 3, 4], &ints).unwrap();
    assert_eq!(read_npy(&p).unwrap(), (vec![2, 3, 4], NpyData::I64(ints)));

    let floats = vec![
        0.0f32,
        -0.0,
        1.5,
        -3.25e-7,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
    ];
    write_npy_f32(&p, &[7], &floats).unwrap();
    let (shape, got) = read_npy_f32(&p).unwrap();
    assert_eq!(shape, vec![7]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&floats));

    write_npy_f32(&p, &[1, 1], &[f32::NAN]).unwrap();
    assert!(read_npy_f32(&p).unwrap().1[0].is_nan());

    write_npy_i64(&p, &[], &[42]).unwrap();
    assert_eq!(read_npy_i64(&p).unwrap(), (vec![], vec![42]));
    write_npy_f32(&p, &[0, 3], &[]).unwrap();
    assert_eq!(read_npy_f32(&p).unwrap(), (vec![0, 3], vec![]));
}

#[test]
fn written_header_is_64_byte_aligned_v1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    write_npy_i64(&p, &[2, 16], &[0; 32]).unwrap();
    let b = std::fs::read(&p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    assert_eq!(b[10 + hlen - 1], b'\n');
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 16), }"));
    assert_eq!(b.len(), 10 + hlen + 32 * 8);
}

#[test]
fn write_rejects_shape_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    let err = write_npy_f32(&p, &[2, 3], &[0.0; 5]).unwrap_err();
    assert!(matches!(
        err,
        NpyError::ShapeMismatch {
            expected: 6,
            got: 5,
            ..
        }
    ));
    assert!(err.to_string().contains("x.npy"));
}

/// A hand-made .npy file.
fn npy_bytes(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY".to_vec();
    b.push(major);
    b.push(0);
    let header = format!("{dict}\n");
    if major == 1 {
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn read_bytes(bytes: &[u8]) -> Result<(Vec<usize>, NpyData), NpyError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npy");
    std::fs::write(&p, bytes).unwrap();
    read_npy(&p)
}

#[test]
fn widens_i4_and_f2() {
    let data: Vec<u8> = [-2i32, 7, i32::MAX]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let b = npy_bytes(
        1,
        "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
        &data,
    );
    assert_eq!(
        read_bytes(&b).unwrap(),
        (vec![3], NpyData::I64(vec![-2, 7, i64::from(i32::MAX)]))
    );
    // f16 1.0 = 0x3c00, -2.0 = 0xc000.
    let b = npy_bytes(
        1,
        "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
        &[0x00, 0x3c, 0x00, 0xc0],
    );
    assert_eq!(
        read_bytes(&b).unwrap(),
        (vec![2], NpyData::F32(vec![1.0, -2.0]))
    );
}

#[test]
fn reads_version_2_and_other_key_orders() {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let b = npy_bytes(
        2,
        r#"{"shape": (1, 2), "fortran_order": False, "descr": "<f4"}"#,
        &data,
    );
    assert_eq!(
        read_bytes(&b).unwrap(),
        (vec![1, 2], NpyData::F32(vec![1.0, 2.0]))
    );
}

#[test]
fn rejects_fortran_big_endian_and_garbage() {
    let data = [0u8; 16];
    let b = npy_bytes(
        1,
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
        &data,
    );
    let err = read_bytes(&b).unwrap_err();
    assert!(matches!(err, NpyError::FortranOrder { .. }), "{err}");
    assert!(err.to_string().contains("fortran_order"), "{err}");

    let b = npy_bytes(
        1,
        "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }",
        &data,
    );
    let err = read_bytes(&b).unwrap_err();
    assert!(matches!(err, NpyError::BigEndian { .. }), "{err}");
    assert!(err.to_string().contains("big-endian"), "{err}");

    let b = npy_bytes(
        1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
        &data,
    );
    assert!(matches!(
        read_bytes(&b).unwrap_err(),
        NpyError::UnsupportedDtype { .. }
    ));

    // Data shorter than the shape says.
    let b = npy_bytes(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }",
        &data,
    );
    assert!(matches!(
        read_bytes(&b).unwrap_err(),
        NpyError::DataSize {
            expected: 20,
            got: 16,
            ..
        }
    ));

    let b = npy_bytes(1, "{'descr': '<f4', 'shape': (4,), }", &data);
    assert!(matches!(
        read_bytes(&b).unwrap_err(),
        NpyError::BadHeader { .. }
    ));
    let b = npy_bytes(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': [4], }",
        &data,
    );
    assert!(matches!(
        read_bytes(&b).unwrap_err(),
        NpyError::BadHeader { .. }
    ));

    assert!(matches!(
        read_bytes(b"PK\x03\x04 not numpy").unwrap_err(),
        NpyError::BadMagic { .. }
    ));
    let mut b = npy_bytes(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
        &data,
    );
    b[6] = 9;
    assert!(matches!(
        read_bytes(&b).unwrap_err(),
        NpyError::Version { major: 9, .. }
    ));

    let dir = tempfile::tempdir().unwrap();
    let err = read_npy(&dir.path().join("missing.npy")).unwrap_err();
    assert!(matches!(err, NpyError::Io { .. }));
    assert!(err.to_string().contains("missing.npy"));
}

#[test]
fn typed_readers_check_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    write_npy_i64(&p, &[1], &[3]).unwrap();
    assert!(matches!(
        read_npy_f32(&p).unwrap_err(),
        NpyError::WrongDtype {
            expected: "f32",
            got: "i64",
            ..
        }
    ));
}
