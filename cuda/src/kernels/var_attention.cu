// VAR's attention on the tensor cores, flash-style: var_attention_tiled's contract (var.cu) for
// head_dim 64, which every released VAR has (width 64 depth, depth heads), and 16 (the golden
// tiny models, so the end-to-end tests run this kernel too).
//
// out f16 [rows, T, H * HD] = softmax(q . K^T) . V over cache slots 0..len, no mask; q f32
// [rows, H, T, HD] already scaled; caches f16 [rows, H, cache_len, HD]. q and the softmax
// weights enter the products as f16 (as in the official code's fp16 autocast attention); scores,
// the online softmax and the output accumulate in f32.
//
// Each warp owns 16 tokens: its q fragments stay in registers, and for each chunk of
// VAR_MMA_CHUNK slots it computes the 16 x 64 scores with mma_16816, folds them into a running
// max and sum per token, and adds P . V into a 16 x HD f32 accumulator. The block's warps share
// the chunk, staged in shared memory with rows padded by 8 halves, so that both fragment reads
// (a K row's pair of dims, a V column's pair of slots) are free of bank conflicts for HD 64.
// Grid (ceil(T / (16 VAR_MMA_WARPS)), H, rows), block 32 VAR_MMA_WARPS threads.
#define VAR_MMA_WARPS 4
#define VAR_MMA_CHUNK 64

template <i32 HD>
DEVICE void var_attention_mma_body(f16* out, const float* q, const f16* cache_k, const f16* cache_v,
                                   i32 tokens, i32 heads, i32 cache_len, i32 len) {
    constexpr i32 PITCH = HD + 8;
    __shared__ __align__(16) f16 ks[VAR_MMA_CHUNK * PITCH];
    __shared__ __align__(16) f16 vs[VAR_MMA_CHUNK * PITCH];
    const float neg_inf = -__int_as_float(0x7f800000);
    const i32 warp = threadIdx.x >> 5;
    const i32 lane = threadIdx.x & 31;
    const i32 g = lane >> 2;
    const i32 t = lane & 3;
    const i32 h = blockIdx.y;
    const i32 r = blockIdx.z;
    const i32 t0 = (blockIdx.x * VAR_MMA_WARPS + warp) * 16;
    // Warp-uniform: a warp past the last token only helps stage the chunks.
    const bool active = t0 < tokens;
    const i64 head_base = ((i64)r * heads + h) * cache_len * HD;
    const float* qh = q + ((i64)r * heads + h) * tokens * HD;

    // q as A fragments, one per 16 dims; tokens past T are zero rows (never written out).
    u32 qa[HD / 16][4];
#pragma unroll
    for (i32 kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (i32 i = 0; i < 4; i++) {
            const i32 tok = t0 + g + (i & 1) * 8;
            const i32 e = kk * 16 + 2 * t + (i >> 1) * 8;
            float x0 = 0.0f, x1 = 0.0f;
            if (tok < tokens) {
                x0 = qh[(i64)tok * HD + e];
                x1 = qh[(i64)tok * HD + e + 1];
            }
            qa[kk][i] = pack_f16x2(f32_to_f16(x0), f32_to_f16(x1));
        }
    }
    // Rows g (index 0) and g + 8 (index 1) of the warp's tile: running max and this lane's part
    // of the running sum; the output accumulator in D-fragment layout, tiles of 8 dims.
    float m[2] = {neg_inf, neg_inf};
    float l[2] = {0.0f, 0.0f};
    float o[HD / 8][4];
#pragma unroll
    for (i32 nd = 0; nd < HD / 8; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

    for (i32 k0 = 0; k0 < len; k0 += VAR_MMA_CHUNK) {
        __syncthreads();  // the previous chunk is no longer read
        // Slots past len are zero: their weights are 0, and 0 * garbage could be NaN.
        for (i32 i = threadIdx.x; i < VAR_MMA_CHUNK * (HD / 8); i += blockDim.x) {
            const i32 s = i / (HD / 8);
            const i32 e = (i % (HD / 8)) * 8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + s < len) {
                const i64 at = head_base + (i64)(k0 + s) * HD + e;
                kv = *reinterpret_cast<const uint4*>(cache_k + at);
                vv = *reinterpret_cast<const uint4*>(cache_v + at);
            }
            *reinterpret_cast<uint4*>(ks + s * PITCH + e) = kv;
            *reinterpret_cast<uint4*>(vs + s * PITCH + e) = vv;
        }
        __syncthreads();
        if (!active) continue;

        // Scores: 8 tiles of 8 slots; B = K^T, so a lane's pair is one K row's dims 2t, 2t+1.
        float sc[VAR_MMA_CHUNK / 8][4];
#pragma unroll
        for (i32 nt = 0; nt < VAR_MMA_CHUNK / 8; nt++) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const f16* kr = ks + (nt * 8 + g) * PITCH + 2 * t;
#pragma unroll
            for (i32 kk = 0; kk < HD / 16; kk++) {
                const u32 b[2] = {*reinterpret_cast<const u32*>(kr + kk * 16),
                                  *reinterpret_cast<const u32*>(kr + kk * 16 + 8)};
                mma_16816(sc[nt], qa[kk], b);
            }
        }
        // Online softmax. Every chunk holds slot k0 < len, so each row's new max is finite.
        float mx[2] = {neg_inf, neg_inf};
#pragma unroll
        for (i32 nt = 0; nt < VAR_MMA_CHUNK / 8; nt++) {
#pragma unroll
            for (i32 i = 0; i < 4; i++) {
                if (k0 + nt * 8 + 2 * t + (i & 1) >= len) sc[nt][i] = neg_inf;
                mx[i >> 1] = fmaxf(mx[i >> 1], sc[nt][i]);
            }
        }
        float corr[2];
#pragma unroll
        for (i32 j = 0; j < 2; j++) {
            // The 4 lanes of a quad hold one row's 8 slots of each tile.
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffff, mx[j], 1));
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffff, mx[j], 2));
            const float m_new = fmaxf(m[j], mx[j]);
            corr[j] = expf(m[j] - m_new);
            m[j] = m_new;
            l[j] *= corr[j];
        }
