//! Element types that can appear in a checkpoint and their little-endian decoding to f32.
//!
//! Contract: every [`DType`] has a fixed byte size; [`DType::F32`], [`DType::F16`],
//! [`DType::BF16`] and [`DType::F64`] convert to f32 (F16/BF16 exactly, F64 rounded to
//! nearest); the integer and bool types are representable (so such buffers can be listed and
//! skipped) but do not convert.

use std::fmt;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

/// Decodes one element from exactly `size_in_bytes()` little-endian bytes.
pub(crate) type Decoder = fn(&[u8]) -> f32;

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 | DType::Bool => 1,
        }
    }

    /// Safetensors-style name ("F32", "BF16", "BOOL", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// True for the types [`crate::checkpoint::TensorView::to_f32`] accepts.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// The torch legacy storage class name (`torch.<name>`) for this type.
    pub(crate) fn torch_storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    /// Inverse of [`DType::torch_storage_name`]; `UntypedStorage` is raw bytes.
    pub(crate) fn from_torch_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// Element decoder for float types, `None` for the others.
    pub(crate) fn decoder(self) -> Option<Decoder> {
        match self {
            DType::F32 => Some(decode_f32),
            DType::F16 => Some(decode_f16),
            DType::BF16 => Some(decode_bf16),
            DType::F64 => Some(decode_f64),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// The decoders are only ever called on `chunks_exact(size_in_bytes())` chunks; a wrong-sized
// chunk decodes to NaN rather than panicking.

fn decode_f32(b: &[u8]) -> f32 {
    b.try_into().map_or(f32::NAN, f32::from_le_bytes)
}

fn decode_f16(b: &[u8]) -> f32 {
    b.try_into().map_or(f32::NAN, |a| {
        half::f16::from_bits(u16::from_le_bytes(a)).to_f32()
    })
}

fn decode_bf16(b: &[u8]) -> f32 {
    b.try_into().map_or(f32::NAN, |a| {
        half::bf16::from_bits(u16::from_le_bytes(a)).to_f32()
    })
}

fn decode_f64(b: &[u8]) -> f32 {
    b.try_into()
        .map_or(f32::NAN, |a| f64::from_le_bytes(a) as f32)
}

/// Converts a contiguous little-endian byte slice to f32, appending to `out`.
pub(crate) fn extend_f32(decode: Decoder, size: usize, bytes: &[u8], out: &mut Vec<f32>) {
    if size == 0 {
        return;
    }
    out.extend(bytes.chunks_exact(size).map(decode));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names_round_trip() {
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I64,
            DType::I32,
            DType::U8,
            DType::Bool,
        ] {
            assert!(d.size_in_bytes() > 0);
            if d != DType::U8 {
                assert_eq!(
                    DType::from_torch_storage_name(d.torch_storage_name()),
                    Some(d)
                );
            }
            assert_eq!(d.decoder().is_some(), d.is_float());
        }
        assert_eq!(
            DType::from_torch_storage_name("UntypedStorage"),
            Some(DType::U8)
        );
        assert_eq!(DType::from_torch_storage_name("CharStorage"), None);
    }

    #[test]
    fn decodes_half_types_exactly() {
        let h = half::f16::from_f32(-1.5).to_bits().to_le_bytes();
        let b = half::bf16::from_f32(3.140625).to_bits().to_le_bytes();
        assert_eq!(decode_f16(&h), -1.5);
        assert_eq!(decode_bf16(&b), 3.140625);
        assert_eq!(decode_f64(&0.25f64.to_le_bytes()), 0.25);
        assert!(decode_f32(&[0, 0]).is_nan());
        let mut out = Vec::new();
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        extend_f32(decode_f32, 4, &bytes, &mut out);
        assert_eq!(out, vec![1.0, 2.0, 3.0]);
    }
}
