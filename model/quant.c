/* model/quant.c — the reference quantizer and format conversions (quant.h). */
#include "quant.h"
#include "calib.h"

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

static inline int i8_code(float w, float sf) {
    float v = sf > 0.f ? rintf(w / sf) : 0.f;
    return (int)fminf(fmaxf(v, -127.f), 127.f);
}

static inline int i4_code(float w, float sf, float mf) {
    float v = sf > 0.f ? rintf((w - mf) / sf) : 0.f;
    return (int)fminf(fmaxf(v, 0.f), 15.f);
}

static void i8_params(const float *w, int n, uint16_t *s16) {
    float a = 0.f;
    for (int i = 0; i < n; i++) a = fmaxf(a, fabsf(w[i]));
    *s16 = pg_f32_to_f16(a / 127.f);
}

static void i4_params(const float *w, int n, uint16_t *s16, uint16_t *m16) {
    float lo = w[0], hi = w[0];
    for (int i = 1; i < n; i++) { lo = fminf(lo, w[i]); hi = fmaxf(hi, w[i]); }
    *s16 = pg_f32_to_f16((hi - lo) / 15.f);
    *m16 = pg_f32_to_f16(lo);
}

/* The weighted error of the f16 parameters (s16, m16) on a group of n
 * values (n a multiple of 8), and the codes they give in q[n] (may be NULL).
 * Eight independent float partial sums, so that the compiler vectorizes
 * the loop (a double or single running sum would serialize it); the order is
 * fixed, so the result is deterministic. */
static double i4_werr(const float *w, const float *imp, int n, uint16_t s16, uint16_t m16, uint8_t *q) {
    float sf = pg_f16_to_f32(s16), mf = pg_f16_to_f32(m16);
    if (!(sf > 0.f)) {   /* every code 0 (i4_code); not the vectorized path */
        double e = 0;
        for (int i = 0; i < n; i++) {
            double d = (double)mf - w[i];
            e += imp[i] * d * d;
            if (q) q[i] = 0;
        }
        return e;
    }
    float acc[8] = {0}, cf[8];
    for (int i = 0; i < n; i += 8) {
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {   /* = i4_code for sf > 0, in float */
            float c = rintf((w[i + k] - mf) / sf);
            c = c < 0.f ? 0.f : c;
            c = c > 15.f ? 15.f : c;
            float p = sf * c;   /* dequantized as quant.h says: the product rounded, then the add */
            float d = (p + mf) - w[i + k];
            acc[k] += imp[i + k] * d * d;
            cf[k] = c;
        }
        if (q)
            for (int k = 0; k < 8; k++) q[i + k] = (uint8_t)cf[k];
    }
    double e = 0;
    for (int k = 0; k < 8; k++) e += acc[k];
    return e;
}

/* Weighted least squares (s, m) for fixed codes q (n a multiple of 8; eight
 * float partial sums per moment, as i4_werr); 0 when degenerate. */
static int i4_lsq(const float *w, const float *imp, const uint8_t *q, int n, double *s, double *m) {
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0}, a4[8] = {0};
    for (int i = 0; i < n; i += 8)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            float c = (float)q[i + k], u = imp[i + k], uc = u * c;
            a0[k] += u;
            a1[k] += uc;
            a2[k] += uc * c;
            a3[k] += u * w[i + k];
            a4[k] += uc * w[i + k];
        }
    double sw = 0, sx = 0, sx2 = 0, sy = 0, sxy = 0;
    for (int k = 0; k < 8; k++) {
        sw += a0[k]; sx += a1[k]; sx2 += a2[k]; sy += a3[k]; sxy += a4[k];
    }
    double d = sw * sx2 - sx * sx;
    if (!(d > 0)) return 0;
    *s = (sw * sxy - sx * sy) / d;
    *m = (sx2 * sy - sx * sxy) / d;
    return *s > 0;
}

/* Weighted int4 scale and minimum: start from the min/max parameters; for 81
 * code grids (15 + 0.1 k steps over [min, max], k = -40..40) fit (s, m) by
 * weighted least squares to the grid's codes, then once more to the codes
 * the rounded parameters give; keep the lowest weighted error (never worse
 * than min/max). As llama.cpp's k-quants with an importance matrix; the
 * grid's width was measured (bench/results/cpu.md). */
