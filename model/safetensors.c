/*
 * model/safetensors.c — HF checkpoints: config.json + model.safetensors, or
 * shards listed in model.safetensors.index.json, plus the tokenizer files
 * beside them.
 *
 * A safetensors file is: u64 N (little-endian), N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]},
 *  "__metadata__": {...}}, then the data; offsets are relative to byte 8 + N.
 * Every entry is checked: offsets inside the data, end - begin equal to the
 * shape's byte size, no two tensors overlapping. Weights stay in the mapping
 * (F32/F16/BF16 as stored) unless a tensor is not aligned to its element
 * size, in which case it is copied once into an aligned owned buffer.
 *
 * Quantized checkpoints (`peregrine quantize`, model/quant.h formats): when
 * __metadata__ has "format": "peregrine-quant" (version "1"), a weight W may
 * instead be stored as W.q (I8 [rows, cols] for QI8, U8 [rows, cols/2] for
 * QI4), W.scale (F16 [rows, cols/group]) and, for QI4 only, W.min (same
 * shape). group = cols / (scale columns) must be valid for the format
 * (quant_group_ok); "rope_interleaved": "1" in the metadata records GGUF's
 * RoPE pairing for weights converted from a GGUF file. Norm vectors are never
 * quantized.
 */
#include "loader.h"
#include "quant.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ST_MAX_HEADER   (100u << 20)  /* the format's own limit on N */
#define ST_MAX_JSONFILE (64u << 20)   /* config / index / tokenizer_config */

typedef struct {
    const char *name;   /* points into the cJSON tree */
    const char *dtype;
    int64_t shape[8];
    int n_dims;
    uint64_t begin, end;
} st_entry;

static int entry_cmp(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Element size of a safetensors dtype name; 0 if unknown. */
static size_t st_dtype_size(const char *d) {
    static const struct { const char *n; size_t s; } t[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"U64", 8}, {"I32", 4},
        {"U32", 4}, {"I16", 2}, {"U16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1},
        {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(d, t[i].n)) return t[i].s;
    return 0;
}

static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d != floor(d) || d > 9007199254740992.0) return 0;  /* 2^53: exact in a double */
    *out = (uint64_t)d;
    return 1;
}

static int read_small(const char *path, size_t limit, char **text, size_t *len, pg_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return pg_errf(err, PG_EIO, "%s: not a regular file", path);
    if ((uint64_t)st.st_size > limit)
        return pg_errf(err, PG_EFORMAT, "%s: %lld bytes is too large for a JSON side file", path,
                       (long long)st.st_size);
    return pg_read_file(path, text, len, err);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Parse one entry of the header into e; msg names the tensor. */
static int st_entry_parse(const cJSON *item, uint64_t data_len, const char *path, st_entry *e,
                          pg_err *err) {
    char nm[96];
    model_printable(item->string, strlen(item->string), nm, sizeof nm);
    if (!cJSON_IsObject(item)) return pg_errf(err, PG_EFORMAT, "%s: tensor %s: entry is not an object", path, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: needs dtype, shape and data_offsets", path, nm);
    e->name = item->string;
    e->dtype = dt->valuestring;
    e->n_dims = 0;
    uint64_t numel = 1;
    for (const cJSON *d = sh->child; d; d = d->next) {
        uint64_t v;
        if (e->n_dims >= 8 || !json_u64(d, &v) || v > ((uint64_t)1 << 40) ||
            __builtin_mul_overflow(numel, v, &numel) || numel > ((uint64_t)1 << 46))
            return pg_errf(err, PG_EFORMAT, "%s: tensor %s: bad shape", path, nm);
        e->shape[e->n_dims++] = (int64_t)v;
    }
    if (cJSON_GetArraySize(of) != 2 || !json_u64(of->child, &e->begin) || !json_u64(of->child->next, &e->end))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: data_offsets is not [begin, end]", path, nm);
    if (e->begin > e->end || e->end > data_len)
        return pg_errf(err, PG_EFORMAT,
                       "%s: tensor %s: data_offsets [%llu, %llu] fall outside the data (%llu bytes)", path,
                       nm, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)data_len);
    size_t es = st_dtype_size(e->dtype);
    if (es && numel * es != e->end - e->begin)  /* numel < 2^46: no overflow */
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: shape needs %llu bytes but data_offsets span %llu",
                       path, nm, (unsigned long long)(numel * es), (unsigned long long)(e->end - e->begin));
    return PG_OK;
}

