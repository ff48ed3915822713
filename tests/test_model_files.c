/*
 * tests/test_model_files.c — the GGUF reader: the default GGUF, small GGUF
 * files written here by a tiny writer, and hostile files (truncated at every
 * length, lying offsets, huge counts, wrong shapes/dtypes/architectures,
 * byte-flip fuzzing, also through the real tokenizer). Every hostile case must
 * return the right pg_status with a message naming the file (and the tensor or
 * field), never crash or read out of bounds (run under SAN=1 too).
 * Safetensors, presets and random weights: test_model_safetensors.c.
 *
 * Goldens for the default model (offsets, sizes) come from the reference GGUF
 * reader (python gguf-py GGUFReader on SmolLM2-135M-Instruct.Q4_1.gguf).
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

/* ---------------------------------------------------------------- GGUF writer */
enum { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_Q4_K = 12, T_BF16 = 30 };
enum { V_U32 = 4, V_I32 = 5, V_F32 = 6, V_BOOL = 7, V_STR = 8, V_ARR = 9, V_U8 = 0 };


typedef struct {
    const char *arch;       /* general.architecture; default "llama" */
    int tied;               /* omit output.weight */
    int version;            /* default 3 */
    const char *bad_type_name; uint32_t bad_type;  /* give this tensor another type id */
    const char *lie_name;   /* this tensor's offset points past the end */
    const char *shape_name; /* this tensor gets one row too many */
    const char *drop_name;  /* leave this tensor out */
    const char *extra_name; /* an extra 2-D tensor with this name (F32 [64, 64]) */
    int overlap;            /* second tensor shares the first one's data */
    int misalign;           /* first tensor's offset + 4 */
    uint64_t n_tensors_override, n_kv_override;
    uint64_t huge_array, huge_str;  /* a metadata array / key with this length */
    const float *rope_freqs;        /* add rope_freqs.weight (F32 [8]) with these values */
} gg_spec;

typedef struct { char name[64]; int nd; uint64_t ne[2]; uint32_t type; uint64_t off, nbytes; } gg_t;

static uint64_t type_bytes(uint32_t t, uint64_t ne0, uint64_t ne1) {
    switch (t) {
    case T_F32: return ne0 * ne1 * 4;
    case T_F16: case T_BF16: return ne0 * ne1 * 2;
    case T_Q8_0: return ne0 / 32 * 34 * ne1;
    case T_Q4_0: return ne0 / 32 * 18 * ne1;
    case T_Q4_1: return ne0 / 32 * 20 * ne1;
    case T_Q4_K: return ne0 / 256 * 144 * ne1;
    default: return ne0 * ne1;
    }
}

static int gg_tensors(const gg_spec *s, gg_t *t) {
    int n = 0;
#define ADD(nm, d0, d1, ty) do { snprintf(t[n].name, 64, "%s", nm); t[n].nd = (d1) ? 2 : 1; \
        t[n].ne[0] = d0; t[n].ne[1] = (d1) ? (d1) : 1; t[n].type = ty; n++; } while (0)
    ADD("token_embd.weight", TD, TV, T_Q8_0);
    ADD("output_norm.weight", TD, 0, T_F32);
    if (!s->tied) ADD("output.weight", TD, TV, T_Q4_1);
    char nm[64];
    for (int l = 0; l < TL; l++) {
#define L_ADD(suf, d0, d1, ty) do { snprintf(nm, sizeof nm, "blk.%d.%s", l, suf); ADD(nm, d0, d1, ty); } while (0)
        L_ADD("attn_norm.weight", TD, 0, T_F32);
        L_ADD("attn_q.weight", TD, TD, T_Q4_1);
        L_ADD("attn_k.weight", TD, 32, T_Q4_1);
        L_ADD("attn_v.weight", TD, 32, T_Q4_0);
        L_ADD("attn_output.weight", TD, TD, T_F16);
        L_ADD("ffn_norm.weight", TD, 0, T_F32);
        L_ADD("ffn_gate.weight", TD, TH, T_BF16);
        L_ADD("ffn_up.weight", TD, TH, T_Q4_1);
        L_ADD("ffn_down.weight", TH, TD, T_F32);
    }
    if (s->extra_name) ADD(s->extra_name, TD, TD, T_F32);
    if (s->rope_freqs) ADD("rope_freqs.weight", 8, 0, T_F32);
    int k = 0;
    for (int i = 0; i < n; i++) {  /* mutations */
        if (s->drop_name && !strcmp(t[i].name, s->drop_name)) continue;
        t[k] = t[i];
        if (s->bad_type_name && !strcmp(t[k].name, s->bad_type_name)) t[k].type = s->bad_type;
        if (s->shape_name && !strcmp(t[k].name, s->shape_name)) t[k].ne[t[k].nd - 1] += 1;
        k++;
    }
    return k;
}

