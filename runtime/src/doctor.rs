//! Which backends can run on this machine, and why not: the ONNX Runtime library, and with the
//! `cuda` feature the pieces the CUDA backend needs (NVRTC, cuBLAS, the driver and a GPU),
//! found the way the backend finds them ([`crate::backend::cuda::libs`]). Also compiles the
//! kernel files with NVRTC on demand, which needs no GPU.
//!
//! Nothing here panics or needs a GPU; on a machine without one every CUDA line says what is
//! missing.

use crate::error::RuntimeError;

/// One line of the report: what was checked, whether it is usable, and the detail.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Whether a backend can run here, with the reason when not.
#[derive(Clone, Debug)]
pub struct Usable {
    pub backend: &'static str,
    pub usable: Result<(), String>,
}

/// Every check, then the verdict per backend.
#[derive(Clone, Debug)]
pub struct Report {
    pub checks: Vec<Check>,
    pub backends: Vec<Usable>,
}

/// One kernel file compiled for one arch.
#[derive(Clone, Debug)]
pub struct KernelCheck {
    pub file: &'static str,
    pub arch: String,
    pub ms: f64,
    /// The number of kernels found in the CUBIN, or NVRTC's log / the error.
    pub result: Result<usize, String>,
}

/// Runs every check. Loading ONNX Runtime creates this process's ORT environment.
pub fn report() -> Report {
    let ort = onnx_runtime();
    let cpu = Usable {
        backend: "cpu",
        usable: if ort.ok {
            Ok(())
        } else {
            Err("ONNX Runtime missing".into())
        },
    };
    let (cuda_checks, cuda) = cuda::checks();
    let mut checks = vec![ort];
    checks.extend(cuda_checks);
    Report {
        checks,
        backends: vec![
            cpu,
            Usable {
                backend: "cuda",
                usable: cuda,
            },
        ],
    }
}

