/*
 * server/main.c — the `peregrine` binary: one entry point, several subcommands.
 *
 *   peregrine generate  one-shot generation on the command line (streams to stdout)
 *   peregrine info      print a model's config, tensor types and memory needs
 *   peregrine serve     OpenAI-compatible HTTP server (server/serve.c)
 *   peregrine bench     engine-only speed measurement (tools/bench.c)
 *   peregrine perplexity  perplexity on a text file (tools/perplexity.c)
 *
 * Option tables: each subcommand here declares its options once in a table
 * {name, kind, help, default}; the table drives parsing and --help, so defaults
 * live in one place.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/engine.h"
#include "model/model.h"
#include "server/chat.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"
#include "tools/tools.h"

#define PEREGRINE_VERSION "0.1.0"

/* ---------------------------------------------------------------- options */
typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG } opt_kind;
typedef struct {
    const char *name;   /* long name without dashes */
    char        short_name;
    opt_kind    kind;
    const char *def;    /* default as text (NULL: unset) */
    const char *help;
    const char *value;  /* parsed value (points into argv or def) */
} cli_opt;

static cli_opt *opt_find(cli_opt *t, const char *name) {
    for (; t->name; t++)
        if (!strcmp(t->name, name)) return t;
    return NULL;
}

static const char *opt_str(cli_opt *t, const char *name) {
    cli_opt *o = opt_find(t, name);
    PG_ASSERT(o);
    return o->value;
}

static int opt_parse_number(const cli_opt *o, double *out, pg_err *err) {
    char *end;
    errno = 0;
    double v = strtod(o->value, &end);
    if (errno || end == o->value || *end || !isfinite(v))
        return pg_errf(err, PG_EINVAL, "--%s: '%s' is not a number", o->name, o->value);
    if (o->kind == OPT_INT && v != floor(v))
        return pg_errf(err, PG_EINVAL, "--%s: '%s' is not an integer", o->name, o->value);
    *out = v;
    return PG_OK;
}

static void opt_usage(const char *cmd, const char *synopsis, const cli_opt *t, FILE *f) {
    fprintf(f, "usage: peregrine %s %s\n\noptions:\n", cmd, synopsis);
    for (; t->name; t++) {
        char left[64];
        if (t->short_name) snprintf(left, sizeof left, "-%c, --%s%s", t->short_name, t->name, t->kind == OPT_FLAG ? "" : " V");
        else snprintf(left, sizeof left, "    --%s%s", t->name, t->kind == OPT_FLAG ? "" : " V");
        fprintf(f, "  %-28s %s", left, t->help);
        if (t->def && t->kind != OPT_FLAG) fprintf(f, " (default: %s)", t->def);
        fputc('\n', f);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help");
}

/* Parses argv[1..]; returns 1 if --help was given, 0 on success, -1 on error. */
static int opt_parse(cli_opt *t, int argc, char **argv, pg_err *err) {
    for (cli_opt *o = t; o->name; o++) o->value = o->def;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        cli_opt *o = NULL;
        const char *val = NULL;
        char name[64];
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (n >= sizeof name) n = sizeof name - 1;
            memcpy(name, a + 2, n);
            name[n] = 0;
            o = opt_find(t, name);
            if (eq) val = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (cli_opt *p = t; p->name; p++)
                if (p->short_name == a[1]) o = p;
        }
        if (!o) { pg_errf(err, PG_EINVAL, "unknown option '%s' (see --help)", a); return -1; }
        if (o->kind == OPT_FLAG) {
            if (val) { pg_errf(err, PG_EINVAL, "--%s takes no value", o->name); return -1; }
            o->value = "1";
            continue;
        }
        if (!val) {
            /* `--model` alone (followed by another option or nothing) means the default model */
            if (i + 1 >= argc || (argv[i + 1][0] == '-' && argv[i + 1][1] == '-')) {
                if (!strcmp(o->name, "model")) { o->value = "default"; continue; }
                pg_errf(err, PG_EINVAL, "--%s needs a value", o->name);
                return -1;
            }
            val = argv[++i];
        }
        o->value = val;
        if (o->kind == OPT_INT || o->kind == OPT_FLOAT) {
            double d;
            if (opt_parse_number(o, &d, err)) return -1;
        }
    }
    return 0;
}

static double opt_num(cli_opt *t, const char *name) {
    const char *v = opt_str(t, name);
    return v ? strtod(v, NULL) : 0.0;
}

