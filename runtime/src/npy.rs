//! Minimal NumPy `.npy` reader and writer (format versions 1.0, 2.0 and 3.0 read; 1.0, or 2.0
//! when the header needs it, written), enough to exchange goldens with the official PyTorch code.
//!
//! Supported element types: little-endian `<f4` (read as [`NpyData::F32`]), `<f2` (widened to
//! F32), `<i8` (read as [`NpyData::I64`]), `<i4` (widened to I64). C order only: Fortran-order
//! and big-endian files are rejected with a clear error. Shapes are `Vec<usize>`; `[]` is a
//! scalar (one element).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Errors from reading or writing `.npy` files; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a .npy file (bad magic or truncated preamble)")]
    BadMagic { path: PathBuf },
    #[error("{path}: unsupported .npy format version {major}.{minor}")]
    Version { path: PathBuf, major: u8, minor: u8 },
    #[error("{path}: malformed .npy header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("{path}: big-endian dtype '{descr}' is not supported (save a little-endian copy: arr.astype(arr.dtype.newbyteorder('<')))")]
    BigEndian { path: PathBuf, descr: String },
    #[error("{path}: fortran_order=True is not supported (save with np.ascontiguousarray)")]
    FortranOrder { path: PathBuf },
    #[error("{path}: unsupported dtype '{descr}' (expected <f4, <f2, <i8 or <i4)")]
    UnsupportedDtype { path: PathBuf, descr: String },
    #[error("{path}: shape {shape:?} needs {expected} data bytes, file has {got}")]
    DataSize {
        path: PathBuf,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("{path}: shape {shape:?} has {expected} elements, data has {got}")]
    ShapeMismatch {
        path: PathBuf,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("{path}: expected dtype {expected}, file holds {got}")]
    WrongDtype {
        path: PathBuf,
        expected: &'static str,
        got: &'static str,
    },
}

/// The data of a `.npy` file, in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"f32"` or `"i64"`.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "f32",
            NpyData::I64(_) => "i64",
        }
    }
}

fn shape_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

fn header_dict(descr: &str, shape: &[usize]) -> String {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}")
}

fn write_raw(
    path: &Path,
    descr: &str,
    shape: &[usize],
    len: usize,
    write_data: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<(), NpyError> {
    let expected = shape_numel(shape).unwrap_or(usize::MAX);
    if expected != len {
        return Err(NpyError::ShapeMismatch {
            path: path.to_path_buf(),
            shape: shape.to_vec(),
            expected,
            got: len,
        });
    }
    let dict = header_dict(descr, shape);
    // Pad with spaces so magic + version + length field + header (ending in '\n') is a multiple
    // of 64 bytes, as numpy does; use format 2.0 only when the header outgrows a u16 length.
    let build = |prefix: usize| {
        let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
        let mut h = dict.clone();
        h.extend(std::iter::repeat_n(' ', total - prefix - dict.len() - 1));
        h.push('\n');
        h
    };
    let mut pre = Vec::with_capacity(12);
    pre.extend_from_slice(MAGIC);
    let h1 = build(10);
    let header = if let Ok(hlen) = u16::try_from(h1.len()) {
        pre.extend_from_slice(&[1, 0]);
        pre.extend_from_slice(&hlen.to_le_bytes());
        h1
    } else {
        let h2 = build(12);
        let hlen = u32::try_from(h2.len()).map_err(|_| NpyError::BadHeader {
            path: path.to_path_buf(),
            reason: "header longer than 4 GiB".into(),
        })?;
        pre.extend_from_slice(&[2, 0]);
        pre.extend_from_slice(&hlen.to_le_bytes());
        h2
    };
    let io_err = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = crate::out_file::temp_beside(path).map_err(io_err)?;
    {
        let mut out = BufWriter::new(tmp.as_file());
        out.write_all(&pre).map_err(io_err)?;
        out.write_all(header.as_bytes()).map_err(io_err)?;
        write_data(&mut out).map_err(io_err)?;
        out.flush().map_err(io_err)?;
    }
    crate::out_file::persist(tmp, path).map_err(io_err)
}

/// Write `data` (C order) with `shape` as little-endian int64 (`<i8`).
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<(), NpyError> {
    write_raw(path, "<i8", shape, data.len(), |out| {
        data.iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))
    })
}

/// Write `data` (C order) with `shape` as little-endian float32 (`<f4`).
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    write_raw(path, "<f4", shape, data.len(), |out| {
        data.iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))
    })
}

