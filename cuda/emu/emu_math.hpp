// The emulator's arithmetic: CUDA's bit casts, integer and float intrinsics and fp16
// conversions, as the GPU computes them (included by emu.hpp, after the qualifiers and the
// prelude's names).
#pragma once

// ---- bit casts and integer intrinsics ----------------------------------------------------------
inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }

inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}

// CUDA's integer min/max overloads (mixed signedness compares as unsigned, as CUDA does).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
inline unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
inline unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- float intrinsics --------------------------------------------------------------------------
// Plain `a * b + c` is contracted as NVRTC does it (build.rs: -ffp-contract=fast unless the file
// is compiled with --fmad=false). The __f*_rn intrinsics are never fused on the GPU, so here
// their result is pinned in a register before anything else sees it; and a NaN they produce is
// the GPU's canonical 0x7fffffff, not the x86 default NaN (0xffc00000): host code that compares
// such results bit for bit fails here as it does on hardware. (The GPU's expf/logf/rsqrtf are
// within 2 ulp of glibc's correctly rounded ones: compare such kernels with a tolerance.)
inline float emu_rounded(float r) {
#if defined(__x86_64__)
    __asm__ volatile("" : "+x"(r));
#elif defined(__aarch64__)
    __asm__ volatile("" : "+w"(r));
#else
    volatile float v = r;
    r = v;
#endif
    if (r != r) {
        const uint32_t canonical = 0x7fffffffu;
        memcpy(&r, &canonical, 4);
    }
    return r;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return emu_rounded(a + b); }
inline float __fsub_rn(float a, float b) { return emu_rounded(a - b); }
inline float __fmul_rn(float a, float b) { return emu_rounded(a * b); }
inline float __fdiv_rn(float a, float b) { return emu_rounded(a / b); }
inline float __fmaf_rn(float a, float b, float c) { return emu_rounded(fmaf(a, b, c)); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
// Float to integer conversions: out-of-range values saturate (and NaN gives 0), as on the GPU.
namespace emu {
template <class I>
inline I saturating_cast(float x) {
    if (x != x) return 0;
    if (x <= float(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (x >= float(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return I(x);
}
}  // namespace emu
inline int __float2int_rn(float x) { return ::emu::saturating_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return ::emu::saturating_cast<int>(truncf(x)); }
inline int __float2int_rd(float x) { return ::emu::saturating_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return ::emu::saturating_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) {
    return ::emu::saturating_cast<unsigned>(nearbyintf(x));
}
inline unsigned __float2uint_rz(float x) { return ::emu::saturating_cast<unsigned>(truncf(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }

// ---- fp16 (raw IEEE binary16 bits, round to nearest even) -------------------------------------
inline float f16_to_f32(f16 h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        // inf, or NaN made quiet with its payload kept (as x86's and half's conversions do)
        bits = sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        // Subnormal: normalise the mantissa.
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ffu) << 13);
    }
    return __uint_as_float(bits);
}

inline f16 f32_to_f16(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {
        // inf stays inf; NaN becomes the canonical quiet NaN (what cvt.rn.f16.f32 gives).
        return f16(abs == 0x7f800000u ? sign | 0x7c00u : 0x7fffu);
    }
    if (abs >= 0x477ff000u) return f16(sign | 0x7c00u);  // rounds to >= 65520: overflow
    if (abs < 0x38800000u) {
        // Result is subnormal (or zero): value / 2^-24, rounded to nearest even.
        if (abs < 0x33000000u) return f16(sign);  // < 2^-25: rounds to zero (ties too)
        const uint32_t e = abs >> 23;
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;  // 14..24: maps 2^(e-127) to units of 2^-24
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return f16(sign | q);
    }
    // Normal: rebias and round the 13 dropped bits to nearest even (a carry into the exponent
    // is the correct result).
    uint32_t h = ((abs - 0x38000000u) >> 13);
    const uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return f16(sign | h);
}
