/*
 * model/config.c — model_config from HF config.json text, named presets in
 * configs/, and the one validation routine every reader calls.
 *
 * HF field names are used everywhere (presets are config.json files), so a
 * preset and a downloaded checkpoint go through the same parser.
 * Ignored fields, on purpose:
 *   - Mistral's sliding_window: Mistral-7B-v0.1 attends within a 4096-token
 *     window; we attend to the whole context, which equals the reference up
 *     to 4096 tokens and differs after that (v0.2+ sets it to null).
 *   - torch_dtype, initializer_range, use_cache, pretraining_tp (1 in every
 *     released checkpoint), pad_token_id.
 * Fields that change the math and that we do not implement are refused:
 * attention_bias / mlp_bias true, hidden_act other than silu, rope_scaling
 * other than llama3.
 */
#include "loader.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PG_PREFIX
#define PG_PREFIX "/usr/local"
#endif

/* Upper bounds that keep every derived size far from overflow (int64 element
 * counts, int indices) while allowing any real Llama-family model. */
#define CFG_MAX_DIM     (1 << 17)
#define CFG_MAX_HIDDEN  (1 << 20)
#define CFG_MAX_LAYERS  4096
#define CFG_MAX_HEADS   4096
#define CFG_MAX_HEADDIM 4096
#define CFG_MAX_VOCAB   (1 << 24)
#define CFG_MAX_POS     (1 << 24)

/* ---------------------------------------------------------------- validate */
int model_config_validate(model_config *c, const char *what, pg_err *err) {
    if (!what) what = "config";
    if (!c->arch[0]) snprintf(c->arch, sizeof c->arch, "llama");
#define CHECK_RANGE(field, lo, hi, name)                                                   \
    if ((c->field) < (lo) || (c->field) > (hi))                                            \
        return pg_errf(err, PG_EFORMAT, "%s: %s = %lld is outside [%lld, %lld]", what, name, \
                       (long long)(c->field), (long long)(lo), (long long)(hi));
    CHECK_RANGE(dim, 1, CFG_MAX_DIM, "hidden_size");
    CHECK_RANGE(hidden_dim, 1, CFG_MAX_HIDDEN, "intermediate_size");
    CHECK_RANGE(n_layers, 1, CFG_MAX_LAYERS, "num_hidden_layers");
    CHECK_RANGE(n_heads, 1, CFG_MAX_HEADS, "num_attention_heads");
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    CHECK_RANGE(n_kv_heads, 1, c->n_heads, "num_key_value_heads");
    if (c->n_heads % c->n_kv_heads)
        return pg_errf(err, PG_EFORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       what, c->n_heads, c->n_kv_heads);
    if (c->head_dim == 0) {
        if (c->dim % c->n_heads)
            return pg_errf(err, PG_EFORMAT,
                           "%s: hidden_size %d is not a multiple of num_attention_heads %d "
                           "and head_dim is not given", what, c->dim, c->n_heads);
        c->head_dim = c->dim / c->n_heads;
    }
    CHECK_RANGE(head_dim, 2, CFG_MAX_HEADDIM, "head_dim");
    if (c->head_dim % 2)
        return pg_errf(err, PG_EFORMAT, "%s: head_dim %d is odd (RoPE rotates pairs)", what,
                       c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > CFG_MAX_DIM * 4)
        return pg_errf(err, PG_EFORMAT, "%s: num_attention_heads * head_dim = %lld is too large",
                       what, (long long)c->n_heads * c->head_dim);
    CHECK_RANGE(vocab_size, 1, CFG_MAX_VOCAB, "vocab_size");
    CHECK_RANGE(max_pos, 1, CFG_MAX_POS, "max_position_embeddings");
#undef CHECK_RANGE
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return pg_errf(err, PG_EFORMAT, "%s: rms_norm_eps %g is not in (0, 1)", what,
                       (double)c->norm_eps);
    if (!(c->rope_theta > 1.0f && isfinite(c->rope_theta)))
        return pg_errf(err, PG_EFORMAT, "%s: rope_theta %g must be a finite number > 1", what,
                       (double)c->rope_theta);
    if (c->rope_interleaved != 0 && c->rope_interleaved != 1)
        return pg_errf(err, PG_EINVAL, "%s: rope_interleaved must be 0 or 1", what);
    if (c->rope_llama3) {
        if (!(c->rope_factor >= 1.0f && c->rope_factor <= 1024.0f))
            return pg_errf(err, PG_EFORMAT, "%s: rope_scaling.factor %g is not in [1, 1024]",
                           what, (double)c->rope_factor);
        if (!(c->rope_low_freq_factor > 0.0f && c->rope_high_freq_factor > c->rope_low_freq_factor &&
              isfinite(c->rope_high_freq_factor)))
            return pg_errf(err, PG_EFORMAT,
                           "%s: rope_scaling needs 0 < low_freq_factor (%g) < high_freq_factor (%g)",
                           what, (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor);
        if (c->rope_orig_max_pos < 1 || c->rope_orig_max_pos > CFG_MAX_POS)
            return pg_errf(err, PG_EFORMAT,
                           "%s: rope_scaling.original_max_position_embeddings %d is out of range",
                           what, c->rope_orig_max_pos);
    }
    if (c->bos_id < -1 || c->bos_id >= c->vocab_size)
        return pg_errf(err, PG_EFORMAT, "%s: bos_token_id %d is outside the vocabulary (%d)", what,
                       c->bos_id, c->vocab_size);
    if (c->n_eos < 0 || c->n_eos > MODEL_MAX_EOS)
        return pg_errf(err, PG_EFORMAT, "%s: %d eos ids (at most %d)", what, c->n_eos,
                       MODEL_MAX_EOS);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab_size)
            return pg_errf(err, PG_EFORMAT, "%s: eos_token_id %d is outside the vocabulary (%d)",
                           what, c->eos_ids[i], c->vocab_size);
    return PG_OK;
}

