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

/* ================================================================ quantized matmul (QI8 / QI4) */
/* cpu_matmul_q: the group scale is factored out of the group's dot product,
 *   sum_c x_c (s q_c + m) = s * sum_c q_c x_c + m * S_g,  S_g = sum_c x_c,
 * so the inner loop only converts codes to floats and FMAs them against x.
 * QI4 codes come in byte order (element 2i low nibble, 2i+1 high nibble of
 * byte i); rather than shuffling nibbles per weight, x is deinterleaved once
 * per tile of tokens into xp, per 32-element block:
 *   xp[32b + i] = x[32b + 2i], xp[32b + 16 + i] = x[32b + 2i + 1]  (i < 16),
 * so a block's 16 bytes zero-extended to 16 lanes give the low nibbles for
 * xp[0..16) and the high nibbles for xp[16..32). The AVX2 path reads the same
 * xp in halves. S_g per token and group is computed alongside (gs).
 * Each token has its own accumulators and its own xp/gs, so its result does
 * not depend on the other tokens of the tile. */

/* Tokens per QI4 tile that fit the stack buffer (0: too wide, scalar path).
 * A tile of one token needs cols + ng <= QMM_STACK_FLOATS, so a row has at
 * most QMM_STACK_FLOATS / 32 groups: the vector paths' per-row f32 copies of
 * the scales and minimums hold QMM_MAX_GROUPS. */
#define QMM_MAX_GROUPS (QMM_STACK_FLOATS / 32)
static int q4_tile(int64_t cols, int64_t ng) {
    int64_t t = QMM_STACK_FLOATS / (cols + ng);
    return t > TILE ? TILE : (int)t;
}

/* Deinterleave nt tokens of x (stride cols) into xp (stride cols) and their
 * group sums into gs (stride ng). Runs once per call and token: with the
 * vector unit the pairs split with two permutes per 32 floats and each
 * group's sum is one vector reduction, so the prep costs a few percent of a
 * call even for the 16-row chunks of the thread pool. Each token's sums are
 * in a fixed order (the same whatever nt is). */
static void q4_prep(const float *x, int nt, int64_t cols, int64_t g, float *xp, float *gs) {
    int64_t ng = cols / g;
    for (int t = 0; t < nt; t++) {
        const float *xt = x + (size_t)t * cols;
        float *pt = xp + (size_t)t * cols;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (int64_t j = 0; j < ng; j++) {
            __m512 sum = _mm512_setzero_ps();
            for (int64_t b = j * g; b < (j + 1) * g; b += 32) {
                __m512 a = _mm512_loadu_ps(xt + b), c = _mm512_loadu_ps(xt + b + 16);
                __m512 e = _mm512_permutex2var_ps(a, ev, c), o = _mm512_permutex2var_ps(a, od, c);
                _mm512_storeu_ps(pt + b, e);
                _mm512_storeu_ps(pt + b + 16, o);
                sum = _mm512_add_ps(sum, _mm512_add_ps(e, o));
            }
            gs[(size_t)t * ng + j] = _mm512_reduce_add_ps(sum);
        }
#else
        for (int64_t b = 0; b < cols; b += 32)
            for (int i = 0; i < 16; i++) {
                pt[b + i] = xt[b + 2 * i];
                pt[b + 16 + i] = xt[b + 2 * i + 1];
            }
        for (int64_t j = 0; j < ng; j++) {   /* four partial sums: not one long dependent chain */
            float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t c = j * g; c < (j + 1) * g; c += 4)
                for (int k = 0; k < 4; k++) s4[k] += xt[c + k];
            gs[(size_t)t * ng + j] = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        }
#endif
    }
}

