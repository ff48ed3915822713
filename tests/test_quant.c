/* tests/test_quant.c — weight-only quantization (model/quant.h): the
 * reference quantizer's properties (round-trip bounds per group, code ranges,
 * f16 parameters, ties to even), the exact GGUF block conversion, and every
 * quantized matmul path (cpu_matmul_q on each compiled ISA) against the
 * dequantized reference (ref_matmul_q). Threshold (DESIGN.md): int8/int4
 * kernels vs the dequantized reference <= 1e-2 max relative error; the
 * measured worst cases are 6.7e-6 (int8) and 1.1e-5 (int4), printed with
 * --verbose. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model/quant.h"
#include "tests/test_util.h"

/* ---------------------------------------------------------------- helpers */

static void put_f16(uint8_t *p, float v) { uint16_t h = pg_f32_to_f16(v); memcpy(p, &h, 2); }

static tensor f32_tensor(const float *w, int64_t rows, int64_t cols) {
    return (tensor){.dtype = PG_F32, .rows = rows, .cols = cols, .data = w,
                    .nbytes = (size_t)rows * cols * 4, .name = "w"};
}

static qmatrix as_qmatrix(const tensor *t) {
    return (qmatrix){.dtype = t->dtype, .rows = t->rows, .cols = t->cols, .group = t->group,
                     .q = t->data, .scale = t->qscale, .min = t->qmin};
}

/* Code c of row r of a QI8/QI4 tensor. */
static int code_at(const tensor *t, int64_t r, int64_t c) {
    if (t->dtype == PG_QI8) return ((const int8_t *)t->data)[r * t->cols + c];
    const uint8_t *q = (const uint8_t *)t->data + r * (t->cols / 2);
    return (q[c / 2] >> (4 * (c & 1))) & 15;
}

/* GGUF blocks with random codes and sane random scales (and minimums). */
static uint8_t *random_gguf(pg_rng *r, pg_dtype t, int64_t rows, int64_t cols) {
    size_t rb = pg_dtype_row_bytes(t, cols), bb = pg_dtype_block_bytes(t);
    uint8_t *w = pg_xmalloc(rb * rows);
    for (size_t i = 0; i < rb * rows; i++) w[i] = (uint8_t)pg_rng_u64(r);
    for (int64_t b = 0; b < rows * (cols / 32); b++) {
        uint8_t *blk = w + bb * b;
        put_f16(blk, 0.01f + 0.02f * pg_rng_uniform(r));
        if (t == PG_Q4_1) put_f16(blk + 2, -0.1f * pg_rng_uniform(r));
    }
    return w;
}

/* ---------------------------------------------------------------- quantizer */
/* Per group: the parameters are the f16 of the documented formulas, the codes
 * are in range, the extreme value hits the end of the range, and every
 * element round-trips within half a step (plus the f16 rounding of m). */
