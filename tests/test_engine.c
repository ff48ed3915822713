/* tests/test_engine.c — the CPU engine end to end.
 *
 * HF fixtures (tests/fixtures/hf/, scripts/gen-hf-fixtures.py): small random
 * Llama models with HF transformers' float32 logits at every prompt position
 * and its greedy continuations. Logits must match within ||out-ref||/||ref||
 * <= 1e-4 and greedy ids exactly. Engine invariants: chunked prefill ==
 * token-by-token, slots do not interfere, bad rows are rejected.
 * Default model (cr_skip when absent): greedy ids == HF transformers on the
 * GGUF dequantized to f32 (tests/fixtures/golden/smollm2-greedy.json).
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "model/engine.h"
#include "model/model.h"
#include "tests/test_util.h"
#include "tests/engine_test_util.h"

#define FIX "tests/fixtures/hf/"

/* ---------------------------------------------------------------- helpers */
static engine *make_engine(const model *m, int slots, int max_seq) {
    engine_opts o;
    engine_opts_default(&o);
    o.max_slots = slots;
    o.max_seq_len = max_seq;
    o.n_threads = 2;
    return te_create(m, &o, 0);
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    pg_err err = {0};
    cr_assert_eq(pg_read_file(path, &text, &len, &err), PG_OK, "%s", err.msg);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    cr_assert(j, "%s: bad JSON", path);
    return j;
}

static int json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        cr_assert(n < cap);
        out[n++] = (int32_t)it->valueint;
    }
    return n;
}

static int step1(engine *e, int slot, const int32_t *toks, int n, int pos, int32_t *next) {
    engine_row row = {.slot = slot, .tokens = toks, .n_tokens = n, .pos = pos, .sample = 1,
                      .count_prompt = 1};
    engine_result res;
    pg_err err = {0};
    int rc = engine_step(e, &row, 1, &res, &err);
    cr_assert_eq(rc, PG_OK, "engine_step: %s", err.msg);
    *next = res.token;
    return rc;
}

/* Top-2 logits, for reporting a near-tie when a greedy id differs. */
static void top2(const float *l, int n, int *i1, int *i2) {
    *i1 = 0;
    *i2 = 1;
    if (l[1] > l[0]) { *i1 = 1; *i2 = 0; }
    for (int i = 2; i < n; i++) {
        if (l[i] > l[*i1]) { *i2 = *i1; *i1 = i; }
        else if (l[i] > l[*i2]) *i2 = i;
    }
}

/* Greedy-decode n_new tokens after a prompt and compare with want; on a
 * mismatch print both candidates' logits. Returns the number of matches. */
static int greedy_check(engine *e, const int32_t *prompt, int np, const int32_t *want, int n_new,
                        const char *what) {
    int vocab;
    engine_info_t info;
    engine_info(e, &info);
    vocab = info.vocab_size;
    float *lg = pg_xmalloc((size_t)vocab * sizeof(float));
    te_reset_greedy(e, 0);
    int32_t tok;
    step1(e, 0, prompt, np, 0, &tok);
    int ok = 0;
    for (int t = 0; t < n_new; t++) {
        if (tok != want[t]) {
            pg_err err;
            engine_get_logits(e, 0, lg, &err);
            int a, b;
            top2(lg, vocab, &a, &b);
            cr_log_error("%s: step %d: got %d want %d; logits %d=%.6f %d=%.6f (gap %.6f), want's logit %.6f",
                         what, t, tok, want[t], a, lg[a], b, lg[b], lg[a] - lg[b], lg[want[t]]);
            break;
        }
        ok++;
        if (t + 1 < n_new) step1(e, 0, &tok, 1, np + t, &tok);
    }
    free(lg);
    return ok;
}