static int st_place(model *m, const st_entry *e, const uint8_t *data, const char *path, pg_err *err) {
    int kind, layer;
    if (!model_slot_parse(e->name, strlen(e->name), MW_NAMES_HF, &kind, &layer)) return PG_OK;
    const char *name = mm_strndup(m->mapping, e->name, strlen(e->name));
    pg_dtype dt;
    if (!strcmp(e->dtype, "F32")) dt = PG_F32;
    else if (!strcmp(e->dtype, "F16")) dt = PG_F16;
    else if (!strcmp(e->dtype, "BF16")) dt = PG_BF16;
    else {
        char d[32];
        model_printable(e->dtype, strlen(e->dtype), d, sizeof d);
        return pg_errf(err, PG_EUNSUPPORTED, "%s: tensor %s has dtype %s; supported: F32, F16, BF16", path, name, d);
    }
    int64_t rows, cols;
    if (e->n_dims == 1) { rows = 1; cols = e->shape[0]; }
    else if (e->n_dims == 2 && !model_kind_is_vector(kind)) { rows = e->shape[0]; cols = e->shape[1]; }
    else return pg_errf(err, PG_EFORMAT, "%s: tensor %s has %d dimensions", path, name, e->n_dims);
    const uint8_t *p = data + e->begin;
    size_t nbytes = (size_t)(e->end - e->begin), esz = dt == PG_F32 ? 4 : 2;
    if ((uintptr_t)p % esz) {  /* legal in the format, not for our kernels */
        uint8_t *copy = mm_alloc(m->mapping, nbytes);
        if (!copy) return pg_errf(err, PG_ENOMEM, "%s: tensor %s: cannot copy %zu bytes", path, name, nbytes);
        memcpy(copy, p, nbytes);
        p = copy;
    }
    return model_place_tensor(m, kind, layer, dt, rows, cols, p, nbytes, name, path, err);
}

static int ends_with(const char *s, const char *suf);

/* __metadata__: *is_pq = 1 for a peregrine-quant file (then version and
 * rope_interleaved are checked); anything else is ignored, as before. */
static int st_metadata(model *m, const cJSON *md, const char *path, int *is_pq, pg_err *err) {
    *is_pq = 0;
    const cJSON *f = cJSON_IsObject(md) ? cJSON_GetObjectItemCaseSensitive(md, "format") : NULL;
    if (!cJSON_IsString(f) || strcmp(f->valuestring, "peregrine-quant")) return PG_OK;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(md, "version");
    if (!cJSON_IsString(v) || strcmp(v->valuestring, "1")) {
        char s[32];
        if (cJSON_IsString(v)) model_printable(v->valuestring, strlen(v->valuestring), s, sizeof s);
        else snprintf(s, sizeof s, "(none)");
        return pg_errf(err, PG_EUNSUPPORTED, "%s: peregrine-quant version %s is not supported (1)", path, s);
    }
    const cJSON *ri = cJSON_GetObjectItemCaseSensitive(md, "rope_interleaved");
    if (ri) {
        if (!cJSON_IsString(ri) || (strcmp(ri->valuestring, "0") && strcmp(ri->valuestring, "1")))
            return pg_errf(err, PG_EFORMAT, "%s: __metadata__ rope_interleaved must be \"0\" or \"1\"", path);
        m->cfg.rope_interleaved = ri->valuestring[0] == '1';
    }
    *is_pq = 1;
    return PG_OK;
}

/* Entry named base + suffix, or NULL. */
static const st_entry *st_find(const st_entry *es, int ne, const char *base, size_t bl, const char *suffix) {
    size_t sl = strlen(suffix);
    for (int i = 0; i < ne; i++)
        if (strlen(es[i].name) == bl + sl && !memcmp(es[i].name, base, bl) && !strcmp(es[i].name + bl, suffix))
            return &es[i];
    return NULL;
}

/* f16 parameters of a quantized weight: 2-byte aligned (copied if not). */
static const uint16_t *st_f16_data(model *m, const st_entry *e, const uint8_t *data) {
    const uint8_t *p = data + e->begin;
    if ((uintptr_t)p % 2 == 0) return (const uint16_t *)p;
    uint8_t *copy = mm_alloc(m->mapping, (size_t)(e->end - e->begin));
    if (copy) memcpy(copy, p, (size_t)(e->end - e->begin));
    return (const uint16_t *)copy;
}

/* A quantized weight W from W.q (e), W.scale and W.min. Entries ending in
 * .scale / .min are checked here (an orphan is an error) and skipped by
 * st_place. */