/* ---------------------------------------------------------------- HF JSON */
/* Integer field: absent -> *out = def and PG_OK when !required. */
static int json_int(const cJSON *o, const char *key, int required, long long def, long long lo,
                    long long hi, const char *path, long long *out, pg_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return pg_errf(err, PG_EFORMAT, "%s: missing field \"%s\"", path, key);
        *out = def;
        return PG_OK;
    }
    if (!cJSON_IsNumber(v))
        return pg_errf(err, PG_EFORMAT, "%s: field \"%s\" is not a number", path, key);
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return pg_errf(err, PG_EFORMAT, "%s: field \"%s\" = %g is not an integer", path, key, d);
    if (d < (double)lo || d > (double)hi)
        return pg_errf(err, PG_EFORMAT, "%s: field \"%s\" = %.0f is outside [%lld, %lld]", path,
                       key, d, lo, hi);
    *out = (long long)d;
    return PG_OK;
}

static int json_float(const cJSON *o, const char *key, double def, const char *path, double *out,
                      pg_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return PG_OK; }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return pg_errf(err, PG_EFORMAT, "%s: field \"%s\" is not a finite number", path, key);
    *out = v->valuedouble;
    return PG_OK;
}

static int json_bool(const cJSON *o, const char *key, int def, const char *path, int *out,
                     pg_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = def; return PG_OK; }
    if (!cJSON_IsBool(v)) return pg_errf(err, PG_EFORMAT, "%s: field \"%s\" is not a boolean", path, key);
    *out = cJSON_IsTrue(v);
    return PG_OK;
}

/*
 * RoPE: transformers < 5 writes "rope_theta" and "rope_scaling" at the top
 * level; transformers 5 writes one "rope_parameters" object holding
 * rope_theta, rope_type and the scaling fields. Top-level fields win.
 */
