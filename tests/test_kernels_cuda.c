/*
 * tests/test_kernels_cuda.c — every CUDA kernel (kernels/cuda/kernels_cuda.h)
 * against its CPU twin (kernels/kernels.h ref_*, model/sampler.h) on fresh
 * random inputs, outputs poisoned with NaN before each launch.
 * Metric: ||out - ref|| / ||ref||. Thresholds (DESIGN.md): fp32 kernels
 * <= 1e-5; kernels that round an operand to bf16 on purpose (prefill
 * attention feeds tensor cores with bf16 Q and P) <= 1e-2.
 * Skipped (cr_skip) when no CUDA GPU is visible or the build has no CUDA.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../kernels/kernels.h"
#include "../model/sampler.h"

#ifdef PG_CUDA
#include <cuda_runtime_api.h>
#include "../kernels/cuda/kernels_cuda.h"
#include "tests/test_util.h"

/* Random weights in a stored dtype (GGUF block bytes for quant types). */
static void *rand_weights(pg_rng *r, pg_dtype t, int rows, int cols, size_t *bytes)
{
    size_t rb = pg_dtype_row_bytes(t, cols);
    *bytes = rb * (size_t)rows;
    uint8_t *w = pg_xmalloc(*bytes);
    if (t == PG_BF16) {
        uint16_t *h = (uint16_t *)w;
        for (size_t i = 0; i < (size_t)rows * cols; i++) h[i] = pg_f32_to_bf16(0.05f * pg_rng_normal(r));
        return w;
    }
    size_t bb = pg_dtype_block_bytes(t), nb = (size_t)rows * cols / 32;
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
    return w;
}

/* Device kc_matrix from stored weights (the engine's load path). */
static kc_matrix dev_matrix(const void *w, size_t bytes, pg_dtype t, int rows, int cols)
{
    kc_matrix m = { t, rows, cols, NULL, NULL, 0, KC_TILES_NONE };
    KC_CHECK(cudaMalloc(&m.q, kc_matrix_q_bytes(t, rows, cols)));
    size_t sb = kc_matrix_s_bytes(t, rows, cols);
    if (sb) KC_CHECK(cudaMalloc(&m.s, sb));
    if (t == PG_BF16) KC_CHECK(cudaMemcpy(m.q, w, bytes, cudaMemcpyHostToDevice));
    else {
        void *raw = dev_from(w, bytes);
        k_repack_blocks(raw, t, rows, cols, &m, 0, 0);
        KC_CHECK(cudaDeviceSynchronize());
        cudaFree(raw);
    }
    return m;
}
static void free_matrix(kc_matrix *m) { cudaFree(m->q); cudaFree(m->s); }

/* ---------------------------------------------------------------- matmul */
static void check_gemv(pg_dtype t, int rows, int cols, int n, int swiglu, uint64_t seed)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    size_t bytes;
    void *w = rand_weights(&r, t, rows, cols, &bytes);
    float *x = randn(&r, (size_t)n * cols, 1.f);
    float *ref = pg_xmalloc((size_t)n * rows * sizeof(float));
    ref_matmul(ref, x, n, w, t, rows, cols);
    int orows = swiglu ? rows / 2 : rows;
    if (swiglu) {
        for (int i = 0; i < n; i++)
            ref_silu_mul(ref + (size_t)i * orows, ref + (size_t)i * rows, ref + (size_t)i * rows + orows, orows);
    }
    kc_matrix m = dev_matrix(w, bytes, t, rows, cols);
    float *dx = dev_from(x, (size_t)n * cols * 4), *dy = dev_poison((size_t)n * orows * 4);
    if (swiglu) k_gemv_swiglu(&m, dx, n, dy, 0); else k_gemv(&m, dx, n, dy, 0);
    float *out = pg_xmalloc((size_t)n * orows * sizeof(float));
    to_host(out, dy, (size_t)n * orows * 4);
    float *cmp = ref;   /* swiglu: compacted in place above to [n][orows] */
    double e = rel_err(out, cmp, (size_t)n * orows);
    cr_log_info("gemv %s %dx%d n=%d swiglu=%d: rel err %.3g", pg_dtype_name(t), rows, cols, n, swiglu, e);
    cr_expect(e <= 1e-5, "gemv %s %dx%d n=%d swiglu=%d: rel err %.3g > 1e-5", pg_dtype_name(t), rows,
              cols, n, swiglu, e);
    free_matrix(&m); cudaFree(dx); cudaFree(dy);
    free(w); free(x); free(ref); free(out);
}

