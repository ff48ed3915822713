/*
 * model/gguf.c — GGUF v2/v3 reader (little-endian) over a read-only mmap.
 *
 * Layout: "GGUF" u32 version, u64 n_tensors, u64 n_kv, then n_kv metadata
 * entries {string key, u32 type, value}, then n_tensors tensor infos
 * {string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset}, then
 * padding to general.alignment (default 32), then the data section; tensor
 * offsets are relative to it. Strings are u64 length + bytes (no NUL).
 *
 * Every read goes through gg_take(), which checks the cursor against the
 * mapping size; counts are compared with the bytes left in the file before
 * anything is allocated or looped over, so a hostile header costs at most a
 * walk over the file itself. Weights stay in their stored precision: tensor
 * data points into the mapping.
 */
#include "loader.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- GGML types */
/* Every GGML type id we know, with its block geometry, so tensors we do not
 * use can still be bounds-checked; ids not listed are rejected. */
typedef struct { int id; const char *name; int block; int bytes; int pg; } gg_type;
static const gg_type g_types[] = {
    {0, "F32", 1, 4, PG_F32},        {1, "F16", 1, 2, PG_F16},         {2, "Q4_0", 32, 18, PG_Q4_0},
    {3, "Q4_1", 32, 20, PG_Q4_1},    {6, "Q5_0", 32, 22, -1},          {7, "Q5_1", 32, 24, -1},
    {8, "Q8_0", 32, 34, PG_Q8_0},    {9, "Q8_1", 32, 36, -1},          {10, "Q2_K", 256, 84, -1},
    {11, "Q3_K", 256, 110, -1},      {12, "Q4_K", 256, 144, -1},       {13, "Q5_K", 256, 176, -1},
    {14, "Q6_K", 256, 210, -1},      {15, "Q8_K", 256, 292, -1},       {16, "IQ2_XXS", 256, 66, -1},
    {17, "IQ2_XS", 256, 74, -1},     {18, "IQ3_XXS", 256, 98, -1},     {19, "IQ1_S", 256, 50, -1},
    {20, "IQ4_NL", 32, 18, -1},      {21, "IQ3_S", 256, 110, -1},      {22, "IQ2_S", 256, 82, -1},
    {23, "IQ4_XS", 256, 136, -1},    {24, "I8", 1, 1, -1},             {25, "I16", 1, 2, -1},
    {26, "I32", 1, 4, -1},           {27, "I64", 1, 8, -1},            {28, "F64", 1, 8, -1},
    {29, "IQ1_M", 256, 56, -1},      {30, "BF16", 1, 2, PG_BF16},      {34, "TQ1_0", 256, 54, -1},
    {35, "TQ2_0", 256, 66, -1},      {39, "MXFP4", 32, 17, -1},
};

static const gg_type *gg_type_find(uint32_t id) {
    for (size_t i = 0; i < sizeof g_types / sizeof *g_types; i++)
        if ((uint32_t)g_types[i].id == id) return &g_types[i];
    return NULL;
}

/* ---------------------------------------------------------------- reader */
enum { GV_U8, GV_I8, GV_U16, GV_I16, GV_U32, GV_I32, GV_F32, GV_BOOL, GV_STR, GV_ARR, GV_U64,
       GV_I64, GV_F64, GV_COUNT };
