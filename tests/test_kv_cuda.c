/*
 * tests/test_kv_cuda.c — the KV cache on the GPU: the int8 cache
 * (kernels/kernels.h conventions, ref_kv_quant_int8) and the split decode
 * attention at long context, kernels against their CPU twins and the engine
 * with int8 KV against the engine with bf16 KV.
 *
 *   rope_kv_write_int8   k_rope_kv_write_int8: q and k rotated as ref_rope
 *                        (<= 1e-5), every int8 byte and f32 scale bitwise
 *                        equal to ref_kv_quant_int8 of the same f32 vector
 *                        (the rotated k the kernel wrote back; v as given).
 *   attn_decode_*        k_attn_decode(_int8) vs ref_attention over the
 *                        cache converted to f32 (bf16 -> f32, s * q), fp32
 *                        kernels: <= 1e-5. Lengths that make a block walk
 *                        several chunks, and one workspace shared by launches
 *                        of different batch sizes (as the engine's graphs do).
 *   rope_attn_decode_fused  k_rope_attn_decode(_int8), the decode step's one
 *                        launch, against k_rope_kv_write(_int8) + k_attn_decode
 *                        (_int8): identical cache bytes and output bits.
 *   attn_prefill_int8    k_attn_prefill_int8: tensor-core path (bf16 tiles)
 *                        <= 1e-2, scalar path (fp32) <= 1e-5.
 *   engine_short_chunk_after_long_context  a 9-token chunk after 300 tokens
 *                        (decode attention kernel, one row per token): CUDA vs
 *                        CPU engine logits (same KV format) and vs a one-chunk
 *                        prefill, <= 1e-2 (bf16 weights and tensor cores).
 *   engine_int8_*        the CUDA engine with --kv-cache int8: the default
 *                        model's greedy tokens on tests/fixtures/gpu_prompts.txt
 *                        (32 tokens) against the CUDA engine with bf16 KV (the
 *                        format's effect) and against the CPU engine with int8
 *                        KV (the kernels). A prompt may diverge only at a
 *                        near-tie, the rule of the CPU suite (test_kv_cache.c):
 *                        at the first differing step the int8 run's token is
 *                        the reference's runner-up and the reference's top-2
 *                        gap is smaller than the largest logit change between
 *                        the two runs at that step; gap, rank and change are
 *                        printed. (Until 2026-12-03 this was a fixed gap <=
 *                        0.02, which the int8 cache's own logit changes on this
 *                        4-layer model exceed.) Graph replay == eager
 *                        (bit-identical logits), and the KV bytes it reports
 *                        (about half of bf16).
 * Skipped when no GPU is visible or the build has no CUDA.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "../kernels/kernels.h"
#include "../model/engine.h"

#ifdef PG_CUDA
#include <cuda_runtime_api.h>
#include "../kernels/cuda/kernels_cuda.h"
#include "tests/test_util.h"
#include "tests/engine_test_util.h"

/* ---------------------------------------------------------------- rope + int8 write */
static void check_rope_int8(int interleaved, int llama3, int nh, int nkv, int hd)
{
    pg_rng r;
    pg_rng_seed(&r, 900 + interleaved * 2 + llama3 + hd);
    kc_attn_shape sh = { nh, nkv, hd, 64, interleaved };
    enum { N = 4 };
    int stride = (nh + 2 * nkv) * hd, slots = 3;
    int32_t pos[N] = { 0, 1, 37, 63 }, slot[N] = { 2, 0, 1, 2 };
    float *inv = pg_xmalloc((size_t)hd / 2 * 4);
    ref_rope_llama3 l3 = { 8.f, 1.f, 4.f, 16 };
    ref_rope_freqs(inv, hd, 500000.f, llama3 ? &l3 : NULL);
    float *qkv = randn(&r, (size_t)N * stride, 1.f);
    for (int d = 0; d < hd; d++) qkv[(size_t)(nh + 1) * hd + d] = 0.f;   /* one all-zero head: scale 0 */
    float *ref = pg_xmalloc((size_t)N * stride * 4);
    memcpy(ref, qkv, (size_t)N * stride * 4);
    for (int i = 0; i < N; i++) ref_rope(ref + (size_t)i * stride, nh + nkv, hd, pos[i], inv, interleaved);
    size_t cache = (size_t)slots * nkv * sh.max_seq * hd, nsc = (size_t)slots * nkv * sh.max_seq;
    float *dq = dev_from(qkv, (size_t)N * stride * 4), *dinv = dev_from(inv, (size_t)hd / 2 * 4);
    int32_t *dpos = dev_from(pos, sizeof pos), *dslot = dev_from(slot, sizeof slot);
    int8_t *kc = dev_poison(cache), *vc = dev_poison(cache);
    float *ks = dev_poison(nsc * 4), *vs = dev_poison(nsc * 4);
    k_rope_kv_write_int8(dq, stride, N, dpos, dslot, dinv, sh, kc, vc, ks, vs, 0);
    float *out = pg_xmalloc((size_t)N * stride * 4);
    to_host(out, dq, (size_t)N * stride * 4);
    int8_t *hk = pg_xmalloc(cache), *hv = pg_xmalloc(cache);
    float *hks = pg_xmalloc(nsc * 4), *hvs = pg_xmalloc(nsc * 4);
    to_host(hk, kc, cache); to_host(hv, vc, cache);
    to_host(hks, ks, nsc * 4); to_host(hvs, vs, nsc * 4);
    int8_t *q8 = pg_xmalloc((size_t)hd);
    double eq = 0;
    int bad_bytes = 0, bad_scales = 0, zero_scale_seen = 0;
    for (int i = 0; i < N; i++) {
        /* q and k rotated like ref_rope (the kernel writes the rotated k back) */
        double e = rel_err(out + (size_t)i * stride, ref + (size_t)i * stride, (size_t)(nh + nkv) * hd);
        if (e > eq) eq = e;
        for (int kv = 0; kv < 2; kv++)
            for (int h = 0; h < nkv; h++) {
                const float *x = out + (size_t)i * stride + (size_t)(nh + kv * nkv + h) * hd;
                float sref;
                ref_kv_quant_int8(x, hd, q8, &sref);
                size_t at = ((size_t)slot[i] * nkv + h) * sh.max_seq + pos[i];
                const int8_t *got = (kv ? hv : hk) + at * hd;
                float sgot = (kv ? hvs : hks)[at];
                if (memcmp(&sgot, &sref, 4) != 0) bad_scales++;
                if (memcmp(got, q8, (size_t)hd) != 0) bad_bytes++;
                if (sref == 0.f) zero_scale_seen = 1;
            }
    }
    /* v must pass through unchanged */
    for (int i = 0; i < N; i++)
        cr_expect(memcmp(out + (size_t)i * stride + (size_t)(nh + nkv) * hd,
                         qkv + (size_t)i * stride + (size_t)(nh + nkv) * hd, (size_t)nkv * hd * 4) == 0,
                  "v changed in qkv (token %d)", i);
    cr_log_info("rope int8 il=%d l3=%d %d/%d hd=%d: q,k %.3g; bad vectors %d, bad scales %d", interleaved, llama3,
                nh, nkv, hd, eq, bad_bytes, bad_scales);
    cr_expect(eq <= 1e-5, "rope q/k rel err %.3g", eq);
    cr_expect(bad_bytes == 0 && bad_scales == 0, "int8 KV write differs from ref_kv_quant_int8: %d vectors, %d scales",
              bad_bytes, bad_scales);
    cr_expect(zero_scale_seen, "the all-zero head vector was not seen");
    cudaFree(dq); cudaFree(dinv); cudaFree(dpos); cudaFree(dslot);
    cudaFree(kc); cudaFree(vc); cudaFree(ks); cudaFree(vs);
    free(inv); free(qkv); free(ref); free(out); free(hk); free(hv); free(hks); free(hvs); free(q8);
}

