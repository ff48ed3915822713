/*
 * tests/test_quant_cuda.c — the CUDA side of weight-only quantization
 * (kernels/cuda/quant.cu, gemv_quant.cu, k_gemm_q; the engine's --quant path)
 * against the CPU references on fresh random inputs, outputs poisoned first.
 *
 *   quantizer_bitwise   k_quantize vs quant_matrix (model/quant.c) from every
 *                       source dtype into QI8 (per channel, g32, g64) and QI4
 *                       (g32/64/128): q, scales and mins bit-identical
 *                       (groups of zeros and constant groups included).
 *   gguf_exact          k_quant_from_gguf vs quant_from_gguf: bit-identical.
 *   gemv_q              decode kernels vs ref_matmul_q on the same quantized
 *                       weights, n = 1..11 columns, odd rows, short and long
 *                       rows, plain and SwiGLU-fused; also x far outside
 *                       f16's range. The tensor-core kernel rounds weights
 *                       and x to f16 and sums in f32: <= 3e-3 (DESIGN.md
 *                       allows 1e-2 for quantized kernels).
 *   qi8_tiles, qi4_tiles int8 / int4 stored in the decode kernel's tile
 *                       order: bytes where kc_q_at says (k_quantize in two
 *                       row ranges, k_q_place, int4 g32 also
 *                       k_quant_from_gguf), and decode products and
 *                       dequantized rows bit-identical to the row-major
 *                       layout's.
 *   gemv_norm_epilogues the RMSNorm carried by the quantized decode products
 *                       (kc_gemv_epi; check in tests/test_util.h), int8
 *                       and int4, row-major and tiled.
 *   gemm_q              prefill tiles (dequantized to bf16, tensor cores) vs
 *                       ref_matmul_q with bf16-rounded x and weights: <= 1e-2.
 *   dequant_embed       k_dequant_bf16 and k_embed vs quant_dequant_row: exact.
 *   engine_*            random tiny models: CUDA --quant int8/int4 vs the CPU
 *                       engine with the same options (<= 1e-2: the same
 *                       quantized model on both), int8 vs bf16 weights
 *                       (<= 5e-2; int4 g32 reported), graph == eager with
 *                       quantized weights (bit-identical logits); int8 both
 *                       tiled (the default) and row-major.
 * Skipped when no GPU is visible or the build has no CUDA.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../kernels/kernels.h"
#include "../model/engine.h"
#include "../model/quant.h"

#ifdef PG_CUDA
#include <cuda_runtime_api.h>
#include "../kernels/cuda/kernels_cuda.h"
#include "tests/test_util.h"
#include "tests/engine_test_util.h"

/* A host tensor of random weights stored as t (GGUF bytes for block types).
 * Row 0 is all zeros and row 1 constant where there are >= 3 rows (the s = 0
 * branch of the quantizer and hi == lo groups). */
static tensor rand_tensor(pg_rng *r, pg_dtype t, int rows, int cols)
{
    size_t rb = pg_dtype_row_bytes(t, cols), bytes = rb * (size_t)rows;
    uint8_t *w = pg_xmalloc(bytes);
    size_t n = (size_t)rows * cols;
    if (t == PG_F32 || t == PG_F16 || t == PG_BF16) {
        for (size_t i = 0; i < n; i++) {
            float v = 0.05f * pg_rng_normal(r);
            if (rows >= 3 && i < (size_t)cols) v = 0.f;
            else if (rows >= 3 && i < 2 * (size_t)cols) v = 0.0123f;
            if (t == PG_F32) memcpy(w + 4 * i, &v, 4);
            else {
                uint16_t h = t == PG_F16 ? pg_f32_to_f16(v) : pg_f32_to_bf16(v);
                memcpy(w + 2 * i, &h, 2);
            }
        }
    } else {
        size_t bb = pg_dtype_block_bytes(t), nb = n / 32;
        for (size_t b = 0; b < nb; b++) {
            uint8_t *p = w + b * bb;
            uint16_t d = pg_f32_to_f16(0.001f + 0.01f * pg_rng_uniform(r));
            memcpy(p, &d, 2);
            size_t q0 = 2;
            if (t == PG_Q4_1) {
                uint16_t m = pg_f32_to_f16(-0.05f * pg_rng_uniform(r));
                memcpy(p + 2, &m, 2);
                q0 = 4;
            }
            for (size_t j = q0; j < bb; j++) p[j] = (uint8_t)pg_rng_u64(r);
        }
    }
    return (tensor){ .dtype = t, .rows = rows, .cols = cols, .data = w, .nbytes = bytes, .name = "test" };
}

/* Device copy of a host QI8/QI4 tensor in the device layout. */
static kc_matrix dev_qmatrix(const tensor *t)
{
    kc_matrix m = { t->dtype, (int)t->rows, (int)t->cols, NULL, NULL, t->group, KC_TILES_NONE };
    size_t ng = (size_t)t->rows * (size_t)(t->cols / t->group);
    size_t sb = kc_qm_s_bytes(t->dtype, t->rows, t->cols, t->group);
    void *hp = pg_xmalloc(sb);
    kc_pack_qparams(t->dtype, t->qscale, t->qmin, ng, hp);
    m.q = dev_from(t->data, kc_qm_q_bytes(t->dtype, t->rows, t->cols, t->group));
    m.s = dev_from(hp, sb);
    free(hp);
    return m;
}
static qmatrix host_qmatrix(const tensor *t)
{
    return (qmatrix){ t->dtype, t->rows, t->cols, t->group, t->data, t->qscale, t->qmin };
}

