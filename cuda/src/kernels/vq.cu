// Kernels of the VQ decoder: codebook normalisation and lookup, GroupNorm (+ swish), nearest
// upsampling into a zero-padded conv input, conv bias (+ residual) epilogues and the attention
// softmax. Convolutions themselves are GEMMs (ops/vq.rs); launch configurations live there too.
//
// Layouts. Activations are NHWC. The residual stream and every GEMM output are f32; GEMM inputs
// are f16. A 3x3 conv reads the zero-padded map (h+2)(w+2) positions of C channels per image,
// position (y+1)(w+2) + (x+1) holding (y, x), in a "3-tap" layout: row j of (h+2)(w+2) holds
// positions j, j+1 and j+2 (3C values), so the three kx taps of one ky are one GEMM with K = 3C
// (ops/vq_gemm.rs). The conv writes rows of pitch w+2 (the last two positions junk), so the
// kernels below read an f32 "map" described by (pitch, img_stride) plus an optional per-channel
// bias added on read (`bias` may be null): value(b, y, x, c) =
//   src[b * img_stride + (y * pitch + x) * C + c] + bias[c].
// Elementwise kernels loop grid-stride over one image's elements (32-bit indices: the wrappers
// check every per-image count fits) with the image in blockIdx.y; only the final addresses are
// 64-bit, so no thread divides 64-bit integers.

#define VQ_THREADS 256  // block size of the reduction kernels (the wrappers launch exactly this)
// for (u32 i ...) over [0, n) of this block's share, grid-stride along x.
#define VQ_FOR_EACH(i, n) for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (u32)(n); i += gridDim.x * blockDim.x)

DEVICE float vq_map_read(const float* src, const float* bias, i32 b, i32 y, i32 x, i32 c, i32 pitch,
                         i32 img_stride, i32 channels) {
    float v = src[(i64)b * img_stride + ((i64)y * pitch + x) * channels + c];
    return bias ? v + bias[c] : v;
}

// Position `r` of an image laid out `w_out` wide with `pad` zero positions on every side: sets
// (y, x) in the unpadded image and returns whether it lies inside it (padding rows, padding
// columns and the 2 positions past the padded map lie outside).
DEVICE bool vq_unpad(i32 r, i32 h_out, i32 w_out, i32 pad, i32* y, i32* x) {
    i32 wp = w_out + 2 * pad;
    *y = r / wp - pad;
    *x = r % wp - pad;
    return *y >= 0 && *y < h_out && *x >= 0 && *x < w_out;
}

// Positions per image the f16 writers below visit: the padded map and the 2 positions past it
// (zero; the last row's kx = 1, 2 parts) when padded, h*w when not.
DEVICE i32 vq_out_positions(i32 h_out, i32 w_out, i32 pad) {
    return pad ? (h_out + 2) * (w_out + 2) + 2 : h_out * w_out;
}

// f16 values per image of a writer's output: (h+2)(w+2) rows of 3C when padded (3-tap), h*w
// rows of C when not.
DEVICE i32 vq_out_len(i32 h_out, i32 w_out, i32 pad, i32 channels) {
    return pad ? (h_out + 2) * (w_out + 2) * 3 * channels : h_out * w_out * channels;
}

// Stores `v`, channel c of position r (T = f16), or channels c..c+8 (T = uint4, packed f16
// pairs, 16-byte aligned as the _x8 kernels' callers guarantee), into an image's f16 output:
// out[r][c] when compact; when padded (3-tap), into part kx of row r - kx for each kx = 0, 1, 2
// that names a row, so each output value is written exactly once over all positions.
template <class T>
DEVICE void vq_store_input(f16* out_b, i32 r, i32 c, i32 h_out, i32 w_out, i32 pad, i32 channels, T v) {
    if (!pad) {
        *reinterpret_cast<T*>(out_b + (i64)r * channels + c) = v;
        return;
    }
    i32 rows = (h_out + 2) * (w_out + 2);
    for (i32 kx = 0; kx < 3; kx++) {
        i32 j = r - kx;
        if (j >= 0 && j < rows) *reinterpret_cast<T*>(out_b + ((i64)j * 3 + kx) * channels + c) = v;
    }
}

