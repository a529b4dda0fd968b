//! Finds and preloads the NVIDIA libraries the CUDA backend needs: the driver (`libcuda.so.1`),
//! NVRTC and cuBLAS/cuBLASLt.
//!
//! cudarc opens its libraries by bare name and panics when none loads, and it has no library
//! path setting. So before any cudarc call we make sure the library is loadable by name: a
//! library preloaded by absolute path is found again by its SONAME, and we keep the handles for
//! the life of the process.
//!
//! Search order per library, first hit wins:
//! 1. the folders of `LLAMAGEN_CUDA_LIB_DIR` (`:`-separated);
//! 2. whatever the system loader already finds (`LD_LIBRARY_PATH`, `ld.so.cache`, a toolkit);
//! 3. pip wheels in the usual site-packages folders (`nvidia/cu13/lib`, then the cu12 layouts
//!    `nvidia/cuda_nvrtc/lib` and `nvidia/cublas/lib`); the driver is never taken from a wheel
//!    but from the driver folders of NVIDIA containers and WSL.
//!
//! Companions are loaded first from the same folder: `libnvrtc-builtins` (the 13.0 wheel's
//! `libnvrtc` has no `$ORIGIN` RPATH and opens it by bare name) and `libcublasLt`.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::CudaError;

/// The environment variable naming extra library folders, searched first.
pub const LIB_DIR_VAR: &str = "LLAMAGEN_CUDA_LIB_DIR";

/// One NVIDIA library cudarc loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Driver,
    Nvrtc,
    Cublas,
}

/// Where a library was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A folder of `LLAMAGEN_CUDA_LIB_DIR`.
    EnvDir,
    /// The system loader's own search path.
    System,
    /// A pip wheel in site-packages.
    SitePackages,
    /// A driver folder of NVIDIA containers or WSL.
    DriverDir,
}

/// A library that cudarc can now open by name.
#[derive(Debug)]
pub struct Loaded {
    pub lib: Lib,
    pub origin: Origin,
    /// The main library's file (or its bare name when the loader does not say).
    pub path: PathBuf,
    _handles: Vec<libloading::Library>,
}

impl Lib {
    /// File stem: `lib<stem>.so.<major>`.
    fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "cuda",
            Lib::Nvrtc => "nvrtc",
            Lib::Cublas => "cublas",
        }
    }

    /// Libraries loaded before the main one, from its folder, when present there.
    fn companions(self) -> &'static [&'static str] {
        match self {
            Lib::Driver => &[],
            Lib::Nvrtc => &["nvrtc-builtins"],
            Lib::Cublas => &["cublasLt"],
        }
    }

    /// Folders inside site-packages where the wheels put the library.
    fn wheel_dirs(self) -> &'static [&'static str] {
        match self {
            Lib::Driver => &[],
            Lib::Nvrtc => &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
            Lib::Cublas => &["nvidia/cu13/lib", "nvidia/cublas/lib"],
        }
    }

    fn missing_message(self) -> String {
        match self {
            Lib::Driver => "no NVIDIA driver (libcuda.so.1)".into(),
            Lib::Nvrtc => "libnvrtc not found; install it with \
                `python3 -m pip install nvidia-cuda-nvrtc` or set LLAMAGEN_CUDA_LIB_DIR"
                .into(),
            Lib::Cublas => "libcublas not found; install it with \
                `python3 -m pip install nvidia-cublas` or set LLAMAGEN_CUDA_LIB_DIR"
                .into(),
        }
    }

    /// Whether cudarc finds the library by name now (never panics).
    fn present(self) -> bool {
        // SAFETY: only tries to dlopen NVIDIA's libraries by their documented names.
        unsafe {
            match self {
                Lib::Driver => cudarc::driver::sys::is_culib_present(),
                Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Lib::Cublas => {
                    cudarc::cublas::sys::is_culib_present()
                        && cudarc::cublaslt::sys::is_culib_present()
                }
            }
        }
    }
}

/// The CUDA driver, loaded once per process.
pub fn driver() -> Result<&'static Loaded, CudaError> {
    static LIB: OnceLock<Result<Loaded, String>> = OnceLock::new();
    cached(&LIB, Lib::Driver)
}

/// NVRTC (with its builtins), loaded once per process.
pub fn nvrtc() -> Result<&'static Loaded, CudaError> {
    static LIB: OnceLock<Result<Loaded, String>> = OnceLock::new();
    cached(&LIB, Lib::Nvrtc)
}

/// cuBLAS (with cuBLASLt), loaded once per process.
pub fn cublas() -> Result<&'static Loaded, CudaError> {
    static LIB: OnceLock<Result<Loaded, String>> = OnceLock::new();
    cached(&LIB, Lib::Cublas)
}

fn cached(
    cell: &'static OnceLock<Result<Loaded, String>>,
    lib: Lib,
) -> Result<&'static Loaded, CudaError> {
    cell.get_or_init(|| load(lib))
        .as_ref()
        .map_err(|reason| CudaError::Unavailable {
            reason: reason.clone(),
        })
}

/// The driver's CUDA version, `(major, minor)` (no `cuInit` needed).
pub fn driver_version() -> Result<(i32, i32), CudaError> {
    driver()?;
    let mut v: c_int = 0;
    // SAFETY: the driver is loaded; `v` is a live local.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| CudaError::call("cuDriverGetVersion", e))?;
    Ok(split_version(v))
}