/* ---------------------------------------------------------------- quantizer */
static void check_quantizer(pg_dtype src_t, pg_dtype to, int group, int rows, int cols, uint64_t seed)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    tensor src = rand_tensor(&r, src_t, rows, cols);
    tensor ref;
    void *mem;
    pg_err err = { 0 };
    cr_assert_eq(quant_matrix(&src, to, group, &ref, &mem, &err), PG_OK, "%s", err.msg);
    size_t ng = (size_t)rows * (size_t)(cols / group);
    size_t qb = kc_qm_q_bytes(to, rows, cols, group), sb = kc_qm_s_bytes(to, rows, cols, group);
    void *hp = pg_xmalloc(sb);
    kc_pack_qparams(to, ref.qscale, ref.qmin, ng, hp);

    /* quantize into rows [1, rows + 1) of a poisoned matrix with rows + 2 rows */
    kc_matrix m = { to, rows + 2, cols, dev_poison(kc_qm_q_bytes(to, rows + 2, cols, group)),
                    dev_poison(kc_qm_s_bytes(to, rows + 2, cols, group)), group, KC_TILES_NONE };
    void *dsrc = dev_from(src.data, src.nbytes);
    k_quantize(dsrc, src_t, rows, cols, &m, 1, 0);
    uint8_t *gq = pg_xmalloc(qb), *gs = pg_xmalloc(sb);
    KC_CHECK(cudaDeviceSynchronize());
    KC_CHECK(cudaMemcpy(gq, (uint8_t *)m.q + kc_qm_q_bytes(to, 1, cols, group), qb, cudaMemcpyDeviceToHost));
    KC_CHECK(cudaMemcpy(gs, (uint8_t *)m.s + kc_qm_s_bytes(to, 1, cols, group), sb, cudaMemcpyDeviceToHost));
    size_t bad_q = 0, bad_s = 0;
    for (size_t i = 0; i < qb; i++) bad_q += gq[i] != ((const uint8_t *)ref.data)[i];
    for (size_t i = 0; i < sb; i++) bad_s += gs[i] != ((const uint8_t *)hp)[i];
    cr_log_info("quantize %s -> %s g%d %dx%d: %zu/%zu q bytes and %zu/%zu parameter bytes differ",
                pg_dtype_name(src_t), pg_dtype_name(to), group, rows, cols, bad_q, qb, bad_s, sb);
    cr_expect(bad_q == 0 && bad_s == 0, "quantize %s -> %s g%d %dx%d: %zu q bytes, %zu parameter bytes differ",
              pg_dtype_name(src_t), pg_dtype_name(to), group, rows, cols, bad_q, bad_s);
    cudaFree(m.q); cudaFree(m.s); cudaFree(dsrc);
    free(gq); free(gs); free(hp); free(mem); free((void *)src.data);
}

Test(quant_cuda, quantizer_bitwise)
{
    NEED_GPU();
    pg_dtype srcs[] = { PG_F32, PG_F16, PG_BF16, PG_Q8_0, PG_Q4_0, PG_Q4_1 };
    uint64_t seed = 1;
    for (int a = 0; a < 6; a++) {
        check_quantizer(srcs[a], PG_QI8, 384, 37, 384, seed++);   /* per channel */
        check_quantizer(srcs[a], PG_QI8, 4096, 5, 4096, seed++);  /* per channel, long rows */
        check_quantizer(srcs[a], PG_QI8, 32, 19, 160, seed++);
        check_quantizer(srcs[a], PG_QI8, 64, 7, 192, seed++);
        check_quantizer(srcs[a], PG_QI4, 32, 37, 160, seed++);
        check_quantizer(srcs[a], PG_QI4, 64, 11, 384, seed++);
        check_quantizer(srcs[a], PG_QI4, 128, 9, 640, seed++);
    }
}

Test(quant_cuda, gguf_exact)
{
    NEED_GPU();
    pg_dtype srcs[] = { PG_Q8_0, PG_Q4_0, PG_Q4_1 };
    for (int a = 0; a < 3; a++) {
        int rows = 53, cols = 224;
        pg_rng r;
        pg_rng_seed(&r, 50 + a);
        tensor src = rand_tensor(&r, srcs[a], rows, cols), ref;
        void *mem;
        pg_err err = { 0 };
        cr_assert_eq(quant_from_gguf(&src, &ref, &mem, &err), PG_OK, "%s", err.msg);
        pg_dtype to = ref.dtype;
        size_t ng = (size_t)rows * (cols / 32);
        size_t qb = kc_qm_q_bytes(to, rows, cols, 32), sb = kc_qm_s_bytes(to, rows, cols, 32);
        void *hp = pg_xmalloc(sb);
        kc_pack_qparams(to, ref.qscale, ref.qmin, ng, hp);
        kc_matrix m = { to, rows, cols, dev_poison(qb), dev_poison(sb), 32, KC_TILES_NONE };
        void *dsrc = dev_from(src.data, src.nbytes);
        /* two calls into row ranges, as the engine uploads wq/wk/wv into one matrix */
        size_t half = pg_dtype_row_bytes(srcs[a], cols) * 20;
        k_quant_from_gguf(dsrc, srcs[a], 20, cols, &m, 0, 0);
        k_quant_from_gguf((uint8_t *)dsrc + half, srcs[a], rows - 20, cols, &m, 20, 0);
        uint8_t *gq = pg_xmalloc(qb), *gs = pg_xmalloc(sb);
        to_host(gq, m.q, qb);
        to_host(gs, m.s, sb);
        cr_expect(memcmp(gq, ref.data, qb) == 0, "%s: quants differ from quant_from_gguf", pg_dtype_name(srcs[a]));
        cr_expect(memcmp(gs, hp, sb) == 0, "%s: parameters differ from quant_from_gguf", pg_dtype_name(srcs[a]));
        cudaFree(m.q); cudaFree(m.s); cudaFree(dsrc);
        free(gq); free(gs); free(hp); free(mem); free((void *)src.data);
    }
}

/* ---------------------------------------------------------------- matmul */
static tensor rand_q(pg_rng *r, pg_dtype to, int group, int rows, int cols, void **mem)
{
    tensor src = rand_tensor(r, PG_F32, rows, cols), q;
    pg_err err = { 0 };
    cr_assert_eq(quant_matrix(&src, to, group, &q, mem, &err), PG_OK, "%s", err.msg);
    free((void *)src.data);
    return q;
}

/* big > 0: x scaled by big, with one element of each column at 4 big (f16
 * overflows past 65504: the tensor-core kernel must scale x first). */