#pragma unroll
        for (i32 nd = 0; nd < HD / 8; nd++) {
            o[nd][0] *= corr[0];
            o[nd][1] *= corr[0];
            o[nd][2] *= corr[1];
            o[nd][3] *= corr[1];
        }
        // P . V, 16 slots per step: two score tiles are one A fragment (the D and A layouts
        // line up); B = V, a lane's pair is one dim of slots 2t, 2t+1.
#pragma unroll
        for (i32 kk = 0; kk < VAR_MMA_CHUNK / 16; kk++) {
            u32 pa[4];
#pragma unroll
            for (i32 half = 0; half < 2; half++) {
                const float* s = sc[2 * kk + half];
                const float p0 = expf(s[0] - m[0]), p1 = expf(s[1] - m[0]);
                const float p2 = expf(s[2] - m[1]), p3 = expf(s[3] - m[1]);
                l[0] += p0 + p1;
                l[1] += p2 + p3;
                pa[2 * half] = pack_f16x2(f32_to_f16(p0), f32_to_f16(p1));
                pa[2 * half + 1] = pack_f16x2(f32_to_f16(p2), f32_to_f16(p3));
            }
            const f16* vr = vs + (kk * 16 + 2 * t) * PITCH + g;
#pragma unroll
            for (i32 nd = 0; nd < HD / 8; nd++) {
                const f16* v = vr + nd * 8;
                const u32 b[2] = {pack_f16x2(v[0], v[PITCH]),
                                  pack_f16x2(v[8 * PITCH], v[9 * PITCH])};
                mma_16816(o[nd], pa, b);
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (i32 j = 0; j < 2; j++) {
        l[j] += __shfl_xor_sync(0xffffffff, l[j], 1);
        l[j] += __shfl_xor_sync(0xffffffff, l[j], 2);
    }
#pragma unroll
    for (i32 j = 0; j < 2; j++) {
        const i32 tok = t0 + g + j * 8;
        if (tok >= tokens) continue;
        const float inv = 1.0f / l[j];
        u32* dst = reinterpret_cast<u32*>(out + (((i64)r * tokens + tok) * heads + h) * HD + 2 * t);
#pragma unroll
        for (i32 nd = 0; nd < HD / 8; nd++) {
            dst[nd * 4] = pack_f16x2(f32_to_f16(o[nd][2 * j] * inv), f32_to_f16(o[nd][2 * j + 1] * inv));
        }
    }
}

KERNEL void var_attention_mma64(f16* out, const float* q, const f16* cache_k, const f16* cache_v, i32 tokens,
                                i32 heads, i32 cache_len, i32 len) {
    var_attention_mma_body<64>(out, q, cache_k, cache_v, tokens, heads, cache_len, len);
}

KERNEL void var_attention_mma16(f16* out, const float* q, const f16* cache_k, const f16* cache_v, i32 tokens,
                                i32 heads, i32 cache_len, i32 len) {
    var_attention_mma_body<16>(out, q, cache_k, cache_v, tokens, heads, cache_len, len);
}