static void check_quantizer(pg_dtype to, int64_t rows, int64_t cols, int group, uint64_t seed) {
    pg_rng r;
    pg_rng_seed(&r, seed);
    float *w = pg_xmalloc(sizeof(float) * rows * cols), *deq = pg_xmalloc(sizeof(float) * cols);
    fill_normal(&r, w, (size_t)rows * cols, 0.02f);
    for (int64_t c = 0; c < group; c++) w[c] = 0.0f;   /* an all-zero group: s = 0, q = 0 */
    tensor src = f32_tensor(w, rows, cols), q;
    void *mem;
    pg_err err;
    cr_assert_eq(quant_matrix(&src, to, group, &q, &mem, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(q.group, group);
    cr_assert_eq(q.nbytes, pg_dtype_row_bytes(to, cols) * rows);
    int64_t ng = cols / group;
    double worst = 0;
    for (int64_t i = 0; i < rows; i++) {
        quant_dequant_row(&q, i, deq);
        for (int64_t j = 0; j < ng; j++) {
            const float *g = w + i * cols + j * group;
            float lo = g[0], hi = g[0], amax = 0;
            for (int k = 0; k < group; k++) {
                lo = fminf(lo, g[k]); hi = fmaxf(hi, g[k]); amax = fmaxf(amax, fabsf(g[k]));
            }
            uint16_t s16 = q.qscale[i * ng + j];
            float sf = pg_f16_to_f32(s16), mf = 0, bound;
            if (to == PG_QI8) {
                cr_assert_eq(s16, pg_f32_to_f16(amax / 127.f));
                bound = 0.5f * sf + 1e-7f;
            } else {
                cr_assert_eq(s16, pg_f32_to_f16((hi - lo) / 15.f));
                cr_assert_eq(q.qmin[i * ng + j], pg_f32_to_f16(lo));
                mf = pg_f16_to_f32(q.qmin[i * ng + j]);
                bound = 0.5f * sf + fabsf(hi - lo - 15.f * sf) + fabsf(lo - mf) + 1e-7f;
            }
            int hit_end = 0;
            for (int k = 0; k < group; k++) {
                int v = code_at(&q, i, j * group + k);
                if (to == PG_QI8) {
                    cr_assert(v >= -127 && v <= 127);
                    if (sf > 0 && abs(v) == 127) hit_end = 1;
                } else {
                    cr_assert(v >= 0 && v <= 15);
                    if (v == 15) hit_end = 1;
                }
                if (sf == 0) cr_assert_eq(v, 0);
                float e = fabsf(deq[j * group + k] - g[k]);
                cr_assert(e <= bound, "%s g%d row %ld group %ld elem %d: |err| %g > %g",
                          pg_dtype_name(to), group, (long)i, (long)j, k, e, bound);
                if (sf > 0) worst = fmax(worst, e / sf);
            }
            if (sf > 0) cr_assert(hit_end, "%s g%d row %ld group %ld: no code at the range end",
                                  pg_dtype_name(to), group, (long)i, (long)j);
        }
    }
    cr_log_info("%s g%d %ldx%ld: worst |w - deq| = %.3f steps", pg_dtype_name(to), group, (long)rows,
                (long)cols, worst);
    free(mem); free(w); free(deq);
}

Test(quantizer, int8_per_channel_and_grouped) {
    check_quantizer(PG_QI8, 7, 200, 200, 1);   /* per channel, odd width */
    check_quantizer(PG_QI8, 5, 72, 72, 2);
    check_quantizer(PG_QI8, 9, 96, 32, 3);
    check_quantizer(PG_QI8, 3, 96, 24, 4);     /* any divisor */
}

Test(quantizer, int4_groups) {
    check_quantizer(PG_QI4, 7, 160, 32, 5);
    check_quantizer(PG_QI4, 4, 192, 64, 6);
    check_quantizer(PG_QI4, 3, 384, 128, 7);
}

/* Exact halves round to even (rintf), as the contract says. */
Test(quantizer, ties_to_even) {
    const float s = 0.015625f;   /* 2^-6: exact in f16, 127*s / 127 == s */
    float w8[8] = {127 * s, 2.5f * s, 3.5f * s, -2.5f * s, -3.5f * s, 0.5f * s, -0.5f * s, 1.5f * s};
    int want8[8] = {127, 2, 4, -2, -4, 0, 0, 2};
    tensor src = f32_tensor(w8, 1, 8), q;
    void *mem;
    pg_err err;
    cr_assert_eq(quant_matrix(&src, PG_QI8, 8, &q, &mem, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(pg_f16_to_f32(q.qscale[0]), s);
    for (int i = 0; i < 8; i++) cr_assert_eq(code_at(&q, 0, i), want8[i], "int8 elem %d", i);
    free(mem);
    /* int4: lo = 0, hi = 15 s, so (w - m) / s is exact */
    const float s4 = 0.0625f;
    float w4[32];
    int want4[32];
    for (int i = 0; i < 32; i++) { w4[i] = (float)(i % 16) * s4; want4[i] = i % 16; }
    w4[1] = 2.5f * s4;  want4[1] = 2;
    w4[2] = 3.5f * s4;  want4[2] = 4;
    w4[3] = 0.5f * s4;  want4[3] = 0;
    w4[4] = 14.5f * s4; want4[4] = 14;
    src = f32_tensor(w4, 1, 32);
    cr_assert_eq(quant_matrix(&src, PG_QI4, 32, &q, &mem, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(pg_f16_to_f32(q.qscale[0]), s4);
    cr_assert_eq(pg_f16_to_f32(q.qmin[0]), 0.0f);
    for (int i = 0; i < 32; i++) cr_assert_eq(code_at(&q, 0, i), want4[i], "int4 elem %d", i);
    free(mem);
}

/* Row ranges (what the engine's threads do) give bitwise the whole-matrix result. */
Test(quantizer, row_ranges_equal_whole) {
    pg_rng r;
    pg_rng_seed(&r, 11);
    const int64_t rows = 13, cols = 256;
    float *w = pg_xmalloc(sizeof(float) * rows * cols);
    fill_normal(&r, w, (size_t)rows * cols, 0.02f);
    tensor src = f32_tensor(w, rows, cols);
    pg_dtype tos[] = {PG_QI8, PG_QI4};
    int groups[] = {256, 64};
    for (int k = 0; k < 2; k++) {
        tensor a, b;
        void *ma, *mb;
        pg_err err;
        cr_assert_eq(quant_matrix(&src, tos[k], groups[k], &a, &ma, &err), PG_OK);
        cr_assert_eq(quant_alloc(&src, tos[k], groups[k], &b, &mb, &err), PG_OK);
        quant_rows(&src, &b, 5, rows);
        quant_rows(&src, &b, 0, 5);
        size_t ps = (size_t)rows * (cols / groups[k]) * 2;
        cr_assert(memcmp(a.data, b.data, a.nbytes) == 0);
        cr_assert(memcmp(a.qscale, b.qscale, ps) == 0);
        if (tos[k] == PG_QI4) cr_assert(memcmp(a.qmin, b.qmin, ps) == 0);
        free(ma); free(mb);
    }
    free(w);
}

Test(quantizer, rejects_bad_groups) {
    float w[64] = {0};
    tensor src = f32_tensor(w, 1, 64), q;
    void *mem;
    pg_err err;
    cr_assert_eq(quant_matrix(&src, PG_QI4, 48, &q, &mem, &err), PG_EINVAL);
    cr_assert_eq(quant_matrix(&src, PG_QI4, 128, &q, &mem, &err), PG_EINVAL);   /* > cols */
    cr_assert_eq(quant_matrix(&src, PG_QI8, 40, &q, &mem, &err), PG_EINVAL);
    cr_assert_eq(quant_matrix(&src, PG_Q8_0, 32, &q, &mem, &err), PG_EINVAL);
    cr_assert(mem == NULL);
}

/* ---------------------------------------------------------------- GGUF conversion */
Test(from_gguf, bitwise_equal_to_block_dequant) {
    pg_rng r;
    pg_rng_seed(&r, 21);
    const int64_t rows = 9, cols = 160;
    pg_dtype ts[] = {PG_Q8_0, PG_Q4_0, PG_Q4_1};
    float *a = pg_xmalloc(sizeof(float) * cols), *b = pg_xmalloc(sizeof(float) * cols),
          *c = pg_xmalloc(sizeof(float) * cols);
    for (int k = 0; k < 3; k++) {
        uint8_t *w = random_gguf(&r, ts[k], rows, cols);
        tensor src = {.dtype = ts[k], .rows = rows, .cols = cols, .data = w,
                      .nbytes = pg_dtype_row_bytes(ts[k], cols) * rows, .name = "blk"}, q;
        void *mem;
        pg_err err;
        cr_assert_eq(quant_from_gguf(&src, &q, &mem, &err), PG_OK, "%s", err.msg);
        cr_assert_eq(q.dtype, ts[k] == PG_Q8_0 ? PG_QI8 : PG_QI4);
        cr_assert_eq(q.group, 32);
        qmatrix qm = as_qmatrix(&q);
        for (int64_t i = 0; i < rows; i++) {
            ref_dequant_row(ts[k], w + pg_dtype_row_bytes(ts[k], cols) * i, a, cols);
            quant_dequant_row(&q, i, b);
            ref_qdequant_row(&qm, i, c);
            cr_assert(memcmp(a, b, sizeof(float) * cols) == 0, "%s row %ld", pg_dtype_name(ts[k]), (long)i);
            cr_assert(memcmp(a, c, sizeof(float) * cols) == 0, "%s row %ld (kernels)", pg_dtype_name(ts[k]),
                      (long)i);
        }
        free(mem);
        free(w);
    }
    free(a); free(b); free(c);
    float f[32] = {0};
    tensor bad = f32_tensor(f, 1, 32), q;
    void *mem;
    pg_err err;
    cr_assert_eq(quant_from_gguf(&bad, &q, &mem, &err), PG_EINVAL);
}

/* ---------------------------------------------------------------- kernels */
/* A quantized matrix for the kernel tests: quantized from normal weights
 * (realistic) or random codes and parameters (every bit pattern). */
static tensor make_q(pg_rng *r, pg_dtype to, int64_t rows, int64_t cols, int group, int random_codes,
                     void **mem) {
    tensor q;
    pg_err err;
    float *w = pg_xmalloc(sizeof(float) * rows * cols);
    fill_normal(r, w, (size_t)rows * cols, 0.02f);
    tensor src = f32_tensor(w, rows, cols);
    cr_assert_eq(quant_matrix(&src, to, group, &q, mem, &err), PG_OK, "%s", err.msg);
    free(w);
    if (random_codes) {
        uint8_t *d = (uint8_t *)q.data;
        for (size_t i = 0; i < q.nbytes; i++) d[i] = (uint8_t)pg_rng_u64(r);
        if (to == PG_QI8)
            for (size_t i = 0; i < q.nbytes; i++) if (d[i] == 0x80) d[i] = 0x81;   /* -128 is outside the format */
        size_t np = (size_t)rows * (cols / group);
        for (size_t i = 0; i < np; i++) {
            ((uint16_t *)q.qscale)[i] = pg_f32_to_f16(0.001f + 0.01f * pg_rng_uniform(r));
            if (q.qmin) ((uint16_t *)q.qmin)[i] = pg_f32_to_f16(-0.1f * pg_rng_uniform(r));
        }
    }
    return q;
}

static double g_worst;

static void check_qmm(pg_dtype to, int64_t rows, int64_t cols, int group, int random_codes, uint64_t seed) {
    pg_rng r;
    pg_rng_seed(&r, seed);
    void *mem;
    tensor q = make_q(&r, to, rows, cols, group, random_codes, &mem);
    qmatrix qm = as_qmatrix(&q);
    const int nmax = 5;
    float *x = pg_xmalloc(sizeof(float) * nmax * cols);
    float *ref = pg_xmalloc(sizeof(float) * nmax * rows), *out = pg_xmalloc(sizeof(float) * nmax * rows);
    float *one = pg_xmalloc(sizeof(float) * rows), *full = pg_xmalloc(sizeof(float) * nmax * rows);
    fill_normal(&r, x, (size_t)nmax * cols, 1.0f);
    for (int n = 1; n <= nmax; n++) {
        poison(ref, (size_t)n * rows);
        ref_matmul_q(ref, x, n, &qm);
        for (int isa = CPU_ISA_SCALAR; isa <= CPU_ISA_AVX512; isa++) {
            if (!cpu_isa_available((cpu_isa)isa)) continue;
            const char *nm = cpu_isa_name((cpu_isa)isa);
            poison(out, (size_t)n * rows);
            int64_t mid = rows / 3;   /* two ranges, as two threads would */
            cpu_matmul_q_isa((cpu_isa)isa, out, x, n, &qm, 0, mid);
            cpu_matmul_q_isa((cpu_isa)isa, out, x, n, &qm, mid, rows);
            double e = rel_err(out, ref, (size_t)n * rows);
            cr_assert(e <= 1e-2, "%s %s g%d n=%d %ldx%ld: rel err %.3g", nm, pg_dtype_name(to), group, n,
                      (long)rows, (long)cols, e);
            g_worst = fmax(g_worst, e);
            memcpy(full, out, sizeof(float) * n * rows);
            /* token t's result does not depend on n */
            for (int t = 0; t < n; t++) {
                cpu_matmul_q_isa((cpu_isa)isa, one, x + (size_t)t * cols, 1, &qm, 0, rows);
                cr_assert(memcmp(one, out + (size_t)t * rows, sizeof(float) * rows) == 0,
                          "%s %s g%d n=%d token %d differs from n=1", nm, pg_dtype_name(to), group, n, t);
            }
            /* a sub-range writes only its rows */
            int64_t s0 = rows / 4, s1 = rows / 2 + 1;
            poison(out, (size_t)n * rows);
            cpu_matmul_q_isa((cpu_isa)isa, out, x, n, &qm, s0, s1);
            for (int t = 0; t < n; t++)
                for (int64_t j = 0; j < rows; j++) {
                    float v = out[(size_t)t * rows + j];
                    if (j >= s0 && j < s1)
                        cr_assert(v == full[(size_t)t * rows + j], "%s row %ld: %g vs %g", nm, (long)j, v,
                                  full[(size_t)t * rows + j]);
                    else cr_assert(isnan(v), "%s row %ld outside [%ld, %ld) written", nm, (long)j, (long)s0, (long)s1);
                }
        }
    }
    free(x); free(ref); free(out); free(one); free(full); free(mem);
}

Test(qmatmul, int8_all_paths) {
    int64_t rows[] = {1, 7, 33};
    for (int i = 0; i < 3; i++)
        for (int rc = 0; rc < 2; rc++) {
            check_qmm(PG_QI8, rows[i], 72, 72, rc, 100 + i);     /* per channel, 72 % 16 != 0 */
            check_qmm(PG_QI8, rows[i], 200, 200, rc, 110 + i);
            check_qmm(PG_QI8, rows[i], 576, 576, rc, 120 + i);   /* the default model's dim */
            check_qmm(PG_QI8, rows[i], 64, 32, rc, 130 + i);     /* GGUF Q8_0 layout */
            check_qmm(PG_QI8, rows[i], 96, 32, rc, 140 + i);
            check_qmm(PG_QI8, rows[i], 160, 32, rc, 150 + i);
            check_qmm(PG_QI8, rows[i], 120, 24, rc, 160 + i);    /* odd group */
            check_qmm(PG_QI8, rows[i], 1544, 1544, rc, 170 + i); /* long rows: decode pairs rows (AVX-512) */
        }
    cr_log_info("int8: worst rel err vs dequantized reference %.3g", g_worst);
}

Test(qmatmul, int4_all_paths) {
    int64_t rows[] = {1, 7, 33};
    for (int i = 0; i < 3; i++)
        for (int rc = 0; rc < 2; rc++) {
            check_qmm(PG_QI4, rows[i], 64, 32, rc, 200 + i);
            check_qmm(PG_QI4, rows[i], 96, 32, rc, 210 + i);
            check_qmm(PG_QI4, rows[i], 160, 32, rc, 220 + i);
            check_qmm(PG_QI4, rows[i], 192, 64, rc, 230 + i);
            check_qmm(PG_QI4, rows[i], 384, 128, rc, 240 + i);
            check_qmm(PG_QI4, rows[i], 1536, 128, rc, 250 + i);
        }
    cr_log_info("int4: worst rel err vs dequantized reference %.3g", g_worst);
}

/* Rows wider than the stack tile (QMM_STACK_FLOATS) take the scalar path. */
Test(qmatmul, int4_wide_rows) {
    check_qmm(PG_QI4, 3, 32768, 128, 0, 300);
    check_qmm(PG_QI8, 2, 32768, 32768, 0, 301);
}

/* The dequantized reference is the f32 matmul of the dequantized matrix, bitwise. */
Test(qmatmul, reference_is_dequantized_f32) {
    pg_rng r;
    pg_rng_seed(&r, 400);
    const int n = 3;
    const int64_t rows = 17, cols = 256;
    pg_dtype tos[] = {PG_QI8, PG_QI4};
    for (int k = 0; k < 2; k++) {
        void *mem;
        tensor q = make_q(&r, tos[k], rows, cols, k ? 64 : 256, 1, &mem);
        qmatrix qm = as_qmatrix(&q);
        float *wf = pg_xmalloc(sizeof(float) * rows * cols), *x = pg_xmalloc(sizeof(float) * n * cols);
        float ya[3 * 17], yb[3 * 17];
        for (int64_t i = 0; i < rows; i++) quant_dequant_row(&q, i, wf + i * cols);
        fill_normal(&r, x, (size_t)n * cols, 1.0f);
        ref_matmul_q(ya, x, n, &qm);
        ref_matmul(yb, x, n, wf, PG_F32, rows, cols);
        cr_assert(memcmp(ya, yb, sizeof ya) == 0, "%s", pg_dtype_name(tos[k]));
        free(wf); free(x); free(mem);
    }
}

/* A GGUF Q4_1 block whose codes include 0 and 15 re-quantizes (dequantize,
 * then the int4 g32 quantizer) to exactly the values quant_from_gguf gives:
 * lo = m, (hi - lo) / 15 = d, and (w - m) / d rounds back to q. So the
 * default model's --quant int4 g32 only changes the groups that do not
 * span the full code range. */
Test(from_gguf, q4_1_full_range_requantizes_losslessly) {
    pg_rng r;
    pg_rng_seed(&r, 31);
    const int64_t rows = 16, cols = 256;
    uint8_t *w = random_gguf(&r, PG_Q4_1, rows, cols);
    size_t bb = pg_dtype_block_bytes(PG_Q4_1);
    int n_full = 0;
    for (int64_t b = 0; b < rows * (cols / 32); b++) {
        uint8_t *qs = w + bb * b + 4;
        if (b % 3 == 0) { qs[0] = (uint8_t)((qs[0] & 0xf0) | 0); qs[5] = (uint8_t)((qs[5] & 0x0f) | 0xf0); }
    }
    tensor src = {.dtype = PG_Q4_1, .rows = rows, .cols = cols, .data = w,
                  .nbytes = pg_dtype_row_bytes(PG_Q4_1, cols) * rows, .name = "q41"}, a, b;
    void *ma, *mb;
    pg_err err;
    cr_assert_eq(quant_from_gguf(&src, &a, &ma, &err), PG_OK);
    cr_assert_eq(quant_matrix(&src, PG_QI4, 32, &b, &mb, &err), PG_OK);
    float *da = pg_xmalloc(sizeof(float) * cols), *db = pg_xmalloc(sizeof(float) * cols);
    for (int64_t i = 0; i < rows; i++) {
        quant_dequant_row(&a, i, da);
        quant_dequant_row(&b, i, db);
        for (int64_t j = 0; j < cols / 32; j++) {
            int lo = 15, hi = 0;
            for (int k = 0; k < 32; k++) {
                int v = code_at(&a, i, j * 32 + k);
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            if (lo != 0 || hi != 15) continue;
            n_full++;
            cr_assert(memcmp(da + j * 32, db + j * 32, 32 * sizeof(float)) == 0, "row %ld group %ld", (long)i,
                      (long)j);
        }
    }
    cr_assert(n_full >= rows * (cols / 32) / 3, "only %d full-range groups", n_full);
    free(da); free(db); free(ma); free(mb); free(w);
}
