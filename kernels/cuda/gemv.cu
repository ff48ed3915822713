/*
 * kernels/cuda/gemv.cu — decode matrix-vector products y = W x for 1..8
 * activation columns, with weights in bf16 or repacked GGUF blocks
 * (Q8_0, Q4_0, Q4_1, dequantized in registers), plus the fused SwiGLU variant
 * that computes a gate row and its up row together.
 *
 * Why our own kernel: at batch 1 the product is a pure stream of the weight
 * bytes. One warp owns one output row (or a gate row and its up row for
 * SwiGLU; with several columns, two adjacent rows), or with one column KS
 * warps of a block split its columns (KS chosen by shape); each lane issues
 * U independent 16-byte loads (ld.global.nc.L1::no_allocate: weights are
 * used once per step) before
 * the first FMA, so every SM keeps tens of KB in flight, which is what HBM3
 * needs. x (fp32, at most 8 columns) is read through L1, where all warps of a
 * block share it, with ordinary loads: under programmatic dependent launch the
 * kernel starts while the kernel that writes x is still running, so x must
 * not go through the read-only (.nc) path, whose contract is "unchanged for
 * the kernel's lifetime" (seen: stale x and wrong logits). Weights are truly
 * read-only and use .nc. Accumulation is fp32; the warp reduction order is
 * fixed, so results are deterministic (graph replay == eager).
 * Norm epilogues (kc_gemv_epi, kernels_cuda.h): a template parameter of the
 * kernel (EPI, kc_util.cuh), so the plain product is compiled as if they did
 * not exist.
 * CPU twin: ref_matmul (kernels/kernels.h) on the stored weights, and
 * ref_silu_mul for the SwiGLU variant.
 */
#include "kc_util.cuh"
#include <type_traits>

#define GEMV_WARPS 4
// Warps per SwiGLU row pair (one column), each over a contiguous 1/KS of the
// columns. Measured end to end on an H200 (bench/results/h200.md,
// 2026-12-03): 2 instead of 1 +1.8% (7B) / +2.1% (8B): the 7B w13 has 11008
// row pairs, 1.3 waves of the 8448 warps an H200 holds at one warp each.
#ifndef GEMV_SW_KS
#define GEMV_SW_KS 2
#endif

// ---------------------------------------------------------------- weight units
// A "unit" is the piece of a row one lane handles per step: 8 bf16 (one
// 16-byte load) or one 32-element quant block (16 or 32 bytes + scale).

struct UBf16 {
    static constexpr int E = 8;
    struct Row { const uint4 *q; };
    struct V { uint4 q; };
    static __device__ __forceinline__ Row row(const void *q, const void *, int r, int cols) {
        return Row{ (const uint4 *)((const uint16_t *)q + (size_t)r * cols) };
    }
    static __device__ __forceinline__ V load(Row w, int i) { return V{ kc_ld_stream(w.q + i) }; }
    static __device__ __forceinline__ float dot(const V &v, const float *x) {
        float4 a = ((const float4 *)x)[0], b = ((const float4 *)x)[1];
        float s = kc_bf16_lo(v.q.x) * a.x;
        s = fmaf(kc_bf16_hi(v.q.x), a.y, s);
        s = fmaf(kc_bf16_lo(v.q.y), a.z, s);
        s = fmaf(kc_bf16_hi(v.q.y), a.w, s);
        s = fmaf(kc_bf16_lo(v.q.z), b.x, s);
        s = fmaf(kc_bf16_hi(v.q.z), b.y, s);
        s = fmaf(kc_bf16_lo(v.q.w), b.z, s);
        s = fmaf(kc_bf16_hi(v.q.w), b.w, s);
        return s;
    }
};

