/* model/quant.c — the reference quantizer and format conversions (quant.h). */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "../kernels/threadpool.h"

int quant_group_ok(pg_dtype to, int group, int64_t cols) {
    if (group <= 0 || cols <= 0 || cols % group) return 0;
    if (to == PG_QI8) return 1;
    if (to == PG_QI4) return (group == 32 || group == 64 || group == 128) && cols % 2 == 0;
    return 0;
}

int quant_group_for(pg_dtype to, int group, int64_t cols) {
    if (quant_group_ok(to, group, cols)) return group;
    if (to != PG_QI4) return 0;
    for (int g = 64; g >= 32; g /= 2)
        if (g < group && quant_group_ok(to, g, cols)) return g;
    return 0;
}

int quant_lm_head_auto(const model *m) {
    const tensor *t = m->cfg.tie_embeddings ? &m->w.tok_embd : &m->w.lm_head;
    return t->dtype == PG_F32 || t->dtype == PG_F16 || t->dtype == PG_BF16;
}

size_t quant_tensor_bytes(pg_dtype t, int64_t rows, int64_t cols, int group) {
    size_t ng = (size_t)rows * (size_t)(cols / group);
    size_t q = t == PG_QI4 ? (size_t)rows * (size_t)cols / 2 : (size_t)rows * (size_t)cols;
    return q + ng * 2 * (t == PG_QI4 ? 2 : 1);
}

int quant_alloc(const tensor *src, pg_dtype to, int group, tensor *dst, void **mem, pg_err *err) {
    *mem = NULL;
    if (to != PG_QI8 && to != PG_QI4)
        return pg_errf(err, PG_EINVAL, "quantize %s: target %s is not QI8 or QI4", src->name ? src->name : "?",
                       pg_dtype_name(to));
    if (!quant_group_ok(to, group, src->cols))
        return pg_errf(err, PG_EINVAL, "quantize %s: group size %d does not fit %lld columns for %s",
                       src->name ? src->name : "?", group, (long long)src->cols, pg_dtype_name(to));
    size_t ng = (size_t)src->rows * (size_t)(src->cols / group);
    size_t qb = pg_dtype_row_bytes(to, src->cols) * (size_t)src->rows;
    size_t qoff = (qb + 63) & ~(size_t)63;
    size_t total = qoff + ng * 2 * (to == PG_QI4 ? 2 : 1);
    uint8_t *p = aligned_alloc(64, (total + 63) & ~(size_t)63);
    if (!p) return pg_errf(err, PG_ENOMEM, "quantize %s: out of memory (%zu bytes)", src->name ? src->name : "?", total);
    *dst = (tensor){.dtype = to, .rows = src->rows, .cols = src->cols, .data = p, .nbytes = qb,
                    .name = src->name, .group = group, .qscale = (const uint16_t *)(p + qoff),
                    .qmin = to == PG_QI4 ? (const uint16_t *)(p + qoff + ng * 2) : NULL};
    *mem = p;
    return PG_OK;
}

static void quant_group_i8(const float *w, int n, int8_t *q, uint16_t *s16) {
    float a = 0.f;
    for (int i = 0; i < n; i++) a = fmaxf(a, fabsf(w[i]));
    *s16 = pg_f32_to_f16(a / 127.f);
    float sf = pg_f16_to_f32(*s16);
    for (int i = 0; i < n; i++) {
        float v = sf > 0.f ? rintf(w[i] / sf) : 0.f;
        q[i] = (int8_t)fminf(fmaxf(v, -127.f), 127.f);
    }
}

