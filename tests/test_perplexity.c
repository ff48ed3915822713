/* tests/test_perplexity.c — the math of `peregrine perplexity` (tools/perplexity.c).
 *
 *   ppl_token_nll against log-sum-exp in long double, on random logits
 *   including large offsets (no overflow) and a one-hot-like case.
 *   ppl_score on a small HF fixture model against a direct computation:
 *   every window fed one token at a time (decode steps, engine_get_logits
 *   of each step's single token), NLL in long double, summed; windows with
 *   and without BOS, a short last window, and a step smaller than the window
 *   (the window prefilled in several engine steps). Token counts are checked
 *   against the window arithmetic written out independently.
 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/engine.h"
#include "model/model.h"
#include "tools/tools.h"
#include "tests/engine_test_util.h"

static long double direct_nll(const float *l, int vocab, int target) {
    long double mx = l[0];
    for (int i = 1; i < vocab; i++) if (l[i] > mx) mx = l[i];
    long double s = 0;
    for (int i = 0; i < vocab; i++) s += expl((long double)l[i] - mx);
    return logl(s) + mx - (long double)l[target];
}

Test(perplexity, token_nll_matches_long_double) {
    pg_rng r;
    pg_rng_seed(&r, 11);
    int vocabs[] = {2, 5, 256, 49152};
    for (size_t vi = 0; vi < sizeof vocabs / sizeof *vocabs; vi++) {
        int v = vocabs[vi];
        float *l = pg_xmalloc((size_t)v * 4);
        for (int it = 0; it < 20; it++) {
            float offset = it % 3 == 0 ? 0.0f : it % 3 == 1 ? 500.0f : -3000.0f;   /* exp would overflow/underflow */
            float spread = it % 4 == 3 ? 40.0f : 3.0f;                              /* near one-hot */
            for (int i = 0; i < v; i++) l[i] = offset + spread * pg_rng_normal(&r);
            int target = (int)(pg_rng_u64(&r) % (uint64_t)v);
            double got = ppl_token_nll(l, v, target);
            long double want = direct_nll(l, v, target);
            cr_assert(isfinite(got) && got >= 0.0, "vocab %d: nll %g", v, got);
            cr_assert(fabsl((long double)got - want) <= 1e-12L * (1.0L + fabsl(want)),
                      "vocab %d it %d: %.17g vs %.17Lg", v, it, got, want);
        }
        free(l);
    }
    /* uniform logits: nll = log(vocab) exactly as a formula */
    float u[7];
    for (int i = 0; i < 7; i++) u[i] = 1.25f;
    cr_assert(fabs(ppl_token_nll(u, 7, 3) - log(7.0)) <= 1e-15);
}

/* Direct: windows cut by hand, each token fed alone, NLL in long double. */
static long double direct_score(engine *e, const int32_t *ids, int n, int ctx, int bos, int vocab,
                                int64_t *n_scored, int *n_windows) {
    float *l = pg_xmalloc((size_t)vocab * 4);
    int32_t win[64];
    long double sum = 0;
    *n_scored = 0;
    *n_windows = 0;
    int per = bos >= 0 ? ctx - 1 : ctx;
    for (int i0 = 0; i0 < n; i0 += per) {
        int len = 0;
        if (bos >= 0) win[len++] = bos;
        for (int i = i0; i < n && i < i0 + per; i++) win[len++] = ids[i];
        if (len < 2) break;
        sampler_params sp;
        sampler_params_default(&sp);
        pg_err err = {0};
        cr_assert_eq(engine_slot_reset(e, 0, &sp, &err), PG_OK);
        for (int p = 0; p + 1 < len; p++) {
            engine_row row = {.slot = 0, .tokens = &win[p], .n_tokens = 1, .pos = p, .sample = 0};
            cr_assert_eq(engine_step(e, &row, 1, NULL, &err), PG_OK, "%s", err.msg);
            cr_assert_eq(engine_get_logits(e, 0, l, &err), PG_OK);
            sum += direct_nll(l, vocab, win[p + 1]);
            (*n_scored)++;
        }
        (*n_windows)++;
    }
    free(l);
    return sum;
}

Test(perplexity, score_matches_direct_computation) {
    model *m = te_load("tests/fixtures/hf/gqa-bf16-tied");
    int vocab = m->cfg.vocab_size;
    engine_opts o;
    engine_opts_default(&o);
    o.max_seq_len = 32;
    o.n_threads = 2;
    engine *e = NULL;
    pg_err err = {0};
    cr_assert_eq(engine_create(m, &o, &e, &err), PG_OK, "%s", err.msg);
    pg_rng r;
    pg_rng_seed(&r, 5);
    int32_t ids[50];
    for (int i = 0; i < 50; i++) ids[i] = (int32_t)(pg_rng_u64(&r) % (uint64_t)vocab);
    struct { int n, ctx, bos, step; int64_t want_scored; int want_windows; } cases[] = {
        /* BOS: 15 text tokens per window -> 15, 15, 15, 5; every text token scored */
        {50, 16, 1, 0, 50, 4},
        /* no BOS: 16 per window -> 16, 16, 16, 2; the first of each window unscored */
        {50, 16, -1, 0, 50 - 4, 4},
        /* no BOS, a lone last token (49 = 3 x 16 + 1): not a window */
        {49, 16, -1, 0, 48 - 3, 3},
        /* windows prefilled in steps of 5 tokens */
        {50, 16, 1, 5, 50, 4},
        {38, 12, -1, 7, 38 - 4, 4},
        /* one window, the whole engine context */
        {31, 32, 1, 3, 31, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ppl_result res;
        memset(&res, 0xff, sizeof res);   /* poison */
        cr_assert_eq(ppl_score(e, ids, cases[c].n, cases[c].ctx, cases[c].bos, cases[c].step, &res, &err), PG_OK,
                     "%s", err.msg);
        int64_t d_scored;
        int d_windows;
        long double want = direct_score(e, ids, cases[c].n, cases[c].ctx, cases[c].bos, vocab, &d_scored, &d_windows);
        cr_assert_eq(res.n_scored, cases[c].want_scored, "case %zu: scored %lld", c, (long long)res.n_scored);
        cr_assert_eq(d_scored, cases[c].want_scored);
        cr_assert_eq(res.n_windows, cases[c].want_windows, "case %zu: windows %d", c, res.n_windows);
        cr_assert_eq(d_windows, cases[c].want_windows);
        /* the engine's prefill and its one-token steps give the same logits
         * (bitwise on the CPU); the sums differ only by f64 vs long double */
        cr_assert(fabsl((long double)res.nll_sum - want) <= 1e-10L * fabsl(want),
                  "case %zu: %.12g vs %.12Lg", c, res.nll_sum, want);
        cr_log_info("case %zu: %lld tokens, mean NLL %.6f, perplexity %.4f", c, (long long)res.n_scored,
                    res.nll_sum / (double)res.n_scored, exp(res.nll_sum / (double)res.n_scored));
    }
    ppl_result res;
    cr_assert_eq(ppl_score(e, ids, 50, 33, -1, 0, &res, &err), PG_EINVAL);   /* longer than the engine */
    cr_assert_eq(ppl_score(e, ids, 50, 1, -1, 0, &res, &err), PG_EINVAL);
    engine_free(e);
    model_free(m);
}
