/*
 * tools/bench.c — `peregrine bench`: engine-only speed, no HTTP.
 *
 * Runs batch B sequences of a P-token prompt (random ids, fixed seed)
 * followed by N greedy decode steps on the chosen device, and prints prefill
 * tok/s, time to first token, decode tok/s (median over --runs after one
 * warm-up run), bytes read per decode step (weights + KV at the mean context
 * of the run), achieved GB/s, and MBU against a copy bandwidth measured in
 * the same process (device-to-device on a GPU, memcpy on the CPU; bytes read
 * + written). --ctx C starts decoding after a C-token prompt (long-context
 * decode; the prompt is prefilled in chunks and not timed as prefill).
 * --kernels runs the CUDA kernel micro-benchmarks at the model's shape.
 * The last line is a markdown table row for bench/results/<gpu>.md.
 */
#include "tools.h"
#include "../model/engine.h"

#include <stdlib.h>
#include <string.h>
#ifdef PG_CUDA
#include <cuda_runtime_api.h>
#include "../kernels/cuda/kernels_cuda.h"
#endif

typedef struct {
    const char *model, *random, *device, *dtype, *quant, *kv;
    int prompt, new_tokens, batch, runs, ctx, max_seq, threads, no_graphs, kernels, group_size, quant_lm_head;
} bench_args;

static void bench_usage(FILE *f)
{
    fprintf(f,
        "usage: peregrine bench [--model PATH|default | --random-weights PRESET] [options]\n"
        "  --device cpu|cuda|auto   (default auto)\n"
        "  --prompt-len N           prompt tokens per sequence (default 5)\n"
        "  --new-tokens N           generated tokens per sequence (default 200)\n"
        "  --batch N                sequences decoded together (default 1)\n"
        "  --runs N                 timed runs after one warm-up (default 5)\n"
        "  --ctx N                  decode after an N-token context (long-context decode)\n"
        "  --max-seq-len N          KV cache positions per slot (default: what the run needs)\n"
        "  --dtype bf16|f32         dtype of random weights (default bf16)\n"
        "  --threads N              CPU threads\n"
        TOOLS_FORMAT_OPTIONS_HELP
        "  --no-graphs              CUDA: run decode eagerly instead of replaying graphs\n"
        "  --kernels                CUDA kernel micro-benchmarks at the model's shape\n");
}

static int bench_parse(int argc, char **argv, bench_args *a)
{
    memset(a, 0, sizeof *a);
    a->device = "auto"; a->dtype = "bf16";
    a->prompt = 5; a->new_tokens = 200; a->batch = 1; a->runs = 5;
    a->quant = "none"; a->kv = "auto"; a->group_size = 32; a->quant_lm_head = -1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define STR(name, field) if (!strcmp(k, name)) { if (!v) goto missing; a->field = v; i++; continue; }
#define INT(name, field) if (!strcmp(k, name)) { if (!v) goto missing; a->field = atoi(v); i++; continue; }
        if (!strcmp(k, "--model") && (!v || !strncmp(v, "--", 2))) { a->model = "default"; continue; }
        STR("--model", model) STR("--random-weights", random) STR("--device", device) STR("--dtype", dtype)
        INT("--prompt-len", prompt) INT("--new-tokens", new_tokens) INT("--batch", batch)
        INT("--runs", runs) INT("--ctx", ctx) INT("--max-seq-len", max_seq) INT("--threads", threads)
        STR("--quant", quant) STR("--kv-cache", kv) INT("--group-size", group_size)
#undef STR
#undef INT
        if (!strcmp(k, "--no-graphs")) { a->no_graphs = 1; continue; }
        if (!strcmp(k, "--kernels")) { a->kernels = 1; continue; }
        if (!strcmp(k, "--no-quant-lm-head")) { a->quant_lm_head = 0; continue; }
        if (!strcmp(k, "--quant-lm-head")) { a->quant_lm_head = 1; continue; }
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) { bench_usage(stdout); return 1; }
        fprintf(stderr, "bench: unknown option %s\n", k);
        bench_usage(stderr);
        return 2;
    missing:
        fprintf(stderr, "bench: %s needs a value\n", k);
        return 2;
    }
    if (!a->model && !a->random) a->model = "default";
    if (a->prompt < 1 || a->new_tokens < 2 || a->batch < 1 || a->runs < 1 || a->ctx < 0) {
        fprintf(stderr, "bench: need --prompt-len >= 1, --new-tokens >= 2, --batch >= 1, --runs >= 1\n");
        return 2;
    }
    return 0;
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}
static double median(double *v, int n) { qsort(v, (size_t)n, sizeof *v, cmp_d); return v[n / 2]; }

