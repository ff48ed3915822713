/* tests/test_tokenizer.c — tokenizer parity with the real references.
 *
 * Goldens come from scripts/gen-tokenizer-goldens.py: sentencepiece's Python
 * binding on the Llama 2 tokenizer.model and HF `tokenizers` on the default
 * model's vocabulary (SmolLM2, exported as smollm2-tokenizer.json), over the
 * corpus in tests/fixtures/tokenizer/corpus.jsonl. Every string must give the
 * exact same ids and decoded text; streaming must equal the full decode and
 * never emit invalid UTF-8. The GGUF paths are tested by reading the metadata
 * of the default model (skipped when it is absent) and by turning the Llama 2
 * tokenizer.model into a GGUF-style "llama" vocabulary.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "tokenizer/tokenizer.h"

#define FIX "tests/fixtures/tokenizer/"
#define SPM_MODEL "tests/data/llama2-tokenizer.model"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

// ---------------------------------------------------------------- fixtures

typedef struct { int n; cJSON **row; } jsonl;

static jsonl load_jsonl(const char *path) {
    char *data;
    size_t len;
    pg_err err;
    cr_assert_eq(pg_read_file(path, &data, &len, &err), PG_OK, "%s", err.msg);
    jsonl j = {0};
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *r = cJSON_Parse(line);
        cr_assert(r, "%s: bad JSON line %d", path, j.n);
        j.row = realloc(j.row, (size_t)(j.n + 1) * sizeof *j.row);
        j.row[j.n++] = r;
    }
    free(data);
    return j;
}

static void free_jsonl(jsonl *j) {
    for (int i = 0; i < j->n; i++) cJSON_Delete(j->row[i]);
    free(j->row);
}

/* Field key as bytes: "key" (clean UTF-8) or "key_hex"; NULL if neither. */
static char *row_bytes(const cJSON *row, const char *key, size_t *n) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, key);
    if (cJSON_IsString(v)) {
        *n = strlen(v->valuestring);
        char *o = malloc(*n + 1);
        memcpy(o, v->valuestring, *n + 1);
        return o;
    }
    char hk[64];
    snprintf(hk, sizeof hk, "%s_hex", key);
    v = cJSON_GetObjectItemCaseSensitive(row, hk);
    if (!cJSON_IsString(v)) return NULL;
    size_t h = strlen(v->valuestring);
    *n = h / 2;
    char *o = malloc(*n + 1);
    for (size_t i = 0; i < *n; i++) {
        unsigned x;
        sscanf(v->valuestring + 2 * i, "%2x", &x);
        o[i] = (char)x;
    }
    o[*n] = 0;
    return o;
}

static int32_t *row_ids(const cJSON *row, const char *key, int *n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(row, key), *it;
    cr_assert(cJSON_IsArray(a), "golden row lacks %s", key);
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v), k = 0;
    cJSON_ArrayForEach(it, a) v[k++] = (int32_t)it->valueint;
    return v;
}

/* Independent UTF-8 check (not the library's): RFC 3629. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        uint32_t cp;
        int k;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
        else return 0;
        if (i + (size_t)k >= n) return 0;
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* Stream ids one by one; every chunk valid UTF-8; result == want. */
static int stream_matches(const tok_tokenizer *t, const int32_t *ids, int n, int skip,
                          const char *want, size_t want_len) {
    tok_stream *s = tok_stream_new(t, skip);
    size_t cap = 64, len = 0;
    char *acc = malloc(cap);
    int ok = 1;
    for (int i = 0; i <= n; i++) {
        char *chunk = NULL;
        int k = i < n ? tok_stream_push(s, ids[i], &chunk) : tok_stream_flush(s, &chunk);
        if (k < 0 || !chunk || chunk[k] != 0) { ok = 0; free(chunk); break; }   /* text may hold NULs */
        if (!valid_utf8((const unsigned char *)chunk, (size_t)k)) ok = 0;
        while (len + (size_t)k + 1 > cap) acc = realloc(acc, cap *= 2);
        memcpy(acc + len, chunk, (size_t)k);
        len += (size_t)k;
        free(chunk);
    }
    ok = ok && len == want_len && !memcmp(acc, want, len);
    free(acc);
    tok_stream_free(s);
    return ok;
}