static int st_place_quant(model *m, const st_entry *es, int ne, const st_entry *e, int is_pq,
                          const uint8_t *data, const char *path, pg_err *err) {
    const char *sfx = ends_with(e->name, ".q") ? ".q" : ends_with(e->name, ".scale") ? ".scale" : ".min";
    size_t bl = strlen(e->name) - strlen(sfx);
    int kind, layer;
    if (!model_slot_parse(e->name, bl, MW_NAMES_HF, &kind, &layer)) return PG_OK;   /* not ours */
    char nm[128];
    model_printable(e->name, strlen(e->name), nm, sizeof nm);
    if (!is_pq)
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: quantized weights need __metadata__ "
                       "\"format\": \"peregrine-quant\"", path, nm);
    if (strcmp(sfx, ".q")) {
        if (!st_find(es, ne, e->name, bl, ".q"))
            return pg_errf(err, PG_EFORMAT, "%s: tensor %s has no %.*s.q beside it", path, nm, (int)bl, e->name);
        return PG_OK;
    }
    const char *name = mm_strndup(m->mapping, e->name, bl);   /* the weight's own name, for messages */
    if (model_kind_is_vector(kind))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: norm vectors are never quantized", path, nm);
    pg_dtype dt;
    if (!strcmp(e->dtype, "I8")) dt = PG_QI8;
    else if (!strcmp(e->dtype, "U8")) dt = PG_QI4;
    else {
        char d[32];
        model_printable(e->dtype, strlen(e->dtype), d, sizeof d);
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s has dtype %s; quantized weights are I8 (int8) or U8 "
                       "(int4 nibbles)", path, nm, d);
    }
    if (e->n_dims != 2) return pg_errf(err, PG_EFORMAT, "%s: tensor %s has %d dimensions, not 2", path, nm, e->n_dims);
    int64_t rows, cols;
    model_expected_shape(&m->cfg, kind, &rows, &cols);
    int64_t qcols = dt == PG_QI8 ? cols : cols / 2;
    if (e->shape[0] != rows || e->shape[1] != qcols || (dt == PG_QI4 && cols % 2))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s has shape [%lld, %lld] but the config needs [%lld, %lld] "
                       "(%s)", path, nm, (long long)e->shape[0], (long long)e->shape[1], (long long)rows,
                       (long long)qcols, dt == PG_QI8 ? "int8: one byte per weight" : "int4: two weights per byte");
    const st_entry *sc = st_find(es, ne, e->name, bl, ".scale"), *mn = st_find(es, ne, e->name, bl, ".min");
    if (!sc) return pg_errf(err, PG_EFORMAT, "%s: tensor %s has no %s.scale", path, nm, name);
    if (strcmp(sc->dtype, "F16") || sc->n_dims != 2 || sc->shape[0] != rows || sc->shape[1] < 1 ||
        cols % sc->shape[1])
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s.scale must be F16 [%lld, cols/group] with the group "
                       "dividing %lld columns", path, name, (long long)rows, (long long)cols);
    int64_t group = cols / sc->shape[1];
    if (group > INT32_MAX || !quant_group_ok(dt, (int)group, cols))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: group size %lld (%lld columns / %lld scales) is not "
                       "valid for %s", path, name, (long long)group, (long long)cols, (long long)sc->shape[1],
                       dt == PG_QI8 ? "int8" : "int4 (32, 64 or 128)");
    if (dt == PG_QI8 && mn)
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s.min: int8 weights have no minimum", path, name);
    if (dt == PG_QI4 && (!mn || strcmp(mn->dtype, "F16") || mn->n_dims != 2 || mn->shape[0] != rows ||
                         mn->shape[1] != sc->shape[1]))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s.min must be F16 with the shape of %s.scale ([%lld, %lld])",
                       path, name, name, (long long)rows, (long long)sc->shape[1]);
    const uint16_t *ps = st_f16_data(m, sc, data), *pm = mn ? st_f16_data(m, mn, data) : NULL;
    if (!ps || (mn && !pm)) return pg_errf(err, PG_ENOMEM, "%s: tensor %s: cannot copy its parameters", path, name);
    PG_TRY(model_place_tensor(m, kind, layer, dt, rows, cols, data + e->begin, (size_t)(e->end - e->begin),
                              name, path, err));
    tensor *t = model_slot(m, kind, layer);
    t->group = (int)group;
    t->qscale = ps;
    t->qmin = pm;
    return PG_OK;
}

