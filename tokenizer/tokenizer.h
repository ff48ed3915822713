/*
 * tokenizer/ — text <-> token ids for Llama-family models.
 *
 * Two kinds of tokenizer sit behind one opaque handle:
 *   - sentencepiece (Llama 2, Mistral, TinyLlama): encoding goes through the
 *     sentencepiece library (one small C++ shim, spm_shim.cc). A tokenizer.model
 *     file is loaded as is; a GGUF vocabulary with tokenizer.ggml.model "llama"
 *     is turned into a sentencepiece ModelProto (serialized by hand, spm.c).
 *   - byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen2): written here in C. The
 *     pre-tokenizer regexes run in PCRE2 (UTF + UCP), merges are applied by rank
 *     from a hash table, bytes map to vocabulary characters with GPT-2's
 *     byte<->unicode table. It reproduces HF `tokenizers` (goldens in
 *     tests/fixtures/tokenizer/).
 * Decoding (both kinds) and the incremental detokenizer are plain C over
 * per-token byte strings, so streaming output equals a full decode.
 *
 * Invalid UTF-8 on input: byte-level BPE replaces each maximal invalid subpart
 * by U+FFFD before encoding (what HF tokenizers sees when the bytes are turned
 * into a Python str with errors="replace"); sentencepiece gets the raw bytes and
 * its normalizer replaces each invalid byte by U+FFFD. Decoded text is always
 * valid UTF-8: invalid byte sequences produced by byte tokens become U+FFFD, one
 * per maximal subpart for byte-level BPE (HF / Rust from_utf8_lossy) and one per
 * byte for sentencepiece (as sentencepiece's own decoder does).
 *
 * Thread safety: a tok_tokenizer is read-only after load; every function taking
 * a const tok_tokenizer* may be called from any number of threads at once. A
 * tok_stream belongs to one thread (one per request) and must not outlive its
 * tokenizer.
 */
#ifndef PG_TOKENIZER_H
#define PG_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tok_tokenizer tok_tokenizer;   /* read-only after load, thread-safe */

/* sentencepiece tokenizer.model (Llama 2, Mistral, TinyLlama). add_bos defaults
 * to 1 when the model defines a BOS piece. */
int  tok_load_sentencepiece(const char *path, tok_tokenizer **out, pg_err *err);

/* HF tokenizer.json (byte-level BPE: GPT-2 / Llama 3 / SmolLM2 / Qwen style). If a
 * tokenizer_config.json sits beside it, read bos/eos/add_bos_token from it;
 * without add_bos_token, BOS is added when the post-processor template starts
 * with the BOS token (Llama 3). Supported: model BPE (no byte_fallback),
 * pre_tokenizer ByteLevel / Split(Isolated) / Digits / Sequence of these ending in
 * ByteLevel, normalizer null (NFC is accepted with a warning and NOT applied). */
int  tok_load_hf_json(const char *path, tok_tokenizer **out, pg_err *err);

/* From GGUF metadata arrays (the GGUF reader fills this; pointers only borrowed during the call). */
typedef struct {
    const char *model;            /* tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (sentencepiece) */
    const char *pre;              /* tokenizer.ggml.pre: "smollm", "llama-bpe", "gpt2", "qwen2", "default", ... or NULL */
    int n_vocab;
    const char *const *tokens;    /* n_vocab NUL-terminated strings (GGUF strings have lengths; the reader makes them NUL-terminated) */
    const int32_t *token_types;   /* n_vocab or NULL; GGUF: 1 normal 2 unknown 3 control 4 user_defined 5 unused 6 byte */
    const float *scores;          /* n_vocab or NULL (sentencepiece scores) */
    int n_merges;
    const char *const *merges;    /* "a b" strings, rank order */
    int bos_id, eos_id, unk_id, pad_id;   /* -1 if absent */
    int add_bos, add_eos;         /* tokenizer.ggml.add_bos_token / add_eos_token; -1 if absent */
    int add_space_prefix;         /* -1 if absent */
} tok_gguf_vocab;
/* "gpt2": control tokens (type 3) become special added tokens, user-defined ones
 * (type 4) plain added tokens; the pre-tokenizer is chosen by `pre` (unknown
 * names are refused with PG_EUNSUPPORTED; NULL/"default" mean GPT-2's regex).
 * "llama": needs scores; missing add_bos / add_space_prefix default to 1. */
