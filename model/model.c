/*
 * model/model.c — model_load() dispatch, the default model path, random
 * weights, the weight-slot table shared by the readers, model_free and
 * model_print_info.
 */
#include "loader.h"
#include "quant.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- mapping */
int mm_map_file(model_mapping *mm, const char *path, const uint8_t **data, size_t *size,
                pg_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return pg_errf(err, PG_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pg_errf(err, PG_EIO, "%s: not a regular file", path);
    }
    if (st.st_size <= 0) {
        close(fd);
        return pg_errf(err, PG_EFORMAT, "%s: empty file", path);
    }
    size_t len = (size_t)st.st_size;
    void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return pg_errf(err, PG_EIO, "%s: mmap of %zu bytes failed: %s", path, len, strerror(e));
    if (mm->n_maps == mm->cap_maps) {
        mm->cap_maps = mm->cap_maps ? 2 * mm->cap_maps : 4;
        mm->maps = pg_xrealloc(mm->maps, (size_t)mm->cap_maps * sizeof *mm->maps);
    }
    mm->maps[mm->n_maps++] = (mm_region){p, len};
    *data = p;
    *size = len;
    return PG_OK;
}

void *mm_alloc(model_mapping *mm, size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) return NULL;
    if (mm->n_bufs == mm->cap_bufs) {
        mm->cap_bufs = mm->cap_bufs ? 2 * mm->cap_bufs : 16;
        mm->bufs = pg_xrealloc(mm->bufs, (size_t)mm->cap_bufs * sizeof *mm->bufs);
    }
    mm->bufs[mm->n_bufs++] = p;
    return p;
}

