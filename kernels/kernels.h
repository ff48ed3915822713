/*
 * kernels/kernels.h — the math of one transformer step, as plain functions
 * over raw buffers. kernels/ knows nothing about requests, slots or files.
 *
 * This header lists the CPU kernels in two tiers:
 *   ref_*  scalar, obviously-correct C (kernels/ref.c). The reference every
 *          other implementation is tested against — the fast CPU kernels
 *          below and the CUDA launchers (kernels/cuda/kernels_cuda.h).
 *   cpu_*  the vectorised versions the CPU engine runs (kernels/ref_fast.c;
 *          AVX-512F / AVX2+FMA+F16C paths chosen at compile time, with a
 *          scalar fallback). Each takes a work range so a thread pool
 *          (kernels/threadpool.h) can split it; no cpu_* function allocates.
 *
 * Conventions (all kernels):
 *   - Activations are f32, row-major; a batch of n token vectors is [n][dim].
 *   - Weight matrices are row-major [rows = out][cols = in] in their stored
 *     dtype (common.h pg_dtype: F32, F16, BF16, Q8_0, Q4_0, Q4_1); quantized
 *     blocks of 32 run along cols. Dequantization is exact in f32 and follows
 *     the GGUF reference formulas: Q8_0 d*q, Q4_0 d*(q-8), Q4_1 d*q + m (the
 *     product rounded to f32 before the add, as numpy/gguf-py do).
 *   - Accumulation is f32 everywhere.
 *   - The KV cache of one (layer, slot) is two f32 arrays
 *     k, v: [n_kv_heads][max_seq][head_dim]; position p of kv head h is at
 *     (h * max_seq + p) * head_dim.
 *   - int8 KV cache (--kv-cache int8, CPU and CUDA alike): the same layout
 *     with int8 elements, plus one f32 scale per (kv head, position):
 *     ks, vs: [n_kv_heads][max_seq] at h * max_seq + p. Each head vector is
 *     quantized once, when written, by ref_kv_quant_int8; attention reads
 *     x = s * q. bf16 KV: the same layout with bf16 elements, no scales.
 * Thread safety: every function is pure over its arguments; concurrent calls
 * on disjoint outputs are safe.
 */
#ifndef PG_KERNELS_H
#define PG_KERNELS_H

#include "../common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================ scalar reference (ref.c) */

/* dst[cols] = dequantized src (one row of `cols` elements stored as t).
 * cols % pg_dtype_block(t) == 0. */
void ref_dequant_row(pg_dtype t, const void *src, float *dst, int64_t cols);

/* out[dim] = row `id` of an embedding table (vocab rows x dim cols, dtype t). */
void ref_embed(float *out, const void *table, pg_dtype t, int64_t dim, int64_t id);

/* RMSNorm of n vectors (HF LlamaRMSNorm, f32):
 *   out[i][:] = w * (x[i][:] * 1/sqrt(mean(x[i]^2) + eps))
 * x, out: [n][dim] (out may alias x); w: [dim] of dtype wt (F32/F16/BF16). */
void ref_rmsnorm(float *out, const float *x, const void *w, pg_dtype wt,
                 int n, int dim, float eps);

/* Llama 3.1 rope_scaling ("rope_type": "llama3"). */
typedef struct {
    float factor;           /* e.g. 8 */
    float low_freq_factor;  /* e.g. 1 */
    float high_freq_factor; /* e.g. 4 */
    int   orig_max_pos;     /* original_max_position_embeddings, e.g. 8192 */
} ref_rope_llama3;

/* inv_freq[head_dim/2]: inv_freq[i] = 1 / theta^(2i/head_dim) in f32, then,
 * when l3 != NULL, the llama3 rescaling exactly as HF computes it:
 * wavelen = 2*pi/f; wavelen > orig/low: f/factor; wavelen < orig/high: f;
 * otherwise (1-s)*f/factor + s*f with s = (orig/wavelen - low)/(high - low). */
void ref_rope_freqs(float *inv_freq, int head_dim, float theta, const ref_rope_llama3 *l3);

