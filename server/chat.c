/*
 * server/chat.c — chat-template families rendered in C (see chat.h), and the
 * recognition of a model's Jinja template text.
 *
 * Each formatter is a transcription of its family's published Jinja template
 * (the template texts are in scripts/gen-chat-goldens.py), including its
 * errors: where the template calls raise_exception we return PG_EINVAL with
 * the same message, and where it silently skips a message we skip it too.
 */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* ---------------------------------------------------------------- names */
static const struct {
    const char *name;
    chat_template_kind kind;
} g_names[] = {
    {"chatml", CHAT_TEMPLATE_CHATML}, {"llama2", CHAT_TEMPLATE_LLAMA2}, {"llama3", CHAT_TEMPLATE_LLAMA3},
    {"mistral", CHAT_TEMPLATE_MISTRAL}, {"zephyr", CHAT_TEMPLATE_ZEPHYR},
};
#define N_NAMES ((int)(sizeof g_names / sizeof g_names[0]))

const char *chat_template_kind_name(chat_template_kind k) {
    for (int i = 0; i < N_NAMES; i++)
        if (g_names[i].kind == k) return g_names[i].name;
    return NULL;
}

const char *chat_template_names(void) { return "chatml, llama2, llama3, mistral, zephyr"; }

int chat_template_from_name(const char *name, chat_template *out, pg_err *err) {
    memset(out, 0, sizeof *out);
    for (int i = 0; name && i < N_NAMES; i++)
        if (!strcmp(name, g_names[i].name)) {
            out->kind = g_names[i].kind;
            return PG_OK;
        }
    return pg_errf(err, PG_EINVAL, "unknown chat template '%s' (choose one of: %s)", name ? name : "(null)",
                   chat_template_names());
}

/* ---------------------------------------------------------------- detection */
/* Find the default system prompt of a ChatML template: the text of a string
 * literal '<|im_start|>system' NEWLINE TEXT '<|im_end|>' where TEXT is a
 * constant (no quote: not `'...system\n' + messages[0]['content']`). NEWLINE
 * is a real newline or the two characters backslash-n (templates stored with
 * Jinja escapes). Returns 1 and fills out (unescaped) when found. */
static int chatml_default_system(const char *t, char *out, size_t cap) {
    static const char tag[] = "<|im_start|>system";
    for (const char *p = strstr(t, tag); p; p = strstr(p + 1, tag)) {
        const char *q = p + sizeof tag - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end) return 0;
        if (memchr(q, '\'', (size_t)(end - q)) || memchr(q, '"', (size_t)(end - q))) continue;
        size_t o = 0;
        for (const char *s = q; s < end && o + 1 < cap; s++) {
            if (s[0] == '\\' && s + 1 < end) {
                s++;
                out[o++] = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
            } else out[o++] = *s;
        }
        out[o] = 0;
        return 1;
    }
    return 0;
}

int chat_template_detect(const char *t, chat_template *out, pg_err *err) {
    memset(out, 0, sizeof *out);
    if (!t || !*t)
        return pg_errf(err, PG_EUNSUPPORTED, "the model has no chat template; start the server with "
                       "--chat-template NAME (one of: %s) or use /v1/completions", chat_template_names());
    /* Templates that render tools or dates (Qwen2.5, Llama 3.1+) print things
     * our formatters do not: refuse rather than render something else. */
    int fancy = strstr(t, "tools") || strstr(t, "Cutting Knowledge") || strstr(t, "date_string");
    if (!fancy && strstr(t, "<|im_start|>") && strstr(t, "<|im_end|>")) {
        out->kind = CHAT_TEMPLATE_CHATML;
        if (strstr(t, "!= 'system'") || strstr(t, "!= \"system\""))
            out->has_default_system = chatml_default_system(t, out->default_system, sizeof out->default_system);
        return PG_OK;
    }
    if (!fancy && strstr(t, "<|start_header_id|>") && strstr(t, "<|eot_id|>")) {
        out->kind = CHAT_TEMPLATE_LLAMA3;
        return PG_OK;
    }
    if (strstr(t, "<<SYS>>") && strstr(t, "[INST]")) {
        out->kind = CHAT_TEMPLATE_LLAMA2;
        return PG_OK;
    }
    /* Mistral v0.1: assistant turns end with eos + ' '; later revisions differ
     * (spaces around [INST], system prompts), so only this one is recognised. */
    if (strstr(t, "[INST]") && strstr(t, "[/INST]") && strstr(t, "eos_token + ' '") && !strstr(t, "system")) {
        out->kind = CHAT_TEMPLATE_MISTRAL;
        return PG_OK;
    }
    if (strstr(t, "<|user|>") && strstr(t, "<|assistant|>") && strstr(t, "<|system|>")) {
        out->kind = CHAT_TEMPLATE_ZEPHYR;
        return PG_OK;
    }
    return pg_errf(err, PG_EUNSUPPORTED, "the model's chat template is not one we recognise; start the server "
                   "with --chat-template NAME (one of: %s) or use /v1/completions", chat_template_names());
}