/* Writes the file; returns the data section's start. */
static size_t gg_write(const char *path, const gg_spec *s, buf *out_copy) {
    gg_t t[64];
    int nt = gg_tensors(s, t);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        t[i].nbytes = type_bytes(t[i].type, t[i].ne[0], t[i].ne[1]);
        t[i].off = off;
        off += (t[i].nbytes + 31) / 32 * 32;
    }
    if (s->overlap) t[1].off = t[0].off;
    if (s->misalign) t[0].off += 4;
    if (s->lie_name)
        for (int i = 0; i < nt; i++)
            if (!strcmp(t[i].name, s->lie_name)) t[i].off = off + 4096;

    buf kv = {0};
    int n_kv = 0;
#define KV_U32(k, v) do { put_str(&kv, k); put_u32(&kv, V_U32); put_u32(&kv, v); n_kv++; } while (0)
#define KV_F32(k, v) do { put_str(&kv, k); put_u32(&kv, V_F32); put_f32(&kv, v); n_kv++; } while (0)
#define KV_STR(k, v) do { put_str(&kv, k); put_u32(&kv, V_STR); put_str(&kv, v); n_kv++; } while (0)
    KV_STR("general.architecture", s->arch ? s->arch : "llama");
    KV_STR("general.name", "tiny test model");
    KV_U32("llama.block_count", TL);
    KV_U32("llama.context_length", 256);
    KV_U32("llama.embedding_length", TD);
    KV_U32("llama.feed_forward_length", TH);
    KV_U32("llama.attention.head_count", 4);
    KV_U32("llama.attention.head_count_kv", 2);
    KV_F32("llama.rope.freq_base", 10000.0f);
    KV_F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    KV_U32("llama.rope.dimension_count", 16);
    KV_U32("general.alignment", 32);
    /* a nested array, to walk a skipped value of every shape */
    put_str(&kv, "test.nested");
    put_u32(&kv, V_ARR); put_u32(&kv, V_ARR); put_u64(&kv, 2);
    for (int i = 0; i < 2; i++) { put_u32(&kv, V_STR); put_u64(&kv, 2); put_str(&kv, "a"); put_str(&kv, "bc"); }
    n_kv++;
    /* token list: ids 0..3 special, then printable stand-ins */
    put_str(&kv, "tokenizer.ggml.tokens");
    put_u32(&kv, V_ARR); put_u32(&kv, V_STR); put_u64(&kv, TV);
    for (int i = 0; i < TV; i++) {
        char tk[16];
        const char *sp[] = {"<unk>", "<s>", "</s>", "<|im_end|>"};
        if (i < 4) snprintf(tk, sizeof tk, "%s", sp[i]); else snprintf(tk, sizeof tk, "t%d", i);
        put_str(&kv, tk);
    }
    n_kv++;
    KV_U32("tokenizer.ggml.bos_token_id", 1);
    KV_U32("tokenizer.ggml.eos_token_id", 2);
    KV_STR("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}");
    if (s->huge_array) {
        put_str(&kv, "test.huge");
        put_u32(&kv, V_ARR); put_u32(&kv, V_U8); put_u64(&kv, s->huge_array);
        put_u32(&kv, 0);
        n_kv++;
    }
    if (s->huge_str) {
        put_u64(&kv, s->huge_str);
        put(&kv, "x", 1);
        n_kv++;
    }

    buf o = {0};
    put(&o, "GGUF", 4);
    put_u32(&o, s->version ? (uint32_t)s->version : 3);
    put_u64(&o, s->n_tensors_override ? s->n_tensors_override : (uint64_t)nt);
    put_u64(&o, s->n_kv_override ? s->n_kv_override : (uint64_t)n_kv);
    put(&o, kv.b, kv.n);
    free(kv.b);
    for (int i = 0; i < nt; i++) {
        put_str(&o, t[i].name);
        put_u32(&o, (uint32_t)t[i].nd);
        for (int d = 0; d < t[i].nd; d++) put_u64(&o, t[i].ne[d]);
        put_u32(&o, t[i].type);
        put_u64(&o, t[i].off);
    }
    while (o.n % 32) put(&o, "", 1);
    size_t data_off = o.n;
    pg_rng r;
    pg_rng_seed(&r, 42);
    for (uint64_t i = 0; i < off; i++) { uint8_t b = (uint8_t)pg_rng_u64(&r); put(&o, &b, 1); }
    for (int i = 0; i < nt && s->rope_freqs; i++)
        if (!strcmp(t[i].name, "rope_freqs.weight")) memcpy(o.b + data_off + t[i].off, s->rope_freqs, 32);
    write_file(path, o.b, o.n);
    if (out_copy) *out_copy = o;
    else free(o.b);
    return data_off;
}

