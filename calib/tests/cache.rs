//! TensorRT calibration cache and scales JSON: encoding, exact text, round trips, errors.
//!
//! Tolerance level: exact. Scales are compared by their f32 bit patterns and files as text (one
//! decimal reading of a scale is checked to its printed digits, a one-off level).

use std::collections::BTreeMap;
use std::path::Path;

use llamagen_calib::cache::{
    format_tensorrt_cache, hex_to_scale, parse_tensorrt_cache, scale_to_hex,
};
use llamagen_calib::{
    read_scales_json, read_tensorrt_cache, write_scales_json, write_tensorrt_cache, CalibError,
};
use llamagen_test_support::Tolerance;

const HEADER: &str = "TRT-8601-EntropyCalibration2";

fn scales(pairs: &[(&str, f32)]) -> BTreeMap<String, f32> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

#[test]
fn hex_is_the_big_endian_ieee754_bit_pattern() {
    // 1.0 = sign 0, exponent 127 (0x7f), mantissa 0 -> 0 01111111 000.. = 0x3f800000.
    assert_eq!(scale_to_hex(1.0), "3f800000");
    // 2^-7 = 0.0078125: exponent 120 = 0x78 -> 0 01111000 000.. = 0x3c000000.
    assert_eq!(scale_to_hex(0.0078125), "3c000000");
    // 1/127 (inputs in [-1, 1]): 0x3c010204.
    assert_eq!(scale_to_hex(1.0 / 127.0), "3c010204");
    assert_eq!(scale_to_hex(0.0), "00000000");
    assert_eq!(hex_to_scale("3f800000"), Some(1.0));
    assert_eq!(hex_to_scale("3C000000"), Some(0.0078125));
    // TensorRT writes zero unpadded.
    assert_eq!(hex_to_scale("0"), Some(0.0));
    // 0x4000889d from ONNX Runtime's documented example: 2.0083382.
    assert_eq!(hex_to_scale("4000889d"), Some(f32::from_bits(0x4000_889d)));
    for bad in ["", "0x3f80", "3f8000000", "3f80 000", "xyz", "-1"] {
        assert_eq!(hex_to_scale(bad), None, "{bad:?}");
    }
}

#[test]
fn writes_the_exact_cache_text() {
    let s = scales(&[
        ("output", 1.0),
        ("input_ids", 0.0078125),
        ("layers.0.attn.qkv", 0.0),
    ]);
    let text = format_tensorrt_cache(HEADER, &s).unwrap();
    assert_eq!(
        text,
        "TRT-8601-EntropyCalibration2\n\
         input_ids: 3c000000\n\
         layers.0.attn.qkv: 00000000\n\
         output: 3f800000\n"
    );
}

#[test]
fn cache_round_trips_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.cache");
    let s = scales(&[
        ("a", 1.0 / 127.0),
        ("b", 3.4e-5),
        ("c", 123.456),
        ("d", f32::MIN_POSITIVE),
        ("e", f32::from_bits(1)), // smallest subnormal: 00000001
        ("f", 0.0),
    ]);
    write_tensorrt_cache(&path, HEADER, &s).unwrap();
    let back = read_tensorrt_cache(&path).unwrap();
    assert_eq!(back.header, HEADER);
    assert_eq!(back.scales.len(), s.len());
    for (k, v) in &s {
        assert_eq!(back.scales[k].to_bits(), v.to_bits(), "{k}");
    }
}

#[test]
fn reads_tensorrt_written_lines() {
    // Lines as a TensorRT 8.4 cache has them (unpadded zero, a name with spaces and
    // brackets), plus a TF-style name with a colon, trailing spaces and a final blank line.
    let text = "TRT-8401-EntropyCalibration2\n\
                input: 3caa54fc\n\
                (Unnamed Layer* 64) [Shuffle]_output: 0\n\
                input_tensor:0: 3c010a14  \n\
                \n";
    let cache = parse_tensorrt_cache(text, Path::new("trt.cache")).unwrap();
    assert_eq!(cache.header, "TRT-8401-EntropyCalibration2");
    let expected = [
        ("(Unnamed Layer* 64) [Shuffle]_output", 0u32),
        ("input", 0x3caa_54fc),
        ("input_tensor:0", 0x3c01_0a14),
    ];
    assert_eq!(cache.scales.len(), expected.len());
    for (name, bits) in expected {
        assert_eq!(cache.scales[name].to_bits(), bits, "{name}");
    }
    // 0x3caa54fc = 0.020792477: a dynamic range of 2.64 = 127 * scale, checked against the
    // decimal 2.640644 to 1e-5 (its rounding is < 5e-7; f32 rounding of the product ~2e-7).
    Tolerance::abs("decimal 2.640644 (1e-5 abs)", 1e-5).assert_scalar(
        "input dynamic range",
        cache.scales["input"] * 127.0,
        2.640_644,
    );
}

