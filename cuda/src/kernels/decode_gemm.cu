// The decode step's weight-streaming GEMM, for int8 weights (W8A16: int8 bundles) and f16
// weights (W16A16: fp16/fp32 bundles with the own decode GEMM chosen):
//   out[m, n] = scale[n] * sum_k a[m, k] * w[n, k]  (scale 1 for f16 weights)
// f16 activations, weights converted to f32 in registers, f32 accumulation, the scale applied
// once in the epilogue. One template body serves both weight types; only the 16-value weight
// load differs (one uint4 of int8, two uint4 of f16).
//
// Why our own kernel: cuBLAS has no GEMM with f16 activations and int8 weights (its int8 GEMMs
// take int8 activations too, W8A8, and need calibrated activation scales), and for f16 weights
// its tiles for M = 16 (nvjet 64x8) read the weights at ~0.6 TB/s on an H200 (issue 8). The
// decode step's M is tiny (rows = 2 * labels), so the GEMMs are bound by reading the weights:
// each warp streams its output channels' weight rows once, 16 values per lane and tile (16 or
// 32 bytes), for all rows of its row group at once (rows are the inner loop, so one weight load
// feeds up to 16 rows).
//
// Fusions (the `x` and `mode` arguments), so that the decode step launches no rms_norm and no
// swiglu kernel:
// - Norm prologue (x != null): the input is rmsnorm(x f32 [rows, k]) * nw f32 [k] instead of a.
//   The block first computes its rows' inverse RMS (`dg_norm_inv`: the arithmetic of rms_norm's
//   block of `norm_threads` threads, so the same bits), then stages f16(x * inv * nw), the value
//   rms_norm would have written, tile by tile.
// - SwiGLU epilogue (mode DG_OUT_SWIGLU): weights of channel pairs (2j, 2j + 1) are w1 and w3
//   of hidden unit j (the loader interleaves them); the warp owning the pair rounds both sums to
//   f16 as the f16 GEMM output would, and stores f16(silu(h1) * h3) at out[m, j], as `swiglu`
//   would from that output.
//
// Layouts (row-major): a f16 [rows, k] (packed); x f32 [rows, k]; w int8 or f16 [n, ldw],
// output-channel-major (the loader transposes the bundle's [k, n]), ldw a multiple of 16 values,
// rows zero-padded; scale f32 [n] or null; out f16 or f32 [rows, n], or f16 [rows, n / 2]
// (SwiGLU). Grid (ceil(n / (warps * DG_CH)), ceil(rows / R)), blocks of whole warps; warp j of
// block x owns channels (x * warps + j) * DG_CH ..., lane l reads k = l * 16 of every 512-wide k
// tile. The block stages each tile of its R rows' inputs in shared memory as f16, zero-filled
// past k and rows, so the inner loop reads 16 activations as two uint4 with no bounds or
// alignment cases: `a_vec` (a 16-byte aligned and k % 8 == 0) stages with uint4 loads, else one
// f16 at a time.

#define DG_CH 2
#define DG_TILE_K 512
// `mode`: how the epilogue writes.
#define DG_OUT_F16 0
#define DG_OUT_F32 1
#define DG_OUT_F32_ADD 2
#define DG_OUT_SWIGLU 3

// 16 f16 values (two uint4) as floats.
DEVICE void dg_unpack_f16(float* out, uint4 lo, uint4 hi) {
    u32 words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    for (i32 i = 0; i < 8; i++) {
        // Element 2i sits in the low half of word i (little-endian).
        out[2 * i] = f16_to_f32((f16)(words[i] & 0xffff));
        out[2 * i + 1] = f16_to_f32((f16)(words[i] >> 16));
    }
}

// 16 weights of one channel as floats; `ok` = 0 gives zeros (a channel past n). The ldw padding
// keeps the whole vector inside the row when its first value is.
DEVICE void dg_load_w(float* out, const signed char* w, bool ok) {
    uint4 q = ok ? *reinterpret_cast<const uint4*>(w) : make_uint4(0, 0, 0, 0);
    u32 words[4] = {q.x, q.y, q.z, q.w};
    for (i32 i = 0; i < 4; i++) {
        for (i32 b = 0; b < 4; b++) out[4 * i + b] = (float)(signed char)((words[i] >> (8 * b)) & 0xff);
    }
}

DEVICE void dg_load_w(float* out, const f16* w, bool ok) {
    const uint4* p = reinterpret_cast<const uint4*>(w);
    uint4 zero = make_uint4(0, 0, 0, 0);
    dg_unpack_f16(out, ok ? p[0] : zero, ok ? p[1] : zero);
}

