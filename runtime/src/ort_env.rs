//! Finds and loads the ONNX Runtime shared library at run time (ort's `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH`; then `onnxruntime/capi/libonnxruntime.so*` of a pip-installed
//! `onnxruntime` in the usual site-packages folders (virtualenv, user, system, pyenv); then the
//! folder reported by `python3 -I -c "import onnxruntime"` (only to locate the file; isolated
//! and run from the temporary folder, so no `onnxruntime.py` of the current directory runs). One ONNX
//! Runtime environment per process, created on first use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::RuntimeError;

static ENV: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> = OnceLock::new();

const HOW_TO_INSTALL: &str = "install it with `python3 -m pip install onnxruntime` or set \
ORT_DYLIB_PATH to the path of libonnxruntime.so (version >= 1.20)";

/// The process-wide ONNX Runtime environment, loading the library on first call.
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    let r = ENV.get_or_init(|| {
        let path = find_library()
            .ok_or_else(|| format!("ONNX Runtime library not found; {HOW_TO_INSTALL}"))?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e}; {HOW_TO_INSTALL}",
                path.display()
            )
        })?;
        let env = builder
            .with_name("llamagen")
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        Ok((env, path))
    });
    match r {
        Ok((env, _)) => Ok(env),
        Err(msg) => Err(RuntimeError::OrtLibrary(msg.clone())),
    }
}

/// Path of the loaded library, if any.
pub fn library_path() -> Option<PathBuf> {
    match ENV.get() {
        Some(Ok((_, p))) => Some(p.clone()),
        _ => None,
    }
}

/// Where the library would be loaded from, without loading it.
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    llamagen_bundle::site_packages::dirs()
        .into_iter()
        .find_map(|sp| lib_in_package(&sp.join("onnxruntime")))
        .or_else(python_reported_package)
}

fn lib_in_package(pkg: &Path) -> Option<PathBuf> {
    let capi = pkg.join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    libs.sort();
    libs.into_iter().next()
}

fn python_reported_package() -> Option<PathBuf> {
    python_reported_package_from(&std::env::temp_dir())
}

/// Asks `python3` where `onnxruntime` is, run from `cwd` in isolated mode (`-I`: neither the
/// current directory nor PYTHON* variables nor the user site enter `sys.path`; the user site is
/// searched directly by `site_packages::dirs`), so a planted `./onnxruntime.py` never runs.
fn python_reported_package_from(cwd: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-I",
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .current_dir(cwd)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    lib_in_package(Path::new(dir.trim()))
}

#[cfg(test)]
mod tests {
    /// Issue 11: `python3 -c "import onnxruntime"` ran from the current directory, so a
    /// planted `./onnxruntime.py` executed. Isolated mode must not import it even when run from
    /// that very folder.
    #[test]
    fn python_probe_ignores_a_planted_onnxruntime_py() {
        let dir = std::env::temp_dir().join(format!("llamagen-plant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("planted-ran");
        let _ = std::fs::remove_file(&marker);
        std::fs::write(
            dir.join("onnxruntime.py"),
            format!(
                "open({:?}, 'w').write('x')\n__file__ = '/nonexistent/onnxruntime/__init__.py'\n",
                marker.display().to_string()
            ),
        )
        .unwrap();
        let _ = super::python_reported_package_from(&dir);
        let ran = marker.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!ran, "the planted onnxruntime.py was executed");
    }
}