static void check_gemv_q_x(pg_dtype to, int group, int rows, int cols, int n, int swiglu, uint64_t seed, float big)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    void *mem;
    tensor w = rand_q(&r, to, group, rows, cols, &mem);
    qmatrix hq = host_qmatrix(&w);
    float *x = randn(&r, (size_t)n * cols, 1.f);
    if (big > 0)
        for (int i = 0; i < n; i++) {
            for (int c = 0; c < cols; c++) x[(size_t)i * cols + c] *= big;
            x[(size_t)i * cols + cols / 2 + i] = 4.f * big;
        }
    float *ref = pg_xmalloc((size_t)n * rows * sizeof(float));
    ref_matmul_q(ref, x, n, &hq);
    int orows = swiglu ? rows / 2 : rows;
    if (swiglu)   /* compact [n][rows] to [n][orows] in place, row by row (forward: no overlap issue) */
        for (int i = 0; i < n; i++)
            ref_silu_mul(ref + (size_t)i * orows, ref + (size_t)i * rows, ref + (size_t)i * rows + orows, orows);
    kc_matrix m = dev_qmatrix(&w);
    float *dx = dev_from(x, (size_t)n * cols * 4), *dy = dev_poison((size_t)n * orows * 4);
    float *out = pg_xmalloc((size_t)n * orows * sizeof(float));
    /* The kernel rounds weights and x to f16 (2^-11 relative each) and sums
     * in f32: ~5e-4 on these inputs. */
    if (swiglu) k_gemv_swiglu(&m, dx, n, dy, 0); else k_gemv(&m, dx, n, dy, 0);
    to_host(out, dy, (size_t)n * orows * 4);
    double e = rel_err(out, ref, (size_t)n * orows);
    cr_log_info("gemv %s g%d %dx%d n=%d swiglu=%d big=%g: rel err %.3g", pg_dtype_name(to), group, rows, cols, n,
                swiglu, big, e);
    cr_expect(e <= 3e-3, "gemv %s g%d %dx%d n=%d swiglu=%d big=%g: rel err %.3g > 3e-3", pg_dtype_name(to), group,
              rows, cols, n, swiglu, big, e);
    cudaFree(m.q); cudaFree(m.s); cudaFree(dx); cudaFree(dy);
    free(mem); free(x); free(ref); free(out);
}

static void check_gemv_q(pg_dtype to, int group, int rows, int cols, int n, int swiglu, uint64_t seed)
{
    check_gemv_q_x(to, group, rows, cols, n, swiglu, seed, 0.f);
}

/* The tiled QI8 / QI4 layout (kernels_cuda.h) against the row-major one for
 * one random matrix (to, group; QI8: group = cols): k_quantize (in two row
 * ranges, as the engine loads gate and up, or q/k/v, into one matrix) puts
 * every byte where kc_q_at (and every int4 group word where kc_qi4_s_at) says,
 * and k_q_place / k_qi4_s_place (a checkpoint's rows) and,
 * for int4 g32, k_quant_from_gguf of Q4_1 blocks (the default model's
 * weights) agree bit for bit; the decode products (n = 1, 2, 8; plain and
 * SwiGLU) and the prefill's dequantized rows equal the row-major ones bit for
 * bit: every output is the same sums in the same order, only the bytes'
 * addresses differ. */
