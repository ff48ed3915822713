/*
 * server/server_internal.h — types shared by the files of server/ (and by
 * tests/test_server.c); nothing outside server/ and tests/ includes it.
 *
 *   util.c      growable byte buffer (sbuf), UTF-8 validation/sanitising
 *   stop.c      stop-string matcher (across token boundaries, never emitted)
 *   api.c       OpenAI request JSON -> api_request (validation, error objects)
 *   respond.c   request output -> OpenAI JSON (responses, SSE chunks, timings)
 *   sched.c     request queue, admission, cancellation, the engine thread
 *   metrics.c   Prometheus counters and histograms
 *   options.c   server options table (CLI flags, --config JSON, --help, dump)
 *   http.c      libmicrohttpd glue: routes, limits, auth, suspend/resume
 *   serve.c     serve_main: start-up, signals, graceful shutdown
 *   chat_page.c the built-in chat page (a C string)
 *
 * Threads: libmicrohttpd's pool threads run http.c, api.c, respond.c; the
 * engine thread runs sched.c's loop (and stop.c, the detokenizer). They meet
 * only in a srv_request, whose output fields are guarded by its mutex.
 */
#ifndef PG_SERVER_INTERNAL_H
#define PG_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../common/common.h"
#include "../model/engine.h"
#include "chat.h"

/* ---------------------------------------------------------------- util.c */
/* Growable byte buffer; a zeroed sbuf is empty and valid. Aborts on OOM
 * (sizes are bounded by the body limit and the context length). */
typedef struct {
    char  *p;
    size_t n, cap;
} sbuf;
void sbuf_put(sbuf *b, const void *s, size_t n);
void sbuf_puts(sbuf *b, const char *s);
void sbuf_putc(sbuf *b, char c);
void sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(sbuf *b);

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int   srv_utf8_valid(const char *s, size_t n);
/* malloc'd NUL-terminated copy with each maximal invalid subpart replaced by U+FFFD. */
char *srv_utf8_sanitize(const char *s, size_t n);

/* ---------------------------------------------------------------- stop.c */
#define STOP_MAX 4
/* Holds back the text that could still become a stop string, so that a stop
 * string split over several tokens is never emitted. */
typedef struct {
    int    n_stop;
    char  *stop[STOP_MAX];
    size_t len[STOP_MAX];
    sbuf   held;      /* text not emitted yet: a suffix that is a prefix of a stop string */
    int    stopped;   /* a stop string matched; further input is ignored */
} stop_matcher;
void stop_init(stop_matcher *m, char *const *stops, int n_stop);
/* Feed newly decoded text; appends the text that is now safe to emit to out.
 * Returns 1 when a stop string matched (out gets the text before it; the
 * stop string and anything after it are dropped). */
int  stop_feed(stop_matcher *m, const char *text, size_t n, sbuf *out);
/* End of generation without a match: release the held text into out. */
void stop_flush(stop_matcher *m, sbuf *out);
void stop_free(stop_matcher *m);

/* ---------------------------------------------------------------- api.c */
typedef enum { API_CHAT = 0, API_COMPLETION = 1 } api_kind;