/* ---------------------------------------------------------------- HF fixtures */
static void check_hf_fixture(const char *name) {
    char dir[256], path[320];
    snprintf(dir, sizeof dir, FIX "%s", name);
    model *m = te_load(dir);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    cJSON *ref = read_json(path);
    snprintf(path, sizeof path, "%s/logits.bin", dir);
    char *blob = NULL;
    size_t blob_len = 0;
    pg_err err = {0};
    cr_assert_eq(pg_read_file(path, &blob, &blob_len, &err), PG_OK, "%s", err.msg);
    const float *ref_logits = (const float *)blob;

    int vocab = m->cfg.vocab_size;
    cr_assert_eq(vocab, cJSON_GetObjectItem(ref, "vocab_size")->valueint);
    engine *e = make_engine(m, 1, 128);
    float *lg = pg_xmalloc((size_t)vocab * sizeof(float));
    const cJSON *prompts = cJSON_GetObjectItem(ref, "prompts");
    const cJSON *gens = cJSON_GetObjectItem(ref, "generated");
    size_t off = 0;
    for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
        int32_t ids[256], want[64];
        int np = json_ids(cJSON_GetArrayItem(prompts, p), ids, 256);
        int ng = json_ids(cJSON_GetArrayItem(gens, p), want, 64);
        cr_assert((off + (size_t)np * vocab) * 4 <= blob_len);
        /* logits at every prompt position */
        te_reset_greedy(e, 0);
        engine_keep_all_logits(e, 1);
        int32_t tok;
        step1(e, 0, ids, np, 0, &tok);
        engine_keep_all_logits(e, 0);
        double worst = 0;
        for (int j = 0; j < np; j++) {
            cr_assert_eq(engine_get_logits_at(e, j, lg, &err), PG_OK, "%s", err.msg);
            double r = rel_err(lg, ref_logits + off + (size_t)j * vocab, vocab);
            if (r > worst) worst = r;
        }
        cr_log_info("%s prompt %d (%d tokens): max logits rel err %.3g", name, p, np, worst);
        cr_assert(worst <= 1e-4, "%s prompt %d: logits rel err %.3g > 1e-4", name, p, worst);
        off += (size_t)np * vocab;
        /* greedy continuation */
        int ok = greedy_check(e, ids, np, want, ng, name);
        cr_assert_eq(ok, ng, "%s prompt %d: greedy ids differ at step %d", name, p, ok);
    }
    cr_assert_eq(off * 4, blob_len);
    free(lg);
    free(blob);
    cJSON_Delete(ref);
    engine_free(e);
    model_free(m);
}

Test(engine_hf, mha_f32) { check_hf_fixture("mha-f32"); }
Test(engine_hf, gqa_bf16_tied) { check_hf_fixture("gqa-bf16-tied"); }
Test(engine_hf, llama3_f16) { check_hf_fixture("llama3-f16"); }

/* ---------------------------------------------------------------- invariants */
static const int32_t PROMPT_A[] = {1, 90, 91, 92, 93, 12, 250, 7, 7, 130, 64, 33, 201, 5, 88, 19, 140};
static const int32_t PROMPT_B[] = {1, 60, 60, 60, 61, 62, 60, 61, 62, 9, 180, 4, 4};

/* Prefill in chunks of 1..5 tokens == the whole prompt at once, at every position. */
Test(engine, chunked_prefill_equals_token_by_token) {
    model *m = te_load(FIX "gqa-bf16-tied");
    int vocab = m->cfg.vocab_size, np = (int)(sizeof PROMPT_A / sizeof *PROMPT_A);
    engine *e = make_engine(m, 1, 64);
    float *all = pg_xmalloc((size_t)np * vocab * sizeof(float)), *lg = pg_xmalloc((size_t)vocab * 4);
    pg_err err = {0};
    int32_t tok;
    te_reset_greedy(e, 0);
    engine_keep_all_logits(e, 1);
    step1(e, 0, PROMPT_A, np, 0, &tok);
    engine_keep_all_logits(e, 0);
    for (int j = 0; j < np; j++) engine_get_logits_at(e, j, all + (size_t)j * vocab, &err);
    for (int chunk = 1; chunk <= 5; chunk++) {
        te_reset_greedy(e, 0);
        for (int pos = 0; pos < np; pos += chunk) {
            int n = np - pos < chunk ? np - pos : chunk;
            step1(e, 0, PROMPT_A + pos, n, pos, &tok);
            cr_assert_eq(engine_get_logits(e, 0, lg, &err), PG_OK);
            double r = rel_err(lg, all + (size_t)(pos + n - 1) * vocab, vocab);
            cr_assert(r <= 1e-6, "chunk %d pos %d: rel err %.3g", chunk, pos, r);
        }
    }
    free(all);
    free(lg);
    engine_free(e);
    model_free(m);
}

