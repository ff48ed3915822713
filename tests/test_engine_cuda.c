/*
 * tests/test_engine_cuda.c — the CUDA engine against the CPU engine and
 * against HF transformers, and graph replay against eager execution.
 *
 *   cpu_vs_cuda_*     random tiny models (configs/tiny-llama*.json, bf16
 *                     weights on the host so both engines hold identical
 *                     weights): prefill logits and teacher-forced decode logits
 *                     within 1e-2 (the CUDA KV cache is bf16, the CPU one f32).
 *   cpu_vs_cuda_fused_norm  the same with PEREGRINE_FUSED_NORM=1: the decode
 *                     step whose products carry the RMSNorms (kc_gemv_epi),
 *                     with bf16 weights (the default for quantized weights
 *                     only; test_quant_cuda runs it there).
 *   graph_equals_eager  two CUDA engines, graphs on/off, batch 2: greedy
 *                     tokens and logits bit-identical for 24 steps.
 *   hf_reference      PEREGRINE_HF_REFS=dir (scripts/gen-hf-gpu-refs.py on the
 *                     GPU machine): each subfolder holds an HF Llama model
 *                     (safetensors, bf16), ids.txt and logits.f32 from
 *                     transformers in bf16 on the GPU; every token's logits
 *                     within 2e-2 for the CUDA engine and the CPU engine.
 *   gguf_greedy       PEREGRINE_GPU_GGUF=file (default: the default model):
 *                     greedy 32 tokens of each prompt of
 *                     tests/fixtures/gpu_prompts.txt, CUDA vs CPU. A divergence
 *                     is reported with the CPU's top-2 logit gap at that step;
 *                     it passes only as a bf16 near-tie flip (gap <= 0.02).
 * Skipped when no GPU is visible.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../model/engine.h"
#include "tests/test_util.h"
#include "tests/engine_test_util.h"

#if defined(PG_CUDA)
#include <cuda_runtime_api.h>

static engine *make_engine(const model *m, engine_device dev, int slots, int graphs, int max_seq)
{
    engine_opts o;
    engine_opts_default(&o);
    o.device = dev;
    o.max_slots = slots;
    o.max_seq_len = max_seq;
    o.use_graphs = graphs;
    o.n_threads = 4;
    if (dev == ENGINE_DEVICE_CUDA) o.kv = KV_BF16;
    return te_create(m, &o, 1);
}

/* ---------------------------------------------------------------- cpu vs cuda */
static void cpu_vs_cuda(const char *preset)
{
    model *m = te_load_random(preset);
    int V = m->cfg.vocab_size, n_prompt = 37, n_dec = 12;
    engine *ec = make_engine(m, ENGINE_DEVICE_CPU, 1, 1, 128);
    engine *eg = make_engine(m, ENGINE_DEVICE_CUDA, 1, 1, 128);
    int32_t toks[64];
    pg_rng r;
    pg_rng_seed(&r, 9);
    for (int i = 0; i < n_prompt + n_dec; i++) toks[i] = (int32_t)(pg_rng_u64(&r) % (uint64_t)V);
    float *lc = pg_xmalloc((size_t)V * 4), *lg = pg_xmalloc((size_t)V * 4);
    engine_result rc[1], rg[1];
    engine_row row = { 0, toks, n_prompt, 0, 1, 1 };
    te_step(ec, &row, 1, rc);
    te_step(eg, &row, 1, rg);
    te_logits(ec, 0, lc);
    te_logits(eg, 0, lg);
    double e0 = rel_err(lg, lc, (size_t)V), worst = e0;
    cr_log_info("%s prefill %d tokens: logits rel err %.3g", preset, n_prompt, e0);
    /* teacher-forced decode: both engines see the same tokens */
    for (int i = 0; i < n_dec; i++) {
        engine_row d = { 0, &toks[n_prompt + i], 1, n_prompt + i, 1, 0 };
        te_step(ec, &d, 1, rc);
        te_step(eg, &d, 1, rg);
        te_logits(ec, 0, lc);
        te_logits(eg, 0, lg);
        double e = rel_err(lg, lc, (size_t)V);
        if (e > worst) worst = e;
    }
    cr_log_info("%s decode %d steps: worst logits rel err %.3g", preset, n_dec, worst);
    cr_expect(worst <= 1e-2, "%s: CUDA vs CPU logits rel err %.3g > 1e-2", preset, worst);
    free(lc); free(lg);
    engine_free(ec); engine_free(eg); model_free(m);
}

