//! The emulator's GEMM: cuBLAS's contract (row-major views of column-major calls, batched and
//! strided, f16 inputs, f32 accumulation, f16 or f32 output), checked against the allocations it
//! touches and computed on the host.

use half::f16;

use super::EmuDevice;
use crate::device::{DType, Gemm};
use crate::error::CudaError;

impl EmuDevice {
    /// Checks one GEMM operand: `batch` matrices of `rows x cols` elements of `elem` bytes with
    /// leading dimension `ld`, `stride` elements apart.
    #[allow(clippy::too_many_arguments)]
    fn check_matrix(
        &self,
        what: &str,
        addr: u64,
        rows: usize,
        cols: usize,
        ld: usize,
        stride: usize,
        batch: usize,
        elem: usize,
    ) -> Result<(), CudaError> {
        if ld < cols {
            return Err(CudaError::call(
                what,
                format!("leading dimension {ld} < {cols} columns"),
            ));
        }
        if !addr.is_multiple_of(elem as u64) {
            return Err(CudaError::call(
                what,
                format!("address {addr:#x} is not aligned to its {elem}-byte elements"),
            ));
        }
        let last = (batch - 1)
            .checked_mul(stride)
            .and_then(|s| s.checked_add((rows - 1).checked_mul(ld)?))
            .and_then(|s| s.checked_add(cols))
            .and_then(|s| s.checked_mul(elem))
            .ok_or_else(|| CudaError::call(what, "matrix extent overflows"))?;
        self.check_range(what, addr, last)
    }

    pub(super) fn run_gemm(&self, g: &Gemm) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let c_elem = match g.c_type {
            DType::F16 => 2,
            DType::F32 => 4,
        };
        if g.k > 0 {
            self.check_matrix(
                "emulated GEMM, A",
                g.a,
                g.m,
                g.k,
                g.lda,
                g.stride_a,
                g.batch,
                2,
            )?;
            let (b_rows, b_cols) = if g.b_trans { (g.n, g.k) } else { (g.k, g.n) };
            self.check_matrix(
                "emulated GEMM, B",
                g.b,
                b_rows,
                b_cols,
                g.ldb,
                g.stride_b,
                g.batch,
                2,
            )?;
        }
        self.check_matrix(
            "emulated GEMM, C",
            g.c,
            g.m,
            g.n,
            g.ldc,
            g.stride_c,
            g.batch,
            c_elem,
        )?;

        let (m, n, k) = (g.m, g.n, g.k);
        let mut a = vec![0f32; m * k];
        let mut b = vec![0f32; k * n]; // op(B), row-major [k, n]
        let mut acc = vec![0f32; m * n];
        for p in 0..g.batch {
            let a_base = g.a as *const u16;
            let b_base = g.b as *const u16;
            // SAFETY (all raw accesses below): check_matrix proved that every index touched lies
            // in a live allocation; A and B are read before C is written, so a C aliasing them
            // cannot tear.
            unsafe {
                for i in 0..m {
                    for kk in 0..k {
                        let v = *a_base.add(p * g.stride_a + i * g.lda + kk);
                        a[i * k + kk] = f16::from_bits(v).to_f32();
                    }
                }
                for kk in 0..k {
                    for j in 0..n {
                        let idx = if g.b_trans {
                            j * g.ldb + kk
                        } else {
                            kk * g.ldb + j
                        };
                        b[kk * n + j] = f16::from_bits(*b_base.add(p * g.stride_b + idx)).to_f32();
                    }
                }
            }
            // i-k-j order: every element sums its products in ascending k, and the loop over j
            // vectorises (independent accumulators, no reassociation).
            acc.fill(0.0);
            for i in 0..m {
                let row = &mut acc[i * n..(i + 1) * n];
                for kk in 0..k {
                    let aik = a[i * k + kk];
                    for (r, &bkj) in row.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                        *r += aik * bkj;
                    }
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let v = g.alpha * acc[i * n + j];
                    let off = p * g.stride_c + i * g.ldc + j;
                    // SAFETY: see above. beta = 0 never reads C (it may hold NaN), as in cuBLAS.
                    unsafe {
                        match g.c_type {
                            DType::F32 => {
                                let c = (g.c as *mut f32).add(off);
                                *c = if g.beta == 0.0 { v } else { v + g.beta * *c };
                            }
                            DType::F16 => {
                                // As cuBLAS's f16-output kernels on Hopper: `alpha * acc` is
                                // rounded to f16 before `beta * c` is added (an H200 gave
                                // 0.04297 where exact arithmetic gives 0.04273, from terms of
                                // ~2), so tests bound the error by the terms, not the result.
                                let c = (g.c as *mut u16).add(off);
                                let v = f16::from_f32(v).to_f32();
                                let old = f16::from_bits(*c).to_f32();
                                let out = if g.beta == 0.0 { v } else { v + g.beta * old };
                                *c = f16::from_f32(out).to_bits();
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
