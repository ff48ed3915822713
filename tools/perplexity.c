/*
 * tools/perplexity.c — `peregrine perplexity`: how well a model (in a given
 * weight format and KV cache type) predicts a fixed text.
 *
 * The whole file is tokenized with the model's tokenizer (no BOS, special
 * token text not parsed); --max-tokens keeps a prefix. The ids are cut into
 * non-overlapping windows of --ctx tokens; a window starts with BOS when the
 * tokenizer adds BOS to prompts (then it holds ctx - 1 text tokens). Each
 * window runs on a fresh slot from position 0, with engine_keep_all_logits,
 * and every token after the window's first is scored:
 *   nll = -log softmax(logits of the previous position)[token]
 * computed in f64 (log-sum-exp with the max subtracted). The window is
 * prefilled in engine steps of at most PPL_STEP tokens — the KV cache carries
 * over between them, so it is the same computation as one prefill, and the
 * kept logits stay at PPL_STEP x vocab floats instead of ctx x vocab.
 * Reported: tokens scored, mean NLL (nats) and perplexity = exp(mean NLL);
 * --json prints one JSON object with the same figures instead.
 */
#include "tools.h"
#include "../model/engine.h"
#include "../tokenizer/tokenizer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PPL_STEP 512   /* tokens per engine step within a window */

double ppl_token_nll(const float *logits, int vocab, int target) {
    double mx = -INFINITY;
    for (int i = 0; i < vocab; i++) mx = fmax(mx, (double)logits[i]);
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    return log(sum) + mx - (double)logits[target];
}

int ppl_window(const int32_t *ids, int64_t n, int64_t i0, int ctx, int bos, int32_t *win) {
    int per = ppl_window_text(ctx, bos), len = 0;
    int nt = n - i0 < per ? (int)(n - i0) : per;
    if (bos >= 0) win[len++] = bos;
    memcpy(win + len, ids + i0, (size_t)nt * sizeof *win);
    return len + nt;
}

int ppl_score(engine *e, const int32_t *ids, int64_t n, int ctx, int bos, int step,
              ppl_result *out, pg_err *err) {
    memset(out, 0, sizeof *out);
    engine_info_t info;
    engine_info(e, &info);
    if (ctx < 2 || ctx > info.max_seq_len)
        return pg_errf(err, PG_EINVAL, "perplexity: window %d tokens not in [2, %d] (engine context)",
                       ctx, info.max_seq_len);
    if (step < 1) step = PPL_STEP;
    int vocab = info.vocab_size;
    int text_per_win = ppl_window_text(ctx, bos);
    int32_t *win = pg_xmalloc((size_t)ctx * sizeof *win);
    float *logits = pg_xmalloc((size_t)vocab * sizeof *logits);
    sampler_params sp;
    sampler_params_default(&sp);
    int rc = PG_OK;
    for (int64_t i0 = 0; i0 < n; i0 += text_per_win) {
        int len = ppl_window(ids, n, i0, ctx, bos, win);
        if (len < 2) break;   /* a lone last token without BOS: nothing to score */
        rc = engine_slot_reset(e, 0, &sp, err);
        if (rc) break;
        engine_keep_all_logits(e, 1);
        for (int p0 = 0; p0 < len && rc == PG_OK; p0 += step) {
            int k = len - p0 < step ? len - p0 : step;
            engine_row row = {.slot = 0, .tokens = win + p0, .n_tokens = k, .pos = p0, .sample = 0};
            rc = engine_step(e, &row, 1, NULL, err);
            /* logits of window position p0 + j predict window token p0 + j + 1 */
            for (int j = 0; rc == PG_OK && j < k && p0 + j + 1 < len; j++) {
                rc = engine_get_logits_at(e, j, logits, err);
                if (rc) break;
                out->nll_sum += ppl_token_nll(logits, vocab, win[p0 + j + 1]);
                out->n_scored++;
            }
        }
        engine_keep_all_logits(e, 0);
        if (rc) break;
        out->n_windows++;
    }
    free(win);
    free(logits);
    return rc;
}

/* ---------------------------------------------------------------- CLI */
typedef struct {
    const char *model, *file, *quant, *kv, *device;
    int ctx, group_size, threads, quant_lm_head, json;
    long long max_tokens;
} ppl_args;

static void ppl_usage(FILE *f) {
    fprintf(f,
        "usage: peregrine perplexity [--model PATH|default] [--file TEXT] [options]\n"
        "  --model PATH             GGUF file, safetensors file or HF directory (default: default)\n"
        "  --file PATH              text to score (default /usr/share/common-licenses/GPL-3)\n"
        "  --ctx N                  window length in tokens, BOS included (default min(model context, 2048))\n"
        "  --max-tokens N           score only the first N tokens of the text (default: all)\n"
        TOOLS_FORMAT_OPTIONS_HELP
        "  --device cpu|cuda|auto   (default auto)\n"
        "  --threads N              CPU threads (default: all cores)\n"
        "  --json                   print one JSON object instead of text\n");
}