struct UQ8_0 {
    static constexpr int E = 32;
    struct Row { const uint4 *q; const uint16_t *s; };
    struct V { uint4 a, b; float d; };
    static __device__ __forceinline__ Row row(const void *q, const void *s, int r, int cols) {
        return Row{ (const uint4 *)((const int8_t *)q + (size_t)r * cols),
                    (const uint16_t *)s + (size_t)r * (cols / 32) };
    }
    static __device__ __forceinline__ V load(Row w, int i) {
        V v; v.a = kc_ld_stream(w.q + 2 * i); v.b = kc_ld_stream(w.q + 2 * i + 1);
        v.d = kc_f16_f(__ldg(w.s + i)); return v;
    }
    static __device__ __forceinline__ float dot4(uint32_t u, float4 x) {
        return (float)(int8_t)(u & 0xff) * x.x + (float)(int8_t)((u >> 8) & 0xff) * x.y +
               (float)(int8_t)((u >> 16) & 0xff) * x.z + (float)(int8_t)(u >> 24) * x.w;
    }
    static __device__ __forceinline__ float dot(const V &v, const float *x) {
        const float4 *x4 = (const float4 *)x;
        float s = dot4(v.a.x, x4[0]) + dot4(v.a.y, x4[1]) +
                  dot4(v.a.z, x4[2]) + dot4(v.a.w, x4[3]) +
                  dot4(v.b.x, x4[4]) + dot4(v.b.y, x4[5]) +
                  dot4(v.b.z, x4[6]) + dot4(v.b.w, x4[7]);
        return v.d * s;
    }
};

// Q4: byte j of a block holds element j (low nibble) and j + 16 (high).
template <bool HAS_M>
struct UQ4 {
    static constexpr int E = 32;
    struct Row { const uint4 *q; const uint16_t *s; };
    struct V { uint4 q; float d, m; };
    static __device__ __forceinline__ Row row(const void *q, const void *s, int r, int cols) {
        return Row{ (const uint4 *)((const uint8_t *)q + (size_t)r * (cols / 2)),
                    (const uint16_t *)s + (size_t)r * (cols / 32) * (HAS_M ? 2 : 1) };
    }
    static __device__ __forceinline__ V load(Row w, int i) {
        V v; v.q = kc_ld_stream(w.q + i);
        if (HAS_M) {
            uint32_t dm = __ldg((const uint32_t *)w.s + i);
            v.d = kc_f16_f(dm & 0xffff); v.m = kc_f16_f(dm >> 16);
        } else {
            v.d = kc_f16_f(__ldg(w.s + i)); v.m = 0.f;
        }
        return v;
    }
    static __device__ __forceinline__ void acc4(uint32_t u, float4 lo, float4 hi, float &sq, float &sx) {
        sq = fmaf((float)(u & 15), lo.x, sq);         sq = fmaf((float)((u >> 4) & 15), hi.x, sq);
        sq = fmaf((float)((u >> 8) & 15), lo.y, sq);  sq = fmaf((float)((u >> 12) & 15), hi.y, sq);
        sq = fmaf((float)((u >> 16) & 15), lo.z, sq); sq = fmaf((float)((u >> 20) & 15), hi.z, sq);
        sq = fmaf((float)((u >> 24) & 15), lo.w, sq); sq = fmaf((float)(u >> 28), hi.w, sq);
        sx += lo.x + lo.y + lo.z + lo.w + hi.x + hi.y + hi.z + hi.w;
    }
    static __device__ __forceinline__ float dot(const V &v, const float *x) {
        const float4 *x4 = (const float4 *)x;
        float sq = 0.f, sx = 0.f;
        acc4(v.q.x, x4[0], x4[4], sq, sx);
        acc4(v.q.y, x4[1], x4[5], sq, sx);
        acc4(v.q.z, x4[2], x4[6], sq, sx);
        acc4(v.q.w, x4[3], x4[7], sq, sx);
        return HAS_M ? v.d * sq + v.m * sx : v.d * (sq - 8.f * sx);
    }
};

// ---------------------------------------------------------------- kernel
// MODE 0: one output row per warp. MODE 1 (SwiGLU): W has 2*rows rows (gate
// then up); the warp computes gate row r and up row rows + r and writes
// silu(g) * u. MODE 2: the warp computes two adjacent rows 2w and 2w + 1,
// which halves the x traffic through L1 per weight byte (x is read with
// ordinary loads, see the top of this file).
// KS (MODE 0 and 1): KS warps of one block share a row (a SwiGLU row pair),
// each over a contiguous 1/KS of its columns, and add their partial sums in
// warp order (deterministic) — more warps in flight for matrices whose rows
// at one warp each would fill the GPU only 1-1.5 times.
#define GEMV_LOAD(B)                                                        \
    _Pragma("unroll") for (int u = 0; u < U; u++) {                         \
        int i = u0 + (B) + u * 32 + lane;                                   \
        if (i < u1) {                                                       \
            vg[u] = T::load(rg, i);                                         \
            if (PAIR) vu[u] = T::load(ru, i);                               \
        }                                                                   \
    }

