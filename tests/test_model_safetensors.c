/*
 * tests/test_model_safetensors.c — HF checkpoints (config.json + safetensors,
 * single file or sharded, F32/F16/BF16), their hostile variants, the presets
 * in configs/, HF config.json parsing, random weights, and tokenizers found
 * beside a checkpoint or given explicitly. Checkpoints are written by a small
 * writer here; tests/fixtures/hf/ (written by transformers' save_pretrained,
 * scripts/gen-hf-fixtures.py) are loaded as checkpoints from the reference.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "model_test_util.h"

TestSuite(model_st, .init = tmp_setup, .fini = tmp_teardown);

/* ---------------------------------------------------------------- safetensors */
static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
    " \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"vocab_size\": 256, \"max_position_embeddings\": 256,"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": %s,"
    " \"bos_token_id\": 1, \"eos_token_id\": [2, 5]}";

static void write_config(const char *dir, int tied) {
    char p[512], text[1024];
    snprintf(p, sizeof p, "%s/config.json", dir);
    snprintf(text, sizeof text, TINY_CONFIG, tied ? "true" : "false");
    write_text(p, text);
}

typedef struct { char name[80]; int64_t shape[2]; int nd; float *vals; size_t n; } st_t;

static int st_model_tensors(st_t *t, int with_head) {
    int n = 0;
#define ST_ADD(nm, r, c) do { snprintf(t[n].name, 80, "%s", nm); t[n].nd = (c) ? 2 : 1; \
        t[n].shape[0] = r; t[n].shape[1] = c; t[n].n = (size_t)(r) * ((c) ? (c) : 1); n++; } while (0)
    ST_ADD("model.embed_tokens.weight", TV, TD);
    ST_ADD("model.norm.weight", TD, 0);
    if (with_head) ST_ADD("lm_head.weight", TV, TD);
    char nm[80];
    for (int l = 0; l < TL; l++) {
#define ST_L(suf, r, c) do { snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suf); ST_ADD(nm, r, c); } while (0)
        ST_L("input_layernorm.weight", TD, 0);
        ST_L("self_attn.q_proj.weight", TD, TD);
        ST_L("self_attn.k_proj.weight", 32, TD);
        ST_L("self_attn.v_proj.weight", 32, TD);
        ST_L("self_attn.o_proj.weight", TD, TD);
        ST_L("post_attention_layernorm.weight", TD, 0);
        ST_L("mlp.gate_proj.weight", TH, TD);
        ST_L("mlp.up_proj.weight", TH, TD);
        ST_L("mlp.down_proj.weight", TD, TH);
    }
    pg_rng r;
    pg_rng_seed(&r, 5);
    for (int i = 0; i < n; i++) {
        t[i].vals = malloc(t[i].n * sizeof(float));
        for (size_t j = 0; j < t[i].n; j++) t[i].vals[j] = pg_rng_normal(&r);
    }
    return n;
}

static void st_free(st_t *t, int n) { for (int i = 0; i < n; i++) free(t[i].vals); }

/* Encode values in dtype ("F32", "F16", "BF16"); returns bytes written to out. */
static size_t encode(const char *dt, const float *v, size_t n, uint8_t *out) {
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(dt, "F32")) memcpy(out + 4 * i, &v[i], 4);
        else {
            uint16_t h = !strcmp(dt, "F16") ? pg_f32_to_f16(v[i]) : pg_f32_to_bf16(v[i]);
            memcpy(out + 2 * i, &h, 2);
        }
    }
    return n * (strcmp(dt, "F32") ? 2 : 4);
}

/* Write tensors [lo, hi) of t into one safetensors file. */
static void st_write(const char *path, st_t *t, int lo, int hi, const char *dt) {
    buf hdr = {0}, data = {0};
    put(&hdr, "{\"__metadata__\": {\"format\": \"pt\"}", 34);
    uint8_t *tmp = malloc(TV * TD * 4);
    for (int i = lo; i < hi; i++) {
        size_t nb = encode(dt, t[i].vals, t[i].n, tmp);
        char e[256];
        int k = t[i].nd == 2
                    ? snprintf(e, sizeof e, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [%lld, %lld], \"data_offsets\": [%zu, %zu]}",
                               t[i].name, dt, (long long)t[i].shape[0], (long long)t[i].shape[1], data.n, data.n + nb)
                    : snprintf(e, sizeof e, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [%lld], \"data_offsets\": [%zu, %zu]}",
                               t[i].name, dt, (long long)t[i].shape[0], data.n, data.n + nb);
        put(&hdr, e, (size_t)k);
        put(&data, tmp, nb);
    }
    put(&hdr, "}", 1);
    while (hdr.n % 8) put(&hdr, " ", 1);
    buf o = {0};
    put_u64(&o, hdr.n);
    put(&o, hdr.b, hdr.n);
    put(&o, data.b, data.n);
    write_file(path, o.b, o.n);
    free(tmp); free(hdr.b); free(data.b); free(o.b);
}

