// CFG + sampling on the device: one block of SAMPLER_THREADS threads per request row, returning
// exactly the token `sampler::sample_token_with` (runtime/src/sampler.rs) returns on the CPU for
// the same logits, options, top-p rule and Philox (seed, stream = request row, counter = token
// position). LlamaGen samples one token per request row (block 1, position = step); VAR samples a
// scale's whole token block: sampling row r is request row r / block at position
// step + r % block. Philox and the exactly
// specified arithmetic are in sampler_math.cuh, included before this file.
//
// Bit-identity rests on the same exactly specified arithmetic on both sides (see the module doc
// of sampler.rs; the two files change together): this file is compiled with --fmad=false and
// uses only correctly rounded f32/f64 operations; exp is `portable_exp` (Cody-Waite reduction +
// polynomial, same constants and operation order as the Rust one); softmax weights are u64 fixed
// point `trunc(exp(y - m) * 2^40)`, so every sum is an integer sum and does not depend on the
// order of accumulation.
//
// Per row (all phases block-wide; scratch holds the row's scaled logits y f32 and weights u64):
//  1. CFG in place into the cond row when guided, y = x / max(T, 1e-5), NaN flag, argmax;
//     top_k == 1 or a NaN -> argmax (first index among equal maxima);
//  2. top-k: the k-th largest y by an exact radix select over the order key (sampler::order_key,
//     made unsigned), 8 bits per pass; candidates are y >= kth and y != -inf;
//  3. m = max candidate (+-inf -> argmax); 4. weights and their total;
//  5. top-p: the same radix descent over weights finds the sorted position whose cumulative
//     weight first exceeds thr = trunc(f64(top_p) * f64(total)) (VAR's rule: first reaches it,
//     i.e. exceeds thr - 1; TopPRule::strict_threshold): every candidate with a larger
//     key is kept, and of the candidates equal to it (equal weight) the first ones by id;
//  6. draw: first kept id (index order) whose cumulative weight exceeds
//     trunc(f64(u) * f64(kept total)), by a block scan over contiguous id chunks.
//
// Shared memory: 18.6 KiB static (under the 48 KiB default); at most 64 registers per thread.
// Vocab <= 2^20 (checked by the host): weight sums stay below 2^61.

#define SAMPLER_THREADS 1024
#define SAMPLER_WARPS (SAMPLER_THREADS / 32)
#define RADIX_BUCKETS 256
// Lanes spread their histogram atomics over this many copies (logits crowd a few buckets, and
// lanes of a warp adding to one address serialise); the odd stride puts the copies of a bucket
// in different banks.
#define HIST_COPIES 8
#define HIST_STRIDE (RADIX_BUCKETS + 1)
#define FULL_MASK 0xffffffffu
#define NO_INDEX 0xffffffffu

// Mirrors `SampleParams` in ops/sampler.rs (repr(C), 52 bytes). With row_keys != 0 a table of
// n entries [seed lo, seed hi, stream] (u32 each) follows the struct: request row r draws from
// Philox(seed).uniform(stream, pos) instead of (key, r) (a service's merged batch).
struct SampleParams {
    float temperature;  // raw; max(T, 1e-5) is applied here as on the CPU
    u32 top_k;          // 0 = off
    float top_p;        // >= 1 = off
    float cfg_scale;
    float cfg_interval;
    u32 key[2];         // Philox key = [seed lo, seed hi]
    u32 n;              // request rows; rows n..2n are their uncond rows when cfg != 0
    u32 cfg;
    u32 tokens_per_image;
    u32 row_keys;       // 1 = a per-row [seed lo, seed hi, stream] table follows
    u32 top_p_rule;     // 0: LlamaGen's (cum > thr), 1: VAR's (cum >= thr)
    u32 block;          // sampling rows per request row (VAR: a scale's tokens); 0 counts as 1
};

// ---- block-wide helpers (SAMPLER_THREADS threads; results in every thread) ----

DEVICE u64 shfl_xor_u64(u64 v, int mask) {
    u32 lo = __shfl_xor_sync(FULL_MASK, (u32)v, mask);
    u32 hi = __shfl_xor_sync(FULL_MASK, (u32)(v >> 32), mask);
    return ((u64)hi << 32) | lo;
}

