/* kernels/ref_fast.c — vectorised CPU kernels (cpu_* in kernels.h).
 *
 * Matmul strategy: each weight block (32 elements) is decoded once into
 * vector registers and FMA'd against a tile of up to 4 token vectors, so a
 * prefill chunk reads each weight row once. Plain dtypes (and the AVX2 path)
 * dequantize with the exact reference formula; the AVX-512 path for quantized
 * blocks factors the scale out of the block sum (see qtile_512), which cuts
 * the vector instructions per block by about a third — on a 2-core machine
 * decode is bound by those instructions about as much as by memory.
 * Each token's partial sums run in fixed chains combined in a fixed order at
 * the end of the row, so a token's result is bitwise the same whatever tile
 * (n) it was computed in: a prompt prefilled in chunks gives the same numbers
 * as one token at a time.
 *
 * Measured on the 2-core AVX-512 development machine (one core, 96 MB of
 * weights, cpu time): Q4_1 ~7 GB/s, Q8_0 ~12.7 GB/s of weights per core;
 * AVX2 path Q4_1 ~3.3 GB/s. Memory reads ~17-21 GB/s.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define TILE 4   /* tokens per weight pass; loops over a tile are fully unrolled
                    * (GCC unroll pragmas) so the accumulators stay in registers */

/* Block scales are f16; the conversion is exact either way, F16C is one instruction. */
static inline float ld_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return pg_f16_to_f32(h);
#endif
}

/* Bytes of one 32-element block of dtype t (plain types: 32 elements). */
static size_t blk_bytes(pg_dtype t) {
    return pg_dtype_block(t) == 32 ? pg_dtype_block_bytes(t) : 32 * pg_dtype_block_bytes(t);
}

/* Scalar dot of the cols % 32 tail of a plain-dtype row (quantized rows have none). */
static float tail_dot(pg_dtype wt, const uint8_t *wrow, const float *x, int64_t c0, int64_t cols) {
    float s = 0.0f;
    for (int64_t c = c0; c < cols; c++) {
        float w;
        if (wt == PG_F32) memcpy(&w, wrow + 4 * c, 4);
        else if (wt == PG_F16) w = ld_f16(wrow + 2 * c);
        else { uint16_t h; memcpy(&h, wrow + 2 * c, 2); w = pg_bf16_to_f32(h); }
        s += x[c] * w;
    }
    return s;
}

/* ================================================================ scalar path */
static void mm_scalar(float *y, const float *x, int n, const void *w, pg_dtype wt,
                      int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    size_t rb = pg_dtype_row_bytes(wt, cols), bb = blk_bytes(wt);
    int64_t nb = cols / 32;
    float wb[32];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wrow = (const uint8_t *)w + (size_t)r * rb;
        for (int t0 = 0; t0 < n; t0 += TILE) {
            int nt = n - t0 < TILE ? n - t0 : TILE;
            float acc[TILE][4] = {{0}};
            for (int64_t b = 0; b < nb; b++) {
                ref_dequant_row(wt, wrow + (size_t)b * bb, wb, 32);
                for (int t = 0; t < nt; t++) {
                    const float *xt = x + (size_t)(t0 + t) * cols + b * 32;
                    for (int j = 0; j < 32; j++) acc[t][j & 3] += wb[j] * xt[j];
                }
            }
            for (int t = 0; t < nt; t++) {
                const float *xt = x + (size_t)(t0 + t) * cols;
                float s = (acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3]);
                y[(size_t)(t0 + t) * rows + r] = s + tail_dot(wt, wrow, xt, nb * 32, cols);
            }
        }
    }
}