Test(kernels_cuda, gemv_all_dtypes)
{
    NEED_GPU();
    pg_dtype ts[] = { PG_BF16, PG_Q8_0, PG_Q4_0, PG_Q4_1 };
    /* covers the one-column launch shapes of gemv.cu (2 or 4 warps per row;
     * bf16: 4 loads per lane at <= 4096 columns, 11 in one batch at 8448,
     * two batches of 8 at 14336), row pairs with an odd row count (n >= 2),
     * and column counts that leave lanes idle */
    int shapes[][2] = { { 576, 576 }, { 384, 1536 }, { 1000, 4096 }, { 64, 96 }, { 300, 8448 }, { 577, 160 },
                        { 130, 14336 } };
    int ns[] = { 1, 3, 8, 11 };
    uint64_t seed = 100;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 7; b++)
            for (int c = 0; c < 4; c++) {
                if (shapes[b][1] % 32) continue;
                check_gemv(ts[a], shapes[b][0], shapes[b][1], ns[c], 0, seed++);
            }
}

Test(kernels_cuda, gemv_swiglu)
{
    NEED_GPU();
    pg_dtype ts[] = { PG_BF16, PG_Q8_0, PG_Q4_1 };
    for (int a = 0; a < 3; a++) {
        check_gemv(ts[a], 2 * 1536, 576, 1, 1, 200 + a);
        check_gemv(ts[a], 2 * 320, 128, 5, 1, 210 + a);
    }
}

/* The decode products carrying the RMSNorms (kc_gemv_epi): shapes of the
 * default model (wo 576x576, w2 576x1536 -> w13 2x1536x576, wqkv 960x576)
 * and of the 7B (wo 4096x4096 -> 4 warps x 4 loads; w2 4096x11008: the wide
 * launch), 1, 3 and 11 columns (two passes). */
static void check_norm_epi_bf16(int dim, int k, int r2, int swiglu, int n, uint64_t seed, float amp)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    size_t bp, bc;
    void *hp = rand_weights(&r, PG_BF16, dim, k, &bp), *hc = rand_weights(&r, PG_BF16, r2, dim, &bc);
    kc_matrix wp = dev_matrix(hp, bp, PG_BF16, dim, k), wc = dev_matrix(hc, bc, PG_BF16, r2, dim);
    check_gemv_norm_epi(&wp, &wc, NULL, swiglu, n, seed + 1, amp);
    free_matrix(&wp); free_matrix(&wc); free(hp); free(hc);
}

Test(kernels_cuda, gemv_norm_epilogues)
{
    NEED_GPU();
    int ns[] = { 1, 3, 11 };
    for (int c = 0; c < 3; c++) {
        check_norm_epi_bf16(576, 576, 2 * 1536, 1, ns[c], 800 + c, 1.f);
        check_norm_epi_bf16(576, 1536, 960, 0, ns[c], 810 + c, 1.f);
    }
    check_norm_epi_bf16(4096, 4096, 2 * 11008, 1, 1, 820, 1.f);
    check_norm_epi_bf16(4096, 11008, 12288, 0, 1, 821, 1.f);
    check_norm_epi_bf16(576, 576, 960, 0, 1, 822, 1e-2f);
    check_norm_epi_bf16(576, 576, 960, 0, 3, 823, 1e2f);
}

