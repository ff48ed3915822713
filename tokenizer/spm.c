/* tokenizer/spm.c — sentencepiece models.
 *
 * Encoding is the sentencepiece library's (spm_shim.cc). This file reads and
 * writes the few parts of sentencepiece's ModelProto that Peregrine needs, in
 * protobuf wire format by hand (libsentencepiece-dev ships no
 * sentencepiece_model.pb.h):
 *   - from a tokenizer.model: the pieces (string, score, type) and the
 *     normalizer's add_dummy_prefix / remove_extra_whitespaces, which decide
 *     whether decoding drops the leading space;
 *   - for a GGUF "llama" vocabulary: a complete ModelProto (BPE model, identity
 *     normalizer, byte fallback when byte pieces exist) that the library loads
 *     with LoadFromSerializedProto.
 * Field numbers are those of sentencepiece_model.proto:
 *   ModelProto      1 pieces (repeated) 2 trainer_spec 3 normalizer_spec
 *   SentencePiece   1 piece  2 score (float)  3 type (1 normal 2 unknown 3 control
 *                   4 user_defined 5 unused 6 byte)
 *   TrainerSpec     3 model_type (2 = BPE) 4 vocab_size 35 byte_fallback
 *                   40 unk_id 41 bos_id 42 eos_id 43 pad_id
 *                   45 unk_piece 46 bos_piece 47 eos_piece 48 pad_piece
 *   NormalizerSpec  1 name 3 add_dummy_prefix 4 remove_extra_whitespaces
 *                   5 escape_whitespaces   (3, 4, 5 default to true)
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

enum { SP_NORMAL = 1, SP_UNKNOWN = 2, SP_CONTROL = 3, SP_USER = 4, SP_UNUSED = 5, SP_BYTE = 6 };

// ---------------------------------------------------------------- wire format: reading

typedef struct { const uint8_t *p, *end; } pb_in;

static int pb_varint(pb_in *b, uint64_t *v) {
    uint64_t x = 0;
    for (int s = 0; s < 64; s += 7) {
        if (b->p >= b->end) return -1;
        uint8_t c = *b->p++;
        x |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) { *v = x; return 0; }
    }
    return -1;
}

/* Next field: its number, wire type and, for LEN fields, the payload. */
typedef struct { uint32_t field, wire; uint64_t v; const uint8_t *data; size_t len; } pb_field;