static size_t gg_write_default(const char *path, buf *copy) {
    gg_spec s = {0};
    return gg_write(path, &s, copy);
}

/* ---------------------------------------------------------------- default GGUF */
TestSuite(model_files, .init = tmp_setup, .fini = tmp_teardown);

Test(model_files, default_gguf_loads_with_expected_config) {
    char path[1024];
    if (!default_gguf(path, sizeof path)) cr_skip("default model missing (make model)");
    model *m = NULL;
    pg_err err;
    model_load_opts o = {0};  /* NULL path = the default model */
    cr_assert_eq(model_load(&o, &m, &err), PG_OK, "%s", err.msg);
    const model_config *c = &m->cfg;
    cr_assert_str_eq(c->arch, "llama");
    cr_assert_eq(c->n_layers, 30);
    cr_assert_eq(c->dim, 576);
    cr_assert_eq(c->hidden_dim, 1536);
    cr_assert_eq(c->n_heads, 9);
    cr_assert_eq(c->n_kv_heads, 3);
    cr_assert_eq(c->head_dim, 64);
    cr_assert_eq(c->vocab_size, 49152);
    cr_assert_eq(c->max_pos, 8192);
    cr_assert_float_eq(c->rope_theta, 100000.0f, 1e-3);
    cr_assert_float_eq(c->norm_eps, 1e-5f, 1e-9);
    cr_assert_eq(c->rope_interleaved, 1);
    cr_assert_eq(c->rope_llama3, 0);
    cr_assert_eq(c->tie_embeddings, 1);
    cr_assert_eq(c->bos_id, 1);
    cr_assert_eq(c->n_eos, 1);  /* eos 2 is <|im_end|> already */
    cr_assert_eq(c->eos_ids[0], 2);
    cr_assert_str_eq(m->name, "SmolLM2-135M-Instruct.Q4_1");
    cr_assert_not_null(m->chat_template);
    cr_assert(strstr(m->chat_template, "<|im_start|>") != NULL);
    cr_assert_not_null(m->tok);
    cr_assert_eq(c->add_bos, 0);  /* tokenizer.ggml.add_bos_token = false */

    cr_assert_eq(m->w.tok_embd.dtype, PG_Q8_0);
    cr_assert_eq(m->w.tok_embd.rows, 49152);
    cr_assert_eq(m->w.tok_embd.cols, 576);
    cr_assert_eq(m->w.tok_embd.nbytes, 30081024u);
    cr_assert_eq(m->w.lm_head.data, m->w.tok_embd.data);
    cr_assert_eq(m->w.out_norm.dtype, PG_F32);
    for (int l = 0; l < 30; l++) {
        const layer_weights *L = &m->w.layers[l];
        const tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) cr_assert_eq(mats[i]->dtype, PG_Q4_1, "layer %d %s", l, mats[i]->name);
        cr_assert_eq(L->attn_norm.dtype, PG_F32);
        cr_assert_eq(L->ffn_norm.dtype, PG_F32);
    }
    cr_assert_eq(m->w.layers[0].wk.rows, 192);
    cr_assert_eq(m->w.layers[0].wk.cols, 576);
    cr_assert_eq(m->w.layers[0].wk.nbytes, 69120u);
    cr_assert_eq(m->w.layers[0].w_down.rows, 576);
    cr_assert_eq(m->w.layers[0].w_down.cols, 1536);
    cr_assert_str_eq(m->w.layers[0].wk.name, "blk.0.attn_k.weight");

    /* data points at the bytes gguf-py reports: token_embd at 1785664,
     * blk.0.attn_k at 33530176 */
    FILE *f = fopen(path, "rb");
    uint8_t want[64];
    cr_assert_eq(fseek(f, 1785664, SEEK_SET), 0);
    cr_assert_eq(fread(want, 1, 64, f), 64u);
    cr_assert_eq(memcmp(want, m->w.tok_embd.data, 64), 0);
    cr_assert_eq(fseek(f, 33530176, SEEK_SET), 0);
    cr_assert_eq(fread(want, 1, 64, f), 64u);
    cr_assert_eq(memcmp(want, m->w.layers[0].wk.data, 64), 0);
    fclose(f);

    /* 272 tensors, lm_head tied: sum of gguf-py n_bytes without output.weight */
    size_t wb = model_weight_bytes(m);
    cr_assert(wb > 90u << 20 && wb < 98362432u, "weight bytes %zu", wb);
    char *text = NULL;
    size_t len = 0;
    FILE *mf = open_memstream(&text, &len);
    model_print_info(m, mf);
    fclose(mf);
    cr_assert(strstr(text, "30 layers") && strstr(text, "Q4_1 x210") && strstr(text, "Q8_0 x1") &&
              strstr(text, "F32 x61"), "%s", text);
    free(text);
    model_free(m);
}

