/*
 * server/serve.c — `peregrine serve`: start-up, signals, graceful shutdown.
 *
 * Order: parse options -> block SIGINT/SIGTERM in every thread (they are
 * taken with sigwait() here, so no handler and no global flag) -> listen
 * (GET /health answers 503 "loading") -> load the model, create the engine
 * and the scheduler -> ready (200) -> wait for a signal -> stop accepting,
 * let running requests finish for --grace seconds, cancel the rest, close
 * the connections, free everything, exit 0.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "server_internal.h"

/* ---------------------------------------------------------------- backend */
/* The scheduler's view of the real engine and tokenizer. */
static int be_reset(void *ctx, int slot, const sampler_params *p, pg_err *err) {
    return engine_slot_reset(((srv_server *)ctx)->e, slot, p, err);
}
static int be_step(void *ctx, const engine_row *rows, int n, engine_result *res, pg_err *err) {
    return engine_step(((srv_server *)ctx)->e, rows, n, res, err);
}
static int be_is_eos(void *ctx, int32_t id) {
    const model_config *c = &((srv_server *)ctx)->m->cfg;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}
/* skip_special = 1: control tokens (an ignored EOS) print nothing */
static void *be_detok_new(void *ctx) { return tok_stream_new(((srv_server *)ctx)->m->tok, 1); }
static int be_detok_push(void *d, int32_t id, char **out) { return tok_stream_push(d, id, out); }
static int be_detok_flush(void *d, char **out) { return tok_stream_flush(d, out); }
static void be_detok_free(void *d) { tok_stream_free(d); }

static int parse_device(const char *s, engine_device *d, pg_err *err) {
    if (!strcmp(s, "auto")) {
        *d = engine_cuda_available() ? ENGINE_DEVICE_CUDA : ENGINE_DEVICE_CPU;
        return PG_OK;
    }
    if (!strcmp(s, "cpu")) { *d = ENGINE_DEVICE_CPU; return PG_OK; }
    if (!strcmp(s, "cuda")) { *d = ENGINE_DEVICE_CUDA; return PG_OK; }
    return pg_errf(err, PG_EINVAL, "--device: '%s' is not one of auto, cpu, cuda", s);
}

