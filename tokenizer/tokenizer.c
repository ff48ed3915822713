/* tokenizer/tokenizer.c — what both tokenizer kinds share: the vocabulary
 * (arena, piece -> id map, attributes), added/special tokens matched before
 * pre-tokenization, encode dispatch, decode, lossy UTF-8 and the incremental
 * detokenizer. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------- lifecycle

tok_tokenizer *tok__new(int kind, int n_vocab) {
    tok_tokenizer *t = pg_xcalloc(1, sizeof *t);
    t->kind = kind;
    t->n_vocab = n_vocab;
    t->piece = pg_xcalloc((size_t)n_vocab, sizeof *t->piece);
    t->dec = pg_xcalloc((size_t)n_vocab, sizeof *t->dec);
    t->attr = pg_xcalloc((size_t)n_vocab, 1);
    t->bos_id = t->eos_id = t->unk_id = t->pad_id = -1;
    t->bpe_unk_id = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    t->arena_cap = 1 << 16;
    t->arena = pg_xmalloc(t->arena_cap);
    /* Offset 0 is the empty string: zeroed spans are valid and empty. */
    t->arena[0] = 0;
    t->arena_len = 1;
    return t;
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    free(t->arena);
    free(t->piece);
    free(t->dec);
    free(t->attr);
    free(t->vocab.slot);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.id);
    free(t->added);
    for (int i = 0; i < t->n_stages; i++) pcre2_code_free(t->stage[i]);
    pcre2_code_free(t->bl_re);
    spm_shim_free(t->spm);
    free(t);
}

tok_span tok__arena_put(tok_tokenizer *t, const void *s, size_t n) {
    PG_ASSERT(n < UINT32_MAX / 2);
    while (t->arena_len + n + 1 > t->arena_cap) {
        t->arena_cap *= 2;
        PG_ASSERT(t->arena_cap < UINT32_MAX);
        t->arena = pg_xrealloc(t->arena, t->arena_cap);
    }
    tok_span sp = { (uint32_t)t->arena_len, (uint32_t)n };
    if (n) memcpy(t->arena + t->arena_len, s, n);
    t->arena[t->arena_len + n] = 0;
    t->arena_len += n + 1;
    return sp;
}

// ---------------------------------------------------------------- piece -> id

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

void tok__build_vocab_map(tok_tokenizer *t) {
    uint32_t cap = 16;
    while (cap < (uint32_t)t->n_vocab * 2u) cap <<= 1;
    free(t->vocab.slot);
    t->vocab.slot = pg_xcalloc(cap, sizeof *t->vocab.slot);
    t->vocab.mask = cap - 1;
    for (int id = 0; id < t->n_vocab; id++) {
        tok_span sp = t->piece[id];
        if (sp.len == 0) continue;          /* holes in HF vocabularies */
        uint32_t h = (uint32_t)hash_bytes(t->arena + sp.off, sp.len) & t->vocab.mask;
        for (;; h = (h + 1) & t->vocab.mask) {
            uint32_t v = t->vocab.slot[h];
            if (v == 0) { t->vocab.slot[h] = (uint32_t)id + 1; break; }
            tok_span o = t->piece[v - 1];
            if (o.len == sp.len && !memcmp(t->arena + o.off, t->arena + sp.off, sp.len)) break;
        }
    }
}

int tok__lookup(const tok_tokenizer *t, const char *s, size_t n) {
    if (!t->vocab.slot || n == 0) return -1;
    uint32_t h = (uint32_t)hash_bytes(s, n) & t->vocab.mask;
    for (;; h = (h + 1) & t->vocab.mask) {
        uint32_t v = t->vocab.slot[h];
        if (v == 0) return -1;
        tok_span o = t->piece[v - 1];
        if (o.len == n && !memcmp(t->arena + o.off, s, n)) return (int)v - 1;
    }
}

// ---------------------------------------------------------------- added tokens

static int utf8_valid(const char *s, size_t n);

