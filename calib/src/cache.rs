//! Scale files: our JSON record of per-tensor scales and TensorRT's calibration cache.
//!
//! TensorRT calibration cache (the text `IInt8Calibrator::writeCalibrationCache` receives, and
//! what `trtexec --calib=<file>` and ONNX Runtime's TensorRT EP, with its native calibration
//! table option, read):
//!
//! ```text
//! TRT-8601-EntropyCalibration2
//! input_ids: 3c010204
//! layers.0.attn.qkv: 3d2b8f6a
//! ```
//!
//! Line 1 is the header `TRT-<version>-<algorithm>`. TensorRT compares it with its own
//! version and calibrator (a public report says a `TRT-101401-...` cache from 10.14 is
//! rejected by other versions), so the caller supplies it; 8.6.1 writes `TRT-8601-...`. Then one line per tensor, `name: hex`, where hex
//! is the IEEE-754 bit pattern of the f32 *scale* (= dynamic range / 127) read as a
//! big-endian 32-bit integer: 1.0 -> `3f800000`, 1/128 -> `3c000000`.
//!
//! What was verified, against public sources found with the code search (no TensorRT
//! binary was run):
//! - ONNX Runtime's TensorRT EP (`ReadDynamicRange` in the TensorRT execution provider)
//!   documents the format as "tensor name : scale in 32-bit single precision IEEE754
//!   format", example `TRT-7103-EntropyCalibration2` / `data_0: 4000889d`; it requires the
//!   first line to contain `TRT-`, splits each line at the first `:`, parses the rest with
//!   `strtoul(.., 16)`, reinterprets the bits as f32 and multiplies by 127 to get the
//!   dynamic range. So the value is the scale, not the range (the doc's example hex,
//!   2.008338, is the same number its flatbuffer-table example gives as a max |x|; the
//!   code, multiplying by 127, is what counts).
//! - Magnitudes agree: an input in [-1, 1] has scale 1/127 = `3c010204`, and a TAO facenet
//!   cache quoted in a public repository has `input_1: 3c010a14` (= 1.00025 / 127).
//! - NVIDIA TAO's exporter writes `hex(struct.unpack("i", struct.pack("f", amax / 127)))`
//!   without the `0x`, i.e. the same bit pattern, one `name: hex` line per tensor after
//!   `TRT-<version>-EntropyCalibration2`.
//! - A cache TensorRT 8.4 wrote (quoted in a public write-up) has lines like
//!   `input: 3caa54fc` and `(Unnamed Layer* 64) [Shuffle]_output: 0`: names may contain
//!   spaces and brackets, and TensorRT itself does not zero-pad (0.0 is written `0`).
//!   (Names from TF-style graphs, `input_tensor:0`, would also contain colons; not seen in
//!   a verified cache.)
//!
//! Choices here: the writer always emits 8 lowercase hex digits (leading zeros only matter
//! for 0 and scales below 2^-95; `strtoul` accepts them), sorted by name, one `\n` per
//! line. It rejects names with `:` (ONNX Runtime would cut the name at the first colon),
//! line breaks or surrounding whitespace, and scales that are negative or not finite. The
//! reader splits each line at its *last* `:`, so colon names read back whole, and accepts
//! 1 to 8 hex digits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::CalibError;

/// A parsed TensorRT calibration cache.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRtCache {
    /// First line, e.g. `TRT-8601-EntropyCalibration2`.
    pub header: String,
    /// Tensor name -> int8 scale (dynamic range / 127).
    pub scales: BTreeMap<String, f32>,
}

/// The 8-digit lowercase hex of the scale's IEEE-754 bits, big-endian (1.0 -> `3f800000`).
pub fn scale_to_hex(scale: f32) -> String {
    format!("{:08x}", scale.to_bits())
}

/// Inverse of [`scale_to_hex`], also accepting TensorRT's unpadded form (`0`): 1 to 8 hex
/// digits, either case. `None` for anything else.
pub fn hex_to_scale(hex: &str) -> Option<f32> {
    let ok = (1..=8).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u32::from_str_radix(hex, 16).ok().map(f32::from_bits))
        .flatten()
}

/// The cache text: header line, then `name: hex` per tensor in name order.
pub fn format_tensorrt_cache(
    header: &str,
    scales: &BTreeMap<String, f32>,
) -> Result<String, CalibError> {
    if !header.starts_with("TRT-") || header.contains(['\n', '\r']) {
        return Err(CalibError::InvalidScale {
            tensor: "<header>".into(),
            value: format!("{header:?}"),
            reason: "the header must be one line starting with TRT-, e.g. \
                     TRT-8601-EntropyCalibration2 (TensorRT's version and calibrator)"
                .into(),
        });
    }
    check_scales(scales, true)?;
    let mut text = String::with_capacity(header.len() + 1 + scales.len() * 48);
    text.push_str(header);
    text.push('\n');
    for (name, &scale) in scales {
        text.push_str(name);
        text.push_str(": ");
        text.push_str(&scale_to_hex(scale));
        text.push('\n');
    }
    Ok(text)
}

