/* kernels/ref.c — scalar reference kernels (see kernels.h). Written for
 * clarity, not speed: every fast CPU and CUDA kernel is tested against these. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- dequantize */
static float rd_f16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return pg_f16_to_f32(h); }

void ref_dequant_row(pg_dtype t, const void *src, float *dst, int64_t cols) {
    const uint8_t *s = src;
    switch (t) {
    case PG_F32:
        memcpy(dst, s, (size_t)cols * 4);
        return;
    case PG_F16:
        for (int64_t i = 0; i < cols; i++) dst[i] = rd_f16(s + 2 * i);
        return;
    case PG_BF16:
        for (int64_t i = 0; i < cols; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = pg_bf16_to_f32(h);
        }
        return;
    case PG_Q8_0:  /* { f16 d; int8 q[32]; } */
        PG_ASSERT(cols % 32 == 0);
        for (int64_t b = 0; b < cols / 32; b++, s += 34) {
            float d = rd_f16(s);
            const int8_t *q = (const int8_t *)(s + 2);
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)q[j];
        }
        return;
    case PG_Q4_0:  /* { f16 d; u8 qs[16]; } x = d*(q-8) */
        PG_ASSERT(cols % 32 == 0);
        for (int64_t b = 0; b < cols / 32; b++, s += 18) {
            float d = rd_f16(s);
            const uint8_t *qs = s + 2;
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j]      = d * (float)((int)(qs[j] & 15) - 8);
                dst[b * 32 + j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
            }
        }
        return;
    case PG_Q4_1:  /* { f16 d; f16 m; u8 qs[16]; } x = d*q + m */
        PG_ASSERT(cols % 32 == 0);
        for (int64_t b = 0; b < cols / 32; b++, s += 20) {
            float d = rd_f16(s), m = rd_f16(s + 2);
            const uint8_t *qs = s + 4;
            for (int j = 0; j < 16; j++) {
                float lo = d * (float)(qs[j] & 15), hi = d * (float)(qs[j] >> 4);
                dst[b * 32 + j]      = lo + m;
                dst[b * 32 + j + 16] = hi + m;
            }
        }
        return;
    default:
        PG_DIE("ref_dequant_row: unsupported dtype %s", pg_dtype_name(t));
    }
}

void ref_embed(float *out, const void *table, pg_dtype t, int64_t dim, int64_t id) {
    size_t rb = pg_dtype_row_bytes(t, dim);
    PG_ASSERT(rb > 0);
    ref_dequant_row(t, (const uint8_t *)table + (size_t)id * rb, out, dim);
}

/* ---------------------------------------------------------------- int8 KV */
void ref_kv_quant_int8(const float *x, int n, int8_t *q, float *scale) {
    float a = 0.f;
    for (int i = 0; i < n; i++) a = fmaxf(a, fabsf(x[i]));
    float s = a / 127.f;
    for (int i = 0; i < n; i++) {
        float v = s > 0.f ? rintf(x[i] / s) : 0.f;
        q[i] = (int8_t)fminf(fmaxf(v, -127.f), 127.f);
    }
    *scale = s;
}

/* ---------------------------------------------------------------- rmsnorm */
static float weight_at(const void *w, pg_dtype wt, int i) {
    switch (wt) {
    case PG_F32: return ((const float *)w)[i];
    case PG_F16: return pg_f16_to_f32(((const uint16_t *)w)[i]);
    case PG_BF16: return pg_bf16_to_f32(((const uint16_t *)w)[i]);
    default: PG_DIE("rmsnorm: unsupported weight dtype %s", pg_dtype_name(wt));
    }
}

void ref_rmsnorm(float *out, const float *x, const void *w, pg_dtype wt,
                 int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const float *xi = x + (size_t)t * dim;
        float *oi = out + (size_t)t * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xi[i] * xi[i];
        float r = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) oi[i] = weight_at(w, wt, i) * (xi[i] * r);
    }
}

