/*
 * kernels/cuda/gemv_quant.cu — decode matrix-vector products y = W x for
 * weights in Peregrine's quantized formats (PG_QI8, PG_QI4; device layout in
 * kernels_cuda.h), 1..8 activation columns per pass, on the tensor cores
 * (mma.sync m16n8k16, f16 inputs, f32 accumulation), plus the fused SwiGLU
 * form (gate row r and up row R + r in one tile, y = silu(g) * u).
 *
 * Why tensor cores at batch 1: an f32-FMA kernel (this file's previous
 * version, measured in bench/results/h200.md) spends three to four
 * instructions per weight (place the bits in a float, subtract the bias, FMA,
 * plus x from shared memory) and tops out near 3.5e12 weights/s on an H200:
 * 47% of the memory bandwidth for int4. Here an int4 weight costs ~1.6
 * instructions (one LOP3 per two weights, two packed f16 ops per two weights)
 * and the multiply-adds go to the tensor cores; the 7/8 of each mma that has
 * no column to work on (B has 8 columns, decode has 1) costs nothing we lack,
 * and batches of 2..8 columns cost about the same as one.
 *
 * Layout: the canonical QI8/QI4 layout, or (TILED) the same bytes in the
 * order a warp reads them (kc_matrix.tiles, kernels_cuda.h). A warp computes a tile
 * of 16 rows (SwiGLU: 8 gate rows and their 8 up rows) over chunks of 64
 * bytes per row (128 int4 or 64 int8 columns). Lane (g = lane / 4,
 * t = lane % 4) takes 16 bytes of row g and 16 of row g + 8 at byte 16 t of
 * the chunk: exactly the rows of its A fragment. The columns its k-slots
 * stand for are permuted (a dot product does not care about the order of k
 * as long as A and B agree): within the 8 columns of an int4 word the nibbles
 * pair up as (0,4) (1,5) (2,6) (3,7), and x is staged in shared memory in
 * that same order, so one 16-byte shared load gives the B fragments of two
 * mmas. B column n is x column n.
 *
 * Dequantization into f16 pairs with no conversion instructions:
 *   int4: (w & 0x000f000f) | 0x64006400 (one LOP3) is the f16 pair
 *         (1024 + q0, 1024 + q4); the mask 0x00f000f0 gives (1024 + 16 q1,
 *         ...), and w >> 8 the other two pairs. One HSUB2 (or HFMA2 by 1/16,
 *         -64) leaves q exactly, one HFMA2 makes w = s*q + m with the group's
 *         f16 scale and minimum as stored. Lane t's 32 columns of a chunk lie
 *         in one group (group >= 32).
 *   int8: w ^ 0x80808080 makes each byte q + 128; a byte permute (prmt) puts
 *         two bytes under the f16 exponent of 1024; one HSUB2 of 1152 leaves q
 *         exactly. A per-output-channel scale multiplies the f32 result, a
 *         grouped one (GGUF Q8_0 -> QI8 g32) the f16 q by one HMUL2.
 * Numerics: s*q + m is rounded once to f16 (relative 2^-11); x is rounded to
 * f16 after scaling each column by a power of two that keeps its largest
 * magnitude below 2^15 (exact, undone on the f32 result: activations of real
 * models reach the thousands, f16 ends at 65504); a norm-epilogue consumer
 * (kc_gemv_epi) also scales small columns up, into [2^14, 2^15), out of f16's
 * subnormals: it reads x * g unnormalised, and a residual stream can be small
 * (the other kinds keep the plain product's rounding, bit for bit, so that a
 * producer's output is exactly the plain product's). Products and sums are
 * f32.
 * Against ref_matmul_q (f32) that is ~5e-4 relative on random data
 * (tests/test_quant_cuda.c bounds it by 3e-3; DESIGN.md allows 1e-2). Every
 * sum has a fixed order: graph replay == eager.
 *
 * Work split and pipeline: persistent blocks of QG_WARPS warps. Block b owns
 * the outputs [R b / G, R (b + 1) / G) of R (G blocks: balanced to a row, not
 * to a tile; fragment rows past the block's last output re-read that last row
 * (an L2 hit) and are never stored), walked in tiles. The warps of a block
 * split each row's chunks in steps of QG_UPL adjacent chunks (warp w takes
 * steps w, w + W, ...: together a contiguous 64 QG_UPL W bytes of each row),
 * add their partial tiles in shared memory in warp order, and one thread per
 * (output, column) stores. Two chunks per step halve the pipeline's
 * bookkeeping per weight (loop counters, ring offsets and pointer steps were
 * ~40 of ~195 instructions per chunk in the SASS of the one-chunk version;
 * measured +4% end to end with int4 g32 weights on an H200, the same with
 * int8; 3 or 4 chunks per step, or 4 stages, were slower: bench/results/
 * h200.md). Weight bytes travel global -> shared memory by cp.async,
 * QG_STAGES steps ahead per warp, across tile boundaries; each lane copies exactly the 16-byte
 * pieces (and scale words) of its own fragments and reads them back itself,
 * so a per-thread cp.async.wait_group is all the pipeline needs, and no
 * register is held while bytes are in flight. Tiled int4 on Hopper instead:
 * a producer warp and bulk copies into one ring per block (qg_bulk below).
 * CPU twin: ref_matmul_q (kernels/kernels.h) on the same quantized weights,
 * ref_silu_mul for the SwiGLU form.
 */
#include "kc_util.cuh"

#define QG_WARPS 8
#define QG_UPL 2              // 64-byte chunks of each fragment row a warp takes per pipeline step
#define QG_STAGES 3           // steps in flight per warp (3 x 2 KB of weights)
#define QG_CHUNK_BYTES 1280   // per warp and chunk: 2 x 512 (rows g, g + 8) + 2 x 128 (scale words)
#define QG_STAGE_BYTES (QG_UPL * QG_CHUNK_BYTES)
#define QG_RING_BYTES (QG_WARPS * QG_STAGES * QG_STAGE_BYTES)   // the warps' rings, or the block ring (qg_bulk)
// The block ring of the bulk-copy form: 2 block steps of 20 KB. Measured
// against 3 (the warps' rings' 60 KB), 2-3.5% faster end to end with int4
// weights on an H200 (bench/results/h200.md, r21); why is not analysed.
#define QG_BRING_BYTES (2 * (QG_WARPS * QG_UPL * (1024 + 16 * 16)))
#define QG_BSTAGES_MAX 8   // stages of the block ring at most (mbarrier pairs)