static void i4_params_weighted(const float *w, const float *imp, int n, uint16_t *s16, uint16_t *m16) {
    i4_params(w, n, s16, m16);
    double best = i4_werr(w, imp, n, *s16, *m16, NULL);
    float lo = w[0], hi = w[0];
    for (int i = 1; i < n; i++) { lo = fminf(lo, w[i]); hi = fmaxf(hi, w[i]); }
    if (!(hi > lo)) return;
    uint8_t q[128];   /* QI4 groups are 32, 64 or 128 */
    PG_ASSERT(n <= 128 && n % 8 == 0);
    for (int k = -40; k <= 40; k++) {
        float iscale = (15.f + 0.1f * (float)k) / (hi - lo);
        for (int i = 0; i < n; i += 8) {
            float cf[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                float c = rintf(iscale * (w[i + t] - lo));
                c = c < 0.f ? 0.f : c;
                cf[t] = c > 15.f ? 15.f : c;
            }
            for (int t = 0; t < 8; t++) q[i + t] = (uint8_t)cf[t];
        }
        double s, m;
        if (!i4_lsq(w, imp, q, n, &s, &m)) continue;
        uint16_t cs = pg_f32_to_f16((float)s), cm = pg_f32_to_f16((float)m);
        double e = i4_werr(w, imp, n, cs, cm, q);
        if (e < best) { best = e; *s16 = cs; *m16 = cm; }
        if (!i4_lsq(w, imp, q, n, &s, &m)) continue;
        cs = pg_f32_to_f16((float)s);
        cm = pg_f32_to_f16((float)m);
        e = i4_werr(w, imp, n, cs, cm, NULL);
        if (e < best) { best = e; *s16 = cs; *m16 = cm; }
    }
}

void quant_rows_weighted(const tensor *src, tensor *dst, const float *imp, int64_t r0, int64_t r1) {
    PG_ASSERT(src->data && dst->data && src->rows == dst->rows && src->cols == dst->cols);
    PG_ASSERT(dst->dtype == PG_QI8 || dst->dtype == PG_QI4);
    PG_ASSERT(!imp || dst->dtype == PG_QI4);
    int64_t cols = src->cols, g = dst->group, ng = cols / g;
    size_t qrb = pg_dtype_row_bytes(dst->dtype, cols);
    float *row = pg_xmalloc((size_t)cols * sizeof(float));
    uint8_t *q = (uint8_t *)dst->data;
    uint16_t *s = (uint16_t *)dst->qscale, *m = (uint16_t *)dst->qmin;
    for (int64_t r = r0; r < r1; r++) {
        quant_any_row(src, r, row);
        for (int64_t j = 0; j < ng; j++) {
            const float *w = row + j * g, *wi = imp ? imp + j * g : NULL;
            size_t pi = (size_t)(r * ng + j);
            if (dst->dtype == PG_QI8) {
                i8_params(w, (int)g, &s[pi]);
                float sf = pg_f16_to_f32(s[pi]);
                int8_t *qr = (int8_t *)(q + (size_t)r * qrb + j * g);
                for (int64_t i = 0; i < g; i++) qr[i] = (int8_t)i8_code(w[i], sf);
            } else {   /* element i in byte i/2, low nibble for even i */
                if (wi) i4_params_weighted(w, wi, (int)g, &s[pi], &m[pi]);
                else i4_params(w, (int)g, &s[pi], &m[pi]);
                float sf = pg_f16_to_f32(s[pi]), mf = pg_f16_to_f32(m[pi]);
                uint8_t *qr = q + (size_t)r * qrb + j * g / 2;
                for (int64_t i = 0; i < g; i += 2)
                    qr[i / 2] = (uint8_t)(i4_code(w[i], sf, mf) | (i4_code(w[i + 1], sf, mf) << 4));
            }
        }
    }
    free(row);
}

void quant_rows(const tensor *src, tensor *dst, int64_t r0, int64_t r1) {
    quant_rows_weighted(src, dst, NULL, r0, r1);
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
    const float  *imp;      /* importance of the input columns (calib.h), or NULL: plain */
} qw_job_t;