char *mm_strndup(model_mapping *mm, const char *s, size_t n) {
    char *d = mm_alloc(mm, n + 1);
    if (!d) PG_DIE("out of memory copying a %zu-byte name", n);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

void mm_free(model_mapping *mm) {
    if (!mm) return;
    for (int i = 0; i < mm->n_maps; i++) munmap(mm->maps[i].addr, mm->maps[i].len);
    for (int i = 0; i < mm->n_bufs; i++) free(mm->bufs[i]);
    free(mm->maps);
    free(mm->bufs);
    free(mm);
}

void model_printable(const void *s, size_t n, char *out, size_t cap) {
    const unsigned char *p = s;
    size_t o = 0;
    if (!cap) return;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        if (o + 4 >= cap && i + 1 < n) {  /* leave room for "..." */
            while (o + 4 > cap) o--;
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        out[o++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    }
    out[o] = 0;
}

/* ---------------------------------------------------------------- slots */
static const char *const g_gguf_names[MW_KIND_COUNT] = {
    "token_embd.weight", "output_norm.weight", "output.weight",
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
    "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
};
static const char *const g_hf_names[MW_KIND_COUNT] = {
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
};

void model_slot_name(int kind, int layer, mw_name_style style, char *out, size_t cap) {
    PG_ASSERT(kind >= 0 && kind < MW_KIND_COUNT);
    const char *const *t = style == MW_NAMES_GGUF ? g_gguf_names : g_hf_names;
    if (kind < MW_N_GLOBAL) snprintf(out, cap, "%s", t[kind]);
    else snprintf(out, cap, "%s%d.%s", style == MW_NAMES_GGUF ? "blk." : "model.layers.", layer, t[kind]);
}

int model_slot_parse(const char *name, size_t n, mw_name_style style, int *kind, int *layer) {
    const char *const *t = style == MW_NAMES_GGUF ? g_gguf_names : g_hf_names;
    for (int k = 0; k < MW_N_GLOBAL; k++)
        if (strlen(t[k]) == n && !memcmp(name, t[k], n)) { *kind = k; *layer = 0; return 1; }
    const char *pre = style == MW_NAMES_GGUF ? "blk." : "model.layers.";
    size_t pl = strlen(pre), i = pl;
    if (n <= pl || memcmp(name, pre, pl)) return 0;
    int l = 0, digits = 0;
    while (i < n && name[i] >= '0' && name[i] <= '9' && digits < 6) { l = l * 10 + (name[i] - '0'); i++; digits++; }
    if (!digits || i >= n || name[i] != '.') return 0;
    if (digits > 1 && name[pl] == '0') return 0;  /* "blk.01." is not a layer name */
    i++;
    for (int k = MW_N_GLOBAL; k < MW_KIND_COUNT; k++)
        if (strlen(t[k]) == n - i && !memcmp(name + i, t[k], n - i)) { *kind = k; *layer = l; return 1; }
    return 0;
}

int model_kind_is_vector(int kind) {
    return kind == MW_OUT_NORM || kind == MW_ATTN_NORM || kind == MW_FFN_NORM;
}

void model_expected_shape(const model_config *c, int kind, int64_t *rows, int64_t *cols) {
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t r = 1, k = c->dim;
    switch (kind) {
    case MW_TOK_EMBD: case MW_LM_HEAD: r = c->vocab_size; break;
    case MW_OUT_NORM: case MW_ATTN_NORM: case MW_FFN_NORM: r = 1; break;
    case MW_WQ: r = q; break;
    case MW_WK: case MW_WV: r = kv; break;
    case MW_WO: r = c->dim; k = q; break;
    case MW_GATE: case MW_UP: r = c->hidden_dim; break;
    case MW_DOWN: r = c->dim; k = c->hidden_dim; break;
    default: PG_DIE("bad weight kind %d", kind);
    }
    *rows = r;
    *cols = k;
}

tensor *model_slot(model *m, int kind, int layer) {
    switch (kind) {
    case MW_TOK_EMBD: return &m->w.tok_embd;
    case MW_OUT_NORM: return &m->w.out_norm;
    case MW_LM_HEAD: return &m->w.lm_head;
    default: break;
    }
    PG_ASSERT(m->w.layers && layer >= 0 && layer < m->cfg.n_layers);
    layer_weights *L = &m->w.layers[layer];
    switch (kind) {
    case MW_ATTN_NORM: return &L->attn_norm;
    case MW_WQ: return &L->wq;
    case MW_WK: return &L->wk;
    case MW_WV: return &L->wv;
    case MW_WO: return &L->wo;
    case MW_FFN_NORM: return &L->ffn_norm;
    case MW_GATE: return &L->w_gate;
    case MW_UP: return &L->w_up;
    case MW_DOWN: return &L->w_down;
    default: PG_DIE("bad weight kind %d", kind);
    }
}

void model_alloc_layers(model *m) {
    PG_ASSERT(!m->w.layers && m->cfg.n_layers > 0);
    m->w.layers = pg_xcalloc((size_t)m->cfg.n_layers, sizeof *m->w.layers);
}

int model_n_tensors(const model *m) { return MW_N_GLOBAL + MW_N_PER_LAYER * m->cfg.n_layers; }

tensor *model_tensor(model *m, int i) {
    PG_ASSERT(i >= 0 && i < model_n_tensors(m));
    if (i < MW_N_GLOBAL) return model_slot(m, i, 0);
    i -= MW_N_GLOBAL;
    return model_slot(m, MW_N_GLOBAL + i % MW_N_PER_LAYER, i / MW_N_PER_LAYER);
}

int model_place_tensor(model *m, int kind, int layer, pg_dtype dt, int64_t rows, int64_t cols,
                       const void *data, size_t nbytes, const char *name, const char *path,
                       pg_err *err) {
    if (kind >= MW_N_GLOBAL && (layer < 0 || layer >= m->cfg.n_layers))
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s is for layer %d but the model has %d layers",
                       path, name, layer, m->cfg.n_layers);
    tensor *t = model_slot(m, kind, layer);
    if (t->name) return pg_errf(err, PG_EFORMAT, "%s: tensor %s appears twice", path, name);
    if (model_kind_is_vector(kind) && pg_dtype_block(dt) != 1)
        return pg_errf(err, PG_EUNSUPPORTED, "%s: tensor %s: %s is not supported for a norm vector",
                       path, name, pg_dtype_name(dt));
    int64_t er, ec;
    model_expected_shape(&m->cfg, kind, &er, &ec);
    if (rows != er || cols != ec)
        return pg_errf(err, PG_EFORMAT,
                       "%s: tensor %s has shape [%lld, %lld] (rows, cols) but the config needs [%lld, %lld]",
                       path, name, (long long)rows, (long long)cols, (long long)er, (long long)ec);
    size_t rb = pg_dtype_row_bytes(dt, cols), want;
    if (!rb)
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s: %lld columns is not a multiple of the %s block (%d)",
                       path, name, (long long)cols, pg_dtype_name(dt), pg_dtype_block(dt));
    if (pg_mul_overflow(rb, (size_t)rows, &want) || want != nbytes)
        return pg_errf(err, PG_EFORMAT, "%s: tensor %s holds %zu bytes, its shape needs %zu",
                       path, name, nbytes, want);
    *t = (tensor){.dtype = dt, .rows = rows, .cols = cols, .data = data, .nbytes = nbytes, .name = name};
    return PG_OK;
}

