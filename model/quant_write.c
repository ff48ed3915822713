/* model/quant_write.c — the quantized checkpoint writer behind
 * `peregrine quantize` (quant_write_checkpoint in quant.h; the reader is
 * model/safetensors.c). */
#include "loader.h"
#include "quant.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char        name[192];
    const char *dtype;     /* safetensors dtype name */
    int64_t     shape[2];
    int         n_dims;
    const void *data;
    size_t      bytes;
    int         esz;       /* element size: 4, 2 or 1 (tensors are written largest first, so all stay aligned) */
} qw_entry;

typedef struct {
    qw_entry *e;
    int       n, cap;
    void    **mem;         /* blocks of tensors converted from GGUF blocks */
    int       n_mem;
} qw_list;

static void list_add(qw_list *l, const char *name, const char *suffix, const char *dtype, int64_t r, int64_t c,
                     int n_dims, const void *data, size_t bytes, int esz) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->e = pg_xrealloc(l->e, (size_t)l->cap * sizeof *l->e);
    }
    qw_entry *e = &l->e[l->n++];
    snprintf(e->name, sizeof e->name, "%s%s", name, suffix);
    e->dtype = dtype;
    e->n_dims = n_dims;
    e->shape[0] = n_dims == 1 ? c : r;
    e->shape[1] = c;
    e->data = data;
    e->bytes = bytes;
    e->esz = esz;
}

/* One weight as file entries: QI8/QI4 as .q/.scale(/.min), GGUF blocks
 * converted exactly to QI8/QI4 group 32, plain dtypes as they are. */
static int add_tensor(qw_list *l, const tensor *t, const char *name, int vector, pg_err *err) {
    tensor q;
    if (t->dtype == PG_Q8_0 || t->dtype == PG_Q4_0 || t->dtype == PG_Q4_1) {
        void *mem;
        PG_TRY(quant_from_gguf(t, &q, &mem, err));
        l->mem = pg_xrealloc(l->mem, (size_t)(l->n_mem + 1) * sizeof *l->mem);
        l->mem[l->n_mem++] = mem;
        t = &q;
    }
    if (t->dtype == PG_QI8 || t->dtype == PG_QI4) {
        int64_t ng = t->cols / t->group;
        size_t pb = (size_t)t->rows * (size_t)ng * 2;
        int i4 = t->dtype == PG_QI4;
        list_add(l, name, ".q", i4 ? "U8" : "I8", t->rows, i4 ? t->cols / 2 : t->cols, 2, t->data, t->nbytes, 1);
        list_add(l, name, ".scale", "F16", t->rows, ng, 2, t->qscale, pb, 2);
        if (i4) list_add(l, name, ".min", "F16", t->rows, ng, 2, t->qmin, pb, 2);
        return PG_OK;
    }
    const char *dt = t->dtype == PG_F32 ? "F32" : t->dtype == PG_F16 ? "F16" : t->dtype == PG_BF16 ? "BF16" : NULL;
    if (!dt) return pg_errf(err, PG_EUNSUPPORTED, "quantize: tensor %s has dtype %s", name, pg_dtype_name(t->dtype));
    list_add(l, name, "", dt, t->rows, t->cols, vector ? 1 : 2, t->data, t->nbytes, t->dtype == PG_F32 ? 4 : 2);
    return PG_OK;
}

static int write_all(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }

static int write_text_file(const char *path, const char *text, size_t n, pg_err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    int ok = write_all(f, text, n);
    ok &= fclose(f) == 0;
    return ok ? PG_OK : pg_errf(err, PG_EIO, "%s: write failed", path);
}

