//! The weight-only int8 GEMM (`ops::gemm_w8a16`) against an f64 CPU reference, on every
//! available device (emulator and/or GPU): odd shapes (k = 1, k not a multiple of the 16-value
//! vector, k over several 512-wide lane tiles; rows 1, 2, 16 and 33, which takes three row
//! groups; n not a multiple of a block's 8 channels), every output form (f16, f32, f32
//! accumulated), activations the kernel must load one by one (unaligned, k % 8 != 0), and bad
//! arguments refused with errors.
//!
//! Levels, by output type, with the relative term scaled by the magnitude of the terms
//! (`|scale| * sum |a q| + |c0|`), as the cuBLAS GEMM tests do: `GEMM_FP32_OUT` (atol 1e-4 +
//! 1e-5 rel) and `GEMM_FP16_OUT` (plus one f16 ulp). They hold here for any k these tests use:
//! an f16 value times an int8 one is exact in f32 (11 + 8 significant bits); each lane adds its
//! k / 32 products in order and the warp adds 32 partial sums in a 5-level tree, so the f32 sum
//! is within (k / 32 + 5) * 2^-24 of the magnitude (2.4e-6 for k = 600); the scale and the
//! accumulate add one rounding each.
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use cuda_common::{download_f16, download_f32, upload_bytes, upload_f16, upload_f32, Rng};
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::ops::gemm_w8a16::{gemm_w8a16, row_stride, Int8Matrix, W8Out};
use llamagen_test_support::{Tolerance, GEMM_FP16_OUT, GEMM_FP32_OUT};

/// How the GEMM writes its output.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OutKind {
    F16,
    F32,
    F32Accumulate,
}

impl OutKind {
    fn level(self) -> Tolerance {
        match self {
            OutKind::F16 => GEMM_FP16_OUT,
            OutKind::F32 | OutKind::F32Accumulate => GEMM_FP32_OUT,
        }
    }
}

/// A random problem on the host: activations (f16 values) `[rows, k]`, int8 weights `[n, k]`,
/// scales `[n]` (~1/127 as the quantizer makes them), the output's initial values `[rows, n]`.
struct Problem {
    rows: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    q: Vec<i8>,
    scale: Vec<f32>,
    c0: Vec<f32>,
}

impl Problem {
    fn random(rng: &mut Rng, rows: usize, k: usize, n: usize) -> Self {
        Problem {
            rows,
            k,
            n,
            a: rng.vec_f16(rows * k, -1.0, 1.0),
            q: rng
                .vec_i32(n * k, -127, 128)
                .into_iter()
                .map(|v| v as i8)
                .collect(),
            scale: rng.vec_f32(n, 0.5 / 127.0, 1.5 / 127.0),
            c0: rng.vec_f16(rows * n, -2.0, 2.0),
        }
    }

    /// The f64 result and, per element, the magnitude of its terms.
    fn reference(&self, out: OutKind) -> (Vec<f64>, Vec<f64>) {
        let mut want = Vec::with_capacity(self.rows * self.n);
        let mut mag = Vec::with_capacity(self.rows * self.n);
        for m in 0..self.rows {
            for c in 0..self.n {
                let (mut acc, mut abs) = (0f64, 0f64);
                for kk in 0..self.k {
                    let t = self.a[m * self.k + kk] as f64 * self.q[c * self.k + kk] as f64;
                    acc += t;
                    abs += t.abs();
                }
                let s = self.scale[c] as f64;
                let old = match out {
                    OutKind::F32Accumulate => self.c0[m * self.n + c] as f64,
                    _ => 0.0,
                };
                want.push(s * acc + old);
                mag.push(s.abs() * abs + old.abs());
            }
        }
        (want, mag)
    }

    /// The weights as the device keeps them: `[n, row_stride(k)]`, rows zero-padded.
    fn weight_bytes(&self) -> Vec<u8> {
        let ldw = row_stride(self.k);
        let mut w = vec![0u8; self.n * ldw];
        for c in 0..self.n {
            for kk in 0..self.k {
                w[c * ldw + kk] = self.q[c * self.k + kk] as u8;
            }
        }
        w
    }
}

