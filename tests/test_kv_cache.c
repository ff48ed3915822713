/* tests/test_kv_cache.c — the bf16 and int8 KV cache (kernels.h conventions).
 *
 * Kernels, on fresh random inputs (outputs poisoned first):
 *   ref_attention_bf16 / _int8 == ref_attention over the widened / dequantized
 *   cache, bitwise (that is their definition); cpu_attention_bf16 / _int8
 *   against them <= 1e-5 (f32 vs f32), over odd head_dim and context lengths
 *   and GQA ratios 1..8; positions past the causal limit are never read.
 *   The quantization error itself (bf16 / int8 cache vs the f32 cache on the
 *   same inputs) is measured and printed; bf16 is held to the bf16 threshold
 *   (1e-2), int8 to the int8 one (1e-2).
 * CPU engine (HF fixtures, always run): every KV type gives chunked prefill
 *   == token-by-token bitwise, engine_info's KV bytes match the layout, and
 *   bf16 / int8 logits of whole random models stay within 5e-2 of the f32
 *   cache's (the bound for whole-model logits under int8; measured
 *   values are printed).
 * Default model (cr_skip when absent): greedy ids with int8 (and bf16) KV vs
 *   f32 KV, 32 tokens on tests/fixtures/gpu_prompts.txt. A prompt may
 *   diverge only at a near-tie: at the first differing step the quantized
 *   run's token must be the f32 run's runner-up, with a logit gap smaller
 *   than the largest logit change the quantized cache caused at that step;
 *   the gap is printed.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model/engine.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "tests/test_util.h"
#include "tests/engine_test_util.h"

/* ---------------------------------------------------------------- helpers */

/* ---------------------------------------------------------------- kernels */
typedef struct {
    int n_q, pos0, nh, nkv, hd, max_seq;
} att_shape;

typedef struct {
    double bf16_vs_f32, int8_vs_f32;   /* quantization error of the output */
    double fast_vs_ref;                /* worst cpu_* vs ref_* of the shape */
} att_errs;

/* One shape: f32 cache -> bf16 and int8 caches (as the engine writes them),
 * their widened / dequantized f32 copies, and every kernel against its reference. */
