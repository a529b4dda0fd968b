//! Writing bundles atomically: the writer stages everything in a temporary folder beside the
//! target, hashes every file into the manifest, writes `bundle.yaml` last, and renames the
//! folder into place, so a failure never leaves half a bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{FileEntry, Manifest, MANIFEST_FILE};
use crate::verify::{sha256_file, BundleError};

/// Writing a bundle failed; names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid option --out: {path} exists and is not a complete, valid bundle ({reason}); refusing to replace it")]
    NotABundle { path: PathBuf, reason: String },
    #[error("internal error: unexpected file {path}")]
    FileName { path: PathBuf },
    #[error("internal error: manifest serialisation: {0}")]
    Serialize(String),
}

impl WriteError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WriteError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Refuses an output path that exists and is not a complete, valid bundle: a folder holding
/// `bundle.yaml` and exactly the files it lists, every one verified (never overwrite user
/// data). The refusal names the files that are not the bundle's.
pub fn check_out(out: &Path) -> Result<(), WriteError> {
    let refuse = |reason: String| WriteError::NotABundle {
        path: out.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(WriteError::io(out, e)),
    };
    if !meta.is_dir() {
        return Err(refuse("not a folder".into()));
    }
    let mut present = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|e| WriteError::io(out, e))? {
        let entry = entry.map_err(|e| WriteError::io(out, e))?;
        present.push(entry.file_name().to_string_lossy().into_owned());
    }
    if !present.iter().any(|n| n == MANIFEST_FILE) {
        return Err(refuse(format!("no {MANIFEST_FILE}; it holds {present:?}")));
    }
    let manifest = crate::verify::load_manifest(out, true).map_err(|e| refuse(e.to_string()))?;
    let extra: Vec<&String> = present
        .iter()
        .filter(|n| *n != MANIFEST_FILE && !manifest.files.contains_key(n.as_str()))
        .collect();
    if !extra.is_empty() {
        return Err(refuse(format!("files not in the bundle: {extra:?}")));
    }
    Ok(())
}

/// The folder that holds `out` (where temporary bundles are staged, to rename atomically).
pub fn parent_dir(out: &Path) -> std::path::PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// sha256 and size of every file in `dir` but the manifest.
pub fn hash_files(dir: &Path) -> Result<BTreeMap<String, FileEntry>, WriteError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WriteError::io(dir, e))? {
        let path = entry.map_err(|e| WriteError::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| WriteError::FileName { path: path.clone() })?
            .to_string();
        if name == MANIFEST_FILE {
            continue;
        }
        let (sha256, bytes) = sha256_file(&path).map_err(|e| match e {
            BundleError::Io { path, source } => WriteError::Io { path, source },
            other => WriteError::Serialize(other.to_string()),
        })?;
        files.insert(name, FileEntry::new(sha256, bytes));
    }
    Ok(files)
}

/// Writes `dir/bundle.yaml` (through a temporary file and a rename), sealed with its digest
/// line (`manifest_sha256`, see [`crate::verify::seal_manifest`]).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), WriteError> {
    let yaml = serde_yaml::to_string(manifest).map_err(|e| WriteError::Serialize(e.to_string()))?;
    let yaml = crate::verify::seal_manifest(&yaml);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    std::fs::write(&tmp, yaml).map_err(|e| WriteError::io(&tmp, e))?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| WriteError::io(&path, e))
}

/// Moves the finished bundle `staged` to `out`; an existing bundle at `out` is moved aside
/// first and removed only after the rename succeeded (and restored if it failed).
pub fn replace_dir(staged: &Path, out: &Path) -> Result<(), WriteError> {
    let parent = parent_dir(out);
    let old = if out.exists() {
        let aside = parent.join(format!(
            ".llamagen-old-{}-{}",
            std::process::id(),
            out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")
        ));
        std::fs::rename(out, &aside).map_err(|e| WriteError::io(out, e))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(staged, out) {
        let _ = std::fs::remove_dir_all(staged);
        if let Some(aside) = &old {
            let _ = std::fs::rename(aside, out);
        }
        return Err(WriteError::io(out, e));
    }
    if let Some(aside) = old {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(())
}