__device__ __forceinline__ uint32_t qg_u(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }
__device__ __forceinline__ __half2 qg_h(uint32_t u) { return *reinterpret_cast<__half2 *>(&u); }

// c += A B for one 16x16 (A, row-major) by 16x8 (B, column-major) f16 tile, f32 accumulation
__device__ __forceinline__ void qg_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// (a & MASK) | c in one LOP3: c comes in a register, because a LOP3 takes one
// immediate and the compiler otherwise spends an AND and an OR
template <uint32_t MASK>
__device__ __forceinline__ uint32_t qg_and_or(uint32_t a, uint32_t c)
{
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "n"(MASK), "r"(c));
    return r;
}

// int4 word (element j of 8 at bits 4j) -> f16 pairs w = s*q + m:
// p[0] = (j0, j4), p[1] = (j1, j5), p[2] = (j2, j6), p[3] = (j3, j7).
// magic = 0x64006400, held in a register by the caller.
__device__ __forceinline__ void qg_deq4(uint32_t w, uint32_t magic, __half2 s, __half2 m, uint32_t (&p)[4])
{
    const __half2 k1024 = qg_h(0x64006400u), k16th = qg_h(0x2c002c00u), km64 = qg_h(0xd400d400u);
    const uint32_t w8 = w >> 8;
    const __half2 q0 = __hsub2(qg_h(qg_and_or<0x000f000fu>(w, magic)), k1024);
    const __half2 q1 = __hfma2(qg_h(qg_and_or<0x00f000f0u>(w, magic)), k16th, km64);
    const __half2 q2 = __hsub2(qg_h(qg_and_or<0x000f000fu>(w8, magic)), k1024);
    const __half2 q3 = __hfma2(qg_h(qg_and_or<0x00f000f0u>(w8, magic)), k16th, km64);
    p[0] = qg_u(__hfma2(q0, s, m));
    p[1] = qg_u(__hfma2(q1, s, m));
    p[2] = qg_u(__hfma2(q2, s, m));
    p[3] = qg_u(__hfma2(q3, s, m));
}

// int8 word (element j at byte j) -> f16 pairs of q: p[0] = (j0, j1), p[1] = (j2, j3)
__device__ __forceinline__ void qg_deq8(uint32_t w, uint32_t (&p)[2])
{
    const __half2 k1152 = qg_h(0x64806480u);   // 1024 + 128
    const uint32_t wx = w ^ 0x80808080u;
    p[0] = qg_u(__hsub2(qg_h(__byte_perm(wx, 0x64646464u, 0x4140)), k1152));
    p[1] = qg_u(__hsub2(qg_h(__byte_perm(wx, 0x64646464u, 0x4342)), k1152));
}

// One 64-byte chunk of a lane's two fragment rows (v0: row g, v1: row g + 8,
// with their scale words) against the B fragments at xp: 8 (int4) or 4
// (int8) mmas, alternating between two accumulator chains (shorter
// dependency chains through the tensor pipe).
template <int FMT, int PERCH>
__device__ __forceinline__ void qg_chunk(float (&c)[2][4], const uint4 &v0, const uint4 &v1, uint32_t sc0,
                                         uint32_t sc1, const uint4 *xp, uint32_t magic)
{
    if constexpr (FMT == 1) {
        const __half2 s0 = qg_h(__byte_perm(sc0, 0, 0x1010)), m0 = qg_h(__byte_perm(sc0, 0, 0x3232));
        const __half2 s1 = qg_h(__byte_perm(sc1, 0, 0x1010)), m1 = qg_h(__byte_perm(sc1, 0, 0x3232));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint4 xv = xp[k];
            uint32_t pa[4], pb[4];
            qg_deq4(k == 0 ? v0.x : k == 1 ? v0.y : k == 2 ? v0.z : v0.w, magic, s0, m0, pa);
            qg_deq4(k == 0 ? v1.x : k == 1 ? v1.y : k == 2 ? v1.z : v1.w, magic, s1, m1, pb);
            qg_mma(c[0], pa[0], pb[0], pa[1], pb[1], xv.x, xv.y);
            qg_mma(c[1], pa[2], pb[2], pa[3], pb[3], xv.z, xv.w);
        }
    } else {
        __half2 s0 = qg_h(0x3c003c00u), s1 = s0;   // 1.0
        if constexpr (!PERCH) {
            s0 = qg_h(__byte_perm(sc0, 0, 0x1010));
            s1 = qg_h(__byte_perm(sc1, 0, 0x1010));
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 xv = xp[h];
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                const int k = 2 * h + kk;
                uint32_t pa[2], pb[2];
                qg_deq8(k == 0 ? v0.x : k == 1 ? v0.y : k == 2 ? v0.z : v0.w, pa);
                qg_deq8(k == 0 ? v1.x : k == 1 ? v1.y : k == 2 ? v1.z : v1.w, pb);
                if constexpr (!PERCH) {
                    pa[0] = qg_u(__hmul2(qg_h(pa[0]), s0)); pa[1] = qg_u(__hmul2(qg_h(pa[1]), s0));
                    pb[0] = qg_u(__hmul2(qg_h(pb[0]), s1)); pb[1] = qg_u(__hmul2(qg_h(pb[1]), s1));
                }
                qg_mma(c[kk], pa[0], pb[0], pa[1], pb[1], kk ? xv.z : xv.x, kk ? xv.w : xv.y);
            }
        }
    }
}

// the consumer warps' barrier: named barrier 1 with a producer warp, else __syncthreads
template <bool NAMED>
__device__ __forceinline__ void qg_sync()
{
    if constexpr (NAMED) asm volatile("bar.sync 1, %0;" ::"n"(QG_WARPS * 32) : "memory");
    else __syncthreads();
}

#define QG_XREG 16   // float4s of x per thread in the one-column staging (cols <= 16384)
// Rows shorter than this take the two-pass staging even for one column: the
// one-pass loops run all QG_XREG batches whatever the row length, which cost
// the default model (rows of 576 and 1536 columns, 0.14 ms per step) 8% of
// its decode rate on an H200 (7378 vs 8017 tok/s, bench/results/h200.md,
// 2026-12-03 r9), while rows of 4096 and 11008 gained 4-8%. Skipping whole
// batches past the row, loads included, lost 4% (r10: the loads no longer go
// out at once); skipping only their arithmetic gained 1.3% (r19, kept).
#define QG_XREG_MIN_COLS 2048

