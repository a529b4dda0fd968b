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
// Per row (one block; the row is loaded once and then kept in registers, sampler_block.cuh):
//  1. load: CFG in place into the cond row when guided, y = x / max(T, 1e-5); one block
//     reduction gives the argmax of x, the max m of y and a NaN flag. top_k == 1, a NaN, or
//     m = +-inf -> argmax (first index among equal maxima). m is also the max top-k candidate:
//     the k-th largest is <= m;
//  2. top-k: the k-th largest y by a radix descent over the order key (sampler::order_key, made
//     unsigned), 8 bits per sweep; candidates are y >= kth (float compare) and y != -inf;
//  3. the total of the candidates' weights;
//  4. top-p: the same descent over weights finds the sorted position whose cumulative weight
//     first exceeds thr = trunc(f64(top_p) * f64(total)) (VAR's rule: first reaches it, i.e.
//     exceeds thr - 1; TopPRule::strict_threshold): every candidate with a larger key is kept,
//     and of the candidates equal to it (equal weight) the first cut_rank + 1 by id, found by a
//     descent over ids (only when more tie);
//  5. draw: a descent over ids (key vocab - 1 - id, so the largest key is the smallest id) finds
//     the first kept id whose cumulative weight exceeds min(trunc(f64(u) * f64(kept total)),
//     kept total - 1): the CPU's last kept id when rounding puts the target past the end.
//
// Sweeps over a row of 16384 logits (the `sweeps` output counts them): 1 load from global
// memory (cond and uncond rows, coalesced, all loads in flight at once), then on chip: 1 weight
// total, 4 top-k (when k < vocab), 4 top-p (when top_p < 1) plus 2 for ties at the cut (rare),
// 2 draw (ids < 2^16). A descent sweep is 16 register values per thread, shared-memory histogram
// atomics and three barriers: no sort, no serial walk longer than 8 buckets per lane. (Before:
// about 9 passes over global scratch, each a chain of 16 dependent loads per thread, and u64
// weights stored and re-read: 47 us per step on an H200.)
//
// Shared memory: about 36 KiB static (under the 48 KiB default); at most 64 registers per
// thread (ptxas for sm_90 spills a few hundred bytes: to watch on the GPU). Vocab <= 2^20
// (checked by the host): weight sums stay below 2^61.

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

// Writes the row's token: tokens[req, pos] (when pos < tokens_per_image) and the next step's
// ids. Sampling row r is request row req = r / block at token pos = step + r % block. Also
// the row's sweep count.
DEVICE void emit_token(i32* tokens, i32* ids, const SampleParams* p, u32 r, u32 req, i32 pos,
                       u32 token, u32* sweeps_out, u32 sweeps) {
    if (threadIdx.x != 0) return;
    if (pos >= 0 && (u32)pos < p->tokens_per_image) {
        tokens[(u64)req * p->tokens_per_image + (u32)pos] = (i32)token;
    }
    ids[r] = (i32)token;
    if (p->cfg != 0) ids[p->n + r] = (i32)token;
    sweeps_out[r] = sweeps;
}

// x = uncond + (cond - uncond) * scale, each operation rounded (as cfg_combine on the CPU).
DEVICE float cfg_mix(float cond, float uncond, float scale) {
    return __fadd_rn(uncond, __fmul_rn(__fadd_rn(cond, -uncond), scale));
}

// Declared first to carry the launch bounds (at most 64 registers per thread, so 1024 threads
// fit one SM).
KERNEL __launch_bounds__(SAMPLER_THREADS) void sample_rows(i32* tokens, i32* ids, float* logits,
                                                           const SampleParams* params,
                                                           const i32* step_ptr, u64* scratch,
                                                           u32 vocab);

