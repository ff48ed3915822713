/* model/calib.c — calibration statistics (calib.h). */
#include "calib.h"

#include <stdlib.h>

struct calib_stats {
    int      n_layers;
    int      cols[ENGINE_SITES];
    double  *sq[ENGINE_SITES];     /* [n_layers][cols]: sum over tokens of x_c^2 */
    int64_t  n_tokens;             /* tokens seen: counted at layer 0, site QKV; every layer and site
                                      sees the same tokens (engine_opts.observe) */
    int      paused;
};

calib_stats *calib_new(const model_config *c) {
    calib_stats *s = pg_xcalloc(1, sizeof *s);
    s->n_layers = c->n_layers;
    int cols[ENGINE_SITES] = {c->dim, c->n_heads * c->head_dim, c->dim, c->hidden_dim};
    for (int k = 0; k < ENGINE_SITES; k++) {
        s->cols[k] = cols[k];
        s->sq[k] = pg_xcalloc((size_t)(c->n_layers > 0 ? c->n_layers : 1) * (size_t)cols[k], sizeof(double));
    }
    return s;
}

void calib_free(calib_stats *s) {
    if (!s) return;
    for (int k = 0; k < ENGINE_SITES; k++) free(s->sq[k]);
    free(s);
}

void calib_pause(calib_stats *s, int on) { s->paused = on; }

int64_t calib_tokens(const calib_stats *s) { return s->n_tokens; }

int calib_site_cols(const calib_stats *s, engine_site site) {
    PG_ASSERT(site >= 0 && site < ENGINE_SITES);
    return s->cols[site];
}

void calib_observe(void *ctx, int layer, engine_site site, const float *x, int n, int cols) {
    calib_stats *s = ctx;
    if (s->paused) return;
    PG_ASSERT(layer >= 0 && layer < s->n_layers && site >= 0 && site < ENGINE_SITES && cols == s->cols[site]);
    double *sq = s->sq[site] + (size_t)layer * cols;
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * cols;
        for (int c = 0; c < cols; c++) sq[c] += (double)xt[c] * xt[c];
    }
    if (layer == 0 && site == ENGINE_SITE_QKV) s->n_tokens += n;
}

void calib_importance(const calib_stats *s, int layer, engine_site site, float *imp, int cols) {
    PG_ASSERT(layer >= 0 && layer < s->n_layers && site >= 0 && site < ENGINE_SITES && cols == s->cols[site]);
    const double *sq = s->sq[site] + (size_t)layer * cols;
    double n = s->n_tokens > 0 ? (double)s->n_tokens : 1.0, mean = 0;
    for (int c = 0; c < cols; c++) mean += sq[c] / n / cols;
    for (int c = 0; c < cols; c++) imp[c] = (float)(sq[c] / n + CALIB_IMP_FLOOR * mean);
}
