/*
 * kernels/cuda/kernels_cuda.h — the CUDA kernels of the decode and prefill
 * paths, as plain-C launchers `k_<op>(..., cudaStream_t)` (the kernels
 * themselves are `<op>_kernel` templates inside the .cu files).
 *
 * Every launcher has a CPU twin in kernels/kernels.h (ref_*; the sampler's is
 * model/sampler.h), and a test in tests/test_kernels_cuda.c that compares
 * them on fresh random inputs.
 *
 * Conventions:
 *   - Activations are fp32 unless a name says bf16; weights are held on the
 *     device as bf16 or in a repacked GGUF block format (kc_matrix), and every
 *     dot product accumulates in fp32.
 *   - Matrices are row-major [rows = out][cols = in]; y = W x.
 *   - The KV cache of one layer is bf16 [slot][kv_head][max_seq][head_dim],
 *     or int8 in the same layout plus one f32 scale per (slot, kv_head,
 *     position) ([slot][kv_head][max_seq]); the *_int8 launchers take it.
 *   - Per-step inputs (token ids, positions, slots) are device arrays so the
 *     decode step can be captured once in a CUDA graph and replayed.
 * Capture safety: no launcher allocates, synchronises or reads host memory
 * that changes between steps (k_gemm keeps a cuBLASLt handle in its context,
 * created once by kc_gemm_ctx_init). Launchers check their shape
 * preconditions with PG_ASSERT (programmer errors) and check the launch with
 * KC_CHECK, which aborts with file:line on a CUDA error (device errors are
 * sticky; the process cannot continue).
 * Thread safety: launchers are reentrant; a kc_gemm_ctx is used by one thread.
 */
#ifndef PG_KERNELS_CUDA_H
#define PG_KERNELS_CUDA_H