static int st_is_quant_part(const char *name) {
    return ends_with(name, ".q") || ends_with(name, ".scale") || ends_with(name, ".min");
}

/* Map one .safetensors file, validate its header and place the tensors we use. */
static int st_file(model *m, const char *path, pg_err *err) {
    const uint8_t *p;
    size_t n;
    PG_TRY(mm_map_file(m->mapping, path, &p, &n, err));
    if (n < 8) return pg_errf(err, PG_EFORMAT, "%s: truncated: %zu bytes, no header length", path, n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > n - 8) return pg_errf(err, PG_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                                     path, (unsigned long long)hlen, n);
    if (hlen > ST_MAX_HEADER || hlen < 2)
        return pg_errf(err, PG_EFORMAT, "%s: header length %llu is not in [2, %u]", path, (unsigned long long)hlen,
                       ST_MAX_HEADER);
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!root) return pg_errf(err, PG_EFORMAT, "%s: header is not valid JSON", path);
    int rc = PG_OK, cnt = 0, ne = 0, is_pq = 0;
    st_entry *es = NULL;
    if (!cJSON_IsObject(root)) { rc = pg_errf(err, PG_EFORMAT, "%s: header is not a JSON object", path); goto done; }
    cnt = cJSON_GetArraySize(root);
    es = calloc((size_t)(cnt ? cnt : 1), sizeof *es);
    if (!es) { rc = pg_errf(err, PG_ENOMEM, "%s: %d header entries", path, cnt); goto done; }
    uint64_t data_len = n - 8 - hlen;
    for (const cJSON *it = root->child; it && !rc; it = it->next) {
        if (!it->string) { rc = pg_errf(err, PG_EFORMAT, "%s: header entry without a name", path); break; }
        if (!strcmp(it->string, "__metadata__")) {
            rc = st_metadata(m, it, path, &is_pq, err);
            continue;
        }
        rc = st_entry_parse(it, data_len, path, &es[ne], err);
        if (!rc) ne++;
    }
    if (rc) goto done;
    qsort(es, (size_t)ne, sizeof *es, entry_cmp);
    for (int i = 1; i < ne && !rc; i++)
        if (es[i].begin < es[i - 1].end && es[i].end > es[i].begin) {
            char a[96], b[96];
            model_printable(es[i - 1].name, strlen(es[i - 1].name), a, sizeof a);
            model_printable(es[i].name, strlen(es[i].name), b, sizeof b);
            rc = pg_errf(err, PG_EFORMAT, "%s: tensors %s and %s overlap in the data", path, a, b);
        }
    for (int i = 0; i < ne && !rc; i++)
        rc = st_is_quant_part(es[i].name) ? st_place_quant(m, es, ne, &es[i], is_pq, p + 8 + hlen, path, err)
                                          : st_place(m, &es[i], p + 8 + hlen, path, err);
done:
    free(es);
    cJSON_Delete(root);
    return rc;
}

/* Shards named in model.safetensors.index.json's weight_map, each once. */
static int st_index(model *m, const char *dir, const char *index_path, pg_err *err) {
    char *text;
    size_t len;
    PG_TRY(read_small(index_path, ST_MAX_JSONFILE, &text, &len, err));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return pg_errf(err, PG_EFORMAT, "%s: not valid JSON", index_path);
    int rc = PG_OK;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child) {
        rc = pg_errf(err, PG_EFORMAT, "%s: no weight_map object", index_path);
        goto done;
    }
    /* Load shards in the order they first appear; duplicates are skipped by a
     * scan of the entries before (weight maps hold hundreds of entries). */
    for (const cJSON *e = wm->child; e && !rc; e = e->next) {
        if (!cJSON_IsString(e)) { rc = pg_errf(err, PG_EFORMAT, "%s: weight_map value is not a file name", index_path); break; }
        const char *f = e->valuestring;
        size_t fl = strlen(f);
        if (!fl || fl > 255 || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..")) {
            char s[64];
            model_printable(f, fl, s, sizeof s);
            rc = pg_errf(err, PG_EFORMAT, "%s: weight_map names \"%s\", not a file beside the index", index_path, s);
            break;
        }
        int seen = 0;
        for (const cJSON *q = wm->child; q != e && !seen; q = q->next) seen = cJSON_IsString(q) && !strcmp(q->valuestring, f);
        if (seen) continue;
        char shard[2048];
        snprintf(shard, sizeof shard, "%s/%s", dir, f);
        rc = st_file(m, shard, err);
    }
done:
    cJSON_Delete(root);
    return rc;
}