static int ids_eq(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

static void log_mismatch(const char *what, int i, const cJSON *crow, const int32_t *got, int ng,
                         const int32_t *want, int nw) {
    const cJSON *txt = cJSON_GetObjectItemCaseSensitive(crow, "text");
    char g[200] = "", w[200] = "";
    for (int k = 0, o = 0; k < ng && o < 180; k++) o += snprintf(g + o, sizeof g - (size_t)o, "%d ", got[k]);
    for (int k = 0, o = 0; k < nw && o < 180; k++) o += snprintf(w + o, sizeof w - (size_t)o, "%d ", want[k]);
    cr_log_error("%s: corpus[%d] %.60s: got [%s] want [%s]", what, i,
                 cJSON_IsString(txt) ? txt->valuestring : "(hex)", g, w);
}

// ---------------------------------------------------------------- parity driver

typedef struct { const char *ids_key, *dec_key; int skip; } dec_check;
typedef struct {
    const char *name;
    const char *golden;        /* jsonl */
    const char *ids_key;       /* parse_special = 1 */
    const char *plain_key;     /* parse_special = 0 (NULL: not in this golden) */
    dec_check dec[2];          /* decode(golden ids_key, skip) == golden dec_key; unused: NULL */
} parity_spec;

/* Returns the number of mismatching checks; prints counts. */
static int run_parity(const tok_tokenizer *t, const parity_spec *p) {
    jsonl corpus = load_jsonl(FIX "corpus.jsonl"), gold = load_jsonl(p->golden);
    cr_assert_eq(corpus.n, gold.n, "%s: corpus has %d rows, golden %d", p->golden, corpus.n, gold.n);
    int bad_ids = 0, bad_plain = 0, bad_dec = 0, bad_stream = 0, roundtrip = 0, n_plain = 0, n_dec = 0;
    long n_tokens = 0;
    pg_err err;
    for (int i = 0; i < corpus.n; i++) {
        size_t len, dlen;
        char *text = row_bytes(corpus.row[i], "text", &len);
        cr_assert(text, "corpus[%d] has no text", i);
        int nw, ng;
        int32_t *want = row_ids(gold.row[i], p->ids_key, &nw), *got;
        cr_assert_eq(tok_encode(t, text, len, 0, 1, &got, &ng, &err), PG_OK, "%s", err.msg);
        n_tokens += ng;
        if (!ids_eq(got, ng, want, nw)) {
            if (bad_ids++ < 5) log_mismatch(p->name, i, corpus.row[i], got, ng, want, nw);
        }
        free(got);
        if (p->plain_key) {
            int np;
            int32_t *wp = row_ids(gold.row[i], p->plain_key, &np);
            cr_assert_eq(tok_encode(t, text, len, 0, 0, &got, &ng, &err), PG_OK, "%s", err.msg);
            n_plain++;
            if (!ids_eq(got, ng, wp, np) && bad_plain++ < 5)
                log_mismatch("plain", i, corpus.row[i], got, ng, wp, np);
            free(got);
            free(wp);
        }
        for (int d = 0; d < 2; d++) {
            const dec_check *dc = &p->dec[d];
            if (!dc->ids_key) continue;
            int nd;
            int32_t *dids = row_ids(gold.row[i], dc->ids_key, &nd);
            char *wd = row_bytes(gold.row[i], dc->dec_key, &dlen);
            cr_assert(wd, "golden[%d] lacks %s", i, dc->dec_key);
            char *out;
            size_t olen;
            cr_assert_eq(tok_decode(t, dids, nd, dc->skip, &out, &olen, &err), PG_OK, "%s", err.msg);
            n_dec++;
            if ((olen != dlen || memcmp(out, wd, dlen)) && bad_dec++ < 5)
                cr_log_error("%s decode(%s, skip=%d): corpus[%d]: got '%.80s' want '%.80s'",
                             p->name, dc->ids_key, dc->skip, i, out, wd);
            if (!stream_matches(t, dids, nd, dc->skip, wd, dlen) && bad_stream++ < 5)
                cr_log_error("%s stream(%s, skip=%d): corpus[%d] differs from the reference decode",
                             p->name, dc->ids_key, dc->skip, i);
            if (d == 0 && dlen == len && !memcmp(wd, text, len)) roundtrip++;
            free(out);
            free(wd);
            free(dids);
        }
        free(want);
        free(text);
    }
    printf("%-22s %d strings, %ld tokens: ids mismatches %d, plain-text mismatches %d/%d, "
           "decode mismatches %d/%d, stream mismatches %d, reference round-trips %d\n",
           p->name, corpus.n, n_tokens, bad_ids, bad_plain, n_plain, bad_dec, n_dec, bad_stream, roundtrip);
    fflush(stdout);
    free_jsonl(&corpus);
    free_jsonl(&gold);
    return bad_ids + bad_plain + bad_dec + bad_stream;
}

/* sentencepiece's decode drops control pieces: compare with skip_special = 1. */
static const parity_spec SPM_SPEC = { "llama2 sentencepiece", FIX "llama2.jsonl", "ids_special", "ids",
                                      { { "ids", "dec", 1 }, { "ids_special", "dec_special", 1 } } };
static const parity_spec HF_SPEC = { "smollm2 tokenizer.json", FIX "smollm2.jsonl", "ids", "ids_plain",
                                     { { "ids", "dec", 0 }, { "ids", "dec_skip", 1 } } };

// ---------------------------------------------------------------- sentencepiece

Test(tokenizer, sentencepiece_parity) {
    tok_tokenizer *t;
    pg_err err;
    cr_assert_eq(tok_load_sentencepiece(SPM_MODEL, &t, &err), PG_OK, "%s", err.msg);
    cr_expect_eq(tok_n_vocab(t), 32000);
    cr_expect_eq(tok_bos_id(t), 1);
    cr_expect_eq(tok_eos_id(t), 2);
    cr_expect_eq(tok_unk_id(t), 0);
    cr_expect_eq(tok_add_bos(t), 1);
    cr_expect_str_eq(tok_kind(t), "sentencepiece");
    cr_expect_eq(run_parity(t, &SPM_SPEC), 0);
    /* add_bos prepends exactly BOS. */
    int32_t *ids;
    int n;
    cr_assert_eq(tok_encode(t, "Hello world", 11, 1, 0, &ids, &n, &err), PG_OK);
    cr_expect(n == 3 && ids[0] == 1 && ids[1] == 15043 && ids[2] == 3186, "got n=%d", n);   /* sp.encode("Hello world") = [15043, 3186] */
    free(ids);
    tok_free(t);
}

/* Minimal protobuf walk over tokenizer.model: pieces (string, score, type). */
static int pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int s = 0; s < 64 && *p < end; s += 7) {
        uint8_t c = *(*p)++;
        *v |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) return 0;
    }
    return -1;
}