void tok__add_added(tok_tokenizer *t, int id, const char *content, size_t len,
                    int special, int lstrip, int rstrip) {
    PG_ASSERT(id >= 0 && id < t->n_vocab);
    if (len == 0) return;                   /* an empty token can never match */
    if (!utf8_valid(content, len)) {
        /* Matching it could split text inside a character. */
        LOG_WARN("tokenizer: added token %d is not valid UTF-8; it is not matched in text", id);
        t->attr[id] |= special ? TOK_A_SPECIAL : 0;
        return;
    }
    t->added = pg_xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
    tok_span sp = tok__arena_put(t, content, len);
    t->added[t->n_added++] = (tok_added){ id, sp.off, sp.len, (uint8_t)!!special,
                                          (uint8_t)!!lstrip, (uint8_t)!!rstrip };
    t->attr[id] |= TOK_A_ADDED | (special ? TOK_A_SPECIAL : 0);
}

static int cmp_added(const void *a, const void *b) {
    const tok_added *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

void tok__finish_added(tok_tokenizer *t) {
    if (t->n_added > 1) qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    memset(t->added_first, 0, sizeof t->added_first);
    for (int i = 0; i < t->n_added; i++) {
        unsigned char c = (unsigned char)t->arena[t->added[i].off];
        t->added_first[c >> 3] |= (uint8_t)(1u << (c & 7));
    }
}

/* Longest added token starting at s[0] (the list is sorted longest first);
 * NULL if none. Special tokens count only when parse_special. */
static const tok_added *match_added(const tok_tokenizer *t, const char *s, size_t n, int parse_special) {
    unsigned char c = (unsigned char)s[0];
    if (!(t->added_first[c >> 3] & (1u << (c & 7)))) return NULL;
    for (int i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        if (a->len > n || (a->special && !parse_special)) continue;
        if (!memcmp(s, t->arena + a->off, a->len)) return a;
    }
    return NULL;
}

// ---------------------------------------------------------------- accessors

int tok_n_vocab(const tok_tokenizer *t) { return t ? t->n_vocab : 0; }
int tok_bos_id(const tok_tokenizer *t) { return t ? t->bos_id : -1; }
int tok_eos_id(const tok_tokenizer *t) { return t ? t->eos_id : -1; }
int tok_unk_id(const tok_tokenizer *t) { return t ? t->unk_id : -1; }
int tok_pad_id(const tok_tokenizer *t) { return t ? t->pad_id : -1; }
int tok_add_bos(const tok_tokenizer *t) { return t ? t->add_bos : 0; }
const char *tok_kind(const tok_tokenizer *t) {
    return !t ? "none" : t->kind == TOK_KIND_SPM ? "sentencepiece" : "bpe";
}

int tok_is_special(const tok_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    return (t->attr[id] & TOK_A_SPECIAL) != 0;
}

const char *tok_piece(const tok_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    return t->arena + t->piece[id].off;
}

int tok_token_id(const tok_tokenizer *t, const char *text) {
    if (!t || !text) return -1;
    size_t n = strlen(text);
    int id = tok__lookup(t, text, n);
    if (id >= 0) return id;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->arena + t->added[i].off, text, n))
            return t->added[i].id;
    return -1;
}

// ---------------------------------------------------------------- UTF-8

/* At in[0] (n >= 1 bytes): *need = length of the sequence its lead byte
 * announces; returns how many bytes form a valid prefix of it (== *need for a
 * complete character, 0 for a byte that can never start one). Validity follows
 * Unicode Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF. */
static size_t utf8_prefix(const unsigned char *in, size_t n, size_t *need) {
    unsigned c = in[0];
    unsigned lo = 0x80, hi = 0xBF;          /* valid range of the second byte */
    *need = 1;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) *need = 2;
    else if (c == 0xE0) { *need = 3; lo = 0xA0; }
    else if (c == 0xED) { *need = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) *need = 3;
    else if (c == 0xF0) { *need = 4; lo = 0x90; }
    else if (c == 0xF4) { *need = 4; hi = 0x8F; }
    else if (c >= 0xF1 && c <= 0xF3) *need = 4;
    else return 0;
    size_t k = 1;
    while (k < *need && k < n) {
        unsigned b = in[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
        k++;
    }
    return k;
}

size_t tok__utf8_lossy(const unsigned char *in, size_t n, int final, int per_byte,
                       char *out, size_t *out_len) {
    size_t i = 0, o = *out_len, need;
    while (i < n) {
        size_t k = utf8_prefix(in + i, n - i, &need);
        if (k && k == need) { memcpy(out + o, in + i, k); o += k; i += k; continue; }
        if (k && k == n - i && !final) break;   /* may still complete: hold back */
        if (k == 0) k = 1;
        for (size_t r = 0; r < (per_byte ? k : 1); r++) {
            out[o++] = (char)0xEF; out[o++] = (char)0xBF; out[o++] = (char)0xBD;   /* U+FFFD */
        }
        i += k;
    }
    *out_len = o;
    return i;
}