int chat_template_for_model(const model *m, const char *name, chat_template *out, pg_err *err) {
    if (name && *name && strcmp(name, "auto")) return chat_template_from_name(name, out, err);
    return chat_template_detect(m ? m->chat_template : NULL, out, err);
}

/* ---------------------------------------------------------------- rendering */
/* Python str.strip(): the whitespace of str.isspace(), as Jinja's trim and
 * .strip() use. Returns the length of the UTF-8 whitespace character at s
 * (0 if none); `back` looks at the character ending at s + n. */
static int ws_len_at(const unsigned char *s, size_t n) {
    if (n >= 1 && (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x1f))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3 && s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3;               /* U+1680 */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 &&
        (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf)) return 3;      /* U+2000-200A, 2028, 2029, 202F */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;               /* U+205F */
    if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;               /* U+3000 */
    return 0;
}

static void put_stripped(sbuf *b, const char *s) {
    const unsigned char *p = (const unsigned char *)s, *e = p + strlen(s);
    for (int k; p < e && (k = ws_len_at(p, (size_t)(e - p))) > 0;) p += k;
    for (int again = 1; again && e > p;) {
        again = 0;
        for (int k = 1; k <= 3 && e - k >= p; k++)
            if (ws_len_at(e - k, (size_t)k) == k) { e -= k; again = 1; break; }
    }
    sbuf_put(b, p, (size_t)(e - p));
}

static int is_role(const chat_message *m, const char *r) { return m->role && !strcmp(m->role, r); }

static int render_llama2(sbuf *b, const chat_message *msgs, int n, const char *bos, const char *eos, pg_err *err) {
    int has_sys = n > 0 && is_role(&msgs[0], "system");
    const chat_message *loop = msgs + has_sys;
    int nl = n - has_sys;
    for (int i = 0; i < nl; i++) {
        if (is_role(&loop[i], "user") != (i % 2 == 0))
            return pg_errf(err, PG_EINVAL, "messages[%d]: conversation roles must alternate "
                           "user/assistant/user/assistant/... (llama2 chat template)", i + has_sys);
        sbuf c = {0};
        if (i == 0 && has_sys) {
            sbuf_puts(&c, "<<SYS>>\n");
            sbuf_puts(&c, msgs[0].content);
            sbuf_puts(&c, "\n<</SYS>>\n\n");
        }
        sbuf_puts(&c, loop[i].content);
        sbuf_putc(&c, 0);
        if (is_role(&loop[i], "user")) {
            sbuf_puts(b, bos);
            sbuf_puts(b, "[INST] ");
            put_stripped(b, c.p);
            sbuf_puts(b, " [/INST]");
        } else if (is_role(&loop[i], "assistant")) {
            sbuf_puts(b, " ");
            put_stripped(b, c.p);
            sbuf_puts(b, " ");
            sbuf_puts(b, eos);
        }
        sbuf_free(&c);
    }
    return PG_OK;
}

static int render_mistral(sbuf *b, const chat_message *msgs, int n, const char *bos, const char *eos, pg_err *err) {
    sbuf_puts(b, bos);
    for (int i = 0; i < n; i++) {
        if (is_role(&msgs[i], "user") != (i % 2 == 0))
            return pg_errf(err, PG_EINVAL, "messages[%d]: conversation roles must alternate "
                           "user/assistant/user/assistant/... (mistral chat template)", i);
        if (is_role(&msgs[i], "user")) {
            sbuf_puts(b, "[INST] ");
            sbuf_puts(b, msgs[i].content);
            sbuf_puts(b, " [/INST]");
        } else if (is_role(&msgs[i], "assistant")) {
            sbuf_puts(b, msgs[i].content);
            sbuf_puts(b, eos);
            sbuf_puts(b, " ");
        } else {
            return pg_errf(err, PG_EINVAL, "messages[%d]: only user and assistant roles are supported "
                           "(mistral chat template)", i);
        }
    }
    return PG_OK;
}