/* st_write for tensors whose first entry may be larger than TV x TD. */
static void st_write_big(const char *path, st_t *t, int n) {
    buf hdr = {0}, data = {0};
    put(&hdr, "{", 1);
    for (int i = 0; i < n; i++) {
        uint8_t *tmp = malloc(t[i].n * 2);
        size_t nb = encode("BF16", t[i].vals, t[i].n, tmp);
        char e[256];
        int k = t[i].nd == 2
                    ? snprintf(e, sizeof e, "%s\"%s\": {\"dtype\": \"BF16\", \"shape\": [%lld, %lld], \"data_offsets\": [%zu, %zu]}",
                               i ? ", " : "", t[i].name, (long long)t[i].shape[0], (long long)t[i].shape[1], data.n, data.n + nb)
                    : snprintf(e, sizeof e, "%s\"%s\": {\"dtype\": \"BF16\", \"shape\": [%lld], \"data_offsets\": [%zu, %zu]}",
                               i ? ", " : "", t[i].name, (long long)t[i].shape[0], data.n, data.n + nb);
        put(&hdr, e, (size_t)k);
        put(&data, tmp, nb);
        free(tmp);
    }
    put(&hdr, "}", 1);
    /* An odd header length is legal and leaves every tensor at an odd
     * address: the loader must copy them to aligned memory. */
    if (hdr.n % 2 == 0) put(&hdr, " ", 1);
    buf o = {0};
    put_u64(&o, hdr.n);
    put(&o, hdr.b, hdr.n);
    put(&o, data.b, data.n);
    write_file(path, o.b, o.n);
    free(hdr.b); free(data.b); free(o.b);
}

static void check_st_values(model *m, st_t *t, int n, const char *dt) {
    uint8_t *tmp = malloc(TV * TD * 4);
    for (int i = 0; i < n; i++) {
        int kind_found = 0;
        for (int j = 0; j < model_n_tensors(m); j++) {
            tensor *x = model_tensor(m, j);
            if (!x->name || strcmp(x->name, t[i].name)) continue;
            kind_found = 1;
            size_t nb = encode(dt, t[i].vals, t[i].n, tmp);
            cr_assert_eq(x->nbytes, nb, "%s", t[i].name);
            cr_assert_eq(memcmp(x->data, tmp, nb), 0, "%s", t[i].name);
            cr_assert_eq(x->rows, t[i].nd == 2 ? t[i].shape[0] : 1);
            cr_assert_eq(x->cols, t[i].nd == 2 ? t[i].shape[1] : t[i].shape[0]);
            /* and the values read back are the written floats (to dtype precision) */
            float got = !strcmp(dt, "F32") ? ((const float *)x->data)[7]
                        : !strcmp(dt, "F16") ? pg_f16_to_f32(((const uint16_t *)x->data)[7])
                                             : pg_bf16_to_f32(((const uint16_t *)x->data)[7]);
            float tol = !strcmp(dt, "F32") ? 0 : !strcmp(dt, "F16") ? 1e-3f : 1e-2f;
            cr_assert(fabsf(got - t[i].vals[7]) <= tol * fmaxf(1.0f, fabsf(t[i].vals[7])), "%s", t[i].name);
        }
        cr_assert(kind_found, "tensor %s not placed", t[i].name);
    }
    free(tmp);
}