static void check_q_tiles(pg_dtype to, int group, int rows, int cols, int tiles, uint64_t seed)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    tensor src = rand_tensor(&r, PG_F32, rows, cols);
    const char *fn = to == PG_QI4 ? "int4" : "int8";
    const size_t qb = kc_qm_q_bytes(to, rows, cols, group), sb = kc_qm_s_bytes(to, rows, cols, group);
    const int64_t rowb = to == PG_QI4 ? cols / 2 : cols;
    kc_matrix mr = { to, rows, cols, dev_poison(qb), dev_poison(sb), group, KC_TILES_NONE };
    kc_matrix mt = { to, rows, cols, dev_poison(qb), dev_poison(sb), group, tiles };
    kc_matrix mp = { to, rows, cols, dev_poison(qb), dev_poison(sb), group, tiles };
    cr_assert(kc_q_tileable(&mt, tiles), "%s %dx%d must be tileable", fn, rows, cols);
    void *dsrc = dev_from(src.data, src.nbytes);
    /* two calls: rows [0, h) and [h, rows), h not on a tile boundary (q/k/v
     * and gate/up splits are, but the mapping must not depend on it) */
    const int h = rows / 2 + 5;
    k_quantize(dsrc, PG_F32, rows, cols, &mr, 0, 0);
    k_quantize(dsrc, PG_F32, h, cols, &mt, 0, 0);
    k_quantize((const float *)dsrc + (size_t)h * cols, PG_F32, rows - h, cols, &mt, h, 0);
    k_q_place((const uint8_t *)mr.q, rows, &mp, 0, 0);
    if (to == PG_QI4) k_qi4_s_place((const uint32_t *)mr.s, rows, &mp, 0, 0);
    else KC_CHECK(cudaMemcpy(mp.s, mr.s, sb, cudaMemcpyDeviceToDevice));
    uint8_t *hr = pg_xmalloc(qb), *ht = pg_xmalloc(qb), *hp = pg_xmalloc(qb);
    KC_CHECK(cudaDeviceSynchronize());
    to_host(hr, mr.q, qb); to_host(ht, mt.q, qb); to_host(hp, mp.q, qb);
    size_t bad = 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t c = 0; c < cols; c += (to == PG_QI4 ? 2 : 1))
            bad += hr[i * rowb + (to == PG_QI4 ? c / 2 : c)] != ht[kc_q_at(&mt, i, c)];
    cr_expect(bad == 0, "%s tiles %d %dx%d: %zu quantized bytes not where kc_q_at puts them", fn, tiles, rows, cols,
              bad);
    cr_expect(memcmp(ht, hp, qb) == 0, "%s tiles %d %dx%d: k_q_place differs from k_quantize", fn, tiles, rows,
              cols);
    uint8_t *sr = pg_xmalloc(sb), *st = pg_xmalloc(sb), *sp = pg_xmalloc(sb);
    to_host(sr, mr.s, sb); to_host(st, mt.s, sb); to_host(sp, mp.s, sb);
    cr_expect(memcmp(st, sp, sb) == 0, "%s tiles %d %dx%d: placed scales differ from k_quantize's", fn, tiles, rows,
              cols);
    if (to == PG_QI4) {   /* group words where kc_qi4_s_at puts them */
        const int64_t ng = cols / group;
        size_t sbad = 0;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < ng; j++)
                sbad += ((const uint32_t *)sr)[i * ng + j] !=
                        ((const uint32_t *)st)[kc_qi4_s_at(tiles, rows, cols, group, i, j)];
        cr_expect(sbad == 0, "int4 tiles %d %dx%d: %zu group words not where kc_qi4_s_at puts them", tiles, rows,
                  cols, sbad);
    } else {
        cr_expect(memcmp(sr, st, sb) == 0, "%s tiles %d %dx%d: the scales differ", fn, tiles, rows, cols);
    }
    if (to == PG_QI4 && group == 32) {   /* GGUF Q4_1 -> QI4 g32, row-major and tiled, in two row ranges */
        tensor blk = rand_tensor(&r, PG_Q4_1, rows, cols);
        void *dblk = dev_from(blk.data, blk.nbytes);
        const size_t half = pg_dtype_row_bytes(PG_Q4_1, cols) * (size_t)h;
        kc_matrix gr = { to, rows, cols, dev_poison(qb), dev_poison(sb), 32, KC_TILES_NONE };
        kc_matrix gt = { to, rows, cols, dev_poison(qb), dev_poison(sb), 32, tiles };
        k_quant_from_gguf(dblk, PG_Q4_1, rows, cols, &gr, 0, 0);
        k_quant_from_gguf(dblk, PG_Q4_1, h, cols, &gt, 0, 0);
        k_quant_from_gguf((const uint8_t *)dblk + half, PG_Q4_1, rows - h, cols, &gt, h, 0);
        uint8_t *g1 = pg_xmalloc(qb), *g2 = pg_xmalloc(qb), *s1 = pg_xmalloc(sb), *s2 = pg_xmalloc(sb);
        to_host(g1, gr.q, qb); to_host(g2, gt.q, qb); to_host(s1, gr.s, sb); to_host(s2, gt.s, sb);
        size_t gbad = 0, gsbad = 0;
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t c = 0; c < cols; c += 2) gbad += g1[i * rowb + c / 2] != g2[kc_q_at(&gt, i, c)];
            for (int64_t j = 0; j < cols / 32; j++)
                gsbad += ((const uint32_t *)s1)[i * (cols / 32) + j] !=
                         ((const uint32_t *)s2)[kc_qi4_s_at(tiles, rows, cols, 32, i, j)];
        }
        cr_expect(gbad == 0, "Q4_1 -> int4 tiles %d %dx%d: %zu bytes not where kc_q_at puts them", tiles, rows,
                  cols, gbad);
        cr_expect(gsbad == 0, "Q4_1 -> int4 tiles %d %dx%d: %zu parameter words not where kc_qi4_s_at puts them",
                  tiles, rows, cols, gsbad);
        cudaFree(gr.q); cudaFree(gr.s); cudaFree(gt.q); cudaFree(gt.s); cudaFree(dblk);
        free(g1); free(g2); free(s1); free(s2); free((void *)blk.data);
    }

    const int swiglu = tiles == KC_TILES_PAIRS, orows = swiglu ? rows / 2 : rows;
    int ns[] = { 1, 2, 8 };
    for (int a = 0; a < 3; a++) {
        const int n = ns[a];
        float *x = randn(&r, (size_t)n * cols, 1.f);
        float *dx = dev_from(x, (size_t)n * cols * 4);
        float *dyr = dev_poison((size_t)n * orows * 4), *dyt = dev_poison((size_t)n * orows * 4);
        k_gemv_q(&mr, dx, n, dyr, swiglu, NULL, 0);
        k_gemv_q(&mt, dx, n, dyt, swiglu, NULL, 0);
        float *yr = pg_xmalloc((size_t)n * orows * 4), *yt = pg_xmalloc((size_t)n * orows * 4);
        to_host(yr, dyr, (size_t)n * orows * 4); to_host(yt, dyt, (size_t)n * orows * 4);
        size_t diff = 0;
        for (size_t i = 0; i < (size_t)n * orows; i++) diff += memcmp(&yr[i], &yt[i], 4) != 0;
        cr_log_info("gemv %s tiles %d %dx%d n=%d: %zu of %zu outputs differ from row-major", fn, tiles, rows, cols,
                    n, diff, (size_t)n * orows);
        cr_expect(diff == 0, "gemv %s tiles %d %dx%d n=%d: %zu outputs differ from row-major", fn, tiles, rows, cols,
                  n, diff);
        cudaFree(dx); cudaFree(dyr); cudaFree(dyt);
        free(x); free(yr); free(yt);
    }
    /* the prefill's dequantized rows: all of them (as the engine calls it,
     * whole tiles), then [3, rows - 1) (off every tile boundary) */
    for (int pass = 0; pass < 2; pass++) {
        const int64_t r0 = pass ? 3 : 0, nr = pass ? rows - 4 : rows;
        kc_bf16 *dbr = dev_poison((size_t)nr * cols * 2), *dbt = dev_poison((size_t)nr * cols * 2);
        k_dequant_bf16(&mr, r0, nr, dbr, 0);
        k_dequant_bf16(&mt, r0, nr, dbt, 0);
        kc_bf16 *br = pg_xmalloc((size_t)nr * cols * 2), *bt = pg_xmalloc((size_t)nr * cols * 2);
        to_host(br, dbr, (size_t)nr * cols * 2); to_host(bt, dbt, (size_t)nr * cols * 2);
        cr_expect(memcmp(br, bt, (size_t)nr * cols * 2) == 0, "%s tiles %d %dx%d: dequantized rows [%lld, %lld) differ",
                  fn, tiles, rows, cols, (long long)r0, (long long)(r0 + nr));
        cudaFree(dbr); cudaFree(dbt); free(br); free(bt);
    }
    cudaFree(mr.q); cudaFree(mr.s); cudaFree(mt.q); cudaFree(mt.s); cudaFree(mp.q); cudaFree(mp.s);
    cudaFree(dsrc);
    free(hr); free(ht); free(hp); free(sr); free(st); free(sp); free((void *)src.data);
}