/* Copy bandwidth (bytes read + written per second), median of 10. */
static double copy_bandwidth(int cuda)
{
    const size_t n = (size_t)1 << 30;
    double t[10];
#ifdef PG_CUDA
    if (cuda) {
        void *a = NULL, *b = NULL;
        if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) {
            cudaFree(a); (void)cudaGetLastError(); return 0;
        }
        k_fill_normal_f32(a, (int64_t)(n / 4), 7, 0.f, 1.f, 0);
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0); cudaEventCreate(&e1);
        for (int i = 0; i < 5; i++) cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);   /* clocks up */
        for (int i = 0; i < 10; i++) {
            cudaEventRecord(e0, 0);
            cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
            cudaEventRecord(e1, 0);
            cudaEventSynchronize(e1);
            float ms = 0; cudaEventElapsedTime(&ms, e0, e1);
            t[i] = 2.0 * n / (ms * 1e-3);
        }
        cudaEventDestroy(e0); cudaEventDestroy(e1);
        cudaFree(a); cudaFree(b);
        return median(t, 10);
    }
#endif
    (void)cuda;
    char *a = pg_xmalloc(n), *b = pg_xmalloc(n);
    memset(a, 1, n); memset(b, 2, n);
    for (int i = 0; i < 10; i++) {
        double t0 = pg_now();
        memcpy(b, a, n);
        t[i] = 2.0 * n / (pg_now() - t0);
        a[i] = b[n - 1 - i];   /* keep the copies observable */
    }
    free(a); free(b);
    return median(t, 10);
}

/* Weight bytes read per decode step: every matrix and norm once; the
 * embedding table only if it doubles as the LM head. */
static double weights_read_per_step(const model *m, const engine_info_t *info, int cuda)
{
    if (info->step_weight_bytes) return (double)info->step_weight_bytes;   /* the backend counts its own reads */
    double emb = (double)m->w.tok_embd.nbytes;
#ifdef PG_CUDA
    if (cuda) {
        pg_dtype t = m->w.tok_embd.dtype;
        pg_dtype dt = (t == PG_Q8_0 || t == PG_Q4_0 || t == PG_Q4_1) ? t : PG_BF16;
        emb = (double)kc_matrix_bytes(dt, m->cfg.vocab_size, m->cfg.dim);
    }
#endif
    (void)cuda;
    if (!m->w.tok_embd.data && !cuda) emb = 0;
    return (double)info->weight_bytes - (m->cfg.tie_embeddings ? 0.0 : emb);
}

typedef struct { double prefill_s, ttft_s, decode_s; } run_times;