Test(model_st, safetensors_single_file_each_dtype) {
    const char *dts[] = {"F32", "F16", "BF16"};
    for (int d = 0; d < 3; d++) {
        char dir[256];
        snprintf(dir, sizeof dir, "%s/tiny-%s", g_dir, dts[d]);
        mkdir(dir, 0755);
        write_config(dir, 0);
        st_t t[32];
        int n = st_model_tensors(t, 1);
        char p[512];
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        st_write(p, t, 0, n, dts[d]);
        model *m = NULL;
        pg_err err;
        cr_assert_eq(load_path(dir, &m, &err), PG_OK, "%s: %s", dts[d], err.msg);
        cr_assert_eq(m->cfg.rope_interleaved, 0);
        cr_assert_eq(m->cfg.tie_embeddings, 0);
        cr_assert_eq(m->cfg.n_eos, 2);
        cr_assert_eq(m->cfg.eos_ids[1], 5);
        cr_assert_null(m->tok);
        char want[64];
        snprintf(want, sizeof want, "tiny-%s", dts[d]);
        cr_assert_str_eq(m->name, want);
        check_st_values(m, t, n, dts[d]);
        model_free(m);
        /* the .safetensors path itself loads the same way */
        cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
        cr_assert_str_eq(m->name, want);
        model_free(m);
        st_free(t, n);
    }
}

Test(model_st, safetensors_sharded_tied_template) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/sharded", g_dir);
    mkdir(dir, 0755);
    write_config(dir, 1);
    st_t t[32];
    int n = st_model_tensors(t, 0);  /* no lm_head: tied */
    char p[512];
    int half = n / 2;
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    st_write(p, t, 0, half, "BF16");
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    st_write(p, t, half, n, "BF16");
    buf idx = {0};
    put(&idx, "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {", 47);
    for (int i = 0; i < n; i++) {
        char e[200];
        int k = snprintf(e, sizeof e, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "",
                         t[i].name, i < half ? 1 : 2);
        put(&idx, e, (size_t)k);
    }
    put(&idx, "}}", 2);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_file(p, idx.b, idx.n);
    free(idx.b);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    write_text(p, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
                  " {\"name\": \"default\", \"template\": \"{{ bos_token }}D\"}], \"add_bos_token\": true}");
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(dir, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(m->cfg.tie_embeddings, 1);
    cr_assert_eq(m->w.lm_head.data, m->w.tok_embd.data);
    cr_assert_str_eq(m->chat_template, "{{ bos_token }}D");
    cr_assert_eq(m->cfg.add_bos, 1);
    cr_assert_str_eq(m->name, "sharded");
    check_st_values(m, t, n, "BF16");
    model_free(m);
    /* the config.json path names the folder */
    snprintf(p, sizeof p, "%s/config.json", dir);
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    cr_assert(m->cfg.tie_embeddings);
    cr_assert_str_eq(m->name, "sharded");
    model_free(m);
    /* the index path loads too */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    model_free(m);
    st_free(t, n);
}

/* Checkpoints written by transformers' save_pretrained (another suite's
 * fixtures): each loads with the dtype, shapes and tying its config.json says. */
Test(model_st, transformers_written_checkpoints) {
    struct { const char *dir; pg_dtype dt; int tied, ffn, kv, head_dim, llama3; } f[] = {
        {"tests/fixtures/hf/mha-f32", PG_F32, 0, 176, 4, 16, 0},
        {"tests/fixtures/hf/gqa-bf16-tied", PG_BF16, 1, 128, 2, 16, 0},
        {"tests/fixtures/hf/llama3-f16", PG_F16, 0, 160, 1, 32, 1},
    };
    int seen = 0;
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        struct stat st;
        if (stat(f[i].dir, &st) != 0) continue;
        seen++;
        model *m = NULL;
        pg_err err;
        cr_assert_eq(load_path(f[i].dir, &m, &err), PG_OK, "%s", err.msg);
        cr_assert_eq(m->cfg.tie_embeddings, f[i].tied, "%s", f[i].dir);
        cr_assert_eq(m->cfg.hidden_dim, f[i].ffn);
        cr_assert_eq(m->cfg.n_kv_heads, f[i].kv);
        cr_assert_eq(m->cfg.head_dim, f[i].head_dim);
        cr_assert_eq(m->cfg.rope_llama3, f[i].llama3);
        cr_assert_eq(m->cfg.rope_interleaved, 0);
        for (int j = 0; j < model_n_tensors(m); j++) {
            tensor *t = model_tensor(m, j);
            cr_assert_eq(t->dtype, f[i].dt, "%s %s", f[i].dir, t->name);
            cr_assert_eq(t->nbytes, (size_t)(t->rows * t->cols) * (f[i].dt == PG_F32 ? 4 : 2));
        }
        cr_assert_eq(m->w.layers[1].w_down.cols, f[i].ffn);
        cr_assert_eq(m->w.layers[1].wk.rows, f[i].kv * f[i].head_dim);
        cr_assert_eq(m->w.lm_head.data == m->w.tok_embd.data, f[i].tied);
        model_free(m);
    }
    if (!seen) cr_skip("tests/fixtures/hf missing");
}

