//! Unit tests of `libs.rs`.

use super::*;

/// Creates empty files (never loaded: these tests only check paths).
fn touch(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        std::fs::write(dir.join(n), b"").unwrap();
    }
}

#[test]
fn cu13_wheel_gives_builtins_then_nvrtc() {
    let t = tempfile::tempdir().unwrap();
    let sp = t.path().join("lib/python3.11/site-packages");
    let lib = sp.join("nvidia/cu13/lib");
    touch(
        &lib,
        &[
            "libnvrtc.so.13",
            "libnvrtc.alt.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc-builtins.alt.so.13.0",
            "libcublas.so.13",
            "libcublasLt.so.13",
        ],
    );
    let fallback = fallback_dirs(Lib::Nvrtc, std::slice::from_ref(&sp));
    let (origin, files) = locate(Lib::Nvrtc, &[], || false, &fallback).unwrap();
    assert_eq!(origin, Origin::SitePackages);
    assert_eq!(
        files,
        vec![
            lib.join("libnvrtc-builtins.so.13.0"),
            lib.join("libnvrtc.so.13")
        ]
    );
    let fallback = fallback_dirs(Lib::Cublas, std::slice::from_ref(&sp));
    let (_, files) = locate(Lib::Cublas, &[], || false, &fallback).unwrap();
    assert_eq!(
        files,
        vec![lib.join("libcublasLt.so.13"), lib.join("libcublas.so.13")]
    );
}

#[test]
fn cu12_layouts_are_found_after_cu13() {
    let t = tempfile::tempdir().unwrap();
    let sp = t.path().to_path_buf();
    touch(
        &sp.join("nvidia/cuda_nvrtc/lib"),
        &["libnvrtc.so.12", "libnvrtc-builtins.so.12.9"],
    );
    touch(
        &sp.join("nvidia/cublas/lib"),
        &["libcublas.so.12", "libcublasLt.so.12"],
    );
    let fb = fallback_dirs(Lib::Nvrtc, std::slice::from_ref(&sp));
    let (_, files) = locate(Lib::Nvrtc, &[], || false, &fb).unwrap();
    assert_eq!(
        files.last().unwrap(),
        &sp.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
    );
    assert_eq!(files.len(), 2);
    let fb = fallback_dirs(Lib::Cublas, std::slice::from_ref(&sp));
    let (_, files) = locate(Lib::Cublas, &[], || false, &fb).unwrap();
    assert_eq!(
        files.last().unwrap(),
        &sp.join("nvidia/cublas/lib/libcublas.so.12")
    );
    // A cu13 folder in the same site-packages wins.
    touch(&sp.join("nvidia/cu13/lib"), &["libnvrtc.so.13"]);
    let fb = fallback_dirs(Lib::Nvrtc, std::slice::from_ref(&sp));
    let (_, files) = locate(Lib::Nvrtc, &[], || false, &fb).unwrap();
    assert_eq!(files, vec![sp.join("nvidia/cu13/lib/libnvrtc.so.13")]);
}

#[test]
fn env_dir_comes_before_the_system_and_the_system_before_wheels() {
    let t = tempfile::tempdir().unwrap();
    let env = t.path().join("env");
    let wheel = t.path().join("sp/nvidia/cu13/lib");
    touch(&env, &["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]);
    touch(&wheel, &["libnvrtc.so.13"]);
    let fb = fallback_dirs(Lib::Nvrtc, &[t.path().join("sp")]);
    let asked = std::cell::Cell::new(false);
    let system = || {
        asked.set(true);
        true
    };
    let (origin, files) = locate(Lib::Nvrtc, std::slice::from_ref(&env), system, &fb).unwrap();
    assert_eq!(origin, Origin::EnvDir);
    assert_eq!(files, vec![env.join("libnvrtc.so.13")], "highest major");
    assert!(
        !asked.get(),
        "the system is not asked when the env folder has it"
    );
    let empty = t.path().join("empty");
    let (origin, files) = locate(Lib::Nvrtc, std::slice::from_ref(&empty), || true, &fb).unwrap();
    assert_eq!((origin, files.len()), (Origin::System, 0));
    let (origin, _) = locate(Lib::Nvrtc, &[empty], || false, &fb).unwrap();
    assert_eq!(origin, Origin::SitePackages);
}

#[test]
fn the_driver_comes_from_driver_folders_never_from_wheels() {
    let t = tempfile::tempdir().unwrap();
    touch(&t.path().join("nvidia/cu13/lib"), &["libcuda.so.1"]);
    let fb = fallback_dirs(Lib::Driver, &[t.path().to_path_buf()]);
    assert_eq!(
        fb,
        vec![
            PathBuf::from("/usr/local/nvidia/lib64"),
            PathBuf::from("/usr/lib/wsl/lib")
        ]
    );
    let driver_dir = t.path().join("driver");
    touch(&driver_dir, &["libcuda.so.1", "libcuda.so.580.159.01"]);
    let (origin, files) = locate(
        Lib::Driver,
        &[],
        || false,
        std::slice::from_ref(&driver_dir),
    )
    .unwrap();
    assert_eq!(origin, Origin::DriverDir);
    assert_eq!(files, vec![driver_dir.join("libcuda.so.1")]);
}

#[test]
fn nothing_found_is_none_and_messages_name_the_package() {
    let t = tempfile::tempdir().unwrap();
    let fb = fallback_dirs(Lib::Cublas, &[t.path().to_path_buf()]);
    assert!(locate(Lib::Cublas, &[], || false, &fb).is_none());
    assert!(Lib::Nvrtc
        .missing_message()
        .contains("pip install nvidia-cuda-nvrtc"));
    assert!(Lib::Cublas
        .missing_message()
        .contains("pip install nvidia-cublas"));
    assert!(Lib::Driver.missing_message().contains("libcuda.so.1"));
}

#[test]
fn cuda_versions_are_decoded() {
    assert_eq!(split_version(13000), (13, 0));
    assert_eq!(split_version(12080), (12, 8));
}