/* ================================================================ AVX2 path */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* Dequantize block b of a row into 4 x 8 floats (elements 0..31). */
ALWAYS_INLINE void blk_avx2(const int wt, const uint8_t *row, int64_t b, __m256 v[4]) {
    if (wt == PG_F32) {
        const float *p = (const float *)(row + (size_t)b * 128);
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(p + 8 * i);
    } else if (wt == PG_F16) {
        const uint8_t *p = row + (size_t)b * 64;
        for (int i = 0; i < 4; i++)
            v[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * i)));
    } else if (wt == PG_BF16) {
        const uint8_t *p = row + (size_t)b * 64;
        for (int i = 0; i < 4; i++) {
            __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * i)));
            v[i] = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
        }
    } else if (wt == PG_Q8_0) {
        const uint8_t *p = row + (size_t)b * 34;
        __m256 d = _mm256_set1_ps(ld_f16(p));
        for (int i = 0; i < 4; i++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(p + 2 + 8 * i));
            v[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
        }
    } else { /* Q4_0, Q4_1 */
        const int q41 = wt == PG_Q4_1;
        const uint8_t *p = row + (size_t)b * (q41 ? 20 : 18);
        __m256 d = _mm256_set1_ps(ld_f16(p));
        __m128i qs = _mm_loadu_si128((const __m128i *)(p + (q41 ? 4 : 2)));
        __m128i m4 = _mm_set1_epi8(15);
        __m128i lo = _mm_and_si128(qs, m4), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
        __m256i q[4] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                        _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
        if (q41) {
            __m256 m = _mm256_set1_ps(ld_f16(p + 2));
            for (int i = 0; i < 4; i++)
                v[i] = _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(q[i])), m);
        } else {
            __m256i eight = _mm256_set1_epi32(8);
            for (int i = 0; i < 4; i++)
                v[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[i], eight)));
        }
    }
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ALWAYS_INLINE void tile_avx2(const int wt, const int NT, const uint8_t *wrow, const float *x,
                             int64_t cols, float *out) {
    __m256 acc[TILE][4];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < 4; i++) acc[t][i] = _mm256_setzero_ps();
    int64_t nb = cols / 32;
    for (int64_t b = 0; b < nb; b++) {
        __m256 v[4];
        blk_avx2(wt, wrow, b, v);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const float *xt = x + (size_t)t * cols + b * 32;
            for (int i = 0; i < 4; i++)
                acc[t][i] = _mm256_fmadd_ps(v[i], _mm256_loadu_ps(xt + 8 * i), acc[t][i]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        __m256 s = _mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]),
                                 _mm256_add_ps(acc[t][2], acc[t][3]));
        out[t] = hsum256(s) + tail_dot(wt, wrow, x + (size_t)t * cols, nb * 32, cols);
    }
}

ALWAYS_INLINE void rows_avx2(const int wt, float *y, const float *x, int n,
                             const void *w, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    size_t rb = pg_dtype_row_bytes(wt, cols);
    float o[TILE];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wrow = (const uint8_t *)w + (size_t)r * rb;
        for (int t0 = 0; t0 < n; t0 += TILE) {
            int nt = n - t0 < TILE ? n - t0 : TILE;
            const float *xt = x + (size_t)t0 * cols;
            switch (nt) {
            case 1: tile_avx2(wt, 1, wrow, xt, cols, o); break;
            case 2: tile_avx2(wt, 2, wrow, xt, cols, o); break;
            case 3: tile_avx2(wt, 3, wrow, xt, cols, o); break;
            default: tile_avx2(wt, 4, wrow, xt, cols, o); break;
            }
            for (int t = 0; t < nt; t++) y[(size_t)(t0 + t) * rows + r] = o[t];
        }
    }
}

static void mm_avx2(float *y, const float *x, int n, const void *w, pg_dtype wt,
                    int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    switch (wt) {
    case PG_F32:  rows_avx2(PG_F32, y, x, n, w, rows, cols, r0, r1); break;
    case PG_F16:  rows_avx2(PG_F16, y, x, n, w, rows, cols, r0, r1); break;
    case PG_BF16: rows_avx2(PG_BF16, y, x, n, w, rows, cols, r0, r1); break;
    case PG_Q8_0: rows_avx2(PG_Q8_0, y, x, n, w, rows, cols, r0, r1); break;
    case PG_Q4_0: rows_avx2(PG_Q4_0, y, x, n, w, rows, cols, r0, r1); break;
    case PG_Q4_1: rows_avx2(PG_Q4_1, y, x, n, w, rows, cols, r0, r1); break;
    default: PG_DIE("cpu_matmul: unsupported dtype %s", pg_dtype_name(wt));
    }
}
#endif