/* Rotate one token's heads in place: x[n_heads][head_dim] at position pos.
 * angle_i = (float)pos * inv_freq[i] (f32, as HF), i in [0, head_dim/2).
 *   interleaved = 0 (HF rotate_half): pairs (i, i + head_dim/2)
 *   interleaved = 1 (GGUF/llama.cpp):  pairs (2i, 2i + 1)
 * For a pair (a, b): a' = a*cos - b*sin, b' = b*cos + a*sin. */
void ref_rope(float *x, int n_heads, int head_dim, int pos, const float *inv_freq,
              int interleaved);

/* Causal GQA attention of n_q consecutive query tokens of one sequence at
 * positions pos0 .. pos0+n_q-1, over a KV cache already holding positions
 * [0, pos0 + n_q) (see conventions for k/v layout).
 *   q, out: [n_q][n_heads][head_dim]; query head h uses kv head
 *   h / (n_heads / n_kv_heads). Token t attends to positions [0, pos0 + t].
 *   scores = q.k / sqrt(head_dim); softmax with max subtraction; f32.
 *   scratch: >= pos0 + n_q floats. */
void ref_attention(float *out, const float *q, const float *k, const float *v,
                   int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                   int max_seq, float *scratch);

/* ref_attention over a bf16 KV cache (same layout, bf16 elements): every
 * element is widened to f32 (exact) and used as ref_attention uses its f32
 * cache, so it equals ref_attention over the widened cache bitwise. */
void ref_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                        int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                        int max_seq, float *scratch);

/* ref_attention over an int8 KV cache (conventions above): element d of
 * position p of kv head h is dequantized as ks[h*max_seq+p] * (float)k[...]
 * (one f32 product) and used as ref_attention uses its f32 cache, so it
 * equals ref_attention over the dequantized cache bitwise. */
void ref_attention_int8(float *out, const float *q, const int8_t *k, const float *ks,
                        const int8_t *v, const float *vs, int n_q, int pos0, int n_heads,
                        int n_kv_heads, int head_dim, int max_seq, float *scratch);

/* One head vector x[n] (f32) -> int8 q[n] and its scale (int8 KV cache):
 *   a = max|x|; s = a / 127; q = s > 0 ? clamp(rintf(x / s), -127, 127) : 0.
 * Dequantized: x ~= s * q. Any device's KV writer must match this bitwise. */
void ref_kv_quant_int8(const float *x, int n, int8_t *q, float *scale);

/* out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)); out may alias. */
void ref_silu_mul(float *out, const float *gate, const float *up, int64_t n);

/* y[n][rows] = x[n][cols] . W^T, W: [rows][cols] of dtype wt. f32 accumulation
 * in column order. */
void ref_matmul(float *y, const float *x, int n, const void *w, pg_dtype wt,
                int64_t rows, int64_t cols);

/* Weight-only quantized matrix (model/quant.h formats QI8 / QI4) as raw
 * arrays, so kernels/ needs nothing from model/. Borrowed pointers.
 *   QI8: q int8 [rows][cols],            w[r][c] = s * q
 *   QI4: q u8 [rows][cols/2] (element c in byte c/2, low nibble for even c),
 *        w[r][c] = s * q + m (the product rounded to f32, then the add)
 *   s = f16 scale[r][c/group], m = f16 min[r][c/group] (QI4 only).
 * group divides cols; QI4: group % 32 == 0 (32, 64, 128), QI8: any divisor
 * (cols itself = one scale per output channel). */
typedef struct {
    pg_dtype        dtype;    /* PG_QI8 or PG_QI4 */
    int64_t         rows, cols;
    int             group;    /* elements per group along cols */
    const void     *q;
    const uint16_t *scale;    /* [rows][cols/group] */
    const uint16_t *min;      /* [rows][cols/group]; NULL for QI8 */
} qmatrix;

/* dst[cols] = dequantized row r of w (the formulas above, exactly). */
void ref_qdequant_row(const qmatrix *w, int64_t r, float *dst);

/* y[n][rows] = x[n][cols] . W^T for a quantized W: each row dequantized with
 * ref_qdequant_row, then f32 accumulation in column order (the "dequantized
 * reference" that every quantized kernel is tested against). */
void ref_matmul_q(float *y, const float *x, int n, const qmatrix *w);

/* ================================================================ fast CPU (ref_fast.c) */

/* Vector paths. Each is compiled in when the build targets it (-march=native
 * on the build machine); cpu_* use the best one. Tests run every compiled
 * path against the reference through cpu_matmul_isa. */