/* One run: reset the slots, prefill (ctx + prompt tokens), decode. */
static int bench_run(engine *e, const bench_args *a, const int32_t *prompt, int n_prompt,
                     int ctx_tokens, run_times *rt, int32_t *last_tok, pg_err *err)
{
    int B = a->batch;
    engine_row rows[64];
    engine_result res[64];
    int32_t tok[64];
    sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = 0.f;   /* greedy decode, as the published figures we compare with */
    for (int b = 0; b < B; b++) PG_TRY(engine_slot_reset(e, b, &sp, err));
    /* long-context: fill the cache first (untimed), 512 tokens per step */
    int pos = 0;
    while (pos < ctx_tokens) {
        int n = ctx_tokens - pos < 512 ? ctx_tokens - pos : 512;
        for (int b = 0; b < B; b++)
            rows[b] = (engine_row){ b, prompt + pos, n, pos, 0, 1 };
        PG_TRY(engine_step(e, rows, B, res, err));
        pos += n;
    }
    double t0 = pg_now();
    for (int b = 0; b < B; b++)
        rows[b] = (engine_row){ b, prompt + pos, n_prompt - pos, pos, 1, 1 };
    PG_TRY(engine_step(e, rows, B, res, err));
    double t1 = pg_now();
    for (int b = 0; b < B; b++) tok[b] = res[b].token;
    pos = n_prompt;
    double t2 = pg_now();
    for (int i = 1; i < a->new_tokens; i++) {
        for (int b = 0; b < B; b++) rows[b] = (engine_row){ b, &tok[b], 1, pos, 1, 0 };
        PG_TRY(engine_step(e, rows, B, res, err));
        for (int b = 0; b < B; b++) tok[b] = res[b].token;
        pos++;
    }
    double t3 = pg_now();
    rt->prefill_s = t1 - t0;
    rt->ttft_s = t1 - t0;
    rt->decode_s = t3 - t2;
    *last_tok = tok[0];
    return PG_OK;
}

