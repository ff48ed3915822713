/* tools/quantize.c — `peregrine quantize IN OUT --quant int8|int4`: load a
 * model, quantize its matrices with the reference quantizer (model/quant.h)
 * on all cores, and write a checkpoint folder that `--model OUT` loads with
 * no re-quantization at start-up (quant_write_checkpoint). */
#include "tools.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/threadpool.h"
#include "../model/model.h"
#include "../model/quant.h"

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
        "  --threads N              threads (default: all cores)\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int quantize_main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *quant = NULL;
    int group = 32, lm_head = -1, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) { quantize_usage(stdout); return 0; }
        if (!strcmp(k, "--no-quant-lm-head")) { lm_head = 0; continue; }
        if (!strcmp(k, "--quant-lm-head")) { lm_head = 1; continue; }
        if (!strcmp(k, "--quant") || !strcmp(k, "--group-size") || !strcmp(k, "--threads")) {
            if (!v) { fprintf(stderr, "peregrine quantize: %s needs a value\n", k); return 2; }
            i++;
            if (!strcmp(k, "--quant")) { quant = v; continue; }
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 0 || n > 4096) {
                fprintf(stderr, "peregrine quantize: %s: '%s' is not a number\n", k, v);
                return 2;
            }
            if (!strcmp(k, "--group-size")) group = (int)n;
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

    pg_err err = {0};
    model *m = NULL;
    pg_pool *pool = NULL;
    quant_weights qw;
    memset(&qw, 0, sizeof qw);
    model_load_opts lo = {.path = in};
    double t0 = now_s();
    int rc = model_load(&lo, &m, &err);
    double t1 = now_s();
    if (!rc) rc = pool_create(threads, &pool, &err);
    if (!rc && lm_head < 0) lm_head = quant_lm_head_auto(m);
    if (!rc) rc = quant_weights_make(m, to, group, lm_head, pool, &qw, &err);
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
        printf("weights   %zu bytes (as stored: %zu)\n", qw.bytes, model_weight_bytes(m));
        printf("time      load %.2f s, quantize %.2f s (%d threads), write %.2f s\n", t1 - t0, t2 - t1, threads,
               t3 - t2);
    }
    quant_weights_free(&qw);
    pool_free(pool);
    model_free(m);
    return rc ? 1 : 0;
}
