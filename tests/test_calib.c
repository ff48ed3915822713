/* tests/test_calib.c — calibrated quantization: the statistics the CPU
 * engine hands to its observer (model/calib.h) and the weighted int4
 * quantizer (quant_rows_weighted, model/quant.h): same format, never a worse
 * weighted error than the plain quantizer, much better on the columns that
 * matter; and calibration refused where it does not apply. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/calib.h"
#include "model/quant.h"
#include "tests/engine_test_util.h"
#include "tests/test_util.h"

static model_config sites_config(int dim, int q_dim, int hidden, int layers) {
    model_config c;
    memset(&c, 0, sizeof c);
    c.dim = dim;
    c.n_heads = 2;
    c.head_dim = q_dim / 2;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    return c;
}

Test(calib, importance_is_the_mean_square_plus_a_floor) {
    model_config c = sites_config(4, 6, 8, 2);
    calib_stats *s = calib_new(&c);
    cr_assert_eq(calib_site_cols(s, ENGINE_SITE_QKV), 4);
    cr_assert_eq(calib_site_cols(s, ENGINE_SITE_O), 6);
    cr_assert_eq(calib_site_cols(s, ENGINE_SITE_GATE_UP), 4);
    cr_assert_eq(calib_site_cols(s, ENGINE_SITE_DOWN), 8);
    const float x[3][4] = {{1, 0, 2, -1}, {3, 0, -2, 1}, {100, 0, 0, 0}};
    calib_observe(s, 0, ENGINE_SITE_QKV, &x[0][0], 2, 4);
    calib_pause(s, 1);
    calib_observe(s, 0, ENGINE_SITE_QKV, &x[2][0], 1, 4);   /* ignored */
    calib_pause(s, 0);
    calib_observe(s, 1, ENGINE_SITE_QKV, &x[1][0], 1, 4);   /* another layer: its own sums */
    cr_assert_eq(calib_tokens(s), 2);
    float imp[4];
    calib_importance(s, 0, ENGINE_SITE_QKV, imp, 4);
    const float ms[4] = {5, 0, 4, 1};   /* mean x^2 over the two tokens */
    float floor = (float)CALIB_IMP_FLOOR * (5 + 0 + 4 + 1) / 4;
    for (int i = 0; i < 4; i++) cr_assert_float_eq(imp[i], ms[i] + floor, 1e-5, "column %d: %g", i, imp[i]);
    calib_importance(s, 1, ENGINE_SITE_QKV, imp, 4);   /* layer 1: one token over layer 0's count of 2 */
    cr_assert_float_eq(imp[0], 9.f / 2 + (float)CALIB_IMP_FLOOR * (9 + 4 + 1) / 2 / 4, 1e-5, "%g", imp[0]);
    calib_importance(s, 0, ENGINE_SITE_DOWN, (float[8]){0}, 8);   /* nothing seen: no crash */
    calib_free(s);
}

/* sum_c imp_c (w_c - dequantized w_c)^2 over a whole matrix */
static double weighted_error(const float *w, const tensor *q, const float *imp) {
    float *row = pg_xmalloc((size_t)q->cols * sizeof *row);
    double e = 0;
    for (int64_t r = 0; r < q->rows; r++) {
        quant_dequant_row(q, r, row);
        for (int64_t c = 0; c < q->cols; c++) {
            double d = (double)w[r * q->cols + c] - row[c];
            e += imp[c] * d * d;
        }
    }
    free(row);
    return e;
}

Test(calib, weighted_quantizer_beats_the_plain_one_where_it_matters) {
    pg_rng r;
    pg_rng_seed(&r, 21);
    int rows = 48, cols = 256;
    float *w = randn(&r, (size_t)rows * cols, 0.02f);
    float *imp = pg_xmalloc((size_t)cols * sizeof *imp);
    for (int c = 0; c < cols; c++) imp[c] = 0.5f + pg_rng_uniform(&r);
    imp[7] = imp[130] = 3000.f;   /* attention-sink columns: activations ~50x the rest */
    tensor src = {.dtype = PG_F32, .rows = rows, .cols = cols, .data = w, .nbytes = (size_t)rows * cols * 4,
                  .name = "w"};
    const struct { pg_dtype to; int group; double max_ratio; } cases[] = {
        {PG_QI4, 32, 0.5}, {PG_QI4, 64, 0.5}, {PG_QI4, 128, 0.5}};
    pg_err err = {0};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tensor plain, wq;
        void *m1, *m2;
        cr_assert_eq(quant_matrix(&src, cases[k].to, cases[k].group, &plain, &m1, &err), PG_OK, "%s", err.msg);
        cr_assert_eq(quant_alloc(&src, cases[k].to, cases[k].group, &wq, &m2, &err), PG_OK, "%s", err.msg);
        quant_rows_weighted(&src, &wq, imp, 0, 20);   /* two row ranges, as threads do */
        quant_rows_weighted(&src, &wq, imp, 20, rows);
        double ep = weighted_error(w, &plain, imp), ew = weighted_error(w, &wq, imp);
        cr_log_info("%s g%d: weighted error weighted / plain = %.3f", pg_dtype_name(cases[k].to), cases[k].group,
                    ew / ep);
        cr_assert_leq(ew, ep, "%s g%d: weighted %g > plain %g", pg_dtype_name(cases[k].to), cases[k].group, ew, ep);
        cr_assert_leq(ew, cases[k].max_ratio * ep, "%s g%d: weighted %g vs plain %g", pg_dtype_name(cases[k].to),
                      cases[k].group, ew, ep);
        /* NULL importance is the plain quantizer, bit for bit */
        quant_rows_weighted(&src, &wq, NULL, 0, rows);
        cr_assert_eq(memcmp(plain.data, wq.data, plain.nbytes), 0);
        int ng = cols / cases[k].group;
        cr_assert_eq(memcmp(plain.qscale, wq.qscale, (size_t)rows * ng * 2), 0);
        free(m1);
        free(m2);
    }
    free(w);
    free(imp);
}

