//! Build script: with the `emu` feature, compiles the CUDA kernel sources for the host (the
//! kernel emulator, cuda/emu/). Without it, does nothing, so default builds need no C++
//! compiler.
//!
//! Each `src/kernels/*.cu` (and the emulator's self-test kernels in `emu/tests/`)
//! gets a generated wrapper translation unit: `emu.hpp`, the kernel file inside an anonymous
//! namespace in a namespace of its own, then a table of its kernels, found by the rule of
//! `kernels::kernel_names` (lines that start with `KERNEL void <name>(`). A registry unit lists the tables, and everything goes into
//! one static library with the scheduler (`emu/emu_runtime.cpp`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_EMU").is_some() {
        #[cfg(feature = "emu")]
        emu::build();
    }
}

// The kernel registry itself, so NVRTC's per-file options have one source.
#[cfg(feature = "emu")]
#[allow(dead_code)]
#[path = "src/kernels/mod.rs"]
mod kernels;

#[cfg(feature = "emu")]
mod emu {
    use super::kernels;
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};

    const NEEDS_CXX: &str = "the `emu` feature compiles the CUDA kernels for the host and \
                             needs a C++20 compiler: install g++ (apt install g++), or set CXX";

    pub fn build() {
        // The scheduler's stack switching and the shared-memory section are ELF/Linux specifics.
        if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
            panic!("the `emu` feature (the host kernel emulator) supports Linux targets only");
        }
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let emu_dir = root.join("emu");
        let kernel_dirs = [root.join("src/kernels"), emu_dir.join("tests")];
        println!("cargo:rerun-if-changed={}", emu_dir.display());
        for dir in &kernel_dirs {
            println!("cargo:rerun-if-changed={}", dir.display());
        }

        let mut files: Vec<PathBuf> = Vec::new();
        for dir in &kernel_dirs {
            files.extend(cu_files(dir));
        }
        let mut defined_in: BTreeMap<String, PathBuf> = BTreeMap::new();
        // Floating-point contraction as NVRTC does it: files compiled with `--fmad=false` go
        // into a library built with `-ffp-contract=off`; every other file may fuse `a * b + c`
        // into an FMA, as NVRTC's default `--fmad=true` does on the GPU. Host code that
        // expects one of those files to round like the CPU then fails here too.
        let mut build = compiler(&emu_dir, true);
        let mut exact = compiler(&emu_dir, false);
        let mut exact_files = 0;
        build.file(emu_dir.join("emu_runtime.cpp"));
        build.file(emu_dir.join("emu_switch.cpp"));

        let mut registry = String::from("#include \"emu.hpp\"\n");
        let mut tables = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let src = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let names = kernels::kernel_names(&src);
            for name in &names {
                if let Some(other) = defined_in.insert(name.to_string(), file.clone()) {
                    panic!(
                        "kernel `{name}` is defined in both {} and {}",
                        other.display(),
                        file.display()
                    );
                }
            }
            let table = format!("emu_table_{i}_{}", ident(file));
            let wrapper = out.join(format!("{table}.cpp"));
            write_if_changed(&wrapper, &wrapper_source(file, &table, &names));
            if fmad_off(file) {
                exact.file(&wrapper);
                exact_files += 1;
            } else {
                build.file(&wrapper);
            }
            writeln!(registry, "extern const emu::KernelEntry {table}[];").unwrap();
            tables.push(table);
        }
        registry.push_str("extern const emu::KernelTable emu_kernel_tables[] = {\n");
        for t in &tables {
            writeln!(registry, "    {{{t}}},").unwrap();
        }
        registry.push_str("    {nullptr},\n};\n");
        let registry_file = out.join("emu_registry.cpp");
        write_if_changed(&registry_file, &registry);
        build.file(&registry_file);

        if let Err(e) = build.get_compiler().to_command().arg("--version").output() {
            panic!("{NEEDS_CXX} ({e})");
        }
        let built = if exact_files > 0 {
            exact.try_compile("llamagen_emu_exact")
        } else {
            Ok(())
        }
        .and_then(|()| build.try_compile("llamagen_emu"));
        if let Err(e) = built {
            panic!(
                "compiling the CUDA kernels for the host emulator failed (compiler output \
                 above): {e}"
            );
        }
    }

    /// The C++ compiler for the kernels; `contract` lets it fuse multiply-adds (with FMA
    /// instructions where this x86-64 host has them, as every GPU does).
    fn compiler(emu_dir: &Path, contract: bool) -> cc::Build {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++20")
            .opt_level(2)
            .include(emu_dir)
            .flag(if contract {
                "-ffp-contract=fast"
            } else {
                "-ffp-contract=off"
            })
            .flag("-fno-fast-math")
            .flag("-fno-strict-aliasing")
            .flag("-w");
        #[cfg(target_arch = "x86_64")]
        if contract
            && std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
            && std::arch::is_x86_feature_detected!("fma")
        {
            b.flag("-mfma");
        }
        b
    }

    /// Whether NVRTC compiles `file` with `--fmad=false` (its options in `kernels::SOURCES`).
    fn fmad_off(file: &Path) -> bool {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        kernels::SOURCES
            .iter()
            .any(|k| k.file == name && k.options.contains(&"--fmad=false"))
    }

    /// The `.cu` files of `dir`, sorted (a missing directory has none).
    fn cu_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn ident(file: &Path) -> String {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kernels");
        stem.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }

    /// The kernel file inside an anonymous namespace in namespace `<table>_ns` (helpers named
    /// like libc functions cannot clash, and internal linkage keeps `__shared__` statics out of
    /// COMDAT groups, see emu.hpp), then its kernel table, ended by a null entry.
    fn wrapper_source(file: &Path, table: &str, names: &[&str]) -> String {
        let path = file.display().to_string().replace('\\', "/");
        let mut s = String::new();
        writeln!(s, "#include \"emu.hpp\"").unwrap();
        writeln!(s, "namespace {table}_ns {{ namespace {{").unwrap();
        // The device helpers NVRTC gets after its prelude (kernels/common.cuh).
        let common = file.with_file_name("common.cuh");
        if common.exists() {
            let common = common.display().to_string().replace('\\', "/");
            writeln!(s, "#include \"{common}\"").unwrap();
        }
        // The headers NVRTC gets before this file (kernels::SOURCES).
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        for k in kernels::SOURCES.iter().filter(|k| k.file == name) {
            for h in k.headers {
                let header = file.with_file_name(h.file).display().to_string();
                writeln!(s, "#include \"{}\"", header.replace('\\', "/")).unwrap();
            }
        }
        writeln!(s, "#include \"{path}\"").unwrap();
        writeln!(s, "}} }}").unwrap();
        writeln!(s, "extern const emu::KernelEntry {table}[] = {{").unwrap();
        for name in names {
            writeln!(s, "    EMU_KERNEL_ENTRY({table}_ns, {name}, \"{path}\"),").unwrap();
        }
        writeln!(s, "    {{nullptr, nullptr, nullptr, 0, nullptr}},").unwrap();
        writeln!(s, "}};").unwrap();
        s
    }

    /// Keeps the file's mtime when nothing changed, so cc's outputs stay fresh.
    fn write_if_changed(path: &Path, text: &str) {
        if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
            std::fs::write(path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
    }
}