Test(kernels_cuda, gemm_bf16_cublaslt)
{
    NEED_GPU();
    pg_rng r;
    pg_rng_seed(&r, 300);
    int rows = 1152, cols = 576, n = 77;
    size_t bytes;
    void *w = rand_weights(&r, PG_BF16, rows, cols, &bytes);
    float *x = randn(&r, (size_t)n * cols, 1.f);
    uint16_t *xb = pg_xmalloc((size_t)n * cols * 2);
    for (size_t i = 0; i < (size_t)n * cols; i++) { xb[i] = pg_f32_to_bf16(x[i]); x[i] = pg_bf16_to_f32(xb[i]); }
    float *ref = pg_xmalloc((size_t)n * rows * 4), *out = pg_xmalloc((size_t)n * rows * 4);
    ref_matmul(ref, x, n, w, PG_BF16, rows, cols);
    kc_matrix m = dev_matrix(w, bytes, PG_BF16, rows, cols);
    void *dx = dev_from(xb, (size_t)n * cols * 2);
    float *dy = dev_poison((size_t)n * rows * 4);
    kc_gemm_ctx *g;
    pg_err err;
    cr_assert_eq(kc_gemm_ctx_init(&g, &err), PG_OK);
    k_gemm_bf16(g, &m, dx, n, dy, 0);
    to_host(out, dy, (size_t)n * rows * 4);
    double e = rel_err(out, ref, (size_t)n * rows);
    cr_log_info("gemm bf16 %dx%d n=%d: rel err %.3g", rows, cols, n, e);
    cr_expect(e <= 1e-5, "cuBLASLt bf16 GEMM rel err %.3g > 1e-5", e);
    kc_gemm_ctx_free(g);
    free_matrix(&m); cudaFree(dx); cudaFree(dy);
    free(w); free(x); free(xb); free(ref); free(out);
}

/* ---------------------------------------------------------------- small ops */
Test(kernels_cuda, embed_all_dtypes)
{
    NEED_GPU();
    pg_dtype ts[] = { PG_BF16, PG_Q8_0, PG_Q4_0, PG_Q4_1 };
    for (int a = 0; a < 4; a++) {
        pg_rng r;
        pg_rng_seed(&r, 400 + a);
        int vocab = 300, dim = 192, n = 7;
        size_t bytes;
        void *w = rand_weights(&r, ts[a], vocab, dim, &bytes);
        int32_t ids[7] = { 0, 299, 17, 17, 150, 1, 298 };
        float *ref = pg_xmalloc((size_t)n * dim * 4), *out = pg_xmalloc((size_t)n * dim * 4);
        for (int i = 0; i < n; i++) ref_embed(ref + (size_t)i * dim, w, ts[a], dim, ids[i]);
        kc_matrix m = dev_matrix(w, bytes, ts[a], vocab, dim);
        int32_t *dids = dev_from(ids, sizeof ids);
        float *dy = dev_poison((size_t)n * dim * 4);
        k_embed(&m, dids, n, dy, 0);
        to_host(out, dy, (size_t)n * dim * 4);
        double e = rel_err(out, ref, (size_t)n * dim);
        cr_expect(e <= 1e-6, "embed %s rel err %.3g", pg_dtype_name(ts[a]), e);
        free_matrix(&m); cudaFree(dids); cudaFree(dy);
        free(w); free(ref); free(out);
    }
}

