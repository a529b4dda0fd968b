//! The row-major [`Gemm`] of the [`Device`](super::device::Device) trait in cuBLAS's
//! column-major terms, as a pure function so that the mapping is unit-tested without a GPU
//! (against a naive column-major GEMM that follows cuBLAS's own definition and argument checks).
//!
//! A row-major matrix `X[r, c]` stored at `x[r * ld + c]`, read column-major with the same `ld`,
//! is `X^T` (`c x r`). So row-major `C = A . op(B)` is column-major `C^T = op(B)^T . A^T`:
//!
//! | cuBLAS      | value                                                      |
//! |-------------|------------------------------------------------------------|
//! | `m, n, k`   | `g.n, g.m, g.k`                                            |
//! | `A` (first) | `g.b`, `lda = g.ldb`, `stride_a = g.stride_b`              |
//! | `transa`    | `N` when B is stored `[k, n]` (its column-major read is `B^T = op(B)^T`, `n x k`); `T` when `b_trans` (B stored `[n, k]` reads as `k x n`, transposed to `n x k`) |
//! | `B` (second)| `g.a`, `ldb = g.lda`, `stride_b = g.stride_a`, `transb = N` (A `[m, k]` reads as `A^T`, `k x m`) |
//! | `C`         | `g.c`, `ldc = g.ldc`, `stride_c = g.stride_c`              |
//!
//! cuBLAS checks `lda >= max(1, transa == N ? m : k)`, `ldb >= max(1, transb == N ? k : n)` and
//! `ldc >= max(1, m)`: here `g.ldb >= n` (B `[k, n]`) or `g.ldb >= k` (B `[n, k]`), `g.lda >= k`
//! and `g.ldc >= n`, which is exactly what a row-major layout needs.
//!
//! Worked example: `m = 2, n = 3, k = 4`, packed, B stored `[k, n]`:
//! `cublasGemmEx(N, N, m = 3, n = 2, k = 4, A = g.b, lda = 3, B = g.a, ldb = 4, C = g.c, ldc = 3)`;
//! with B stored `[n, k]` (`ldb = 4`): `cublasGemmEx(T, N, 3, 2, 4, g.b, 4, g.a, 4, g.c, 3)`.

use std::ffi::{c_int, c_longlong};

use crate::device::Gemm;

/// One `cublasGemmEx` (when `batch == 1`) or `cublasGemmStridedBatchedEx` call, column-major:
/// `C (m x n) = alpha * op(A) (m x k) . op(B) (k x n) + beta * C`, `batch` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlasGemm {
    /// `transa`: whether the first operand is transposed.
    pub trans_a: bool,
    /// `transb`: whether the second operand is transposed.
    pub trans_b: bool,
    pub m: c_int,
    pub n: c_int,
    pub k: c_int,
    pub a: u64,
    pub lda: c_int,
    pub stride_a: c_longlong,
    pub b: u64,
    pub ldb: c_int,
    pub stride_b: c_longlong,
    pub c: u64,
    pub ldc: c_int,
    pub stride_c: c_longlong,
    pub batch: c_int,
}