static const size_t g_vsize[GV_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

#define GG_MAX_DEPTH    4        /* arrays of arrays of ... */
#define GG_MAX_KEY      65535    /* GGUF spec limit on key length */
#define GG_MAX_NAME     1024     /* tensor names (ggml uses 64) */
#define GG_MAX_TEMPLATE (1 << 22) /* chat templates are a few KiB */

typedef struct { const char *s; size_t n; } gg_str;

typedef struct {
    gg_str   key;
    uint32_t type;
    size_t   off;       /* value; for arrays the first element */
    uint32_t arr_type;
    uint64_t arr_n;
} gg_kv;

typedef struct {
    gg_str   name;
    uint32_t n_dims;
    int64_t  ne[4];
    const gg_type *type;
    uint64_t off;       /* in the data section */
    size_t   nbytes;
} gg_tinfo;

typedef struct {
    const uint8_t *p;
    size_t n;
    const char *path;
    pg_err *err;
    uint64_t n_tensors, n_kv;
    gg_kv *kv;
    gg_tinfo *ti;
    size_t data_off;
    size_t alignment;
    size_t kv_end;      /* end of the metadata entries (start of the tensor infos) */
} gguf;

static uint64_t le(const uint8_t *b, int k) {
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* k bytes at *pos, or a truncation error naming what was being read. */
static int gg_take(gguf *g, size_t *pos, uint64_t k, const uint8_t **out, const char *what) {
    if (*pos > g->n || k > g->n - *pos)
        return pg_errf(g->err, PG_EFORMAT, "%s: truncated or corrupt: %s at byte %zu needs %llu bytes, "
                       "the file has %zu", g->path, what, *pos, (unsigned long long)k, g->n);
    if (out) *out = g->p + *pos;
    *pos += (size_t)k;
    return PG_OK;
}

static int gg_u32(gguf *g, size_t *pos, uint32_t *v, const char *what) {
    const uint8_t *b = NULL;
    PG_TRY(gg_take(g, pos, 4, &b, what));
    *v = (uint32_t)le(b, 4);
    return PG_OK;
}

static int gg_u64(gguf *g, size_t *pos, uint64_t *v, const char *what) {
    const uint8_t *b = NULL;
    PG_TRY(gg_take(g, pos, 8, &b, what));
    *v = le(b, 8);
    return PG_OK;
}

static int gg_string(gguf *g, size_t *pos, gg_str *s, const char *what) {
    uint64_t n;
    const uint8_t *b = NULL;
    PG_TRY(gg_u64(g, pos, &n, what));
    PG_TRY(gg_take(g, pos, n, &b, what));
    s->s = (const char *)b;
    s->n = (size_t)n;
    return PG_OK;
}

static int gg_skip_value(gguf *g, size_t *pos, uint32_t type, int depth, const char *key) {
    if (type >= GV_COUNT)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s has unknown value type %u", g->path, key, type);
    if (type == GV_STR) { gg_str s; return gg_string(g, pos, &s, key); }
    if (type != GV_ARR) return gg_take(g, pos, g_vsize[type], NULL, key);
    if (depth >= GG_MAX_DEPTH)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s: arrays nested deeper than %d", g->path, key, GG_MAX_DEPTH);
    uint32_t et;
    uint64_t cnt;
    PG_TRY(gg_u32(g, pos, &et, key));
    PG_TRY(gg_u64(g, pos, &cnt, key));
    if (et >= GV_COUNT)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s: array of unknown type %u", g->path, key, et);
    /* Smallest encoding of one element: strings 8 bytes, arrays 12. */
    size_t min = g_vsize[et] ? g_vsize[et] : (et == GV_STR ? 8 : 12), left = g->n - *pos;
    if (cnt > left / min)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s: array of %llu elements does not fit in the file",
                       g->path, key, (unsigned long long)cnt);
    if (g_vsize[et]) return gg_take(g, pos, cnt * g_vsize[et], NULL, key);
    for (uint64_t i = 0; i < cnt; i++) PG_TRY(gg_skip_value(g, pos, et, depth + 1, key));
    return PG_OK;
}

static int gg_parse_header(gguf *g) {
    size_t pos = 0;
    if (g->n < 4 || memcmp(g->p, "GGUF", 4))
        return pg_errf(g->err, PG_EFORMAT, "%s: not a GGUF file (bad magic)", g->path);
    pos = 4;
    uint32_t ver;
    PG_TRY(gg_u32(g, &pos, &ver, "version"));
    if (ver == 1)
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: GGUF version 1 is not supported (2 or 3)", g->path);
    if (ver != 2 && ver != 3) {
        if ((ver & 0xffff) == 0 && ver)
            return pg_errf(g->err, PG_EUNSUPPORTED, "%s: big-endian GGUF is not supported", g->path);
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 or 3)", g->path, ver);
    }
    PG_TRY(gg_u64(g, &pos, &g->n_tensors, "tensor count"));
    PG_TRY(gg_u64(g, &pos, &g->n_kv, "metadata count"));
    /* A metadata entry takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8. */
    if (g->n_kv > (g->n - pos) / 13)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata count %llu does not fit in the file (%zu bytes)",
                       g->path, (unsigned long long)g->n_kv, g->n);
    if (g->n_tensors > (g->n - pos) / 32)
        return pg_errf(g->err, PG_EFORMAT, "%s: tensor count %llu does not fit in the file (%zu bytes)",
                       g->path, (unsigned long long)g->n_tensors, g->n);
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->ti = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->ti);
    if (!g->kv || !g->ti) return pg_errf(g->err, PG_ENOMEM, "%s: cannot allocate the header tables", g->path);

    char key[96];
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gg_kv *kv = &g->kv[i];
        PG_TRY(gg_string(g, &pos, &kv->key, "metadata key"));
        model_printable(kv->key.s, kv->key.n, key, sizeof key);
        if (kv->key.n == 0 || kv->key.n > GG_MAX_KEY)
            return pg_errf(g->err, PG_EFORMAT, "%s: metadata key %llu has length %zu", g->path,
                           (unsigned long long)i, kv->key.n);
        PG_TRY(gg_u32(g, &pos, &kv->type, key));
        if (kv->type == GV_ARR) {
            size_t start = pos;
            PG_TRY(gg_u32(g, &pos, &kv->arr_type, key));
            PG_TRY(gg_u64(g, &pos, &kv->arr_n, key));
            kv->off = pos;
            pos = start;
        } else kv->off = pos;
        PG_TRY(gg_skip_value(g, &pos, kv->type, 0, key));
    }

    g->kv_end = pos;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gg_tinfo *t = &g->ti[i];
        PG_TRY(gg_string(g, &pos, &t->name, "tensor name"));
        char nm[96];
        model_printable(t->name.s, t->name.n, nm, sizeof nm);
        if (t->name.n == 0 || t->name.n > GG_MAX_NAME)
            return pg_errf(g->err, PG_EFORMAT, "%s: tensor %llu has a name of %zu bytes", g->path,
                           (unsigned long long)i, t->name.n);
        PG_TRY(gg_u32(g, &pos, &t->n_dims, nm));
        if (t->n_dims < 1 || t->n_dims > 4)
            return pg_errf(g->err, PG_EFORMAT, "%s: tensor %s has %u dimensions (1..4)", g->path, nm, t->n_dims);
        int64_t numel = 1;
        for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            PG_TRY(gg_u64(g, &pos, &ne, nm));
            if (ne == 0 || ne > ((uint64_t)1 << 40) || __builtin_mul_overflow(numel, (int64_t)ne, &numel) ||
                numel > ((int64_t)1 << 46))
                return pg_errf(g->err, PG_EFORMAT, "%s: tensor %s has dimension %u = %llu (too large or zero)",
                               g->path, nm, d, (unsigned long long)ne);
            t->ne[d] = (int64_t)ne;
        }
        uint32_t type;
        PG_TRY(gg_u32(g, &pos, &type, nm));
        PG_TRY(gg_u64(g, &pos, &t->off, nm));
        t->type = gg_type_find(type);
        if (!t->type)
            return pg_errf(g->err, PG_EUNSUPPORTED, "%s: tensor %s has unknown GGML type id %u", g->path, nm, type);
        if (t->ne[0] % t->type->block)
            return pg_errf(g->err, PG_EFORMAT, "%s: tensor %s: %lld elements per row is not a multiple of the %s block (%d)",
                           g->path, nm, (long long)t->ne[0], t->type->name, t->type->block);
        t->nbytes = (size_t)(numel / t->type->block) * (size_t)t->type->bytes;  /* < 2^46 * 292 */
    }
    g->data_off = pos;
    return PG_OK;
}