Test(kv_cuda, rope_kv_write_int8)
{
    NEED_GPU();
    check_rope_int8(0, 0, 32, 8, 128);
    check_rope_int8(0, 1, 8, 2, 128);
    check_rope_int8(1, 0, 9, 3, 64);
    check_rope_int8(1, 1, 4, 1, 32);
    check_rope_int8(0, 0, 2, 2, 256);
}

/* ---------------------------------------------------------------- caches */
/* A random cache of n_vec head vectors of hd elements, bf16 or int8 (each
 * vector quantized by ref_kv_quant_int8), with its f32 view. Vectors get
 * different magnitudes so the scales differ. */
typedef struct { void *dev_q; float *dev_s; float *f; } kv_cache_t;
static kv_cache_t make_cache(pg_rng *r, size_t n_vec, int hd, int int8)
{
    kv_cache_t c = { 0 };
    size_t n = n_vec * hd;
    c.f = pg_xmalloc(n * 4);
    float *x = pg_xmalloc((size_t)hd * 4);
    if (int8) {
        int8_t *q = pg_xmalloc(n);
        float *s = pg_xmalloc(n_vec * 4);
        for (size_t v = 0; v < n_vec; v++) {
            float mag = 0.25f + 2.f * (float)pg_rng_uniform(r);
            for (int d = 0; d < hd; d++) x[d] = mag * pg_rng_normal(r);
            ref_kv_quant_int8(x, hd, q + v * hd, &s[v]);
            for (int d = 0; d < hd; d++) c.f[v * hd + d] = s[v] * (float)q[v * hd + d];
        }
        c.dev_q = dev_from(q, n);
        c.dev_s = dev_from(s, n_vec * 4);
        free(q); free(s);
    } else {
        uint16_t *b = pg_xmalloc(n * 2);
        for (size_t i = 0; i < n; i++) { b[i] = pg_f32_to_bf16(pg_rng_normal(r)); c.f[i] = pg_bf16_to_f32(b[i]); }
        c.dev_q = dev_from(b, n * 2);
        free(b);
    }
    free(x);
    return c;
}
static void free_cache(kv_cache_t *c) { cudaFree(c->dev_q); cudaFree(c->dev_s); free(c->f); }