// x [N][cols] f32 (global) -> xs [N][kp] f16 (shared, zero past cols), each
// column scaled by 2^-e so that |x| < 2^15, for a consumer epilogue (EPI) so
// that its largest |x| is in [2^14, 2^15) (e may be negative: small columns
// are scaled up); xsc[n] = 2^e for the epilogue.
// QI4 in the nibble-pair order of qg_deq4. One column of QG_XREG_MIN_COLS or
// more (decode): one pass into registers, the maximum, one barrier, the
// conversion from the registers. Otherwise: one pass for the column maxima
// (warp partials in part[N][QG_WARPS]), one barrier, one pass that converts
// (x is then in L1), one barrier. Both give the same bits.
template <int FMT, int EPI, bool NAMED>
__device__ __forceinline__ void qg_stage_x(const float *x, int N, int cols, int kp, __half *xs, float *xsc,
                                           float *part)
{
    constexpr int EMIN = EPI == KC_EPI_CONSUME ? -100 : 0;   // the smallest e
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (N == 1 && cols >= QG_XREG_MIN_COLS && kp <= QG_XREG * 4 * QG_WARPS * 32) {
        // One column (decode): every load of x goes out at once into
        // registers (one dependent round trip to L2, where the two-pass form
        // below pays one per unrolled batch of its first loop: three for the
        // 11008-wide w2), the maximum, one barrier, the f16 conversion from
        // the registers. The same values and scale as the two-pass form:
        // the same bits. Thread t holds columns 4 t' .. 4 t' + 3, t' = t +
        // k * QG_WARPS * 32; past cols (up to kp) zeros.
        // Batches that start past the row (k * 1024 >= cols, the same for
        // the whole block) skip their arithmetic: the loads stay predicated
        // and all go out at once, but the maximum and the conversion of the
        // 12 empty batches of a 4096-wide row were ~260 of ~350 instructions
        // per warp, a quarter of wo's (Nsight Compute, bench/results/h200.md).
        float4 r[QG_XREG];
        float mx = 0.f;
#pragma unroll
        for (int k = 0; k < QG_XREG; k++) {
            const int c = (threadIdx.x + k * QG_WARPS * 32) * 4;
            r[k] = c < cols ? *(const float4 *)(x + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int k = 0; k < QG_XREG; k++)
            if (k * QG_WARPS * 32 * 4 < cols)
                mx = fmaxf(mx, fmaxf(fmaxf(fabsf(r[k].x), fabsf(r[k].y)), fmaxf(fabsf(r[k].z), fabsf(r[k].w))));
        mx = kc_warp_max(mx);
        if (lane == 0) part[warp] = mx;
        qg_sync<NAMED>();
        mx = 0.f;
#pragma unroll
        for (int w = 0; w < QG_WARPS; w++) mx = fmaxf(mx, part[w]);
        int e = 0;
        if (mx > 0.f && isfinite(mx)) { frexpf(mx, &e); e = max(EMIN, e - 15); }
        const float sc = ldexpf(1.f, -e);
        if (threadIdx.x == 0) xsc[0] = ldexpf(1.f, e);
#pragma unroll
        for (int k = 0; k < QG_XREG; k++) {
            if (k * QG_WARPS * 32 * 4 >= kp) break;   // no thread of the block stores
            const int c = (threadIdx.x + k * QG_WARPS * 32) * 4;
            const float v0 = r[k].x * sc, v1 = r[k].y * sc, v2 = r[k].z * sc, v3 = r[k].w * sc;
            if constexpr (FMT == 1) {
                // a group of 8 columns is held by an even thread (0-3) and the
                // odd one after it (4-7); the nibble-pair order of qg_deq4
                // wants (j, j + 4): the even thread writes pairs 0, 1 and the
                // odd one pairs 2, 3, each with two values from the other
                const bool odd = threadIdx.x & 1;
                // sent: the odd thread its 0, 1 (the group's 4, 5), the even
                // one its 2, 3
                const float s0 = __shfl_xor_sync(0xffffffffu, odd ? v0 : v2, 1);
                const float s1 = __shfl_xor_sync(0xffffffffu, odd ? v1 : v3, 1);
                uint2 o;
                if (!odd) { o.x = qg_u(__floats2half2_rn(v0, s0)); o.y = qg_u(__floats2half2_rn(v1, s1)); }
                else      { o.x = qg_u(__floats2half2_rn(s0, v2)); o.y = qg_u(__floats2half2_rn(s1, v3)); }
                if (c < kp) *(uint2 *)(xs + (c & ~7) + (odd ? 4 : 0)) = o;
            } else {
                uint2 o;
                o.x = qg_u(__floats2half2_rn(v0, v1)); o.y = qg_u(__floats2half2_rn(v2, v3));
                if (c < kp) *(uint2 *)(xs + c) = o;
            }
        }
        qg_sync<NAMED>();
        return;
    }
    for (int n = 0; n < N; n++) {
        float mx = 0.f;
        for (int c = threadIdx.x * 4; c < cols; c += (QG_WARPS * 32) * 4) {
            const float4 a = *(const float4 *)(x + (size_t)n * cols + c);
            mx = fmaxf(mx, fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(a.z), fabsf(a.w))));
        }
        mx = kc_warp_max(mx);
        if (lane == 0) part[n * QG_WARPS + warp] = mx;
    }
    qg_sync<NAMED>();
    auto col_scale = [&](int n, bool inverse) {
        float mx = 0.f;
#pragma unroll
        for (int w = 0; w < QG_WARPS; w++) mx = fmaxf(mx, part[n * QG_WARPS + w]);
        int e = 0;
        if (mx > 0.f && isfinite(mx)) { frexpf(mx, &e); e = max(EMIN, e - 15); }
        return ldexpf(1.f, inverse ? -e : e);
    };
    if (threadIdx.x < N) xsc[threadIdx.x] = col_scale(threadIdx.x, false);
    const int per = kp / 8;   // groups of 8 f16 (16 bytes) per column
    int nprev = -1;
    float sc = 1.f;
    for (int idx = threadIdx.x; idx < N * per; idx += (QG_WARPS * 32)) {
        const int n = idx / per, c8 = (idx - n * per) * 8;
        if (n != nprev) { sc = col_scale(n, true); nprev = n; }
        float v[8];
        if (c8 < cols) {   // cols is a multiple of 16: a group of 8 is all in or all out
            const float4 a = *(const float4 *)(x + (size_t)n * cols + c8);
            const float4 b = *(const float4 *)(x + (size_t)n * cols + c8 + 4);
            v[0] = a.x * sc; v[1] = a.y * sc; v[2] = a.z * sc; v[3] = a.w * sc;
            v[4] = b.x * sc; v[5] = b.y * sc; v[6] = b.z * sc; v[7] = b.w * sc;
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = 0.f;
        }
        uint4 o;
        if constexpr (FMT == 1) {
            o.x = qg_u(__floats2half2_rn(v[0], v[4])); o.y = qg_u(__floats2half2_rn(v[1], v[5]));
            o.z = qg_u(__floats2half2_rn(v[2], v[6])); o.w = qg_u(__floats2half2_rn(v[3], v[7]));
        } else {
            o.x = qg_u(__floats2half2_rn(v[0], v[1])); o.y = qg_u(__floats2half2_rn(v[2], v[3]));
            o.z = qg_u(__floats2half2_rn(v[4], v[5])); o.w = qg_u(__floats2half2_rn(v[6], v[7]));
        }
        *(uint4 *)(xs + (size_t)n * kp + c8) = o;
    }
    qg_sync<NAMED>();
}