Test(tokenizer, sentencepiece_gguf_path) {
    char *data;
    size_t len;
    pg_err err;
    cr_assert_eq(pg_read_file(SPM_MODEL, &data, &len, &err), PG_OK, "%s", err.msg);
    int cap = 40000, n = 0;
    char **tokens = calloc((size_t)cap, sizeof *tokens);
    float *scores = calloc((size_t)cap, sizeof *scores);
    int32_t *types = calloc((size_t)cap, sizeof *types);
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    while (p < end) {
        uint64_t tag, l;
        cr_assert_eq(pb_varint(&p, end, &tag), 0);
        if ((tag & 7) == 0) { cr_assert_eq(pb_varint(&p, end, &l), 0); continue; }
        cr_assert_eq(tag & 7, 2, "unexpected wire type in ModelProto");
        cr_assert_eq(pb_varint(&p, end, &l), 0);
        const uint8_t *q = p, *qe = p + l;
        p += l;
        if ((tag >> 3) != 1) continue;
        cr_assert(n < cap);
        types[n] = 1;
        while (q < qe) {
            uint64_t t2, v;
            pb_varint(&q, qe, &t2);
            if ((t2 & 7) == 2) {
                pb_varint(&q, qe, &v);
                tokens[n] = strndup((const char *)q, (size_t)v);
                q += v;
            } else if ((t2 & 7) == 5) {
                memcpy(&scores[n], q, 4);
                q += 4;
            } else {
                pb_varint(&q, qe, &v);
                if ((t2 >> 3) == 3) types[n] = (int32_t)v;
            }
        }
        n++;
    }
    free(data);
    cr_assert_eq(n, 32000);
    tok_gguf_vocab v = { .model = "llama", .pre = NULL, .n_vocab = n, .tokens = (const char *const *)tokens,
                         .token_types = types, .scores = scores, .bos_id = 1, .eos_id = 2, .unk_id = 0,
                         .pad_id = -1, .add_bos = -1, .add_eos = -1, .add_space_prefix = -1 };
    tok_tokenizer *t;
    cr_assert_eq(tok_load_gguf_vocab(&v, &t, &err), PG_OK, "%s", err.msg);
    cr_expect_eq(tok_add_bos(t), 1);
    cr_expect_eq(run_parity(t, &SPM_SPEC), 0);
    tok_free(t);
    /* Without scores a llama vocabulary cannot be used. */
    v.scores = NULL;
    cr_expect_eq(tok_load_gguf_vocab(&v, &t, &err), PG_EFORMAT);
    cr_expect(strstr(err.msg, "scores") != NULL, "%s", err.msg);
    for (int i = 0; i < n; i++) free(tokens[i]);
    free(tokens); free(scores); free(types);
}

// ---------------------------------------------------------------- HF tokenizer.json

Test(tokenizer, hf_json_parity) {
    tok_tokenizer *t;
    pg_err err;
    cr_assert_eq(tok_load_hf_json(FIX "smollm2-tokenizer.json", &t, &err), PG_OK, "%s", err.msg);
    cr_expect_eq(tok_n_vocab(t), 49152);
    cr_expect_eq(tok_bos_id(t), 1);    /* tokenizer_config.json: <|im_start|> */
    cr_expect_eq(tok_eos_id(t), 2);    /* <|im_end|> */
    cr_expect_eq(tok_add_bos(t), 0);
    cr_expect_str_eq(tok_kind(t), "bpe");
    double t0 = pg_now();
    cr_expect_eq(run_parity(t, &HF_SPEC), 0);
    printf("hf parity run (encode x2, decode x2, stream x2 per string): %.3f s\n", pg_now() - t0);
    tok_free(t);
}

/* The same vocabulary with other pre-tokenizers: GPT-2 (ByteLevel regex only),
 * Llama 3 (Split + ByteLevel without regex + ignore_merges) and Qwen2; goldens
 * from HF tokenizers with the same JSON edits. */
static const char *const VARIANT_PRE[3] = {
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}",
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}",
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}",
};
static const char *const VARIANT_NAME[3] = { "gpt2", "llama3", "qwen2" };

Test(tokenizer, hf_json_variants) {
    char *data;
    size_t len;
    pg_err err;
    cr_assert_eq(pg_read_file(FIX "smollm2-tokenizer.json", &data, &len, &err), PG_OK);
    char dir[] = "/tmp/pg_tok_XXXXXX";
    cr_assert(mkdtemp(dir));
    for (int k = 0; k < 3; k++) {
        cJSON *root = cJSON_ParseWithLength(data, len);
        cr_assert(root);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "pre_tokenizer", cJSON_Parse(VARIANT_PRE[k]));
        cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        cJSON_ReplaceItemInObjectCaseSensitive(model, "ignore_merges", cJSON_CreateBool(k == 1));
        char *s = cJSON_PrintUnformatted(root);
        char path[128];
        snprintf(path, sizeof path, "%s/%s.json", dir, VARIANT_NAME[k]);
        FILE *f = fopen(path, "wb");
        fwrite(s, 1, strlen(s), f);
        fclose(f);
        free(s);
        cJSON_Delete(root);
        tok_tokenizer *t;
        cr_assert_eq(tok_load_hf_json(path, &t, &err), PG_OK, "%s", err.msg);
        cr_expect_eq(tok_bos_id(t), -1);   /* no tokenizer_config.json beside it */
        cr_expect_eq(tok_eos_id(t), 0);    /* falls back to <|endoftext|> */
        char name[64];
        snprintf(name, sizeof name, "json pre=%s", VARIANT_NAME[k]);
        parity_spec ps = { name, FIX "bpe-variants.jsonl", VARIANT_NAME[k], NULL, { { NULL, NULL, 0 }, { NULL, NULL, 0 } } };
        cr_expect_eq(run_parity(t, &ps), 0);
        tok_free(t);
        unlink(path);
    }
    rmdir(dir);
    free(data);
}

// ---------------------------------------------------------------- GGUF "gpt2" (default model)