/* ---------------------------------------------------------------- scalar */
static void mmq_scalar(float *y, const float *x, int n, const qmatrix *w, int64_t r0, int64_t r1) {
    const int64_t cols = w->cols, g = w->group, ng = cols / g, rows = w->rows;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *sr = w->scale + r * ng;
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * cols;
            float acc = 0.0f;
            if (w->dtype == PG_QI8) {
                const int8_t *q = (const int8_t *)w->q + (size_t)r * cols;
                for (int64_t j = 0; j < ng; j++) {
                    float d = 0.0f;
                    for (int64_t c = j * g; c < (j + 1) * g; c++) d += (float)q[c] * xt[c];
                    acc += pg_f16_to_f32(sr[j]) * d;
                }
            } else {
                const uint8_t *q = (const uint8_t *)w->q + (size_t)r * (cols / 2);
                const uint16_t *mr = w->min + r * ng;
                for (int64_t j = 0; j < ng; j++) {
                    float d = 0.0f, sx = 0.0f;
                    for (int64_t c = j * g; c < (j + 1) * g; c++) {
                        d += (float)((q[c / 2] >> (4 * (c & 1))) & 15) * xt[c];
                        sx += xt[c];
                    }
                    acc += pg_f16_to_f32(sr[j]) * d + pg_f16_to_f32(mr[j]) * sx;
                }
            }
            y[(size_t)t * rows + r] = acc;
        }
    }
}

/* ---------------------------------------------------------------- AVX2 */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* 8 int8 codes at p as floats. */
ALWAYS_INLINE __m256 i8x8_avx2(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

ALWAYS_INLINE void q8tile_avx2(const int NT, const int8_t *q, const uint16_t *sr, const float *x,
                               int64_t cols, int64_t g, float *out) {
    __m256 acc[TILE];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    const int64_t ng = cols / g;
    for (int64_t j = 0; j < ng; j++) {
        __m256 a[TILE], b[TILE];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) a[t] = b[t] = _mm256_setzero_ps();
        int64_t c = j * g, end = c + g;
        for (; c + 16 <= end; c += 16) {
            __m256 f0 = i8x8_avx2(q + c), f1 = i8x8_avx2(q + c + 8);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const float *xt = x + (size_t)t * cols + c;
                a[t] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(xt), a[t]);
                b[t] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xt + 8), b[t]);
            }
        }
        if (c < end) {   /* < 16 left (groups that are not a multiple of 16) */
            int rem = (int)(end - c);
            int8_t qt[16] = {0};
            memcpy(qt, q + c, (size_t)rem);
            __m256 f0 = i8x8_avx2(qt), f1 = i8x8_avx2(qt + 8);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                float xb[16] = {0};
                memcpy(xb, x + (size_t)t * cols + c, (size_t)rem * sizeof(float));
                a[t] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(xb), a[t]);
                b[t] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xb + 8), b[t]);
            }
        }
        __m256 s = _mm256_set1_ps(_cvtsh_ss(sr[j]));
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) acc[t] = _mm256_fmadd_ps(s, _mm256_add_ps(a[t], b[t]), acc[t]);
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) out[t] = hsum256(acc[t]);
}

/* 8 bytes of nibbles at p: low nibbles (*lo) and high nibbles (*hi) as floats. */
ALWAYS_INLINE void u4x8_avx2(const uint8_t *p, __m256 *lo, __m256 *hi) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    *lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    *hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}

