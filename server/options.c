/*
 * server/options.c — the server's options, one table (in the style of
 * redis' static_configs): name, type, default, min, max, help. The table
 * drives the command-line flags, the optional --config JSON file (keys are
 * the option names; dashes or underscores), --help and the effective
 * configuration dump at start-up. Defaults live only here.
 *
 * Precedence: defaults < --config file < PEREGRINE_API_KEY < command line.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

typedef enum { OPT_STR, OPT_INT, OPT_NUM, OPT_SIZE } opt_type;

typedef struct {
    const char *name;
    opt_type    type;
    size_t      off;      /* offset of the field in server_config */
    const char *def;      /* default as text; NULL: unset */
    double      min, max; /* numbers: inclusive range */
    const char *choices;  /* strings: "a|b|c" or NULL for free text */
    const char *help;
} opt_def;

#define F(x) offsetof(server_config, x)
static const opt_def g_opts[] = {
    {"model", OPT_STR, F(model), "default", 0, 0, NULL, "GGUF file, safetensors file or HF directory; 'default' = SmolLM2-135M-Instruct"},
    {"random-weights", OPT_STR, F(random_weights), NULL, 0, 0, NULL, "serve random weights for a preset in configs/ (speed tests)"},
    {"tokenizer", OPT_STR, F(tokenizer), NULL, 0, 0, NULL, "tokenizer.model / tokenizer.json overriding the model's"},
    {"alias", OPT_STR, F(alias), NULL, 0, 0, NULL, "model id to serve (default: the model's name)"},
    {"host", OPT_STR, F(host), "127.0.0.1", 0, 0, NULL, "address to listen on (IPv4)"},
    {"port", OPT_INT, F(port), "8080", 0, 65535, NULL, "TCP port; 0 = any free port (logged at start-up)"},
    {"api-key", OPT_STR, F(api_key), NULL, 0, 0, NULL, "require 'Authorization: Bearer KEY' on /v1/* (also PEREGRINE_API_KEY)"},
    {"max-queue", OPT_INT, F(max_queue), "128", 1, 1000000, NULL, "requests waiting for a slot before 429"},
    {"max-body", OPT_SIZE, F(max_body), "8M", 1024, 1073741824.0, NULL, "largest request body in bytes (k/M/G suffixes) before 413"},
    {"max-header", OPT_SIZE, F(max_header), "64k", 4096, 16777216.0, NULL, "memory per connection for the request line and headers"},
    {"max-conns", OPT_INT, F(max_conns), "256", 1, 100000, NULL, "concurrent connections"},
    {"http-threads", OPT_INT, F(http_threads), "4", 1, 256, NULL, "HTTP worker threads"},
    {"conn-timeout", OPT_NUM, F(conn_timeout), "30", 1, 86400, NULL, "seconds an idle or half-sent connection is kept"},
    {"timeout", OPT_NUM, F(timeout), "0", 0, 86400 * 7, NULL, "per-request time limit in seconds, queue time included; then finish_reason=length (0 = none)"},
    {"grace", OPT_NUM, F(grace), "10", 0, 3600, NULL, "seconds running requests may finish after SIGINT/SIGTERM before they are cancelled"},
    {"chat-template", OPT_STR, F(chat_template), "auto", 0, 0, "auto|chatml|llama2|llama3|mistral|zephyr", "chat template family; auto = recognise the model's"},
    {"log-format", OPT_STR, F(log_format), "text", 0, 0, "text|json", "log line format"},
    {"device", OPT_STR, F(device), "auto", 0, 0, "auto|cpu|cuda", "compute device; auto = cuda when a GPU is present"},
    {"threads", OPT_INT, F(threads), "0", 0, 1024, NULL, "CPU engine threads (0 = all cores)"},
    {"max-seq-len", OPT_INT, F(max_seq_len), "0", 0, 1 << 24, NULL, "context per request in tokens (0 = min(model context, 4096))"},
    {"kv-cache", OPT_STR, F(kv_dtype), "auto", 0, 0, "auto|f32|bf16|int8", "KV cache type (auto: f32 on CPU, bf16 on CUDA)"},
    {"quant", OPT_STR, F(quant), "none", 0, 0, "none|bf16|int8|int4", "weight format: as stored, bf16, int8 per channel, int4 grouped"},
    {"group-size", OPT_INT, F(group_size), "32", 32, 128, NULL, "int4 group size: 32, 64 or 128"},
    {"quant-lm-head", OPT_INT, F(quant_lm_head), "-1", -1, 1, NULL, "1: the LM head gets the --quant format too; 0: keep it as stored; -1: auto (quantize an F32/F16/BF16 head, keep an already-quantized one)"},
    {"gpu", OPT_INT, F(gpu_id), "0", 0, 64, NULL, "CUDA device index"},
    {"prefill-chunk", OPT_INT, F(prefill_chunk), "512", 1, 1 << 20, NULL, "prompt tokens per engine step (cancellation is checked between steps)"},
    {"config", OPT_STR, F(config), NULL, 0, 0, NULL, "JSON file of options (keys are option names); the command line wins"},
};
#undef F
#define N_OPTS ((int)(sizeof g_opts / sizeof g_opts[0]))