/* ---------------------------------------------------------------- rope */
void ref_rope_freqs(float *inv_freq, int head_dim, float theta, const ref_rope_llama3 *l3) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all f32 */
        float e = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf(theta, e);
    }
    if (!l3) return;
    /* HF _compute_llama3_parameters; the thresholds are python floats
     * (double) compared against f32 tensors promoted to double. */
    const double pi = 3.14159265358979323846;
    double low_wl = (double)l3->orig_max_pos / l3->low_freq_factor;
    double high_wl = (double)l3->orig_max_pos / l3->high_freq_factor;
    for (int i = 0; i < half; i++) {
        float f = inv_freq[i];
        float wavelen = (float)(2.0 * pi) / f;                 /* f32 tensor op */
        float g = (double)wavelen > low_wl ? f / l3->factor : f;
        if (!((double)wavelen < high_wl) && !((double)wavelen > low_wl)) {
            float s = ((float)l3->orig_max_pos / wavelen - l3->low_freq_factor) /
                      (l3->high_freq_factor - l3->low_freq_factor);
            g = (1.0f - s) * g / l3->factor + s * g;
        }
        inv_freq[i] = g;
    }
}

void ref_rope(float *x, int n_heads, int head_dim, int pos, const float *inv_freq,
              int interleaved) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = cosf(ang), s = sinf(ang);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            int ia = interleaved ? 2 * i : i;
            int ib = interleaved ? 2 * i + 1 : i + half;
            float a = xh[ia], b = xh[ib];
            xh[ia] = a * c - b * s;
            xh[ib] = b * c + a * s;
        }
    }
}

/* ---------------------------------------------------------------- attention */
/* Element d of position p of one kv head's cache, as f32: the f32 value;
 * bf16 widened (exact); int8 dequantized as scale[p] * q (one f32 product,
 * kernels.h conventions). The three ref_attention* entry points share one
 * loop so the math cannot drift apart between cache types. */
typedef enum { REF_KV_F32, REF_KV_BF16, REF_KV_INT8 } ref_kv_type;

static float kv_at(ref_kv_type t, const void *base, const float *scales, int p, int d, int head_dim) {
    size_t i = (size_t)p * head_dim + d;
    switch (t) {
    case REF_KV_F32: return ((const float *)base)[i];
    case REF_KV_BF16: return pg_bf16_to_f32(((const uint16_t *)base)[i]);
    case REF_KV_INT8: return scales[p] * (float)((const int8_t *)base)[i];
    }
    return 0.0f;
}

static void attention_any(ref_kv_type kt, float *out, const float *q,
                          const void *k, const float *ks, const void *v, const float *vs,
                          int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                          int max_seq, float *scratch) {
    int group = n_heads / n_kv_heads;
    size_t esz = kt == REF_KV_F32 ? 4 : kt == REF_KV_BF16 ? 2 : 1;   /* bytes per element */
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int t = 0; t < n_q; t++) {
        int n_ctx = pos0 + t + 1;   /* causal: positions [0, pos0 + t] */
        for (int h = 0; h < n_heads; h++) {
            int kvh = h / group;
            const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
            const void *kh = (const uint8_t *)k + (size_t)kvh * max_seq * head_dim * esz;
            const void *vh = (const uint8_t *)v + (size_t)kvh * max_seq * head_dim * esz;
            const float *ksh = ks ? ks + (size_t)kvh * max_seq : NULL;
            const float *vsh = vs ? vs + (size_t)kvh * max_seq : NULL;
            float mx = -INFINITY;
            for (int p = 0; p < n_ctx; p++) {
                float s = 0.0f;
                for (int d = 0; d < head_dim; d++) s += qh[d] * kv_at(kt, kh, ksh, p, d, head_dim);
                scratch[p] = s * scale;
                if (scratch[p] > mx) mx = scratch[p];
            }
            float sum = 0.0f;
            for (int p = 0; p < n_ctx; p++) {
                scratch[p] = expf(scratch[p] - mx);
                sum += scratch[p];
            }
            float *oh = out + ((size_t)t * n_heads + h) * head_dim;
            for (int d = 0; d < head_dim; d++) oh[d] = 0.0f;
            for (int p = 0; p < n_ctx; p++) {
                float a = scratch[p] / sum;
                for (int d = 0; d < head_dim; d++) oh[d] += a * kv_at(kt, vh, vsh, p, d, head_dim);
            }
        }
    }
}