/* A one-file checkpoint in dir "name" whose header is `header` and data is
 * `data_len` bytes of zeros, with the tiny config beside it. */
static const char *st_raw(const char *name, const char *header, size_t data_len) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, name);
    mkdir(dir, 0755);
    write_config(dir, 1);
    static char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    buf o = {0};
    put_u64(&o, strlen(header));
    put(&o, header, strlen(header));
    uint8_t z[256] = {0};
    for (size_t i = 0; i < data_len; i += sizeof z) put(&o, z, data_len - i < sizeof z ? data_len - i : sizeof z);
    write_file(p, o.b, o.n);
    free(o.b);
    return p;
}

Test(model_st, safetensors_hostile_headers) {
    expect_fail(st_raw("badjson", "{\"a\": {\"dtype\": ", 16), PG_EFORMAT, "JSON");
    expect_fail(st_raw("notobj", "[1, 2, 3]", 16), PG_EFORMAT, "object");
    expect_fail(st_raw("range",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [0, 256]}}", 100),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("backwards",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [256, 0]}}", 300),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("sizes",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [0, 200]}}", 300),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("overlap",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [0, 256]},"
                       " \"model.layers.0.input_layernorm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [128, 384]}}",
                       512),
                PG_EFORMAT, "overlap");
    expect_fail(st_raw("negative",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [-64], \"data_offsets\": [0, 256]}}", 256),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("huge",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4], \"data_offsets\": [0, 256]}}",
                       256),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("i8",
                       "{\"model.norm.weight\": {\"dtype\": \"I8\", \"shape\": [64], \"data_offsets\": [0, 64]}}", 64),
                PG_EUNSUPPORTED, "model.norm.weight");
    expect_fail(st_raw("shape",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [65], \"data_offsets\": [0, 260]}}", 260),
                PG_EFORMAT, "model.norm.weight");
    expect_fail(st_raw("missing",
                       "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [64], \"data_offsets\": [0, 256]}}", 256),
                PG_EFORMAT, "model.embed_tokens.weight is missing");
    expect_fail(st_raw("noentry", "{\"model.norm.weight\": 5}", 8), PG_EFORMAT, "model.norm.weight");

    /* header length larger than the file */
    char dir[256], p[512];
    snprintf(dir, sizeof dir, "%s/hlen", g_dir);
    mkdir(dir, 0755);
    write_config(dir, 1);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    buf o = {0};
    put_u64(&o, (uint64_t)1 << 62);
    put(&o, "{}", 2);
    write_file(p, o.b, o.n);
    expect_fail(p, PG_EFORMAT, "header length");
    write_file(p, o.b, 5);  /* shorter than the length field */
    expect_fail(p, PG_EFORMAT, "truncated");
    free(o.b);
}

Test(model_st, safetensors_bad_config_and_index) {
    char dir[256], p[512];
    snprintf(dir, sizeof dir, "%s/cfg", g_dir);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_text(p, "\x02\0\0\0\0\0\0\0{}");
    expect_fail(dir, PG_EIO, "config.json");  /* no config.json */
    char c[512];
    snprintf(c, sizeof c, "%s/config.json", dir);
    write_text(c, "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64}");
    expect_fail(dir, PG_EUNSUPPORTED, "Qwen2ForCausalLM");
    write_text(c, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"vocab_size\": 256}");
    expect_fail(dir, PG_EFORMAT, "num_key_value_heads");
    write_text(c, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 256,"
                  " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}");
    expect_fail(dir, PG_EUNSUPPORTED, "yarn");
    write_text(c, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64.5}");
    expect_fail(dir, PG_EFORMAT, "hidden_size");
    write_text(c, "{not json");
    expect_fail(dir, PG_EFORMAT, "config.json");

    snprintf(dir, sizeof dir, "%s/idx", g_dir);
    mkdir(dir, 0755);
    write_config(dir, 1);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_text(p, "{\"weight_map\": {\"model.norm.weight\": \"../../etc/passwd\"}}");
    expect_fail(dir, PG_EFORMAT, "etc/passwd");
    write_text(p, "{\"weight_map\": {\"model.norm.weight\": \"absent.safetensors\"}}");
    expect_fail(dir, PG_EIO, "absent.safetensors");
    write_text(p, "{\"weight_map\": 3}");
    expect_fail(dir, PG_EFORMAT, "weight_map");
}

