//! The decode step's weight-streaming GEMM (`ops::decode_gemm`), int8 (W8A16) and f16 (W16A16)
//! weights, on every available device (emulator and/or GPU):
//! - against an f64 CPU reference: odd shapes (k = 1, k not a multiple of 8, of the 16-value
//!   vector or of the 512-wide lane tile; rows 1 to 33, which takes three row groups; n not a
//!   multiple of a block's 8 channels, odd n), every output form (f16, f32, f32 accumulated),
//!   activations the kernel must load one by one (unaligned, k % 8 != 0);
//! - the RMSNorm prologue bit-identical to `rms_norm` followed by the same GEMM, for row widths
//!   that give rms_norm's block 32, 96 (three warps) and 256 threads, and its normalised values
//!   within the f16 level of an f64 RMSNorm;
//! - the SwiGLU epilogue (w1|w3 pairs interleaved) bit-identical to the f16 GEMM followed by
//!   `swiglu`, with and without the norm prologue, and within an f16 bound of the f64 result;
//! - `GemmWeight` over our layout equal to cuBLAS's (the emulator's GEMM) for a decode step and
//!   for a step beyond `OWN_MAX_ROWS`, where it runs cuBLAS on the transposed weights;
//! - bad arguments refused with errors, never a launch.
//!
//! Levels, by output type, with the relative term scaled by the magnitude of the terms
//! (`|scale| * sum |a w| + |c0|`), as the cuBLAS GEMM tests do: `GEMM_FP32_OUT` (atol 1e-4 +
//! 1e-5 rel) and `GEMM_FP16_OUT` (plus one f16 ulp). They hold here for any k these tests use:
//! an f16 value times an int8 or f16 one is exact in f32 (at most 11 + 11 significant bits); each
//! lane adds its k / 32 products in order and the warp adds 32 partial sums in a 5-level tree, so
//! the f32 sum is within (k / 32 + 5) * 2^-24 of the magnitude (2.4e-6 for k = 1000); the scale
//! and the accumulate add one rounding each. Fused against unfused: exact (same bits).
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use half::f16;

use cuda_common::{download_f16, download_f32, upload_bytes, upload_f16, upload_f32, Rng};
use llamagen_cuda::device::{DevSlice, Device};
use llamagen_cuda::gemm_weight::{DecodeGemm, GemmWeight, OWN_MAX_ROWS};
use llamagen_cuda::ops::decode_gemm::{
    decode_gemm, row_stride, DecodeInput, DecodeMatrix, DecodeOut, DecodeWeights,
};
use llamagen_cuda::ops::gpt::{rms_norm, swiglu};
use llamagen_test_support::{Tolerance, GEMM_FP16_OUT, GEMM_FP32_OUT, GPT_KERNEL_FP16_OUT};

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

/// The weights' element type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum WKind {
    Int8,
    F16,
}

/// A random problem on the host: activations (f16 values) `[rows, k]`, weights `[n, k]` (int8
/// values with scales ~1/127 as the quantizer makes them, or f16 values with scale 1), the
/// output's initial values `[rows, n]`.
struct Problem {
    kind: WKind,
    rows: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    w: Vec<f32>,
    scale: Vec<f32>,
    c0: Vec<f32>,
}

impl Problem {
    fn random(rng: &mut Rng, kind: WKind, rows: usize, k: usize, n: usize) -> Self {
        let (w, scale) = match kind {
            WKind::Int8 => (
                rng.vec_i32(n * k, -127, 128)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect(),
                rng.vec_f32(n, 0.5 / 127.0, 1.5 / 127.0),
            ),
            WKind::F16 => (rng.vec_f16(n * k, -1.0, 1.0), vec![1.0; n]),
        };
        Problem {
            kind,
            rows,
            k,
            n,
            a: rng.vec_f16(rows * k, -1.0, 1.0),
            w,
            scale,
            c0: rng.vec_f16(rows * n, -2.0, 2.0),
        }
    }

    /// Sum and magnitude of the terms of output (row m, channel c) for activations `a`.
    fn dot(&self, a: &[f32], m: usize, c: usize) -> (f64, f64) {
        let (mut acc, mut abs) = (0f64, 0f64);
        for kk in 0..self.k {
            let t = a[m * self.k + kk] as f64 * self.w[c * self.k + kk] as f64;
            acc += t;
            abs += t.abs();
        }
        let s = self.scale[c] as f64;
        (s * acc, s.abs() * abs)
    }

