/*
 * kernels/cuda/gemv_quant.cu — decode matrix-vector products y = W x for
 * weights in Peregrine's quantized formats (PG_QI8, PG_QI4; device layout in
 * kernels_cuda.h), 1..8 activation columns at a time, plus the fused SwiGLU
 * form (gate row r and up row H + r in one warp, y = silu(g) * u).
 *
 * The product is a stream of weight bytes, so the kernel is built around the
 * load: each lane issues U independent 16-byte loads per row
 * (ld.global.nc.L1::no_allocate, as gemv.cu) before any arithmetic; a
 * 16-byte unit is 16 int8 or 32 int4 elements and lies inside one group,
 * so it needs one f16 scale (QI8) or one {scale, min} word (QI4).
 *
 * Dequantization in registers, with no conversion instructions and no
 * per-element branches (the int->float converters run at a fraction of the
 * FMA rate on this hardware):
 *   int8: w ^ 0x80808080 makes each byte q + 128 (unsigned); a byte permute
 *         (prmt) places it in the low mantissa byte of 2^23, so the word
 *         reads as the float 2^23 + 128 + q; one FADD leaves q exactly.
 *   int4: the nibble at bits 4p..4p+3 of a word is masked in place and OR'ed
 *         (one LOP3) with the exponent of 2^(23-4p), whose mantissa unit is
 *         2^-4p: the word reads as 2^(23-4p) + q; one FADD leaves q exactly.
 *         Nibbles 0..3 come from the word, 4..7 from the word >> 16.
 * Then f32 FMAs with x. Per 16-byte unit and column the partial dot d = q.x
 * is scaled once: QI8 y += s*d; QI4 y += s*d + m*sum(x over the unit), where
 * the sums of x over every 32-element unit are computed once per block into
 * shared memory (they do not depend on the row). Accumulation is fp32 with a
 * fixed order (graph replay == eager).
 * x is copied once per block into shared memory (coalesced, ordinary loads,
 * never .nc: under programmatic dependent launch the kernel starts while the
 * producer of x may still run, gemv.cu), padded so that the lanes' reads of
 * their units are free of bank conflicts (qg_pad). A block is 8 warps, so
 * that copy serves 8-16 rows.
 * CPU twin: ref_matmul_q (kernels/kernels.h) on the same quantized weights,
 * ref_silu_mul for the SwiGLU form.
 */
#include "kc_util.cuh"

#define QG_WARPS 8

// int8 byte T of a word already XOR'ed with 0x80808080 -> exact float q.
template <int T>
__device__ __forceinline__ float qg_i8(uint32_t wx)
{
    return __uint_as_float(__byte_perm(wx, 0x4B000000u, 0x7540u | T)) - 8388736.f;   // 2^23 + 128
}
// nibble P (0..3) of a word -> exact float q.
template <int P>
__device__ __forceinline__ float qg_i4(uint32_t w)
{
    constexpr uint32_t EXP = (uint32_t)(150 - 4 * P) << 23;
    constexpr float BIAS = (float)(1u << (23 - 4 * P));
    return __uint_as_float((w & (0xFu << (4 * P))) | EXP) - BIAS;
}

// x lives in shared memory with 4 floats of padding after every 32: lane l
// reads the 16 bytes at element 16l + 4k (int8) or 32l + 8k (int4) of its
// unit, and with the padding the 8 lanes served per cycle by a 16-byte
// shared load hit 8 different groups of 4 banks (no conflicts). Straight
// from global memory through L1, the same loads touch 16 or 32 cache lines
// per warp instruction, which capped these kernels at a few hundred GB/s.
__device__ __forceinline__ int qg_pad(int i) { return i + ((i >> 5) << 2); }
__host__ __device__ __forceinline__ int qg_padded_cols(int cols) { return cols + (cols >> 5) * 4 + 4; }

/*
 * FMT 0 = QI8, 1 = QI4. N columns of x. MODE 0: a warp computes a group of
 * RW consecutive rows; MODE 1 (SwiGLU): W has 2*rows rows, a group is gate
 * row g and up row rows + g (RW must be 2). U: 16-byte units per lane per row
 * in one batch of loads. ush: log2(units per group), or -1 for one group per
 * row (the parameter index of unit i of row r is r * groups_per_row +
 * (i >> ush): no integer division in the loop).
 * Persistent warps: warp w takes row groups w, w + (warps in the grid), ...
 * and walks their batches in order, double-buffered: the loads of the next
 * batch (of this row group or the next one) are in flight while the current
 * one is computed, so the weight stream never waits for the arithmetic.
 * Dynamic shared memory: x [N][qg_padded_cols(cols)] floats, then (QI4) the
 * sums of x over each 32-element unit [N][cols/32]; staged once per block.
 */
