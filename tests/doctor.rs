//! `llamagen doctor` reports every check with a reason and exits 0, with or without a GPU;
//! `--compile-kernels` compiles every kernel file with NVRTC and fails on a broken one.

use std::process::{Command, Output};

fn doctor(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn doctor_reports_onnx_runtime_and_the_cuda_backend() {
    let (out, text) = doctor(&[]);
    assert!(out.status.success(), "{text}");
    // The tests run with ONNX Runtime installed (scripts/setup.sh), so the CPU backend is usable.
    assert!(text.contains("ok onnxruntime"), "{text}");
    assert!(text.contains("backends: cpu usable; cuda "), "{text}");
    let names: &[&str] = if cfg!(feature = "cuda") {
        &["nvrtc", "cublas", "cuda driver", "gpu"]
    } else {
        &["cuda"]
    };
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.len() > 3 && l[3..].starts_with(&format!("{name} "))),
            "{name} missing:\n{text}"
        );
    }
    if !cfg!(feature = "cuda") {
        assert!(
            text.contains("cuda unusable (not built (rebuild with --features cuda))"),
            "{text}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn compile_kernels_without_the_feature_fails_clearly() {
    let (out, text) = doctor(&["--compile-kernels"]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rebuild with --features cuda"), "{text}");
}

#[test]
fn arch_needs_compile_kernels() {
    let (out, text) = doctor(&["--arch", "sm_90"]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("--compile-kernels"), "{text}");
}

/// Needs libnvrtc (scripts/setup.sh installs the wheel), not a GPU.
#[cfg(feature = "cuda")]
#[test]
fn compile_kernels_reports_every_file_for_every_arch() {
    use llamagen_cuda::{kernels::SOURCES, libs};
    if let Err(e) = libs::nvrtc() {
        eprintln!("skipped: {e}");
        return;
    }
    let (out, text) = doctor(&["--compile-kernels", "--arch", "sm_80,sm_90"]);
    assert!(out.status.success(), "{text}");
    for k in SOURCES {
        for arch in ["sm_80", "sm_90"] {
            let line = format!("{} {arch}: ok (", k.file);
            assert!(text.contains(&line), "{line} missing:\n{text}");
            assert!(
                text.contains(&format!("ms, {} kernels)", k.functions().len())),
                "{text}"
            );
        }
    }
    // A real arch NVRTC does not know fails every file, with NVRTC's reason, and exit 1.
    let (out, text) = doctor(&["--compile-kernels", "--arch", "sm_1"]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("gpt.cu sm_1: FAILED"), "{text}");
    assert!(text.contains("kernel compilations failed"), "{text}");
}
