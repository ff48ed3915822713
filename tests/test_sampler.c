/* tests/test_sampler.c — the host sampler (model/sampler.h): parameter
 * validation, greedy ties, logprobs against a double-precision log-softmax,
 * penalties with HF/vLLM and OpenAI semantics, logit bias, and sampled
 * frequencies against the softmax they should follow (fixed seeds, so every
 * run draws the same numbers). */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/sampler.h"

static sampler_params greedy(void) {
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;
    return p;
}

Test(sampler, validation_names_the_field) {
    sampler_params p;
    pg_err err = {0};
    struct { const char *field; void (*set)(sampler_params *); } cases[] = {
        {"temperature", NULL}, {"top_k", NULL}, {"top_p", NULL}, {"min_p", NULL},
        {"repetition_penalty", NULL}, {"presence_penalty", NULL}, {"frequency_penalty", NULL},
        {"top_logprobs", NULL},
    };
    for (int i = 0; i < 8; i++) {
        sampler_params_default(&p);
        switch (i) {
        case 0: p.temperature = -0.5f; break;
        case 1: p.top_k = -1; break;
        case 2: p.top_p = 1.5f; break;
        case 3: p.min_p = NAN; break;
        case 4: p.repetition_penalty = 0.0f; break;
        case 5: p.presence_penalty = 2.5f; break;
        case 6: p.frequency_penalty = -3.0f; break;
        case 7: p.top_logprobs = SAMPLER_MAX_TOP_LOGPROBS + 1; break;
        }
        cr_assert_eq(sampler_params_validate(&p, 100, &err), PG_EINVAL, "%s", cases[i].field);
        cr_assert(strstr(err.msg, cases[i].field), "%s: %s", cases[i].field, err.msg);
    }
    int32_t ids[2] = {3, 100};
    float vals[2] = {1.0f, 1.0f};
    sampler_params_default(&p);
    p.n_logit_bias = 2;
    p.logit_bias_ids = ids;
    p.logit_bias_vals = vals;
    cr_assert_eq(sampler_params_validate(&p, 100, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "100"), "%s", err.msg);
    ids[1] = 4;
    vals[1] = 101.0f;
    cr_assert_eq(sampler_params_validate(&p, 100, &err), PG_EINVAL);
    vals[1] = -100.0f;
    cr_assert_eq(sampler_params_validate(&p, 100, &err), PG_OK);
    sampler_params_default(&p);
    cr_assert_eq(sampler_params_validate(&p, 100, &err), PG_OK);
}

Test(sampler, argmax_ties_lowest_id) {
    float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 2.0f};
    cr_assert_eq(sampler_argmax(l, 6), 1);
    float m[3] = {-3.0f, -3.0f, -4.0f};
    cr_assert_eq(sampler_argmax(m, 3), 0);
}

Test(sampler, logprobs_are_raw_log_softmax) {
    pg_rng r;
    pg_rng_seed(&r, 1);
    enum { V = 1000 };
    static float l[V];
    for (int i = 0; i < V; i++) l[i] = 3.0f * pg_rng_normal(&r);
    l[17] = l[503] = 12.0f;   /* a tie at the top: lower id first */
    double mx = -1e300, s = 0;
    for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < V; i++) s += exp(l[i] - mx);
    double lse = mx + log(s);
    engine_result res;
    sampler_logprobs(l, V, 42, 20, &res);
    cr_assert(fabs(res.logprob - (l[42] - lse)) < 1e-5, "%g vs %g", res.logprob, l[42] - lse);
    cr_assert_eq(res.n_top, 20);
    cr_assert_eq(res.top_ids[0], 17);
    cr_assert_eq(res.top_ids[1], 503);
    /* the top 20 by brute force */
    int used[V] = {0};
    for (int k = 0; k < 20; k++) {
        int best = -1;
        for (int i = 0; i < V; i++)
            if (!used[i] && (best < 0 || l[i] > l[best])) best = i;
        used[best] = 1;
        cr_assert_eq(res.top_ids[k], best, "rank %d", k);
        cr_assert(fabs(res.top_logprobs[k] - (l[best] - lse)) < 1e-5);
    }
}

/* Penalties: repetition (HF/vLLM: divide positive, multiply negative) over
 * prompt + generated; presence/frequency (OpenAI) over generated only. */
