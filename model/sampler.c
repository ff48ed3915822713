/* model/sampler.c — host sampler: parameters, penalty history, logprobs,
 * greedy / temperature / top-k / top-p / min-p sampling (see sampler.h). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- parameters */
void sampler_params_default(sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;      /* OpenAI default */
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

int sampler_params_validate(const sampler_params *p, int vocab, pg_err *err) {
    if (!p) return pg_errf(err, PG_EINVAL, "sampler: parameters are NULL");
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return pg_errf(err, PG_EINVAL, "temperature must be a finite number >= 0 (got %g)", p->temperature);
    if (p->top_k < 0)
        return pg_errf(err, PG_EINVAL, "top_k must be >= 0 (0 = off; got %d)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pg_errf(err, PG_EINVAL, "top_p must be in (0, 1] (got %g)", p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return pg_errf(err, PG_EINVAL, "min_p must be in [0, 1] (got %g)", p->min_p);
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0.0f)
        return pg_errf(err, PG_EINVAL, "repetition_penalty must be > 0 (got %g)", p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return pg_errf(err, PG_EINVAL, "presence_penalty must be in [-2, 2] (got %g)", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return pg_errf(err, PG_EINVAL, "frequency_penalty must be in [-2, 2] (got %g)", p->frequency_penalty);
    if (p->top_logprobs < 0 || p->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS)
        return pg_errf(err, PG_EINVAL, "top_logprobs must be in [0, %d] (got %d)",
                       SAMPLER_MAX_TOP_LOGPROBS, p->top_logprobs);
    if (p->n_logit_bias < 0 || p->n_logit_bias > vocab)
        return pg_errf(err, PG_EINVAL, "logit_bias has %d entries (max %d)", p->n_logit_bias, vocab);
    if (p->n_logit_bias > 0 && (!p->logit_bias_ids || !p->logit_bias_vals))
        return pg_errf(err, PG_EINVAL, "logit_bias arrays are NULL");
    for (int i = 0; i < p->n_logit_bias; i++) {
        int32_t id = p->logit_bias_ids[i];
        float v = p->logit_bias_vals[i];
        if (id < 0 || id >= vocab)
            return pg_errf(err, PG_EINVAL, "logit_bias token id %d out of range [0, %d)", (int)id, vocab);
        if (!(v >= -100.0f && v <= 100.0f))
            return pg_errf(err, PG_EINVAL, "logit_bias value %g for token %d not in [-100, 100]", v, (int)id);
    }
    return PG_OK;
}

/* ---------------------------------------------------------------- slot state */
void sampler_slot_init(sampler_slot *s, int vocab) {
    PG_ASSERT(vocab > 0);
    memset(s, 0, sizeof *s);
    s->vocab = vocab;
    sampler_params_default(&s->p);
    s->gen_count = pg_xcalloc((size_t)vocab, sizeof *s->gen_count);
    s->seen = pg_xcalloc((size_t)vocab, 1);
    s->touched = pg_xcalloc((size_t)vocab, sizeof *s->touched);
    pg_rng_seed(&s->rng, 0);
}

void sampler_slot_free(sampler_slot *s) {
    if (!s) return;
    free(s->bias_ids);
    free(s->bias_vals);
    free(s->gen_count);
    free(s->seen);
    free(s->touched);
    memset(s, 0, sizeof *s);
}

int sampler_slot_reset(sampler_slot *s, const sampler_params *p, pg_err *err) {
    PG_TRY(sampler_params_validate(p, s->vocab, err));
    for (int i = 0; i < s->n_touched; i++) {
        s->gen_count[s->touched[i]] = 0;
        s->seen[s->touched[i]] = 0;
    }
    s->n_touched = 0;
    s->n_generated = 0;
    if (p->n_logit_bias > s->bias_cap) {
        s->bias_ids = pg_xrealloc(s->bias_ids, (size_t)p->n_logit_bias * sizeof *s->bias_ids);
        s->bias_vals = pg_xrealloc(s->bias_vals, (size_t)p->n_logit_bias * sizeof *s->bias_vals);
        s->bias_cap = p->n_logit_bias;
    }
    if (p->n_logit_bias > 0) {
        memcpy(s->bias_ids, p->logit_bias_ids, (size_t)p->n_logit_bias * sizeof *s->bias_ids);
        memcpy(s->bias_vals, p->logit_bias_vals, (size_t)p->n_logit_bias * sizeof *s->bias_vals);
    }
    s->p = *p;
    s->p.logit_bias_ids = s->bias_ids;
    s->p.logit_bias_vals = s->bias_vals;
    pg_rng_seed(&s->rng, p->seed);
    return PG_OK;
}

void sampler_slot_observe(sampler_slot *s, const int32_t *ids, int n, int generated) {
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        PG_ASSERT(id >= 0 && id < s->vocab);
        if (!s->seen[id]) {
            s->seen[id] = 1;
            s->touched[s->n_touched++] = id;
        }
        if (generated) {
            s->gen_count[id]++;
            s->n_generated++;
        }
    }
}

float sampler_next_uniform(sampler_slot *s) { return pg_rng_uniform(&s->rng); }

void sampler_scratch_init(sampler_scratch *sc, int vocab) {
    sc->vocab = vocab;
    sc->logits = pg_xmalloc((size_t)vocab * sizeof(float));
    sc->probs = pg_xmalloc((size_t)vocab * sizeof(float));
    sc->idx = pg_xmalloc((size_t)vocab * sizeof(int32_t));
}

void sampler_scratch_free(sampler_scratch *sc) {
    if (!sc) return;
    free(sc->logits);
    free(sc->probs);
    free(sc->idx);
    memset(sc, 0, sizeof *sc);
}

/* ---------------------------------------------------------------- logits processing */
void sampler_apply_bias_penalties(const sampler_slot *s, float *logits) {
    const sampler_params *p = &s->p;
    for (int i = 0; i < p->n_logit_bias; i++) logits[p->logit_bias_ids[i]] += p->logit_bias_vals[i];
    float r = p->repetition_penalty;
    int rep = r != 1.0f;
    int pf = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (!rep && !pf) return;
    for (int i = 0; i < s->n_touched; i++) {
        int32_t id = s->touched[i];
        float l = logits[id];
        if (rep) l = l > 0.0f ? l / r : l * r;
        if (pf && s->gen_count[id] > 0)
            l -= p->presence_penalty + p->frequency_penalty * (float)s->gen_count[id];
        logits[id] = l;
    }
}

int32_t sampler_argmax(const float *logits, int vocab) {
    int32_t best = 0;
    float bv = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > bv) { bv = logits[i]; best = i; }
    return best;
}

void sampler_logprobs(const float *raw, int vocab, int32_t token, int top_n,
                      engine_result *res) {
    float mx = raw[sampler_argmax(raw, vocab)];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += exp((double)raw[i] - mx);
    double lse = (double)mx + log(sum);
    res->logprob = (float)((double)raw[token] - lse);
    if (top_n > SAMPLER_MAX_TOP_LOGPROBS) top_n = SAMPLER_MAX_TOP_LOGPROBS;
    if (top_n > vocab) top_n = vocab;
    /* insertion into a sorted list of the best top_n; scanning ids upwards and
     * inserting only above strictly smaller values keeps ties in id order */
    int n = 0;
    for (int32_t i = 0; i < vocab && top_n > 0; i++) {
        float v = raw[i];
        if (n == top_n && !(v > res->top_logprobs[n - 1])) continue;
        int j = n < top_n ? n++ : n - 1;
        while (j > 0 && v > res->top_logprobs[j - 1]) {
            res->top_logprobs[j] = res->top_logprobs[j - 1];
            res->top_ids[j] = res->top_ids[j - 1];
            j--;
        }
        res->top_logprobs[j] = v;
        res->top_ids[j] = i;
    }
    for (int j = 0; j < n; j++) res->top_logprobs[j] = (float)((double)res->top_logprobs[j] - lse);
    res->n_top = n;
}

/* ---------------------------------------------------------------- sampling */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *pr = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (pr[i] > pr[j]) return -1;
    if (pr[i] < pr[j]) return 1;
    return (i > j) - (i < j);
}

