//! cuBLAS on the device's stream: the handle, and GEMMs in the backend's row-major terms.

use std::ffi::c_void;

use cudarc::cublas::sys as blas;

use super::CudaDevice;
use crate::device::{DType, Gemm};
use crate::error::CudaError;
use crate::gemm_map;

/// A cuBLAS handle, destroyed on drop. Not cudarc's `CudaBlas`: its `Drop` unwraps
/// cublasDestroy's status, which panics (aborts the process when already unwinding, e.g. a
/// test failing after a GPU fault, hiding the real error) when the context is broken.
pub(super) struct BlasHandle(pub(super) blas::cublasHandle_t);

// SAFETY: cuBLAS handles may be used from any thread whose current context is theirs (`bind`
// precedes every call); the handle's configuration is never changed after `open`.
unsafe impl Send for BlasHandle {}
unsafe impl Sync for BlasHandle {}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate and destroyed once; an error is deliberately ignored.
        let _ = unsafe { blas::cublasDestroy_v2(self.0) };
    }
}

impl CudaDevice {
    /// Row-major `C = A . op(B)` is column-major `C^T = op(B)^T . A^T`, and a row-major matrix
    /// read column-major is its transpose: so B goes first (transposed when `b_trans`), A
    /// second, and the roles of m and n swap (see [`gemm_map`], which is unit-tested).
    pub(super) fn run_gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        use blas::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use blas::cudaDataType::{CUDA_R_16F, CUDA_R_32F};
        let what = || format!("cuBLAS GEMM {g:?}");
        // None: m, n or batch is 0, nothing to do (cuBLAS would run one problem for batch 0
        // through cublasGemmEx).
        let Some(p) = gemm_map::to_blas(g).map_err(|e| CudaError::call(what(), e))? else {
            return Ok(());
        };
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (alpha, beta) = (g.alpha, g.beta);
        let c_type = match g.c_type {
            DType::F16 => CUDA_R_16F,
            DType::F32 => CUDA_R_32F,
        };
        let alpha_p = &alpha as *const f32 as *const c_void;
        let beta_p = &beta as *const f32 as *const c_void;
        let (a, b, c) = (
            p.a as *const c_void,
            p.b as *const c_void,
            p.c as *mut c_void,
        );
        let compute = blas::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        self.bind()?;
        // SAFETY: the handle is bound to our stream; a, b, c are device addresses from
        // `addr` whose extents the caller sized for this problem; alpha and beta are f32 on
        // the host (cuBLAS's default pointer mode) as COMPUTE_32F requires, read during the
        // call (so a capture freezes their values).
        let r = unsafe {
            if p.batch == 1 {
                cudarc::cublas::result::gemm_ex(
                    self.blas.0,
                    op(p.trans_a),
                    op(p.trans_b),
                    p.m,
                    p.n,
                    p.k,
                    alpha_p,
                    a,
                    CUDA_R_16F,
                    p.lda,
                    b,
                    CUDA_R_16F,
                    p.ldb,
                    beta_p,
                    c,
                    c_type,
                    p.ldc,
                    compute,
                    algo,
                )
            } else {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    self.blas.0,
                    op(p.trans_a),
                    op(p.trans_b),
                    p.m,
                    p.n,
                    p.k,
                    alpha_p,
                    a,
                    CUDA_R_16F,
                    p.lda,
                    p.stride_a,
                    b,
                    CUDA_R_16F,
                    p.ldb,
                    p.stride_b,
                    beta_p,
                    c,
                    c_type,
                    p.ldc,
                    p.stride_c,
                    p.batch,
                    compute,
                    algo,
                )
            }
        };
        r.map_err(|e| CudaError::call(what(), e))
    }
}