static void qw_job(void *arg, int c, int tid) {
    (void)tid;
    const qw_job_t *j = arg;
    int64_t lo = (int64_t)c * j->chunk_rows, hi = lo + j->chunk_rows;
    if (hi > j->src->rows) hi = j->src->rows;
    if (j->dst->dtype != PG_BF16) {
        quant_rows_weighted(j->src, j->dst, j->imp, lo, hi);
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
static int qw_convert(quant_weights *qw, const tensor *src, pg_dtype to, int group, const float *imp,
                      pg_pool *pool, tensor *dst, pg_err *err) {
    const char *nm = src->name ? src->name : "?";
    if (to == PG_QI8) group = (int)src->cols;
    else if (to == PG_QI4 && quant_group_for(to, group, src->cols)) group = quant_group_for(to, group, src->cols);
    if (src->dtype == to && (to == PG_BF16 || src->group == group) && !imp) {
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
    qw_job_t j = {.src = src, .dst = dst, .chunk_rows = chunk, .imp = to == PG_BF16 ? NULL : imp};
    int nc = (int)((src->rows + chunk - 1) / chunk);
    if (pool) pool_run(pool, qw_job, &j, nc);
    else for (int c = 0; c < nc; c++) qw_job(&j, c, 0);
    return PG_OK;
}

int quant_weights_make(const model *m, pg_dtype to, int group, int lm_head, struct pg_pool *pool,
                       quant_weights *out, pg_err *err) {
    return quant_weights_make_calib(m, to, group, lm_head, NULL, pool, out, err);
}

int quant_weights_make_calib(const model *m, pg_dtype to, int group, int lm_head, const calib_stats *calib,
                             struct pg_pool *pool, quant_weights *out, pg_err *err) {
    memset(out, 0, sizeof *out);
    if (to != PG_BF16 && to != PG_QI8 && to != PG_QI4 && to != PG_DTYPE_COUNT)
        return pg_errf(err, PG_EINVAL, "quantize: target %s is not bf16, QI8 or QI4", pg_dtype_name(to));
    if (calib && to != PG_QI4)
        return pg_errf(err, PG_EINVAL, "quantize: calibration applies to int4, not %s",
                       to == PG_DTYPE_COUNT ? "the stored formats" : pg_dtype_name(to));
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
            rc = qw_convert(out, &head, to, group, NULL, pool, &out->w.lm_head, err);
        }
        for (int l = 0; l < nl && rc == PG_OK; l++) {
            const layer_weights *S = &src->layers[l];
            layer_weights *D = &out->w.layers[l];
            const tensor *s7[] = {&S->wq, &S->wk, &S->wv, &S->wo, &S->w_gate, &S->w_up, &S->w_down};
            tensor *d7[] = {&D->wq, &D->wk, &D->wv, &D->wo, &D->w_gate, &D->w_up, &D->w_down};
            static const engine_site site7[] = {ENGINE_SITE_QKV, ENGINE_SITE_QKV, ENGINE_SITE_QKV, ENGINE_SITE_O,
                                                ENGINE_SITE_GATE_UP, ENGINE_SITE_GATE_UP, ENGINE_SITE_DOWN};
            float *imp[ENGINE_SITES] = {0};
            for (int st = 0; st < ENGINE_SITES && calib; st++) {
                int cols = calib_site_cols(calib, (engine_site)st);
                imp[st] = pg_xmalloc((size_t)cols * sizeof(float));
                calib_importance(calib, l, (engine_site)st, imp[st], cols);
            }
            for (int i = 0; i < 7 && rc == PG_OK; i++) {
                if (imp[site7[i]] && s7[i]->cols != calib_site_cols(calib, site7[i]))
                    rc = pg_errf(err, PG_EINVAL, "quantize %s: %lld columns, calibrated for %d",
                                 s7[i]->name ? s7[i]->name : "?", (long long)s7[i]->cols,
                                 calib_site_cols(calib, site7[i]));
                else rc = qw_convert(out, s7[i], to, group, imp[site7[i]], pool, d7[i], err);
            }
            for (int st = 0; st < ENGINE_SITES; st++) free(imp[st]);
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