/* ---------------------------------------------------------------- metadata */
static const gg_kv *gg_find(const gguf *g, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.n == n && !memcmp(g->kv[i].key.s, key, n)) return &g->kv[i];
    return NULL;
}

/* Integer metadata (any integer type). Absent: *found = 0 (or an error when
 * found == NULL, i.e. required). */
static int gg_int(gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out, int *found) {
    const gg_kv *kv = gg_find(g, key);
    if (found) *found = kv != NULL;
    if (!kv) return found ? PG_OK : pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is missing", g->path, key);
    const uint8_t *b = g->p + kv->off;  /* in bounds: checked by gg_skip_value */
    int64_t v;
    switch (kv->type) {
    case GV_U8: case GV_BOOL: v = b[0]; break;
    case GV_I8: v = (int8_t)b[0]; break;
    case GV_U16: v = (int64_t)le(b, 2); break;
    case GV_I16: v = (int16_t)le(b, 2); break;
    case GV_U32: v = (int64_t)le(b, 4); break;
    case GV_I32: v = (int32_t)le(b, 4); break;
    case GV_I64: v = (int64_t)le(b, 8); break;
    case GV_U64: {
        uint64_t u = le(b, 8);
        if (u > (uint64_t)INT64_MAX)
            return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s = %llu is out of range", g->path, key, (unsigned long long)u);
        v = (int64_t)u;
        break;
    }
    default: return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is not an integer", g->path, key);
    }
    if (v < lo || v > hi)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s = %lld is outside [%lld, %lld]", g->path, key,
                       (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return PG_OK;
}

static int gg_float(gguf *g, const char *key, double *out, int *found) {
    const gg_kv *kv = gg_find(g, key);
    if (found) *found = kv != NULL;
    if (!kv) return found ? PG_OK : pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is missing", g->path, key);
    const uint8_t *b = g->p + kv->off;
    if (kv->type == GV_F32) {
        uint32_t u = (uint32_t)le(b, 4);
        float f;
        memcpy(&f, &u, 4);
        *out = f;
    } else if (kv->type == GV_F64) {
        uint64_t u = le(b, 8);
        memcpy(out, &u, 8);
    } else {
        int64_t i;
        if (gg_int(g, key, INT32_MIN, INT32_MAX, &i, NULL))
            return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is not a number", g->path, key);
        *out = (double)i;
    }
    if (!isfinite(*out)) return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is not finite", g->path, key);
    return PG_OK;
}

static int gg_strval(gguf *g, const char *key, gg_str *out, int *found) {
    const gg_kv *kv = gg_find(g, key);
    if (found) *found = kv != NULL;
    if (!kv) return found ? PG_OK : pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is missing", g->path, key);
    if (kv->type != GV_STR) return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is not a string", g->path, key);
    size_t pos = kv->off;
    return gg_string(g, &pos, out, key);
}

/* An array KV of the given element type, or absent. */
static int gg_array(gguf *g, const char *key, uint32_t et, const gg_kv **out) {
    const gg_kv *kv = gg_find(g, key);
    *out = NULL;
    if (!kv) return PG_OK;
    if (kv->type != GV_ARR || kv->arr_type != et)
        return pg_errf(g->err, PG_EFORMAT, "%s: metadata %s is not an array of the expected type", g->path, key);
    *out = kv;
    return PG_OK;
}

static int gg_streq(gg_str s, const char *lit) { return s.n == strlen(lit) && !memcmp(s.s, lit, s.n); }

/* ---------------------------------------------------------------- config */
static int gg_key_int(gguf *g, const char *arch, const char *suffix, int64_t lo, int64_t hi, int *out,
                      int *found) {
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    PG_TRY(gg_int(g, key, lo, hi, &v, found));
    if (!found || *found) *out = (int)v;
    return PG_OK;
}

static int gg_config(gguf *g, model_config *c) {
    gg_str a;
    PG_TRY(gg_strval(g, "general.architecture", &a, NULL));
    char arch[40];
    model_printable(a.s, a.n, arch, sizeof arch);
    if (!gg_streq(a, "llama"))
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: architecture \"%s\" is not supported (llama)", g->path, arch);
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "llama");
    int f;
    PG_TRY(gg_key_int(g, arch, "block_count", 1, 1 << 20, &c->n_layers, NULL));
    PG_TRY(gg_key_int(g, arch, "embedding_length", 1, 1 << 24, &c->dim, NULL));
    PG_TRY(gg_key_int(g, arch, "feed_forward_length", 1, 1 << 24, &c->hidden_dim, NULL));
    PG_TRY(gg_key_int(g, arch, "attention.head_count", 1, 1 << 20, &c->n_heads, NULL));
    PG_TRY(gg_key_int(g, arch, "attention.head_count_kv", 1, 1 << 20, &c->n_kv_heads, &f));
    PG_TRY(gg_key_int(g, arch, "context_length", 1, INT32_MAX, &c->max_pos, NULL));
    PG_TRY(gg_key_int(g, arch, "vocab_size", 1, INT32_MAX, &c->vocab_size, &f));
    int kl = 0, vl = 0, rd = 0, fk, fv, fr;
    PG_TRY(gg_key_int(g, arch, "attention.key_length", 1, 1 << 20, &kl, &fk));
    PG_TRY(gg_key_int(g, arch, "attention.value_length", 1, 1 << 20, &vl, &fv));
    PG_TRY(gg_key_int(g, arch, "rope.dimension_count", 1, 1 << 20, &rd, &fr));
    if (fk && fv && kl != vl)
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: key_length %d != value_length %d", g->path, kl, vl);
    if (fk) c->head_dim = kl;
    else if (fv) c->head_dim = vl;
    if (!c->head_dim && c->dim % c->n_heads == 0) c->head_dim = c->dim / c->n_heads;
    if (fr && rd != c->head_dim)
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: partial RoPE (rope.dimension_count %d, head_dim %d) is not supported",
                       g->path, rd, c->head_dim);
    char key[128];
    double d;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    PG_TRY(gg_float(g, key, &d, NULL));
    c->norm_eps = (float)d;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    PG_TRY(gg_float(g, key, &d, &f));
    c->rope_theta = f ? (float)d : 10000.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    gg_str st;
    PG_TRY(gg_strval(g, key, &st, &f));
    if (f && !gg_streq(st, "none")) {
        char name[40];
        model_printable(st.s, st.n, name, sizeof name);
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: rope scaling \"%s\" is not supported", g->path, name);
    }
    /* llama.cpp files store wq/wk rows permuted for adjacent-pair RoPE. */
    c->rope_interleaved = 1;
    c->bos_id = -1;
    return PG_OK;
}

