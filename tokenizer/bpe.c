/* tokenizer/bpe.c — byte-level BPE as HF `tokenizers` runs it.
 *
 * encode(segment):  split stages (regexes, Isolated: matches and the gaps
 * between them both become pieces) -> ByteLevel (optional prefix space, GPT-2
 * regex split) -> every byte becomes its GPT-2 "unicode" character, i.e. its
 * vocabulary symbol -> merges by rank, lowest rank first and leftmost on ties
 * (a heap over adjacent pairs, O(n log n) per word).
 * Bytes whose character is not in the vocabulary are dropped unless the model
 * names an unknown token (HF BPE does the same).
 * Regexes are HF / Oniguruma patterns run by PCRE2 (UTF + UCP); \s and \S are
 * rewritten to an explicit Unicode White_Space class, which is what Oniguruma's
 * \s means (PCRE2's own \s also matches U+180E MONGOLIAN VOWEL SEPARATOR).
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

const char *const tok__gpt2_regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char *const llama3_regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const qwen2_regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------- byte <-> unicode

/* GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68
 * bytes (0-32, 127-160, 173) map in order to U+0100..U+0143 so that every byte
 * is a visible character. */
static int byte_is_printable(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
}

static size_t put_cp(char *o, uint32_t cp) {   /* cp < 0x800 here */
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Decoded bytes of every piece: all characters map back to bytes, or else the
 * piece's own UTF-8 (HF's ByteLevel decoder does exactly this per token). */
void tok__bpe_init_bytes(tok_tokenizer *t) {
    int16_t cp_byte[256 + 68];                 /* inverse of byte_cp */
    char tmp[4];
    for (unsigned b = 0, extra = 0; b < 256; b++) {
        t->byte_cp[b] = (uint16_t)(byte_is_printable(b) ? b : 256 + extra++);
        cp_byte[t->byte_cp[b]] = (int16_t)b;
        t->byte_id[b] = tok__lookup(t, tmp, put_cp(tmp, t->byte_cp[b]));
    }
    for (unsigned c = 0; c < 256; c++)
        if (!byte_is_printable(c)) cp_byte[c] = -1;   /* these code points are not byte characters */
    char *buf = NULL;
    size_t cap = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        tok_span sp = t->piece[id];
        const unsigned char *p = (const unsigned char *)t->arena + sp.off;
        if (sp.len > cap) { cap = sp.len; buf = pg_xrealloc(buf, cap); }
        size_t o = 0, i = 0;
        while (i < sp.len) {
            uint32_t cp;
            if (p[i] < 0x80) { cp = p[i]; i += 1; }
            else if ((p[i] & 0xE0) == 0xC0 && i + 1 < sp.len) { cp = ((p[i] & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu); i += 2; }
            else break;                         /* >= U+0800 or malformed: not a byte character */
            if (cp >= 256 + 68 || cp_byte[cp] < 0) break;
            buf[o++] = (char)cp_byte[cp];
        }
        t->dec[id] = i == sp.len ? tok__arena_put(t, buf, o) : sp;
    }
    free(buf);
}

// ---------------------------------------------------------------- merges

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int merge_find(const tok_mergemap *m, int32_t a, int32_t b, int32_t *id) {
    if (!m->key) return -1;
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (uint32_t h = (uint32_t)mix64(k) & m->mask;; h = (h + 1) & m->mask) {
        if (m->key[h] == 0) return -1;
        if (m->key[h] == k) { *id = m->id[h]; return m->rank[h]; }
    }
}

int tok__bpe_add_merges(tok_tokenizer *t, int n_merges,
                        const char *const *left, const size_t *left_len,
                        const char *const *right, const size_t *right_len,
                        const char *what, pg_err *err) {
    if (n_merges < 0 || n_merges > TOK_MAX_VOCAB * 4)
        return pg_errf(err, PG_EFORMAT, "%s: %d merges", what, n_merges);
    uint32_t cap = 16;
    while (cap < (uint32_t)n_merges * 2u) cap <<= 1;
    tok_mergemap *m = &t->merges;
    m->key = pg_xcalloc(cap, sizeof *m->key);
    m->rank = pg_xmalloc(cap * sizeof *m->rank);
    m->id = pg_xmalloc(cap * sizeof *m->id);
    m->mask = cap - 1;
    char *buf = NULL;
    size_t bcap = 0;
    int skipped = 0;
    for (int r = 0; r < n_merges; r++) {
        int a = tok__lookup(t, left[r], left_len[r]);
        int b = tok__lookup(t, right[r], right_len[r]);
        size_t n = left_len[r] + right_len[r];
        if (n > bcap) { bcap = n; buf = pg_xrealloc(buf, bcap); }
        memcpy(buf, left[r], left_len[r]);
        memcpy(buf + left_len[r], right[r], right_len[r]);
        int c = tok__lookup(t, buf, n);
        if (a < 0 || b < 0 || c < 0) { skipped++; continue; }
        uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
        for (uint32_t h = (uint32_t)mix64(k) & m->mask;; h = (h + 1) & m->mask) {
            if (m->key[h] == k) break;          /* duplicate: the lower rank stays */
            if (m->key[h] == 0) { m->key[h] = k; m->rank[h] = r; m->id[h] = c; break; }
        }
    }
    free(buf);
    if (skipped)
        LOG_WARN("%s: %d of %d merges name pieces missing from the vocabulary; ignored",
                 what, skipped, n_merges);
    return PG_OK;
}