Test(kernels_cuda, add_rmsnorm_swiglu_add)
{
    NEED_GPU();
    pg_rng r;
    pg_rng_seed(&r, 500);
    int n = 5, dim = 4096 + 64;
    float *x = randn(&r, (size_t)n * dim, 1.f), *d = randn(&r, (size_t)n * dim, 1.f);
    float *w = randn(&r, (size_t)dim, 0.1f);
    for (int j = 0; j < dim; j++) w[j] += 1.f;
    float *sum = pg_xmalloc((size_t)n * dim * 4), *ref = pg_xmalloc((size_t)n * dim * 4);
    for (size_t i = 0; i < (size_t)n * dim; i++) sum[i] = x[i] + d[i];
    ref_rmsnorm(ref, sum, w, PG_F32, n, dim, 1e-5f);
    float *dx = dev_from(x, (size_t)n * dim * 4), *dd = dev_from(d, (size_t)n * dim * 4);
    float *dw = dev_from(w, (size_t)dim * 4), *dout = dev_poison((size_t)n * dim * 4);
    k_add_rmsnorm(dx, dd, dw, 1e-5f, n, dim, dout, NULL, 0);
    float *out = pg_xmalloc((size_t)n * dim * 4), *res = pg_xmalloc((size_t)n * dim * 4);
    to_host(out, dout, (size_t)n * dim * 4);
    to_host(res, dx, (size_t)n * dim * 4);
    double e1 = rel_err(out, ref, (size_t)n * dim), e2 = rel_err(res, sum, (size_t)n * dim);
    cr_expect(e1 <= 1e-5, "add_rmsnorm out rel err %.3g", e1);
    cr_expect(e2 <= 1e-6, "add_rmsnorm residual rel err %.3g", e2);

    /* swiglu over [n][2h] */
    int h = dim / 2;
    float *sref = pg_xmalloc((size_t)n * h * 4);
    for (int i = 0; i < n; i++) ref_silu_mul(sref + (size_t)i * h, x + (size_t)i * dim, x + (size_t)i * dim + h, h);
    float *dgu = dev_from(x, (size_t)n * dim * 4), *dsy = dev_poison((size_t)n * h * 4);
    k_swiglu(dgu, n, h, dsy, NULL, 0);
    to_host(out, dsy, (size_t)n * h * 4);
    double e3 = rel_err(out, sref, (size_t)n * h);
    cr_expect(e3 <= 1e-5, "swiglu rel err %.3g", e3);

    /* add */
    k_add(dgu, dd, (int64_t)n * dim, 0);
    to_host(out, dgu, (size_t)n * dim * 4);
    cr_expect(rel_err(out, sum, (size_t)n * dim) <= 1e-6, "add");
    cudaFree(dx); cudaFree(dd); cudaFree(dw); cudaFree(dout); cudaFree(dgu); cudaFree(dsy);
    free(x); free(d); free(w); free(sum); free(ref); free(out); free(res); free(sref);
}

static void check_rope(int interleaved, int llama3, int hd)
{
    pg_rng r;
    pg_rng_seed(&r, 600 + interleaved * 2 + llama3);
    kc_attn_shape sh = { 8, 2, hd, 64, interleaved };
    int n = 4, stride = (sh.n_heads + 2 * sh.n_kv_heads) * hd, slots = 3;
    int32_t pos[4] = { 0, 1, 37, 63 }, slot[4] = { 2, 0, 1, 2 };
    float *inv = pg_xmalloc((size_t)hd / 2 * 4);
    ref_rope_llama3 l3 = { 8.f, 1.f, 4.f, 16 };
    ref_rope_freqs(inv, hd, 500000.f, llama3 ? &l3 : NULL);
    float *qkv = randn(&r, (size_t)n * stride, 1.f);
    float *ref = pg_xmalloc((size_t)n * stride * 4);
    memcpy(ref, qkv, (size_t)n * stride * 4);
    for (int i = 0; i < n; i++) {
        ref_rope(ref + (size_t)i * stride, sh.n_heads + sh.n_kv_heads, hd, pos[i], inv, interleaved);
    }
    size_t cache = (size_t)slots * sh.n_kv_heads * sh.max_seq * hd;
    float *dq = dev_from(qkv, (size_t)n * stride * 4), *dinv = dev_from(inv, (size_t)hd / 2 * 4);
    int32_t *dpos = dev_from(pos, sizeof pos), *dslot = dev_from(slot, sizeof slot);
    kc_bf16 *kc = dev_poison(cache * 2), *vc = dev_poison(cache * 2);
    k_rope_kv_write(dq, stride, n, dpos, dslot, dinv, sh, kc, vc, 0);
    float *out = pg_xmalloc((size_t)n * stride * 4);
    to_host(out, dq, (size_t)n * stride * 4);
    uint16_t *hk = pg_xmalloc(cache * 2), *hv = pg_xmalloc(cache * 2);
    to_host(hk, kc, cache * 2);
    to_host(hv, vc, cache * 2);
    int qn = sh.n_heads * hd, kn = sh.n_kv_heads * hd;
    double eq = 0, ek = 0, ev = 0;
    float *gk = pg_xmalloc((size_t)kn * 4), *gv = pg_xmalloc((size_t)kn * 4);
    for (int i = 0; i < n; i++) {
        double e = rel_err(out + (size_t)i * stride, ref + (size_t)i * stride, (size_t)qn);
        if (e > eq) eq = e;
        for (int h = 0; h < sh.n_kv_heads; h++)
            for (int d = 0; d < hd; d++) {
                size_t at = (((size_t)slot[i] * sh.n_kv_heads + h) * sh.max_seq + pos[i]) * hd + d;
                gk[h * hd + d] = pg_bf16_to_f32(hk[at]);
                gv[h * hd + d] = pg_bf16_to_f32(hv[at]);
            }
        e = rel_err(gk, ref + (size_t)i * stride + qn, (size_t)kn); if (e > ek) ek = e;
        e = rel_err(gv, ref + (size_t)i * stride + qn + kn, (size_t)kn); if (e > ev) ev = e;
    }
    cr_log_info("rope il=%d l3=%d hd=%d: q %.3g k %.3g v %.3g", interleaved, llama3, hd, eq, ek, ev);
    cr_expect(eq <= 1e-5, "rope q rel err %.3g (interleaved %d, llama3 %d)", eq, interleaved, llama3);
    /* the cache is bf16 by design: one bf16 rounding, <= 2^-8 relative */
    cr_expect(ek <= 1e-2 && ev <= 1e-2, "kv cache write rel err k %.3g v %.3g", ek, ev);
    cudaFree(dq); cudaFree(dinv); cudaFree(dpos); cudaFree(dslot); cudaFree(kc); cudaFree(vc);
    free(inv); free(qkv); free(ref); free(out); free(hk); free(hv); free(gk); free(gv);
}