    /// The f64 result and, per element, the magnitude of its terms.
    fn reference(&self, out: OutKind) -> (Vec<f64>, Vec<f64>) {
        let mut want = Vec::with_capacity(self.rows * self.n);
        let mut mag = Vec::with_capacity(self.rows * self.n);
        for m in 0..self.rows {
            for c in 0..self.n {
                let (v, abs) = self.dot(&self.a, m, c);
                let old = match out {
                    OutKind::F32Accumulate => self.c0[m * self.n + c] as f64,
                    _ => 0.0,
                };
                want.push(v + old);
                mag.push(abs + old.abs());
            }
        }
        (want, mag)
    }

    /// The weights on the device, `[n, row_stride(k)]`, rows zero-padded; channel c's row is
    /// `order(c)`. Returns the buffers (weights, scales) to keep alive.
    fn upload<D: Device>(&self, d: &D, order: impl Fn(usize) -> usize) -> (D::Buf, D::Buf) {
        let ldw = row_stride(self.k);
        let mut w = vec![0f32; self.n * ldw];
        let mut scale = vec![0f32; self.n];
        for c in 0..self.n {
            w[order(c) * ldw..][..self.k].copy_from_slice(&self.w[c * self.k..][..self.k]);
            scale[order(c)] = self.scale[c];
        }
        let wb = match self.kind {
            WKind::Int8 => upload_bytes(d, &w.iter().map(|&v| v as i8 as u8).collect::<Vec<_>>()),
            WKind::F16 => upload_f16(d, &w),
        };
        (wb, upload_f32(d, &scale))
    }

    fn matrix<D: Device>(&self, d: &D, bufs: &(D::Buf, D::Buf)) -> DecodeMatrix {
        let w = match self.kind {
            WKind::Int8 => DecodeWeights::Int8 {
                w: d.slice(&bufs.0),
                scale: d.slice(&bufs.1),
            },
            WKind::F16 => DecodeWeights::F16(d.slice(&bufs.0)),
        };
        DecodeMatrix {
            w,
            k: self.k,
            n: self.n,
        }
    }
}

fn text(e: llamagen_cuda::CudaError) -> String {
    e.to_string()
}

/// Runs `p` with its activations `a_offset` f16 elements into their buffer (an offset of 1
/// makes them 2-byte aligned only: the kernel must load them one by one) and checks it.
fn run_case<D: Device>(d: &D, p: &Problem, out: OutKind, a_offset: usize) -> Result<(), String> {
    let mut a_host = vec![0.0; a_offset];
    a_host.extend(&p.a);
    let a_buf = upload_f16(d, &a_host);
    let bufs = p.upload(d, |c| c);
    let a = d
        .slice(&a_buf)
        .at("test", a_offset, p.rows * p.k)
        .map_err(text)?;
    let input = DecodeInput::F16(a);
    let m = p.matrix(d, &bufs);
    let len = p.rows * p.n;
    let got: Vec<f32> = match out {
        OutKind::F16 => {
            let c = upload_f16(d, &p.c0);
            decode_gemm(d, DecodeOut::F16(d.slice(&c)), input, &m, p.rows).map_err(text)?;
            download_f16(d, &c, len)
        }
        OutKind::F32 | OutKind::F32Accumulate => {
            let c = upload_f32(d, &p.c0);
            let o = DecodeOut::F32 {
                out: d.slice(&c),
                accumulate: out == OutKind::F32Accumulate,
            };
            decode_gemm(d, o, input, &m, p.rows).map_err(text)?;
            download_f32(d, &c, len)
        }
    };
    let (want, mag) = p.reference(out);
    let case = format!(
        "{:?} rows {} k {} n {} {out:?} a_offset {a_offset}",
        p.kind, p.rows, p.k, p.n
    );
    let worst = within(&case, &got, &want, &mag, out.level())?;
    eprintln!("{case}: worst error {worst:.3} of the bound");
    Ok(())
}

/// Checks every `got` within `level` of `want` (relative term scaled by `mag`); returns the worst
/// error as a fraction of its bound.
fn within(
    case: &str,
    got: &[f32],
    want: &[f64],
    mag: &[f64],
    level: Tolerance,
) -> Result<f64, String> {
    let mut worst = 0f64;
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = level.bound(m, 0.0);
        let err = (g as f64 - w).abs();
        worst = worst.max(err / bound);
        if err.is_nan() || err > bound {
            return Err(format!(
                "{case}: element {i}: got {g}, want {w}; terms of magnitude {m} allow {bound} \
                 ({level})"
            ));
        }
    }
    Ok(worst)
}