#[test]
fn reader_reports_the_line_at_fault() {
    let cases: [(&str, usize, &str); 5] = [
        ("", 1, "empty"),
        ("calibration\na: 3f800000\n", 1, "header"),
        ("TRT-8601-EntropyCalibration2\na 3f800000\n", 2, "name: hex"),
        (
            "TRT-8601-EntropyCalibration2\na: 3f800000\nb: 3f80zz00\n",
            3,
            "hex digits",
        ),
        (
            "TRT-8601-EntropyCalibration2\na: 0\na: 3f800000\n",
            3,
            "twice",
        ),
    ];
    for (text, want_line, want_reason) in cases {
        match parse_tensorrt_cache(text, Path::new("x.cache")) {
            Err(CalibError::CacheFormat { path, line, reason }) => {
                assert_eq!(path, Path::new("x.cache"));
                assert_eq!(line, want_line, "{text:?}: {reason}");
                assert!(reason.contains(want_reason), "{text:?}: {reason}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn writer_rejects_what_readers_would_misread() {
    let ok = scales(&[("a", 1.0)]);
    for header in ["", "EntropyCalibration2", "TRT-8601\nx"] {
        assert!(
            matches!(
                format_tensorrt_cache(header, &ok),
                Err(CalibError::InvalidScale { .. })
            ),
            "{header:?}"
        );
    }
    for (name, value) in [
        ("input_tensor:0", 1.0), // ONNX Runtime cuts names at the first ':'
        ("", 1.0),
        (" a", 1.0),
        ("a\nb", 1.0),
        ("a", f32::NAN),
        ("a", f32::INFINITY),
        ("a", -0.5),
        ("a", -0.0),
    ] {
        let err = format_tensorrt_cache(HEADER, &scales(&[(name, value)])).unwrap_err();
        assert!(
            matches!(&err, CalibError::InvalidScale { tensor, .. } if tensor == name),
            "{name:?} = {value}: {err}"
        );
    }
}

#[test]
fn scales_json_is_sorted_and_round_trips_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scales.json");
    let small = scales(&[("z", 2.0), ("a", 0.5)]);
    write_scales_json(&path, &small).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "{\n  \"a\": 0.5,\n  \"z\": 2.0\n}\n");

    // Many awkward values: each f32 must come back with the same bits.
    let mut s = BTreeMap::new();
    let mut bits = 0x3c01_0204u32;
    for k in 0..2000 {
        bits = bits.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        let v = f32::from_bits(bits & 0x7fff_ffff);
        if v.is_finite() {
            s.insert(format!("t{k:04}"), v);
        }
    }
    s.insert("one_over_127".into(), 1.0 / 127.0);
    s.insert("zero".into(), 0.0);
    s.insert("subnormal".into(), f32::from_bits(1));
    write_scales_json(&path, &s).unwrap();
    let back = read_scales_json(&path).unwrap();
    assert_eq!(back.len(), s.len());
    for (k, v) in &s {
        assert_eq!(back[k].to_bits(), v.to_bits(), "{k}: {v:e}");
    }

    assert!(matches!(
        write_scales_json(&path, &scales(&[("a", f32::NAN)])),
        Err(CalibError::InvalidScale { .. })
    ));
    std::fs::write(&path, "[1, 2]").unwrap();
    assert!(matches!(
        read_scales_json(&path),
        Err(CalibError::Json { .. })
    ));
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        read_scales_json(&missing),
        Err(CalibError::Io { op: "read", .. })
    ));
}
