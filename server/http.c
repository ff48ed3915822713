/*
 * server/http.c — libmicrohttpd glue: routing, limits, auth, the request
 * lifecycle on the HTTP side, and streaming by suspend/resume.
 *
 * Per request, libmicrohttpd calls on_request() several times: once when the
 * headers are in (route, method, auth and Content-Length are checked here, so
 * a bad request is refused before its body is read), once per body chunk
 * (accumulated up to --max-body), and once more when the body is complete
 * (the handler runs). A completion request is then submitted to the
 * scheduler:
 *   - stream: a content-reader response drains the request's output into
 *     SSE events; with nothing to send it suspends the connection (under the
 *     request's mutex) and returns 0; the engine thread's notify resumes it.
 *   - no stream: the connection is suspended in on_request() and resumed by
 *     notify when the request is finished; on_request() is then called again
 *     and answers with the whole JSON.
 * on_completed() drops the HTTP side's reference; a request whose client
 * vanished is cancelled there (or, while suspended, by peer_gone()).
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server_internal.h"

typedef enum {
    R_NONE = 0, R_CHAT, R_COMPLETIONS, R_MODELS, R_MODEL_ONE, R_HEALTH, R_METRICS, R_TOKENIZE, R_DETOKENIZE, R_PAGE
} route_id;

static const struct {
    const char *path;
    route_id    id;
    const char *method;  /* "GET" or "POST" */
    int         auth;    /* needs the API key */
} g_routes[] = {
    {"/v1/chat/completions", R_CHAT, "POST", 1}, {"/v1/completions", R_COMPLETIONS, "POST", 1},
    {"/v1/models", R_MODELS, "GET", 1},         {"/health", R_HEALTH, "GET", 0},
    {"/metrics", R_METRICS, "GET", 0},          {"/tokenize", R_TOKENIZE, "POST", 1},
    {"/detokenize", R_DETOKENIZE, "POST", 1},   {"/", R_PAGE, "GET", 0},
    {"/index.html", R_PAGE, "GET", 0},
};
#define N_ROUTES ((int)(sizeof g_routes / sizeof g_routes[0]))

/* State of one HTTP request (libmicrohttpd's con_cls). */
typedef struct {
    srv_server            *srv;
    struct MHD_Connection *conn;
    route_id               route;
    const char            *endpoint;   /* metrics label */
    double                 t0;
    sbuf                   body;
    int                    responded;  /* a response was queued */
    size_t                 too_large;  /* bytes dropped past --max-body */
    int                    status;
    srv_request           *req;        /* HTTP side's reference */
    int                    stream;
    /* under req->mu */
    int                    suspended;
    int                    gone;       /* the client left (peer_gone saw it) */
    /* streaming */
    resp_cursor           *cur;
    sbuf                   out;
    size_t                 out_off;
    resp_ctx               rc;
    char                   id[64];
} http_conn;

/* ---------------------------------------------------------------- responses */
static void add_common_headers(struct MHD_Response *resp, const char *type) {
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
}

static enum MHD_Result send_buf(http_conn *c, int status, const char *type, const char *data, size_t n) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    add_common_headers(resp, type);
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 429) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 405) {
        for (int i = 0; i < N_ROUTES; i++)
            if (g_routes[i].id == c->route) {
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, g_routes[i].method);
                break;
            }
    }
    if (atomic_load(&c->srv->stopping)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ok = MHD_queue_response(c->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES) {
        c->responded = 1;
        c->status = status;
    }
    return ok;
}

static enum MHD_Result send_json(http_conn *c, int status, const char *json) {
    return send_buf(c, status, "application/json", json, strlen(json));
}

static enum MHD_Result send_error(http_conn *c, const api_error *e) {
    char *j = api_error_json(e);
    enum MHD_Result r = send_json(c, e->status, j);
    free(j);
    return r;
}