// tile f16 [R, DG_TILE_K] = a[row0 .. row0 + R, k0 .. k0 + DG_TILE_K], zeros outside a.
template <int R>
DEVICE void dg_stage(f16* tile, const f16* a, i32 rows, i32 k, i32 row0, i32 k0, bool vec) {
    if (vec) {
        // k % 8 == 0: a group of 8 starting inside the row ends inside it.
        for (i32 i = threadIdx.x; i < R * DG_TILE_K / 8; i += blockDim.x) {
            i32 r = i / (DG_TILE_K / 8), kk = k0 + (i % (DG_TILE_K / 8)) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row0 + r < rows && kk < k) v = *reinterpret_cast<const uint4*>(a + (i64)(row0 + r) * k + kk);
            reinterpret_cast<uint4*>(tile)[i] = v;
        }
        return;
    }
    for (i32 i = threadIdx.x; i < R * DG_TILE_K; i += blockDim.x) {
        i32 r = i / DG_TILE_K, kk = k0 + i % DG_TILE_K;
        tile[i] = row0 + r < rows && kk < k ? a[(i64)(row0 + r) * k + kk] : (f16)0;
    }
}

// The norm prologue's tile: f16(x * inv[r] * nw), rms_norm's expression and rounding.
template <int R>
DEVICE void dg_stage_norm(f16* tile, const float* x, const float* nw, const float* inv, i32 rows, i32 k,
                          i32 row0, i32 k0) {
    for (i32 i = threadIdx.x; i < R * DG_TILE_K; i += blockDim.x) {
        i32 r = i / DG_TILE_K, kk = k0 + i % DG_TILE_K;
        tile[i] = row0 + r < rows && kk < k ? f32_to_f16(x[(i64)(row0 + r) * k + kk] * inv[r] * nw[kk]) : (f16)0;
    }
}

