/*
 * kernels/cuda/attention.cu — attention over the static KV cache, bf16 or
 * int8 (one f32 scale per (kv head, position); kernels/kernels.h fixes the
 * layout and the quantizer). Both kernels take the element type as a
 * template parameter; int8 elements are dequantized as they are used,
 * x = s * q, exactly the values the CPU twin reads.
 *
 * Decode (flash-decoding): the valid length of a sequence is cut into chunks
 * of KC_ATTN_CHUNK positions, and the chunks into at most `nsplit` contiguous
 * runs, one block per (split, kv head, row). A block streams its run chunk by
 * chunk through shared memory (cp.async, two stages: the next chunk loads
 * while this one is computed) with an online softmax, handling every query
 * head of its GQA group, so each K/V byte is read once per step. nsplit is
 * fixed by the shape and the SM count (one wave of two resident blocks per SM
 * for one row), so the grid is fixed (a CUDA graph can replay it) while the
 * work follows the length: at short context each split has one chunk and the
 * splits past the length exit at once; at long context a block streams many
 * chunks and there are few partials to merge. The last block of a (row, kv
 * head) to finish merges the splits in split order (deterministic). The
 * decode step's form (k_rope_attn_decode) also rotates q and writes the new
 * k/v first; since only that new position depends on the kernel before it
 * (the QKV product), each block requests its first two chunks before the
 * programmatic-dependent-launch wait, and the writing block puts the new
 * k/v into its staged chunk itself (measured on an H200, 7B: 241 vs 233
 * tok/s end to end, together with the add+RMSNorm change in elementwise.cu).
 *
 * Prefill: causal flash attention for one sequence, 64 queries x 64 keys per
 * tile, S = QK^T and O += PV on tensor cores (bf16 WMMA, fp32 accumulate),
 * online softmax in fp32. Head dims 64 and 128; a scalar kernel covers the
 * others. int8 K/V tiles are dequantized into bf16 shared memory.
 * CPU twin: ref_attention (kernels/kernels.h) over the cache converted to f32
 * (bf16 -> f32, or s * q for int8).
 */
#include "kc_util.cuh"
#include "kv_write.cuh"
#include <mma.h>

/* 256 threads (8 warps) per block: measured against 128 on an H200
 * (bench/results/h200.md, 2026-12-02 12:54Z): +7% decode at 3.9K and 8K context,
 * +4% with int8 / int4 weights, -1% with bf16 weights at ~100 positions. */
#define ATT_THREADS 256
#define ATT_MAXG 8
#define ATT_GHD 1024   /* max (query heads per KV head) x head_dim */
#define ATT_EPT (ATT_GHD / ATT_THREADS)   /* output elements per thread, at most */
#define ATT_MAX_SPLIT 256

// ---------------------------------------------------------------- element access
// Eight consecutive cache elements of one position -> f32. bf16: one 16-byte
// load; int8: one 8-byte load and the position's scale.
template <bool I8> struct KvElems;
template <> struct KvElems<false> {
    typedef uint4 V;
    static __device__ __forceinline__ V load(const void *base, size_t off) {
        return *(const uint4 *)((const uint16_t *)base + off);
    }
    static __device__ __forceinline__ void cvt(const V &v, float s, float f[8]) {
        (void)s;
        f[0] = kc_bf16_lo(v.x); f[1] = kc_bf16_hi(v.x); f[2] = kc_bf16_lo(v.y); f[3] = kc_bf16_hi(v.y);
        f[4] = kc_bf16_lo(v.z); f[5] = kc_bf16_hi(v.z); f[6] = kc_bf16_lo(v.w); f[7] = kc_bf16_hi(v.w);
    }
};
__device__ __forceinline__ float kc_i8f(uint32_t w, int byte) {
    return (float)((int32_t)(w << (24 - 8 * byte)) >> 24);
}
__device__ __forceinline__ uint32_t kc_pack_bf16(float lo, float hi) {
    return (uint32_t)kc_f_bf16(lo) | ((uint32_t)kc_f_bf16(hi) << 16);
}
template <> struct KvElems<true> {
    typedef uint2 V;
    static __device__ __forceinline__ V load(const void *base, size_t off) {
        return *(const uint2 *)((const int8_t *)base + off);
    }
    static __device__ __forceinline__ void cvt(const V &v, float s, float f[8]) {
#pragma unroll
        for (int j = 0; j < 4; j++) { f[j] = s * kc_i8f(v.x, j); f[4 + j] = s * kc_i8f(v.y, j); }
    }
};

