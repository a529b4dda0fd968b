//! Helpers of the CUDA backend tests (feature `cuda`): the [`device_tests!`](crate::device_tests)
//! macro that runs one generic check on every available device, a deterministic random generator
//! and typed upload/download helpers over any [`Device`]. Values are compared with
//! [`Tolerance`](crate::Tolerance) levels.

use half::f16;
use llamagen_cuda::device::Device;

/// `device_tests!(check_a, check_b, ...)`: for each generic `fn check_a<D: Device>(d: &D)`
/// (returning `()` or a `Result` whose error is `Debug`), a module `check_a` with the tests
/// `emu` (the calling crate's feature `emu`: on the host emulator) and `gpu` (its feature
/// `driver`: on GPU 0, skipped with "skipped: no CUDA GPU (...)" when none can be opened).
/// Filter with `cargo test check_a`.
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
                    $crate::device::TestOutcome::check(super::$check(&device));
                }

                #[cfg(feature = "driver")]
                #[test]
                fn gpu() {
                    let device = match llamagen_cuda::driver::CudaDevice::open(0) {
                        Ok(d) => d,
                        Err(e) => {
                            eprintln!("skipped: no CUDA GPU ({})", $crate::device::skip_reason(&e));
                            return;
                        }
                    };
                    $crate::device::TestOutcome::check(super::$check(&device));
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