static int utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t need;
    for (size_t i = 0; i < n; i += need)
        if (utf8_prefix(u + i, n - i, &need) != need) return 0;
    return 1;
}

// ---------------------------------------------------------------- encode

void tok__ids_push(tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = pg_xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

static int is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int encode_segment(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, pg_err *err) {
    if (n == 0) return PG_OK;
    return t->kind == TOK_KIND_SPM ? tok__spm_encode(t, s, n, out, err)
                                   : tok__bpe_encode(t, s, n, out, err);
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos,
               int parse_special, int32_t **ids, int *n_ids, pg_err *err) {
    if (!t || !ids || !n_ids || (!text && len))
        return pg_errf(err, PG_EINVAL, "tok_encode: NULL argument");
    if (len > (size_t)1 << 30)
        return pg_errf(err, PG_ERANGE, "tok_encode: text of %zu bytes is too long", len);
    *ids = NULL;
    *n_ids = 0;
    tok_ids out = {0};
    char *clean = NULL;
    int rc = PG_OK;
    if (add_bos && t->bos_id >= 0) tok__ids_push(&out, t->bos_id);
    if (t->kind == TOK_KIND_BPE && len && !utf8_valid(text, len)) {
        /* What HF sees through a Python str decoded with errors="replace". */
        clean = pg_xmalloc(3 * len + 1);
        size_t o = 0;
        tok__utf8_lossy((const unsigned char *)text, len, 1, 0, clean, &o);
        text = clean;
        len = o;
    }
    size_t seg = 0, pos = 0;
    while (pos < len && t->n_added) {
        const tok_added *a = match_added(t, text + pos, len - pos, parse_special);
        if (!a) { pos++; continue; }
        size_t ms = pos, me = pos + a->len;
        if (a->lstrip) while (ms > seg && is_ascii_space(text[ms - 1])) ms--;
        if (a->rstrip) while (me < len && is_ascii_space(text[me])) me++;
        if ((rc = encode_segment(t, text + seg, ms - seg, &out, err)) != PG_OK) goto done;
        tok__ids_push(&out, a->id);
        pos = seg = me;
    }
    rc = encode_segment(t, text + seg, len - seg, &out, err);
done:
    free(clean);
    if (rc != PG_OK) { free(out.v); return rc; }
    if (!out.v) out.v = pg_xmalloc(sizeof *out.v);   /* never NULL on success */
    *ids = out.v;
    *n_ids = out.n;
    return PG_OK;
}

// ---------------------------------------------------------------- decode

/* Bytes token id contributes to decoded text, given the sentencepiece
 * dummy-prefix state *bos_ws (1 until the first non-control piece). */
static void piece_out(const tok_tokenizer *t, int id, int skip_special, int *bos_ws,
                      const char **p, size_t *n) {
    uint8_t a = t->attr[id];
    tok_span sp = t->dec[id];
    *p = t->arena + sp.off;
    *n = sp.len;
    if ((a & TOK_A_SPECIAL) && skip_special) { *n = 0; return; }
    if (t->kind != TOK_KIND_SPM || (a & TOK_A_CONTROL)) return;
    if (*bos_ws && t->spm_strip_ws && !(a & (TOK_A_BYTE | TOK_A_UNKNOWN)) && *n && **p == ' ') {
        (*p)++;
        (*n)--;
    }
    *bos_ws = 0;
}

int tok_decode(const tok_tokenizer *t, const int32_t *ids, int n, int skip_special,
               char **out, size_t *len, pg_err *err) {
    if (!t || !out || (!ids && n > 0) || n < 0)
        return pg_errf(err, PG_EINVAL, "tok_decode: bad argument");
    *out = NULL;
    if (len) *len = 0;
    size_t raw_len = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return pg_errf(err, PG_EINVAL, "tok_decode: id %d at %d is outside [0, %d)",
                           ids[i], i, t->n_vocab);
        raw_len += t->dec[ids[i]].len;
    }
    char *raw = pg_xmalloc(raw_len + 1);
    size_t r = 0;
    int bos_ws = 1;
    for (int i = 0; i < n; i++) {
        const char *p;
        size_t k;
        piece_out(t, ids[i], skip_special, &bos_ws, &p, &k);
        memcpy(raw + r, p, k);
        r += k;
    }
    char *res = pg_xmalloc(3 * r + 1);
    size_t o = 0;
    tok__utf8_lossy((const unsigned char *)raw, r, 1, t->kind == TOK_KIND_SPM, res, &o);
    free(raw);
    res[o] = 0;
    *out = res;
    if (len) *len = o;
    return PG_OK;
}