Test(engine_cuda, cpu_vs_cuda_tiny_llama) { NEED_GPU(); cpu_vs_cuda("tiny-llama"); }
Test(engine_cuda, cpu_vs_cuda_tiny_llama3) { NEED_GPU(); cpu_vs_cuda("tiny-llama3"); }
/* bf16 weights with the products carrying the norms (PEREGRINE_FUSED_NORM=1;
 * by default bf16 keeps the add+RMSNorm kernels): nothing else runs the bf16
 * epilogue kernels inside the engine. Criterion runs each test in its own
 * process, so the variable does not reach the other tests. */
Test(engine_cuda, cpu_vs_cuda_fused_norm)
{
    NEED_GPU();
    cr_assert_eq(setenv("PEREGRINE_FUSED_NORM", "1", 1), 0);
    cpu_vs_cuda("tiny-llama3");
}

Test(engine_cuda, keep_all_logits_matches_cpu)
{
    NEED_GPU();
    model *m = te_load_random("tiny-llama3");
    int V = m->cfg.vocab_size, n = 40;
    engine *ec = make_engine(m, ENGINE_DEVICE_CPU, 1, 1, 128);
    engine *eg = make_engine(m, ENGINE_DEVICE_CUDA, 1, 1, 128);
    int32_t toks[40];
    for (int i = 0; i < n; i++) toks[i] = (int32_t)((i * 37 + 11) % V);
    engine_keep_all_logits(ec, 1);
    engine_keep_all_logits(eg, 1);
    engine_row row = { 0, toks, n, 0, 0, 1 };
    te_step(ec, &row, 1, NULL);
    te_step(eg, &row, 1, NULL);
    float *lc = pg_xmalloc((size_t)V * 4), *lg = pg_xmalloc((size_t)V * 4);
    pg_err err;
    double worst = 0;
    for (int j = 0; j < n; j++) {
        cr_assert_eq(engine_get_logits_at(ec, j, lc, &err), PG_OK, "%s", err.msg);
        cr_assert_eq(engine_get_logits_at(eg, j, lg, &err), PG_OK, "%s", err.msg);
        double e = rel_err(lg, lc, (size_t)V);
        if (e > worst) worst = e;
    }
    cr_expect(worst <= 1e-2, "keep_all logits rel err %.3g", worst);
    free(lc); free(lg);
    engine_free(ec); engine_free(eg); model_free(m);
}

/* ---------------------------------------------------------------- graphs */
Test(engine_cuda, graph_equals_eager)
{
    NEED_GPU();
    model *m = te_load_random("tiny-llama3");
    int V = m->cfg.vocab_size;
    engine *ea = make_engine(m, ENGINE_DEVICE_CUDA, 2, 1, 256);
    engine *eb = make_engine(m, ENGINE_DEVICE_CUDA, 2, 0, 256);
    te_graph_equals_eager(ea, eb, V, 24, "bf16");
    engine_free(ea); engine_free(eb); model_free(m);
}

/* ---------------------------------------------------------------- HF */
static float *read_f32(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *v = pg_xmalloc((size_t)sz);
    *n = fread(v, 4, (size_t)sz / 4, f);
    fclose(f);
    return v;
}

static int read_ids(const char *path, int32_t *ids, int cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0, v;
    while (n < cap && fscanf(f, "%d", &v) == 1) ids[n++] = v;
    fclose(f);
    return n;
}

static double relerr_rows(const float *a, const float *ref, int n, int V)
{
    double worst = 0;
    for (int j = 0; j < n; j++) {
        double x = rel_err(a + (size_t)j * V, ref + (size_t)j * V, (size_t)V);
        if (x > worst) worst = x;
    }
    return worst;
}

/* Worst-token rel err of an engine's logits against ref; *ref32_err gets
 * the same against the fp32 reference. */