fn check_decode_gemm_matches_f64<D: Device>(d: &D) -> Result<(), String> {
    let mut rng = Rng(21);
    // (rows, k, n): k 1; 17 (not a multiple of 8 or 16: scalar loads); 64 (vector loads); 600
    // (two lane tiles, a tail of 88 = 5 vectors + 8); 1000 (k % 16 = 8); n 3, 9, 13 (partial
    // blocks, odd) and 40; rows 1, 2, 3, 5, 16, 17, 32, 33 (one to three row groups).
    let shapes = [
        (1, 64, 24),
        (2, 17, 9),
        (2, 1, 3),
        (3, 1000, 5),
        (16, 600, 13),
        (17, 64, 40),
        (32, 40, 7),
        (33, 100, 13),
        (5, 48, 9),
    ];
    for kind in [WKind::Int8, WKind::F16] {
        for (rows, k, n) in shapes {
            let p = Problem::random(&mut rng, kind, rows, k, n);
            for out in [OutKind::F16, OutKind::F32, OutKind::F32Accumulate] {
                run_case(d, &p, out, 0)?;
            }
            // Misaligned activations with k % 8 == 0: the wrapper must take the scalar loads.
            run_case(d, &p, OutKind::F32, 1)?;
        }
    }
    Ok(())
}

/// The residual stream `x` f32 `[rows, k]` and a norm weight `[k]` on the device.
struct NormCase<D: Device> {
    x: D::Buf,
    weight: D::Buf,
    x_host: Vec<f32>,
    w_host: Vec<f32>,
}

const EPS: f32 = 1e-5;

impl<D: Device> NormCase<D> {
    fn random(d: &D, rng: &mut Rng, rows: usize, k: usize) -> Self {
        // Rows of different scales, as a residual stream has.
        let mut x_host = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let s = 0.5 + 3.0 * r as f32 / rows as f32;
            x_host.extend(rng.vec_f32(k, -s, s));
        }
        let w_host = rng.vec_f32(k, 0.5, 1.5);
        NormCase {
            x: upload_f32(d, &x_host),
            weight: upload_f32(d, &w_host),
            x_host,
            w_host,
        }
    }

    fn input(&self, d: &D) -> DecodeInput {
        DecodeInput::Norm {
            x: d.slice(&self.x),
            weight: d.slice(&self.weight),
            eps: EPS,
        }
    }

    /// rms_norm's f16 output `[rows, k]` (device buffer and values).
    fn rms_norm(&self, d: &D, rows: usize, k: usize) -> Result<(D::Buf, Vec<f32>), String> {
        let out = d.alloc(rows * k * 2).map_err(text)?;
        let (x, w) = (d.slice(&self.x), d.slice(&self.weight));
        rms_norm(d, d.slice(&out), x, w, rows, k, EPS).map_err(text)?;
        let values = download_f16(d, &out, rows * k);
        Ok((out, values))
    }

    /// f64 RMSNorm of the rows.
    fn reference(&self, rows: usize, k: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let x = &self.x_host[r * k..][..k];
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
            let inv = 1.0 / (ms + EPS as f64).sqrt();
            out.extend(
                x.iter()
                    .zip(&self.w_host)
                    .map(|(&v, &w)| v as f64 * inv * w as f64),
            );
        }
        out
    }
}

/// The GEMM with `out` kind into a fresh buffer; returns its values as bits.
fn gemm_bits<D: Device>(
    d: &D,
    input: DecodeInput,
    m: &DecodeMatrix,
    rows: usize,
    out: OutKind,
) -> Result<Vec<u32>, String> {
    let len = rows * m.n;
    Ok(match out {
        OutKind::F16 => {
            let c = d.alloc(len * 2).map_err(text)?;
            decode_gemm(d, DecodeOut::F16(d.slice(&c)), input, m, rows).map_err(text)?;
            download_f16(d, &c, len)
                .iter()
                .map(|v| v.to_bits())
                .collect()
        }
        OutKind::F32 | OutKind::F32Accumulate => {
            let c = d.alloc(len * 4).map_err(text)?;
            let o = DecodeOut::F32 {
                out: d.slice(&c),
                accumulate: false,
            };
            decode_gemm(d, o, input, m, rows).map_err(text)?;
            download_f32(d, &c, len)
                .iter()
                .map(|v| v.to_bits())
                .collect()
        }
    })
}

