/*
 * tools/ — programs that measure: `peregrine bench` (engine-only speed),
 * `peregrine perplexity` (accuracy of a weight format / KV cache type on a
 * fixed text) and, later, `peregrine loadtest` (drives any OpenAI-compatible
 * server).
 * Each exports a main-style entry that server/main.c dispatches to.
 */
#ifndef PG_TOOLS_H
#define PG_TOOLS_H

/* `peregrine bench ARGS` (argv[0] == "bench"). Returns the process exit code. */
int bench_main(int argc, char **argv);

/* --help lines of the weight and KV format options that bench and perplexity
 * share (engine_opts_parse_formats reads them; generate and serve list the
 * same options from their option tables). */
#define TOOLS_FORMAT_OPTIONS_HELP \
    "  --quant none|bf16|int8|int4  weight format (default none = as stored)\n" \
    "  --group-size 32|64|128   int4 group size (default 32)\n" \
    "  --quant-lm-head          give the LM head the --quant format even when it is stored quantized\n" \
    "  --no-quant-lm-head       keep the LM head in its stored format under --quant\n" \
    "                           (default: quantize an F32/F16/BF16 LM head, keep an already-quantized one)\n" \
    "  --kv-cache auto|f32|bf16|int8  KV cache type (default auto: f32 CPU, bf16 CUDA)\n"

/* `peregrine quantize IN OUT --quant int8|int4 [--group-size N] [--no-quant-lm-head]`
 * (tools/quantize.c): writes a quantized checkpoint (model/quant.h). */
int quantize_main(int argc, char **argv);

/* `peregrine perplexity ARGS` (tools/perplexity.c): perplexity of a model on
 * a text file in windows of --ctx tokens. Returns the process exit code. */
int perplexity_main(int argc, char **argv);

/* The scoring behind it, for tests. */
#include <stdint.h>
#include "../common/common.h"
struct engine;

typedef struct {
    int64_t n_scored;   /* tokens scored */
    double  nll_sum;    /* sum of -log p(token | window prefix), nats, f64 */
    int     n_windows;
} ppl_result;

/* -log softmax(logits)[target], in f64 with the max subtracted. */
double ppl_token_nll(const float *logits, int vocab, int target);

/* Window i0 of text ids[0..n): with bos >= 0, bos then the next ctx-1 text
 * tokens from i0, else the next ctx; fewer at the end. Written to win[ctx];
 * returns its length. ppl_score and `peregrine quantize --calib` both cut
 * text this way, stepping i0 by ppl_window_text(ctx, bos). */
int ppl_window(const int32_t *ids, int64_t n, int64_t i0, int ctx, int bos, int32_t *win);
static inline int ppl_window_text(int ctx, int bos) { return bos >= 0 ? ctx - 1 : ctx; }

/* Score text ids[0..n) in non-overlapping windows of ctx tokens on slot 0 of
 * e (max_seq_len >= ctx): with bos >= 0 each window is bos + ctx-1 text
 * tokens, else ctx text tokens; the last window takes what is left. Every
 * window token after the first is scored from the logits of the position
 * before it. Windows are prefilled in engine steps of `step` tokens
 * (<= 0: 512) with engine_keep_all_logits. Leaves slot 0 reset-able. */
int ppl_score(struct engine *e, const int32_t *ids, int64_t n, int ctx, int bos, int step,
              ppl_result *out, pg_err *err);

#endif