/// cuBLAS's version, `major.minor.patch` (no handle needed).
pub fn cublas_version() -> Result<String, CudaError> {
    use cudarc::cublas::sys::{cublasGetProperty, libraryPropertyType as P};
    cublas()?;
    let mut parts = Vec::new();
    for p in [P::MAJOR_VERSION, P::MINOR_VERSION, P::PATCH_LEVEL] {
        let mut v: c_int = 0;
        // SAFETY: cuBLAS is loaded; `v` is a live local.
        unsafe { cublasGetProperty(p, &mut v) }
            .result()
            .map_err(|e| CudaError::call("cublasGetProperty", e))?;
        parts.push(v.to_string());
    }
    Ok(parts.join("."))
}

/// CUDA encodes versions as `1000 * major + 10 * minor`.
pub fn split_version(v: c_int) -> (i32, i32) {
    (v / 1000, (v % 1000) / 10)
}

fn load(lib: Lib) -> Result<Loaded, String> {
    let env_dirs = env_dirs();
    let fallback = fallback_dirs(lib, &llamagen_bundle::site_packages::dirs());
    let system = || lib.present();
    // The folders python3 itself reports, only when the usual ones do not have the library.
    let found = locate(lib, &env_dirs, system, &fallback).or_else(|| {
        let reported = fallback_dirs(lib, &python_site_packages());
        locate(lib, &[], || false, &reported)
    });
    let Some((origin, files)) = found else {
        let mut msg = lib.missing_message();
        if !env_dirs.is_empty() {
            msg.push_str(&format!(" (not in {LIB_DIR_VAR} either)"));
        }
        return Err(msg);
    };
    if origin == Origin::System {
        return load_system(lib);
    }
    let mut handles = Vec::new();
    for f in &files {
        // SAFETY: loading runs the library's initialisers; these are NVIDIA's libraries,
        // found by their documented names and folders.
        let h = unsafe { libloading::Library::new(f) }
            .map_err(|e| format!("cannot load {}: {e}", f.display()))?;
        handles.push(h);
    }
    let path = files.last().cloned().unwrap_or_default();
    if !lib.present() {
        return Err(format!(
            "loaded {} but it is not found by name afterwards",
            path.display()
        ));
    }
    tracing::debug!(lib = lib.stem(), path = %path.display(), "preloaded");
    Ok(Loaded {
        lib,
        origin,
        path,
        _handles: handles,
    })
}

/// Holds the library the system loader finds (the same one cudarc gets) and names its file.
fn load_system(lib: Lib) -> Result<Loaded, String> {
    let (name, handle) = cudarc::get_lib_name_candidates(lib.stem())
        .into_iter()
        // SAFETY: as in `load`; a bare name goes through the system loader's search.
        .find_map(|n| unsafe { libloading::Library::new(&n) }.ok().map(|h| (n, h)))
        .ok_or_else(|| lib.missing_message())?;
    let path = mapped_file(&format!("lib{}.so", lib.stem())).unwrap_or_else(|| name.into());
    Ok(Loaded {
        lib,
        origin: Origin::System,
        path,
        _handles: vec![handle],
    })
}

/// The folders of `LLAMAGEN_CUDA_LIB_DIR`.
fn env_dirs() -> Vec<PathBuf> {
    std::env::var_os(LIB_DIR_VAR)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Folders searched after the system loader: wheel folders in each site-packages, or for the
/// driver the folders NVIDIA containers and WSL mount it in.
fn fallback_dirs(lib: Lib, site_packages: &[PathBuf]) -> Vec<PathBuf> {
    if lib == Lib::Driver {
        return ["/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"]
            .map(PathBuf::from)
            .to_vec();
    }
    site_packages
        .iter()
        .flat_map(|sp| lib.wheel_dirs().iter().map(move |d| sp.join(d)))
        .collect()
}

/// Where `lib` comes from and which files to preload (companions first), in search order.
/// `system` is asked only when no `env_dirs` folder has the library.
fn locate(
    lib: Lib,
    env_dirs: &[PathBuf],
    system: impl FnOnce() -> bool,
    fallback: &[PathBuf],
) -> Option<(Origin, Vec<PathBuf>)> {
    if let Some(files) = env_dirs.iter().find_map(|d| files_in(lib, d)) {
        return Some((Origin::EnvDir, files));
    }
    if system() {
        return Some((Origin::System, Vec::new()));
    }
    let origin = match lib {
        Lib::Driver => Origin::DriverDir,
        _ => Origin::SitePackages,
    };
    fallback
        .iter()
        .find_map(|d| files_in(lib, d))
        .map(|f| (origin, f))
}

/// The site-packages folders `python3` reports (a virtualenv or prefix the fixed list misses).
fn python_site_packages() -> Vec<PathBuf> {
    let script =
        "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
    std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The files to load for `lib` from `dir`, companions first, if `dir` holds the library:
/// `lib<stem>.so.<major>` (the highest major), then companions `lib<c>.so.<major>[.<minor>]`.
fn files_in(lib: Lib, dir: &Path) -> Option<Vec<PathBuf>> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let (major, main) = names
        .iter()
        .filter_map(|n| {
            let v = n.strip_prefix(&format!("lib{}.so.", lib.stem()))?;
            Some((v.parse::<u32>().ok()?, n))
        })
        .max()?;
    let mut files = Vec::new();
    for c in lib.companions() {
        let prefix = format!("lib{c}.so.{major}");
        let mut matching: Vec<&String> = names
            .iter()
            .filter(|n| *n == &prefix || n.starts_with(&format!("{prefix}.")))
            .collect();
        // The SONAME form (shortest) when there is one, else the highest version.
        matching.sort_by_key(|n| (n.len(), std::cmp::Reverse((*n).clone())));
        if let Some(n) = matching.first() {
            files.push(dir.join(n));
        }
    }
    files.push(dir.join(main));
    Some(files)
}

/// The file of a mapped shared object whose name starts with `prefix` (Linux).
fn mapped_file(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
}

#[cfg(test)]
#[path = "tests/libs.rs"]
mod tests;