// Output r of column n: into y, or for a producer epilogue into the residual
// stream (kc_gemv_epi, kc_util.cuh)
template <int EPI>
__device__ __forceinline__ void gemv_store(const kc_gemv_epi &e, float *y, int n, int rows, int r, float v)
{
    if constexpr (EPI == KC_EPI_PRODUCE) kc_epi_produce(e, n, rows, r, v);
    else y[(size_t)n * rows + r] = v;
}

// EPI (KC_EPI_*): the norm epilogue, e its arguments (unused for KC_EPI_NONE,
// whose code is the plain product's). A producer stores nothing in y.
template <class T, int N, int MODE, int U, int KS, int EPI>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(const void *__restrict__ q, const void *__restrict__ s, int rows, int cols,
            const float *x, float *__restrict__ y, kc_gemv_epi e)
{
    static_assert(!(EPI == KC_EPI_PRODUCE && MODE == 1), "a producer's rows are plain, not SwiGLU");
    constexpr bool PAIR = MODE != 0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wid = blockIdx.x * GEMV_WARPS + warp;
    const int r0 = MODE == 2 ? 2 * wid : wid / KS;
    // MODE 2 with an odd row count: the last warp repeats row r0 as its pair
    const int r1 = MODE == 1 ? r0 + rows : (MODE == 2 ? (r0 + 1 < rows ? r0 + 1 : r0) : r0);
    const bool active = r0 < rows;
    if (!active && KS == 1) return;
    const int nu = cols / T::E, wk = wid % KS;
    const int u0 = active ? (int)((int64_t)wk * nu / KS) : 0;
    const int u1 = active ? (int)((int64_t)(wk + 1) * nu / KS) : 0;
    typename T::Row rg = T::row(q, s, active ? r0 : 0, cols);
    typename T::Row ru = T::row(q, s, active ? r1 : 0, cols);
    float ag[N], au[N];
#pragma unroll
    for (int n = 0; n < N; n++) { ag[n] = 0.f; au[n] = 0.f; }
    typename T::V vg[U], vu[U];

    // The first batch of weight loads goes out before waiting for the
    // previous kernel (PDL): weights never depend on it, x does.
    GEMV_LOAD(0)
    kc_pdl_wait();
    for (int base = 0; u0 + base < u1;) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = u0 + base + u * 32 + lane;
            if (i < u1) {
#pragma unroll
                for (int n = 0; n < N; n++) {
                    const float *xp = x + (size_t)n * cols + (size_t)i * T::E;
                    ag[n] += T::dot(vg[u], xp);
                    if (PAIR) au[n] += T::dot(vu[u], xp);
                }
            }
        }
        base += 32 * U;
        if (u0 + base >= u1) break;
        GEMV_LOAD(base)
    }
    // The successor may launch once this warp's loads are done, not at the
    // start: this grid has more blocks than fit at once, and blocks of the
    // successor (the attention, a norm) parked early would take slots its
    // later blocks need. Measured on an H200 (bench/results/h200.md,
    // 2026-12-02 18:12Z): +2.4% 7B, +3.3% 8B bf16 against triggering at the
    // start, +1.8% / +2.8% against no trigger at all.
    kc_pdl_trigger();
    if constexpr (KS > 1) {
        static_assert(MODE != 2, "a K split of row pairs is not built");
        __shared__ float red[GEMV_WARPS][PAIR ? 2 : 1][N];
#pragma unroll
        for (int n = 0; n < N; n++) {
            float g = kc_warp_sum(ag[n]);
            if (lane == 0) red[warp][0][n] = g;
            if constexpr (PAIR) {
                float u = kc_warp_sum(au[n]);
                if (lane == 0) red[warp][1][n] = u;
            }
        }
        __syncthreads();
        float inv[N];   // consumer epilogue (kc_gemv_epi): the storing warps, all their lanes
        if constexpr (EPI == KC_EPI_CONSUME) {
#pragma unroll
            for (int n = 0; n < N; n++) inv[n] = wk == 0 ? kc_epi_inv_warp(e, n, cols) : 1.f;
        }
        if (active && wk == 0 && lane == 0) {
#pragma unroll
            for (int n = 0; n < N; n++) {
                float g = 0.f, u = 0.f;
                for (int k = 0; k < KS; k++) {
                    g += red[warp + k][0][n];
                    if constexpr (PAIR) u += red[warp + k][1][n];
                }
                if constexpr (EPI == KC_EPI_CONSUME) { g *= inv[n]; u *= inv[n]; }
                gemv_store<EPI>(e, y, n, rows, r0, MODE == 1 ? g / (1.f + __expf(-g)) * u : g);
            }
        }
    } else {
#pragma unroll
        for (int n = 0; n < N; n++) {
            float g = kc_warp_sum(ag[n]);
            float u = PAIR ? kc_warp_sum(au[n]) : 0.f;
            if constexpr (EPI == KC_EPI_CONSUME) {
                const float iv = kc_epi_inv_warp(e, n, cols);
                g *= iv; u *= iv;
            }
            if (lane == 0) {
                gemv_store<EPI>(e, y, n, rows, r0, MODE == 1 ? g / (1.f + __expf(-g)) * u : g);
                if (MODE == 2 && r1 != r0) gemv_store<EPI>(e, y, n, rows, r1, u);
            }
        }
    }
}

