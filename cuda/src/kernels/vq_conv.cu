// The VQ decoder's 3x3 convolution on the tensor cores, as one implicit GEMM: conv3x3's contract
// (ops/vq_gemm.rs) in one launch, where the cuBLAS path makes 3 GEMMs that each read and write
// the f32 output.
//
// out f32 [batch * h * (w+2), cout] = sum over ky of the 3-tap input's rows shifted by ky (w+2)
// (input f16 [batch, in_rows, 3 cin], row j holding padded positions j, j+1, j+2) times the
// weights' rows 3 ky cin .. 3 (ky+1) cin (weights f16 [9 cin, cout]); cin % 16 == 0, cout % 8 ==
// 0 (checked by the wrapper). mma.sync m16n8k16, f16 operands, f32 accumulation.
//
// A block of 4 warps computes 128 output rows x 32 channels, a warp 32 x 32 (two 16-row by four
// 8-column tiles). Each step stages 16 input channels of the block's rows and the matching
// 16 x 32 weights in shared memory (rows padded by 8 halves: the fragment reads are free of bank
// conflicts), while the next step's global loads are in flight in registers.
// Grid (ceil(rows / 128), ceil(cout / 32)), block 128.
#define VQ_CONV_BM 128
#define VQ_CONV_BN 32
#define VQ_CONV_AP 24
#define VQ_CONV_BP 40

// The next step's tiles in registers: two 8-channel pieces of A rows, one 8-column piece of B.
struct VqConvStage {
    uint4 a[2];
    uint4 b;
};

// Global loads of step s (kernel row ky = s / per_ky, 16 channels kc = s % per_ky of its 3 cin):
// this thread's A rows (null: past the last row, zero) and its B piece (k = tid / 4, columns
// 8 (tid % 4) .. + 8, zero past cout; threads 64.. load no B).
DEVICE VqConvStage vq_conv_load(const f16* const* arow, const f16* weights, i32 s, i32 per_ky, i32 wp, i32 k3,
                                i32 n0, i32 cout) {
    VqConvStage st;
    const i32 ky = s / per_ky;
    const i32 kc = s % per_ky;
    const i64 shift = (i64)ky * wp * k3 + kc * 16;
    for (i32 j = 0; j < 2; j++)
        st.a[j] = arow[j] ? *reinterpret_cast<const uint4*>(arow[j] + shift) : make_uint4(0, 0, 0, 0);
    st.b = make_uint4(0, 0, 0, 0);
    const i32 tid = threadIdx.x;
    const i32 n = n0 + (tid & 3) * 8;
    if (tid < 64 && n < cout) {
        const i64 k = (i64)ky * k3 + kc * 16 + (tid >> 2);
        st.b = *reinterpret_cast<const uint4*>(weights + k * cout + n);
    }
    return st;
}

KERNEL void vq_conv3x3_mma(float* out, const f16* input, const f16* weights, i32 rows_out, i32 batch, i32 wp,
                           i32 in_rows, i32 cin, i32 cout) {
    __shared__ __align__(16) f16 as[VQ_CONV_BM * VQ_CONV_AP];
    __shared__ __align__(16) f16 bs[16 * VQ_CONV_BP];
    const i32 tid = threadIdx.x;
    const i32 warp = tid >> 5;
    const i32 lane = tid & 31;
    const i32 g = lane >> 2;
    const i32 t = lane & 3;
    const i32 k3 = 3 * cin;
    const i32 per_ky = k3 / 16;
    const i32 steps = 3 * per_ky;
    const i64 m_total = (i64)batch * rows_out;
    const i64 m0 = (i64)blockIdx.x * VQ_CONV_BM;
    const i32 n0 = blockIdx.y * VQ_CONV_BN;

    // This thread stages rows tid / 2 and tid / 2 + 64 of the tile, channels 8 (tid % 2) .. + 8.
    const i32 part = (tid & 1) * 8;
    const f16* arow[2];
    for (i32 j = 0; j < 2; j++) {
        const i64 m = m0 + (tid >> 1) + 64 * j;
        arow[j] = nullptr;
        if (m < m_total) {
            const i64 img = m / rows_out;
            const i64 i = m % rows_out;
            arow[j] = input + (img * in_rows + i) * k3 + part;
        }
    }

    float acc[2][4][4];
#pragma unroll
    for (i32 mt = 0; mt < 2; mt++)
#pragma unroll
        for (i32 nt = 0; nt < 4; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

    VqConvStage next = vq_conv_load(arow, weights, 0, per_ky, wp, k3, n0, cout);
    for (i32 s = 0; s < steps; s++) {
        __syncthreads();  // every warp is done reading the previous step's tiles
        for (i32 j = 0; j < 2; j++)
            *reinterpret_cast<uint4*>(as + ((tid >> 1) + 64 * j) * VQ_CONV_AP + part) = next.a[j];
        if (tid < 64) *reinterpret_cast<uint4*>(bs + (tid >> 2) * VQ_CONV_BP + (tid & 3) * 8) = next.b;
        __syncthreads();
        if (s + 1 < steps) next = vq_conv_load(arow, weights, s + 1, per_ky, wp, k3, n0, cout);

        u32 a[2][4];
#pragma unroll
        for (i32 mt = 0; mt < 2; mt++) {
            const f16* base = as + (warp * 32 + mt * 16 + g) * VQ_CONV_AP + 2 * t;
            a[mt][0] = *reinterpret_cast<const u32*>(base);
            a[mt][1] = *reinterpret_cast<const u32*>(base + 8 * VQ_CONV_AP);
            a[mt][2] = *reinterpret_cast<const u32*>(base + 8);
            a[mt][3] = *reinterpret_cast<const u32*>(base + 8 * VQ_CONV_AP + 8);
        }
#pragma unroll
        for (i32 nt = 0; nt < 4; nt++) {
            const f16* col = bs + 2 * t * VQ_CONV_BP + nt * 8 + g;
            const u32 b[2] = {pack_f16x2(col[0], col[VQ_CONV_BP]),
                              pack_f16x2(col[8 * VQ_CONV_BP], col[9 * VQ_CONV_BP])};
#pragma unroll
            for (i32 mt = 0; mt < 2; mt++) mma_16816(acc[mt][nt], a[mt], b);
        }
    }

#pragma unroll
    for (i32 mt = 0; mt < 2; mt++) {
#pragma unroll
        for (i32 nt = 0; nt < 4; nt++) {
            const i32 n = n0 + nt * 8 + 2 * t;
            if (n >= cout) continue;
#pragma unroll
            for (i32 half = 0; half < 2; half++) {
                const i64 m = m0 + warp * 32 + mt * 16 + g + half * 8;
                if (m < m_total)
                    *reinterpret_cast<float2*>(out + m * cout + n) =
                        make_float2(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
            }
        }
    }
}
