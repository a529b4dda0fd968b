// Weight-only int8 GEMM (W8A16) of int8 bundles: out[m, n] = scale[n] * sum_k a[m, k] * w[n, k]
// (+ out[m, n] when accumulating), f16 activations, int8 weights dequantized in registers, f32
// accumulation, the per-output-channel scale applied once in the epilogue.
//
// Why our own kernel: cuBLAS has no GEMM with f16 activations and int8 weights (its int8 GEMMs
// take int8 activations too, W8A8, and need calibrated activation scales). The decode step's M
// is tiny (rows = 2 * labels), so the GEMMs are bound by reading the weights: each warp streams
// its output channels' int8 rows once, 16 bytes per load, for all rows of its row group at once
// (rows are the inner loop, so one weight load feeds up to 16 rows). Prefill (M = rows x prompt
// tokens, small for c2i) takes the same kernel.
//
// Layouts (row-major): a f16 [rows, k] (packed); w int8 [n, ldw], output-channel-major (the
// loader transposes the bundle's [k, n]), ldw a multiple of 16, rows zero-padded; scale f32 [n];
// out f16 or f32 [rows, n] (packed). Grid (ceil(n / (warps * W8A16_CH)), ceil(rows / R)), blocks
// of whole warps; warp j of block x owns channels (x * warps + j) * W8A16_CH ..., lane l reads
// k = l * 16 of every 512-wide k tile. The block stages each tile of its R rows of a in shared
// memory, zero-filled past k and rows, so the inner loop reads 16 activations as two uint4 with
// no bounds or alignment cases: `a_vec` (a 16-byte aligned and k % 8 == 0) stages with uint4
// loads, else one f16 at a time.

#define W8A16_CH 2
#define W8A16_TILE_K 512

// 16 int8 weights (one uint4) as floats; `ok` = 0 gives zeros (a channel past n).
DEVICE void w8a16_load_w(float* out, const signed char* w, bool ok) {
    uint4 q = ok ? *reinterpret_cast<const uint4*>(w) : make_uint4(0, 0, 0, 0);
    u32 words[4] = {q.x, q.y, q.z, q.w};
    for (i32 i = 0; i < 4; i++) {
        for (i32 b = 0; b < 4; b++) out[4 * i + b] = (float)(signed char)((words[i] >> (8 * b)) & 0xff);
    }
}

// 16 activations (two uint4 of shared memory) as floats.
DEVICE void w8a16_load_a(float* out, const f16* a) {
    const uint4* p = reinterpret_cast<const uint4*>(a);
    uint4 lo = p[0], hi = p[1];
    u32 words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    for (i32 i = 0; i < 8; i++) {
        // Element 2i sits in the low half of word i (little-endian).
        out[2 * i] = f16_to_f32((f16)(words[i] & 0xffff));
        out[2 * i + 1] = f16_to_f32((f16)(words[i] >> 16));
    }
}

// tile f16 [R, W8A16_TILE_K] = a[row0 .. row0 + R, k0 .. k0 + W8A16_TILE_K], zeros outside a.
template <int R>
DEVICE void w8a16_stage(f16* tile, const f16* a, i32 rows, i32 k, i32 row0, i32 k0, bool vec) {
    if (vec) {
        // k % 8 == 0: a group of 8 starting inside the row ends inside it.
        for (i32 i = threadIdx.x; i < R * W8A16_TILE_K / 8; i += blockDim.x) {
            i32 r = i / (W8A16_TILE_K / 8), kk = k0 + (i % (W8A16_TILE_K / 8)) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row0 + r < rows && kk < k) v = *reinterpret_cast<const uint4*>(a + (i64)(row0 + r) * k + kk);
            reinterpret_cast<uint4*>(tile)[i] = v;
        }
        return;
    }
    for (i32 i = threadIdx.x; i < R * W8A16_TILE_K; i += blockDim.x) {
        i32 r = i / W8A16_TILE_K, kk = k0 + i % W8A16_TILE_K;
        tile[i] = row0 + r < rows && kk < k ? a[(i64)(row0 + r) * k + kk] : (f16)0;
    }
}

