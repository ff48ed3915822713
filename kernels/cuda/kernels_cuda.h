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
 *   - The KV cache of one layer is bf16 [slot][kv_head][max_seq][head_dim].
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
typedef struct {
    pg_dtype dtype;
    int      rows, cols;
    void    *q;
    void    *s;
} kc_matrix;

/* Bytes the matrix occupies on the device (q + s). */
size_t kc_matrix_bytes(pg_dtype dtype, int64_t rows, int64_t cols);
/* Bytes of q and s separately. */
size_t kc_matrix_q_bytes(pg_dtype dtype, int64_t rows, int64_t cols);
size_t kc_matrix_s_bytes(pg_dtype dtype, int64_t rows, int64_t cols);

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

/* ------------------------------------------------------------ matmul */
/* Decode matrix-vector: y[i] = W x[i] for i < n (any n; kernels run 1..8
 * columns at a time). x: [n][cols] fp32, y: [n][rows] fp32. */
void k_gemv(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s);
/* Fused SwiGLU: W holds gate rows [0, h) then up rows [h, 2h);
 * y[i][j] = silu(gate_j . x[i]) * (up_j . x[i]); y: [n][h]. */
void k_gemv_swiglu(const kc_matrix *w, const float *x, int n, float *y, cudaStream_t s);

/* cuBLASLt bf16 GEMM for prefill: Y[n][rows] (fp32) = X[n][cols] (bf16) W^T.
 * W must be PG_BF16. The context owns the handle and a workspace. */
typedef struct kc_gemm_ctx kc_gemm_ctx;
int  kc_gemm_ctx_init(kc_gemm_ctx **out, pg_err *err);
void kc_gemm_ctx_free(kc_gemm_ctx *c);
void k_gemm_bf16(kc_gemm_ctx *c, const kc_matrix *w, const kc_bf16 *x, int n,
                 float *y, cudaStream_t s);

/* ------------------------------------------------------------ attention */
/*
 * Decode attention (flash-decoding). For each of n rows: query q[i] (row
 * stride q_stride floats; n_heads*head_dim), cache slot slot[i], valid length
 * pos[i]+1. The sequence is split into chunks of KC_ATTN_CHUNK positions; each
 * (row, kv_head, chunk) block handles all query heads of its GQA group and
 * writes a partial (max, sum, o) to `part`; chunks past the valid length skip
 * the work. The last block to finish for a (row, kv head) merges the chunks
 * in a fixed order (deterministic).
 * out: [n][n_heads*head_dim] fp32 (row stride out_stride).
 * part: workspace of k_attn_decode_part_floats(...) floats, ZEROED once
 * before first use (its tail holds arrival counters that every launch leaves
 * at zero again).
 */
#define KC_ATTN_CHUNK 64
size_t k_attn_decode_part_floats(int n, kc_attn_shape sh);
void k_attn_decode(const float *q, int q_stride, int n, const int32_t *pos,
                   const int32_t *slot, const kc_bf16 *kc, const kc_bf16 *vc,
                   kc_attn_shape sh, float *part, float *out, int out_stride,
                   cudaStream_t s);
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