/* ---------------------------------------------------------------- decode */
static void check_decode(int int8, int nh, int nkv, int hd, int max_seq)
{
    pg_rng r;
    pg_rng_seed(&r, 1700 + nh + hd + max_seq + int8);
    kc_attn_shape sh = { nh, nkv, hd, max_seq, 0 };
    enum { N = 3 };
    int slots = 3;
    int32_t pos[N] = { max_seq - 1, max_seq / 2 + 3, 0 }, slot[N] = { 1, 2, 0 };
    size_t per_slot = (size_t)nkv * max_seq * hd, nvec = (size_t)slots * nkv * max_seq;
    kv_cache_t K = make_cache(&r, nvec, hd, int8), V = make_cache(&r, nvec, hd, int8);
    int qs = (nh + 2 * nkv) * hd;
    float *q = randn(&r, (size_t)N * qs, 1.f);
    float *ref = pg_xmalloc((size_t)N * nh * hd * 4), *scratch = pg_xmalloc((size_t)max_seq * 4);
    for (int i = 0; i < N; i++)
        ref_attention(ref + (size_t)i * nh * hd, q + (size_t)i * qs, K.f + slot[i] * per_slot,
                      V.f + slot[i] * per_slot, 1, pos[i], nh, nkv, hd, max_seq, scratch);
    float *dq = dev_from(q, (size_t)N * qs * 4), *dout = dev_poison((size_t)N * nh * hd * 4);
    size_t pf = k_attn_decode_part_floats(N, sh);
    float *part = dev_poison(pf * 4);
    KC_CHECK(cudaMemset(part, 0, pf * 4));   /* counters start at 0 */
    int32_t *dpos = dev_from(pos, sizeof pos), *dslot = dev_from(slot, sizeof slot);
    float *out = pg_xmalloc((size_t)N * nh * hd * 4);
    /* batch 3, then batch 1 and batch 2 on the same workspace (counters of
     * every row must be back at zero), then batch 3 again */
    const int batches[4] = { N, 1, 2, N };
    double worst = 0;
    for (int k = 0; k < 4; k++) {
        int n = batches[k];
        KC_CHECK(cudaMemset(dout, 0xff, (size_t)N * nh * hd * 4));
        if (int8)
            k_attn_decode_int8(dq, qs, n, dpos, dslot, K.dev_q, V.dev_q, K.dev_s, V.dev_s, sh, part, dout, nh * hd, 0);
        else
            k_attn_decode(dq, qs, n, dpos, dslot, K.dev_q, V.dev_q, sh, part, dout, nh * hd, 0);
        to_host(out, dout, (size_t)n * nh * hd * 4);
        double e = rel_err(out, ref, (size_t)n * nh * hd);
        if (e > worst) worst = e;
    }
    cr_log_info("attn decode %s %d/%d hd %d max_seq %d: rel err %.3g", int8 ? "int8" : "bf16", nh, nkv, hd, max_seq,
                worst);
    cr_expect(worst <= 1e-5, "attn decode %s heads %d/%d hd %d max_seq %d: rel err %.3g", int8 ? "int8" : "bf16",
              nh, nkv, hd, max_seq, worst);
    free_cache(&K); free_cache(&V);
    cudaFree(dq); cudaFree(dout); cudaFree(part); cudaFree(dpos); cudaFree(dslot);
    free(q); free(ref); free(scratch); free(out);
}

Test(kv_cuda, attn_decode_int8)
{
    NEED_GPU();
    check_decode(1, 32, 32, 128, 700);    /* MHA, Llama-2 head */
    check_decode(1, 32, 8, 128, 1100);    /* GQA 4, Llama-3 */
    check_decode(1, 9, 3, 64, 300);       /* SmolLM2 */
    check_decode(1, 4, 1, 32, 40);        /* tiny, G = 4 */
    check_decode(1, 32, 32, 128, 3000);   /* several chunks per block */
    check_decode(1, 16, 2, 128, 9000);    /* long GQA sequence */
}

Test(kv_cuda, attn_decode_bf16_long)
{
    NEED_GPU();
    check_decode(0, 32, 32, 128, 3000);
    check_decode(0, 16, 2, 128, 9000);
    check_decode(0, 8, 1, 64, 5000);      /* G = 8 */
}

/* The decode step's fused launch against the two launches it replaces:
 * caches, outputs and the rotated k written back must be identical bits.
 * pos_in: the three rows' positions (NULL: the last, a third, 0). */