static att_errs check_shape(att_shape s, uint64_t seed) {
    pg_rng r;
    pg_rng_seed(&r, seed);
    size_t nc = (size_t)s.nkv * s.max_seq * s.hd, nq = (size_t)s.n_q * s.nh * s.hd;
    size_t ns = (size_t)s.nkv * s.max_seq;
    float *k = pg_xmalloc(nc * 4), *v = pg_xmalloc(nc * 4), *q = pg_xmalloc(nq * 4);
    uint16_t *kb = pg_xmalloc(nc * 2), *vb = pg_xmalloc(nc * 2);
    int8_t *k8 = pg_xmalloc(nc), *v8 = pg_xmalloc(nc);
    float *ks = pg_xmalloc(ns * 4), *vs = pg_xmalloc(ns * 4);
    float *kwb = pg_xmalloc(nc * 4), *vwb = pg_xmalloc(nc * 4);   /* bf16 widened */
    float *kd8 = pg_xmalloc(nc * 4), *vd8 = pg_xmalloc(nc * 4);   /* int8 dequantized */
    float *o_f32 = pg_xmalloc(nq * 4), *o_ref = pg_xmalloc(nq * 4), *o_def = pg_xmalloc(nq * 4);
    float *o_fast = pg_xmalloc(nq * 4);
    float *scratch = pg_xmalloc((size_t)s.max_seq * 4);
    fill_normal(&r, k, nc, 1.0f);
    fill_normal(&r, v, nc, 1.0f);
    fill_normal(&r, q, nq, 1.0f);
    for (size_t i = 0; i < nc; i++) {
        kb[i] = pg_f32_to_bf16(k[i]);
        vb[i] = pg_f32_to_bf16(v[i]);
        kwb[i] = pg_bf16_to_f32(kb[i]);
        vwb[i] = pg_bf16_to_f32(vb[i]);
    }
    for (size_t hp = 0; hp < ns; hp++) {   /* one (kv head, position) vector at a time */
        size_t o = hp * s.hd;
        ref_kv_quant_int8(k + o, s.hd, k8 + o, &ks[hp]);
        ref_kv_quant_int8(v + o, s.hd, v8 + o, &vs[hp]);
        for (int d = 0; d < s.hd; d++) {
            kd8[o + d] = ks[hp] * (float)k8[o + d];
            vd8[o + d] = vs[hp] * (float)v8[o + d];
        }
    }
    att_errs e;
    poison(o_f32, nq);
    ref_attention(o_f32, q, k, v, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);

    /* bf16: reference == ref_attention over the widened cache, bitwise */
    poison(o_ref, nq);
    poison(o_def, nq);
    ref_attention_bf16(o_ref, q, kb, vb, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);
    ref_attention(o_def, q, kwb, vwb, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);
    cr_assert(memcmp(o_ref, o_def, nq * 4) == 0, "bf16 ref != ref over widened cache (hd %d)", s.hd);
    poison(o_fast, nq);
    cpu_attention_bf16(o_fast, q, kb, vb, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, 0, s.nh / 2);
    cpu_attention_bf16(o_fast, q, kb, vb, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, s.nh / 2, s.nh);
    double eb = rel_err(o_fast, o_ref, nq);
    cr_assert(eb <= 1e-5, "cpu bf16 vs ref: %.3g (n_q %d pos0 %d nh %d nkv %d hd %d)", eb, s.n_q, s.pos0,
              s.nh, s.nkv, s.hd);
    e.bf16_vs_f32 = rel_err(o_ref, o_f32, nq);
    float *o_fast_b = pg_xmalloc(nq * 4);
    memcpy(o_fast_b, o_fast, nq * 4);

    /* int8: reference == ref_attention over the dequantized cache, bitwise */
    poison(o_ref, nq);
    poison(o_def, nq);
    ref_attention_int8(o_ref, q, k8, ks, v8, vs, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);
    ref_attention(o_def, q, kd8, vd8, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);
    cr_assert(memcmp(o_ref, o_def, nq * 4) == 0, "int8 ref != ref over dequantized cache (hd %d)", s.hd);
    poison(o_fast, nq);
    cpu_attention_int8(o_fast, q, k8, ks, v8, vs, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, 0, 1);
    cpu_attention_int8(o_fast, q, k8, ks, v8, vs, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, 1, s.nh);
    double e8 = rel_err(o_fast, o_ref, nq);
    cr_assert(e8 <= 1e-5, "cpu int8 vs ref: %.3g (n_q %d pos0 %d nh %d nkv %d hd %d)", e8, s.n_q, s.pos0,
              s.nh, s.nkv, s.hd);
    e.int8_vs_f32 = rel_err(o_ref, o_f32, nq);
    e.fast_vs_ref = fmax(eb, e8);

    /* causality: positions past the last query are never read (huge keys, NaN values) */
    int n_ctx = s.pos0 + s.n_q;
    for (int h = 0; h < s.nkv; h++)
        for (int p = n_ctx; p < s.max_seq; p++) {
            size_t hp = (size_t)h * s.max_seq + p;
            ks[hp] = 1e30f;
            vs[hp] = NAN;
            for (int d = 0; d < s.hd; d++) {
                k8[hp * s.hd + d] = 127;
                kb[hp * s.hd + d] = pg_f32_to_bf16(1e30f);
                vb[hp * s.hd + d] = pg_f32_to_bf16(NAN);
            }
        }
    float *o_again = pg_xmalloc(nq * 4);
    poison(o_again, nq);
    cpu_attention_int8(o_again, q, k8, ks, v8, vs, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, 0, s.nh);
    cr_assert(memcmp(o_again, o_fast, nq * 4) == 0, "int8 attention read past the causal limit");
    poison(o_again, nq);
    ref_attention_int8(o_again, q, k8, ks, v8, vs, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch);
    cr_assert(memcmp(o_again, o_ref, nq * 4) == 0, "int8 reference read past the causal limit");
    poison(o_again, nq);
    cpu_attention_bf16(o_again, q, kb, vb, s.n_q, s.pos0, s.nh, s.nkv, s.hd, s.max_seq, scratch, 0, s.nh);
    cr_assert(memcmp(o_again, o_fast_b, nq * 4) == 0, "bf16 attention read past the causal limit");

    free(k); free(v); free(q); free(kb); free(vb); free(k8); free(v8); free(ks); free(vs);
    free(kwb); free(vwb); free(kd8); free(vd8); free(o_f32); free(o_ref); free(o_def);
    free(o_fast); free(o_fast_b); free(o_again); free(scratch);
    return e;
}