static void token_text(const model *m, int id, char *buf, size_t cap) {
    buf[0] = 0;
    if (id < 0) return;
    int n = tok_piece_bytes(m->tok, id, buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
}

/* Load the model and the engine, recognise the chat template, start the
 * scheduler. */
static int load(srv_server *s, pg_err *err) {
    const server_config *c = &s->cfg;
    engine_device dev = ENGINE_DEVICE_CPU;
    PG_TRY(parse_device(c->device, &dev, err));
    model_load_opts lo = {0};
    lo.path = c->random_weights ? NULL : c->model;
    lo.random_preset = c->random_weights;
    lo.tokenizer_path = c->tokenizer;
    lo.seed = 1234;
    lo.random_dtype = PG_BF16;
    lo.random_on_device = dev == ENGINE_DEVICE_CUDA;
    double t0 = pg_now();
    PG_TRY(model_load(&lo, &s->m, err));
    if (!s->m->tok) return pg_errf(err, PG_EINVAL, "%s has no tokenizer (give --tokenizer)", s->m->path);
    engine_opts eo;
    engine_opts_default(&eo);
    eo.device = dev;
    eo.n_threads = c->threads;
    eo.max_seq_len = c->max_seq_len;
    eo.gpu_id = c->gpu_id;
    PG_TRY(engine_opts_parse_formats(&eo, c->quant, c->group_size, c->kv_dtype, err));
    eo.quant_lm_head = c->quant_lm_head;
    PG_TRY(engine_create(s->m, &eo, &s->e, err));
    engine_info_t info;
    engine_info(s->e, &info);
    char wfmt[96];
    engine_weights_desc(&info, wfmt, sizeof wfmt);
    LOG_INFO("serve: engine on %s: weights %s (%.1f MB), KV cache %s (%.1f MB: %d slot(s) x %d positions)",
             info.device_name, wfmt, info.weight_bytes / 1e6, engine_kv_name(info.kv), info.kv_bytes / 1e6,
             info.max_slots, info.max_seq_len);
    s->vocab = s->m->cfg.vocab_size;
    s->max_seq_len = info.max_seq_len;
    snprintf(s->model_id, sizeof s->model_id, "%s", c->alias ? c->alias : s->m->name);
    token_text(s->m, s->m->cfg.bos_id, s->bos_text, sizeof s->bos_text);
    token_text(s->m, s->m->cfg.n_eos > 0 ? s->m->cfg.eos_ids[0] : -1, s->eos_text, sizeof s->eos_text);
    pg_err terr = {0};
    s->tmpl_rc = chat_template_for_model(s->m, c->chat_template, &s->tmpl, &terr);
    if (s->tmpl_rc) {
        snprintf(s->tmpl_err, sizeof s->tmpl_err, "%s", terr.msg);
        LOG_WARN("serve: chat requests will be refused: %s", terr.msg);
    } else {
        LOG_INFO("serve: chat template %s%s%s", chat_template_kind_name(s->tmpl.kind),
                 s->tmpl.has_default_system ? " with default system prompt: " : "",
                 s->tmpl.has_default_system ? s->tmpl.default_system : "");
    }
    sched_backend be = {
        .ctx = s, .max_slots = info.max_slots, .max_seq_len = info.max_seq_len, .vocab = s->vocab,
        .slot_reset = be_reset, .step = be_step, .is_eos = be_is_eos,
        .detok_new = be_detok_new, .detok_push = be_detok_push, .detok_flush = be_detok_flush,
        .detok_free = be_detok_free,
    };
    be.n_eos = s->m->cfg.n_eos;
    PG_TRY(sched_create(&be, c->max_queue, c->prefill_chunk, s->metrics, &s->sched, err));
    LOG_INFO("serve: model %s (%s) on %s, context %d tokens, %d slot(s), loaded in %.1f s", s->model_id, s->m->path,
             info.device_name, info.max_seq_len, info.max_slots, pg_now() - t0);
    return PG_OK;
}

int serve_main(int argc, char **argv) {
    srv_server *s = pg_xcalloc(1, sizeof *s);
    int help = 0, rc = 0;
    pg_err err = {0};
    if (srvcfg_parse(argc, argv, &s->cfg, &help, &err)) {
        fprintf(stderr, "peregrine serve: %s\n", err.msg);
        srvcfg_free(&s->cfg);
        free(s);
        return 2;
    }
    if (help) {
        srvcfg_usage(stdout);
        srvcfg_free(&s->cfg);
        free(s);
        return 0;
    }
    pg_log_set_json(!strcmp(s->cfg.log_format, "json"));
    srvcfg_dump(&s->cfg);

    /* Before any thread exists: signals go to sigwait() below only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    s->metrics = metrics_new();
    s->id_salt = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid() ^ (uint64_t)(pg_now() * 1e9);
    s->started = (long)time(NULL);
    if (http_start(s, &err)) {
        LOG_ERROR("serve: %s", err.msg);
        rc = 1;
        goto out;
    }
    LOG_INFO("serve: listening on http://%s:%d (loading the model)", s->cfg.host, s->port);
    if (load(s, &err)) {
        LOG_ERROR("serve: %s", err.msg);
        rc = 1;
        goto out;
    }
    atomic_store(&s->ready, 1);
    LOG_INFO("serve: ready on http://%s:%d", s->cfg.host, s->port);

    int sig = 0;
    sigwait(&sigs, &sig);
    LOG_INFO("serve: %s received; finishing running requests (grace %.1f s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
             s->cfg.grace);
    atomic_store(&s->stopping, 1);
    http_quiesce(s);
    sched_drain(s->sched, s->cfg.grace);
    /* Every request is finished and its connection resumed; give the HTTP
     * threads a moment to write the last bytes before closing. */
    for (double until = pg_now() + 5; atomic_load(&s->inflight) > 0 && pg_now() < until;) usleep(10 * 1000);
    if (atomic_load(&s->inflight) > 0)
        LOG_WARN("serve: %d responses still being written at exit", atomic_load(&s->inflight));
out:
    http_stop(s);
    sched_free(s->sched);
    engine_free(s->e);
    model_free(s->m);
    metrics_free(s->metrics);
    LOG_INFO("serve: stopped");
    srvcfg_free(&s->cfg);
    free(s);
    return rc;
}