/* ================================================================ AVX-512 path */
#if defined(__AVX512F__) && defined(__AVX512BW__)
/* Dequantize block b of a row into 2 x 16 floats (elements 0..15, 16..31). */
ALWAYS_INLINE void blk_512(const int wt, const uint8_t *row, int64_t b, __m512 *v0, __m512 *v1) {
    if (wt == PG_F32) {
        const float *p = (const float *)(row + (size_t)b * 128);
        *v0 = _mm512_loadu_ps(p);
        *v1 = _mm512_loadu_ps(p + 16);
    } else if (wt == PG_F16) {
        const uint8_t *p = row + (size_t)b * 64;
        *v0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *v1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
    } else if (wt == PG_BF16) {
        const uint8_t *p = row + (size_t)b * 64;
        __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        __m512i c = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 32)));
        *v0 = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
        *v1 = _mm512_castsi512_ps(_mm512_slli_epi32(c, 16));
    } else if (wt == PG_Q8_0) {
        const uint8_t *p = row + (size_t)b * 34;
        __m512 d = _mm512_set1_ps(ld_f16(p));
        __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)));
        *v0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0));
        *v1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q1));
    } else { /* Q4_0, Q4_1 */
        const int q41 = wt == PG_Q4_1;
        const uint8_t *p = row + (size_t)b * (q41 ? 20 : 18);
        __m512 d = _mm512_set1_ps(ld_f16(p));
        __m128i qs = _mm_loadu_si128((const __m128i *)(p + (q41 ? 4 : 2)));
        __m128i m4 = _mm_set1_epi8(15);
        __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(qs, m4));
        __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), m4));
        if (q41) {
            __m512 m = _mm512_set1_ps(ld_f16(p + 2));
            *v0 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)), m);
            *v1 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)), m);
        } else {
            __m512i eight = _mm512_set1_epi32(8);
            *v0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)));
            *v1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)));
        }
    }
}

ALWAYS_INLINE void tile_512(const int wt, const int NT, const uint8_t *wrow, const float *x,
                            int64_t cols, float *out) {
    /* chains 0,1 take even blocks, 2,3 odd blocks */
    __m512 acc[TILE][4];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < 4; i++) acc[t][i] = _mm512_setzero_ps();
    int64_t nb = cols / 32, b = 0;
    for (; b + 1 < nb; b += 2) {
        __m512 v0, v1, v2, v3;
        blk_512(wt, wrow, b, &v0, &v1);
        blk_512(wt, wrow, b + 1, &v2, &v3);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const float *xt = x + (size_t)t * cols + b * 32;
            acc[t][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xt), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xt + 16), acc[t][1]);
            acc[t][2] = _mm512_fmadd_ps(v2, _mm512_loadu_ps(xt + 32), acc[t][2]);
            acc[t][3] = _mm512_fmadd_ps(v3, _mm512_loadu_ps(xt + 48), acc[t][3]);
        }
    }
    if (b < nb) {
        __m512 v0, v1;
        blk_512(wt, wrow, b, &v0, &v1);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const float *xt = x + (size_t)t * cols + b * 32;
            acc[t][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xt), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xt + 16), acc[t][1]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        __m512 s = _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]),
                                 _mm512_add_ps(acc[t][2], acc[t][3]));
        out[t] = _mm512_reduce_add_ps(s) + tail_dot(wt, wrow, x + (size_t)t * cols, nb * 32, cols);
    }
}

ALWAYS_INLINE void rows_512(const int wt, float *y, const float *x, int n,
                            const void *w, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    size_t rb = pg_dtype_row_bytes(wt, cols);
    float o[TILE];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wrow = (const uint8_t *)w + (size_t)r * rb;
        for (int t0 = 0; t0 < n; t0 += TILE) {
            int nt = n - t0 < TILE ? n - t0 : TILE;
            const float *xt = x + (size_t)t0 * cols;
            switch (nt) {
            case 1: tile_512(wt, 1, wrow, xt, cols, o); break;
            case 2: tile_512(wt, 2, wrow, xt, cols, o); break;
            case 3: tile_512(wt, 3, wrow, xt, cols, o); break;
            default: tile_512(wt, 4, wrow, xt, cols, o); break;
            }
            for (int t = 0; t < nt; t++) y[(size_t)(t0 + t) * rows + r] = o[t];
        }
    }
}

/* Quantized blocks, factored: the block's scale comes out of the sum,
 *   sum_j x_j (d q_j + m) = d * sum_j x_j q_j + m * S_b,   S_b = sum_j x_j,
 * which saves the per-element dequantization multiply/add (decode is bound by
 * these vector instructions on a 2-core machine as much as by memory). The
 * products are the reference's up to f32 rounding of the reordered sums.
 * spair[t][b] = {0, S_b} of token t, so one 128-bit FMA with {d, m, 0, 0}
 * accumulates m * S_b in lane 1. */