Test(model_files, default_gguf_weight_bytes_match_reference) {
    char path[1024];
    if (!default_gguf(path, sizeof path)) cr_skip("default model missing (make model)");
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(path, &m, &err), PG_OK, "%s", err.msg);
    /* gguf-py: data section starts at 1785664; every tensor is 32-aligned and
     * the file ends at 98362432 with the last tensor. Sum of n_bytes over the
     * 272 tensors = 96576768 (output.weight is absent: tied). */
    cr_assert_eq(model_weight_bytes(m), 96576768u);
    model_free(m);
}

/* ---------------------------------------------------------------- basic failures */
Test(model_files, missing_file) {
    expect_fail(tmp_path("nope.gguf"), PG_EIO, "No such file");
}

Test(model_files, wrong_magic) {
    const char *p = tmp_path("bad.gguf");
    write_text(p, "GGUX this is not a model file at all");
    expect_fail(p, PG_EFORMAT, "magic");
    const char *q = tmp_path("noext");
    write_text(q, "hello world, not a model");
    expect_fail(q, PG_EFORMAT, "magic");
}

Test(model_files, not_a_regular_file) {
    expect_fail("/dev/null", PG_EIO, "not a regular file");
}

Test(model_files, empty_file) {
    const char *p = tmp_path("empty.gguf");
    write_file(p, "", 0);
    expect_fail(p, PG_EFORMAT, "empty");
}

Test(model_files, default_path_missing_says_make_model) {
    setenv("PEREGRINE_CACHE", g_dir, 1);
    char p[1024];
    pg_err err;
    cr_assert_eq(model_default_path(p, sizeof p, &err), PG_EIO);
    cr_assert(strstr(err.msg, "make model") && strstr(err.msg, g_dir), "%s", err.msg);
    model *m = NULL;
    model_load_opts o = {.path = "default"};
    cr_assert_eq(model_load(&o, &m, &err), PG_EIO);
    cr_assert_null(m);
}

