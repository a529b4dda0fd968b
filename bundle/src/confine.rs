//! The one place a path read from a bundle (a `files` key, a graph's `file` or `weights`, an
//! ONNX external-data `location`) becomes a file to open.
//!
//! A bundle path must be relative, made only of plain components (no `..`, `.`, root or
//! prefix), resolve (symlinks included) to a regular file inside the bundle folder, and be
//! listed in the manifest's `files`. Files are opened once; the identity of the open file
//! (device, inode, size, mtime, ctime: a [`FileStamp`]) is recorded when the loader checks its
//! size and sha256, and every later open compares against it, so a file replaced or rewritten
//! between verification and use is an error ([`BundleError::FileChanged`]) rather than
//! unverified input.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::manifest::Manifest;
use crate::verify::BundleError;

/// Identity and size of an open file. Any write to the file changes its ctime (which user
/// space cannot set back), and a replacement changes its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileStamp {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            FileStamp {
                dev: 0,
                ino: 0,
                len: meta.len(),
                mtime_ns,
                ctime_ns: 0,
            }
        }
    }
}

/// Why a bundle path is refused (the `reason` of [`BundleError::PathEscapes`]).
fn lexical_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty path");
    }
    if name.contains('\0') {
        return Some("NUL byte in path");
    }
    if name.contains('\\') {
        return Some("backslash in path");
    }
    let path = Path::new(name);
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Some("'..' component"),
            Component::CurDir => return Some("'.' component"),
            Component::RootDir => return Some("absolute path"),
            Component::Prefix(_) => return Some("path prefix"),
        }
    }
    None
}

/// Resolves bundle path `name` (found in `source`, the manifest or an ONNX file) to the
/// canonical path of a regular file inside `dir`, or says why not.
pub fn confine(dir: &Path, source: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let escapes = |reason: &'static str| BundleError::PathEscapes {
        path: source.to_path_buf(),
        entry: name.to_string(),
        reason,
    };
    if let Some(reason) = lexical_reason(name) {
        return Err(escapes(reason));
    }
    let root = dir.canonicalize().map_err(|source| BundleError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let joined = root.join(name);
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile {
                path: dir.to_path_buf(),
                file: name.to_string(),
            })
        }
        Err(source) => {
            return Err(BundleError::Io {
                path: joined,
                source,
            })
        }
    };
    if !resolved.starts_with(&root) || resolved == root {
        return Err(escapes("resolves (through a symlink) outside the bundle"));
    }
    let meta = std::fs::metadata(&resolved).map_err(|source| BundleError::Io {
        path: resolved.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(escapes("not a regular file"));
    }
    Ok(resolved)
}

/// A bundle file opened once, with the identity it had when opened.
#[derive(Debug)]
pub struct OpenedFile {
    /// Canonical path (inside the bundle).
    pub path: PathBuf,
    pub file: File,
    pub stamp: FileStamp,
}

impl OpenedFile {
    /// Opens `name` of bundle `dir` (confined; listed in `m.files`, of the listed size, and the
    /// same file the loader verified when it recorded a stamp).
    pub fn open(dir: &Path, m: &Manifest, source: &Path, name: &str) -> Result<Self, BundleError> {
        let entry = m.files.get(name).ok_or_else(|| BundleError::UnlistedFile {
            path: source.to_path_buf(),
            file: name.to_string(),
        })?;
        let path = confine(dir, source, name)?;
        let file = File::open(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BundleError::PathEscapes {
                path: source.to_path_buf(),
                entry: name.to_string(),
                reason: "not a regular file",
            });
        }
        let stamp = FileStamp::of(&meta);
        if stamp.len != entry.bytes {
            return Err(BundleError::SizeMismatch {
                file: path,
                expected: entry.bytes,
                got: stamp.len,
            });
        }
        if let Some(verified) = entry.verified {
            if verified != stamp {
                return Err(BundleError::FileChanged { file: path });
            }
        }
        Ok(OpenedFile { path, file, stamp })
    }

    /// Errors unless the path still names this very file, unchanged (for consumers such as
    /// ONNX Runtime that open by path: call it before and after they do).
    pub fn check_unchanged(&self) -> Result<(), BundleError> {
        let changed = || BundleError::FileChanged {
            file: self.path.clone(),
        };
        let by_path = std::fs::metadata(&self.path).map_err(|_| changed())?;
        let by_handle = self.file.metadata().map_err(|_| changed())?;
        if FileStamp::of(&by_path) != self.stamp || FileStamp::of(&by_handle) != self.stamp {
            return Err(changed());
        }
        Ok(())
    }

    /// The whole file, read through the handle (its size was checked on open).
    pub fn read_all(&self) -> Result<Vec<u8>, BundleError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| BundleError::Io {
            path: self.path.clone(),
            source,
        };
        let len = usize::try_from(self.stamp.len).map_err(|_| BundleError::SizeMismatch {
            file: self.path.clone(),
            expected: self.stamp.len,
            got: usize::MAX as u64,
        })?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes"),
            ))
        })?;
        f.take(self.stamp.len).read_to_end(&mut buf).map_err(io)?;
        if buf.len() as u64 != self.stamp.len {
            return Err(BundleError::SizeMismatch {
                file: self.path.clone(),
                expected: self.stamp.len,
                got: buf.len() as u64,
            });
        }
        self.check_unchanged()?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks_refuse_every_escape() {
        for (name, why) in [
            ("", "empty"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("/etc/passwd", "absolute"),
            ("./gpt.onnx", "'.'"),
            ("a\\..\\b", "backslash"),
            ("a\0b", "NUL"),
        ] {
            let r = lexical_reason(name).unwrap_or_else(|| panic!("{name:?} accepted"));
            assert!(r.contains(why), "{name:?}: {r}");
        }
        assert_eq!(lexical_reason("gpt.onnx"), None);
        assert_eq!(lexical_reason("sub/gpt.weights"), None);
    }

    #[test]
    fn symlinks_out_of_the_bundle_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("b");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::fs::write(bundle.join("ok.bin"), b"y").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(tmp.path().join("secret"), bundle.join("link")).unwrap();
        let src = bundle.join("bundle.yaml");
        assert!(confine(&bundle, &src, "ok.bin").is_ok());
        #[cfg(unix)]
        {
            let e = confine(&bundle, &src, "link").unwrap_err().to_string();
            assert!(e.contains("outside the bundle"), "{e}");
        }
        let e = confine(&bundle, &src, "missing").unwrap_err();
        assert!(matches!(e, BundleError::MissingFile { .. }), "{e}");
    }
}