/* Writes n/2 bytes: element i in byte i/2, low nibble for even i. */
static void quant_group_i4(const float *w, int n, uint8_t *q, uint16_t *s16, uint16_t *m16) {
    float lo = w[0], hi = w[0];
    for (int i = 1; i < n; i++) { lo = fminf(lo, w[i]); hi = fmaxf(hi, w[i]); }
    *s16 = pg_f32_to_f16((hi - lo) / 15.f);
    *m16 = pg_f32_to_f16(lo);
    float sf = pg_f16_to_f32(*s16), mf = pg_f16_to_f32(*m16);
    for (int i = 0; i < n; i += 2) {
        int v[2];
        for (int j = 0; j < 2; j++) {
            float x = sf > 0.f ? rintf((w[i + j] - mf) / sf) : 0.f;
            v[j] = (int)fminf(fmaxf(x, 0.f), 15.f);
        }
        q[i / 2] = (uint8_t)(v[0] | (v[1] << 4));
    }
}

void quant_rows(const tensor *src, tensor *dst, int64_t r0, int64_t r1) {
    PG_ASSERT(src->data && dst->data && src->rows == dst->rows && src->cols == dst->cols);
    int64_t cols = src->cols, g = dst->group, ng = cols / g;
    size_t qrb = pg_dtype_row_bytes(dst->dtype, cols);
    float *row = malloc((size_t)cols * sizeof(float));
    PG_ASSERT(row);
    uint8_t *q = (uint8_t *)dst->data;
    uint16_t *s = (uint16_t *)dst->qscale, *m = (uint16_t *)dst->qmin;
    for (int64_t r = r0; r < r1; r++) {
        quant_any_row(src, r, row);
        for (int64_t j = 0; j < ng; j++) {
            if (dst->dtype == PG_QI8)
                quant_group_i8(row + j * g, (int)g, (int8_t *)(q + (size_t)r * qrb + j * g), &s[r * ng + j]);
            else
                quant_group_i4(row + j * g, (int)g, q + (size_t)r * qrb + j * g / 2, &s[r * ng + j], &m[r * ng + j]);
        }
    }
    free(row);
}

int quant_matrix(const tensor *src, pg_dtype to, int group, tensor *dst, void **mem, pg_err *err) {
    if (!src->data)
        return pg_errf(err, PG_EINVAL, "quantize %s: weights live on the device only", src->name ? src->name : "?");
    PG_TRY(quant_alloc(src, to, group, dst, mem, err));
    quant_rows(src, dst, 0, src->rows);
    return PG_OK;
}

int quant_from_gguf(const tensor *src, tensor *dst, void **mem, pg_err *err) {
    pg_dtype to = src->dtype == PG_Q8_0 ? PG_QI8 : PG_QI4;
    if (src->dtype != PG_Q8_0 && src->dtype != PG_Q4_0 && src->dtype != PG_Q4_1)
        return pg_errf(err, PG_EINVAL, "%s: %s is not a GGUF block type", src->name ? src->name : "?",
                       pg_dtype_name(src->dtype));
    if (!src->data)
        return pg_errf(err, PG_EINVAL, "%s: weights live on the device only", src->name ? src->name : "?");
    PG_TRY(quant_alloc(src, to, 32, dst, mem, err));
    int64_t nb = src->rows * (src->cols / 32);
    size_t bb = pg_dtype_block_bytes(src->dtype);
    const uint8_t *b = src->data;
    uint8_t *q = (uint8_t *)dst->data;
    uint16_t *s = (uint16_t *)dst->qscale, *m = (uint16_t *)dst->qmin;
    for (int64_t i = 0; i < nb; i++, b += bb) {
        uint16_t d;
        memcpy(&d, b, 2);
        s[i] = d;
        if (src->dtype == PG_Q8_0) {
            memcpy(q + i * 32, b + 2, 32);
            continue;
        }
        const uint8_t *qs = b + (src->dtype == PG_Q4_1 ? 4 : 2);
        if (src->dtype == PG_Q4_1) memcpy(&m[i], b + 2, 2);
        else m[i] = pg_f32_to_f16(-8.f * pg_f16_to_f32(d));   /* exact: a power-of-two multiple */
        /* GGUF: element j is qs[j] & 15, element j + 16 is qs[j] >> 4 */
        uint8_t e[32];
        for (int j = 0; j < 16; j++) { e[j] = qs[j] & 15; e[j + 16] = qs[j] >> 4; }
        for (int j = 0; j < 16; j++) q[i * 16 + j] = (uint8_t)(e[2 * j] | (e[2 * j + 1] << 4));
    }
    return PG_OK;
}