/* ---------------------------------------------------------------- small GGUF */
Test(model_files, small_gguf_loads_all_dtypes) {
    const char *p = tmp_path("tiny.gguf");
    buf b;
    size_t data_off = gg_write_default(p, &b);
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(m->cfg.n_layers, TL);
    cr_assert_eq(m->cfg.dim, TD);
    cr_assert_eq(m->cfg.head_dim, 16);
    cr_assert_eq(m->cfg.vocab_size, TV);
    cr_assert_eq(m->cfg.tie_embeddings, 0);
    cr_assert_str_eq(m->name, "tiny");
    /* ChatML template: <|im_end|> (id 3) joins eos 2 */
    cr_assert_eq(m->cfg.n_eos, 2);
    cr_assert_eq(m->cfg.eos_ids[0], 2);
    cr_assert_eq(m->cfg.eos_ids[1], 3);
    cr_assert_null(m->tok);  /* no tokenizer.ggml.model */
    const layer_weights *L = &m->w.layers[1];
    cr_assert_eq(L->wq.dtype, PG_Q4_1);
    cr_assert_eq(L->wv.dtype, PG_Q4_0);
    cr_assert_eq(L->wo.dtype, PG_F16);
    cr_assert_eq(L->w_gate.dtype, PG_BF16);
    cr_assert_eq(L->w_down.dtype, PG_F32);
    cr_assert_eq(m->w.lm_head.dtype, PG_Q4_1);
    cr_assert_neq(m->w.lm_head.data, m->w.tok_embd.data);
    cr_assert_eq(L->w_down.rows, TD);
    cr_assert_eq(L->w_down.cols, TH);
    /* tensors in writing order: token_embd at data offset 0, output_norm next */
    cr_assert_eq(memcmp(m->w.tok_embd.data, b.b + data_off, m->w.tok_embd.nbytes), 0);
    size_t off_norm = (m->w.tok_embd.nbytes + 31) / 32 * 32;
    cr_assert_eq(memcmp(m->w.out_norm.data, b.b + data_off + off_norm, TD * 4), 0);
    for (int i = 0; i < model_n_tensors(m); i++) cr_assert_not_null(model_tensor(m, i)->data);
    model_free(m);
    free(b.b);
}

Test(model_files, small_gguf_tied) {
    const char *p = tmp_path("tied.gguf");
    gg_spec s = {.tied = 1};
    gg_write(p, &s, NULL);
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(m->cfg.tie_embeddings, 1);
    cr_assert_eq(m->w.lm_head.data, m->w.tok_embd.data);
    cr_assert_eq(m->w.lm_head.dtype, PG_Q8_0);
    model_free(m);
}

Test(model_files, gguf_truncated_everywhere) {
    /* Every cut through the header and a stride through the data. */
    const char *full = tmp_path("full.gguf");
    buf b;
    size_t data_off = gg_write_default(full, &b);
    const char *p = tmp_path("cut.gguf");
    write_file(p, b.b, b.n);
    FILE *f = fopen(p, "r+b");
    int n = 0;
    /* longest cut first so each ftruncate leaves a true prefix */
    for (size_t len = b.n - 1; len + 1 > 0; len -= len > data_off + 64 ? 997 : 1) {
        cr_assert_eq(ftruncate(fileno(f), (off_t)len), 0);
        model *m = NULL;
        pg_err err;
        int rc = load_path(p, &m, &err);
        cr_assert_neq(rc, PG_OK, "cut at %zu of %zu loaded", len, b.n);
        cr_assert(rc == PG_EFORMAT || rc == PG_EIO, "cut at %zu: %s", len, err.msg);
        cr_assert(strstr(err.msg, p), "cut at %zu: %s", len, err.msg);
        n++;
        if (len == 0) break;
    }
    fclose(f);
    cr_assert(n > 1000);
    free(b.b);
}

