//! Whether this machine can run the CUDA backend, and why not: NVRTC, cuBLAS, the driver and a
//! GPU, found the way the backend finds them ([`crate::libs`]); and every kernel file compiled
//! by NVRTC on demand, which needs no GPU. Nothing here panics or needs a GPU.

use crate::error::CudaError;

/// One line of the report: what was checked, whether it is usable, and the detail.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
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

#[cfg(not(feature = "driver"))]
const NOT_BUILT: &str = "not built (rebuild with --features cuda)";

/// The NVRTC, cuBLAS, driver and GPU lines, and whether the backend can run.
pub fn checks() -> (Vec<Check>, Result<(), String>) {
    #[cfg(feature = "driver")]
    return with_driver::checks();
    #[cfg(not(feature = "driver"))]
    {
        let line = Check {
            name: "cuda",
            ok: false,
            detail: NOT_BUILT.into(),
        };
        (vec![line], Err(NOT_BUILT.into()))
    }
}

/// Compiles every kernel file with NVRTC for each of `archs` (`sm_90`; empty: the GPU's arch
/// if there is one, else sm_80, sm_87, sm_89, sm_90 and sm_100). Fails only when NVRTC is
/// missing (or this build has no driver support); per-file failures are in the results.
pub fn compile_kernels(archs: &[String]) -> Result<Vec<KernelCheck>, CudaError> {
    #[cfg(feature = "driver")]
    return with_driver::compile_kernels(archs);
    #[cfg(not(feature = "driver"))]
    {
        let _ = archs;
        Err(CudaError::Unavailable {
            reason: format!("{NOT_BUILT}; --compile-kernels needs it"),
        })
    }
}

#[cfg(feature = "driver")]
mod with_driver {
    use super::{Check, KernelCheck};
    use crate::error::CudaError;
    use crate::{driver, libs, nvrtc};

    /// Archs compiled for when there is no GPU: A100, Jetson Orin, L4/L40/RTX 4090, H100/H200,
    /// B200.
    const DEFAULT_ARCHS: [&str; 5] = ["sm_80", "sm_87", "sm_89", "sm_90", "sm_100"];

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
                "{} ({}; version {major}.{minor}; archs {}; kernel cache {})",
                lib.path.display(),
                origin(lib.origin),
                archs.join(","),
                match crate::kernel_cache::KernelCache::from_env().dir() {
                    Some(d) => d.display().to_string(),
                    None => format!("off ({})", crate::kernel_cache::CACHE_ENV),
                }
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

    fn failed(name: &'static str, e: CudaError) -> Check {
        // The backend's own wording, without its "backend 'cuda' is not available" prefix.
        let detail = match e {
            CudaError::Unavailable { reason } => reason,
            e => e.to_string(),
        };
        Check {
            name,
            ok: false,
            detail,
        }
    }

    pub fn compile_kernels(archs: &[String]) -> Result<Vec<KernelCheck>, CudaError> {
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
                    CudaError::Call { message, .. } => message,
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
