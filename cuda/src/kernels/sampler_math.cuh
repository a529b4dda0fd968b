// The sampler's exactly specified arithmetic, the same operations as the CPU's (philox.rs and
// sampler.rs in the bundle contract and the runtime): Philox4x32-10, the portable exp, fixed-point
// softmax weights, top-p thresholds and radix keys. Included before sampler.cu, which is
// compiled with --fmad=false; every operation here is an explicitly rounded intrinsic anyway.

// ---- Philox4x32-10 (constants of rng.rs) ----

DEVICE uint4 philox4x32_10(uint4 c, uint2 k) {
    for (int round = 0; round < 10; ++round) {
        u32 hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        u32 hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k.x += 0x9E3779B9u;
        k.y += 0xBB67AE85u;
    }
    return c;
}

// Philox::uniform(stream, counter) for 32-bit stream and counter: (x0 >> 8) * 2^-24.
DEVICE float philox_uniform(const u32* key, u32 stream, u32 counter) {
    uint4 out = philox4x32_10(make_uint4(counter, 0u, stream, 0u), make_uint2(key[0], key[1]));
    return __fmul_rn((float)(out.x >> 8), 1.0f / 16777216.0f);
}

// ---- exactly specified softmax weights (same operations as sampler.rs) ----

DEVICE float portable_exp(float x) {
    if (!(x >= -87.0f)) return 0.0f;
    float k = __fadd_rn(__fadd_rn(__fmul_rn(x, 1.442695f), 12582912.0f), -12582912.0f);
    float r = __fadd_rn(__fadd_rn(x, -__fmul_rn(k, 0.6933594f)), -__fmul_rn(k, -2.1219444e-4f));
    float p = 1.9875691e-4f;
    p = __fadd_rn(__fmul_rn(p, r), 1.3981999e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 8.333452e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.1665796e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.6666665e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    float e = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(r, r), p), r), 1.0f);
    return __fmul_rn(e, __int_as_float(((int)k + 127) << 23));
}

// trunc(exp(d) * 2^40): the fixed-point weight of a logit d = y - m below the max.
DEVICE u64 softmax_weight(float d) {
    return (u64)__fmul_rn(portable_exp(d), 1099511627776.0f);
}

// trunc(f64(fraction) * f64(total)) (sampler.rs `mass_threshold`).
DEVICE u64 mass_threshold(float fraction, u64 total) {
    return (u64)((double)fraction * (double)total);
}

// sampler::order_key (an i32 ordered as f32::total_cmp), made unsigned for the radix passes.
DEVICE u32 radix_key(float y) {
    i32 b = __float_as_int(y);
    i32 k = b ^ (i32)(((u32)(b >> 31)) >> 1);
    return (u32)k ^ 0x80000000u;
}

DEVICE float from_radix_key(u32 u) {
    i32 k = (i32)(u ^ 0x80000000u);
    return __int_as_float(k ^ (i32)(((u32)(k >> 31)) >> 1));
}