/* Just enough of GGUF v3 to pull the tokenizer.* metadata out (the model
 * loader has its own reader; this one keeps the test independent of it). */
typedef struct {
    char *model, *pre;
    int n_vocab, n_merges;
    char **tokens, **merges;
    int32_t *types;
    int bos, eos, unk, pad, add_bos, add_space_prefix;
} gguf_tok;

static uint64_t rd(FILE *f, int bytes) {
    uint64_t v = 0;
    cr_assert_eq(fread(&v, 1, (size_t)bytes, f), (size_t)bytes, "GGUF: short read");
    return v;   /* little-endian host */
}

static char *rd_str(FILE *f) {
    uint64_t n = rd(f, 8);
    cr_assert(n < (1u << 24), "GGUF: string of %llu bytes", (unsigned long long)n);
    char *s = malloc(n + 1);
    cr_assert_eq(fread(s, 1, n, f), n);
    s[n] = 0;
    return s;
}

static void skip_val(FILE *f, uint32_t type) {
    static const int size[13] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    cr_assert(type < 13, "GGUF: value type %u", type);
    if (type == 8) { free(rd_str(f)); return; }
    if (type == 9) {
        uint32_t et = (uint32_t)rd(f, 4);
        uint64_t n = rd(f, 8);
        for (uint64_t i = 0; i < n; i++) skip_val(f, et);
        return;
    }
    rd(f, size[type]);
}

static char **rd_str_array(FILE *f, uint32_t type, int *n) {
    cr_assert_eq(type, 9);
    cr_assert_eq((uint32_t)rd(f, 4), 8, "GGUF: expected a string array");
    *n = (int)rd(f, 8);
    char **a = malloc((size_t)*n * sizeof *a);
    for (int i = 0; i < *n; i++) a[i] = rd_str(f);
    return a;
}

static int read_gguf_tok(const char *path, gguf_tok *g) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    memset(g, 0, sizeof *g);
    g->bos = g->eos = g->unk = g->pad = g->add_bos = g->add_space_prefix = -1;
    cr_assert_eq((uint32_t)rd(f, 4), 0x46554747u, "GGUF magic");
    cr_assert_eq((uint32_t)rd(f, 4), 3u);
    rd(f, 8);
    uint64_t n_kv = rd(f, 8);
    for (uint64_t k = 0; k < n_kv; k++) {
        char *key = rd_str(f);
        uint32_t type = (uint32_t)rd(f, 4);
        int nt;
        if (!strcmp(key, "tokenizer.ggml.model")) g->model = rd_str(f);
        else if (!strcmp(key, "tokenizer.ggml.pre")) g->pre = rd_str(f);
        else if (!strcmp(key, "tokenizer.ggml.tokens")) g->tokens = rd_str_array(f, type, &g->n_vocab);
        else if (!strcmp(key, "tokenizer.ggml.merges")) g->merges = rd_str_array(f, type, &g->n_merges);
        else if (!strcmp(key, "tokenizer.ggml.token_type")) {
            cr_assert_eq((uint32_t)rd(f, 4), 5u);
            nt = (int)rd(f, 8);
            g->types = malloc((size_t)nt * sizeof *g->types);
            for (int i = 0; i < nt; i++) g->types[i] = (int32_t)rd(f, 4);
        }
        else if (!strcmp(key, "tokenizer.ggml.bos_token_id")) g->bos = (int)rd(f, 4);
        else if (!strcmp(key, "tokenizer.ggml.eos_token_id")) g->eos = (int)rd(f, 4);
        else if (!strcmp(key, "tokenizer.ggml.unknown_token_id")) g->unk = (int)rd(f, 4);
        else if (!strcmp(key, "tokenizer.ggml.padding_token_id")) g->pad = (int)rd(f, 4);
        else if (!strcmp(key, "tokenizer.ggml.add_bos_token")) g->add_bos = (int)rd(f, 1);
        else if (!strcmp(key, "tokenizer.ggml.add_space_prefix")) g->add_space_prefix = (int)rd(f, 1);
        else skip_val(f, type);
        free(key);
    }
    fclose(f);
    return 0;
}

static void free_gguf_tok(gguf_tok *g) {
    for (int i = 0; i < g->n_vocab; i++) free(g->tokens[i]);
    for (int i = 0; i < g->n_merges; i++) free(g->merges[i]);
    free(g->tokens); free(g->merges); free(g->types); free(g->model); free(g->pre);
}

static tok_gguf_vocab gguf_vocab_of(const gguf_tok *g) {
    return (tok_gguf_vocab){ .model = g->model, .pre = g->pre, .n_vocab = g->n_vocab,
        .tokens = (const char *const *)g->tokens, .token_types = g->types, .scores = NULL,
        .n_merges = g->n_merges, .merges = (const char *const *)g->merges,
        .bos_id = g->bos, .eos_id = g->eos, .unk_id = g->unk, .pad_id = g->pad,
        .add_bos = g->add_bos, .add_eos = -1, .add_space_prefix = g->add_space_prefix };
}