/* ---------------------------------------------------------------- shared */
static int parse_device(const char *s, engine_device *d, pg_err *err) {
    if (!s || !strcmp(s, "auto")) {
#ifdef PG_CUDA
        *d = engine_cuda_available() ? ENGINE_DEVICE_CUDA : ENGINE_DEVICE_CPU;
#else
        *d = ENGINE_DEVICE_CPU;
#endif
        return PG_OK;
    }
    if (!strcmp(s, "cpu")) { *d = ENGINE_DEVICE_CPU; return PG_OK; }
    if (!strcmp(s, "cuda")) { *d = ENGINE_DEVICE_CUDA; return PG_OK; }
    return pg_errf(err, PG_EINVAL, "--device: '%s' is not one of auto, cpu, cuda", s);
}

static int load_model_from_opts(cli_opt *t, int on_device, model **m, pg_err *err) {
    model_load_opts lo = {0};
    lo.path = opt_str(t, "model");
    lo.random_preset = opt_str(t, "random-weights");
    lo.tokenizer_path = opt_str(t, "tokenizer");
    lo.seed = 1234;
    lo.random_dtype = PG_BF16;
    lo.random_on_device = on_device;
    if (lo.random_preset && lo.path && strcmp(lo.path, "default"))
        return pg_errf(err, PG_EINVAL, "give either --model or --random-weights, not both");
    if (lo.random_preset) lo.path = NULL;
    return model_load(&lo, m, err);
}

/* ---------------------------------------------------------------- generate */
static cli_opt g_generate_opts[] = {
    {"model", 'm', OPT_STR, "default", "GGUF file, safetensors file or HF directory; 'default' = SmolLM2-135M-Instruct", 0},
    {"random-weights", 0, OPT_STR, NULL, "use random weights (normal, std 0.02) for a preset in configs/", 0},
    {"tokenizer", 0, OPT_STR, NULL, "tokenizer.model / tokenizer.json overriding the model's", 0},
    {"prompt", 'p', OPT_STR, NULL, "raw prompt text", 0},
    {"chat", 'c', OPT_STR, NULL, "user message, rendered with the model's chat template", 0},
    {"system", 0, OPT_STR, NULL, "system message for --chat", 0},
    {"chat-template", 0, OPT_STR, NULL, "force a chat template: chatml, llama2, llama3, mistral, zephyr", 0},
    {"n", 'n', OPT_INT, "128", "maximum new tokens", 0},
    {"temperature", 't', OPT_FLOAT, "0", "sampling temperature; 0 = greedy", 0},
    {"top-k", 0, OPT_INT, "0", "top-k (0 = off)", 0},
    {"top-p", 0, OPT_FLOAT, "1", "top-p (1 = off)", 0},
    {"min-p", 0, OPT_FLOAT, "0", "min-p (0 = off)", 0},
    {"seed", 's', OPT_INT, "0", "random seed", 0},
    {"repetition-penalty", 0, OPT_FLOAT, "1", "repetition penalty over prompt and output (1 = off)", 0},
    {"presence-penalty", 0, OPT_FLOAT, "0", "presence penalty over output", 0},
    {"frequency-penalty", 0, OPT_FLOAT, "0", "frequency penalty over output", 0},
    {"ignore-eos", 0, OPT_FLAG, NULL, "keep generating past end-of-sequence tokens", 0},
    {"show-ids", 0, OPT_FLAG, NULL, "print token ids instead of text", 0},
    {"device", 'd', OPT_STR, "auto", "cpu, cuda or auto (cuda when a GPU is present)", 0},
    {"threads", 0, OPT_INT, "0", "CPU threads (0 = all cores)", 0},
    {"max-seq-len", 0, OPT_INT, "0", "KV cache length per slot (0 = min(context, 4096))", 0},
    {"quant", 0, OPT_STR, "none", "weight format: none (as stored), bf16, int8 (per channel), int4 (grouped)", 0},
    {"group-size", 0, OPT_INT, "32", "int4 group size: 32, 64 or 128", 0},
    {"quant-lm-head", 0, OPT_FLAG, NULL, "give the LM head the --quant format even when it is stored quantized", 0},
    {"no-quant-lm-head", 0, OPT_FLAG, NULL, "keep the LM head in its stored format under --quant (default: auto, "
     "quantize an F32/F16/BF16 head, keep an already-quantized one)", 0},
    {"kv-cache", 0, OPT_STR, "auto", "KV cache type: auto (f32 on CPU, bf16 on CUDA), f32, bf16, int8", 0},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static int is_eos(const model *m, int id) {
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_ids[i] == id) return 1;
    return 0;
}