static void check_fused_at(int int8, int nh, int nkv, int hd, int max_seq, int interleaved, const int32_t *pos_in)
{
    pg_rng r;
    pg_rng_seed(&r, 2100 + nh + hd + max_seq + int8 + interleaved);
    kc_attn_shape sh = { nh, nkv, hd, max_seq, interleaved };
    enum { N = 3 };
    int slots = 3;
    int32_t pos[N] = { max_seq - 1, max_seq / 3, 0 }, slot[N] = { 2, 0, 1 };
    if (pos_in) memcpy(pos, pos_in, sizeof pos);
    size_t nvec = (size_t)slots * nkv * max_seq, esz = int8 ? 1 : 2;
    kv_cache_t K = make_cache(&r, nvec, hd, int8), V = make_cache(&r, nvec, hd, int8);
    void *K2 = dev_from(NULL, nvec * hd * esz), *V2 = dev_from(NULL, nvec * hd * esz);
    float *KS2 = int8 ? dev_from(NULL, nvec * 4) : NULL, *VS2 = int8 ? dev_from(NULL, nvec * 4) : NULL;
    KC_CHECK(cudaMemcpy(K2, K.dev_q, nvec * hd * esz, cudaMemcpyDeviceToDevice));
    KC_CHECK(cudaMemcpy(V2, V.dev_q, nvec * hd * esz, cudaMemcpyDeviceToDevice));
    if (int8) {
        KC_CHECK(cudaMemcpy(KS2, K.dev_s, nvec * 4, cudaMemcpyDeviceToDevice));
        KC_CHECK(cudaMemcpy(VS2, V.dev_s, nvec * 4, cudaMemcpyDeviceToDevice));
    }
    int qs = (nh + 2 * nkv) * hd;
    float *qkv = randn(&r, (size_t)N * qs, 1.f);
    float *inv = pg_xmalloc((size_t)hd / 2 * 4);
    ref_rope_freqs(inv, hd, 10000.f, NULL);
    float *dinv = dev_from(inv, (size_t)hd / 2 * 4);
    float *qa = dev_from(qkv, (size_t)N * qs * 4), *qb = dev_from(qkv, (size_t)N * qs * 4);
    size_t on = (size_t)N * nh * hd, pf = k_attn_decode_part_floats(N, sh);
    float *oa = dev_poison(on * 4), *ob = dev_poison(on * 4);
    float *pa = dev_from(NULL, pf * 4), *pb = dev_from(NULL, pf * 4);
    KC_CHECK(cudaMemset(pa, 0, pf * 4));
    KC_CHECK(cudaMemset(pb, 0, pf * 4));
    int32_t *dpos = dev_from(pos, sizeof pos), *dslot = dev_from(slot, sizeof slot);
    if (int8) {
        k_rope_kv_write_int8(qa, qs, N, dpos, dslot, dinv, sh, K.dev_q, V.dev_q, K.dev_s, V.dev_s, 0);
        k_attn_decode_int8(qa, qs, N, dpos, dslot, K.dev_q, V.dev_q, K.dev_s, V.dev_s, sh, pa, oa, nh * hd, 0);
        k_rope_attn_decode_int8(qb, qs, N, dpos, dslot, dinv, sh, K2, V2, KS2, VS2, pb, ob, nh * hd, 0);
    } else {
        k_rope_kv_write(qa, qs, N, dpos, dslot, dinv, sh, K.dev_q, V.dev_q, 0);
        k_attn_decode(qa, qs, N, dpos, dslot, K.dev_q, V.dev_q, sh, pa, oa, nh * hd, 0);
        k_rope_attn_decode(qb, qs, N, dpos, dslot, dinv, sh, K2, V2, pb, ob, nh * hd, 0);
    }
    size_t cb = nvec * hd * esz;
    unsigned char *ha = pg_xmalloc(cb), *hb = pg_xmalloc(cb);
    int same_k, same_v, same_s = 1, same_o, same_krot = 1;
    to_host(ha, K.dev_q, cb); to_host(hb, K2, cb); same_k = memcmp(ha, hb, cb) == 0;
    to_host(ha, V.dev_q, cb); to_host(hb, V2, cb); same_v = memcmp(ha, hb, cb) == 0;
    if (int8) {
        to_host(ha, K.dev_s, nvec * 4); to_host(hb, KS2, nvec * 4); same_s &= memcmp(ha, hb, nvec * 4) == 0;
        to_host(ha, V.dev_s, nvec * 4); to_host(hb, VS2, nvec * 4); same_s &= memcmp(ha, hb, nvec * 4) == 0;
    }
    float *hoa = pg_xmalloc(on * 4), *hob = pg_xmalloc(on * 4);
    to_host(hoa, oa, on * 4); to_host(hob, ob, on * 4);
    same_o = memcmp(hoa, hob, on * 4) == 0;
    if (int8) {   /* both write the rotated k back into the row */
        float *ra = pg_xmalloc((size_t)N * qs * 4), *rb = pg_xmalloc((size_t)N * qs * 4);
        to_host(ra, qa, (size_t)N * qs * 4); to_host(rb, qb, (size_t)N * qs * 4);
        for (int i = 0; i < N; i++)
            same_krot &= memcmp(ra + (size_t)i * qs + (size_t)nh * hd, rb + (size_t)i * qs + (size_t)nh * hd,
                                (size_t)2 * nkv * hd * 4) == 0;
        free(ra); free(rb);
    }
    cr_log_info("fused rope+attn %s %d/%d hd %d max_seq %d il %d: k %d v %d scales %d out %d krot %d",
                int8 ? "int8" : "bf16", nh, nkv, hd, max_seq, interleaved, same_k, same_v, same_s, same_o, same_krot);
    cr_expect(same_k && same_v && same_s, "fused decode wrote a different cache (%s, %d/%d hd %d)",
              int8 ? "int8" : "bf16", nh, nkv, hd);
    cr_expect(same_o, "fused decode output differs from rope_kv_write + attn_decode (%s, %d/%d hd %d)",
              int8 ? "int8" : "bf16", nh, nkv, hd);
    cr_expect(same_krot, "rotated k written back differs");
    free_cache(&K); free_cache(&V);
    cudaFree(K2); cudaFree(V2); cudaFree(KS2); cudaFree(VS2); cudaFree(dinv); cudaFree(qa); cudaFree(qb);
    cudaFree(oa); cudaFree(ob); cudaFree(pa); cudaFree(pb); cudaFree(dpos); cudaFree(dslot);
    free(qkv); free(inv); free(ha); free(hb); free(hoa); free(hob);
}
static void check_fused(int int8, int nh, int nkv, int hd, int max_seq, int interleaved)
{
    check_fused_at(int8, nh, nkv, hd, max_seq, interleaved, NULL);
}