DEVICE float dg_warp_sum(float v) {
    for (i32 o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The sum of squares of x[0 .. dim) as rms_norm's block of `threads` threads (a multiple of 32,
// at most 256) adds it, computed by one warp: lane l plays threads l, l + 32, ... of the block
// (its partials in `part`), each butterfly of 32 partials is that warp's shuffle reduction, and
// the last butterfly over the per-warp sums (zeros past the block's warps) is block_reduce's.
// Every lane returns the sum.
DEVICE float dg_rms_sum_squares(const float* x, i32 dim, i32 threads) {
    i32 lane = threadIdx.x & 31;
    float part[8];
#pragma unroll
    for (i32 j = 0; j < 8; j++) {
        part[j] = j * 32 < threads ? rms_partial(x, dim, j * 32 + lane, threads) : 0.0f;
        part[j] = dg_warp_sum(part[j]);
    }
    float mine = 0.0f;
#pragma unroll
    for (i32 j = 0; j < 8; j++) {
        if (lane == j) mine = part[j];
    }
    return dg_warp_sum(mine);
}

// inv[r] = rms_inv of row row0 + r of x (rows past `rows`: unused), one warp per row.
template <int R>
DEVICE void dg_norm_inv(float* inv, const float* x, i32 rows, i32 k, i32 row0, float eps, i32 threads) {
    for (i32 r = threadIdx.x >> 5; r < R; r += blockDim.x >> 5) {
        if (row0 + r >= rows) continue;  // warp-uniform
        float ss = dg_rms_sum_squares(x + (i64)(row0 + r) * k, k, threads);
        if ((threadIdx.x & 31) == 0) inv[r] = rms_inv(ss, k, eps);
    }
}

// The kernels' body for weights of type W and row groups of R rows (R * DG_CH <= 32: one output
// per lane).
template <typename W, int R>
DEVICE void dg_rows(void* out, const f16* a, const float* x, const float* nw, const W* w, const float* scale,
                    i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec, i32 norm_threads, float eps) {
    i32 warp = threadIdx.x >> 5;
    i32 lane = threadIdx.x & 31;
    i32 ch0 = (blockIdx.x * (blockDim.x >> 5) + warp) * DG_CH;
    i32 row0 = blockIdx.y * R;
    // A warp past n still stages tiles with the others (__syncthreads), then stores nothing.
    bool warp_ok = ch0 < n;
    __shared__ __align__(16) f16 tile[R * DG_TILE_K];
    __shared__ float inv[R];
    if (x) dg_norm_inv<R>(inv, x, rows, k, row0, eps, norm_threads);
    float acc[R][DG_CH];
    for (i32 r = 0; r < R; r++) {
        for (i32 c = 0; c < DG_CH; c++) acc[r][c] = 0.0f;
    }
    for (i32 k0 = 0; k0 < k; k0 += DG_TILE_K) {
        __syncthreads();  // every warp is done with the previous tile (and `inv` is written)
        if (x) {
            dg_stage_norm<R>(tile, x, nw, inv, rows, k, row0, k0);
        } else {
            dg_stage<R>(tile, a, rows, k, row0, k0, a_vec != 0);
        }
        __syncthreads();
        i32 kk = k0 + lane * 16;
        if (!warp_ok || kk >= k) continue;
        float wv[DG_CH][16];
        for (i32 c = 0; c < DG_CH; c++) dg_load_w(wv[c], w + (i64)(ch0 + c) * ldw + kk, ch0 + c < n);
#pragma unroll
        for (i32 r = 0; r < R; r++) {
            if (row0 + r >= rows) continue;
            float av[16];
            const uint4* t = reinterpret_cast<const uint4*>(tile + r * DG_TILE_K + lane * 16);
            dg_unpack_f16(av, t[0], t[1]);
            for (i32 c = 0; c < DG_CH; c++) {
                for (i32 e = 0; e < 16; e++) acc[r][c] += av[e] * wv[c][e];
            }
        }
    }
    if (!warp_ok) return;  // a whole warp: no collective below waits for it
    // Every lane gets every sum; lane r * DG_CH + c stores output (row0 + r, ch0 + c), or for
    // SwiGLU lane r * DG_CH + c (c even) the pair (c, c + 1). Static indices keep `acc` in
    // registers.
#pragma unroll
    for (i32 r = 0; r < R; r++) {
        float v[DG_CH];
#pragma unroll
        for (i32 c = 0; c < DG_CH; c++) {
            v[c] = dg_warp_sum(acc[r][c]);
            if (scale && ch0 + c < n) v[c] *= scale[ch0 + c];
        }
        i32 row = row0 + r;
#pragma unroll
        for (i32 c = 0; c < DG_CH; c++) {
            i32 ch = ch0 + c;
            if (lane != r * DG_CH + c || row >= rows || ch >= n) continue;
            i64 o = (i64)row * n + ch;
            if (mode == DG_OUT_SWIGLU) {
                // n is even and ch0 too, so c even has its partner c + 1 in this warp.
                if (c % 2 != 0) continue;
                float h1 = f16_to_f32(f32_to_f16(v[c])), h3 = f16_to_f32(f32_to_f16(v[c + 1]));
                reinterpret_cast<f16*>(out)[(i64)row * (n / 2) + ch / 2] = f32_to_f16(silu_times(h1, h3));
            } else if (mode == DG_OUT_F16) {
                reinterpret_cast<f16*>(out)[o] = f32_to_f16(v[c]);
            } else {
                float* of = reinterpret_cast<float*>(out);
                of[o] = mode == DG_OUT_F32_ADD ? of[o] + v[c] : v[c];
            }
        }
    }
}

// One kernel per (weight type, row-group size): the wrapper takes the smallest R >= rows (16 for
// more rows, as several row groups), so a 2-row decode does not spend 16 rows of arithmetic per
// weight. Same arguments for all (ops/decode_gemm.rs).
KERNEL void gemm_w8a16_r2(void* out, const f16* a, const float* x, const float* nw, const signed char* w,
                          const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                          i32 norm_threads, float eps) {
    dg_rows<signed char, 2>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w8a16_r4(void* out, const f16* a, const float* x, const float* nw, const signed char* w,
                          const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                          i32 norm_threads, float eps) {
    dg_rows<signed char, 4>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w8a16_r8(void* out, const f16* a, const float* x, const float* nw, const signed char* w,
                          const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                          i32 norm_threads, float eps) {
    dg_rows<signed char, 8>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w8a16_r16(void* out, const f16* a, const float* x, const float* nw, const signed char* w,
                           const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                           i32 norm_threads, float eps) {
    dg_rows<signed char, 16>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w16a16_r2(void* out, const f16* a, const float* x, const float* nw, const f16* w,
                           const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                           i32 norm_threads, float eps) {
    dg_rows<f16, 2>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w16a16_r4(void* out, const f16* a, const float* x, const float* nw, const f16* w,
                           const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                           i32 norm_threads, float eps) {
    dg_rows<f16, 4>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w16a16_r8(void* out, const f16* a, const float* x, const float* nw, const f16* w,
                           const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                           i32 norm_threads, float eps) {
    dg_rows<f16, 8>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
KERNEL void gemm_w16a16_r16(void* out, const f16* a, const float* x, const float* nw, const f16* w,
                            const float* scale, i32 rows, i32 n, i32 k, i32 ldw, i32 mode, i32 a_vec,
                            i32 norm_threads, float eps) {
    dg_rows<f16, 16>(out, a, x, nw, w, scale, rows, n, k, ldw, mode, a_vec, norm_threads, eps);
}
