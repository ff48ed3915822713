/*
 * model/sampler.h — per-slot token sampling on the host (the CPU engine's
 * sampler and the reference the CUDA sampler is tested against).
 *
 * Pipeline for one sampled token (sampler_sample), in this order:
 *   raw logits (vocab floats, straight from the LM head)
 *   1. logprobs: log_softmax of the RAW logits (before bias, penalties and
 *      temperature; vLLM's default "raw_logprobs"). The sampled token's
 *      logprob and the top-N alternatives (descending, ties -> lower id).
 *   2. logit_bias: logits[id] += bias (OpenAI; applies to greedy too).
 *   3. penalties:
 *        repetition_penalty r (HF/vLLM) over ids seen in the prompt (rows
 *          with count_prompt=1) or generated: logit > 0 ? logit / r : logit * r
 *        presence_penalty  (OpenAI) over generated ids: logit -= p
 *        frequency_penalty (OpenAI) over generated ids: logit -= f * count
 *   4. temperature == 0: greedy argmax (ties -> lowest id). Stop here.
 *   5. logits / temperature, softmax (max-subtracted, f32).
 *   6. top_k (> 0): keep the k most probable (ties -> lower id first).
 *   7. top_p (< 1): keep the smallest prefix of the sorted distribution
 *      whose mass reaches top_p (always at least one token).
 *   8. min_p (> 0): drop tokens with p < min_p * p_max.
 *   9. draw u = pg_rng_uniform(slot rng) in [0,1) — exactly one draw per
 *      non-greedy token — and pick the first candidate (sorted by descending
 *      probability, ties -> lower id) whose cumulative kept mass exceeds
 *      u * (total kept mass).
 *  10. record the token into the slot's penalty history.
 * Same seed + same logits => same tokens. A device sampler can reproduce the
 * CPU choice exactly by drawing u with sampler_next_uniform() on the host.
 *
 * Thread safety: a sampler_slot and a sampler_scratch are used by one thread
 * at a time (the engine thread); distinct slots are independent.
 */
#ifndef PG_SAMPLER_H
#define PG_SAMPLER_H

#include "../common/common.h"
#include "engine.h"

typedef struct {
    int            vocab;
    sampler_params p;          /* copy; p.logit_bias_* point into bias_ids/bias_vals */
    int32_t       *bias_ids;   /* [bias_cap] owned copy of the request's logit_bias */
    float         *bias_vals;  /* [bias_cap] */
    int            bias_cap;
    pg_rng         rng;        /* seeded from p.seed by sampler_slot_reset */
    int32_t       *gen_count;  /* [vocab] times each id was generated */
    uint8_t       *seen;       /* [vocab] 1 if in the prompt or generated */
    int32_t       *touched;    /* [vocab] ids with seen == 1, n_touched of them */
    int            n_touched;
    int            n_generated;
} sampler_slot;

/* Scratch for one sampling call: all [vocab]. One per engine (not per slot). */
typedef struct {
    int      vocab;
    float   *logits;   /* processed logits */
    float   *probs;
    int32_t *idx;
} sampler_scratch;

/* Check ranges: temperature >= 0 and finite, top_k >= 0, 0 < top_p <= 1,
 * 0 <= min_p <= 1, repetition_penalty > 0, |presence|,|frequency| <= 2
 * (OpenAI range), logit_bias ids in [0, vocab) with finite values in
 * [-100, 100], 0 <= top_logprobs <= SAMPLER_MAX_TOP_LOGPROBS. Names the field. */
int  sampler_params_validate(const sampler_params *p, int vocab, pg_err *err);

/* Allocate the [vocab] arrays of a slot (zeroed; params = defaults). */
void sampler_slot_init(sampler_slot *s, int vocab);
void sampler_slot_free(sampler_slot *s);
/* Validate p, then clear the history, copy the parameters and logit bias,
 * seed the rng. On error the slot is unchanged. */
int  sampler_slot_reset(sampler_slot *s, const sampler_params *p, pg_err *err);
/* Record tokens into the history: generated=0 marks them seen (repetition
 * penalty only); generated=1 also counts them (presence/frequency). Ids out
 * of [0, vocab) are a programmer error (engine.c validates ids). */
void sampler_slot_observe(sampler_slot *s, const int32_t *ids, int n, int generated);
/* The next uniform draw of the slot's rng (step 9). */
float sampler_next_uniform(sampler_slot *s);

void sampler_scratch_init(sampler_scratch *sc, int vocab);
void sampler_scratch_free(sampler_scratch *sc);

/* Steps 2-3 in place on a copy of the raw logits. */
void sampler_apply_bias_penalties(const sampler_slot *s, float *logits);
/* Step 1 alone: logprob of `token` and the top_n alternatives of raw logits. */
void sampler_logprobs(const float *raw, int vocab, int32_t token, int top_n,
                      engine_result *res);
/* Steps 5-9 on processed logits (overwrites sc->probs/idx) with a given u in
 * [0,1): the token the distribution picks. temperature must be > 0. */
int32_t sampler_pick(const sampler_params *p, const float *logits, int vocab,
                     float u, sampler_scratch *sc);
/* Greedy argmax, ties -> lowest id. */
int32_t sampler_argmax(const float *logits, int vocab);
/* The whole pipeline (steps 1-10) for one token of slot s; fills res
 * (token; logprob/top when requested, else logprob = 0, n_top = 0). */
void sampler_sample(sampler_slot *s, const float *raw, sampler_scratch *sc,
                    engine_result *res);

#endif
