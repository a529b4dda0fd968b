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

// Merges the groups' online-softmax states for output dim `e`: each group weighs
// exp(m_g - max); a group that saw no key has l = 0 and m = -inf, so its weight is exactly 0
// (group 0 always holds a key, so the max is finite). Gives the max, the weight sum and dim e's
// weighted sum of values.
DEVICE void attn_merge_groups(const float* m_s, const float* l_s, const float* acc_s, i32 groups, i32 head_dim,
                              i32 e, float* mx_out, float* sum_out, float* o_out) {
    float mx = m_s[0];
    for (i32 g = 1; g < groups; g++) mx = fmaxf(mx, m_s[g]);
    float sum = 0.0f;
    float o = 0.0f;
    for (i32 g = 0; g < groups; g++) {
        float w = expf(m_s[g] - mx);
        sum += l_s[g] * w;
        o += acc_s[g * head_dim + e] * w;
    }
    *mx_out = mx;
    *sum_out = sum;
    *o_out = o;
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

    // Merge the groups (attn_merge_groups).
    if (dim0 == 0) {
        m_s[group] = m;
        l_s[group] = l;
    }
    for (i32 i = 0; i < 8; i++) acc_s[group * ATTN_HEAD_DIM + dim0 + i] = acc[i];
    __syncthreads();
    if (threadIdx.x < ATTN_HEAD_DIM) {
        float mx, sum, o;
        attn_merge_groups(m_s, l_s, acc_s, ATTN_GROUPS, ATTN_HEAD_DIM, threadIdx.x, &mx, &sum, &o);
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

// ---- Fused rotary + split-K decode attention (flash-decoding) ---------------------------------
//
// One launch per layer replaces the pair rotary_kv_write + decode_attention. Grid (heads, rows,
// splits), block ATTN_SPLIT_THREADS; split z owns cache slots [z * ATTN_SPLIT_CHUNK, (z + 1) *
// ATTN_SPLIT_CHUNK), and splits = ceil(max_len / ATTN_SPLIT_CHUNK) is fixed when the step is
// captured; blocks whose chunk starts after *pos exit at once, writing nothing.
//
// Chunk 64: with 256 threads and head_dim 64 (32 groups of 8 lanes, 2 keys per group) a split
// is exactly one pass of decode_attention's loop: every thread issues its 4 128-bit loads at
// once and no load waits on another. GPT-B at 384 px (16 rows, 12 heads, max_len 577) launches
// 1920 blocks of which ~960 work on an average step (the unfused kernel: 192 blocks on 132 SMs),
// ~7 per SM, all resident at once (8 KiB of shared memory, 256 threads each), so the whole
// step's cache reads are in flight together. A smaller chunk would help batch 1 (2 rows x 12
// heads) but doubles the partials and the merge per halving; larger chunks loop, and fewer
// blocks leave SMs idle.
//
// Each block rotates its q head itself (rotary_pair, the same bits rotary_kv_write stores, then
// read back as f16 like the unfused path) and reads the cache slots of its chunk below pos. The
// split that holds pos rotates the new k too and uses the new k and v for slot pos straight from
// qkv; it also writes them into the cache at slot pos (with GQA only the first q head of each kv
// group writes). No block reads slot pos from the cache, so these writes race with nothing.
//
// Combine: the last block of each (row, head) merges. Every live block writes its partial
// (running max m, sum l, 64 unnormalised outputs; f32) to `partials`, fences, and counts itself
// in `counters[row, head]`; the block that brings the count to the number of live splits
// (pos / chunk + 1, known to every block) reads all partials and writes `out`, then resets the
// counter to 0 for the next launch (graph replay). One launch instead of a separate combine
// kernel: a GPT-B step would otherwise add 12 dependent launches (each a drain and refill of the
// GPU, a few microseconds) to merge ~3 KiB per (row, head). Empty splits do not count and need
// no "empty" mark: the merge reads only the live ones.
//
// Any head_dim with head_dim / 8 a power of two up to 32 (8..256; LlamaGen uses 64, the golden
// tiny model 16): each lane owns 8 dims (one 128-bit load), a key takes head_dim / 8 lanes.
// q, k, v, out, caches 16-byte aligned (the wrapper checks).

#define ATTN_SPLIT_CHUNK 64                  // Rust: ATTN_SPLIT_CHUNK in ops/gpt.rs
#define ATTN_SPLIT_THREADS 256               // the wrapper launches exactly this many

// Rotates 8 consecutive dims (4 pairs) packed as f16 in `x`, with the tables at those dims.
DEVICE uint4 attn_rotate8(uint4 x, const float* c, const float* s) {
    u32 w[4] = {x.x, x.y, x.z, x.w};
    for (i32 i = 0; i < 4; i++) {
        f16 o[2];
        rotary_pair((f16)(w[i] & 0xffff), (f16)(w[i] >> 16), c + 2 * i, s + 2 * i, o);
        w[i] = (u32)o[0] | ((u32)o[1] << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// The dot product of one key, summed over the `lanes` lanes of a group (uniform over the block,
// so every shuffle runs with the whole warp).
DEVICE float attn_lanes_dot(const float* q, const float* k, i32 lanes) {
    float s = 0.0f;
    for (i32 i = 0; i < 8; i++) s += q[i] * k[i];
    for (i32 o = 1; o < lanes; o <<= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    return s;
}

// out f16 [rows, heads, head_dim] = softmax(q . K[0..=pos]^T) . V[0..=pos] with q, k rotated
// from qkv f16 [rows, (heads + 2 kv_heads) * head_dim] at pos = *pos_ptr; writes the rotated k
// and v into slot pos of the caches f16 [rows, kv_heads, max_len, head_dim]. cos/sin f32
// [max_len, head_dim]; partials f32 [rows, heads, splits, head_dim + 2] (m, l, acc); counters
// u32 [rows, heads], zero before the first launch and left zero by each. A position outside
// 0..max_len writes nothing.
KERNEL void decode_attention_fused(f16* out, f16* cache_k, f16* cache_v, const f16* qkv, const float* cos_t,
                                   const float* sin_t, const i32* pos_ptr, float* partials, u32* counters,
                                   i32 heads, i32 kv_heads, i32 head_dim, i32 max_len) {
    __shared__ float m_s[ATTN_SPLIT_THREADS];
    __shared__ float l_s[ATTN_SPLIT_THREADS];
    __shared__ float acc_s[ATTN_SPLIT_THREADS * 8];
    __shared__ i32 last_s;

    i32 pos = *pos_ptr;
    if (pos < 0 || pos >= max_len) return;
    i32 split = blockIdx.z;
    i32 start = split * ATTN_SPLIT_CHUNK;
    if (start > pos) return;  // an empty split: nothing to read, not counted by the merge
    i32 h = blockIdx.x;
    i32 r = blockIdx.y;
    i32 group_size = heads / kv_heads;
    i32 kvh = h / group_size;
    i32 lanes = head_dim / 8;
    i32 groups = ATTN_SPLIT_THREADS / lanes;
    i32 group = threadIdx.x / lanes;
    i32 dim0 = (threadIdx.x % lanes) * 8;
    i32 end = min(start + ATTN_SPLIT_CHUNK, pos + 1);  // slots start..end-1
    i32 cached_end = min(end, pos);                    // of which start..cached_end-1 cached
    bool holds_pos = pos < start + ATTN_SPLIT_CHUNK;

    const f16* row = qkv + (i64)r * (heads + 2 * kv_heads) * head_dim;
    const float* c = cos_t + (i64)pos * head_dim + dim0;
    const float* s = sin_t + (i64)pos * head_dim + dim0;
    float qv[8];
    attn_unpack8(attn_rotate8(*reinterpret_cast<const uint4*>(row + (i64)h * head_dim + dim0), c, s), qv);

    i64 head_base = ((i64)r * kv_heads + kvh) * max_len * head_dim + dim0;
    uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 k_new = zero;
    uint4 v_new = zero;
    if (holds_pos) {
        k_new = attn_rotate8(*reinterpret_cast<const uint4*>(row + (i64)(heads + kvh) * head_dim + dim0), c, s);
        v_new = *reinterpret_cast<const uint4*>(row + (i64)(heads + kv_heads + kvh) * head_dim + dim0);
        // One group's lanes write the slot; one q head of each kv group.
        if (group == 0 && h % group_size == 0) {
            *reinterpret_cast<uint4*>(cache_k + head_base + (i64)pos * head_dim) = k_new;
            *reinterpret_cast<uint4*>(cache_v + head_base + (i64)pos * head_dim) = v_new;
        }
    }
    const f16* kp = cache_k + head_base;
    const f16* vp = cache_v + head_base;

    float m = -__int_as_float(0x7f800000);
    float l = 0.0f;
    float acc[8];
    for (i32 i = 0; i < 8; i++) acc[i] = 0.0f;
    for (i32 base = start; base < end; base += 2 * groups) {
        i32 t0 = base + group;
        i32 t1 = t0 + groups;
        // Cache slots below pos, the new k and v at pos; all loads issued before any use.
        uint4 k0 = t0 < cached_end ? *reinterpret_cast<const uint4*>(kp + (i64)t0 * head_dim) : k_new;
        uint4 v0 = t0 < cached_end ? *reinterpret_cast<const uint4*>(vp + (i64)t0 * head_dim) : v_new;
        uint4 k1 = t1 < cached_end ? *reinterpret_cast<const uint4*>(kp + (i64)t1 * head_dim) : k_new;
        uint4 v1 = t1 < cached_end ? *reinterpret_cast<const uint4*>(vp + (i64)t1 * head_dim) : v_new;
        float kf[8], vf[8];
        attn_unpack8(k0, kf);
        float s0 = attn_lanes_dot(qv, kf, lanes);
        attn_unpack8(k1, kf);
        float s1 = attn_lanes_dot(qv, kf, lanes);
        // t < end is uniform within a group, and no shuffle follows: divergence is harmless.
        if (t0 < end) {
            attn_unpack8(v0, vf);
            attn_online_step(s0, vf, &m, &l, acc);
        }
        if (t1 < end) {
            attn_unpack8(v1, vf);
            attn_online_step(s1, vf, &m, &l, acc);
        }
    }

    // This split's partial: the groups merged as decode_attention merges them (group 0 always
    // holds slot `start`, so the max is finite and empty groups weigh exactly 0).
    if (dim0 == 0) {
        m_s[group] = m;
        l_s[group] = l;
    }
    for (i32 i = 0; i < 8; i++) acc_s[group * head_dim + dim0 + i] = acc[i];
    __syncthreads();
    i32 splits = gridDim.z;
    i32 stride = head_dim + 2;
    float* part = partials + ((i64)r * heads + h) * splits * stride;
    i32 e = threadIdx.x;
    if (e < head_dim) {
        float mx, sum, o;
        attn_merge_groups(m_s, l_s, acc_s, groups, head_dim, e, &mx, &sum, &o);
        part[(i64)split * stride + 2 + e] = o;
        if (e == 0) {
            part[(i64)split * stride] = mx;
            part[(i64)split * stride + 1] = sum;
        }
    }

    // Publish the partial, then count this split; the last of the live ones merges.
    __threadfence();
    __syncthreads();
    u32* counter = counters + (i64)r * heads + h;
    i32 live = pos / ATTN_SPLIT_CHUNK + 1;
    if (threadIdx.x == 0) last_s = atomicAdd(counter, 1u) == (u32)(live - 1);
    __syncthreads();
    if (!last_s) return;
    __threadfence();  // acquire: the other splits' partials, fenced before their count
    if (e < head_dim) {
        const volatile float* p = part;
        float mx = p[0];
        for (i32 z = 1; z < live; z++) mx = fmaxf(mx, p[(i64)z * stride]);
        float sum = 0.0f;
        float o = 0.0f;
        for (i32 z = 0; z < live; z++) {
            float w = expf(p[(i64)z * stride] - mx);
            sum += p[(i64)z * stride + 1] * w;
            o += p[(i64)z * stride + 2 + e] * w;
        }
        out[((i64)r * heads + h) * head_dim + e] = f32_to_f16(o / sum);
    }
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}