static int parse_int(const char *k, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "peregrine perplexity: %s: '%s' is not an integer in [%lld, %lld]\n", k, v, lo, hi);
        return 2;
    }
    *out = x;
    return 0;
}

static int ppl_parse(int argc, char **argv, ppl_args *a) {
    memset(a, 0, sizeof *a);
    a->model = "default";
    a->file = "/usr/share/common-licenses/GPL-3";
    a->quant = "none";
    a->kv = "auto";
    a->quant_lm_head = -1;
    a->device = "auto";
    a->group_size = 32;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) { ppl_usage(stdout); return 1; }
        if (!strcmp(k, "--no-quant-lm-head")) { a->quant_lm_head = 0; continue; }
        if (!strcmp(k, "--quant-lm-head")) { a->quant_lm_head = 1; continue; }
        if (!strcmp(k, "--json")) { a->json = 1; continue; }
        if (!strcmp(k, "--model") && (!v || !strncmp(v, "--", 2))) { a->model = "default"; continue; }
        const char **str = !strcmp(k, "--model") ? &a->model : !strcmp(k, "--file") ? &a->file
                         : !strcmp(k, "--quant") ? &a->quant : !strcmp(k, "--kv-cache") ? &a->kv
                         : !strcmp(k, "--device") ? &a->device : NULL;
        int is_int = !strcmp(k, "--ctx") || !strcmp(k, "--max-tokens") || !strcmp(k, "--group-size") ||
                     !strcmp(k, "--threads");
        if (!str && !is_int) {
            fprintf(stderr, "peregrine perplexity: unknown option '%s' (see --help)\n", k);
            return 2;
        }
        if (!v) { fprintf(stderr, "peregrine perplexity: %s needs a value\n", k); return 2; }
        i++;
        if (str) { *str = v; continue; }
        if (!strcmp(k, "--ctx")) { if (parse_int(k, v, 2, 1 << 30, &x)) return 2; a->ctx = (int)x; }
        else if (!strcmp(k, "--max-tokens")) { if (parse_int(k, v, 1, 1LL << 40, &x)) return 2; a->max_tokens = x; }
        else if (!strcmp(k, "--group-size")) { if (parse_int(k, v, 1, 1 << 20, &x)) return 2; a->group_size = (int)x; }
        else { if (parse_int(k, v, 0, 256, &x)) return 2; a->threads = (int)x; }
    }
    return 0;
}

