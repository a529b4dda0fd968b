//! An on-disk cache of the kernel files' CUBINs, so that opening a device does not pay NVRTC
//! (about 4 s for all files on one core, most of a load's time) every time a process starts.
//!
//! An entry is keyed by a SHA-256 of everything the CUBIN depends on: the full source NVRTC
//! sees, the arch, the file's options, NVRTC's version and this crate's version. A stale entry
//! is therefore never found, only left behind. An entry is checked before use (an ELF whose
//! symbol table defines every kernel the file declares); one that fails is compiled again and
//! replaced. Entries are written to a temporary file and renamed, so a concurrent reader never
//! sees half a file. The cache is best-effort: a folder that cannot be created or written costs
//! a warning and the compile, never a failed load.
//!
//! Where: `LLAMAGEN_KERNEL_CACHE` (a folder, or `off`), else `$XDG_CACHE_HOME/llamagen/kernels`,
//! else `$HOME/.cache/llamagen/kernels`, else no cache.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::CudaError;
use crate::kernels::KernelSource;
use crate::nvrtc;

/// The environment variable that moves (a folder) or disables (`off`) the cache.
pub const CACHE_ENV: &str = "LLAMAGEN_KERNEL_CACHE";

/// Where the CUBINs of compiled kernel files are kept, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

/// How [`KernelCache::cubin`] got its CUBIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read from the cache.
    Hit,
    /// Compiled; `stored` says whether the cache now holds it.
    Compiled { stored: bool },
}

impl KernelCache {
    /// The cache the environment asks for (see the module doc).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// [`Self::from_env`] over any variable lookup (empty values count as unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let dir = match var(CACHE_ENV) {
            Some(v) if v == "off" || v == "0" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|base| base.join("llamagen").join("kernels")),
        };
        KernelCache { dir }
    }

    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        KernelCache {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every call compiles.
    pub fn off() -> Self {
        KernelCache { dir: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The CUBIN of `k` for `arch`, from the cache when it holds a valid one, else compiled by
    /// NVRTC and stored.
    pub fn cubin(&self, k: &KernelSource, arch: &str) -> Result<(Vec<u8>, Outcome), CudaError> {
        let Some(dir) = &self.dir else {
            let cubin = nvrtc::compile_cubin(k, arch)?;
            return Ok((cubin, Outcome::Compiled { stored: false }));
        };
        let path = dir.join(entry_name(k, arch)?);
        if let Ok(bytes) = std::fs::read(&path) {
            if defines_every_kernel(k, &bytes) {
                return Ok((bytes, Outcome::Hit));
            }
            tracing::warn!(path = %path.display(), "cached CUBIN is damaged; compiling again");
        }
        let cubin = nvrtc::compile_cubin(k, arch)?;
        let stored = match store(dir, &path, &cubin) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "kernel cache not written");
                false
            }
        };
        Ok((cubin, Outcome::Compiled { stored }))
    }
}

/// `<file>-<arch>-<key>.cubin`, the key a SHA-256 of what the CUBIN depends on.
fn entry_name(k: &KernelSource, arch: &str) -> Result<String, CudaError> {
    let (major, minor) = nvrtc::nvrtc_version()?;
    let mut h = Sha256::new();
    for part in [
        env!("CARGO_PKG_VERSION").to_string(),
        format!("nvrtc {major}.{minor}"),
        arch.to_string(),
        k.options.join(" "),
        k.full_source(),
    ] {
        // Length-prefixed, so no two different part lists hash the same bytes.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem = k.file.trim_end_matches(".cu");
    Ok(format!("{stem}-{arch}-{key}.cubin"))
}

fn defines_every_kernel(k: &KernelSource, cubin: &[u8]) -> bool {
    nvrtc::cubin_functions(cubin)
        .is_ok_and(|defined| k.functions().iter().all(|f| defined.iter().any(|d| d == f)))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The CUBINs of every file in `files` for `arch`, in order, one thread per file: NVRTC
/// compiles independent programs concurrently, so a cold start waits for the slowest file
/// rather than the sum. Fails with the first file's error, in file order.
pub fn cubins_for(
    cache: &KernelCache,
    files: &[KernelSource],
    arch: &str,
) -> Result<Vec<(Vec<u8>, Outcome)>, CudaError> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = files
            .iter()
            .map(|k| s.spawn(move || cache.cubin(k, arch)))
            .collect();
        jobs.into_iter()
            .zip(files)
            .map(|(job, k)| {
                job.join().unwrap_or_else(|_| {
                    Err(CudaError::call(
                        format!("compiling {} for {arch}", k.file),
                        "the compiling thread panicked",
                    ))
                })
            })
            .collect()
    })
}