Test(kernels_cuda, rope_kv_write)
{
    NEED_GPU();
    for (int il = 0; il < 2; il++)
        for (int l3 = 0; l3 < 2; l3++) check_rope(il, l3, il ? 64 : 128);
}

/* ---------------------------------------------------------------- attention */
/* Random bf16 cache for `slots` slots; returns host bf16 and f32 copies. */
static void rand_cache(pg_rng *r, size_t n, uint16_t **hb, float **hf)
{
    *hb = pg_xmalloc(n * 2);
    *hf = pg_xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) { (*hb)[i] = pg_f32_to_bf16(pg_rng_normal(r)); (*hf)[i] = pg_bf16_to_f32((*hb)[i]); }
}

static void check_decode(int nh, int nkv, int hd, int max_seq)
{
    pg_rng r;
    pg_rng_seed(&r, 700 + nh + hd + max_seq);
    kc_attn_shape sh = { nh, nkv, hd, max_seq, 0 };
    int slots = 3, n = 3;
    int32_t pos[3] = { 0, max_seq / 2 + 3, max_seq - 1 }, slot[3] = { 1, 2, 0 };
    size_t per_slot = (size_t)nkv * max_seq * hd, cn = per_slot * slots;
    uint16_t *kb, *vb; float *kf, *vf;
    rand_cache(&r, cn, &kb, &kf);
    rand_cache(&r, cn, &vb, &vf);
    int qs = (nh + 2 * nkv) * hd;   /* q inside a qkv row, as the engine lays it out */
    float *q = randn(&r, (size_t)n * qs, 1.f);
    float *ref = pg_xmalloc((size_t)n * nh * hd * 4), *scratch = pg_xmalloc((size_t)max_seq * 4);
    for (int i = 0; i < n; i++)
        ref_attention(ref + (size_t)i * nh * hd, q + (size_t)i * qs, kf + slot[i] * per_slot,
                      vf + slot[i] * per_slot, 1, pos[i], nh, nkv, hd, max_seq, scratch);
    kc_bf16 *dk = dev_from(kb, cn * 2), *dv = dev_from(vb, cn * 2);
    float *dq = dev_from(q, (size_t)n * qs * 4), *dout = dev_poison((size_t)n * nh * hd * 4);
    float *part = dev_poison(k_attn_decode_part_floats(n, sh) * 4);
    KC_CHECK(cudaMemset(part, 0, k_attn_decode_part_floats(n, sh) * 4));   /* counters start at 0 */
    int32_t *dpos = dev_from(pos, sizeof pos), *dslot = dev_from(slot, sizeof slot);
    k_attn_decode(dq, qs, n, dpos, dslot, dk, dv, sh, part, dout, nh * hd, 0);
    KC_CHECK(cudaMemset(dout, 0xff, (size_t)n * nh * hd * 4));
    k_attn_decode(dq, qs, n, dpos, dslot, dk, dv, sh, part, dout, nh * hd, 0);   /* counters were reset */
    float *out = pg_xmalloc((size_t)n * nh * hd * 4);
    to_host(out, dout, (size_t)n * nh * hd * 4);
    double e = rel_err(out, ref, (size_t)n * nh * hd);
    cr_log_info("attn decode %d/%d hd %d max_seq %d: rel err %.3g", nh, nkv, hd, max_seq, e);
    cr_expect(e <= 1e-5, "attn decode heads %d/%d hd %d max_seq %d: rel err %.3g", nh, nkv, hd, max_seq, e);
    cudaFree(dk); cudaFree(dv); cudaFree(dq); cudaFree(dout); cudaFree(part); cudaFree(dpos); cudaFree(dslot);
    free(kb); free(vb); free(kf); free(vf); free(q); free(ref); free(scratch); free(out);
}

