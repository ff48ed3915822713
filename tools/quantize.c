/* tools/quantize.c — `peregrine quantize IN OUT --quant int8|int4`: load a
 * model, quantize its matrices with the reference quantizer (model/quant.h)
 * on all cores, and write a checkpoint folder that `--model OUT` loads with
 * no re-quantization at start-up (quant_write_checkpoint).
 * With --calib TEXT the layer matrices get calibrated group parameters
 * (model/calib.h): the text is tokenized, cut into windows of --calib-ctx
 * tokens (BOS first when the tokenizer adds one, as in use: its activations
 * are the ones that matter most) and run through a CPU engine on the weights
 * as stored, whose observer gathers the importance of every input column. */
#include "tools.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/threadpool.h"
#include "../model/model.h"
#include "../model/engine.h"
#include "../model/calib.h"
#include "../model/quant.h"
#include "../tokenizer/tokenizer.h"

static void quantize_usage(FILE *f) {
    fprintf(f,
        "usage: peregrine quantize IN OUT --quant int8|int4 [options]\n"
        "  IN                       GGUF file, HF checkpoint folder, or default\n"
        "  OUT                      folder to write (config.json, model.safetensors, tokenizer)\n"
        "  --quant int8|int4        int8: per output channel, symmetric; int4: groups, scale + minimum\n"
        "  --group-size 32|64|128   int4 group size (default 32)\n"
        "  --quant-lm-head          give the LM head the --quant format even when it is stored quantized\n"
        "  --no-quant-lm-head       keep the LM head in its stored format\n"
        "                           (default: quantize an F32/F16/BF16 LM head, keep an already-quantized one)\n"
        "  --calib TEXT             int4: fit each group to the input activations seen on this text\n"
        "                           (use a text other than the one you evaluate on)\n"
        "  --calib-tokens N         calibration tokens to use (default 4096)\n"
        "  --calib-ctx N            calibration window in tokens, BOS included (default 512)\n"
        "  --threads N              threads (default: all cores)\n");
}

/* Run the first n_max tokens of `path` through a CPU engine on m's stored
 * weights with g observing; windows of ctx tokens. */
