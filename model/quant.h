/*
 * model/quant.h — weight-only quantized matrices: the one contract that the
 * CPU engine, the CUDA engine, `peregrine quantize` and the checkpoint reader
 * share. At batch-1 decode every weight is read once per token, so fewer bytes
 * per weight is proportionally more tokens/s.
 *
 * Formats (canonical host layout; a device may reorder once at upload into
 * the layout its kernels want, but must compute the same values):
 *
 *   PG_QI8  int8 q[rows][cols], f16 qscale[rows][cols/group]
 *             w[r][c] = s * q      s = qscale[r][c/group], q in -127..127
 *           --quant int8 makes group = cols (one scale per output channel,
 *           symmetric); GGUF Q8_0 loads exactly as group = 32.
 *
 *   PG_QI4  u8 q[rows][cols/2] (element c in byte c/2, low nibble for even c),
 *           f16 qscale[rows][cols/group], f16 qmin[rows][cols/group]
 *             w[r][c] = s * q + m  (the product rounded to f32, then the add),
 *             q in 0..15
 *           --quant int4 --group-size 32|64|128: asymmetric, a scale and a
 *           zero point per group (gpt-fast / torchao int4 weight-only: their
 *           "zero" z with w = (q - 8) s + z is our m + 8 s). GGUF Q4_1
 *           (d*q + m) loads exactly as group = 32 with s = d, m = m; Q4_0
 *           (d*(q-8)) as s = d, m = -8 d (exact in f16).
 *
 * Quantizer (quant_matrix; the CUDA quantizer must give bit-identical q and
 * parameters so that CPU and GPU run the same model):
 *   each group's source values are first converted to f32 (ref_dequant_row);
 *   QI8: a = max|w|; s16 = f16(a / 127); sf = f32(s16);
 *        q = sf > 0 ? clamp(rintf(w / sf), -127, 127) : 0
 *   QI4: lo = min w, hi = max w; s16 = f16((hi - lo) / 15); m16 = f16(lo);
 *        sf = f32(s16), mf = f32(m16);
 *        q = sf > 0 ? clamp(rintf((w - mf) / sf), 0, 15) : 0
 *   rintf rounds half to even (the default rounding mode); / is IEEE division.
 *
 * Units: group in elements along cols; nbytes of a quantized tensor counts q
 * only (quant_tensor_bytes counts q + parameters).
 */
#ifndef PG_QUANT_H
#define PG_QUANT_H

#include "model.h"

/* 1 if `group` is valid for `to` on a matrix of `cols` columns: QI8 any group
 * that divides cols (cols itself = per channel); QI4 32, 64 or 128 dividing
 * cols (cols even). */
int    quant_group_ok(pg_dtype to, int group, int64_t cols);

/* The group a matrix of `cols` columns gets when `group` is asked for:
 * `group` itself when quant_group_ok; for QI4 otherwise the largest of 64
 * and 32 below it that fits (--group-size 128 on the default model's
 * 576-wide matrices gives them 64, its 1536-wide down_proj keeps 128);
 * 0 when none fits. quant_weights_make uses it, and any device that
 * quantizes at load must too, so that every device holds the same model. */
int    quant_group_for(pg_dtype to, int group, int64_t cols);

/* Bytes of q + qscale (+ qmin) of a rows x cols QI8/QI4 matrix. */
size_t quant_tensor_bytes(pg_dtype t, int64_t rows, int64_t cols, int group);

/*
 * Quantize a matrix stored in any dtype (F32/F16/BF16/Q8_0/Q4_0/Q4_1) into a
 * fresh QI8 or QI4 tensor with the quantizer above. *dst gets shape, dtype,
 * group, data/qscale/qmin pointing into one malloc'd block returned in *mem
 * (the caller frees it, after which *dst is invalid), and src's name.
 * Rows [r0, r1) only when r1 > r0 (for threads: call on disjoint row ranges
 * of a tensor prepared by quant_alloc); quant_matrix does all rows.
 * Errors: PG_EINVAL for a bad group or dtype, PG_ENOMEM.
 */
int  quant_matrix(const tensor *src, pg_dtype to, int group, tensor *dst, void **mem,
                  pg_err *err);
int  quant_alloc(const tensor *src, pg_dtype to, int group, tensor *dst, void **mem,
                 pg_err *err);
void quant_rows(const tensor *src, tensor *dst, int64_t r0, int64_t r1);
/*
 * The calibrated quantizer (`peregrine quantize --calib`, model/calib.h), QI4
 * only: as quant_rows, but each group's scale and minimum minimise the
 * weighted error sum_c imp[c] (w_c - dequantized w_c)^2, imp = importance of
 * the input columns [cols] (NULL: exactly quant_rows, any format). Codes are
 * the same function of the parameters as above (clamp(rintf(...))), so the
 * format and its dequantization do not change. Candidates: the min/max
 * parameters, and 81 code grids (15 + 0.1 k steps over [min, max], k = -40..40)
 * each fitted by weighted least squares, then refitted once to the codes its
 * rounded parameters give; the lowest weighted error wins, so it is never
 * worse than min/max. Deterministic; about 10x the time of quant_rows (35 s
 * for the default model on 2 cores). For int8 per channel the same fit
 * measured no gain (bench/results/cpu.md), so int8 has none.
 */