#include <stdint.h>
#include <stddef.h>
#include <cuda_runtime_api.h>
/* common.h uses C11 _Noreturn; the CUDA front end compiles it as C++. */
#if defined(__cplusplus) && !defined(_Noreturn)
#define _Noreturn [[noreturn]]
#endif
#include "../../common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Abort with the failing statement on a CUDA runtime error. */
#define KC_CHECK(x) do { cudaError_t kc_e_ = (x); if (kc_e_ != cudaSuccess) \
    pg_die(__FILE__, __LINE__, "CUDA: %s: %s", #x, cudaGetErrorString(kc_e_)); } while (0)

/* bf16 as raw bits on the host side. */
typedef uint16_t kc_bf16;

/*
 * A weight matrix as held on the device.
 *   PG_BF16: q = bf16 [rows][cols]; s = NULL.
 *   PG_Q8_0: q = int8 [rows][cols];          s = f16 d [rows][cols/32].
 *   PG_Q4_0: q = u8 [rows][cols/2] (GGUF nibble order within each block of
 *            32: byte j holds elements j (low) and j+16 (high));
 *            s = f16 d [rows][cols/32];       x = d*(q-8).
 *   PG_Q4_1: q as Q4_0; s = f16 {d, m} [rows][cols/32][2]; x = d*q + m.
 * The GGUF blocks are split into a quant array and a scale array at load
 * time (kc_repack_blocks) so that every row of quants is 16-byte aligned.
 */
/*
 * Peregrine's own weight-only formats (model/quant.h), as the CUDA engine
 * holds them (GGUF blocks are converted to these at load, kernels/cuda/quant.cu):
 *   PG_QI8: q = int8 [rows][cols] (the canonical layout);
 *           s = f16 scale [rows][cols/group]; w = s*q. group % 16 == 0
 *           (group = cols: one scale per output channel).
 *   PG_QI4: q = u8 [rows][cols/2], canonical nibble order (element c in byte
 *           c/2, low nibble for even c); s = u32 {f16 s (low half), f16 m
 *           (high half)} [rows][cols/group] — scale and minimum interleaved so
 *           one 4-byte load fetches both; w = s*q + m. group in {32, 64, 128}.
 * The decode kernels (gemv_quant.cu) read q with 16-byte loads: a 16-byte
 * unit is 16 QI8 or 32 QI4 elements, never straddling a group.
 *
 * Tiled QI8 / QI4 (tiles != KC_TILES_NONE; PG_QI8 with group = cols and
 * cols % 64 == 0, or PG_QI4 with cols % 128 == 0; rows % 16 == 0): q holds
 * the same bytes in the order the decode kernel reads them, so that each warp
 * copy is 1 KB of contiguous memory instead of 16 rows x 64 bytes 2 KB or
 * more apart. Rows are grouped into tiles of 16 "fragment rows"; a tile is
 * stored chunk by chunk, a chunk being 64 bytes (64 QI8 or 128 QI4 columns)
 * of its 16 rows, [tile][row bytes / 64][16][64] bytes.
 *   KC_TILES_ROWS:  tile k = rows 16k .. 16k + 15.
 *   KC_TILES_PAIRS: (SwiGLU, rows = 2h) tile k = rows 8k .. 8k + 7 of the
 *                   first half, then rows h + 8k .. h + 8k + 7 of the second.
 * s: QI8's one scale per row stays in row order; QI4's group words are
 * tiled alike, [tile][cols / 128][16][128 / group] words, so that the words a
 * warp copies with a chunk are contiguous too (kc_qi4_s_at).
 * kc_qi8_at gives a byte's place, kc_q_at an element's byte.
 */
enum { KC_TILES_NONE = 0, KC_TILES_ROWS = 1, KC_TILES_PAIRS = 2 };
typedef struct {
    pg_dtype dtype;
    int      rows, cols;
    void    *q;
    void    *s;
    int      group;   /* PG_QI8 / PG_QI4: elements per group along cols; 0 otherwise */
    int      tiles;   /* PG_QI8 / PG_QI4: KC_TILES_*; 0 (row-major) for every other format */
} kc_matrix;

#ifdef __CUDACC__
#define KC_HD __host__ __device__
#else
#define KC_HD
#endif
/* Row r's tile *k and fragment row *f (0..15) in `tiles` order. */
static inline KC_HD void kc_tile_of(int tiles, int64_t rows, int64_t r, int64_t *k, int64_t *f)
{
    if (tiles == KC_TILES_ROWS) {
        *k = r / 16; *f = r % 16;
    } else {
        const int64_t h = rows / 2, up = r >= h, rr = up ? r - h : r;
        *k = rr / 8; *f = rr % 8 + 8 * up;
    }
}
/* Byte offset of byte c of row r in q of a matrix of `rows` rows of `cols`
 * bytes stored with `tiles` (KC_TILES_*): QI8 element (r, c); for QI4 pass
 * the row's bytes (cols / 2) and the element's byte (c / 2), or use kc_q_at. */
static inline KC_HD int64_t kc_qi8_at(int tiles, int64_t rows, int64_t cols, int64_t r, int64_t c)
{
    int64_t k, f;
    if (tiles == KC_TILES_NONE) return r * cols + c;
    kc_tile_of(tiles, rows, r, &k, &f);
    return ((k * (cols / 64) + c / 64) * 16 + f) * 64 + c % 64;
}
/* Word index in s of group j of row r of a QI4 matrix rows x cols with
 * `group` stored with `tiles`. */
static inline KC_HD int64_t kc_qi4_s_at(int tiles, int64_t rows, int64_t cols, int group, int64_t r, int64_t j)
{
    int64_t k, f;
    if (tiles == KC_TILES_NONE) return r * (cols / group) + j;
    const int64_t wpc = 128 / group;   /* words per row and 128-column chunk */
    kc_tile_of(tiles, rows, r, &k, &f);
    return ((k * (cols / 128) + j / wpc) * 16 + f) * wpc + j % wpc;
}
/* Byte offset in q of the byte that holds element (r, c) of m (QI8 or QI4). */
static inline KC_HD int64_t kc_q_at(const kc_matrix *m, int64_t r, int64_t c)
{
    return m->dtype == PG_QI4 ? kc_qi8_at(m->tiles, m->rows, m->cols / 2, r, c / 2)
                              : kc_qi8_at(m->tiles, m->rows, m->cols, r, c);
}
/* 1 when m (PG_QI8 / PG_QI4, shape and group set) can be stored with `tiles`. */
static inline int kc_q_tileable(const kc_matrix *m, int tiles)
{
    const int shape = m->dtype == PG_QI8 ? m->group == m->cols && m->cols % 64 == 0
                                         : m->dtype == PG_QI4 && m->cols % 128 == 0 && m->group >= 32 &&
                                               128 % m->group == 0;   /* whole group words per chunk */
    return shape && m->rows % 16 == 0 && (tiles == KC_TILES_ROWS || tiles == KC_TILES_PAIRS);
}

/* Bytes the matrix occupies on the device (q + s). */
size_t kc_matrix_bytes(pg_dtype dtype, int64_t rows, int64_t cols);
/* Bytes of q and s separately. */
size_t kc_matrix_q_bytes(pg_dtype dtype, int64_t rows, int64_t cols);
size_t kc_matrix_s_bytes(pg_dtype dtype, int64_t rows, int64_t cols);
/* The same for every dtype including PG_QI8 / PG_QI4 (group used only there). */
size_t kc_qm_q_bytes(pg_dtype dtype, int64_t rows, int64_t cols, int group);
size_t kc_qm_s_bytes(pg_dtype dtype, int64_t rows, int64_t cols, int group);
size_t kc_qm_bytes(pg_dtype dtype, int64_t rows, int64_t cols, int group);

/* ------------------------------------------------------------ quantization
 * (kernels/cuda/quant.cu; CPU twins in model/quant.c)
 * k_quantize: rows [0, rows) of a source matrix on the device, stored as
 * F32/F16/BF16 or GGUF Q8_0/Q4_0/Q4_1 blocks, -> rows [row0, row0 + rows) of
 * dst (PG_QI8 or PG_QI4 with dst->group set), with the arithmetic of
 * quant_matrix (model/quant.h): bit-identical q and f16 parameters.
 * k_quant_from_gguf: GGUF Q8_0 -> QI8 group 32, Q4_0 / Q4_1 -> QI4 group 32,
 * exactly (quant_from_gguf), no float round trip.
 * k_quantize and k_quant_from_gguf write q (and QI4's words) in dst->tiles
 * order (kc_q_at, kc_qi4_s_at);
 * the QI8 g32 of k_quant_from_gguf is never tileable.
 * k_dequant_bf16: rows [r0, r0 + nrows) of a QI8/QI4 matrix -> bf16
 * dst[nrows][cols] (prefill feeds these tiles to the tensor cores).
 * k_blocks_to_bf16: n elements of GGUF blocks -> bf16 (--quant bf16 of a GGUF file).
 * kc_pack_qparams (host): canonical f16 scale[n] (+ min[n] for QI4) -> the
 * device parameter array above (out: 2n bytes for QI8, 4n for QI4). */
void k_quantize(const void *src, pg_dtype src_t, int64_t rows, int64_t cols, kc_matrix *dst,
                int64_t row0, cudaStream_t s);
void k_quant_from_gguf(const void *src, pg_dtype src_t, int64_t rows, int64_t cols, kc_matrix *dst,
                       int64_t row0, cudaStream_t s);
void k_dequant_bf16(const kc_matrix *w, int64_t r0, int64_t nrows, kc_bf16 *dst, cudaStream_t s);
/* Rows [0, rows) of a row-major q array (src, on the device: the q bytes of
 * a QI8 / QI4 checkpoint) -> rows [row0, row0 + rows) of dst's q in dst's
 * tile order (any dst->tiles; the scales are the caller's: QI8's as they are,
 * QI4's through k_qi4_s_place). */
void k_q_place(const uint8_t *src, int64_t rows, kc_matrix *dst, int64_t row0, cudaStream_t s);
/* The same for the group words of a tiled QI4 dst: src = rows x (cols /
 * group) words in row order (kc_pack_qparams) -> dst->s in kc_qi4_s_at order. */
void k_qi4_s_place(const uint32_t *src, int64_t rows, kc_matrix *dst, int64_t row0, cudaStream_t s);
void k_blocks_to_bf16(const void *src, pg_dtype src_t, int64_t n, kc_bf16 *dst, cudaStream_t s);
void kc_pack_qparams(pg_dtype t, const uint16_t *scale, const uint16_t *min, size_t n, void *out);

/* ------------------------------------------------------------ conversion */
/* GGUF blocks (src, device, rows*cols/32 blocks of `dtype`) -> q/s arrays of m
 * at row offset row0 (m->q/m->s point at row 0 of the whole matrix). */
void k_repack_blocks(const void *src, pg_dtype dtype, int64_t rows, int64_t cols,
                     kc_matrix *m, int64_t row0, cudaStream_t s);
/* n elements of F32/F16/BF16 (src on the device) -> bf16. */
void k_to_bf16(const void *src, pg_dtype dtype, int64_t n, kc_bf16 *dst, cudaStream_t s);
/* n elements of F32/F16/BF16 -> f32. */
void k_to_f32(const void *src, pg_dtype dtype, int64_t n, float *dst, cudaStream_t s);
/* Normal(mean, std) bf16 / f32 values from (seed, stream id): deterministic. */
void k_fill_normal_bf16(kc_bf16 *dst, int64_t n, uint64_t seed, float mean, float std,
                        cudaStream_t s);
void k_fill_normal_f32(float *dst, int64_t n, uint64_t seed, float mean, float std,
                       cudaStream_t s);
void k_f32_to_bf16(const float *src, kc_bf16 *dst, int64_t n, cudaStream_t s);

/* ------------------------------------------------------------ elementwise */
/* out[i][:] = dequant(emb row tokens[i]) for i < n; out is [n][emb->cols]. */
void k_embed(const kc_matrix *emb, const int32_t *tokens, int n, float *out,
             cudaStream_t s);
/* For each of n rows of length dim: resid += delta (if delta != NULL), then
 * out = resid * rsqrt(mean(resid^2) + eps) * w. out_f32 and/or out_bf16 may be
 * NULL. resid, delta, out_f32: [n][dim]; w: [dim]. */
void k_add_rmsnorm(float *resid, const float *delta, const float *w, float eps,
                   int n, int dim, float *out_f32, kc_bf16 *out_bf16, cudaStream_t s);
/* y[i][j] = silu(gu[i][j]) * gu[i][hidden + j]; gu: [n][2*hidden], y: [n][hidden]
 * (fp32 and/or bf16 outputs, either may be NULL). */
void k_swiglu(const float *gu, int n, int hidden, float *y, kc_bf16 *y_bf16,
              cudaStream_t s);
/* y[i] += x[i] (n floats). */
void k_add(float *y, const float *x, int64_t n, cudaStream_t s);

/*
 * RoPE and the KV-cache write, fused. qkv: [n][row_stride] fp32 with q at
 * column 0 (n_heads*head_dim), k after it, v after k. For token i: position
 * pos[i], cache slot slot[i]. Rotates q in place; rotates k and writes it and
 * v (bf16) at kc/vc[slot][kv_head][pos][:]. inv_freq: [head_dim/2] (llama3
 * scaling already applied). interleaved: 1 = pairs (2i, 2i+1), 0 = (i, i+hd/2).
 */
typedef struct {
    int n_heads, n_kv_heads, head_dim, max_seq;
    int interleaved;
} kc_attn_shape;
void k_rope_kv_write(float *qkv, int row_stride, int n, const int32_t *pos,
                     const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                     kc_bf16 *kc, kc_bf16 *vc, cudaStream_t s);
/* The same for the int8 KV cache (layout and quantizer: kernels/kernels.h):
 * each rotated k head vector and each v head vector is quantized by the
 * ref_kv_quant_int8 rule (bitwise: same max, same f32 division, same
 * rounding) into kc/vc int8 [slot][kv_head][max_seq][head_dim] with its
 * scale in ks/vs f32 [slot][kv_head][max_seq]. The rotated k is also written
 * back into qkv (f32), so a test can quantize exactly the kernel's input. */
void k_rope_kv_write_int8(float *qkv, int row_stride, int n, const int32_t *pos,
                          const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                          int8_t *kc, int8_t *vc, float *ks, float *vs, cudaStream_t s);

/* ------------------------------------------------------------ matmul */
/* Decode matrix-vector: y[i] = W x[i] for i < n (any n; kernels run 1..8
 * columns at a time). x: [n][cols] fp32, y: [n][rows] fp32. */
void k_gemv(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s);
/* Fused SwiGLU: W holds gate rows [0, h) then up rows [h, 2h);
 * y[i][j] = silu(gate_j . x[i]) * (up_j . x[i]); y: [n][h]. */
void k_gemv_swiglu(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s);
/* The PG_QI8 / PG_QI4 variants of both (kernels/cuda/gemv_quant.cu; k_gemv and
 * k_gemv_swiglu dispatch to it): tensor cores, weights dequantized in
 * registers to f16 (s*q + m rounded once), x rounded to f16 after an exact
 * power-of-two scaling per column, f32 accumulation; swiglu = 1 for the fused
 * SwiGLU form. */
struct kc_gemv_epi;   /* below */
void k_gemv_q(const kc_matrix *w, const float *x, int n, float *y, int swiglu, const struct kc_gemv_epi *epi,
              cudaStream_t s);

/*
 * Decode products with the RMSNorm folded into their epilogues, so that a
 * layer's two add+RMSNorm kernels leave the decode step (each cost ~3 us of
 * hand-over and reduction on an H200 at batch 1, bench/results/h200.md).
 * RMSNorm is linear up to one scalar per column: W (x * inv * g) =
 * inv * (W (x * g)), so
 *   a producer (the product whose output is added to the residual stream:
 *   wo, w2; plain rows, not SwiGLU) stores nothing in y; for each output r of
 *   column n it does x[n][r] += v, xg[n][r] = x[n][r] * g[r] (g: the next
 *   RMSNorm's weight), and adds x[n][r]^2 to acc_out[n][slot] as fixed point
 *   (KC_SS_ONE units, integer atomics: the same bits in any order, so graph
 *   replay == eager; spread over KC_SS_SLOTS addresses per column so that
 *   thousands of atomics do not queue on one);
 *   a consumer (the next product, reading xg as its x) scales column n of
 *   its result by inv = rsqrt(sum(acc_in[n][*]) / KC_SS_ONE / cols + eps),
 *   before the SiLU for SwiGLU.
 * acc arrays are u64 [n][acc_ld] (acc_ld >= KC_SS_SLOTS; 0 means
 * KC_SS_SLOTS), zeroed before the producer runs.
 * Limits: sum(x^2) < 2^64 / KC_SS_ONE ~ 6.9e10 per column (|x| up to ~2.6e5
 * in one element; LLM residual streams stay far below), and each x^2 is
 * rounded to 2^-28 ~ 3.7e-9 (the norm's input is rounded, not the products').
 * A zeroed struct (or NULL) is the plain product. One kind per call: resid
 * and acc_in are not both set.
 */
#define KC_SS_ONE 268435456.0   /* 2^28 */
#define KC_SS_SLOTS 32
typedef struct kc_gemv_epi {
    float *resid, *xg;                     /* producer: residual stream and x * g, [n][rows] */
    const float *g;                        /* producer: the next RMSNorm's weight [rows] */
    unsigned long long *acc_out;           /* producer: [n][acc_ld], KC_SS_SLOTS used per column */
    const unsigned long long *acc_in;      /* consumer: the same */
    float eps;                             /* consumer */
    int acc_ld;                            /* u64 elements between columns of acc_out / acc_in */
} kc_gemv_epi;
/* k_gemv (swiglu = 0) or k_gemv_swiglu (swiglu = 1) with an epilogue; a
 * producer needs swiglu = 0 and ignores y. */
void k_gemv_epi(const kc_matrix *w, const float *x, int n, float *y, int swiglu, const kc_gemv_epi *epi,
                cudaStream_t s);

/* cuBLASLt bf16 GEMM for prefill: Y[n][rows] (fp32) = X[n][cols] (bf16) W^T.
 * W must be PG_BF16. The context owns the handle and a workspace. */
typedef struct kc_gemm_ctx kc_gemm_ctx;
int  kc_gemm_ctx_init(kc_gemm_ctx **out, pg_err *err);
void kc_gemm_ctx_free(kc_gemm_ctx *c);
void k_gemm_bf16(kc_gemm_ctx *c, const kc_matrix *w, const kc_bf16 *x, int n,
                 float *y, cudaStream_t s);
/* The same for a PG_QI8 / PG_QI4 W: row tiles dequantized into scratch
 * (scratch_elems bf16, >= 128 rows' worth or the whole matrix), then the
 * tensor-core GEMM per tile into Y (gemm.cu). */
void k_gemm_q(kc_gemm_ctx *c, const kc_matrix *w, const kc_bf16 *x, int n, float *y,
              kc_bf16 *scratch, size_t scratch_elems, cudaStream_t s);

/* ------------------------------------------------------------ attention */
/*
 * Decode attention (flash-decoding). For each of n rows: query q[i] (row
 * stride q_stride floats; n_heads*head_dim), cache slot slot[i], valid length
 * pos[i]+1. The sequence is cut into chunks of KC_ATTN_CHUNK positions (twice
 * that for the int8 cache) and the chunks into a fixed number of contiguous
 * splits (set by the shape and the SM count); each (row, kv_head, split)
 * block streams its chunks through shared memory with an online softmax for
 * all query heads of its GQA group and writes a partial
 * (max, sum, o) to `part`; splits past the valid length exit at once. The
 * last block to finish for a (row, kv head) merges the splits in a fixed
 * order (deterministic).
 * out: [n][n_heads*head_dim] fp32 (row stride out_stride).
 * part: workspace of k_attn_decode_part_floats(n_max, sh) floats for up to
 * n_max rows, ZEROED once before first use (each row starts with arrival
 * counters that every launch leaves at zero again; the row layout does not
 * depend on n, so launches with different batch sizes share it).
 */
#define KC_ATTN_CHUNK 64
size_t k_attn_decode_part_floats(int n, kc_attn_shape sh);
void k_attn_decode(const float *q, int q_stride, int n, const int32_t *pos,
                   const int32_t *slot, const kc_bf16 *kc, const kc_bf16 *vc,
                   kc_attn_shape sh, float *part, float *out, int out_stride,
                   cudaStream_t s);
/* k_attn_decode over the int8 cache (k_rope_kv_write_int8's layout),
 * dequantized in registers (x = s * q). Same workspace. */
void k_attn_decode_int8(const float *q, int q_stride, int n, const int32_t *pos,
                        const int32_t *slot, const int8_t *kc, const int8_t *vc,
                        const float *ks, const float *vs, kc_attn_shape sh, float *part,
                        float *out, int out_stride, cudaStream_t s);
/* RoPE + KV-cache write + decode attention in one launch (the decode step's
 * form): qkv rows as for k_rope_kv_write, q and the new k/v not rotated or
 * written yet. Same results, bit for bit, as k_rope_kv_write(_int8) followed
 * by k_attn_decode(_int8), except that q stays unrotated in qkv (the rotated
 * k is written back, as there). */
void k_rope_attn_decode(float *qkv, int row_stride, int n, const int32_t *pos,
                        const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                        kc_bf16 *kc, kc_bf16 *vc, float *part, float *out, int out_stride,
                        cudaStream_t s);
void k_rope_attn_decode_int8(float *qkv, int row_stride, int n, const int32_t *pos,
                             const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                             int8_t *kc, int8_t *vc, float *ks, float *vs, float *part,
                             float *out, int out_stride, cudaStream_t s);
/*
 * Prefill attention for one sequence: n queries at positions pos0..pos0+n-1
 * of cache slot `slot`, causal over the cache (which already holds K/V for
 * positions [0, pos0+n)). Tensor cores (bf16 WMMA, bf16 Q and P) for head_dim
 * 64 and 128 when n >= 64 queries or the keys exceed 256; an fp32 scalar
 * kernel otherwise (short prompts then match the CPU engine more closely). Same q/out layout as k_attn_decode.
 */
void k_attn_prefill(const float *q, int q_stride, int n, int pos0, int slot,
                    const kc_bf16 *kc, const kc_bf16 *vc, kc_attn_shape sh,
                    float *out, int out_stride, cudaStream_t s);
/* k_attn_prefill over the int8 cache; the tensor-core path dequantizes K/V
 * tiles into bf16 shared memory (s * q rounded to bf16). */
void k_attn_prefill_int8(const float *q, int q_stride, int n, int pos0, int slot,
                         const int8_t *kc, const int8_t *vc, const float *ks, const float *vs,
                         kc_attn_shape sh, float *out, int out_stride, cudaStream_t s);

/* ------------------------------------------------------------ sampling */
/*
 * Device sampler. Per-slot state lives on the device (set by slot reset);
 * per-row inputs come with the step. Pipeline as model/sampler.h: raw
 * logprobs, logit bias, penalties, greedy or temperature + top-k + top-p +
 * min-p, one uniform draw u (drawn on the host from the slot's rng so the
 * CPU and GPU samplers share one random stream). Candidates are walked in
 * descending probability (ties -> lower id), as on the CPU (sample.cu says
 * where fp32 sums can make a boundary pick differ).
 */
#define KC_MAX_BIAS 128
typedef struct {
    float temperature, top_p, min_p;
    float rep_pen, pres_pen, freq_pen;
    int   top_k;
    int   n_bias;
    int   logprobs, top_logprobs;
    int32_t bias_ids[KC_MAX_BIAS];
    float   bias_vals[KC_MAX_BIAS];
} kc_sampler_params;

typedef struct {
    int32_t token;
    float   logprob;
    int32_t n_top;
    int32_t top_ids[20];
    float   top_logprobs[20];
} kc_sample_out;

typedef struct {
    const kc_sampler_params *params;  /* [max_slots] */
    int32_t *gen_count;               /* [max_slots][vocab] */
    uint8_t *seen;                    /* [max_slots][vocab] */
    float   *work;                    /* [n][vocab] scratch */
} kc_sampler_state;

/* Sample one token for each of n rows. logits: [n][vocab] (row i at
 * logits + i*vocab); slot, u, do_sample: [n]. Writes out[i] and records the
 * token into the slot's history (gen_count, seen) when do_sample[i]. */
void k_sample(const float *logits, int vocab, int n, const int32_t *slot,
              const float *u, const int32_t *do_sample, kc_sampler_state st,
              kc_sample_out *out, cudaStream_t s);
/* seen[slot][tokens[i]] = 1 for i < n (prompt tokens in the history). */
void k_mark_seen(uint8_t *seen, int vocab, int slot, const int32_t *tokens, int n,
                 cudaStream_t s);

/* ------------------------------------------------------------ benchmarks */
/* Micro-benchmarks of every hot kernel at the given model shape, printed as a
 * table (µs, GB/s or TFLOP/s, % of the copy bandwidth / GEMM rate measured in
 * the same run) to f. Returns PG_OK or a device error. */
int kc_microbench(FILE *f, int dim, int hidden, int n_heads, int n_kv_heads,
                  int head_dim, int vocab, pg_err *err);

#ifdef __cplusplus
}
#endif
#endif