template <class T, int N, int MODE, int U, int KS, int EPI>
static void gemv_launch_n(const kc_matrix *w, int rows, const float *x, float *y, const kc_gemv_epi &e,
                          cudaStream_t s)
{
    int warps = MODE == 2 ? KC_CDIV(rows, 2) : rows * KS;
    kc_launch(gemv_kernel<T, N, MODE, U, KS, EPI>, dim3(KC_CDIV(warps, GEMV_WARPS)), dim3(GEMV_WARPS * 32), 0, s,
              w->q, w->s, rows, w->cols, x, y, e);
}

/* One column: MODE1/U1, with warps per row and loads per lane chosen by
 * shape (below); 2..8 columns: MODEN/UN. */
template <class T, int MODE1, int U1, int MODEN, int UN, int EPI>
static void gemv_launch_t(const kc_matrix *w, int rows, const float *x, int n, float *y,
                          const kc_gemv_epi &e0, cudaStream_t s)
{
    int i = 0;
    while (i < n) {
        int m = n - i;
        const float *xi = x + (size_t)i * w->cols;
        float *yi = y ? y + (size_t)i * rows : y;
        const kc_gemv_epi e = kc_epi_at(e0, i, rows);
        if (m >= 8) { gemv_launch_n<T, 8, MODEN, UN, 1, EPI>(w, rows, xi, yi, e, s); m = 8; }
        else if (m >= 4) { gemv_launch_n<T, 4, MODEN, UN, 1, EPI>(w, rows, xi, yi, e, s); m = 4; }
        else if (m >= 2) { gemv_launch_n<T, 2, MODEN, UN, 1, EPI>(w, rows, xi, yi, e, s); m = 2; }
        else {
            /* One column: warps per row (a K split) and loads per lane by
             * shape, each choice measured end to end on an H200
             * (bench/results/h200.md): a wave of warps should be full (an
             * H200 holds 8448) and a warp's share of a row one batch of
             * loads. SwiGLU row pairs: GEMV_SW_KS warps. bf16: 4 warps x 4
             * loads for rows of <= 4096 columns (wo, the 8B wqkv; +0.9% 7B,
             * +1.5% 8B against 2 x 8, 2026-12-03); 4 warps for the short,
             * wide w2, with 11 loads per lane where that makes one batch (the
             * 7B w2, 344 units per warp: +0.9%; 14 for the 8B w2 was 0.3%
             * slower); 2 warps x 8 loads for the rest (wqkv, the LM head:
             * +3.2% 7B against 1 warp, 2026-12-02; 4 everywhere was slower) */
            const bool wide = w->cols >= 8192 && rows <= 8192;
            if constexpr (MODE1 != 0) {
                gemv_launch_n<T, 1, MODE1, U1, GEMV_SW_KS, EPI>(w, rows, xi, yi, e, s);
            } else if constexpr (std::is_same<T, UBf16>::value) {
                const int upw4 = KC_CDIV(w->cols / T::E, 4);   // 16-byte units per warp at 4 warps
                if (w->cols <= 4096 && rows <= 8192) gemv_launch_n<T, 1, 0, 4, 4, EPI>(w, rows, xi, yi, e, s);
                else if (wide && upw4 > 32 * U1 && upw4 <= 32 * 11)
                    gemv_launch_n<T, 1, 0, 11, 4, EPI>(w, rows, xi, yi, e, s);
                else if (wide) gemv_launch_n<T, 1, 0, U1, 4, EPI>(w, rows, xi, yi, e, s);
                else gemv_launch_n<T, 1, 0, U1, 2, EPI>(w, rows, xi, yi, e, s);
            } else {
                if (wide) gemv_launch_n<T, 1, 0, U1, 4, EPI>(w, rows, xi, yi, e, s);
                else gemv_launch_n<T, 1, 0, U1, 2, EPI>(w, rows, xi, yi, e, s);
            }
            m = 1;
        }
        i += m;
    }
}