Test(model_files, default_gguf_truncated_200_ways) {
    char path[1024];
    if (!default_gguf(path, sizeof path)) cr_skip("default model missing (make model)");
    /* The header region (metadata + tensor infos) ends at 1785664 (gguf-py). */
    const size_t header = 1785664;
    FILE *src = fopen(path, "rb");
    uint8_t *head = malloc(header + 4096);
    cr_assert_eq(fread(head, 1, header + 4096, src), header + 4096);
    fclose(src);
    const char *p = tmp_path("cut-default.gguf");
    write_file(p, head, header + 4096);  /* header + a little data: tensors run past EOF */
    expect_fail(p, PG_EFORMAT, "token_embd.weight");
    FILE *f = fopen(p, "r+b");
    pg_rng r;
    pg_rng_seed(&r, 7);
    size_t cuts[200];
    int nc = 0;
    size_t fixed[] = {0, 3, 4, 7, 8, 15, 16, 23, 24, 31, 32, 40, header - 1, header - 32, header - 33};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) cuts[nc++] = fixed[i];
    while (nc < 200) cuts[nc++] = (size_t)(pg_rng_u64(&r) % header);
    /* longest first, so each ftruncate keeps a true prefix of the file */
    for (int i = 0; i < nc; i++)
        for (int j = i + 1; j < nc; j++)
            if (cuts[j] > cuts[i]) { size_t t = cuts[i]; cuts[i] = cuts[j]; cuts[j] = t; }
    for (int i = 0; i < nc; i++) {
        cr_assert_eq(ftruncate(fileno(f), (off_t)cuts[i]), 0);
        fflush(f);
        model *m = NULL;
        pg_err err;
        int rc = load_path(p, &m, &err);
        cr_assert(rc == PG_EFORMAT || rc == PG_EIO, "cut at %zu: rc %d %s", cuts[i], rc, err.msg);
        cr_assert(strstr(err.msg, p), "cut at %zu: %s", cuts[i], err.msg);
        cr_assert_null(m);
    }
    fclose(f);
    free(head);
}

Test(model_files, gguf_tensor_data_past_eof) {
    const char *p = tmp_path("lie.gguf");
    gg_spec s = {.lie_name = "blk.1.ffn_up.weight"};
    gg_write(p, &s, NULL);
    expect_fail(p, PG_EFORMAT, "blk.1.ffn_up.weight");
}

Test(model_files, gguf_shape_mismatch) {
    const char *p = tmp_path("shape.gguf");
    gg_spec s = {.shape_name = "blk.0.attn_k.weight"};
    gg_write(p, &s, NULL);
    expect_fail(p, PG_EFORMAT, "blk.0.attn_k.weight");
}

Test(model_files, gguf_unsupported_dtype) {
    const char *p = tmp_path("q5.gguf");
    /* Q5_0: a real GGML type (block 32) that we do not run */
    gg_spec s = {.bad_type_name = "blk.1.attn_q.weight", .bad_type = 6 /* Q5_0 */};
    gg_write(p, &s, NULL);
    expect_fail(p, PG_EUNSUPPORTED, "blk.1.attn_q.weight");
    expect_fail(p, PG_EUNSUPPORTED, "Q5_0");
    const char *q = tmp_path("unknown-type.gguf");
    gg_spec u = {.bad_type_name = "output_norm.weight", .bad_type = 200};
    gg_write(q, &u, NULL);
    expect_fail(q, PG_EUNSUPPORTED, "output_norm.weight");
    /* a K-quant whose block (256) does not divide the row is malformed */
    const char *k = tmp_path("q4k-row.gguf");
    gg_spec kk = {.bad_type_name = "blk.0.ffn_down.weight", .bad_type = T_Q4_K};
    gg_write(k, &kk, NULL);
    expect_fail(k, PG_EFORMAT, "blk.0.ffn_down.weight");
}

Test(model_files, gguf_unknown_architecture) {
    const char *p = tmp_path("qwen.gguf");
    gg_spec s = {.arch = "qwen2"};
    gg_write(p, &s, NULL);
    expect_fail(p, PG_EUNSUPPORTED, "qwen2");
}