template <int U, int RW>
struct QgBuf {
    uint4 v[U][RW];
    uint32_t sc[U][RW];
};

template <int FMT, int N, int MODE, int RW, int U>
__global__ void __launch_bounds__(QG_WARPS * 32)
gemv_q_kernel(const uint8_t *__restrict__ q, const void *__restrict__ sp, int rows, int cols, int ush,
              const float *x, float *__restrict__ y)
{
    constexpr int E = FMT ? 32 : 16;   // elements per 16-byte unit
    extern __shared__ float4 qg_smem[];
    float *xs = (float *)qg_smem;
    const int pc = qg_padded_cols(cols);
    float *xsum = xs + N * pc;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gw = gridDim.x * QG_WARPS;
    const int ngr = MODE == 1 ? rows : (rows + RW - 1) / RW;   // row groups
    const int nu = cols / E, ng = ush < 0 ? 1 : nu >> ush;
    const int nb = (nu + 32 * U - 1) / (32 * U);                // batches per row group
    const size_t rowb = FMT ? (size_t)cols / 2 : (size_t)cols;
    kc_pdl_trigger();

    // row j of group g (MODE 0: clamped, so a short last group loads valid rows it never stores)
    auto row_of = [&](int g, int j) { return MODE == 1 ? g + j * rows : min(g * RW + j, rows - 1); };
    auto load = [&](QgBuf<U, RW> &B, int g, int b) {
        if (g >= ngr) return;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = b * 32 * U + u * 32 + lane;
            if (i < nu) {
#pragma unroll
                for (int j = 0; j < RW; j++) {
                    const int r = row_of(g, j);
                    B.v[u][j] = kc_ld_stream((const uint4 *)(q + (size_t)r * rowb) + i);
                    const int gi = ush < 0 ? r : r * ng + (i >> ush);
                    B.sc[u][j] = FMT ? __ldg((const uint32_t *)sp + gi) : __ldg((const uint16_t *)sp + gi);
                }
            }
        }
    };
    float acc[RW][N];
#pragma unroll
    for (int j = 0; j < RW; j++)
#pragma unroll
        for (int n = 0; n < N; n++) acc[j][n] = 0.f;

    auto compute = [&](const QgBuf<U, RW> &B, int g, int b) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = b * 32 * U + u * 32 + lane;
            if (i >= nu) break;
            const float *xi = xs + qg_pad(i * E);   // a unit never crosses a padding point
            float d[RW][N];
#pragma unroll
            for (int j = 0; j < RW; j++)
#pragma unroll
                for (int n = 0; n < N; n++) d[j][n] = 0.f;