ALWAYS_INLINE void q4tile_avx2(const int NT, const uint8_t *q, const uint16_t *sr, const uint16_t *mr,
                               const float *xp, const float *gs, int64_t cols, int64_t g, float *out) {
    /* as q4tile_512: scales/minimums converted per row, two alternating
     * group accumulators, the minimums as dot(m, S) at the end */
    const int64_t ng = cols / g;
    float sf[QMM_MAX_GROUPS + 8] __attribute__((aligned(32)));
    float mf[QMM_MAX_GROUPS + 8] __attribute__((aligned(32)));
    int64_t j = 0;
    for (; j + 8 <= ng; j += 8) {
        _mm256_store_ps(sf + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + j))));
        _mm256_store_ps(mf + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mr + j))));
    }
    for (; j < ng; j++) { sf[j] = _cvtsh_ss(sr[j]); mf[j] = _cvtsh_ss(mr[j]); }
    __m256 acc0[TILE], acc1[TILE];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    for (j = 0; j < ng; j++) {
        __m256 a[TILE], b[TILE];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) a[t] = b[t] = _mm256_setzero_ps();
        for (int64_t c = j * g; c < (j + 1) * g; c += 32) {
            __m256 l0, h0, l1, h1;
            u4x8_avx2(q + c / 2, &l0, &h0);
            u4x8_avx2(q + c / 2 + 8, &l1, &h1);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const float *pt = xp + (size_t)t * cols + c;
                a[t] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(pt), a[t]);
                b[t] = _mm256_fmadd_ps(l1, _mm256_loadu_ps(pt + 8), b[t]);
                a[t] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(pt + 16), a[t]);
                b[t] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(pt + 24), b[t]);
            }
        }
        __m256 s = _mm256_broadcast_ss(sf + j);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            if (j & 1) acc1[t] = _mm256_fmadd_ps(s, _mm256_add_ps(a[t], b[t]), acc1[t]);
            else acc0[t] = _mm256_fmadd_ps(s, _mm256_add_ps(a[t], b[t]), acc0[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        const float *gt = gs + (size_t)t * ng;
        __m256 r = _mm256_add_ps(acc0[t], acc1[t]);
        for (j = 0; j + 8 <= ng; j += 8) r = _mm256_fmadd_ps(_mm256_load_ps(mf + j), _mm256_loadu_ps(gt + j), r);
        float tail = 0.0f;
        for (; j < ng; j++) tail += mf[j] * gt[j];
        out[t] = hsum256(r) + tail;
    }
}

#endif

