/*
 * kernels/cuda/kc_util.cuh — device helpers shared by the .cu files of this
 * folder: warp/block reductions, 16-byte streaming loads, bf16/f16 unpacking.
 * Internal to kernels/cuda; nothing outside this folder includes it.
 */
#ifndef PG_KC_UTIL_CUH
#define PG_KC_UTIL_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "kernels_cuda.h"

#define KC_LAUNCH_CHECK() KC_CHECK(cudaGetLastError())
#define KC_CDIV(a, b) (((a) + (b) - 1) / (b))

__device__ __forceinline__ float kc_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float kc_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum; every thread gets the result. sh: >= 32 floats of shared
 * memory. The reduction order is fixed, so results are deterministic. */
__device__ __forceinline__ float kc_block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = kc_warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    return kc_warp_sum(v);
}
__device__ __forceinline__ float kc_block_max(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = kc_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return kc_warp_max(v);
}

/* 16-byte load that bypasses L1 allocation: weights are read once per step. */
__device__ __forceinline__ uint4 kc_ld_stream(const void *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

/* Two bf16 packed in a u32 -> floats (exact: bf16 is the top half of f32). */
__device__ __forceinline__ float kc_bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float kc_bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float kc_bf16_f(uint16_t u) { return __uint_as_float((uint32_t)u << 16); }
__device__ __forceinline__ uint16_t kc_f_bf16(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}
__device__ __forceinline__ float kc_f16_f(uint16_t u) {
    return __half2float(__ushort_as_half(u));
}

// ---------------------------------------------------------------- PDL
// Programmatic dependent launch (Hopper and later): a kernel launched with
// kc_launch may be scheduled while its predecessor in the stream drains.
// Contract for every kernel launched that way: call kc_pdl_trigger() early
// (lets *its* successor be scheduled; the bf16 matrix-vector kernel calls it
// after its loads instead, gemv.cu says why) and kc_pdl_wait() before touching any
// memory a predecessor writes or reads-after (the wait returns once the
// predecessor grid has completed and its writes are visible). The matrix-vector
// kernels issue their first weight loads before the wait, which hides the
// launch gap and the previous kernel's tail behind the weight stream.
// On devices before sm_90 both are no-ops and launches are ordinary.
__device__ __forceinline__ void kc_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void kc_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 1 if the current device supports PDL (compute capability >= 9.0) and
// PEREGRINE_NO_PDL is unset. Read once per process: a device property, like
// the properties record llm.c keeps, not mutable state.
int kc_pdl_enabled(void);

// ---------------------------------------------------------------- norm epilogues (kc_gemv_epi)
// The epilogue kind of a decode product, a template parameter of the product
// kernels (EPI), dispatched on the host: KC_EPI_NONE compiles to the plain
// product. A runtime test of the kc_gemv_epi pointers instead cost every
// product registers, the plain ones included (bf16 4x4 gemv 48 -> 52, 10 -> 9
// blocks per SM; the quantized kernel 96-98 -> 106-114), and the bf16 7B
// decode lost 1.2% on an H200 where leaving out the norm kernels saves ~5%.
// With the template the bf16 step still loses 0.4% (7B) / 1.4% (8B) and the
// quantized ones gain ~7%, so the engine fuses only quantized layers
// (engine_cuda.c, fuse_norm; bench/results/h200.md, 2026-12-03 r12).
enum { KC_EPI_NONE = 0, KC_EPI_PRODUCE = 1, KC_EPI_CONSUME = 2 };

// Host: the kind of e (a producer or a consumer, never both).
static inline int kc_epi_kind(const kc_gemv_epi &e)
{
    PG_ASSERT(!(e.resid && e.acc_in));
    if (e.resid) PG_ASSERT(e.xg && e.g && e.acc_out);
    return e.resid ? KC_EPI_PRODUCE : e.acc_in ? KC_EPI_CONSUME : KC_EPI_NONE;
}

// Host: the epilogue of columns [i, ...) of a product with `rows` outputs per
// column (a pass of a product split into passes of a few columns).
static inline kc_gemv_epi kc_epi_at(const kc_gemv_epi &e, int i, int rows)
{
    kc_gemv_epi r = e;
    if (!r.acc_ld) r.acc_ld = KC_SS_SLOTS;
    const size_t ld = r.acc_ld;
    if (r.resid) { r.resid += (size_t)i * rows; r.xg += (size_t)i * rows; r.acc_out += (size_t)i * ld; }
    if (r.acc_in) r.acc_in += (size_t)i * ld;
    return r;
}

// Producer: output r of column n (of rows) is v: the residual add, x * g, and
// x^2 into one of the column's KC_SS_SLOTS fixed-point accumulators. The
// slot is the row's (r mod KC_SS_SLOTS): a product's atomics spread over the
// slots, also those of one block (the quantized kernel stores 16 rows of a
// tile at once); any slot gives the same sum. Both device helpers take e as
// kc_epi_at leaves it (acc_ld set). The residual add is __fadd_rn, never
// contracted with the product's last multiply into an FMA (the int8 kernel's
// per-row scale): x + v is then the plain product's v added, bit for bit.
__device__ __forceinline__ void kc_epi_produce(const kc_gemv_epi &e, int n, int rows, int r, float v)
{
    const size_t i = (size_t)n * rows + r;
    const float xr = __fadd_rn(e.resid[i], v);
    e.resid[i] = xr;
    e.xg[i] = xr * e.g[r];
    atomicAdd(e.acc_out + (size_t)n * e.acc_ld + (r & (KC_SS_SLOTS - 1)),
              (unsigned long long)__float2ull_rn(xr * xr * (float)KC_SS_ONE));
}
// Consumer: column n's 1 / rms, by a whole warp (lane k reads slot k; an
// integer sum, so the order does not matter). Every lane gets it.
__device__ __forceinline__ float kc_epi_inv_warp(const kc_gemv_epi &e, int n, int cols)
{
    static_assert(KC_SS_SLOTS == 32, "one slot per lane");
    unsigned long long a = e.acc_in[(size_t)n * e.acc_ld + (threadIdx.x & 31)];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    const float ss = (float)((double)a * (1.0 / KC_SS_ONE));
    return rsqrtf(ss / (float)cols + e.eps);
}

template <typename... KArgs, typename... Args>
static inline void kc_launch(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t s, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = kc_pdl_enabled() ? 1 : 0;
    KC_CHECK(cudaLaunchKernelEx(&cfg, kern, static_cast<KArgs>(args)...));
}

#endif