/* (format, group, rows, cols, tiles) cases of check_q_tiles, seeds from 700 */
static const struct { pg_dtype to; int group, rows, cols, tiles; } q_tile_cases[] = {
    /* int8 (group = cols): more tiles than blocks on some, one tile per block
     * on others; 4096 and 11008 columns as in the 7B products */
    { PG_QI8, 128, 192, 128, KC_TILES_ROWS },
    { PG_QI8, 4096, 4096, 4096, KC_TILES_ROWS },
    { PG_QI8, 11008, 64, 11008, KC_TILES_ROWS },
    { PG_QI8, 128, 640, 128, KC_TILES_PAIRS },
    { PG_QI8, 4096, 2 * 1376, 4096, KC_TILES_PAIRS },
    { PG_QI8, 640, 48, 640, KC_TILES_PAIRS },
    /* int4: groups 32 / 64 / 128 (1, 2, 4 lanes per group word); the 7B
     * shapes; 1536 columns as the default model's w2 */
    { PG_QI4, 32, 192, 128, KC_TILES_ROWS },
    { PG_QI4, 32, 4096, 4096, KC_TILES_ROWS },
    { PG_QI4, 128, 64, 11008, KC_TILES_ROWS },
    { PG_QI4, 64, 576, 1536, KC_TILES_ROWS },
    { PG_QI4, 64, 640, 128, KC_TILES_PAIRS },
    { PG_QI4, 32, 2 * 1376, 4096, KC_TILES_PAIRS },
    { PG_QI4, 128, 48, 640, KC_TILES_PAIRS },
};

static void check_q_tile_cases(pg_dtype to)
{
    for (size_t i = 0; i < sizeof q_tile_cases / sizeof q_tile_cases[0]; i++)
        if (q_tile_cases[i].to == to)
            check_q_tiles(to, q_tile_cases[i].group, q_tile_cases[i].rows, q_tile_cases[i].cols,
                          q_tile_cases[i].tiles, 700 + i);
}

Test(quant_cuda, qi8_tiles) { NEED_GPU(); check_q_tile_cases(PG_QI8); }
Test(quant_cuda, qi4_tiles) { NEED_GPU(); check_q_tile_cases(PG_QI4); }

/* A copy of the row-major QI8 (per-row scales) or QI4 matrix m stored with
 * `tiles` (kc_q_at), as the engine loads the decode products. */
static kc_matrix dev_q_tiled(const kc_matrix *m, int tiles)
{
    kc_matrix t = *m;
    t.tiles = tiles;
    cr_assert(kc_q_tileable(&t, tiles), "%dx%d must be tileable", m->rows, m->cols);
    const size_t qb = kc_qm_q_bytes(m->dtype, m->rows, m->cols, m->group);
    const size_t sb = kc_qm_s_bytes(m->dtype, m->rows, m->cols, m->group);
    t.q = dev_poison(qb);
    t.s = dev_poison(sb);
    if (m->dtype == PG_QI4) k_qi4_s_place((const uint32_t *)m->s, m->rows, &t, 0, 0);
    else KC_CHECK(cudaMemcpy(t.s, m->s, sb, cudaMemcpyDeviceToDevice));
    k_q_place((const uint8_t *)m->q, m->rows, &t, 0, 0);
    return t;
}

/* The norm epilogues (kc_gemv_epi, tests/test_util.h) on the quantized
 * kernel: int8 per channel and g32, int4 g32 / g128, plain and SwiGLU
 * consumers, 1, 3 and 11 columns (two passes). tiled: int8 or int4 in the
 * decode kernel's tile order (the producer in row tiles, the consumer in pair
 * tiles for SwiGLU), the engine's default where the shape allows; the
 * consumer's plain reference product from the row-major twin. */
static void check_norm_epi_q(pg_dtype to, int group, int dim, int k, int r2, int swiglu, int n, uint64_t seed,
                             float amp, int tiled)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    void *mp, *mc;
    tensor tp = rand_q(&r, to, group ? group : k, dim, k, &mp);
    tensor tc = rand_q(&r, to, group ? group : dim, r2, dim, &mc);
    kc_matrix wp = dev_qmatrix(&tp), wc = dev_qmatrix(&tc);
    if (tiled) {
        kc_matrix tw = dev_q_tiled(&wp, KC_TILES_ROWS);
        kc_matrix tcw = dev_q_tiled(&wc, swiglu ? KC_TILES_PAIRS : KC_TILES_ROWS);
        check_gemv_norm_epi(&tw, &tcw, &wc, swiglu, n, seed + 1, amp);
        cudaFree(tw.q); cudaFree(tw.s); cudaFree(tcw.q); cudaFree(tcw.s);
    } else {
        check_gemv_norm_epi(&wp, &wc, NULL, swiglu, n, seed + 1, amp);
    }
    cudaFree(wp.q); cudaFree(wp.s); cudaFree(wc.q); cudaFree(wc.s);
    free(mp); free(mc);
}

Test(quant_cuda, gemv_norm_epilogues)
{
    NEED_GPU();
    int ns[] = { 1, 3, 11 };
    for (int c = 0; c < 3; c++) {
        check_norm_epi_q(PG_QI8, 0, 576, 1536, 2 * 1536, 1, ns[c], 900 + c, 1.f, 0);
        check_norm_epi_q(PG_QI4, 32, 576, 576, 960, 0, ns[c], 910 + c, 1.f, 0);
        check_norm_epi_q(PG_QI4, 128, 4096, 4096, 2 * 1024, 1, ns[c], 920 + c, 1.f, 0);
        check_norm_epi_q(PG_QI8, 0, 576, 1536, 2 * 1536, 1, ns[c], 940 + c, 1.f, 1);
        check_norm_epi_q(PG_QI8, 0, 4096, 4096, 960, 0, ns[c], 950 + c, 1.f, 1);
        check_norm_epi_q(PG_QI4, 32, 4096, 4096, 2 * 1024, 1, ns[c], 970 + c, 1.f, 1);
        check_norm_epi_q(PG_QI4, 64, 1024, 1536, 1024, 0, ns[c], 980 + c, 1.f, 1);
    }
    check_norm_epi_q(PG_QI8, 32, 576, 576, 2 * 576, 1, 3, 960, 1.f, 0);   /* int8 g32 (from GGUF Q8_0) */
    /* small and large residual streams: the consumer reads x * g unnormalised */
    check_norm_epi_q(PG_QI8, 0, 576, 576, 960, 0, 1, 930, 1e-2f, 0);
    check_norm_epi_q(PG_QI4, 32, 576, 576, 2 * 576, 1, 3, 931, 1e2f, 0);
    check_norm_epi_q(PG_QI8, 0, 576, 576, 960, 0, 1, 932, 1e-2f, 1);
}

/* activations far outside f16's range (real models have columns of x in the
 * thousands; 4e5 here) */