/*
 * Llama 3.1 GGUF files carry rope scaling as a tensor rope_freqs.weight
 * (head_dim/2 f32 divisors of the RoPE frequencies) instead of metadata.
 * We accept it when it equals the llama3 rule with the released parameters
 * (low_freq_factor 1, high_freq_factor 4, original context 8192, factor =
 * its largest entry), and set the config from them; anything else is refused.
 */
static int gg_rope_freqs(gguf *g, const gg_tinfo *t, model_config *c) {
    int half = c->head_dim / 2;
    if (t->type->id != 0 || t->n_dims != 1 || t->ne[0] != half)
        return pg_errf(g->err, PG_EUNSUPPORTED, "%s: tensor rope_freqs.weight is not F32 [%d]", g->path, half);
    const uint8_t *b = g->p + g->data_off + t->off;
    float v[4096], mx = 0;
    for (int i = 0; i < half; i++) {
        uint32_t u = (uint32_t)le(b + 4 * i, 4);
        memcpy(&v[i], &u, 4);
        if (!isfinite(v[i]) || v[i] <= 0)
            return pg_errf(g->err, PG_EFORMAT, "%s: tensor rope_freqs.weight has a non-positive entry", g->path);
        if (v[i] > mx) mx = v[i];
    }
    if (mx == 1.0f) return PG_OK;
    const double lo = 1.0, hi = 4.0, orig = 8192.0, pi = 3.14159265358979323846;
    int64_t orig_ctx = 0;
    int found;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.original_context_length", c->arch);
    PG_TRY(gg_int(g, key, 1, INT32_MAX, &orig_ctx, &found));
    double oc = found ? (double)orig_ctx : orig;
    for (int i = 0; i < half; i++) {
        double freq = pow((double)c->rope_theta, -2.0 * i / c->head_dim), wl = 2 * pi / freq, want;
        if (wl < oc / hi) want = 1.0;
        else if (wl > oc / lo) want = mx;
        else {
            double s = (oc / wl - lo) / (hi - lo);
            want = 1.0 / ((1 - s) / mx + s);
        }
        if (fabs(v[i] - want) > 1e-3 * want)
            return pg_errf(g->err, PG_EUNSUPPORTED,
                           "%s: tensor rope_freqs.weight does not follow llama3 scaling (entry %d = %g, expected %g)",
                           g->path, i, (double)v[i], want);
    }
    c->rope_llama3 = 1;
    c->rope_factor = mx;
    c->rope_low_freq_factor = (float)lo;
    c->rope_high_freq_factor = (float)hi;
    c->rope_orig_max_pos = (int)oc;
    return PG_OK;
}