// vq_map_read of channels c0..c0+8 (bias added when present) into v.
DEVICE void vq_map_read8(const float* src, const float* bias, i32 b, i32 y, i32 x, i32 c0, i32 pitch,
                         i32 img_stride, i32 channels, float* v) {
    const float* p = src + (i64)b * img_stride + ((i64)y * pitch + x) * channels + c0;
    float4 lo = *reinterpret_cast<const float4*>(p);
    float4 hi = *reinterpret_cast<const float4*>(p + 4);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
    if (bias)
        for (i32 k = 0; k < 8; k++) v[k] += bias[c0 + k];
}

// Eight f32 as f16 pairs.
DEVICE uint4 vq_pack8(const float* v) {
    return make_uint4(pack_f16x2(f32_to_f16(v[0]), f32_to_f16(v[1])), pack_f16x2(f32_to_f16(v[2]), f32_to_f16(v[3])),
                      pack_f16x2(f32_to_f16(v[4]), f32_to_f16(v[5])), pack_f16x2(f32_to_f16(v[6]), f32_to_f16(v[7])));
}

// rows f32 [n, dim] /= max(||row||_2, 1e-12) in place (F.normalize(p=2, dim=-1)); one thread per
// row (the codebook's rows are short: 8 values).
KERNEL void vq_l2_normalize_rows(float* rows, i32 n, i32 dim) {
    VQ_FOR_EACH(r, n) {
        float* row = rows + (i64)r * dim;
        float ss = 0.0f;
        for (i32 i = 0; i < dim; i++) ss += row[i] * row[i];
        float norm = fmaxf(sqrtf(ss), 1e-12f);
        for (i32 i = 0; i < dim; i++) row[i] = row[i] / norm;
    }
}

// out f16 [n_tokens, dim] = codebook f32 [codebook_size, dim] at tokens i32 [n_tokens]. Ids are
// validated on the host; an id outside the codebook is clamped rather than read out of bounds.
// n_tokens * dim < 2^31 (checked by the wrapper).
KERNEL void vq_codebook_gather(f16* out, const float* codebook, const i32* tokens, i32 n_tokens, i32 dim,
                               i32 codebook_size) {
    VQ_FOR_EACH(i, n_tokens * dim) {
        i32 t = min(max(tokens[i / dim], 0), codebook_size - 1);
        out[i] = f32_to_f16(codebook[(i64)t * dim + i % dim]);
    }
}

// GroupNorm statistics, pass 1: block (chunk, g, b) of a (chunks, groups, batch) grid takes a
// contiguous slice of group g's h*w*(C/groups) values of image b and writes (count, mean, M2)
// (M2 = sum of squared deviations from the slice mean, two passes over the slice) to
// partial f32 [batch, groups, chunks, 3]. Values are read channel-fastest within the group.
KERNEL void vq_group_stats_partial(float* partial, const float* src, const float* bias, i32 h, i32 w, i32 pitch,
                                   i32 img_stride, i32 channels, i32 groups) {
    __shared__ float scratch[32];
    i32 chunk = blockIdx.x;
    i32 chunks = gridDim.x;
    i32 g = blockIdx.y;
    i32 b = blockIdx.z;
    i32 cpg = channels / groups;
    i32 n = h * w * cpg;
    i32 per = (n + chunks - 1) / chunks;
    i32 lo = min(chunk * per, n);
    i32 hi = min(lo + per, n);
    float sum = 0.0f;
    for (i32 e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        i32 p = e / cpg;
        sum += vq_map_read(src, bias, b, p / w, p % w, g * cpg + e % cpg, pitch, img_stride, channels);
    }
    float count = (float)(hi - lo);
    float mean = hi > lo ? block_reduce(sum, scratch, 0) / count : 0.0f;
    float m2 = 0.0f;
    for (i32 e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        i32 p = e / cpg;
        float d = vq_map_read(src, bias, b, p / w, p % w, g * cpg + e % cpg, pitch, img_stride, channels) - mean;
        m2 += d * d;
    }
    m2 = block_reduce(m2, scratch, 0);
    if (threadIdx.x == 0) {
        float* out = partial + (((i64)b * groups + g) * chunks + chunk) * 3;
        out[0] = count;
        out[1] = mean;
        out[2] = m2;
    }
}