#define QF_MAX_FLOATS 8192   /* stack budget for spair: n * (cols/32) * 2 floats */

/* Decode quantized block b: codes as floats (f0: elements 0..15, f1: 16..31),
 * the scale d broadcast, and {d, m, 0, 0} for Q4_1's m * S_b term. */
ALWAYS_INLINE void qblk_512(const int wt, const uint8_t *wrow, int64_t b, __m512 *d, __m512 *f0,
                            __m512 *f1, __m128 *dm) {
    const size_t bb = wt == PG_Q8_0 ? 34 : wt == PG_Q4_1 ? 20 : 18;   /* constant per instance */
    const uint8_t *p = wrow + (size_t)b * bb;
    if (wt == PG_Q8_0) {
        *d = _mm512_set1_ps(ld_f16(p));
        *f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2))));
        *f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18))));
        return;
    }
    const int q41 = wt == PG_Q4_1;
    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + (q41 ? 4 : 2))));
    __m512i lo = _mm512_and_si512(q, _mm512_set1_epi32(15)), hi = _mm512_srli_epi32(q, 4);
    if (q41) {
        int32_t dmbits;
        memcpy(&dmbits, p, 4);
        *dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dmbits));   /* {d, m, 0, 0} */
        *d = _mm512_broadcastss_ps(*dm);
    } else {
        __m512i eight = _mm512_set1_epi32(8);
        lo = _mm512_sub_epi32(lo, eight);
        hi = _mm512_sub_epi32(hi, eight);
        *d = _mm512_set1_ps(ld_f16(p));
    }
    *f0 = _mm512_cvtepi32_ps(lo);
    *f1 = _mm512_cvtepi32_ps(hi);
}

ALWAYS_INLINE __m512 qdot_512(__m512 acc, __m512 d, __m512 f0, __m512 f1, const float *xb) {
    __m512 sx = _mm512_mul_ps(f0, _mm512_loadu_ps(xb));
    sx = _mm512_fmadd_ps(f1, _mm512_loadu_ps(xb + 16), sx);
    return _mm512_fmadd_ps(d, sx, acc);
}

ALWAYS_INLINE void qtile_512(const int wt, const int NT, const uint8_t *wrow, const float *x,
                             int64_t cols, const float *spair, float *out) {
    /* chain 0 takes even blocks, chain 1 odd blocks (two FMA chains in flight) */
    __m512 acc0[TILE], acc1[TILE];
    __m128 accm[TILE];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        acc0[t] = acc1[t] = _mm512_setzero_ps();
        accm[t] = _mm_setzero_ps();
    }
    const int64_t nb = cols / 32;
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        __m512 d0, a0, c0, d1, a1, c1;
        __m128 dm0 = _mm_setzero_ps(), dm1 = _mm_setzero_ps();
        qblk_512(wt, wrow, b, &d0, &a0, &c0, &dm0);
        qblk_512(wt, wrow, b + 1, &d1, &a1, &c1, &dm1);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const float *xb = x + (size_t)t * cols + b * 32;
            acc0[t] = qdot_512(acc0[t], d0, a0, c0, xb);
            acc1[t] = qdot_512(acc1[t], d1, a1, c1, xb + 32);
            if (wt == PG_Q4_1) {
                const float *sp = spair + ((size_t)t * nb + b) * 2;
                accm[t] = _mm_fmadd_ps(dm0, _mm_castpd_ps(_mm_load_sd((const double *)sp)), accm[t]);
                accm[t] = _mm_fmadd_ps(dm1, _mm_castpd_ps(_mm_load_sd((const double *)(sp + 2))), accm[t]);
            }
        }
    }
    if (b < nb) {
        __m512 d0, a0, c0;
        __m128 dm0 = _mm_setzero_ps();
        qblk_512(wt, wrow, b, &d0, &a0, &c0, &dm0);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            acc0[t] = qdot_512(acc0[t], d0, a0, c0, x + (size_t)t * cols + b * 32);
            if (wt == PG_Q4_1) {
                const float *sp = spair + ((size_t)t * nb + b) * 2;
                accm[t] = _mm_fmadd_ps(dm0, _mm_castpd_ps(_mm_load_sd((const double *)sp)), accm[t]);
            }
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
        if (wt == PG_Q4_1) r += _mm_cvtss_f32(_mm_movehdup_ps(accm[t]));
        out[t] = r;
    }
}