static int default_model(char *path, size_t cap) {
    const char *home = getenv("HOME");
    snprintf(path, cap, "%s/.cache/peregrine/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    return access(path, R_OK) == 0;
}

Test(tokenizer, gguf_bpe_parity) {
    char path[512];
    if (!default_model(path, sizeof path)) cr_skip("default model not found at %s (scripts/fetch-model.sh)", path);
    gguf_tok g;
    cr_assert_eq(read_gguf_tok(path, &g), 0);
    cr_assert_str_eq(g.model, "gpt2");
    cr_assert_str_eq(g.pre, "smollm");
    tok_gguf_vocab v = gguf_vocab_of(&g);
    tok_tokenizer *t;
    pg_err err;
    cr_assert_eq(tok_load_gguf_vocab(&v, &t, &err), PG_OK, "%s", err.msg);
    cr_expect_eq(tok_n_vocab(t), 49152);
    cr_expect_eq(tok_bos_id(t), 1);
    cr_expect_eq(tok_eos_id(t), 2);
    cr_expect_eq(tok_add_bos(t), 0);
    parity_spec ps0 = HF_SPEC;
    ps0.name = "gguf pre=smollm";
    cr_expect_eq(run_parity(t, &ps0), 0);
    tok_free(t);
    /* Other pre-tokenizer names over the same vocabulary. */
    const char *pres[3] = { "gpt2", "llama-bpe", "qwen2" };
    for (int k = 0; k < 3; k++) {
        v.pre = pres[k];
        cr_assert_eq(tok_load_gguf_vocab(&v, &t, &err), PG_OK, "%s", err.msg);
        char name[64];
        snprintf(name, sizeof name, "gguf pre=%s", pres[k]);
        parity_spec ps = { name, FIX "bpe-variants.jsonl", VARIANT_NAME[k], NULL, { { NULL, NULL, 0 }, { NULL, NULL, 0 } } };
        cr_expect_eq(run_parity(t, &ps), 0);
        tok_free(t);
    }
    v.pre = "no-such-pre";
    cr_expect_eq(tok_load_gguf_vocab(&v, &t, &err), PG_EUNSUPPORTED);
    cr_expect(strstr(err.msg, "no-such-pre") != NULL, "%s", err.msg);
    free_gguf_tok(&g);
}

Test(tokenizer, gguf_bad_metadata) {
    const char *toks[3] = { "a", "b", "ab" };
    const char *merges[1] = { "a b" };
    int32_t types[3] = { 1, 1, 1 };
    tok_gguf_vocab v = { .model = "gpt2", .pre = "gpt2", .n_vocab = 3, .tokens = toks, .token_types = types,
                         .n_merges = 1, .merges = merges, .bos_id = -1, .eos_id = -1, .unk_id = -1,
                         .pad_id = -1, .add_bos = -1, .add_eos = -1, .add_space_prefix = -1 };
    tok_tokenizer *t;
    pg_err err;
    /* A tiny valid vocabulary works. HF tokenizers on the same vocab/merges with
     * ByteLevel: "abab" -> [2, 2], "ab ba" -> [2, 1, 0] (no piece for the space:
     * dropped), "aab" -> [0, 2]. */
    cr_assert_eq(tok_load_gguf_vocab(&v, &t, &err), PG_OK, "%s", err.msg);
    const char *in[3] = { "abab", "ab ba", "aab" };
    const int32_t want[3][3] = { { 2, 2 }, { 2, 1, 0 }, { 0, 2 } };
    const int nwant[3] = { 2, 3, 2 };
    for (int k = 0; k < 3; k++) {
        int32_t *ids;
        int n;
        cr_assert_eq(tok_encode(t, in[k], strlen(in[k]), 0, 1, &ids, &n, &err), PG_OK);
        cr_expect(ids_eq(ids, n, want[k], nwant[k]), "'%s': n=%d", in[k], n);
        free(ids);
    }
    tok_free(t);
    tok_gguf_vocab b = v;
    b.model = "t5";
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EUNSUPPORTED);
    b = v; b.model = NULL;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    b = v; b.n_vocab = 0;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    b = v; b.bos_id = 3;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    cr_expect(strstr(err.msg, "bos") != NULL, "%s", err.msg);
    int32_t bad_types[3] = { 1, 9, 1 };
    b = v; b.token_types = bad_types;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    const char *nulls[3] = { "a", NULL, "ab" };
    b = v; b.tokens = nulls;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    b = v; b.n_merges = 5; b.merges = NULL;
    cr_expect_eq(tok_load_gguf_vocab(&b, &t, &err), PG_EFORMAT);
    cr_expect_eq(tok_load_gguf_vocab(NULL, &t, &err), PG_EINVAL);
    /* A llama vocabulary the library rejects (no unknown piece) is an error, not a crash. */
    float scores[3] = { 0, -1, -2 };
    b = v; b.model = "llama"; b.scores = scores;
    cr_expect_neq(tok_load_gguf_vocab(&b, &t, &err), PG_OK);
    printf("llama vocab without <unk>: %s\n", err.msg);
}

// ---------------------------------------------------------------- special tokens, pieces

static int32_t *enc(const tok_tokenizer *t, const char *s, int parse_special, int *n) {
    int32_t *ids;
    pg_err err;
    cr_assert_eq(tok_encode(t, s, strlen(s), 0, parse_special, &ids, n, &err), PG_OK, "%s", err.msg);
    return ids;
}