/* ---------------------------------------------------------------- tensors */
typedef struct { uint64_t off, end; uint64_t idx; } gg_span;
static int span_cmp(const void *a, const void *b) {
    const gg_span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int gg_check_data(gguf *g) {
    int64_t al = 32;
    int found;
    PG_TRY(gg_int(g, "general.alignment", 1, 1 << 24, &al, &found));
    if (al < 8 || (al & (al - 1)))
        return pg_errf(g->err, PG_EFORMAT, "%s: general.alignment %lld is not a power of two >= 8", g->path, (long long)al);
    g->alignment = (size_t)al;
    size_t pad = (g->alignment - g->data_off % g->alignment) % g->alignment;
    if (pad > g->n - g->data_off && g->n_tensors)
        return pg_errf(g->err, PG_EFORMAT, "%s: truncated: the data section would start at byte %zu, past the end (%zu)",
                       g->path, g->data_off + pad, g->n);
    g->data_off += pad;
    size_t avail = g->data_off <= g->n ? g->n - g->data_off : 0;
    gg_span *sp = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *sp);
    if (!sp) return pg_errf(g->err, PG_ENOMEM, "%s: cannot allocate the tensor table", g->path);
    int rc = PG_OK;
    char nm[96];
    for (uint64_t i = 0; i < g->n_tensors && !rc; i++) {
        gg_tinfo *t = &g->ti[i];
        model_printable(t->name.s, t->name.n, nm, sizeof nm);
        if (t->off % g->alignment)
            rc = pg_errf(g->err, PG_EFORMAT, "%s: tensor %s offset %llu is not a multiple of the alignment %zu",
                         g->path, nm, (unsigned long long)t->off, g->alignment);
        else if (t->off > avail || t->nbytes > avail - t->off)
            rc = pg_errf(g->err, PG_EFORMAT,
                         "%s: tensor %s data [%llu, +%zu) lies past the end of the file (data section holds %zu bytes)",
                         g->path, nm, (unsigned long long)t->off, t->nbytes, avail);
        sp[i] = (gg_span){t->off, t->off + t->nbytes, i};
    }
    if (!rc && g->n_tensors > 1) {
        qsort(sp, g->n_tensors, sizeof *sp, span_cmp);
        for (uint64_t i = 1; i < g->n_tensors && !rc; i++)
            if (sp[i].off < sp[i - 1].end && sp[i].end > sp[i].off) {
                char n2[96];
                const gg_tinfo *a = &g->ti[sp[i - 1].idx], *b = &g->ti[sp[i].idx];
                model_printable(a->name.s, a->name.n, nm, sizeof nm);
                model_printable(b->name.s, b->name.n, n2, sizeof n2);
                rc = pg_errf(g->err, PG_EFORMAT, "%s: tensors %s and %s overlap in the data section", g->path, nm, n2);
            }
    }
    free(sp);
    return rc;
}