static enum MHD_Result fail(http_conn *c, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result fail(http_conn *c, int status, const char *param, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    api_error e;
    api_fail(&e, status, param, "%s", msg);
    return send_error(c, &e);
}

static enum MHD_Result send_cjson(http_conn *c, int status, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    enum MHD_Result r = send_json(c, status, s);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- helpers */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t next_random(srv_server *s) { return mix64(s->id_salt ^ atomic_fetch_add(&s->next_id, 1)); }

/* Constant-time comparison of the bearer token with the key. */
static int auth_ok(srv_server *s, struct MHD_Connection *conn) {
    const char *key = s->cfg.api_key;
    if (!key || !*key) return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t n = strlen(h), k = strlen(key);
    unsigned diff = (unsigned)(n ^ k);
    for (size_t i = 0; i < k; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < n ? h[i] : 0);
    return diff == 0;
}

static int token_bytes_cb(void *ctx, int32_t id, char *buf, size_t cap) {
    return tok_piece_bytes((const tok_tokenizer *)ctx, id, buf, cap);
}

/* ---------------------------------------------------------------- hooks */
/* Engine thread, r->mu held: new output (final = request finished). */
static void on_notify(srv_request *r, int final) {
    http_conn *c = r->http;
    if (!c || !c->suspended) return;
    if (!c->stream && !final) return;
    c->suspended = 0;
    MHD_resume_connection(c->conn);
}

/* Engine thread, r->mu held: did the client of a suspended connection
 * leave? While suspended, libmicrohttpd does not touch the socket, so a
 * non-blocking peek is safe: 0 bytes = orderly close, an error = reset. */
static int on_peer_gone(srv_request *r) {
    http_conn *c = r->http;
    if (!c || !c->suspended) return 0;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) return 0;
    c->gone = 1;
    c->suspended = 0;
    MHD_resume_connection(c->conn);  /* let libmicrohttpd see the close and clean up */
    return 1;
}

/* ---------------------------------------------------------------- streaming */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    http_conn *c = cls;
    srv_request *r = c->req;
    if (c->out_off >= c->out.n) {
        c->out.n = c->out_off = 0;
        pthread_mutex_lock(&r->mu);
        if (c->gone) {
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        int done = resp_stream(&c->rc, r, c->cur, &c->out);
        if (c->out.n == 0) {
            if (done) {
                pthread_mutex_unlock(&r->mu);
                return MHD_CONTENT_READER_END_OF_STREAM;
            }
            /* nothing yet: suspend (never return 0 without it); notify resumes */
            c->suspended = 1;
            MHD_suspend_connection(c->conn);
            pthread_mutex_unlock(&r->mu);
            return 0;
        }
        pthread_mutex_unlock(&r->mu);
    }
    size_t n = c->out.n - c->out_off;
    if (n > max) n = max;
    memcpy(buf, c->out.p + c->out_off, n);
    c->out_off += n;
    return (ssize_t)n;
}

/* ---------------------------------------------------------------- completions */
/* Tokenize prompts and check lengths; fills r->api.prompts[*].ids. */
static int prepare_prompts(srv_server *s, api_request *a, api_error *e) {
    const tok_tokenizer *tok = s->m->tok;
    pg_err err = {0};
    if (a->kind == API_CHAT) {
        if (s->tmpl_rc) return api_fail(e, 400, "messages", "%s", s->tmpl_err);
        char *text = NULL;
        if (chat_render(&s->tmpl, a->msgs, a->n_msgs, 1, s->bos_text, s->eos_text, &text, &err))
            return api_fail(e, 400, "messages", "%s", err.msg);
        a->prompts = pg_xcalloc(1, sizeof *a->prompts);
        a->n_prompts = 1;
        a->prompts[0].text = text;
        /* the template carries BOS text where the family wants it */
        if (tok_encode(tok, text, strlen(text), 0, 1, &a->prompts[0].ids, &a->prompts[0].n_ids, &err))
            return api_fail(e, 400, "messages", "cannot tokenize the conversation: %s", err.msg);
        free(a->prompts[0].text);  /* chat responses do not echo */
        a->prompts[0].text = NULL;
    } else {
        for (int i = 0; i < a->n_prompts; i++) {
            api_prompt *p = &a->prompts[i];
            if (p->text && !p->ids) {
                if (tok_encode(tok, p->text, strlen(p->text), tok_add_bos(tok), 1, &p->ids, &p->n_ids, &err))
                    return api_fail(e, 400, "prompt", "cannot tokenize prompt %d: %s", i, err.msg);
            } else if (!p->text && a->echo) {
                size_t len;
                if (tok_decode(tok, p->ids, p->n_ids, 0, &p->text, &len, &err))
                    return api_fail(e, 400, "prompt", "cannot decode prompt %d: %s", i, err.msg);
            }
        }
    }
    for (int i = 0; i < a->n_prompts; i++) {
        int n = a->prompts[i].n_ids;
        const char *what = a->kind == API_CHAT ? "messages" : "prompt";
        if (n == 0) return api_fail(e, 400, what, "the prompt is empty (0 tokens)");
        int want = a->max_tokens < 0 ? 1 : a->max_tokens;
        if ((int64_t)n + want > s->max_seq_len) {
            api_fail(e, 400, a->max_tokens < 0 ? what : "max_tokens",
                     "this model's maximum context length is %d tokens, but %lld were requested "
                     "(%d in the prompt, %d for the completion)", s->max_seq_len, (long long)n + want, n,
                     a->max_tokens < 0 ? 1 : a->max_tokens);
            e->code = "context_length_exceeded";
            return -1;
        }
    }
    return 0;
}

/* A non-streamed request: wait (suspended) until it finishes, then answer
 * with the whole JSON. Called again after each resume. */
static enum MHD_Result finish_completion(http_conn *c) {
    srv_request *r = c->req;
    pthread_mutex_lock(&r->mu);
    if (c->gone) {
        pthread_mutex_unlock(&r->mu);
        return MHD_NO;  /* close: nobody is listening */
    }
    if (r->n_done < r->n_seqs) {  /* spurious wake-up: wait again */
        c->suspended = 1;
        MHD_suspend_connection(c->conn);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    api_error e;
    int bad = 0;
    for (int i = 0; i < r->n_seqs && !bad; i++) {
        if (r->seqs[i].finish == FINISH_ERROR) {
            api_fail(&e, 500, NULL, "generation failed: %s", r->seqs[i].error);
            bad = 1;
        } else if (r->seqs[i].finish == FINISH_CANCELLED) {
            api_fail(&e, 503, NULL, "the request was cancelled (the server is shutting down)");
            bad = 1;
        }
    }
    char *json = bad ? NULL : resp_full(&c->rc, r);
    pthread_mutex_unlock(&r->mu);
    if (bad) return send_error(c, &e);
    enum MHD_Result ok = send_json(c, 200, json);
    free(json);
    return ok;
}

static enum MHD_Result handle_completion(http_conn *c, api_kind kind) {
    srv_server *s = c->srv;
    api_error e;
    if (!atomic_load(&s->ready)) return fail(c, 503, NULL, "%s", "the model is still loading");
    api_request a;
    if (api_parse_request(kind, c->body.p ? c->body.p : "", c->body.n, s->vocab, &a, &e)) return send_error(c, &e);
    if (a.model && strcmp(a.model, s->model_id)) {
        api_fail(&e, 404, "model", "the model '%.100s' does not exist; this server serves '%s' (GET /v1/models)",
                 a.model, s->model_id);
        e.code = "model_not_found";
        api_request_free(&a);
        return send_error(c, &e);
    }
    if (a.echo && a.logprobs) {
        api_request_free(&a);
        return fail(c, 400, "echo", "%s", "echo together with logprobs (prompt logprobs) is not supported");
    }
    if (prepare_prompts(s, &a, &e)) {
        api_request_free(&a);
        return send_error(c, &e);
    }
    int n_seqs = a.n * a.n_prompts;
    srv_request *r = srv_request_new(n_seqs);
    r->api = a;  /* the request owns the parsed fields from here on */
    uint64_t base_seed = a.seed_set ? a.sp.seed : next_random(s);
    int immediate = 1;
    for (int i = 0; i < n_seqs; i++) {
        srv_seq *q = &r->seqs[i];
        api_prompt *p = &r->api.prompts[i / a.n];
        q->prompt = p->ids;
        q->n_prompt = p->n_ids;
        q->max_new = a.max_tokens < 0 ? s->max_seq_len - p->n_ids : a.max_tokens;
        q->min_tokens = a.min_tokens;
        q->ignore_eos = a.ignore_eos;
        q->sp = r->api.sp;
        q->sp.seed = base_seed + (uint64_t)(i % a.n);  /* choices of one prompt differ */
        q->sp.logprobs = a.logprobs;
        q->sp.top_logprobs = a.top_logprobs;
        q->want_logprobs = a.logprobs;
        q->top_n = a.top_logprobs;
        q->index = i;
        q->prompt_index = i / a.n;
        if (q->max_new > 0) immediate = 0;
    }
    c->req = r;
    atomic_fetch_add(&s->inflight, 1);
    c->stream = a.stream;
    snprintf(c->id, sizeof c->id, "%s%016llx%08llx", kind == API_CHAT ? "chatcmpl-" : "cmpl-",
             (unsigned long long)next_random(s), (unsigned long long)(next_random(s) & 0xffffffffULL));
    c->rc = (resp_ctx){.id = c->id, .model = s->model_id, .created = (long)time(NULL), .tok_ctx = s->m->tok,
                       .token_bytes = token_bytes_cb};
    if (immediate) {  /* echo with max_tokens 0: nothing to generate */
        for (int i = 0; i < n_seqs; i++) {
            r->seqs[i].state = SEQ_DONE;
            r->seqs[i].finish = FINISH_LENGTH;
        }
        r->n_done = n_seqs;
    } else {
        if (s->cfg.timeout > 0) r->deadline = r->t_submit + s->cfg.timeout;
        r->notify = on_notify;
        r->peer_gone = on_peer_gone;
        r->http = c;
        pg_err err = {0};
        int rc = sched_submit(s->sched, r, &err);
        if (rc == PG_EBUSY) return fail(c, 429, NULL, "%s", err.msg);
        if (rc) return fail(c, 503, NULL, "%s", err.msg);
    }
    if (c->stream) {
        c->cur = pg_xcalloc(1, sizeof *c->cur);
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, c, NULL);
        if (!resp) return MHD_NO;
        add_common_headers(resp, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ok = MHD_queue_response(c->conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        c->responded = 1;
        c->status = 200;
        return ok;
    }
    return finish_completion(c);
}

/* ---------------------------------------------------------------- other routes */
static enum MHD_Result handle_models(http_conn *c, const char *url) {
    srv_server *s = c->srv;
    const char *one = !strncmp(url, "/v1/models/", 11) ? url + 11 : NULL;
    if (one && strcmp(one, s->model_id)) return fail(c, 404, "model", "the model '%.100s' does not exist", one);
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "peregrine");
    cJSON_AddNumberToObject(m, "max_model_len", s->max_seq_len);
    if (one) return send_cjson(c, 200, m);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), m);
    return send_cjson(c, 200, o);
}