Test(model_files, gguf_huge_counts) {
    const char *p = tmp_path("huge-t.gguf");
    gg_spec s = {.n_tensors_override = (uint64_t)1 << 62};
    gg_write(p, &s, NULL);
    expect_fail(p, PG_EFORMAT, "tensor count");
    gg_spec k = {.n_kv_override = (uint64_t)1 << 62};
    gg_write(p, &k, NULL);
    expect_fail(p, PG_EFORMAT, "metadata count");
    gg_spec a = {.huge_array = (uint64_t)1 << 62};
    gg_write(p, &a, NULL);
    expect_fail(p, PG_EFORMAT, "test.huge");
    gg_spec st = {.huge_str = (uint64_t)1 << 63};
    gg_write(p, &st, NULL);
    expect_fail(p, PG_EFORMAT, "truncated");
    gg_spec more = {.n_tensors_override = 100};  /* more infos than written */
    gg_write(p, &more, NULL);
    expect_fail(p, PG_EFORMAT, NULL);
}

Test(model_files, gguf_overlap_misalign_missing_extra) {
    const char *p = tmp_path("o.gguf");
    gg_spec o = {.overlap = 1};
    gg_write(p, &o, NULL);
    expect_fail(p, PG_EFORMAT, "overlap");
    gg_spec a = {.misalign = 1};
    gg_write(p, &a, NULL);
    expect_fail(p, PG_EFORMAT, "token_embd.weight");
    gg_spec d = {.drop_name = "blk.1.ffn_down.weight"};
    gg_write(p, &d, NULL);
    expect_fail(p, PG_EFORMAT, "blk.1.ffn_down.weight is missing");
    gg_spec e = {.extra_name = "blk.7.attn_q.weight"};  /* layer past block_count */
    gg_write(p, &e, NULL);
    expect_fail(p, PG_EFORMAT, "blk.7.attn_q.weight");
    gg_spec dup = {.extra_name = "blk.1.attn_q.weight"};
    gg_write(p, &dup, NULL);
    expect_fail(p, PG_EFORMAT, "twice");
    gg_spec ok = {.extra_name = "some.other.weight"};  /* unknown names are ignored */
    gg_write(p, &ok, NULL);
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    model_free(m);
}

/* scripts/gen-model-goldens.py: transformers llama3 rope, head_dim 16, theta 1e4 */
static const float ROPE_FREQS_LLAMA3[8] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 4.681481838226318f, 8.0f};

Test(model_files, gguf_rope_freqs_llama3) {
    const char *p = tmp_path("rope.gguf");
    gg_spec s = {.rope_freqs = ROPE_FREQS_LLAMA3};
    gg_write(p, &s, NULL);
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(m->cfg.rope_llama3, 1);
    cr_assert_float_eq(m->cfg.rope_factor, 8.0f, 0);
    cr_assert_float_eq(m->cfg.rope_low_freq_factor, 1.0f, 0);
    cr_assert_float_eq(m->cfg.rope_high_freq_factor, 4.0f, 0);
    cr_assert_eq(m->cfg.rope_orig_max_pos, 8192);
    model_free(m);
    float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1}, off[8];
    gg_spec plain = {.rope_freqs = ones};
    gg_write(p, &plain, NULL);
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(m->cfg.rope_llama3, 0);
    model_free(m);
    memcpy(off, ROPE_FREQS_LLAMA3, sizeof off);
    off[6] = 5.0f;  /* not the llama3 rule */
    gg_spec bad = {.rope_freqs = off};
    gg_write(p, &bad, NULL);
    expect_fail(p, PG_EUNSUPPORTED, "rope_freqs.weight");
}

Test(model_files, gguf_versions) {
    const char *p = tmp_path("v.gguf");
    gg_spec v1 = {.version = 1};
    gg_write(p, &v1, NULL);
    expect_fail(p, PG_EUNSUPPORTED, "version 1");
    gg_spec v9 = {.version = 9};
    gg_write(p, &v9, NULL);
    expect_fail(p, PG_EUNSUPPORTED, "version 9");
    gg_spec v2 = {.version = 2};
    gg_write(p, &v2, NULL);
    model *m = NULL;
    pg_err err;
    cr_assert_eq(load_path(p, &m, &err), PG_OK, "%s", err.msg);
    model_free(m);
}