/// The cuBLAS call for `g`, or `None` when there is nothing to compute (`m`, `n` or `batch` is
/// zero: C is left untouched, as the emulator does). A dimension that does not fit cuBLAS's
/// 32-bit (64-bit for strides) arguments is an error naming it.
pub fn to_blas(g: &Gemm) -> Result<Option<BlasGemm>, String> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(None);
    }
    let int = |v: usize, what: &str| {
        c_int::try_from(v).map_err(|_| format!("{what} = {v} is too large for cuBLAS"))
    };
    let long = |v: usize, what: &str| {
        c_longlong::try_from(v).map_err(|_| format!("{what} = {v} is too large for cuBLAS"))
    };
    Ok(Some(BlasGemm {
        trans_a: g.b_trans,
        trans_b: false,
        m: int(g.n, "n")?,
        n: int(g.m, "m")?,
        k: int(g.k, "k")?,
        a: g.b,
        lda: int(g.ldb, "ldb")?,
        stride_a: long(g.stride_b, "stride_b")?,
        b: g.a,
        ldb: int(g.lda, "lda")?,
        stride_b: long(g.stride_a, "stride_a")?,
        c: g.c,
        ldc: int(g.ldc, "ldc")?,
        stride_c: long(g.stride_c, "stride_c")?,
        batch: int(g.batch, "batch")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DType;

    /// Buffer tags standing in for device addresses (the mapping only moves them around).
    const A: u64 = 0xa000;
    const B: u64 = 0xb000;
    const C: u64 = 0xc000;

    /// A naive column-major GEMM with cuBLAS's definition, including its argument checks
    /// (`cublasGemmEx` returns CUBLAS_STATUS_INVALID_VALUE where this panics). Operands are
    /// found by their tags; element strides between batch entries.
    fn cublas_reference(p: &BlasGemm, alpha: f32, beta: f32, mem: &mut [(u64, Vec<f32>)]) {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let (lda, ldb, ldc) = (p.lda as usize, p.ldb as usize, p.ldc as usize);
        let rows_a = if p.trans_a { k } else { m };
        let rows_b = if p.trans_b { n } else { k };
        assert!(
            lda >= rows_a.max(1),
            "lda {lda} < {rows_a}: cuBLAS rejects this"
        );
        assert!(
            ldb >= rows_b.max(1),
            "ldb {ldb} < {rows_b}: cuBLAS rejects this"
        );
        assert!(ldc >= m.max(1), "ldc {ldc} < {m}: cuBLAS rejects this");
        assert!(p.batch >= 1);
        let get = |mem: &[(u64, Vec<f32>)], tag: u64| -> Vec<f32> {
            mem.iter().find(|(t, _)| *t == tag).unwrap().1.clone()
        };
        let (a, b) = (get(mem, p.a), get(mem, p.b));
        let c = &mut mem.iter_mut().find(|(t, _)| *t == p.c).unwrap().1;
        for q in 0..p.batch as usize {
            let (oa, ob, oc) = (
                q * p.stride_a as usize,
                q * p.stride_b as usize,
                q * p.stride_c as usize,
            );
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f32;
                    for l in 0..k {
                        let av = if p.trans_a {
                            a[oa + l + i * lda]
                        } else {
                            a[oa + i + l * lda]
                        };
                        let bv = if p.trans_b {
                            b[ob + j + l * ldb]
                        } else {
                            b[ob + l + j * ldb]
                        };
                        s += av * bv;
                    }
                    let cv = &mut c[oc + i + j * ldc];
                    // beta == 0: C is not read (it may hold NaN), as in cuBLAS.
                    *cv = if beta == 0.0 {
                        alpha * s
                    } else {
                        alpha * s + beta * *cv
                    };
                }
            }
        }
    }

    /// The row-major definition of [`Gemm`] (what the emulator computes).
    fn row_major_reference(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        for q in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0f32;
                    for l in 0..g.k {
                        let bv = if g.b_trans {
                            b[q * g.stride_b + j * g.ldb + l]
                        } else {
                            b[q * g.stride_b + l * g.ldb + j]
                        };
                        s += a[q * g.stride_a + i * g.lda + l] * bv;
                    }
                    let cv = &mut c[q * g.stride_c + i * g.ldc + j];
                    *cv = if g.beta == 0.0 {
                        g.alpha * s
                    } else {
                        g.alpha * s + g.beta * *cv
                    };
                }
            }
        }
    }

    /// Small integers, so that every sum is exact and results compare bit for bit.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0)
            .collect()
    }

    /// Runs `g` both ways on fresh operands sized for its strides and leading dimensions.
    fn check(g: Gemm) {
        let b_rows = if g.b_trans { g.n } else { g.k };
        let extent =
            |rows: usize, ld: usize, stride: usize| (g.batch - 1) * stride + (rows - 1) * ld + ld;
        let a = values(extent(g.m, g.lda, g.stride_a), 1);
        let b = values(extent(b_rows, g.ldb, g.stride_b), 2);
        let mut c0 = values(extent(g.m, g.ldc, g.stride_c), 3);
        if g.beta == 0.0 {
            c0.iter_mut().for_each(|v| *v = f32::NAN);
        }
        let mut want = c0.clone();
        row_major_reference(&g, &a, &b, &mut want);

        let p = to_blas(&g).unwrap().expect("a non-empty problem");
        let mut mem = vec![(A, a), (B, b), (C, c0)];
        cublas_reference(&p, g.alpha, g.beta, &mut mem);
        let got = &mem[2].1;
        // Padding between rows and batch entries stays as it was (NaN == NaN bitwise here).
        let same = got
            .iter()
            .zip(&want)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{g:?}\n-> {p:?}\n got {got:?}\nwant {want:?}");
    }

    fn gemm(m: usize, n: usize, k: usize, b_trans: bool) -> Gemm {
        let mut g = Gemm::dense(m, n, k, A, B, C, DType::F32);
        g.b_trans = b_trans;
        g.ldb = if b_trans { k } else { n };
        g
    }

    #[test]
    fn worked_example_of_the_doc() {
        let p = to_blas(&gemm(2, 3, 4, false)).unwrap().unwrap();
        assert_eq!(
            (p.trans_a, p.trans_b, p.m, p.n, p.k),
            (false, false, 3, 2, 4)
        );
        assert_eq!((p.a, p.lda, p.b, p.ldb, p.c, p.ldc), (B, 3, A, 4, C, 3));
        let p = to_blas(&gemm(2, 3, 4, true)).unwrap().unwrap();
        assert_eq!((p.trans_a, p.m, p.n, p.k), (true, 3, 2, 4));
        assert_eq!((p.a, p.lda, p.b, p.ldb, p.c, p.ldc), (B, 4, A, 4, C, 3));
    }

    #[test]
    fn dense_problems_match_the_row_major_definition() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (2, 3, 4),
            (5, 1, 7),
            (1, 9, 3),
            (4, 4, 1),
            (3, 8, 16),
        ] {
            for b_trans in [false, true] {
                check(gemm(m, n, k, b_trans));
            }
        }
    }

    #[test]
    fn padded_leading_dimensions_alpha_and_beta() {
        for b_trans in [false, true] {
            let mut g = gemm(3, 5, 4, b_trans);
            g.lda = 7;
            g.ldb += 3;
            g.ldc = 9;
            check(g);
            g.alpha = 0.5;
            g.beta = 2.0;
            check(g);
        }
    }

    #[test]
    fn strided_batches_including_a_shared_operand() {
        for b_trans in [false, true] {
            // Attention-like: per-head problems, heads `stride` elements apart.
            let mut g = gemm(2, 6, 4, b_trans);
            g.batch = 3;
            g.lda = 12; // A rows interleave the heads: row stride 12, head stride 4
            g.stride_a = 4;
            g.ldb += 1;
            g.stride_b = 40;
            g.ldc = 6;
            g.stride_c = 2 * 6;
            check(g);
            // One B for every batch entry.
            g.stride_b = 0;
            g.beta = 1.0;
            check(g);
        }
    }

    #[test]
    fn empty_problems_do_nothing_and_huge_ones_are_errors() {
        for (m, n, batch) in [(0, 3, 1), (3, 0, 1), (3, 3, 0)] {
            let mut g = gemm(m, n, 4, false);
            g.batch = batch;
            assert_eq!(to_blas(&g), Ok(None));
        }
        let mut g = gemm(2, 3, 4, false);
        g.lda = 1 << 40;
        assert!(to_blas(&g).unwrap_err().contains("lda"));
        g.lda = 4;
        g.stride_c = usize::MAX;
        assert!(to_blas(&g).unwrap_err().contains("stride_c"));
    }
}