int model_finish_weights(model *m, const char *path, mw_name_style style, pg_err *err) {
    char nm[96];
    for (int i = 0; i < model_n_tensors(m); i++) {
        if (i == MW_LM_HEAD) continue;
        tensor *t = model_tensor(m, i);
        if (!t->name) {
            int kind = i < MW_N_GLOBAL ? i : MW_N_GLOBAL + (i - MW_N_GLOBAL) % MW_N_PER_LAYER;
            int layer = i < MW_N_GLOBAL ? 0 : (i - MW_N_GLOBAL) / MW_N_PER_LAYER;
            model_slot_name(kind, layer, style, nm, sizeof nm);
            return pg_errf(err, PG_EFORMAT, "%s: tensor %s is missing", path, nm);
        }
    }
    if (!m->w.lm_head.name || m->cfg.tie_embeddings) {
        m->w.lm_head = m->w.tok_embd;
        m->cfg.tie_embeddings = 1;
    }
    return PG_OK;
}

/* ---------------------------------------------------------------- lifetime */
void model_release(model *m) {
    if (!m) return;
    if (m->tok) tok_free(m->tok);
    free(m->chat_template);
    free(m->w.layers);
    mm_free(m->mapping);
    memset(m, 0, sizeof *m);
}

void model_free(model *m) {
    if (!m) return;
    model_release(m);
    free(m);
}

void model_sync_tokenizer(model *m) {
    if (!m->tok) return;
    model_config *c = &m->cfg;
    int bos = tok_bos_id(m->tok), eos = tok_eos_id(m->tok);
    if (c->bos_id < 0 && bos >= 0 && bos < c->vocab_size) c->bos_id = bos;
    if (c->n_eos == 0 && eos >= 0 && eos < c->vocab_size) c->eos_ids[c->n_eos++] = eos;
    c->add_bos = tok_add_bos(m->tok);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int model_load_tokenizer(model *m, const char *path, pg_err *err) {
    tok_tokenizer *t = NULL;
    int rc;
    if (ends_with(path, ".json")) rc = tok_load_hf_json(path, &t, err);
    else if (ends_with(path, ".gguf")) {
        /* The tokenizer of another GGUF model (e.g. random weights with the
         * default model's vocabulary): load that file and keep its tokenizer. */
        model tmp;
        memset(&tmp, 0, sizeof tmp);
        tmp.mapping = pg_xcalloc(1, sizeof *tmp.mapping);
        /* a file with no tensors: the tokenizer.gguf of a quantized checkpoint */
        uint8_t h[24];
        FILE *f = fopen(path, "rb");
        int vocab_only = f && fread(h, 1, sizeof h, f) == sizeof h && !memcmp(h, "GGUF", 4) &&
                         !memcmp(h + 8, "\0\0\0\0\0\0\0\0", 8);
        if (f) fclose(f);
        rc = vocab_only ? gguf_load_vocab(path, &tmp, err) : gguf_load(path, &tmp, 1, err);
        if (!rc && !tmp.tok) rc = pg_errf(err, PG_EFORMAT, "%s: the file has no tokenizer", path);
        if (!rc) { t = tmp.tok; tmp.tok = NULL; }
        model_release(&tmp);
    } else rc = tok_load_sentencepiece(path, &t, err);
    if (rc) return rc;
    /* Token ids index the embedding: a tokenizer larger than the vocabulary
     * would read past tok_embd. */
    if (tok_n_vocab(t) > m->cfg.vocab_size) {
        int n = tok_n_vocab(t);
        tok_free(t);
        return pg_errf(err, PG_EFORMAT, "%s: tokenizer has %d tokens but the model's vocabulary is %d",
                       path, n, m->cfg.vocab_size);
    }
    if (m->tok) tok_free(m->tok);
    m->tok = t;
    model_sync_tokenizer(m);
    return PG_OK;
}

int model_default_path(char *out, size_t cap, pg_err *err) {
    const char *cache = getenv("PEREGRINE_CACHE");
    char dir[900];
    if (cache && *cache) snprintf(dir, sizeof dir, "%s", cache);
    else {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return pg_errf(err, PG_EINVAL, "default model: neither PEREGRINE_CACHE nor HOME is set");
        snprintf(dir, sizeof dir, "%s/.cache/peregrine", home);
    }
    int n = snprintf(out, cap, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
    if (n < 0 || (size_t)n >= cap) return pg_errf(err, PG_EINVAL, "default model path is too long");
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISREG(st.st_mode))
        return pg_errf(err, PG_EIO, "default model %s is missing: run `make model` to fetch it", out);
    return PG_OK;
}

/* "dir/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1";
 * "dir/Llama-2-7b/" or "dir/Llama-2-7b/model.safetensors" -> "Llama-2-7b". */
static void name_from_path(const char *path, char *out, size_t cap) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    const char *exts[] = {".gguf", ".safetensors.index.json", ".safetensors", ".json"};
    int stripped = 0;
    for (size_t i = 0; i < sizeof exts / sizeof *exts && !stripped; i++)
        if (ends_with(base, exts[i]) && strlen(base) > strlen(exts[i])) {
            base[strlen(base) - strlen(exts[i])] = 0;
            stripped = 1;
        }
    /* HF file names say nothing ("model", "model-00001-of-00002"): use the folder. */
    if (((!strncmp(base, "model", 5) && (base[5] == 0 || base[5] == '-')) || !strcmp(base, "config")) &&
        base != buf) {
        base[-1] = 0;
        char *dir = strrchr(buf, '/');
        base = dir ? dir + 1 : buf;
    }
    snprintf(out, cap, "%.*s", (int)(cap - 1), *base ? base : "model");
}