DEVICE float w8a16_warp_sum(float v) {
    for (i32 o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The kernels' body for row groups of R rows (R * W8A16_CH <= 32: one output per lane).
template <int R>
DEVICE void w8a16_rows(void* out, const f16* a, const signed char* w, const float* scale, i32 rows,
                       i32 n, i32 k, i32 ldw, i32 accumulate, i32 out_f32, i32 a_vec) {
    i32 warp = threadIdx.x >> 5;
    i32 lane = threadIdx.x & 31;
    i32 ch0 = (blockIdx.x * (blockDim.x >> 5) + warp) * W8A16_CH;
    i32 row0 = blockIdx.y * R;
    // A warp past n still stages tiles with the others (__syncthreads), then stores nothing.
    bool warp_ok = ch0 < n;
    __shared__ __align__(16) f16 tile[R * W8A16_TILE_K];
    float acc[R][W8A16_CH];
    for (i32 r = 0; r < R; r++) {
        for (i32 c = 0; c < W8A16_CH; c++) acc[r][c] = 0.0f;
    }
    for (i32 k0 = 0; k0 < k; k0 += W8A16_TILE_K) {
        __syncthreads();  // every warp is done with the previous tile
        w8a16_stage<R>(tile, a, rows, k, row0, k0, a_vec != 0);
        __syncthreads();
        i32 kk = k0 + lane * 16;
        if (!warp_ok || kk >= k) continue;
        float wv[W8A16_CH][16];
        for (i32 c = 0; c < W8A16_CH; c++) {
            // ldw padding keeps the whole 16 bytes inside the row when kk < k.
            w8a16_load_w(wv[c], w + (i64)(ch0 + c) * ldw + kk, ch0 + c < n);
        }
#pragma unroll
        for (i32 r = 0; r < R; r++) {
            if (row0 + r >= rows) continue;
            float av[16];
            w8a16_load_a(av, tile + r * W8A16_TILE_K + lane * 16);
            for (i32 c = 0; c < W8A16_CH; c++) {
                for (i32 e = 0; e < 16; e++) acc[r][c] += av[e] * wv[c][e];
            }
        }
    }
    if (!warp_ok) return;  // a whole warp: no collective below waits for it
    // Every lane gets every sum; lane r * W8A16_CH + c stores output (row0 + r, ch0 + c). Static
    // indices keep `acc` in registers.
#pragma unroll
    for (i32 r = 0; r < R; r++) {
#pragma unroll
        for (i32 c = 0; c < W8A16_CH; c++) {
            float v = w8a16_warp_sum(acc[r][c]);
            i32 row = row0 + r, ch = ch0 + c;
            if (lane != r * W8A16_CH + c || row >= rows || ch >= n) continue;
            v *= scale[ch];
            i64 o = (i64)row * n + ch;
            if (out_f32) {
                float* of = reinterpret_cast<float*>(out);
                of[o] = accumulate ? of[o] + v : v;
            } else {
                f16* oh = reinterpret_cast<f16*>(out);
                oh[o] = f32_to_f16(accumulate ? f16_to_f32(oh[o]) + v : v);
            }
        }
    }
}

// One kernel per row-group size: the wrapper takes the smallest R >= rows (16 for more rows, as
// several row groups), so a 2-row decode does not spend 16 rows of arithmetic per weight.
KERNEL void gemm_w8a16_r2(void* out, const f16* a, const signed char* w, const float* scale, i32 rows, i32 n,
                          i32 k, i32 ldw, i32 accumulate, i32 out_f32, i32 a_vec) {
    w8a16_rows<2>(out, a, w, scale, rows, n, k, ldw, accumulate, out_f32, a_vec);
}
KERNEL void gemm_w8a16_r4(void* out, const f16* a, const signed char* w, const float* scale, i32 rows, i32 n,
                          i32 k, i32 ldw, i32 accumulate, i32 out_f32, i32 a_vec) {
    w8a16_rows<4>(out, a, w, scale, rows, n, k, ldw, accumulate, out_f32, a_vec);
}
KERNEL void gemm_w8a16_r8(void* out, const f16* a, const signed char* w, const float* scale, i32 rows, i32 n,
                          i32 k, i32 ldw, i32 accumulate, i32 out_f32, i32 a_vec) {
    w8a16_rows<8>(out, a, w, scale, rows, n, k, ldw, accumulate, out_f32, a_vec);
}
KERNEL void gemm_w8a16_r16(void* out, const f16* a, const signed char* w, const float* scale, i32 rows,
                           i32 n, i32 k, i32 ldw, i32 accumulate, i32 out_f32, i32 a_vec) {
    w8a16_rows<16>(out, a, w, scale, rows, n, k, ldw, accumulate, out_f32, a_vec);
}