Test(kv_kernels, bf16_int8_against_reference) {
    static const att_shape shapes[] = {
        {1, 37, 8, 2, 64, 96},     /* decode, GQA 4:1 */
        {5, 0, 8, 2, 64, 96},      /* prefill from 0 */
        {6, 20, 9, 3, 64, 64},     /* chunk after 20 cached: default model shape, GQA 3:1 */
        {3, 10, 4, 4, 20, 40},     /* MHA, head_dim 20 (not a multiple of 8) */
        {2, 44, 8, 1, 7, 47},      /* MQA 8:1, odd head_dim 7, odd context */
        {7, 13, 6, 3, 37, 33},     /* GQA 2:1, odd head_dim 37 (16 + 16 + 5) */
        {4, 120, 16, 2, 128, 129}, /* head_dim 128, long odd context */
        {1, 0, 2, 1, 24, 5},       /* first token: a context of one */
        {64, 0, 9, 3, 64, 64},     /* a whole prefill chunk of the CPU engine */
    };
    double worst_b = 0, worst_8 = 0, worst_fast = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        att_errs e = check_shape(shapes[i], 100 + i);
        cr_log_info("attention n_q %d pos0 %d heads %d/%d head_dim %d: bf16 KV vs f32 KV %.3g, "
                    "int8 KV vs f32 KV %.3g", shapes[i].n_q, shapes[i].pos0, shapes[i].nh, shapes[i].nkv,
                    shapes[i].hd, e.bf16_vs_f32, e.int8_vs_f32);
        if (e.bf16_vs_f32 > worst_b) worst_b = e.bf16_vs_f32;
        if (e.int8_vs_f32 > worst_8) worst_8 = e.int8_vs_f32;
        worst_fast = fmax(worst_fast, e.fast_vs_ref);
    }
    fprintf(stderr, "kv_kernels: worst over %zu shapes: cpu_attention_bf16/_int8 vs reference %.3g; "
            "output vs the f32 cache: bf16 KV %.3g, int8 KV %.3g\n", sizeof shapes / sizeof *shapes,
            worst_fast, worst_b, worst_8);
    cr_assert(worst_b <= 1e-2, "bf16 KV attention vs f32 KV: %.3g", worst_b);
    cr_assert(worst_8 <= 1e-2, "int8 KV attention vs f32 KV: %.3g", worst_8);
}

/* ref_kv_quant_int8 properties the attention relies on: codes in [-127, 127],
 * the largest magnitude maps to +-127, and |x - s q| <= s/2 (up to rounding). */