// GroupNorm statistics, pass 2: one thread per (image, group) of n = batch * groups merges the
// chunks' (count, mean, M2) (Chan et al.'s pairwise update, stable for any mean) into
// stats f32 [n, 2] = (mean, 1 / sqrt(biased variance + eps)), as torch's GroupNorm.
KERNEL void vq_group_stats_finalize(float* stats, const float* partial, i32 n, i32 chunks, float eps) {
    VQ_FOR_EACH(i, n) {
        const float* p = partial + (i64)i * chunks * 3;
        float count = 0.0f, mean = 0.0f, m2 = 0.0f;
        for (i32 k = 0; k < chunks; k++) {
            float nb = p[3 * k];
            if (nb == 0.0f) continue;
            float total = count + nb;
            float delta = p[3 * k + 1] - mean;
            mean += delta * (nb / total);
            m2 += p[3 * k + 2] + delta * delta * (count * nb / total);
            count = total;
        }
        float var = count > 0.0f ? m2 / count : 0.0f;
        stats[2 * i] = mean;
        stats[2 * i + 1] = 1.0f / sqrtf(var + eps);
    }
}

// out f16 = GroupNorm(map) * gamma + beta, then swish (x * sigmoid(x)) when `swish` != 0, for the
// f32 map [batch, h, w, C] (pitch, img_stride, optional bias). stats f32 [batch, groups, 2] from
// vq_group_stats_*; gamma, beta f32 [C]. With `pad` = 1 the output is the zero-padded 3-tap conv
// input [batch, (h+2)(w+2), 3C] written whole (borders included, so a reused buffer needs no
// clearing); with `pad` = 0 it is compact [batch, h*w, C]. Grid (x, batch).
KERNEL void vq_group_norm_f16(f16* out, const float* src, const float* bias, const float* stats,
                              const float* gamma, const float* beta, i32 h, i32 w, i32 pitch,
                              i32 img_stride, i32 channels, i32 groups, i32 pad, i32 swish) {
    i32 b = blockIdx.y;
    i32 n = vq_out_positions(h, w, pad) * channels;
    i32 cpg = channels / groups;
    f16* out_b = out + (i64)b * vq_out_len(h, w, pad, channels);
    VQ_FOR_EACH(i, n) {
        i32 c = i % channels;
        i32 y, x;
        float v = 0.0f;
        if (vq_unpad(i / channels, h, w, pad, &y, &x)) {
            const float* st = stats + ((i64)b * groups + c / cpg) * 2;
            v = vq_map_read(src, bias, b, y, x, c, pitch, img_stride, channels);
            v = (v - st[0]) * st[1] * gamma[c] + beta[c];
            if (swish) v = v / (1.0f + expf(-v));
        }
        vq_store_input(out_b, i / channels, c, h, w, pad, channels, f32_to_f16(v));
    }
}

// vq_group_norm_f16 with 8 channels per thread (one position's c0..c0+8): C % 8 == 0, src and
// out 16-byte aligned (checked by the wrapper); the same arithmetic per value.
KERNEL void vq_group_norm_f16_x8(f16* out, const float* src, const float* bias, const float* stats,
                                 const float* gamma, const float* beta, i32 h, i32 w, i32 pitch,
                                 i32 img_stride, i32 channels, i32 groups, i32 pad, i32 swish) {
    i32 b = blockIdx.y;
    i32 c8 = channels / 8;
    i32 n = vq_out_positions(h, w, pad) * c8;
    i32 cpg = channels / groups;
    f16* out_b = out + (i64)b * vq_out_len(h, w, pad, channels);
    VQ_FOR_EACH(i, n) {
        i32 r = i / c8;
        i32 c0 = (i % c8) * 8;
        i32 y, x;
        float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (vq_unpad(r, h, w, pad, &y, &x)) {
            vq_map_read8(src, bias, b, y, x, c0, pitch, img_stride, channels, v);
            for (i32 k = 0; k < 8; k++) {
                i32 c = c0 + k;
                const float* st = stats + ((i64)b * groups + c / cpg) * 2;
                float u = (v[k] - st[0]) * st[1] * gamma[c] + beta[c];
                v[k] = swish ? u / (1.0f + expf(-u)) : u;
            }
        }
        vq_store_input(out_b, r, c0, h, w, pad, channels, vq_pack8(v));
    }
}

