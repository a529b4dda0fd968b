// Kernels of the VAR step (AdaLN blocks over one scale's token block, no mask) and of the
// between-scale work (codebook lookup, resampling, phi, next inputs). f32 math, f16 only where a
// GEMM reads the result or for the KV caches. Launch configurations and shape checks live in
// ops/var.rs; every size a kernel takes is per scale, and a scale's launches are captured once,
// so sizes and the cache slot `pos` are plain arguments.
//
// Layouts: token rows `[rows, T, C]` (rows = [cond; uncond] with CFG, T the scale's tokens);
// AdaLN vectors f32 `[rows, k * C]` (chunk j at columns j*C..); q f32 `[rows, H, T, hd]`;
// caches f16 `[rows, H, L, hd]` (L all scales' tokens); feature maps f32 NHWC `[rows, P, P, Cv]`.

#define VAR_THREADS 256

DEVICE float var_silu(float x) {
    return x / (1.0f + expf(-x));
}

// out f16 [rows, dim] = silu(table[labels[r]]), table f32 [class_rows, dim].
// Grid (ceil(dim / 256), rows).
KERNEL void var_cond_silu(f16* out, const float* table, const i32* labels, i32 dim) {
    i32 r = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    out[(i64)r * dim + c] = f32_to_f16(var_silu(table[(i64)labels[r] * dim + c]));
}

// x f32 [rows, first, dim] = table[labels[r]] + pos[t] (the first scale's inputs: the class
// embedding as start token plus the position table's first rows). Grid (ceil(dim/256), first, rows).
KERNEL void var_first_inputs(float* x, const float* table, const i32* labels, const float* pos, i32 first,
                             i32 dim) {
    i32 r = blockIdx.z;
    i32 t = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    x[((i64)r * first + t) * dim + c] = table[(i64)labels[r] * dim + c] + pos[(i64)t * dim + c];
}

// out f32 [rows, n] = in + bias[n] (in place when out == in). Grid (ceil(n / 256), rows).
KERNEL void var_bias_rows(float* out, const float* in, const float* bias, i32 n) {
    i64 i = (i64)blockIdx.y * n + blockIdx.x * blockDim.x + threadIdx.x;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    out[i] = in[i] + bias[c];
}

// AdaLN: out f16 [rows * T, dim] = LN(x) * (1 + ada[b, scale_off + c]) + ada[b, shift_off + c],
// LN without affine over the last axis ((x - mean) / sqrt(var + eps), two passes), b = the
// token row / T; ada f32 [rows, ada_width]. One block per token row (a multiple of 32 threads).
KERNEL void var_adaln(f16* out, const float* x, const float* ada, i32 ada_width, i32 scale_off, i32 shift_off,
                      i32 tokens, i32 dim, float eps) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    const float* xr = x + row * dim;
    const float* a = ada + (row / tokens) * ada_width;
    float s = 0.0f;
    for (i32 c = threadIdx.x; c < dim; c += blockDim.x) s += xr[c];
    float mean = block_reduce(s, scratch, 0) / (float)dim;
    float ss = 0.0f;
    for (i32 c = threadIdx.x; c < dim; c += blockDim.x) {
        float d = xr[c] - mean;
        ss += d * d;
    }
    float inv = 1.0f / sqrtf(block_reduce(ss, scratch, 0) / (float)dim + eps);
    for (i32 c = threadIdx.x; c < dim; c += blockDim.x) {
        float n = (xr[c] - mean) * inv;
        out[row * dim + c] = f32_to_f16(n * (1.0f + a[scale_off + c]) + a[shift_off + c]);
    }
}