static int gg_place(gguf *g, model *m) {
    const gg_tinfo *rope_freqs = NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gg_tinfo *t = &g->ti[i];
        int kind, layer;
        if (gg_streq(t->name, "rope_freqs.weight")) { rope_freqs = t; continue; }
        if (!model_slot_parse(t->name.s, t->name.n, MW_NAMES_GGUF, &kind, &layer)) continue;
        const char *name = mm_strndup(m->mapping, t->name.s, t->name.n);
        if (t->type->pg < 0)
            return pg_errf(g->err, PG_EUNSUPPORTED,
                           "%s: tensor %s has type %s; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1",
                           g->path, name, t->type->name);
        if (t->ne[2] != 1 || t->ne[3] != 1 || (model_kind_is_vector(kind) && t->n_dims != 1))
            return pg_errf(g->err, PG_EFORMAT, "%s: tensor %s has %u dimensions [%lld, %lld, %lld, %lld]",
                           g->path, name, t->n_dims, (long long)t->ne[0], (long long)t->ne[1],
                           (long long)t->ne[2], (long long)t->ne[3]);
        /* GGUF ne[0] runs along a row (input features), ne[1] counts rows. */
        PG_TRY(model_place_tensor(m, kind, layer, (pg_dtype)t->type->pg, t->ne[1], t->ne[0],
                                  g->p + g->data_off + t->off, t->nbytes, name, g->path, g->err));
    }
    if (rope_freqs) PG_TRY(gg_rope_freqs(g, rope_freqs, &m->cfg));
    return model_finish_weights(m, g->path, MW_NAMES_GGUF, g->err);
}

/* ---------------------------------------------------------------- tokenizer */
/* NUL-terminated copies of a string array: one pointer table, one byte block. */
static int gg_copy_strings(gguf *g, const gg_kv *kv, char ***out_ptrs, char **out_buf) {
    size_t pos = kv->off, total = 0;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        gg_str s;
        PG_TRY(gg_string(g, &pos, &s, "string array"));
        total += s.n + 1;  /* bounded by the file size */
    }
    char **ptrs = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *ptrs);
    char *buf = malloc(total ? total : 1);
    if (!ptrs || !buf) {
        free(ptrs);
        free(buf);
        return pg_errf(g->err, PG_ENOMEM, "%s: cannot copy %llu strings", g->path, (unsigned long long)kv->arr_n);
    }
    pos = kv->off;
    size_t o = 0;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        gg_str s = {NULL, 0};
        gg_string(g, &pos, &s, "string array");  /* cannot fail: walked above */
        memcpy(buf + o, s.s, s.n);
        buf[o + s.n] = 0;
        ptrs[i] = buf + o;
        o += s.n + 1;
    }
    *out_ptrs = ptrs;
    *out_buf = buf;
    return PG_OK;
}

/* Index of the token whose text is exactly `text`, or -1. */
static int gg_token_id(gguf *g, const gg_kv *tokens, const char *text) {
    size_t pos = tokens->off, n = strlen(text);
    for (uint64_t i = 0; i < tokens->arr_n; i++) {
        gg_str s;
        if (gg_string(g, &pos, &s, "tokens")) return -1;
        if (s.n == n && !memcmp(s.s, text, n)) return (int)i;
    }
    return -1;
}

static void add_eos(model_config *c, int64_t id) {
    if (id < 0 || id >= c->vocab_size || c->n_eos >= MODEL_MAX_EOS) return;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return;
    c->eos_ids[c->n_eos++] = (int)id;
}