Test(tokenizer, special_tokens_bpe) {
    tok_tokenizer *t;
    pg_err err;
    cr_assert_eq(tok_load_hf_json(FIX "smollm2-tokenizer.json", &t, &err), PG_OK, "%s", err.msg);
    const char *chat = "<|im_start|>user\nHi<|im_end|>\n";
    int n;
    int32_t *ids = enc(t, chat, 1, &n);
    /* HF: [1, 4093, 198, 26843, 2, 198] */
    const int32_t want[] = { 1, 4093, 198, 26843, 2, 198 };
    cr_expect(ids_eq(ids, n, want, 6), "parsed chat: n=%d", n);
    free(ids);
    ids = enc(t, chat, 0, &n);
    for (int i = 0; i < n; i++) cr_expect(ids[i] != 1 && ids[i] != 2, "special id %d from plain text", ids[i]);
    cr_expect(n > 6);
    free(ids);
    cr_expect_eq(tok_token_id(t, "<|im_end|>"), 2);
    cr_expect_eq(tok_token_id(t, "<|endoftext|>"), 0);
    cr_expect_eq(tok_token_id(t, "ĠHello"), 38699);
    cr_expect_eq(tok_token_id(t, "no such piece"), -1);
    cr_expect(tok_is_special(t, 1) && tok_is_special(t, 16));
    cr_expect(!tok_is_special(t, 17) && !tok_is_special(t, 38699) && !tok_is_special(t, -1) && !tok_is_special(t, 49152));
    char buf[64];
    cr_expect_eq(tok_piece_bytes(t, 38699, buf, sizeof buf), 6);
    cr_expect_str_eq(buf, " Hello");
    cr_expect_eq(tok_piece_bytes(t, 1, buf, sizeof buf), 12);
    cr_expect_str_eq(buf, "<|im_start|>");
    cr_expect_eq(tok_piece_bytes(t, 38699, buf, 3), -1);     /* does not fit */
    cr_expect_eq(tok_piece_bytes(t, 49152, buf, sizeof buf), -1);
    cr_expect_str_eq(tok_piece(t, 38699), "ĠHello");
    cr_expect_null(tok_piece(t, -5));
    /* decode: skip_special drops <|im_start|>; ids outside the vocabulary are refused. */
    const int32_t d[] = { 1, 38699 };
    char *out;
    size_t len;
    cr_assert_eq(tok_decode(t, d, 2, 0, &out, &len, &err), PG_OK);
    cr_expect_str_eq(out, "<|im_start|> Hello");
    free(out);
    cr_assert_eq(tok_decode(t, d, 2, 1, &out, &len, &err), PG_OK);
    cr_expect_str_eq(out, " Hello");
    free(out);
    const int32_t bad[] = { 5, 49152 };
    cr_expect_eq(tok_decode(t, bad, 2, 0, &out, &len, &err), PG_EINVAL);
    cr_expect_eq(tok_decode(t, NULL, 0, 0, &out, &len, &err), PG_OK);
    cr_expect_eq(len, 0);
    free(out);
    tok_free(t);
}