void quant_dequant_row(const tensor *t, int64_t r, float *dst) {
    int64_t cols = t->cols, g = t->group, ng = cols / g;
    PG_ASSERT(t->dtype == PG_QI8 || t->dtype == PG_QI4);
    if (t->dtype == PG_QI8) {
        const int8_t *q = (const int8_t *)t->data + (size_t)r * (size_t)cols;
        for (int64_t c = 0; c < cols; c++) dst[c] = pg_f16_to_f32(t->qscale[r * ng + c / g]) * (float)q[c];
        return;
    }
    const uint8_t *q = (const uint8_t *)t->data + (size_t)r * (size_t)(cols / 2);
    for (int64_t c = 0; c < cols; c++) {
        float s = pg_f16_to_f32(t->qscale[r * ng + c / g]), m = pg_f16_to_f32(t->qmin[r * ng + c / g]);
        int v = (q[c / 2] >> (4 * (c & 1))) & 15;
        float p = s * (float)v;   /* rounded to f32 before the add, as Q4_1 */
        dst[c] = p + m;
    }
}

void quant_any_row(const tensor *t, int64_t r, float *dst) {
    if (t->dtype == PG_QI8 || t->dtype == PG_QI4) {
        quant_dequant_row(t, r, dst);
        return;
    }
    size_t rb = pg_dtype_row_bytes(t->dtype, t->cols);
    ref_dequant_row(t->dtype, (const uint8_t *)t->data + (size_t)r * rb, dst, t->cols);
}

size_t quant_held_bytes(const tensor *t) {
    if (t->dtype == PG_QI8 || t->dtype == PG_QI4) return quant_tensor_bytes(t->dtype, t->rows, t->cols, t->group);
    return t->nbytes;
}

/* ---------------------------------------------------------------- whole models */
typedef struct {
    const tensor *src;
    tensor       *dst;
    int64_t       chunk_rows;
} qw_job_t;

static void qw_job(void *arg, int c, int tid) {
    (void)tid;
    const qw_job_t *j = arg;
    int64_t lo = (int64_t)c * j->chunk_rows, hi = lo + j->chunk_rows;
    if (hi > j->src->rows) hi = j->src->rows;
    if (j->dst->dtype != PG_BF16) {
        quant_rows(j->src, j->dst, lo, hi);
        return;
    }
    int64_t cols = j->src->cols;
    float *row = pg_xmalloc((size_t)cols * sizeof(float));
    uint16_t *o = (uint16_t *)j->dst->data;
    for (int64_t r = lo; r < hi; r++) {
        quant_any_row(j->src, r, row);
        for (int64_t k = 0; k < cols; k++) o[r * cols + k] = pg_f32_to_bf16(row[k]);
    }
    free(row);
}

static int qw_keep(quant_weights *qw, void *p) {
    void **n = realloc(qw->mem, (size_t)(qw->n_mem + 1) * sizeof *n);
    if (!n) return 0;
    qw->mem = n;
    qw->mem[qw->n_mem++] = p;
    return 1;
}

