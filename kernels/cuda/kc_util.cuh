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

#endif
