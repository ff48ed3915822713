/*
 * tests/test_server.c — the server's pure parts: chat templates against HF
 * goldens (tests/fixtures/chat/goldens.json, from scripts/gen-chat-goldens.py),
 * request JSON validation, the stop-string matcher, UTF-8 checks, and the
 * scheduler driven by a fake engine (ordering, stop strings, EOS, min_tokens,
 * cancellation, queue limits, n > 1).
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/server_internal.h"

/* ---------------------------------------------------------------- chat goldens */
static cJSON *load_goldens(void) {
    char *text = NULL;
    size_t len = 0;
    pg_err err = {0};
    cr_assert_eq(pg_read_file("tests/fixtures/chat/goldens.json", &text, &len, &err), PG_OK, "%s", err.msg);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    cr_assert(root);
    return root;
}

static const char *str_or_null(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

Test(chat, goldens_match_hf_apply_chat_template) {
    cJSON *root = load_goldens();
    const cJSON *tmpls = cJSON_GetObjectItem(root, "templates"), *cases = cJSON_GetObjectItem(root, "cases");
    int n_cases = 0, n_errors = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *source = str_or_null(c, "source"), *family = str_or_null(c, "family");
        /* the template text of this source, recognised as its family */
        const char *jinja = NULL;
        const cJSON *t;
        cJSON_ArrayForEach(t, tmpls) if (!strcmp(str_or_null(t, "source"), source)) jinja = str_or_null(t, "template");
        cr_assert(jinja, "no template for %s", source);
        chat_template tmpl;
        pg_err err = {0};
        cr_assert_eq(chat_template_detect(jinja, &tmpl, &err), PG_OK, "%s: %s", source, err.msg);
        cr_assert_str_eq(chat_template_kind_name(tmpl.kind), family, "%s recognised as %s", source,
                         chat_template_kind_name(tmpl.kind));
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        int n = cJSON_GetArraySize(msgs), i = 0;
        chat_message m[16];
        const cJSON *mj;
        cJSON_ArrayForEach(mj, msgs) m[i++] = (chat_message){str_or_null(mj, "role"), str_or_null(mj, "content")};
        char *out = NULL;
        int rc = chat_render(&tmpl, m, n, cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
                             str_or_null(c, "bos"), str_or_null(c, "eos"), &out, &err);
        const char *expected = str_or_null(c, "expected");
        if (expected) {
            cr_assert_eq(rc, PG_OK, "%s / %s: %s", source, str_or_null(c, "name"), err.msg);
            cr_assert_str_eq(out, expected, "%s / %s", source, str_or_null(c, "name"));
        } else {
            cr_assert_eq(rc, PG_EINVAL, "%s / %s: HF raised (%s) but we rendered", source, str_or_null(c, "name"),
                         str_or_null(c, "hf_error"));
            n_errors++;
        }
        free(out);
        n_cases++;
    }
    cr_assert_eq(n_cases, 140);
    cr_assert_gt(n_errors, 0);
    cJSON_Delete(root);
}

Test(chat, smollm2_default_system_prompt_is_read_from_the_template) {
    cJSON *root = load_goldens();
    const cJSON *t;
    int seen = 0;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(root, "templates")) {
        chat_template tmpl;
        cr_assert_eq(chat_template_detect(str_or_null(t, "template"), &tmpl, NULL), PG_OK);
        if (!strcmp(str_or_null(t, "source"), "SmolLM2-135M-Instruct")) {
            cr_assert(tmpl.has_default_system);
            cr_assert_str_eq(tmpl.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
            seen++;
        }
        if (!strcmp(str_or_null(t, "source"), "OpenHermes-2.5-Mistral-7B")) cr_assert(!tmpl.has_default_system);
    }
    cr_assert_eq(seen, 1);
    cJSON_Delete(root);
}

