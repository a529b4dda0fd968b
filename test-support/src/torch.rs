//! Writer of official-format PyTorch zip checkpoints, without torch.
//!
//! Produces what `torch.save({"model": OrderedDict(...)}, path)` writes (pickle protocol 2):
//! a zip with `<stem>/data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`
//! ("little"), one uncompressed, 64-byte aligned `data/<i>` entry per storage and `version`.
//! Tensors are `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
//! calls and the state dict carries a minimal `_metadata`, so `torch.load` reads the files.
//! Used for fixtures (GPT-B / VQ-16 sized) and the reader's round-trip tests; the reader
//! (`llamagen_compiler::checkpoint`) is what this writer's output is checked with.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Element types of torch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// The type of a safetensors-style name ("F32", "BF16", "BOOL", ...), as the checkpoint
    /// reader's `DType::name` gives it.
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "U8" => DType::U8,
            "BOOL" => DType::Bool,
            _ => return None,
        })
    }

    fn torch_storage_name(self) -> &'static str {
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
}

/// Writing a checkpoint failed: the file and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct WriteError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Entries are aligned like torch does (`.storage_alignment`).
const ALIGNMENT: u16 = 64;
/// Python's pickler batches SETITEMS by this many pairs.
const BATCH: usize = 1000;

/// One tensor of a checkpoint to write: a (possibly strided) view of `storages[storage]`.
pub struct TorchTensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub strides: Vec<usize>,
    pub offset: usize,
    pub storage: usize,
}

/// Raw little-endian bytes of one typed storage.
pub struct TorchStorage<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
}

/// Writes an official-format PyTorch checkpoint (zip, pickle protocol 2, like torch.save of {"model": OrderedDict}) so tests can create GPT-B / VQ-16 sized fixtures without torch. `wrapper`: Some("model") etc. or None for a bare state dict.
pub fn write_torch_checkpoint(
    path: &Path,
    wrapper: Option<&str>,
    tensors: &[(String, DType, Vec<usize>, Vec<u8>)],
) -> Result<(), WriteError> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        let needed = shape
            .iter()
            .try_fold(dtype.size_in_bytes(), |a, &d| a.checked_mul(d));
        if needed != Some(data.len()) {
            return Err(err(
                path,
                format!(
                    "tensor `{name}`: {} bytes given for shape {shape:?} of {dtype:?}",
                    data.len()
                ),
            ));
        }
        storages.push(TorchStorage {
            dtype: *dtype,
            data,
        });
        views.push(TorchTensor {
            name,
            shape,
            strides: contiguous_strides(shape),
            offset: 0,
            storage: i,
        });
    }
    write_torch_zip(path, wrapper, &views, &storages)
}