/* The observer sees every layer and site once per forward chunk, in order,
 * with the widths of the sites, and all prompt tokens. */
typedef struct {
    int n_calls, n_tok[ENGINE_SITES], cols[ENGINE_SITES], last_layer, last_site, in_order;
    double sum_sq_qkv0;
} seen_t;

static void record(void *ctx, int layer, engine_site site, const float *x, int n, int cols) {
    seen_t *s = ctx;
    int k = layer * ENGINE_SITES + (int)site, prev = s->last_layer * ENGINE_SITES + s->last_site;
    if (s->n_calls > 0 && k != prev + 1 && k != 0) s->in_order = 0;
    s->last_layer = layer;
    s->last_site = (int)site;
    s->n_calls++;
    if (layer == 0) s->n_tok[site] += n;
    s->cols[site] = cols;
    if (layer == 0 && site == ENGINE_SITE_QKV)
        for (int i = 0; i < n * cols; i++) s->sum_sq_qkv0 += (double)x[i] * x[i];
}

Test(calib, cpu_engine_hands_every_site_to_the_observer) {
    model *m = te_load_random("tiny-llama");
    engine_opts o;
    engine_opts_default(&o);
    o.max_seq_len = 128;
    o.n_threads = 2;
    seen_t s = {.in_order = 1};
    o.observe = record;
    o.observe_ctx = &s;
    engine *e = te_create(m, &o, 1);
    int32_t toks[100];
    for (int i = 0; i < 100; i++) toks[i] = 1 + (i * 7) % (m->cfg.vocab_size - 1);
    engine_row row = {.slot = 0, .tokens = toks, .n_tokens = 100, .pos = 0, .sample = 1};
    engine_result res;
    te_step(e, &row, 1, &res);   /* 100 tokens: two chunks of the CPU engine */
    cr_assert(s.in_order, "sites out of order");
    cr_assert_eq(s.n_calls % (ENGINE_SITES * m->cfg.n_layers), 0, "%d calls", s.n_calls);
    for (int k = 0; k < ENGINE_SITES; k++) cr_assert_eq(s.n_tok[k], 100, "site %d: %d tokens", k, s.n_tok[k]);
    cr_assert_eq(s.cols[ENGINE_SITE_QKV], m->cfg.dim);
    cr_assert_eq(s.cols[ENGINE_SITE_O], m->cfg.n_heads * m->cfg.head_dim);
    cr_assert_eq(s.cols[ENGINE_SITE_DOWN], m->cfg.hidden_dim);
    /* the QKV input is RMS-normed with unit weights (random model): mean square ~ 1 */
    double ms = s.sum_sq_qkv0 / (100.0 * m->cfg.dim);
    cr_assert(ms > 0.5 && ms < 2.0, "mean square of the normed input %g", ms);
    engine_free(e);
    model_free(m);
}

Test(calib, int8_and_stored_formats_are_not_calibrated) {
    model *m = te_load_random("tiny-llama");
    calib_stats *cs = calib_new(&m->cfg);
    quant_weights qw;
    pg_err err = {0};
    cr_assert_eq(quant_weights_make_calib(m, PG_QI8, 32, 0, cs, NULL, &qw, &err), PG_EINVAL);
    cr_assert(strstr(err.msg, "int4"), "%s", err.msg);
    cr_assert_eq(quant_weights_make_calib(m, PG_DTYPE_COUNT, 32, 0, cs, NULL, &qw, &err), PG_EINVAL);
    cr_assert_eq(quant_weights_make_calib(m, PG_QI4, 32, 0, cs, NULL, &qw, &err), PG_OK, "%s", err.msg);
    cr_assert_eq(qw.w.layers[0].wq.dtype, PG_QI4);
    quant_weights_free(&qw);
    calib_free(cs);
    model_free(m);
}

Test(calib, observing_is_refused_on_cuda) {
    model *m = te_load_random("tiny-llama");
    engine_opts o;
    engine_opts_default(&o);
    o.device = ENGINE_DEVICE_CUDA;
    o.observe = record;
    engine *e = NULL;
    pg_err err = {0};
    cr_assert_eq(engine_create(m, &o, &e, &err), PG_EUNSUPPORTED);
    cr_assert(strstr(err.msg, "cpu"), "%s", err.msg);
    model_free(m);
}