/// Runs `p` with its activations `a_offset` f16 elements into their buffer (an offset of 1
/// makes them 2-byte aligned only: the kernel must load them one by one) and checks it.
fn run_case<D: Device>(d: &D, p: &Problem, out: OutKind, a_offset: usize) -> Result<(), String> {
    let mut a_host = vec![0.0; a_offset];
    a_host.extend(&p.a);
    let a_buf = upload_f16(d, &a_host);
    let w_buf = upload_bytes(d, &p.weight_bytes());
    let s_buf = upload_f32(d, &p.scale);
    let a = d
        .slice(&a_buf)
        .at("test", a_offset, p.rows * p.k)
        .map_err(|e| e.to_string())?;
    let m = Int8Matrix {
        w: d.slice(&w_buf),
        scale: d.slice(&s_buf),
        k: p.k,
        n: p.n,
    };
    let len = p.rows * p.n;
    let (got, what): (Vec<f32>, _) = match out {
        OutKind::F16 => {
            let c = upload_f16(d, &p.c0);
            gemm_w8a16(d, W8Out::F16(d.slice(&c)), a, &m, p.rows).map_err(|e| e.to_string())?;
            (download_f16(d, &c, len), "f16")
        }
        OutKind::F32 | OutKind::F32Accumulate => {
            let c = upload_f32(d, &p.c0);
            let accumulate = out == OutKind::F32Accumulate;
            let o = W8Out::F32 {
                out: d.slice(&c),
                accumulate,
            };
            gemm_w8a16(d, o, a, &m, p.rows).map_err(|e| e.to_string())?;
            (download_f32(d, &c, len), "f32")
        }
    };
    let (want, mag) = p.reference(out);
    let level = out.level();
    let mut worst = 0f64;
    for (i, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
        let bound = level.bound(m, 0.0);
        let err = (g as f64 - w).abs();
        worst = worst.max(err / bound);
        if err.is_nan() || err > bound {
            return Err(format!(
                "rows {} k {} n {} {out:?} a_offset {a_offset}: element {i} (row {}, channel \
                 {}): got {g}, want {w}; terms of magnitude {m} allow {bound} ({level})",
                p.rows,
                p.k,
                p.n,
                i / p.n,
                i % p.n
            ));
        }
    }
    eprintln!(
        "rows {:2} k {:3} n {:2} {what} {out:?} a_offset {a_offset}: worst error {worst:.3} of \
         the bound",
        p.rows, p.k, p.n
    );
    Ok(())
}

fn check_w8a16_matches_f64<D: Device>(d: &D) -> Result<(), String> {
    let mut rng = Rng(21);
    // (rows, k, n): k 1; 17 (not a multiple of 16, k % 8 != 0: scalar loads); 64 (vector
    // loads); 600 (two lane tiles, a tail of 88 = 5 vectors + 8); n 3, 9, 13 (partial
    // blocks) and 40.
    let shapes = [
        (1, 64, 24),
        (2, 17, 9),
        (2, 1, 3),
        (16, 600, 13),
        (16, 64, 40),
        (33, 100, 13),
        (5, 48, 9),
    ];
    for (rows, k, n) in shapes {
        let p = Problem::random(&mut rng, rows, k, n);
        for out in [OutKind::F16, OutKind::F32, OutKind::F32Accumulate] {
            run_case(d, &p, out, 0)?;
        }
        // Misaligned activations with k % 8 == 0: the wrapper must take the scalar loads.
        run_case(d, &p, OutKind::F32, 1)?;
    }
    Ok(())
}

fn check_w8a16_bad_arguments<D: Device>(d: &D) {
    let (k, n, rows) = (32, 8, 2);
    let a = d.alloc(rows * k * 2).unwrap();
    let w = d.alloc(n * row_stride(k)).unwrap();
    let s = d.alloc(n * 4).unwrap();
    let c = d.alloc(rows * n * 4).unwrap();
    let m = Int8Matrix {
        w: d.slice(&w),
        scale: d.slice(&s),
        k,
        n,
    };
    let out = W8Out::F32 {
        out: d.slice(&c),
        accumulate: false,
    };
    let err = |m: &Int8Matrix, rows: usize| {
        gemm_w8a16(d, out, d.slice(&a), m, rows)
            .unwrap_err()
            .to_string()
    };
    // Weights without their row padding (k = 20 needs rows of 32 bytes).
    let unpadded = Int8Matrix { k: 20, ..m };
    let short = Int8Matrix {
        w: DevSlice::from_raw(d.addr(&w), n * 20),
        ..unpadded
    };
    assert!(err(&short, rows).contains("weights holds 160 i8 values, the shape needs 256"));
    let misaligned = Int8Matrix {
        w: DevSlice::from_raw(d.addr(&w) + 8, n * row_stride(k)),
        ..m
    };
    assert!(err(&misaligned, rows).contains("not 16-byte aligned"));
    assert!(err(&Int8Matrix { k: 0, ..m }, rows).contains("k = 0"));
    assert!(err(&m, 3).contains("a holds 64 f16 values, the shape needs 96"));
    // Nothing to compute: no launch, no error.
    gemm_w8a16(d, out, d.slice(&a), &m, 0).unwrap();
}

device_tests!(check_w8a16_matches_f64, check_w8a16_bad_arguments);