static int generate_run(cli_opt *t, pg_err *err) {
    const char *prompt = opt_str(t, "prompt"), *chat = opt_str(t, "chat");
    if (!!prompt == !!chat) return pg_errf(err, PG_EINVAL, "give exactly one of --prompt or --chat");
    engine_device dev = ENGINE_DEVICE_CPU;
    PG_TRY(parse_device(opt_str(t, "device"), &dev, err));

    model *m = NULL;
    engine *e = NULL;
    int32_t *ids = NULL;
    char *text = NULL;
    tok_stream *ts = NULL;
    int rc = load_model_from_opts(t, dev == ENGINE_DEVICE_CUDA, &m, err);
    if (rc) goto done;
    if (!m->tok) { rc = pg_errf(err, PG_EINVAL, "%s has no tokenizer (use --tokenizer)", m->path); goto done; }

    int add_bos = tok_add_bos(m->tok);
    if (chat) {
        chat_message msgs[2];
        int nm = 0;
        const char *sys = opt_str(t, "system");
        if (sys) msgs[nm++] = (chat_message){"system", sys};
        msgs[nm++] = (chat_message){"user", chat};
        rc = chat_render_for_model(m, opt_str(t, "chat-template"), msgs, nm, 1, &text, err);
        if (rc) goto done;
        add_bos = 0; /* the template carries BOS text where the family wants it */
    }
    const char *src = chat ? text : prompt;
    int n_prompt = 0;
    rc = tok_encode(m->tok, src, strlen(src), add_bos, chat != NULL, &ids, &n_prompt, err);
    if (rc) goto done;
    if (n_prompt == 0) { rc = pg_errf(err, PG_EINVAL, "the prompt encodes to zero tokens"); goto done; }

    engine_opts eo;
    engine_opts_default(&eo);
    eo.device = dev;
    eo.n_threads = (int)opt_num(t, "threads");
    eo.max_seq_len = (int)opt_num(t, "max-seq-len");
    rc = engine_opts_parse_formats(&eo, opt_str(t, "quant"), (int)opt_num(t, "group-size"),
                                   opt_str(t, "kv-cache"), err);
    if (rc) goto done;
    eo.quant_lm_head = opt_str(t, "no-quant-lm-head") ? 0 : opt_str(t, "quant-lm-head") ? 1 : -1;
    rc = engine_create(m, &eo, &e, err);
    if (rc) goto done;
    engine_info_t info;
    engine_info(e, &info);
    int n_new = (int)opt_num(t, "n");
    if (n_new < 0) { rc = pg_errf(err, PG_EINVAL, "-n must be >= 0"); goto done; }
    if (n_prompt + n_new > info.max_seq_len) {
        rc = pg_errf(err, PG_ERANGE, "prompt (%d tokens) + -n %d is longer than the context (%d tokens)",
                     n_prompt, n_new, info.max_seq_len);
        goto done;
    }

    sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = (float)opt_num(t, "temperature");
    sp.top_k = (int)opt_num(t, "top-k");
    sp.top_p = (float)opt_num(t, "top-p");
    sp.min_p = (float)opt_num(t, "min-p");
    sp.seed = (uint64_t)opt_num(t, "seed");
    sp.repetition_penalty = (float)opt_num(t, "repetition-penalty");
    sp.presence_penalty = (float)opt_num(t, "presence-penalty");
    sp.frequency_penalty = (float)opt_num(t, "frequency-penalty");
    rc = engine_slot_reset(e, 0, &sp, err);
    if (rc) goto done;

    int show_ids = opt_str(t, "show-ids") != NULL, ignore_eos = opt_str(t, "ignore-eos") != NULL;
    ts = tok_stream_new(m->tok, 1);
    engine_result res;
    double t0 = pg_now();
    engine_row row = {.slot = 0, .tokens = ids, .n_tokens = n_prompt, .pos = 0, .sample = 1, .count_prompt = 1};
    rc = engine_step(e, &row, 1, &res, err);
    if (rc) goto done;
    double t1 = pg_now(), t_first = t1 - t0;
    int n_gen = 0, pos = n_prompt;
    while (n_gen < n_new) {
        int32_t tok = res.token;
        n_gen++;
        if (!ignore_eos && is_eos(m, tok)) break;
        if (show_ids) printf("%d ", tok);
        else {
            char *piece = NULL;
            int len = tok_stream_push(ts, tok, &piece);
            if (len > 0) fwrite(piece, 1, (size_t)len, stdout);
            free(piece);
        }
        fflush(stdout);
        if (n_gen == n_new) break;
        engine_row dr = {.slot = 0, .tokens = &tok, .n_tokens = 1, .pos = pos++, .sample = 1};
        rc = engine_step(e, &dr, 1, &res, err);
        if (rc) goto done;
    }
    if (!show_ids) {
        char *rest = NULL;
        int len = tok_stream_flush(ts, &rest);
        if (len > 0) fwrite(rest, 1, (size_t)len, stdout);
        free(rest);
    }
    double t2 = pg_now();
    printf("\n");
    fflush(stdout);
    /* decode rate counts the tokens produced by decode steps (the first token comes from prefill) */
    double dec_s = t2 - t1;
    fprintf(stderr, "[%s] prompt: %d tokens in %.1f ms (%.1f tok/s) | decode: %d tokens in %.1f ms (%.1f tok/s)\n",
            info.device_name, n_prompt, t_first * 1e3, n_prompt / t_first, n_gen > 0 ? n_gen - 1 : 0, dec_s * 1e3,
            n_gen > 1 ? (n_gen - 1) / dec_s : 0.0);
done:
    tok_stream_free(ts);
    free(ids);
    free(text);
    engine_free(e);
    model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- info */
static cli_opt g_info_opts[] = {
    {"model", 'm', OPT_STR, "default", "GGUF file, safetensors file or HF directory", 0},
    {"random-weights", 0, OPT_STR, NULL, "describe a preset in configs/ instead of a file", 0},
    {"tokenizer", 0, OPT_STR, NULL, "tokenizer override", 0},
    {NULL, 0, 0, NULL, NULL, NULL},
};

static int info_run(cli_opt *t, pg_err *err) {
    model *m = NULL;
    /* on_device=1: a preset is described without drawing its random weights */
    int rc = load_model_from_opts(t, 1, &m, err);
    if (rc) return rc;
    model_print_info(m, stdout);
    model_free(m);
    return PG_OK;
}

/* ---------------------------------------------------------------- dispatch */
typedef struct {
    const char *name, *synopsis, *help;
    cli_opt *opts;
    int (*run)(cli_opt *, pg_err *);
    int (*main_fn)(int, char **);
} subcommand;

static const subcommand g_cmds[] = {
    {"serve", "[options]", "OpenAI-compatible HTTP server", NULL, NULL, serve_main},
    {"generate", "[--model PATH] (--prompt TEXT | --chat TEXT) [options]", "one-shot generation, streamed to stdout",
     g_generate_opts, generate_run, NULL},
    {"bench", "[options]", "engine-only speed: prefill/decode tok/s, MBU", NULL, NULL, bench_main},
    {"perplexity", "[options]", "perplexity of a model on a text file (accuracy of --quant / --kv-cache)", NULL,
     NULL, perplexity_main},
    {"info", "[--model PATH | --random-weights PRESET]", "model config, tensor types, memory needed", g_info_opts,
     info_run, NULL},
    {"quantize", "IN OUT --quant int8|int4 [options]", "write a quantized checkpoint (int8 / int4 weights)", NULL, NULL,
     quantize_main},
};

static void usage(FILE *f) {
    fprintf(f, "peregrine %s — LLM inference server (Llama family)\n\nusage: peregrine COMMAND [options]\n\ncommands:\n",
            PEREGRINE_VERSION);
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].help);
    fprintf(f, "\n`peregrine COMMAND --help` lists a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version")) { printf("peregrine %s\n", PEREGRINE_VERSION); return 0; }
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++) {
        const subcommand *c = &g_cmds[i];
        if (strcmp(argv[1], c->name)) continue;
        if (c->main_fn) return c->main_fn(argc - 1, argv + 1);
        pg_err err = {0};
        int p = opt_parse(c->opts, argc - 1, argv + 1, &err);
        if (p == 1) { opt_usage(c->name, c->synopsis, c->opts, stdout); return 0; }
        if (p < 0) { fprintf(stderr, "peregrine %s: %s\n", c->name, err.msg); return 2; }
        int rc = c->run(c->opts, &err);
        if (rc) { fprintf(stderr, "peregrine %s: %s\n", c->name, err.msg); return 1; }
        return 0;
    }
    fprintf(stderr, "peregrine: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