Test(chat, unknown_templates_are_refused_with_a_hint) {
    chat_template t;
    pg_err err = {0};
    cr_assert_eq(chat_template_detect("{{ messages[0]['content'] }}", &t, &err), PG_EUNSUPPORTED);
    cr_assert(strstr(err.msg, "--chat-template"), "%s", err.msg);
    cr_assert_eq(chat_template_detect(NULL, &t, &err), PG_EUNSUPPORTED);
    /* Llama 3.1 prints a dated system prompt we do not render: refused, not guessed */
    cr_assert_eq(chat_template_detect("<|start_header_id|> <|eot_id|> Cutting Knowledge Date", &t, &err), PG_EUNSUPPORTED);
    cr_assert_eq(chat_template_from_name("llama3", &t, &err), PG_OK);
    cr_assert_eq(t.kind, CHAT_TEMPLATE_LLAMA3);
    cr_assert_eq(chat_template_from_name("vicuna", &t, &err), PG_EINVAL);
}

/* ---------------------------------------------------------------- request JSON */
static int parse(api_kind k, const char *body, api_request *r, api_error *e) {
    return api_parse_request(k, body, strlen(body), 1000, r, e);
}

Test(api, full_chat_request) {
    api_request r;
    api_error e;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null},{\"role\":\"developer\",\"content\":\"D\"}],"
                       "\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":-1,\"min_p\":0.1,"
                       "\"seed\":42,\"stop\":[\"x\",\"yy\"],\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
                       "\"repetition_penalty\":1.1,\"logit_bias\":{\"5\":-100,\"7\":2.5},\"logprobs\":true,"
                       "\"top_logprobs\":3,\"n\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"ignore_eos\":true,\"min_tokens\":2,\"user\":\"u\",\"unknown_field\":{\"x\":1}}";
    cr_assert_eq(parse(API_CHAT, body, &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.model, "m");
    cr_assert_eq(r.n_msgs, 4);
    cr_assert_str_eq(r.msgs[1].content, "a\nb");
    cr_assert_str_eq(r.msgs[2].content, "");
    cr_assert_str_eq(r.msgs[3].role, "system");
    cr_assert_eq(r.max_tokens, 7);
    cr_assert_float_eq(r.sp.temperature, 0.5f, 1e-6);
    cr_assert_float_eq(r.sp.top_p, 0.9f, 1e-6);
    cr_assert_eq(r.sp.top_k, 0);
    cr_assert_eq(r.sp.seed, 42u);
    cr_assert(r.seed_set);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[1], "yy");
    cr_assert_eq(r.sp.n_logit_bias, 2);
    cr_assert_eq(r.sp.logit_bias_ids[0], 5);
    cr_assert_float_eq(r.sp.logit_bias_vals[1], 2.5f, 1e-6);
    cr_assert(r.logprobs);
    cr_assert_eq(r.top_logprobs, 3);
    cr_assert_eq(r.n, 2);
    cr_assert(r.stream && r.include_usage && r.ignore_eos);
    cr_assert_eq(r.min_tokens, 2);
    api_request_free(&r);
}

