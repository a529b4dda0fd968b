//! The between-scale resampling of VAR as constant matrices: torch's `F.interpolate` with
//! `mode='bicubic'` and `mode='area'` (both `align_corners=False`, output size given) are
//! separable linear maps, so a `[C, n, n] -> [C, m, m]` resize is `R X R^T` with one `[m, n]`
//! matrix R. The compiler's embed graph applies them as two MatMuls; the CUDA backend applies the same
//! matrices in its between-scale kernels, so both read them from here.
//!
//! Bicubic follows ATen's CPU kernel (`UpSampleKernel.cpp`, `HelperInterpCubic`): source
//! coordinate `(i + 0.5) * n / m - 0.5`, index `min(floor(x), n - 1)`, weight `t = clamp(x -
//! index, 0, 1)`, Keys' cubic with A = -0.75 on the taps `index - 1 .. index + 2`, each tap
//! clamped into `0..n`. Area is `adaptive_avg_pool2d`: output i averages inputs
//! `floor(i n / m) .. ceil((i + 1) n / m)`.

/// `[m, n]` row-major matrix of the bicubic resize of a length-n axis to length m.
pub fn bicubic(n: usize, m: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let conv1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    // ATen computes the scale and source index in the float opmath type.
    let scale = n as f32 / m as f32;
    let mut r = vec![0f32; m * n];
    for i in 0..m {
        let real = scale * (i as f32 + 0.5) - 0.5;
        let index = (real.floor() as i64).min(n as i64 - 1);
        let t = (real - index as f32).clamp(0.0, 1.0) as f64;
        let w = [conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t)];
        for (k, wk) in w.iter().enumerate() {
            let src = (index - 1 + k as i64).clamp(0, n as i64 - 1) as usize;
            r[i * n + src] += *wk as f32;
        }
    }
    r
}

/// `[m, n]` row-major matrix of the area (adaptive average) resize of length n to length m.
pub fn area(n: usize, m: usize) -> Vec<f32> {
    let mut r = vec![0f32; m * n];
    for i in 0..m {
        let start = i * n / m;
        let end = ((i + 1) * n).div_ceil(m);
        let w = 1.0 / (end - start) as f32;
        for j in start..end {
            r[i * n + j] = w;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_sums(r: &[f32], n: usize) -> Vec<f32> {
        r.chunks(n).map(|row| row.iter().sum()).collect()
    }

    #[test]
    fn bicubic_rows_are_partitions_of_unity() {
        for (n, m) in [(1, 16), (2, 16), (3, 16), (13, 16), (5, 32)] {
            for s in row_sums(&bicubic(n, m), n) {
                assert!((s - 1.0).abs() < 1e-6, "{n}->{m}: {s}");
            }
        }
        // From one pixel every output is that pixel.
        assert!(bicubic(1, 16).iter().all(|&w| (w - 1.0).abs() < 1e-6));
    }

    #[test]
    fn bicubic_interpolates_where_the_source_coordinate_is_whole() {
        // 3 -> 9: the source coordinate (i + 0.5) / 3 - 0.5 is 0, 1, 2 at i = 1, 4, 7, where
        // Keys' kernel is 1 at the centre tap and 0 at the others.
        let r = bicubic(3, 9);
        for (i, src) in [(1, 0), (4, 1), (7, 2)] {
            for j in 0..3 {
                let want = if j == src { 1.0 } else { 0.0 };
                assert!(
                    (r[i * 3 + j] - want).abs() < 1e-6,
                    "row {i}: {:?}",
                    &r[i * 3..i * 3 + 3]
                );
            }
        }
        // At the border the clamped taps overshoot as torch does: 2 -> 4 of [0, 1] starts
        // below 0 (the far tap weighs cubic(1.25) = -0.10546875).
        assert!((bicubic(2, 4)[1] + 0.105_468_75).abs() < 1e-7);
    }

    #[test]
    fn area_averages_overlapping_windows() {
        // 16 -> 3: windows 0..6, 5..11, 10..16 (adaptive pooling overlaps when n % m != 0).
        let r = area(16, 3);
        let support: Vec<Vec<usize>> = r
            .chunks(16)
            .map(|row| (0..16).filter(|&j| row[j] > 0.0).collect())
            .collect();
        assert_eq!(support[0], (0..6).collect::<Vec<_>>());
        assert_eq!(support[1], (5..11).collect::<Vec<_>>());
        assert_eq!(support[2], (10..16).collect::<Vec<_>>());
        for s in row_sums(&r, 16) {
            assert!((s - 1.0).abs() < 1e-6);
        }
        // Same size is the identity.
        let id = area(4, 4);
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(id[i * 4 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }
}