Test(kv_cuda, rope_attn_decode_fused)
{
    NEED_GPU();
    for (int i8 = 0; i8 < 2; i8++) {
        check_fused(i8, 32, 32, 128, 700, 0);
        check_fused(i8, 32, 8, 128, 3000, 0);
        check_fused(i8, 9, 3, 64, 300, 1);
        check_fused(i8, 4, 1, 32, 40, 1);
        check_fused(i8, 4, 2, 16, 90, 0);
    }
}

/* The fused kernel streams a split's first two chunks in before the QKV
 * product finishes, leaving out the new position, which the writing block
 * puts into the staged chunk itself; a later chunk is read after the write.
 * Positions that put the new token in each place: the second staged chunk
 * (at its first row: nothing else of that chunk is fetched early, and at
 * its last row), and the third chunk of a split (read in the loop). The
 * split count depends on the SM count; it is read back from the workspace
 * size (n_kv_heads + n_heads * nsplit * (head_dim + 2) floats per row). */
Test(kv_cuda, rope_attn_decode_fused_new_position_in_each_stage)
{
    NEED_GPU();
    const int nh = 16, nkv = 16, hd = 64;
    for (int i8 = 0; i8 < 2; i8++) {
        const int ch = KC_ATTN_CHUNK * (i8 ? 2 : 1);
        kc_attn_shape big = { nh, nkv, hd, 1 << 20, 0 };
        int ns = (int)((k_attn_decode_part_floats(1, big) - nkv) / ((size_t)nh * (hd + 2)));
        cr_assert(ns >= 1 && ns <= 256, "split count %d", ns);
        int max_seq = 3 * ns * ch + 8;
        kc_attn_shape sh = { nh, nkv, hd, max_seq, 0 };
        cr_assert_eq((k_attn_decode_part_floats(1, sh) - nkv) / ((size_t)nh * (hd + 2)), (size_t)ns);
        /* len (2 ns - 1) ch + 1: 2 ns chunks, 2 per split, new token at row 0 of the second;
         * len 2 ns ch: at the last row of the second; len 3 ns ch - 5: 3 chunks per split */
        const int32_t pos[3] = { (2 * ns - 1) * ch, 2 * ns * ch - 1, 3 * ns * ch - 6 };
        cr_log_info("fused stages %s: %d splits, positions %d %d %d", i8 ? "int8" : "bf16", ns, pos[0], pos[1],
                    pos[2]);
        check_fused_at(i8, nh, nkv, hd, max_seq, 0, pos);
    }
}

