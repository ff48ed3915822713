/*
 * kernels/cuda/attention.cu — attention over the static bf16 KV cache.
 *
 * Decode (flash-decoding): the valid length of a sequence is split into
 * chunks of KC_ATTN_CHUNK positions; one block per (row, kv head, chunk)
 * handles every query head of its GQA group, so each K/V byte is read once
 * per step, and a single sequence at long context still spreads over
 * n_kv_heads * n_chunks blocks. Blocks past the valid length exit at once,
 * so the grid is fixed (a CUDA graph can replay it) while the work follows
 * the length. A merge kernel combines the chunk partials in chunk order.
 *
 * Prefill: causal flash attention for one sequence, 64 queries x 64 keys per
 * tile, S = QK^T and O += PV on tensor cores (bf16 WMMA, fp32 accumulate),
 * online softmax in fp32. Head dims 64 and 128; a scalar kernel covers the
 * others.
 * CPU twin: ref_attention (kernels/kernels.h) over the cache converted to f32.
 */
#include "kc_util.cuh"
#include <mma.h>

#define ATT_THREADS 128
#define ATT_MAXG 8
#define ATT_GHD 1024   /* max (query heads per KV head) x head_dim */

// ---------------------------------------------------------------- decode
extern "C" size_t k_attn_decode_part_floats(int n, kc_attn_shape sh)
{
    size_t nchunk = KC_CDIV(sh.max_seq, KC_ATTN_CHUNK);
    /* partials, then one int counter per (row, kv head) */
    return (size_t)n * sh.n_heads * nchunk * (sh.head_dim + 2) + (size_t)n * sh.n_kv_heads;
}

