//! Writes a bundle atomically: everything goes to a temporary directory beside the target,
//! which is renamed into place only when complete, so a failure never leaves half a bundle.

use std::collections::BTreeMap;
use std::path::Path;

use crate::ir::Graph;
use crate::onnx::write_model;
use crate::Error;

use super::manifest::{FileEntry, GraphEntry, IoSpec, Manifest, MANIFEST_FILE};
use super::verify::sha256_file;

/// A graph to write under `stem` (`stem.onnx` + `stem.weights`).
pub struct BundleGraph<'a> {
    pub role: &'a str,
    pub stem: &'a str,
    pub graph: &'a Graph,
}

/// Writes `graphs` and `manifest` (whose `graphs` and `files` are filled in here) to `out`.
/// `out` must not exist yet, or be an existing bundle (it is replaced only on success).
/// `progress(done, total)` counts weights written across all graphs.
pub fn write_bundle(
    out: &Path,
    graphs: &[BundleGraph<'_>],
    mut manifest: Manifest,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Manifest, Error> {
    check_out(out)?;
    let parent = parent_dir(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".llamagen-bundle-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;

    let total: usize = graphs.iter().map(|g| g.graph.initializers.len()).sum();
    let mut done_before = 0;
    for bg in graphs {
        let n = bg.graph.initializers.len();
        let _span = tracing::debug_span!("write_graph", role = bg.role, initializers = n).entered();
        write_model(
            bg.graph,
            tmp.path(),
            bg.stem,
            &manifest.tool_version,
            &mut |i, _| progress(done_before + i, total),
        )?;
        done_before += n;
        let io = |outputs| {
            bg.graph
                .signature(outputs)
                .into_iter()
                .map(|(name, ty)| IoSpec::new(name, ty))
                .collect()
        };
        manifest.graphs.insert(
            bg.role.to_string(),
            GraphEntry {
                file: format!("{}.onnx", bg.stem),
                weights: format!("{}.weights", bg.stem),
                precision: manifest.precision.clone(),
                inputs: io(false),
                outputs: io(true),
            },
        );
    }

    manifest.files = hash_files(tmp.path())?;
    write_manifest(tmp.path(), &manifest)?;

    let tmp_path = tmp.keep();
    replace_dir(&tmp_path, out)?;
    tracing::info!(out = %out.display(), bytes = manifest.total_bytes(), "bundle written");
    Ok(manifest)
}

/// Refuses an output path that exists and is not a bundle (never overwrite user data).
pub fn check_out(out: &Path) -> Result<(), Error> {
    if out.exists() && !out.join(MANIFEST_FILE).is_file() {
        return Err(Error::InvalidOption {
            option: "--out",
            reason: format!(
                "{} exists and is not a bundle; refusing to replace it",
                out.display()
            ),
        });
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
pub fn hash_files(dir: &Path) -> Result<BTreeMap<String, FileEntry>, Error> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Internal(format!("unexpected file {}", path.display())))?
            .to_string();
        if name == MANIFEST_FILE {
            continue;
        }
        let (sha256, bytes) = sha256_file(&path)?;
        files.insert(name, FileEntry { sha256, bytes });
    }
    Ok(files)
}

/// Writes `dir/bundle.yaml` (through a temporary file and a rename).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), Error> {
    let yaml = serde_yaml::to_string(manifest)
        .map_err(|e| Error::Internal(format!("manifest serialisation: {e}")))?;
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    std::fs::write(&tmp, yaml).map_err(|e| Error::io(&tmp, e))?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Moves the finished bundle `staged` to `out`; an existing bundle at `out` is moved aside
/// first and removed only after the rename succeeded (and restored if it failed).
pub fn replace_dir(staged: &Path, out: &Path) -> Result<(), Error> {
    let parent = parent_dir(out);
    let old = if out.exists() {
        let aside = parent.join(format!(
            ".llamagen-old-{}-{}",
            std::process::id(),
            out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")
        ));
        std::fs::rename(out, &aside).map_err(|e| Error::io(out, e))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(staged, out) {
        let _ = std::fs::remove_dir_all(staged);
        if let Some(aside) = &old {
            let _ = std::fs::rename(aside, out);
        }
        return Err(Error::io(out, e));
    }
    if let Some(aside) = old {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(())
}
