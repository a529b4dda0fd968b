//! The fused GroupNorm (+ SiLU) kernel (`group_norm::GroupNorm`) against an f64 reference of
//! the official `nn.GroupNorm(groups, C, eps, affine=True)` then `x * sigmoid(x)`, on maps with
//! and without a 16-lane tail, in place and not, with a large mean (two-pass variance: no
//! cancellation). Level: max abs error <= 1e-5 x (1 + max |output|) (f32 rounding of the
//! normalized values; the sums are f64).

use llamagen_runtime::group_norm::{self, GroupNorm};

fn fill(n: usize, seed: u64, offset: f32, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            offset + ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn reference(g: &GroupNorm, x: &[f32], c: usize, hw: usize, w: &[f32], b: &[f32]) -> Vec<f64> {
    let cpg = c / g.groups;
    let mut out = vec![0f64; x.len()];
    for (t, block) in x.chunks(cpg * hw).enumerate() {
        let len = block.len() as f64;
        let mean = block.iter().map(|&v| v as f64).sum::<f64>() / len;
        let var = block
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / len;
        let rstd = 1.0 / (var + g.eps as f64).sqrt();
        for (i, &v) in block.iter().enumerate() {
            let ch = (t % g.groups) * cpg + i / hw;
            let y = (v as f64 - mean) * rstd * w[ch] as f64 + b[ch] as f64;
            out[t * cpg * hw + i] = if g.silu { y / (1.0 + (-y).exp()) } else { y };
        }
    }
    out
}

fn check(g: GroupNorm, n: usize, c: usize, hw: usize, offset: f32, in_place: bool) {
    check_spread(g, n, c, hw, offset, 3.0, in_place)
}

#[allow(clippy::too_many_arguments)]
fn check_spread(
    g: GroupNorm,
    n: usize,
    c: usize,
    hw: usize,
    offset: f32,
    spread: f32,
    in_place: bool,
) {
    let x = fill(n * c * hw, 7, offset, spread);
    let w = fill(c, 8, 1.0, 0.5);
    let b = fill(c, 9, 0.0, 0.5);
    let par = llamagen_test_support::threads::scoped(3);
    let got = if in_place {
        let mut buf = x.clone();
        let p = buf.as_mut_ptr();
        // SAFETY: one buffer of n * c * hw values, in place.
        unsafe { g.run_raw(p, p, n, c, hw, &w, &b, &par) }.unwrap();
        buf
    } else {
        let mut y = vec![0f32; x.len()];
        g.run(&x, &mut y, n, c, hw, &w, &b, &par).unwrap();
        y
    };
    let want = reference(&g, &x, c, hw, &w, &b);
    let peak = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0f64, f64::max);
    assert!(
        worst <= 1e-5 * (1.0 + peak),
        "{g:?} n {n} c {c} hw {hw} offset {offset} spread {spread} in place {in_place}: {worst:.3e}"
    );
}

#[test]
fn matches_the_f64_reference_with_and_without_silu() {
    if !group_norm::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    for silu in [false, true] {
        for (c, groups, hw) in [(10, 5, 37), (64, 32, 256), (12, 3, 16), (32, 32, 1)] {
            let g = GroupNorm {
                groups,
                eps: 1e-6,
                silu,
            };
            check(g, 2, c, hw, 0.0, false);
            check(g, 1, c, hw, 0.0, true);
        }
    }
}

#[test]
fn stays_accurate_on_a_large_mean_and_a_variance_near_eps() {
    if !group_norm::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    let g = GroupNorm {
        groups: 4,
        eps: 1e-6,
        silu: true,
    };
    // mean 1000, std ~1.7: one-pass E[x^2] - E[x]^2 in f32 would lose the variance.
    check(g, 2, 8, 300, 1000.0, false);
    // A variance near eps: eps itself shapes the output.
    check_spread(g, 2, 8, 300, 0.5, 1e-3, true);
}

#[test]
fn refuses_bad_sizes_with_a_reason() {
    if !group_norm::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    let par = |count: usize, f: &(dyn Fn(usize) + Sync)| (0..count).for_each(f);
    let g = GroupNorm {
        groups: 3,
        eps: 1e-6,
        silu: false,
    };
    let x = vec![0f32; 10 * 4];
    let mut y = vec![0f32; 10 * 4];
    let (w, b) = (vec![1f32; 10], vec![0f32; 10]);
    let err = g.run(&x, &mut y, 1, 10, 4, &w, &b, &par).unwrap_err();
    assert!(err.contains("10 channels in 3 groups"), "{err}");
    let g = GroupNorm { groups: 5, ..g };
    let err = g.run(&x, &mut y, 1, 10, 4, &w[1..], &b, &par).unwrap_err();
    assert!(err.contains("weight 9"), "{err}");
    let err = g.run(&x[1..], &mut y, 1, 10, 4, &w, &b, &par).unwrap_err();
    assert!(err.contains("input 39"), "{err}");
    g.run(&x, &mut y, 1, 10, 4, &w, &b, &par).unwrap();
}