static int write_safetensors(const char *path, const qw_list *l, cJSON *meta, pg_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "__metadata__", meta);
    uint64_t off = 0;
    int *order = pg_xmalloc(sizeof(int) * (size_t)(l->n ? l->n : 1)), k = 0;
    for (int esz = 4; esz >= 1; esz /= 2)
        for (int i = 0; i < l->n; i++) {
            const qw_entry *e = &l->e[i];
            if (e->esz != esz) continue;
            order[k++] = i;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "dtype", e->dtype);
            double sh[2] = {(double)e->shape[0], (double)e->shape[1]};
            cJSON_AddItemToObject(o, "shape", cJSON_CreateDoubleArray(e->n_dims == 1 ? sh + 1 : sh, e->n_dims));
            double of[2] = {(double)off, (double)(off + e->bytes)};
            cJSON_AddItemToObject(o, "data_offsets", cJSON_CreateDoubleArray(of, 2));
            cJSON_AddItemToObject(root, e->name, o);
            off += e->bytes;
        }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    PG_ASSERT(hdr && k == l->n);
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;   /* data starts 8-aligned */
    int rc = PG_OK;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = pg_errf(err, PG_EIO, "%s: %s", tmp, strerror(errno));
    } else {
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        int ok = write_all(f, len8, 8) && write_all(f, hdr, hl);
        for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
        for (int i = 0; ok && i < k; i++) ok = write_all(f, l->e[order[i]].data, l->e[order[i]].bytes);
        ok &= fclose(f) == 0;
        if (!ok) rc = pg_errf(err, PG_EIO, "%s: write failed (disk full?)", tmp);
        else if (rename(tmp, path) != 0) rc = pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
        if (rc) remove(tmp);
    }
    free(hdr);
    free(order);
    return rc;
}

static int write_config(const model *m, int tied, const char *quant_name, int group, int lm_head,
                        const char *path, pg_err *err) {
    const model_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject();
    const char *arch[] = {"LlamaForCausalLM"};
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(arch, 1));
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    cJSON_AddNumberToObject(o, "rms_norm_eps", (double)c->norm_eps);
    cJSON_AddNumberToObject(o, "rope_theta", (double)c->rope_theta);
    if (c->rope_llama3) {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", (double)c->rope_factor);
        cJSON_AddNumberToObject(rs, "low_freq_factor", (double)c->rope_low_freq_factor);
        cJSON_AddNumberToObject(rs, "high_freq_factor", (double)c->rope_high_freq_factor);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_orig_max_pos);
    }
    cJSON_AddBoolToObject(o, "tie_word_embeddings", tied);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    if (c->n_eos > 0) cJSON_AddItemToObject(o, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
    cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "peregrine-quant");
    cJSON_AddStringToObject(q, "weights", quant_name);
    if (group) cJSON_AddNumberToObject(q, "group_size", group);
    cJSON_AddBoolToObject(q, "quant_lm_head", lm_head);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    PG_ASSERT(text);
    int rc = write_text_file(path, text, strlen(text), err);
    free(text);
    return rc;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int copy_file(const char *from, const char *to, pg_err *err) {
    char *text;
    size_t n;
    PG_TRY(pg_read_file(from, &text, &n, err));
    int rc = write_text_file(to, text, n, err);
    free(text);
    return rc;
}

/* tokenizer.gguf: the source's 24-byte header with no tensors, then its
 * metadata entries byte for byte (vocabulary, merges, special ids, template). */
static int write_gguf_tokenizer(const char *src, const char *dst, pg_err *err) {
    model_mapping *mm = pg_xcalloc(1, sizeof *mm);   /* mm_free releases it */
    const uint8_t *p;
    size_t n, b, e;
    uint64_t nkv;
    int rc = mm_map_file(mm, src, &p, &n, err);
    if (!rc) rc = gguf_metadata_span(src, p, n, &nkv, &b, &e, err);
    if (!rc) {
        uint8_t h[24];
        memcpy(h, p, 8);   /* "GGUF", version */
        for (int i = 0; i < 8; i++) { h[8 + i] = 0; h[16 + i] = (uint8_t)(nkv >> (8 * i)); }
        FILE *f = fopen(dst, "wb");
        if (!f) rc = pg_errf(err, PG_EIO, "%s: %s", dst, strerror(errno));
        else {
            int ok = write_all(f, h, 24) && write_all(f, p + b, e - b);
            ok &= fclose(f) == 0;
            if (!ok) rc = pg_errf(err, PG_EIO, "%s: write failed", dst);
        }
    }
    mm_free(mm);
    return rc;
}

