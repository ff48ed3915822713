/*
 * kernels/cuda/gemv.cu — decode matrix-vector products y = W x for 1..8
 * activation columns, with weights in bf16 or repacked GGUF blocks
 * (Q8_0, Q4_0, Q4_1, dequantized in registers), plus the fused SwiGLU variant
 * that computes a gate row and its up row in one warp.
 *
 * Why our own kernel: at batch 1 the product is a pure stream of the weight
 * bytes. One warp owns one output row; each lane issues U independent 16-byte
 * loads (ld.global.nc.L1::no_allocate: weights are used once per step) before
 * the first FMA, so every SM keeps tens of KB in flight, which is what HBM3
 * needs. x (fp32, at most 8 columns) is read through L1, where all warps of a
 * block share it. Accumulation is fp32; the warp reduction order is fixed, so
 * results are deterministic (graph replay == eager).
 * CPU twin: ref_matmul-style y = W x with the dequantized weights
 * (kernels/ref_cuda_twins.c: kc_ref_gemv).
 */
#include "kc_util.cuh"

#define GEMV_WARPS 4

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
        float4 a = __ldg((const float4 *)x), b = __ldg((const float4 *)x + 1);
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
        float s = dot4(v.a.x, __ldg(x4 + 0)) + dot4(v.a.y, __ldg(x4 + 1)) +
                  dot4(v.a.z, __ldg(x4 + 2)) + dot4(v.a.w, __ldg(x4 + 3)) +
                  dot4(v.b.x, __ldg(x4 + 4)) + dot4(v.b.y, __ldg(x4 + 5)) +
                  dot4(v.b.z, __ldg(x4 + 6)) + dot4(v.b.w, __ldg(x4 + 7));
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
        acc4(v.q.x, __ldg(x4 + 0), __ldg(x4 + 4), sq, sx);
        acc4(v.q.y, __ldg(x4 + 1), __ldg(x4 + 5), sq, sx);
        acc4(v.q.z, __ldg(x4 + 2), __ldg(x4 + 6), sq, sx);
        acc4(v.q.w, __ldg(x4 + 3), __ldg(x4 + 7), sq, sx);
        return HAS_M ? v.d * sq + v.m * sx : v.d * (sq - 8.f * sx);
    }
};

// ---------------------------------------------------------------- kernel
// rows: output rows. SW: W has 2*rows rows (gate then up); y = silu(g) * u.
template <class T, int N, bool SW, int U>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(const void *__restrict__ q, const void *__restrict__ s, int rows, int cols,
            const float *__restrict__ x, float *__restrict__ y)
{
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int nu = cols / T::E;
    typename T::Row rg = T::row(q, s, row, cols);
    typename T::Row ru = T::row(q, s, SW ? row + rows : row, cols);
    float ag[N], au[N];
#pragma unroll
    for (int n = 0; n < N; n++) { ag[n] = 0.f; au[n] = 0.f; }

    for (int base = 0; base < nu; base += 32 * U) {
        typename T::V vg[U], vu[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = base + u * 32 + lane;
            if (i < nu) {
                vg[u] = T::load(rg, i);
                if (SW) vu[u] = T::load(ru, i);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = base + u * 32 + lane;
            if (i < nu) {
#pragma unroll
                for (int n = 0; n < N; n++) {
                    const float *xp = x + (size_t)n * cols + (size_t)i * T::E;
                    ag[n] += T::dot(vg[u], xp);
                    if (SW) au[n] += T::dot(vu[u], xp);
                }
            }
        }
    }
#pragma unroll
    for (int n = 0; n < N; n++) {
        float g = kc_warp_sum(ag[n]);
        if (SW) {
            float u = kc_warp_sum(au[n]);
            g = g / (1.f + __expf(-g)) * u;
        }
        if (lane == 0) y[(size_t)n * rows + row] = g;
    }
}

template <class T, bool SW, int U>
static void gemv_launch_t(const kc_matrix *w, int rows, const float *x, int n, float *y,
                          cudaStream_t s)
{
    dim3 grid(KC_CDIV(rows, GEMV_WARPS)), block(GEMV_WARPS * 32);
    int i = 0;
    while (i < n) {
        int m = n - i;
        const float *xi = x + (size_t)i * w->cols;
        float *yi = y + (size_t)i * rows;
        if (m >= 8) { gemv_kernel<T, 8, SW, U><<<grid, block, 0, s>>>(w->q, w->s, rows, w->cols, xi, yi); m = 8; }
        else if (m >= 4) { gemv_kernel<T, 4, SW, U><<<grid, block, 0, s>>>(w->q, w->s, rows, w->cols, xi, yi); m = 4; }
        else if (m >= 2) { gemv_kernel<T, 2, SW, U><<<grid, block, 0, s>>>(w->q, w->s, rows, w->cols, xi, yi); m = 2; }
        else { gemv_kernel<T, 1, SW, U><<<grid, block, 0, s>>>(w->q, w->s, rows, w->cols, xi, yi); m = 1; }
        KC_LAUNCH_CHECK();
        i += m;
    }
}

template <bool SW>
static void gemv_dispatch(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s)
{
    PG_ASSERT(w->q && n >= 1);
    int rows = SW ? w->rows / 2 : w->rows;
    PG_ASSERT(!SW || w->rows % 2 == 0);
    switch (w->dtype) {
    case PG_BF16:
        PG_ASSERT(w->cols % 8 == 0);
        gemv_launch_t<UBf16, SW, SW ? 4 : 8>(w, rows, x, n, y, s); break;
    case PG_Q8_0:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ8_0, SW, SW ? 1 : 2>(w, rows, x, n, y, s); break;
    case PG_Q4_0:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ4<false>, SW, SW ? 2 : 4>(w, rows, x, n, y, s); break;
    case PG_Q4_1:
        PG_ASSERT(w->cols % 32 == 0 && w->s);
        gemv_launch_t<UQ4<true>, SW, SW ? 2 : 4>(w, rows, x, n, y, s); break;
    default:
        PG_DIE("k_gemv: unsupported weight dtype %s", pg_dtype_name(w->dtype));
    }
}

extern "C" void k_gemv(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s)
{
    gemv_dispatch<false>(w, x, n, y, s);
}

extern "C" void k_gemv_swiglu(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s)
{
    gemv_dispatch<true>(w, x, n, y, s);
}
