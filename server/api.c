/*
 * server/api.c — OpenAI request bodies -> api_request, with validation.
 *
 * Rules (OpenAI's, plus vLLM's extensions for benchmarks):
 *   - The body is a JSON object in well-formed UTF-8; anything else is a 400.
 *   - Unknown fields are ignored. A known field that is null counts as absent.
 *   - A known field with a wrong type or an out-of-range value is a 400 whose
 *     message and `param` name the field (e.g. "messages[2].content").
 * Limits that need the tokenizer or the engine (context length) are checked
 * later, in http.c, once the prompt is tokenized.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

#define API_MAX_N        64     /* choices per prompt */
#define API_MAX_PROMPTS  64     /* prompts per completions request */
#define API_MAX_CHOICES  128    /* n * prompts */
#define API_MAX_MESSAGES 4096
#define API_MAX_BIAS     1024   /* logit_bias entries */

/* ---------------------------------------------------------------- errors */
int api_fail(api_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    e->code = NULL;
    switch (status) {
    case 401: e->type = "authentication_error"; break;
    case 404: e->type = "not_found_error"; break;
    case 429: e->type = "rate_limit_error"; break;
    case 500: e->type = "server_error"; break;
    case 503: e->type = "service_unavailable_error"; break;
    default: e->type = "invalid_request_error";
    }
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

char *api_error_json(const api_error *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    /* The message may quote client input: keep the JSON valid UTF-8. */
    char *msg = srv_utf8_sanitize(e->message, strlen(e->message));
    cJSON_AddStringToObject(o, "message", msg);
    free(msg);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0]) cJSON_AddStringToObject(o, "param", e->param);
    else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code);
    else cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---------------------------------------------------------------- fields */
static const cJSON *field(const cJSON *obj, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

static const char *type_name(const cJSON *v) {
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "null";
}

/* Each getter returns 1 if the field was present (and valid), 0 if absent,
 * -1 on error (e filled). */
static int get_bool(const cJSON *o, const char *name, int *out, api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsBool(f)) return api_fail(e, 400, name, "'%s' must be a boolean, not %s", name, type_name(f));
    *out = cJSON_IsTrue(f);
    return 1;
}

static int get_num(const cJSON *o, const char *name, double lo, double hi, double *out, api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f)) return api_fail(e, 400, name, "'%s' must be a number, not %s", name, type_name(f));
    double v = f->valuedouble;
    if (!isfinite(v) || v < lo || v > hi)
        return api_fail(e, 400, name, "'%s' must be between %g and %g (got %g)", name, lo, hi, v);
    *out = v;
    return 1;
}

static int get_int(const cJSON *o, const char *name, double lo, double hi, long long *out, api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f)) return api_fail(e, 400, name, "'%s' must be an integer, not %s", name, type_name(f));
    double v = f->valuedouble;
    if (!isfinite(v) || v != floor(v)) return api_fail(e, 400, name, "'%s' must be an integer (got %g)", name, v);
    if (v < lo || v > hi) return api_fail(e, 400, name, "'%s' must be between %.0f and %.0f (got %.0f)", name, lo, hi, v);
    *out = (long long)v;
    return 1;
}

static int get_str(const cJSON *o, const char *name, char **out, api_error *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsString(f)) return api_fail(e, 400, name, "'%s' must be a string, not %s", name, type_name(f));
    free(*out);
    *out = pg_xstrdup(f->valuestring);
    return 1;
}

/* ---------------------------------------------------------------- messages */
/* content: a string, or an array of {"type": "text", "text": "..."} parts
 * (joined with "\n", as vLLM does). Assistant content may be null. */
static int parse_content(const cJSON *c, int i, int is_assistant, char **out, api_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (!c || cJSON_IsNull(c)) {
        if (is_assistant) { *out = pg_xstrdup(""); return 0; }
        return api_fail(e, 400, param, "'%s' is required", param);
    }
    if (cJSON_IsString(c)) { *out = pg_xstrdup(c->valuestring); return 0; }
    if (!cJSON_IsArray(c))
        return api_fail(e, 400, param, "'%s' must be a string or an array of text parts, not %s", param, type_name(c));
    sbuf b = {0};
    int k = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
            sbuf_free(&b);
            return api_fail(e, 400, param, "'%s[%d]' must be {\"type\": \"text\", \"text\": \"...\"} "
                            "(only text parts are supported)", param, k);
        }
        if (k++) sbuf_putc(&b, '\n');
        sbuf_puts(&b, text->valuestring);
    }
    sbuf_put(&b, "", 0);
    *out = b.p;
    return 0;
}