/// Writes `tensors` (views into `storages`) as a torch zip checkpoint.
pub fn write_torch_zip(
    path: &Path,
    wrapper: Option<&str>,
    tensors: &[TorchTensor<'_>],
    storages: &[TorchStorage<'_>],
) -> Result<(), WriteError> {
    let pkl = pickle_state_dict(path, wrapper, tensors, storages)?;
    let folder = archive_folder(path);
    let file = File::create(path).map_err(|e| err(path, e))?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(source) => err(path, source),
        other => err(path, format!("writing zip: {other}")),
    };
    let put = |zip: &mut ZipWriter<BufWriter<File>>, name: &str, bytes: &[u8]| {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(ALIGNMENT)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(format!("{folder}/{name}"), options)
            .map_err(zip_err)?;
        zip.write_all(bytes).map_err(|e| err(path, e))
    };
    put(&mut zip, "data.pkl", &pkl)?;
    put(&mut zip, ".format_version", b"1")?;
    put(
        &mut zip,
        ".storage_alignment",
        ALIGNMENT.to_string().as_bytes(),
    )?;
    put(&mut zip, "byteorder", b"little")?;
    for (i, s) in storages.iter().enumerate() {
        put(&mut zip, &format!("data/{i}"), s.data)?;
    }
    put(&mut zip, "version", b"3\n")?;
    let mut inner = zip.finish().map_err(zip_err)?;
    inner.flush().map_err(|e| err(path, e))
}

/// torch names the archive folder after the file stem; fall back to "archive".
fn archive_folder(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
        .unwrap_or("archive")
        .to_string()
}

/// Builds `data.pkl`.
fn pickle_state_dict(
    path: &Path,
    wrapper: Option<&str>,
    tensors: &[TorchTensor<'_>],
    storages: &[TorchStorage<'_>],
) -> Result<Vec<u8>, WriteError> {
    let mut w = PickleWriter::default();
    w.buf.extend_from_slice(&[0x80, 2]); // PROTO 2
    if let Some(key) = wrapper {
        w.op(b'}');
        w.put();
        w.string(key);
    }
    w.empty_ordered_dict();
    for chunk in tensors.chunks(BATCH) {
        w.op(b'(');
        for t in chunk {
            let s = storages.get(t.storage).ok_or_else(|| {
                err(
                    path,
                    format!("tensor `{}`: no storage {}", t.name, t.storage),
                )
            })?;
            let size = s.dtype.size_in_bytes();
            w.string(t.name);
            w.global("torch._utils", "_rebuild_tensor_v2");
            w.op(b'(');
            // persistent id ('storage', torch.XStorage, key, 'cpu', numel)
            w.op(b'(');
            w.memo_string("storage");
            w.global("torch", s.dtype.torch_storage_name());
            w.string(&t.storage.to_string());
            w.memo_string("cpu");
            w.int((s.data.len() / size) as u64);
            w.op(b't');
            w.op(b'Q');
            w.int(t.offset as u64);
            w.tuple(t.shape);
            w.tuple(&t.strides);
            w.op(0x89); // requires_grad=False
            w.empty_ordered_dict(); // backward_hooks
            w.op(b't');
            w.op(b'R');
        }
        w.op(b'u');
    }
    // state._metadata = OrderedDict({'': {'version': 1}}) via BUILD with a state dict.
    w.op(b'}');
    w.string("_metadata");
    w.empty_ordered_dict();
    w.op(b'(');
    w.string("");
    w.op(b'}');
    w.memo_string("version");
    w.int(1);
    w.op(b's');
    w.op(b'u');
    w.op(b's');
    w.op(b'b');
    if wrapper.is_some() {
        w.op(b's');
    }
    w.op(b'.');
    Ok(w.buf)
}

/// Minimal protocol-2 pickle emitter with a memo for repeated globals and strings.
#[derive(Default)]
struct PickleWriter {
    buf: Vec<u8>,
    next_memo: u32,
    memo: HashMap<String, u32>,
}

impl PickleWriter {
    fn op(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// BINPUT / LONG_BINPUT of the top of stack; returns the memo index.
    fn put(&mut self) -> u32 {
        let i = self.next_memo;
        self.next_memo += 1;
        match u8::try_from(i) {
            Ok(b) => self.buf.extend_from_slice(&[b'q', b]),
            Err(_) => {
                self.op(b'r');
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
        }
        i
    }

    fn get(&mut self, i: u32) {
        match u8::try_from(i) {
            Ok(b) => self.buf.extend_from_slice(&[b'h', b]),
            Err(_) => {
                self.op(b'j');
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
        }
    }

    /// Emits `write` once and BINGETs the memoized result afterwards.
    fn memoized(&mut self, key: String, write: impl FnOnce(&mut Self)) {
        if let Some(&i) = self.memo.get(&key) {
            self.get(i);
        } else {
            write(self);
            let i = self.put();
            self.memo.insert(key, i);
        }
    }

    fn string(&mut self, s: &str) {
        self.op(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn memo_string(&mut self, s: &str) {
        self.memoized(format!("s:{s}"), |w| w.string(s));
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoized(format!("g:{module}\n{name}"), |w| {
            w.op(b'c');
            w.buf.extend_from_slice(module.as_bytes());
            w.op(b'\n');
            w.buf.extend_from_slice(name.as_bytes());
            w.op(b'\n');
        });
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }

    fn int(&mut self, v: u64) {
        if let Ok(b) = u8::try_from(v) {
            self.buf.extend_from_slice(&[b'K', b]);
        } else if let Ok(h) = u16::try_from(v) {
            self.op(b'M');
            self.buf.extend_from_slice(&h.to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.op(b'J');
            self.buf.extend_from_slice(&i.to_le_bytes());
        } else {
            // LONG1: minimal little-endian two's complement (positive: keep the sign bit clear).
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes.last() == Some(&0) {
                bytes.pop();
            }
            if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                bytes.push(0);
            }
            self.op(0x8a);
            self.buf.push(bytes.len() as u8);
            self.buf.extend_from_slice(&bytes);
        }
    }

    fn tuple(&mut self, items: &[usize]) {
        if items.len() > 3 {
            self.op(b'(');
        }
        for &x in items {
            self.int(x as u64);
        }
        match items.len() {
            0 => self.op(b')'),
            n @ 1..=3 => self.op(0x84 + n as u8),
            _ => self.op(b't'),
        }
    }
}

/// Row-major strides of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    let mut acc = 1usize;
    for (s, &dim) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(dim);
    }
    strides
}

#[cfg(test)]
#[path = "tests/torch.rs"]
mod tests;