// ---------------------------------------------------------------- regex

pcre2_code *tok__regex_compile(const char *pattern, const char *what, pg_err *err) {
    static const char ws_in[] = "\\t-\\r\\x{85}\\p{Z}";   /* White_Space, inside a class */
    size_t n = strlen(pattern);
    char *p = pg_xmalloc(n * 24 + 1);
    size_t o = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < n) {
            char e = pattern[i + 1];
            if (e == 's' || (e == 'S' && !in_class)) {
                o += (size_t)sprintf(p + o, in_class ? "%s" : e == 's' ? "[%s]" : "[^%s]", ws_in);
            } else {
                p[o++] = c;
                p[o++] = e;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            p[o++] = c;
            if (i + 1 < n && pattern[i + 1] == '^') p[o++] = pattern[++i];
            if (i + 1 < n && pattern[i + 1] == ']') p[o++] = pattern[++i];   /* literal ] */
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        p[o++] = c;
    }
    p[o] = 0;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)p, o, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    free(p);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        pg_errf(err, PG_EFORMAT, "%s: regex /%s/ does not compile: %s", what, pattern, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* optional: falls back to the interpreter */
    return re;
}

// ---------------------------------------------------------------- encode

typedef struct { int32_t id, prev, next; } bpe_sym;
typedef struct { int32_t rank, pos; } bpe_pair;

typedef struct {
    const tok_tokenizer *t;
    pcre2_match_data *md;
    tok_ids *out;
    pg_err *err;
    bpe_sym *sym;  int sym_cap;
    bpe_pair *heap; int heap_n, heap_cap;
    char *buf;     size_t buf_cap;
} bpe_ctx;

