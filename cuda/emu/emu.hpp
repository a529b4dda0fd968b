// The host emulation of the CUDA kernel-language subset our kernels use (see
// cuda/src/kernels/mod.rs and prelude.cuh, whose names this header defines for
// the host). build.rs includes each kernel file after this header, inside a namespace of its own,
// and compiles it with g++ (C++20).
//
// Execution model (emu_runtime.cpp): blocks run one at a time; the threads of a block are
// cooperative fibers on the launching OS thread, switched only inside __syncthreads and warp
// collectives (shuffles, votes, __syncwarp). Launches are serialised by a global mutex, so
// `__shared__` is plain `static` storage and the built-in index variables are globals that the
// scheduler sets before resuming a fiber. Atomics are plain read-modify-writes (nothing runs
// concurrently); spin-waiting on another thread or block never terminates and is not supported.
#pragma once

#include <math.h>  // expf, logf, ... and isnan/isinf in the global namespace, as CUDA has them
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <limits>
#include <type_traits>
#include <utility>

#define LLAMAGEN_EMU 1

// ---- qualifiers ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory lives in one ELF section, which the scheduler fills with 0xff bytes (NaN
// as f32, -1 as an integer) before every block, so a kernel reading shared memory it did not
// write sees garbage, as on a GPU, rather than the previous block's values. (build.rs wraps each
// kernel file in an anonymous namespace: internal linkage keeps these statics out of COMDAT
// groups, which a named section cannot mix with.)
#define __shared__ static __attribute__((section("llamagen_emu_shared")))
#define __constant__
#define __launch_bounds__(...)
// __restrict__ is already a g++ keyword.

// ---- prelude.cuh names -----------------------------------------------------------------------
typedef unsigned short f16;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// `static` (not extern "C"): each kernel file is its own translation unit and namespace, and the
// registration table that build.rs appends refers to the kernels directly.
#define KERNEL static
#define DEVICE inline
#define DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_shared())

// ---- built-in variables and vector types -----------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

struct __attribute__((aligned(8))) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(4))) ushort2 { unsigned short x, y; };
struct __attribute__((aligned(8))) ushort4 { unsigned short x, y, z, w; };

inline int2 make_int2(int x, int y) { return {x, y}; }
inline int3 make_int3(int x, int y, int z) { return {x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline ushort2 make_ushort2(unsigned short x, unsigned short y) { return {x, y}; }
inline ushort4 make_ushort4(unsigned short x, unsigned short y, unsigned short z,
                            unsigned short w) {
    return {x, y, z, w};
}

// ---- scheduler interface (emu_runtime.cpp) ---------------------------------------------------
namespace emu {
// Which warp collective a lane waits in; lanes of one warp must all be in the same kind.
enum class Collective : int { Shuffle = 1, Vote = 2, SyncWarp = 3 };

// Start of the launch's dynamic shared memory (16-byte aligned, `shared_bytes` long).
unsigned char* dyn_shared();
// Waits until every live thread of the block reaches a barrier; errors (ending the launch) when
// threads exited or wait at another barrier.
void block_barrier(const char* file, int line);
// Publishes `value` for the calling lane, waits until all 32 lanes of the warp did, and returns
// the 32 published values (indexed by lane; valid until the warp's next collective but one).
const uint64_t* warp_exchange(uint64_t value, Collective kind, unsigned mask, const char* file,
                              int line);
// The calling thread's lane (0..31).
unsigned lane_id();
// Ends the launch with an error (from kernel code, for unsupported arguments).
[[noreturn]] void kernel_fail(const char* file, int line, const char* message);

enum class ShflMode { Idx, Up, Down, Xor };

template <class T>
inline T shuffle(unsigned mask, T var, int arg, int width, ShflMode mode, const char* file,
                 int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                  "emulated shuffles move values of at most 8 bytes");
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        kernel_fail(file, line, "shuffle width must be a power of two <= 32");
    }
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    const uint64_t* lanes = warp_exchange(bits, Collective::Shuffle, mask, file, line);
    const int lane = int(lane_id());
    const int base = lane & ~(width - 1);
    int src = lane;
    switch (mode) {
        case ShflMode::Idx: src = base + (arg & (width - 1)); break;
        case ShflMode::Up: src = (lane - arg >= base) ? lane - arg : lane; break;
        case ShflMode::Down: src = (lane + arg < base + width) ? lane + arg : lane; break;
        case ShflMode::Xor: {
            // A partner in a later segment yields the caller's own value (CUDA's rule).
            const int x = lane ^ arg;
            src = (x < base + width && x >= 0 && x < 32) ? x : lane;
            break;
        }
    }
    T out;
    memcpy(&out, &lanes[src], sizeof(T));
    return out;
}
}  // namespace emu