static cJSON *parse_object_body(http_conn *c, api_error *e) {
    if (!srv_utf8_valid(c->body.p ? c->body.p : "", c->body.n)) {
        api_fail(e, 400, NULL, "the request body is not valid UTF-8");
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(c->body.p ? c->body.p : "", c->body.n);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        api_fail(e, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

/* POST /tokenize {"content", "add_special" = false, "parse_special" = true,
 * "with_pieces" = false} -> {"tokens": [...]} (llama.cpp's server). */
static enum MHD_Result handle_tokenize(http_conn *c) {
    srv_server *s = c->srv;
    api_error e;
    if (!atomic_load(&s->ready)) return fail(c, 503, NULL, "%s", "the model is still loading");
    cJSON *root = parse_object_body(c, &e);
    if (!root) return send_error(c, &e);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(root, "content");
    const char *bools[3] = {"add_special", "parse_special", "with_pieces"};
    int vals[3] = {0, 1, 0};
    for (int i = 0; i < 3; i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, bools[i]);
        if (!b || cJSON_IsNull(b)) continue;
        if (!cJSON_IsBool(b)) {
            cJSON_Delete(root);
            return fail(c, 400, bools[i], "'%s' must be a boolean", bools[i]);
        }
        vals[i] = cJSON_IsTrue(b);
    }
    if (!cJSON_IsString(content)) {
        cJSON_Delete(root);
        return fail(c, 400, "content", "%s", "'content' must be a string");
    }
    int32_t *ids = NULL;
    int n = 0;
    pg_err err = {0};
    if (tok_encode(s->m->tok, content->valuestring, strlen(content->valuestring), vals[0] && tok_add_bos(s->m->tok),
                   vals[1], &ids, &n, &err)) {
        cJSON_Delete(root);
        return fail(c, 400, "content", "%s", err.msg);
    }
    cJSON_Delete(root);
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "tokens");
    for (int i = 0; i < n; i++) {
        if (!vals[2]) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
            continue;
        }
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", ids[i]);
        char buf[256];
        int k = tok_piece_bytes(s->m->tok, ids[i], buf, sizeof buf);
        char *piece = srv_utf8_sanitize(buf, k > 0 ? (size_t)k : 0);
        cJSON_AddStringToObject(t, "piece", piece);
        free(piece);
        cJSON_AddItemToArray(arr, t);
    }
    free(ids);
    return send_cjson(c, 200, o);
}