// The weight format's launches for one epilogue kind (KC_EPI_*)
template <bool SW, int EPI>
static void gemv_dispatch_t(const kc_matrix *w, const float *x, int n, float *y, const kc_gemv_epi &e,
                            cudaStream_t s)
{
    static_assert(!(SW && EPI == KC_EPI_PRODUCE), "a producer adds plain rows to the residual stream");
    const int rows = SW ? w->rows / 2 : w->rows;
    switch (w->dtype) {
    case PG_BF16:
        PG_ASSERT(w->cols % 8 == 0);
        if constexpr (SW) gemv_launch_t<UBf16, 1, 4, 1, 4, EPI>(w, rows, x, n, y, e, s);
        else gemv_launch_t<UBf16, 0, 8, 2, 4, EPI>(w, rows, x, n, y, e, s);
        break;
    case PG_Q8_0:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ8_0, SW ? 1 : 0, SW ? 1 : 2, SW ? 1 : 0, SW ? 1 : 2, EPI>(w, rows, x, n, y, e, s); break;
    case PG_Q4_0:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ4<false>, SW ? 1 : 0, SW ? 2 : 4, SW ? 1 : 0, SW ? 2 : 4, EPI>(w, rows, x, n, y, e, s);
        break;
    case PG_Q4_1:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ4<true>, SW ? 1 : 0, SW ? 2 : 4, SW ? 1 : 0, SW ? 2 : 4, EPI>(w, rows, x, n, y, e, s);
        break;
    default:
        PG_DIE("k_gemv: unsupported weight dtype %s", pg_dtype_name(w->dtype));
    }
}

template <bool SW>
static void gemv_dispatch(const kc_matrix *w, const float *x, int n, float *y, const kc_gemv_epi &e,
                          cudaStream_t s)
{
    PG_ASSERT(w->q && n >= 1);
    PG_ASSERT(!SW || w->rows % 2 == 0);
    if (w->dtype == PG_QI8 || w->dtype == PG_QI4) {   /* kernels/cuda/gemv_quant.cu */
        k_gemv_q(w, x, n, y, SW, &e, s);
        return;
    }
    const int kind = kc_epi_kind(e);
    PG_ASSERT(kind == KC_EPI_PRODUCE ? !SW : y != NULL);
    if (kind == KC_EPI_CONSUME) gemv_dispatch_t<SW, KC_EPI_CONSUME>(w, x, n, y, e, s);
    else if (kind == KC_EPI_NONE) gemv_dispatch_t<SW, KC_EPI_NONE>(w, x, n, y, e, s);
    else if constexpr (!SW) gemv_dispatch_t<false, KC_EPI_PRODUCE>(w, x, n, y, e, s);
}

extern "C" void k_gemv(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s)
{
    gemv_dispatch<false>(w, x, n, y, kc_gemv_epi{}, s);
}

extern "C" void k_gemv_swiglu(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s)
{
    gemv_dispatch<true>(w, x, n, y, kc_gemv_epi{}, s);
}

extern "C" void k_gemv_epi(const kc_matrix *w, const float *x, int n, float *y, int swiglu, const kc_gemv_epi *epi,
                           cudaStream_t s)
{
    const kc_gemv_epi e = epi ? *epi : kc_gemv_epi{};
    if (swiglu) gemv_dispatch<true>(w, x, n, y, e, s);
    else gemv_dispatch<false>(w, x, n, y, e, s);
}