Test(model_st, safetensors_fuzz_header_bytes) {
    char dir[256], p[512];
    snprintf(dir, sizeof dir, "%s/fz", g_dir);
    mkdir(dir, 0755);
    write_config(dir, 0);
    st_t t[32];
    int n = st_model_tensors(t, 1);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write(p, t, 0, n, "BF16");
    st_free(t, n);
    char *orig;
    size_t len;
    pg_err err;
    cr_assert_eq(pg_read_file(p, &orig, &len, &err), PG_OK);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)orig[i];
    char *work = malloc(len);
    pg_rng r;
    pg_rng_seed(&r, 77);
    int rejected = 0;
    int iters = fuzz_iters(400);
    for (int it = 0; it < iters; it++) {
        memcpy(work, orig, len);
        int flips = 1 + (int)(pg_rng_u64(&r) % 3);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)(pg_rng_u64(&r) % (8 + hlen));
            const char pool[] = "0123456789[]{},:\"-.e ";
            work[at] = (pg_rng_u64(&r) & 1) ? pool[pg_rng_u64(&r) % (sizeof pool - 1)] : (char)pg_rng_u64(&r);
        }
        write_file(p, work, len);
        model *m = NULL;
        int rc = load_path(dir, &m, &err);
        if (rc == PG_OK) { model_free(m); continue; }
        rejected++;
        cr_assert(strstr(err.msg, dir), "iteration %d: %s", it, err.msg);
    }
    cr_log_info("safetensors fuzz: %d of %d rejected", rejected, iters);
    cr_assert(rejected > iters / 4);
    free(work);
    free(orig);
}

