//! Output files (PNGs, `.npy`) written without following symlinks: the data goes to a fresh
//! temporary file in the target's folder, which is then renamed over the target. A rename
//! replaces a symlink itself, never the file it points to, and readers never see half a file.

use std::io;
use std::path::Path;

use tempfile::NamedTempFile;

/// A new temporary file in the folder of `path` (hidden, removed if never persisted).
pub(crate) fn temp_beside(path: &Path) -> io::Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut b = tempfile::Builder::new();
    b.prefix(".llamagen-out-");
    // Outputs keep the permissions a plain create would give (tempfile's default is 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o644));
    }
    b.tempfile_in(dir)
}

/// Renames the finished temporary file onto `path`.
pub(crate) fn persist(tmp: NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.persist(path).map(|_| ()).map_err(|e| e.error)
}