Test(sampler, penalties_semantics) {
    sampler_slot s;
    sampler_slot_init(&s, 8);
    sampler_params p = greedy();
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    pg_err err = {0};
    cr_assert_eq(sampler_slot_reset(&s, &p, &err), PG_OK);
    int32_t prompt[3] = {1, 2, 2};
    int32_t gen[3] = {3, 3, 4};
    sampler_slot_observe(&s, prompt, 3, 0);
    sampler_slot_observe(&s, gen, 3, 1);
    float l[8] = {1.0f, 4.0f, -4.0f, 4.0f, -1.0f, 4.0f, 0.0f, 0.0f};
    sampler_apply_bias_penalties(&s, l);
    cr_assert_float_eq(l[0], 1.0f, 0);                       /* unseen */
    cr_assert_float_eq(l[1], 2.0f, 0);                       /* prompt, positive: / 2 */
    cr_assert_float_eq(l[2], -8.0f, 0);                      /* prompt, negative: * 2 */
    cr_assert_float_eq(l[3], 4.0f / 2 - 0.5f - 0.25f * 2, 1e-6); /* generated twice */
    cr_assert_float_eq(l[4], -1.0f * 2 - 0.5f - 0.25f, 1e-6);    /* generated once */
    cr_assert_float_eq(l[5], 4.0f, 0);
    /* reset clears the history */
    cr_assert_eq(sampler_slot_reset(&s, &p, &err), PG_OK);
    float l2[8] = {1, 4, -4, 4, -1, 4, 0, 0};
    sampler_apply_bias_penalties(&s, l2);
    cr_assert_float_eq(l2[2], -4.0f, 0);
    cr_assert_float_eq(l2[3], 4.0f, 0);
    sampler_slot_free(&s);
}

Test(sampler, logit_bias_and_greedy_records_history) {
    sampler_slot s;
    sampler_scratch sc;
    sampler_slot_init(&s, 5);
    sampler_scratch_init(&sc, 5);
    int32_t ids[1] = {4};
    float vals[1] = {10.0f};
    sampler_params p = greedy();
    p.n_logit_bias = 1;
    p.logit_bias_ids = ids;
    p.logit_bias_vals = vals;
    p.frequency_penalty = 2.0f;
    p.logprobs = 1;
    pg_err err = {0};
    cr_assert_eq(sampler_slot_reset(&s, &p, &err), PG_OK);
    ids[0] = 0;   /* the slot keeps its own copy */
    float raw[5] = {0.0f, 3.0f, 1.0f, 2.0f, -5.0f};
    engine_result res;
    sampler_sample(&s, raw, &sc, &res);
    cr_assert_eq(res.token, 4);                 /* -5 + 10 beats 3 */
    /* logprob is of the raw logits: log softmax(raw)[4] */
    double z = 0;
    for (int i = 0; i < 5; i++) z += exp(raw[i]);
    cr_assert(fabs(res.logprob - (-5.0 - log(z))) < 1e-5);
    cr_assert_eq(s.gen_count[4], 1);
    /* frequency penalty 2 per occurrence: id 4 now scores 5 - 2 = 3, tying
     * id 1; greedy ties go to the lowest id */
    sampler_sample(&s, raw, &sc, &res);
    cr_assert_eq(res.token, 1);
    sampler_slot_free(&s);
    sampler_scratch_free(&sc);
}

/* Frequencies of 40000 draws follow softmax(l / T) restricted and
 * renormalised by top_k / top_p / min_p. 4 sigma of a binomial is < 0.01. */
static void check_distribution(const sampler_params *p, const float *l, int V, const double *want) {
    sampler_slot s;
    sampler_scratch sc;
    sampler_slot_init(&s, V);
    sampler_scratch_init(&sc, V);
    pg_err err = {0};
    cr_assert_eq(sampler_slot_reset(&s, p, &err), PG_OK, "%s", err.msg);
    int counts[16] = {0};
    const int N = 40000;
    for (int i = 0; i < N; i++) {
        int32_t t = sampler_pick(&s.p, l, V, sampler_next_uniform(&s), &sc);
        cr_assert(t >= 0 && t < V);
        counts[t]++;
    }
    for (int i = 0; i < V; i++)
        cr_assert(fabs((double)counts[i] / N - want[i]) < 0.01, "id %d: %.4f vs %.4f (T %g k %d p %g minp %g)",
                  i, (double)counts[i] / N, want[i], p->temperature, p->top_k, p->top_p, p->min_p);
    sampler_slot_free(&s);
    sampler_scratch_free(&sc);
}