/* Greedy tokens of a slot run alone == the same slot run beside another one,
 * batched in the same steps (prefill rows together, then decode rows). */
Test(engine, two_slots_do_not_interfere) {
    model *m = te_load(FIX "llama3-f16");
    const int n_new = 20;
    int na = (int)(sizeof PROMPT_A / sizeof *PROMPT_A), nb = (int)(sizeof PROMPT_B / sizeof *PROMPT_B);
    int32_t alone[2][20];
    engine *e1 = make_engine(m, 1, 64);
    for (int s = 0; s < 2; s++) {
        const int32_t *p = s ? PROMPT_B : PROMPT_A;
        int np = s ? nb : na;
        te_reset_greedy(e1, 0);
        int32_t tok;
        step1(e1, 0, p, np, 0, &tok);
        for (int t = 0; t < n_new; t++) {
            alone[s][t] = tok;
            step1(e1, 0, &tok, 1, np + t, &tok);
        }
    }
    engine_free(e1);

    engine *e = make_engine(m, 3, 64);
    te_reset_greedy(e, 0);
    te_reset_greedy(e, 2);
    /* slot 1 holds an unrelated sequence that must not leak into the others */
    te_reset_greedy(e, 1);
    int32_t junk[30];
    for (int i = 0; i < 30; i++) junk[i] = (int32_t)(i * 7 % 256);
    pg_err err = {0};
    engine_result res[3];
    engine_row r1 = {.slot = 1, .tokens = junk, .n_tokens = 30, .pos = 0, .sample = 1};
    cr_assert_eq(engine_step(e, &r1, 1, res, &err), PG_OK, "%s", err.msg);
    /* B on slot 2 listed first, A on slot 0 second */
    engine_row rows[2] = {
        {.slot = 2, .tokens = PROMPT_B, .n_tokens = nb, .pos = 0, .sample = 1},
        {.slot = 0, .tokens = PROMPT_A, .n_tokens = na, .pos = 0, .sample = 1},
    };
    cr_assert_eq(engine_step(e, rows, 2, res, &err), PG_OK, "%s", err.msg);
    int32_t tb = res[0].token, ta = res[1].token;
    for (int t = 0; t < n_new; t++) {
        cr_assert_eq(ta, alone[0][t], "slot 0 step %d", t);
        cr_assert_eq(tb, alone[1][t], "slot 2 step %d", t);
        engine_row d[2] = {
            {.slot = 0, .tokens = &ta, .n_tokens = 1, .pos = na + t, .sample = 1},
            {.slot = 2, .tokens = &tb, .n_tokens = 1, .pos = nb + t, .sample = 1},
        };
        cr_assert_eq(engine_step(e, d, 2, res, &err), PG_OK, "%s", err.msg);
        ta = res[0].token;
        tb = res[1].token;
    }
    engine_free(e);
    model_free(m);
}

