//! Which backends can run on this machine, and why not: the ONNX Runtime library, and the
//! NVIDIA pieces a GPU backend needs (CUDA driver and GPU, NVRTC, cuBLAS).
//!
//! The NVIDIA libraries are probed by loading them with libloading and calling a version query
//! (a few plain C functions: a bindings crate such as cudarc would be the way for the backend
//! itself, but it aborts the process when a library is missing, which a diagnostic must not).
//! Nothing here needs a GPU; on a machine without one every NVIDIA line says what is missing.

use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;

/// One line of the report: what was checked, whether it is usable, and the detail.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Runs every check. Loading ONNX Runtime creates this process's ORT environment.
pub fn report() -> Vec<Check> {
    vec![onnx_runtime(), cuda_driver(), nvrtc(), cublas()]
}

fn onnx_runtime() -> Check {
    let name = "onnxruntime";
    match crate::ort_env::environment() {
        Ok(_) => {
            let path = crate::ort_env::library_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let build = ort::info().trim().to_string();
            Check {
                name,
                ok: true,
                detail: format!("{path} ({build}); backend cpu usable"),
            }
        }
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("{e}; backend cpu unusable"),
        },
    }
}

/// Candidate files of an NVIDIA library: bare names for the system loader, then the copies
/// pip wheels install (`nvidia/cu13/lib`, `nvidia/<package>/lib`).
fn candidates(stem: &str, wheel_dirs: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = [".so", ".so.13", ".so.12"]
        .iter()
        .map(|ext| PathBuf::from(format!("lib{stem}{ext}")))
        .collect();
    for sp in crate::ort_env::site_packages_dirs() {
        for dir in wheel_dirs {
            for ext in [".so.13", ".so.12"] {
                out.push(sp.join(dir).join(format!("lib{stem}{ext}")));
            }
        }
    }
    out
}

/// The first candidate that loads, with where it came from.
fn load_first(paths: &[PathBuf]) -> Option<(libloading::Library, PathBuf)> {
    paths.iter().find_map(|p| {
        // SAFETY: loading runs the library's initialisers; these are NVIDIA's own libraries,
        // looked up by their documented names.
        unsafe { libloading::Library::new(p) }
            .ok()
            .map(|l| (l, p.clone()))
    })
}

fn cuda_driver() -> Check {
    let name = "cuda driver";
    let Some((lib, path)) =
        load_first(&[PathBuf::from("libcuda.so.1"), PathBuf::from("libcuda.so")])
    else {
        return Check {
            name,
            ok: false,
            detail: "libcuda.so.1 not found (no NVIDIA driver on this machine)".into(),
        };
    };
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type GetInt = unsafe extern "C" fn(*mut c_int) -> c_int;
    type DeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type DeviceName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    // SAFETY: the symbols are the CUDA driver API's, called with the argument types it
    // documents; every out-pointer points at a live local.
    let result = unsafe {
        (|| -> Result<String, String> {
            let sym = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
            let init: libloading::Symbol<Init> = lib.get(b"cuInit").map_err(|_| sym(b"cuInit"))?;
            let version: libloading::Symbol<GetInt> = lib
                .get(b"cuDriverGetVersion")
                .map_err(|_| sym(b"cuDriverGetVersion"))?;
            let count: libloading::Symbol<GetInt> = lib
                .get(b"cuDeviceGetCount")
                .map_err(|_| sym(b"cuDeviceGetCount"))?;
            let device: libloading::Symbol<DeviceGet> =
                lib.get(b"cuDeviceGet").map_err(|_| sym(b"cuDeviceGet"))?;
            let dev_name: libloading::Symbol<DeviceName> = lib
                .get(b"cuDeviceGetName")
                .map_err(|_| sym(b"cuDeviceGetName"))?;
            let (mut v, mut n) = (0, 0);
            if version(&mut v) != 0 {
                return Err("cuDriverGetVersion failed".into());
            }
            let rc = init(0);
            if rc != 0 {
                return Err(format!(
                    "driver {} but cuInit failed (error {rc})",
                    fmt_version(v)
                ));
            }
            if count(&mut n) != 0 || n == 0 {
                return Err(format!("driver {} but no GPU", fmt_version(v)));
            }
            let mut names = Vec::new();
            for i in 0..n {
                let mut dev = 0;
                let mut buf = [0 as c_char; 256];
                if device(&mut dev, i) == 0 && dev_name(buf.as_mut_ptr(), 256, dev) == 0 {
                    names.push(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
                }
            }
            Ok(format!(
                "driver {}, GPUs: {}",
                fmt_version(v),
                names.join(", ")
            ))
        })()
    };
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail: format!("{} ({detail})", path.display()),
        },
        Err(why) => Check {
            name,
            ok: false,
            detail: format!("{}: {why}", path.display()),
        },
    }
}

fn nvrtc() -> Check {
    let name = "nvrtc";
    let paths = candidates("nvrtc", &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"]);
    let Some((lib, path)) = load_first(&paths) else {
        return Check {
            name,
            ok: false,
            detail: "libnvrtc not found (system, or the nvidia-cuda-nvrtc wheel)".into(),
        };
    };
    type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
    // SAFETY: nvrtcVersion(int*, int*) as documented; both pointers point at live locals.
    let version = unsafe {
        lib.get::<Version>(b"nvrtcVersion").ok().and_then(|f| {
            let (mut major, mut minor) = (0, 0);
            (f(&mut major, &mut minor) == 0).then(|| format!("{major}.{minor}"))
        })
    };
    Check {
        name,
        ok: version.is_some(),
        detail: format!(
            "{} (version {})",
            path.display(),
            version.unwrap_or_else(|| "unknown: nvrtcVersion failed".into())
        ),
    }
}

fn cublas() -> Check {
    let name = "cublas";
    let paths = candidates("cublas", &["nvidia/cu13/lib", "nvidia/cublas/lib"]);
    match load_first(&paths) {
        Some((_, path)) => Check {
            name,
            ok: true,
            detail: path.display().to_string(),
        },
        None => Check {
            name,
            ok: false,
            detail: "libcublas not found (system, or the nvidia-cublas wheel)".into(),
        },
    }
}

/// CUDA encodes versions as 1000 * major + 10 * minor.
fn fmt_version(v: c_int) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_versions_are_decoded() {
        assert_eq!(super::fmt_version(13000), "13.0");
        assert_eq!(super::fmt_version(12080), "12.8");
    }

    #[test]
    fn every_check_reports_a_reason() {
        for c in super::report() {
            assert!(!c.detail.is_empty(), "{}", c.name);
        }
    }
}