static int pb_next(pb_in *b, pb_field *f) {
    uint64_t tag;
    if (pb_varint(b, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return -1;
    f->field = (uint32_t)(tag >> 3);
    f->wire = (uint32_t)(tag & 7);
    switch (f->wire) {
    case 0: return pb_varint(b, &f->v);
    case 1: if (b->end - b->p < 8) return -1; b->p += 8; return 0;
    case 2: {
        uint64_t n;
        if (pb_varint(b, &n) || n > (uint64_t)(b->end - b->p)) return -1;
        f->data = b->p;
        f->len = (size_t)n;
        b->p += n;
        return 0;
    }
    case 5:
        if (b->end - b->p < 4) return -1;
        f->data = b->p;
        b->p += 4;
        return 0;
    default: return -1;          /* groups (3, 4) do not occur in ModelProto */
    }
}

typedef struct {
    int n, cap;
    const uint8_t **str; size_t *len; float *score; int *type;
    int add_dummy_prefix, remove_extra_ws;
} spm_model;

static void model_free(spm_model *m) {
    free(m->str); free(m->len); free(m->score); free(m->type);
}

static int parse_model(const uint8_t *data, size_t n, spm_model *m, const char *path, pg_err *err) {
    memset(m, 0, sizeof *m);
    m->add_dummy_prefix = m->remove_extra_ws = 1;
    pb_in b = { data, data + n };
    pb_field f;
    while (b.p < b.end) {
        if (pb_next(&b, &f)) return pg_errf(err, PG_EFORMAT, "%s: not a sentencepiece model (bad protobuf at byte %zu)",
                                          path, (size_t)(b.p - data));
        if (f.field == 1 && f.wire == 2) {
            if (m->n == m->cap) {
                m->cap = m->cap ? m->cap * 2 : 1024;
                m->str = pg_xrealloc(m->str, (size_t)m->cap * sizeof *m->str);
                m->len = pg_xrealloc(m->len, (size_t)m->cap * sizeof *m->len);
                m->score = pg_xrealloc(m->score, (size_t)m->cap * sizeof *m->score);
                m->type = pg_xrealloc(m->type, (size_t)m->cap * sizeof *m->type);
            }
            int i = m->n++;
            m->str[i] = (const uint8_t *)"";
            m->len[i] = 0;
            m->score[i] = 0;
            m->type[i] = SP_NORMAL;
            pb_in s = { f.data, f.data + f.len };
            pb_field g;
            while (s.p < s.end) {
                if (pb_next(&s, &g)) return pg_errf(err, PG_EFORMAT, "%s: piece %d is malformed", path, i);
                if (g.field == 1 && g.wire == 2) { m->str[i] = g.data; m->len[i] = g.len; }
                else if (g.field == 2 && g.wire == 5) memcpy(&m->score[i], g.data, 4);
                else if (g.field == 3 && g.wire == 0) m->type[i] = (int)g.v;
            }
            if (m->len[i] > TOK_MAX_PIECE || m->type[i] < 1 || m->type[i] > 6)
                return pg_errf(err, PG_EFORMAT, "%s: piece %d has length %zu, type %d", path, i, m->len[i], m->type[i]);
            if (m->n > TOK_MAX_VOCAB) return pg_errf(err, PG_EFORMAT, "%s: more than %d pieces", path, TOK_MAX_VOCAB);
        } else if (f.field == 3 && f.wire == 2) {
            pb_in s = { f.data, f.data + f.len };
            pb_field g;
            while (s.p < s.end) {
                if (pb_next(&s, &g)) return pg_errf(err, PG_EFORMAT, "%s: normalizer_spec is malformed", path);
                if (g.field == 3 && g.wire == 0) m->add_dummy_prefix = g.v != 0;
                if (g.field == 4 && g.wire == 0) m->remove_extra_ws = g.v != 0;
            }
        }
    }
    if (m->n == 0) return pg_errf(err, PG_EFORMAT, "%s: no sentencepiece pieces", path);
    return PG_OK;
}

// ---------------------------------------------------------------- wire format: writing

typedef struct { uint8_t *p; size_t n, cap; } pb_out;

static void pb_bytes(pb_out *o, const void *s, size_t n) {
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 256;
        o->p = pg_xrealloc(o->p, o->cap);
    }
    if (n) memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void pb_put_varint(pb_out *o, uint64_t v) {
    uint8_t b[10];
    int k = 0;
    do { b[k++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0)); v >>= 7; } while (v);
    pb_bytes(o, b, (size_t)k);
}

static void pb_tag(pb_out *o, uint32_t field, uint32_t wire) { pb_put_varint(o, ((uint64_t)field << 3) | wire); }
/* int32 fields encode negatives as 64-bit two's complement varints. */
static void pb_int(pb_out *o, uint32_t field, int64_t v) { pb_tag(o, field, 0); pb_put_varint(o, (uint64_t)v); }
static void pb_str(pb_out *o, uint32_t field, const void *s, size_t n) {
    pb_tag(o, field, 2); pb_put_varint(o, n); pb_bytes(o, s, n);
}
static void pb_float(pb_out *o, uint32_t field, float f) {
    uint8_t b[4];
    memcpy(b, &f, 4);   /* protobuf fixed32 is little-endian, as is every host we build for */
    pb_tag(o, field, 5); pb_bytes(o, b, 4);
}

// ---------------------------------------------------------------- building the tokenizer

static int is_byte_piece(const char *s, size_t n, int *byte) {
    /* "<0xAB>" */
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + d;
    }
    *byte = v;
    return 1;
}

/* Fill pieces, attributes, decode bytes and added tokens from the model's own
 * lists, then load the library from proto. Takes no ownership of proto. */