void quant_rows_weighted(const tensor *src, tensor *dst, const float *imp, int64_t r0, int64_t r1);

/*
 * GGUF blocks -> our layout without a round trip through floats:
 * Q8_0 -> QI8 group 32; Q4_0 and Q4_1 -> QI4 group 32. Dequantized values are
 * bitwise those of ref_dequant_row on the source. PG_EINVAL for other dtypes.
 */
int  quant_from_gguf(const tensor *src, tensor *dst, void **mem, pg_err *err);

/* dst[cols] = dequantized row r of a QI8/QI4 tensor (the reference). */
void quant_dequant_row(const tensor *t, int64_t r, float *dst);

/* Row r of any host tensor (plain, GGUF block or QI8/QI4) as f32. */
void quant_any_row(const tensor *t, int64_t r, float *dst);

/* Bytes a tensor holds: nbytes plus, for QI8/QI4, its f16 parameters. */
size_t quant_held_bytes(const tensor *t);

/*
 * The weights a CPU engine or `peregrine quantize` holds for one weight
 * format. to = PG_BF16 | PG_QI8 | PG_QI4, or PG_DTYPE_COUNT for "as stored":
 *   every projection matrix (wq wk wv wo w_gate w_up w_down) becomes `to`
 *   (QI8: group = cols, one scale per output channel, whatever `group` says;
 *   QI4: quant_group_for(`group`)); BF16 rounds the exactly dequantized
 *   values to nearest even;
 *   the LM head too when lm_head = 1, else it stays as stored; tied
 *   embeddings give the LM head its own converted copy;
 *   the embedding table and the norm vectors always stay as stored.
 * A source tensor already in the target format (same dtype and group: a
 * checkpoint written by `peregrine quantize`) is borrowed, not converted.
 * Other sources are dequantized exactly (quant_any_row) and re-quantized with
 * quant_rows, so QI8/QI4 results are bitwise those of quant_matrix.
 * pool: conversion runs on its threads (NULL: the calling thread).
 * out->w has its own layers array; its tensors point into the model or into
 * out's blocks, so the model must outlive out. bytes counts every distinct
 * tensor held once (q + parameters). Free with quant_weights_free.
 * Errors: PG_EINVAL (a group that does not fit a matrix, a tensor without
 * host data), PG_ENOMEM.
 */
/* The default of the LM head's format under --quant (engine_opts.quant_lm_head
 * = -1, "auto"): 1 when the stored LM head (lm_head, or the embedding table
 * when tied) is F32/F16/BF16, so --quant shrinks it like every other matrix
 * (as gpt-fast does); 0 when it is already quantized (GGUF Q8_0/Q4_x, or the
 * QI8/QI4 of a checkpoint), where re-quantizing adds error for little or no
 * saving: on the default model (Q8_0 head) --quant int8 re-quantized costs
 * +0.52% perplexity against +0.43% with the head as stored, for 1.00 vs 1.06
 * bytes per weight (bench/results/cpu.md). */
int  quant_lm_head_auto(const model *m);

struct pg_pool;
typedef struct {
    model_weights w;
    void        **mem;    /* owned blocks */
    int           n_mem;
    size_t        bytes;
} quant_weights;

/*
 * Write a quantized checkpoint folder `dir` (created if missing) that
 * model_load reads directly (model/safetensors.c):
 *   model.safetensors  our HF tensor names; a QI8/QI4 weight W as W.q (I8
 *                      [rows, cols] | U8 [rows, cols/2]), W.scale (F16
 *                      [rows, cols/group]), W.min (F16, QI4 only); plain
 *                      F32/F16/BF16 tensors as stored; GGUF Q8_0/Q4_0/Q4_1
 *                      tensors (embedding, an unconverted LM head) as their
 *                      exact QI8/QI4 group-32 form (quant_from_gguf).
 *                      __metadata__: format "peregrine-quant", version "1",
 *                      quant (`quant_name`), group_size, quant_lm_head,
 *                      rope_interleaved, source.
 *   config.json        HF field names; tie_word_embeddings only when the LM
 *                      head is the embedding table itself.
 *   tokenizer          from a GGUF source: tokenizer.gguf, the source's
 *                      metadata entries with no tensors (read by
 *                      model_load_tokenizer), and chat_template.jinja; from
 *                      an HF folder: its tokenizer and template files, copied.
 * qw holds the weights to write (quant_weights_make on m). Errors name the
 * file: PG_EIO, PG_ENOMEM.
 */
int  quant_write_checkpoint(const model *m, const quant_weights *qw, const char *quant_name, int group,
                            int lm_head, const char *dir, pg_err *err);

int  quant_weights_make(const model *m, pg_dtype to, int group, int lm_head, struct pg_pool *pool,
                        quant_weights *out, pg_err *err);
/* quant_weights_make with calibration (model/calib.h): every layer matrix is
 * quantized with quant_rows_weighted and the importance of its site's input
 * columns (NULL calib: = quant_weights_make). With calib, to must be PG_QI4.
 * Sources already in the target format are re-quantized too, not borrowed.
 * The LM head (lm_head = 1) is not calibrated. */
struct calib_stats;
int  quant_weights_make_calib(const model *m, pg_dtype to, int group, int lm_head, const struct calib_stats *calib,
                              struct pg_pool *pool, quant_weights *out, pg_err *err);
void quant_weights_free(quant_weights *qw);

#endif