// ---- synchronisation ---------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::emu::block_barrier(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::emu::warp_exchange(0, ::emu::Collective::SyncWarp, mask, file, line);
}
// Plain memory on one OS thread: fences only need to stop the compiler from reordering.
inline void __threadfence() { asm volatile("" ::: "memory"); }
inline void __threadfence_block() { asm volatile("" ::: "memory"); }
// Read-only cache loads are plain loads on the host.
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
// Valid in the supported subset only, where every lane of the warp is active.
inline unsigned __activemask() { return 0xffffffffu; }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::emu::shuffle(mask, var, src_lane, width, ::emu::ShflMode::Idx, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::emu::shuffle(mask, var, int(delta), width, ::emu::ShflMode::Up, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::emu::shuffle(mask, var, int(delta), width, ::emu::ShflMode::Down, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::emu::shuffle(mask, var, lane_mask, width, ::emu::ShflMode::Xor, file, line);
}

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    const uint64_t* lanes =
        ::emu::warp_exchange(pred != 0, ::emu::Collective::Vote, mask, file, line);
    unsigned bits = 0;
    for (int i = 0; i < 32; i++) bits |= unsigned(lanes[i] != 0) << i;
    return bits;
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) == 0xffffffffu;
}

// ---- bit casts, integer and float intrinsics, fp16 (emu_math.hpp) ---------------------------
#include "emu_math.hpp"

// ---- tensor-core mma (prelude.cuh's contract) -------------------------------------------------
inline u32 pack_f16x2(f16 lo, f16 hi) { return u32(lo) | (u32(hi) << 16); }

// mma.sync.m16n8k16 (f16 operands, f32 accumulation) as a warp collective: the lanes publish
// their A and B fragments, and each lane computes its four D elements from the whole tiles. The
// products are exact in double and added to d in double, then rounded once (the hardware keeps
// at least f32 precision inside the instruction).
inline void mma_16816(float* d, const u32* a, const u32* b, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    // A[16][16] and B[16][8] as f16 bits, gathered from the lanes' fragments.
    f16 A[16][16];
    f16 B[16][8];
    uint64_t mine[3] = {uint64_t(a[0]) | (uint64_t(a[1]) << 32),
                        uint64_t(a[2]) | (uint64_t(a[3]) << 32),
                        uint64_t(b[0]) | (uint64_t(b[1]) << 32)};
    uint64_t all[3][32];
    for (int x = 0; x < 3; x++) {
        const uint64_t* lanes =
            ::emu::warp_exchange(mine[x], ::emu::Collective::Shuffle, 0xffffffffu, file, line);
        memcpy(all[x], lanes, sizeof all[x]);
    }
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane >> 2, t = lane & 3;
        const u32 ra[4] = {u32(all[0][lane]), u32(all[0][lane] >> 32), u32(all[1][lane]),
                           u32(all[1][lane] >> 32)};
        for (int i = 0; i < 4; i++) {
            const int row = g + (i & 1) * 8, col = 2 * t + (i >> 1) * 8;
            A[row][col] = f16(ra[i] & 0xffff);
            A[row][col + 1] = f16(ra[i] >> 16);
        }
        const u32 rb[2] = {u32(all[2][lane]), u32(all[2][lane] >> 32)};
        for (int i = 0; i < 2; i++) {
            B[2 * t + i * 8][g] = f16(rb[i] & 0xffff);
            B[2 * t + i * 8 + 1][g] = f16(rb[i] >> 16);
        }
    }
    const int lane = int(::emu::lane_id()), g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
        double acc = d[i];
        for (int k = 0; k < 16; k++) acc += double(f16_to_f32(A[row][k])) * f16_to_f32(B[k][col]);
        d[i] = float(acc);
    }
}

