/*
 * tests/engine_test_util.h — helpers for the Criterion suites that drive a
 * whole engine (CPU or CUDA): load a model, create an engine, reset slots to
 * greedy, step, read logits. Every helper asserts (cr_assert) with the
 * library's own message, so a test body only states what it checks. Each
 * tests/test_*.c is its own binary, so these are static inline. Include after
 * <criterion/criterion.h>.
 */
#ifndef PG_ENGINE_TEST_UTIL_H
#define PG_ENGINE_TEST_UTIL_H

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "model/engine.h"
#include "model/model.h"

/* The model file or folder at path (HF folder, safetensors, GGUF). */
static inline model *te_load(const char *path)
{
    model_load_opts o = { 0 };
    o.path = path;
    model *m = NULL;
    pg_err err = { 0 };
    cr_assert_eq(model_load(&o, &m, &err), PG_OK, "model_load %s: %s", path, err.msg);
    return m;
}

/* A configs/ preset with random bf16 weights (seed 77, normal std 0.02). */
static inline model *te_load_random(const char *preset)
{
    model_load_opts o = { 0 };
    o.random_preset = preset;
    o.seed = 77;
    o.random_dtype = PG_BF16;
    model *m = NULL;
    pg_err err = { 0 };
    cr_assert_eq(model_load(&o, &m, &err), PG_OK, "load %s: %s", preset, err.msg);
    return m;
}

static inline void te_reset_greedy(engine *e, int slot)
{
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;   /* greedy: the default is the OpenAI temperature 1 */
    pg_err err = { 0 };
    cr_assert_eq(engine_slot_reset(e, slot, &p, &err), PG_OK, "slot %d: %s", slot, err.msg);
}

/* engine_create with o; with greedy set, every slot is reset to greedy. */
static inline engine *te_create(const model *m, const engine_opts *o, int greedy)
{
    engine *e = NULL;
    pg_err err = { 0 };
    cr_assert_eq(engine_create(m, o, &e, &err), PG_OK, "engine_create (%s, kv %s, quant %s): %s",
                 o->device == ENGINE_DEVICE_CUDA ? "cuda" : "cpu", engine_kv_name(o->kv),
                 engine_quant_name(o->quant), err.msg);
    if (greedy)
        for (int s = 0; s < o->max_slots; s++) te_reset_greedy(e, s);
    return e;
}

/* A CPU engine (2 threads, 64 positions) with weight format q, int4 group
 * and LM-head choice lm_head (-1 auto, 0 as stored, 1 quantized). */
static inline engine *te_quant_engine(const model *m, weight_quant q, int group, int lm_head)
{
    engine_opts o;
    engine_opts_default(&o);
    o.max_seq_len = 64;
    o.n_threads = 2;
    o.quant = q;
    o.group_size = group;
    o.quant_lm_head = lm_head;
    return te_create(m, &o, 0);
}

static inline void te_step(engine *e, const engine_row *rows, int n, engine_result *res)
{
    pg_err err = { 0 };
    cr_assert_eq(engine_step(e, rows, n, res, &err), PG_OK, "engine_step: %s", err.msg);
}

/* Logits of row `row` of the last step ([vocab] floats). */
static inline void te_logits(engine *e, int row, float *out)
{
    pg_err err = { 0 };
    cr_assert_eq(engine_get_logits(e, row, out, &err), PG_OK, "%s", err.msg);
}

/* Slot 0 reset to greedy, one prefill of prompt[0..n), and the logits at
 * every prompt position: [n][vocab] floats, caller frees. */
static inline float *te_prompt_logits(engine *e, const int32_t *prompt, int n, int vocab)
{
    te_reset_greedy(e, 0);
    engine_keep_all_logits(e, 1);
    engine_row row = { .slot = 0, .tokens = prompt, .n_tokens = n, .pos = 0, .sample = 1, .count_prompt = 1 };
    engine_result res;
    te_step(e, &row, 1, &res);
    engine_keep_all_logits(e, 0);
    float *lg = pg_xmalloc(sizeof(float) * (size_t)n * vocab);
    pg_err err = { 0 };
    for (int j = 0; j < n; j++)
        cr_assert_eq(engine_get_logits_at(e, j, lg + (size_t)j * vocab, &err), PG_OK, "%s", err.msg);
    return lg;
}

/* Graph replay == eager: engines ga (CUDA graphs) and eb (eager), two slots
 * each, prefill the same two prompts, then decode `steps` greedy tokens,
 * batch 2 for the first half and batch 1 after (two graphs captured); the
 * tokens and every logit must be bitwise equal. what names the case. */
static inline void te_graph_equals_eager(engine *ga, engine *eb, int V, int steps, const char *what)
{
    int32_t p0[9] = { 1, 5, 9, 200, 17, 3, 3, 99, 400 }, p1[4] = { 1, 42, 43, 44 };
    engine_row rows[2] = { { 0, p0, 9, 0, 1, 1 }, { 1, p1, 4, 0, 1, 1 } };
    engine_result ra[2], rb[2];
    te_step(ga, rows, 2, ra);
    te_step(eb, rows, 2, rb);
    int32_t ta[2] = { ra[0].token, ra[1].token }, tb[2] = { rb[0].token, rb[1].token };
    int pos[2] = { 9, 4 };
    float *la = pg_xmalloc((size_t)V * 4), *lb = pg_xmalloc((size_t)V * 4);
    for (int i = 0; i < steps; i++) {
        cr_assert_eq(ta[0], tb[0], "%s step %d row 0: graph %d eager %d", what, i, ta[0], tb[0]);
        cr_assert_eq(ta[1], tb[1], "%s step %d row 1: graph %d eager %d", what, i, ta[1], tb[1]);
        int B = i < steps / 2 ? 2 : 1;
        engine_row da[2] = { { 0, &ta[0], 1, pos[0], 1, 0 }, { 1, &ta[1], 1, pos[1], 1, 0 } };
        engine_row db[2] = { { 0, &tb[0], 1, pos[0], 1, 0 }, { 1, &tb[1], 1, pos[1], 1, 0 } };
        te_step(ga, da, B, ra);
        te_step(eb, db, B, rb);
        for (int b = 0; b < B; b++) {
            te_logits(ga, b, la);
            te_logits(eb, b, lb);
            cr_assert(memcmp(la, lb, (size_t)V * 4) == 0, "%s step %d row %d: graph and eager logits differ",
                      what, i, b);
            ta[b] = ra[b].token; tb[b] = rb[b].token;
            pos[b]++;
        }
    }
    free(la); free(lb);
}

/* The model the GPU greedy tests run: PEREGRINE_GPU_GGUF, else the default
 * model (make model); skips the test when neither is there. def: cap bytes
 * of storage for the default path. */
static inline const char *te_gpu_gguf(char *def, size_t cap)
{
    const char *path = getenv("PEREGRINE_GPU_GGUF");
    if (path) return path;
    pg_err err = { 0 };
    if (model_default_path(def, cap, &err) != PG_OK || access(def, R_OK) != 0)
        cr_skip("no default model (make model) and PEREGRINE_GPU_GGUF not set");
    return def;
}

#endif