/// Compiles every kernel file with NVRTC for each of `archs` (`sm_90`; empty: the GPU's arch
/// if there is one, else sm_80, sm_89 and sm_90). Fails only when compiling is impossible here
/// (no `cuda` feature, no NVRTC); per-file failures are in the results.
pub fn compile_kernels(archs: &[String]) -> Result<Vec<KernelCheck>, RuntimeError> {
    cuda::compile_kernels(archs)
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
                detail: format!("{path} ({build})"),
            }
        }
        Err(e) => Check {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::{Check, KernelCheck};
    use crate::error::RuntimeError;

    const NOT_BUILT: &str = "not built (rebuild with --features cuda)";

    pub fn checks() -> (Vec<Check>, Result<(), String>) {
        let line = Check {
            name: "cuda",
            ok: false,
            detail: NOT_BUILT.into(),
        };
        (vec![line], Err(NOT_BUILT.into()))
    }

    pub fn compile_kernels(_: &[String]) -> Result<Vec<KernelCheck>, RuntimeError> {
        Err(RuntimeError::BackendUnavailable {
            name: "cuda".into(),
            reason: format!("{NOT_BUILT}; --compile-kernels needs it"),
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Check, KernelCheck};
    use crate::backend::cuda::{driver, libs, nvrtc};
    use crate::error::RuntimeError;

    /// Archs compiled for when there is no GPU: A100, L4/L40/RTX 4090, H100/H200.
    const DEFAULT_ARCHS: [&str; 3] = ["sm_80", "sm_89", "sm_90"];

    /// The NVRTC, cuBLAS, driver and GPU lines, and whether the backend can run.
    pub fn checks() -> (Vec<Check>, Result<(), String>) {
        let nvrtc_line = nvrtc_check();
        let cublas_line = cublas_check();
        let (driver_line, driver_version) = driver_check();
        let gpu_line = gpu_check(driver_version.is_some());
        let mut lines = vec![nvrtc_line, cublas_line, driver_line, gpu_line];
        // A CUBIN from NVRTC 13 does not load on a 12.x driver.
        if let (Some((drv, _)), Ok((nv, nv_minor))) = (driver_version, nvrtc::nvrtc_version()) {
            if nv > drv {
                lines[0].ok = false;
                lines[0].detail += &format!(
                    "; NVRTC {nv}.{nv_minor} is newer than the driver (CUDA {drv}.x): \
                     install nvidia-cuda-nvrtc {drv}.x"
                );
            }
        }
        let verdict = match lines.iter().find(|c| !c.ok) {
            None => Ok(()),
            Some(c) => Err(format!("{}: {}", c.name, c.detail)),
        };
        (lines, verdict)
    }

    fn origin(o: libs::Origin) -> &'static str {
        match o {
            libs::Origin::EnvDir => libs::LIB_DIR_VAR,
            libs::Origin::System => "system",
            libs::Origin::SitePackages => "site-packages",
            libs::Origin::DriverDir => "driver folder",
        }
    }

    fn nvrtc_check() -> Check {
        let name = "nvrtc";
        let lib = match libs::nvrtc() {
            Ok(l) => l,
            Err(e) => return failed(name, e),
        };
        let detail = match (nvrtc::nvrtc_version(), nvrtc::supported_archs()) {
            (Ok((major, minor)), Ok(archs)) => format!(
                "{} ({}; version {major}.{minor}; archs {})",
                lib.path.display(),
                origin(lib.origin),
                archs.join(",")
            ),
            (Err(e), _) | (_, Err(e)) => return failed(name, e),
        };
        Check {
            name,
            ok: true,
            detail,
        }
    }

    fn cublas_check() -> Check {
        let name = "cublas";
        let lib = match libs::cublas() {
            Ok(l) => l,
            Err(e) => return failed(name, e),
        };
        match libs::cublas_version() {
            Ok(v) => Check {
                name,
                ok: true,
                detail: format!(
                    "{} ({}; version {v})",
                    lib.path.display(),
                    origin(lib.origin)
                ),
            },
            Err(e) => failed(name, e),
        }
    }

    fn driver_check() -> (Check, Option<(i32, i32)>) {
        let name = "cuda driver";
        let lib = match libs::driver() {
            Ok(l) => l,
            Err(e) => return (failed(name, e), None),
        };
        match libs::driver_version() {
            Ok((major, minor)) => {
                let detail = format!(
                    "{} ({}; CUDA {major}.{minor})",
                    lib.path.display(),
                    origin(lib.origin)
                );
                let line = Check {
                    name,
                    ok: true,
                    detail,
                };
                (line, Some((major, minor)))
            }
            Err(e) => (failed(name, e), None),
        }
    }

    fn gpu_check(have_driver: bool) -> Check {
        let name = "gpu";
        if !have_driver {
            return Check {
                name,
                ok: false,
                detail: "none (no NVIDIA driver)".into(),
            };
        }
        match driver::gpus() {
            Ok(gpus) if gpus.is_empty() => Check {
                name,
                ok: false,
                detail: "the driver sees no GPU".into(),
            },
            Ok(gpus) => Check {
                name,
                ok: true,
                detail: gpus
                    .iter()
                    .map(|g| format!("{}: {g}, {}", g.ordinal, g.arch()))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            Err(e) => failed(name, e),
        }
    }

    fn failed(name: &'static str, e: RuntimeError) -> Check {
        // The backend's own wording, without its "backend 'cuda' is not available" prefix.
        let detail = match e {
            RuntimeError::BackendUnavailable { reason, .. } => reason,
            e => e.to_string(),
        };
        Check {
            name,
            ok: false,
            detail,
        }
    }

    pub fn compile_kernels(archs: &[String]) -> Result<Vec<KernelCheck>, RuntimeError> {
        libs::nvrtc()?;
        let archs: Vec<String> = if archs.is_empty() {
            default_archs()
        } else {
            archs.to_vec()
        };
        let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
        Ok(nvrtc::compile_all(&archs)
            .into_iter()
            .map(|r| KernelCheck {
                file: r.file,
                arch: r.arch,
                ms: r.ms,
                result: r.result.map(|_| r.functions).map_err(|e| match e {
                    RuntimeError::Cuda { message, .. } => message,
                    e => e.to_string(),
                }),
            })
            .collect())
    }

    /// The archs of this machine's GPUs, else [`DEFAULT_ARCHS`].
    fn default_archs() -> Vec<String> {
        let mut archs: Vec<String> = libs::driver()
            .and_then(|_| driver::gpus())
            .map(|g| g.iter().map(driver::GpuInfo::arch).collect())
            .unwrap_or_default();
        archs.sort();
        archs.dedup();
        if archs.is_empty() {
            archs = DEFAULT_ARCHS.map(String::from).to_vec();
        }
        archs
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_check_and_backend_reports_a_reason() {
        let r = super::report();
        for c in &r.checks {
            assert!(!c.detail.is_empty(), "{}", c.name);
        }
        let names: Vec<&str> = r.backends.iter().map(|b| b.backend).collect();
        assert_eq!(names, ["cpu", "cuda"]);
        for b in &r.backends {
            if let Err(why) = &b.usable {
                assert!(!why.is_empty(), "{}", b.backend);
            }
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_says_how_to_get_it() {
        let r = super::report();
        let cuda = r.checks.iter().find(|c| c.name == "cuda").unwrap();
        assert!(!cuda.ok && cuda.detail.contains("--features cuda"));
        let err = super::compile_kernels(&[]).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
