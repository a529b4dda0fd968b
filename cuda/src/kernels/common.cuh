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