static int build(const spm_model *m, const void *proto, size_t proto_len, const char *what,
                 tok_tokenizer **out, pg_err *err) {
    tok_tokenizer *t = tok__new(TOK_KIND_SPM, m->n);
    char msg[PG_ERR_LEN];
    msg[0] = 0;
    t->spm = spm_shim_load(proto, proto_len, msg, sizeof msg);
    if (!t->spm) {
        tok_free(t);
        return pg_errf(err, PG_EFORMAT, "%s: %s", what, msg);
    }
    if (spm_shim_piece_size(t->spm) != m->n) {
        int k = spm_shim_piece_size(t->spm);
        tok_free(t);
        return pg_errf(err, PG_EFORMAT, "%s: sentencepiece sees %d pieces, the file has %d", what, k, m->n);
    }
    char *buf = pg_xmalloc(TOK_MAX_PIECE + 8);
    for (int i = 0; i < m->n; i++) {
        const char *s = (const char *)m->str[i];
        size_t n = m->len[i];
        t->piece[i] = tok__arena_put(t, s, n);
        int ty = m->type[i], byte;
        t->attr[i] = ty == SP_UNKNOWN ? TOK_A_UNKNOWN : ty == SP_CONTROL ? (TOK_A_CONTROL | TOK_A_SPECIAL)
                   : ty == SP_USER ? TOK_A_USER : ty == SP_UNUSED ? TOK_A_UNUSED
                   : ty == SP_BYTE ? TOK_A_BYTE : 0;
        if (ty == SP_BYTE && is_byte_piece(s, n, &byte)) {
            char c = (char)byte;
            t->dec[i] = tok__arena_put(t, &c, 1);
        } else if (ty == SP_UNKNOWN) {
            t->dec[i] = tok__arena_put(t, " \xE2\x81\x87 ", 5);   /* sentencepiece's " ⁇ " */
        } else if (ty == SP_CONTROL) {
            t->dec[i] = t->piece[i];
        } else {
            size_t o = 0;                       /* U+2581 '▁' -> ' ' */
            for (size_t k = 0; k < n; k++) {
                if (k + 2 < n && !memcmp(s + k, "\xE2\x96\x81", 3)) { buf[o++] = ' '; k += 2; }
                else buf[o++] = s[k];
            }
            t->dec[i] = tok__arena_put(t, buf, o);
        }
    }
    free(buf);
    tok__build_vocab_map(t);
    /* parse_special splits text on control and unknown pieces (as HF and
     * llama.cpp do); user-defined pieces are matched by the library itself. */
    for (int i = 0; i < m->n; i++)
        if (m->type[i] == SP_CONTROL || m->type[i] == SP_UNKNOWN)
            tok__add_added(t, i, (const char *)m->str[i], m->len[i], 1, 0, 0);
    tok__finish_added(t);
    /* ... but the unknown piece is not dropped by skip_special: sentencepiece
     * decodes it as " ⁇ ". */
    for (int i = 0; i < m->n; i++)
        if (m->type[i] == SP_UNKNOWN) t->attr[i] &= (uint8_t)~TOK_A_SPECIAL;
    int ids[4];
    spm_shim_special_ids(t->spm, ids);
    t->unk_id = ids[0];
    t->bos_id = ids[1];
    t->eos_id = ids[2];
    t->pad_id = ids[3];
    t->add_bos = t->bos_id >= 0;
    t->spm_strip_ws = m->add_dummy_prefix || m->remove_extra_ws;
    *out = t;
    return PG_OK;
}

int tok_load_sentencepiece(const char *path, tok_tokenizer **out, pg_err *err) {
    if (!path || !out) return pg_errf(err, PG_EINVAL, "tok_load_sentencepiece: NULL argument");
    *out = NULL;
    char *data;
    size_t n;
    PG_TRY(pg_read_file(path, &data, &n, err));
    spm_model m;
    int rc = parse_model((const uint8_t *)data, n, &m, path, err);
    if (rc == PG_OK) rc = build(&m, data, n, path, out, err);
    model_free(&m);
    free(data);
    return rc;
}

