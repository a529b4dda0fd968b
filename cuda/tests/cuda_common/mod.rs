//! Shared helpers of the CUDA backend tests: the `device_tests!` macro that runs one generic check
//! on every available device, a deterministic random generator, typed upload/download helpers
//! over any [`Device`], and an error comparer that names the worst element.
//!
//! Each test file uses a subset, hence `dead_code` is allowed.
#![allow(dead_code)]

use half::f16;
use llamagen_cuda::device::Device;

/// `device_tests!(check_a, check_b, ...)`: for each generic `fn check_a<D: Device>(d: &D)`
/// (returning `()` or a `Result` whose error is `Debug`), a module `check_a` with the tests
/// `emu` (feature `cuda-emu`: on the host emulator) and `gpu` (feature `cuda`: on GPU 0, skipped
/// with "skipped: no CUDA GPU (...)" when none can be opened). Filter with `cargo test check_a`.
#[macro_export]
macro_rules! device_tests {
    ($($check:ident),+ $(,)?) => {
        $(
            mod $check {
                #[cfg(feature = "emu")]
                #[test]
                fn emu() {
                    let device = llamagen_cuda::emu::EmuDevice::new()
                        .expect("the emulator device");
                    $crate::cuda_common::TestOutcome::check(super::$check(&device));
                }

                #[cfg(feature = "driver")]
                #[test]
                fn gpu() {
                    let device = match llamagen_cuda::driver::CudaDevice::open(0) {
                        Ok(d) => d,
                        Err(e) => {
                            eprintln!("skipped: no CUDA GPU ({})", $crate::cuda_common::skip_reason(&e));
                            return;
                        }
                    };
                    $crate::cuda_common::TestOutcome::check(super::$check(&device));
                }
            }
        )+
    };
}

/// What a check function may return.
pub trait TestOutcome {
    fn check(self);
}

impl TestOutcome for () {
    fn check(self) {}
}

impl<E: std::fmt::Debug> TestOutcome for Result<(), E> {
    fn check(self) {
        if let Err(e) = self {
            panic!("check failed: {e:?}");
        }
    }
}

/// The reason part of a "backend unavailable" error, else the whole message.
pub fn skip_reason(e: &llamagen_cuda::CudaError) -> String {
    match e {
        llamagen_cuda::CudaError::Unavailable { reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// splitmix64: a small deterministic stream of test inputs.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi), 24 random bits.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec_f32(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// `n` values uniform in [lo, hi), already rounded to f16 (what an f16 buffer holds, so a
    /// CPU reference sees the device's exact inputs).
    pub fn vec_f16(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        self.vec_f32(n, lo, hi).into_iter().map(round_f16).collect()
    }

    /// `n` integers in [lo, hi).
    pub fn vec_i32(&mut self, n: usize, lo: i32, hi: i32) -> Vec<i32> {
        let span = (hi as i64 - lo as i64).max(1) as u64;
        (0..n)
            .map(|_| (lo as i64 + (self.next_u64() % span) as i64) as i32)
            .collect()
    }

    /// An index in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `x` rounded to the nearest f16 (ties to even), back in f32.
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// A new device buffer holding `bytes`.
pub fn upload_bytes<D: Device>(d: &D, bytes: &[u8]) -> D::Buf {
    let buf = d.alloc(bytes.len()).expect("alloc");
    d.upload(&buf, 0, bytes).expect("upload");
    buf
}

/// A new device buffer of f32 `values`.
pub fn upload_f32<D: Device>(d: &D, values: &[f32]) -> D::Buf {
    upload_bytes(
        d,
        &values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// A new device buffer of `values` rounded to f16.
pub fn upload_f16<D: Device>(d: &D, values: &[f32]) -> D::Buf {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    upload_bytes(d, &bytes)
}

/// A new device buffer of i32 `values`.
pub fn upload_i32<D: Device>(d: &D, values: &[i32]) -> D::Buf {
    upload_bytes(
        d,
        &values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// `n` bytes of `buf` from its start.
pub fn download_bytes<D: Device>(d: &D, buf: &D::Buf, n: usize) -> Vec<u8> {
    let mut raw = vec![0u8; n];
    d.download(buf, 0, &mut raw).expect("download");
    raw
}

/// The first `n` f32 of `buf`.
pub fn download_f32<D: Device>(d: &D, buf: &D::Buf, n: usize) -> Vec<f32> {
    download_bytes(d, buf, 4 * n)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The first `n` f16 of `buf`, as f32 (exact).
pub fn download_f16<D: Device>(d: &D, buf: &D::Buf, n: usize) -> Vec<f32> {
    download_bytes(d, buf, 2 * n)
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// The first `n` i32 of `buf`.
pub fn download_i32<D: Device>(d: &D, buf: &D::Buf, n: usize) -> Vec<i32> {
    download_bytes(d, buf, 4 * n)
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The largest deviation of `got` from `want`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxError {
    /// Largest `|got - want|`, and where.
    pub abs: f32,
    pub abs_index: usize,
    /// Largest `|got - want| / |want|` over elements with `want != 0`, and where.
    pub rel: f32,
    pub rel_index: usize,
}

/// Max absolute and relative errors (NaN anywhere counts as infinite error).
pub fn max_error(got: &[f32], want: &[f32]) -> MaxError {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut m = MaxError::default();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = if g.is_nan() != w.is_nan() || (g.is_infinite() && g != w) {
            f32::INFINITY
        } else if g == w || (g.is_nan() && w.is_nan()) {
            0.0
        } else {
            (g - w).abs()
        };
        if d > m.abs {
            m.abs = d;
            m.abs_index = i;
        }
        if w != 0.0 && d / w.abs() > m.rel {
            m.rel = d / w.abs();
            m.rel_index = i;
        }
    }
    m
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise; the message names the worst
/// element (largest excess over its bound), its values and the overall max errors.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} != {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let bound = atol + rtol * w.abs();
        let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= bound;
        if !ok {
            let excess = if (g - w).is_nan() {
                f32::INFINITY
            } else {
                (g - w).abs() - bound
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, _)) = worst {
        let m = max_error(got, want);
        panic!(
            "{what}: element {i}: got {}, want {} (atol {atol}, rtol {rtol}); max abs error {} at \
             {}, max rel error {} at {}",
            got[i], want[i], m.abs, m.abs_index, m.rel, m.rel_index
        );
    }
}