Test(kv_kernels, int8_quantizer_bounds) {
    pg_rng r;
    pg_rng_seed(&r, 7);
    for (int it = 0; it < 200; it++) {
        int n = 1 + (int)(pg_rng_u64(&r) % 160);
        float x[160], s;
        int8_t qv[160];
        fill_normal(&r, x, (size_t)n, it % 2 ? 30.0f : 0.01f);
        ref_kv_quant_int8(x, n, qv, &s);
        int has127 = 0;
        for (int i = 0; i < n; i++) {
            cr_assert(qv[i] >= -127 && qv[i] <= 127);
            has127 |= qv[i] == 127 || qv[i] == -127;
            cr_assert(fabsf(x[i] - s * (float)qv[i]) <= 0.5f * s * (1.0f + 1e-5f) + 1e-30f,
                      "element %d: x %g s %g q %d", i, x[i], s, qv[i]);
        }
        cr_assert(has127, "no element reached the full code range");
    }
    float z[9] = {0}, s = -1.0f;
    int8_t qz[9];
    memset(qz, 55, sizeof qz);
    ref_kv_quant_int8(z, 9, qz, &s);
    cr_assert(s == 0.0f);
    for (int i = 0; i < 9; i++) cr_assert(qz[i] == 0);
}

/* ---------------------------------------------------------------- CPU engine */
static engine *make_engine(const model *m, kv_dtype kv, int max_seq) {
    engine_opts o;
    engine_opts_default(&o);
    o.device = ENGINE_DEVICE_CPU;
    o.max_seq_len = max_seq;
    o.n_threads = 2;
    o.kv = kv;
    return te_create(m, &o, 0);
}

static int32_t step(engine *e, const int32_t *ids, int n, int pos) {
    engine_row row = {.slot = 0, .tokens = ids, .n_tokens = n, .pos = pos, .sample = 1};
    engine_result res;
    pg_err err = {0};
    cr_assert_eq(engine_step(e, &row, 1, &res, &err), PG_OK, "%s", err.msg);
    return res.token;
}

static const kv_dtype KV_ALL[3] = {KV_F32, KV_BF16, KV_INT8};

/* KV bytes as the layout holds them: K and V elements, plus int8's scales. */
Test(kv_engine, info_reports_true_kv_bytes) {
    model *m = te_load("tests/fixtures/hf/gqa-bf16-tied");
    const model_config *c = &m->cfg;
    size_t per_tok[3];
    for (int i = 0; i < 3; i++) {
        engine *e = make_engine(m, KV_ALL[i], 48);
        engine_info_t info;
        engine_info(e, &info);
        size_t esz = KV_ALL[i] == KV_F32 ? 4 : KV_ALL[i] == KV_BF16 ? 2 : 1;
        size_t scales = KV_ALL[i] == KV_INT8 ? (size_t)c->n_kv_heads * 4 : 0;   /* per layer, K or V */
        size_t want = (size_t)c->n_layers * 2 * ((size_t)c->n_kv_heads * c->head_dim * esz + scales);
        cr_assert_eq(info.kv_bytes_per_token, want, "kv %s: %zu bytes/token, layout says %zu",
                     engine_kv_name(KV_ALL[i]), info.kv_bytes_per_token, want);
        cr_assert_eq(info.kv_bytes, want * 48, "kv %s: %zu bytes", engine_kv_name(KV_ALL[i]), info.kv_bytes);
        per_tok[i] = info.kv_bytes_per_token;
        engine_free(e);
    }
    cr_assert_eq(per_tok[1] * 2, per_tok[0]);
    cr_log_info("kv bytes/token (fixture): f32 %zu, bf16 %zu, int8 %zu", per_tok[0], per_tok[1], per_tok[2]);
    model_free(m);
}

/* A prompt prefilled at once == in chunks of 1..4 tokens, bitwise, for every
 * KV type: a token's K/V are stored (and quantized) before any query reads
 * them, whatever chunk they arrive in. */