/* tokenizer_config.json: chat_template (a string, or [{name, template}] with
 * "default") and add_bos_token; chat_template.jinja when the JSON has none. */
static int st_tokenizer_config(model *m, const char *dir, pg_err *err) {
    char path[2048], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (exists(path)) {
        PG_TRY(read_small(path, ST_MAX_JSONFILE, &text, &len, err));
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        if (!root) return pg_errf(err, PG_EFORMAT, "%s: not valid JSON", path);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        const char *tmpl = NULL;
        if (cJSON_IsString(ct)) tmpl = ct->valuestring;
        else if (cJSON_IsArray(ct))
            for (const cJSON *e = ct->child; e; e = e->next) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (cJSON_IsString(nm) && cJSON_IsString(tp) && !strcmp(nm->valuestring, "default"))
                    tmpl = tp->valuestring;
            }
        if (tmpl) m->chat_template = pg_xstrdup(tmpl);
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(root, "add_bos_token");
        if (cJSON_IsBool(ab)) m->cfg.add_bos = cJSON_IsTrue(ab) && m->cfg.bos_id >= 0;
        cJSON_Delete(root);
    }
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (!m->chat_template && exists(path)) {
        PG_TRY(read_small(path, ST_MAX_JSONFILE, &text, &len, err));
        m->chat_template = text;
    }
    return PG_OK;
}

/* generation_config.json may list more stop ids (Llama 3 instruct: eot, eom). */
static int st_generation_config(model *m, const char *dir, pg_err *err) {
    char path[2048], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (!exists(path)) return PG_OK;
    PG_TRY(read_small(path, ST_MAX_JSONFILE, &text, &len, err));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return pg_errf(err, PG_EFORMAT, "%s: not valid JSON", path);
    int rc = cJSON_IsObject(root)
                 ? config_add_eos_json(cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), path, &m->cfg, err)
                 : PG_OK;
    cJSON_Delete(root);
    return rc;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int st_load(const char *path, model *m, int want_tok, pg_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    char dir[1024];
    int is_dir = S_ISDIR(st.st_mode);
    if (strlen(path) >= sizeof dir - 64) return pg_errf(err, PG_EINVAL, "%s: path too long", path);
    snprintf(dir, sizeof dir, "%s", path);
    if (!is_dir) {
        char *slash = strrchr(dir, '/');
        if (slash == dir) dir[1] = 0;
        else if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    } else {
        size_t l = strlen(dir);
        while (l > 1 && dir[l - 1] == '/') dir[--l] = 0;
    }
    char p[1200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!exists(p)) return pg_errf(err, PG_EIO, "%s: missing (a safetensors checkpoint needs its config.json)", p);
    PG_TRY(config_parse_json_file(p, &m->cfg, err));
    PG_TRY(st_generation_config(m, dir, err));
    PG_TRY(model_config_validate(&m->cfg, p, err));
    model_alloc_layers(m);

    /* ".../config.json" names the checkpoint folder */
    if (!is_dir && (ends_with(path, "/config.json") || !strcmp(path, "config.json"))) is_dir = 1;
    const char *where;  /* names the checkpoint in messages about missing tensors */
    char single[1200], index[1200];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    if (!is_dir && ends_with(path, ".json")) {
        where = path;
        PG_TRY(st_index(m, dir, path, err));
    } else if (!is_dir) {
        where = path;
        PG_TRY(st_file(m, path, err));
    } else if (exists(index)) {
        where = index;
        PG_TRY(st_index(m, dir, index, err));
    } else if (exists(single)) {
        where = single;
        PG_TRY(st_file(m, single, err));
    } else {
        return pg_errf(err, PG_EIO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    PG_TRY(model_finish_weights(m, where, MW_NAMES_HF, err));
    PG_TRY(st_tokenizer_config(m, dir, err));
    if (want_tok) {
        snprintf(p, sizeof p, "%s/tokenizer.model", dir);
        if (exists(p)) PG_TRY(model_load_tokenizer(m, p, err));
        else {
            snprintf(p, sizeof p, "%s/tokenizer.json", dir);
            if (exists(p)) PG_TRY(model_load_tokenizer(m, p, err));
            else {   /* a quantized checkpoint made from a GGUF file */
                snprintf(p, sizeof p, "%s/tokenizer.gguf", dir);
                if (exists(p)) PG_TRY(model_load_tokenizer(m, p, err));
            }
        }
    }
    return model_config_validate(&m->cfg, where, err);
}
