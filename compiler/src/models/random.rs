//! Seeded random weights for `--random-weights`: demos and latency benchmarks without downloads.
//!
//! Each tensor is a pure function of (seed, key), generated when written, so even GPT-7B never
//! sits in memory at once. Values follow the official initialisation where it matters for sane
//! activations: linear/embedding weights N(0, 0.02), norm weights 1, biases 0, convolution
//! weights N(0, 1/fan_in), a unit-norm codebook.

use crate::Error;

use super::WeightSource;

pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights { seed }
    }
}

/// splitmix64: a tiny, well-mixed generator; quality is ample for initial weights.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn key_hash(key: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn normals(mut out: Vec<f32>, seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut s = seed;
    while out.len() < n {
        // Box-Muller on two uniforms in (0, 1].
        let u1 = ((splitmix(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32 * std);
        if out.len() < n {
            out.push((r * t.sin()) as f32 * std);
        }
    }
    out
}

impl WeightSource for RandomWeights {
    fn check(&self, _key: &str, _shape: &[usize]) -> Result<(), Error> {
        Ok(())
    }

    fn load(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        // An allocation that cannot be made is a named error, not an abort.
        let too_big = || Error::InvalidOption {
            option: "--random-weights",
            reason: format!("tensor {key} of shape {shape:?} cannot be allocated"),
        };
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(too_big)?;
        let mut buf: Vec<f32> = Vec::new();
        buf.try_reserve_exact(n).map_err(|_| too_big())?;
        let seed = self.seed ^ key_hash(key);
        let is_norm = key.contains("norm") && key.ends_with(".weight");
        Ok(if is_norm {
            buf.resize(n, 1.0);
            buf
        } else if key.ends_with(".bias") {
            buf.resize(n, 0.0);
            buf
        } else if key == "quantize.embedding.weight" {
            let mut v = normals(buf, seed, n, 1.0);
            let dim = shape.last().copied().unwrap_or(1).max(1);
            for row in v.chunks_mut(dim) {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|x| *x /= norm);
            }
            v
        } else if shape.len() == 4 {
            let fan_in: usize = shape[1..].iter().product();
            normals(buf, seed, n, (1.0 / fan_in as f32).sqrt())
        } else {
            normals(buf, seed, n, 0.02)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_sane_statistics() {
        let r = RandomWeights::new(7);
        let a = r.load("layers.0.attention.wqkv.weight", &[96, 32]).unwrap();
        assert_eq!(
            a,
            r.load("layers.0.attention.wqkv.weight", &[96, 32]).unwrap()
        );
        assert_ne!(
            a,
            RandomWeights::new(8)
                .load("layers.0.attention.wqkv.weight", &[96, 32])
                .unwrap()
        );
        let std = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!((0.017..0.023).contains(&std), "{std}");
        assert!(r
            .load("norm.weight", &[4])
            .unwrap()
            .iter()
            .all(|&x| x == 1.0));
    }

    /// Issue 11: a random tensor too large to allocate used to abort the process.
    #[test]
    fn random_weights_too_large_to_allocate_are_an_error() {
        let r = RandomWeights::new(0);
        for shape in [vec![usize::MAX, 2], vec![1 << 40, 1 << 22]] {
            match r.load("layers.0.attention.wqkv.weight", &shape) {
                Err(Error::InvalidOption { option, reason }) => {
                    assert_eq!(option, "--random-weights");
                    assert!(reason.contains("wqkv"), "{reason}");
                }
                other => panic!("{shape:?}: {:?}", other.map(|v| v.len())),
            }
        }
    }
}