Test(kv_engine, chunked_prefill_equals_token_by_token) {
    model *m = te_load("tests/fixtures/hf/gqa-bf16-tied");
    int vocab = m->cfg.vocab_size;
    int32_t ids[23];
    for (int i = 0; i < 23; i++) ids[i] = (int32_t)((i * 37 + 11) % vocab);
    float *all = pg_xmalloc((size_t)23 * vocab * 4), *lg = pg_xmalloc((size_t)vocab * 4);
    pg_err err = {0};
    for (int i = 0; i < 3; i++) {
        engine *e = make_engine(m, KV_ALL[i], 32);
        te_reset_greedy(e, 0);
        engine_keep_all_logits(e, 1);
        step(e, ids, 23, 0);
        engine_keep_all_logits(e, 0);
        for (int j = 0; j < 23; j++) cr_assert_eq(engine_get_logits_at(e, j, all + (size_t)j * vocab, &err), PG_OK);
        for (int chunk = 1; chunk <= 4; chunk++) {
            te_reset_greedy(e, 0);
            for (int pos = 0; pos < 23; pos += chunk) {
                int n = 23 - pos < chunk ? 23 - pos : chunk;
                step(e, ids + pos, n, pos);
                poison(lg, (size_t)vocab);
                cr_assert_eq(engine_get_logits(e, 0, lg, &err), PG_OK);
                cr_assert(memcmp(lg, all + (size_t)(pos + n - 1) * vocab, (size_t)vocab * 4) == 0,
                          "kv %s chunk %d pos %d: logits differ", engine_kv_name(KV_ALL[i]), chunk, pos);
            }
        }
        engine_free(e);
    }
    free(all);
    free(lg);
    model_free(m);
}

/* Logits of every prompt position with a bf16 / int8 cache vs the f32 cache. */
Test(kv_engine, logits_close_to_f32_cache) {
    const char *fixtures[] = {"tests/fixtures/hf/gqa-bf16-tied", "tests/fixtures/hf/llama3-f16",
                              "tests/fixtures/hf/mha-f32"};
    for (size_t f = 0; f < 3; f++) {
        model *m = te_load(fixtures[f]);
        int vocab = m->cfg.vocab_size, np = 40;
        int32_t ids[40];
        for (int i = 0; i < np; i++) ids[i] = (int32_t)((i * 53 + 5) % vocab);
        float *ref = pg_xmalloc((size_t)np * vocab * 4), *out = pg_xmalloc((size_t)np * vocab * 4);
        pg_err err = {0};
        for (int i = 0; i < 3; i++) {
            engine *e = make_engine(m, KV_ALL[i], 64);
            te_reset_greedy(e, 0);
            engine_keep_all_logits(e, 1);
            step(e, ids, np, 0);
            float *dst = i == 0 ? ref : out;
            poison(dst, (size_t)np * vocab);
            for (int j = 0; j < np; j++)
                cr_assert_eq(engine_get_logits_at(e, j, dst + (size_t)j * vocab, &err), PG_OK);
            engine_free(e);
            if (i == 0) continue;
            double r = rel_err(out, ref, (size_t)np * vocab);
            cr_log_info("%s: logits with %s KV vs f32 KV: %.3g", fixtures[f], engine_kv_name(KV_ALL[i]), r);
            cr_assert(r <= 5e-2, "%s: %s KV logits vs f32 KV: %.3g", fixtures[f], engine_kv_name(KV_ALL[i]), r);
        }
        free(ref);
        free(out);
        model_free(m);
    }
}

/* ---------------------------------------------------------------- default model */
#define GREEDY_N 32

/* Greedy GREEDY_N tokens from `ids` on engines a (f32 KV) and b in lockstep.
 * Returns the number of equal tokens; at the first difference fills the f32
 * run's logit gap between its token and b's, and the largest |logit change|
 * b's cache caused at that step. */
