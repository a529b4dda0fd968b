//! Loads `bundle.yaml` and checks the schema version and the sha256 of every file.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ModelFamily, MANIFEST_FILE, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: no such bundle directory")]
    NoSuchDir { path: PathBuf },
    #[error("{path}: not a bundle (no {MANIFEST_FILE}); create one with llamagen-compile")]
    NotABundle { path: PathBuf },
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error(
        "{path}: schema version {got}, this runtime reads version {expected}; recompile the bundle"
    )]
    SchemaVersion {
        path: PathBuf,
        expected: u32,
        got: u32,
    },
    #[error("{path}: missing file {file} listed in the manifest")]
    MissingFile { path: PathBuf, file: String },
    #[error("{file}: sha256 mismatch (expected {expected}, got {got}); the bundle is corrupt or was modified")]
    HashMismatch {
        file: PathBuf,
        expected: String,
        got: String,
    },
}

/// Reads the manifest of `dir`; with `verify_hashes`, also checks every file's sha256 and size.
pub fn load_manifest(dir: &Path, verify_hashes: bool) -> Result<Manifest, BundleError> {
    if !dir.is_dir() {
        return Err(BundleError::NoSuchDir {
            path: dir.to_path_buf(),
        });
    }
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Err(BundleError::NotABundle {
            path: dir.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    // Check the version before the full schema so old bundles get the precise message.
    let version: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| BundleError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let got = version
        .get("schema_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if got != SCHEMA_VERSION {
        return Err(BundleError::SchemaVersion {
            path,
            expected: SCHEMA_VERSION,
            got,
        });
    }
    let manifest: Manifest = serde_yaml::from_str(&text).map_err(|e| BundleError::BadManifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let section_missing = match manifest.family {
        ModelFamily::LlamagenC2i => manifest.gpt.is_none().then_some("gpt"),
        ModelFamily::Var => manifest.var.is_none().then_some("var"),
    };
    if let Some(section) = section_missing {
        return Err(BundleError::BadManifest {
            path,
            reason: format!(
                "family '{}' needs a '{section}' section",
                manifest.family.name()
            ),
        });
    }
    for (name, entry) in &manifest.files {
        let file = dir.join(name);
        if !file.is_file() {
            return Err(BundleError::MissingFile {
                path: dir.to_path_buf(),
                file: name.clone(),
            });
        }
        if verify_hashes {
            let (sha, bytes) = sha256_file(&file)?;
            if sha != entry.sha256 || bytes != entry.bytes {
                return Err(BundleError::HashMismatch {
                    file,
                    expected: entry.sha256.clone(),
                    got: sha,
                });
            }
        }
    }
    Ok(manifest)
}

/// (hex sha256, size in bytes) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((hex, total))
}
