// Prepended to every kernel file before NVRTC compiles it (the emulator includes emu.hpp
// instead, which defines the same names for the host). Header-free on purpose: NVRTC from the
// nvidia-cuda-nvrtc wheel has no include directory, so fp16 is stored as raw bits and converted
// with inline PTX, and fixed-width integers are our own typedefs.

typedef unsigned short f16;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define KERNEL extern "C" __global__
#define DEVICE __device__ __forceinline__
// Dynamic shared memory of the launch, as a `T*` named `name`.
#define DYN_SHARED(T, name) extern __shared__ __align__(16) unsigned char name##_raw[]; T* name = reinterpret_cast<T*>(name##_raw)

DEVICE float f16_to_f32(f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

DEVICE f16 f32_to_f16(float f) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Two f16 as one 32-bit register, `lo` in the low half (the mma fragments' element order).
DEVICE u32 pack_f16x2(f16 lo, f16 hi) {
    return (u32)lo | ((u32)hi << 16);
}

// d[0..4] += A . B on the tensor cores: one warp-wide mma.sync.m16n8k16 (sm_80 and later), A
// 16x16 f16 (row-major), B 16x8 f16, f32 accumulation. Fragments as PTX lays them out for this
// shape, lane = 4 g + t: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
// a[3] = A[g+8][2t+8, 2t+9]; b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]; d[0], d[1] =
// D[g][2t, 2t+1] and d[2], d[3] = D[g+8][2t, 2t+1]. Every lane of the warp calls it.
DEVICE void mma_16816(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