// ---------------------------------------------------------------- decode
// cp.async (sm_80+): global -> shared copies that hold no registers.
__device__ __forceinline__ void kc_cp_async16(void *smem, const void *gmem)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(sa), "l"(gmem) : "memory");
}
__device__ __forceinline__ void kc_cp_async4(void *smem, const void *gmem)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(sa), "l"(gmem) : "memory");
}
__device__ __forceinline__ void kc_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void kc_cp_async_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
__device__ __forceinline__ void kc_cp_async_wait0() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

/* Dynamic shared memory of the decode kernel: two stages of K and V chunks
 * (+ their int8 scales). */
static size_t att_dyn_bytes(int hd, bool i8)
{
    const size_t ch = i8 ? 2 * KC_ATTN_CHUNK : KC_ATTN_CHUNK;   // the kernel's CH
    return 2 * (2 * ch * hd * (i8 ? 1 : 2) + (i8 ? 2 * ch * 4 : 0));
}

static int att_sm_count(void)
{
    static int sms = 0;   // a device property, read once (benign race: same value)
    if (sms == 0) {
        int dev = 0, n = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) {
            (void)cudaGetLastError();
            n = 132;
        }
        sms = n;
    }
    return sms;
}

/* Splits per (row, kv head): enough for one row to fill the GPU in one wave
 * of ATT_BLOCKS_PER_SM resident blocks per SM (the shared-memory stages
 * allow two at head_dim 128), each block streaming its run of chunks; at
 * most one split per chunk. Measured on an H200 (7B shape, 8K context): this
 * (8 splits of 16 chunks) took 105 us per layer, 33 splits of 4 chunks
 * 118 us. Depends on the shape only (not on the batch), so the workspace
 * layout is the same for every launch. */
#define ATT_BLOCKS_PER_SM 2
static int att_nsplit(kc_attn_shape sh)
{
    int nchunk = KC_CDIV(sh.max_seq, KC_ATTN_CHUNK);
    int want = ATT_BLOCKS_PER_SM * att_sm_count() / sh.n_kv_heads;
    int ns = want < nchunk ? want : nchunk;
    int G = sh.n_heads / sh.n_kv_heads;
    int cap = ATT_GHD / (G > 0 ? G : 1);   // the merge stages G * nsplit (m, l) pairs in shared memory
    if (cap > ATT_MAX_SPLIT) cap = ATT_MAX_SPLIT;
    return ns < cap ? (ns > 0 ? ns : 1) : cap;
}

/* Workspace of one row: n_kv_heads int arrival counters, then the partials
 * [q head][split][head_dim + 2] (o unnormalised, m, l). */
static __host__ __device__ size_t att_row_floats(kc_attn_shape sh, int nsplit)
{
    return (size_t)sh.n_kv_heads + (size_t)sh.n_heads * nsplit * (sh.head_dim + 2);
}

extern "C" size_t k_attn_decode_part_floats(int n, kc_attn_shape sh)
{
    return (size_t)n * att_row_floats(sh, att_nsplit(sh));
}

