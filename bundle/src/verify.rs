//! Loads `bundle.yaml` and checks it: its own digest, the schema version, confined and listed
//! paths, values cross-checked against each other, the limits and the graphs ([`check`]), and
//! the size and sha256 of every file.

use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::check;
use crate::check_var;
use crate::confine::{confine, OpenedFile};
use crate::manifest::{GraphRole, Manifest, ModelFamily, MANIFEST_FILE, SCHEMA_VERSION};
use crate::onnx_proto::{GraphProto, DATA_LOCATION_EXTERNAL};

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
    #[error("{path}: manifest digest: {reason}; the manifest is corrupt or was modified (bundles written before manifests were sealed must be recompiled)")]
    ManifestDigest { path: PathBuf, reason: String },
    #[error("{path}: path '{entry}' is refused: {reason}; bundle paths are relative, stay inside the bundle and are listed in files")]
    PathEscapes {
        path: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error(
        "{path}: file '{file}' is not listed in the manifest's files (it would never be verified)"
    )]
    UnlistedFile { path: PathBuf, file: String },
    #[error("{file}: size mismatch (expected {expected} bytes, got {got}); the bundle is corrupt or was modified")]
    SizeMismatch {
        file: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("{file}: the file changed after it was verified; reload the bundle")]
    FileChanged { file: PathBuf },
    #[error("{path}: {key} is inconsistent: expected {expected}, got {got}")]
    Inconsistent {
        path: PathBuf,
        key: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {key} = {value} is over the limit {limit}")]
    OverLimit {
        path: PathBuf,
        key: &'static str,
        value: u64,
        limit: u64,
    },
}

/// The key of the manifest's own digest: the last line of bundle.yaml is
/// `manifest_sha256: <hex>`, the sha256 of every byte before that line (so the `files` table,
/// and with it every file's hash, is covered).
pub const DIGEST_KEY: &str = "manifest_sha256";

/// Largest bundle.yaml read (bounds the YAML parser's memory).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// `body` (a manifest's YAML) with a newline ensured and its digest line appended.
pub fn seal_manifest(body: &str) -> String {
    let mut text = body.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let digest = hex(&Sha256::digest(text.as_bytes()));
    text.push_str(&format!("{DIGEST_KEY}: {digest}\n"));
    text
}

/// The body of sealed manifest `text` (read from `path`), after checking its digest line.
pub fn unseal_manifest<'a>(path: &Path, text: &'a str) -> Result<&'a str, BundleError> {
    let err = |reason: String| BundleError::ManifestDigest {
        path: path.to_path_buf(),
        reason,
    };
    let Some(without_nl) = text.strip_suffix('\n') else {
        return Err(err("bundle.yaml does not end with a newline".into()));
    };
    let (body, last) = match without_nl.rfind('\n') {
        Some(i) => (&text[..i + 1], &without_nl[i + 1..]),
        None => ("", without_nl),
    };
    let Some(digest) = last.strip_prefix(&format!("{DIGEST_KEY}: ")) else {
        return Err(err(format!(
            "no digest (the last line is not '{DIGEST_KEY}: <sha256>')"
        )));
    };
    let expected = hex(&Sha256::digest(body.as_bytes()));
    if digest != expected {
        return Err(err(format!(
            "{DIGEST_KEY} is {digest}, the manifest hashes to {expected}"
        )));
    }
    Ok(body)
}