static int parse_messages(const cJSON *root, api_request *r, api_error *e) {
    const cJSON *msgs = field(root, "messages");
    if (!msgs) return api_fail(e, 400, "messages", "'messages' is required");
    if (!cJSON_IsArray(msgs)) return api_fail(e, 400, "messages", "'messages' must be an array, not %s", type_name(msgs));
    int n = cJSON_GetArraySize(msgs);
    if (n < 1) return api_fail(e, 400, "messages", "'messages' must contain at least one message");
    if (n > API_MAX_MESSAGES) return api_fail(e, 400, "messages", "'messages' has %d entries (at most %d)", n, API_MAX_MESSAGES);
    r->msgs = pg_xcalloc((size_t)n, sizeof *r->msgs);
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs) {
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(m)) return api_fail(e, 400, param, "'%s' must be an object, not %s", param, type_name(m));
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof param, "messages[%d].role", i);
        if (!cJSON_IsString(role)) return api_fail(e, 400, param, "'%s' must be a string", param);
        const char *rs = role->valuestring;
        /* OpenAI's "developer" role is the system role of newer models. */
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return api_fail(e, 400, param, "'%s' must be one of system, developer, user, assistant (got '%.40s')",
                            param, role->valuestring);
        r->msgs[i].role = pg_xstrdup(rs);
        r->n_msgs = i + 1;
        char *content = NULL;
        if (parse_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i, !strcmp(rs, "assistant"), &content, e))
            return -1;
        r->msgs[i].content = content;
        i++;
    }
    return 0;
}

/* ---------------------------------------------------------------- prompts */
static int parse_ids(const cJSON *arr, const char *param, int vocab, api_prompt *p, api_error *e) {
    int n = cJSON_GetArraySize(arr);
    if (n < 1) return api_fail(e, 400, param, "'%s' must not be empty", param);
    p->ids = pg_xmalloc((size_t)n * sizeof *p->ids);
    const cJSON *v;
    int i = 0;
    cJSON_ArrayForEach(v, arr) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
            v->valuedouble >= vocab)
            return api_fail(e, 400, param, "'%s[%d]' must be a token id in [0, %d)", param, i, vocab);
        p->ids[i++] = (int32_t)v->valuedouble;
    }
    p->n_ids = n;
    return 0;
}