// Sum of v over the 32 lanes of a warp, in every lane.
DEVICE float var_warp_sum(float v) {
    for (i32 o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The attention inputs of one scale: qkv f32 [rows * T, 3 * H * hd] (q heads, k heads, v heads)
// plus bias f32 [3 * H * hd]; q and k L2-normalised per head when l2 (x / max(|x|, 1e-12)); q
// times q_scale[h]. q -> q_out f32 [rows, H, T, hd]; k, v -> the caches f16 [rows, H, L, hd] at
// slot pos + t. Grid (T, 3 H, rows), one warp per block.
KERNEL void var_qkv(float* q_out, f16* cache_k, f16* cache_v, const float* qkv, const float* bias,
                    const float* q_scale, i32 l2, i32 tokens, i32 heads, i32 head_dim, i32 cache_len, i32 pos) {
    i32 t = blockIdx.x;
    i32 part = blockIdx.y / heads;  // 0 q, 1 k, 2 v
    i32 h = blockIdx.y % heads;
    i32 r = blockIdx.z;
    i32 width = 3 * heads * head_dim;
    i32 col = blockIdx.y * head_dim;
    const float* src = qkv + ((i64)r * tokens + t) * width + col;
    float ss = 0.0f;
    for (i32 e = threadIdx.x; e < head_dim; e += 32) {
        float v = src[e] + bias[col + e];
        ss += v * v;
    }
    float mul = 1.0f;
    if (l2 && part < 2) mul = 1.0f / fmaxf(sqrtf(var_warp_sum(ss)), 1e-12f);
    if (part == 0) {
        float* dst = q_out + (((i64)r * heads + h) * tokens + t) * head_dim;
        float scale = q_scale[h];
        for (i32 e = threadIdx.x; e < head_dim; e += 32) dst[e] = (src[e] + bias[col + e]) * mul * scale;
    } else {
        f16* cache = part == 1 ? cache_k : cache_v;
        f16* dst = cache + (((i64)r * heads + h) * cache_len + pos + t) * head_dim;
        for (i32 e = threadIdx.x; e < head_dim; e += 32) dst[e] = f32_to_f16((src[e] + bias[col + e]) * mul);
    }
}

// out f16 [rows, T, H * hd] = softmax(q . K[0..len]^T) . V[0..len] per (row, head, token), no
// mask (a scale sees itself and every earlier scale); q f32 [rows, H, T, hd], already scaled;
// caches f16 [rows, H, L, hd]. Scores of the len slots and q in dynamic shared memory
// (len + hd floats). Grid (T, H, rows), block VAR_ATTN_THREADS.
#define VAR_ATTN_THREADS 128
KERNEL void var_attention(f16* out, const float* q, const f16* cache_k, const f16* cache_v, i32 tokens,
                          i32 heads, i32 head_dim, i32 cache_len, i32 len) {
    DYN_SHARED(float, smem);
    float* scores = smem;
    float* qf = smem + len;
    __shared__ float red[32];
    i32 t = blockIdx.x;
    i32 h = blockIdx.y;
    i32 r = blockIdx.z;
    i64 head_base = ((i64)r * heads + h) * cache_len * head_dim;
    const float* qr = q + (((i64)r * heads + h) * tokens + t) * head_dim;
    for (i32 i = threadIdx.x; i < head_dim; i += blockDim.x) qf[i] = qr[i];
    __syncthreads();

    float mx = -__int_as_float(0x7f800000);
    for (i32 s = threadIdx.x; s < len; s += blockDim.x) {
        const f16* k = cache_k + head_base + (i64)s * head_dim;
        float acc = 0.0f;
        for (i32 i = 0; i < head_dim; i++) acc += qf[i] * f16_to_f32(k[i]);
        scores[s] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = block_reduce(mx, red, 1);
    float sum = 0.0f;
    for (i32 s = threadIdx.x; s < len; s += blockDim.x) {
        float p = expf(scores[s] - mx);
        scores[s] = p;
        sum += p;
    }
    float total = block_reduce(sum, red, 0);
    __syncthreads();  // every weight is in `scores` before any thread reads them

    f16* o = out + (((i64)r * tokens + t) * heads + h) * head_dim;
    for (i32 i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float acc = 0.0f;
        for (i32 s = 0; s < len; s++) acc += scores[s] * f16_to_f32(cache_v[head_base + (i64)s * head_dim + i]);
        o[i] = f32_to_f16(acc / total);
    }
}

// The same contract, flash-style: one block per (tile of VAR_TILE_Q tokens, head, row) walks the
// slots in chunks of VAR_TILE_K (= one warp) with an online softmax per token, so each K/V row
// is read once per tile instead of once per token. Dynamic shared memory (floats): q [TQ][hd],
// k [TK][hd + 1] (padded: the score loop reads one row per lane), v [TK][hd], acc [TQ][hd],
// scores [TQ][TK], then m, l and the rescale factor [TQ] each. Grid (ceil(T / TQ), H, rows),
// block VAR_ATTN_THREADS.
#define VAR_TILE_Q 16
#define VAR_TILE_K 32
KERNEL void var_attention_tiled(f16* out, const float* q, const f16* cache_k, const f16* cache_v, i32 tokens,
                                i32 heads, i32 head_dim, i32 cache_len, i32 len) {
    DYN_SHARED(float, smem);
    const i32 kst = head_dim + 1;
    float* qs = smem;
    float* ks = qs + VAR_TILE_Q * head_dim;
    float* vs = ks + VAR_TILE_K * kst;
    float* acc = vs + VAR_TILE_K * head_dim;
    float* sc = acc + VAR_TILE_Q * head_dim;
    float* m_s = sc + VAR_TILE_Q * VAR_TILE_K;
    float* l_s = m_s + VAR_TILE_Q;
    float* corr = l_s + VAR_TILE_Q;
    const float neg_inf = -__int_as_float(0x7f800000);
    i32 t0 = blockIdx.x * VAR_TILE_Q;
    i32 h = blockIdx.y;
    i32 r = blockIdx.z;
    i32 tid = threadIdx.x;
    i32 nth = blockDim.x;
    i32 lane = tid & 31;
    i32 warp = tid >> 5;
    i32 warps = nth >> 5;
    i64 head_base = ((i64)r * heads + h) * cache_len * head_dim;
    const float* qh = q + ((i64)r * heads + h) * tokens * head_dim;
    for (i32 i = tid; i < VAR_TILE_Q * head_dim; i += nth) {
        i32 qi = i / head_dim;
        qs[i] = t0 + qi < tokens ? qh[(i64)(t0 + qi) * head_dim + i % head_dim] : 0.0f;
        acc[i] = 0.0f;
    }
    if (tid < VAR_TILE_Q) {
        m_s[tid] = neg_inf;
        l_s[tid] = 0.0f;
    }
    for (i32 k0 = 0; k0 < len; k0 += VAR_TILE_K) {
        __syncthreads();  // the previous chunk is no longer read
        for (i32 i = tid; i < VAR_TILE_K * head_dim; i += nth) {
            i32 kj = i / head_dim;
            i32 e = i % head_dim;
            bool ok = k0 + kj < len;
            i64 at = head_base + (i64)k0 * head_dim + i;
            ks[kj * kst + e] = ok ? f16_to_f32(cache_k[at]) : 0.0f;
            vs[i] = ok ? f16_to_f32(cache_v[at]) : 0.0f;
        }
        __syncthreads();
        for (i32 i = tid; i < VAR_TILE_Q * VAR_TILE_K; i += nth) {
            i32 qi = i / VAR_TILE_K;
            i32 kj = i % VAR_TILE_K;
            float s = neg_inf;
            if (k0 + kj < len) {
                s = 0.0f;
                for (i32 e = 0; e < head_dim; e++) s += qs[qi * head_dim + e] * ks[kj * kst + e];
            }
            sc[i] = s;
        }
        __syncthreads();
        // Online softmax: warp w folds tokens w, w + warps, ...; lane j holds slot k0 + j (every
        // chunk has slot k0 < len, so the new max is finite and exp(-inf) weighs 0).
        for (i32 qi = warp; qi < VAR_TILE_Q; qi += warps) {
            float s = sc[qi * VAR_TILE_K + lane];
            float mx = s;
            for (i32 o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
            float m_old = m_s[qi];
            float m_new = fmaxf(m_old, mx);
            float p = expf(s - m_new);
            sc[qi * VAR_TILE_K + lane] = p;
            float sum = var_warp_sum(p);
            if (lane == 0) {
                float c = expf(m_old - m_new);
                corr[qi] = c;
                l_s[qi] = l_s[qi] * c + sum;
                m_s[qi] = m_new;
            }
        }
        __syncthreads();
        for (i32 i = tid; i < VAR_TILE_Q * head_dim; i += nth) {
            i32 qi = i / head_dim;
            i32 e = i % head_dim;
            const float* p = sc + qi * VAR_TILE_K;
            float a = acc[i] * corr[qi];
            for (i32 j = 0; j < VAR_TILE_K; j++) a += p[j] * vs[j * head_dim + e];
            acc[i] = a;
        }
    }
    __syncthreads();
    for (i32 i = tid; i < VAR_TILE_Q * head_dim; i += nth) {
        i32 qi = i / head_dim;
        if (t0 + qi >= tokens) continue;
        i64 o = (((i64)r * tokens + t0 + qi) * heads + h) * head_dim + i % head_dim;
        out[o] = f32_to_f16(acc[i] / l_s[qi]);
    }
}

// x f32 [rows * T, dim] += ada[b, gamma_off + c] * (y + bias[c]), b = the token row / T (the
// gated residual of an AdaLN block; y the f32 GEMM output). Grid (ceil(dim / 256), rows * T).
KERNEL void var_gate_residual(float* x, const float* y, const float* bias, const float* ada, i32 ada_width,
                              i32 gamma_off, i32 tokens, i32 dim) {
    i64 row = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    i64 i = row * dim + c;
    x[i] = x[i] + ada[(row / tokens) * ada_width + gamma_off + c] * (y[i] + bias[c]);
}

// out f16 [rows, n] = gelu_tanh(in f32 [rows, n] + bias[n]):
// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). Grid (ceil(n / 256), rows).
KERNEL void var_gelu_bias(f16* out, const float* in, const float* bias, i32 n) {
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    i64 i = (i64)blockIdx.y * n + c;
    float x = in[i] + bias[c];
    float inner = (x + 0.044715f * x * x * x) * 0.7978845608f;
    out[i] = f32_to_f16(0.5f * x * (1.0f + tanhf(inner)));
}

// The head's bias and VAR's guidance on logits f32 [rows, vocab]: each cond row i < m becomes
// y = logits[i] + bias; with cfg, u = logits[m + i] + bias and y = (1 + t) y - t u with
// t = *t_ptr (in device memory: a request's guidance). The uncond rows keep the raw GEMM output.
// Grid (ceil(vocab / 256), m).
KERNEL void var_head_cfg(float* logits, const float* bias, const float* t_ptr, i32 m, i32 cfg, i32 vocab) {
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= vocab) return;
    i64 i = (i64)blockIdx.y * vocab + c;
    float y = logits[i] + bias[c];
    if (cfg) {
        float t = *t_ptr;
        float u = logits[i + (i64)m * vocab] + bias[c];
        // As the CPU loop: (1 + t) * y - t * u, each product rounded.
        y = __fadd_rn(__fmul_rn(1.0f + t, y), -__fmul_rn(t, u));
    }
    logits[i] = y;
}

// One scale's codes as a map: h f32 [rows, side, side, cvae] (NHWC) = R E R^T per channel, E the
// pn x pn grid of codebook rows codebook[tokens[r % n, begin + p * pn + q]] (codebook f32
// [V, cvae]), R f32 [side, pn] (bicubic up, or the identity at the last scale). Grid
// (ceil(side * side * cvae / 256), rows).
KERNEL void var_embed_resize(float* h, const i32* tokens, const float* codebook, const float* resize, i32 n,
                             i32 tokens_total, i32 begin, i32 pn, i32 side, i32 cvae) {
    i32 r = blockIdx.y;
    i32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= side * side * cvae) return;
    i32 c = e % cvae;
    i32 x = (e / cvae) % side;
    i32 y = e / (cvae * side);
    const i32* ids = tokens + (i64)(r % n) * tokens_total + begin;
    float acc = 0.0f;
    for (i32 p = 0; p < pn; p++) {
        float wy = resize[y * pn + p];
        if (wy == 0.0f) continue;
        float row = 0.0f;
        for (i32 q = 0; q < pn; q++) row += resize[x * pn + q] * codebook[(i64)ids[p * pn + q] * cvae + c];
        acc += wy * row;
    }
    h[(i64)r * side * side * cvae + e] = acc;
}

// f_hat f32 [rows, side, side, cvae] += (1 - ratio) h + ratio (bias + conv3x3(h)) (phi, zero
// padding; w f32 [cvae, cvae, 3, 3] as torch stores it). Grid (ceil(side * side * cvae / 256), rows).
KERNEL void var_phi_accumulate(float* f_hat, const float* h, const float* w, const float* bias, i32 side,
                               i32 cvae, float ratio) {
    i32 r = blockIdx.y;
    i32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= side * side * cvae) return;
    i32 co = e % cvae;
    i32 x = (e / cvae) % side;
    i32 y = e / (cvae * side);
    const float* hr = h + (i64)r * side * side * cvae;
    float conv = bias[co];
    for (i32 ky = 0; ky < 3; ky++) {
        i32 yy = y + ky - 1;
        if (yy < 0 || yy >= side) continue;
        for (i32 kx = 0; kx < 3; kx++) {
            i32 xx = x + kx - 1;
            if (xx < 0 || xx >= side) continue;
            const float* px = hr + ((i64)yy * side + xx) * cvae;
            const float* wk = w + (i64)co * cvae * 9 + ky * 3 + kx;
            for (i32 ci = 0; ci < cvae; ci++) conv += wk[ci * 9] * px[ci];
        }
    }
    i64 i = (i64)r * side * side * cvae + e;
    f_hat[i] = f_hat[i] + ((1.0f - ratio) * hr[e] + ratio * conv);
}

// The next scale's tokens: out f16 [rows, pn * pn, cvae] = A f_hat A^T per channel (A f32
// [pn, side]: area downsampling, or the identity at the last side). Grid
// (ceil(pn * pn * cvae / 256), rows).
KERNEL void var_area_tokens(f16* out, const float* f_hat, const float* area, i32 side, i32 pn, i32 cvae) {
    i32 r = blockIdx.y;
    i32 e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= pn * pn * cvae) return;
    i32 c = e % cvae;
    i32 j = (e / cvae) % pn;
    i32 i = e / (cvae * pn);
    const float* f = f_hat + (i64)r * side * side * cvae;
    float acc = 0.0f;
    for (i32 p = 0; p < side; p++) {
        float wi = area[i * side + p];
        if (wi == 0.0f) continue;
        float row = 0.0f;
        for (i32 q = 0; q < side; q++) row += area[j * side + q] * f[((i64)p * side + q) * cvae + c];
        acc += wi * row;
    }
    out[(i64)r * pn * pn * cvae + e] = f32_to_f16(acc);
}

// x f32 [rows, T, dim] += bias[c] + pos[begin + t, c] (word_embed's bias and the position
// table; x holds the word_embed GEMM). Grid (ceil(dim / 256), T, rows).
KERNEL void var_add_positions(float* x, const float* bias, const float* pos, i32 tokens, i32 begin, i32 dim) {
    i32 r = blockIdx.z;
    i32 t = blockIdx.y;
    i32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    i64 i = ((i64)r * tokens + t) * dim + c;
    x[i] = x[i] + bias[c] + pos[(i64)(begin + t) * dim + c];
}

// x f32 [n] = 0. Grid-stride; any grid.
KERNEL void var_zero_f32(float* x, i32 n) {
    for (i32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = 0.0f;
}
