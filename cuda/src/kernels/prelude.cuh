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
