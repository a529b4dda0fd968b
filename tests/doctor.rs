//! `llamagen doctor` reports every check with a reason and exits 0, with or without a GPU.

use std::process::Command;

#[test]
fn doctor_reports_onnx_runtime_and_the_nvidia_pieces() {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tests run with ONNX Runtime installed (scripts/setup.sh), so the CPU backend is usable.
    assert!(text.contains("ok onnxruntime"), "{text}");
    assert!(text.contains("backends: cpu usable"), "{text}");
    for name in ["cuda driver", "nvrtc", "cublas"] {
        assert!(
            text.lines().any(|l| l[3..].starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
}