// out f16 = the f32 map [batch, h, w, C] (pitch, img_stride, optional bias) upsampled by
// `factor` (1 or 2, nearest: output (y, x) reads (y / factor, x / factor), torch's
// F.interpolate(scale_factor=2, mode="nearest")), written as the zero-padded 3-tap conv input
// [batch, (fh+2)(fw+2), 3C] when `pad` = 1, compact [batch, fh*fw, C] when 0 (factor 1, pad 0
// is a plain f32 -> f16 conversion). Grid (x, batch).
KERNEL void vq_upsample_pad_f16(f16* out, const float* src, const float* bias, i32 h, i32 w, i32 pitch,
                                i32 img_stride, i32 channels, i32 factor, i32 pad) {
    i32 b = blockIdx.y;
    i32 fh = h * factor;
    i32 fw = w * factor;
    i32 n = vq_out_positions(fh, fw, pad) * channels;
    f16* out_b = out + (i64)b * vq_out_len(fh, fw, pad, channels);
    VQ_FOR_EACH(i, n) {
        i32 c = i % channels;
        i32 y, x;
        float v = 0.0f;
        if (vq_unpad(i / channels, fh, fw, pad, &y, &x))
            v = vq_map_read(src, bias, b, y / factor, x / factor, c, pitch, img_stride, channels);
        vq_store_input(out_b, i / channels, c, fh, fw, pad, channels, f32_to_f16(v));
    }
}

// vq_upsample_pad_f16 with 8 channels per thread, under vq_group_norm_f16_x8's conditions.
KERNEL void vq_upsample_pad_f16_x8(f16* out, const float* src, const float* bias, i32 h, i32 w, i32 pitch,
                                   i32 img_stride, i32 channels, i32 factor, i32 pad) {
    i32 b = blockIdx.y;
    i32 fh = h * factor;
    i32 fw = w * factor;
    i32 c8 = channels / 8;
    i32 n = vq_out_positions(fh, fw, pad) * c8;
    f16* out_b = out + (i64)b * vq_out_len(fh, fw, pad, channels);
    VQ_FOR_EACH(i, n) {
        i32 r = i / c8;
        i32 c0 = (i % c8) * 8;
        i32 y, x;
        float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (vq_unpad(r, fh, fw, pad, &y, &x))
            vq_map_read8(src, bias, b, y / factor, x / factor, c0, pitch, img_stride, channels, v);
        vq_store_input(out_b, r, c0, fh, fw, pad, channels, vq_pack8(v));
    }
}

// The conv epilogue: out f32 = map (pitch, img_stride, optional bias) + residual, for
// [batch, h, w, C]. `residual` (nullable) is compact NHWC and may be `out` itself; `out` must
// not overlap `src` unless pitch == w (each element is read and written by one thread only).
// out is compact NHWC, or NCHW [batch, C, h, w] when `nchw` != 0 (the decoder's image).
// Grid (x, batch).
KERNEL void vq_bias_residual(float* out, const float* src, const float* bias, const float* residual, i32 h,
                             i32 w, i32 pitch, i32 img_stride, i32 channels, i32 nchw) {
    i32 b = blockIdx.y;
    i32 hw = h * w;
    i64 base = (i64)b * hw * channels;
    VQ_FOR_EACH(i, hw * channels) {
        i32 c = i % channels;
        i32 p = i / channels;
        float v = vq_map_read(src, bias, b, p / w, p % w, c, pitch, img_stride, channels);
        if (residual) v += residual[base + i];
        if (nchw)
            out[base + (i64)c * hw + p] = v;
        else
            out[base + i] = v;
    }
}

// out f16 [rows, cols] = src f32 [rows, cols] + bias f32 [cols] (the fused q|k|v 1x1 convs);
// rows * cols < 2^31 (checked by the wrapper).
KERNEL void vq_bias_f16(f16* out, const float* src, const float* bias, i32 rows, i32 cols) {
    VQ_FOR_EACH(i, rows * cols) out[i] = f32_to_f16(src[i] + bias[i % cols]);
}

// out f16 [rows, cols] = softmax over each row of scores f32 [rows, cols], computed in f32 (max
// subtracted). One VQ_THREADS block per row (grid = rows).
KERNEL void vq_softmax_rows_f16(f16* out, const float* scores, i32 cols) {
    __shared__ float scratch[32];
    const float* s = scores + (i64)blockIdx.x * cols;
    f16* o = out + (i64)blockIdx.x * cols;
    float m = -__int_as_float(0x7f800000);
    for (i32 j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_reduce(m, scratch, 1);
    float sum = 0.0f;
    for (i32 j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(s[j] - m);
    float inv = 1.0f / block_reduce(sum, scratch, 0);
    for (i32 j = threadIdx.x; j < cols; j += blockDim.x) o[j] = f32_to_f16(expf(s[j] - m) * inv);
}