static int pair_less(bpe_pair a, bpe_pair b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(bpe_ctx *c, int32_t rank, int32_t pos) {
    if (c->heap_n == c->heap_cap) {
        c->heap_cap = c->heap_cap ? c->heap_cap * 2 : 256;
        c->heap = pg_xrealloc(c->heap, (size_t)c->heap_cap * sizeof *c->heap);
    }
    int i = c->heap_n++;
    bpe_pair v = { rank, pos };
    while (i > 0 && pair_less(v, c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = v;
}

static bpe_pair heap_pop(bpe_ctx *c) {
    bpe_pair top = c->heap[0], v = c->heap[--c->heap_n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, m = i;
        bpe_pair best = v;
        if (l < c->heap_n && pair_less(c->heap[l], best)) { m = l; best = c->heap[l]; }
        if (l + 1 < c->heap_n && pair_less(c->heap[l + 1], best)) m = l + 1;
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (c->heap_n) c->heap[i] = v;
    return top;
}

static void push_pair(bpe_ctx *c, int32_t left) {
    int32_t right = c->sym[left].next, id;
    if (right < 0) return;
    int r = merge_find(&c->t->merges, c->sym[left].id, c->sym[right].id, &id);
    if (r >= 0) heap_push(c, r, left);
}

/* One pre-tokenized word (raw bytes) -> ids. */
static void bpe_word(bpe_ctx *c, const unsigned char *s, size_t n) {
    const tok_tokenizer *t = c->t;
    if (t->ignore_merges) {
        if (n * 2 > c->buf_cap) { c->buf_cap = n * 2; c->buf = pg_xrealloc(c->buf, c->buf_cap); }
        size_t o = 0;
        for (size_t i = 0; i < n; i++) o += put_cp(c->buf + o, t->byte_cp[s[i]]);
        int id = tok__lookup(t, c->buf, o);
        if (id >= 0) { tok__ids_push(c->out, id); return; }
    }
    if ((int)n > c->sym_cap) {
        c->sym_cap = (int)n;
        c->sym = pg_xrealloc(c->sym, (size_t)c->sym_cap * sizeof *c->sym);
    }
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) {
            if (t->bpe_unk_id < 0) continue;    /* HF: dropped */
            if (t->fuse_unk && m && c->sym[m - 1].id == t->bpe_unk_id) continue;
            id = t->bpe_unk_id;
        }
        c->sym[m] = (bpe_sym){ id, m - 1, -1 };
        if (m) c->sym[m - 1].next = m;
        m++;
    }
    c->heap_n = 0;
    for (int i = 0; i + 1 < m; i++) push_pair(c, i);
    while (c->heap_n) {
        bpe_pair p = heap_pop(c);
        bpe_sym *L = &c->sym[p.pos];
        if (L->id < 0 || L->next < 0) continue;           /* merged away / at the end */
        int32_t id;
        if (merge_find(&t->merges, L->id, c->sym[L->next].id, &id) != p.rank) continue;   /* stale */
        int32_t r = L->next;
        L->id = id;
        L->next = c->sym[r].next;
        if (L->next >= 0) c->sym[L->next].prev = p.pos;
        c->sym[r].id = -1;
        if (L->prev >= 0) push_pair(c, L->prev);
        push_pair(c, p.pos);
    }
    for (int i = m ? 0 : -1; i >= 0; i = c->sym[i].next) tok__ids_push(c->out, c->sym[i].id);
}

/* Run re over s[0, n) and call fn on every match and every gap between matches. */
static int split_isolated(bpe_ctx *c, pcre2_code *re, const char *s, size_t n,
                          int (*fn)(bpe_ctx *, int, const char *, size_t), int arg) {
    size_t pos = 0, start = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return pg_errf(c->err, PG_EINTERNAL, "tokenizer regex failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {                         /* empty match: step one character */
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > start) PG_TRY(fn(c, arg, s + start, ms - start));
        PG_TRY(fn(c, arg, s + ms, me - ms));
        start = pos = me;
    }
    if (start < n) PG_TRY(fn(c, arg, s + start, n - start));
    return PG_OK;
}

static int word_cb(bpe_ctx *c, int arg, const char *s, size_t n) {
    (void)arg;
    bpe_word(c, (const unsigned char *)s, n);
    return PG_OK;
}

static int byte_level(bpe_ctx *c, const char *s, size_t n) {
    const tok_tokenizer *t = c->t;
    char *tmp = NULL;
    if (t->bl_add_prefix_space && s[0] != ' ') {
        tmp = pg_xmalloc(n + 1);
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        s = tmp;
        n++;
    }
    int rc = PG_OK;
    if (t->bl_re) rc = split_isolated(c, t->bl_re, s, n, word_cb, 0);
    else bpe_word(c, (const unsigned char *)s, n);
    free(tmp);
    return rc;
}

static int stage_cb(bpe_ctx *c, int stage, const char *s, size_t n) {
    if (stage == c->t->n_stages) return byte_level(c, s, n);
    return split_isolated(c, c->t->stage[stage], s, n, stage_cb, stage + 1);
}

int tok__bpe_encode(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, pg_err *err) {
    bpe_ctx c = { .t = t, .out = out, .err = err };
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) return pg_errf(err, PG_ENOMEM, "tokenizer: no memory for regex match data");
    int rc = stage_cb(&c, 0, s, n);
    pcre2_match_data_free(c.md);
    free(c.sym);
    free(c.heap);
    free(c.buf);
    return rc;
}

// ---------------------------------------------------------------- GGUF "gpt2"