// part layout: [row][q head][chunk][head_dim + 2]: o (unnormalised), m, l.
// HD is the head dim (a template so the per-thread K/V register arrays have
// exact compile-time sizes); every K and V load of a thread is issued at the
// start, so a block costs about one memory round trip.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
attn_decode_kernel(const float *q, int q_stride, const int32_t *pos,
                   const int32_t *slot, const uint16_t *kc,
                   const uint16_t *vc, kc_attn_shape sh, float *part, float *out,
                   int out_stride)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int chunk = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    constexpr int hd = HD;
    const int G = sh.n_heads / sh.n_kv_heads;
    const int nchunk = gridDim.x;
    const int len = pos[b] + 1;
    const int start = chunk * KC_ATTN_CHUNK;
    const int end = min(start + KC_ATTN_CHUNK, len);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // G * hd <= ATT_GHD (checked by the launcher)
    __shared__ float s_q[ATT_GHD];                        // [g][d], pre-scaled
    __shared__ float s_p[ATT_MAXG][KC_ATTN_CHUNK];        // scores, then probabilities
    __shared__ float s_red[ATT_THREADS / 32 * ATT_GHD];   // [warp][g][d]

    float *pbase = part + (((size_t)b * sh.n_heads + (size_t)kvh * G) * nchunk + chunk) * (hd + 2);
    const size_t pstride_head = (size_t)nchunk * (hd + 2);
    if (start >= len) {
        for (int g = tid; g < G; g += ATT_THREADS) {
            pbase[g * pstride_head + hd] = -INFINITY;
            pbase[g * pstride_head + hd + 1] = 0.f;
        }
    } else {
    const float scale = rsqrtf((float)hd);
    for (int e = tid; e < G * hd; e += ATT_THREADS) {
        int g = e / hd, d = e % hd;
        s_q[g * hd + d] = q[(size_t)b * q_stride + (size_t)(kvh * G + g) * hd + d] * scale;
    }
    __syncthreads();

    const size_t head_off = ((size_t)slot[b] * sh.n_kv_heads + kvh) * sh.max_seq;
    const uint16_t *K = kc + head_off * hd;
    const uint16_t *V = vc + head_off * hd;

    // scores: LPT lanes per key, each lane 8 elements (one 16-byte load).
    // All of a lane's K loads are issued before the first use (latency:
    // one round trip per chunk instead of one per token group).
    constexpr int LPT = hd / 8, TPW = 32 / LPT;
    const int sub = lane % LPT, tok_in_warp = lane / LPT;
    constexpr int step = ATT_THREADS / 32 * TPW;
    constexpr int MAXIT = KC_ATTN_CHUNK / step;
    constexpr int NTS = ATT_THREADS / LPT;
    constexpr int MAXV = KC_ATTN_CHUNK / NTS;
    const int d8 = tid % LPT, ts = tid / LPT;
    uint4 kreg[MAXIT], vreg[MAXV];
#pragma unroll
    for (int it = 0; it < MAXIT; it++) {
        int t = start + warp * TPW + it * step + tok_in_warp;
        if (t < end) kreg[it] = *(const uint4 *)(K + (size_t)t * hd + sub * 8);
    }
#pragma unroll
    for (int it = 0; it < MAXV; it++) {   // V does not depend on the scores: load it now
        int t = start + ts + it * NTS;
        if (t < end) vreg[it] = *(const uint4 *)(V + (size_t)t * hd + d8 * 8);
    }
#pragma unroll
    for (int it = 0; it < MAXIT; it++) {
        int t = start + warp * TPW + it * step + tok_in_warp;
        float acc[ATT_MAXG];
#pragma unroll
        for (int g = 0; g < ATT_MAXG; g++) acc[g] = 0.f;
        if (t < end) {
            uint4 kv = kreg[it];
            float kf[8] = { kc_bf16_lo(kv.x), kc_bf16_hi(kv.x), kc_bf16_lo(kv.y), kc_bf16_hi(kv.y),
                            kc_bf16_lo(kv.z), kc_bf16_hi(kv.z), kc_bf16_lo(kv.w), kc_bf16_hi(kv.w) };
#pragma unroll
            for (int g = 0; g < ATT_MAXG; g++) {
                if (g < G) {
                    const float *qq = &s_q[g * hd + sub * 8];
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[g] = fmaf(kf[j], qq[j], acc[g]);
                }
            }
        }
#pragma unroll
        for (int g = 0; g < ATT_MAXG; g++) {
            if (g < G) {
                float v = acc[g];
                for (int o = LPT / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (sub == 0 && t < end) s_p[g][t - start] = v;
            }
        }
    }
    __syncthreads();

    // softmax within the chunk, one warp per head
    __shared__ float s_m[ATT_MAXG], s_l[ATT_MAXG];
    const int cn = end - start;
    for (int g = warp; g < G; g += ATT_THREADS / 32) {
        float m = -INFINITY;
        for (int t = lane; t < cn; t += 32) m = fmaxf(m, s_p[g][t]);
        m = kc_warp_max(m);
        float l = 0.f;
        for (int t = lane; t < cn; t += 32) { float p = __expf(s_p[g][t] - m); s_p[g][t] = p; l += p; }
        l = kc_warp_sum(l);
        if (lane == 0) { s_m[g] = m; s_l[g] = l; }
    }
    __syncthreads();

    // o[g][d] = sum_t p[g][t] v[t][d]: thread -> (8 dims, token subset)
    float o[ATT_MAXG][8];
#pragma unroll
    for (int g = 0; g < ATT_MAXG; g++)
#pragma unroll
        for (int j = 0; j < 8; j++) o[g][j] = 0.f;
#pragma unroll
    for (int it = 0; it < MAXV; it++) {
        int t = start + ts + it * NTS;
        if (t >= end) break;
        uint4 vv = vreg[it];
        float vf[8] = { kc_bf16_lo(vv.x), kc_bf16_hi(vv.x), kc_bf16_lo(vv.y), kc_bf16_hi(vv.y),
                        kc_bf16_lo(vv.z), kc_bf16_hi(vv.z), kc_bf16_lo(vv.w), kc_bf16_hi(vv.w) };
#pragma unroll
        for (int g = 0; g < ATT_MAXG; g++) {
            if (g < G) {
                float p = s_p[g][t - start];
#pragma unroll
                for (int j = 0; j < 8; j++) o[g][j] = fmaf(p, vf[j], o[g][j]);
            }
        }
    }
    // reduce over the lanes of a warp that share d8 (xor offsets LPT..16),
    // then over warps through shared memory, in a fixed order
#pragma unroll
    for (int g = 0; g < ATT_MAXG; g++)
        if (g < G)
#pragma unroll
            for (int j = 0; j < 8; j++)
                for (int off = LPT; off < 32; off <<= 1)
                    o[g][j] += __shfl_xor_sync(0xffffffffu, o[g][j], off);
    float *red = s_red;
    if (lane < LPT) {
#pragma unroll
        for (int g = 0; g < ATT_MAXG; g++)
            if (g < G)
#pragma unroll
                for (int j = 0; j < 8; j++) red[(warp * G + g) * hd + d8 * 8 + j] = o[g][j];
    }
    __syncthreads();
    for (int e = tid; e < G * hd; e += ATT_THREADS) {
        int g = e / hd, d = e % hd;
        float v = 0.f;
        for (int w = 0; w < ATT_THREADS / 32; w++) v += red[(w * G + g) * hd + d];
        pbase[g * pstride_head + d] = v;
    }
    if (tid < G) {
        pbase[tid * pstride_head + hd] = s_m[tid];
        pbase[tid * pstride_head + hd + 1] = s_l[tid];
    }
    }

    // The last block of this (row, kv head) to finish merges the chunks
    // (threadfence-reduction pattern), in chunk order: deterministic, and one
    // launch per layer fewer. The counter is reset for the next launch.
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    int *cnt = (int *)(part + (size_t)gridDim.z * sh.n_heads * nchunk * (hd + 2)) + b * sh.n_kv_heads + kvh;
    if (tid == 0) s_last = atomicAdd(cnt, 1) == nchunk - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int nvalid = KC_CDIV(len, KC_ATTN_CHUNK);
    for (int e = tid; e < G * hd; e += ATT_THREADS) {
        const int g = e / hd, d = e % hd;
        const float *p = part + ((size_t)b * sh.n_heads + (size_t)kvh * G + g) * nchunk * (hd + 2);
        float M = -INFINITY;
#pragma unroll 8
        for (int c = 0; c < nvalid; c++) M = fmaxf(M, __ldcg(p + (size_t)c * (hd + 2) + hd));
        float num = 0.f, den = 0.f;
#pragma unroll 8
        for (int c = 0; c < nvalid; c++) {
            const float *pc = p + (size_t)c * (hd + 2);
            float w = __expf(__ldcg(pc + hd) - M);
            num += w * __ldcg(pc + d);
            den += w * __ldcg(pc + hd + 1);
        }
        out[(size_t)b * out_stride + (size_t)(kvh * G + g) * hd + d] = num / den;
    }
    if (tid == 0) *cnt = 0;
}