/* ---------------------------------------------------------------- prefill */
static void check_prefill_int8(int nh, int nkv, int hd, int n, int pos0, double tol)
{
    pg_rng r;
    pg_rng_seed(&r, 1800 + nh + hd + n + pos0);
    int max_seq = pos0 + n + 5, slots = 2, slot = 1;
    kc_attn_shape sh = { nh, nkv, hd, max_seq, 0 };
    size_t per_slot = (size_t)nkv * max_seq * hd, nvec = (size_t)slots * nkv * max_seq;
    kv_cache_t K = make_cache(&r, nvec, hd, 1), V = make_cache(&r, nvec, hd, 1);
    int qs = (nh + 2 * nkv) * hd;
    float *q = randn(&r, (size_t)n * qs, 1.f);
    float *qc = pg_xmalloc((size_t)n * nh * hd * 4);
    for (int i = 0; i < n; i++) memcpy(qc + (size_t)i * nh * hd, q + (size_t)i * qs, (size_t)nh * hd * 4);
    float *ref = pg_xmalloc((size_t)n * nh * hd * 4), *scratch = pg_xmalloc((size_t)max_seq * 4);
    ref_attention(ref, qc, K.f + slot * per_slot, V.f + slot * per_slot, n, pos0, nh, nkv, hd, max_seq, scratch);
    float *dq = dev_from(q, (size_t)n * qs * 4), *dout = dev_poison((size_t)n * nh * hd * 4);
    k_attn_prefill_int8(dq, qs, n, pos0, slot, K.dev_q, V.dev_q, K.dev_s, V.dev_s, sh, dout, nh * hd, 0);
    float *out = pg_xmalloc((size_t)n * nh * hd * 4);
    to_host(out, dout, (size_t)n * nh * hd * 4);
    double e = rel_err(out, ref, (size_t)n * nh * hd);
    cr_log_info("attn prefill int8 %d/%d hd %d n %d pos0 %d: rel err %.3g", nh, nkv, hd, n, pos0, e);
    cr_expect(e <= tol, "attn prefill int8 heads %d/%d hd %d n %d pos0 %d: rel err %.3g > %.g", nh, nkv, hd, n,
              pos0, e, tol);
    free_cache(&K); free_cache(&V);
    cudaFree(dq); cudaFree(dout);
    free(q); free(qc); free(ref); free(scratch); free(out);
}

Test(kv_cuda, attn_prefill_int8)
{
    NEED_GPU();
    /* tensor-core path: bf16 Q, P and dequantized K/V tiles by design -> 1e-2 */
    check_prefill_int8(8, 2, 128, 150, 0, 1e-2);
    check_prefill_int8(8, 8, 128, 64, 70, 1e-2);
    check_prefill_int8(9, 3, 64, 100, 29, 1e-2);
    check_prefill_int8(8, 2, 128, 5, 700, 1e-2);   /* short chunk after a long context */
    /* scalar path: fp32 throughout */
    check_prefill_int8(4, 1, 32, 20, 5, 1e-5);
    check_prefill_int8(9, 3, 64, 7, 3, 1e-5);
}

/* ---------------------------------------------------------------- engine */
static engine *make_engine_on(const model *m, engine_device dev, kv_dtype kv, int slots, int graphs, int max_seq)
{
    engine_opts o;
    engine_opts_default(&o);
    o.device = dev;
    o.n_threads = 4;
    o.max_slots = slots;
    o.max_seq_len = max_seq;
    o.use_graphs = graphs;
    o.kv = kv;
    return te_create(m, &o, 1);
}
static engine *make_engine(const model *m, kv_dtype kv, int slots, int graphs, int max_seq)
{
    return make_engine_on(m, ENGINE_DEVICE_CUDA, kv, slots, graphs, max_seq);
}
Test(kv_cuda, engine_refuses_f32_kv)
{
    NEED_GPU();
    model_load_opts lo = { 0 };
    lo.random_preset = "tiny-llama3";
    lo.seed = 5;
    lo.random_dtype = PG_BF16;
    model *m = NULL;
    pg_err err = { 0 };
    cr_assert_eq(model_load(&lo, &m, &err), PG_OK, "%s", err.msg);
    engine_opts o;
    engine_opts_default(&o);
    o.device = ENGINE_DEVICE_CUDA;
    o.max_seq_len = 64;
    o.kv = KV_F32;
    engine *e = NULL;
    int rc = engine_create(m, &o, &e, &err);
    cr_expect_neq(rc, PG_OK, "f32 KV on CUDA was accepted");
    cr_expect(strstr(err.msg, "f32") != NULL, "error does not name the dtype: %s", err.msg);
    if (e) engine_free(e);
    model_free(m);
}

Test(kv_cuda, engine_int8_graph_equals_eager_and_kv_bytes)
{
    NEED_GPU();
    model_load_opts lo = { 0 };
    lo.random_preset = "tiny-llama3";
    lo.seed = 77;
    lo.random_dtype = PG_BF16;
    model *m = NULL;
    pg_err err = { 0 };
    cr_assert_eq(model_load(&lo, &m, &err), PG_OK, "%s", err.msg);
    int V = m->cfg.vocab_size;
    engine *ea = make_engine(m, KV_INT8, 2, 1, 256);
    engine *eb = make_engine(m, KV_INT8, 2, 0, 256);
    engine *e16 = make_engine(m, KV_BF16, 2, 1, 256);
    engine_info_t ia, i16;
    engine_info(ea, &ia);
    engine_info(e16, &i16);
    const model_config *c = &m->cfg;
    size_t per_tok8 = (size_t)c->n_layers * 2 * c->n_kv_heads * (c->head_dim + 4);
    size_t per_tok16 = (size_t)c->n_layers * 2 * c->n_kv_heads * c->head_dim * 2;
    cr_expect_eq(ia.kv_bytes_per_token, per_tok8, "int8 kv bytes/token %zu, expected %zu", ia.kv_bytes_per_token, per_tok8);
    cr_expect_eq(i16.kv_bytes_per_token, per_tok16);
    cr_expect_eq(ia.kv_bytes, per_tok8 * 2 * 256, "int8 kv_bytes %zu", ia.kv_bytes);
    cr_expect_eq(i16.kv_bytes, per_tok16 * 2 * 256, "bf16 kv_bytes %zu", i16.kv_bytes);
    printf("engine_int8: kv bytes per token int8 %zu vs bf16 %zu (%.3f); cache %zu vs %zu bytes\n",
           ia.kv_bytes_per_token, i16.kv_bytes_per_token, (double)ia.kv_bytes_per_token / i16.kv_bytes_per_token,
           ia.kv_bytes, i16.kv_bytes);
    engine_free(e16);

    te_graph_equals_eager(ea, eb, V, 24, "int8 KV");
    engine_free(ea); engine_free(eb); model_free(m);
}