int tok__load_gguf_spm(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err) {
    if (!v->scores)
        return pg_errf(err, PG_EFORMAT, "GGUF: tokenizer.ggml.scores is missing (needed for a llama vocabulary)");
    spm_model m;
    memset(&m, 0, sizeof m);
    m.n = v->n_vocab;
    m.str = pg_xmalloc((size_t)m.n * sizeof *m.str);
    m.len = pg_xmalloc((size_t)m.n * sizeof *m.len);
    m.score = pg_xmalloc((size_t)m.n * sizeof *m.score);
    m.type = pg_xmalloc((size_t)m.n * sizeof *m.type);
    m.add_dummy_prefix = v->add_space_prefix != 0;    /* -1 (absent) -> 1 */
    m.remove_extra_ws = 0;
    int has_unk = 0, has_byte = 0, byte;
    for (int i = 0; i < m.n; i++) {
        m.str[i] = (const uint8_t *)v->tokens[i];
        m.len[i] = strlen(v->tokens[i]);
        if (m.len[i] > TOK_MAX_PIECE) {
            model_free(&m);
            return pg_errf(err, PG_EFORMAT, "GGUF: token %d is %zu bytes long", i, strlen(v->tokens[i]));
        }
        m.score[i] = v->scores[i];
        int ty = v->token_types ? v->token_types[i] : SP_NORMAL;
        if (!v->token_types) {   /* infer what GGUF leaves out */
            if (i == v->unk_id) ty = SP_UNKNOWN;
            else if (i == v->bos_id || i == v->eos_id) ty = SP_CONTROL;
            else if (is_byte_piece(v->tokens[i], m.len[i], &byte)) ty = SP_BYTE;
        }
        if (ty == 0) ty = SP_NORMAL;            /* GGUF "undefined" */
        m.type[i] = ty;
        has_unk |= ty == SP_UNKNOWN;
        has_byte |= ty == SP_BYTE;
    }
    if (!has_unk && v->unk_id >= 0) m.type[v->unk_id] = SP_UNKNOWN;

    pb_out o = {0}, sub = {0};
    for (int i = 0; i < m.n; i++) {
        sub.n = 0;
        pb_str(&sub, 1, m.str[i], m.len[i]);
        pb_float(&sub, 2, m.score[i]);
        pb_int(&sub, 3, m.type[i]);
        pb_str(&o, 1, sub.p, sub.n);
    }
    sub.n = 0;
    pb_int(&sub, 3, 2);                          /* model_type = BPE */
    pb_int(&sub, 4, m.n);
    pb_int(&sub, 35, has_byte);
    const int ids[4] = { v->unk_id, v->bos_id, v->eos_id, v->pad_id };
    for (int k = 0; k < 4; k++) {
        pb_int(&sub, 40 + (uint32_t)k, ids[k]);
        /* The library resolves bos_id() etc. through these piece names. */
        if (ids[k] >= 0) pb_str(&sub, 45 + (uint32_t)k, m.str[ids[k]], m.len[ids[k]]);
    }
    pb_str(&o, 2, sub.p, sub.n);
    sub.n = 0;
    pb_str(&sub, 1, "identity", 8);
    pb_int(&sub, 3, m.add_dummy_prefix);
    pb_int(&sub, 4, 0);
    pb_int(&sub, 5, 1);
    pb_str(&o, 3, sub.p, sub.n);
    free(sub.p);

    int rc = build(&m, o.p, o.n, "GGUF llama vocabulary", out, err);
    free(o.p);
    model_free(&m);
    if (rc != PG_OK) return rc;
    tok_tokenizer *t = *out;
    t->bos_id = v->bos_id;
    t->eos_id = v->eos_id;
    t->unk_id = v->unk_id;
    t->pad_id = v->pad_id;
    t->add_bos = v->add_bos >= 0 ? !!v->add_bos : v->bos_id >= 0;
    return PG_OK;
}

int tok__spm_encode(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, pg_err *err) {
    char msg[PG_ERR_LEN];
    if (spm_shim_encode(t->spm, s, n, &out->v, &out->n, &out->cap, msg, sizeof msg))
        return pg_errf(err, PG_EINTERNAL, "%s", msg);
    return PG_OK;
}