DEVICE u64 shfl_down_u64(u64 v, int delta) {
    u32 lo = __shfl_down_sync(FULL_MASK, (u32)v, delta);
    u32 hi = __shfl_down_sync(FULL_MASK, (u32)(v >> 32), delta);
    return ((u64)hi << 32) | lo;
}

DEVICE u64 shfl_idx_u64(u64 v, int lane) {
    u32 lo = __shfl_sync(FULL_MASK, (u32)v, lane);
    u32 hi = __shfl_sync(FULL_MASK, (u32)(v >> 32), lane);
    return ((u64)hi << 32) | lo;
}

// `red` holds one entry per warp; reusable when the call returns.
DEVICE u64 block_sum_u64(u64 v, u64* red) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m = 16; m > 0; m >>= 1) v += shfl_xor_u64(v, m);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[lane];
    for (int m = 16; m > 0; m >>= 1) v += shfl_xor_u64(v, m);
    __syncthreads();
    return v;
}

DEVICE float block_max_f32(float v, float* red) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[lane];
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
    __syncthreads();
    return v;
}

// Keeps in (v, i) the larger value, the smaller index among equal values; i == NO_INDEX is
// "no value" (sampler::argmax ignores NaN). Commutative and associative.
DEVICE void argmax_merge(float* v, u32* i, float ov, u32 oi) {
    if (oi == NO_INDEX) return;
    if (*i == NO_INDEX || ov > *v || (ov == *v && oi < *i)) {
        *v = ov;
        *i = oi;
    }
}

DEVICE u32 block_argmax(float v, u32 i, float* red_v, u32* red_i) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m = 16; m > 0; m >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, m);
        u32 oi = __shfl_xor_sync(FULL_MASK, i, m);
        argmax_merge(&v, &i, ov, oi);
    }
    if (lane == 0) {
        red_v[warp] = v;
        red_i[warp] = i;
    }
    __syncthreads();
    v = red_v[lane];
    i = red_i[lane];
    for (int m = 16; m > 0; m >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, m);
        u32 oi = __shfl_xor_sync(FULL_MASK, i, m);
        argmax_merge(&v, &i, ov, oi);
    }
    __syncthreads();
    return i == NO_INDEX ? 0u : i;
}

// Inclusive scan of (c, s) over the lanes of a warp.
DEVICE void warp_inclusive_scan(u32* c, u64* s) {
    const int lane = threadIdx.x & 31;
    for (int d = 1; d < 32; d <<= 1) {
        int src = lane >= d ? lane - d : lane;
        u32 oc = __shfl_sync(FULL_MASK, *c, src);
        u64 os = shfl_idx_u64(*s, src);
        if (lane >= d) {
            *c += oc;
            *s += os;
        }
    }
}

// Exclusive prefix sums of (c, s) in thread order; `red_c`/`red_s` hold one entry per warp.
DEVICE void block_exclusive_scan(u32 c, u64 s, u32* red_c, u64* red_s, u32* ex_c, u64* ex_s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u32 ic = c;
    u64 is = s;
    warp_inclusive_scan(&ic, &is);
    if (lane == 31) {
        red_c[warp] = ic;
        red_s[warp] = is;
    }
    __syncthreads();
    u32 wc = red_c[lane];
    u64 ws = red_s[lane];
    warp_inclusive_scan(&wc, &ws);
    int src = warp > 0 ? (int)warp - 1 : 0;
    u32 pc = __shfl_sync(FULL_MASK, wc, src);
    u64 ps = shfl_idx_u64(ws, src);
    if (warp == 0) {
        pc = 0;
        ps = 0;
    }
    *ex_c = pc + ic - c;
    *ex_s = ps + is - s;
    __syncthreads();
}

// A u64 add into a (lo, hi) pair of u32 shared counters with u32 atomics only: the thread whose
// add wraps the low word carries into the high word, so hi * 2^32 + lo is the exact sum.
DEVICE void atomic_add_u64_split(u32* lo, u32* hi, u64 v) {
    u32 vlo = (u32)v, vhi = (u32)(v >> 32);
    u32 old = atomicAdd(lo, vlo);
    if (old + vlo < old) vhi += 1;
    if (vhi != 0) atomicAdd(hi, vhi);
}

