// Decode attention: one new query per (row, head) against the KV cache slots 0..=pos.
//
// Specialised for head_dim 64 (LlamaGen's only value; the wrapper refuses others). One block of
// ATTN_THREADS threads per (row, head): the block is cut into groups of 8 lanes, one key per group
// at a time, each lane owning 8 of the 64 dims, so K and V rows are read with one 128-bit load
// per lane and a warp reads 4 consecutive cache rows (512 contiguous bytes). Each group keeps
// its own online softmax (running max, sum and 8 output dims); the groups are merged in shared
// memory at the end. Every loop bound is block-uniform, so the 8-lane shuffles always run with
// the whole warp. Decode attention is bandwidth bound: each group loads two keys (and their
// values) before using either, to keep more bytes in flight per thread.

#define ATTN_HEAD_DIM 64
#define ATTN_LANES 8                          // lanes per key: 64 dims / 8 f16 per 128-bit load
#define ATTN_THREADS 256                      // the wrapper launches exactly this many
#define ATTN_GROUPS (ATTN_THREADS / ATTN_LANES)  // keys in flight per block per half-step

DEVICE void attn_unpack8(uint4 v, float* out) {
    u32 w[4] = {v.x, v.y, v.z, v.w};
    for (i32 i = 0; i < 4; i++) {
        out[2 * i] = f16_to_f32((f16)(w[i] & 0xffff));
        out[2 * i + 1] = f16_to_f32((f16)(w[i] >> 16));
    }
}

// The full 64-dim dot product, summed over the 8 lanes of a group (lanes 8g..8g+7 of a warp).
DEVICE float attn_group_dot(const float* q, const float* k) {
    float s = 0.0f;
    for (i32 i = 0; i < 8; i++) s += q[i] * k[i];
    s += __shfl_xor_sync(0xffffffff, s, 1);
    s += __shfl_xor_sync(0xffffffff, s, 2);
    s += __shfl_xor_sync(0xffffffff, s, 4);
    return s;
}

// One online-softmax step: fold score `s` with value row `v` into (m, l, acc).
DEVICE void attn_online_step(float s, const float* v, float* m, float* l, float* acc) {
    float m_new = fmaxf(*m, s);
    float corr = expf(*m - m_new);  // 0 on the first key (m = -inf, m_new finite)
    float p = expf(s - m_new);
    *l = *l * corr + p;
    for (i32 i = 0; i < 8; i++) acc[i] = acc[i] * corr + p * v[i];
    *m = m_new;
}