static char **str_at(server_config *c, const opt_def *o) { return (char **)((char *)c + o->off); }

static const opt_def *find(const char *name) {
    char norm[64];
    snprintf(norm, sizeof norm, "%s", name);
    for (char *p = norm; *p; p++)
        if (*p == '_') *p = '-';
    if (!strcmp(norm, "ctx")) snprintf(norm, sizeof norm, "max-seq-len");  /* alias */
    if (!strcmp(norm, "kv-dtype")) snprintf(norm, sizeof norm, "kv-cache");  /* alias */
    for (int i = 0; i < N_OPTS; i++)
        if (!strcmp(g_opts[i].name, norm)) return &g_opts[i];
    return NULL;
}

/* Set one option from text; checks type, range and choices. */
static int set_opt(server_config *c, const opt_def *o, const char *v, const char *where, pg_err *err) {
    if (o->type == OPT_STR) {
        if (o->choices) {
            size_t n = strlen(v);
            const char *p = o->choices;
            int ok = 0;
            while (*p) {
                const char *bar = strchr(p, '|');
                size_t k = bar ? (size_t)(bar - p) : strlen(p);
                if (k == n && !strncmp(p, v, n)) ok = 1;
                p += k + (bar != NULL);
            }
            if (!ok) return pg_errf(err, PG_EINVAL, "%s--%s: '%s' is not one of %s", where, o->name, v, o->choices);
        }
        free(*str_at(c, o));
        *str_at(c, o) = pg_xstrdup(v);
        return PG_OK;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (o->type == OPT_SIZE && end != v) {
        if (*end == 'k' || *end == 'K') { d *= 1024; end++; }
        else if (*end == 'm' || *end == 'M') { d *= 1024 * 1024; end++; }
        else if (*end == 'g' || *end == 'G') { d *= 1024.0 * 1024 * 1024; end++; }
    }
    if (errno || end == v || *end || !isfinite(d))
        return pg_errf(err, PG_EINVAL, "%s--%s: '%s' is not a number", where, o->name, v);
    if (o->type != OPT_NUM && d != floor(d))
        return pg_errf(err, PG_EINVAL, "%s--%s: '%s' is not an integer", where, o->name, v);
    if (d < o->min || d > o->max)
        return pg_errf(err, PG_EINVAL, "%s--%s: %s is out of range [%g, %g]", where, o->name, v, o->min, o->max);
    void *f = (char *)c + o->off;
    if (o->type == OPT_INT) *(int *)f = (int)d;
    else if (o->type == OPT_SIZE) *(int64_t *)f = (int64_t)d;
    else *(double *)f = d;
    return PG_OK;
}

static int load_config_file(server_config *c, const char *path, pg_err *err) {
    char *text = NULL;
    size_t len = 0;
    PG_TRY(pg_read_file(path, &text, &len, err));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return pg_errf(err, PG_EFORMAT, "%s: not a JSON object of options", path);
    }
    char where[300];
    snprintf(where, sizeof where, "%s: ", path);
    int rc = PG_OK;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const opt_def *o = find(it->string);
        if (!o || !strcmp(o->name, "config")) {
            rc = pg_errf(err, PG_EINVAL, "%s: unknown option '%s'", path, it->string);
            break;
        }
        char num[64];
        const char *v = NULL;
        if (cJSON_IsString(it)) v = it->valuestring;
        else if (cJSON_IsNumber(it)) {
            snprintf(num, sizeof num, "%.17g", it->valuedouble);
            v = num;
        } else {
            rc = pg_errf(err, PG_EINVAL, "%s: option '%s' must be a string or a number", path, it->string);
            break;
        }
        if ((rc = set_opt(c, o, v, where, err))) break;
    }
    cJSON_Delete(root);
    return rc;
}

