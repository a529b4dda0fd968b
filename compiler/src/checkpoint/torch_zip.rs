//! Reader for PyTorch zip checkpoints (`torch.save` since 1.6: `.pt`, `.pth`, `.bin`).
//!
//! Layout: a zip archive with one top folder (its name varies: `archive/`, `gpt/`, ...)
//! holding `data.pkl` (the pickled object, read by the restricted [`super::pickle`] VM),
//! `byteorder` (must be "little" when present) and one `data/<key>` entry per storage.
//! Storages are stored uncompressed by torch, so their bytes are sliced straight out of the
//! memory-mapped file; a compressed entry is decompressed into owned bytes instead (only the
//! methods the `zip` build supports). Output: tensor views of the selected state dict.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use zip::{CompressionMethod, ZipArchive};

use super::error::CheckpointError;
use super::pickle::unpickle;
use super::tensor::{Backing, Storage, TensorView};

type Archive<'a> = ZipArchive<Cursor<&'a [u8]>>;

/// Reads the state dict of the zip checkpoint `path` whose bytes are `backing`.
pub(crate) fn read(
    path: &Path,
    backing: &Arc<Backing>,
) -> Result<BTreeMap<String, TensorView>, CheckpointError> {
    let mut archive = ZipArchive::new(Cursor::new(backing.bytes()))
        .map_err(|e| CheckpointError::malformed(path, format!("unreadable zip archive: {e}")))?;
    let prefix = archive_prefix(path, &archive)?;
    check_byteorder(path, &mut archive, backing, &prefix)?;

    let pkl_name = format!("{prefix}data.pkl");
    let pkl = entry(path, &mut archive, backing, &pkl_name)?
        .ok_or_else(|| CheckpointError::malformed(path, format!("no {pkl_name} entry")))?;
    let unpickled = unpickle(path, pkl.bytes())?;
    let selected = super::select_state_dict(path, &unpickled)?;

    let path_arc = Arc::new(path.to_path_buf());
    let mut storages: HashMap<Rc<str>, Storage> = HashMap::new();
    let mut out = BTreeMap::new();
    for (name, meta) in selected {
        let key = &meta.storage.key;
        let storage = match storages.get(key) {
            Some(s) => s.clone(),
            None => {
                let entry_name = format!("{prefix}data/{key}");
                let s = entry(path, &mut archive, backing, &entry_name)?.ok_or_else(|| {
                    CheckpointError::malformed(
                        path,
                        format!("tensor `{name}`: storage entry {entry_name} is missing"),
                    )
                })?;
                let needed = meta
                    .storage
                    .numel
                    .checked_mul(meta.storage.dtype.size_in_bytes());
                if needed.is_none_or(|n| n > s.bytes().len()) {
                    return Err(CheckpointError::malformed(
                        path,
                        format!(
                            "storage {entry_name} holds {} bytes, the pickle declares {} {} elements",
                            s.bytes().len(),
                            meta.storage.numel,
                            meta.storage.dtype
                        ),
                    ));
                }
                storages.insert(Rc::clone(key), s.clone());
                s
            }
        };
        let view = TensorView::new(
            Arc::clone(&path_arc),
            name.clone(),
            meta.storage.dtype,
            meta.shape.clone(),
            meta.strides.clone(),
            meta.offset,
            storage,
        );
        view.check()?;
        out.insert(name, view);
    }
    Ok(out)
}

/// The archive's top folder including its trailing slash, e.g. `"archive/"`.
fn archive_prefix(path: &Path, archive: &Archive<'_>) -> Result<String, CheckpointError> {
    let found: Vec<&str> = archive
        .file_names()
        .filter(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|dir| !dir.is_empty() && !dir.contains('/'))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.trim_end_matches("data.pkl").to_string()),
        [] => Err(CheckpointError::malformed(
            path,
            "zip archive has no <folder>/data.pkl entry (not a torch.save checkpoint)",
        )),
        many => Err(CheckpointError::malformed(
            path,
            format!("zip archive has several data.pkl entries: {many:?}"),
        )),
    }
}

fn check_byteorder(
    path: &Path,
    archive: &mut Archive<'_>,
    backing: &Arc<Backing>,
    prefix: &str,
) -> Result<(), CheckpointError> {
    let Some(order) = entry(path, archive, backing, &format!("{prefix}byteorder"))? else {
        return Ok(()); // older torch versions wrote none: little-endian
    };
    let text = String::from_utf8_lossy(order.bytes());
    match text.trim() {
        "little" => Ok(()),
        other => Err(CheckpointError::malformed(
            path,
            format!("byteorder is {other:?}; only little-endian checkpoints are supported"),
        )),
    }
}

/// The bytes of entry `name`, or `None` when the archive has no such entry.
fn entry(
    path: &Path,
    archive: &mut Archive<'_>,
    backing: &Arc<Backing>,
    name: &str,
) -> Result<Option<Storage>, CheckpointError> {
    let Some(idx) = archive.index_for_name(name) else {
        return Ok(None);
    };
    let zip_err = |e: zip::result::ZipError| {
        CheckpointError::malformed(path, format!("zip entry {name}: {e}"))
    };
    let (method, start, size) = {
        let file = archive.by_index_raw(idx).map_err(zip_err)?;
        if file.encrypted() {
            return Err(CheckpointError::malformed(
                path,
                format!("zip entry {name} is encrypted"),
            ));
        }
        (
            file.compression(),
            file.data_start(),
            file.compressed_size(),
        )
    };
    if method == CompressionMethod::Stored {
        let range = usize::try_from(start).ok().zip(usize::try_from(size).ok());
        return range
            .and_then(|(start, len)| Storage::new(Arc::clone(backing), start, len))
            .map(Some)
            .ok_or_else(|| {
                CheckpointError::malformed(
                    path,
                    format!("zip entry {name} extends past the end of the file (truncated?)"),
                )
            });
    }
    let mut file = archive.by_index(idx).map_err(|e| {
        CheckpointError::malformed(
            path,
            format!("zip entry {name} is compressed ({method}), which this build cannot read: {e}"),
        )
    })?;
    let declared = file.size();
    let mut bytes = Vec::with_capacity(usize::try_from(declared.min(1 << 30)).unwrap_or(0));
    (&mut file)
        .take(declared)
        .read_to_end(&mut bytes)
        .map_err(|e| CheckpointError::malformed(path, format!("zip entry {name}: {e}")))?;
    Ok(Some(Storage::owned(bytes)))
}