Test(kernels_cuda, attn_decode)
{
    NEED_GPU();
    check_decode(32, 32, 128, 700);   /* MHA, Llama-2 head */
    check_decode(32, 8, 128, 1100);   /* GQA 4, Llama-3 */
    check_decode(9, 3, 64, 300);      /* SmolLM2 */
    check_decode(4, 1, 32, 40);       /* tiny, G = 4 */
    check_decode(4, 2, 16, 90);       /* tiny-llama's head: with 256 threads a 64-position chunk is shorter than
                                         one pass of the block (caught: no scores were computed at all) */
}

static void check_prefill(int nh, int nkv, int hd, int n, int pos0, double tol)
{
    pg_rng r;
    pg_rng_seed(&r, 800 + nh + hd + n + pos0);
    int max_seq = pos0 + n + 5, slots = 2, slot = 1;
    kc_attn_shape sh = { nh, nkv, hd, max_seq, 0 };
    size_t per_slot = (size_t)nkv * max_seq * hd, cn = per_slot * slots;
    uint16_t *kb, *vb; float *kf, *vf;
    rand_cache(&r, cn, &kb, &kf);
    rand_cache(&r, cn, &vb, &vf);
    int qs = (nh + 2 * nkv) * hd;
    float *q = randn(&r, (size_t)n * qs, 1.f);
    float *qc = pg_xmalloc((size_t)n * nh * hd * 4);
    for (int i = 0; i < n; i++) memcpy(qc + (size_t)i * nh * hd, q + (size_t)i * qs, (size_t)nh * hd * 4);
    float *ref = pg_xmalloc((size_t)n * nh * hd * 4), *scratch = pg_xmalloc((size_t)max_seq * 4);
    ref_attention(ref, qc, kf + slot * per_slot, vf + slot * per_slot, n, pos0, nh, nkv, hd, max_seq, scratch);
    kc_bf16 *dk = dev_from(kb, cn * 2), *dv = dev_from(vb, cn * 2);
    float *dq = dev_from(q, (size_t)n * qs * 4), *dout = dev_poison((size_t)n * nh * hd * 4);
    k_attn_prefill(dq, qs, n, pos0, slot, dk, dv, sh, dout, nh * hd, 0);
    float *out = pg_xmalloc((size_t)n * nh * hd * 4);
    to_host(out, dout, (size_t)n * nh * hd * 4);
    double e = rel_err(out, ref, (size_t)n * nh * hd);
    cr_log_info("attn prefill %d/%d hd %d n %d pos0 %d: rel err %.3g", nh, nkv, hd, n, pos0, e);
    cr_expect(e <= tol, "attn prefill heads %d/%d hd %d n %d pos0 %d: rel err %.3g > %.g", nh, nkv, hd, n,
              pos0, e, tol);
    cudaFree(dk); cudaFree(dv); cudaFree(dq); cudaFree(dout);
    free(kb); free(vb); free(kf); free(vf); free(q); free(qc); free(ref); free(scratch); free(out);
}

Test(kernels_cuda, attn_prefill)
{
    NEED_GPU();
    /* tensor-core path: bf16 Q and P by design -> 1e-2 */
    check_prefill(8, 2, 128, 150, 0, 1e-2);
    check_prefill(8, 8, 128, 64, 70, 1e-2);
    check_prefill(9, 3, 64, 33, 0, 1e-2);
    check_prefill(9, 3, 64, 100, 29, 1e-2);
    check_prefill(8, 2, 128, 5, 700, 1e-2);   /* short chunk after a long context */
    /* scalar path (head_dim 32): fp32 throughout */
    check_prefill(4, 1, 32, 20, 5, 1e-5);
}