/* tokenizer.ggml.pre -> pre-tokenizer, following the names llama.cpp writes. */
static int gguf_pre(tok_tokenizer *t, const char *pre, pg_err *err) {
    /* 0: \p{N} then GPT-2 (SmolLM, StarCoder)  1: GPT-2  2: Llama 3  3: Qwen2 */
    static const struct { const char *name; int kind; } pres[] = {
        { "smollm", 0 }, { "starcoder", 0 }, { "refact", 0 }, { "codeshell", 0 },
        { "gpt2", 1 }, { "gpt-2", 1 }, { "default", 1 },
        { "llama-bpe", 2 }, { "llama3", 2 }, { "llama-v3", 2 }, { "falcon3", 2 },
        { "qwen2", 3 }, { "deepseek-r1-qwen", 3 },
    };
    const char *p = pre ? pre : "default";
    int kind = -1;
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++)
        if (!strcmp(p, pres[i].name)) kind = pres[i].kind;
    const char *what = "GGUF tokenizer.ggml.pre";
    switch (kind) {
    case 0:   /* Digits(individual_digits) then ByteLevel (SmolLM, StarCoder) */
        if (!(t->stage[t->n_stages++] = tok__regex_compile("\\p{N}", what, err))) return err->code;
        if (!(t->bl_re = tok__regex_compile(tok__gpt2_regex, what, err))) return err->code;
        return PG_OK;
    case 1:
        if (!pre || !strcmp(pre, "default"))
            LOG_WARN("GGUF: tokenizer.ggml.pre is '%s'; using GPT-2's pre-tokenizer regex", p);
        if (!(t->bl_re = tok__regex_compile(tok__gpt2_regex, what, err))) return err->code;
        return PG_OK;
    case 2:   /* Split(regex) then ByteLevel(use_regex=false); whole words first */
        if (!(t->stage[t->n_stages++] = tok__regex_compile(llama3_regex, what, err))) return err->code;
        t->ignore_merges = 1;
        return PG_OK;
    case 3:
        if (!(t->stage[t->n_stages++] = tok__regex_compile(qwen2_regex, what, err))) return err->code;
        return PG_OK;
    }
    return pg_errf(err, PG_EUNSUPPORTED,
                   "GGUF: tokenizer.ggml.pre '%s' is not supported (smollm, starcoder, gpt2, "
                   "default, llama-bpe, qwen2, ...)", p);
}

int tok__load_gguf_bpe(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err) {
    pg_err local;
    if (!err) err = &local;
    tok_tokenizer *t = tok__new(TOK_KIND_BPE, v->n_vocab);
    int rc = PG_OK;
    for (int i = 0; i < v->n_vocab; i++) {
        size_t n = strlen(v->tokens[i]);
        if (n > TOK_MAX_PIECE) { rc = pg_errf(err, PG_EFORMAT, "GGUF: token %d is %zu bytes long", i, n); goto fail; }
        t->piece[i] = tok__arena_put(t, v->tokens[i], n);
        int ty = v->token_types ? v->token_types[i] : 1;
        t->attr[i] = ty == 2 ? TOK_A_UNKNOWN : ty == 3 ? TOK_A_CONTROL : ty == 4 ? TOK_A_USER
                   : ty == 5 ? TOK_A_UNUSED : ty == 6 ? TOK_A_BYTE : 0;
    }
    tok__build_vocab_map(t);
    /* llama.cpp matches control, unknown and user-defined tokens in text;
     * the first two are special (HF: special added tokens). */
    for (int i = 0; i < v->n_vocab; i++)
        if (t->attr[i] & (TOK_A_CONTROL | TOK_A_UNKNOWN | TOK_A_USER))
            tok__add_added(t, i, v->tokens[i], t->piece[i].len,
                           !(t->attr[i] & TOK_A_USER), 0, 0);
    tok__finish_added(t);
    t->bos_id = v->bos_id;
    t->eos_id = v->eos_id;
    t->unk_id = v->unk_id;
    t->pad_id = v->pad_id;
    if ((rc = gguf_pre(t, v->pre, err)) != PG_OK) goto fail;
    t->add_bos = v->add_bos >= 0 ? !!v->add_bos : t->ignore_merges;   /* Llama 3 adds BOS */
    t->bl_add_prefix_space = v->add_space_prefix == 1;
    if (v->n_merges < 0 || (v->n_merges > 0 && !v->merges)) {
        rc = pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.merges has %d entries", v->n_merges);
        goto fail;
    }
    {
        int nm = v->n_merges;
        const char **l = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *l);
        const char **r = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *r);
        size_t *ll = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *ll);
        size_t *rl = pg_xmalloc((size_t)(nm ? nm : 1) * sizeof *rl);
        for (int i = 0; i < nm; i++) {
            const char *m = v->merges[i] ? v->merges[i] : "";
            const char *sp = strchr(m, ' ');
            l[i] = m;
            ll[i] = sp ? (size_t)(sp - m) : strlen(m);
            r[i] = sp ? sp + 1 : "";
            rl[i] = strlen(r[i]);
            if (sp && strchr(sp + 1, ' ')) rl[i] = 0;    /* malformed: skipped as missing */
        }
        rc = tok__bpe_add_merges(t, nm, l, ll, r, rl, "GGUF tokenizer.ggml.merges", err);
        free(l); free(r); free(ll); free(rl);
        if (rc != PG_OK) goto fail;
    }
    tok__bpe_init_bytes(t);
    *out = t;
    return PG_OK;
fail:
    tok_free(t);
    return rc;
}