void srvcfg_free(server_config *c) {
    for (int i = 0; i < N_OPTS; i++)
        if (g_opts[i].type == OPT_STR) {
            free(*str_at(c, &g_opts[i]));
            *str_at(c, &g_opts[i]) = NULL;
        }
}

int srvcfg_parse(int argc, char **argv, server_config *c, int *help, pg_err *err) {
    memset(c, 0, sizeof *c);
    *help = 0;
    for (int i = 0; i < N_OPTS; i++)
        if (g_opts[i].def) PG_ASSERT(set_opt(c, &g_opts[i], g_opts[i].def, "default ", NULL) == PG_OK);
    /* pass 1: --help and --config */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { *help = 1; return PG_OK; }
        const char *cfg = NULL;
        if (!strcmp(argv[i], "--config") && i + 1 < argc) cfg = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9)) cfg = argv[i] + 9;
        if (cfg) PG_TRY(load_config_file(c, cfg, err));
    }
    const char *env_key = getenv("PEREGRINE_API_KEY");
    if (env_key && *env_key) PG_TRY(set_opt(c, find("api-key"), env_key, "PEREGRINE_API_KEY: ", err));
    /* pass 2: flags */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] != '-') return pg_errf(err, PG_EINVAL, "unexpected argument '%s' (see --help)", a);
        char name[64];
        const char *eq = strchr(a + 2, '='), *v = NULL;
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (n >= sizeof name) n = sizeof name - 1;
        memcpy(name, a + 2, n);
        name[n] = 0;
        const opt_def *o = find(name);
        if (!o) return pg_errf(err, PG_EINVAL, "unknown option '%s' (see --help)", a);
        if (eq) v = eq + 1;
        else if (i + 1 < argc) v = argv[++i];
        else if (!strcmp(o->name, "model")) v = "default";
        else return pg_errf(err, PG_EINVAL, "--%s needs a value", o->name);
        if (!strcmp(o->name, "config")) continue;  /* loaded in pass 1 */
        PG_TRY(set_opt(c, o, v, "", err));
    }
    return PG_OK;
}

void srvcfg_usage(FILE *f) {
    fprintf(f, "usage: peregrine serve [options]\n\nOpenAI-compatible HTTP server.\n\noptions:\n");
    for (int i = 0; i < N_OPTS; i++) {
        const opt_def *o = &g_opts[i];
        char left[48];
        snprintf(left, sizeof left, "--%s %s", o->name,
                 o->type == OPT_STR ? "S" : o->type == OPT_NUM ? "X" : o->type == OPT_SIZE ? "BYTES" : "N");
        fprintf(f, "  %-24s %s", left, o->help);
        if (o->choices) fprintf(f, " [%s]", o->choices);
        if (o->type != OPT_STR) fprintf(f, " (range %g..%g)", o->min, o->max);
        if (o->def) fprintf(f, " (default: %s)", o->def);
        fputc('\n', f);
    }
    fprintf(f, "  %-24s %s\n", "-h, --help", "show this help");
}

void srvcfg_dump(const server_config *c) {
    sbuf b = {0};
    for (int i = 0; i < N_OPTS; i++) {
        const opt_def *o = &g_opts[i];
        const void *f = (const char *)c + o->off;
        if (i) sbuf_puts(&b, " ");
        sbuf_printf(&b, "%s=", o->name);
        switch (o->type) {
        case OPT_STR: {
            const char *s = *(char *const *)f;
            sbuf_puts(&b, !s ? "-" : !strcmp(o->name, "api-key") ? "(set)" : s);
            break;
        }
        case OPT_INT: sbuf_printf(&b, "%d", *(const int *)f); break;
        case OPT_SIZE: sbuf_printf(&b, "%lld", (long long)*(const int64_t *)f); break;
        case OPT_NUM: sbuf_printf(&b, "%g", *(const double *)f); break;
        }
    }
    LOG_INFO("serve: config %s", b.p ? b.p : "");
    sbuf_free(&b);
}