extern "C" void k_attn_decode(const float *q, int q_stride, int n, const int32_t *pos,
                              const int32_t *slot, const kc_bf16 *kc, const kc_bf16 *vc,
                              kc_attn_shape sh, float *part, float *out, int out_stride,
                              cudaStream_t s)
{
    if (n <= 0) return;
    int G = sh.n_heads / sh.n_kv_heads;
    PG_ASSERT(sh.n_heads % sh.n_kv_heads == 0 && G <= ATT_MAXG && G * sh.head_dim <= ATT_GHD);
    PG_ASSERT(sh.head_dim % 8 == 0 && sh.head_dim <= 256 && 32 % (sh.head_dim / 8) == 0);  /* 16..256, powers of 2 */
    int nchunk = KC_CDIV(sh.max_seq, KC_ATTN_CHUNK);
    dim3 grid(nchunk, sh.n_kv_heads, n);
    switch (sh.head_dim) {
    case 16:  kc_launch(attn_decode_kernel<16>, grid, dim3(ATT_THREADS), 0, s, q, q_stride, pos, slot, kc, vc, sh, part, out, out_stride); break;
    case 32:  kc_launch(attn_decode_kernel<32>, grid, dim3(ATT_THREADS), 0, s, q, q_stride, pos, slot, kc, vc, sh, part, out, out_stride); break;
    case 64:  kc_launch(attn_decode_kernel<64>, grid, dim3(ATT_THREADS), 0, s, q, q_stride, pos, slot, kc, vc, sh, part, out, out_stride); break;
    case 128: kc_launch(attn_decode_kernel<128>, grid, dim3(ATT_THREADS), 0, s, q, q_stride, pos, slot, kc, vc, sh, part, out, out_stride); break;
    case 256: kc_launch(attn_decode_kernel<256>, grid, dim3(ATT_THREADS), 0, s, q, q_stride, pos, slot, kc, vc, sh, part, out, out_stride); break;
    default: PG_DIE("k_attn_decode: head_dim %d (supported: 16, 32, 64, 128, 256)", sh.head_dim);
    }
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- prefill
using namespace nvcuda;

#define PF_BQ 64
#define PF_BK 64

template <int HD>
struct PfSmem {
    static constexpr int LDQ = HD + 8;     // bf16 elements (16-byte padding)
    static constexpr int LDS = PF_BK + 4;  // floats
    static constexpr int LDP = PF_BK + 8;  // bf16
    static constexpr int LDO = HD + 4;     // floats
    static constexpr size_t Q = 0;
    static constexpr size_t K = Q + PF_BQ * LDQ * 2;
    static constexpr size_t V = K + PF_BK * LDQ * 2;
    static constexpr size_t S = V + PF_BK * LDQ * 2;
    static constexpr size_t P = S + PF_BQ * LDS * 4;
    static constexpr size_t O = P + PF_BQ * LDP * 2;
    static constexpr size_t M = O + PF_BQ * LDO * 4;
    static constexpr size_t L = M + PF_BQ * 4;
    static constexpr size_t BYTES = L + PF_BQ * 4;
};

template <int HD>
__global__ void __launch_bounds__(128)
attn_prefill_wmma_kernel(const float *q, int q_stride, int n, int pos0,
                         const uint16_t *K, const uint16_t *V,
                         size_t head_stride, int G, float *out, int out_stride)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    // grid: (query tile, query head within the GQA group, kv head)
    q += (size_t)blockIdx.z * G * HD;
    out += (size_t)blockIdx.z * G * HD;
    K += (size_t)blockIdx.z * head_stride;
    V += (size_t)blockIdx.z * head_stride;
    using SM = PfSmem<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)(smem + SM::Q);
    __nv_bfloat16 *sK = (__nv_bfloat16 *)(smem + SM::K);
    __nv_bfloat16 *sV = (__nv_bfloat16 *)(smem + SM::V);
    float *sS = (float *)(smem + SM::S);
    __nv_bfloat16 *sP = (__nv_bfloat16 *)(smem + SM::P);
    float *sO = (float *)(smem + SM::O);
    float *sM = (float *)(smem + SM::M);
    float *sL = (float *)(smem + SM::L);

    const int h = blockIdx.y, q0 = blockIdx.x * PF_BQ;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int qend = min(q0 + PF_BQ, n);
    const float scale = rsqrtf((float)HD);
    const size_t kv_off = 0;  // K/V point at this head's [max_seq][HD] rows
    (void)kv_off;

    for (int e = tid; e < PF_BQ * HD; e += 128) {
        int r = e / HD, d = e % HD;
        float v = (q0 + r < n) ? q[(size_t)(q0 + r) * q_stride + (size_t)h * HD + d] * scale : 0.f;
        sQ[r * SM::LDQ + d] = __float2bfloat16_rn(v);
    }
    for (int e = tid; e < PF_BQ * SM::LDO; e += 128) sO[e] = 0.f;
    for (int r = tid; r < PF_BQ; r += 128) { sM[r] = -INFINITY; sL[r] = 0.f; }

    const int nkeys = pos0 + qend;  // keys [0, nkeys) are visible to some query of the tile
    for (int k0 = 0; k0 < nkeys; k0 += PF_BK) {
        __syncthreads();
        for (int e = tid; e < PF_BK * (HD / 8); e += 128) {
            int r = e / (HD / 8), c = (e % (HD / 8)) * 8;
            uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + r < nkeys) {
                kk = *(const uint4 *)(K + (size_t)(k0 + r) * HD + c);
                vv = *(const uint4 *)(V + (size_t)(k0 + r) * HD + c);
            }
            *(uint4 *)(sK + r * SM::LDQ + c) = kk;
            *(uint4 *)(sV + r * SM::LDQ + c) = vv;
        }
        __syncthreads();

        // S rows [16w, 16w+16) x 64 keys
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[PF_BK / 16];
#pragma unroll
        for (int j = 0; j < PF_BK / 16; j++) wmma::fill_fragment(sacc[j], 0.f);
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, sQ + (warp * 16) * SM::LDQ + kk * 16, SM::LDQ);
#pragma unroll
            for (int j = 0; j < PF_BK / 16; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bk;
                wmma::load_matrix_sync(bk, sK + (j * 16) * SM::LDQ + kk * 16, SM::LDQ);
                wmma::mma_sync(sacc[j], a, bk, sacc[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < PF_BK / 16; j++)
            wmma::store_matrix_sync(sS + (warp * 16) * SM::LDS + j * 16, sacc[j], SM::LDS,
                                    wmma::mem_row_major);
        __syncwarp();

        // online softmax: 2 lanes per row, 32 keys each
        {
            const int r = warp * 16 + lane / 2, half = lane & 1;
            const int qabs = pos0 + q0 + r;  // query position
            float *srow = sS + r * SM::LDS + half * 32;
            float mx = -INFINITY;
            for (int c = 0; c < 32; c++) {
                int key = k0 + half * 32 + c;
                float v = (key <= qabs && q0 + r < n) ? srow[c] : -INFINITY;
                srow[c] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, mx);
            const float corr = m_new == -INFINITY ? 1.f : __expf(m_old - m_new);
            float sum = 0.f;
            __nv_bfloat16 *prow = sP + r * SM::LDP + half * 32;
            for (int c = 0; c < 32; c++) {
                float p = m_new == -INFINITY ? 0.f : __expf(srow[c] - m_new);
                sum += p;
                prow[c] = __float2bfloat16_rn(p);
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            float *orow = sO + r * SM::LDO + half * (HD / 2);
            for (int c = 0; c < HD / 2; c++) orow[c] *= corr;
            __syncwarp();
            if (half == 0) { sL[r] = sL[r] * corr + sum; sM[r] = m_new; }
        }
        __syncwarp();

        // O rows [16w, 16w+16) += P (16 x 64) V (64 x HD)
#pragma unroll
        for (int j = 0; j < HD / 16; j++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> oacc;
            wmma::load_matrix_sync(oacc, sO + (warp * 16) * SM::LDO + j * 16, SM::LDO,
                                   wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < PF_BK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bv;
                wmma::load_matrix_sync(a, sP + (warp * 16) * SM::LDP + kk * 16, SM::LDP);
                wmma::load_matrix_sync(bv, sV + (kk * 16) * SM::LDQ + j * 16, SM::LDQ);
                wmma::mma_sync(oacc, a, bv, oacc);
            }
            wmma::store_matrix_sync(sO + (warp * 16) * SM::LDO + j * 16, oacc, SM::LDO,
                                    wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int e = tid; e < PF_BQ * HD; e += 128) {
        int r = e / HD, d = e % HD;
        if (q0 + r < n)
            out[(size_t)(q0 + r) * out_stride + (size_t)h * HD + d] = sO[r * SM::LDO + d] / sL[r];
    }
    (void)G;
}

// One warp per (query, head); online softmax in registers. Any head_dim <= 256.
__global__ void attn_prefill_scalar_kernel(const float *q, int q_stride, int n,
                                           int pos0, const uint16_t *kc,
                                           const uint16_t *vc, size_t head_stride,
                                           kc_attn_shape sh, float *out, int out_stride)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int wq = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int i = wq / sh.n_heads, h = wq % sh.n_heads;
    if (i >= n) return;
    const int hd = sh.head_dim, G = sh.n_heads / sh.n_kv_heads;
    const uint16_t *K = kc + (size_t)(h / G) * head_stride, *V = vc + (size_t)(h / G) * head_stride;
    const float *qq = q + (size_t)i * q_stride + (size_t)h * hd;
    const float scale = rsqrtf((float)hd);
    float qr[8], o[8];
    for (int j = 0; j < 8; j++) { int d = lane + 32 * j; qr[j] = d < hd ? qq[d] * scale : 0.f; o[j] = 0.f; }
    float m = -INFINITY, l = 0.f;
    for (int t = 0; t <= pos0 + i; t++) {
        float s = 0.f;
        for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) s += qr[j] * kc_bf16_f(K[(size_t)t * hd + d]); }
        s = kc_warp_sum(s);
        float mn = fmaxf(m, s), c = __expf(m - mn), p = __expf(s - mn);
        l = l * c + p;
        for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) o[j] = o[j] * c + p * kc_bf16_f(V[(size_t)t * hd + d]); }
        m = mn;
    }
    for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) out[(size_t)i * out_stride + (size_t)h * hd + d] = o[j] / l; }
}