int chat_render(const chat_template *t, const chat_message *msgs, int n, int add_gen, const char *bos,
                const char *eos, char **out, pg_err *err) {
    *out = NULL;
    if (!bos) bos = "";
    if (!eos) eos = "";
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return pg_errf(err, PG_EINVAL, "messages[%d]: missing role or content", i);
    sbuf b = {0};
    int rc = PG_OK;
    switch (t->kind) {
    case CHAT_TEMPLATE_CHATML:
        for (int i = 0; i < n; i++) {
            if (i == 0 && !is_role(&msgs[0], "system") && t->has_default_system) {
                sbuf_puts(&b, "<|im_start|>system\n");
                sbuf_puts(&b, t->default_system);
                sbuf_puts(&b, "<|im_end|>\n");
            }
            sbuf_puts(&b, "<|im_start|>");
            sbuf_puts(&b, msgs[i].role);
            sbuf_puts(&b, "\n");
            sbuf_puts(&b, msgs[i].content);
            sbuf_puts(&b, "<|im_end|>\n");
        }
        if (add_gen) sbuf_puts(&b, "<|im_start|>assistant\n");
        break;
    case CHAT_TEMPLATE_LLAMA2:
        rc = render_llama2(&b, msgs, n, bos, eos, err);
        break;
    case CHAT_TEMPLATE_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0) sbuf_puts(&b, bos);
            sbuf_puts(&b, "<|start_header_id|>");
            sbuf_puts(&b, msgs[i].role);
            sbuf_puts(&b, "<|end_header_id|>\n\n");
            put_stripped(&b, msgs[i].content);
            sbuf_puts(&b, "<|eot_id|>");
        }
        if (add_gen) sbuf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case CHAT_TEMPLATE_MISTRAL:
        rc = render_mistral(&b, msgs, n, bos, eos, err);
        break;
    case CHAT_TEMPLATE_ZEPHYR:
        for (int i = 0; i < n; i++) {
            const char *tag = is_role(&msgs[i], "user") ? "<|user|>\n"
                              : is_role(&msgs[i], "system") ? "<|system|>\n"
                              : is_role(&msgs[i], "assistant") ? "<|assistant|>\n" : NULL;
            if (tag) {
                sbuf_puts(&b, tag);
                sbuf_puts(&b, msgs[i].content);
                sbuf_puts(&b, eos);
                sbuf_puts(&b, "\n");
            }
            if (i == n - 1 && add_gen) sbuf_puts(&b, "<|assistant|>\n");
        }
        break;
    default:
        rc = pg_errf(err, PG_EUNSUPPORTED, "no chat template chosen (use --chat-template NAME: %s)",
                     chat_template_names());
    }
    if (rc) {
        sbuf_free(&b);
        return rc;
    }
    sbuf_putc(&b, 0);
    *out = b.p;
    return PG_OK;
}

/* The text of a special token (BOS/EOS) for templates that print it. */
static void token_text(const model *m, int id, char *buf, size_t cap) {
    buf[0] = 0;
    if (!m || !m->tok || id < 0) return;
    int n = tok_piece_bytes(m->tok, id, buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
}

int chat_render_for_model(const model *m, const char *name, const chat_message *msgs, int n, int add_gen,
                          char **out, pg_err *err) {
    *out = NULL;
    chat_template t;
    PG_TRY(chat_template_for_model(m, name, &t, err));
    char bos[128], eos[128];
    token_text(m, m ? m->cfg.bos_id : -1, bos, sizeof bos);
    token_text(m, m && m->cfg.n_eos > 0 ? m->cfg.eos_ids[0] : -1, eos, sizeof eos);
    /* Llama 3's template ends turns with <|eot_id|> but prints no eos itself. */
    return chat_render(&t, msgs, n, add_gen, bos, eos, out, err);
}