/// Reads the manifest of `dir` and checks it: its own digest, its schema version, its values
/// against each other and the limits ([`check`]), that every path it names is confined to the
/// bundle and listed in `files`, every listed file's size, and the graphs' declared inputs,
/// outputs, initializer shapes and external data. With `verify_hashes`, also every file's
/// sha256, hashed through the handle whose identity is then recorded in the returned entries
/// ([`crate::FileEntry::verified`]): later opens must find the same, unchanged file.
pub fn load_manifest(dir: &Path, verify_hashes: bool) -> Result<Manifest, BundleError> {
    if !dir.is_dir() {
        return Err(BundleError::NoSuchDir {
            path: dir.to_path_buf(),
        });
    }
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return Err(BundleError::NotABundle {
            path: dir.to_path_buf(),
        });
    }
    let manifest_path = confine(dir, &path, MANIFEST_FILE)?;
    let text = read_manifest(&manifest_path)?;
    let body = match unseal_manifest(&path, &text) {
        Ok(body) => body,
        Err(e) => {
            // An old or foreign schema gets the precise message first.
            check_version(&path, &text)?;
            return Err(e);
        }
    };
    check_version(&path, body)?;
    let mut manifest: Manifest =
        serde_yaml::from_str(body).map_err(|e| BundleError::BadManifest {
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
    check::manifest_values(&path, &manifest)?;
    check_var::family_graphs(&path, &manifest)?;
    for graph in manifest.graphs.values() {
        for name in [&graph.file, &graph.weights] {
            if !manifest.files.contains_key(name.as_str()) {
                return Err(BundleError::UnlistedFile {
                    path: path.clone(),
                    file: name.clone(),
                });
            }
        }
    }
    let names: Vec<String> = manifest.files.keys().cloned().collect();
    for name in names {
        let opened = OpenedFile::open(dir, &manifest, &path, &name)?;
        if verify_hashes {
            let entry = &manifest.files[&name];
            let (sha, bytes) = sha256_reader(&opened.path, &opened.file)?;
            opened.check_unchanged()?;
            if bytes != entry.bytes {
                return Err(BundleError::SizeMismatch {
                    file: opened.path,
                    expected: entry.bytes,
                    got: bytes,
                });
            }
            if sha != entry.sha256 {
                return Err(BundleError::HashMismatch {
                    file: opened.path,
                    expected: entry.sha256.clone(),
                    got: sha,
                });
            }
        }
        if let Some(entry) = manifest.files.get_mut(&name) {
            entry.verified = Some(opened.stamp);
        }
    }
    for (&role, graph) in &manifest.graphs {
        let opened = OpenedFile::open(dir, &manifest, &path, &graph.file)?;
        let g = decode_graph(&opened.path, &opened.read_all()?)?;
        check_external_data(dir, &manifest, &opened.path, &g)?;
        match role {
            GraphRole::GptStep => check::gpt_graph(&opened.path, &manifest, &g)?,
            GraphRole::VqDecoder => check::vq_graph(&opened.path, &manifest, &g)?,
            GraphRole::VarStep => check_var::step_graph(&opened.path, &manifest, &g)?,
            GraphRole::VarEmbed => check_var::embed_graph(&opened.path, &manifest, &g)?,
            GraphRole::VarCond => check_var::cond_graph(&opened.path, &manifest, &g)?,
        }
    }
    Ok(manifest)
}

/// The graph of ONNX model `bytes` (read from `path`).
pub fn decode_graph(path: &Path, bytes: &[u8]) -> Result<GraphProto, BundleError> {
    let bad = |reason: String| BundleError::BadManifest {
        path: path.to_path_buf(),
        reason,
    };
    let model = crate::onnx_proto::ModelProto::decode(bytes)
        .map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    model
        .graph
        .ok_or_else(|| bad("the model has no graph".into()))
}

fn check_version(path: &Path, text: &str) -> Result<(), BundleError> {
    // Check the version before the full schema so old bundles get the precise message.
    let version: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| BundleError::BadManifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let got = version
        .get("schema_version")
        .and_then(|v| v.as_u64())
        .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
    if got != SCHEMA_VERSION {
        return Err(BundleError::SchemaVersion {
            path: path.to_path_buf(),
            expected: SCHEMA_VERSION,
            got,
        });
    }
    Ok(())
}

fn read_manifest(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::OverLimit {
            path: path.to_path_buf(),
            key: "bundle.yaml size",
            value: bytes.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|e| BundleError::BadManifest {
        path: path.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })
}

/// Every initializer of graph `g` (read from `onnx`) holds as many bytes as its dims say, and
/// every external-data entry names a confined, listed file with the bytes inside its listed
/// size.
pub fn check_external_data(
    dir: &Path,
    m: &Manifest,
    onnx: &Path,
    g: &GraphProto,
) -> Result<(), BundleError> {
    let bad = |reason: String| BundleError::BadManifest {
        path: onnx.to_path_buf(),
        reason,
    };
    for t in &g.initializer {
        let size = check::tensor_bytes(onnx, t)?;
        if t.data_location != DATA_LOCATION_EXTERNAL {
            if let Some(n) = size {
                if t.raw_data.len() != n {
                    return Err(bad(format!(
                        "{}: {} inline bytes for dims {:?}, expected {n}",
                        t.name,
                        t.raw_data.len(),
                        t.dims
                    )));
                }
            }
            continue;
        }
        let field = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let location = field("location")
            .ok_or_else(|| bad(format!("{}: external data without location", t.name)))?;
        confine(dir, onnx, location)?;
        let entry = m
            .files
            .get(location)
            .ok_or_else(|| BundleError::UnlistedFile {
                path: onnx.to_path_buf(),
                file: location.to_string(),
            })?;
        let num = |key: &str| -> Result<u64, BundleError> {
            field(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("{}: external data has no valid {key}", t.name)))
        };
        let (offset, length) = (num("offset")?, num("length")?);
        if offset
            .checked_add(length)
            .is_none_or(|end| end > entry.bytes)
        {
            return Err(bad(format!(
                "{}: bytes {offset}+{length} lie outside {location} ({} bytes)",
                t.name, entry.bytes
            )));
        }
        if let Some(n) = size {
            if length != n as u64 {
                return Err(bad(format!(
                    "{}: {length} external bytes for dims {:?}, expected {n}",
                    t.name, t.dims
                )));
            }
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (hex sha256, bytes read) of everything `file` holds, read from its start through the handle.
pub fn sha256_reader(path: &Path, file: &std::fs::File) -> Result<(String, u64), BundleError> {
    use std::io::{Seek, SeekFrom};
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
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
    Ok((hex(&hasher.finalize()), total))
}

/// (hex sha256, size in bytes) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let f = std::fs::File::open(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sha256_reader(path, &f)
}