/* ---------------------------------------------------------------- presets */
Test(model_st, presets_load_and_validate) {
    struct { const char *name; int dim, hidden, layers, heads, kv, vocab, max_pos; float theta; int llama3, tied; } p[] = {
        {"llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 10000, 0, 0},
        {"llama-2-13b", 5120, 13824, 40, 40, 40, 32000, 4096, 10000, 0, 0},
        {"llama-2-70b", 8192, 28672, 80, 64, 8, 32000, 4096, 10000, 0, 0},
        {"mistral-7b", 4096, 14336, 32, 32, 8, 32000, 32768, 10000, 0, 0},
        {"llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 8192, 500000, 0, 0},
        {"llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256, 131072, 500000, 1, 0},
        {"llama-3.1-70b", 8192, 28672, 80, 64, 8, 128256, 131072, 500000, 1, 0},
        {"tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, 2048, 10000, 0, 0},
        {"smollm2-135m", 576, 1536, 30, 9, 3, 49152, 8192, 100000, 0, 1},
        {"tiny-llama", 64, 128, 2, 4, 2, 256, 256, 10000, 0, 0},
        {"tiny-llama3", 128, 320, 3, 4, 1, 512, 1024, 500000, 1, 1},
    };
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) {
        model_config c;
        pg_err err;
        cr_assert_eq(model_config_preset(p[i].name, &c, &err), PG_OK, "%s: %s", p[i].name, err.msg);
        cr_assert_eq(c.dim, p[i].dim, "%s", p[i].name);
        cr_assert_eq(c.hidden_dim, p[i].hidden, "%s", p[i].name);
        cr_assert_eq(c.n_layers, p[i].layers, "%s", p[i].name);
        cr_assert_eq(c.n_heads, p[i].heads, "%s", p[i].name);
        cr_assert_eq(c.n_kv_heads, p[i].kv, "%s", p[i].name);
        cr_assert_eq(c.vocab_size, p[i].vocab, "%s", p[i].name);
        cr_assert_eq(c.max_pos, p[i].max_pos, "%s", p[i].name);
        cr_assert_float_eq(c.rope_theta, p[i].theta, 1e-3, "%s", p[i].name);
        cr_assert_eq(c.rope_llama3, p[i].llama3, "%s", p[i].name);
        cr_assert_eq(c.tie_embeddings, p[i].tied, "%s", p[i].name);
        cr_assert_eq(c.rope_interleaved, 0);
        cr_assert_float_eq(c.norm_eps, 1e-5f, 1e-10, "%s", p[i].name);
        cr_assert(c.n_eos >= 1 && c.bos_id >= 0, "%s", p[i].name);
        if (p[i].llama3) {
            cr_assert_float_eq(c.rope_factor, 8.0f, 0);
            cr_assert_float_eq(c.rope_high_freq_factor, 4.0f, 0);
        }
    }
    model_config c;
    pg_err err;
    cr_assert_eq(model_config_preset("llama-3.1-8b", &c, &err), PG_OK);
    cr_assert_eq(c.rope_orig_max_pos, 8192);
    cr_assert_eq(c.head_dim, 128);
    cr_assert_eq(c.bos_id, 128000);
    cr_assert_eq(model_config_preset("no-such-model", &c, &err), PG_EIO);
    cr_assert(strstr(err.msg, "no-such-model"), "%s", err.msg);
    cr_assert_eq(model_config_preset("../etc/passwd", &c, &err), PG_EIO);  /* a path: read directly, absent */
    cr_assert_eq(model_config_preset("bad name!", &c, &err), PG_EINVAL);
    cr_assert_eq(model_config_preset("configs/tiny-llama.json", &c, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(c.dim, 64);
}

Test(model_st, hf_json_fields) {
    model_config c;
    pg_err err;
    const char *j = "{\"model_type\": \"mistral\", \"hidden_size\": 96, \"intermediate_size\": 64,"
                    " \"num_hidden_layers\": 1, \"num_attention_heads\": 6, \"vocab_size\": 100,"
                    " \"eos_token_id\": 7, \"tie_word_embeddings\": true}";
    cr_assert_eq(model_config_from_hf_json(j, strlen(j), "x.json", &c, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(c.n_kv_heads, 6);   /* defaults to heads */
    cr_assert_eq(c.head_dim, 16);    /* dim / heads */
    cr_assert_eq(c.max_pos, 2048);
    cr_assert_float_eq(c.rope_theta, 10000.0f, 0);
    cr_assert_eq(c.n_eos, 1);
    cr_assert_eq(c.eos_ids[0], 7);
    cr_assert_eq(c.bos_id, -1);
    /* transformers 5 writes RoPE settings as one rope_parameters object
     * (these two are LlamaConfig(...).to_json_string() from transformers 5.23) */
    const char *v5 = "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"bos_token_id\": 1,"
                     " \"eos_token_id\": 2, \"head_dim\": 16, \"hidden_act\": \"silu\", \"hidden_size\": 64,"
                     " \"intermediate_size\": 128, \"max_position_embeddings\": 131072, \"mlp_bias\": false,"
                     " \"model_type\": \"llama\", \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
                     " \"num_key_value_heads\": 2, \"pad_token_id\": null, \"rms_norm_eps\": 1e-06,"
                     " \"rope_parameters\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
                     " \"original_max_position_embeddings\": 8192, \"rope_theta\": 500000.0, \"rope_type\": \"llama3\"},"
                     " \"tie_word_embeddings\": false, \"transformers_version\": \"5.23.0\", \"vocab_size\": 100}";
    cr_assert_eq(model_config_from_hf_json(v5, strlen(v5), "v5.json", &c, &err), PG_OK, "%s", err.msg);
    cr_assert_float_eq(c.rope_theta, 500000.0f, 0);
    cr_assert_eq(c.rope_llama3, 1);
    cr_assert_float_eq(c.rope_factor, 8.0f, 0);
    cr_assert_eq(c.rope_orig_max_pos, 8192);
    cr_assert_float_eq(c.norm_eps, 1e-6f, 0);
    const char *v5d = "{\"hidden_size\": 64, \"intermediate_size\": 128, \"max_position_embeddings\": 2048,"
                      " \"model_type\": \"llama\", \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
                      " \"num_key_value_heads\": 4, \"rope_parameters\": {\"rope_theta\": 250000.0, \"rope_type\": \"default\"},"
                      " \"vocab_size\": 100}";
    cr_assert_eq(model_config_from_hf_json(v5d, strlen(v5d), "v5d.json", &c, &err), PG_OK, "%s", err.msg);
    cr_assert_float_eq(c.rope_theta, 250000.0f, 0);
    cr_assert_eq(c.rope_llama3, 0);
    const char *bad[] = {
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 64,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 5, \"vocab_size\": 100}",  /* 64 % 5 */
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 64,"
        " \"num_hidden_layers\": 0, \"num_attention_heads\": 4, \"vocab_size\": 100}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 64,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100, \"eos_token_id\": 100}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1e300, \"intermediate_size\": 64,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 64,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100, \"rms_norm_eps\": -1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = model_config_from_hf_json(bad[i], strlen(bad[i]), "bad.json", &c, &err);
        cr_assert_eq(rc, PG_EFORMAT, "case %zu: %s", i, err.msg);
        cr_assert(strstr(err.msg, "bad.json"), "%s", err.msg);
    }
    const char *act = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 64,"
                      " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100, \"hidden_act\": \"gelu\"}";
    cr_assert_eq(model_config_from_hf_json(act, strlen(act), "a.json", &c, &err), PG_EUNSUPPORTED);
}

/* ---------------------------------------------------------------- random weights */
static void stats(const tensor *t, double *mean, double *std) {
    size_t n = (size_t)(t->rows * t->cols);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        double v = t->dtype == PG_F32 ? ((const float *)t->data)[i] : pg_bf16_to_f32(((const uint16_t *)t->data)[i]);
        s += v;
        s2 += v * v;
    }
    *mean = s / (double)n;
    *std = sqrt(s2 / (double)n - *mean * *mean);
}

Test(model_st, random_weights) {
    model_load_opts o = {.random_preset = "tiny-llama", .seed = 1, .random_dtype = PG_F32};
    model *a = NULL, *b = NULL, *c = NULL;
    pg_err err;
    cr_assert_eq(model_load(&o, &a, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(model_load(&o, &b, &err), PG_OK, "%s", err.msg);
    o.seed = 2;
    cr_assert_eq(model_load(&o, &c, &err), PG_OK, "%s", err.msg);
    cr_assert_str_eq(a->name, "tiny-llama");
    cr_assert_str_eq(a->path, "random:tiny-llama");
    cr_assert(a->is_random);
    double mean, std;
    stats(&a->w.layers[1].w_up, &mean, &std);
    cr_assert(fabs(mean) < 0.002 && fabs(std - 0.02) < 0.001, "mean %g std %g", mean, std);
    stats(&a->w.layers[0].attn_norm, &mean, &std);
    cr_assert(fabs(mean - 1.0) < 0.01 && std > 0.01 && std < 0.03, "norm mean %g std %g", mean, std);
    for (int i = 0; i < model_n_tensors(a); i++) {
        tensor *x = model_tensor(a, i), *y = model_tensor(b, i), *z = model_tensor(c, i);
        cr_assert_eq(memcmp(x->data, y->data, x->nbytes), 0, "same seed differs at %s", x->name);
        cr_assert_neq(memcmp(x->data, z->data, x->nbytes), 0, "seed ignored at %s", x->name);
    }
    cr_assert_eq(model_weight_bytes(a), (size_t)4 * (2 * TV * TD + TD + TL * (2 * TD + 2 * TD * TD + 2 * 32 * TD + 3 * TH * TD)));
    model_free(a); model_free(b); model_free(c);

    model_load_opts t = {.random_preset = "tiny-llama3", .seed = 3, .random_dtype = PG_BF16};
    cr_assert_eq(model_load(&t, &a, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(a->cfg.tie_embeddings, 1);
    cr_assert_eq(a->w.lm_head.data, a->w.tok_embd.data);
    cr_assert_eq(a->w.layers[2].wk.rows, 32);
    cr_assert_eq(a->w.layers[2].wk.dtype, PG_BF16);
    stats(&a->w.tok_embd, &mean, &std);
    cr_assert(fabs(std - 0.02) < 0.001, "std %g", std);
    model_free(a);

    t.random_on_device = 1;
    cr_assert_eq(model_load(&t, &a, &err), PG_OK, "%s", err.msg);
    for (int i = 0; i < model_n_tensors(a); i++) {
        cr_assert_null(model_tensor(a, i)->data);
        cr_assert(model_tensor(a, i)->nbytes > 0);
    }
    model_free(a);

    t.random_dtype = PG_Q4_0;
    t.random_on_device = 0;
    cr_assert_eq(model_load(&t, &a, &err), PG_EINVAL);
    t.random_preset = "nope";
    t.random_dtype = PG_F32;
    cr_assert_eq(model_load(&t, &a, &err), PG_EIO);
    cr_assert_null(a);
}

/* ---------------------------------------------------------------- tokenizers */
Test(model_st, tokenizer_beside_and_override) {
    const char *spm = "tests/data/llama2-tokenizer.model";
    struct stat st;
    if (stat(spm, &st) != 0) cr_skip("tests/data/llama2-tokenizer.model missing");
    /* a checkpoint with the Llama 2 vocabulary (32000) and its tokenizer.model beside it */
    char dir[256], p[512];
    snprintf(dir, sizeof dir, "%s/llama2ish", g_dir);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
                  " \"vocab_size\": 32000, \"tie_word_embeddings\": true}");
    st_t t[32];
    int n = st_model_tensors(t, 0);
    t[0].shape[0] = 32000;  /* embed_tokens: 32000 x 64 */
    t[0].n = 32000 * TD;
    t[0].vals = realloc(t[0].vals, t[0].n * sizeof(float));
    for (size_t j = 0; j < t[0].n; j++) t[0].vals[j] = (float)(j % 97) * 0.01f;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write_big(p, t, n);
    char *data;
    size_t len;
    pg_err err;
    cr_assert_eq(pg_read_file(spm, &data, &len, &err), PG_OK);
    snprintf(p, sizeof p, "%s/tokenizer.model", dir);
    write_file(p, data, len);
    free(data);
    model *m = NULL;
    cr_assert_eq(load_path(dir, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_not_null(m->tok);
    /* config.json gave no ids: they come from the tokenizer (<s> 1, </s> 2) */
    cr_assert_eq(m->cfg.bos_id, 1);
    cr_assert_eq(m->cfg.n_eos, 1);
    cr_assert_eq(m->cfg.eos_ids[0], 2);
    cr_assert_eq(m->cfg.add_bos, 1);
    const uint16_t *e = m->w.tok_embd.data;
    cr_assert_eq((uintptr_t)e % 2, 0);
    for (size_t j = 0; j < t[0].n; j += 4099)
        cr_assert_eq(e[j], pg_f32_to_bf16((float)(j % 97) * 0.01f), "embedding element %zu", j);
    model_free(m);
    st_free(t, n);

    /* the same tokenizer forced onto a 256-token model is refused */
    snprintf(dir, sizeof dir, "%s/small", g_dir);
    mkdir(dir, 0755);
    write_config(dir, 0);
    n = st_model_tensors(t, 1);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write(p, t, 0, n, "F32");
    st_free(t, n);
    model_load_opts o = {.path = dir, .tokenizer_path = spm};
    cr_assert_eq(model_load(&o, &m, &err), PG_EFORMAT);
    cr_assert(strstr(err.msg, spm) && strstr(err.msg, "32000"), "%s", err.msg);
    cr_assert_null(m);
}

Test(model_st, random_weights_with_gguf_tokenizer) {
    char path[1024];
    if (!default_gguf(path, sizeof path)) cr_skip("default model missing (make model)");
    model_load_opts o = {.random_preset = "smollm2-135m", .seed = 9, .random_dtype = PG_BF16,
                         .random_on_device = 1, .tokenizer_path = path};
    model *m = NULL;
    pg_err err;
    cr_assert_eq(model_load(&o, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_not_null(m->tok);
    cr_assert_eq(tok_n_vocab(m->tok), 49152);
    cr_assert_eq(m->cfg.eos_ids[0], 2);
    cr_assert_eq(model_weight_bytes(m), (size_t)2 * (49152 * 576 + 576 + 30 * (2 * 576 + 576 * 576 * 2 + 2 * 192 * 576 + 3 * 1536 * 576)));
    char *text = NULL;
    size_t len = 0;
    FILE *mf = open_memstream(&text, &len);
    model_print_info(m, mf);
    fclose(mf);
    cr_assert(strstr(text, "random") && strstr(text, "BF16 x272"), "%s", text);
    free(text);
    model_free(m);
}