/// A value in the header dict (a Python literal).
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Recursive-descent parser for the header's Python dict literal.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err("unterminated string".into());
        }
        let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(v)
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Lit::Str),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    match self.peek() {
                        Some(b')') => {
                            self.i += 1;
                            return Ok(Lit::Tuple(dims));
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let start = self.i;
                            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                                self.i += 1;
                            }
                            let txt = std::str::from_utf8(&self.s[start..self.i])
                                .map_err(|e| e.to_string())?;
                            dims.push(txt.parse::<usize>().map_err(|e| e.to_string())?);
                            // Python 2 era files write longs as `3L`.
                            if self.s.get(self.i) == Some(&b'L') {
                                self.i += 1;
                            }
                            match self.peek() {
                                Some(b',') => self.i += 1,
                                Some(b')') => {}
                                _ => return Err(format!("bad shape tuple at byte {}", self.i)),
                            }
                        }
                        _ => return Err(format!("bad shape tuple at byte {}", self.i)),
                    }
                }
            }
            _ => {
                let rest = &self.s[self.i..];
                if rest.starts_with(b"True") {
                    self.i += 4;
                    Ok(Lit::Bool(true))
                } else if rest.starts_with(b"False") {
                    self.i += 5;
                    Ok(Lit::Bool(false))
                } else {
                    Err(format!("unexpected value at byte {}", self.i))
                }
            }
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Lit)>, String> {
        self.eat(b'{')?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(items);
            }
            let k = self.string()?;
            self.eat(b':')?;
            let v = self.value()?;
            items.push((k, v));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }
}

/// Read a `.npy` file: its shape and data (C order).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, NpyData), NpyError> {
    let p = || path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io { path: p(), source })?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::BadMagic { path: p() });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        2 | 3 => return Err(NpyError::BadMagic { path: p() }),
        _ => {
            return Err(NpyError::Version {
                path: p(),
                major,
                minor,
            })
        }
    };
    let bad = |reason: String| NpyError::BadHeader { path: p(), reason };
    let data_start = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "header length {hlen} runs past the end of the file"
            ))
        })?;
    let items = Parser {
        s: &bytes[start..data_start],
        i: 0,
    }
    .dict()
    .map_err(bad)?;

    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in items {
        match (k.as_str(), v) {
            ("descr", Lit::Str(s)) => descr = Some(s),
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(bad(format!("key '{k}' has an unexpected value {v:?}")))
            }
            _ => {}
        }
    }
    let descr = descr.ok_or_else(|| bad("missing 'descr'".into()))?;
    let fortran = fortran.ok_or_else(|| bad("missing 'fortran_order'".into()))?;
    let shape = shape.ok_or_else(|| bad("missing 'shape'".into()))?;
    if descr.starts_with('>') {
        return Err(NpyError::BigEndian { path: p(), descr });
    }
    if fortran {
        return Err(NpyError::FortranOrder { path: p() });
    }
    let item = match descr.as_str() {
        "<f4" | "<i4" => 4,
        "<i8" => 8,
        "<f2" => 2,
        _ => return Err(NpyError::UnsupportedDtype { path: p(), descr }),
    };
    let data = &bytes[data_start..];
    let expected = shape_numel(&shape)
        .and_then(|n| n.checked_mul(item))
        .unwrap_or(usize::MAX);
    if data.len() != expected {
        return Err(NpyError::DataSize {
            path: p(),
            shape,
            expected,
            got: data.len(),
        });
    }
    let out = match descr.as_str() {
        "<f4" => NpyData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<f2" => NpyData::F32(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        "<i4" => NpyData::I64(
            data.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => NpyData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok((shape, out))
}

/// [`read_npy`], requiring float data (`<f4` or `<f2`).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    match read_npy(path)? {
        (shape, NpyData::F32(v)) => Ok((shape, v)),
        (_, d) => Err(NpyError::WrongDtype {
            path: path.to_path_buf(),
            expected: "f32",
            got: d.dtype_name(),
        }),
    }
}

/// [`read_npy`], requiring integer data (`<i8` or `<i4`).
pub fn read_npy_i64(path: &Path) -> Result<(Vec<usize>, Vec<i64>), NpyError> {
    match read_npy(path)? {
        (shape, NpyData::I64(v)) => Ok((shape, v)),
        (_, d) => Err(NpyError::WrongDtype {
            path: path.to_path_buf(),
            expected: "i64",
            got: d.dtype_name(),
        }),
    }
}

#[cfg(test)]
#[path = "tests/npy.rs"]
mod tests;