// The largest radix key v with mass_ge(v) > thr, where mass_ge(v) sums, over elements with
// radix_key(y[i]) >= v, weight 1 (`weights == 0`: counting, for top-k) or weights[i] (top-p;
// zero weights take no part). Needs mass_ge(smallest key) > thr. Leaves v in *key_out and
// mass_gt(v), the mass of larger keys, in *above_out (both shared).
DEVICE void radix_descend(const float* y, const u64* weights, u32 vocab, u64 thr, u32* hist_lo,
                          u32* hist_hi, u64* bucket, u32* key_out, u64* above_out) {
    const u32 tid = threadIdx.x, lane = tid & 31;
    if (tid == 0) {
        *key_out = 0;
        *above_out = 0;
    }
    const u32 copy = (lane % HIST_COPIES) * HIST_STRIDE;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 i = tid; i < HIST_COPIES * HIST_STRIDE; i += blockDim.x) {
            hist_lo[i] = 0;
            hist_hi[i] = 0;
        }
        __syncthreads();
        const u32 prefix = *key_out;
        const u32 high = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (u32 i = tid; i < vocab; i += blockDim.x) {
            u64 w = weights ? weights[i] : 1ull;
            if (w == 0) continue;
            u32 key = radix_key(y[i]);
            if ((key & high) != prefix) continue;
            u32 d = (key >> shift) & (RADIX_BUCKETS - 1);
            atomic_add_u64_split(&hist_lo[copy + d], &hist_hi[copy + d], w);
        }
        __syncthreads();
        if (tid < RADIX_BUCKETS) {
            u64 sum = 0;
            for (int c = 0; c < HIST_COPIES; ++c) {
                u32 at = c * HIST_STRIDE + tid;
                sum += ((u64)hist_hi[at] << 32) + hist_lo[at];
            }
            bucket[tid] = sum;
        }
        __syncthreads();
        if (tid < 32) {
            // Lane L owns buckets 8L..8L+7; walking down from the top, the answer's bucket is the
            // highest d whose mass plus everything above it exceeds thr.
            const u32 per = RADIX_BUCKETS / 32;
            u64 own = 0;
            for (u32 j = 0; j < per; ++j) own += bucket[lane * per + j];
            u64 suffix = own;
            for (int d = 1; d < 32; d <<= 1) {
                u64 o = shfl_down_u64(suffix, d);
                if (lane + d < 32) suffix += o;
            }
            u64 cum = *above_out + (suffix - own);
            int found = -1;
            u64 found_above = 0;
            for (int b = (int)(lane * per + per - 1); b >= (int)(lane * per); --b) {
                if (found < 0 && cum + bucket[b] > thr) {
                    found = b;
                    found_above = cum;
                }
                cum += bucket[b];
            }
            int best = found;
            for (int m = 16; m > 0; m >>= 1) best = max(best, __shfl_xor_sync(FULL_MASK, best, m));
            if (found >= 0 && found == best) {
                *key_out = prefix | ((u32)found << shift);
                *above_out = found_above;
            }
        }
        __syncthreads();
    }
}

// Writes the row's token: tokens[req, pos] (when pos < tokens_per_image) and the next step's
// ids. Sampling row r is request row req = r / block at token pos = step + r % block.
DEVICE void emit_token(i32* tokens, i32* ids, const SampleParams* p, u32 r, u32 req, i32 pos, u32 token) {
    if (threadIdx.x != 0) return;
    if (pos >= 0 && (u32)pos < p->tokens_per_image) {
        tokens[(u64)req * p->tokens_per_image + (u32)pos] = (i32)token;
    }
    ids[r] = (i32)token;
    if (p->cfg != 0) ids[p->n + r] = (i32)token;
}

// Declared first to carry the launch bounds (at most 64 registers per thread, so 1024 threads
// fit one SM).
KERNEL __launch_bounds__(SAMPLER_THREADS) void sample_rows(i32* tokens, i32* ids, float* logits,
                                                           const SampleParams* params,
                                                           const i32* step_ptr, u64* scratch,
                                                           u32 vocab);