fn check_norm_prologue_is_rms_norm<D: Device>(d: &D) -> Result<(), String> {
    let mut rng = Rng(5);
    // k 17 (rms_norm block of 32 threads), 96 (3 warps: a tree with zero lanes), 600, 1000 and
    // 4096 (256 threads, several columns each); rows up to 33 (three row groups). Another order
    // of additions moves the inverse RMS by an ulp now and then, which flips an f16 rounding of
    // the normalised values only rarely: the 33 x 4096 case is what catches it (checked by
    // making the prologue add as a 32-thread block).
    for (kind, rows, k, n) in [
        (WKind::F16, 1, 17, 9),
        (WKind::F16, 3, 96, 13),
        (WKind::Int8, 16, 600, 10),
        (WKind::F16, 33, 1000, 7),
        (WKind::Int8, 2, 96, 5),
        (WKind::F16, 33, 4096, 3),
    ] {
        let norm = NormCase::random(d, &mut rng, rows, k);
        let (normed, values) = norm.rms_norm(d, rows, k)?;
        let case = format!("{kind:?} rows {rows} k {k} n {n}");
        // rms_norm itself against f64: one f16 rounding of a few-op f32 value.
        let want = norm.reference(rows, k);
        let mag: Vec<f64> = want.iter().map(|v| v.abs()).collect();
        within(&case, &values, &want, &mag, GPT_KERNEL_FP16_OUT)?;
        let mut p = Problem::random(&mut rng, kind, rows, k, n);
        p.a = values;
        let bufs = p.upload(d, |c| c);
        let m = p.matrix(d, &bufs);
        for out in [OutKind::F16, OutKind::F32] {
            let fused = gemm_bits(d, norm.input(d), &m, rows, out)?;
            let unfused = gemm_bits(d, DecodeInput::F16(d.slice(&normed)), &m, rows, out)?;
            if fused != unfused {
                let i = (0..fused.len()).find(|&i| fused[i] != unfused[i]).unwrap();
                return Err(format!(
                    "{case} {out:?}: norm prologue differs from rms_norm + GEMM at element {i}"
                ));
            }
            // And the whole thing against f64 on rms_norm's f16 values.
            let got: Vec<f32> = fused.iter().map(|&b| f32::from_bits(b)).collect();
            let (want, mag) = p.reference(out);
            within(&case, &got, &want, &mag, out.level())?;
        }
        eprintln!("{case}: norm prologue bit-identical to rms_norm + GEMM");
    }
    Ok(())
}

/// silu(a) * b in f64.
fn silu_times(a: f64, b: f64) -> f64 {
    a / (1.0 + (-a).exp()) * b
}