/* POST /detokenize {"tokens": [...]} -> {"content": "..."} */
static enum MHD_Result handle_detokenize(http_conn *c) {
    srv_server *s = c->srv;
    api_error e;
    if (!atomic_load(&s->ready)) return fail(c, 503, NULL, "%s", "the model is still loading");
    cJSON *root = parse_object_body(c, &e);
    if (!root) return send_error(c, &e);
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(toks)) {
        cJSON_Delete(root);
        return fail(c, 400, "tokens", "%s", "'tokens' must be an array of token ids");
    }
    int n = cJSON_GetArraySize(toks), i = 0;
    int32_t *ids = pg_xmalloc((size_t)(n ? n : 1) * sizeof *ids);
    const cJSON *v;
    cJSON_ArrayForEach(v, toks) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= s->vocab || v->valuedouble != (int)v->valuedouble) {
            free(ids);
            cJSON_Delete(root);
            return fail(c, 400, "tokens", "%s", "'tokens' must hold token ids in [0, vocab size)");
        }
        ids[i++] = (int32_t)v->valuedouble;
    }
    cJSON_Delete(root);
    char *text = NULL;
    size_t len = 0;
    pg_err err = {0};
    int rc = tok_decode(s->m->tok, ids, n, 0, &text, &len, &err);
    free(ids);
    if (rc) return fail(c, 400, "tokens", "%s", err.msg);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "content", text);
    free(text);
    return send_cjson(c, 200, o);
}