/* ---------------------------------------------------------------- AVX-512 */
#if defined(__AVX512F__) && defined(__AVX512BW__)
/* 16 int8 codes at p as floats. */
ALWAYS_INLINE __m512 i8x16_512(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

ALWAYS_INLINE void q8tile_512(const int NT, const int8_t *q, const uint16_t *sr, const float *x,
                              int64_t cols, int64_t g, float *out) {
    const int64_t ng = cols / g;
    if (ng == 1) {
        /* one scale per row: four chains over 64-element steps, then tails,
         * and the scale applied once to the row's sum */
        __m512 a0[TILE], a1[TILE], a2[TILE], a3[TILE];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) a0[t] = a1[t] = a2[t] = a3[t] = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 64 <= cols; c += 64) {
            __m512 f0 = i8x16_512(q + c), f1 = i8x16_512(q + c + 16);
            __m512 f2 = i8x16_512(q + c + 32), f3 = i8x16_512(q + c + 48);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const float *xt = x + (size_t)t * cols + c;
                a0[t] = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xt), a0[t]);
                a1[t] = _mm512_fmadd_ps(f1, _mm512_loadu_ps(xt + 16), a1[t]);
                a2[t] = _mm512_fmadd_ps(f2, _mm512_loadu_ps(xt + 32), a2[t]);
                a3[t] = _mm512_fmadd_ps(f3, _mm512_loadu_ps(xt + 48), a3[t]);
            }
        }
        for (; c + 16 <= cols; c += 16) {
            __m512 f0 = i8x16_512(q + c);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++)
                a0[t] = _mm512_fmadd_ps(f0, _mm512_loadu_ps(x + (size_t)t * cols + c), a0[t]);
        }
        if (c < cols) {   /* < 16 left: masked loads read nothing past the row */
            __mmask16 k = (__mmask16)((1u << (cols - c)) - 1);
            __m512i qv = _mm512_maskz_loadu_epi8((__mmask64)k, q + c);
            __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(qv)));
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++)
                a1[t] = _mm512_fmadd_ps(f0, _mm512_maskz_loadu_ps(k, x + (size_t)t * cols + c), a1[t]);
        }
        const float s = _cvtsh_ss(sr[0]);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++)
            out[t] = s * _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0[t], a1[t]), _mm512_add_ps(a2[t], a3[t])));
        return;
    }
    /* several groups: each group's sum times its scale, alternating between
     * two accumulators so consecutive groups do not wait on each other */
    __m512 acc0[TILE], acc1[TILE];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < ng; j++) {
        __m512 a[TILE], b[TILE];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) a[t] = b[t] = _mm512_setzero_ps();
        int64_t c = j * g, end = c + g;
        for (; c + 32 <= end; c += 32) {
            __m512 f0 = i8x16_512(q + c), f1 = i8x16_512(q + c + 16);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const float *xt = x + (size_t)t * cols + c;
                a[t] = _mm512_fmadd_ps(f0, _mm512_loadu_ps(xt), a[t]);
                b[t] = _mm512_fmadd_ps(f1, _mm512_loadu_ps(xt + 16), b[t]);
            }
        }
        if (c + 16 <= end) {
            __m512 f0 = i8x16_512(q + c);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++)
                a[t] = _mm512_fmadd_ps(f0, _mm512_loadu_ps(x + (size_t)t * cols + c), a[t]);
            c += 16;
        }
        if (c < end) {
            __mmask16 k = (__mmask16)((1u << (end - c)) - 1);
            __m512i qv = _mm512_maskz_loadu_epi8((__mmask64)k, q + c);
            __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(qv)));
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++)
                b[t] = _mm512_fmadd_ps(f0, _mm512_maskz_loadu_ps(k, x + (size_t)t * cols + c), b[t]);
        }
        __m512 s = _mm512_set1_ps(_cvtsh_ss(sr[j]));
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            if (j & 1) acc1[t] = _mm512_fmadd_ps(s, _mm512_add_ps(a[t], b[t]), acc1[t]);
            else acc0[t] = _mm512_fmadd_ps(s, _mm512_add_ps(a[t], b[t]), acc0[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
}

/* Two rows of a per-channel QI8 matrix against one token: the same chains
 * and order as q8tile_512(1, ...) for each row (so a row's result does not
 * depend on whether it was paired), with each x vector loaded once for both. */
ALWAYS_INLINE void q8pair_512(const int8_t *q0, const int8_t *q1, const uint16_t *s0, const uint16_t *s1,
                              const float *x, int64_t cols, float *o0, float *o1) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        /* the two rows are two short streams: ask for the next pair's lines
         * (a prefetch past the matrix is harmless) */
        _mm_prefetch((const char *)(q0 + 2 * cols + c), _MM_HINT_T0);
        _mm_prefetch((const char *)(q1 + 2 * cols + c), _MM_HINT_T0);
        __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
        __m512 x2 = _mm512_loadu_ps(x + c + 32), x3 = _mm512_loadu_ps(x + c + 48);
        a0 = _mm512_fmadd_ps(i8x16_512(q0 + c), x0, a0);
        b0 = _mm512_fmadd_ps(i8x16_512(q1 + c), x0, b0);
        a1 = _mm512_fmadd_ps(i8x16_512(q0 + c + 16), x1, a1);
        b1 = _mm512_fmadd_ps(i8x16_512(q1 + c + 16), x1, b1);
        a2 = _mm512_fmadd_ps(i8x16_512(q0 + c + 32), x2, a2);
        b2 = _mm512_fmadd_ps(i8x16_512(q1 + c + 32), x2, b2);
        a3 = _mm512_fmadd_ps(i8x16_512(q0 + c + 48), x3, a3);
        b3 = _mm512_fmadd_ps(i8x16_512(q1 + c + 48), x3, b3);
    }
    for (; c + 16 <= cols; c += 16) {
        __m512 x0 = _mm512_loadu_ps(x + c);
        a0 = _mm512_fmadd_ps(i8x16_512(q0 + c), x0, a0);
        b0 = _mm512_fmadd_ps(i8x16_512(q1 + c), x0, b0);
    }
    if (c < cols) {
        __mmask16 k = (__mmask16)((1u << (cols - c)) - 1);
        __m512 x0 = _mm512_maskz_loadu_ps(k, x + c);
        __m512i v0 = _mm512_maskz_loadu_epi8((__mmask64)k, q0 + c), v1 = _mm512_maskz_loadu_epi8((__mmask64)k, q1 + c);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(v0))), x0, a1);
        b1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(v1))), x0, b1);
    }
    *o0 = _cvtsh_ss(s0[0]) * _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    *o1 = _cvtsh_ss(s1[0]) * _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
}

