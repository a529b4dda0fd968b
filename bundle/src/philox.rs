//! Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3", SC 2011), bit-compatible with Random123's `philox4x32_R(10, ..)`.
//!
//! Contract: the uniform draw for (seed, stream, counter) is a pure function of those three
//! numbers. The runtime uses `stream` = request index (or any per-request id) and `counter` =
//! decode step, so a CPU sampler and a GPU sampler (which can run the same 10 rounds in a kernel)
//! draw from one random stream, and a request's tokens do not depend on how requests are batched.
//!
//! Layout: key = [seed lo, seed hi]; counter block = [counter lo, counter hi, stream lo, stream hi].
//! [`Philox::uniform`] takes the first output word `x` and returns `(x >> 8) * 2^-24` in [0, 1).

/// Philox multiplier for lanes 0/1.
pub const PHILOX_M0: u32 = 0xD251_1F53;
/// Philox multiplier for lanes 2/3.
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
/// Weyl key increment for key word 0 (golden ratio).
pub const PHILOX_W0: u32 = 0x9E37_79B9;
/// Weyl key increment for key word 1 (sqrt(3) - 1).
pub const PHILOX_W1: u32 = 0xBB67_AE85;
/// Number of rounds (the "-10" in Philox4x32-10).
pub const PHILOX_ROUNDS: usize = 10;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(PHILOX_M0, ctr[0]);
    let (hi1, lo1) = mulhilo(PHILOX_M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// The raw Philox4x32-10 bijection: 128-bit counter block and 64-bit key to 128 random bits.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = round(ctr, key);
    let mut k = key;
    for _ in 1..PHILOX_ROUNDS {
        k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        c = round(c, k);
    }
    c
}

/// A seeded Philox4x32-10 generator. Stateless: every draw is addressed by (stream, counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Philox {
    key: [u32; 2],
}

impl Philox {
    /// Key = [seed lo, seed hi].
    pub fn new(seed: u64) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
        }
    }

    /// The 64-bit key words (for handing to a GPU kernel).
    pub fn key(&self) -> [u32; 2] {
        self.key
    }

    /// The four raw output words for (stream, counter).
    #[inline]
    pub fn block(&self, stream: u64, counter: u64) -> [u32; 4] {
        let ctr = [
            counter as u32,
            (counter >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ];
        philox4x32_10(ctr, self.key)
    }

    /// A uniform float in [0, 1) from the first output word `x`: `(x >> 8) as f32 * 2^-24`
    /// (24 bits, so every value is exactly representable and 1.0 is never returned).
    #[inline]
    pub fn uniform(&self, stream: u64, counter: u64) -> f32 {
        let x = self.block(stream, counter)[0];
        (x >> 8) as f32 * (1.0 / 16_777_216.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors from Random123's kat_vectors (philox4x32 10 rounds).
    #[test]
    fn kat_zero() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
    }

    #[test]
    fn kat_ones() {
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn kat_pi() {
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn layout_matches_raw_block() {
        // seed -> key words, (stream, counter) -> counter block words.
        let seed = 0x299f31d0_a4093822u64;
        let stream = 0x03707344_13198a2eu64;
        let counter = 0x85a308d3_243f6a88u64;
        let p = Philox::new(seed);
        assert_eq!(p.key(), [0xa4093822, 0x299f31d0]);
        assert_eq!(
            p.block(stream, counter),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
        let u = p.uniform(stream, counter);
        assert_eq!(u, (0xd16cfe09u32 >> 8) as f32 / 16_777_216.0);
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn all_ones_word_stays_below_one() {
        // Largest possible word maps to 1 - 2^-24, never 1.0.
        assert_eq!(
            (u32::MAX >> 8) as f32 * (1.0 / 16_777_216.0),
            1.0 - 2f32.powi(-24)
        );
    }

    #[test]
    fn pure_function_of_inputs() {
        let a = Philox::new(7);
        let b = Philox::new(7);
        assert_eq!(a.uniform(3, 11), b.uniform(3, 11));
        assert_ne!(a.block(3, 11), a.block(3, 12));
        assert_ne!(a.block(3, 11), a.block(4, 11));
        assert_ne!(a.block(3, 11), Philox::new(8).block(3, 11));
    }
}