// Grid (launch rows, 1, 1), block (SAMPLER_THREADS, 1, 1). Blocks r >= params->n return.
// logits f32 [2n or n, vocab] (cond rows overwritten by the CFG result when guided);
// scratch: f32 scaled logits [gridDim.x, vocab] (read only for ids >= ROW_ITEMS *
// SAMPLER_THREADS), then u32 sweeps [gridDim.x] (passes over each row, for tests and benches).
KERNEL void sample_rows(i32* tokens, i32* ids, float* logits, const SampleParams* params,
                        const i32* step_ptr, u64* scratch, u32 vocab) {
    __shared__ RadixShared radix;
    __shared__ RowStats red_stats[SAMPLER_WARPS];
    __shared__ u64 red_u64[SAMPLER_WARPS];

    const SampleParams* p = params;
    const u32 r = blockIdx.x;
    if (r >= p->n) return;
    const u32 tid = threadIdx.x;
    for (u32 i = tid; i < 2 * HIST_COPIES * HIST_STRIDE; i += SAMPLER_THREADS) radix.hist[i] = 0;
    const i32 step = *step_ptr;
    const u32 block = p->block > 0 ? p->block : 1u;
    const u32 req = r / block;
    const i32 pos = step + (i32)(r % block);
    float* cond = logits + (u64)r * vocab;
    const float* uncond = logits + (u64)(p->n + r) * vocab;
    float* spill = (float*)scratch + (u64)r * vocab;
    u32* sweeps_out = (u32*)((float*)scratch + (u64)gridDim.x * vocab);

    // 1. Load (all of a thread's loads issued before any store: cond and uncond share a buffer),
    //    CFG (the host rule: guided at step 0, then while step - 1 <= cfg_interval or
    //    cfg_interval <= -1), temperature, statistics.
    const bool guided = step == 0 || !(p->cfg_interval > -1.0f && (float)(step - 1) > p->cfg_interval);
    const bool combine = p->cfg != 0 && guided;
    const float t = fmaxf(p->temperature, 1e-5f);
    OwnedRow row;
    row.spill = spill;
    row.vocab = vocab;
    float un[ROW_ITEMS];
#pragma unroll
    for (u32 j = 0; j < ROW_ITEMS; ++j) {
        const u32 i = tid + j * SAMPLER_THREADS;
        row.reg[j] = i < vocab ? cond[i] : 0.0f;
        un[j] = combine && i < vocab ? uncond[i] : 0.0f;
    }
    RowStats stats = row_stats_none();
#pragma unroll
    for (u32 j = 0; j < ROW_ITEMS; ++j) {
        const u32 i = tid + j * SAMPLER_THREADS;
        if (i >= vocab) continue;
        float x = row.reg[j];
        if (combine) {
            x = cfg_mix(x, un[j], p->cfg_scale);
            cond[i] = x;
        }
        row.reg[j] = __fdiv_rn(x, t);
        row_stats_add(&stats, i, x, row.reg[j]);
    }
    for (u32 i = tid + ROW_ITEMS * SAMPLER_THREADS; i < vocab; i += SAMPLER_THREADS) {
        float x = cond[i];
        if (combine) {
            x = cfg_mix(x, uncond[i], p->cfg_scale);
            cond[i] = x;
        }
        spill[i] = __fdiv_rn(x, t);
        row_stats_add(&stats, i, x, spill[i]);
    }
    u32 sweeps = 1;
    // Also orders the spill writes before the sweeps that read them.
    stats = block_row_stats(stats, red_stats);
    const u32 argmax = stats.best_i == NO_INDEX ? 0u : stats.best_i;
    const float m = stats.max_y;
    const float neg_inf = __int_as_float(0xff800000);
    const float pos_inf = __int_as_float(0x7f800000);
    if (p->top_k == 1 || stats.nan != 0 || m == neg_inf || m == pos_inf) {
        emit_token(tokens, ids, p, r, req, pos, argmax, sweeps_out, sweeps);
        return;
    }

    // 2. Top-k: keep y >= the k-th largest (ties kept), never -inf.
    const u32 k = p->top_k > 0 ? min(p->top_k, vocab) : vocab;
    float kth = neg_inf;
    if (k < vocab) {
        auto count = [](u32, float y, u32* key) -> u64 {
            *key = radix_key(y);
            return 1;
        };
        kth = from_radix_key(radix_descend(row, count, 24, (u64)(k - 1), &radix, &sweeps).key);
    }
    // A candidate's fixed-point softmax weight; 0 off the candidates.
    auto weight_of = [&](float y) -> u64 {
        return (y >= kth && y != neg_inf) ? softmax_weight(__fadd_rn(y, -m)) : 0ull;
    };

    // 3. The candidates' weight total.
    u64 sum = 0;
    for_each_owned(row, [&](u32, float y) { sum += weight_of(y); });
    sweeps += 1;
    const u64 total = block_sum_u64(sum, red_u64);

    // 4. Top-p: candidates with a key above cut_key are kept, and those equal to it with ids
    //    <= tie_last (the first cut_rank + 1 of them). Off: cut_key 0 is below every key.
    const bool nucleus = p->top_p < 1.0f;
    u32 cut_key = 0, tie_last = vocab;
    u64 kept = total;
    const int id_shift = radix_top_shift(vocab);
    if (nucleus) {
        const u64 thr0 = mass_threshold(fmaxf(p->top_p, 0.0f), total);
        const u64 thr = (p->top_p_rule != 0 && thr0 > 0) ? thr0 - 1 : thr0;
        auto by_value = [&](u32, float y, u32* key) -> u64 {
            *key = radix_key(y);
            return weight_of(y);
        };
        const RadixResult cut = radix_descend(row, by_value, 24, thr, &radix, &sweeps);
        cut_key = cut.key;
        const u64 cut_w = softmax_weight(__fadd_rn(from_radix_key(cut_key), -m));
        const u64 cut_rank = (thr - cut.above) / cut_w;
        kept = cut.above + (cut_rank + 1) * cut_w;
        if (cut.at / cut_w > cut_rank + 1) {
            auto tie_by_id = [&](u32 i, float y, u32* key) -> u64 {
                *key = vocab - 1 - i;
                // Every id with the cut's key is a candidate (same y as the one found).
                return radix_key(y) == cut_key ? 1ull : 0ull;
            };
            tie_last = vocab - 1 - radix_descend(row, tie_by_id, id_shift, cut_rank, &radix, &sweeps).key;
        }
    }

    // 5. Inverse CDF in id order.
    const u32* rk = p->row_keys != 0 ? reinterpret_cast<const u32*>(p + 1) + 3 * (u64)req : nullptr;
    const float u = rk != nullptr ? philox_uniform(rk, rk[2], (u32)pos)
                                  : philox_uniform(p->key, req, (u32)pos);
    const u64 target = min(mass_threshold(u, kept), kept - 1);
    auto kept_by_id = [&](u32 i, float y, u32* key) -> u64 {
        *key = vocab - 1 - i;
        const u64 w = weight_of(y);
        if (w == 0 || !nucleus) return w;
        const u32 yk = radix_key(y);
        return (yk > cut_key || (yk == cut_key && i <= tie_last)) ? w : 0ull;
    };
    const u32 token = vocab - 1 - radix_descend(row, kept_by_id, id_shift, target, &radix, &sweeps).key;
    emit_token(tokens, ids, p, r, req, pos, token, sweeps_out, sweeps);
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
