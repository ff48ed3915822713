/*
 * tests/model_test_util.h — helpers shared by the model file suites
 * (test_model_files.c, test_model_safetensors.c): a per-test temp folder,
 * file writers, a little-endian byte buffer, and load-and-expect-failure.
 * Functions are static inline so each suite uses only what it needs.
 */
#ifndef PG_MODEL_TEST_UTIL_H
#define PG_MODEL_TEST_UTIL_H

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model.h"

/* tiny-llama shape used by the written checkpoints: dim 64, ffn 128,
 * 2 layers, 4 heads (kv 2), head_dim 16, vocab 256. */
#define TD 64
#define TH 128
#define TL 2
#define TV 256

/* ---------------------------------------------------------------- temp files */
static char g_dir[64];

static inline void tmp_setup(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/pg-model-XXXXXX");
    cr_assert(mkdtemp(g_dir) != NULL);
}

static inline int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}
static inline void tmp_teardown(void) {
    if (g_dir[0]) nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline const char *tmp_path(const char *name) {
    static char p[8][512];
    static int k;
    char *s = p[k++ % 8];
    snprintf(s, 512, "%s/%s", g_dir, name);
    return s;
}

static inline void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    if (n) cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static inline void write_text(const char *path, const char *s) { write_file(path, s, strlen(s)); }

/* model_load() of a path (NULL model on failure). */
static inline int load_path(const char *path, model **m, pg_err *err) {
    model_load_opts o = {0};
    o.path = path;
    memset(err, 0, sizeof *err);
    return model_load(&o, m, err);
}

/* Loading `path` must fail with `code`, a one-line message naming the file
 * and containing `must_contain` (a tensor, field or reason) when non-NULL. */
static inline void expect_fail(const char *path, int code, const char *must_contain) {
    model *m = NULL;
    pg_err err;
    int rc = load_path(path, &m, &err);
    cr_assert_null(m);
    cr_assert_eq(rc, code, "want %s, got %s: %s", pg_status_name(code), pg_status_name(rc), err.msg);
    cr_assert(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    if (must_contain) cr_assert(strstr(err.msg, must_contain) != NULL, "message lacks '%s': %s", must_contain, err.msg);
    cr_assert(strchr(err.msg, '\n') == NULL);
}

/* ---------------------------------------------------------------- byte buffer */
typedef struct { uint8_t *b; size_t n, cap; } buf;
static inline void put(buf *o, const void *p, size_t n) {
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 64;
        o->b = realloc(o->b, o->cap);
        cr_assert(o->b);
    }
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static inline void put_u32(buf *o, uint32_t v) { uint8_t b[4]; for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i)); put(o, b, 4); }
static inline void put_u64(buf *o, uint64_t v) { uint8_t b[8]; for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i)); put(o, b, 8); }
static inline void put_str(buf *o, const char *s) { put_u64(o, strlen(s)); put(o, s, strlen(s)); }
static inline void put_f32(buf *o, float f) { uint32_t u; memcpy(&u, &f, 4); put_u32(o, u); }

/* Fuzz iterations: `def`, or $PEREGRINE_FUZZ_ITERS for a longer run by hand. */
static inline int fuzz_iters(int def) {
    const char *e = getenv("PEREGRINE_FUZZ_ITERS");
    int n = e ? atoi(e) : 0;
    return n > 0 ? n : def;
}

static inline int default_gguf(char *path, size_t cap) {
    pg_err err;
    return model_default_path(path, cap, &err) == PG_OK;
}

#endif