/* idx[0..count) = ids with probs >= t, sorted by descending prob (ties: lower
 * id first). t < 0 takes every id. */
static int collect_sorted(const float *probs, int vocab, float t, int32_t *idx) {
    int n = 0;
    for (int32_t i = 0; i < vocab; i++)
        if (probs[i] >= t) idx[n++] = i;
    qsort_r(idx, (size_t)n, sizeof *idx, cmp_desc, (void *)probs);
    return n;
}

/* Next (lower) threshold of the head search; the top probability is 1. */
static float next_threshold(float t) { return t < 1e-30f ? -1.0f : t * (1.0f / 64.0f); }

int32_t sampler_pick(const sampler_params *p, const float *logits, int vocab,
                     float u, sampler_scratch *sc) {
    PG_ASSERT(p->temperature > 0.0f && sc->vocab >= vocab);
    float *pr = sc->probs;
    int32_t *idx = sc->idx;
    /* softmax numerator relative to the max: the top token has p = 1 exactly */
    float inv_t = 1.0f / p->temperature;
    float mx = logits[sampler_argmax(logits, vocab)] * inv_t;
    for (int i = 0; i < vocab; i++) pr[i] = expf(logits[i] * inv_t - mx);

    int n = -1;   /* -1: candidates are the whole vocabulary, unsorted */
    if (p->top_k > 0 && p->top_k < vocab) {
        float t = 1.0f;
        for (;;) {   /* widen the head until it holds k ids */
            n = collect_sorted(pr, vocab, t, idx);
            if (n >= p->top_k || t < 0.0f) break;
            t = next_threshold(t);
        }
        if (n > p->top_k) n = p->top_k;
    }
    if (p->top_p < 1.0f) {
        if (n < 0) {
            double total = 0.0;
            for (int i = 0; i < vocab; i++) total += pr[i];
            double need = (double)p->top_p * total;
            float t = 1.0f;
            for (;;) {   /* widen the head until its mass reaches top_p */
                int m = collect_sorted(pr, vocab, t, idx);
                double c = 0.0;
                int cut = -1;
                for (int j = 0; j < m; j++) {
                    c += pr[idx[j]];
                    if (c >= need) { cut = j + 1; break; }
                }
                if (cut > 0) { n = cut; break; }
                if (t < 0.0f) { n = m; break; }
                t = next_threshold(t);
            }
        } else {
            double total = 0.0, c = 0.0;
            for (int j = 0; j < n; j++) total += pr[idx[j]];
            double need = (double)p->top_p * total;
            for (int j = 0; j < n; j++) {
                c += pr[idx[j]];
                if (c >= need) { n = j + 1; break; }
            }
        }
    }
    if (p->min_p > 0.0f) {
        /* p_max is 1 (see above), so the cut is p >= min_p */
        if (n < 0) {
            n = collect_sorted(pr, vocab, p->min_p, idx);
        } else {
            int m = 0;
            while (m < n && pr[idx[m]] >= p->min_p) m++;
            n = m > 0 ? m : 1;
        }
    }
    if (n >= 0) {
        double total = 0.0, c = 0.0;
        for (int j = 0; j < n; j++) total += pr[idx[j]];
        double target = (double)u * total;
        for (int j = 0; j < n; j++) {
            c += pr[idx[j]];
            if (c > target) return idx[j];
        }
        return idx[n - 1];
    }
    /* Whole vocabulary: walk the sorted head, widening it until the
     * cumulative mass passes the target; the walk always starts at the top of
     * the same order, so the pick equals a walk over a full sort. */
    double total = 0.0;
    for (int i = 0; i < vocab; i++) total += pr[i];
    double target = (double)u * total;
    float t = 1.0f / 64.0f;
    for (;;) {
        int m = collect_sorted(pr, vocab, t, idx);
        double c = 0.0;
        for (int j = 0; j < m; j++) {
            c += pr[idx[j]];
            if (c > target) return idx[j];
        }
        if (t < 0.0f) return idx[m - 1];
        t = next_threshold(t);
    }
}

void sampler_sample(sampler_slot *s, const float *raw, sampler_scratch *sc,
                    engine_result *res) {
    int vocab = s->vocab;
    PG_ASSERT(sc->vocab >= vocab);
    memcpy(sc->logits, raw, (size_t)vocab * sizeof(float));
    sampler_apply_bias_penalties(s, sc->logits);
    int32_t tok;
    if (s->p.temperature == 0.0f) tok = sampler_argmax(sc->logits, vocab);
    else tok = sampler_pick(&s->p, sc->logits, vocab, sampler_next_uniform(s), sc);
    res->token = tok;
    res->logprob = 0.0f;
    res->n_top = 0;
    if (s->p.logprobs || s->p.top_logprobs > 0)
        sampler_logprobs(raw, vocab, tok, s->p.top_logprobs, res);
    sampler_slot_observe(s, &tok, 1, 1);
}