// Grid (launch rows, 1, 1), block (SAMPLER_THREADS, 1, 1). Blocks r >= params->n return.
// logits f32 [2n or n, vocab] (cond rows overwritten by the CFG result when guided);
// scratch: u64 weights [gridDim.x, vocab], then f32 scaled logits [gridDim.x, vocab].
KERNEL void sample_rows(i32* tokens, i32* ids, float* logits, const SampleParams* params,
                        const i32* step_ptr, u64* scratch, u32 vocab) {
    __shared__ u32 hist_lo[HIST_COPIES * HIST_STRIDE];
    __shared__ u32 hist_hi[HIST_COPIES * HIST_STRIDE];
    __shared__ u64 bucket[RADIX_BUCKETS];
    __shared__ u64 red_u64[SAMPLER_WARPS];
    __shared__ u32 red_u32[SAMPLER_WARPS];
    __shared__ float red_f32[SAMPLER_WARPS];
    __shared__ u32 row_key[1];
    __shared__ u64 row_above[1];
    __shared__ u32 row_token[1];

    const SampleParams* p = params;
    const u32 r = blockIdx.x;
    if (r >= p->n) return;
    const u32 tid = threadIdx.x;
    const i32 step = *step_ptr;
    const u32 block = p->block > 0 ? p->block : 1u;
    const u32 req = r / block;
    const i32 pos = step + (i32)(r % block);
    float* cond = logits + (u64)r * vocab;
    const float* uncond = logits + (u64)(p->n + r) * vocab;
    u64* w = scratch + (u64)r * vocab;
    float* y = (float*)(scratch + (u64)gridDim.x * vocab) + (u64)r * vocab;

    // 1. CFG (the host rule: guided at step 0, then while step - 1 <= cfg_interval or
    //    cfg_interval <= -1), temperature, NaN flag, argmax.
    const bool guided = step == 0 || !(p->cfg_interval > -1.0f && (float)(step - 1) > p->cfg_interval);
    const bool combine = p->cfg != 0 && guided;
    const float t = fmaxf(p->temperature, 1e-5f);
    u32 nan = 0;
    float best_v = 0.0f;
    u32 best_i = NO_INDEX;
    for (u32 i = tid; i < vocab; i += blockDim.x) {
        float x = cond[i];
        if (combine) {
            float u = uncond[i];
            x = __fadd_rn(u, __fmul_rn(__fadd_rn(x, -u), p->cfg_scale));
            cond[i] = x;
        }
        if (x != x) {
            nan = 1;
        } else if (best_i == NO_INDEX || x > best_v) {
            best_v = x;
            best_i = i;
        }
        y[i] = __fdiv_rn(x, t);
    }
    const u32 argmax = block_argmax(best_v, best_i, red_f32, red_u32);
    nan = (u32)block_sum_u64(nan, red_u64);
    if (p->top_k == 1 || nan != 0) {
        emit_token(tokens, ids, p, r, req, pos, argmax);
        return;
    }

    // 2. Top-k: keep y >= the k-th largest (ties kept), never -inf.
    const float neg_inf = __int_as_float(0xff800000);
    const float pos_inf = __int_as_float(0x7f800000);
    const u32 k = p->top_k > 0 ? min(p->top_k, vocab) : vocab;
    float kth = neg_inf;
    if (k < vocab) {
        radix_descend(y, 0, vocab, (u64)(k - 1), hist_lo, hist_hi, bucket, row_key, row_above);
        kth = from_radix_key(row_key[0]);
    }

    // 3. The max candidate; none, or +inf, is degenerate.
    float m = neg_inf;
    for (u32 i = tid; i < vocab; i += blockDim.x) {
        float v = y[i];
        if (v >= kth && v != neg_inf) m = fmaxf(m, v);
    }
    m = block_max_f32(m, red_f32);
    if (m == neg_inf || m == pos_inf) {
        emit_token(tokens, ids, p, r, req, pos, argmax);
        return;
    }

    // 4. Fixed-point softmax weights (0 off the candidates) and their total.
    u64 sum = 0;
    for (u32 i = tid; i < vocab; i += blockDim.x) {
        float v = y[i];
        u64 wi = (v >= kth && v != neg_inf) ? softmax_weight(__fadd_rn(v, -m)) : 0ull;
        w[i] = wi;
        sum += wi;
    }
    const u64 total = block_sum_u64(sum, red_u64);

    // 5. Top-p: candidates with a key above cut_key are kept, and the first cut_rank + 1 (by id)
    //    of those equal to it. Off: cut_key 0 is below every candidate's key.
    const bool nucleus = p->top_p < 1.0f;
    u32 cut_key = 0;
    u64 cut_rank = 0, cut_w = 0, kept = total;
    if (nucleus) {
        const u64 thr0 = mass_threshold(fmaxf(p->top_p, 0.0f), total);
        const u64 thr = (p->top_p_rule != 0 && thr0 > 0) ? thr0 - 1 : thr0;
        radix_descend(y, w, vocab, thr, hist_lo, hist_hi, bucket, row_key, row_above);
        cut_key = row_key[0];
        const u64 above = row_above[0];
        cut_w = softmax_weight(__fadd_rn(from_radix_key(cut_key), -m));
        cut_rank = (thr - above) / cut_w;
        kept = above + (cut_rank + 1) * cut_w;
    }

    // 6. Inverse CDF in index order over contiguous id chunks, one per thread.
    const u32* rk = p->row_keys != 0 ? reinterpret_cast<const u32*>(p + 1) + 3 * (u64)req : nullptr;
    const float u = rk != nullptr ? philox_uniform(rk, rk[2], (u32)pos)
                                  : philox_uniform(p->key, req, (u32)pos);
    const u64 target = mass_threshold(u, kept);
    const u32 chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const u32 lo = min(tid * chunk, vocab), hi = min(lo + chunk, vocab);
    u32 ties = 0;
    u64 mass = 0;
    for (u32 i = lo; i < hi; ++i) {
        u64 wi = w[i];
        if (wi == 0) continue;
        u32 key = nucleus ? radix_key(y[i]) : 1u;
        if (key > cut_key) {
            mass += wi;
        } else if (key == cut_key) {
            ++ties;
        }
    }
    if (tid == 0) row_token[0] = argmax;  // replaced below; kept only if rounding went astray
    u32 ties_before;
    u64 cum;
    block_exclusive_scan(ties, mass, red_u32, red_u64, &ties_before, &cum);
    cum += cut_w * min((u64)ties_before, cut_rank + 1);
    if (cum <= target) {
        u64 rank = ties_before;
        for (u32 i = lo; i < hi; ++i) {
            u64 wi = w[i];
            if (wi == 0) continue;
            u32 key = nucleus ? radix_key(y[i]) : 1u;
            if (key < cut_key) continue;
            if (key == cut_key && rank++ > cut_rank) continue;
            cum += wi;
            if (cum > target) {
                row_token[0] = i;
                break;
            }
        }
    }
    __syncthreads();
    emit_token(tokens, ids, p, r, req, pos, row_token[0]);
}

// *pos += 1; *step += 1 (one thread; ends every captured decode step).
KERNEL void sampler_advance(i32* pos, i32* step) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        *pos += 1;
        *step += 1;
    }
}

// Test hook: Philox4x32-10 blocks. in: [count][6] = counter words 0..3, key words 0..1;
// out: [count][4].
KERNEL void sampler_philox_blocks(const u32* in, u32* out, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const u32* q = in + 6 * (u64)i;
    uint4 o = philox4x32_10(make_uint4(q[0], q[1], q[2], q[3]), make_uint2(q[4], q[5]));
    u32* d = out + 4 * (u64)i;
    d[0] = o.x;
    d[1] = o.y;
    d[2] = o.z;
    d[3] = o.w;
}

// Test hook: portable_exp(x[i]) and softmax_weight(x[i]) for [count] inputs.
KERNEL void sampler_exp_weights(const float* x, float* e, u64* weights, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    e[i] = portable_exp(x[i]);
    weights[i] = softmax_weight(x[i]);
}
