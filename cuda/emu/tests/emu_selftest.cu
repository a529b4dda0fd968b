// Kernels that test the emulator itself (runtime/tests/cuda_emu.rs). Compiled only into the
// emulator, never registered in kernels::SOURCES; valid CUDA too (scripts/nvrtc_check.py).

DEVICE float emu_test_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// out[blockIdx.x] = sum of x[i] over i = blockIdx.x * per_block + (0..per_block): per-thread
// strided partial sums, warp shuffles, a shared-memory stage and a second warp stage.
KERNEL void emu_test_block_sum(const float* x, float* out, int per_block) {
    __shared__ float partial[32];
    const float* row = x + (size_t)blockIdx.x * per_block;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) acc += row[i];
    acc = emu_test_warp_sum(acc);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        float v = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

// Every shuffle flavour and a vote, per thread: out[6 * t + j].
KERNEL void emu_test_shuffles(int* out, int arg) {
    const int t = threadIdx.x + blockIdx.x * blockDim.x;
    const int v = t * 10;
    int* o = out + 6 * t;
    o[0] = __shfl_xor_sync(0xffffffffu, v, arg);
    o[1] = __shfl_down_sync(0xffffffffu, v, arg);
    o[2] = __shfl_up_sync(0xffffffffu, v, arg);
    o[3] = __shfl_sync(0xffffffffu, v, arg);
    o[4] = __shfl_sync(0xffffffffu, v, arg, 8);
    o[5] = (int)__ballot_sync(0xffffffffu, (threadIdx.x % 3) == 0);
}

// Integer and float atomics over n values; counters[0] sum, [1] max, [2] min, [3] number of
// successful CAS increments of counters[4], [5] exch; fsum[0] float sum.
KERNEL void emu_test_atomics(const int* x, int n, int* counters, float* fsum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&counters[0], x[i]);
    atomicMax(&counters[1], x[i]);
    atomicMin(&counters[2], x[i]);
    int seen = counters[4];
    for (;;) {
        const int prev = atomicCAS(&counters[4], seen, seen + 1);
        if (prev == seen) break;
        seen = prev;
    }
    atomicAdd(&counters[3], 1);
    atomicExch(&counters[5], 7);
    atomicAdd(&fsum[0], (float)x[i]);
}

// y[block * blockDim + t] = x[block * blockDim + (blockDim - 1 - t)] through dynamic shared
// memory (the reversal needs the barrier).
KERNEL void emu_test_reverse_dyn(const float* x, float* y) {
    DYN_SHARED(float, s);
    const int base = blockIdx.x * blockDim.x;
    s[threadIdx.x] = x[base + threadIdx.x];
    __syncthreads();
    y[base + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// The same through static shared memory, with or without the barrier (without it the result is
// a race, which the emulator's alternating thread order exposes).
KERNEL void emu_test_rotate_shared(const float* x, float* y, int sync) {
    __shared__ float s[1024];
    const int base = blockIdx.x * blockDim.x;
    s[threadIdx.x] = x[base + threadIdx.x];
    if (sync) __syncthreads();
    y[base + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

KERNEL void emu_test_f16_roundtrip(const float* x, f16* h, float* back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = f32_to_f16(x[i]);
    back[i] = f16_to_f32(h[i]);
}

// Converts every f16 bit pattern to f32.
KERNEL void emu_test_f16_all(float* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < 65536) out[i] = f16_to_f32((f16)i);
}

// Threads below `split` wait at one barrier, the others at another (or exit, if `exit_others`).
KERNEL void emu_test_divergent_barrier(float* x, int split, int exit_others) {
    if ((int)threadIdx.x < split) {
        __syncthreads();
        x[threadIdx.x] = 1.0f;
    } else {
        if (exit_others) return;
        __syncthreads();
        x[threadIdx.x] = 2.0f;
    }
}

// A shuffle that only the lower half of each warp reaches.
KERNEL void emu_test_divergent_shuffle(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}

// A shuffle with a partial mask (outside the emulator's subset: an error there).
KERNEL void emu_test_partial_mask(float* x) {
    x[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, x[threadIdx.x], 1);
}

// x[i] *= *factor for i < n (reads its scale from device memory, as captured kernels do).
KERNEL void emu_test_scale(float* x, const float* factor, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * factor[0];
}

// Thread 0 of block 0 writes x[i] = v (to test the guard zones).
KERNEL void emu_test_write_at(float* x, int i, float v) {
    if (threadIdx.x == 0 && blockIdx.x == 0) x[i] = v;
}

// out[linear thread id over the whole grid] = a code of its indices (3-D grids and blocks).
KERNEL void emu_test_indices(u32* out) {
    const u32 block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const u32 tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const u32 threads = blockDim.x * blockDim.y * blockDim.z;
    out[block * threads + tid] = (threadIdx.x) | (threadIdx.y << 5) | (threadIdx.z << 10) |
                                 (blockIdx.x << 15) | (blockIdx.y << 20) | (blockIdx.z << 25);
}

// Math intrinsics the kernels use, on x: out[16 * i + j].
KERNEL void emu_test_math(const float* x, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    float* o = out + 16 * i;
    o[0] = expf(v);
    o[1] = logf(fabsf(v) + 1.0f);
    o[2] = sqrtf(fabsf(v));
    o[3] = rsqrtf(fabsf(v) + 1.0f);
    o[4] = tanhf(v);
    o[5] = fmaxf(v, 0.5f);
    o[6] = fminf(v, 0.5f);
    o[7] = floorf(v);
    o[8] = ceilf(v);
    o[9] = __fmaf_rn(v, 3.0f, 1.0f);
    o[10] = __fdiv_rn(__fadd_rn(v, 1.0f), __fmul_rn(v, 2.0f));
    o[11] = __int_as_float(__float_as_int(v) ^ 0x80000000);
    o[12] = __uint_as_float(__float_as_uint(v));
    o[13] = (float)__umulhi(__float_as_uint(v), 0x9e3779b9u);
    o[14] = (float)min(i, 3) + (float)max(i, 3) * 100.0f;
    o[15] = __int_as_float(0x7f800000);
}

// Vector loads and stores: y = x * 2 through float4, and a uint2 copy of f16 pairs.
KERNEL void emu_test_vectors(const float4* x, float4* y, const uint2* a, uint2* b, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 v = x[i];
    y[i] = make_float4(v.x * 2.0f, v.y * 2.0f, v.z * 2.0f, v.w * 2.0f);
    const uint2 p = a[i];
    b[i] = make_uint2(p.y, p.x);
}

// Keeps `__syncthreads` busy: `rounds` barrier phases, each adding a neighbour's value.
KERNEL void emu_test_barrier_rounds(float* x, int rounds) {
    __shared__ float s[1024];
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    for (int r = 0; r < rounds; r++) {
        const float v = s[(threadIdx.x + 1) % blockDim.x];
        __syncthreads();
        s[threadIdx.x] += v;
        __syncthreads();
    }
    x[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Reads static and dynamic shared memory before anything wrote it (the emulator fills both
// with 0xff bytes, NaN as f32), then writes it: out[t] and out[blockDim + t].
KERNEL void emu_test_uninit_shared(float* out) {
    __shared__ float s[1024];
    DYN_SHARED(float, dyn);
    out[threadIdx.x] = s[threadIdx.x];
    out[blockDim.x + threadIdx.x] = dyn[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = 1.0f;
    dyn[threadIdx.x] = 1.0f;
}
