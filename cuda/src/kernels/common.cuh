// Device helpers shared by the kernel files; included after the prelude (NVRTC) or emu.hpp
// (the emulator), before each file.

// Sum (is_max = 0) or max (is_max = 1) of `v` over the block, returned to every thread. The
// block is a multiple of 32 threads; `scratch` holds one float per warp (32 floats cover any
// block). The leading __syncthreads protects `scratch` from an earlier use.
DEVICE float block_reduce(float v, float* scratch, i32 is_max) {
    for (i32 o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffff, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    i32 warp = threadIdx.x >> 5;
    i32 lane = threadIdx.x & 31;
    i32 warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : (is_max ? -__int_as_float(0x7f800000) : 0.0f);
    for (i32 o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffff, t, o);
        t = is_max ? fmaxf(t, u) : t + u;
    }
    return t;
}

// The sum of squares a thread `t` of `threads` adds for RMSNorm: x[t], x[t + threads], ... in
// order, one FMA each (explicit, so no compiler's contraction choice can change it). `rms_norm`
// (gpt.cu) and the decode GEMM's norm prologue (decode_gemm.cu) both build on it, which is what
// makes the prologue's normalised values bit-identical to rms_norm's.
DEVICE float rms_partial(const float* x, i32 dim, i32 t, i32 threads) {
    float ss = 0.0f;
    for (i32 c = t; c < dim; c += threads) ss = fmaf(x[c], x[c], ss);
    return ss;
}

// 1 / sqrt(mean of squares + eps) from the row's sum of squares.
DEVICE float rms_inv(float ss, i32 dim, float eps) {
    return rsqrtf(ss / (float)dim + eps);
}

// silu(a) * b, the SwiGLU of the GPT's feed-forward (gpt.cu's swiglu, the decode GEMM's fused
// epilogue).
DEVICE float silu_times(float a, float b) {
    return a / (1.0f + expf(-a)) * b;
}

// Rotary embedding of one pair (a, b) = (x[e], x[e + 1]), e even, with the tables' cos/sin at
// e and e + 1: out = (a c[0] - b s[0], b c[1] + a s[1]), each rounded to f16. The one definition
// that rotary_kv_write (gpt.cu) and the fused attention (attention.cu) share: explicit `_rn`
// operations forbid FMA contraction, so both kernels produce the same bits on every GPU and on
// the emulator (the fused kernel's cache writes must equal rotary_kv_write's).
DEVICE void rotary_pair(f16 a16, f16 b16, const float* c, const float* s, f16* out) {
    float a = f16_to_f32(a16);
    float b = f16_to_f32(b16);
    out[0] = f32_to_f16(__fsub_rn(__fmul_rn(a, c[0]), __fmul_rn(b, s[0])));
    out[1] = f32_to_f16(__fadd_rn(__fmul_rn(b, c[1]), __fmul_rn(a, s[1])));
}
