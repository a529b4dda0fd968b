//! 2D rotary tables, as the official `precompute_freqs_cis_2d`, indexed by cache slot.
//!
//! Head dims pair up as (x[2j], x[2j+1]). The first half of the pairs rotates with the token's
//! grid row, the second half with its column, at frequencies base^(-2j / (head_dim / 2)).
//! Rows of the condition slots (`0..cls_token_num`) are all zero, cos included: the official
//! code concatenates zeros there, which zeroes q and k at condition positions. Slots past the
//! last image token (padding up to `max_len`) are never used as positions and stay zero.
//!
//! The graph applies the rotation as `x * cos + (x @ R) * sin` with per-dimension tables
//! (each pair's angle repeated twice) and the fixed pair-swap matrix `R` (`(x @ R)[2j] =
//! -x[2j+1]`, `(x @ R)[2j+1] = x[2j]`): exact in f32, and four operators instead of a dozen.

use crate::config::GptConfig;

/// (cos, sin), each `[max_len, head_dim]` row-major, every pair's value repeated twice.
pub fn tables(c: &GptConfig) -> (Vec<f32>, Vec<f32>) {
    let hd = c.head_dim;
    let quarter = hd / 4;
    let half_dim = (hd / 2) as f32;
    // Computed in f32 as the official code does (torch float32 arithmetic).
    let freqs: Vec<f32> = (0..quarter)
        .map(|j| 1.0 / c.rope_base.powf((2 * j) as f32 / half_dim))
        .collect();
    let grid = c.grid();
    let mut cos = vec![0.0f32; c.max_len * hd];
    let mut sin = vec![0.0f32; c.max_len * hd];
    for t in 0..c.block_size {
        let (row, col) = ((t / grid) as f32, (t % grid) as f32);
        let slot = c.cls_token_num + t;
        for (j, f) in freqs.iter().enumerate() {
            for (pair, angle) in [(j, row * f), (quarter + j, col * f)] {
                let at = slot * hd + 2 * pair;
                cos[at..at + 2].fill(angle.cos());
                sin[at..at + 2].fill(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// The pair-swap matrix `R` `[head_dim, head_dim]` (row-major, for `x @ R`).
pub fn swap_matrix(head_dim: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; head_dim * head_dim];
    for j in 0..head_dim / 2 {
        let (a, b) = (2 * j, 2 * j + 1);
        r[b * head_dim + a] = -1.0; // out[a] = -x[b]
        r[a * head_dim + b] = 1.0; // out[b] = x[a]
    }
    r
}

#[cfg(test)]
mod tests {
    use crate::config::{GptArch, GptConfig};

    #[test]
    fn condition_rows_are_zero_and_grid_rows_rotate() {
        let gpt_b = GptArch {
            name: "GPT-B".into(),
            n_layer: 12,
            n_head: 12,
            dim: 768,
            released_type: "c2i".into(),
        };
        let c = GptConfig::new(&gpt_b, 16384, 1000, 1, 256).unwrap();
        let (cos, sin) = super::tables(&c);
        let hd = c.head_dim;
        assert!(cos[..hd].iter().chain(&sin[..hd]).all(|&x| x == 0.0));
        // Token 0 sits at grid (0, 0): angle 0 everywhere.
        assert!(cos[hd..2 * hd].iter().all(|&x| x == 1.0));
        // Token 17 is row 1, column 1 of the 16x16 grid; pair 0 rotates by row * 1.0, and the
        // first column pair (index head_dim / 4) by col * 1.0.
        let slot = 1 + 17;
        assert_eq!(cos[slot * hd], cos[slot * hd + 1]);
        assert!((cos[slot * hd] - 1f32.cos()).abs() < 1e-7);
        assert!((sin[slot * hd + 2 * (hd / 4)] - 1f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn swap_matrix_rotates_pairs_by_ninety_degrees() {
        let r = super::swap_matrix(4);
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let xr: Vec<f32> = (0..4)
            .map(|o| (0..4).map(|i| x[i] * r[i * 4 + o]).sum())
            .collect();
        assert_eq!(xr, vec![-2.0, 1.0, -4.0, 3.0]);
    }
}
