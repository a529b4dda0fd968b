//! NVRTC compiles every kernel file to CUBIN for the GPUs we target, every declared kernel is in
//! the CUBIN, and a compile error carries NVRTC's log. Needs libnvrtc (the nvidia-cuda-nvrtc
//! wheel that scripts/setup.sh installs), not a GPU; skipped with a message without it.
#![cfg(feature = "driver")]

use llamagen_cuda::kernel_cache::{cubins_for, KernelCache, Outcome, CACHE_ENV};
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

/// The `.cubin` files in `dir`.
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "cubin"));
    v.sort();
    v
}

#[test]
fn kernel_cache_stores_then_hits_and_keys_by_arch_and_source() {
    if !have_nvrtc() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(tmp.path().join("kernels"));
    let (first, how) = cache.cubin(&TWO_KERNELS, "sm_90").unwrap();
    assert_eq!(how, Outcome::Compiled { stored: true });
    let files = entries(cache.dir().unwrap());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("two-sm_90-"), "{name}");
    let (again, how) = cache.cubin(&TWO_KERNELS, "sm_90").unwrap();
    assert_eq!(how, Outcome::Hit);
    assert_eq!(again, first);

    // Another arch, or one changed byte of source, is another entry, never the old CUBIN.
    let (_, how) = cache.cubin(&TWO_KERNELS, "sm_80").unwrap();
    assert_eq!(how, Outcome::Compiled { stored: true });
    let edited = KernelSource {
        src: "KERNEL void fill_i32(i32* y, i32 v, i32 n) { if (n > 0) y[0] = v + 1; }\n\
              KERNEL void scale_f16(f16* y, const f16* x, i32 n) {}\n",
        ..TWO_KERNELS
    };
    let (_, how) = cache.cubin(&edited, "sm_90").unwrap();
    assert_eq!(how, Outcome::Compiled { stored: true });
    assert_eq!(entries(cache.dir().unwrap()).len(), 3);
}

#[test]
fn a_damaged_cache_entry_is_compiled_again_and_replaced() {
    if !have_nvrtc() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(tmp.path());
    let (good, _) = cache.cubin(&TWO_KERNELS, "sm_90").unwrap();
    let path = entries(tmp.path()).remove(0);
    // Truncated, then a valid ELF that lacks the kernels: both are refused.
    for bad in [good[..good.len() / 2].to_vec(), {
        let other = KernelSource {
            src: "KERNEL void something_else(i32* y) { y[0] = 1; }\n",
            ..TWO_KERNELS
        };
        nvrtc::compile_cubin(&other, "sm_90").unwrap()
    }] {
        std::fs::write(&path, &bad).unwrap();
        let (cubin, how) = cache.cubin(&TWO_KERNELS, "sm_90").unwrap();
        assert_eq!(how, Outcome::Compiled { stored: true });
        assert_eq!(cubin, good);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "the entry was replaced"
        );
    }
    // A compile error is not cached.
    let broken = KernelSource {
        file: "broken.cu",
        src: "KERNEL void broken(float* y) { y[0] = nope; }\n",
        options: &[],
        headers: &[],
    };
    assert!(cache.cubin(&broken, "sm_90").is_err());
    assert_eq!(entries(tmp.path()).len(), 1);
}

#[test]
fn an_unwritable_or_disabled_cache_still_compiles() {
    if !have_nvrtc() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let under_a_file = KernelCache::at(file.join("kernels"));
    let (cubin, how) = under_a_file.cubin(&TWO_KERNELS, "sm_90").unwrap();
    assert_eq!(how, Outcome::Compiled { stored: false });
    assert_eq!(&cubin[..4], b"\x7fELF");
    let (_, how) = KernelCache::off().cubin(&TWO_KERNELS, "sm_90").unwrap();
    assert_eq!(how, Outcome::Compiled { stored: false });
}

#[test]
fn the_cache_folder_follows_the_environment() {
    let at = |vars: &[(&str, &str)]| {
        KernelCache::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
        .dir()
        .map(|p| p.to_path_buf())
    };
    let home = [("HOME", "/h")];
    assert_eq!(at(&home), Some("/h/.cache/llamagen/kernels".into()));
    let xdg = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x")];
    assert_eq!(at(&xdg), Some("/x/llamagen/kernels".into()));
    let set = [("HOME", "/h"), (CACHE_ENV, "/k")];
    assert_eq!(at(&set), Some("/k".into()));
    for off in ["off", "0"] {
        assert_eq!(at(&[("HOME", "/h"), (CACHE_ENV, off)]), None);
    }
    assert_eq!(
        at(&[("HOME", "/h"), (CACHE_ENV, "")]),
        Some("/h/.cache/llamagen/kernels".into())
    );
    assert_eq!(at(&[]), None);
}

#[test]
fn every_kernel_file_comes_back_from_a_parallel_cold_start_then_from_the_cache() {
    if !have_nvrtc() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(tmp.path());
    let timed = |what: &str| {
        let start = std::time::Instant::now();
        let out = cubins_for(&cache, SOURCES, "sm_90").unwrap();
        eprintln!("{what}: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
        out
    };
    let cold = timed("cold start, one thread per file");
    assert!(cold
        .iter()
        .all(|(_, o)| *o == Outcome::Compiled { stored: true }));
    let warm = timed("warm start");
    assert!(warm.iter().all(|(_, o)| *o == Outcome::Hit));
    for ((k, (c, _)), (w, _)) in SOURCES.iter().zip(&cold).zip(&warm) {
        assert_eq!(c, w, "{}", k.file);
        let defined = nvrtc::cubin_functions(w).unwrap();
        assert!(k.functions().iter().all(|f| defined.iter().any(|d| d == f)));
    }
}