static int gg_tokenizer(gguf *g, model *m, int want_tok) {
    model_config *c = &m->cfg;
    const gg_kv *tokens, *types, *scores, *merges;
    PG_TRY(gg_array(g, "tokenizer.ggml.tokens", GV_STR, &tokens));
    PG_TRY(gg_array(g, "tokenizer.ggml.token_type", GV_I32, &types));
    PG_TRY(gg_array(g, "tokenizer.ggml.scores", GV_F32, &scores));
    PG_TRY(gg_array(g, "tokenizer.ggml.merges", GV_STR, &merges));
    if (tokens && tokens->arr_n > (uint64_t)c->vocab_size)
        return pg_errf(g->err, PG_EFORMAT, "%s: %llu tokens but the embedding has %d rows", g->path,
                       (unsigned long long)tokens->arr_n, c->vocab_size);
    if ((types && (!tokens || types->arr_n != tokens->arr_n)) || (scores && (!tokens || scores->arr_n != tokens->arr_n)))
        return pg_errf(g->err, PG_EFORMAT, "%s: tokenizer.ggml.token_type/scores do not match the token count", g->path);

    int64_t ids[6] = {-1, -1, -1, -1, -1, -1}, flags[3] = {-1, -1, -1};
    const char *id_keys[6] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                              "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    const char *flag_keys[3] = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                                "tokenizer.ggml.add_space_prefix"};
    int found;
    for (int i = 0; i < 6; i++) {
        PG_TRY(gg_int(g, id_keys[i], -1, INT32_MAX, &ids[i], &found));
        if (found && ids[i] >= c->vocab_size)
            return pg_errf(g->err, PG_EFORMAT, "%s: %s = %lld is outside the vocabulary (%d)", g->path,
                           id_keys[i], (long long)ids[i], c->vocab_size);
    }
    for (int i = 0; i < 3; i++) PG_TRY(gg_int(g, flag_keys[i], 0, 1, &flags[i], &found));
    c->bos_id = (int)ids[0];
    add_eos(c, ids[1]);
    add_eos(c, ids[4]);
    add_eos(c, ids[5]);
    c->add_bos = flags[0] >= 0 ? (int)flags[0] : c->bos_id >= 0;

    gg_str tmpl;
    PG_TRY(gg_strval(g, "tokenizer.chat_template", &tmpl, &found));
    if (found) {
        if (tmpl.n > GG_MAX_TEMPLATE)
            return pg_errf(g->err, PG_EFORMAT, "%s: tokenizer.chat_template is %zu bytes (limit %d)", g->path,
                           tmpl.n, GG_MAX_TEMPLATE);
        m->chat_template = pg_xmalloc(tmpl.n + 1);
        memcpy(m->chat_template, tmpl.s, tmpl.n);
        m->chat_template[tmpl.n] = 0;
        /* ChatML turns end with <|im_end|>: generation stops there even when
         * the file's eos is another token. */
        if (tokens && strstr(m->chat_template, "<|im_end|>"))
            add_eos(c, gg_token_id(g, tokens, "<|im_end|>"));
    }

    gg_str model_name, pre;
    PG_TRY(gg_strval(g, "tokenizer.ggml.model", &model_name, &found));
    if (!found || !want_tok) return PG_OK;
    PG_TRY(gg_strval(g, "tokenizer.ggml.pre", &pre, &found));
    if (!found) pre = (gg_str){NULL, 0};
    if (!tokens) return pg_errf(g->err, PG_EFORMAT, "%s: tokenizer.ggml.tokens is missing", g->path);

    char model_s[64], pre_s[64];
    if (model_name.n >= sizeof model_s || pre.n >= sizeof pre_s)
        return pg_errf(g->err, PG_EFORMAT, "%s: tokenizer.ggml.model/pre is too long", g->path);
    memcpy(model_s, model_name.s, model_name.n);
    model_s[model_name.n] = 0;
    if (pre.s) { memcpy(pre_s, pre.s, pre.n); pre_s[pre.n] = 0; }

    char **tok_ptrs = NULL, *tok_buf = NULL, **merge_ptrs = NULL, *merge_buf = NULL;
    int32_t *type_v = NULL;
    float *score_v = NULL;
    int rc = gg_copy_strings(g, tokens, &tok_ptrs, &tok_buf);
    if (!rc && merges) rc = gg_copy_strings(g, merges, &merge_ptrs, &merge_buf);
    if (!rc && merges && merges->arr_n > INT32_MAX)
        rc = pg_errf(g->err, PG_EFORMAT, "%s: too many merges", g->path);
    size_t nt = (size_t)tokens->arr_n;
    if (!rc && (types || scores)) {  /* copies: the mapping's arrays are not 4-byte aligned */
        type_v = malloc(nt * sizeof *type_v);
        score_v = malloc(nt * sizeof *score_v);
        if (!type_v || !score_v) rc = pg_errf(g->err, PG_ENOMEM, "%s: cannot copy %zu token types", g->path, nt);
    }
    if (!rc && types)
        for (size_t i = 0; i < nt; i++) type_v[i] = (int32_t)(uint32_t)le(g->p + types->off + 4 * i, 4);
    if (!rc && scores) {
        for (size_t i = 0; i < nt; i++) {
            uint32_t u = (uint32_t)le(g->p + scores->off + 4 * i, 4);
            memcpy(&score_v[i], &u, 4);
        }
    }
    if (!rc) {
        tok_gguf_vocab v = {
            .model = model_s, .pre = pre.s ? pre_s : NULL, .n_vocab = (int)nt,
            .tokens = (const char *const *)tok_ptrs, .token_types = types ? type_v : NULL,
            .scores = scores ? score_v : NULL,
            .n_merges = merges ? (int)merges->arr_n : 0, .merges = (const char *const *)merge_ptrs,
            .bos_id = (int)ids[0], .eos_id = (int)ids[1], .unk_id = (int)ids[2], .pad_id = (int)ids[3],
            .add_bos = (int)flags[0], .add_eos = (int)flags[1], .add_space_prefix = (int)flags[2],
        };
        rc = tok_load_gguf_vocab(&v, &m->tok, g->err);
        if (rc && g->err && !strstr(g->err->msg, g->path)) {
            char msg[PG_ERR_LEN];
            snprintf(msg, sizeof msg, "%s", g->err->msg);
            pg_errf(g->err, rc, "%s: tokenizer: %s", g->path, msg);
        }
    }
    free(tok_ptrs);
    free(tok_buf);
    free(merge_ptrs);
    free(merge_buf);
    free(type_v);
    free(score_v);
    if (!rc && tok_n_vocab(m->tok) > c->vocab_size)
        rc = pg_errf(g->err, PG_EFORMAT, "%s: tokenizer has %d tokens but the vocabulary is %d", g->path,
                     tok_n_vocab(m->tok), c->vocab_size);
    if (!rc) model_sync_tokenizer(m);
    return rc;
}