/* An OpenAI error object plus its HTTP status. */
typedef struct {
    int         status;     /* 400, 401, 404, ... */
    const char *type;       /* "invalid_request_error", "authentication_error", ... */
    const char *code;       /* NULL or e.g. "model_not_found", "context_length_exceeded" */
    char        param[64];  /* the offending field ("" if none) */
    char        message[512];
} api_error;
/* Fill e; type from status. Returns -1 so handlers can `return api_fail(...)`. */
int api_fail(api_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

typedef struct {
    char    *text;      /* prompt text, or NULL when given as token ids */
    int32_t *ids;       /* token ids (given, or filled by tokenizing text) */
    int      n_ids;
} api_prompt;

typedef struct {
    api_kind       kind;
    char          *model;        /* requested model id, or NULL */
    chat_message  *msgs;         /* chat: role/content strings owned here */
    int            n_msgs;
    api_prompt    *prompts;      /* completions: one or more prompts */
    int            n_prompts;
    int            max_tokens;   /* -1: until the context is full */
    sampler_params sp;           /* logit bias points into bias_ids/bias_vals */
    int            seed_set;
    int32_t       *bias_ids;
    float         *bias_vals;
    char          *stop[STOP_MAX];
    int            n_stop;
    int            logprobs;     /* return the sampled tokens' logprobs */
    int            top_logprobs; /* alternatives per token (chat: top_logprobs, completions: logprobs N) */
    int            n;            /* choices per prompt */
    int            echo;         /* completions: prepend the prompt to the text */
    int            ignore_eos, min_tokens;
    int            stream, include_usage;
    char          *user;
} api_request;

/* Parse and validate a request body. vocab bounds logit_bias keys and prompt
 * token ids. On error fills e (status 400; param names the field) and returns
 * -1; r is then released. */
int  api_parse_request(api_kind kind, const char *body, size_t len, int vocab, api_request *r, api_error *e);
void api_request_free(api_request *r);
/* {"error": {"message", "type", "param", "code"}} as a malloc'd string. */
char *api_error_json(const api_error *e);

/* ---------------------------------------------------------------- metrics.c */
typedef struct srv_metrics srv_metrics;
srv_metrics *metrics_new(void);
void metrics_free(srv_metrics *m);
/* Thread-safe. endpoint is a route label ("/v1/chat/completions", "other"). */
void metrics_request(srv_metrics *m, const char *endpoint, int status);
void metrics_tokens(srv_metrics *m, int prompt, int generated);
void metrics_ttft(srv_metrics *m, double seconds);
void metrics_itl(srv_metrics *m, double seconds);
void metrics_cancelled(srv_metrics *m);
void metrics_decode_rate(srv_metrics *m, double tokens_per_s);
/* Reads the running and queued gauges (e.g. sched_counts). */
typedef void (*metrics_gauges_fn)(void *ctx, int *running, int *queued);
/* Renders the counters as they were on entry, then asks gauges for the
 * gauges. The order matters: a finishing request leaves the running gauge
 * before it is counted as cancelled (sched.c, finish_and_notify), so a
 * scrape that shows a request cancelled shows it no longer running. gauges may
 * be NULL (both 0); it is called without m's mutex held. */
void metrics_render(srv_metrics *m, metrics_gauges_fn gauges, void *ctx, sbuf *out);

/* ---------------------------------------------------------------- sched.c */
typedef enum { FINISH_NONE = 0, FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR } finish_reason;
const char *finish_reason_name(finish_reason f);

typedef enum { SEQ_QUEUED = 0, SEQ_PREFILL, SEQ_DECODE, SEQ_DONE } seq_state;

/* One choice: a prompt and the tokens generated for it. */
typedef struct {
    /* Set before submit, read-only afterwards. */
    const int32_t *prompt;       /* borrowed from the request's api_prompt */
    int            n_prompt;
    int            max_new;      /* tokens to generate at most (>= 1) */
    int            min_tokens, ignore_eos;
    sampler_params sp;
    int            want_logprobs, top_n;
    int            index;        /* choice index in the response */
    int            prompt_index; /* which prompt (completions) */

    /* Output, written by the engine thread under the request's mutex. */
    sbuf           text;         /* emitted text (detokenized, stop strings removed) */
    int            n_out;        /* tokens with a record below (EOS excluded) */
    int            cap_out;
    int32_t       *out_ids;      /* [cap_out] */
    float         *out_lp;       /* [cap_out] logprob (when want_logprobs) */
    int32_t       *out_top_ids;  /* [cap_out * top_n] */
    float         *out_top_lp;   /* [cap_out * top_n] */
    size_t        *out_text_end; /* [cap_out] text.n after the token's text was emitted */
    finish_reason  finish;
    int            n_gen;        /* tokens generated, EOS included */
    double         t_start, t_first, t_last;  /* pg_now(): admitted, first token, last token */
    double         decode_step_s; /* seconds inside engine_step for this sequence's decode steps */
    char           error[256];

    /* Engine-thread private. */
    seq_state      state;
    int            slot, pos, n_prefilled;
    int32_t        next;         /* last sampled token, fed in the next decode row */
    void          *detok;
    stop_matcher   stopm;
} srv_seq;

typedef struct srv_request srv_request;
struct srv_request {
    pthread_mutex_t mu;
    int             refs;          /* under mu; last srv_request_release frees */
    atomic_int      cancelled;     /* set by anyone; the engine reaps at the next step */
    int             n_seqs;
    srv_seq        *seqs;
    int             n_done;        /* under mu */
    double          t_submit;      /* pg_now() */
    double          deadline;      /* pg_now() limit; 0 = none */
    api_request     api;           /* the parsed request (prompts, stop strings live here) */

    /* HTTP side, guarded by mu. notify is called by the engine thread with mu
     * held after new output (final = the whole request is finished).
     * peer_gone is called by the engine thread with mu held; 1 = the client
     * left (the request is then cancelled). Both may be NULL. */
    void          (*notify)(srv_request *r, int final);
    int           (*peer_gone)(srv_request *r);
    void           *http;          /* http.c's connection state */
    double          last_peek;

    srv_request    *next_in_queue; /* scheduler's queue link */
};

srv_request *srv_request_new(int n_seqs);
void srv_request_retain(srv_request *r);
void srv_request_release(srv_request *r);

/* What the scheduler needs from the engine and the tokenizer. The real one
 * wraps engine.h and tokenizer.h (serve.c); tests plug in a fake engine. */
typedef struct {
    void *ctx;
    int   max_slots, max_seq_len, vocab;
    int   (*slot_reset)(void *ctx, int slot, const sampler_params *p, pg_err *err);
    int   (*step)(void *ctx, const engine_row *rows, int n_rows, engine_result *res, pg_err *err);
    int   (*is_eos)(void *ctx, int32_t id);
    int   n_eos;                         /* EOS ids: how many alternatives min_tokens needs */
    void *(*detok_new)(void *ctx);
    int   (*detok_push)(void *d, int32_t id, char **out);   /* returns bytes, -1 on error */
    int   (*detok_flush)(void *d, char **out);
    void  (*detok_free)(void *d);
} sched_backend;

/* ---------------------------------------------------------------- respond.c */
#define RESP_MAX_SEQS 128   /* >= api.c's API_MAX_CHOICES */
typedef struct {
    const char *id;       /* "chatcmpl-..." / "cmpl-..." */
    const char *model;    /* served model id */
    long        created;  /* unix seconds */
    void       *tok_ctx;  /* token_bytes(tok_ctx, id, buf, cap): a token's bytes, -1 if unknown */
    int       (*token_bytes)(void *tok_ctx, int32_t id, char *buf, size_t cap);
} resp_ctx;
typedef struct { size_t text_off; int tok_off, started, finish_sent; } resp_seq_cursor;
typedef struct { resp_seq_cursor seq[RESP_MAX_SEQS]; int done_sent; } resp_cursor;
/* The whole response JSON (malloc'd) of a finished request; r->mu held. */
char *resp_full(const resp_ctx *c, const srv_request *r);
/* Append SSE events for output not yet sent (per cur) to out; r->mu held.
 * Returns 1 once every choice is finished and "data: [DONE]" was appended. */
int   resp_stream(const resp_ctx *c, const srv_request *r, resp_cursor *cur, sbuf *out);

typedef struct sched sched;
/* Start the engine thread. max_queue bounds requests waiting for a slot. */
int  sched_create(const sched_backend *be, int max_queue, int prefill_chunk, srv_metrics *metrics,
                  sched **out, pg_err *err);
/* Queue a request (takes a reference). PG_EBUSY: queue full; PG_ECANCELLED:
 * shutting down. */
int  sched_submit(sched *s, srv_request *r, pg_err *err);
/* Wake the engine thread (after setting r->cancelled). */
void sched_wake(sched *s);
void sched_counts(sched *s, int *running, int *queued);
/* Stop accepting; let work finish for up to grace_s seconds, then cancel the
 * rest; returns when the engine thread is idle. */
void sched_drain(sched *s, double grace_s);
/* Join the engine thread and free (after sched_drain). */
void sched_free(sched *s);

/* ---------------------------------------------------------------- options.c */
typedef struct {
    char   *model, *random_weights, *tokenizer, *alias, *host, *api_key;
    char   *chat_template, *log_format, *device, *kv_dtype, *quant, *config;
    int     port, max_queue, max_conns, http_threads, threads, max_seq_len, gpu_id, prefill_chunk;
    int     group_size, quant_lm_head;
    int64_t max_body, max_header;   /* bytes */
    double  conn_timeout, timeout, grace;  /* seconds */
} server_config;
/* Defaults, then --config FILE, then PEREGRINE_API_KEY, then flags.
 * *help = 1 when -h/--help was given (nothing else is parsed). */
int  srvcfg_parse(int argc, char **argv, server_config *c, int *help, pg_err *err);
void srvcfg_usage(FILE *f);
void srvcfg_dump(const server_config *c);   /* one LOG_INFO line, api key hidden */
void srvcfg_free(server_config *c);

/* ---------------------------------------------------------------- http.c */
typedef struct {
    server_config   cfg;
    struct MHD_Daemon *daemon;
    int             port;          /* the bound port */
    srv_metrics    *metrics;
    sched          *sched;         /* NULL while loading */
    model          *m;
    engine         *e;
    atomic_int      ready;         /* 1 once the model and engine are up */
    atomic_int      stopping;      /* 1 after SIGINT/SIGTERM */
    atomic_int      inflight;      /* HTTP-side request references alive */
    char            model_id[128];
    chat_template   tmpl;
    int             tmpl_rc;       /* PG_OK or why chat requests are refused */
    char            tmpl_err[PG_ERR_LEN];
    char            bos_text[64], eos_text[64];
    int             vocab, max_seq_len;
    atomic_ullong   next_id;       /* request ids and default seeds */
    uint64_t        id_salt;
    long            started;       /* unix seconds (the model's "created") */
} srv_server;

/* Start listening (model may still be loading: /health answers 503). */
int  http_start(srv_server *s, pg_err *err);
/* Stop accepting new connections (shutdown step 1). */
void http_quiesce(srv_server *s);
/* Close everything (after the scheduler drained). */
void http_stop(srv_server *s);
/* The built-in chat page (chat_page.c). */
extern const char srv_chat_page[];

#endif