Test(quant_cuda, gemv_q_large_x)
{
    NEED_GPU();
    int ns[] = { 1, 3, 8 };
    for (int c = 0; c < 3; c++) {
        check_gemv_q_x(PG_QI8, 640, 300, 640, ns[c], 0, 500 + c, 1e5f);
        check_gemv_q_x(PG_QI8, 32, 300, 640, ns[c], 0, 510 + c, 1e5f);
        check_gemv_q_x(PG_QI4, 32, 2 * 300, 640, ns[c], 1, 520 + c, 1e5f);
        check_gemv_q_x(PG_QI4, 128, 300, 640, ns[c], 0, 530 + c, 1e5f);
    }
}

Test(quant_cuda, gemv_q)
{
    NEED_GPU();
    /* rows not multiples of the warps per block (4) or rows per warp (2);
     * columns that leave lanes idle (96, 160) and rows longer than one batch
     * of loads (4096, 11008) */
    int shapes[][2] = { { 577, 160 }, { 64, 96 }, { 1000, 4096 }, { 33, 11008 }, { 300, 640 } };
    int ns[] = { 1, 2, 3, 5, 8, 11 };
    uint64_t seed = 300;
    for (int b = 0; b < 5; b++) {
        int rows = shapes[b][0], cols = shapes[b][1];
        for (int c = 0; c < 6; c++) {
            if (cols > 4096 && ns[c] > 2) continue;   /* the CPU reference is slow */
            check_gemv_q(PG_QI8, cols, rows, cols, ns[c], 0, seed++);
            check_gemv_q(PG_QI8, 32, rows, cols, ns[c], 0, seed++);
            check_gemv_q(PG_QI4, 32, rows, cols, ns[c], 0, seed++);
            if (cols % 64 == 0) check_gemv_q(PG_QI4, 64, rows, cols, ns[c], 0, seed++);
            if (cols % 128 == 0) check_gemv_q(PG_QI4, 128, rows, cols, ns[c], 0, seed++);
        }
    }
}

Test(quant_cuda, gemv_q_swiglu)
{
    NEED_GPU();
    int ns[] = { 1, 2, 4, 7, 8 };
    for (int c = 0; c < 5; c++) {
        check_gemv_q(PG_QI8, 576, 2 * 1536, 576, ns[c], 1, 400 + c);
        check_gemv_q(PG_QI4, 32, 2 * 1536, 576, ns[c], 1, 410 + c);
        check_gemv_q(PG_QI4, 128, 2 * 330, 256, ns[c], 1, 420 + c);
        check_gemv_q(PG_QI8, 32, 2 * 330, 96, ns[c], 1, 430 + c);
    }
}

static void check_gemm_q(pg_dtype to, int group, int rows, int cols, int n, size_t scratch, uint64_t seed)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    void *mem;
    tensor w = rand_q(&r, to, group, rows, cols, &mem);
    float *x = randn(&r, (size_t)n * cols, 1.f);
    uint16_t *xb = pg_xmalloc((size_t)n * cols * 2);
    for (size_t i = 0; i < (size_t)n * cols; i++) { xb[i] = pg_f32_to_bf16(x[i]); x[i] = pg_bf16_to_f32(xb[i]); }
    /* reference: bf16 x, weights dequantized then rounded to bf16 (what the tiles hold) */
    float *wd = pg_xmalloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++) {
        quant_dequant_row(&w, i, wd + (size_t)i * cols);
        for (int c = 0; c < cols; c++) wd[(size_t)i * cols + c] = pg_bf16_to_f32(pg_f32_to_bf16(wd[(size_t)i * cols + c]));
    }
    float *ref = pg_xmalloc((size_t)n * rows * sizeof(float));
    ref_matmul(ref, x, n, wd, PG_F32, rows, cols);
    kc_matrix m = dev_qmatrix(&w);
    kc_gemm_ctx *g;
    pg_err err = { 0 };
    cr_assert_eq(kc_gemm_ctx_init(&g, &err), PG_OK, "%s", err.msg);
    void *dxb = dev_from(xb, (size_t)n * cols * 2);
    float *dy = dev_poison((size_t)n * rows * 4);
    kc_bf16 *ds = dev_poison(scratch * 2);
    k_gemm_q(g, &m, dxb, n, dy, ds, scratch, 0);
    float *out = pg_xmalloc((size_t)n * rows * sizeof(float));
    to_host(out, dy, (size_t)n * rows * 4);
    double e = rel_err(out, ref, (size_t)n * rows);
    cr_log_info("gemm_q %s g%d %dx%d n=%d (tiles of %zu rows): rel err %.3g", pg_dtype_name(to), group, rows, cols, n,
                scratch / cols, e);
    cr_expect(e <= 1e-2, "gemm_q %s g%d %dx%d n=%d: rel err %.3g > 1e-2", pg_dtype_name(to), group, rows, cols, n, e);
    kc_gemm_ctx_free(g);
    cudaFree(m.q); cudaFree(m.s); cudaFree(dxb); cudaFree(dy); cudaFree(ds);
    free(mem); free(x); free(xb); free(wd); free(ref); free(out);
}

Test(quant_cuda, gemm_q)
{
    NEED_GPU();
    /* 300 rows in tiles of 128 (a short last tile); 77 and 16 tokens */
    check_gemm_q(PG_QI8, 512, 300, 512, 77, 128 * 512, 500);
    check_gemm_q(PG_QI4, 32, 300, 512, 77, 128 * 512, 501);
    check_gemm_q(PG_QI4, 128, 257, 640, 16, 256 * 640, 502);
    check_gemm_q(PG_QI8, 32, 96, 256, 33, 1 << 20, 503);   /* one tile */
}