/* *dst = src converted to `to` (or borrowed when it already is). */
static int qw_convert(quant_weights *qw, const tensor *src, pg_dtype to, int group, pg_pool *pool,
                      tensor *dst, pg_err *err) {
    const char *nm = src->name ? src->name : "?";
    if (to == PG_QI8) group = (int)src->cols;
    else if (to == PG_QI4 && quant_group_for(to, group, src->cols)) group = quant_group_for(to, group, src->cols);
    if (src->dtype == to && (to == PG_BF16 || src->group == group)) {
        *dst = *src;
        return PG_OK;
    }
    if (!src->data) return pg_errf(err, PG_EINVAL, "quantize %s: weights live on the device only", nm);
    void *mem = NULL;
    if (to == PG_BF16) {
        size_t nb = (size_t)src->rows * (size_t)src->cols * 2;
        mem = aligned_alloc(64, (nb + 63) & ~(size_t)63);
        if (!mem) return pg_errf(err, PG_ENOMEM, "bf16 %s: out of memory (%zu bytes)", nm, nb);
        *dst = (tensor){.dtype = PG_BF16, .rows = src->rows, .cols = src->cols, .data = mem, .nbytes = nb,
                        .name = src->name};
    } else {
        PG_TRY(quant_alloc(src, to, group, dst, &mem, err));
    }
    if (!qw_keep(qw, mem)) {
        free(mem);
        return pg_errf(err, PG_ENOMEM, "quantize %s: out of memory", nm);
    }
    int nt = pool ? pool_size(pool) : 1;
    /* about 8 chunks per thread, at least 16 rows each */
    int64_t chunk = (src->rows + 8 * nt - 1) / (8 * nt);
    if (chunk < 16) chunk = 16;
    qw_job_t j = {.src = src, .dst = dst, .chunk_rows = chunk};
    int nc = (int)((src->rows + chunk - 1) / chunk);
    if (pool) pool_run(pool, qw_job, &j, nc);
    else for (int c = 0; c < nc; c++) qw_job(&j, c, 0);
    return PG_OK;
}

int quant_weights_make(const model *m, pg_dtype to, int group, int lm_head, struct pg_pool *pool,
                       quant_weights *out, pg_err *err) {
    memset(out, 0, sizeof *out);
    if (to != PG_BF16 && to != PG_QI8 && to != PG_QI4 && to != PG_DTYPE_COUNT)
        return pg_errf(err, PG_EINVAL, "quantize: target %s is not bf16, QI8 or QI4", pg_dtype_name(to));
    const model_weights *src = &m->w;
    int nl = m->cfg.n_layers;
    out->w = *src;
    out->w.layers = calloc((size_t)(nl > 0 ? nl : 1), sizeof *out->w.layers);
    if (!out->w.layers) return pg_errf(err, PG_ENOMEM, "quantize: out of memory");
    for (int l = 0; l < nl; l++) out->w.layers[l] = src->layers[l];
    int rc = PG_OK;
    if (to != PG_DTYPE_COUNT) {
        if (lm_head) {
            tensor head = src->lm_head;   /* tied: named as the LM head in messages */
            if (head.data == src->tok_embd.data) head.name = "lm_head (tied to the embedding)";
            rc = qw_convert(out, &head, to, group, pool, &out->w.lm_head, err);
        }
        for (int l = 0; l < nl && rc == PG_OK; l++) {
            const layer_weights *S = &src->layers[l];
            layer_weights *D = &out->w.layers[l];
            const tensor *s7[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
            tensor *d7[] = {&D->wq, &D->wk, &D->wv, &D->wo, &D->w_gate, &D->w_up, &D->w_down};
            for (int i = 0; i < 7 && rc == PG_OK; i++) rc = qw_convert(out, s7[i], to, group, pool, d7[i], err);
        }
    }
    if (rc != PG_OK) {
        quant_weights_free(out);
        return rc;
    }
    const model_weights *w = &out->w;
    size_t b = quant_held_bytes(&w->tok_embd) + quant_held_bytes(&w->out_norm);
    if (w->lm_head.data != w->tok_embd.data) b += quant_held_bytes(&w->lm_head);
    for (int l = 0; l < nl; l++) {
        const layer_weights *L = &w->layers[l];
        const tensor *t9[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm,
                              &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 9; i++) b += quant_held_bytes(t9[i]);
    }
    out->bytes = b;
    return PG_OK;
}

void quant_weights_free(quant_weights *qw) {
    if (!qw) return;
    for (int i = 0; i < qw->n_mem; i++) free(qw->mem[i]);
    free(qw->mem);
    free(qw->w.layers);
    memset(qw, 0, sizeof *qw);
}
