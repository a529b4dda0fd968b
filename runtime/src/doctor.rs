//! Which backends can run on this machine, and why not: the ONNX Runtime library, and with the
//! `cuda` feature the pieces the CUDA backend needs (NVRTC, cuBLAS, the driver and a GPU; the
//! CUDA crate's `doctor`, reached through the backend dispatch module). Also compiles the
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
    let (cuda_checks, cuda) = crate::backend::cuda_checks();
    let int8 = int8_speed(ort.ok);
    let mut checks = vec![ort, int8];
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
/// if there is one, else sm_80, sm_87, sm_89, sm_90 and sm_100). Fails only when compiling is impossible here
/// (no `cuda` feature, no NVRTC); per-file failures are in the results.
pub fn compile_kernels(archs: &[String]) -> Result<Vec<KernelCheck>, RuntimeError> {
    crate::backend::compile_cuda_kernels(archs)
}

/// Whether int8 bundles run fast on the loaded ONNX Runtime (see
/// [`crate::ort_env::INT8_FAST_SINCE`]).
fn int8_speed(ort_ok: bool) -> Check {
    let name = "ort-int8";
    let Some(version) = ort_ok.then(crate::ort_env::library_version).flatten() else {
        return Check {
            name,
            ok: false,
            detail: "ONNX Runtime version unknown".into(),
        };
    };
    match crate::ort_env::slow_precision_warning(llamagen_bundle::Precision::Int8, &version) {
        None => Check {
            name,
            ok: true,
            detail: format!("ONNX Runtime {version}: int8 bundles run at full speed"),
        },
        Some(warning) => Check {
            name,
            ok: false,
            detail: warning,
        },
    }
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