static int write_tokenizer(const model *m, const char *dir, pg_err *err) {
    char src[1100], dst[1400];
    snprintf(src, sizeof src, "%s", m->path);
    struct stat st;
    if (!m->tok || stat(src, &st) != 0) return PG_OK;   /* random weights: nothing to carry */
    int have_template_file = 0;
    uint8_t magic[4] = {0};
    FILE *f = S_ISREG(st.st_mode) ? fopen(src, "rb") : NULL;
    int is_gguf = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    if (f) fclose(f);
    if (is_gguf) {
        snprintf(dst, sizeof dst, "%s/tokenizer.gguf", dir);
        PG_TRY(write_gguf_tokenizer(src, dst, err));
    } else {
        if (S_ISREG(st.st_mode)) {   /* a file inside the checkpoint folder */
            char *slash = strrchr(src, '/');
            if (slash) *slash = 0;
            else snprintf(src, sizeof src, ".");
        }
        static const char *const files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                            "generation_config.json", "special_tokens_map.json",
                                            "chat_template.jinja"};
        for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
            char from[1400];
            snprintf(from, sizeof from, "%s/%s", src, files[i]);
            if (!is_file(from)) continue;
            snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
            PG_TRY(copy_file(from, dst, err));
            have_template_file |= i == 2 || i == 5;
        }
    }
    if (m->chat_template && !have_template_file) {
        snprintf(dst, sizeof dst, "%s/chat_template.jinja", dir);
        PG_TRY(write_text_file(dst, m->chat_template, strlen(m->chat_template), err));
    }
    return PG_OK;
}

int quant_write_checkpoint(const model *m, const quant_weights *qw, const char *quant_name, int group,
                           int lm_head, const char *dir, pg_err *err) {
    if (strlen(dir) > 1000) return pg_errf(err, PG_EINVAL, "%s: path too long", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return pg_errf(err, PG_EIO, "%s: %s", dir, strerror(errno));
    model view = *m;   /* model_tensor over qw's weights */
    view.w = qw->w;
    const int tied = qw->w.lm_head.data == qw->w.tok_embd.data;
    qw_list l;
    memset(&l, 0, sizeof l);
    int rc = PG_OK;
    for (int i = 0; i < model_n_tensors(m) && !rc; i++) {
        int kind = i < MW_N_GLOBAL ? i : MW_N_GLOBAL + (i - MW_N_GLOBAL) % MW_N_PER_LAYER;
        int layer = i < MW_N_GLOBAL ? 0 : (i - MW_N_GLOBAL) / MW_N_PER_LAYER;
        if (kind == MW_LM_HEAD && tied) continue;
        char name[160];
        model_slot_name(kind, layer, MW_NAMES_HF, name, sizeof name);
        rc = add_tensor(&l, model_tensor(&view, i), name, model_kind_is_vector(kind), err);
    }
    char path[1100];
    if (!rc) {
        cJSON *meta = cJSON_CreateObject();
        char g[16];
        snprintf(g, sizeof g, "%d", group);
        const char *base = strrchr(m->path, '/');
        cJSON_AddStringToObject(meta, "format", "peregrine-quant");
        cJSON_AddStringToObject(meta, "version", "1");
        cJSON_AddStringToObject(meta, "quant", quant_name);
        cJSON_AddStringToObject(meta, "group_size", group ? g : "per-channel");
        cJSON_AddStringToObject(meta, "quant_lm_head", lm_head ? "1" : "0");
        cJSON_AddStringToObject(meta, "rope_interleaved", m->cfg.rope_interleaved ? "1" : "0");
        cJSON_AddStringToObject(meta, "source", base ? base + 1 : m->path);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = write_safetensors(path, &l, meta, err);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        rc = write_config(m, tied, quant_name, group, lm_head, path, err);
    }
    if (!rc) rc = write_tokenizer(m, dir, err);
    for (int i = 0; i < l.n_mem; i++) free(l.mem[i]);
    free(l.mem);
    free(l.e);
    return rc;
}
