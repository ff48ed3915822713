/*
 * server/respond.c — a request's output -> OpenAI JSON: the whole response
 * (non-streamed) or Server-Sent Events chunks (streamed), with usage and
 * llama.cpp-style timings. Called by HTTP threads with the request's mutex
 * held (the engine thread may be appending to the same output).
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* ---------------------------------------------------------------- pieces */
static double ms(double a, double b) { return b > a ? (b - a) * 1e3 : 0.0; }

static void add_timings(cJSON *o, const srv_request *r) {
    int prompt_n = 0, pred_n = 0;
    double prompt_ms = 0, pred_ms = 0;
    for (int i = 0; i < r->n_seqs; i++) {
        const srv_seq *q = &r->seqs[i];
        prompt_n += q->n_prefilled;
        if (q->n_gen > 0) {
            prompt_ms += ms(q->t_start, q->t_first);
            pred_ms += ms(q->t_first, q->t_last);
            pred_n += q->n_gen;
        }
    }
    cJSON *t = cJSON_AddObjectToObject(o, "timings");
    cJSON_AddNumberToObject(t, "prompt_n", prompt_n);
    cJSON_AddNumberToObject(t, "prompt_ms", prompt_ms);
    cJSON_AddNumberToObject(t, "prompt_per_second", prompt_ms > 0 ? prompt_n * 1e3 / prompt_ms : 0.0);
    cJSON_AddNumberToObject(t, "predicted_n", pred_n);
    cJSON_AddNumberToObject(t, "predicted_ms", pred_ms);
    cJSON_AddNumberToObject(t, "predicted_per_second", pred_ms > 0 ? pred_n * 1e3 / pred_ms : 0.0);
}

/* Prompt tokens count once per prompt (not once per choice), as OpenAI does. */
static void add_usage(cJSON *o, const srv_request *r) {
    int prompt = 0, gen = 0;
    if (r->api.kind == API_CHAT) prompt = r->n_seqs ? r->seqs[0].n_prompt : 0;
    else
        for (int i = 0; i < r->api.n_prompts; i++) prompt += r->api.prompts[i].n_ids;
    for (int i = 0; i < r->n_seqs; i++) gen += r->seqs[i].n_gen;
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", gen);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + gen);
}

static cJSON *new_object(const resp_ctx *c, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", c->model);
    cJSON_AddStringToObject(o, "system_fingerprint", "peregrine");
    return o;
}

/* The token's text for logprobs: its bytes (may be part of a UTF-8
 * character) and a display string with invalid UTF-8 replaced. */
static void token_strings(const resp_ctx *c, int32_t id, cJSON *into, const char *key, int with_bytes) {
    char buf[256];
    int n = c->token_bytes ? c->token_bytes(c->tok_ctx, id, buf, sizeof buf) : -1;
    if (n < 0) n = snprintf(buf, sizeof buf, "<%d>", (int)id);
    char *s = srv_utf8_sanitize(buf, (size_t)n);
    cJSON_AddStringToObject(into, key, s);
    free(s);
    if (with_bytes) {
        cJSON *b = cJSON_AddArrayToObject(into, "bytes");
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)buf[i]));
    }
}

/* Chat logprobs {"content": [...]} for tokens [from, to) of q. */
static cJSON *chat_logprobs(const resp_ctx *c, const srv_seq *q, int from, int to) {
    cJSON *lp = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(lp, "content");
    for (int i = from; i < to; i++) {
        cJSON *t = cJSON_CreateObject();
        token_strings(c, q->out_ids[i], t, "token", 1);
        cJSON_AddNumberToObject(t, "logprob", q->out_lp[i]);
        cJSON *tops = cJSON_AddArrayToObject(t, "top_logprobs");
        for (int k = 0; k < q->top_n; k++) {
            int32_t id = q->out_top_ids[(size_t)i * q->top_n + k];
            if (id < 0) continue;
            cJSON *a = cJSON_CreateObject();
            token_strings(c, id, a, "token", 1);
            cJSON_AddNumberToObject(a, "logprob", q->out_top_lp[(size_t)i * q->top_n + k]);
            cJSON_AddItemToArray(tops, a);
        }
        cJSON_AddItemToArray(content, t);
    }
    return lp;
}