// End of a tile whose first output is o (outputs [o, min(o + TR, o1))): each
// warp puts its partial C tile (the two chains added) into rb
// [QG_WARPS][16][8], then one thread per (output, column) adds the warps'
// parts in warp order and stores. Zeroes c. rb alternates between two
// buffers from tile to tile, so one barrier per tile suffices: a warp that
// runs on writes the other buffer, and cannot come back to this one before
// every thread has passed the next tile's barrier.
template <int FMT, int PERCH, int MODE, int EPI, bool NAMED>
__device__ __forceinline__ void qg_tile_end(float (&c)[2][4], float *rb, const float *xsc, const void *sp, int R,
                                            int N, int o, int o1, float *y, const kc_gemv_epi &e, const float *sinv)
{
    constexpr int TR = MODE ? 8 : 16;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    *(float2 *)(rb + warp * 128 + g * 8 + 2 * t) = make_float2(c[0][0] + c[1][0], c[0][1] + c[1][1]);
    *(float2 *)(rb + warp * 128 + (g + 8) * 8 + 2 * t) = make_float2(c[0][2] + c[1][2], c[0][3] + c[1][3]);
#pragma unroll
    for (int k = 0; k < 4; k++) c[0][k] = c[1][k] = 0.f;
    qg_sync<NAMED>();
    const int rr = threadIdx.x >> 3, n = threadIdx.x & 7;
    if (n < N && rr < TR && o + rr < o1) {
        o += rr;
        float v = 0.f, v2 = 0.f;
#pragma unroll
        for (int w = 0; w < QG_WARPS; w++) v += rb[w * 128 + rr * 8 + n];
        v *= xsc[n];
        if constexpr (MODE == 1) {
#pragma unroll
            for (int w = 0; w < QG_WARPS; w++) v2 += rb[w * 128 + (rr + 8) * 8 + n];
            v2 *= xsc[n];
        }
        if constexpr (FMT == 0 && PERCH) {
            v *= kc_f16_f(__ldg((const uint16_t *)sp + o));
            if constexpr (MODE == 1) v2 *= kc_f16_f(__ldg((const uint16_t *)sp + R + o));
        }
        if constexpr (EPI == KC_EPI_CONSUME) { v *= sinv[n]; v2 *= sinv[n]; }   // kc_gemv_epi
        const float out = MODE == 1 ? v / (1.f + __expf(-v)) * v2 : v;
        if constexpr (EPI == KC_EPI_PRODUCE) kc_epi_produce(e, n, R, o, out);
        else y[(size_t)n * R + o] = out;
    }
}