// out f16 [rows, heads, 64] = softmax(q . K[0..=pos]^T) . V[0..=pos], q f16 [rows, heads, 64]
// (already scaled by 1/sqrt(64)), caches f16 [rows, kv_heads, max_len, 64], pos = *pos_ptr.
// GQA: q head h reads kv head h / (heads / kv_heads). Grid (heads, rows), block ATTN_THREADS.
// A position outside 0..max_len writes nothing.
KERNEL void decode_attention(f16* out, const f16* q, const f16* cache_k, const f16* cache_v, const i32* pos_ptr,
                             i32 heads, i32 kv_heads, i32 max_len) {
    __shared__ float m_s[ATTN_GROUPS];
    __shared__ float l_s[ATTN_GROUPS];
    __shared__ float acc_s[ATTN_GROUPS * ATTN_HEAD_DIM];

    i32 pos = *pos_ptr;
    if (pos < 0 || pos >= max_len) return;
    i32 h = blockIdx.x;
    i32 r = blockIdx.y;
    i32 kvh = h / (heads / kv_heads);
    i32 group = threadIdx.x / ATTN_LANES;
    i32 dim0 = (threadIdx.x % ATTN_LANES) * 8;

    float qv[8];
    attn_unpack8(*reinterpret_cast<const uint4*>(q + ((i64)r * heads + h) * ATTN_HEAD_DIM + dim0), qv);
    i64 head_base = ((i64)r * kv_heads + kvh) * max_len * ATTN_HEAD_DIM + dim0;
    const f16* kp = cache_k + head_base;
    const f16* vp = cache_v + head_base;

    float m = -__int_as_float(0x7f800000);
    float l = 0.0f;
    float acc[8];
    for (i32 i = 0; i < 8; i++) acc[i] = 0.0f;

    uint4 zero = make_uint4(0, 0, 0, 0);
    for (i32 base = 0; base <= pos; base += 2 * ATTN_GROUPS) {
        i32 t0 = base + group;
        i32 t1 = t0 + ATTN_GROUPS;
        bool ok0 = t0 <= pos;
        bool ok1 = t1 <= pos;
        // All four loads are issued before any use.
        uint4 k0 = ok0 ? *reinterpret_cast<const uint4*>(kp + (i64)t0 * ATTN_HEAD_DIM) : zero;
        uint4 v0 = ok0 ? *reinterpret_cast<const uint4*>(vp + (i64)t0 * ATTN_HEAD_DIM) : zero;
        uint4 k1 = ok1 ? *reinterpret_cast<const uint4*>(kp + (i64)t1 * ATTN_HEAD_DIM) : zero;
        uint4 v1 = ok1 ? *reinterpret_cast<const uint4*>(vp + (i64)t1 * ATTN_HEAD_DIM) : zero;
        float kf[8], vf[8];
        attn_unpack8(k0, kf);
        float s0 = attn_group_dot(qv, kf);
        attn_unpack8(k1, kf);
        float s1 = attn_group_dot(qv, kf);
        // ok0/ok1 are uniform within a group, and no shuffle follows: divergence is harmless.
        if (ok0) {
            attn_unpack8(v0, vf);
            attn_online_step(s0, vf, &m, &l, acc);
        }
        if (ok1) {
            attn_unpack8(v1, vf);
            attn_online_step(s1, vf, &m, &l, acc);
        }
    }

    // Merge the groups: weight each by exp(m_g - M); groups that saw no key have l = 0 and
    // m = -inf, so their weight is exactly 0 (group 0 always has slot 0, so M is finite).
    if (dim0 == 0) {
        m_s[group] = m;
        l_s[group] = l;
    }
    for (i32 i = 0; i < 8; i++) acc_s[group * ATTN_HEAD_DIM + dim0 + i] = acc[i];
    __syncthreads();
    if (threadIdx.x < ATTN_HEAD_DIM) {
        float mx = m_s[0];
        for (i32 g = 1; g < ATTN_GROUPS; g++) mx = fmaxf(mx, m_s[g]);
        float sum = 0.0f;
        float o = 0.0f;
        for (i32 g = 0; g < ATTN_GROUPS; g++) {
            float w = expf(m_s[g] - mx);
            sum += l_s[g] * w;
            o += acc_s[g * ATTN_HEAD_DIM + threadIdx.x] * w;
        }
        out[((i64)r * heads + h) * ATTN_HEAD_DIM + threadIdx.x] = f32_to_f16(o / sum);
    }
}

// The same contract for any head_dim (the golden tiny model has 16): a plain two-pass softmax
// with the scores of slots 0..=pos in dynamic shared memory (max_len floats, then head_dim
// floats of q). Correctness path only; LlamaGen's models all take the kernel above.
// Grid (heads, rows), block ATTN_GENERIC_THREADS (the wrapper launches this many).
#define ATTN_GENERIC_THREADS 128
KERNEL void decode_attention_generic(f16* out, const f16* q, const f16* cache_k, const f16* cache_v,
                                     const i32* pos_ptr, i32 heads, i32 kv_heads, i32 head_dim,
                                     i32 max_len) {
    DYN_SHARED(float, smem);
    float* scores = smem;
    float* qf = smem + max_len;
    __shared__ float red[32];

    i32 pos = *pos_ptr;
    if (pos < 0 || pos >= max_len) return;
    i32 h = blockIdx.x;
    i32 r = blockIdx.y;
    i32 kvh = h / (heads / kv_heads);
    i64 head_base = ((i64)r * kv_heads + kvh) * max_len * head_dim;
    for (i32 i = threadIdx.x; i < head_dim; i += blockDim.x)
        qf[i] = f16_to_f32(q[((i64)r * heads + h) * head_dim + i]);
    __syncthreads();

    // Scores and their max.
    float mx = -__int_as_float(0x7f800000);
    for (i32 t = threadIdx.x; t <= pos; t += blockDim.x) {
        const f16* k = cache_k + head_base + (i64)t * head_dim;
        float s = 0.0f;
        for (i32 i = 0; i < head_dim; i++) s += qf[i] * f16_to_f32(k[i]);
        scores[t] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_reduce(mx, red, 1);

    // Weights and their sum.
    float sum = 0.0f;
    for (i32 t = threadIdx.x; t <= pos; t += blockDim.x) {
        float p = expf(scores[t] - mx);
        scores[t] = p;
        sum += p;
    }
    float total = block_reduce(sum, red, 0);
    __syncthreads();  // the weights in `scores` are complete before any thread reads them

    // Output: one dim per thread.
    for (i32 i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float o = 0.0f;
        for (i32 t = 0; t <= pos; t++) o += scores[t] * f16_to_f32(cache_v[head_base + (i64)t * head_dim + i]);
        out[((i64)r * heads + h) * head_dim + i] = f32_to_f16(o / total);
    }
}