/* ---------------------------------------------------------------- entry */
int gguf_load(const char *path, model *m, int want_tok, pg_err *err) {
    gguf g;
    memset(&g, 0, sizeof g);
    g.path = path;
    g.err = err;
    int rc = mm_map_file(m->mapping, path, &g.p, &g.n, err);
    if (!rc) rc = gg_parse_header(&g);
    if (!rc) rc = gg_check_data(&g);
    if (!rc) rc = gg_config(&g, &m->cfg);
    if (!rc && !m->cfg.vocab_size) {
        /* No llama.vocab_size: the token list, else the embedding's rows. */
        const gg_kv *tokens = NULL;
        rc = gg_array(&g, "tokenizer.ggml.tokens", GV_STR, &tokens);
        for (uint64_t i = 0; !rc && !tokens && i < g.n_tensors; i++)
            if (gg_streq(g.ti[i].name, "token_embd.weight")) m->cfg.vocab_size = (int)g.ti[i].ne[1];
        if (tokens) m->cfg.vocab_size = tokens->arr_n > INT32_MAX ? INT32_MAX : (int)tokens->arr_n;
    }
    if (!rc) rc = model_config_validate(&m->cfg, path, err);
    if (!rc) {
        model_alloc_layers(m);
        rc = gg_place(&g, m);
    }
    if (!rc) rc = gg_tokenizer(&g, m, want_tok);
    if (!rc) rc = model_config_validate(&m->cfg, path, err);
    free(g.kv);
    free(g.ti);
    return rc;
}

/* ---------------------------------------------------------------- tokenizer-only files */
/* A GGUF with metadata and no tensors (what `peregrine quantize` writes as
 * tokenizer.gguf beside a quantized checkpoint): the vocabulary size is the
 * token count, then the same tokenizer reader as for a model file. */
int gguf_load_vocab(const char *path, model *m, pg_err *err) {
    gguf g;
    memset(&g, 0, sizeof g);
    g.path = path;
    g.err = err;
    const gg_kv *tokens = NULL;
    int rc = mm_map_file(m->mapping, path, &g.p, &g.n, err);
    if (!rc) rc = gg_parse_header(&g);
    if (!rc && g.n_tensors)
        rc = pg_errf(err, PG_EFORMAT, "%s: a tokenizer-only GGUF has no tensors, this one has %llu", path,
                     (unsigned long long)g.n_tensors);
    if (!rc) rc = gg_array(&g, "tokenizer.ggml.tokens", GV_STR, &tokens);
    if (!rc && (!tokens || tokens->arr_n == 0 || tokens->arr_n > (1u << 24)))
        rc = pg_errf(err, PG_EFORMAT, "%s: tokenizer.ggml.tokens is missing or has %llu entries", path,
                     tokens ? (unsigned long long)tokens->arr_n : 0ull);
    if (!rc) {
        m->cfg.vocab_size = (int)tokens->arr_n;
        rc = gg_tokenizer(&g, m, 1);
    }
    if (!rc && !m->tok) rc = pg_errf(err, PG_EFORMAT, "%s: no tokenizer.ggml.model", path);
    free(g.kv);
    free(g.ti);
    return rc;
}

int gguf_metadata_span(const char *path, const uint8_t *p, size_t n, uint64_t *n_kv, size_t *begin,
                       size_t *end, pg_err *err) {
    gguf g;
    memset(&g, 0, sizeof g);
    g.p = p;
    g.n = n;
    g.path = path;
    g.err = err;
    int rc = gg_parse_header(&g);
    if (!rc) {
        *n_kv = g.n_kv;
        *begin = 24;   /* "GGUF", u32 version, u64 n_tensors, u64 n_kv */
        *end = g.kv_end;
    }
    free(g.kv);
    free(g.ti);
    return rc;
}