/* QI4 row: the row's scales and minimums are converted to f32 up front (16
 * per instruction); per 32-element block the 16 code bytes widen to 16 lanes,
 * low nibbles against xp[0..16), high against xp[16..32); each group's sum
 * takes its scale into one of two accumulators (alternating); the minimums
 * enter once per row as dot(m, S) over the groups. ng <= QMM_MAX_GROUPS. */
ALWAYS_INLINE void q4tile_512(const int NT, const uint8_t *q, const uint16_t *sr, const uint16_t *mr,
                              const float *xp, const float *gs, int64_t cols, int64_t g, float *out) {
    const int64_t ng = cols / g;
    float sf[QMM_MAX_GROUPS + 16] __attribute__((aligned(64)));
    float mf[QMM_MAX_GROUPS + 16] __attribute__((aligned(64)));
    int64_t j = 0;
    for (; j + 16 <= ng; j += 16) {
        _mm512_store_ps(sf + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sr + j))));
        _mm512_store_ps(mf + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mr + j))));
    }
    for (; j < ng; j++) { sf[j] = _cvtsh_ss(sr[j]); mf[j] = _cvtsh_ss(mr[j]); }
    __m512 acc0[TILE], acc1[TILE];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi32(15);
    const int64_t nbg = g / 32;   /* blocks per group */
    for (j = 0; j < ng; j++) {
        const int64_t c0 = j * g;
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + c0 / 2)));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, m4));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        __m512 sum[TILE];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const float *pt = xp + (size_t)t * cols + c0;
            sum[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(pt + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(pt)));
        }
        for (int64_t b = 1; b < nbg; b++) {
            const int64_t c = c0 + 32 * b;
            v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + c / 2)));
            lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, m4));
            hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const float *pt = xp + (size_t)t * cols + c;
                sum[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(pt), sum[t]);
                sum[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(pt + 16), sum[t]);
            }
        }
        __m512 s = _mm512_set1_ps(sf[j]);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            if (j & 1) acc1[t] = _mm512_fmadd_ps(s, sum[t], acc1[t]);
            else acc0[t] = _mm512_fmadd_ps(s, sum[t], acc0[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NT; t++) {
        const float *gt = gs + (size_t)t * ng;
        __m512 r = _mm512_add_ps(acc0[t], acc1[t]);
        for (j = 0; j + 16 <= ng; j += 16) r = _mm512_fmadd_ps(_mm512_load_ps(mf + j), _mm512_loadu_ps(gt + j), r);
        if (j < ng) {
            __mmask16 k = (__mmask16)((1u << (ng - j)) - 1);
            r = _mm512_fmadd_ps(_mm512_maskz_load_ps(k, mf + j), _mm512_maskz_loadu_ps(k, gt + j), r);
        }
        out[t] = _mm512_reduce_add_ps(r);
    }
}

#endif

/* One ISA's row loops; isa is a compile-time constant after inlining. */
#define QMM_SWITCH_NT(CALL)                                   \
    switch (nt) {                                             \
    case 1: CALL(1); break;                                   \
    case 2: CALL(2); break;                                   \
    case 3: CALL(3); break;                                   \
    default: CALL(4); break;                                  \
    }

