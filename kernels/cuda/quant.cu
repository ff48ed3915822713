/*
 * kernels/cuda/quant.cu — weight-only quantization on the device (the
 * formats of model/quant.h, device layout in kernels_cuda.h):
 *   k_quantize        F32/F16/BF16/GGUF blocks -> QI8 / QI4, bit-identical to
 *                     quant_matrix (model/quant.c), so the CPU and the GPU run
 *                     the same quantized model;
 *   k_quant_from_gguf GGUF Q8_0 -> QI8 g32, Q4_0/Q4_1 -> QI4 g32, exactly;
 *   k_dequant_bf16    QI8/QI4 rows -> bf16 tiles for the prefill GEMM;
 *   k_blocks_to_bf16  GGUF blocks -> bf16.
 * Exactness: every step of the reference is an IEEE f32 operation, and the
 * host build (-std=c11) does not contract a*b+c into an FMA; here the same
 * operations are spelled with __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn so that
 * nvcc cannot contract them either. f32 -> f16 is round-to-nearest-even with
 * subnormals and overflow to inf on both sides (pg_f32_to_f16 and
 * __float2half_rn agree on every non-NaN input). min/max reductions are exact
 * in any order.
 */
#include "kc_util.cuh"
#include <string.h>

// ---------------------------------------------------------------- sizes
extern "C" size_t kc_qm_q_bytes(pg_dtype t, int64_t rows, int64_t cols, int group)
{
    (void)group;
    if (t == PG_QI8) return (size_t)(rows * cols);
    if (t == PG_QI4) return (size_t)(rows * cols / 2);
    return kc_matrix_q_bytes(t, rows, cols);
}
extern "C" size_t kc_qm_s_bytes(pg_dtype t, int64_t rows, int64_t cols, int group)
{
    if (t == PG_QI8) return (size_t)(rows * (cols / group)) * 2;
    if (t == PG_QI4) return (size_t)(rows * (cols / group)) * 4;
    return kc_matrix_s_bytes(t, rows, cols);
}
extern "C" size_t kc_qm_bytes(pg_dtype t, int64_t rows, int64_t cols, int group)
{
    return kc_qm_q_bytes(t, rows, cols, group) + kc_qm_s_bytes(t, rows, cols, group);
}

extern "C" void kc_pack_qparams(pg_dtype t, const uint16_t *scale, const uint16_t *min, size_t n, void *out)
{
    if (t == PG_QI8) { memcpy(out, scale, n * 2); return; }
    uint32_t *o = (uint32_t *)out;
    for (size_t i = 0; i < n; i++) o[i] = (uint32_t)scale[i] | ((uint32_t)min[i] << 16);
}

// ---------------------------------------------------------------- source values
// Element c of row r of a stored matrix, as f32, exactly as ref_dequant_row.
__device__ __forceinline__ uint16_t ld_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

__device__ __forceinline__ float src_val(const uint8_t *src, int t, int64_t cols, int64_t r, int64_t c)
{
    switch (t) {
    case PG_F32: return ((const float *)src)[r * cols + c];
    case PG_F16: return kc_f16_f(((const uint16_t *)src)[r * cols + c]);
    case PG_BF16: return kc_bf16_f(((const uint16_t *)src)[r * cols + c]);
    case PG_Q8_0: {
        const uint8_t *b = src + (r * (cols / 32) + c / 32) * 34;
        return __fmul_rn(kc_f16_f(ld_u16(b)), (float)(int8_t)b[2 + c % 32]);
    }
    case PG_Q4_0: {
        const uint8_t *b = src + (r * (cols / 32) + c / 32) * 18;
        int j = (int)(c % 32);
        int v = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return __fmul_rn(kc_f16_f(ld_u16(b)), (float)(v - 8));
    }
    default: {   // PG_Q4_1
        const uint8_t *b = src + (r * (cols / 32) + c / 32) * 20;
        int j = (int)(c % 32);
        int v = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
        return __fadd_rn(__fmul_rn(kc_f16_f(ld_u16(b)), (float)v), kc_f16_f(ld_u16(b + 2)));
    }
    }
}

__device__ __forceinline__ uint16_t f_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }

// ---------------------------------------------------------------- QI8 quantizer
// One block per (row, group); threads stride over the group's elements.
#define QZ_THREADS 256
__global__ void __launch_bounds__(QZ_THREADS)
quant_i8_kernel(const uint8_t *__restrict__ src, int t, int64_t cols, int group, int8_t *__restrict__ q,
                uint16_t *__restrict__ sc, int tiles, int64_t qrows, int64_t row0)
{
    // q and sc point at row 0 of the whole matrix (qrows rows, `tiles` order);
    // source row r is row row0 + r there
    __shared__ float sh[32];
    const int64_t ng = cols / group, r = blockIdx.x / ng, g = blockIdx.x % ng;
    const int64_t c0 = g * group;
    float a = 0.f;
    for (int i = threadIdx.x; i < group; i += blockDim.x) a = fmaxf(a, fabsf(src_val(src, t, cols, r, c0 + i)));
    a = kc_block_max(a, sh);
    const uint16_t s16 = f_f16(__fdiv_rn(a, 127.f));
    const float sf = kc_f16_f(s16);
    if (threadIdx.x == 0) sc[(row0 + r) * ng + g] = s16;
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        float v = sf > 0.f ? rintf(__fdiv_rn(src_val(src, t, cols, r, c0 + i), sf)) : 0.f;
        q[kc_qi8_at(tiles, qrows, cols, row0 + r, c0 + i)] = (int8_t)fminf(fmaxf(v, -127.f), 127.f);
    }
}