/* prompt: "text" | ["text", ...] | [id, ...] | [[id, ...], ...] */
static int parse_prompt(const cJSON *root, int vocab, api_request *r, api_error *e) {
    const cJSON *p = field(root, "prompt");
    if (!p) return api_fail(e, 400, "prompt", "'prompt' is required");
    if (cJSON_IsString(p)) {
        r->prompts = pg_xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        r->prompts[0].text = pg_xstrdup(p->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(p))
        return api_fail(e, 400, "prompt", "'prompt' must be a string, an array of strings or an array of token ids, "
                        "not %s", type_name(p));
    int n = cJSON_GetArraySize(p);
    if (n < 1) return api_fail(e, 400, "prompt", "'prompt' must not be empty");
    const cJSON *first = p->child;
    if (cJSON_IsNumber(first)) {  /* one prompt of token ids */
        r->prompts = pg_xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        return parse_ids(p, "prompt", vocab, &r->prompts[0], e);
    }
    if (n > API_MAX_PROMPTS) return api_fail(e, 400, "prompt", "'prompt' has %d prompts (at most %d)", n, API_MAX_PROMPTS);
    r->prompts = pg_xcalloc((size_t)n, sizeof *r->prompts);
    const cJSON *v;
    int i = 0;
    cJSON_ArrayForEach(v, p) {
        char param[48];
        snprintf(param, sizeof param, "prompt[%d]", i);
        r->n_prompts = i + 1;
        if (cJSON_IsString(v)) r->prompts[i].text = pg_xstrdup(v->valuestring);
        else if (cJSON_IsArray(v)) {
            if (parse_ids(v, param, vocab, &r->prompts[i], e)) return -1;
        } else
            return api_fail(e, 400, param, "'%s' must be a string or an array of token ids, not %s", param, type_name(v));
        i++;
    }
    return 0;
}

/* ---------------------------------------------------------------- sampling */
static int parse_stop(const cJSON *root, api_request *r, api_error *e) {
    const cJSON *s = field(root, "stop");
    if (!s) return 0;
    if (cJSON_IsString(s)) {
        r->stop[r->n_stop++] = pg_xstrdup(s->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(s)) return api_fail(e, 400, "stop", "'stop' must be a string or an array of strings, not %s", type_name(s));
    int n = cJSON_GetArraySize(s);
    if (n > STOP_MAX) return api_fail(e, 400, "stop", "'stop' has %d strings (at most %d)", n, STOP_MAX);
    const cJSON *v;
    cJSON_ArrayForEach(v, s) {
        if (!cJSON_IsString(v)) return api_fail(e, 400, "stop", "'stop[%d]' must be a string, not %s", r->n_stop, type_name(v));
        r->stop[r->n_stop++] = pg_xstrdup(v->valuestring);
    }
    return 0;
}

static int parse_logit_bias(const cJSON *root, int vocab, api_request *r, api_error *e) {
    const cJSON *b = field(root, "logit_bias");
    if (!b) return 0;
    if (!cJSON_IsObject(b)) return api_fail(e, 400, "logit_bias", "'logit_bias' must be an object of token id -> bias, not %s", type_name(b));
    int n = cJSON_GetArraySize(b);
    if (n > API_MAX_BIAS) return api_fail(e, 400, "logit_bias", "'logit_bias' has %d entries (at most %d)", n, API_MAX_BIAS);
    r->bias_ids = pg_xmalloc((size_t)(n ? n : 1) * sizeof *r->bias_ids);
    r->bias_vals = pg_xmalloc((size_t)(n ? n : 1) * sizeof *r->bias_vals);
    const cJSON *v;
    int i = 0;
    cJSON_ArrayForEach(v, b) {
        char *end;
        long id = strtol(v->string, &end, 10);
        if (!v->string[0] || *end || id < 0 || id >= vocab)
            return api_fail(e, 400, "logit_bias", "'logit_bias' key '%.32s' is not a token id in [0, %d)", v->string, vocab);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < -100 || v->valuedouble > 100)
            return api_fail(e, 400, "logit_bias", "'logit_bias[%ld]' must be a number between -100 and 100", id);
        r->bias_ids[i] = (int32_t)id;
        r->bias_vals[i] = (float)v->valuedouble;
        i++;
    }
    r->sp.n_logit_bias = i;
    r->sp.logit_bias_ids = r->bias_ids;
    r->sp.logit_bias_vals = r->bias_vals;
    return 0;
}

static int parse_sampling(const cJSON *root, int vocab, api_request *r, api_error *e) {
    double d;
    long long ll;
    int rc;
    if ((rc = get_num(root, "temperature", 0, 2, &d, e)) < 0) return -1;
    if (rc) r->sp.temperature = (float)d;
    if ((rc = get_num(root, "top_p", 0, 1, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0) return api_fail(e, 400, "top_p", "'top_p' must be greater than 0 and at most 1 (got %g)", d);
        r->sp.top_p = (float)d;
    }
    if ((rc = get_int(root, "top_k", -1, 1e9, &ll, e)) < 0) return -1;
    if (rc) r->sp.top_k = ll < 0 ? 0 : (int)ll;   /* -1 (vLLM) and 0 both mean off */
    if ((rc = get_num(root, "min_p", 0, 1, &d, e)) < 0) return -1;
    if (rc) r->sp.min_p = (float)d;
    if ((rc = get_num(root, "presence_penalty", -2, 2, &d, e)) < 0) return -1;
    if (rc) r->sp.presence_penalty = (float)d;
    if ((rc = get_num(root, "frequency_penalty", -2, 2, &d, e)) < 0) return -1;
    if (rc) r->sp.frequency_penalty = (float)d;
    if ((rc = get_num(root, "repetition_penalty", 0, 10, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0) return api_fail(e, 400, "repetition_penalty", "'repetition_penalty' must be greater than 0 (got %g)", d);
        r->sp.repetition_penalty = (float)d;
    }
    if ((rc = get_int(root, "seed", -9.2e18, 1.8e19, &ll, e)) < 0) return -1;
    if (rc) {
        const cJSON *f = field(root, "seed");
        r->sp.seed = f->valuedouble >= 9.2e18 ? (uint64_t)f->valuedouble : (uint64_t)ll;
        r->seed_set = 1;
    }
    return parse_logit_bias(root, vocab, r, e);
}

/* ---------------------------------------------------------------- request */
int api_parse_request(api_kind kind, const char *body, size_t len, int vocab, api_request *r, api_error *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
    r->n = 1;
    sampler_params_default(&r->sp);
    r->sp.temperature = 1.0f;  /* OpenAI's default */
    if (!srv_utf8_valid(body, len)) return api_fail(e, 400, NULL, "the request body is not valid UTF-8");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root && end) {  /* nothing but whitespace may follow the value */
        while ((size_t)(end - body) < len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if ((size_t)(end - body) < len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return api_fail(e, 400, NULL, "the request body is not valid JSON (error near byte %zu of %zu)", at, len);
    }
    int rc = -1;
    long long ll;
    int b, got;
    if (!cJSON_IsObject(root)) {
        api_fail(e, 400, NULL, "the request body must be a JSON object, not %s", type_name(root));
        goto done;
    }
    if (get_str(root, "model", &r->model, e) < 0) goto done;
    if (kind == API_CHAT ? parse_messages(root, r, e) : parse_prompt(root, vocab, r, e)) goto done;

    if ((got = get_int(root, "max_tokens", 0, 1e9, &ll, e)) < 0) goto done;
    if (got) r->max_tokens = (int)ll;
    if (kind == API_CHAT) {
        if ((got = get_int(root, "max_completion_tokens", 0, 1e9, &ll, e)) < 0) goto done;
        if (got) r->max_tokens = (int)ll;
    }
    if (parse_sampling(root, vocab, r, e)) goto done;
    if (parse_stop(root, r, e)) goto done;
    if (get_int(root, "n", 1, API_MAX_N, &ll, e) < 0) goto done;
    else if (field(root, "n")) r->n = (int)ll;
    if (r->n * (r->n_prompts ? r->n_prompts : 1) > API_MAX_CHOICES) {
        api_fail(e, 400, "n", "n x prompts = %d choices (at most %d)", r->n * r->n_prompts, API_MAX_CHOICES);
        goto done;
    }
    if (kind == API_CHAT) {
        if ((got = get_bool(root, "logprobs", &b, e)) < 0) goto done;
        if (got) r->logprobs = b;
        if ((got = get_int(root, "top_logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &ll, e)) < 0) goto done;
        if (got) {
            if (!r->logprobs) {
                api_fail(e, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
                goto done;
            }
            r->top_logprobs = (int)ll;
        }
    } else {
        if ((got = get_int(root, "logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &ll, e)) < 0) goto done;
        if (got) { r->logprobs = 1; r->top_logprobs = (int)ll; }
        if ((got = get_bool(root, "echo", &b, e)) < 0) goto done;
        if (got) r->echo = b;
    }
    if ((got = get_bool(root, "ignore_eos", &b, e)) < 0) goto done;
    if (got) r->ignore_eos = b;
    if ((got = get_int(root, "min_tokens", 0, 1e9, &ll, e)) < 0) goto done;
    if (got) r->min_tokens = (int)ll;
    if (r->max_tokens >= 0 && r->min_tokens > r->max_tokens) {
        api_fail(e, 400, "min_tokens", "'min_tokens' (%d) must not exceed max_tokens (%d)", r->min_tokens, r->max_tokens);
        goto done;
    }
    if (r->max_tokens == 0 && !r->echo) {
        api_fail(e, 400, "max_tokens", "'max_tokens' must be at least 1 (0 is allowed only with echo)");
        goto done;
    }
    if ((got = get_bool(root, "stream", &b, e)) < 0) goto done;
    if (got) r->stream = b;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            api_fail(e, 400, "stream_options", "'stream_options' must be an object, not %s", type_name(so));
            goto done;
        }
        if (!r->stream) {
            api_fail(e, 400, "stream_options", "'stream_options' is only allowed when 'stream' is true");
            goto done;
        }
        if ((got = get_bool(so, "include_usage", &b, e)) < 0) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto done;
        }
        if (got) r->include_usage = b;
    }
    if (get_str(root, "user", &r->user, e) < 0) goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) api_request_free(r);
    return rc;
}

void api_request_free(api_request *r) {
    for (int i = 0; i < r->n_msgs; i++) {
        free((char *)r->msgs[i].role);
        free((char *)r->msgs[i].content);
    }
    free(r->msgs);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias_ids);
    free(r->bias_vals);
    free(r->model);
    free(r->user);
    memset(r, 0, sizeof *r);
}