fn check_swiglu_epilogue_is_swiglu<D: Device>(d: &D) -> Result<(), String> {
    let mut rng = Rng(9);
    // (rows, k, hidden): hidden odd and not a multiple of 8 (swiglu's scalar kernel) or of 8
    // (its vector kernel); n = 2 hidden.
    for (kind, rows, k, hidden, norm) in [
        (WKind::F16, 1, 64, 5, false),
        (WKind::F16, 4, 600, 16, true),
        (WKind::Int8, 16, 96, 12, true),
        (WKind::F16, 33, 100, 9, true),
        (WKind::Int8, 3, 17, 8, false),
    ] {
        let n = 2 * hidden;
        let case = format!("{kind:?} rows {rows} k {k} hidden {hidden} norm {norm}");
        let p = Problem::random(&mut rng, kind, rows, k, n);
        let nc = NormCase::random(d, &mut rng, rows, k);
        let a_buf = upload_f16(d, &p.a);
        let (input, a_values) = if norm {
            (nc.input(d), nc.rms_norm(d, rows, k)?.1)
        } else {
            (DecodeInput::F16(d.slice(&a_buf)), p.a.clone())
        };
        // Unfused: the f16 GEMM in the bundle's channel order, then swiglu.
        let plain = p.upload(d, |c| c);
        let h13 = d.alloc(rows * n * 2).map_err(text)?;
        let act = d.alloc(rows * hidden * 2).map_err(text)?;
        let out = DecodeOut::F16(d.slice(&h13));
        decode_gemm(d, out, input, &p.matrix(d, &plain), rows).map_err(text)?;
        swiglu(d, d.slice(&act), d.slice(&h13), rows, hidden).map_err(text)?;
        let want_bits = download_f16(d, &act, rows * hidden);
        // Fused: w1/w3 channels interleaved, the SwiGLU epilogue.
        let pairs = p.upload(d, |c| {
            if c < hidden {
                2 * c
            } else {
                2 * (c - hidden) + 1
            }
        });
        let fused = d.alloc(rows * hidden * 2).map_err(text)?;
        let out = DecodeOut::SwiGlu(d.slice(&fused));
        decode_gemm(d, out, input, &p.matrix(d, &pairs), rows).map_err(text)?;
        let got = download_f16(d, &fused, rows * hidden);
        let same = got
            .iter()
            .zip(&want_bits)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err(format!(
                "{case}: fused SwiGLU {got:?} differs from GEMM + swiglu {want_bits:?}"
            ));
        }
        // Against f64: h1, h3 within the f16 GEMM level e1, e3 of their terms' magnitudes; the
        // product moves by at most |silu'| (< 1.1) e1 (|h3| + e3) + (|silu(h1)| + 1.1 e1) e3,
        // plus one f16 rounding of the result.
        let q = Problem { a: a_values, ..p };
        for (i, &g) in got.iter().enumerate() {
            let (m, j) = (i / hidden, i % hidden);
            let ((h1, m1), (h3, m3)) = (q.dot(&q.a, m, j), q.dot(&q.a, m, hidden + j));
            let (e1, e3) = (GEMM_FP16_OUT.bound(m1, 0.0), GEMM_FP16_OUT.bound(m3, 0.0));
            let want = silu_times(h1, h3);
            let s1 = h1 / (1.0 + (-h1).exp());
            let bound = 1.1 * e1 * (h3.abs() + e3)
                + (s1.abs() + 1.1 * e1) * e3
                + want.abs() / 1024.0
                + 1e-6;
            let err = (g as f64 - want).abs();
            if err.is_nan() || err > bound {
                return Err(format!(
                    "{case}: element {i}: got {g}, want {want} (bound {bound})"
                ));
            }
        }
        eprintln!("{case}: SwiGLU epilogue bit-identical to GEMM + swiglu");
    }
    Ok(())
}

/// `GemmWeight` in our layout (`DecodeGemm::Own`) against cuBLAS's `[k, n]` layout: at a decode
/// step (our kernel) and past `OWN_MAX_ROWS` (cuBLAS on our layout, transposed; the w1|w3 pair
/// matrix as two GEMMs into the halves of its output).
fn check_own_layout_matches_cublas<D: Device>(d: &D) -> Result<(), String> {
    let mut rng = Rng(77);
    let (k, n) = (96, 24);
    let w = rng.vec_f16(k * n, -1.0, 1.0);
    let cublas = GemmWeight::from_f32(d, &w, [k, n], DecodeGemm::Cublas, false).map_err(text)?;
    for pairs in [false, true] {
        let own = GemmWeight::from_f32(d, &w, [k, n], DecodeGemm::Own, pairs).map_err(text)?;
        for rows in [3, OWN_MAX_ROWS + 5] {
            let case = format!("rows {rows} pairs {pairs}");
            let a_buf = upload_f16(d, &rng.vec_f16(rows * k, -1.0, 1.0));
            let a = DecodeInput::F16(d.slice(&a_buf));
            let want = d.alloc(rows * n * 4).map_err(text)?;
            let got = d.alloc(rows * n * 4).map_err(text)?;
            let out = |b: &D::Buf| DecodeOut::F32 {
                out: d.slice(b),
                accumulate: false,
            };
            cublas.apply(d, a, out(&want), rows).map_err(text)?;
            let applied = own.apply(d, a, out(&got), rows);
            if pairs && rows <= OWN_MAX_ROWS {
                // Our kernel gives pairs as SwiGLU only.
                let e = applied
                    .err()
                    .ok_or(format!("{case}: f32 output from pairs"))?;
                assert!(e.to_string().contains("SwiGLU output only"), "{e}");
                continue;
            }
            applied.map_err(text)?;
            let (want, got) = (
                download_f32(d, &want, rows * n),
                download_f32(d, &got, rows * n),
            );
            let mag: Vec<f64> = want.iter().map(|v| v.abs() as f64 + 1.0).collect();
            let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            within(&case, &got, &want, &mag, GEMM_FP32_OUT)?;
        }
    }
    Ok(())
}

