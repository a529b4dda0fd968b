// Per-row kernels of the GPT decode step: token embedding, RMSNorm, rotary + KV-cache write and
// SwiGLU. fp16 storage, f32 math, one rounding per stored value. Launch configurations live in
// ops/gpt.rs. The decode position is read from device memory (`pos_ptr`), never passed by value,
// because the step is captured once into a CUDA graph and replayed for every position.

// x f32 [rows, dim] = table f16 [num_ids, dim] gathered at ids i32 [rows].
// Grid (ceil(dim / blockDim.x), rows): consecutive threads copy consecutive columns.
KERNEL void embed_rows(float* x, const f16* table, const i32* ids, i32 dim) {
    i32 r = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    i64 id = ids[r];
    x[(i64)r * dim + c] = f16_to_f32(table[id * dim + c]);
}

// out f16 [rows, dim] = x / sqrt(mean(x^2) + eps) * weight, x f32 [rows, dim], weight f32 [dim].
// One block per row (grid = rows, block a multiple of 32): a strided sum of squares
// (`rms_partial`), a warp-shuffle reduction, then a second strided pass (x is L1/L2-resident by
// then). The decode GEMM's norm prologue (decode_gemm.cu) repeats this arithmetic exactly.
KERNEL void rms_norm(f16* out, const float* x, const float* weight, i32 dim, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (i64)blockIdx.x * dim;
    f16* outr = out + (i64)blockIdx.x * dim;
    float ss = rms_partial(xr, dim, threadIdx.x, blockDim.x);
    float inv = rms_inv(block_reduce(ss, scratch, 0), dim, eps);
    for (i32 c = threadIdx.x; c < dim; c += blockDim.x) outr[c] = f32_to_f16(xr[c] * inv * weight[c]);
}

// Rotary on q and k, then the KV-cache write at slot *pos_ptr.
// qkv f16 [rows, (heads + 2 kv_heads) * head_dim] holds q heads, k heads, v heads; grid
// (heads + 2 kv_heads, rows), each thread rotates pairs (x[2j], x[2j+1]):
//   out[2j]   = x[2j]   * cos[2j]   - x[2j+1] * sin[2j]
//   out[2j+1] = x[2j+1] * cos[2j+1] + x[2j]   * sin[2j+1]
// cos/sin f32 [max_len, head_dim]. q goes to q_out f16 [rows, heads, head_dim]; rotated k and
// unrotated v to cache f16 [rows, kv_heads, max_len, head_dim] at slot pos. A position outside
// 0..max_len writes nothing (no out-of-bounds access on a bad request).
KERNEL void rotary_kv_write(f16* q_out, f16* cache_k, f16* cache_v, const f16* qkv, const float* cos_t,
                            const float* sin_t, const i32* pos_ptr, i32 heads, i32 kv_heads, i32 head_dim,
                            i32 max_len) {
    i32 pos = *pos_ptr;
    if (pos < 0 || pos >= max_len) return;
    i32 h = blockIdx.x;
    i32 r = blockIdx.y;
    i32 width = (heads + 2 * kv_heads) * head_dim;
    const f16* src = qkv + (i64)r * width + (i64)h * head_dim;
    const float* c = cos_t + (i64)pos * head_dim;
    const float* s = sin_t + (i64)pos * head_dim;
    f16* dst;
    bool rotate = true;
    if (h < heads) {
        dst = q_out + ((i64)r * heads + h) * head_dim;
    } else if (h < heads + kv_heads) {
        dst = cache_k + (((i64)r * kv_heads + (h - heads)) * max_len + pos) * head_dim;
    } else {
        dst = cache_v + (((i64)r * kv_heads + (h - heads - kv_heads)) * max_len + pos) * head_dim;
        rotate = false;
    }
    for (i32 j = threadIdx.x; j < head_dim / 2; j += blockDim.x) {
        i32 e = 2 * j;
        if (rotate) {
            rotary_pair(src[e], src[e + 1], c + e, s + e, dst + e);
        } else {
            dst[e] = src[e];
            dst[e + 1] = src[e + 1];
        }
    }
}

// out f16 [rows, hidden] = silu(h13[:, :hidden]) * h13[:, hidden:], h13 f16 [rows, 2 hidden].
// One thread per output element; grid (ceil(hidden / blockDim.x), rows).
KERNEL void swiglu(f16* out, const f16* h13, i32 hidden) {
    i32 r = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    const f16* in = h13 + (i64)r * 2 * hidden;
    out[(i64)r * hidden + c] = f32_to_f16(silu_times(f16_to_f32(in[c]), f16_to_f32(in[hidden + c])));
}

// As `swiglu`, 8 elements per thread with 128-bit loads and stores; needs hidden % 8 == 0 and
// 16-byte aligned buffers (checked by the wrapper). Grid (ceil(hidden / 8 / blockDim.x), rows).
KERNEL void swiglu_x8(f16* out, const f16* h13, i32 hidden) {
    i32 r = blockIdx.y;
    i32 c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= hidden) return;
    const f16* in = h13 + (i64)r * 2 * hidden;
    uint4 a = *reinterpret_cast<const uint4*>(in + c);
    uint4 b = *reinterpret_cast<const uint4*>(in + hidden + c);
    u32 aw[4] = {a.x, a.y, a.z, a.w};
    u32 bw[4] = {b.x, b.y, b.z, b.w};
    u32 ow[4];
    for (i32 i = 0; i < 4; i++) {
        // Element 2i sits in the low half of word i (little-endian).
        float lo = silu_times(f16_to_f32((f16)(aw[i] & 0xffff)), f16_to_f32((f16)(bw[i] & 0xffff)));
        float hi = silu_times(f16_to_f32((f16)(aw[i] >> 16)), f16_to_f32((f16)(bw[i] >> 16)));
        ow[i] = (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
    }
    *reinterpret_cast<uint4*>(out + (i64)r * hidden + c) = make_uint4(ow[0], ow[1], ow[2], ow[3]);
}