Test(model_files, gguf_fuzz_header_bytes) {
    const char *p = tmp_path("fuzz.gguf");
    buf b;
    size_t data_off = gg_write_default(p, &b);
    uint8_t *work = malloc(b.n);
    pg_rng r;
    pg_rng_seed(&r, 20240601);
    int ok = 0, failed = 0;
    int iters = fuzz_iters(600);
    for (int it = 0; it < iters; it++) {
        memcpy(work, b.b, b.n);
        int flips = 1 + (int)(pg_rng_u64(&r) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)(pg_rng_u64(&r) % data_off);
            /* half the time a random byte, half the time 0xff (large lengths) */
            work[at] = (pg_rng_u64(&r) & 1) ? (uint8_t)pg_rng_u64(&r) : 0xff;
        }
        write_file(p, work, b.n);
        model *m = NULL;
        pg_err err;
        memset(&err, 0, sizeof err);
        int rc = load_path(p, &m, &err);
        if (rc == PG_OK) { ok++; model_free(m); continue; }
        failed++;
        cr_assert_null(m);
        cr_assert(err.msg[0] && strstr(err.msg, p), "iteration %d: rc %d, message '%s'", it, rc, err.msg);
    }
    cr_log_info("gguf fuzz: %d loaded, %d rejected", ok, failed);
    cr_assert(failed > iters / 6);
    free(work);
    free(b.b);
}

Test(model_files, default_gguf_fuzz_with_tokenizer) {
    char path[1024];
    if (!default_gguf(path, sizeof path)) cr_skip("default model missing (make model)");
    /* Change bytes inside the token and merge strings of a copy of the real
     * file (printable bytes of the header region: string contents, rarely a
     * length) to arbitrary values, including invalid UTF-8 and NUL, and
     * reload through the tokenizer each time. */
    const char *p = tmp_path("fuzz-default.gguf");
    FILE *in = fopen(path, "rb"), *out = fopen(p, "wb");
    static uint8_t chunk[1 << 20];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, in)) > 0) cr_assert_eq(fwrite(chunk, 1, n, out), n);
    fclose(in);
    fclose(out);
    FILE *f = fopen(p, "r+b");
    pg_log_set_level(PG_LOG_ERROR);  /* the tokenizer warns about mangled merges */
    pg_rng r;
    pg_rng_seed(&r, 99);
    int loaded = 0, iters = fuzz_iters(30);
    for (int it = 0; it < iters; it++) {
        size_t at[3];
        uint8_t old[3];
        for (int k = 0; k < 3; k++) {
            do {
                at[k] = 24 + (size_t)(pg_rng_u64(&r) % (1785664 - 24));
                cr_assert_eq(fseek(f, (long)at[k], SEEK_SET), 0);
                cr_assert_eq(fread(&old[k], 1, 1, f), 1u);
            } while (old[k] < 0x21 || old[k] > 0x7e);
            uint8_t v = (uint8_t)pg_rng_u64(&r);
            cr_assert_eq(fseek(f, (long)at[k], SEEK_SET), 0);
            cr_assert_eq(fwrite(&v, 1, 1, f), 1u);
        }
        fflush(f);
        model *m = NULL;
        pg_err err;
        int rc = load_path(p, &m, &err);
        if (rc == PG_OK) {
            cr_assert_not_null(m->tok);
            loaded++;
            model_free(m);
        } else cr_assert(strstr(err.msg, p), "iteration %d: %s", it, err.msg);
        for (int k = 2; k >= 0; k--) {  /* restore */
            cr_assert_eq(fseek(f, (long)at[k], SEEK_SET), 0);
            cr_assert_eq(fwrite(&old[k], 1, 1, f), 1u);
        }
        fflush(f);
    }
    fclose(f);
    cr_log_info("default gguf fuzz: %d of %d loaded", loaded, iters);
    cr_assert(loaded > iters / 3, "only %d of %d reached the tokenizer", loaded, iters);
}