fn check_decode_gemm_bad_arguments<D: Device>(d: &D) {
    let (k, n, rows) = (32, 8, 2);
    let a = d.alloc(rows * k * 2).unwrap();
    let x = d.alloc(rows * k * 4).unwrap();
    let w = d.alloc(n * row_stride(k) * 2).unwrap();
    let s = d.alloc(n * 4).unwrap();
    let c = d.alloc(rows * n * 4).unwrap();
    let int8 = DecodeMatrix {
        w: DecodeWeights::Int8 {
            w: d.slice(&w),
            scale: d.slice(&s),
        },
        k,
        n,
    };
    let f16 = DecodeMatrix {
        w: DecodeWeights::F16(d.slice(&w)),
        ..int8
    };
    let out = DecodeOut::F32 {
        out: d.slice(&c),
        accumulate: false,
    };
    let input = DecodeInput::F16(d.slice(&a));
    let err = |out: DecodeOut, input: DecodeInput, m: &DecodeMatrix, rows: usize| {
        decode_gemm(d, out, input, m, rows).unwrap_err().to_string()
    };
    // Weights without their row padding (k = 20 needs rows of 32 values).
    let short = DecodeMatrix {
        w: DecodeWeights::Int8 {
            w: DevSlice::from_raw(d.addr(&w), n * 20),
            scale: d.slice(&s),
        },
        k: 20,
        n,
    };
    assert!(
        err(out, input, &short, rows).contains("weights holds 160 i8 values, the shape needs 256")
    );
    let short16 = DecodeMatrix {
        w: DecodeWeights::F16(DevSlice::from_raw(d.addr(&w), n * 20)),
        ..short
    };
    assert!(err(out, input, &short16, rows)
        .contains("weights holds 160 f16 values, the shape needs 256"));
    let misaligned = DecodeMatrix {
        w: DecodeWeights::F16(DevSlice::from_raw(d.addr(&w) + 8, n * row_stride(k))),
        ..f16
    };
    assert!(err(out, input, &misaligned, rows).contains("not 16-byte aligned"));
    assert!(err(out, input, &DecodeMatrix { k: 0, ..int8 }, rows).contains("k = 0"));
    assert!(err(out, input, &f16, 3).contains("a holds 64 f16 values, the shape needs 96"));
    let norm = |x: DevSlice<f32>, weight: DevSlice<f32>| DecodeInput::Norm {
        x,
        weight,
        eps: EPS,
    };
    let nw = d.slice::<f32>(&x).at("test", 0, k).unwrap();
    assert!(err(out, norm(d.slice(&x), nw), &f16, 3)
        .contains("x holds 64 f32 values, the shape needs 96"));
    let short_nw = d.slice::<f32>(&x).at("test", 0, k - 1).unwrap();
    assert!(err(out, norm(d.slice(&x), short_nw), &f16, rows).contains("norm weight holds 31"));
    // SwiGLU: odd n, and an output for fewer than rows x n / 2 values.
    let odd = DecodeMatrix { n: 7, ..f16 };
    let act = DecodeOut::SwiGlu(d.slice(&a));
    assert!(err(act, input, &odd, rows).contains("n = 7 channels"));
    let small = DecodeOut::SwiGlu(d.slice::<f16>(&a).at("test", 0, 7).unwrap());
    assert!(err(small, input, &f16, rows).contains("out holds 7 f16 values, the shape needs 8"));
    let f16_out = DecodeOut::F16(d.slice::<f16>(&a).at("test", 0, 15).unwrap());
    assert!(
        err(f16_out, input, &int8, rows).contains("out holds 15 f16 values, the shape needs 16")
    );
    // Nothing to compute: no launch, no error.
    decode_gemm(d, out, input, &int8, 0).unwrap();
    // GemmWeight: our layout's norm input and SwiGLU output refused where cuBLAS runs.
    let cublas =
        GemmWeight::from_f32(d, &vec![0.0; k * n], [k, n], DecodeGemm::Cublas, false).unwrap();
    let e = cublas
        .apply(d, norm(d.slice(&x), nw), out, rows)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("norm prologue needs our decode GEMM"),
        "{e}"
    );
    let e = cublas.apply(d, input, act, rows).unwrap_err();
    assert!(
        e.to_string()
            .contains("SwiGLU epilogue needs our decode GEMM"),
        "{e}"
    );
    let e = GemmWeight::from_f32(d, &[0.0; 3], [k, n], DecodeGemm::Own, false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("3 values for [32, 8]"), "{e}");
}

device_tests!(
    check_decode_gemm_matches_f64,
    check_norm_prologue_is_rms_norm,
    check_swiglu_epilogue_is_swiglu,
    check_own_layout_matches_cublas,
    check_decode_gemm_bad_arguments
);