static enum MHD_Result handle_health(http_conn *c) {
    srv_server *s = c->srv;
    if (atomic_load(&s->stopping)) return send_json(c, 503, "{\"status\":\"shutting down\"}");
    if (!atomic_load(&s->ready)) return send_json(c, 503, "{\"status\":\"loading\"}");
    return send_json(c, 200, "{\"status\":\"ok\"}");
}

static void metrics_gauges_from_sched(void *ctx, int *running, int *queued) {
    sched_counts(ctx, running, queued);
}

static enum MHD_Result handle_metrics(http_conn *c) {
    srv_server *s = c->srv;
    sbuf b = {0};
    metrics_render(s->metrics, s->sched ? metrics_gauges_from_sched : NULL, s->sched, &b);
    enum MHD_Result r = send_buf(c, 200, "text/plain; version=0.0.4", b.p, b.n);
    sbuf_free(&b);
    return r;
}

/* ---------------------------------------------------------------- dispatch */
/* First call for a request: route, method, auth, size; may answer at once. */
static enum MHD_Result on_headers(http_conn *c, const char *url, const char *method) {
    srv_server *s = c->srv;
    int found = -1;
    for (int i = 0; i < N_ROUTES; i++)
        if (!strcmp(url, g_routes[i].path)) { found = i; break; }
    if (found < 0 && !strncmp(url, "/v1/models/", 11)) {
        for (int i = 0; i < N_ROUTES; i++)
            if (g_routes[i].id == R_MODELS) found = i;
        c->route = R_MODEL_ONE;
    } else if (found >= 0) c->route = g_routes[found].id;
    if (found < 0) {
        c->endpoint = "other";
        return fail(c, 404, NULL, "no route for '%.200s' (see GET /v1/models, POST /v1/chat/completions)", url);
    }
    c->endpoint = g_routes[found].path;
    if (!strcmp(method, "OPTIONS")) {  /* CORS preflight */
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Content-Type, Authorization");
        enum MHD_Result ok = MHD_queue_response(c->conn, 204, resp);
        MHD_destroy_response(resp);
        c->responded = 1;
        c->status = 204;
        return ok;
    }
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!strcmp(g_routes[found].method, "GET") ? !is_get : strcmp(method, "POST"))
        return fail(c, 405, NULL, "method %.20s is not allowed here", method);
    if (g_routes[found].auth && !auth_ok(s, c->conn)) {
        api_error e;
        api_fail(&e, 401, NULL, "missing or wrong API key (send 'Authorization: Bearer KEY')");
        e.code = "invalid_api_key";
        return send_error(c, &e);
    }
    if (atomic_load(&s->stopping) && (c->route == R_CHAT || c->route == R_COMPLETIONS))
        return fail(c, 503, NULL, "%s", "the server is shutting down");
    const char *cl = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        /* A body somewhat over the limit is read and dropped before the 413
         * (closing on unread data would reset the connection and lose the
         * answer); a far larger one is refused at once. */
        if (errno || end == cl || n > 4 * (unsigned long long)s->cfg.max_body)
            return fail(c, 413, NULL, "the request body (%.40s bytes) is over the limit of %lld bytes (--max-body)", cl,
                        (long long)s->cfg.max_body);
        if (n > (unsigned long long)s->cfg.max_body) c->too_large = 1;
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    srv_server *s = cls;
    http_conn *c = *con_cls;
    if (!c) {
        c = pg_xcalloc(1, sizeof *c);
        c->srv = s;
        c->conn = conn;
        c->t0 = pg_now();
        *con_cls = c;
        return on_headers(c, url, method);
    }
    if (c->responded && !c->req) {  /* answered early: drop the body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        /* libmicrohttpd takes a response only before or after the body, so
         * an oversized body (no Content-Length) is read and dropped, then
         * answered with 413; a sender that goes on far past the limit is
         * disconnected. */
        if (c->too_large || (int64_t)(c->body.n + *upload_size) > s->cfg.max_body) {
            c->too_large += *upload_size;
            *upload_size = 0;
            sbuf_free(&c->body);
            return c->too_large > (size_t)s->cfg.max_body * 4 ? MHD_NO : MHD_YES;
        }
        sbuf_put(&c->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (c->too_large)
        return fail(c, 413, NULL, "the request body is over the limit of %lld bytes (--max-body)",
                    (long long)s->cfg.max_body);
    if (c->req) return c->stream ? MHD_YES : finish_completion(c);
    switch (c->route) {
    case R_CHAT: return handle_completion(c, API_CHAT);
    case R_COMPLETIONS: return handle_completion(c, API_COMPLETION);
    case R_MODELS:
    case R_MODEL_ONE: return handle_models(c, url);
    case R_HEALTH: return handle_health(c);
    case R_METRICS: return handle_metrics(c);
    case R_TOKENIZE: return handle_tokenize(c);
    case R_DETOKENIZE: return handle_detokenize(c);
    case R_PAGE: return send_buf(c, 200, "text/html; charset=utf-8", srv_chat_page, strlen(srv_chat_page));
    default: return fail(c, 404, NULL, "no route for '%.200s'", url);
    }
}

/* The request is over (answered, or the connection failed): log it, count
 * it, drop the HTTP side's reference (cancelling the request if unfinished). */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    srv_server *s = cls;
    http_conn *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    int status = c->responded ? c->status : 499;  /* 499: the client closed first */
    int prompt = 0, gen = 0;
    double ttft = 0, rate = 0, step_rate = 0;
    if (c->req) {
        srv_request *r = c->req;
        pthread_mutex_lock(&r->mu);
        r->http = NULL;
        int unfinished = r->n_done < r->n_seqs;
        for (int i = 0; i < r->n_seqs; i++) {
            srv_seq *q = &r->seqs[i];
            gen += q->n_gen;
            if (i == 0 || q->prompt_index != r->seqs[i - 1].prompt_index) prompt += q->n_prompt;
            if (i == 0 && q->n_gen > 0) ttft = (q->t_first - r->t_submit) * 1e3;
            if (i == 0 && q->n_gen > 1 && q->t_last > q->t_first) rate = (q->n_gen - 1) / (q->t_last - q->t_first);
            if (i == 0 && q->n_gen > 1 && q->decode_step_s > 0) step_rate = (q->n_gen - 1) / q->decode_step_s;
        }
        pthread_mutex_unlock(&r->mu);
        if (unfinished || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            if (unfinished) {
                atomic_store(&r->cancelled, 1);
                if (s->sched) sched_wake(s->sched);
            }
            if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) status = 499;
        }
        srv_request_release(r);
        atomic_fetch_sub(&s->inflight, 1);
    }
    metrics_request(s->metrics, c->endpoint ? c->endpoint : "other", status);
    double ms = (pg_now() - c->t0) * 1e3;
    if (c->route == R_HEALTH || c->route == R_METRICS)
        LOG_DEBUG("request route=%s status=%d ms=%.1f", c->endpoint, status, ms);
    else if (c->req)
        /* tok_s: decode rate seen by the request; step_tok_s: the same tokens
         * over the time spent inside engine_step (the gap is our overhead) */
        LOG_INFO("request id=%s route=%s status=%d prompt_tokens=%d generated_tokens=%d ttft_ms=%.1f tok_s=%.1f "
                 "step_tok_s=%.1f ms=%.1f", c->id, c->endpoint, status, prompt, gen, ttft, rate, step_rate, ms);
    else
        LOG_INFO("request route=%s status=%d ms=%.1f", c->endpoint ? c->endpoint : "other", status, ms);
    sbuf_free(&c->body);
    sbuf_free(&c->out);
    free(c->cur);
    free(c);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    LOG_DEBUG("libmicrohttpd: %s", msg);
}

/* ---------------------------------------------------------------- daemon */
int http_start(srv_server *s, pg_err *err) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->cfg.port);
    const char *host = s->cfg.host;
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return pg_errf(err, PG_EINVAL, "--host: '%s' is not an IPv4 address", s->cfg.host);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->cfg.http_threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(s->cfg.conn_timeout + 0.5),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_conns,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)s->cfg.max_header,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
        MHD_OPTION_END);
    if (!s->daemon)
        return pg_errf(err, PG_EIO, "cannot listen on %s:%d (address in use, or not allowed?)", s->cfg.host, s->cfg.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->cfg.port;
    return PG_OK;
}

void http_quiesce(srv_server *s) {
    if (!s->daemon) return;
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void http_stop(srv_server *s) {
    if (!s->daemon) return;
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