Test(tokenizer, special_tokens_sentencepiece) {
    tok_tokenizer *t;
    pg_err err;
    cr_assert_eq(tok_load_sentencepiece(SPM_MODEL, &t, &err), PG_OK, "%s", err.msg);
    int n;
    int32_t *ids = enc(t, "<s>Hi</s>", 1, &n);
    /* sp.encode("Hi") = [6324] between BOS and EOS */
    const int32_t want[] = { 1, 6324, 2 };
    cr_expect(ids_eq(ids, n, want, 3), "n=%d", n);
    free(ids);
    ids = enc(t, "<s>", 0, &n);
    const int32_t plain[] = { 529, 29879, 29958 };        /* sp.encode("<s>") */
    cr_expect(ids_eq(ids, n, plain, 3), "n=%d", n);
    free(ids);
    cr_expect(tok_is_special(t, 1) && tok_is_special(t, 2) && !tok_is_special(t, 0) && !tok_is_special(t, 15043));
    cr_expect_eq(tok_token_id(t, "▁Hello"), 15043);
    char buf[16];
    cr_expect_eq(tok_piece_bytes(t, 15043, buf, sizeof buf), 6);
    cr_expect_str_eq(buf, " Hello");
    cr_expect_eq(tok_piece_bytes(t, tok_token_id(t, "<0x41>"), buf, sizeof buf), 1);
    cr_expect_str_eq(buf, "A");
    /* decode: the dummy-prefix space goes; control tokens stay unless skipped. */
    const int32_t d[] = { 1, 15043, 3186 };
    char *out;
    size_t len;
    cr_assert_eq(tok_decode(t, d, 3, 1, &out, &len, &err), PG_OK);
    cr_expect_str_eq(out, "Hello world");
    free(out);
    cr_assert_eq(tok_decode(t, d, 3, 0, &out, &len, &err), PG_OK);
    cr_expect_str_eq(out, "<s>Hello world");
    free(out);
    /* Byte tokens of a split emoji: the stream holds them back, then emits the whole character. */
    const char *emoji = "\xF0\x9F\x98\x80";
    ids = enc(t, emoji, 0, &n);
    tok_stream *s = tok_stream_new(t, 1);
    char *chunk;
    int total = 0;
    for (int i = 0; i < n; i++) {
        int k = tok_stream_push(s, ids[i], &chunk);
        cr_assert(k >= 0 && chunk);
        if (i < n - 1) cr_expect_eq(k, 0, "partial emoji emitted at token %d", i);
        total += k;
        free(chunk);
    }
    cr_expect_eq(total, 4);
    cr_expect_eq(tok_stream_push(s, 32000, &chunk), -1);
    cr_expect_null(chunk);
    /* A dangling lead byte becomes one U+FFFD per byte at flush (sentencepiece's rule). */
    int e2 = tok_token_id(t, "<0xE2>"), x82 = tok_token_id(t, "<0x82>");
    cr_assert(e2 >= 0 && x82 >= 0);
    cr_assert_eq(tok_stream_push(s, e2, &chunk), 0); free(chunk);
    cr_assert_eq(tok_stream_push(s, x82, &chunk), 0); free(chunk);
    cr_expect_eq(tok_stream_flush(s, &chunk), 6);
    cr_expect_str_eq(chunk, "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(chunk);
    tok_stream_free(s);
    free(ids);
    tok_free(t);
}

// ---------------------------------------------------------------- robustness

Test(tokenizer, bad_files) {
    tok_tokenizer *t = (tok_tokenizer *)0x1;
    pg_err err;
    cr_expect_eq(tok_load_sentencepiece("tests/data/no-such.model", &t, &err), PG_EIO);
    cr_expect_null(t);
    cr_expect_eq(tok_load_hf_json("tests/data/no-such.json", &t, &err), PG_EIO);
    char dir[] = "/tmp/pg_tok_XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[128];
    /* Garbage, truncated models and malformed JSON: errors, never crashes. */
    pg_rng rng;
    pg_rng_seed(&rng, 1234);
    char *model;
    size_t mlen;
    cr_assert_eq(pg_read_file(SPM_MODEL, &model, &mlen, &err), PG_OK);
    typedef struct { const char *name; const char *data; size_t len; } bad_case;
    char garbage[4096];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (char)pg_rng_u64(&rng);
    const bad_case cases[8] = {
        { "garbage", garbage, sizeof garbage },
        { "empty", "", 0 },
        { "half-model", model, mlen / 2 },
        { "model-minus-1", model, mlen - 1 },
        { "json-array", "[1,2,3]", 7 },
        { "wordpiece", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", 0 },
        { "metaspace", "{\"pre_tokenizer\":{\"type\":\"Metaspace\"},\"model\":{\"type\":\"BPE\","
                       "\"vocab\":{\"a\":0},\"merges\":[]}}", 0 },
        { "bad-id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[]}}", 0 },
    };
    for (int c = 0; c < 8; c++) {
        snprintf(path, sizeof path, "%s/%s", dir, cases[c].name);
        FILE *f = fopen(path, "wb");
        size_t clen = cases[c].len ? cases[c].len : strlen(cases[c].data);
        fwrite(cases[c].data, 1, clen, f);
        fclose(f);
        int a = tok_load_sentencepiece(path, &t, &err);
        cr_expect_neq(a, PG_OK, "%s loaded as sentencepiece", cases[c].name);
        cr_expect_null(t);
        printf("sentencepiece %-14s -> %s: %s\n", cases[c].name, pg_status_name(a), err.msg);
        int b = tok_load_hf_json(path, &t, &err);
        cr_expect_neq(b, PG_OK, "%s loaded as tokenizer.json", cases[c].name);
        cr_expect_null(t);
        printf("tokenizer.json %-13s -> %s: %s\n", cases[c].name, pg_status_name(b), err.msg);
        unlink(path);
    }
    /* A truncated tokenizer.json. */
    char *js;
    size_t jlen;
    cr_assert_eq(pg_read_file(FIX "smollm2-tokenizer.json", &js, &jlen, &err), PG_OK);
    snprintf(path, sizeof path, "%s/trunc.json", dir);
    FILE *f = fopen(path, "wb");
    fwrite(js, 1, jlen / 3, f);
    fclose(f);
    cr_expect_eq(tok_load_hf_json(path, &t, &err), PG_EFORMAT);
    unlink(path);
    rmdir(dir);
    free(js);
    free(model);
    cr_expect_eq(tok_load_sentencepiece(NULL, &t, &err), PG_EINVAL);
}

/* Random bytes (mostly invalid UTF-8) through both tokenizers: no crash,
 * valid UTF-8 out, stream == decode; valid text round-trips through BPE. */
Test(tokenizer, random_bytes) {
    tok_tokenizer *tk[2];
    pg_err err;
    cr_assert_eq(tok_load_sentencepiece(SPM_MODEL, &tk[0], &err), PG_OK);
    cr_assert_eq(tok_load_hf_json(FIX "smollm2-tokenizer.json", &tk[1], &err), PG_OK);
    pg_rng rng;
    pg_rng_seed(&rng, 99);
    static const char *const pieces[] = { "a", "Z", " ", "  ", "\n", "\t", "1", "42", "é", "日本", "😀", "<|im_start|>",
                                          "<s>", "'s", "\xC3", "\x80", "\xFF", "\xE2\x82", "\xF0\x9F", ".", "-", "\xCC\x81" };
    const int np = (int)(sizeof pieces / sizeof pieces[0]);
    int n_valid_rt = 0, n_valid = 0, bad_stream = 0, bad_utf8 = 0, n_dropped = 0;
    /* SmolLM2's vocabulary lacks some control bytes (HF drops them silently):
     * find the ASCII ones, strings holding them cannot round-trip. */
    int dropped[128] = {0};
    for (int b = 0; b < 128; b++) {
        char c = (char)b;
        int32_t *ids;
        int n;
        cr_assert_eq(tok_encode(tk[1], &c, 1, 0, 0, &ids, &n, &err), PG_OK);
        dropped[b] = n == 0;
        n_dropped += n == 0;
        free(ids);
    }
    for (int iter = 0; iter < 600; iter++) {
        char buf[512];
        size_t len = 0;
        int parts = 1 + (int)(pg_rng_u64(&rng) % 24);
        for (int k = 0; k < parts; k++) {
            if (pg_rng_u64(&rng) % 4 == 0) { buf[len++] = (char)pg_rng_u64(&rng); continue; }
            const char *p = pieces[pg_rng_u64(&rng) % (uint64_t)np];
            memcpy(buf + len, p, strlen(p));
            len += strlen(p);
        }
        for (int w = 0; w < 2; w++) {
            int32_t *ids;
            int n;
            cr_assert_eq(tok_encode(tk[w], buf, len, iter & 1, iter & 2, &ids, &n, &err), PG_OK, "%s", err.msg);
            for (int i = 0; i < n; i++) cr_assert(ids[i] >= 0 && ids[i] < tok_n_vocab(tk[w]));
            char *out;
            size_t olen;
            cr_assert_eq(tok_decode(tk[w], ids, n, 0, &out, &olen, &err), PG_OK);
            bad_utf8 += !valid_utf8((const unsigned char *)out, olen);
            if (!stream_matches(tk[w], ids, n, 0, out, olen) && bad_stream++ < 3) {
                char hex[1100] = "";
                for (size_t i = 0; i < len && i < 500; i++) sprintf(hex + 2 * i, "%02x", (unsigned char)buf[i]);
                cr_log_error("%s: stream != decode for input %s", tok_kind(tk[w]), hex);
            }
            int has_dropped = 0;
            for (size_t i = 0; i < len; i++) has_dropped |= (unsigned char)buf[i] < 128 && dropped[(unsigned char)buf[i]];
            if (w == 1 && !(iter & 1) && valid_utf8((const unsigned char *)buf, len) && !has_dropped) {
                /* byte-level BPE is lossless for valid UTF-8 whose bytes all have vocabulary entries */
                n_valid++;
                n_valid_rt += olen == len && !memcmp(out, buf, len);
            }
            free(out);
            free(ids);
        }
    }
    printf("random bytes: 600 strings x 2 tokenizers, invalid UTF-8 outputs %d, stream mismatches %d, "
           "valid-UTF-8 inputs round-tripped through BPE %d/%d (%d ASCII bytes have no vocabulary entry)\n",
           bad_utf8, bad_stream, n_valid_rt, n_valid, n_dropped);
    cr_expect_eq(bad_utf8, 0);
    cr_expect_eq(bad_stream, 0);
    cr_expect_eq(n_valid_rt, n_valid);
    /* NULL / empty arguments. */
    int32_t *ids;
    int n;
    cr_expect_eq(tok_encode(tk[1], NULL, 5, 0, 0, &ids, &n, &err), PG_EINVAL);
    cr_assert_eq(tok_encode(tk[1], NULL, 0, 1, 0, &ids, &n, &err), PG_OK);
    cr_expect(n == 1 && ids[0] == 1, "n=%d", n);   /* add_bos=1 on empty text: just BOS */
    free(ids);
    cr_assert_eq(tok_encode(tk[0], "", 0, 1, 0, &ids, &n, &err), PG_OK);
    cr_expect(n == 1 && ids[0] == 1);
    free(ids);
    cr_expect_null(tok_stream_new(NULL, 0));
    tok_free(tk[0]);
    tok_free(tk[1]);
}

// ---------------------------------------------------------------- speed, threads

typedef struct { const tok_tokenizer *t; jsonl *corpus, *gold; const char *key; int bad; } worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    pg_err err;
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < a->corpus->n; i++) {
            size_t len;
            char *text = row_bytes(a->corpus->row[i], "text", &len);
            int nw, ng;
            int32_t *want = row_ids(a->gold->row[i], a->key, &nw), *got;
            if (tok_encode(a->t, text, len, 0, 1, &got, &ng, &err) != PG_OK || !ids_eq(got, ng, want, nw)) a->bad++;
            else free(got);
            free(want);
            free(text);
        }
    return NULL;
}