// HD is the head dim (a template so the per-thread K/V register arrays have
// exact compile-time sizes); every K and V load of a chunk is issued at the
// start of the chunk, so a chunk costs about one memory round trip.
// ROPE: q and the new k are not rotated yet and the new k/v not in the
// cache: every block rotates its q heads while staging them, and the block
// whose split holds position pos (the last used split) rotates k, writes k
// and v into the cache (kc_kv_write_head, the bits k_rope_kv_write(_int8)
// writes) and the rotated k back into q's row, before reading its chunks.
template <int HD, bool I8, bool ROPE>
__global__ void __launch_bounds__(ATT_THREADS)
attn_decode_kernel(float *q, int q_stride, const int32_t *pos,
                   const int32_t *slot, void *kc, void *vc,
                   float *ks, float *vs, const float *inv_freq, kc_attn_shape sh, float *part,
                   float *out, int out_stride)
{
    typedef KvElems<I8> KE;
    kc_pdl_trigger();
    // Before waiting for the previous kernel: pos and slot were copied in
    // before the step's first kernel, and with ROPE every cached position but
    // the new one (len - 1) was written by earlier steps, so this block's
    // first two chunks start streaming in while the QKV product still runs.
    // Without ROPE (a prefill chunk) the previous kernel wrote the chunk's
    // positions: everything waits.
    if (!ROPE) kc_pdl_wait();
    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    constexpr int hd = HD;
    const int G = sh.n_heads / sh.n_kv_heads;
    const int nsplit = gridDim.x;
    const int len = pos[b] + 1;
    // positions per chunk: int8 chunks are twice as long, so a stage holds as
    // many bytes as a bf16 one and the per-chunk fixed costs halve per byte
    constexpr int CH = I8 ? 2 * KC_ATTN_CHUNK : KC_ATTN_CHUNK;
    const int nvalid = KC_CDIV(len, CH);
    const int cps = KC_CDIV(nvalid, nsplit);           // chunks per split
    const int nused = KC_CDIV(nvalid, cps);            // splits with work
    if (split >= nused) return;                        // not counted: the merge waits for nused blocks
    const int c0 = split * cps, c1 = min(c0 + cps, nvalid);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // G * hd <= ATT_GHD (checked by the launcher)
    __shared__ float s_q[ATT_GHD];                        // [g][d], pre-scaled
    __shared__ float s_p[ATT_MAXG][CH];                   // scores, then probabilities
    __shared__ float s_red[ATT_THREADS / 32 * ATT_GHD];   // [warp][g][d]; the merge's scratch
    __shared__ float s_acc[ATT_GHD];                      // running o of this split, [g][d]
    __shared__ float s_M[ATT_MAXG], s_L[ATT_MAXG];        // running max and sum per head
    __shared__ float s_a[ATT_MAXG], s_b[ATT_MAXG];        // this chunk's rescale factors (old, new)

    float *row = part + (size_t)b * att_row_floats(sh, nsplit);
    int *cnt = (int *)row + kvh;
    float *pbase = row + sh.n_kv_heads + ((size_t)kvh * G * nsplit + split) * (hd + 2);
    const size_t pstride_head = (size_t)nsplit * (hd + 2);
    const size_t head_off = ((size_t)slot[b] * sh.n_kv_heads + kvh) * sh.max_seq;
    const float *KS = I8 ? ks + head_off : nullptr, *VS = I8 ? vs + head_off : nullptr;

    // K/V chunks land in shared memory through cp.async, two stages deep:
    // chunk c + 1 streams in while chunk c is computed, without holding
    // registers, so an SM keeps several chunks of bytes in flight.
    extern __shared__ __align__(16) unsigned char att_dyn[];
    constexpr int ESZ = I8 ? 1 : 2;
    constexpr int TILE = CH * HD * ESZ;                     // bytes of one K (or V) chunk
    constexpr int STAGE = 2 * TILE + (I8 ? 2 * CH * 4 : 0);
    const unsigned char *kbase = (const unsigned char *)kc, *vbase = (const unsigned char *)vc;
    // skip_new: leave position len - 1 out (ROPE, before the wait: this
    // block writes it into the stage itself, see below)
    auto issue = [&](int c, int stg, bool skip_new) {
        if (c < c1) {
            const int start = c * CH, n_t = min(CH, len - (skip_new ? 1 : 0) - start);
            unsigned char *dst = att_dyn + (size_t)stg * STAGE;
            const size_t src0 = (head_off + start) * (size_t)(HD * ESZ);
            const int n16 = n_t * (HD * ESZ / 16);              // 16-byte pieces of each tile
            for (int i = tid; i < n16; i += ATT_THREADS) {
                kc_cp_async16(dst + i * 16, kbase + src0 + (size_t)i * 16);
                kc_cp_async16(dst + TILE + i * 16, vbase + src0 + (size_t)i * 16);
            }
            if (I8) {
                float *ds = (float *)(dst + 2 * TILE);
                for (int i = tid; i < 2 * CH; i += ATT_THREADS) {   // K scales, then V scales
                    const int t = i < CH ? i : i - CH;
                    if (t < n_t) kc_cp_async4(ds + i, (i < CH ? KS : VS) + start + t);
                }
            }
        }
        kc_cp_async_commit();   // one group per call, empty or not: the wait counts stay uniform
    };
    issue(c0, 0, ROPE);
    issue(c0 + 1, 1, ROPE);
    if (ROPE) kc_pdl_wait();

    const float scale = rsqrtf((float)hd);
    float *qrow = q + (size_t)b * q_stride;
    for (int e = tid; e < G * hd; e += ATT_THREADS) {
        int g = e / hd, d = e % hd;
        const float *qh = qrow + (size_t)(kvh * G + g) * hd;
        float v;
        if (ROPE) {
            const int half = hd / 2, k = sh.interleaved ? d / 2 : d % half;
            int i0, i1;
            kc_rope_pair(k, half, sh.interleaved, &i0, &i1);
            float sn, cs, r0, r1;
            sincosf((float)(len - 1) * inv_freq[k], &sn, &cs);
            kc_rope_rot(qh[i0], qh[i1], cs, sn, &r0, &r1);
            v = d == i0 ? r0 : r1;
        } else {
            v = qh[d];
        }
        s_q[g * hd + d] = v * scale;
        s_acc[e] = 0.f;
    }
    if (tid < ATT_MAXG) { s_M[tid] = -INFINITY; s_L[tid] = 0.f; }

    if (ROPE) {
        if (split == nused - 1 && warp < 2) {   // warp 0: k, warp 1: v of position len - 1
            const size_t at = head_off + len - 1;
            float *x = qrow + (size_t)(sh.n_heads + (warp ? sh.n_kv_heads : 0) + kvh) * hd;
            void *dst = I8 ? (void *)((int8_t *)(warp ? vc : kc) + at * hd)
                           : (void *)((uint16_t *)(warp ? vc : kc) + at * hd);
            // the new position's chunk is c1 - 1; staged already (stage
            // (c1 - 1 - c0)) when it is one of the first two, else loaded in
            // the loop below, after this write
            const int cl = c1 - 1, r = len - 1 - cl * CH;
            unsigned char *stg = cl - c0 < 2 ? att_dyn + (size_t)(cl - c0) * STAGE : nullptr;
            kc_kv_write_head<I8>(x, warp == 0, len - 1, inv_freq, sh.interleaved, hd, dst,
                                 I8 ? (warp ? vs : ks) + at : nullptr,
                                 stg ? stg + (warp ? TILE : 0) + (size_t)r * HD * ESZ : nullptr,
                                 stg && I8 ? (float *)(stg + 2 * TILE) + (warp ? CH : 0) + r : nullptr);
            if (!stg) __threadfence();   // in L2 before this block's cp.async reads it
        }
    }

    // scores: LPT lanes per key, each lane 8 elements
    constexpr int LPT = hd / 8, TPW = 32 / LPT;
    const int sub = lane % LPT, tok_in_warp = lane / LPT;
    constexpr int step = ATT_THREADS / 32 * TPW;
    constexpr int MAXIT = KC_CDIV(CH, step);   // a chunk can be shorter than one step (small hd): t < end guards
    constexpr int NTS = ATT_THREADS / LPT;
    constexpr int MAXV = KC_CDIV(CH, NTS);
    const int d8 = tid % LPT, ts = tid / LPT;

    __syncthreads();   // s_q, s_acc, s_M written; the new position (ROPE) is in the cache and its stage
    for (int c = c0; c < c1; c++) {
        const int start = c * CH, end = min(start + CH, len);
        const int stg = (c - c0) & 1;
        const unsigned char *sK = att_dyn + (size_t)stg * STAGE, *sV = sK + TILE;
        const float *sKS = (const float *)(sK + 2 * TILE), *sVS = sKS + CH;
        kc_cp_async_wait1();   // this thread's pieces of chunk c have landed ...
        __syncthreads();       // ... and everyone's; s_p, s_red, s_a are free again
#pragma unroll
        for (int it = 0; it < MAXIT; it++) {
            int t = start + warp * TPW + it * step + tok_in_warp;
            float acc[ATT_MAXG];
#pragma unroll
            for (int g = 0; g < ATT_MAXG; g++) acc[g] = 0.f;
            if (t < end) {
                float kf[8];
                KE::cvt(KE::load(sK, (size_t)(t - start) * hd + sub * 8), I8 ? sKS[t - start] : 1.f, kf);
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

        // softmax within the chunk, one warp per head, and the running
        // (max, sum) of the split: acc <- acc * a + chunk * b
        const int cn = end - start;
        for (int g = warp; g < G; g += ATT_THREADS / 32) {
            float m = -INFINITY;
            for (int t = lane; t < cn; t += 32) m = fmaxf(m, s_p[g][t]);
            m = kc_warp_max(m);
            float l = 0.f;
            for (int t = lane; t < cn; t += 32) { float p = __expf(s_p[g][t] - m); s_p[g][t] = p; l += p; }
            l = kc_warp_sum(l);
            if (lane == 0) {
                const float mo = s_M[g], mn = fmaxf(mo, m);
                const float a = __expf(mo - mn), bb = __expf(m - mn);
                s_a[g] = a; s_b[g] = bb;
                s_L[g] = s_L[g] * a + l * bb;
                s_M[g] = mn;
            }
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
            float vf[8];
            KE::cvt(KE::load(sV, (size_t)(t - start) * hd + d8 * 8), I8 ? sVS[t - start] : 1.f, vf);
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
        if (lane < LPT) {
#pragma unroll
            for (int g = 0; g < ATT_MAXG; g++)
                if (g < G)
#pragma unroll
                    for (int j = 0; j < 8; j++) s_red[(warp * G + g) * hd + d8 * 8 + j] = o[g][j];
        }
        __syncthreads();
        for (int e = tid; e < G * hd; e += ATT_THREADS) {   // each thread owns its elements
            const int g = e / hd, d = e % hd;
            float v = 0.f;
            for (int w = 0; w < ATT_THREADS / 32; w++) v += s_red[(w * G + g) * hd + d];
            s_acc[e] = s_acc[e] * s_a[g] + v * s_b[g];
        }
        __syncthreads();   // stage stg fully read
        issue(c + 2, stg, false);
    }
    kc_cp_async_wait0();
    __syncthreads();   // s_M, s_L of the last chunk
    if (nused == 1) {   // short context: one split holds everything, nothing to merge
        for (int e = tid; e < G * hd; e += ATT_THREADS)
            out[(size_t)b * out_stride + (size_t)kvh * G * hd + e] = s_acc[e] / s_L[e / hd];
        return;
    }
    for (int e = tid; e < G * hd; e += ATT_THREADS) {
        const int g = e / hd, d = e % hd;
        pbase[g * pstride_head + d] = s_acc[e];
        if (d == 0) { pbase[g * pstride_head + hd] = s_M[g]; pbase[g * pstride_head + hd + 1] = s_L[g]; }
    }

    // The last block of this (row, kv head) to finish merges the splits
    // (threadfence-reduction pattern), in split order: deterministic, and no
    // second launch. The counter is reset for the next launch.
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(cnt, 1) == nused - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const float *p0 = row + sh.n_kv_heads + (size_t)kvh * G * pstride_head;   // [g][split][hd + 2]
    float *s_w = s_red, *s_den = s_red + ATT_GHD * 2;      // [g][split] weights; [g] denominators
    for (int i = tid; i < G * nused; i += ATT_THREADS) {
        const int g = i / nused, c = i % nused;
        s_w[i] = __ldcg(p0 + g * pstride_head + (size_t)c * (hd + 2) + hd);
        s_w[ATT_GHD + i] = __ldcg(p0 + g * pstride_head + (size_t)c * (hd + 2) + hd + 1);
    }
    __syncthreads();
    for (int g = warp; g < G; g += ATT_THREADS / 32) {
        float M = -INFINITY;
        for (int c = lane; c < nused; c += 32) M = fmaxf(M, s_w[g * nused + c]);
        M = kc_warp_max(M);
        __syncwarp();
        float den = 0.f;
        for (int c = 0; c < nused; c++) {   // fixed order; lanes redundant, lane 0 writes
            float w = __expf(s_w[g * nused + c] - M);
            den += w * s_w[ATT_GHD + g * nused + c];
        }
        __syncwarp();
        for (int c = lane; c < nused; c += 32) s_w[g * nused + c] = __expf(s_w[g * nused + c] - M);
        if (lane == 0) s_den[g] = den;
    }
    __syncthreads();
    float num[ATT_EPT];
#pragma unroll
    for (int k = 0; k < ATT_EPT; k++) num[k] = 0.f;
#pragma unroll 2
    for (int c = 0; c < nused; c++) {
#pragma unroll
        for (int k = 0; k < ATT_EPT; k++) {
            const int e = tid + k * ATT_THREADS;
            if (e < G * hd) {
                const int g = e / hd, d = e % hd;
                num[k] = fmaf(s_w[g * nused + c], __ldcg(p0 + g * pstride_head + (size_t)c * (hd + 2) + d), num[k]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < ATT_EPT; k++) {
        const int e = tid + k * ATT_THREADS;
        if (e < G * hd) {
            const int g = e / hd, d = e % hd;
            out[(size_t)b * out_stride + (size_t)(kvh * G + g) * hd + d] = num[k] / s_den[g];
        }
    }
    if (tid == 0) *cnt = 0;
}

template <int HD, bool I8, bool ROPE>
static void att_decode_launch_hd(dim3 grid, cudaStream_t s, float *q, int q_stride, const int32_t *pos,
                                 const int32_t *slot, void *kc, void *vc, float *ks, float *vs,
                                 const float *inv_freq, kc_attn_shape sh, float *part, float *out, int out_stride)
{
    static int smem_set = 0;   // the attribute is set once per kernel, outside any graph capture's concern
    const size_t dyn = att_dyn_bytes(HD, I8);
    if (!smem_set) {
        KC_CHECK(cudaFuncSetAttribute(attn_decode_kernel<HD, I8, ROPE>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn));
        smem_set = 1;
    }
    kc_launch(attn_decode_kernel<HD, I8, ROPE>, grid, dim3(ATT_THREADS), dyn, s, q, q_stride, pos, slot, kc, vc,
              ks, vs, inv_freq, sh, part, out, out_stride);
}

template <bool I8, bool ROPE>
static void attn_decode_launch(float *q, int q_stride, int n, const int32_t *pos,
                               const int32_t *slot, void *kc, void *vc, float *ks, float *vs,
                               const float *inv_freq, kc_attn_shape sh, float *part,
                               float *out, int out_stride, cudaStream_t s)
{
    if (n <= 0) return;
    int G = sh.n_heads / sh.n_kv_heads;
    PG_ASSERT(sh.n_heads % sh.n_kv_heads == 0 && G <= ATT_MAXG && G * sh.head_dim <= ATT_GHD);
    PG_ASSERT(sh.head_dim % 8 == 0 && sh.head_dim <= 256 && 32 % (sh.head_dim / 8) == 0);  /* 16..256, powers of 2 */
    dim3 grid(att_nsplit(sh), sh.n_kv_heads, n);
#define ATT_DEC(HD) att_decode_launch_hd<HD, I8, ROPE>(grid, s, q, q_stride, pos, slot, kc, vc, ks, vs, inv_freq, \
                                                      sh, part, out, out_stride)
    switch (sh.head_dim) {
    case 16:  ATT_DEC(16); break;
    case 32:  ATT_DEC(32); break;
    case 64:  ATT_DEC(64); break;
    case 128: ATT_DEC(128); break;
    case 256: ATT_DEC(256); break;
    default: PG_DIE("k_attn_decode: head_dim %d (supported: 16, 32, 64, 128, 256)", sh.head_dim);
    }
#undef ATT_DEC
    KC_LAUNCH_CHECK();
}

extern "C" void k_attn_decode(const float *q, int q_stride, int n, const int32_t *pos,
                              const int32_t *slot, const kc_bf16 *kc, const kc_bf16 *vc,
                              kc_attn_shape sh, float *part, float *out, int out_stride,
                              cudaStream_t s)
{
    /* read-only without ROPE: the casts only share the kernel's signature */
    attn_decode_launch<false, false>((float *)q, q_stride, n, pos, slot, (void *)kc, (void *)vc, nullptr, nullptr,
                                     nullptr, sh, part, out, out_stride, s);
}

extern "C" void k_attn_decode_int8(const float *q, int q_stride, int n, const int32_t *pos,
                                   const int32_t *slot, const int8_t *kc, const int8_t *vc,
                                   const float *ks, const float *vs, kc_attn_shape sh, float *part,
                                   float *out, int out_stride, cudaStream_t s)
{
    attn_decode_launch<true, false>((float *)q, q_stride, n, pos, slot, (void *)kc, (void *)vc, (float *)ks,
                                    (float *)vs, nullptr, sh, part, out, out_stride, s);
}

extern "C" void k_rope_attn_decode(float *qkv, int row_stride, int n, const int32_t *pos,
                                   const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                                   kc_bf16 *kc, kc_bf16 *vc, float *part, float *out, int out_stride,
                                   cudaStream_t s)
{
    PG_ASSERT(sh.head_dim % 2 == 0);
    attn_decode_launch<false, true>(qkv, row_stride, n, pos, slot, kc, vc, nullptr, nullptr, inv_freq, sh, part,
                                    out, out_stride, s);
}

extern "C" void k_rope_attn_decode_int8(float *qkv, int row_stride, int n, const int32_t *pos,
                                        const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                                        int8_t *kc, int8_t *vc, float *ks, float *vs, float *part,
                                        float *out, int out_stride, cudaStream_t s)
{
    PG_ASSERT(sh.head_dim % 2 == 0);
    attn_decode_launch<true, true>(qkv, row_stride, n, pos, slot, kc, vc, ks, vs, inv_freq, sh, part, out,
                                   out_stride, s);
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

template <int HD, bool I8>
__global__ void __launch_bounds__(128)
attn_prefill_wmma_kernel(const float *q, int q_stride, int n, int pos0,
                         const void *Kp, const void *Vp, const float *KS, const float *VS,
                         size_t head_stride, int max_seq, int G, float *out, int out_stride)
{
    typedef KvElems<I8> KE;
    kc_pdl_trigger();
    kc_pdl_wait();
    // grid: (query tile, query head within the GQA group, kv head)
    q += (size_t)blockIdx.z * G * HD;
    out += (size_t)blockIdx.z * G * HD;
    // K/V (and the int8 scales) of this kv head: [max_seq][HD] ([max_seq])
    const size_t kv_el = (size_t)blockIdx.z * head_stride;
    if (I8) { KS += (size_t)blockIdx.z * max_seq; VS += (size_t)blockIdx.z * max_seq; }
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
                const size_t at = kv_el + (size_t)(k0 + r) * HD + c;
                if (I8) {   // dequantize (s * q, f32) and round to bf16 for the tensor cores
                    float kf[8], vf[8];
                    KE::cvt(KE::load(Kp, at), KS[k0 + r], kf);
                    KE::cvt(KE::load(Vp, at), VS[k0 + r], vf);
                    kk = make_uint4(kc_pack_bf16(kf[0], kf[1]), kc_pack_bf16(kf[2], kf[3]),
                                    kc_pack_bf16(kf[4], kf[5]), kc_pack_bf16(kf[6], kf[7]));
                    vv = make_uint4(kc_pack_bf16(vf[0], vf[1]), kc_pack_bf16(vf[2], vf[3]),
                                    kc_pack_bf16(vf[4], vf[5]), kc_pack_bf16(vf[6], vf[7]));
                } else {
                    kk = *(const uint4 *)((const uint16_t *)Kp + at);
                    vv = *(const uint4 *)((const uint16_t *)Vp + at);
                }
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
__device__ __forceinline__ float att_elem(const void *c, bool i8, size_t at, float s)
{
    return i8 ? s * (float)((const int8_t *)c)[at] : kc_bf16_f(((const uint16_t *)c)[at]);
}

template <bool I8>
__global__ void attn_prefill_scalar_kernel(const float *q, int q_stride, int n,
                                           int pos0, const void *kc, const void *vc,
                                           const float *ks, const float *vs, size_t head_stride,
                                           kc_attn_shape sh, float *out, int out_stride)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int wq = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int i = wq / sh.n_heads, h = wq % sh.n_heads;
    if (i >= n) return;
    const int hd = sh.head_dim, G = sh.n_heads / sh.n_kv_heads;
    const size_t kv_el = (size_t)(h / G) * head_stride, sc = (size_t)(h / G) * sh.max_seq;
    const float *qq = q + (size_t)i * q_stride + (size_t)h * hd;
    const float scale = rsqrtf((float)hd);
    float qr[8], o[8];
    for (int j = 0; j < 8; j++) { int d = lane + 32 * j; qr[j] = d < hd ? qq[d] * scale : 0.f; o[j] = 0.f; }
    float m = -INFINITY, l = 0.f;
    for (int t = 0; t <= pos0 + i; t++) {
        const float sk = I8 ? ks[sc + t] : 1.f, sv = I8 ? vs[sc + t] : 1.f;
        float s = 0.f;
        for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) s += qr[j] * att_elem(kc, I8, kv_el + (size_t)t * hd + d, sk); }
        s = kc_warp_sum(s);
        float mn = fmaxf(m, s), c = __expf(m - mn), p = __expf(s - mn);
        l = l * c + p;
        for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) o[j] = o[j] * c + p * att_elem(vc, I8, kv_el + (size_t)t * hd + d, sv); }
        m = mn;
    }
    for (int j = 0; j < 8; j++) { int d = lane + 32 * j; if (d < hd) out[(size_t)i * out_stride + (size_t)h * hd + d] = o[j] / l; }
}

template <int HD, bool I8>
static void prefill_wmma(const float *q, int q_stride, int n, int pos0, const void *K, const void *V,
                         const float *KS, const float *VS, size_t head_stride, kc_attn_shape sh,
                         float *out, int out_stride, cudaStream_t s)
{
    const size_t bytes = PfSmem<HD>::BYTES;
    KC_CHECK(cudaFuncSetAttribute(attn_prefill_wmma_kernel<HD, I8>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    const int G = sh.n_heads / sh.n_kv_heads;
    kc_launch(attn_prefill_wmma_kernel<HD, I8>, dim3(KC_CDIV(n, PF_BQ), G, sh.n_kv_heads), dim3(128), bytes, s,
              q, q_stride, n, pos0, K, V, KS, VS, head_stride, sh.max_seq, G, out, out_stride);
}

/* K, V: the slot's cache ([kv_head][max_seq][head_dim] elements); KS, VS: its
 * scales ([kv_head][max_seq]) for int8, else NULL. */
template <bool I8>
static void attn_prefill_launch(const float *q, int q_stride, int n, int pos0, const void *K,
                                const void *V, const float *KS, const float *VS, kc_attn_shape sh,
                                float *out, int out_stride, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT(sh.n_heads % sh.n_kv_heads == 0 && sh.head_dim <= 256);
    const size_t head_stride = (size_t)sh.max_seq * sh.head_dim;
    /* The scalar kernel walks the keys serially per (query, head): fine (and
     * fp32-exact) for short sequences, far too slow for a short chunk after a
     * long context, which goes to the tensor cores. */
    const bool tc = n >= 64 || pos0 + n > 256;
    if (sh.head_dim == 128 && tc)
        prefill_wmma<128, I8>(q, q_stride, n, pos0, K, V, KS, VS, head_stride, sh, out, out_stride, s);
    else if (sh.head_dim == 64 && tc)
        prefill_wmma<64, I8>(q, q_stride, n, pos0, K, V, KS, VS, head_stride, sh, out, out_stride, s);
    else {
        int warps = n * sh.n_heads;
        kc_launch(attn_prefill_scalar_kernel<I8>, dim3(KC_CDIV(warps, 4)), dim3(128), 0, s, q, q_stride, n, pos0,
                  K, V, KS, VS, head_stride, sh, out, out_stride);
    }
    KC_LAUNCH_CHECK();
}

extern "C" void k_attn_prefill(const float *q, int q_stride, int n, int pos0, int slot,
                               const kc_bf16 *kc, const kc_bf16 *vc, kc_attn_shape sh,
                               float *out, int out_stride, cudaStream_t s)
{
    const size_t per_slot = (size_t)sh.n_kv_heads * sh.max_seq * sh.head_dim;
    attn_prefill_launch<false>(q, q_stride, n, pos0, kc + (size_t)slot * per_slot, vc + (size_t)slot * per_slot,
                               nullptr, nullptr, sh, out, out_stride, s);
}

extern "C" void k_attn_prefill_int8(const float *q, int q_stride, int n, int pos0, int slot,
                                    const int8_t *kc, const int8_t *vc, const float *ks, const float *vs,
                                    kc_attn_shape sh, float *out, int out_stride, cudaStream_t s)
{
    const size_t per_slot = (size_t)sh.n_kv_heads * sh.max_seq * sh.head_dim;
    const size_t per_slot_s = (size_t)sh.n_kv_heads * sh.max_seq;
    attn_prefill_launch<true>(q, q_stride, n, pos0, kc + (size_t)slot * per_slot, vc + (size_t)slot * per_slot,
                              ks + (size_t)slot * per_slot_s, vs + (size_t)slot * per_slot_s, sh, out,
                              out_stride, s);
}
