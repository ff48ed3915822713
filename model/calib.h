/*
 * model/calib.h — calibration statistics for weight quantization, behind
 * `peregrine quantize --calib TEXT` (an "importance matrix" in llama.cpp's
 * terms; AWQ and GPTQ start from the same statistics).
 *
 * Round to nearest (model/quant.h) treats every weight of a group alike. But
 * the error a weight adds to W x is (w - w_q) * x_c: weights on input columns
 * c that carry large activations matter more. On the default model a few
 * columns of the residual stream carry activations 100-1000x the rest on the
 * first token of a sequence (an attention sink), and rounding their weights
 * with a scale set by the others costs most of int4-g64/g128's perplexity.
 * calib_stats runs text through the CPU engine (calib_observe is its
 * engine_observe_fn) and gathers, per layer, site (engine_site) and input
 * column, the mean of x_c^2 over the calibration tokens. quant.h's weighted
 * quantizer then picks each group's scale and minimum to minimise
 * sum_c imp_c (w_c - w_q,c)^2 with imp = calib_importance.
 *
 * Tried and not kept (bench/results/cpu.md): GPTQ (full x x^T statistics,
 * error compensation across columns) made int4 g128 worse than round to
 * nearest on this model; the unweighted least-squares fit too; AWQ-style
 * column scaling on top of the weighted fit made it worse than the fit alone.
 *
 * Units: sums in f64, per (layer, site) one value per input column:
 * n_layers * (3 dim + hidden_dim) doubles (0.8 MB for the default model).
 */
#ifndef PG_CALIB_H
#define PG_CALIB_H

#include "engine.h"

typedef struct calib_stats calib_stats;

calib_stats *calib_new(const model_config *c);
void    calib_free(calib_stats *s);
/* An engine_observe_fn (ctx = the calib_stats). */
void    calib_observe(void *ctx, int layer, engine_site site, const float *x, int n, int cols);
/* While on, calib_observe ignores what it is handed. */
void    calib_pause(calib_stats *s, int on);
/* Tokens observed (counted at layer 0, site QKV). */
int64_t calib_tokens(const calib_stats *s);
/* Importance of the input columns of (layer, site), written to imp[cols]:
 * mean x_c^2 + CALIB_IMP_FLOOR * (mean over columns of mean x_c^2). The floor
 * keeps columns the calibration text barely used from being ignored (it
 * measured better than none, bench/results/cpu.md). cols must be the site's
 * width; all zeros before any token is observed. */
#define CALIB_IMP_FLOOR 0.1
void    calib_importance(const calib_stats *s, int layer, engine_site site, float *imp, int cols);
/* Width of a site's input (dim, n_heads*head_dim, dim, hidden_dim). */
int     calib_site_cols(const calib_stats *s, engine_site site);

#endif