static int calibrate(const model *m, const char *path, int64_t n_max, int ctx, int threads, calib_stats *cs,
                     pg_err *err) {
    if (!m->tok) return pg_errf(err, PG_EINVAL, "%s has no tokenizer", m->path);
    char *text = NULL;
    int32_t *ids = NULL, *win = NULL;
    engine *e = NULL;
    size_t len = 0;
    int n_ids = 0;
    int rc = pg_read_file(path, &text, &len, err);
    if (!rc) rc = tok_encode(m->tok, text, len, 0, 0, &ids, &n_ids, err);
    if (!rc && n_ids < 16) rc = pg_errf(err, PG_EINVAL, "--calib %s: %d tokens, too few", path, n_ids);
    int max_pos = m->cfg.max_pos > 0 ? m->cfg.max_pos : 2048;
    if (!rc && (ctx < 2 || ctx > max_pos))
        rc = pg_errf(err, PG_EINVAL, "--calib-ctx %d not in [2, %d]", ctx, max_pos);
    if (!rc) {
        engine_opts eo;
        engine_opts_default(&eo);
        eo.device = ENGINE_DEVICE_CPU;
        eo.max_seq_len = ctx;
        eo.n_threads = threads;
        eo.observe = calib_observe;
        eo.observe_ctx = cs;
        rc = engine_create(m, &eo, &e, err);
    }
    int64_t n = n_ids < n_max ? n_ids : n_max;
    int bos = tok_add_bos(m->tok) ? tok_bos_id(m->tok) : -1;
    win = pg_xmalloc((size_t)ctx * sizeof *win);
    sampler_params sp;
    sampler_params_default(&sp);
    for (int64_t i0 = 0; !rc && i0 < n; i0 += ppl_window_text(ctx, bos)) {
        int k = ppl_window(ids, n, i0, ctx, bos, win);   /* the windows perplexity scores */
        rc = engine_slot_reset(e, 0, &sp, err);
        engine_row row = {.slot = 0, .tokens = win, .n_tokens = k, .pos = 0, .sample = 0};
        if (!rc) rc = engine_step(e, &row, 1, NULL, err);
    }
    engine_free(e);
    free(win);
    free(ids);
    free(text);
    return rc;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int quantize_main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *quant = NULL, *calib = NULL;
    int group = 32, lm_head = -1, threads = 0, calib_ctx = 512;
    long calib_n = 4096;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) { quantize_usage(stdout); return 0; }
        if (!strcmp(k, "--no-quant-lm-head")) { lm_head = 0; continue; }
        if (!strcmp(k, "--quant-lm-head")) { lm_head = 1; continue; }
        if (!strcmp(k, "--quant") || !strcmp(k, "--group-size") || !strcmp(k, "--threads") ||
            !strcmp(k, "--calib") || !strcmp(k, "--calib-tokens") || !strcmp(k, "--calib-ctx")) {
            if (!v) { fprintf(stderr, "peregrine quantize: %s needs a value\n", k); return 2; }
            i++;
            if (!strcmp(k, "--quant")) { quant = v; continue; }
            if (!strcmp(k, "--calib")) { calib = v; continue; }
            char *end;
            long n = strtol(v, &end, 10);
            long hi = !strcmp(k, "--calib-tokens") ? 1L << 30 : !strcmp(k, "--calib-ctx") ? 1L << 20 : 4096;
            if (end == v || *end || n < 0 || n > hi) {
                fprintf(stderr, "peregrine quantize: %s: '%s' is not a number in [0, %ld]\n", k, v, hi);
                return 2;
            }
            if (!strcmp(k, "--group-size")) group = (int)n;
            else if (!strcmp(k, "--calib-tokens")) calib_n = n;
            else if (!strcmp(k, "--calib-ctx")) calib_ctx = (int)n;
            else threads = (int)n;
            continue;
        }
        if (!strncmp(k, "--", 2)) { fprintf(stderr, "peregrine quantize: unknown option %s\n", k); return 2; }
        if (!in) in = k;
        else if (!out) out = k;
        else { fprintf(stderr, "peregrine quantize: unexpected argument %s\n", k); return 2; }
    }
    if (!in || !out || !quant) { quantize_usage(stderr); return 2; }
    pg_dtype to;
    if (!strcmp(quant, "int8")) to = PG_QI8;
    else if (!strcmp(quant, "int4")) to = PG_QI4;
    else { fprintf(stderr, "peregrine quantize: --quant: '%s' is not int8 or int4\n", quant); return 2; }
    if (to == PG_QI4 && group != 32 && group != 64 && group != 128) {
        fprintf(stderr, "peregrine quantize: --group-size %d: int4 groups are 32, 64 or 128\n", group);
        return 2;
    }
    if (threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        threads = nc > 0 ? (int)nc : 1;
    }

    if (calib && to != PG_QI4) {
        fprintf(stderr, "peregrine quantize: --calib applies to --quant int4 (int8 per channel gained nothing "
                        "from it)\n");
        return 2;
    }
    if (calib && calib_n < 16) {
        fprintf(stderr, "peregrine quantize: --calib-tokens %ld: use at least 16\n", calib_n);
        return 2;
    }

    pg_err err = {0};
    model *m = NULL;
    pg_pool *pool = NULL;
    calib_stats *cs = NULL;
    double tc0 = 0, tc1 = 0;
    quant_weights qw;
    memset(&qw, 0, sizeof qw);
    model_load_opts lo = {.path = in};
    double t0 = now_s();
    int rc = model_load(&lo, &m, &err);
    double t1 = now_s();
    if (!rc) rc = pool_create(threads, &pool, &err);
    if (!rc && lm_head < 0) lm_head = quant_lm_head_auto(m);
    if (!rc && calib) {
        tc0 = now_s();
        cs = calib_new(&m->cfg);
        rc = calibrate(m, calib, calib_n, calib_ctx, threads, cs, &err);
        tc1 = now_s();
    }
    double tq = now_s();
    if (!rc) rc = quant_weights_make_calib(m, to, group, lm_head, cs, pool, &qw, &err);
    double t2 = now_s();
    if (!rc) rc = quant_write_checkpoint(m, &qw, quant, to == PG_QI4 ? group : 0, lm_head, out, &err);
    double t3 = now_s();
    if (rc) {
        fprintf(stderr, "peregrine quantize: %s\n", err.msg);
    } else {
        char how[32];
        snprintf(how, sizeof how, to == PG_QI4 ? "groups of %d" : "per output channel", group);
        printf("quantized %s -> %s: %s, %s, LM head %s\n", m->path, out, quant, how,
               lm_head ? "quantized" : "as stored");
        if (cs)
            printf("calib     %s: %lld tokens in windows of %d, %.2f s%s\n", calib, (long long)calib_tokens(cs),
                   calib_ctx, tc1 - tc0, lm_head ? " (the LM head is not calibrated)" : "");
        printf("weights   %zu bytes (as stored: %zu)\n", qw.bytes, model_weight_bytes(m));
        printf("time      load %.2f s, quantize %.2f s (%d threads), write %.2f s\n", t1 - t0, t2 - tq, threads,
               t3 - t2);
    }
    quant_weights_free(&qw);
    calib_free(cs);
    pool_free(pool);
    model_free(m);
    return rc ? 1 : 0;
}