/* Legacy completions logprobs for tokens [from, to); text offsets start at base. */
static cJSON *completion_logprobs(const resp_ctx *c, const srv_seq *q, int from, int to, size_t base) {
    cJSON *lp = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(lp, "tokens"), *tlp = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(lp, "top_logprobs"), *off = cJSON_AddArrayToObject(lp, "text_offset");
    for (int i = from; i < to; i++) {
        cJSON *tmp = cJSON_CreateObject();
        token_strings(c, q->out_ids[i], tmp, "t", 0);
        cJSON_AddItemToArray(tokens, cJSON_DetachItemFromObject(tmp, "t"));
        cJSON_Delete(tmp);
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(q->out_lp[i]));
        cJSON *alts = cJSON_CreateObject();
        for (int k = 0; k < q->top_n; k++) {
            int32_t id = q->out_top_ids[(size_t)i * q->top_n + k];
            if (id < 0) continue;
            char buf[256];
            int n = c->token_bytes ? c->token_bytes(c->tok_ctx, id, buf, sizeof buf) : -1;
            if (n < 0) n = snprintf(buf, sizeof buf, "<%d>", (int)id);
            char *s = srv_utf8_sanitize(buf, (size_t)n);
            if (!cJSON_GetObjectItemCaseSensitive(alts, s))
                cJSON_AddNumberToObject(alts, s, q->out_top_lp[(size_t)i * q->top_n + k]);
            free(s);
        }
        cJSON_AddItemToArray(top, alts);
        size_t start = i > 0 ? q->out_text_end[i - 1] : 0;
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(base + start)));
    }
    return lp;
}

static const char *echo_text(const srv_request *r, const srv_seq *q) {
    if (!r->api.echo || r->api.kind != API_COMPLETION) return "";
    const char *t = r->api.prompts[q->prompt_index].text;
    return t ? t : "";
}