/* A short prompt chunk after a long context (the engine sends it to the
 * decode attention kernel, one row per token): the CUDA engine's logits
 * against the CPU engine's with the same KV format, and the two-chunk
 * prefill against a one-chunk prefill on the GPU. */
static void check_short_chunk(kv_dtype kv)
{
    model_load_opts lo = { 0 };
    lo.random_preset = "tiny-llama3";
    lo.seed = 31;
    lo.random_dtype = PG_BF16;
    model *m = NULL;
    pg_err err = { 0 };
    cr_assert_eq(model_load(&lo, &m, &err), PG_OK, "%s", err.msg);
    int V = m->cfg.vocab_size;
    enum { N1 = 300, N2 = 9 };
    int32_t toks[N1 + N2];
    pg_rng r;
    pg_rng_seed(&r, 12);
    for (int i = 0; i < N1 + N2; i++) toks[i] = (int32_t)(pg_rng_u64(&r) % (uint64_t)V);
    engine *ec = make_engine_on(m, ENGINE_DEVICE_CPU, kv, 1, 1, 512);
    engine *eg = make_engine_on(m, ENGINE_DEVICE_CUDA, kv, 1, 1, 512);
    engine *e1 = make_engine_on(m, ENGINE_DEVICE_CUDA, kv, 1, 1, 512);
    engine_result res[1];
    engine_row a = { 0, toks, N1, 0, 1, 1 }, b = { 0, toks + N1, N2, N1, 1, 1 }, all = { 0, toks, N1 + N2, 0, 1, 1 };
    te_step(ec, &a, 1, res); te_step(ec, &b, 1, res);
    te_step(eg, &a, 1, res); te_step(eg, &b, 1, res);
    te_step(e1, &all, 1, res);
    float *lc = pg_xmalloc((size_t)V * 4), *lg = pg_xmalloc((size_t)V * 4), *l1 = pg_xmalloc((size_t)V * 4);
    te_logits(ec, 0, lc); te_logits(eg, 0, lg); te_logits(e1, 0, l1);
    double e_cpu = rel_err(lg, lc, (size_t)V), e_one = rel_err(lg, l1, (size_t)V);
    cr_log_info("short chunk after %d tokens (kv %s): logits rel err vs cpu %.3g, vs one-chunk prefill %.3g", N1,
                kv == KV_INT8 ? "int8" : "bf16", e_cpu, e_one);
    cr_expect(e_cpu <= 1e-2, "short chunk after a long context (kv %d): CUDA vs CPU logits rel err %.3g", (int)kv, e_cpu);
    cr_expect(e_one <= 1e-2, "short chunk after a long context (kv %d): vs one-chunk prefill %.3g", (int)kv, e_one);
    free(lc); free(lg); free(l1);
    engine_free(ec); engine_free(eg); engine_free(e1); model_free(m);
}

Test(kv_cuda, engine_short_chunk_after_long_context)
{
    NEED_GPU();
    check_short_chunk(KV_BF16);
    check_short_chunk(KV_INT8);
}

/* Greedy n_new tokens; logits of every step kept in lg[n_new][V] when lg. */
static void greedy(engine *e, const int32_t *ids, int n, int n_new, int32_t *out, float *lg, int V)
{
    engine_result r[1];
    engine_row row = { 0, ids, n, 0, 1, 1 };
    te_step(e, &row, 1, r);
    for (int i = 0; i < n_new; i++) {
        out[i] = r[0].token;
        if (lg) te_logits(e, 0, lg + (size_t)i * V);
        if (i + 1 == n_new) break;
        engine_row d = { 0, &out[i], 1, n + i, 1, 0 };
        te_step(e, &d, 1, r);
    }
}

/* Greedy 32 tokens of every prompt of tests/fixtures/gpu_prompts.txt on
 * engine `e` against reference engine `ref` (the default model or
 * PEREGRINE_GPU_GGUF). At a divergence the reference's top-2 logit gap, the
 * int8 token's rank in the reference and the largest logit change at that
 * step are printed; it must be a near-tie (rank 2, gap < change). */
