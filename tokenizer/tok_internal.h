/*
 * tokenizer/tok_internal.h — the tok_tokenizer struct and helpers shared by the
 * files of this folder (tokenizer.c: common vocabulary, added tokens, encode
 * dispatch, decode, stream; bpe.c: byte-level BPE; hf_json.c: tokenizer.json;
 * spm.c: sentencepiece models and ModelProto bytes; spm_shim.cc: the library).
 * Not for use outside tokenizer/. Same thread-safety contract as tokenizer.h:
 * everything reachable from a loaded tok_tokenizer is read-only.
 */
#ifndef PG_TOK_INTERNAL_H
#define PG_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"
#include "spm_shim.h"

enum { TOK_KIND_SPM = 1, TOK_KIND_BPE = 2 };

/* Per-id attributes (bit set). */
enum {
    TOK_A_SPECIAL = 1 << 0,  /* dropped by skip_special; parsed from text only with parse_special */
    TOK_A_CONTROL = 1 << 1,  /* sentencepiece control piece: invisible to the dummy-prefix rule */
    TOK_A_UNKNOWN = 1 << 2,
    TOK_A_BYTE    = 1 << 3,  /* sentencepiece <0xAB> piece */
    TOK_A_USER    = 1 << 4,  /* user-defined piece */
    TOK_A_UNUSED  = 1 << 5,
    TOK_A_ADDED   = 1 << 6,  /* matched in text before pre-tokenization */
};

#define TOK_MAX_VOCAB (1 << 24)
#define TOK_MAX_PIECE 65536   /* bytes; longer vocabulary strings are refused */

typedef struct { uint32_t off, len; } tok_span;   /* into tok_tokenizer.arena */

/* Open-addressing map from a byte string to an id. The keys live in the
 * tokenizer's arena; slots hold id + 1 (0 = empty). */
typedef struct {
    uint32_t *slot;
    uint32_t mask;
} tok_strmap;

/* Merge table: (left id, right id) -> rank and merged id. */
typedef struct {
    uint64_t *key;     /* (left << 32 | right) + 1; 0 = empty */
    int32_t  *rank;
    int32_t  *id;
    uint32_t  mask;
} tok_mergemap;

typedef struct {
    int32_t  id;
    uint32_t off, len;          /* content, in the arena */
    uint8_t  special, lstrip, rstrip;
} tok_added;

#define TOK_MAX_STAGES 4

struct tok_tokenizer {
    int kind;                   /* TOK_KIND_* */
    int n_vocab;
    char  *arena;               /* every string below, NUL-terminated */
    size_t arena_len, arena_cap;
    tok_span *piece;            /* [n_vocab] vocabulary string as stored */
    tok_span *dec;              /* [n_vocab] bytes the token contributes to decoded text */
    uint8_t  *attr;             /* [n_vocab] TOK_A_* */
    tok_strmap vocab;           /* piece -> id */
    int bos_id, eos_id, unk_id, pad_id;
    int add_bos;

    tok_added *added;           /* sorted by length, longest first */
    int n_added;
    uint8_t added_first[32];    /* bitmap of first bytes of added tokens */

    /* byte-level BPE */
    uint16_t byte_cp[256];      /* GPT-2 byte -> code point of its vocabulary character */
    int32_t byte_id[256];       /* id of that character's piece; -1 if absent */
    tok_mergemap merges;
    pcre2_code *stage[TOK_MAX_STAGES];  /* splits run in order, each Isolated */
    int n_stages;
    pcre2_code *bl_re;          /* ByteLevel regex (NULL: use_regex false) */
    int bl_add_prefix_space;
    int ignore_merges;          /* whole word in vocab -> one token (Llama 3) */
    int bpe_unk_id;             /* id for bytes missing from the vocabulary; -1 drops them (HF) */
    int fuse_unk;

    /* sentencepiece */
    void *spm;                  /* spm_shim handle */
    int spm_strip_ws;           /* decode drops the first non-control piece's leading space */
};

/* ---- tokenizer.c */
typedef struct { int32_t *v; int n, cap; } tok_ids;   /* growable id list (malloc'd) */
void tok__ids_push(tok_ids *a, int32_t id);
tok_tokenizer *tok__new(int kind, int n_vocab);
/* Copy n bytes into the arena (NUL-terminated); returns the span. */
tok_span tok__arena_put(tok_tokenizer *t, const void *s, size_t n);
/* Build the piece -> id map over t->piece (first id wins for duplicates). */
void tok__build_vocab_map(tok_tokenizer *t);
int  tok__lookup(const tok_tokenizer *t, const char *s, size_t n);   /* -1 if absent */
/* Register an added token: text matched before pre-tokenization (special ones
 * only with parse_special); special also marks it for skip_special. Call
 * tok__finish_added once all are in. Content that is not valid UTF-8 is never
 * matched (it could split text inside a character). */
void tok__add_added(tok_tokenizer *t, int id, const char *content, size_t len,
                    int special, int lstrip, int rstrip);
void tok__finish_added(tok_tokenizer *t);
/* Lossy UTF-8: append to out the conversion of in[0, n); returns the bytes
 * consumed. With final == 0 a trailing sequence that may still complete is left
 * unconsumed. per_byte: one U+FFFD per invalid byte (sentencepiece), else one per
 * maximal subpart (Unicode / Python / Rust). out needs room for 3 * n bytes. */
size_t tok__utf8_lossy(const unsigned char *in, size_t n, int final, int per_byte,
                       char *out, size_t *out_len);

/* ---- bpe.c */
extern const char *const tok__gpt2_regex;
/* Once piece[] and the vocab map are set: fill byte_cp/byte_id and every
 * token's decoded bytes (dec). */
void tok__bpe_init_bytes(tok_tokenizer *t);
/* Merge table from (left, right) string pairs in rank order; pairs naming
 * missing pieces are skipped with a warning. */
int  tok__bpe_add_merges(tok_tokenizer *t, int n_merges,
                         const char *const *left, const size_t *left_len,
                         const char *const *right, const size_t *right_len,
                         const char *what, pg_err *err);
/* Compile a pre-tokenizer regex (HF / Oniguruma syntax; \s and \S are rewritten
 * to Unicode White_Space as Oniguruma reads them). */
pcre2_code *tok__regex_compile(const char *pattern, const char *what, pg_err *err);
/* Encode a text segment (valid UTF-8, no added tokens) and append ids. */
int  tok__bpe_encode(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, pg_err *err);

/* "gpt2" GGUF vocabulary (bpe.c) and "llama" GGUF vocabulary (spm.c). */
int  tok__load_gguf_bpe(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err);
int  tok__load_gguf_spm(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err);

/* ---- spm.c */
int  tok__spm_encode(const tok_tokenizer *t, const char *s, size_t n, tok_ids *out, pg_err *err);

#endif
