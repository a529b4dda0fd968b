//! Test data locations, found the same way by every test binary:
//!
//! 1. `LLAMAGEN_GOLDEN`: the folder that holds `tiny-c2i/` (and later `tiny-var/`), when set;
//! 2. else `tests/golden` of the test data root: the checkout the tests were built in, or, for
//!    test binaries carried elsewhere (`scripts/gpu_kit.sh`), the first folder holding
//!    `tests/golden` above the current directory or above the executable.
//!
//! The fixtures are byte-identical copies of `shared/golden` (the steering repository's source
//! of truth; `tests/golden_copy.rs` fails on any difference when that folder is beside the
//! checkout), so a plain clone runs every test.

use std::path::{Path, PathBuf};

/// The workspace root this crate was built in (`test-support/..`).
fn built_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn has_test_data(dir: &Path) -> bool {
    dir.join("tests/golden").is_dir() && dir.join("tests/fixtures").is_dir()
}

/// The folder whose `tests/golden` and `tests/fixtures` the tests read: the checkout the tests
/// were built in when it is still there, else the nearest such folder above the current
/// directory or above the running executable (a GPU kit unpacked anywhere).
///
/// Panics with what was searched when there is none: a test without its data cannot pass.
pub fn test_data_root() -> PathBuf {
    let built = built_root();
    if has_test_data(&built) {
        return built;
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        starts.push(dir);
    }
    for start in &starts {
        if let Some(found) = start.ancestors().find(|d| has_test_data(d)) {
            return found.to_path_buf();
        }
    }
    panic!(
        "no test data: neither {} nor any folder above {:?} holds tests/golden and tests/fixtures \
         (run from a checkout or an unpacked GPU kit, or set LLAMAGEN_GOLDEN)",
        built.display(),
        starts
    );
}

/// The golden fixtures' folder (holding `tiny-c2i/`): `LLAMAGEN_GOLDEN`, else
/// `tests/golden` of [`test_data_root`].
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("LLAMAGEN_GOLDEN") {
        Some(p) => PathBuf::from(p),
        None => test_data_root().join("tests/golden"),
    }
}

/// `tests/fixtures/<name>` of [`test_data_root`] (small model YAMLs of the golden models).
pub fn fixture(name: &str) -> PathBuf {
    test_data_root().join("tests/fixtures").join(name)
}