static void greedy_compare(engine_device ref_dev, kv_dtype ref_kv, const char *what)
{
    char def[1024];
    const char *path = te_gpu_gguf(def, sizeof def);
    pg_err err = { 0 };
    model_load_opts lo = { 0 };
    lo.path = path;
    model *m = NULL;
    cr_assert_eq(model_load(&lo, &m, &err), PG_OK, "%s: %s", path, err.msg);
    cr_assert(m->tok, "%s has no tokenizer", path);
    FILE *f = fopen("tests/fixtures/gpu_prompts.txt", "r");
    cr_assert(f, "tests/fixtures/gpu_prompts.txt missing (run from the repository root)");
    engine *er = make_engine_on(m, ref_dev, ref_kv, 1, 1, 512);
    engine *e8 = make_engine(m, KV_INT8, 1, 1, 512);
    int V = m->cfg.vocab_size;
    enum { N_NEW = 32 };
    float *lr = pg_xmalloc((size_t)N_NEW * V * 4), *l8 = pg_xmalloc((size_t)N_NEW * V * 4);
    sampler_params gp;
    sampler_params_default(&gp);
    gp.temperature = 0.f;
    char line[2048];
    int n_prompts = 0, n_equal = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\n");
        if (len == 0) continue;
        int32_t *ids = NULL;
        int n = 0;
        cr_assert_eq(tok_encode(m->tok, line, len, tok_add_bos(m->tok), 0, &ids, &n, &err), PG_OK, "%s", err.msg);
        int32_t tr[N_NEW], t8[N_NEW];
        cr_assert_eq(engine_slot_reset(er, 0, &gp, &err), PG_OK);
        cr_assert_eq(engine_slot_reset(e8, 0, &gp, &err), PG_OK);
        greedy(er, ids, n, N_NEW, tr, lr, V);
        greedy(e8, ids, n, N_NEW, t8, l8, V);
        int first = -1;
        for (int i = 0; i < N_NEW; i++) if (tr[i] != t8[i]) { first = i; break; }
        /* logits agreement over the steps both runs share (same tokens so far) */
        int upto = first < 0 ? N_NEW : first + 1;
        double worst = 0;
        for (int i = 0; i < upto; i++) {
            double e = rel_err(l8 + (size_t)i * V, lr + (size_t)i * V, (size_t)V);
            if (e > worst) worst = e;
        }
        if (first < 0) {
            n_equal++;
            printf("kv int8 greedy vs %s, prompt %d (%d tokens): 32/32 tokens equal; logits rel err <= %.3g\n",
                   what, n_prompts, n, worst);
        } else {
            const float *lf = lr + (size_t)first * V, *l8f = l8 + (size_t)first * V;
            float a = lf[tr[first]], b = lf[t8[first]], change = 0.f;
            int rank = 1;   /* 1-based rank of the int8 run's token in the reference's logits */
            for (int j = 0; j < V; j++) {
                if (lf[j] > b || (lf[j] == b && j < t8[first])) rank++;
                float d = fabsf(l8f[j] - lf[j]);
                if (d > change) change = d;
            }
            printf("kv int8 greedy vs %s, prompt %d (%d tokens): diverges at token %d: %s %d (logit %.5f) vs cuda "
                   "int8 KV %d (%s logit %.5f, rank %d), gap %.5f, largest logit change at that step %.5f; logits "
                   "rel err up to there %.3g\n",
                   what, n_prompts, n, first, what, tr[first], a, t8[first], what, b, rank, a - b, change, worst);
            cr_expect(rank == 2 && a - b < change,
                      "prompt %d: cuda int8 KV tokens diverge from %s at %d: not a near-tie (gap %.4f, rank %d, "
                      "largest logit change %.4f)", n_prompts, what, first, a - b, rank, change);
        }
        free(ids);
        n_prompts++;
    }
    fclose(f);
    printf("kv int8 greedy vs %s: %d of %d prompts 32/32 equal\n", what, n_equal, n_prompts);
    cr_expect(n_prompts > 0);
    free(lr); free(l8);
    engine_free(er); engine_free(e8); model_free(m);
}

/* The format's own effect: int8 KV against bf16 KV, both on the GPU. */
Test(kv_cuda, engine_int8_greedy_matches_bf16, .timeout = 600)
{
    NEED_GPU();
    greedy_compare(ENGINE_DEVICE_CUDA, KV_BF16, "cuda bf16 KV");
}

/* The kernels: the CUDA int8 cache against the CPU engine's int8 cache (the
 * same quantizer, the CPU twin of every kernel). */
Test(kv_cuda, engine_int8_greedy_matches_cpu_int8, .timeout = 600)
{
    NEED_GPU();
    greedy_compare(ENGINE_DEVICE_CPU, KV_INT8, "cpu int8 KV");
}

#else
Test(kv_cuda, skipped) { cr_skip("built without CUDA"); }
#endif