static int parse_rope(const cJSON *root, const char *path, model_config *c, pg_err *err) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp))
        return pg_errf(err, PG_EFORMAT, "%s: rope_parameters is not an object", path);
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    double theta = 10000.0;
    PG_TRY(json_float(rp ? rp : root, "rope_theta", 10000.0, path, &theta, err));
    if (rp) PG_TRY(json_float(root, "rope_theta", theta, path, &theta, err));
    c->rope_theta = (float)theta;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) rs = rp;
    if (!rs) return PG_OK;
    if (!cJSON_IsObject(rs))
        return pg_errf(err, PG_EFORMAT, "%s: rope_scaling is not an object", path);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(t)) {
        if (rs == rp) return PG_OK;  /* rope_parameters with only rope_theta */
        return pg_errf(err, PG_EFORMAT, "%s: rope_scaling has no rope_type", path);
    }
    if (!strcmp(t->valuestring, "default")) return PG_OK;
    if (strcmp(t->valuestring, "llama3")) {
        char name[64];
        model_printable(t->valuestring, strlen(t->valuestring), name, sizeof name);
        return pg_errf(err, PG_EUNSUPPORTED,
                       "%s: rope_scaling type \"%s\" is not supported (only \"llama3\")", path, name);
    }
    double f = 0, lo = 0, hi = 0;
    long long orig = 0;
    PG_TRY(json_float(rs, "factor", 8.0, path, &f, err));
    PG_TRY(json_float(rs, "low_freq_factor", 1.0, path, &lo, err));
    PG_TRY(json_float(rs, "high_freq_factor", 4.0, path, &hi, err));
    PG_TRY(json_int(rs, "original_max_position_embeddings", 1, 0, 1, CFG_MAX_POS, path, &orig, err));
    c->rope_llama3 = 1;
    c->rope_factor = (float)f;
    c->rope_low_freq_factor = (float)lo;
    c->rope_high_freq_factor = (float)hi;
    c->rope_orig_max_pos = (int)orig;
    return PG_OK;
}

int config_add_eos_json(const cJSON *v, const char *path, model_config *c, pg_err *err) {
    if (!v || cJSON_IsNull(v)) return PG_OK;
    const cJSON *e;
    if (cJSON_IsNumber(v)) e = v;
    else if (cJSON_IsArray(v)) e = v->child;
    else return pg_errf(err, PG_EFORMAT, "%s: eos_token_id is neither an integer nor a list", path);
    for (; e; e = cJSON_IsArray(v) ? e->next : NULL) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble > CFG_MAX_VOCAB)
            return pg_errf(err, PG_EFORMAT, "%s: eos_token_id entry is not a token id", path);
        int id = (int)e->valuedouble, dup = 0;
        for (int i = 0; i < c->n_eos; i++) dup |= c->eos_ids[i] == id;
        if (dup) continue;
        if (c->n_eos >= MODEL_MAX_EOS)
            return pg_errf(err, PG_EFORMAT, "%s: more than %d eos_token_id values", path, MODEL_MAX_EOS);
        c->eos_ids[c->n_eos++] = id;
    }
    return PG_OK;
}