/// Writes [`format_tensorrt_cache`] to `path`.
pub fn write_tensorrt_cache(
    path: impl AsRef<Path>,
    header: &str,
    scales: &BTreeMap<String, f32>,
) -> Result<(), CalibError> {
    let path = path.as_ref();
    let text = format_tensorrt_cache(header, scales)?;
    std::fs::write(path, text).map_err(|e| CalibError::io("write", path, e))?;
    tracing::debug!(path = %path.display(), tensors = scales.len(), "wrote TensorRT calibration cache");
    Ok(())
}

/// Reads a TensorRT calibration cache (ours or TensorRT's own).
pub fn read_tensorrt_cache(path: impl AsRef<Path>) -> Result<TensorRtCache, CalibError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| CalibError::io("read", path, e))?;
    parse_tensorrt_cache(&text, path)
}

/// Parses cache text; `path` only names the source in errors.
pub fn parse_tensorrt_cache(text: &str, path: &Path) -> Result<TensorRtCache, CalibError> {
    let err = |line: usize, reason: String| CalibError::CacheFormat {
        path: PathBuf::from(path),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    let header = match lines.next() {
        Some((_, h)) if h.trim_end().starts_with("TRT-") => h.trim_end().to_string(),
        Some((_, h)) => {
            return Err(err(
                1,
                format!("expected a TRT-<version>-<algorithm> header, found {h:?}"),
            ))
        }
        None => return Err(err(1, "empty file: expected a TRT-... header".into())),
    };
    let mut scales = BTreeMap::new();
    for (k, line) in lines {
        let line_no = k + 1;
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let Some((name, hex)) = line.rsplit_once(':') else {
            return Err(err(
                line_no,
                format!("expected `name: hex`, found {line:?}"),
            ));
        };
        let Some(scale) = hex_to_scale(hex.trim()) else {
            return Err(err(
                line_no,
                format!("expected 1 to 8 hex digits after the last ':', found {hex:?}"),
            ));
        };
        if scales.insert(name.to_string(), scale).is_some() {
            return Err(err(line_no, format!("tensor {name:?} appears twice")));
        }
    }
    Ok(TensorRtCache { header, scales })
}

/// Our scales record: `{ "name": scale, ... }`, sorted by name, pretty-printed, with a
/// final newline. Every f32 is written in its shortest round-tripping decimal form, so
/// [`read_scales_json`] gives back the same bits. Same checks as the TensorRT cache, except
/// that names may contain ':'.
pub fn scales_json(scales: &BTreeMap<String, f32>) -> Result<String, CalibError> {
    check_scales(scales, false)?;
    // A map of strings to finite floats always serializes; keep the error typed anyway.
    let mut text = serde_json::to_string_pretty(scales).map_err(|e| CalibError::InvalidScale {
        tensor: "<all>".into(),
        value: format!("{} scales", scales.len()),
        reason: e.to_string(),
    })?;
    text.push('\n');
    Ok(text)
}

/// Writes [`scales_json`] to `path`.
pub fn write_scales_json(
    path: impl AsRef<Path>,
    scales: &BTreeMap<String, f32>,
) -> Result<(), CalibError> {
    let path = path.as_ref();
    let text = scales_json(scales)?;
    std::fs::write(path, text).map_err(|e| CalibError::io("write", path, e))?;
    tracing::debug!(path = %path.display(), tensors = scales.len(), "wrote scales JSON");
    Ok(())
}

/// Reads a file written by [`write_scales_json`].
pub fn read_scales_json(path: impl AsRef<Path>) -> Result<BTreeMap<String, f32>, CalibError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| CalibError::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|source| CalibError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Scales must be finite and >= 0; names non-empty, one line, no surrounding whitespace,
/// and (for the TensorRT cache) no ':'.
fn check_scales(scales: &BTreeMap<String, f32>, trt: bool) -> Result<(), CalibError> {
    for (name, &scale) in scales {
        let invalid = |reason: &str| CalibError::InvalidScale {
            tensor: name.clone(),
            value: scale.to_string(),
            reason: reason.to_string(),
        };
        if name.is_empty() || name.trim() != name || name.contains(['\n', '\r']) {
            return Err(invalid(
                "tensor names must be non-empty, one line, without surrounding whitespace",
            ));
        }
        if trt && name.contains(':') {
            return Err(invalid(
                "a ':' in a tensor name is misread by ONNX Runtime's TensorRT EP, which \
                 splits cache lines at the first ':'",
            ));
        }
        if !(scale.is_finite() && scale.is_sign_positive()) {
            return Err(invalid(
                "a scale must be a finite number >= 0 (and not -0.0)",
            ));
        }
    }
    Ok(())
}