int  tok_load_gguf_vocab(const tok_gguf_vocab *v, tok_tokenizer **out, pg_err *err);
void tok_free(tok_tokenizer *t);   /* NULL is fine */

int  tok_n_vocab(const tok_tokenizer *t);
int  tok_bos_id(const tok_tokenizer *t);    /* -1 if none */
int  tok_eos_id(const tok_tokenizer *t);    /* -1 if none */
int  tok_add_bos(const tok_tokenizer *t);   /* whether prompts get BOS by default */
int  tok_is_special(const tok_tokenizer *t, int id);  /* control / added special tokens; 0 for bad ids */
/* sentencepiece: control pieces (<s>, </s>) are special; the unknown piece is parsed
 * from text only with parse_special but is not special (decodes as " ⁇ ", as
 * sentencepiece does). GGUF "gpt2": control (and unknown) types are special. */
int  tok_token_id(const tok_tokenizer *t, const char *text);  /* exact piece or added token lookup; -1 if none */
/* Extras. */
int  tok_unk_id(const tok_tokenizer *t);    /* -1 if none */
int  tok_pad_id(const tok_tokenizer *t);    /* -1 if none */
const char *tok_kind(const tok_tokenizer *t);             /* "sentencepiece" or "bpe" */
const char *tok_piece(const tok_tokenizer *t, int id);    /* vocabulary string as stored ("▁Hello", "ĠHello"); NULL for bad ids */

/* Encode UTF-8 (or arbitrary bytes) text. parse_special: text of special/added tokens
   (e.g. "<|im_start|>") becomes their ids (HF behaviour); 0 treats it as plain text.
   *ids is malloc'd, caller frees. */
int  tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos,
                int parse_special, int32_t **ids, int *n_ids, pg_err *err);
/* Decode ids to bytes (malloc'd, NUL-terminated, *len excludes NUL). skip_special drops control tokens.
   The output is valid UTF-8 (see the top of this file). sentencepiece: the
   leading space of the first non-control piece is dropped (the dummy prefix),
   as sentencepiece does. Ids outside [0, n_vocab) give PG_EINVAL. */
int  tok_decode(const tok_tokenizer *t, const int32_t *ids, int n, int skip_special,
                char **out, size_t *len, pg_err *err);
/* Raw bytes of one token as it appears in decoded text (byte-level BPE mapped back to bytes, '▁' -> ' ', <0xAB> -> byte).
   Control / special tokens give their text, sentencepiece's unknown piece " ⁇ ".
   Writes up to cap bytes (plus a NUL when it fits); returns the length, or -1
   for a bad id or when the bytes do not fit in cap. May be part of a UTF-8 sequence. */
int  tok_piece_bytes(const tok_tokenizer *t, int id, char *buf, size_t cap);  /* returns length or -1 */

/* Incremental detokenizer for streaming: push ids one at a time, get the newly
   completed text. Never emits a partial UTF-8 sequence (holds bytes back until the
   sequence completes; invalid sequences are emitted as U+FFFD at flush or once
   they cannot complete). Matches tok_decode of the whole sequence at the end. */
typedef struct tok_stream tok_stream;
tok_stream *tok_stream_new(const tok_tokenizer *t, int skip_special);  /* NULL if t is NULL */
/* Sets *out to a NEW malloc'd NUL-terminated string holding only the text completed
   by this id (often "", never NULL on success; the caller frees it) and returns its
   length. An id outside [0, n_vocab) returns -1 with *out = NULL and changes nothing. */
int  tok_stream_push(tok_stream *s, int32_t id, char **out);
/* Same contract for whatever is held back (an incomplete sequence becomes U+FFFD).
   The stream can be pushed to again afterwards. */
int  tok_stream_flush(tok_stream *s, char **out);
void tok_stream_free(tok_stream *s);   /* NULL is fine */

#ifdef __cplusplus
}
#endif
#endif