static double hf_check(const model *m, engine_device dev, const int32_t *ids, int n, const float *ref,
                       const float *ref32, double *ref32_err)
{
    int V = m->cfg.vocab_size;
    engine *e = make_engine(m, dev, 1, 1, 256);
    engine_keep_all_logits(e, 1);
    engine_row row = { 0, ids, n, 0, 0, 1 };
    te_step(e, &row, 1, NULL);
    float *l = pg_xmalloc((size_t)n * V * 4);
    pg_err err;
    for (int j = 0; j < n; j++)
        cr_assert_eq(engine_get_logits_at(e, j, l + (size_t)j * V, &err), PG_OK, "%s", err.msg);
    double worst = relerr_rows(l, ref, n, V);
    *ref32_err = relerr_rows(l, ref32, n, V);
    free(l);
    engine_free(e);
    return worst;
}

Test(engine_cuda, hf_reference)
{
    NEED_GPU();
    const char *dir = getenv("PEREGRINE_HF_REFS");
    if (!dir) cr_skip("PEREGRINE_HF_REFS not set (scripts/gen-hf-gpu-refs.py makes them on a GPU machine)");
    char list[1024];
    snprintf(list, sizeof list, "%s/models.txt", dir);
    FILE *f = fopen(list, "r");
    cr_assert(f, "missing %s", list);
    char name[256];
    int checked = 0;
    while (fscanf(f, "%255s", name) == 1) {
        char p[1400];
        snprintf(p, sizeof p, "%s/%s/ids.txt", dir, name);
        int32_t ids[256];
        int n = read_ids(p, ids, 256);
        cr_assert(n > 0, "%s", p);
        snprintf(p, sizeof p, "%s/%s/logits.f32", dir, name);
        size_t nl = 0;
        float *ref = read_f32(p, &nl);
        cr_assert(ref, "%s", p);
        snprintf(p, sizeof p, "%s/%s/logits32.f32", dir, name);
        size_t nl32 = 0;
        float *ref32 = read_f32(p, &nl32);
        cr_assert(ref32 && nl32 == nl, "%s", p);
        snprintf(p, sizeof p, "%s/%s", dir, name);
        model_load_opts lo = { 0 };
        lo.path = p;
        model *m = NULL;
        pg_err err = { 0 };
        cr_assert_eq(model_load(&lo, &m, &err), PG_OK, "%s: %s", p, err.msg);
        cr_assert_eq(nl, (size_t)n * m->cfg.vocab_size, "%s: logits size", name);
        double eg32, ec32;
        double eg = hf_check(m, ENGINE_DEVICE_CUDA, ids, n, ref, ref32, &eg32);
        double ec = hf_check(m, ENGINE_DEVICE_CPU, ids, n, ref, ref32, &ec32);
        double own = relerr_rows(ref, ref32, n, m->cfg.vocab_size);
        printf("hf_reference %s: %d tokens, worst-token logits rel err vs transformers bf16: cuda %.4g, cpu %.4g; "
               "vs transformers fp32: cuda %.4g, cpu %.4g; transformers bf16 vs its fp32: %.4g\n",
               name, n, eg, ec, eg32, ec32, own);
        /* Against the bf16 reference: 2e-2, plus the distance of that reference
         * from its own fp32 run when the bf16 noise of the reference is larger
         * (printed above: the bound is never widened silently). Against fp32
         * transformers: CPU 1e-4 (fp32 throughout); CUDA 1e-2 (bf16 KV cache
         * and bf16 tensor-core prefill attention). */
        double bound = 2e-2 > own ? 2e-2 : 2e-2 + own;
        cr_expect(eg <= bound, "%s: CUDA vs transformers bf16 rel err %.3g > %.3g", name, eg, bound);
        cr_expect(ec <= bound, "%s: CPU vs transformers bf16 rel err %.3g > %.3g", name, ec, bound);
        cr_expect(eg32 <= 1e-2, "%s: CUDA vs transformers fp32 rel err %.3g > 1e-2", name, eg32);
        cr_expect(ec32 <= 1e-4, "%s: CPU vs transformers fp32 rel err %.3g > 1e-4", name, ec32);
        free(ref);
        free(ref32);
        model_free(m);
        checked++;
    }
    fclose(f);
    cr_expect(checked > 0, "no models listed in %s", list);
}