int model_config_from_hf_json(const char *json, size_t len, const char *path, model_config *cfg,
                              pg_err *err) {
    if (!path) path = "config.json";
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return pg_errf(err, PG_EFORMAT, "%s: not valid JSON", path);
    int rc = PG_OK;
    model_config c;
    memset(&c, 0, sizeof c);
    if (!cJSON_IsObject(root)) { rc = pg_errf(err, PG_EFORMAT, "%s: not a JSON object", path); goto done; }

    /* Architecture: "architectures": ["LlamaForCausalLM"], else "model_type". */
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *arch = NULL;
    if (cJSON_IsArray(archs) && cJSON_IsString(archs->child)) arch = archs->child->valuestring;
    else if (cJSON_IsString(mt)) arch = mt->valuestring;
    if (!arch) { rc = pg_errf(err, PG_EFORMAT, "%s: no \"architectures\" or \"model_type\"", path); goto done; }
    if (strcmp(arch, "LlamaForCausalLM") && strcmp(arch, "MistralForCausalLM") &&
        strcmp(arch, "llama") && strcmp(arch, "mistral")) {
        char name[64];
        model_printable(arch, strlen(arch), name, sizeof name);
        rc = pg_errf(err, PG_EUNSUPPORTED,
                     "%s: architecture \"%s\" is not supported (LlamaForCausalLM, MistralForCausalLM)",
                     path, name);
        goto done;
    }
    snprintf(c.arch, sizeof c.arch, "llama");

    long long v = 0;
#define GET_INT(key, req, def, lo, hi, field)                                              \
    if ((rc = json_int(root, key, req, def, lo, hi, path, &v, err))) goto done;           \
    c.field = (int)v;
    GET_INT("hidden_size", 1, 0, 1, CFG_MAX_DIM, dim);
    GET_INT("intermediate_size", 1, 0, 1, CFG_MAX_HIDDEN, hidden_dim);
    GET_INT("num_hidden_layers", 1, 0, 1, CFG_MAX_LAYERS, n_layers);
    GET_INT("num_attention_heads", 1, 0, 1, CFG_MAX_HEADS, n_heads);
    GET_INT("num_key_value_heads", 0, 0, 1, CFG_MAX_HEADS, n_kv_heads);
    GET_INT("head_dim", 0, 0, 1, CFG_MAX_HEADDIM, head_dim);
    GET_INT("vocab_size", 1, 0, 1, CFG_MAX_VOCAB, vocab_size);
    /* 2048 is transformers' LlamaConfig default. */
    GET_INT("max_position_embeddings", 0, 2048, 1, CFG_MAX_POS, max_pos);
    GET_INT("bos_token_id", 0, -1, -1, CFG_MAX_VOCAB, bos_id);
#undef GET_INT
    double d = 0;
    if ((rc = json_float(root, "rms_norm_eps", 1e-6, path, &d, err))) goto done;
    c.norm_eps = (float)d;
    if ((rc = json_bool(root, "tie_word_embeddings", 0, path, &c.tie_embeddings, err))) goto done;
    if ((rc = parse_rope(root, path, &c, err))) goto done;
    if ((rc = config_add_eos_json(cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), path, &c, err)))
        goto done;

    int bias = 0;
    if ((rc = json_bool(root, "attention_bias", 0, path, &bias, err))) goto done;
    if (!bias && (rc = json_bool(root, "mlp_bias", 0, path, &bias, err))) goto done;
    if (bias) { rc = pg_errf(err, PG_EUNSUPPORTED, "%s: attention_bias/mlp_bias are not supported", path); goto done; }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))) {
        rc = pg_errf(err, PG_EUNSUPPORTED, "%s: hidden_act must be \"silu\"", path);
        goto done;
    }
    /* HF checkpoints use rotate_half pairs (i, i + head_dim/2). */
    c.rope_interleaved = 0;
    c.add_bos = c.bos_id >= 0;
    if ((rc = model_config_validate(&c, path, err))) goto done;
    *cfg = c;
done:
    cJSON_Delete(root);
    return rc;
}

int config_parse_json_file(const char *path, model_config *cfg, pg_err *err) {
    char *text = NULL;
    size_t len = 0;
    PG_TRY(pg_read_file(path, &text, &len, err));
    int rc = model_config_from_hf_json(text, len, path, cfg, err);
    free(text);
    return rc;
}

/* ---------------------------------------------------------------- presets */
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int model_config_preset(const char *name, model_config *cfg, pg_err *err) {
    if (!name || !*name) return pg_errf(err, PG_EINVAL, "empty preset name");
    if (ends_with(name, ".json") || strchr(name, '/')) {
        if (!is_file(name)) return pg_errf(err, PG_EIO, "%s: no such config file", name);
        return config_parse_json_file(name, cfg, err);
    }
    /* Names are plain file stems: no path separators, nothing hidden. */
    int bad = name[0] == '.';
    for (const char *p = name; *p; p++)
        bad |= !(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
                 *p == '-' || *p == '_' || *p == '.');
    if (bad)
        return pg_errf(err, PG_EINVAL, "preset name \"%.64s\" has characters other than "
                           "letters, digits, '-', '_', '.'", name);
    char dirs[4][1024];
    int nd = 0;
    const char *env = getenv("PEREGRINE_CONFIGS");
    if (env && *env) snprintf(dirs[nd++], sizeof dirs[0], "%s", env);
    snprintf(dirs[nd++], sizeof dirs[0], "configs");
    char exe[900];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) { *slash = 0; snprintf(dirs[nd++], sizeof dirs[0], "%s/../configs", exe); }
    }
    snprintf(dirs[nd++], sizeof dirs[0], "%s/share/peregrine/configs", PG_PREFIX);
    char path[2200];
    for (int i = 0; i < nd; i++) {
        int w = snprintf(path, sizeof path, "%s/%.1000s.json", dirs[i], name);
        if (w > 0 && (size_t)w < sizeof path && is_file(path)) return config_parse_json_file(path, cfg, err);
    }
    return pg_errf(err, PG_EIO,
                   "preset \"%s\" not found (looked in $PEREGRINE_CONFIGS, ./configs, "
                   "<binary>/../configs, %s/share/peregrine/configs)", name, PG_PREFIX);
}