ALWAYS_INLINE void qrows_512(const int wt, float *y, const float *x, int n,
                             const void *w, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    size_t rb = pg_dtype_row_bytes(wt, cols);
    const int64_t nb = cols / 32;
    float spair[QF_MAX_FLOATS] __attribute__((aligned(64)));
    float o[TILE];
    /* token groups whose block sums fit the stack buffer (a multiple of TILE) */
    int group = (int)(QF_MAX_FLOATS / (2 * nb)) / TILE * TILE;
    PG_ASSERT(group >= TILE);
    for (int g0 = 0; g0 < n; g0 += group) {
        int gn = n - g0 < group ? n - g0 : group;
        const float *xg = x + (size_t)g0 * cols;
        if (wt == PG_Q4_1)
            for (int t = 0; t < gn; t++)
                for (int64_t b = 0; b < nb; b++) {
                    const float *xb = xg + (size_t)t * cols + b * 32;
                    __m512 s = _mm512_add_ps(_mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16));
                    spair[(t * nb + b) * 2] = 0.0f;
                    spair[(t * nb + b) * 2 + 1] = _mm512_reduce_add_ps(s);
                }
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wrow = (const uint8_t *)w + (size_t)r * rb;
            for (int t0 = 0; t0 < gn; t0 += TILE) {
                int nt = gn - t0 < TILE ? gn - t0 : TILE;
                const float *xt = xg + (size_t)t0 * cols;
                const float *sp = spair + (size_t)t0 * nb * 2;
                switch (nt) {
                case 1: qtile_512(wt, 1, wrow, xt, cols, sp, o); break;
                case 2: qtile_512(wt, 2, wrow, xt, cols, sp, o); break;
                case 3: qtile_512(wt, 3, wrow, xt, cols, sp, o); break;
                default: qtile_512(wt, 4, wrow, xt, cols, sp, o); break;
                }
                for (int t = 0; t < nt; t++) y[(size_t)(g0 + t0 + t) * rows + r] = o[t];
            }
        }
    }
}

static void mm_512(float *y, const float *x, int n, const void *w, pg_dtype wt,
                   int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    /* the factored path needs the block sums on the stack: up to 1024 blocks */
    int fact = cols / 32 <= QF_MAX_FLOATS / (2 * TILE);
    switch (wt) {
    case PG_F32:  rows_512(PG_F32, y, x, n, w, rows, cols, r0, r1); break;
    case PG_F16:  rows_512(PG_F16, y, x, n, w, rows, cols, r0, r1); break;
    case PG_BF16: rows_512(PG_BF16, y, x, n, w, rows, cols, r0, r1); break;
    case PG_Q8_0:
        if (fact) qrows_512(PG_Q8_0, y, x, n, w, rows, cols, r0, r1);
        else rows_512(PG_Q8_0, y, x, n, w, rows, cols, r0, r1);
        break;
    case PG_Q4_0:
        if (fact) qrows_512(PG_Q4_0, y, x, n, w, rows, cols, r0, r1);
        else rows_512(PG_Q4_0, y, x, n, w, rows, cols, r0, r1);
        break;
    case PG_Q4_1:
        if (fact) qrows_512(PG_Q4_1, y, x, n, w, rows, cols, r0, r1);
        else rows_512(PG_Q4_1, y, x, n, w, rows, cols, r0, r1);
        break;
    default: PG_DIE("cpu_matmul: unsupported dtype %s", pg_dtype_name(wt));
    }
}
#endif

/* ================================================================ dispatch */
int cpu_isa_available(cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_SCALAR: return 1;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    case CPU_ISA_AVX2: return 1;
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
    case CPU_ISA_AVX512: return 1;
#endif
    default: return 0;
    }
}

cpu_isa cpu_isa_best(void) {
    if (cpu_isa_available(CPU_ISA_AVX512)) return CPU_ISA_AVX512;
    if (cpu_isa_available(CPU_ISA_AVX2)) return CPU_ISA_AVX2;
    return CPU_ISA_SCALAR;
}

const char *cpu_isa_name(cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_AVX2: return "avx2";
    case CPU_ISA_AVX512: return "avx512";
    default: return "scalar";
    }
}