typedef enum { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2, CPU_ISA_AVX512 } cpu_isa;
int         cpu_isa_available(cpu_isa isa);
cpu_isa     cpu_isa_best(void);
const char *cpu_isa_name(cpu_isa isa);   /* "scalar", "avx2", "avx512" */

/* ref_matmul restricted to output rows [r0, r1): y[t][r] for t < n,
 * r0 <= r < r1 (y keeps its full row stride `rows`). Every dtype. The result
 * for token t does not depend on n (the tile of tokens it is computed with),
 * so a prompt prefilled in chunks gives bitwise the same numbers as one token
 * at a time. Plain dtypes and the AVX2 path dequantize each weight exactly and
 * FMA it; the AVX-512 path for Q8_0/Q4_0/Q4_1 factors the block scale out of
 * the block's sum (d * sum(q x) + m * sum(x)), the same math with f32
 * rounding in a different place (<= 1e-6 relative in the tests). */
void cpu_matmul(float *y, const float *x, int n, const void *w, pg_dtype wt,
                int64_t rows, int64_t cols, int64_t r0, int64_t r1);
/* cpu_matmul on a given path (must be available). */
void cpu_matmul_isa(cpu_isa isa, float *y, const float *x, int n, const void *w,
                    pg_dtype wt, int64_t rows, int64_t cols, int64_t r0, int64_t r1);

/* ref_matmul_q restricted to output rows [r0, r1) (y keeps its row stride
 * w->rows); the result for token t does not depend on n, as for cpu_matmul.
 * The group scale comes out of the group's dot product:
 *   sum_c x_c (s q_c + m) = s * sum_c q_c x_c + m * sum_c x_c,
 * the same math as the reference with f32 rounding in other places
 * (<= 1.1e-5 relative in the tests). QI4 reads x in a nibble-deinterleaved copy
 * built on the stack per tile of tokens (at most QMM_STACK_FLOATS floats);
 * rows wider than that run the scalar path. No allocation. */
#define QMM_STACK_FLOATS 32768
void cpu_matmul_q(float *y, const float *x, int n, const qmatrix *w, int64_t r0, int64_t r1);
/* cpu_matmul_q on a given path (must be available). */
void cpu_matmul_q_isa(cpu_isa isa, float *y, const float *x, int n, const qmatrix *w,
                      int64_t r0, int64_t r1);

/* ref_attention restricted to query heads [h0, h1). scratch: >= pos0 + n_q
 * floats, private to the caller (one per thread). */
void cpu_attention(float *out, const float *q, const float *k, const float *v,
                   int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                   int max_seq, float *scratch, int h0, int h1);

/* cpu_attention over a bf16 / int8 KV cache (ref_attention_bf16 / _int8
 * restricted to query heads [h0, h1)). Elements are widened in registers;
 * the int8 path factors the position's scale out of the head_dim dot
 * product (s * sum(q k)) and into the softmax weight of V (a * s), the same
 * math with f32 rounding in a different place (<= 1e-6 relative in tests). */
void cpu_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                        int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                        int max_seq, float *scratch, int h0, int h1);
void cpu_attention_int8(float *out, const float *q, const int8_t *k, const float *ks,
                        const int8_t *v, const float *vs, int n_q, int pos0, int n_heads,
                        int n_kv_heads, int head_dim, int max_seq, float *scratch,
                        int h0, int h1);

/* ref_rope split in two so a token's cos/sin are computed once for all
 * layers: cpu_rope_cs fills cs[head_dim/2][2] = {cos, sin}((float)pos *
 * inv_freq[i]); cpu_rope rotates x[n_heads][head_dim] with them (same
 * pairing and formulas as ref_rope, bitwise equal to it). */
void cpu_rope_cs(float *cs, int head_dim, int pos, const float *inv_freq);
void cpu_rope(float *x, int n_heads, int head_dim, const float *cs, int interleaved);

/* ref_rmsnorm, vectorised. */
void cpu_rmsnorm(float *out, const float *x, const void *w, pg_dtype wt,
                 int n, int dim, float eps);

/* ref_silu_mul, vectorised (same expf per element). */
void cpu_silu_mul(float *out, const float *gate, const float *up, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
