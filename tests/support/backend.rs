//! Loading a bundle on a backend, and running each check on the CUDA backends, for the CUDA
//! end-to-end tests (`cuda_backend`, `cuda_var`).

use std::path::Path;

use llamagen_runtime::{
    BackendChoice, BackendKind, CudaOptions, Pipeline, PipelineOptions, RuntimeError,
};

/// Loads `bundle` on `kind` (CUDA options `cuda` for the CUDA kinds), or `None` (with a
/// message) when this machine has no GPU for `BackendKind::Cuda`; any other failure panics.
pub fn load_on(bundle: &Path, kind: BackendKind, cuda: CudaOptions) -> Option<Pipeline> {
    let backend = match kind {
        BackendKind::Cpu => BackendChoice::default(),
        BackendKind::Cuda => BackendChoice::Cuda(cuda),
        BackendKind::CudaEmu => BackendChoice::CudaEmu(cuda),
    };
    let opts = PipelineOptions {
        backend,
        ..PipelineOptions::default()
    };
    match Pipeline::load(bundle, &opts) {
        Ok(p) => Some(p),
        Err(RuntimeError::BackendUnavailable { reason, .. }) if kind == BackendKind::Cuda => {
            eprintln!("skipped: no CUDA GPU ({reason})");
            None
        }
        Err(e) => panic!("loading {kind:?}: {e}"),
    }
}

/// `backend_tests!(check_a, check_b, ...)`: for each `fn check_a(kind: BackendKind)`, the tests
/// `emu::check_a` (the calling crate's feature `cuda-emu`: on the kernel emulator) and
/// `gpu::check_a` (its feature `cuda`: on a GPU, where [`load_on`] skips without one).
#[macro_export]
macro_rules! backend_tests {
    ($($check:ident),* $(,)?) => {
        #[cfg(feature = "cuda-emu")]
        mod emu {
            $(#[test]
            fn $check() {
                super::$check(llamagen_runtime::BackendKind::CudaEmu);
            })*
        }
        #[cfg(feature = "cuda")]
        mod gpu {
            $(#[test]
            fn $check() {
                super::$check(llamagen_runtime::BackendKind::Cuda);
            })*
        }
    };
}