Test(api, completion_prompt_forms) {
    api_request r;
    api_error e;
    cr_assert_eq(parse(API_COMPLETION, "{\"prompt\":\"hi\",\"echo\":true,\"logprobs\":2}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_str_eq(r.prompts[0].text, "hi");
    cr_assert(r.echo && r.logprobs);
    cr_assert_eq(r.top_logprobs, 2);
    cr_assert_float_eq(r.sp.temperature, 1.0f, 1e-6);  /* OpenAI default */
    api_request_free(&r);
    cr_assert_eq(parse(API_COMPLETION, "{\"prompt\":[1,2,3]}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_eq(r.prompts[0].n_ids, 3);
    cr_assert_eq(r.prompts[0].ids[2], 3);
    api_request_free(&r);
    cr_assert_eq(parse(API_COMPLETION, "{\"prompt\":[\"a\",[4,5]],\"n\":3}", &r, &e), 0);
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_eq(r.prompts[1].n_ids, 2);
    api_request_free(&r);
}

/* Each bad body is a 400 naming the field. */
Test(api, bad_requests_name_the_field) {
    static const struct { api_kind k; const char *body, *param; } cases[] = {
        {API_CHAT, "{\"messages\":[]}", "messages"},
        {API_CHAT, "{\"messages\":\"hi\"}", "messages"},
        {API_CHAT, "{}", "messages"},
        {API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages[0].content"},
        {API_CHAT, "{\"messages\":[1]}", "messages[0]"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", "top_logprobs"},
        {API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":1}", "logprobs"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":3}", "temperature"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":true}", "temperature"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", "top_p"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"n\":0}", "n"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"stop\":7}", "stop"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", "logit_bias"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":1000}}", "logit_bias"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"logit_bias\":{\"1000\":1}}", "logit_bias"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", "stream_options"},
        {API_COMPLETION, "{\"prompt\":[1,1000]}", "prompt"},
        {API_COMPLETION, "{\"prompt\":[]}", "prompt"},
        {API_COMPLETION, "{\"prompt\":[[]]}", "prompt[0]"},
        {API_COMPLETION, "{\"prompt\":{}}", "prompt"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"min_tokens\":5,\"max_tokens\":2}", "min_tokens"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"presence_penalty\":-3}", "presence_penalty"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"seed\":\"1\"}", "seed"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"echo\":1}", "echo"},
        {API_COMPLETION, "{\"prompt\":\"x\",\"model\":5}", "model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_request r;
        api_error e;
        cr_assert_eq(parse(cases[i].k, cases[i].body, &r, &e), -1, "accepted: %s", cases[i].body);
        cr_assert_eq(e.status, 400);
        cr_assert_str_eq(e.param, cases[i].param, "%s -> param '%s' (%s)", cases[i].body, e.param, e.message);
    }
}

Test(api, malformed_bodies) {
    static const char *bodies[] = {"", "{", "{\"prompt\":", "[1,2]", "\"str\"", "null", "{\"prompt\":\"x\"}}",
                                   "{\"prompt\":\"\xff\"}", "{\"prompt\":\"\xed\xa0\x80\"}", "{'prompt':'x'}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        api_request r;
        api_error e;
        cr_assert_eq(parse(API_COMPLETION, bodies[i], &r, &e), -1, "accepted body %zu", i);
        cr_assert_eq(e.status, 400);
        char *j = api_error_json(&e);
        cJSON *o = cJSON_Parse(j);
        cr_assert(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")));
        cJSON_Delete(o);
        free(j);
    }
}

/* ---------------------------------------------------------------- stop strings */
static void feed_all(stop_matcher *m, const char *const *pieces, int n, sbuf *out, int *stopped_at) {
    *stopped_at = -1;
    for (int i = 0; i < n; i++)
        if (stop_feed(m, pieces[i], strlen(pieces[i]), out)) { *stopped_at = i; return; }
    stop_flush(m, out);
}

Test(stop, match_across_pieces_and_never_emitted) {
    char *stops[] = {"END", "\n\n"};
    stop_matcher m;
    stop_init(&m, stops, 2);
    sbuf out = {0};
    const char *pieces[] = {"Hello E", "N", "D world"};
    int at;
    feed_all(&m, pieces, 3, &out, &at);
    cr_assert_eq(at, 2);
    cr_assert_str_eq(out.p, "Hello ");
    stop_free(&m);
    sbuf_free(&out);
}

Test(stop, false_prefix_is_released) {
    char *stops[] = {"ENDING"};
    stop_matcher m;
    stop_init(&m, stops, 1);
    sbuf out = {0};
    const char *pieces[] = {"a EN", "D", "S b"};
    int at;
    feed_all(&m, pieces, 3, &out, &at);
    cr_assert_eq(at, -1);
    cr_assert_str_eq(out.p, "a ENDS b");
    stop_free(&m);
    sbuf_free(&out);
}

Test(stop, held_text_is_flushed_at_the_end_and_earliest_match_wins) {
    char *stops[] = {"xyz", "b"};
    stop_matcher m;
    stop_init(&m, stops, 2);
    sbuf out = {0};
    int at;
    const char *p1[] = {"12x", "y"};
    feed_all(&m, p1, 2, &out, &at);
    cr_assert_str_eq(out.p, "12xy");
    stop_free(&m);
    sbuf_free(&out);
    stop_init(&m, stops, 2);
    const char *p2[] = {"a", "xyzb"};
    feed_all(&m, p2, 2, &out, &at);
    cr_assert_str_eq(out.p, "a");
    stop_free(&m);
    sbuf_free(&out);
}

Test(utf8, validation_and_sanitizing) {
    cr_assert(srv_utf8_valid("caf\xc3\xa9 \xf0\x9f\x90\xa6", 10));
    cr_assert(!srv_utf8_valid("\xc0\xaf", 2));          /* overlong */
    cr_assert(!srv_utf8_valid("\xed\xa0\x80", 3));      /* surrogate */
    cr_assert(!srv_utf8_valid("\xf4\x90\x80\x80", 4));  /* > U+10FFFF */
    cr_assert(!srv_utf8_valid("\xe2\x82", 2));          /* truncated */
    char *s = srv_utf8_sanitize("a\xe2\x82" "b\xff", 5);
    cr_assert_str_eq(s, "a\xef\xbf\xbd" "b\xef\xbf\xbd");
    free(s);
}

/* ---------------------------------------------------------------- scheduler */
/* A fake engine: slot s emits script[k] as its k-th sampled token (with
 * alternatives t, t + 1); EOS is id 0. Token i detokenizes to pieces[i].
 * Each step can sleep to leave room for cancellation. */
static const char *g_pieces[] = {"<eos>", "Hel", "lo", " wor", "ld", "!", " E", "ND", "x"};
typedef struct {
    int      script[64];
    int      n_script;
    int      gen[4];       /* per slot: tokens sampled since reset */
    int      top_asked[4]; /* per slot: top_logprobs asked for */
    int      steps, resets, max_rows;
    int      prefill_tokens;
    useconds_t step_us;
    int      order[16];    /* slot resets in order, by seed */
    int      n_order;
} fake_engine;

static int fake_reset(void *ctx, int slot, const sampler_params *p, pg_err *err) {
    fake_engine *f = ctx;
    f->gen[slot] = 0;
    f->top_asked[slot] = p->top_logprobs;
    if (f->n_order < 16) f->order[f->n_order++] = (int)p->seed;
    f->resets++;
    return PG_OK;
}

static int fake_step(void *ctx, const engine_row *rows, int n, engine_result *res, pg_err *err) {
    fake_engine *f = ctx;
    f->steps++;
    if (n > f->max_rows) f->max_rows = n;
    if (f->step_us) usleep(f->step_us);
    for (int i = 0; i < n; i++) {
        if (rows[i].count_prompt) f->prefill_tokens += rows[i].n_tokens;
        if (!rows[i].sample) continue;
        int s = rows[i].slot, k = f->gen[s]++;
        int t = f->script[k % f->n_script];
        res[i] = (engine_result){.token = t, .logprob = -0.5f * (float)t, .n_top = 2, .top_ids = {t, (t + 1) % 9},
                                 .top_logprobs = {-0.1f, -2.0f}};
    }
    return PG_OK;
}

static int fake_is_eos(void *ctx, int32_t id) { return id == 0; }
typedef struct { int dummy; } fake_detok;
static void *fake_detok_new(void *ctx) { return pg_xcalloc(1, sizeof(fake_detok)); }
static int fake_detok_push(void *d, int32_t id, char **out) {
    *out = pg_xstrdup(g_pieces[id]);
    return (int)strlen(*out);
}
static int fake_detok_flush(void *d, char **out) {
    *out = pg_xstrdup("");
    return 0;
}
static void fake_detok_free(void *d) { free(d); }

static sched_backend fake_backend(fake_engine *f, int slots) {
    sched_backend be = {.ctx = f, .max_slots = slots, .max_seq_len = 64, .vocab = 9, .slot_reset = fake_reset,
                        .step = fake_step, .is_eos = fake_is_eos, .n_eos = 1,
                        .detok_new = fake_detok_new, .detok_push = fake_detok_push,
                        .detok_flush = fake_detok_flush, .detok_free = fake_detok_free};
    return be;
}

static const int32_t g_prompt[5] = {3, 4, 5, 6, 7};

static srv_request *make_request(int n_seqs, int max_new, uint64_t seed) {
    srv_request *r = srv_request_new(n_seqs);
    sampler_params_default(&r->api.sp);
    for (int i = 0; i < n_seqs; i++) {
        srv_seq *q = &r->seqs[i];
        q->prompt = g_prompt;
        q->n_prompt = 5;
        q->max_new = max_new;
        q->sp = r->api.sp;
        q->sp.seed = seed + (uint64_t)i;
        q->index = i;
        q->want_logprobs = 1;
        q->top_n = 1;
    }
    return r;
}

static void wait_done(srv_request *r) {
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&r->mu);
        int done = r->n_done == r->n_seqs;
        pthread_mutex_unlock(&r->mu);
        if (done) return;
        usleep(1000);
    }
    cr_assert_fail("request did not finish in 5 s");
}

Test(sched, generates_until_eos_with_text_and_logprobs) {
    fake_engine f = {.script = {1, 2, 3, 4, 5, 0}, .n_script = 6};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 2, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(1, 20, 7);
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    srv_seq *q = &r->seqs[0];
    cr_assert_str_eq(q->text.p, "Hello world!");
    cr_assert_eq(q->finish, FINISH_STOP);
    cr_assert_eq(q->n_gen, 6);   /* EOS counted as generated */
    cr_assert_eq(q->n_out, 5);   /* ...but not recorded as output */
    cr_assert_float_eq(q->out_lp[2], -1.5f, 1e-6);
    cr_assert_eq(q->out_text_end[1], 5);  /* "Hel" + "lo" */
    cr_assert_eq(f.prefill_tokens, 5);    /* in chunks of 2: 2 + 2 + 1 */
    cr_assert_eq(f.steps, 3 + 5);         /* 3 prefill chunks, then 5 decode steps */
    sched_drain(s, 1);
    sched_free(s);
    srv_request_release(r);
}

Test(sched, stop_string_across_tokens_ends_the_sequence) {
    fake_engine f = {.script = {1, 2, 6, 7, 8, 8, 8}, .n_script = 7};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(1, 30, 1);
    r->api.stop[0] = pg_xstrdup("END");
    r->api.n_stop = 1;
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    cr_assert_str_eq(r->seqs[0].text.p, "Hello ");
    cr_assert_eq(r->seqs[0].finish, FINISH_STOP);
    cr_assert_eq(r->seqs[0].n_gen, 4);
    sched_free(s);
    srv_request_release(r);
}

Test(sched, max_tokens_gives_length_and_ignore_eos_goes_on) {
    fake_engine f = {.script = {1, 0}, .n_script = 2};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(1, 5, 1);
    r->seqs[0].ignore_eos = 1;
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    cr_assert_eq(r->seqs[0].finish, FINISH_LENGTH);
    cr_assert_eq(r->seqs[0].n_gen, 5);
    cr_assert_str_eq(r->seqs[0].text.p, "Hel<eos>Hel<eos>Hel");  /* the fake detokenizer prints EOS */
    sched_free(s);
    srv_request_release(r);
}

Test(sched, min_tokens_replaces_an_early_eos) {
    fake_engine f = {.script = {0, 1, 0, 2, 0}, .n_script = 5};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(1, 10, 1);
    r->seqs[0].min_tokens = 2;
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    /* the first EOS (token 1) becomes its alternative 1 ("Hel"); the second
     * (token 3) ends the sequence: min_tokens 2 were generated */
    cr_assert_str_eq(r->seqs[0].text.p, "HelHel");
    cr_assert_eq(r->seqs[0].n_gen, 3);
    cr_assert_eq(r->seqs[0].finish, FINISH_STOP);
    cr_assert_float_eq(r->seqs[0].out_lp[0], -2.0f, 1e-6);  /* the alternative's logprob */
    cr_assert_eq(f.resets, 1);
    cr_assert_geq(f.top_asked[0], 2);
    sched_free(s);
    srv_request_release(r);
}

Test(sched, requests_run_in_arrival_order_one_at_a_time) {
    fake_engine f = {.script = {1, 2}, .n_script = 2};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = make_request(1, 3, 100 + (uint64_t)i);
        cr_assert_eq(sched_submit(s, r[i], NULL), PG_OK);
    }
    for (int i = 0; i < 4; i++) wait_done(r[i]);
    cr_assert_eq(f.max_rows, 1);
    for (int i = 0; i < 4; i++) cr_assert_eq(f.order[i], 100 + i);
    for (int i = 1; i < 4; i++) cr_assert_geq(r[i]->seqs[0].t_start, r[i - 1]->seqs[0].t_last);
    sched_free(s);
    for (int i = 0; i < 4; i++) srv_request_release(r[i]);
}

Test(sched, n_choices_and_batched_slots) {
    fake_engine f = {.script = {1, 2, 0}, .n_script = 3};
    sched_backend be = fake_backend(&f, 2);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(3, 10, 50);
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(r->seqs[i].text.p, "Hello");
        cr_assert_eq(r->seqs[i].finish, FINISH_STOP);
    }
    cr_assert_eq(f.max_rows, 2);  /* two slots: two sequences per step */
    sched_free(s);
    srv_request_release(r);
}

static int g_notified;
static void count_notify(srv_request *r, int final) { g_notified++; }

static void gauges_from_sched(void *ctx, int *running, int *queued) { sched_counts(ctx, running, queued); }

/* A request that finishes while /metrics is rendered: the gauge callback
 * plays the engine thread, which (sched.c) drops the running gauge and then
 * counts the cancellation. The counters must be the ones read before the
 * gauges; the other order could print "cancelled 1, running 1" for one
 * request, which a scrape in the server API test once did. */
typedef struct { srv_metrics *m; int running; } finishing_request;

static void gauges_while_a_request_finishes(void *ctx, int *running, int *queued) {
    finishing_request *f = ctx;
    *running = f->running;  /* read before the finish */
    *queued = 0;
    f->running = 0;
    metrics_cancelled(f->m);
}

Test(metrics, counters_are_read_before_the_gauges) {
    srv_metrics *m = metrics_new();
    finishing_request f = {m, 1};
    sbuf text = {0};
    metrics_render(m, gauges_while_a_request_finishes, &f, &text);
    cr_assert(strstr(text.p, "peregrine_requests_cancelled_total 0\n"), "%s", text.p);
    cr_assert(strstr(text.p, "peregrine_requests_running 1\n"), "%s", text.p);
    sbuf_free(&text);
    metrics_render(m, NULL, NULL, &text);
    cr_assert(strstr(text.p, "peregrine_requests_cancelled_total 1\n"), "%s", text.p);
    cr_assert(strstr(text.p, "peregrine_requests_running 0\n"), "%s", text.p);
    sbuf_free(&text);
    metrics_free(m);
}

Test(sched, cancel_frees_the_slot_at_the_next_step) {
    fake_engine f = {.script = {1, 2}, .n_script = 2, .step_us = 2000};
    sched_backend be = fake_backend(&f, 1);
    srv_metrics *m = metrics_new();
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, m, &s, NULL), PG_OK);
    srv_request *a = make_request(1, 60, 1), *b = make_request(1, 3, 2), *c = make_request(1, 3, 3);
    a->notify = count_notify;
    cr_assert_eq(sched_submit(s, a, NULL), PG_OK);
    cr_assert_eq(sched_submit(s, b, NULL), PG_OK);
    cr_assert_eq(sched_submit(s, c, NULL), PG_OK);
    atomic_store(&c->cancelled, 1);  /* cancelled while queued: never runs */
    while (1) {
        pthread_mutex_lock(&a->mu);
        int n = a->seqs[0].n_gen;
        pthread_mutex_unlock(&a->mu);
        if (n >= 3) break;
        usleep(500);
    }
    atomic_store(&a->cancelled, 1);
    sched_wake(s);
    wait_done(a);
    wait_done(b);
    wait_done(c);
    cr_assert_eq(a->seqs[0].finish, FINISH_CANCELLED);
    cr_assert_lt(a->seqs[0].n_gen, 10);
    cr_assert_eq(b->seqs[0].finish, FINISH_LENGTH);  /* the slot went to the next request */
    cr_assert_eq(c->seqs[0].finish, FINISH_CANCELLED);
    cr_assert_eq(c->seqs[0].n_gen, 0);
    cr_assert_gt(g_notified, 0);
    int running, queued;
    sched_counts(s, &running, &queued);
    cr_assert_eq(running, 0);
    cr_assert_eq(queued, 0);
    sbuf text = {0};
    metrics_render(m, gauges_from_sched, s, &text);
    cr_assert(strstr(text.p, "peregrine_requests_cancelled_total 2"), "%s", text.p);
    cr_assert(strstr(text.p, "peregrine_requests_running 0\n"), "%s", text.p);
    sbuf_free(&text);
    sched_free(s);
    metrics_free(m);
    srv_request_release(a);
    srv_request_release(b);
    srv_request_release(c);
}

Test(sched, full_queue_is_busy_and_drain_cancels_after_grace) {
    fake_engine f = {.script = {1}, .n_script = 1, .step_us = 5000};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 1, 512, NULL, &s, NULL), PG_OK);
    srv_request *a = make_request(1, 60, 1), *b = make_request(1, 60, 2), *c = make_request(1, 60, 3);
    cr_assert_eq(sched_submit(s, a, NULL), PG_OK);
    while (1) {  /* wait until a holds the slot, so b is the one queued request */
        int running, queued;
        sched_counts(s, &running, &queued);
        if (running == 1) break;
        usleep(500);
    }
    cr_assert_eq(sched_submit(s, b, NULL), PG_OK);
    pg_err err = {0};
    cr_assert_eq(sched_submit(s, c, &err), PG_EBUSY);
    cr_assert(strstr(err.msg, "queue is full"), "%s", err.msg);
    double t0 = pg_now();
    sched_drain(s, 0.05);  /* a needs ~0.3 s: it is cancelled after the grace period */
    cr_assert_lt(pg_now() - t0, 1.0);
    cr_assert_eq(a->seqs[0].finish, FINISH_CANCELLED);
    cr_assert_eq(b->seqs[0].finish, FINISH_CANCELLED);
    cr_assert_eq(sched_submit(s, c, &err), PG_ECANCELLED);
    sched_free(s);
    srv_request_release(a);
    srv_request_release(b);
    srv_request_release(c);
}