template <int HD>
static void prefill_wmma(const float *q, int q_stride, int n, int pos0, const uint16_t *K,
                         const uint16_t *V, size_t head_stride, kc_attn_shape sh, float *out,
                         int out_stride, cudaStream_t s)
{
    const size_t bytes = PfSmem<HD>::BYTES;
    KC_CHECK(cudaFuncSetAttribute(attn_prefill_wmma_kernel<HD>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    const int G = sh.n_heads / sh.n_kv_heads;
    kc_launch(attn_prefill_wmma_kernel<HD>, dim3(KC_CDIV(n, PF_BQ), G, sh.n_kv_heads), dim3(128), bytes, s,
              q, q_stride, n, pos0, K, V, head_stride, G, out, out_stride);
}

extern "C" void k_attn_prefill(const float *q, int q_stride, int n, int pos0, int slot,
                               const kc_bf16 *kc, const kc_bf16 *vc, kc_attn_shape sh,
                               float *out, int out_stride, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT(sh.n_heads % sh.n_kv_heads == 0 && sh.head_dim <= 256);
    const size_t head_stride = (size_t)sh.max_seq * sh.head_dim;
    const uint16_t *K = kc + (size_t)slot * sh.n_kv_heads * head_stride;
    const uint16_t *V = vc + (size_t)slot * sh.n_kv_heads * head_stride;
    /* The scalar kernel walks the keys serially per (query, head): fine (and
     * fp32-exact) for short sequences, far too slow for a short chunk after a
     * long context, which goes to the tensor cores. */
    const bool tc = n >= 64 || pos0 + n > 256;
    if (sh.head_dim == 128 && tc)
        prefill_wmma<128>(q, q_stride, n, pos0, K, V, head_stride, sh, out, out_stride, s);
    else if (sh.head_dim == 64 && tc)
        prefill_wmma<64>(q, q_stride, n, pos0, K, V, head_stride, sh, out, out_stride, s);
    else {
        int warps = n * sh.n_heads;
        kc_launch(attn_prefill_scalar_kernel, dim3(KC_CDIV(warps, 4)), dim3(128), 0, s, q, q_stride, n, pos0, K, V,
                                                                    head_stride, sh, out, out_stride);
        KC_LAUNCH_CHECK();
    }
}