Test(quant_cuda, dequant_embed)
{
    NEED_GPU();
    pg_dtype tos[] = { PG_QI8, PG_QI4 };
    for (int a = 0; a < 2; a++) {
        int rows = 61, cols = 320;
        pg_rng r;
        pg_rng_seed(&r, 600 + a);
        void *mem;
        tensor w = rand_q(&r, tos[a], a ? 64 : cols, rows, cols, &mem);
        kc_matrix m = dev_qmatrix(&w);
        float *row = pg_xmalloc((size_t)cols * sizeof(float));
        /* dequantized bf16 tiles of rows [5, 45) */
        uint16_t *tb = pg_xmalloc((size_t)40 * cols * 2);
        kc_bf16 *dt = dev_poison((size_t)40 * cols * 2);
        k_dequant_bf16(&m, 5, 40, dt, 0);
        to_host(tb, dt, (size_t)40 * cols * 2);
        size_t bad = 0;
        for (int i = 0; i < 40; i++) {
            quant_dequant_row(&w, 5 + i, row);
            for (int c = 0; c < cols; c++) bad += tb[(size_t)i * cols + c] != pg_f32_to_bf16(row[c]);
        }
        cr_expect(bad == 0, "%s: %zu dequantized bf16 values differ", pg_dtype_name(tos[a]), bad);
        /* embedding gather */
        int32_t toks[4] = { 3, 60, 0, 17 };
        int32_t *dtok = dev_from(toks, sizeof toks);
        float *de = dev_poison((size_t)4 * cols * 4), *e = pg_xmalloc((size_t)4 * cols * 4);
        k_embed(&m, dtok, 4, de, 0);
        to_host(e, de, (size_t)4 * cols * 4);
        bad = 0;
        for (int i = 0; i < 4; i++) {
            quant_dequant_row(&w, toks[i], row);
            bad += memcmp(e + (size_t)i * cols, row, (size_t)cols * 4) != 0;
        }
        cr_expect(bad == 0, "%s: %zu embedding rows differ from quant_dequant_row", pg_dtype_name(tos[a]), bad);
        cudaFree(m.q); cudaFree(m.s); cudaFree(dt); cudaFree(dtok); cudaFree(de);
        free(mem); free(row); free(tb); free(e);
    }
}

/* ---------------------------------------------------------------- engine */
static engine *make_engine(const model *m, engine_device dev, weight_quant q, int group, int graphs, int slots)
{
    engine_opts o;
    engine_opts_default(&o);
    o.device = dev;
    o.max_slots = slots;
    o.max_seq_len = 128;
    o.use_graphs = graphs;
    o.n_threads = 2;
    o.quant = q;
    o.group_size = group;
    o.kv = dev == ENGINE_DEVICE_CUDA ? KV_BF16 : KV_F32;
    return te_create(m, &o, 1);
}

/* Worst logits rel err of engine a vs engine b over a 21-token prefill
 * (the matrix-vector path; and a 40-token one: the tensor-core path) and 8
 * teacher-forced decode steps. */
static double worst_logits(engine *a, engine *b, int V, int n_prompt)
{
    int32_t toks[64];
    pg_rng r;
    pg_rng_seed(&r, 9);
    for (int i = 0; i < 64; i++) toks[i] = (int32_t)(pg_rng_u64(&r) % (uint64_t)V);
    float *la = pg_xmalloc((size_t)V * 4), *lb = pg_xmalloc((size_t)V * 4);
    engine_result ra[1], rb[1];
    engine_row row = { 0, toks, n_prompt, 0, 1, 1 };
    te_step(a, &row, 1, ra);
    te_step(b, &row, 1, rb);
    te_logits(a, 0, la);
    te_logits(b, 0, lb);
    double worst = rel_err(la, lb, (size_t)V);
    for (int i = 0; i < 8; i++) {
        engine_row d = { 0, &toks[n_prompt + i], 1, n_prompt + i, 1, 0 };
        te_step(a, &d, 1, ra);
        te_step(b, &d, 1, rb);
        te_logits(a, 0, la);
        te_logits(b, 0, lb);
        double e = rel_err(la, lb, (size_t)V);
        if (e > worst) worst = e;
    }
    free(la); free(lb);
    return worst;
}

static void cuda_vs_cpu_quant(const char *preset, weight_quant q, int group)
{
    model *m = te_load_random(preset);
    engine *ec = make_engine(m, ENGINE_DEVICE_CPU, q, group, 1, 1);
    engine *eg = make_engine(m, ENGINE_DEVICE_CUDA, q, group, 1, 1);
    for (int k = 0; k < 2; k++) {
        int n = k ? 40 : 11;
        pg_err err = { 0 };
        sampler_params sp;
        sampler_params_default(&sp);
        sp.temperature = 0.f;
        cr_assert_eq(engine_slot_reset(ec, 0, &sp, &err), PG_OK);
        cr_assert_eq(engine_slot_reset(eg, 0, &sp, &err), PG_OK);
        double e = worst_logits(eg, ec, m->cfg.vocab_size, n);
        cr_log_info("%s --quant %s g%d: CUDA vs CPU logits worst rel err %.3g (prompt %d)", preset,
                    engine_quant_name(q), group, e, n);
        /* same quantized weights on both sides; the CUDA KV cache is bf16 and a
         * 40-token prompt runs bf16 tensor-core prefill, as with bf16 weights */
        cr_expect(e <= 1e-2, "%s --quant %s g%d prompt %d: CUDA vs CPU rel err %.3g > 1e-2", preset,
                  engine_quant_name(q), group, n, e);
    }
    engine_free(ec); engine_free(eg); model_free(m);
}

/* cuda_vs_cpu_quant with a start-up switch set. Criterion runs each test in
 * its own process, so the variable does not reach the other tests. */
static void cuda_vs_cpu_quant_env(const char *var, const char *val, const char *preset, weight_quant q, int group)
{
    cr_assert_eq(setenv(var, val, 1), 0);
    cuda_vs_cpu_quant(preset, q, group);
}

Test(quant_cuda, engine_int8_matches_cpu) { NEED_GPU(); cuda_vs_cpu_quant("tiny-llama3", WQUANT_INT8, 32); }
/* The same with int8 kept row-major (PEREGRINE_NO_QI8_TILES=1): nothing else
 * runs the engine's untiled per-row int8 path. */
Test(quant_cuda, engine_int8_row_major_matches_cpu)
{
    NEED_GPU();
    cuda_vs_cpu_quant_env("PEREGRINE_NO_QI8_TILES", "1", "tiny-llama3", WQUANT_INT8, 32);
}
/* The same with the add+RMSNorm kernels kept in the decode step
 * (PEREGRINE_FUSED_NORM=0; quantized weights fuse them by default): nothing
 * else runs the engine's unfused gemv path with int8 weights. */