Test(engine, rejects_bad_rows) {
    model *m = te_load(FIX "mha-f32");
    engine *e = make_engine(m, 2, 16);
    engine_result res[2];
    pg_err err = {0};
    int32_t ok_tok[20] = {1, 2, 3}, bad_tok[1] = {256};
    engine_row r = {.slot = 0, .tokens = ok_tok, .n_tokens = 3, .pos = 0, .sample = 1};
    engine_row bad;
    bad = r; bad.slot = 2;
    cr_assert_eq(engine_step(e, &bad, 1, res, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "slot"), "%s", err.msg);
    bad = r; bad.tokens = bad_tok; bad.n_tokens = 1;
    cr_assert_eq(engine_step(e, &bad, 1, res, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "256"), "%s", err.msg);
    bad = r; bad.n_tokens = 17;
    cr_assert_eq(engine_step(e, &bad, 1, res, &err), PG_ERANGE);
    bad = r; bad.pos = 5;   /* slot 0 holds nothing yet: a gap */
    cr_assert_eq(engine_step(e, &bad, 1, res, &err), PG_EINVAL);
    bad = r; bad.n_tokens = 0;
    cr_assert_eq(engine_step(e, &bad, 1, res, &err), PG_EINVAL);
    engine_row two[2] = {r, r};
    cr_assert_eq(engine_step(e, two, 2, res, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "both"), "%s", err.msg);
    cr_assert_eq(engine_step(e, &r, 1, NULL, &err), PG_EINVAL);
    cr_assert_eq(engine_step(e, &r, 3, res, &err), PG_EINVAL);
    /* a good row still works after all that, and continues at pos 3 */
    cr_assert_eq(engine_step(e, &r, 1, res, &err), PG_OK, "%s", err.msg);
    engine_row next = {.slot = 0, .tokens = &res[0].token, .n_tokens = 1, .pos = 3, .sample = 1};
    cr_assert_eq(engine_step(e, &next, 1, res, &err), PG_OK, "%s", err.msg);
    float lg[256];
    cr_assert_eq(engine_get_logits(e, 1, lg, &err), PG_EINVAL);
    cr_assert_eq(engine_get_logits_at(e, 0, lg, &err), PG_EINVAL);  /* not kept */
    sampler_params p;
    sampler_params_default(&p);
    p.top_p = 0.0f;
    cr_assert_eq(engine_slot_reset(e, 0, &p, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "top_p"), "%s", err.msg);
    cr_assert_eq(engine_slot_reset(e, 5, NULL, &err), PG_EINVAL);
    engine_free(e);

    /* options */
    engine_opts o;
    engine_opts_default(&o);
    o.max_seq_len = 100000;
    cr_assert_eq(engine_create(m, &o, &e, &err), PG_EINVAL);
    engine_opts_default(&o);
    o.device = ENGINE_DEVICE_CUDA;
    if (!engine_cuda_available()) {
        int rc = engine_create(m, &o, &e, &err);
#if defined(PG_CUDA) && defined(PG_HAVE_ENGINE_CUDA)
        cr_assert_eq(rc, PG_EDEVICE, "%s", err.msg);
#else
        cr_assert_eq(rc, PG_EUNSUPPORTED, "%s", err.msg);
#endif
        cr_assert(e == NULL);
    }
    model_free(m);
}

/* Same seed => same sampled tokens; logprobs come back sorted and normalised. */
Test(engine, seeded_sampling_and_logprobs) {
    model *m = te_load(FIX "mha-f32");
    engine *e = make_engine(m, 1, 64);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.seed = 42;
    p.logprobs = 1;
    p.top_logprobs = 5;
    int32_t seq[2][24];
    pg_err err = {0};
    for (int run = 0; run < 2; run++) {
        cr_assert_eq(engine_slot_reset(e, 0, &p, &err), PG_OK);
        int32_t tok = 1;
        engine_result res;
        for (int t = 0; t < 24; t++) {
            engine_row r = {.slot = 0, .tokens = &tok, .n_tokens = 1, .pos = t, .sample = 1};
            cr_assert_eq(engine_step(e, &r, 1, &res, &err), PG_OK);
            cr_assert_eq(res.n_top, 5);
            for (int k = 1; k < 5; k++) cr_assert(res.top_logprobs[k] <= res.top_logprobs[k - 1]);
            cr_assert(res.logprob <= 0.0f && res.logprob <= res.top_logprobs[0] + 1e-6f);
            tok = seq[run][t] = res.token;
        }
    }
    cr_assert(memcmp(seq[0], seq[1], sizeof seq[0]) == 0);
    engine_free(e);
    model_free(m);
}

/* ---------------------------------------------------------------- default model */
Test(engine_smollm2, greedy_matches_hf, .timeout = 600) {
    char path[1024];
    pg_err err = {0};
    if (model_default_path(path, sizeof path, &err) != PG_OK) cr_skip("%s", err.msg);
    model *m = te_load(path);
    cr_assert_eq(m->cfg.rope_interleaved, 1);
    cJSON *g = read_json("tests/fixtures/golden/smollm2-greedy.json");
    engine *e = make_engine(m, 1, 256);
    const cJSON *p;
    int total_ok = 0, total = 0;
    double t0 = pg_now();
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(g, "prompts")) {
        int32_t ids[512], want[64];
        int np = json_ids(cJSON_GetObjectItem(p, "ids"), ids, 512);
        int ng = json_ids(cJSON_GetObjectItem(p, "generated"), want, 64);
        const char *kind = cJSON_GetObjectItem(p, "kind")->valuestring;
        int ok = greedy_check(e, ids, np, want, ng, kind);
        cr_log_info("smollm2 %s prompt (%d ids): %d/%d greedy ids match", kind, np, ok, ng);
        cr_expect_eq(ok, ng, "%s prompt: first differing id at step %d", kind, ok);
        total_ok += ok;
        total += ng;
    }
    cr_log_info("smollm2: %d/%d ids in %.2f s", total_ok, total, pg_now() - t0);
    cJSON_Delete(g);
    engine_free(e);
    model_free(m);
}