__device__ __forceinline__ void qg_cp16(uint32_t dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void qg_cp4(uint32_t dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}
// the same with a source size: bytes past it (all, for 0) are filled with zeros
__device__ __forceinline__ void qg_cp16z(uint32_t dst, const void *src, uint32_t n)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void qg_cp4z(uint32_t dst, const void *src, uint32_t n)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void qg_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void qg_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

/*
 * Hopper, tiled int4: the weights come by bulk copy (cp.async.bulk, the copy
 * engine without a tensor map). A block step (every warp's QG_UPL chunks of
 * one tile) is one contiguous run of q bytes and one of group words, so one
 * producer warp (warp QG_WARPS, past the consumers) copies a step with two
 * instructions into a block ring of BSTAGES stages (2: QG_BRING_BYTES) and arms the stage's "full" mbarrier with their byte count;
 * the consumer warps wait on it, load the stage into registers and arrive on
 * its "empty" mbarrier (QG_WARPS arrivals) before their arithmetic, and the
 * producer waits on that before it refills the stage. This replaces per-lane
 * cp.async of 16 and 4 bytes with their address arithmetic, partial-chunk
 * branches and waits in every consumer (~80 of ~330 instructions per step in
 * the SASS) in a kernel whose int4 form is bound by instruction issue
 * (Nsight Compute: 0.41-0.59 warp instructions issued per scheduler and
 * cycle) and frees 12 registers (96 -> 84). Measured on an H200 (bench/
 * results/h200.md, r18): int4 g32 +3.4% (7B) and +3.1% (8B) end to end;
 * arriving after the arithmetic instead gained 2.3% / 2.4%; an 80 KB ring
 * (4 stages) lost, and 2 stages (40 KB) gained another 1.7-3.5% (r21).
 * Since then the kernel is no longer issue-bound: cutting the dequantization
 * from 13 to 9 instructions per word (the minima by one more mma per step,
 * r20) left the big products' times unchanged and exposed the latency of
 * the x fragments' shared loads (Nsight Compute: short-scoreboard stalls
 * doubled); 3 blocks per SM (r21) and blocks of 4 warps (r23) lost 8-18%.
 * int8 keeps its per-warp cp.async rings: the block ring
 * cost it 1-3% (its form is closer to the memory bound, where the lockstep
 * of 8 warps on one ring costs more than the instructions it saves). The
 * consumers meet on named barrier 1 (QG_WARPS warps), not __syncthreads.
 * sm_80 builds keep cp.async (QG_SM90 0).
 */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QG_SM90 1
#else
#define QG_SM90 0
#endif
__device__ __forceinline__ void qg_bar_init(uint32_t bar, uint32_t count)
{
#if QG_SM90
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void qg_bar_init_fence()
{
#if QG_SM90
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void qg_bar_arrive(uint32_t bar)
{
#if QG_SM90
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}
// one arrival that also expects `bytes` from copies
__device__ __forceinline__ void qg_bar_arm(uint32_t bar, uint32_t bytes)
{
#if QG_SM90
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// global -> shared, `bytes` a multiple of 16, both addresses 16-byte aligned
__device__ __forceinline__ void qg_bulk(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar)
{
#if QG_SM90
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void qg_bar_wait(uint32_t bar, uint32_t parity)
{
#if QG_SM90
    uint32_t done = 0;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
#endif
}

/*
 * FMT 0 = QI8, 1 = QI4. PERCH (QI8): one scale per row, applied to the f32
 * result. MODE 0: y[n][r] = W_r . x_n; MODE 1: W has 2R rows, y[n][r] =
 * silu(W_r . x_n) * (W_{R + r} . x_n). ush: log2(16-byte units per group)
 * (unused with PERCH). N: columns, 1..8.
 * Dynamic shared memory: the warps' rings [QG_WARPS][QG_STAGES][QG_STAGE_BYTES]
 * (BULK: the block ring [BSTAGES][BSTAGE] instead, QG_BRING_BYTES), two reduction
 * buffers [QG_WARPS][16][8] f32, the column scales [8], the maxima partials
 * [8][QG_WARPS] (after the staging of x: a norm-epilogue consumer's 1 / rms
 * [8]), the block ring's mbarriers (full [QG_BSTAGES_MAX], empty
 * [QG_BSTAGES_MAX]), then x as f16 [N][kp] (kp = chunks * columns per chunk).
 * BULK blocks have QG_WARPS + 1 warps (the last one the producer). EPI
 * (KC_EPI_*): the norm epilogue, e its arguments (unused for KC_EPI_NONE,
 * whose code is the plain product's); a producer stores nothing in y.
 */
template <int FMT, int PERCH, int MODE, int TILED, int EPI>
// (minimum blocks per SM: 2 for the bulk form, 1 for the others, the code
// measured in r21; neither binds: 84 registers in the bulk form)
__global__ void __launch_bounds__(QG_WARPS * 32 + (TILED && FMT == 1 ? 32 : 0),   // room for a producer warp
                                  TILED && FMT == 1 && QG_SM90 ? 2 : 1)
gemv_q_kernel(const uint8_t *__restrict__ q, const void *__restrict__ sp, int R, int cols, int ush, int N,
              const float *x, float *__restrict__ y, kc_gemv_epi e)
{
    constexpr int CW = FMT ? 128 : 64;       // columns per 64-byte chunk
    constexpr int TR = MODE ? 8 : 16;        // outputs per tile
    constexpr int SB = FMT ? 4 : 2;          // bytes per scale entry
    static_assert(!TILED || FMT == 1 || PERCH, "QI8 tiles are built with per-row scales only");
    static_assert(!(EPI == KC_EPI_PRODUCE && MODE == 1), "a producer's rows are plain, not SwiGLU");
    // bytes between a lane's consecutive chunks, and between a warp's
    // consecutive steps: along a row (row-major), or along the tile's chunk
    // sequence of 1 KB each (tiled, kernels_cuda.h)
    constexpr int PSTR = TILED ? 1024 : 64;
    constexpr int STEP = QG_WARPS * QG_UPL * PSTR;
    extern __shared__ uint4 qg_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t rowb = FMT ? (size_t)cols / 2 : (size_t)cols;
    const int nu = (int)(rowb / 16);                  // 16-byte units per row
    const int nch = (nu + 3) >> 2;                    // chunks per row; the last may be partial
    const int kp = nch * CW;
    const int ngr = PERCH ? 1 : (cols >> (FMT ? 5 : 4)) >> ush;   // groups per row
    // Hopper, tiled int4: a producer warp and bulk copies (see qg_bulk)
    constexpr bool BULK = TILED && FMT == 1 && QG_SM90;
    // the rings first: their offsets do not depend on N or cols
    const uint8_t *ring = (const uint8_t *)qg_smem + warp * QG_STAGES * QG_STAGE_BYTES;
    constexpr int RING = TILED && FMT == 1 && QG_SM90 ? QG_BRING_BYTES : QG_RING_BYTES;
    float *red = (float *)((uint8_t *)qg_smem + RING);   // [2][QG_WARPS][16][8]
    float *xsc = red + 2 * QG_WARPS * 128;            // [8]
    float *part = xsc + 8;                            // [8][QG_WARPS]
    // [8]: a consumer's 1 / rms per column, in part's place: written after
    // qg_stage_x's last barrier, past every read of part
    float *sinv = part;
    // BULK: the ring's full [BSTAGES] and empty [BSTAGES] mbarriers
    uint64_t *bars = (uint64_t *)(part + 8 * QG_WARPS);
    __half *xs = (__half *)(bars + 2 * QG_BSTAGES_MAX);   // [N][kp]
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    // The block ring of the bulk-copy form: stage j at j * BSTAGE holds the
    // step's q bytes [QG_WARPS * QG_UPL chunks][16][64], then (QI4) its words
    // [chunk][16][wpc] (wpc <= 4: 16 bytes per row and chunk at most).
    constexpr int BCH = QG_WARPS * QG_UPL;                         // chunks per block step
    constexpr int BSTAGE = BCH * 1024 + (FMT == 1 ? BCH * 16 * 16 : 0);
    constexpr int BSTAGES = RING / BSTAGE;
    static_assert(BSTAGES >= 2 && BSTAGES <= QG_BSTAGES_MAX, "the block ring holds 2..8 stages");
    const uint32_t full_s = (uint32_t)__cvta_generic_to_shared(bars), empty_s = full_s + 8 * QG_BSTAGES_MAX;
    const uint32_t bring_s = (uint32_t)__cvta_generic_to_shared(qg_smem);
    kc_pdl_trigger();

    // tiled: balanced to a tile (R is a multiple of TR: kc_q_tileable)
    const int o0 = TILED ? (int)((long long)(R / TR) * blockIdx.x / gridDim.x) * TR
                         : (int)((long long)R * blockIdx.x / gridDim.x);
    const int o1 = TILED ? (int)((long long)(R / TR) * (blockIdx.x + 1) / gridDim.x) * TR
                         : (int)((long long)R * (blockIdx.x + 1) / gridDim.x);
    const int tiles = (o1 - o0 + TR - 1) / TR;
    const int nst = (nch + QG_UPL - 1) / QG_UPL;       // steps of QG_UPL chunks per row
    const int cpw = (nst + QG_WARPS - 1) / QG_WARPS;   // steps per tile, the same for all warps
    const int steps = tiles * cpw;
    const int su = QG_WARPS * 4 * QG_UPL >> (PERCH ? 0 : ush);   // scale entries a step moves on (group <= 64 units)
    const int tmask = PERCH ? 0 : (1 << min(ush, 2)) - 1;   // lanes t sharing a group: t & ~tmask equal
    const int wpc = FMT ? 4 >> min(ush, 2) : 0;        // QI4 group words per row and chunk (group <= 128)

    if constexpr (BULK) {
        if (threadIdx.x == 0) {
#pragma unroll
            for (int j = 0; j < BSTAGES; j++) {
                qg_bar_init(full_s + 8 * j, 1);
                qg_bar_init(empty_s + 8 * j, QG_WARPS);
            }
            qg_bar_init_fence();
        }
        __syncthreads();   // the only barrier with the producer warp
        if (warp == QG_WARPS) {   // the producer: weights never depend on the previous kernel
            if (lane == 0) {
                for (int st = 0, j = 0, ph = 0, i = 0, k = 0; st < steps; st++) {
                    if (st >= BSTAGES) qg_bar_wait(empty_s + 8 * j, ph ^ 1);   // refill: all warps are done
                    const int ch0 = k * BCH, nv = min(BCH, nch - ch0);   // >= 1: k < cpw
                    const size_t c0 = (size_t)(o0 / TR + i) * nch + ch0;   // first chunk, in the matrix
                    const uint32_t qb = nv * 1024, sb = FMT == 1 ? nv * 16 * wpc * SB : 0;
                    const uint32_t full = full_s + 8 * j, dst = bring_s + j * BSTAGE;
                    qg_bar_arm(full, qb + sb);
                    qg_bulk(dst, q + c0 * 1024, qb, full);
                    if (FMT == 1) qg_bulk(dst + BCH * 1024, (const uint8_t *)sp + c0 * 16 * wpc * SB, sb, full);
                    if (++j == BSTAGES) { j = 0; ph ^= 1; }
                    if (++k == cpw) { k = 0; i++; }
                }
            }
            return;
        }
    }

    // issue cursor: tile ii, chunk step ik; the lane's source pointers for step (ii, ik)
    int ii = 0, ik = 0;
    const uint8_t *dp0, *dp1, *sp0 = nullptr, *sp1 = nullptr;
    auto set_rows = [&](int i) {
        const int o = o0 + i * TR + g;
        const int r0 = min(o, o1 - 1), r1 = MODE == 1 ? R + r0 : min(o + 8, o1 - 1);
        const int u0 = warp * 4 * QG_UPL + t;   // the lane's unit in its first chunk
        if constexpr (TILED) {   // fragment rows g and g + 8 of tile (o0 / TR + i), the warp's first chunk
            const size_t ti = (size_t)(o0 / TR + i);
            dp0 = q + ((ti * nch + (size_t)warp * QG_UPL) * 16 + g) * 64 + t * 16;
            dp1 = dp0 + 8 * 64;
        } else {
            dp0 = q + (size_t)r0 * rowb + (size_t)u0 * 16;
            dp1 = q + (size_t)r1 * rowb + (size_t)u0 * 16;
        }
        if (!PERCH && TILED) {   // QI4 words tiled as q (kc_qi4_s_at): [tile][chunk][16][wpc]
            const size_t ti = (size_t)(o0 / TR + i);
            sp0 = (const uint8_t *)sp + (((ti * nch + (size_t)warp * QG_UPL) * 16 + g) * wpc + (t >> ush)) * SB;
            sp1 = sp0 + 8 * wpc * SB;
        } else if (!PERCH) {
            sp0 = (const uint8_t *)sp + ((size_t)r0 * ngr + (u0 >> ush)) * SB;
            sp1 = (const uint8_t *)sp + ((size_t)r1 * ngr + (u0 >> ush)) * SB;
        }
    };
    // scale bytes a step moves on: along the row, or (tiled) QG_WARPS * QG_UPL
    // chunks of 16 rows x wpc words
    const int sstep = TILED ? QG_WARPS * QG_UPL * 16 * wpc * SB : su * SB;
    // scale bytes from the lane's first chunk of a step to its chunk p (the
    // same in every step: a step moves on by a whole number of groups)
    int sop[QG_UPL];
#pragma unroll
    for (int p = 0; p < QG_UPL; p++)
        sop[p] = PERCH ? 0 : TILED ? p * 16 * wpc * SB
                                   : ((((warp * 4 * QG_UPL + t) + 4 * p) >> ush) - ((warp * 4 * QG_UPL + t) >> ush)) * SB;
    const bool copier = (t & tmask) == 0;             // this lane copies its group's scale word
    const uint32_t d0 = ring_s + lane * 16, ds0 = ring_s + 1024 + lane * 4;
    uint32_t io = 0;   // ring offset of the next issue
    auto issue = [&]() {   // one step of QG_UPL chunks, then advance; always exactly one commit group
        if (ii < tiles) {
#pragma unroll
            for (int p = 0; p < QG_UPL; p++) {
                const int ch = (warp + QG_WARPS * ik) * QG_UPL + p;
                const uint32_t o = io + p * QG_CHUNK_BYTES;
                const uint8_t *sq0 = sp0 + sop[p], *sq1 = sp1 + sop[p];
                const void *s0 = FMT == 1 ? (const void *)sq0 : (const void *)((uintptr_t)sq0 & ~(uintptr_t)3);
                const void *s1 = FMT == 1 ? (const void *)sq1 : (const void *)((uintptr_t)sq1 & ~(uintptr_t)3);
                if (ch * 4 + 4 <= nu) {   // the whole chunk lies in the row (uniform over the warp)
                    qg_cp16(d0 + o, dp0 + PSTR * p);
                    qg_cp16(d0 + o + 512, dp1 + PSTR * p);
                    // one lane per group copies the scale word (QI8 grouped: the aligned word
                    // holding the f16 scale); lanes of the same group read its slot (copies of
                    // one address by four lanes were measured 30% slower for int4 g128)
                    if (!PERCH && copier) { qg_cp4(ds0 + o, s0); qg_cp4(ds0 + o + 128, s1); }
                } else if (ch < nch) {   // a short last chunk: lanes past the row's end fill zeros
                    const uint32_t nb = ch * 4 + t < nu ? 16 : 0;
                    // (never with tiles: their rows are whole chunks)
                    qg_cp16z(d0 + o, nb ? (const void *)(dp0 + PSTR * p) : (const void *)q, nb);
                    qg_cp16z(d0 + o + 512, nb ? (const void *)(dp1 + PSTR * p) : (const void *)q, nb);
                    if (!PERCH && copier) {
                        qg_cp4z(ds0 + o, nb ? s0 : sp, nb >> 2);
                        qg_cp4z(ds0 + o + 128, nb ? s1 : sp, nb >> 2);
                    }
                }
            }
            dp0 += STEP; dp1 += STEP;
            if (!PERCH) { sp0 += sstep; sp1 += sstep; }
            if (++ik == cpw) { ik = 0; if (++ii < tiles) set_rows(ii); }
        }
        qg_commit();
        io = io == (QG_STAGES - 1) * QG_STAGE_BYTES ? 0 : io + QG_STAGE_BYTES;
    };

    if constexpr (!BULK) {
        set_rows(0);
#pragma unroll
        for (int j = 0; j < QG_STAGES - 1; j++) issue();   // weights never depend on the previous kernel
    }
    kc_pdl_wait();
    qg_stage_x<FMT, EPI, BULK>(x, N, cols, kp, xs, xsc, part);
    if constexpr (EPI == KC_EPI_CONSUME) {   // read by qg_tile_end after its barrier
        if (warp < N) {
            const float iv = kc_epi_inv_warp(e, warp, cols);
            if (lane == 0) sinv[warp] = iv;
        }
    }

    // B columns past N read column N - 1 (those C columns are never stored)
    const uint4 *xl = (const uint4 *)(xs + (size_t)min(g, N - 1) * kp + t * (CW / 4)) + warp * QG_UPL * (CW / 8);
    const uint32_t magic = 0x64006400u;
    float c[2][4] = { { 0.f, 0.f, 0.f, 0.f }, { 0.f, 0.f, 0.f, 0.f } };
    int ci = 0, ck = 0;
    // QI8 grouped: which half of the copied word holds the scale: the parity
    // of the f16 index, (row * ngr + unit >> ush) & 1
    int par0 = 0, par1 = 0;
    auto set_par = [&](int i) {
        const int o = o0 + i * TR + g;
        const int r0 = min(o, o1 - 1), r1 = MODE == 1 ? R + r0 : min(o + 8, o1 - 1);
        par0 = (int)(((size_t)r0 * ngr) & 1); par1 = (int)(((size_t)r1 * ngr) & 1);
    };
    if (FMT == 0 && !PERCH) set_par(0);
    const int sl = (lane & ~3) | (t & ~tmask);   // the scale slot the group's copying lane filled
    const uint4 *xc = xl;                         // B fragments of the current step
    uint32_t co = 0;                              // ring offset of the current step
    int bj = 0, bph = 0;   // BULK: the stage of step st and its phase parity
    for (int st = 0; st < steps; st++) {
        // A scale word is copied by one lane and read by the lanes of its
        // group, so the ring is shared within the warp: every lane is past
        // its reads of the stage issue() refills, and the copier's word has
        // landed before the others read it. (The warp runs converged here, so
        // these cost next to nothing, but without them the order is not
        // guaranteed by the memory model.)
        if constexpr (BULK) {
            qg_bar_wait(full_s + 8 * bj, bph);
        } else {
            if (!PERCH) __syncwarp();
            issue();
            qg_wait<QG_STAGES - 1>();   // this thread's copies of step st have landed
            if (!PERCH) __syncwarp();
        }
        if constexpr (BULK) {
            // The stage's bytes into registers first, then the stage goes
            // back to the producer, then the arithmetic: the producer's
            // refill overlaps this warp's step. A chunk holds rows 0-7 then
            // 8-15, 64 bytes each: lane (g, t)'s 16 bytes of row g sit at
            // 16 lane. (Chunks past the row read stale bytes, never used.)
            uint4 v0[QG_UPL], v1[QG_UPL];
            uint32_t sc0[QG_UPL], sc1[QG_UPL];
            const uint8_t *stage = (const uint8_t *)qg_smem + bj * BSTAGE;
#pragma unroll
            for (int p = 0; p < QG_UPL; p++) {
                const uint8_t *b = stage + (warp * QG_UPL + p) * 1024;
                v0[p] = *(const uint4 *)(b + lane * 16);
                v1[p] = *(const uint4 *)(b + 512 + lane * 16);
                sc0[p] = sc1[p] = 0;
                if constexpr (FMT == 1) {   // words [chunk][16][wpc] after the stage's q bytes
                    const uint8_t *w = stage + BCH * 1024 + (((warp * QG_UPL + p) * 16 + g) * wpc + (t >> ush)) * SB;
                    sc0[p] = *(const uint32_t *)w;
                    sc1[p] = *(const uint32_t *)(w + 8 * wpc * SB);
                }
            }
            __syncwarp();
            if (lane == 0) qg_bar_arrive(empty_s + 8 * bj);
            if (++bj == BSTAGES) { bj = 0; bph ^= 1; }
#pragma unroll
            for (int p = 0; p < QG_UPL; p++)
                if ((warp + QG_WARPS * ck) * QG_UPL + p < nch)
                    qg_chunk<FMT, PERCH>(c, v0[p], v1[p], sc0[p], sc1[p], xc + p * (CW / 8), magic);
        } else {
#pragma unroll
            for (int p = 0; p < QG_UPL; p++) {
                const int ch = (warp + QG_WARPS * ck) * QG_UPL + p;
                if (ch < nch) {
                    const uint8_t *b = ring + co + p * QG_CHUNK_BYTES;
                    const uint4 v0 = *(const uint4 *)(b + lane * 16), v1 = *(const uint4 *)(b + 512 + lane * 16);
                    uint32_t sc0 = 0, sc1 = 0;
                    if (FMT == 1 || !PERCH) {
                        sc0 = *(const uint32_t *)(b + 1024 + sl * 4);
                        sc1 = *(const uint32_t *)(b + 1152 + sl * 4);
                    }
                    if (FMT == 0 && !PERCH) {
                        const int gi = (ch * 4 + t) >> ush;
                        if ((par0 + gi) & 1) sc0 >>= 16;
                        if ((par1 + gi) & 1) sc1 >>= 16;
                    }
                    qg_chunk<FMT, PERCH>(c, v0, v1, sc0, sc1, xc + p * (CW / 8), magic);
                }
            }
        }
        co = co == (QG_STAGES - 1) * QG_STAGE_BYTES ? 0 : co + QG_STAGE_BYTES;
        xc += QG_WARPS * QG_UPL * CW / 8;
        if (++ck == cpw) {
            ck = 0;
            xc = xl;
            qg_tile_end<FMT, PERCH, MODE, EPI, BULK>(c, red + (ci & 1) * QG_WARPS * 128, xsc, sp, R, N, o0 + ci * TR, o1,
                                               y, e, sinv);
            if (++ci < tiles && FMT == 0 && !PERCH) set_par(ci);
        }
    }
}

// Whether the current device runs the sm_90 code (bulk copies and a producer
// warp for tiled int4; read once: a device property)
static bool qg_sm90(void)
{
    static int v = -1;
    if (v < 0) {
        int dev = 0, major = 0;
        KC_CHECK(cudaGetDevice(&dev));
        KC_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        v = major >= 9;
    }
    return v != 0;
}

static size_t qg_smem_bytes(int fmt, int n, int cols, bool bulk)
{
    const int cw = fmt ? 128 : 64;
    const size_t kp = (size_t)KC_CDIV(cols, cw) * cw;
    return (size_t)n * kp * 2 + (2 * QG_WARPS * 128 + 8 + 8 * QG_WARPS) * sizeof(float) +
           2 * QG_BSTAGES_MAX * sizeof(uint64_t) + (size_t)(bulk ? QG_BRING_BYTES : QG_RING_BYTES);
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

template <int FMT, int PERCH, int MODE, int TILED, int EPI>
static void gemv_q_launch(const kc_matrix *w, int R, const float *x, int n, float *y, const kc_gemv_epi &e,
                          cudaStream_t s)
{
    auto kern = gemv_q_kernel<FMT, PERCH, MODE, TILED, EPI>;
    static bool opted = false;   // once per instantiation; a function attribute, not stream work
    if (!opted) {
        KC_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)qg_smem_optin()));
        opted = true;
    }
    const bool bulk = TILED && FMT == 1 && qg_sm90();   // a producer warp past the QG_WARPS consumers
    const size_t smem = qg_smem_bytes(FMT, n, w->cols, bulk);
    int ush = 0;
    if (!PERCH) {
        const int upg = w->group / (FMT ? 32 : 16);   // 16-byte units per group: a power of two, <= 32
        while ((1 << ush) < upg) ush++;
        PG_ASSERT((1 << ush) == upg && upg <= QG_WARPS * 4);
    }
    const int threads = QG_WARPS * 32 + (bulk ? 32 : 0);
    int per_sm = 0, sms = 0, dev = 0;
    KC_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem));
    KC_CHECK(cudaGetDevice(&dev));
    KC_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    PG_ASSERT(per_sm >= 1);
    int blocks = KC_CDIV(R, MODE ? 8 : 16);
    if (blocks > per_sm * sms) blocks = per_sm * sms;
    kc_launch(kern, dim3(blocks), dim3(threads), smem, s,
              (const uint8_t *)w->q, (const void *)w->s, R, w->cols, ush, n, x, y, e);
}

// The launch for one layout (FMT, PERCH, TILED): plain rows or SwiGLU pairs
template <int FMT, int PERCH, int TILED, int EPI>
static void gemv_q_rows(const kc_matrix *w, int R, const float *x, int n, float *y, int swiglu,
                        const kc_gemv_epi &e, cudaStream_t s)
{
    if constexpr (EPI == KC_EPI_PRODUCE) {   // plain rows only (a producer adds them to the residual stream)
        PG_ASSERT(!swiglu);
        gemv_q_launch<FMT, PERCH, 0, TILED, EPI>(w, R, x, n, y, e, s);
    } else if (swiglu) {
        gemv_q_launch<FMT, PERCH, 1, TILED, EPI>(w, R, x, n, y, e, s);
    } else {
        gemv_q_launch<FMT, PERCH, 0, TILED, EPI>(w, R, x, n, y, e, s);
    }
}

// One pass of columns: the kernel for w's format and layout, one epilogue kind
template <int EPI>
static void gemv_q_pass(const kc_matrix *w, int R, const float *x, int n, float *y, int swiglu,
                        const kc_gemv_epi &e, cudaStream_t s)
{
    const int fmt = w->dtype == PG_QI4, perch = !fmt && w->group == w->cols, tiled = w->tiles != KC_TILES_NONE;
    if (fmt && tiled) gemv_q_rows<1, 0, 1, EPI>(w, R, x, n, y, swiglu, e, s);
    else if (fmt) gemv_q_rows<1, 0, 0, EPI>(w, R, x, n, y, swiglu, e, s);
    else if (perch && tiled) gemv_q_rows<0, 1, 1, EPI>(w, R, x, n, y, swiglu, e, s);
    else if (perch) gemv_q_rows<0, 1, 0, EPI>(w, R, x, n, y, swiglu, e, s);
    else gemv_q_rows<0, 0, 0, EPI>(w, R, x, n, y, swiglu, e, s);
}

/* Columns in passes of at most 8 (the mma's n), fewer where x of 8 columns
 * would not fit in shared memory beside the pipeline (long rows). */
extern "C" void k_gemv_q(const kc_matrix *w, const float *x, int n, float *y, int swiglu, const kc_gemv_epi *epi,
                         cudaStream_t s)
{
    const kc_gemv_epi e0 = epi ? *epi : kc_gemv_epi{};
    const int kind = kc_epi_kind(e0);
    PG_ASSERT(kind == KC_EPI_PRODUCE ? !swiglu : y != NULL);
    PG_ASSERT(w->q && w->s && n >= 1 && w->group > 0 && w->cols % w->group == 0);
    PG_ASSERT(!swiglu || w->rows % 2 == 0);
    const int fmt = w->dtype == PG_QI4;
    PG_ASSERT(fmt ? (w->group % 32 == 0) : (w->dtype == PG_QI8 && w->group % 16 == 0 && w->cols % 16 == 0));
    PG_ASSERT(!w->tiles || (w->tiles == (swiglu ? KC_TILES_PAIRS : KC_TILES_ROWS) && kc_q_tileable(w, w->tiles)));
    const int R = swiglu ? w->rows / 2 : w->rows;
    int per = 8;
    const bool bulk = fmt && w->tiles && qg_sm90();   // gemv_q_launch's choice
    while (per > 1 && qg_smem_bytes(fmt, per, w->cols, bulk) > qg_smem_optin()) per--;
    PG_ASSERT(qg_smem_bytes(fmt, per, w->cols, bulk) <= qg_smem_optin());
    for (int i = 0; i < n; i += per) {
        const int m = n - i < per ? n - i : per;
        const float *xi = x + (size_t)i * w->cols;
        float *yi = y ? y + (size_t)i * R : y;
        const kc_gemv_epi e = kc_epi_at(e0, i, R);   // columns [i, i + m)
        if (kind == KC_EPI_PRODUCE) gemv_q_pass<KC_EPI_PRODUCE>(w, R, xi, m, yi, swiglu, e, s);
        else if (kind == KC_EPI_CONSUME) gemv_q_pass<KC_EPI_CONSUME>(w, R, xi, m, yi, swiglu, e, s);
        else gemv_q_pass<KC_EPI_NONE>(w, R, xi, m, yi, swiglu, e, s);
    }
}
