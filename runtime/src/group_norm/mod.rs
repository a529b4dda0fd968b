//! GroupNorm with its per-channel affine, optionally followed by SiLU, in one pass over each
//! group (the VQ decoders' `Normalize` + `nonlinearity`), on AVX-512; and the ONNX Runtime
//! custom operator that runs it (`op`; the graph is rewritten at load by
//! `backend::group_norm_rewrite`).
//!
//! Why: the ONNX graph spells GroupNorm + SiLU as Reshape, InstanceNormalization, Reshape, Mul,
//! Add, Sigmoid and Mul, each writing a full tensor. At a VQ decoder's 256 x 256 level (160
//! channels, 42 MB a tensor) four such tensors were alive at once around each SiLU: the block's
//! input, the normalized map, the sigmoid and the product (168 MB); one operator leaves the
//! input and its output, or only one of them where the output may take the input's buffer.
//!
//! A task is one (image, group): the group's channels are contiguous (`cpg x h x w` floats,
//! 1.3 MB at 5 x 256 x 256, L2-resident), read for the mean, again for the variance (two
//! passes: no cancellation), then normalized, scaled, shifted and passed through SiLU in
//! place or into the output.

#[cfg(target_arch = "x86_64")]
pub(crate) mod op;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::parallel::ParallelFor;
#[cfg(target_arch = "x86_64")]
use crate::simd::exp_nonpositive;

/// One GroupNorm: `groups` groups over the channels, `eps` in the variance, SiLU after the
/// affine or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

/// Whether this CPU runs the kernel (AVX-512 F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The output pointer, shared by tasks that write disjoint groups of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: tasks write (and, in place, read) only their own group's block.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