Test(sampler, sampled_frequencies_follow_filters) {
    /* probabilities at T = 1: .40 .25 .15 .10 .05 .05 (order shuffled by id) */
    const double pr[6] = {0.10, 0.40, 0.05, 0.25, 0.05, 0.15};
    float l[6];
    for (int i = 0; i < 6; i++) l[i] = (float)log(pr[i]);
    sampler_params p;
    sampler_params_default(&p);
    p.seed = 1234;
    check_distribution(&p, l, 6, pr);

    /* temperature 0.5: p^2 renormalised */
    double w[6], z = 0;
    for (int i = 0; i < 6; i++) z += (w[i] = pr[i] * pr[i]);
    for (int i = 0; i < 6; i++) w[i] /= z;
    p.temperature = 0.5f;
    check_distribution(&p, l, 6, w);

    /* top_k 2: ids 1 and 3 */
    p.temperature = 1.0f;
    p.top_k = 2;
    double k2[6] = {0, 0.40 / 0.65, 0, 0.25 / 0.65, 0, 0};
    check_distribution(&p, l, 6, k2);

    /* top_p 0.75: .40 + .25 = .65 < .75, + .15 = .80 >= .75: ids 1, 3, 5 */
    p.top_k = 0;
    p.top_p = 0.75f;
    double p3[6] = {0, 0.40 / 0.80, 0, 0.25 / 0.80, 0, 0.15 / 0.80};
    check_distribution(&p, l, 6, p3);

    /* min_p 0.3: keep p >= 0.3 * 0.40 = 0.12: ids 1, 3, 5 */
    p.top_p = 1.0f;
    p.min_p = 0.3f;
    check_distribution(&p, l, 6, p3);
}

static int by_prob_desc(const void *a, const void *b, void *ctx) {
    const float *pr = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (pr[i] != pr[j]) return pr[i] > pr[j] ? -1 : 1;
    return i < j ? -1 : 1;
}

/* Whole-vocabulary sampling (no filters) on a real-size vocabulary picks what
 * a walk over the fully sorted distribution picks, for many u. */
Test(sampler, head_search_equals_full_sort) {
    enum { V = 49152 };
    static float l[V], pr[V];
    static int32_t idx[V];
    pg_rng r;
    pg_rng_seed(&r, 77);
    for (int i = 0; i < V; i++) l[i] = 2.5f * pg_rng_normal(&r);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.7f;
    sampler_scratch sc;
    sampler_scratch_init(&sc, V);
    float inv_t = 1.0f / p.temperature;
    float mx = l[sampler_argmax(l, V)] * inv_t;
    double total = 0;
    for (int i = 0; i < V; i++) total += (pr[i] = expf(l[i] * inv_t - mx));
    for (int i = 0; i < V; i++) idx[i] = i;
    qsort_r(idx, V, sizeof *idx, by_prob_desc, pr);
    for (int k = 0; k < 200; k++) {
        float u = pg_rng_uniform(&r) * 0.9f;
        double target = (double)u * total, c = 0;
        int32_t want = -1;
        for (int j = 0; j < V; j++) {
            c += pr[idx[j]];
            if (c > target) { want = idx[j]; break; }
        }
        int32_t got = sampler_pick(&p, l, V, u, &sc);
        cr_assert_eq(got, want, "u %.6f", u);
    }
    sampler_scratch_free(&sc);
}

Test(sampler, same_seed_same_tokens) {
    enum { V = 300 };
    static float l[V];
    pg_rng r;
    pg_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) l[i] = pg_rng_normal(&r);
    int32_t seq[3][50];
    uint64_t seeds[3] = {9, 9, 10};
    for (int k = 0; k < 3; k++) {
        sampler_slot s;
        sampler_scratch sc;
        sampler_slot_init(&s, V);
        sampler_scratch_init(&sc, V);
        sampler_params p;
        sampler_params_default(&p);
        p.seed = seeds[k];
        p.top_k = 50;
        p.presence_penalty = 0.3f;
        pg_err err = {0};
        cr_assert_eq(sampler_slot_reset(&s, &p, &err), PG_OK);
        engine_result res;
        for (int t = 0; t < 50; t++) {
            sampler_sample(&s, l, &sc, &res);
            seq[k][t] = res.token;
        }
        sampler_slot_free(&s);
        sampler_scratch_free(&sc);
    }
    cr_assert(memcmp(seq[0], seq[1], sizeof seq[0]) == 0);
    cr_assert(memcmp(seq[0], seq[2], sizeof seq[0]) != 0);
}