static int greedy_pair(engine *a, engine *b, const int32_t *ids, int np, int vocab, double *gap,
                       double *max_change, int *rank_b, int32_t *ta_out, int32_t *tb_out) {
    float *la = pg_xmalloc((size_t)vocab * 4), *lb = pg_xmalloc((size_t)vocab * 4);
    pg_err err = {0};
    te_reset_greedy(a, 0);
    te_reset_greedy(b, 0);
    int32_t ta = step(a, ids, np, 0), tb = step(b, ids, np, 0);
    int same = 0;
    for (int t = 0; t < GREEDY_N; t++) {
        if (ta != tb) {
            cr_assert_eq(engine_get_logits(a, 0, la, &err), PG_OK);
            cr_assert_eq(engine_get_logits(b, 0, lb, &err), PG_OK);
            *gap = (double)la[ta] - la[tb];
            double mc = 0;
            for (int i = 0; i < vocab; i++) mc = fmax(mc, fabs((double)la[i] - lb[i]));
            *max_change = mc;
            int rank = 0;   /* tokens the f32 run ranks above b's token */
            for (int i = 0; i < vocab; i++) rank += la[i] > la[tb];
            *rank_b = rank;
            *ta_out = ta;
            *tb_out = tb;
            break;
        }
        same++;
        if (t + 1 == GREEDY_N) break;
        int32_t x = ta;
        ta = step(a, &x, 1, np + t);
        tb = step(b, &x, 1, np + t);
    }
    free(la);
    free(lb);
    return same;
}

Test(kv_smollm2, greedy_int8_bf16_vs_f32_kv, .timeout = 600) {
    char path[1024];
    pg_err err = {0};
    if (model_default_path(path, sizeof path, &err) != PG_OK) cr_skip("%s", err.msg);
    model *m = te_load(path);
    cr_assert(m->tok);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(pg_read_file("tests/fixtures/gpu_prompts.txt", &text, &len, &err), PG_OK, "%s", err.msg);
    engine *ef = make_engine(m, KV_F32, 512);
    engine *eq[2] = {make_engine(m, KV_INT8, 512), make_engine(m, KV_BF16, 512)};
    int n_prompts = 0, match[2] = {0, 0};
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!*line) continue;
        int32_t *ids = NULL;
        int np = 0;
        cr_assert_eq(tok_encode(m->tok, line, strlen(line), tok_add_bos(m->tok), 0, &ids, &np, &err), PG_OK);
        n_prompts++;
        for (int k = 0; k < 2; k++) {
            double gap = 0, change = 0;
            int32_t ta = -1, tb = -1;
            int rank = -1;
            int same = greedy_pair(ef, eq[k], ids, np, m->cfg.vocab_size, &gap, &change, &rank, &ta, &tb);
            const char *kv = k ? "bf16" : "int8";
            if (same == GREEDY_N) {
                match[k]++;
                fprintf(stderr, "kv_smollm2 %s KV: \"%s\": %d/%d greedy ids equal to f32 KV\n", kv, line,
                        GREEDY_N, GREEDY_N);
            } else {
                fprintf(stderr, "kv_smollm2 %s KV: \"%s\": first difference at step %d (f32 KV %d, %s KV %d): "
                        "f32 logit gap %.4f (the %s KV token is the f32 run's number %d), largest logit "
                        "change from the %s cache %.4f\n", kv, line, same, ta, kv, tb, gap, kv, rank + 1, kv,
                        change);
                cr_expect(rank == 1 && gap >= 0 && gap < change,
                          "%s KV: \"%s\" step %d: not a near-tie: gap %.4f, rank %d, logit change %.4f", kv,
                          line, same, gap, rank + 1, change);
            }
        }
        free(ids);
    }
    fprintf(stderr, "kv_smollm2: %d/%d prompts equal for %d tokens with int8 KV, %d/%d with bf16 KV\n",
            match[0], n_prompts, GREEDY_N, match[1], n_prompts);
    cr_assert(n_prompts >= 5);
    free(text);
    engine_free(ef);
    engine_free(eq[0]);
    engine_free(eq[1]);
    model_free(m);
}