impl GroupNorm {
    /// `y = norm(x)` over `[n, c, hw]` (`hw` the map's pixels), with `weight` and `bias` of
    /// `c` values.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        y: &mut [f32],
        n: usize,
        c: usize,
        hw: usize,
        weight: &[f32],
        bias: &[f32],
        par: ParallelFor<'_>,
    ) -> Result<(), String> {
        if x.len() != n * c * hw || y.len() != x.len() {
            return Err(format!(
                "input {} / output {} values for {n} x {c} x {hw}",
                x.len(),
                y.len()
            ));
        }
        // SAFETY: lengths checked; `x` and `y` are distinct borrows.
        unsafe { self.run_raw(x.as_ptr(), y.as_mut_ptr(), n, c, hw, weight, bias, par) }
    }

    /// [`GroupNorm::run`] on pointers; `y` may be `x` itself (each task reads its whole group
    /// before writing it).
    ///
    /// # Safety
    /// `x` and `y` must hold `n * c * hw` values and be the same buffer or not overlap.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_raw(
        &self,
        x: *const f32,
        y: *mut f32,
        n: usize,
        c: usize,
        hw: usize,
        weight: &[f32],
        bias: &[f32],
        par: ParallelFor<'_>,
    ) -> Result<(), String> {
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            return Err(format!("{c} channels in {} groups", self.groups));
        }
        if weight.len() != c || bias.len() != c {
            return Err(format!(
                "weight {} / bias {} values for {c} channels",
                weight.len(),
                bias.len()
            ));
        }
        if !available() {
            return Err("this CPU has no AVX-512".into());
        }
        let (x, y) = (Shared(x.cast_mut()), Shared(y));
        let cpg = c / self.groups;
        let block = cpg * hw;
        par(n * self.groups, &|t| {
            let g = t % self.groups;
            let at = t * block;
            let channels = g * cpg..(g + 1) * cpg;
            // SAFETY: task t reads and writes only block t of `x` / `y` (held by the caller's
            // contract); AVX-512 F is present (checked above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                self.group(
                    x.ptr().add(at),
                    y.ptr().add(at),
                    hw,
                    &weight[channels.clone()],
                    &bias[channels],
                )
            }
        });
        Ok(())
    }

    /// One group: `cpg = weight.len()` channels of `hw` values at `x`, out to `y`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn group(&self, x: *const f32, y: *mut f32, hw: usize, weight: &[f32], bias: &[f32]) {
        let len = weight.len() * hw;
        // Summed around the first value: f32 partial sums of values near a large mean would
        // lose its low digits.
        let pivot = *x;
        let p = _mm512_set1_ps(pivot);
        let mean = pivot as f64 + sum(x, len, |v| _mm512_sub_ps(v, p)) / len as f64;
        let m = _mm512_set1_ps(mean as f32);
        let var = sum(x, len, |v| {
            let d = _mm512_sub_ps(v, m);
            _mm512_mul_ps(d, d)
        }) / len as f64;
        let rstd = 1.0 / (var + self.eps as f64).sqrt();
        // The mean's f32 rounding error, subtracted too (a mean of 1000 is off by up to 3e-5).
        let m_lo = _mm512_set1_ps((mean - mean as f32 as f64) as f32);
        for (ch, (&w, &b)) in weight.iter().zip(bias).enumerate() {
            // y = (x - mean) a + b with a = rstd w: subtracting first keeps a large mean (or a
            // huge rstd) from cancelling in f32.
            let a = _mm512_set1_ps((rstd * w as f64) as f32);
            let b = _mm512_set1_ps(b);
            let (src, dst) = (x.add(ch * hw), y.add(ch * hw));
            let full = hw - hw % 16;
            let mut i = 0;
            while i < full {
                let d = _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(src.add(i)), m), m_lo);
                _mm512_storeu_ps(dst.add(i), self.activation(_mm512_fmadd_ps(d, a, b)));
                i += 16;
            }
            if i < hw {
                let mask: __mmask16 = (1u16 << (hw - i)) - 1;
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, src.add(i)), m);
                let d = _mm512_sub_ps(d, m_lo);
                let t = _mm512_fmadd_ps(d, a, b);
                _mm512_mask_storeu_ps(dst.add(i), mask, self.activation(t));
            }
        }
    }

    /// SiLU (`t sigmoid(t)`, from `e^-|t|` so the exponential never overflows) or identity.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn activation(&self, t: __m512) -> __m512 {
        if !self.silu {
            return t;
        }
        let abs = _mm512_abs_ps(t);
        let e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), abs));
        let one = _mm512_set1_ps(1.0);
        let denom = _mm512_add_ps(one, e);
        // sigmoid(t) = 1 / (1 + e) for t >= 0, e / (1 + e) below.
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(t, _mm512_setzero_ps());
        let num = _mm512_mask_blend_ps(negative, one, e);
        _mm512_mul_ps(t, _mm512_div_ps(num, denom))
    }
}

/// `sum f(v)` over `len` floats at `x`: f32 partial sums of 1024 values (4 accumulators of 16
/// lanes), each added into f64; a tail's missing lanes are masked out after `f`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sum(x: *const f32, len: usize, f: impl Fn(__m512) -> __m512) -> f64 {
    const CHUNK: usize = 1024;
    let mut total = 0f64;
    let mut i = 0;
    while i < len {
        let end = (i + CHUNK).min(len);
        let mut acc = [_mm512_setzero_ps(); 4];
        while i + 64 <= end {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_ps(*a, f(_mm512_loadu_ps(x.add(i + 16 * k))));
            }
            i += 64;
        }
        while i < end {
            let lanes = (end - i).min(16);
            let mask: __mmask16 = if lanes == 16 {
                u16::MAX
            } else {
                (1u16 << lanes) - 1
            };
            let v = f(_mm512_maskz_loadu_ps(mask, x.add(i)));
            acc[0] = _mm512_add_ps(acc[0], _mm512_maskz_mov_ps(mask, v));
            i += lanes;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        total += _mm512_reduce_add_ps(s) as f64;
    }
    total
}