Test(quant_cuda, engine_int8_unfused_norm_matches_cpu)
{
    NEED_GPU();
    cuda_vs_cpu_quant_env("PEREGRINE_FUSED_NORM", "0", "tiny-llama3", WQUANT_INT8, 32);
}
/* tiny-llama3's wqkv, wo and w13 (128 columns) are stored tiled, its w2
 * (320) row-major */
Test(quant_cuda, engine_int4_matches_cpu)
{
    NEED_GPU();
    cuda_vs_cpu_quant("tiny-llama", WQUANT_INT4, 32);
    cuda_vs_cpu_quant("tiny-llama3", WQUANT_INT4, 64);
}
/* int4 kept row-major (PEREGRINE_NO_QI4_TILES=1) */
Test(quant_cuda, engine_int4_row_major_matches_cpu)
{
    NEED_GPU();
    cuda_vs_cpu_quant_env("PEREGRINE_NO_QI4_TILES", "1", "tiny-llama3", WQUANT_INT4, 64);
}

/* --group-size 128 where a matrix is narrower or not a multiple of 128:
 * both devices take quant_group_for's group (tiny-llama3: w2 is 320 wide,
 * so it gets 64) and hold the same model. */
Test(quant_cuda, engine_int4_g128_fallback_matches_cpu)
{
    NEED_GPU();
    cuda_vs_cpu_quant("tiny-llama3", WQUANT_INT4, 128);
}

/* A checkpoint written by `peregrine quantize` (quant_write_checkpoint)
 * loads on the GPU in its own format (--quant none) and gives bitwise the
 * logits of quantizing the original at load (the GPU quantizer equals
 * quant_matrix, which wrote the checkpoint). */
static void checkpoint_vs_load(weight_quant q, pg_dtype to, int group)
{
    model *m = te_load_random("tiny-llama3");
    pg_err err = { 0 };
    char dir[] = "/tmp/pg_qckpt_XXXXXX";
    cr_assert(mkdtemp(dir), "mkdtemp");
    quant_weights qw;
    cr_assert_eq(quant_weights_make(m, to, group, 1, NULL, &qw, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(quant_write_checkpoint(m, &qw, engine_quant_name(q), to == PG_QI4 ? group : 0, 1, dir, &err), PG_OK,
                 "%s", err.msg);
    quant_weights_free(&qw);
    model_load_opts lo = { 0 };
    lo.path = dir;
    model *mc = NULL;
    cr_assert_eq(model_load(&lo, &mc, &err), PG_OK, "load %s: %s", dir, err.msg);
    engine *ea = make_engine(m, ENGINE_DEVICE_CUDA, q, group, 1, 1);
    engine *eb = make_engine(mc, ENGINE_DEVICE_CUDA, WQUANT_NONE, 32, 1, 1);
    double e = worst_logits(eb, ea, m->cfg.vocab_size, 11);
    printf("checkpoint %s g%d on the GPU vs quantized at load: worst logits rel err %.3g\n", engine_quant_name(q),
           group, e);
    cr_expect(e == 0.0, "%s g%d: checkpoint logits differ from quantize-at-load (rel err %.3g)", engine_quant_name(q),
              group, e);
    /* the device quantizer reads float and GGUF sources only: a clear refusal */
    engine_opts o;
    engine_opts_default(&o);
    o.device = ENGINE_DEVICE_CUDA;
    o.max_seq_len = 64;
    o.quant = WQUANT_INT8;
    engine *ex = NULL;
    cr_expect_eq(engine_create(mc, &o, &ex, &err), PG_EUNSUPPORTED, "re-quantizing a checkpoint must be refused");
    engine_free(ex);
    engine_free(ea); engine_free(eb);
    model_free(mc); model_free(m);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(quant_cuda, engine_checkpoint_equals_quantize_at_load)
{
    NEED_GPU();
    checkpoint_vs_load(WQUANT_INT8, PG_QI8, 32);
    checkpoint_vs_load(WQUANT_INT4, PG_QI4, 32);
    checkpoint_vs_load(WQUANT_INT4, PG_QI4, 128);
}

Test(quant_cuda, engine_quant_vs_bf16)
{
    NEED_GPU();
    const char *presets[] = { "tiny-llama", "tiny-llama3" };
    for (int p = 0; p < 2; p++) {
        model *m = te_load_random(presets[p]);
        engine *eb = make_engine(m, ENGINE_DEVICE_CUDA, WQUANT_BF16, 32, 1, 1);
        engine *e8 = make_engine(m, ENGINE_DEVICE_CUDA, WQUANT_INT8, 32, 1, 1);
        engine *e4 = make_engine(m, ENGINE_DEVICE_CUDA, WQUANT_INT4, 32, 1, 1);
        double d8 = worst_logits(e8, eb, m->cfg.vocab_size, 21);
        double d4 = worst_logits(e4, eb, m->cfg.vocab_size, 21);
        cr_log_info("%s: logits worst rel err vs bf16 weights: int8 %.3g, int4 g32 %.3g", presets[p], d8, d4);
        printf("quant_vs_bf16 %s: int8 %.4g, int4-g32 %.4g (worst logits rel err vs bf16 weights)\n", presets[p],
               d8, d4);
        cr_expect(d8 <= 5e-2, "%s: int8 vs bf16 logits rel err %.3g > 5e-2", presets[p], d8);
        cr_expect(isfinite(d4) && d4 < 1.0, "%s: int4 g32 vs bf16 logits rel err %.3g: not a model any more",
                  presets[p], d4);
        engine_free(eb); engine_free(e8); engine_free(e4); model_free(m);
    }
}

Test(quant_cuda, engine_graph_equals_eager)
{
    NEED_GPU();
    weight_quant qs[] = { WQUANT_INT8, WQUANT_INT4 };
    for (int k = 0; k < 2; k++) {
        model *m = te_load_random("tiny-llama3");
        int V = m->cfg.vocab_size;
        engine *ea = make_engine(m, ENGINE_DEVICE_CUDA, qs[k], 32, 1, 2);
        engine *eb = make_engine(m, ENGINE_DEVICE_CUDA, qs[k], 32, 0, 2);
        te_graph_equals_eager(ea, eb, V, 16, engine_quant_name(qs[k]));
        engine_free(ea); engine_free(eb); model_free(m);
    }
}

#else
Test(quant_cuda, skipped) { cr_skip("built without CUDA"); }
#endif