int tok_piece_bytes(const tok_tokenizer *t, int id, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab || (!buf && cap)) return -1;
    tok_span sp = t->dec[id];
    if (sp.len > cap || sp.len > INT32_MAX) return -1;
    memcpy(buf, t->arena + sp.off, sp.len);
    if (sp.len < cap) buf[sp.len] = 0;
    return (int)sp.len;
}

// ---------------------------------------------------------------- streaming

struct tok_stream {
    const tok_tokenizer *t;
    int skip_special;
    int bos_ws;
    unsigned char pend[4];    /* an incomplete UTF-8 sequence (<= 3 bytes) */
    size_t npend;
};

tok_stream *tok_stream_new(const tok_tokenizer *t, int skip_special) {
    if (!t) return NULL;
    tok_stream *s = pg_xcalloc(1, sizeof *s);
    s->t = t;
    s->skip_special = skip_special;
    s->bos_ws = 1;
    return s;
}

void tok_stream_free(tok_stream *s) { free(s); }

static int stream_emit(tok_stream *s, const char *p, size_t n, int final, char **out) {
    size_t tot = s->npend + n;
    unsigned char *buf = pg_xmalloc(tot + 1);
    memcpy(buf, s->pend, s->npend);
    if (n) memcpy(buf + s->npend, p, n);
    char *res = pg_xmalloc(3 * tot + 1);
    size_t o = 0;
    size_t used = tok__utf8_lossy(buf, tot, final, s->t->kind == TOK_KIND_SPM, res, &o);
    /* A held-back tail is a valid prefix of one sequence: at most 3 bytes. */
    PG_ASSERT(tot - used <= 3);
    memcpy(s->pend, buf + used, tot - used);
    s->npend = tot - used;
    free(buf);
    res[o] = 0;
    *out = res;
    return (int)o;
}

int tok_stream_push(tok_stream *s, int32_t id, char **out) {
    if (!out) return -1;
    *out = NULL;
    if (!s || id < 0 || id >= s->t->n_vocab) return -1;
    const char *p;
    size_t n;
    piece_out(s->t, id, s->skip_special, &s->bos_ws, &p, &n);
    if (n > (size_t)1 << 28) return -1;
    return stream_emit(s, p, n, 0, out);
}

int tok_stream_flush(tok_stream *s, char **out) {
    if (!out) return -1;
    *out = NULL;
    if (!s) return -1;
    return stream_emit(s, NULL, 0, 1, out);
}

// ---------------------------------------------------------------- GGUF

int tok_load_gguf_vocab(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err) {
    if (!v || !out) return pg_errf(err, PG_EINVAL, "tok_load_gguf_vocab: NULL argument");
    *out = NULL;
    if (!v->model) return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.model is missing");
    if (v->n_vocab <= 0 || v->n_vocab > TOK_MAX_VOCAB || !v->tokens)
        return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.tokens has %d entries", v->n_vocab);
    for (int i = 0; i < v->n_vocab; i++) {
        if (!v->tokens[i]) return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.tokens[%d] is NULL", i);
        if (v->token_types && (v->token_types[i] < 0 || v->token_types[i] > 6))
            return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.token_type[%d] = %d is not 0..6",
                           i, (int)v->token_types[i]);
    }
    const int ids[4] = { v->bos_id, v->eos_id, v->unk_id, v->pad_id };
    static const char *const names[4] = { "bos", "eos", "unknown", "padding" };
    for (int k = 0; k < 4; k++)
        if (ids[k] < -1 || ids[k] >= v->n_vocab)
            return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.%s_token_id = %d is outside [0, %d)",
                           names[k], ids[k], v->n_vocab);
    if (!strcmp(v->model, "gpt2")) return tok__load_gguf_bpe(v, out, err);
    if (!strcmp(v->model, "llama")) return tok__load_gguf_spm(v, out, err);
    return pg_errf(err, PG_EUNSUPPORTED,
                   "GGUF: tokenizer.ggml.model '%s' is not supported (gpt2 or llama)", v->model);
}