/* ---------------------------------------------------------------- sampling */
/* tie: every trial puts the largest logit at two ids (17 and vocab - 3,
 * in different threads' strides), so a greedy pick must take the lower */
static void check_sample_tie(const sampler_params *p, int vocab, uint64_t seed, const char *what, int tie)
{
    pg_rng r;
    pg_rng_seed(&r, seed);
    float *logits = randn(&r, (size_t)vocab, 3.f);
    sampler_slot ss;
    sampler_slot_init(&ss, vocab);
    pg_err err;
    cr_assert_eq(sampler_slot_reset(&ss, p, &err), PG_OK, "%s", err.msg);
    int32_t prompt[6] = { 3, 5, 7, 5, 11, vocab - 1 };
    sampler_slot_observe(&ss, prompt, 6, 0);
    int32_t gen[3] = { 5, 13, 13 };
    sampler_slot_observe(&ss, gen, 3, 1);
    /* the device mirror of the same history */
    int32_t *gc = pg_xcalloc((size_t)vocab, 4);
    uint8_t *seen = pg_xcalloc((size_t)vocab, 1);
    for (int i = 0; i < 6; i++) seen[prompt[i]] = 1;
    for (int i = 0; i < 3; i++) { seen[gen[i]] = 1; gc[gen[i]]++; }
    kc_sampler_params kp;
    memset(&kp, 0, sizeof kp);
    kp.temperature = p->temperature; kp.top_p = p->top_p; kp.min_p = p->min_p; kp.top_k = p->top_k;
    kp.rep_pen = p->repetition_penalty; kp.pres_pen = p->presence_penalty; kp.freq_pen = p->frequency_penalty;
    kp.logprobs = p->logprobs; kp.top_logprobs = p->top_logprobs; kp.n_bias = p->n_logit_bias;
    for (int i = 0; i < p->n_logit_bias; i++) { kp.bias_ids[i] = p->logit_bias_ids[i]; kp.bias_vals[i] = p->logit_bias_vals[i]; }
    sampler_scratch sc;
    sampler_scratch_init(&sc, vocab);
    for (int trial = 0; trial < 8; trial++) {
        if (tie) {
            float mx = logits[0];
            for (int i = 1; i < vocab; i++) mx = fmaxf(mx, logits[i]);
            logits[17] = logits[vocab - 3] = mx + 1.f;
        }
        /* CPU: the whole pipeline; u is the slot's next draw, which we replay on the GPU */
        pg_rng saved = ss.rng;
        engine_result cpu;
        memset(&cpu, 0, sizeof cpu);
        sampler_sample(&ss, logits, &sc, &cpu);
        pg_rng rr = saved;
        float u = p->temperature > 0 ? pg_rng_uniform(&rr) : 0.f;
        int32_t slot = 0, one = 1;
        void *dl = dev_from(logits, (size_t)vocab * 4), *dp = dev_from(&kp, sizeof kp);
        void *dgc = dev_from(gc, (size_t)vocab * 4), *dseen = dev_from(seen, (size_t)vocab);
        void *dw = dev_poison((size_t)vocab * 4), *dslot = dev_from(&slot, 4), *du = dev_from(&u, 4);
        void *ddo = dev_from(&one, 4), *dout = dev_poison(sizeof(kc_sample_out));
        kc_sampler_state st = { dp, dgc, dseen, dw };
        k_sample(dl, vocab, 1, dslot, du, ddo, st, dout, 0);
        kc_sample_out go;
        to_host(&go, dout, sizeof go);
        to_host(gc, dgc, (size_t)vocab * 4);
        to_host(seen, dseen, (size_t)vocab);
        cr_expect_eq(go.token, cpu.token, "%s trial %d: gpu token %d cpu token %d (u %.6f)", what, trial,
                     go.token, cpu.token, u);
        /* after trial 0 the pick is in the history, where penalties lower it */
        const int penalized = p->repetition_penalty != 1.f || p->presence_penalty != 0.f || p->frequency_penalty != 0.f;
        if (tie && p->temperature == 0.f && (trial == 0 || !penalized))
            cr_expect_eq(go.token, 17, "%s trial %d: tie not to the lower id", what, trial);
        if (p->logprobs || p->top_logprobs) {
            cr_expect(fabsf(go.logprob - cpu.logprob) <= 1e-4f, "%s: logprob %g vs %g", what, go.logprob, cpu.logprob);
            cr_expect_eq(go.n_top, cpu.n_top, "%s: n_top", what);
            for (int k = 0; k < cpu.n_top && k < go.n_top; k++) {
                cr_expect_eq(go.top_ids[k], cpu.top_ids[k], "%s: top %d id", what, k);
                cr_expect(fabsf(go.top_logprobs[k] - cpu.top_logprobs[k]) <= 1e-4f, "%s: top %d logprob", what, k);
            }
        }
        cr_expect_eq(gc[cpu.token], ss.gen_count[cpu.token], "%s: history count", what);
        cudaFree(dl); cudaFree(dp); cudaFree(dgc); cudaFree(dseen); cudaFree(dw); cudaFree(dslot);
        cudaFree(du); cudaFree(ddo); cudaFree(dout);
        /* next trial: perturb the logits */
        for (int i = 0; i < vocab; i++) logits[i] += 0.5f * pg_rng_normal(&r);
    }
    sampler_scratch_free(&sc);
    sampler_slot_free(&ss);
    free(logits); free(gc); free(seen);
}