// ---- atomics: plain read-modify-write (fibers never run concurrently) -------------------------
inline int atomicAdd(int* p, int v) { int o = *p; *p = int(unsigned(o) + unsigned(v)); return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p = o + v; return o;
}
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
inline int atomicSub(int* p, int v) { int o = *p; *p = int(unsigned(o) - unsigned(v)); return o; }
inline unsigned atomicSub(unsigned* p, unsigned v) { unsigned o = *p; *p = o - v; return o; }
inline int atomicMax(int* p, int v) { int o = *p; *p = o > v ? o : v; return o; }
inline unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; *p = o > v ? o : v; return o; }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p = o > v ? o : v; return o;
}
inline int atomicMin(int* p, int v) { int o = *p; *p = o < v ? o : v; return o; }
inline unsigned atomicMin(unsigned* p, unsigned v) { unsigned o = *p; *p = o < v ? o : v; return o; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p = o < v ? o : v; return o;
}
inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    unsigned o = *p; if (o == cmp) *p = v; return o;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp,
                                    unsigned long long v) {
    unsigned long long o = *p; if (o == cmp) *p = v; return o;
}
inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
inline unsigned atomicExch(unsigned* p, unsigned v) { unsigned o = *p; *p = v; return o; }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p = v; return o;
}
inline float atomicExch(float* p, float v) { float o = *p; *p = v; return o; }
inline int atomicAnd(int* p, int v) { int o = *p; *p = o & v; return o; }
inline unsigned atomicAnd(unsigned* p, unsigned v) { unsigned o = *p; *p = o & v; return o; }
inline int atomicOr(int* p, int v) { int o = *p; *p = o | v; return o; }
inline unsigned atomicOr(unsigned* p, unsigned v) { unsigned o = *p; *p = o | v; return o; }
inline int atomicXor(int* p, int v) { int o = *p; *p = o ^ v; return o; }
inline unsigned atomicXor(unsigned* p, unsigned v) { unsigned o = *p; *p = o ^ v; return o; }
inline unsigned atomicInc(unsigned* p, unsigned v) { unsigned o = *p; *p = o >= v ? 0 : o + 1; return o; }
inline unsigned atomicDec(unsigned* p, unsigned v) {
    unsigned o = *p; *p = (o == 0 || o > v) ? v : o - 1; return o;
}

// ---- registration (build.rs generates one table per kernel file) ------------------------------
namespace emu {
// Kernel parameter kinds, as `KArg` passes them: 0 pointer, 1 i32, 2 u32, 3 f32.
template <class T>
constexpr unsigned char param_kind() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) return 0;
    else if constexpr (std::is_same_v<U, int>) return 1;
    else if constexpr (std::is_same_v<U, unsigned>) return 2;
    else if constexpr (std::is_same_v<U, float>) return 3;
    else return 255;  // not passable as a KArg
}

template <class F>
struct Kernel;
template <class... P>
struct Kernel<void (*)(P...)> {
    static constexpr unsigned char kinds[] = {param_kind<P>()..., 255};
    static constexpr unsigned arity = sizeof...(P);

    template <auto K>
    static void run(void* const* args) {
        call<K>(args, std::index_sequence_for<P...>{});
    }

   private:
    template <class T>
    static T load(const void* p) {
        std::remove_cv_t<T> v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    template <auto K, size_t... I>
    static void call(void* const* args, std::index_sequence<I...>) {
        (void)args;
        K(load<P>(args[I])...);
    }
};

struct KernelEntry {
    const char* name;  // nullptr ends a table
    void (*run)(void* const* args);
    const unsigned char* kinds;
    unsigned arity;
    const char* file;
};
struct KernelTable {
    const KernelEntry* entries;
};
}  // namespace emu

#define EMU_KERNEL_ENTRY(ns, k, file)                                                     \
    ::emu::KernelEntry {                                                                  \
        #k, &::emu::Kernel<decltype(&ns::k)>::template run<&ns::k>,                       \
            ::emu::Kernel<decltype(&ns::k)>::kinds, ::emu::Kernel<decltype(&ns::k)>::arity, \
            file                                                                          \
    }