/* ---------------------------------------------------------------- random */
/* n values mean + std * N(0, 1) as f32 or bf16. Box-Muller with both outputs
 * of each pair (pg_rng_normal keeps one): half the logs and square roots. */
static void fill_normal(void *dst, pg_dtype dt, size_t n, float mean, float std, pg_rng *r) {
    for (size_t j = 0; j < n; j += 2) {
        float u1 = pg_rng_uniform(r), u2 = pg_rng_uniform(r);
        if (u1 < 1e-12f) u1 = 1e-12f;
        float rad = std * sqrtf(-2.0f * logf(u1)), a = 6.2831853071795864f * u2;
        float v[2] = {mean + rad * cosf(a), mean + rad * sinf(a)};
        for (size_t k = 0; k < 2 && j + k < n; k++) {
            if (dt == PG_F32) ((float *)dst)[j + k] = v[k];
            else ((uint16_t *)dst)[j + k] = pg_f32_to_bf16(v[k]);
        }
    }
}

/* Tensor i's stream: seeded from (seed, i) so a tensor's values do not depend
 * on which other tensors exist (tied or not). */
static uint64_t tensor_seed(uint64_t seed, int i) {
    return seed ^ ((uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull);
}

static int random_init(const char *preset, uint64_t seed, pg_dtype dtype, int on_device, model *m,
                       pg_err *err) {
    if (dtype != PG_F32 && dtype != PG_BF16)
        return pg_errf(err, PG_EINVAL, "random weights: dtype %s (only F32 or BF16)", pg_dtype_name(dtype));
    if (!m->mapping) m->mapping = pg_xcalloc(1, sizeof *m->mapping);
    PG_TRY(model_config_preset(preset, &m->cfg, err));
    m->is_random = 1;
    m->random_seed = seed;
    snprintf(m->path, sizeof m->path, "random:%s", preset);
    name_from_path(preset, m->name, sizeof m->name);
    model_alloc_layers(m);
    size_t esz = dtype == PG_F32 ? 4 : 2;
    for (int i = 0; i < model_n_tensors(m); i++) {
        if (i == MW_LM_HEAD && m->cfg.tie_embeddings) continue;
        int kind = i < MW_N_GLOBAL ? i : MW_N_GLOBAL + (i - MW_N_GLOBAL) % MW_N_PER_LAYER;
        int layer = i < MW_N_GLOBAL ? 0 : (i - MW_N_GLOBAL) / MW_N_PER_LAYER;
        int64_t rows, cols;
        model_expected_shape(&m->cfg, kind, &rows, &cols);
        size_t n = (size_t)rows * (size_t)cols, bytes;  /* validated config: no overflow */
        if (pg_mul_overflow(n, esz, &bytes))
            return pg_errf(err, PG_ENOMEM, "random weights: tensor %d is too large", i);
        char nm[96];
        model_slot_name(kind, layer, MW_NAMES_GGUF, nm, sizeof nm);
        void *data = NULL;
        if (!on_device) {
            data = mm_alloc(m->mapping, bytes);
            if (!data)
                return pg_errf(err, PG_ENOMEM, "random weights: cannot allocate %zu bytes for %s", bytes, nm);
            pg_rng r;
            pg_rng_seed(&r, tensor_seed(seed, i));
            /* Matrices ~ N(0, 0.02); norm weights 1 + N(0, 0.02) (not a constant,
             * so a kernel that ignores them is caught). */
            fill_normal(data, dtype, n, model_kind_is_vector(kind) ? 1.0f : 0.0f, 0.02f, &r);
        }
        PG_TRY(model_place_tensor(m, kind, layer, dtype, rows, cols, data, bytes,
                                  mm_strndup(m->mapping, nm, strlen(nm)), m->path, err));
    }
    return model_finish_weights(m, m->path, MW_NAMES_GGUF, err);
}

/* ---------------------------------------------------------------- public readers */
int model_init_random(const char *preset, uint64_t seed, pg_dtype dtype, int on_device, model *m,
                      pg_err *err) {
    int rc = random_init(preset, seed, dtype, on_device, m, err);
    if (rc) model_release(m);
    return rc;
}

int model_load_gguf(const char *path, model *m, pg_err *err) {
    if (!m->mapping) m->mapping = pg_xcalloc(1, sizeof *m->mapping);
    int rc = gguf_load(path, m, 1, err);
    if (rc) model_release(m);
    return rc;
}

int model_load_safetensors(const char *path, model *m, pg_err *err) {
    if (!m->mapping) m->mapping = pg_xcalloc(1, sizeof *m->mapping);
    int rc = st_load(path, m, 1, err);
    if (rc) model_release(m);
    return rc;
}

/* ---------------------------------------------------------------- model_load */
static int load_file(const char *path, int want_tok, model *m, pg_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    snprintf(m->path, sizeof m->path, "%s", path);
    name_from_path(path, m->name, sizeof m->name);
    if (S_ISDIR(st.st_mode)) return st_load(path, m, want_tok, err);
    if (!S_ISREG(st.st_mode)) return pg_errf(err, PG_EIO, "%s: not a regular file", path);
    unsigned char magic[9] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    if (n < 0) return pg_errf(err, PG_EIO, "%s: %s", path, strerror(errno));
    if (n >= 4 && !memcmp(magic, "GGUF", 4)) return gguf_load(path, m, want_tok, err);
    if (ends_with(path, ".safetensors") || ends_with(path, ".json") || (n == 9 && magic[8] == '{'))
        return st_load(path, m, want_tok, err);
    return pg_errf(err, PG_EFORMAT,
                   "%s: not a GGUF file (magic %02x %02x %02x %02x, want \"GGUF\") nor a safetensors file",
                   path, magic[0], magic[1], magic[2], magic[3]);
}

int model_load(const model_load_opts *opts, model **out, pg_err *err) {
    *out = NULL;
    if (!opts) return pg_errf(err, PG_EINVAL, "model_load: no options");
    model *m = pg_xcalloc(1, sizeof *m);
    m->mapping = pg_xcalloc(1, sizeof *m->mapping);
    int rc;
    if (opts->random_preset) {
        rc = model_init_random(opts->random_preset, opts->seed, opts->random_dtype,
                               opts->random_on_device, m, err);
    } else {
        char def[1024];
        const char *path = opts->path;
        if (!path || !*path || !strcmp(path, "default")) {
            rc = model_default_path(def, sizeof def, err);
            path = def;
        } else rc = PG_OK;
        if (!rc) rc = load_file(path, opts->tokenizer_path == NULL, m, err);
    }
    if (!rc && opts->tokenizer_path) rc = model_load_tokenizer(m, opts->tokenizer_path, err);
    if (!rc) rc = model_config_validate(&m->cfg, m->path, err);
    if (rc) { model_free(m); return rc; }
    *out = m;
    return PG_OK;
}

/* ---------------------------------------------------------------- info */
size_t model_weight_bytes(const model *m) {
    size_t total = 0;
    model *mm = (model *)m;  /* model_tensor does not modify */
    for (int i = 0; i < model_n_tensors(m); i++) {
        if (i == MW_LM_HEAD && m->cfg.tie_embeddings) continue;
        total += quant_held_bytes(model_tensor(mm, i));   /* QI8/QI4: with their parameters */
    }
    return total;
}

static void print_bytes(FILE *f, double b) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024.0 && i < 4) { b /= 1024.0; i++; }
    fprintf(f, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

void model_print_info(const model *m, FILE *f) {
    const model_config *c = &m->cfg;
    fprintf(f, "model       %s\n", m->name);
    fprintf(f, "path        %s\n", m->path);
    if (m->is_random) fprintf(f, "weights     random (normal, std 0.02), seed %llu\n", (unsigned long long)m->random_seed);
    fprintf(f, "arch        %s: %d layers, dim %d, ffn %d, heads %d (kv %d, head_dim %d), vocab %d\n",
            c->arch, c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim,
            c->vocab_size);
    fprintf(f, "context     %d positions; rope theta %g, %s pairs", c->max_pos, (double)c->rope_theta,
            c->rope_interleaved ? "adjacent" : "half-split");
    if (c->rope_llama3)
        fprintf(f, "; llama3 scaling factor %g (low %g, high %g, original %d)", (double)c->rope_factor,
                (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor, c->rope_orig_max_pos);
    fprintf(f, "\nnorm        rms eps %g; embeddings %s\n", (double)c->norm_eps, c->tie_embeddings ? "tied" : "separate lm_head");
    fprintf(f, "tokens      bos %d (%s when encoding), eos", c->bos_id, c->add_bos ? "added" : "not added");
    for (int i = 0; i < c->n_eos; i++) fprintf(f, " %d", c->eos_ids[i]);
    fprintf(f, "; tokenizer %s; chat template %s\n", m->tok ? "loaded" : "none",
            m->chat_template ? "from the file" : "none");

    int count[PG_DTYPE_COUNT] = {0};
    size_t bytes[PG_DTYPE_COUNT] = {0};
    int n = 0;
    for (int i = 0; i < model_n_tensors(m); i++) {
        if (i == MW_LM_HEAD && c->tie_embeddings) continue;
        const tensor *t = model_tensor((model *)m, i);
        if ((unsigned)t->dtype >= PG_DTYPE_COUNT) continue;
        count[t->dtype]++;
        bytes[t->dtype] += t->nbytes;
        n++;
    }
    size_t wb = model_weight_bytes(m);
    fprintf(f, "tensors     %d", n);
    for (int d = 0; d < PG_DTYPE_COUNT; d++) {
        if (!count[d]) continue;
        fprintf(f, "; %s x%d = ", pg_dtype_name((pg_dtype)d), count[d]);
        print_bytes(f, (double)bytes[d]);
    }
    fprintf(f, "\nweights     ");
    print_bytes(f, (double)wb);
    fprintf(f, " (%zu bytes)\n", wb);
    /* KV per token: K and V, every layer, every kv head. int8 keeps one f32
     * scale per (token, head) for K and for V. */
    double kv_elems = 2.0 * c->n_layers * c->n_kv_heads * c->head_dim;
    double per_tok[3] = {kv_elems * 4, kv_elems * 2, kv_elems + 2.0 * c->n_layers * c->n_kv_heads * 4};
    const char *names[3] = {"f32", "bf16", "int8"};
    fprintf(f, "kv cache    per token:");
    for (int i = 0; i < 3; i++) { fprintf(f, " %s ", names[i]); print_bytes(f, per_tok[i]); }
    fprintf(f, "\n            at %d positions (one slot):", c->max_pos);
    for (int i = 0; i < 3; i++) { fprintf(f, " %s ", names[i]); print_bytes(f, per_tok[i] * c->max_pos); }
    fprintf(f, "\nmemory      weights + one full-context slot: bf16 KV ");
    print_bytes(f, (double)wb + per_tok[1] * c->max_pos);
    fprintf(f, ", int8 KV ");
    print_bytes(f, (double)wb + per_tok[2] * c->max_pos);
    fprintf(f, "\n");
}
