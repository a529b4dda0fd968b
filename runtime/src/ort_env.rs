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
        register_shared_cpu_arena(&env)?;
        Ok((env, path))
    });
    match r {
        Ok((env, _)) => Ok(env),
        Err(msg) => Err(RuntimeError::OrtLibrary(msg.clone())),
    }
}

/// Registers one CPU arena in the environment for every session to share (sessions opt in with
/// `session.use_env_allocators`, see `backend::ort_cpu`). The graphs of a request run one after
/// another, so one arena holds the largest live set, where an arena per session keeps each
/// graph's high-water mark for good: VAR-d16 int8's steady peak RSS over repeated requests
/// was step + embed + cond + decoder arenas on top of the weights and the KV cache.
fn register_shared_cpu_arena(env: &ort::environment::Environment) -> Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| format!("cannot describe the shared CPU arena: {e}"))?;
    // One first region of 256 MiB (virtual: pages count once written) instead of ONNX
    // Runtime's default of 1 MiB doubling at each extension. With the default, a request's
    // activations spread over regions of 1, 2, .. 64 MiB, and a 42 MB decoder map that fits
    // none of their free chunks added a 128 MiB region: VAR-d16 int8 peak RSS 592 vs 550 MB
    // (`llamagen bench --runs 2`); GPT-B 321 MB either way. Larger needs still extend it.
    let key = c"initial_chunk_size_bytes";
    let value: usize = 256 << 20;
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: one key and one value, both live for the call; `cfg` receives an owned config,
    // released below.
    unsafe {
        let status = (ort::api().CreateArenaCfgV2)(&key.as_ptr(), &value, 1, &mut cfg);
        ort::Error::result_from_status(status)
    }
    .map_err(|e| format!("cannot configure the shared CPU arena: {e}"))?;
    // SAFETY: `env`, `info` and `cfg` are live ONNX Runtime objects for the duration of the
    // call; the returned status is owned and consumed by `result_from_status`.
    let registered = unsafe {
        let status = (ort::api().CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg);
        ort::Error::result_from_status(status)
    };
    // SAFETY: `cfg` came from CreateArenaCfgV2 and is not used after this (ONNX Runtime copies
    // its values when the allocator is created).
    unsafe { (ort::api().ReleaseArenaCfg)(cfg) };
    registered.map_err(|e| format!("cannot register the shared CPU arena: {e}"))
}

/// Path of the loaded library, if any.
pub fn library_path() -> Option<PathBuf> {
    match ENV.get() {
        Some(Ok((_, p))) => Some(p.clone()),
        _ => None,
    }
}

/// Version of the loaded ONNX Runtime library (`1.31.1`), from its `OrtGetApiBase`; `None`
/// before it is loaded or when the library does not say.
pub fn library_version() -> Option<String> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    let path = library_path()?;
    VERSION.get_or_init(|| version_of(&path)).clone()
}

fn version_of(path: &Path) -> Option<String> {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: the library is ONNX Runtime, already loaded by `environment()` (this only takes
    // another reference); `OrtGetApiBase` is its stable C entry point returning a static
    // struct whose second member returns a static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> =
            lib.get(b"OrtGetApiBase\0").ok()?;
        let base = get_base();
        if base.is_null() {
            return None;
        }
        let s = ((*base).get_version_string)();
        if s.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// The oldest ONNX Runtime whose CPU int8 path (DequantizeLinear feeding MatMul) we measured
/// fast. Int8 / fp32 decode time of GPT-B (README, "Hostile input and limits"): 8.9x on 1.23.2,
/// 10.2x on 1.24.4, then 0.55x on 1.25.1, 0.50x on 1.27.0, 0.49x on 1.30.0, 0.48x on 1.31.1.
/// Older versions get a warning for int8 bundles.
pub const INT8_FAST_SINCE: (u32, u32) = (1, 25);

/// (major, minor) of a version string such as `1.31.1`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// A warning when bundles of `precision` run slowly on ONNX Runtime `version` (int8 before
/// [`INT8_FAST_SINCE`]), else `None`.
pub fn slow_precision_warning(
    precision: llamagen_bundle::Precision,
    version: &str,
) -> Option<String> {
    if precision != llamagen_bundle::Precision::Int8 {
        return None;
    }
    let (major, minor) = INT8_FAST_SINCE;
    match parse_version(version) {
        Some(v) if v >= INT8_FAST_SINCE => None,
        Some(_) => Some(format!(
            "ONNX Runtime {version} runs int8 bundles slowly on the CPU (int8 decode measured \
             10.2x the fp32 time on 1.24.4, 0.55x on 1.25.1); use ONNX Runtime >= {major}.{minor} \
             or an fp32/fp16 bundle"
        )),
        None => Some(format!(
            "ONNX Runtime version '{version}' is not recognised; int8 bundles are slow before \
             {major}.{minor}"
        )),
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
    use llamagen_bundle::Precision;

    #[test]
    fn int8_is_slow_before_the_measured_floor() {
        let w = super::slow_precision_warning;
        assert!(w(Precision::Int8, "1.23.2").is_some_and(|m| m.contains(">= 1.25")));
        assert!(w(Precision::Int8, "1.24.4").is_some());
        assert!(w(Precision::Int8, "1.25.1").is_none());
        assert!(w(Precision::Int8, "1.31.1").is_none());
        assert!(w(Precision::Int8, "2.0.0").is_none());
        assert!(w(Precision::Fp32, "1.23.2").is_none());
        assert!(w(Precision::Int8, "garbage").is_some());
    }

    #[test]
    fn the_loaded_library_reports_its_version() {
        if super::environment().is_err() {
            eprintln!("skipped: no ONNX Runtime library");
            return;
        }
        let v = super::library_version().expect("a version string");
        assert!(super::parse_version(&v).is_some(), "{v}");
    }

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