/* ---------------------------------------------------------------- GGUF greedy */
static void greedy(engine *e, const int32_t *ids, int n, int n_new, int32_t *out)
{
    engine_result r[1];
    engine_row row = { 0, ids, n, 0, 1, 1 };
    te_step(e, &row, 1, r);
    for (int i = 0; i < n_new; i++) {
        out[i] = r[0].token;
        if (i + 1 == n_new) break;
        engine_row d = { 0, &out[i], 1, n + i, 1, 0 };
        te_step(e, &d, 1, r);
    }
}

Test(engine_cuda, gguf_greedy_matches_cpu, .timeout = 600)
{
    NEED_GPU();
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
    engine *ec = make_engine(m, ENGINE_DEVICE_CPU, 1, 1, 512);
    engine *eg = make_engine(m, ENGINE_DEVICE_CUDA, 1, 1, 512);
    int V = m->cfg.vocab_size;
    float *lc = pg_xmalloc((size_t)V * 4);
    char line[2048];
    int n_prompts = 0;
    enum { N_NEW = 32 };
    sampler_params greedy_p;
    sampler_params_default(&greedy_p);
    greedy_p.temperature = 0.f;
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\n");
        if (len == 0) continue;
        int32_t *ids = NULL;
        int n = 0;
        cr_assert_eq(tok_encode(m->tok, line, len, tok_add_bos(m->tok), 0, &ids, &n, &err), PG_OK, "%s", err.msg);
        int32_t tc[N_NEW], tg[N_NEW];
        cr_assert_eq(engine_slot_reset(ec, 0, &greedy_p, &err), PG_OK);
        cr_assert_eq(engine_slot_reset(eg, 0, &greedy_p, &err), PG_OK);
        greedy(ec, ids, n, N_NEW, tc);
        greedy(eg, ids, n, N_NEW, tg);
        int first = -1;
        for (int i = 0; i < N_NEW; i++) if (tc[i] != tg[i]) { first = i; break; }
        printf("gguf_greedy prompt %d (%d tokens): %s", n_prompts, n,
               first < 0 ? "32/32 tokens equal\n" : "");
        if (first >= 0) {
            /* replay the CPU up to the divergent step and measure its top-2 gap */
            engine_result r[1];
            cr_assert_eq(engine_slot_reset(ec, 0, &greedy_p, &err), PG_OK);
            engine_row row = { 0, ids, n, 0, 1, 1 };
            te_step(ec, &row, 1, r);
            for (int i = 0; i < first; i++) {
                engine_row d = { 0, &tc[i], 1, n + i, 1, 0 };
                te_step(ec, &d, 1, r);
            }
            te_logits(ec, 0, lc);
            float a = lc[tc[first]], b = lc[tg[first]];
            /* the CUDA engine fed the CPU's tokens: how far apart are the logits there? */
            float *lg = pg_xmalloc((size_t)V * 4);
            cr_assert_eq(engine_slot_reset(eg, 0, &greedy_p, &err), PG_OK);
            engine_row rg = { 0, ids, n, 0, 1, 1 };
            te_step(eg, &rg, 1, r);
            for (int i = 0; i < first; i++) {
                engine_row d = { 0, &tc[i], 1, n + i, 1, 0 };
                te_step(eg, &d, 1, r);
            }
            te_logits(eg, 0, lg);
            printf("diverges at token %d: cpu %d (logit %.5f) vs cuda %d (cpu logit %.5f), gap %.5f; "
                   "logits rel err there %.3g\n", first, tc[first], a, tg[first], b, a - b, rel_err(lg, lc, (size_t)V));
            free(lg);
            cr_expect(a - b <= 0.02f, "prompt %d: tokens diverge at %d with a logit gap of %.4f (> 0.02: not a near-tie)",
                      n_prompts, first, a - b);
        }
        free(ids);
        n_prompts++;
    }
    fclose(f);
    cr_expect(n_prompts > 0);
    free(lc);
    engine_free(ec); engine_free(eg); model_free(m);
}

#else
Test(engine_cuda, skipped) { cr_skip("built without CUDA"); }
#endif