/* ---------------------------------------------------------------- whole */
char *resp_full(const resp_ctx *c, const srv_request *r) {
    int chat = r->api.kind == API_CHAT;
    cJSON *o = new_object(c, chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < r->n_seqs; i++) {
        const srv_seq *q = &r->seqs[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", q->index);
        const char *text = q->text.p ? q->text.p : "";
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddStringToObject(msg, "content", text);
        } else {
            const char *echo = echo_text(r, q);
            if (*echo) {
                sbuf b = {0};
                sbuf_puts(&b, echo);
                sbuf_puts(&b, text);
                cJSON_AddStringToObject(ch, "text", b.p);
                sbuf_free(&b);
            } else cJSON_AddStringToObject(ch, "text", text);
        }
        if (q->want_logprobs)
            cJSON_AddItemToObject(ch, "logprobs", chat ? chat_logprobs(c, q, 0, q->n_out)
                                                       : completion_logprobs(c, q, 0, q->n_out, strlen(echo_text(r, q))));
        else cJSON_AddNullToObject(ch, "logprobs");
        const char *fr = finish_reason_name(q->finish);
        if (fr) cJSON_AddStringToObject(ch, "finish_reason", fr);
        else cJSON_AddNullToObject(ch, "finish_reason");
        cJSON_AddItemToArray(choices, ch);
    }
    add_usage(o, r);
    add_timings(o, r);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---------------------------------------------------------------- stream */
static void sse(sbuf *out, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    sbuf_puts(out, "data: ");
    sbuf_puts(out, s);
    sbuf_puts(out, "\n\n");
    free(s);
    cJSON_Delete(o);
}

static cJSON *chunk(const resp_ctx *c, const srv_request *r, cJSON **choice, int index) {
    int chat = r->api.kind == API_CHAT;
    cJSON *o = new_object(c, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(*choice, "index", index);
    cJSON_AddItemToArray(choices, *choice);
    if (r->api.include_usage) cJSON_AddNullToObject(o, "usage");
    return o;
}

int resp_stream(const resp_ctx *c, const srv_request *r, resp_cursor *cur, sbuf *out) {
    int chat = r->api.kind == API_CHAT;
    int all_done = 1;
    for (int i = 0; i < r->n_seqs && i < RESP_MAX_SEQS; i++) {
        const srv_seq *q = &r->seqs[i];
        resp_seq_cursor *sc = &cur->seq[i];
        if (sc->finish_sent) continue;
        cJSON *ch;
        if (!sc->started) {
            sc->started = 1;
            cJSON *o = chunk(c, r, &ch, q->index);
            if (chat) {
                cJSON *d = cJSON_AddObjectToObject(ch, "delta");
                cJSON_AddStringToObject(d, "role", "assistant");
                cJSON_AddStringToObject(d, "content", "");
            } else cJSON_AddStringToObject(ch, "text", echo_text(r, q));
            cJSON_AddNullToObject(ch, "logprobs");
            cJSON_AddNullToObject(ch, "finish_reason");
            sse(out, o);
        }
        int new_toks = q->want_logprobs && q->n_out > sc->tok_off;
        if (q->text.n > sc->text_off || new_toks) {
            cJSON *o = chunk(c, r, &ch, q->index);
            const char *p = q->text.p ? q->text.p + sc->text_off : "";
            if (chat) {
                cJSON *d = cJSON_AddObjectToObject(ch, "delta");
                cJSON_AddStringToObject(d, "content", p);
            } else cJSON_AddStringToObject(ch, "text", p);
            if (new_toks)
                cJSON_AddItemToObject(ch, "logprobs", chat ? chat_logprobs(c, q, sc->tok_off, q->n_out)
                                                           : completion_logprobs(c, q, sc->tok_off, q->n_out,
                                                                                 strlen(echo_text(r, q))));
            else cJSON_AddNullToObject(ch, "logprobs");
            cJSON_AddNullToObject(ch, "finish_reason");
            sse(out, o);
            sc->text_off = q->text.n;
            sc->tok_off = q->n_out;
        }
        if (q->state != SEQ_DONE) {
            all_done = 0;
            continue;
        }
        sc->finish_sent = 1;
        if (q->finish == FINISH_ERROR || q->finish == FINISH_CANCELLED) {
            /* headers (200) are gone already: report in-band, as OpenAI does */
            api_error e;
            if (q->finish == FINISH_ERROR) api_fail(&e, 500, NULL, "generation failed: %s", q->error);
            else api_fail(&e, 503, NULL, "the request was cancelled (the server is shutting down)");
            char *s = api_error_json(&e);
            sbuf_printf(out, "data: %s\n\n", s);
            free(s);
            continue;
        }
        cJSON *o = chunk(c, r, &ch, q->index);
        if (chat) cJSON_AddObjectToObject(ch, "delta");
        else cJSON_AddStringToObject(ch, "text", "");
        cJSON_AddNullToObject(ch, "logprobs");
        const char *fr = finish_reason_name(q->finish);
        cJSON_AddStringToObject(ch, "finish_reason", fr ? fr : "stop");
        /* the last chunk of the stream carries the timings */
        int last = !r->api.include_usage && r->n_done == r->n_seqs;
        for (int k = 0; k < r->n_seqs && last; k++)
            if (k != i && !cur->seq[k].finish_sent) last = 0;
        if (last) add_timings(o, r);
        sse(out, o);
    }
    if (!all_done) return 0;
    if (!cur->done_sent) {
        cur->done_sent = 1;
        if (r->api.include_usage) {
            cJSON *o = new_object(c, chat ? "chat.completion.chunk" : "text_completion");
            cJSON_AddArrayToObject(o, "choices");
            add_usage(o, r);
            add_timings(o, r);
            sse(out, o);
        }
        sbuf_puts(out, "data: [DONE]\n\n");
    }
    return 1;
}