#pragma unroll
            for (int k = 0; k < 4; k++) {   // the four 32-bit words of the unit
                if constexpr (FMT == 0) {
                    float wv[RW][4];
#pragma unroll
                    for (int j = 0; j < RW; j++) {
                        const uint4 &vv = B.v[u][j];
                        uint32_t w = (k == 0 ? vv.x : k == 1 ? vv.y : k == 2 ? vv.z : vv.w) ^ 0x80808080u;
                        wv[j][0] = qg_i8<0>(w); wv[j][1] = qg_i8<1>(w); wv[j][2] = qg_i8<2>(w); wv[j][3] = qg_i8<3>(w);
                    }
#pragma unroll
                    for (int n = 0; n < N; n++) {
                        float4 a = *(const float4 *)(xi + n * pc + 4 * k);
#pragma unroll
                        for (int j = 0; j < RW; j++) {
                            d[j][n] = fmaf(wv[j][0], a.x, d[j][n]);
                            d[j][n] = fmaf(wv[j][1], a.y, d[j][n]);
                            d[j][n] = fmaf(wv[j][2], a.z, d[j][n]);
                            d[j][n] = fmaf(wv[j][3], a.w, d[j][n]);
                        }
                    }
                } else {
                    float wv[RW][8];
#pragma unroll
                    for (int j = 0; j < RW; j++) {
                        const uint4 &vv = B.v[u][j];
                        uint32_t w = k == 0 ? vv.x : k == 1 ? vv.y : k == 2 ? vv.z : vv.w;
                        uint32_t h = w >> 16;
                        // element 8k + 2b is the low nibble of byte b, 8k + 2b + 1 the high one
                        wv[j][0] = qg_i4<0>(w); wv[j][1] = qg_i4<1>(w); wv[j][2] = qg_i4<2>(w); wv[j][3] = qg_i4<3>(w);
                        wv[j][4] = qg_i4<0>(h); wv[j][5] = qg_i4<1>(h); wv[j][6] = qg_i4<2>(h); wv[j][7] = qg_i4<3>(h);
                    }
#pragma unroll
                    for (int n = 0; n < N; n++) {
                        const float4 *xp = (const float4 *)(xi + n * pc + 8 * k);
                        float4 a = xp[0], c = xp[1];
#pragma unroll
                        for (int j = 0; j < RW; j++) {
                            d[j][n] = fmaf(wv[j][0], a.x, d[j][n]);
                            d[j][n] = fmaf(wv[j][1], a.y, d[j][n]);
                            d[j][n] = fmaf(wv[j][2], a.z, d[j][n]);
                            d[j][n] = fmaf(wv[j][3], a.w, d[j][n]);
                            d[j][n] = fmaf(wv[j][4], c.x, d[j][n]);
                            d[j][n] = fmaf(wv[j][5], c.y, d[j][n]);
                            d[j][n] = fmaf(wv[j][6], c.z, d[j][n]);
                            d[j][n] = fmaf(wv[j][7], c.w, d[j][n]);
                        }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < RW; j++) {
                if constexpr (FMT == 0) {
                    const float sc = kc_f16_f((uint16_t)B.sc[u][j]);
#pragma unroll
                    for (int n = 0; n < N; n++) acc[j][n] = fmaf(sc, d[j][n], acc[j][n]);
                } else {
                    const float sc = kc_f16_f((uint16_t)(B.sc[u][j] & 0xffffu));
                    const float mn = kc_f16_f((uint16_t)(B.sc[u][j] >> 16));
#pragma unroll
                    for (int n = 0; n < N; n++)
                        acc[j][n] = fmaf(mn, xsum[n * nu + i], fmaf(sc, d[j][n], acc[j][n]));
                }
            }
        }
        if (b + 1 < nb) return;
        // last batch of the row group: reduce across the warp and store
#pragma unroll
        for (int n = 0; n < N; n++) {
            float t[RW];
#pragma unroll
            for (int j = 0; j < RW; j++) { t[j] = kc_warp_sum(acc[j][n]); acc[j][n] = 0.f; }
            if (lane == 0) {
                if constexpr (MODE == 1) y[(size_t)n * rows + g] = t[0] / (1.f + __expf(-t[0])) * t[RW - 1];
                else {
#pragma unroll
                    for (int j = 0; j < RW; j++)
                        if (g * RW + j < rows) y[(size_t)n * rows + g * RW + j] = t[j];
                }
            }
        }
    };

    QgBuf<U, RW> A, B;
    int g = blockIdx.x * QG_WARPS + warp, b = 0;
    // weights and parameters never depend on the previous kernel: load first
    load(A, g, b);
    kc_pdl_wait();
    {   // x -> shared memory (coalesced 16-byte loads), padded
        const int c4 = cols >> 2;
        for (int t = threadIdx.x; t < N * c4; t += blockDim.x) {
            int n = t / c4, i = (t - n * c4) << 2;
            *(float4 *)(xs + n * pc + qg_pad(i)) = *((const float4 *)(x + (size_t)n * cols) + (i >> 2));
        }
    }
    __syncthreads();
    if constexpr (FMT == 1) {   // sums of x over each 32-element unit, once per block
        for (int c = threadIdx.x; c < N * nu; c += blockDim.x) {
            int n = c / nu, k = c - n * nu;
            const float4 *xp = (const float4 *)(xs + n * pc + qg_pad(k * 32));
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < 8; t++) { float4 a = xp[t]; sum += (a.x + a.y) + (a.z + a.w); }
            xsum[c] = sum;
        }
        __syncthreads();
    }
    // the batch stream (g, b), (g, b + 1), ..., (g + gw, 0), ...: compute one
    // buffer while the other one's loads are in flight
    while (g < ngr) {
        int g2 = g, b2 = b + 1;
        if (b2 == nb) { b2 = 0; g2 += gw; }
        load(B, g2, b2);
        compute(A, g, b);
        if (g2 >= ngr) break;
        g = g2; b = b2 + 1;
        if (b == nb) { b = 0; g += gw; }
        load(A, g, b);
        compute(B, g2, b2);
    }
}

static size_t qg_smem_bytes(int fmt, int n, int cols)
{
    return (size_t)n * qg_padded_cols(cols) * sizeof(float) + (fmt ? (size_t)n * (cols / 32) * sizeof(float) : 0);
}

// Largest dynamic shared memory a block may opt into on the current device
// (read once: a device property).
static size_t qg_smem_optin(void)
{
    static int v = -1;
    if (v < 0) {
        int dev = 0;
        KC_CHECK(cudaGetDevice(&dev));
        KC_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    }
    return (size_t)v;
}

