//! AVX-512 helpers our CPU kernels share (x86-64 only).

use std::arch::x86_64::*;

/// `e^x` for `x <= 0` (softmax arguments, SiLU's `e^-|t|`), within ~2 ulp: `x = n ln 2 + r`, `|r| <= ln 2 / 2`,
/// `e^r` by its degree-7 Taylor polynomial (truncation < 1e-8 relative), scaled by `2^n`.
/// Below -87.3 the result is 0-ish (the clamp keeps `2^n` normal).
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_nonpositive(x: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_on_softmax_arguments() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.0043).collect();
        for chunk in xs.chunks(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 F is present (checked above); 16 floats in and out.
            unsafe {
                let mut v = [f32::NEG_INFINITY; 16];
                v[..chunk.len()].copy_from_slice(chunk);
                _mm512_storeu_ps(
                    got.as_mut_ptr(),
                    exp_nonpositive(_mm512_loadu_ps(v.as_ptr())),
                );
            }
            for (&x, &e) in chunk.iter().zip(&got) {
                let want = (x as f64).exp();
                let tol = 2.5 * f32::EPSILON as f64 * want + 1e-38;
                assert!(
                    (e as f64 - want).abs() <= tol,
                    "exp({x}) = {e}, want {want}"
                );
            }
        }
    }
}