/* ---------------------------------------------------------------- responses */
Test(respond, stream_events_and_full_json) {
    fake_engine f = {.script = {1, 2, 0}, .n_script = 3};
    sched_backend be = fake_backend(&f, 1);
    sched *s;
    cr_assert_eq(sched_create(&be, 8, 512, NULL, &s, NULL), PG_OK);
    srv_request *r = make_request(1, 10, 1);
    r->api.kind = API_CHAT;
    r->api.include_usage = 1;
    cr_assert_eq(sched_submit(s, r, NULL), PG_OK);
    wait_done(r);
    resp_ctx c = {.id = "chatcmpl-x", .model = "fake", .created = 1};
    resp_cursor *cur = pg_xcalloc(1, sizeof *cur);
    sbuf out = {0};
    pthread_mutex_lock(&r->mu);
    cr_assert_eq(resp_stream(&c, r, cur, &out), 1);
    char *full = resp_full(&c, r);
    pthread_mutex_unlock(&r->mu);
    /* role chunk, content chunk, finish chunk, usage chunk, [DONE] */
    cr_assert(strstr(out.p, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"), "%s", out.p);
    cr_assert(strstr(out.p, "\"delta\":{\"content\":\"Hello\"}"), "%s", out.p);
    cr_assert(strstr(out.p, "\"finish_reason\":\"stop\""), "%s", out.p);
    cr_assert(strstr(out.p, "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}"), "%s", out.p);
    cr_assert(strstr(out.p, "\"timings\":{\"prompt_n\":5"), "%s", out.p);
    size_t n = strlen(out.p);
    cr_assert_str_eq(out.p + n - strlen("data: [DONE]\n\n"), "data: [DONE]\n\n");
    cJSON *o = cJSON_Parse(full);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion");
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content")->valuestring, "Hello");
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
    cr_assert_eq(cJSON_GetArraySize(lp), 2);
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(lp, 1), "token")->valuestring, "<2>");
    cJSON_Delete(o);
    free(full);
    free(cur);
    sbuf_free(&out);
    sched_free(s);
    srv_request_release(r);
}