template <int FMT, int N, int MODE, int RW, int U>
static void gemv_q_launch(const kc_matrix *w, int rows, const float *x, float *y, cudaStream_t s)
{
    auto kern = gemv_q_kernel<FMT, N, MODE, RW, U>;
    static bool opted = false;   // once per instantiation; a function attribute, not stream work
    if (!opted) {
        KC_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)qg_smem_optin()));
        opted = true;
    }
    int warps = MODE == 1 ? rows : KC_CDIV(rows, RW);
    size_t smem = qg_smem_bytes(FMT, N, w->cols);
    const int upg = w->group / (FMT ? 32 : 16);   // units per group: a power of two unless the group is the row
    int ush = -1;
    if (w->group != w->cols) {
        ush = 0;
        while ((1 << ush) < upg) ush++;
        PG_ASSERT((1 << ush) == upg);
    }
    // persistent blocks: as many as fit on the device at once, at most one per 8 row groups
    int per_sm = 0, sms = 0, dev = 0;
    KC_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, QG_WARPS * 32, smem));
    KC_CHECK(cudaGetDevice(&dev));
    KC_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    PG_ASSERT(per_sm >= 1);
    int blocks = KC_CDIV(warps, QG_WARPS);
    if (blocks > per_sm * sms) blocks = per_sm * sms;
    kc_launch(kern, dim3(blocks), dim3(QG_WARPS * 32), smem, s,
              (const uint8_t *)w->q, (const void *)w->s, rows, w->cols, ush, x, y);
}

// Rows per warp and loads in flight by column count: two rows per warp for
// one and two columns (each x value read from shared memory serves both), one
// for 4 and 8 (register pressure of the accumulators); SwiGLU always pairs
// the gate row with its up row.
template <int FMT, int N, int MODE>
static void gemv_q_pick(const kc_matrix *w, int rows, const float *x, float *y, cudaStream_t s)
{
    if constexpr (MODE == 1) gemv_q_launch<FMT, N, 1, 2, (N <= 2 ? 4 : 2)>(w, rows, x, y, s);
    else if constexpr (N <= 2) gemv_q_launch<FMT, N, 0, 2, 4>(w, rows, x, y, s);
    else gemv_q_launch<FMT, N, 0, 1, 4>(w, rows, x, y, s);
}

template <int FMT, int MODE>
static void gemv_q_cols(const kc_matrix *w, int rows, const float *x, int n, float *y, cudaStream_t s)
{
    const size_t lim = qg_smem_optin();
    for (int i = 0; i < n;) {
        int m = n - i;
        const float *xi = x + (size_t)i * w->cols;
        float *yi = y + (size_t)i * rows;
        // the widest column block whose x fits in shared memory
        if (m >= 8 && qg_smem_bytes(FMT, 8, w->cols) <= lim) { gemv_q_pick<FMT, 8, MODE>(w, rows, xi, yi, s); m = 8; }
        else if (m >= 4 && qg_smem_bytes(FMT, 4, w->cols) <= lim) { gemv_q_pick<FMT, 4, MODE>(w, rows, xi, yi, s); m = 4; }
        else if (m >= 2 && qg_smem_bytes(FMT, 2, w->cols) <= lim) { gemv_q_pick<FMT, 2, MODE>(w, rows, xi, yi, s); m = 2; }
        else {
            PG_ASSERT(qg_smem_bytes(FMT, 1, w->cols) <= lim);
            gemv_q_pick<FMT, 1, MODE>(w, rows, xi, yi, s);
            m = 1;
        }
        i += m;
    }
}

extern "C" void k_gemv_q(const kc_matrix *w, const float *x, int n, float *y, int swiglu, cudaStream_t s)
{
    PG_ASSERT(w->q && w->s && n >= 1 && w->group > 0 && w->cols % w->group == 0);
    PG_ASSERT(!swiglu || w->rows % 2 == 0);
    int rows = swiglu ? w->rows / 2 : w->rows;
    if (w->dtype == PG_QI8) {
        PG_ASSERT(w->cols % 16 == 0 && w->group % 16 == 0);
        if (swiglu) gemv_q_cols<0, 1>(w, rows, x, n, y, s); else gemv_q_cols<0, 0>(w, rows, x, n, y, s);
    } else {
        PG_ASSERT(w->dtype == PG_QI4 && w->group % 32 == 0);
        if (swiglu) gemv_q_cols<1, 1>(w, rows, x, n, y, s); else gemv_q_cols<1, 0>(w, rows, x, n, y, s);
    }
}