/* Decode speed of the default model: 5-token prompt, 128 greedy tokens.
 * A benchmark, not a check: runs only with PEREGRINE_BENCH=1. */
Test(engine_smollm2, decode_speed, .timeout = 600) {
    if (!getenv("PEREGRINE_BENCH")) cr_skip("set PEREGRINE_BENCH=1 to time decode");
    char path[1024];
    pg_err err = {0};
    if (model_default_path(path, sizeof path, &err) != PG_OK) cr_skip("%s", err.msg);
    model *m = te_load(path);
    const char *nt = getenv("PEREGRINE_THREADS");
    engine_opts o;
    engine_opts_default(&o);
    o.max_seq_len = 256;
    o.n_threads = nt ? atoi(nt) : 0;
    engine *e = NULL;
    cr_assert_eq(engine_create(m, &o, &e, &err), PG_OK, "%s", err.msg);
    const int32_t prompt[5] = {504, 3575, 282, 4649, 314};  /* "The capital of France is" */
    for (int rep = 0; rep < 3; rep++) {
        te_reset_greedy(e, 0);
        int32_t tok;
        double t0 = pg_now();
        step1(e, 0, prompt, 5, 0, &tok);
        double t1 = pg_now(), c1 = (double)clock() / CLOCKS_PER_SEC;
        for (int t = 0; t < 128; t++) step1(e, 0, &tok, 1, 5 + t, &tok);
        double t2 = pg_now(), c2 = (double)clock() / CLOCKS_PER_SEC;
        engine_info_t info;
        engine_info(e, &info);
        fprintf(stderr, "decode_speed [%s]: prefill 5 tok %.1f ms, decode 128 tok %.3f s = %.1f tok/s "
                "(weights %.1f MB -> %.2f GB/s; process cpu %.1f ms/token)\n", info.device_name,
                (t1 - t0) * 1e3, t2 - t1, 128 / (t2 - t1), info.weight_bytes / 1e6,
                info.weight_bytes * 128 / (t2 - t1) / 1e9, (c2 - c1) / 128 * 1e3);
    }
    /* prefill throughput: one 128-token prompt */
    int32_t *ids = pg_xmalloc(128 * sizeof *ids);
    for (int i = 0; i < 128; i++) ids[i] = (int32_t)((i * 7919 + 13) % m->cfg.vocab_size);
    for (int rep = 0; rep < 2; rep++) {
        te_reset_greedy(e, 0);
        int32_t tok;
        double t0 = pg_now();
        step1(e, 0, ids, 128, 0, &tok);
        fprintf(stderr, "prefill_speed: 128 tokens in %.1f ms = %.1f tok/s\n", (pg_now() - t0) * 1e3,
                128 / (pg_now() - t0));
    }
    free(ids);
    engine_free(e);
    model_free(m);
}

/* pg_env_flag, the engines' start-up switches (PEREGRINE_NO_PDL,
 * PEREGRINE_NO_QI8_TILES, PEREGRINE_FUSED_NORM): unset or empty -> the
 * default, "0" -> 0, anything else -> 1. */
Test(engine, env_flag) {
    const char *n = "PEREGRINE_TEST_ENV_FLAG";
    cr_assert_eq(unsetenv(n), 0);
    cr_expect_eq(pg_env_flag(n, 0), 0);
    cr_expect_eq(pg_env_flag(n, 1), 1);
    cr_assert_eq(setenv(n, "", 1), 0);
    cr_expect_eq(pg_env_flag(n, 1), 1);
    cr_assert_eq(setenv(n, "0", 1), 0);
    cr_expect_eq(pg_env_flag(n, 1), 0);
    cr_assert_eq(setenv(n, "1", 1), 0);
    cr_expect_eq(pg_env_flag(n, 0), 1);
    cr_assert_eq(setenv(n, "yes", 1), 0);
    cr_expect_eq(pg_env_flag(n, 0), 1);
}