static void check_sample(const sampler_params *p, int vocab, uint64_t seed, const char *what)
{
    check_sample_tie(p, vocab, seed, what, 0);
}

Test(kernels_cuda, sample_matches_cpu_sampler)
{
    NEED_GPU();
    sampler_params p;
    int32_t bid[3] = { 7, 100, 7 };
    float bval[3] = { 5.f, -100.f, 2.f };
    sampler_params_default(&p);
    p.logprobs = 1; p.top_logprobs = 5;
    check_sample(&p, 1000, 1, "T=1 + logprobs");
    sampler_params_default(&p);
    p.repetition_penalty = 1.3f; p.presence_penalty = 0.5f; p.frequency_penalty = 0.3f;
    p.n_logit_bias = 3; p.logit_bias_ids = bid; p.logit_bias_vals = bval;
    check_sample(&p, 1000, 2, "T=1 + penalties + bias");
    /* temperature 0 with no bias or penalties takes the kernel's one-pass
     * argmax: vocabularies that are and are not multiples of 4 (vector and
     * scalar loads), ties, logprobs; and the general path's greedy */
    sampler_params_default(&p);
    p.temperature = 0.f;
    check_sample_tie(&p, 1000, 11, "T=0", 1);
    check_sample_tie(&p, 1001, 12, "T=0 vocab 1001", 1);
    p.logprobs = 1; p.top_logprobs = 3;
    check_sample_tie(&p, 32000, 13, "T=0 + logprobs", 1);
    p.repetition_penalty = 1.2f;
    check_sample_tie(&p, 1001, 14, "T=0 + repetition penalty", 1);
    sampler_params_default(&p);
    p.temperature = 0.8f; p.top_k = 40; p.seed = 5;
    check_sample(&p, 32000, 3, "T=0.8 top_k=40");
    sampler_params_default(&p);
    p.temperature = 1.0f; p.top_p = 0.9f; p.seed = 6;
    check_sample(&p, 32000, 4, "T=1 top_p=0.9");
    sampler_params_default(&p);
    p.temperature = 0.7f; p.min_p = 0.05f; p.top_k = 100; p.top_p = 0.95f; p.seed = 7;
    p.repetition_penalty = 1.1f;
    check_sample(&p, 49152, 5, "T=0.7 top_k=100 top_p=0.95 min_p=0.05");
    sampler_params_default(&p);
    p.temperature = 1.5f; p.seed = 8;
    check_sample(&p, 2000, 6, "T=1.5 whole vocabulary");
}

#else  /* no CUDA in this build */
Test(kernels_cuda, skipped) { cr_skip("built without CUDA"); }
#endif
