// Block-wide building blocks of the sampler (sampler.cu): one block of SAMPLER_THREADS threads
// owns one row of scaled logits, kept in registers, and answers questions about it with
// reductions and radix descents. Included after sampler_math.cuh, before sampler.cu.
//
// Row ownership: thread t owns ids t + j * SAMPLER_THREADS. The first ROW_ITEMS of them live in
// registers (a row of up to ROW_ITEMS * SAMPLER_THREADS = 16384 tokens never leaves the chip
// after its one load); ids beyond that come from a global `spill` copy (slow, but no model we
// know has such a vocabulary). Loads and stores of a slot j are coalesced across the block.
//
// Every sweep over the row is a `for_each_owned`; the kernel counts them (the `sweeps` output).

#define SAMPLER_THREADS 1024
#define SAMPLER_WARPS (SAMPLER_THREADS / 32)
#define ROW_ITEMS 16
#define RADIX_BUCKETS 256
// Histogram copies: lane L adds into copy L % HIST_COPIES, so at most two lanes of a warp hit
// one address (logits crowd a few buckets, and same-address atomics serialise). Each copy is a
// (lo, hi) pair of u32 arrays; the odd stride spreads a bucket's copies over banks.
#define HIST_COPIES 16
#define HIST_STRIDE (RADIX_BUCKETS + 1)
#define FULL_MASK 0xffffffffu
#define NO_INDEX 0xffffffffu

// One row as a block owns it (see the file comment).
struct OwnedRow {
    float reg[ROW_ITEMS];  // ids threadIdx.x + j * SAMPLER_THREADS, j < ROW_ITEMS
    const float* spill;    // the row's values for ids >= ROW_ITEMS * SAMPLER_THREADS
    u32 vocab;
};

// f(id, value) for every id this thread owns, in ascending id order.
template <class F>
DEVICE void for_each_owned(const OwnedRow& row, F&& f) {
#pragma unroll
    for (u32 j = 0; j < ROW_ITEMS; ++j) {
        const u32 i = threadIdx.x + j * SAMPLER_THREADS;
        if (i < row.vocab) f(i, row.reg[j]);
    }
    for (u32 i = threadIdx.x + ROW_ITEMS * SAMPLER_THREADS; i < row.vocab; i += SAMPLER_THREADS) {
        f(i, row.spill[i]);
    }
}

// ---- warp and block reductions (results in every thread) ----

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

// What the first sweep learns about a row: the argmax of the (CFG-combined) logits x (the
// first index among equal maxima, NaN ignored; best_i == NO_INDEX is "none yet"), the max of
// the scaled logits y, and whether a NaN was seen.
struct RowStats {
    float best_v;
    u32 best_i;
    float max_y;
    u32 nan;
};

DEVICE RowStats row_stats_none() {
    RowStats s;
    s.best_v = 0.0f;
    s.best_i = NO_INDEX;
    s.max_y = __int_as_float(0xff800000);  // -inf
    s.nan = 0;
    return s;
}

// Adds logit x (scaled: y) of id i; ids arrive in ascending order per thread.
DEVICE void row_stats_add(RowStats* s, u32 i, float x, float y) {
    if (x != x) {
        s->nan = 1;
        return;
    }
    if (s->best_i == NO_INDEX || x > s->best_v) {
        s->best_v = x;
        s->best_i = i;
    }
    s->max_y = fmaxf(s->max_y, y);
}

// Commutative and associative: the larger value, the smaller index among equal values.
DEVICE void row_stats_merge(RowStats* s, RowStats o) {
    if (o.best_i != NO_INDEX &&
        (s->best_i == NO_INDEX || o.best_v > s->best_v || (o.best_v == s->best_v && o.best_i < s->best_i))) {
        s->best_v = o.best_v;
        s->best_i = o.best_i;
    }
    s->max_y = fmaxf(s->max_y, o.max_y);
    s->nan |= o.nan;
}

DEVICE RowStats shfl_xor_stats(RowStats s, int m) {
    RowStats o;
    o.best_v = __shfl_xor_sync(FULL_MASK, s.best_v, m);
    o.best_i = __shfl_xor_sync(FULL_MASK, s.best_i, m);
    o.max_y = __shfl_xor_sync(FULL_MASK, s.max_y, m);
    o.nan = __shfl_xor_sync(FULL_MASK, s.nan, m);
    return o;
}

// One block reduction for all four statistics; `red` holds one entry per warp.
DEVICE RowStats block_row_stats(RowStats s, RowStats* red) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int m = 16; m > 0; m >>= 1) row_stats_merge(&s, shfl_xor_stats(s, m));
    if (lane == 0) red[warp] = s;
    __syncthreads();
    s = red[lane];
    for (int m = 16; m > 0; m >>= 1) row_stats_merge(&s, shfl_xor_stats(s, m));
    __syncthreads();
    return s;
}

// ---- radix descent: the k-th largest key by mass, 8 bits per sweep ----

