//! Writer of official-format PyTorch zip checkpoints, without torch.
//!
//! Produces what `torch.save({"model": OrderedDict(...)}, path)` writes (pickle protocol 2):
//! a zip with `<stem>/data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`
//! ("little"), one uncompressed, 64-byte aligned `data/<i>` entry per storage and `version`.
//! Tensors are `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
//! calls and the state dict carries a minimal `_metadata`, so `torch.load` reads the files.
//! Used for fixtures (GPT-B / VQ-16 sized) and round-trip tests.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::check_tensor_bytes;
use super::dtype::DType;
use super::error::CheckpointError;
use super::tensor::contiguous_strides;

/// Entries are aligned like torch does (`.storage_alignment`).
const ALIGNMENT: u16 = 64;
/// Python's pickler batches SETITEMS by this many pairs.
const BATCH: usize = 1000;

/// One tensor of a checkpoint to write: a (possibly strided) view of `storages[storage]`.
pub(crate) struct TorchTensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub strides: Vec<usize>,
    pub offset: usize,
    pub storage: usize,
}

/// Raw little-endian bytes of one typed storage.
pub(crate) struct TorchStorage<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
}

/// Writes an official-format PyTorch checkpoint (zip, pickle protocol 2, like torch.save of {"model": OrderedDict}) so tests can create GPT-B / VQ-16 sized fixtures without torch. `wrapper`: Some("model") etc. or None for a bare state dict.
pub fn write_torch_checkpoint(
    path: &Path,
    wrapper: Option<&str>,
    tensors: &[(String, DType, Vec<usize>, Vec<u8>)],
) -> Result<(), CheckpointError> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        check_tensor_bytes(path, name, *dtype, shape, data)?;
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
pub(crate) fn write_torch_zip(
    path: &Path,
    wrapper: Option<&str>,
    tensors: &[TorchTensor<'_>],
    storages: &[TorchStorage<'_>],
) -> Result<(), CheckpointError> {
    let pkl = pickle_state_dict(path, wrapper, tensors, storages)?;
    let folder = archive_folder(path);
    let file = File::create(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(source) => CheckpointError::io(path, source),
        other => CheckpointError::malformed(path, format!("writing zip: {other}")),
    };
    let put = |zip: &mut ZipWriter<BufWriter<File>>, name: &str, bytes: &[u8]| {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(ALIGNMENT)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(format!("{folder}/{name}"), options)
            .map_err(zip_err)?;
        zip.write_all(bytes)
            .map_err(|e| CheckpointError::io(path, e))
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
    inner.flush().map_err(|e| CheckpointError::io(path, e))
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
) -> Result<Vec<u8>, CheckpointError> {
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
                CheckpointError::malformed(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::pickle::unpickle;
    use crate::checkpoint::pickle_value::Value;
    use crate::checkpoint::Checkpoint;

    #[test]
    fn views_sharing_one_storage_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.pt");
        let data: Vec<u8> = (0..6u8)
            .flat_map(|i| half::bf16::from_f32(f32::from(i)).to_bits().to_le_bytes())
            .collect();
        let storages = [TorchStorage {
            dtype: DType::BF16,
            data: &data,
        }];
        let tensors = [
            // [[0,1,2],[3,4,5]] and its transpose, plus the second row, all in storage 0.
            TorchTensor {
                name: "m",
                shape: &[2, 3],
                strides: vec![3, 1],
                offset: 0,
                storage: 0,
            },
            TorchTensor {
                name: "m_t",
                shape: &[3, 2],
                strides: vec![1, 3],
                offset: 0,
                storage: 0,
            },
            TorchTensor {
                name: "row1",
                shape: &[3],
                strides: vec![1],
                offset: 3,
                storage: 0,
            },
        ];
        write_torch_zip(&path, Some("state_dict"), &tensors, &storages).unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.get_f32("m", &[2, 3]).unwrap(), [0., 1., 2., 3., 4., 5.]);
        assert_eq!(
            ck.get_f32("m_t", &[3, 2]).unwrap(),
            [0., 3., 1., 4., 2., 5.]
        );
        assert_eq!(ck.get_f32("row1", &[3]).unwrap(), [3., 4., 5.]);
        assert_eq!(ck.get("row1").unwrap().storage_offset(), 3);
    }

    #[test]
    fn ints_use_the_smallest_opcode_and_survive_unpickling() {
        for v in [
            0u64,
            255,
            256,
            65535,
            65536,
            1 << 31,
            (1 << 32) + 7,
            u64::MAX >> 1,
        ] {
            let mut w = PickleWriter::default();
            w.buf.extend_from_slice(&[0x80, 2]);
            w.int(v);
            w.op(b'.');
            let u = unpickle(Path::new("ints"), &w.buf).unwrap();
            assert_eq!(u.root, Value::Int(v as i64), "{v}");
        }
    }

    #[test]
    fn archive_folder_follows_the_stem() {
        assert_eq!(archive_folder(Path::new("/x/gpt.pt")), "gpt");
        assert_eq!(archive_folder(Path::new("/x/c2i B 256.pt")), "archive");
    }
}
