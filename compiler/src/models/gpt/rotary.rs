//! 2D rotary tables, as the official `precompute_freqs_cis_2d`, indexed by cache slot.
//!
//! Head dims pair up as (x[2j], x[2j+1]). The first half of the pairs rotates with the token's
//! grid row, the second half with its column, at frequencies base^(-2j / (head_dim / 2)).
//! Rows of the condition slots (`0..cls_token_num`) are all zero, cos included: the official
//! code concatenates zeros there, which zeroes q and k at condition positions. Slots past the
//! last image token (padding up to `max_len`) are never used as positions and stay zero.

use crate::config::GptConfig;

/// (cos, sin), each `[max_len, head_dim / 2]` row-major.
pub fn tables(c: &GptConfig) -> (Vec<f32>, Vec<f32>) {
    let pairs = c.head_dim / 2;
    let quarter = pairs / 2;
    let half_dim = pairs as f32;
    // Computed in f32 as the official code does (torch float32 arithmetic).
    let freqs: Vec<f32> = (0..quarter)
        .map(|j| 1.0 / c.rope_base.powf((2 * j) as f32 / half_dim))
        .collect();
    let grid = c.grid();
    let mut cos = vec![0.0f32; c.max_len * pairs];
    let mut sin = vec![0.0f32; c.max_len * pairs];
    for t in 0..c.block_size {
        let (row, col) = ((t / grid) as f32, (t % grid) as f32);
        let slot = c.cls_token_num + t;
        for (j, f) in freqs.iter().enumerate() {
            for (k, angle) in [(j, row * f), (quarter + j, col * f)] {
                cos[slot * pairs + k] = angle.cos();
                sin[slot * pairs + k] = angle.sin();
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use crate::config::{gpt_arch, GptConfig};

    #[test]
    fn condition_rows_are_zero_and_grid_rows_rotate() {
        let c = GptConfig::new(&gpt_arch("GPT-B").unwrap(), 16384, 1000, 1, 256).unwrap();
        let (cos, sin) = super::tables(&c);
        let pairs = c.head_dim / 2;
        assert!(cos[..pairs].iter().chain(&sin[..pairs]).all(|&x| x == 0.0));
        // Token 0 sits at grid (0, 0): angle 0 everywhere.
        assert!(cos[pairs..2 * pairs].iter().all(|&x| x == 1.0));
        // Token 17 is row 1, column 1 of the 16x16 grid; pair 0 rotates by row * 1.0.
        let slot = 1 + 17;
        assert!((cos[slot * pairs] - 1f32.cos()).abs() < 1e-7);
        assert!((sin[slot * pairs + pairs / 2] - 1f32.sin()).abs() < 1e-7);
    }
}