void ref_attention(float *out, const float *q, const float *k, const float *v,
                   int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                   int max_seq, float *scratch) {
    attention_any(REF_KV_F32, out, q, k, NULL, v, NULL, n_q, pos0, n_heads, n_kv_heads, head_dim,
                  max_seq, scratch);
}

void ref_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                        int n_q, int pos0, int n_heads, int n_kv_heads, int head_dim,
                        int max_seq, float *scratch) {
    attention_any(REF_KV_BF16, out, q, k, NULL, v, NULL, n_q, pos0, n_heads, n_kv_heads, head_dim,
                  max_seq, scratch);
}

void ref_attention_int8(float *out, const float *q, const int8_t *k, const float *ks,
                        const int8_t *v, const float *vs, int n_q, int pos0, int n_heads,
                        int n_kv_heads, int head_dim, int max_seq, float *scratch) {
    attention_any(REF_KV_INT8, out, q, k, ks, v, vs, n_q, pos0, n_heads, n_kv_heads, head_dim,
                  max_seq, scratch);
}

/* ---------------------------------------------------------------- mlp */
void ref_silu_mul(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* ---------------------------------------------------------------- matmul */

/* y[t][r] = row . x[t] for the n tokens of x ([n][cols]), in column order
 * with one f32 accumulator: the reference's summation order. */
static void row_times_tokens(float *y, const float *x, int n, const float *row, int64_t r, int64_t rows,
                             int64_t cols) {
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * cols;
        float s = 0.0f;
        for (int64_t c = 0; c < cols; c++) s += xt[c] * row[c];
        y[(size_t)t * rows + r] = s;
    }
}

void ref_matmul(float *y, const float *x, int n, const void *w, pg_dtype wt,
                int64_t rows, int64_t cols) {
    size_t rb = pg_dtype_row_bytes(wt, cols);
    PG_ASSERT(rb > 0);
    float *row = pg_xmalloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ref_dequant_row(wt, (const uint8_t *)w + (size_t)r * rb, row, cols);
        row_times_tokens(y, x, n, row, r, rows, cols);
    }
    free(row);
}

/* ---------------------------------------------------------------- quantized matmul */
void ref_qdequant_row(const qmatrix *w, int64_t r, float *dst) {
    PG_ASSERT((w->dtype == PG_QI8 || w->dtype == PG_QI4) && w->group > 0 && w->cols % w->group == 0);
    int64_t cols = w->cols, g = w->group, ng = cols / g;
    const uint16_t *s = w->scale + r * ng;
    if (w->dtype == PG_QI8) {
        const int8_t *q = (const int8_t *)w->q + (size_t)r * (size_t)cols;
        for (int64_t c = 0; c < cols; c++) dst[c] = pg_f16_to_f32(s[c / g]) * (float)q[c];
        return;
    }
    const uint8_t *q = (const uint8_t *)w->q + (size_t)r * (size_t)(cols / 2);
    const uint16_t *m = w->min + r * ng;
    for (int64_t c = 0; c < cols; c++) {
        int v = (q[c / 2] >> (4 * (c & 1))) & 15;
        float p = pg_f16_to_f32(s[c / g]) * (float)v;   /* rounded to f32 before the add */
        dst[c] = p + pg_f16_to_f32(m[c / g]);
    }
}

void ref_matmul_q(float *y, const float *x, int n, const qmatrix *w) {
    int64_t rows = w->rows, cols = w->cols;
    float *row = pg_xmalloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ref_qdequant_row(w, r, row);
        row_times_tokens(y, x, n, row, r, rows, cols);
    }
    free(row);
}