static void mmq_q8(cpu_isa isa, float *y, const float *x, int n, const qmatrix *w, int64_t r0, int64_t r1) {
    const int64_t cols = w->cols, g = w->group, ng = cols / g, rows = w->rows;
    float o[TILE];
    int64_t r = r0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    /* decode, per channel, long rows: rows in pairs (x read once for two
     * rows). Rows shorter than ~1K bytes stream better one at a time (on the
     * development machine, 1536 x 576 int8 from DRAM: 10 GB/s paired, 13-19
     * single; 576 x 1536: 13 paired, 9 single). A row's result is the same
     * either way. */
    if (isa == CPU_ISA_AVX512 && n == 1 && ng == 1 && cols >= 1024)
        for (; r + 1 < r1; r += 2) {
            const int8_t *q = (const int8_t *)w->q + (size_t)r * cols;
            q8pair_512(q, q + cols, w->scale + r, w->scale + r + 1, x, cols, &y[r], &y[r + 1]);
        }
#endif
    for (; r < r1; r++) {
        const int8_t *q = (const int8_t *)w->q + (size_t)r * cols;
        const uint16_t *sr = w->scale + r * ng;
        for (int t0 = 0; t0 < n; t0 += TILE) {
            int nt = n - t0 < TILE ? n - t0 : TILE;
            const float *xt = x + (size_t)t0 * cols;
            (void)xt; (void)sr; (void)q;
            switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
            case CPU_ISA_AVX512:
#define Q8_512(NT) q8tile_512(NT, q, sr, xt, cols, g, o)
                QMM_SWITCH_NT(Q8_512)
#undef Q8_512
                break;
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
            case CPU_ISA_AVX2:
#define Q8_AVX2(NT) q8tile_avx2(NT, q, sr, xt, cols, g, o)
                QMM_SWITCH_NT(Q8_AVX2)
#undef Q8_AVX2
                break;
#endif
            default: PG_DIE("cpu_matmul_q: no %s path", cpu_isa_name(isa));
            }
            for (int t = 0; t < nt; t++) y[(size_t)(t0 + t) * rows + r] = o[t];
        }
    }
}

static void mmq_q4(cpu_isa isa, float *y, const float *x, int n, const qmatrix *w, int64_t r0, int64_t r1) {
    const int64_t cols = w->cols, g = w->group, ng = cols / g, rows = w->rows;
    const int tile = q4_tile(cols, ng);
    float buf[QMM_STACK_FLOATS] __attribute__((aligned(64)));
    float o[TILE];
    for (int t0 = 0; t0 < n; t0 += tile) {
        int nt = n - t0 < tile ? n - t0 : tile;
        float *xp = buf, *gs = buf + (size_t)nt * cols;
        q4_prep(x + (size_t)t0 * cols, nt, cols, g, xp, gs);
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *q = (const uint8_t *)w->q + (size_t)r * (cols / 2);
            const uint16_t *sr = w->scale + r * ng, *mr = w->min + r * ng;
            (void)q; (void)sr; (void)mr;
            switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
            case CPU_ISA_AVX512:
#define Q4_512(NT) q4tile_512(NT, q, sr, mr, xp, gs, cols, g, o)
                QMM_SWITCH_NT(Q4_512)
#undef Q4_512
                break;
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
            case CPU_ISA_AVX2:
#define Q4_AVX2(NT) q4tile_avx2(NT, q, sr, mr, xp, gs, cols, g, o)
                QMM_SWITCH_NT(Q4_AVX2)
#undef Q4_AVX2
                break;
#endif
            default: PG_DIE("cpu_matmul_q: no %s path", cpu_isa_name(isa));
            }
            for (int t = 0; t < nt; t++) y[(size_t)(t0 + t) * rows + r] = o[t];
        }
    }
}

void cpu_matmul_q_isa(cpu_isa isa, float *y, const float *x, int n, const qmatrix *w,
                      int64_t r0, int64_t r1) {
    PG_ASSERT(w->dtype == PG_QI8 || w->dtype == PG_QI4);
    PG_ASSERT(w->group > 0 && w->cols % w->group == 0 && r0 >= 0 && r1 <= w->rows && n >= 0);
    PG_ASSERT(w->dtype == PG_QI8 || (w->group % 32 == 0 && w->min));
    PG_ASSERT(cpu_isa_available(isa));
    if (isa == CPU_ISA_SCALAR || (w->dtype == PG_QI4 && q4_tile(w->cols, w->cols / w->group) == 0))
        mmq_scalar(y, x, n, w, r0, r1);
    else if (w->dtype == PG_QI8)
        mmq_q8(isa, y, x, n, w, r0, r1);
    else
        mmq_q4(isa, y, x, n, w, r0, r1);
}

void cpu_matmul_q(float *y, const float *x, int n, const qmatrix *w, int64_t r0, int64_t r1) {
    cpu_matmul_q_isa(cpu_isa_best(), y, x, n, w, r0, r1);
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

/* Dot products of q (f32) with one cached head vector stored as bf16 or
 * int8, widened in registers; same 2 x 8-lane partial sums as dot_f32. */
static inline float dot_bf16(const float *a, const uint16_t *b, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256i w0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
        __m256i w1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + i + 8)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)), s1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256i w0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + i)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)), s0);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