int bench_main(int argc, char **argv)
{
    bench_args a;
    int prc = bench_parse(argc, argv, &a);
    if (prc) return prc == 1 ? 0 : prc;
    if (a.batch > 64) { fprintf(stderr, "bench: --batch at most 64\n"); return 2; }
    pg_err err = { 0 };
    engine_device dev = ENGINE_DEVICE_CPU;
    if (!strcmp(a.device, "cuda")) dev = ENGINE_DEVICE_CUDA;
    else if (!strcmp(a.device, "auto")) dev = engine_cuda_available() ? ENGINE_DEVICE_CUDA : ENGINE_DEVICE_CPU;
    else if (strcmp(a.device, "cpu")) { fprintf(stderr, "bench: --device %s?\n", a.device); return 2; }
    const int cuda = dev == ENGINE_DEVICE_CUDA;

    model *m = NULL;
    engine *e = NULL;
    int32_t *prompt = NULL;
    int rc;
    model_load_opts lo = { 0 };
    lo.path = a.random ? NULL : a.model;
    lo.random_preset = a.random;
    lo.seed = 1234;
    lo.random_dtype = !strcmp(a.dtype, "f32") ? PG_F32 : PG_BF16;
    lo.random_on_device = cuda;
    double tl = pg_now();
    rc = model_load(&lo, &m, &err);
    if (rc) goto fail;
    tl = pg_now() - tl;
    const model_config *c = &m->cfg;

#ifdef PG_CUDA
    if (a.kernels) {
        if (!cuda) { fprintf(stderr, "bench: --kernels needs the cuda device\n"); model_free(m); return 2; }
        rc = kc_microbench(stdout, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim,
                           c->vocab_size, &err);
        if (rc) goto fail;
        model_free(m);
        return 0;
    }
#else
    if (a.kernels) { fprintf(stderr, "bench: built without CUDA\n"); model_free(m); return 2; }
#endif

    int n_prompt = a.ctx + a.prompt;
    engine_opts eo;
    engine_opts_default(&eo);
    eo.device = dev;
    eo.max_slots = a.batch;
    eo.n_threads = a.threads;
    eo.use_graphs = !a.no_graphs;
    rc = engine_opts_parse_formats(&eo, a.quant, a.group_size, a.kv, &err);
    if (rc) goto fail;
    eo.quant_lm_head = a.quant_lm_head;
    eo.max_seq_len = a.max_seq ? a.max_seq : n_prompt + a.new_tokens;
    if (eo.max_seq_len > c->max_pos && c->max_pos > 0) eo.max_seq_len = c->max_pos;
    double te = pg_now();
    rc = engine_create(m, &eo, &e, &err);
    if (rc) goto fail;
    te = pg_now() - te;
    engine_info_t info;
    engine_info(e, &info);
    if (n_prompt + a.new_tokens > info.max_seq_len) {
        rc = pg_errf(&err, PG_ERANGE, "bench: %d + %d tokens exceed the context %d", n_prompt,
                     a.new_tokens, info.max_seq_len);
        goto fail;
    }
    prompt = pg_xmalloc((size_t)n_prompt * sizeof *prompt);
    pg_rng r;
    pg_rng_seed(&r, 42);
    for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)(pg_rng_u64(&r) % (uint64_t)c->vocab_size);

    double bw = copy_bandwidth(cuda);
    run_times rt;
    int32_t last;
    rc = bench_run(e, &a, prompt, n_prompt, a.ctx, &rt, &last, &err);   /* warm-up (captures graphs) */
    if (rc) goto fail;
    double *pf = pg_xmalloc(sizeof(double) * (size_t)a.runs), *dc = pg_xmalloc(sizeof(double) * (size_t)a.runs);
    for (int i = 0; i < a.runs; i++) {
        rc = bench_run(e, &a, prompt, n_prompt, a.ctx, &rt, &last, &err);
        if (rc) { free(pf); free(dc); goto fail; }
        pf[i] = rt.prefill_s;
        dc[i] = rt.decode_s;
    }
    double pf_s = median(pf, a.runs), dc_s = median(dc, a.runs);
    free(pf); free(dc);

    int steps = a.new_tokens - 1;
    double step_s = dc_s / steps;
    double wread = weights_read_per_step(m, &info, cuda);
    double mean_ctx = n_prompt + a.new_tokens / 2.0;
    double kvread = (double)info.kv_bytes_per_token * mean_ctx * a.batch;
    double bytes = wread + kvread;
    double gbs = bytes / step_s / 1e9;
    printf("model        %s (%s)\n", m->name, m->path);
    printf("device       %s%s\n", info.device_name, cuda ? (a.no_graphs ? " (eager decode)" : " (CUDA graphs)") : "");
    printf("load         model %.2f s, engine %.2f s (weights %.2f GB on the device)\n", tl, te,
           info.weight_bytes / 1e9);
    char wdesc[96];
    engine_weights_desc(&info, wdesc, sizeof wdesc);
    printf("formats      weights %s, KV cache %s\n", wdesc, engine_kv_name(info.kv));
    printf("shape        batch %d, prompt %d, context before prompt %d, new tokens %d, runs %d (median)\n",
           a.batch, a.prompt, a.ctx, a.new_tokens, a.runs);
    printf("prefill      %.2f ms for %d tokens x %d = %.0f tok/s; time to first token %.2f ms\n",
           pf_s * 1e3, a.prompt, a.batch, (double)a.prompt * a.batch / pf_s, pf_s * 1e3);
    printf("decode       %.2f ms/step, %.1f tok/s per sequence, %.1f tok/s total\n", step_s * 1e3,
           1.0 / step_s, a.batch / step_s);
    printf("bytes/step   %.3f GB (weights %.3f GB + KV %.3f GB at mean context %.0f)\n", bytes / 1e9,
           wread / 1e9, kvread / 1e9, mean_ctx);
    printf("bandwidth    %.0f GB/s achieved; copy bandwidth %.0f GB/s measured; MBU %.1f%%\n", gbs,
           bw / 1e9, 100.0 * gbs / (bw / 1e9));
    printf("| %s | %s | %d | %d | %d | %d | %.0f | %.2f | %.1f | %.2f | %.0f | %.1f%% |\n",
           m->name, cuda ? (a.no_graphs ? "cuda eager" : "cuda graphs") : "cpu", a.batch, a.prompt, a.ctx,
           a.new_tokens, (double)a.prompt * a.batch / pf_s, pf_s * 1e3, a.batch / step_s, bytes / 1e9,
           gbs, 100.0 * gbs / (bw / 1e9));
    (void)last;
    free(prompt);
    engine_free(e);
    model_free(m);
    return 0;

fail:
    fprintf(stderr, "bench: %s\n", err.msg[0] ? err.msg : pg_status_name(rc));
    free(prompt);
    engine_free(e);
    model_free(m);
    return 1;
}
