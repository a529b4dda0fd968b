//! NVRTC compiles every kernel file to CUBIN for the GPUs we target, every declared kernel is in
//! the CUBIN, and a compile error carries NVRTC's log. Needs libnvrtc (the nvidia-cuda-nvrtc
//! wheel that scripts/setup.sh installs), not a GPU; skipped with a message without it.
#![cfg(feature = "driver")]

use llamagen_cuda::kernels::{kernel_names, KernelSource, SOURCES};
use llamagen_cuda::CudaError;
use llamagen_cuda::{libs, nvrtc};

fn have_nvrtc() -> bool {
    match libs::nvrtc() {
        Ok(l) => {
            eprintln!("nvrtc: {} ({:?})", l.path.display(), l.origin);
            true
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

const TWO_KERNELS: KernelSource = KernelSource {
    file: "two.cu",
    src: "DEVICE float twice(float x) { return 2.0f * x; }\n\
          KERNEL void scale_f16(f16* y, const f16* x, i32 n) {\n\
            i32 i = blockIdx.x * blockDim.x + threadIdx.x;\n\
            if (i < n) y[i] = f32_to_f16(twice(f16_to_f32(x[i])));\n\
          }\n\
          KERNEL void fill_i32(i32* y, i32 v, i32 n) {\n\
            i32 i = blockIdx.x * blockDim.x + threadIdx.x;\n\
            if (i < n) y[i] = v;\n\
          }\n",
    options: &["--fmad=false"],
    headers: &[],
};

#[test]
fn every_kernel_file_compiles_for_sm80_and_sm90() {
    if !have_nvrtc() {
        return;
    }
    let reports = nvrtc::compile_all(&["sm_80", "sm_90"]);
    assert_eq!(reports.len(), 2 * SOURCES.len());
    let mut failures = Vec::new();
    for r in &reports {
        let declared = SOURCES
            .iter()
            .find(|k| k.file == r.file)
            .unwrap()
            .functions();
        eprintln!(
            "{} {}: {:?} ({:.0} ms, {} kernels)",
            r.file,
            r.arch,
            r.result.as_ref().map(|_| "ok"),
            r.ms,
            r.functions
        );
        match &r.result {
            Ok(bytes) => {
                assert!(*bytes > 0);
                assert_eq!(r.functions, declared.len(), "{} {}", r.file, r.arch);
            }
            Err(e) => failures.push(format!("{} {}: {e}", r.file, r.arch)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_declared_kernel_is_in_the_cubin_and_nothing_else() {
    if !have_nvrtc() {
        return;
    }
    let cubin = nvrtc::compile_cubin(&TWO_KERNELS, "sm_90").unwrap();
    assert_eq!(&cubin[..4], b"\x7fELF");
    let mut defined = nvrtc::cubin_functions(&cubin).unwrap();
    defined.sort();
    let mut declared: Vec<String> = kernel_names(TWO_KERNELS.src)
        .iter()
        .map(|s| s.to_string())
        .collect();
    declared.sort();
    assert_eq!(declared, ["fill_i32", "scale_f16"]);
    assert_eq!(
        defined, declared,
        "the inlined DEVICE helper is not a kernel"
    );
    // And the same for the real files, where they declare any.
    for k in SOURCES {
        let defined = nvrtc::cubin_functions(&nvrtc::compile_cubin(k, "sm_80").unwrap()).unwrap();
        for f in k.functions() {
            assert!(
                defined.iter().any(|d| d == f),
                "{f} missing from {}",
                k.file
            );
        }
    }
}

#[test]
fn a_compile_error_returns_the_log_naming_the_file() {
    if !have_nvrtc() {
        return;
    }
    let broken = KernelSource {
        file: "broken.cu",
        src: "KERNEL void broken(float* y) {\n  y[0] = undefined_thing;\n}\n",
        options: &[],
        headers: &[],
    };
    match nvrtc::compile_cubin(&broken, "sm_90") {
        Err(CudaError::Call { context, message }) => {
            assert!(
                context.contains("broken.cu") && context.contains("sm_90"),
                "{context}"
            );
            assert!(message.contains("NVRTC_ERROR_COMPILATION"), "{message}");
            assert!(message.contains("undefined_thing"), "{message}");
            // The #line directive makes NVRTC point into the file, not the prelude.
            assert!(message.contains("broken.cu(2)"), "{message}");
        }
        other => panic!("expected a Cuda error with the log, got {other:?}"),
    }
    let bad_arch = nvrtc::compile_cubin(&TWO_KERNELS, "sm_1");
    assert!(
        matches!(bad_arch, Err(CudaError::Call { .. })),
        "{bad_arch:?}"
    );
}

#[test]
fn version_and_supported_archs_are_reported() {
    if !have_nvrtc() {
        return;
    }
    let (major, minor) = nvrtc::nvrtc_version().unwrap();
    eprintln!("nvrtc {major}.{minor}");
    assert!(major >= 12, "{major}.{minor}");
    let archs = nvrtc::supported_archs().unwrap();
    for a in ["sm_80", "sm_89", "sm_90"] {
        assert!(archs.iter().any(|x| x == a), "{a} not in {archs:?}");
    }
}

#[test]
fn malformed_cubins_are_errors_not_panics() {
    assert!(nvrtc::cubin_functions(b"").is_err());
    assert!(nvrtc::cubin_functions(b"not an elf file at all").is_err());
    // A 64-bit ELF header whose section table points far outside the file.
    let mut elf = vec![0u8; 64];
    elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
    elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    assert!(nvrtc::cubin_functions(&elf).is_err());
}