void cpu_matmul_isa(cpu_isa isa, float *y, const float *x, int n, const void *w,
                    pg_dtype wt, int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    PG_ASSERT(pg_dtype_row_bytes(wt, cols) > 0 && r0 >= 0 && r1 <= rows && n >= 0);
    PG_ASSERT(cpu_isa_available(isa));
    switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    case CPU_ISA_AVX512: mm_512(y, x, n, w, wt, rows, cols, r0, r1); return;
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    case CPU_ISA_AVX2: mm_avx2(y, x, n, w, wt, rows, cols, r0, r1); return;
#endif
    default: mm_scalar(y, x, n, w, wt, rows, cols, r0, r1); return;
    }
}

void cpu_matmul(float *y, const float *x, int n, const void *w, pg_dtype wt,
                int64_t rows, int64_t cols, int64_t r0, int64_t r1) {
    cpu_matmul_isa(cpu_isa_best(), y, x, n, w, wt, rows, cols, r0, r1);
}

/* ================================================================ small kernels */
/* Dot product of two f32 vectors with 8-lane partial sums (fixed order). */
static inline float dot_f32(const float *a, const float *b, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
#else
    float s = 0.0f;
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* o[0..n) += a * v[0..n) */
static inline void axpy_f32(float *o, float a, const float *v, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(v + i), _mm256_loadu_ps(o + i)));
#endif
    for (; i < n; i++) o[i] += a * v[i];
}

void cpu_attention(float *out, const float *q, const float *k, const float *v,
                   int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                   int max_seq, float *scratch, int h0, int h1) {
    int group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int h = h0; h < h1; h++) {
        const float *kh = k + (size_t)(h / group) * max_seq * head_dim;
        const float *vh = v + (size_t)(h / group) * max_seq * head_dim;
        for (int t = 0; t < n_q; t++) {
            int n_ctx = pos0 + t + 1;
            const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
            float mx = -INFINITY;
            for (int p = 0; p < n_ctx; p++) {
                float s = dot_f32(qh, kh + (size_t)p * head_dim, head_dim) * scale;
                scratch[p] = s;
                mx = s > mx ? s : mx;
            }
            float sum = 0.0f;
            for (int p = 0; p < n_ctx; p++) {
                scratch[p] = expf(scratch[p] - mx);
                sum += scratch[p];
            }
            float inv = 1.0f / sum;
            float *oh = out + ((size_t)t * n_heads + h) * head_dim;
            memset(oh, 0, (size_t)head_dim * sizeof(float));
            for (int p = 0; p < n_ctx; p++) axpy_f32(oh, scratch[p] * inv, vh + (size_t)p * head_dim, head_dim);
        }
    }
}

void cpu_rope_cs(float *cs, int head_dim, int pos, const float *inv_freq) {
    for (int i = 0; i < head_dim / 2; i++) {
        float ang = (float)pos * inv_freq[i];
        cs[2 * i] = cosf(ang);
        cs[2 * i + 1] = sinf(ang);
    }
}

void cpu_rope(float *x, int n_heads, int head_dim, const float *cs, int interleaved) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            int ia = interleaved ? 2 * i : i;
            int ib = interleaved ? 2 * i + 1 : i + half;
            float a = xh[ia], b = xh[ib], c = cs[2 * i], s = cs[2 * i + 1];
            xh[ia] = a * c - b * s;
            xh[ib] = b * c + a * s;
        }
    }
}

void cpu_rmsnorm(float *out, const float *x, const void *w, pg_dtype wt,
                 int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const float *xi = x + (size_t)t * dim;
        float *oi = out + (size_t)t * dim;
        float r = 1.0f / sqrtf(dot_f32(xi, xi, dim) / (float)dim + eps);
        if (wt == PG_F32) {
            const float *wf = w;
            for (int i = 0; i < dim; i++) oi[i] = wf[i] * (xi[i] * r);
        } else {
            const uint16_t *wh = w;
            for (int i = 0; i < dim; i++) {
                float wi = wt == PG_F16 ? pg_f16_to_f32(wh[i]) : pg_bf16_to_f32(wh[i]);
                oi[i] = wi * (xi[i] * r);
            }
        }
    }
}

void cpu_silu_mul(float *out, const float *gate, const float *up, int64_t n) {
    /* expf dominates and has no cheaper exact vector form; the thread pool
     * splits this loop, so it stays the reference formula. */
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