#else
    float s = 0.0f;
#endif
    for (; i < n; i++) s += a[i] * pg_bf16_to_f32(b[i]);
    return s;
}

static inline float dot_i8(const float *a, const int8_t *b, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m128i w = _mm_loadu_si128((const __m128i *)(b + i));
        __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w));
        __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(w, 8)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), f0, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), f1, s1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i))));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), f0, s0);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
#else
    float s = 0.0f;
#endif
    for (; i < n; i++) s += a[i] * (float)b[i];
    return s;
}

/* o[0..n) += a * widen(v[0..n)) */
static inline void axpy_bf16(float *o, float a, const uint16_t *v, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(v + i)));
        __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(va, f, _mm256_loadu_ps(o + i)));
    }
#endif
    for (; i < n; i++) o[i] += a * pg_bf16_to_f32(v[i]);
}

static inline void axpy_i8(float *o, float a, const int8_t *v, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(v + i))));
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(va, f, _mm256_loadu_ps(o + i)));
    }
#endif
    for (; i < n; i++) o[i] += a * (float)v[i];
}

/* One attention loop for the three cache types (kt is a constant at each
 * call site, so the switches fold away). For int8, position p's K scale
 * multiplies its dot product and its V scale the softmax weight. */
enum { ATT_F32, ATT_BF16, ATT_INT8 };

ALWAYS_INLINE void attention_core(int kt, float *out, const float *q, const void *k, const float *ks,
                                  const void *v, const float *vs, int n_q, int pos0, int n_heads,
                                  int n_kv_heads, int head_dim, int max_seq, float *scratch,
                                  int h0, int h1) {
    int group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int h = h0; h < h1; h++) {
        size_t hoff = (size_t)(h / group) * max_seq;   /* first position of this kv head */
        for (int t = 0; t < n_q; t++) {
            int n_ctx = pos0 + t + 1;
            const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
            float mx = -INFINITY;
            for (int p = 0; p < n_ctx; p++) {
                size_t e = (hoff + p) * head_dim;
                float s;
                if (kt == ATT_F32) s = dot_f32(qh, (const float *)k + e, head_dim);
                else if (kt == ATT_BF16) s = dot_bf16(qh, (const uint16_t *)k + e, head_dim);
                else s = ks[hoff + p] * dot_i8(qh, (const int8_t *)k + e, head_dim);
                s *= scale;
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
            for (int p = 0; p < n_ctx; p++) {
                size_t e = (hoff + p) * head_dim;
                float a = scratch[p] * inv;
                if (kt == ATT_F32) axpy_f32(oh, a, (const float *)v + e, head_dim);
                else if (kt == ATT_BF16) axpy_bf16(oh, a, (const uint16_t *)v + e, head_dim);
                else axpy_i8(oh, a * vs[hoff + p], (const int8_t *)v + e, head_dim);
            }
        }
    }
}

void cpu_attention(float *out, const float *q, const float *k, const float *v,
                   int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                   int max_seq, float *scratch, int h0, int h1) {
    attention_core(ATT_F32, out, q, k, NULL, v, NULL, n_q, pos0, n_heads, n_kv_heads, head_dim,
                   max_seq, scratch, h0, h1);
}

void cpu_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                        int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                        int max_seq, float *scratch, int h0, int h1) {
    attention_core(ATT_BF16, out, q, k, NULL, v, NULL, n_q, pos0, n_heads, n_kv_heads, head_dim,
                   max_seq, scratch, h0, h1);
}

void cpu_attention_int8(float *out, const float *q, const int8_t *k, const float *ks,
                        const int8_t *v, const float *vs, int n_q, int pos0, int n_heads,
                        int n_kv_heads, int head_dim, int max_seq, float *scratch,
                        int h0, int h1) {
    attention_core(ATT_INT8, out, q, k, ks, v, vs, n_q, pos0, n_heads, n_kv_heads, head_dim,
                   max_seq, scratch, h0, h1);
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