int perplexity_main(int argc, char **argv) {
    ppl_args a;
    int prc = ppl_parse(argc, argv, &a);
    if (prc) return prc == 1 ? 0 : prc;
    pg_err err = {0};
    engine_opts eo;
    engine_opts_default(&eo);
    if (engine_opts_parse_formats(&eo, a.quant, a.group_size, a.kv, &err)) {
        fprintf(stderr, "peregrine perplexity: %s\n", err.msg);
        return 2;
    }
    eo.quant_lm_head = a.quant_lm_head;
    eo.n_threads = a.threads;
    if (!strcmp(a.device, "cuda")) eo.device = ENGINE_DEVICE_CUDA;
    else if (!strcmp(a.device, "auto")) eo.device = engine_cuda_available() ? ENGINE_DEVICE_CUDA : ENGINE_DEVICE_CPU;
    else if (!strcmp(a.device, "cpu")) eo.device = ENGINE_DEVICE_CPU;
    else {
        fprintf(stderr, "peregrine perplexity: --device: '%s' is not one of auto, cpu, cuda\n", a.device);
        return 2;
    }

    model *m = NULL;
    engine *e = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    int rc;
    double t_load = pg_now();
    model_load_opts lo = {0};
    lo.path = a.model;
    rc = model_load(&lo, &m, &err);
    if (rc) goto fail;
    if (!m->tok) { rc = pg_errf(&err, PG_EINVAL, "%s has no tokenizer", m->path); goto fail; }
    size_t len = 0;
    rc = pg_read_file(a.file, &text, &len, &err);
    if (rc) goto fail;
    int n_ids = 0;
    rc = tok_encode(m->tok, text, len, 0, 0, &ids, &n_ids, &err);
    if (rc) goto fail;
    int64_t n = n_ids;
    if (a.max_tokens > 0 && a.max_tokens < n) n = a.max_tokens;
    int bos = tok_add_bos(m->tok) ? tok_bos_id(m->tok) : -1;
    int max_pos = m->cfg.max_pos > 0 ? m->cfg.max_pos : 2048;
    int ctx = a.ctx ? a.ctx : (max_pos < 2048 ? max_pos : 2048);
    if (ctx > max_pos) {
        rc = pg_errf(&err, PG_EINVAL, "--ctx %d exceeds the model context (%d)", ctx, max_pos);
        goto fail;
    }
    if (n < (bos >= 0 ? 1 : 2)) {
        rc = pg_errf(&err, PG_EINVAL, "%s: %lld tokens, too few to score", a.file, (long long)n);
        goto fail;
    }
    eo.max_seq_len = ctx;
    rc = engine_create(m, &eo, &e, &err);
    if (rc) goto fail;
    t_load = pg_now() - t_load;
    engine_info_t info;
    engine_info(e, &info);

    ppl_result r;
    double t0 = pg_now();
    rc = ppl_score(e, ids, n, ctx, bos, PPL_STEP, &r, &err);
    if (rc) goto fail;
    double secs = pg_now() - t0;
    if (r.n_scored < 1) { rc = pg_errf(&err, PG_EINVAL, "no token was scored"); goto fail; }
    double mean = r.nll_sum / (double)r.n_scored, ppl = exp(mean);
    const char *quant = engine_quant_name(eo.quant);
    /* what the file holds: the first layer's matrices (every layer is stored
     * alike), e.g. "Q4_1", "QI4 g64,128" (a group that does not divide a
     * matrix's width falls back to a smaller one, model/quant.h) */
    char stored[64];
    {
        const layer_weights *L0 = &m->w.layers[0];
        const tensor *mats[7] = { &L0->wq, &L0->wk, &L0->wv, &L0->wo, &L0->w_gate, &L0->w_up, &L0->w_down };
        const tensor *t0 = mats[0];
        int n = snprintf(stored, sizeof stored, "%s", pg_dtype_name(t0->dtype));
        int grouped = t0->dtype == PG_QI4 || (t0->dtype == PG_QI8 && t0->group != t0->cols);
        for (int g = 16, first = 1; grouped && g <= 4096; g *= 2) {   /* distinct groups, ascending */
            int used = 0;
            for (int i = 0; i < 7; i++) used |= mats[i]->dtype == t0->dtype && mats[i]->group == g;
            if (used && n < (int)sizeof stored)
                n += snprintf(stored + n, sizeof stored - n, "%s%d", first ? " g" : ",", g), first = 0;
        }
    }
    /* the engine's wording (as `bench` and `serve` print it), with the stored
     * format named when the weights run as stored */
    char qdesc[128];
    engine_weights_desc(&info, qdesc, sizeof qdesc);
    if (eo.quant == WQUANT_NONE)
        snprintf(qdesc + strlen(qdesc), sizeof qdesc - strlen(qdesc), " (%s)", stored);
    /* the engine resolved --kv-cache auto; ask it what it holds */
    double kv_per_tok = (double)info.kv_bytes_per_token;
    const char *kv = engine_kv_name(info.kv);

    if (a.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "model", m->path);
        cJSON_AddStringToObject(j, "file", a.file);
        cJSON_AddStringToObject(j, "device", info.device_name);
        cJSON_AddStringToObject(j, "weights", qdesc);   /* for people; the three below for programs */
        cJSON_AddStringToObject(j, "stored_weights", stored);
        cJSON_AddStringToObject(j, "quant", quant);
        if (eo.quant == WQUANT_INT4) cJSON_AddNumberToObject(j, "group_size", eo.group_size);
        else cJSON_AddNullToObject(j, "group_size");
        cJSON_AddBoolToObject(j, "lm_head_quantized", eo.quant != WQUANT_NONE && info.quant_lm_head);
        cJSON_AddStringToObject(j, "kv_cache", kv);
        cJSON_AddNumberToObject(j, "ctx", ctx);
        cJSON_AddNumberToObject(j, "text_tokens", (double)n_ids);
        cJSON_AddNumberToObject(j, "tokens_used", (double)n);
        cJSON_AddNumberToObject(j, "windows", r.n_windows);
        cJSON_AddNumberToObject(j, "tokens_scored", (double)r.n_scored);
        cJSON_AddNumberToObject(j, "mean_nll", mean);
        cJSON_AddNumberToObject(j, "perplexity", ppl);
        cJSON_AddNumberToObject(j, "weight_bytes", (double)info.weight_bytes);
        cJSON_AddNumberToObject(j, "kv_bytes_per_token", kv_per_tok);
        cJSON_AddNumberToObject(j, "seconds", secs);
        char *s = cJSON_PrintUnformatted(j);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(j);
    } else {
        printf("model        %s\n", m->path);
        printf("device       %s; weights %s (%.1f MB), KV cache %s (%.0f bytes/token)\n", info.device_name,
               qdesc, info.weight_bytes / 1e6, kv, kv_per_tok);
        printf("text         %s: %d tokens, %lld used, windows of %d tokens%s: %d\n", a.file, n_ids,
               (long long)n, ctx, bos >= 0 ? " (BOS first)" : "", r.n_windows);
        printf("time         load %.1f s, scoring %.1f s (%.0f tok/s)\n", t_load, secs, (double)r.n_scored / secs);
        printf("tokens scored: %lld  mean NLL: %.6f  perplexity: %.4f\n", (long long)r.n_scored, mean, ppl);
    }
    fflush(stdout);
    free(ids);
    free(text);
    engine_free(e);
    model_free(m);
    return 0;

fail:
    fprintf(stderr, "peregrine perplexity: %s\n", err.msg[0] ? err.msg : pg_status_name(rc));
    free(ids);
    free(text);
    engine_free(e);
    model_free(m);
    return 1;
}