Test(tokenizer, speed_and_threads) {
    tok_tokenizer *tk[2];
    pg_err err;
    cr_assert_eq(tok_load_sentencepiece(SPM_MODEL, &tk[0], &err), PG_OK);
    double t0 = pg_now();
    cr_assert_eq(tok_load_hf_json(FIX "smollm2-tokenizer.json", &tk[1], &err), PG_OK);
    double load_s = pg_now() - t0;
    jsonl corpus = load_jsonl(FIX "corpus.jsonl");
    jsonl gold[2] = { load_jsonl(FIX "llama2.jsonl"), load_jsonl(FIX "smollm2.jsonl") };
    const char *keys[2] = { "ids_special", "ids" };
    size_t total = 0;
    char **texts = malloc((size_t)corpus.n * sizeof *texts);
    size_t *lens = malloc((size_t)corpus.n * sizeof *lens);
    for (int i = 0; i < corpus.n; i++) { texts[i] = row_bytes(corpus.row[i], "text", &lens[i]); total += lens[i]; }
    for (int w = 0; w < 2; w++) {
        t0 = pg_now();
        long ntok = 0;
        for (int i = 0; i < corpus.n; i++) {
            int32_t *ids;
            int n;
            cr_assert_eq(tok_encode(tk[w], texts[i], lens[i], 0, 1, &ids, &n, &err), PG_OK);
            ntok += n;
            free(ids);
        }
        double s = pg_now() - t0;
        printf("%s: encoded the corpus (%d strings, %zu bytes, %ld tokens) in %.1f ms%s\n",
               tok_kind(tk[w]), corpus.n, total, ntok, s * 1e3, SLOW_BUILD ? " (sanitizer build)" : "");
        cr_expect_lt(s, SLOW_BUILD ? 10.0 : 1.0);
    }
    printf("tokenizer.json load: %.1f ms\n", load_s * 1e3);
    /* Four threads share each tokenizer; every result must still match. */
    for (int w = 0; w < 2; w++) {
        pthread_t th[4];
        worker_arg a[4];
        for (int k = 0; k < 4; k++) {
            a[k] = (worker_arg){ tk[w], &corpus, &gold[w], keys[w], 0 };
            cr_assert_eq(pthread_create(&th[k], NULL, worker, &a[k]), 0);
        }
        int bad = 0;
        for (int k = 0; k < 4; k++) { pthread_join(th[k], NULL); bad += a[k].bad; }
        printf("%s: 4 threads x 3 passes, mismatches %d\n", tok_kind(tk[w]), bad);
        cr_expect_eq(bad, 0);
    }
    for (int i = 0; i < corpus.n; i++) free(texts[i]);
    free(texts);
    free(lens);
    free_jsonl(&corpus);
    free_jsonl(&gold[0]);
    free_jsonl(&gold[1]);
    tok_free(tk[0]);
    tok_free(tk[1]);
}