// Shared state of `radix_descend`. `hist` is all zero between descents (the kernel zeroes it
// once; each sweep zeroes what it used).
struct RadixShared {
    u32 hist[2 * HIST_COPIES * HIST_STRIDE];  // copy c: lo words at 2c * STRIDE, hi at (2c + 1)
    u64 bucket[RADIX_BUCKETS];
    u32 key;
    u64 above;
    u64 at;
};

// A u64 add into a (lo, hi) pair of u32 shared counters with u32 atomics only: the thread whose
// add wraps the low word carries into the high word, so hi * 2^32 + lo is the exact sum.
DEVICE void atomic_add_u64_split(u32* lo, u32* hi, u64 v) {
    u32 vlo = (u32)v, vhi = (u32)(v >> 32);
    u32 old = atomicAdd(lo, vlo);
    if (old + vlo < old) vhi += 1;
    if (vhi != 0) atomicAdd(hi, vhi);
}

// The answer of a descent: `key`, the mass of larger keys (`above`) and of `key` itself (`at`).
struct RadixResult {
    u32 key;
    u64 above;
    u64 at;
};

// The largest key v with mass_ge(v) > thr, where mass_ge(v) sums mass over the row's ids whose
// key is >= v; `key_mass(i, y, &key)` gives an id's key and mass (0: takes no part). Needs
// mass_ge(0) > thr (otherwise the answer is some key of the row, not a defined one). Keys must
// be below 2^(top_shift + 8): one sweep per 8 bits from `top_shift` down to 0. Adds the sweeps
// to *sweeps.
template <class KeyMass>
DEVICE RadixResult radix_descend(const OwnedRow& row, KeyMass key_mass, int top_shift, u64 thr,
                                 RadixShared* sh, u32* sweeps) {
    const u32 tid = threadIdx.x, lane = tid & 31;
    u32* lo_words = sh->hist + 2 * (lane % HIST_COPIES) * HIST_STRIDE;
    u32* hi_words = lo_words + HIST_STRIDE;
    // Only the key prefix stays in registers across sweeps (register pressure: the row takes
    // ROW_ITEMS of them); the masses live in shared memory.
    // (Written only by the walks, after two barriers of a sweep: every thread has read the
    // previous descent's answer by then.)
    u32 prefix = 0;
    for (int shift = top_shift; shift >= 0; shift -= 8) {
        const u32 high = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
        for_each_owned(row, [&](u32 i, float y) {
            u32 key;
            const u64 w = key_mass(i, y, &key);
            if (w == 0 || (key & high) != prefix) return;
            const u32 d = (key >> shift) & (RADIX_BUCKETS - 1);
            atomic_add_u64_split(lo_words + d, hi_words + d, w);
        });
        *sweeps += 1;
        __syncthreads();
        if (tid < RADIX_BUCKETS) {
            u64 sum = 0;
            for (int c = 0; c < HIST_COPIES; ++c) {
                u32* lo = sh->hist + 2 * c * HIST_STRIDE + tid;
                sum += ((u64)lo[HIST_STRIDE] << 32) + lo[0];
                lo[0] = 0;
                lo[HIST_STRIDE] = 0;
            }
            sh->bucket[tid] = sum;
        }
        __syncthreads();
        if (tid < 32) {
            // Lane L owns buckets 8L..8L+7; walking down from the top, the answer's bucket is the
            // highest d whose mass plus everything above it exceeds thr.
            const u32 per = RADIX_BUCKETS / 32;
            u64 own = 0;
            for (u32 j = 0; j < per; ++j) own += sh->bucket[lane * per + j];
            u64 suffix = own;
            for (int d = 1; d < 32; d <<= 1) {
                u64 o = shfl_down_u64(suffix, d);
                if (lane + d < 32) suffix += o;
            }
            const u64 above = shift == top_shift ? 0ull : sh->above;
            u64 cum = above + (suffix - own);
            int found = -1;
            u64 found_above = 0;
            for (int b = (int)(lane * per + per - 1); b >= (int)(lane * per); --b) {
                if (found < 0 && cum + sh->bucket[b] > thr) {
                    found = b;
                    found_above = cum;
                }
                cum += sh->bucket[b];
            }
            int best = found;
            for (int m = 16; m > 0; m >>= 1) best = max(best, __shfl_xor_sync(FULL_MASK, best, m));
            if (found >= 0 && found == best) {
                sh->key = prefix | ((u32)found << shift);
                sh->above = found_above;
                sh->at = sh->bucket[found];
            } else if (best < 0 && lane == 0) {
                // Precondition broken: keep a key of the row rather than garbage.
                sh->key = prefix;
                sh->at = 0;
            }
        }
        __syncthreads();
        prefix = sh->key;
    }
    RadixResult res;
    res.key = prefix;
    res.above = sh->above;
    res.at = sh->at;
    return res;
}

// The top_shift for keys below `count` (at least 1): the highest multiple of 8 below their
// bit length.
DEVICE int radix_top_shift(u32 count) {
    int bits = 0;
    for (u32 v = count - 1; v != 0; v >>= 1) ++bits;
    return bits > 0 ? 8 * ((bits - 1) / 8) : 0;
}
