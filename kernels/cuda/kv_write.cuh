/*
 * kernels/cuda/kv_write.cuh — writing one token's k or v head vector into
 * the KV cache, shared by the RoPE + KV-write kernels (elementwise.cu) and
 * the decode attention kernel that fuses them (attention.cu), so both write
 * bit-identical caches. Internal to kernels/cuda.
 *
 * RoPE arithmetic (the same expressions everywhere, so q and k rotate to the
 * same bits in every kernel): angle = (float)pos * inv_freq[i], sincosf;
 * a' = a*cos - b*sin, b' = a*sin + b*cos for the pair (a, b).
 * int8: the ref_kv_quant_int8 rule (kernels/kernels.h) with the same f32
 * operations: max |x| (exact in any order), s = a / 127, q = clamp(rintf(x / s)).
 */
#ifndef PG_KV_WRITE_CUH
#define PG_KV_WRITE_CUH

#include "kc_util.cuh"

__device__ __forceinline__ void kc_rope_pair(int k, int half, int interleaved, int *i0, int *i1)
{
    *i0 = interleaved ? 2 * k : k;
    *i1 = interleaved ? 2 * k + 1 : k + half;
}

/* The rotation of one pair, with explicit roundings (no FMA contraction), so
 * every kernel that rotates gets the same bits. */
__device__ __forceinline__ void kc_rope_rot(float a, float b, float cs, float sn, float *r0, float *r1)
{
    *r0 = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
    *r1 = __fadd_rn(__fmul_rn(a, sn), __fmul_rn(b, cs));
}

__device__ __forceinline__ int8_t kc_kv_q8(float x, float s)
{
    float v = s > 0.f ? rintf(x / s) : 0.f;
    return (int8_t)fminf(fmaxf(v, -127.f), 127.f);
}

/* One warp: head vector x[hd] (f32, in the qkv row) of position p. rotate:
 * apply RoPE and write the rotated values back into x (k); else copy (v).
 * I8 = 0: dst is bf16 [hd]; I8 = 1: dst is int8 [hd] and *scale its scale.
 * sdst / sscale (may be null): a second copy of the same bytes, in shared
 * memory — the decode attention kernel's staged chunk, so it need not read
 * the new position back from global memory.
 * hd <= 256, even. Every lane of the warp must call it. */
template <bool I8>
__device__ __forceinline__ void kc_kv_write_head(float *x, bool rotate, int p, const float *inv_freq,
                                                 int interleaved, int hd, void *dst, float *scale,
                                                 void *sdst = nullptr, float *sscale = nullptr)
{
    const int lane = threadIdx.x & 31, half = hd / 2;
    float val[8];
    int idx[8];
#pragma unroll
    for (int j = 0; j < 8; j++) { val[j] = 0.f; idx[j] = -1; }
    if (rotate) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int k = lane + 32 * j;
            if (k < half) {
                int i0, i1;
                kc_rope_pair(k, half, interleaved, &i0, &i1);
                float sn, cs;
                sincosf((float)p * inv_freq[k], &sn, &cs);
                kc_rope_rot(x[i0], x[i1], cs, sn, &val[2 * j], &val[2 * j + 1]);
                idx[2 * j] = i0;
                idx[2 * j + 1] = i1;
            }
        }
        __syncwarp();   // every lane has read its pair before any lane writes
#pragma unroll
        for (int j = 0; j < 8; j++) if (idx[j] >= 0) x[idx[j]] = val[j];
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int d = lane + 32 * j;
            if (d < hd) { val[j] = x[d]; idx[j] = d; }
        }
    }
    if (I8) {
        float amax = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) if (idx[j] >= 0) amax = fmaxf(amax, fabsf(val[j]));
        amax = kc_warp_max(amax);
        const float s = amax / 127.f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (idx[j] >= 0) {
                const int8_t q = kc_kv_q8(val[j], s);
                ((int8_t *)dst)[idx[j]] = q;
                if (sdst) ((int8_t *)sdst)[idx[j]] = q;
            }
        }
        if (lane == 0) { *scale = s; if (sscale) *sscale = s; }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (idx[j] >= 0) {
                const uint16_t h = kc_f_bf16(val[j]);
                ((uint16_t *)dst)[idx[j]] = h;
                if (sdst) ((uint16_t *)sdst)[idx[j]] = h;
            }
        }
    }
}

#endif