// ---------------------------------------------------------------- QI4 quantizer
// One warp per group (32, 64 or 128 elements: 1, 2 or 4 per lane). Lane l
// holds elements l, l + 32, ...; the even lane of each pair writes the byte.
#define QZ4_WARPS 8
__global__ void __launch_bounds__(QZ4_WARPS * 32)
quant_i4_kernel(const uint8_t *__restrict__ src, int t, int64_t rows, int64_t cols, int group,
                uint8_t *__restrict__ q, uint32_t *__restrict__ sm, int tiles, int64_t qrows, int64_t row0)
{
    // q and sm point at row 0 of the whole matrix (qrows rows, `tiles`
    // order); source row r is row row0 + r
    const int lane = threadIdx.x & 31;
    const int64_t gid = (int64_t)blockIdx.x * QZ4_WARPS + (threadIdx.x >> 5);
    const int64_t ng = cols / group;
    if (gid >= rows * ng) return;
    const int64_t r = gid / ng, c0 = (gid % ng) * group;
    const int per = group / 32;
    float w[4];
    float lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < per; k++) {
        w[k] = src_val(src, t, cols, r, c0 + lane + 32 * k);
        lo = fminf(lo, w[k]); hi = fmaxf(hi, w[k]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    const uint16_t s16 = f_f16(__fdiv_rn(__fsub_rn(hi, lo), 15.f)), m16 = f_f16(lo);
    const float sf = kc_f16_f(s16), mf = kc_f16_f(m16);
    if (lane == 0) sm[kc_qi4_s_at(tiles, qrows, cols, group, row0 + r, gid % ng)] = (uint32_t)s16 | ((uint32_t)m16 << 16);
    for (int k = 0; k < per; k++) {
        float x = sf > 0.f ? rintf(__fdiv_rn(__fsub_rn(w[k], mf), sf)) : 0.f;
        int v = (int)fminf(fmaxf(x, 0.f), 15.f);
        int up = __shfl_down_sync(0xffffffffu, v, 1);
        if ((lane & 1) == 0)
            q[kc_qi8_at(tiles, qrows, cols / 2, row0 + r, (c0 + lane + 32 * k) / 2)] = (uint8_t)(v | (up << 4));
    }
}

extern "C" void k_quantize(const void *src, pg_dtype st, int64_t rows, int64_t cols, kc_matrix *dst,
                           int64_t row0, cudaStream_t s)
{
    PG_ASSERT(dst->dtype == PG_QI8 || dst->dtype == PG_QI4);
    PG_ASSERT(st == PG_F32 || st == PG_F16 || st == PG_BF16 || st == PG_Q8_0 || st == PG_Q4_0 || st == PG_Q4_1);
    PG_ASSERT(cols == dst->cols && dst->group > 0 && cols % dst->group == 0 && row0 + rows <= dst->rows);
    PG_ASSERT((st != PG_Q8_0 && st != PG_Q4_0 && st != PG_Q4_1) || cols % 32 == 0);
    if (rows == 0) return;
    const int64_t ng = cols / dst->group;
    if (dst->dtype == PG_QI8) {
        PG_ASSERT(rows * ng < (1ll << 31));
        PG_ASSERT(dst->tiles == KC_TILES_NONE || kc_q_tileable(dst, dst->tiles));
        quant_i8_kernel<<<(unsigned)(rows * ng), QZ_THREADS, 0, s>>>((const uint8_t *)src, st, cols, dst->group,
                                                                      (int8_t *)dst->q, (uint16_t *)dst->s,
                                                                      dst->tiles, dst->rows, row0);
    } else {
        PG_ASSERT(dst->group == 32 || dst->group == 64 || dst->group == 128);
        PG_ASSERT(dst->tiles == KC_TILES_NONE || kc_q_tileable(dst, dst->tiles));
        quant_i4_kernel<<<(unsigned)KC_CDIV(rows * ng, QZ4_WARPS), QZ4_WARPS * 32, 0, s>>>(
            (const uint8_t *)src, st, rows, cols, dst->group, (uint8_t *)dst->q, (uint32_t *)dst->s, dst->tiles,
            dst->rows, row0);
    }
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- GGUF blocks
// One thread per 32-element block (blocks are 34/18/20 bytes: not aligned).
// q and sp point at row 0 of the whole matrix (qrows rows of cols elements,
// `tiles` order: QI4 only); source block b is in row row0 + b / (cols / 32).
// A QI4 block's 16 bytes lie in one 64-byte chunk.
__global__ void from_gguf_kernel(const uint8_t *__restrict__ src, int t, int64_t nblk, int64_t cols,
                                 uint8_t *__restrict__ q, void *__restrict__ sp, int tiles, int64_t qrows,
                                 int64_t row0)
{
    int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (b >= nblk) return;
    if (t == PG_Q8_0) {
        const uint8_t *p = src + b * 34;
        ((uint16_t *)sp)[row0 * (cols / 32) + b] = ld_u16(p);
        uint32_t *o = (uint32_t *)(q + row0 * cols + b * 32);
        for (int j = 0; j < 8; j++)
            o[j] = (uint32_t)p[2 + 4 * j] | ((uint32_t)p[3 + 4 * j] << 8) | ((uint32_t)p[4 + 4 * j] << 16) |
                   ((uint32_t)p[5 + 4 * j] << 24);
        return;
    }
    const uint8_t *p = src + b * (t == PG_Q4_1 ? 20 : 18);
    uint16_t d = ld_u16(p), m;
    const uint8_t *qs = p + (t == PG_Q4_1 ? 4 : 2);
    if (t == PG_Q4_1) m = ld_u16(p + 2);
    else m = f_f16(-8.f * kc_f16_f(d));   // exact: a power-of-two multiple
    const int64_t bpr = cols / 32;   // blocks (groups) per row
    ((uint32_t *)sp)[kc_qi4_s_at(tiles, qrows, cols, 32, row0 + b / bpr, b % bpr)] = (uint32_t)d | ((uint32_t)m << 16);
    // GGUF: element j is qs[j] & 15, element j + 16 is qs[j] >> 4; ours: element
    // c in byte c/2, low nibble for even c.
    uint32_t *o = (uint32_t *)(q + kc_qi8_at(tiles, qrows, cols / 2, row0 + b / bpr, (b % bpr) * 16));
    for (int w = 0; w < 4; w++) {
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int e0 = 8 * w + 2 * k, e1 = e0 + 1;
            int n0 = e0 < 16 ? (qs[e0] & 15) : (qs[e0 - 16] >> 4);
            int n1 = e1 < 16 ? (qs[e1] & 15) : (qs[e1 - 16] >> 4);
            v |= (uint32_t)(n0 | (n1 << 4)) << (8 * k);
        }
        o[w] = v;
    }
}

extern "C" void k_quant_from_gguf(const void *src, pg_dtype st, int64_t rows, int64_t cols, kc_matrix *dst,
                                  int64_t row0, cudaStream_t s)
{
    PG_ASSERT(st == PG_Q8_0 || st == PG_Q4_0 || st == PG_Q4_1);
    PG_ASSERT(dst->dtype == (st == PG_Q8_0 ? PG_QI8 : PG_QI4) && dst->group == 32);
    PG_ASSERT(dst->tiles == KC_TILES_NONE || kc_q_tileable(dst, dst->tiles));
    PG_ASSERT(cols == dst->cols && cols % 32 == 0 && row0 + rows <= dst->rows);
    int64_t nblk = rows * cols / 32;
    if (nblk == 0) return;
    from_gguf_kernel<<<(unsigned)KC_CDIV(nblk, 256), 256, 0, s>>>((const uint8_t *)src, st, nblk, cols,
                                                                   (uint8_t *)dst->q, dst->s, dst->tiles, dst->rows,
                                                                   row0);
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- dequantization
// One thread per 8 consecutive elements; blockIdx.y = row (cols % 16 == 0).
// Two int8 codes of a 32-bit word (bytes sh/8 and sh/8 + 1) times the row
// scale, as a bf16 pair (low half = the lower byte): the rounding of the CPU
// reference (product in f32, then round to bf16).
__device__ __forceinline__ uint32_t dq_i8x2_bf16(uint32_t word, int sh, float s)
{
    const float a = s * (float)(int8_t)(word >> sh), b = s * (float)(int8_t)(word >> (sh + 8));
    return (uint32_t)kc_f_bf16(a) | ((uint32_t)kc_f_bf16(b) << 16);
}

__global__ void dequant_bf16_kernel(kc_matrix w, int64_t r0, uint4 *__restrict__ dst)
{
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= w.cols) return;
    const int64_t cols = w.cols, ng = cols / w.group, r = r0 + blockIdx.y;
    const int64_t i = ((int64_t)blockIdx.y * cols + c) / 8;
    uint32_t o[4];
    if (w.dtype == PG_QI8) {
        const float s = kc_f16_f(((const uint16_t *)w.s)[r * ng + c / w.group]);
        // 8 elements of one row: contiguous in every tile order (c % 8 == 0)
        uint2 v = *(const uint2 *)((const int8_t *)w.q + kc_qi8_at(w.tiles, w.rows, cols, r, c));
        for (int k = 0; k < 4; k++) o[k] = dq_i8x2_bf16(k < 2 ? v.x : v.y, 16 * (k & 1), s);
    } else {
        const uint32_t smv = ((const uint32_t *)w.s)[r * ng + c / w.group];
        const float s = kc_f16_f(smv & 0xffff), m = kc_f16_f(smv >> 16);
        // 8 elements of one row: 4 bytes of one 64-byte chunk in every tile order
        uint32_t v = *(const uint32_t *)((const uint8_t *)w.q + kc_qi8_at(w.tiles, w.rows, cols / 2, r, c / 2));
        for (int k = 0; k < 4; k++) {
            // s*q is exact in f32, so fmaf equals the reference's rounded product plus m
            float a = fmaf(s, (float)((v >> (8 * k)) & 15), m), b = fmaf(s, (float)((v >> (8 * k + 4)) & 15), m);
            o[k] = (uint32_t)kc_f_bf16(a) | ((uint32_t)kc_f_bf16(b) << 16);
        }
    }
    dst[i] = make_uint4(o[0], o[1], o[2], o[3]);
}

// A thread's place in the tiled dequantization kernels below: blocks of 256
// threads cover 16 rows; a chunk (64 stored bytes of 16 fragment rows) has
// TPC threads, TPC / 16 per fragment row, each taking CPT columns. Sets rl
// (row within the call) and c (first column); false past the rows or columns.
template <int TPC, int CPT>
__device__ __forceinline__ bool dq_tile_pos(int cols, int64_t nrows, int64_t &rl, int64_t &c)
{
    constexpr int TPR = TPC / 16;
    const int u = threadIdx.x % TPC;
    rl = (int64_t)blockIdx.y * 16 + u / TPR;
    c = ((int64_t)blockIdx.x * (256 / TPC) + threadIdx.x / TPC) * (TPR * CPT) + CPT * (u % TPR);
    return rl < nrows && c < cols;
}

// Tiled QI8: the thread order follows the stored order, so that reads are
// contiguous. A block of 256 threads covers 16 rows x 256 columns: four
// chunks of 64 columns, 64 threads each; thread u of a chunk takes 16 bytes,
// fragment row u / 4, columns 16 (u % 4) .. + 15. With KC_TILES_ROWS and r0 a
// multiple of 16 each chunk's 64 threads read its 1 KB in one run (PAIRS: two
// runs of 512 bytes); a quad of threads writes 128 contiguous bytes of a row.
// The row-major kernel above, fed the tiled order, read 64-byte pieces 1 KB
// apart: a 512-token 7B int8 prefill took 6.5% longer (H200).
__global__ void dequant_qi8_tiled_kernel(kc_matrix w, int64_t r0, int64_t nrows, uint4 *__restrict__ dst)
{
    int64_t rl, c;
    if (!dq_tile_pos<64, 16>(w.cols, nrows, rl, c)) return;
    const int64_t r = r0 + rl;
    const float sc = kc_f16_f(((const uint16_t *)w.s)[r]);   // tiled => one scale per row
    const uint4 v = *(const uint4 *)((const int8_t *)w.q + kc_qi8_at(w.tiles, w.rows, w.cols, r, c));
    const uint32_t in[4] = { v.x, v.y, v.z, v.w };
    uint32_t o[8];
    for (int k = 0; k < 8; k++) o[k] = dq_i8x2_bf16(in[k / 2], 16 * (k & 1), sc);
    uint4 *d = dst + (rl * w.cols + c) / 8;
    d[0] = make_uint4(o[0], o[1], o[2], o[3]);
    d[1] = make_uint4(o[4], o[5], o[6], o[7]);
}

// Tiled QI4: as the QI8 kernel above, in the stored order and with its
// store pattern. A block of 256 threads covers 16 rows x 256 columns: two
// chunks of 64 bytes (128 columns), 128 threads each; thread u of a chunk
// reads 8 bytes, fragment row u / 8, columns 128 k + 16 (u % 8) .. + 15 (one
// group: group >= 32), and writes them as 32 contiguous bytes; 8 threads
// write 256 contiguous bytes of a row. Byte j of the 8 holds columns 2j (low
// nibble) and 2j + 1. The first version (16 bytes read, 64 written per
// thread) left the 512-token 7B int4 g32 prefill 8.4% slower than row-major
// int4 (H200, 2026-12-03 r16).
__global__ void dequant_qi4_tiled_kernel(kc_matrix w, int64_t r0, int64_t nrows, uint4 *__restrict__ dst)
{
    int64_t rl, c;
    if (!dq_tile_pos<128, 16>(w.cols, nrows, rl, c)) return;
    const int64_t r = r0 + rl;
    const uint32_t smv = ((const uint32_t *)w.s)[kc_qi4_s_at(w.tiles, w.rows, w.cols, w.group, r, c / w.group)];
    const float s = kc_f16_f(smv & 0xffff), m = kc_f16_f(smv >> 16);
    const uint2 v = *(const uint2 *)((const uint8_t *)w.q + kc_qi8_at(w.tiles, w.rows, w.cols / 2, r, c / 2));
    const uint32_t in[2] = { v.x, v.y };
    uint4 *d = dst + (rl * w.cols + c) / 8;
#pragma unroll
    for (int k = 0; k < 2; k++) {   // word k: columns c + 8k .. + 7
        uint32_t o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            // s*q is exact in f32, so fmaf equals the reference's rounded product plus m
            const float a = fmaf(s, (float)((in[k] >> (8 * j)) & 15), m);
            const float b = fmaf(s, (float)((in[k] >> (8 * j + 4)) & 15), m);
            o[j] = (uint32_t)kc_f_bf16(a) | ((uint32_t)kc_f_bf16(b) << 16);
        }
        d[k] = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

extern "C" void k_dequant_bf16(const kc_matrix *w, int64_t r0, int64_t nrows, kc_bf16 *dst, cudaStream_t s)
{
    PG_ASSERT((w->dtype == PG_QI8 || w->dtype == PG_QI4) && w->cols % 16 == 0 && r0 + nrows <= w->rows);
    if (nrows == 0) return;
    PG_ASSERT(nrows < 65536);
    if (w->dtype == PG_QI8 && w->tiles != KC_TILES_NONE) {
        PG_ASSERT(w->group == w->cols && w->cols % 64 == 0);
        dequant_qi8_tiled_kernel<<<dim3((unsigned)KC_CDIV(w->cols, 256), (unsigned)KC_CDIV(nrows, 16)), 256, 0, s>>>(
            *w, r0, nrows, (uint4 *)dst);
        KC_LAUNCH_CHECK();
        return;
    }
    if (w->dtype == PG_QI4 && w->tiles != KC_TILES_NONE) {
        PG_ASSERT(w->cols % 128 == 0 && w->group >= 32);
        dequant_qi4_tiled_kernel<<<dim3((unsigned)KC_CDIV(w->cols, 256), (unsigned)KC_CDIV(nrows, 16)), 256, 0, s>>>(
            *w, r0, nrows, (uint4 *)dst);
        KC_LAUNCH_CHECK();
        return;
    }
    dequant_bf16_kernel<<<dim3((unsigned)KC_CDIV(w->cols / 8, 256), (unsigned)nrows), 256, 0, s>>>(*w, r0, (uint4 *)dst);
    KC_LAUNCH_CHECK();
}

// 16 bytes of one row per thread (rowb bytes per row); blockIdx.y = row
__global__ void q_place_kernel(const uint8_t *__restrict__ src, int64_t rowb, uint8_t *__restrict__ q, int tiles,
                               int64_t qrows, int64_t row0)
{
    const int64_t c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 16, r = blockIdx.y;
    if (c >= rowb) return;
    *(uint4 *)(q + kc_qi8_at(tiles, qrows, rowb, row0 + r, c)) = *(const uint4 *)(src + r * rowb + c);
}

extern "C" void k_q_place(const uint8_t *src, int64_t rows, kc_matrix *dst, int64_t row0, cudaStream_t s)
{
    PG_ASSERT((dst->dtype == PG_QI8 || dst->dtype == PG_QI4) && row0 + rows <= dst->rows);
    const int64_t rowb = dst->dtype == PG_QI4 ? dst->cols / 2 : dst->cols;
    PG_ASSERT(rowb % 16 == 0);
    PG_ASSERT(dst->tiles == KC_TILES_NONE || kc_q_tileable(dst, dst->tiles));
    PG_ASSERT(((uintptr_t)src & 15) == 0);   // 16-byte loads
    for (int64_t r = 0; r < rows; r += 65535) {   // gridDim.y < 65536
        const int64_t m = rows - r < 65535 ? rows - r : 65535;
        q_place_kernel<<<dim3((unsigned)KC_CDIV(rowb / 16, 128), (unsigned)m), 128, 0, s>>>(
            src + r * rowb, rowb, (uint8_t *)dst->q, dst->tiles, dst->rows, row0 + r);
        KC_LAUNCH_CHECK();
    }
}

// one group word per thread; blockIdx.y = row
__global__ void qi4_s_place_kernel(const uint32_t *__restrict__ src, int64_t cols, int group, uint32_t *__restrict__ sm,
                                   int tiles, int64_t qrows, int64_t row0)
{
    const int64_t ng = cols / group, j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
    if (j >= ng) return;
    sm[kc_qi4_s_at(tiles, qrows, cols, group, row0 + r, j)] = src[r * ng + j];
}

extern "C" void k_qi4_s_place(const uint32_t *src, int64_t rows, kc_matrix *dst, int64_t row0, cudaStream_t s)
{
    PG_ASSERT(dst->dtype == PG_QI4 && row0 + rows <= dst->rows);
    PG_ASSERT(dst->tiles == KC_TILES_NONE || kc_q_tileable(dst, dst->tiles));
    const int64_t ng = dst->cols / dst->group;
    for (int64_t r = 0; r < rows; r += 65535) {   // gridDim.y < 65536
        const int64_t m = rows - r < 65535 ? rows - r : 65535;
        qi4_s_place_kernel<<<dim3((unsigned)KC_CDIV(ng, 128), (unsigned)m), 128, 0, s>>>(
            src + r * ng, dst->cols, dst->group, (uint32_t *)dst->s, dst->tiles, dst->rows, row0 + r);
        KC_LAUNCH_CHECK();
    }
}

__global__ void blocks_to_bf16_kernel(const uint8_t *__restrict__ src, int t, int64_t n, uint16_t *__restrict__ dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = kc_f_bf16(src_val(src, t, 32, i / 32, i % 32));
}

extern "C" void k_blocks_to_bf16(const void *src, pg_dtype st, int64_t n, kc_bf16 *dst, cudaStream_t s)
{
    PG_ASSERT((st == PG_Q8_0 || st == PG_Q4_0 || st == PG_Q4_1) && n % 32 == 0);
    int64_t g = KC_CDIV(n, 256);
    blocks_to_bf16_kernel<<<(unsigned)(g > 65536 ? 65536 : (g < 1 ? 1 : g)), 256, 0, s>>>(
        (const uint8_t *)src, st, n, dst);
    KC_LAUNCH_CHECK();
}
