/* tests/test_kernels_ref.c — CPU kernels: fast (cpu_*) against the scalar
 * reference (ref_*) on fresh random inputs, the reference against direct
 * formulas, dequantization against the gguf package, RoPE frequencies against
 * HF transformers, and the thread pool. Thresholds from DESIGN.md: f32 kernels
 * <= 1e-5 relative error. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/threadpool.h"
#include "tests/test_util.h"

/* ---------------------------------------------------------------- helpers */

static void put_f16(uint8_t *p, float v) { uint16_t h = pg_f32_to_f16(v); memcpy(p, &h, 2); }

/* A random matrix [rows][cols] stored as dtype t (quantized blocks hold random
 * scales and random codes, so every bit pattern path is exercised). */
static uint8_t *random_matrix(pg_rng *r, pg_dtype t, int64_t rows, int64_t cols) {
    size_t rb = pg_dtype_row_bytes(t, cols);
    cr_assert(rb > 0);
    uint8_t *w = pg_xmalloc(rb * rows);
    for (int64_t i = 0; i < rows; i++) {
        uint8_t *row = w + rb * i;
        for (int64_t c = 0; c < cols; c++) {
            float v = 0.1f * pg_rng_normal(r);
            if (t == PG_F32) memcpy(row + 4 * c, &v, 4);
            else if (t == PG_F16) put_f16(row + 2 * c, v);
            else if (t == PG_BF16) { uint16_t h = pg_f32_to_bf16(v); memcpy(row + 2 * c, &h, 2); }
        }
        if (pg_dtype_block(t) == 32) {
            size_t bb = pg_dtype_block_bytes(t);
            for (int64_t b = 0; b < cols / 32; b++) {
                uint8_t *blk = row + bb * b;
                for (size_t j = 0; j < bb; j++) blk[j] = (uint8_t)pg_rng_u64(r);
                put_f16(blk, 0.01f + 0.02f * pg_rng_uniform(r));   /* d */
                if (t == PG_Q4_1) put_f16(blk + 2, -0.1f * pg_rng_uniform(r)); /* m */
            }
        }
    }
    return w;
}

static void *read_fixture(const char *name, size_t *len) {
    char path[512], *data = NULL;
    snprintf(path, sizeof path, "tests/fixtures/%s", name);
    pg_err err;
    int rc = pg_read_file(path, &data, len, &err);
    cr_assert_eq(rc, PG_OK, "%s", err.msg);
    return data;
}

/* ---------------------------------------------------------------- dequantization */
/* Hand-written blocks against the GGUF formulas, computed here independently. */
Test(dequant, hand_blocks) {
    uint8_t q8[34], q40[18], q41[20];
    float out[32];
    put_f16(q8, 0.25f);
    for (int j = 0; j < 32; j++) q8[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    ref_dequant_row(PG_Q8_0, q8, out, 32);
    for (int j = 0; j < 32; j++) cr_assert_float_eq(out[j], 0.25f * (float)(j * 8 - 128), 0.0f);

    put_f16(q40, 0.5f);
    for (int j = 0; j < 16; j++) q40[2 + j] = (uint8_t)((15 - j) << 4 | j);
    ref_dequant_row(PG_Q4_0, q40, out, 32);
    for (int j = 0; j < 16; j++) {
        cr_assert_float_eq(out[j], 0.5f * (float)(j - 8), 0.0f);
        cr_assert_float_eq(out[j + 16], 0.5f * (float)(15 - j - 8), 0.0f);
    }

    put_f16(q41, 0.125f);
    put_f16(q41 + 2, -1.0f);
    for (int j = 0; j < 16; j++) q41[4 + j] = (uint8_t)(j << 4 | (15 - j));
    ref_dequant_row(PG_Q4_1, q41, out, 32);
    for (int j = 0; j < 16; j++) {
        cr_assert_float_eq(out[j], 0.125f * (float)(15 - j) - 1.0f, 0.0f);
        cr_assert_float_eq(out[j + 16], 0.125f * (float)j - 1.0f, 0.0f);
    }
}

/* Blocks quantized by the gguf package, and blocks of the real default model,
 * dequantized by gguf (scripts/gen-dequant-fixtures.py): must match exactly. */
static void check_gguf_dequant(const char *name, pg_dtype t, int64_t cols) {
    char bn[64], fn[64];
    snprintf(bn, sizeof bn, "dequant/%s.bin", name);
    snprintf(fn, sizeof fn, "dequant/%s.f32", name);
    size_t nb, nf;
    uint8_t *raw = read_fixture(bn, &nb);
    float *ref = read_fixture(fn, &nf);
    int64_t rows = (int64_t)(nf / 4 / cols);
    size_t rb = pg_dtype_row_bytes(t, cols);
    cr_assert_eq(nb, rb * rows, "%s: %zu bytes for %ld rows", name, nb, (long)rows);
    float *out = pg_xmalloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ref_dequant_row(t, raw + rb * r, out, cols);
        for (int64_t c = 0; c < cols; c++)
            cr_assert(out[c] == ref[r * cols + c], "%s row %ld col %ld: %.9g != %.9g", name,
                      (long)r, (long)c, out[c], ref[r * cols + c]);
    }
    free(out);
    free(raw);
    free(ref);
}

Test(dequant, matches_gguf_package) {
    check_gguf_dequant("q8_0", PG_Q8_0, 96);
    check_gguf_dequant("q4_0", PG_Q4_0, 96);
    check_gguf_dequant("q4_1", PG_Q4_1, 96);
    check_gguf_dequant("model_q8_0", PG_Q8_0, 576);    /* token_embd rows */
    check_gguf_dequant("model_q4_1", PG_Q4_1, 1536);   /* blk.0.ffn_down rows */
}

/* ---------------------------------------------------------------- matmul */
static const pg_dtype ALL_DTYPES[] = {PG_F32, PG_F16, PG_BF16, PG_Q8_0, PG_Q4_0, PG_Q4_1};

static void check_matmul(pg_dtype t, int n, int64_t rows, int64_t cols, uint64_t seed) {
    pg_rng r;
    pg_rng_seed(&r, seed);
    uint8_t *w = random_matrix(&r, t, rows, cols);
    float *x = pg_xmalloc(sizeof(float) * n * cols);
    float *ref = pg_xmalloc(sizeof(float) * n * rows);
    float *out = pg_xmalloc(sizeof(float) * n * rows);
    fill_normal(&r, x, (size_t)n * cols, 1.0f);
    poison(ref, (size_t)n * rows);
    ref_matmul(ref, x, n, w, t, rows, cols);
    for (int isa = CPU_ISA_SCALAR; isa <= CPU_ISA_AVX512; isa++) {
        if (!cpu_isa_available((cpu_isa)isa)) continue;
        poison(out, (size_t)n * rows);
        /* two ranges, as two threads would */
        int64_t mid = rows / 3;
        cpu_matmul_isa((cpu_isa)isa, out, x, n, w, t, rows, cols, 0, mid);
        cpu_matmul_isa((cpu_isa)isa, out, x, n, w, t, rows, cols, mid, rows);
        double e = rel_err(out, ref, (size_t)n * rows);
        cr_assert(e <= 1e-5, "%s %s n=%d %ldx%ld: rel err %.3g", cpu_isa_name((cpu_isa)isa),
                  pg_dtype_name(t), n, (long)rows, (long)cols, e);
    }
    /* a sub-range writes only its rows */
    poison(out, (size_t)n * rows);
    int64_t s0 = rows / 4, s1 = rows / 2 + 1;
    cpu_matmul(out, x, n, w, t, rows, cols, s0, s1);
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < rows; j++) {
            int inside = j >= s0 && j < s1;
            cr_assert(inside ? !isnan(out[i * rows + j]) : isnan(out[i * rows + j]));
        }
    free(w); free(x); free(ref); free(out);
}

Test(matmul, fast_equals_reference_all_dtypes) {
    for (size_t d = 0; d < sizeof ALL_DTYPES / sizeof *ALL_DTYPES; d++) {
        pg_dtype t = ALL_DTYPES[d];
        check_matmul(t, 1, 70, 96, 11 + d);     /* odd block count (3 blocks) */
        check_matmul(t, 3, 33, 576, 21 + d);    /* the default model's dim */
        check_matmul(t, 9, 40, 128, 31 + d);    /* tiles 4 + 4 + 1 */
    }
    check_matmul(PG_F32, 2, 17, 100, 41);      /* cols % 32 tail */
    check_matmul(PG_BF16, 5, 19, 72, 42);
    check_matmul(PG_F16, 1, 23, 40, 43);
    /* long rows: token groups of the factored quantized path (1024 blocks ->
     * groups of 4 tokens) and its fallback past 1024 blocks */
    check_matmul(PG_Q4_1, 9, 5, 32768, 44);
    check_matmul(PG_Q8_0, 2, 3, 33024, 45);
    check_matmul(PG_Q4_0, 5, 3, 33024, 46);
}

/* A token's result must not depend on which tile it was computed in. */
Test(matmul, independent_of_batch) {
    pg_rng r;
    pg_rng_seed(&r, 7);
    const int n = 7;
    const int64_t rows = 48, cols = 576;
    for (size_t d = 0; d < sizeof ALL_DTYPES / sizeof *ALL_DTYPES; d++) {
        pg_dtype t = ALL_DTYPES[d];
        uint8_t *w = random_matrix(&r, t, rows, cols);
        float *x = pg_xmalloc(sizeof(float) * n * cols), y[7 * 48], y1[48];
        fill_normal(&r, x, (size_t)n * cols, 1.0f);
        cpu_matmul(y, x, n, w, t, rows, cols, 0, rows);
        for (int i = 0; i < n; i++) {
            cpu_matmul(y1, x + i * cols, 1, w, t, rows, cols, 0, rows);
            cr_assert(memcmp(y1, y + i * rows, sizeof y1) == 0, "%s token %d", pg_dtype_name(t), i);
        }
        free(w);
        free(x);
    }
}

/* Quantized matmul == dequantize the matrix, then an f32 matmul. */
Test(matmul, quantized_equals_dequantized_f32) {
    pg_rng r;
    pg_rng_seed(&r, 99);
    const int n = 5;
    const int64_t rows = 64, cols = 1536;
    pg_dtype qt[] = {PG_Q8_0, PG_Q4_0, PG_Q4_1};
    for (int d = 0; d < 3; d++) {
        uint8_t *w = random_matrix(&r, qt[d], rows, cols);
        float *wf = pg_xmalloc(sizeof(float) * rows * cols);
        size_t rb = pg_dtype_row_bytes(qt[d], cols);
        for (int64_t i = 0; i < rows; i++) ref_dequant_row(qt[d], w + rb * i, wf + i * cols, cols);
        float *x = pg_xmalloc(sizeof(float) * n * cols);
        float yq[5 * 64], yf[5 * 64];
        fill_normal(&r, x, (size_t)n * cols, 1.0f);
        cpu_matmul(yq, x, n, w, qt[d], rows, cols, 0, rows);
        cpu_matmul(yf, x, n, wf, PG_F32, rows, cols, 0, rows);
        /* same weights; the quantized path factors the block scale out of
         * its sums (kernels/ref_fast.c), so only f32 rounding differs */
        double e = rel_err(yq, yf, sizeof yq / sizeof *yq);
        cr_assert(e <= 1e-6, "%s: rel err %.3g", pg_dtype_name(qt[d]), e);
        free(w); free(wf); free(x);
    }
}

/* ---------------------------------------------------------------- rmsnorm, silu */
Test(rmsnorm, fast_and_ref_against_formula) {
    pg_rng r;
    pg_rng_seed(&r, 3);
    const int n = 3, dim = 576;
    float x[3 * 576], w[576], o1[3 * 576], o2[3 * 576], ex[3 * 576];
    uint16_t wh[576], wb[576];
    fill_normal(&r, x, n * dim, 2.0f);
    for (int i = 0; i < dim; i++) {
        w[i] = 1.0f + 0.3f * pg_rng_normal(&r);
        wh[i] = pg_f32_to_f16(w[i]);
        wb[i] = pg_f32_to_bf16(w[i]);
    }
    const void *ws[] = {w, wh, wb};
    pg_dtype wt[] = {PG_F32, PG_F16, PG_BF16};
    for (int k = 0; k < 3; k++) {
        for (int t = 0; t < n; t++) {   /* direct formula in double */
            double ss = 0;
            for (int i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
            double s = 1.0 / sqrt(ss / dim + 1e-5);
            for (int i = 0; i < dim; i++) {
                float wi = k == 0 ? w[i] : k == 1 ? pg_f16_to_f32(wh[i]) : pg_bf16_to_f32(wb[i]);
                ex[t * dim + i] = (float)(wi * x[t * dim + i] * s);
            }
        }
        poison(o1, n * dim);
        poison(o2, n * dim);
        ref_rmsnorm(o1, x, ws[k], wt[k], n, dim, 1e-5f);
        cpu_rmsnorm(o2, x, ws[k], wt[k], n, dim, 1e-5f);
        cr_assert(rel_err(o1, ex, n * dim) <= 1e-6, "ref %s: %.3g", pg_dtype_name(wt[k]), rel_err(o1, ex, n * dim));
        cr_assert(rel_err(o2, o1, n * dim) <= 1e-5, "fast %s: %.3g", pg_dtype_name(wt[k]), rel_err(o2, o1, n * dim));
    }
}

Test(silu_mul, against_formula) {
    pg_rng r;
    pg_rng_seed(&r, 4);
    const int n = 1000;
    float g[1000], u[1000], o1[1000], o2[1000], ex[1000];
    fill_normal(&r, g, n, 4.0f);
    fill_normal(&r, u, n, 1.0f);
    for (int i = 0; i < n; i++) ex[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
    ref_silu_mul(o1, g, u, n);
    cpu_silu_mul(o2, g, u, n);
    cr_assert(rel_err(o1, ex, n) <= 1e-6);
    cr_assert(rel_err(o2, o1, n) <= 1e-5);
}

/* ---------------------------------------------------------------- rope */
/* Expected inverse frequencies printed by HF transformers 5.23 (torch 2.15,
 * CPU): ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(head_dim=hd, rope_parameters=
 * {rope_type: llama3, rope_theta, factor 8, low_freq_factor 1,
 * high_freq_factor 4, original_max_position_embeddings}), "cpu") and
 * LlamaRotaryEmbedding(default).inv_freq, printed with "%.9e". */
static const float HF_L3_32[16] = {
    1.000000000e+00f, 5.623413324e-01f, 2.443845868e-01f, 6.430987269e-02f, 1.304225624e-02f,
    7.029266097e-03f, 3.952847328e-03f, 2.222849289e-03f, 1.249999972e-03f, 7.029266562e-04f,
    3.952847328e-04f, 2.222849289e-04f, 1.250000059e-04f, 7.029266271e-05f, 3.952847328e-05f,
    2.222849253e-05f};
static const float HF_DEF_32[16] = {
    1.000000000e+00f, 5.623413324e-01f, 3.162277639e-01f, 1.778279394e-01f, 1.000000015e-01f,
    5.623412877e-02f, 3.162277862e-02f, 1.778279431e-02f, 9.999999776e-03f, 5.623413250e-03f,
    3.162277862e-03f, 1.778279431e-03f, 1.000000047e-03f, 5.623413017e-04f, 3.162277862e-04f,
    1.778279402e-04f};
/* head_dim 128, theta 500000, original 8192 (the Llama 3.1 setting) */
static const float HF_L3_128[64] = {
    1.000000000e+00f, 8.146172166e-01f, 6.636012793e-01f, 5.405809879e-01f, 4.403666258e-01f,
    3.587302268e-01f, 2.922278345e-01f, 2.380538136e-01f, 1.939227581e-01f, 1.579728127e-01f,
    1.286873817e-01f, 1.048309505e-01f, 8.539710194e-02f, 6.956595182e-02f, 5.666961893e-02f,
    4.616405070e-02f, 3.760603070e-02f, 3.063452058e-02f, 2.495540865e-02f, 2.032910474e-02f,
    1.656044088e-02f, 1.349041983e-02f, 1.098952908e-02f, 8.952259086e-03f, 7.292665076e-03f,
    5.940730684e-03f, 4.839421250e-03f, 3.942275885e-03f, 3.211446106e-03f, 2.166570630e-03f,
    1.371893683e-03f, 8.567514597e-04f, 5.248460220e-04f, 3.126936499e-04f, 1.785077911e-04f,
    9.556212171e-05f, 7.784655463e-05f, 6.341514381e-05f, 5.165906987e-05f, 4.208236714e-05f,
    3.428102355e-05f, 2.792590931e-05f, 2.274892904e-05f, 1.853166941e-05f, 1.509621779e-05f,
    1.229763893e-05f, 1.001786859e-05f, 8.160727702e-06f, 6.647869668e-06f, 5.415469332e-06f,
    4.411534519e-06f, 3.593711881e-06f, 2.927499736e-06f, 2.384791742e-06f, 1.942692506e-06f,
    1.582550794e-06f, 1.289173156e-06f, 1.050182618e-06f, 8.554969213e-07f, 6.969025321e-07f,
    5.677088097e-07f, 4.624653798e-07f, 3.767322596e-07f, 3.068925878e-07f};

static void check_freqs(const float *got, const float *want, int n, const char *what) {
    for (int i = 0; i < n; i++)
        cr_assert(fabsf(got[i] - want[i]) <= 2e-7f * fabsf(want[i]), "%s[%d]: %.9e != %.9e",
                  what, i, got[i], want[i]);
}

Test(rope, freqs_match_hf) {
    float f[64];
    ref_rope_freqs(f, 32, 10000.0f, NULL);
    check_freqs(f, HF_DEF_32, 16, "default hd32");
    ref_rope_llama3 l3 = {8.0f, 1.0f, 4.0f, 64};
    ref_rope_freqs(f, 32, 10000.0f, &l3);
    check_freqs(f, HF_L3_32, 16, "llama3 hd32");
    ref_rope_llama3 l31 = {8.0f, 1.0f, 4.0f, 8192};
    ref_rope_freqs(f, 128, 500000.0f, &l31);
    check_freqs(f, HF_L3_128, 64, "llama3 hd128");
}

/* Both conventions against the direct formulas: HF rotate_half
 *   out = x * cos(cat(f, f)) + cat(-x2, x1) * sin(cat(f, f))
 * and adjacent pairs; and interleaved rope on llama.cpp-permuted vectors ==
 * HF rope on the original vectors (why GGUF q/k work with interleaved pairs). */
Test(rope, conventions) {
    pg_rng r;
    pg_rng_seed(&r, 5);
    const int nh = 3, hd = 64, half = 32, pos = 1234;
    float f[32], x[3 * 64], a[3 * 64], b[3 * 64], ex[3 * 64], cs[64];
    ref_rope_freqs(f, hd, 100000.0f, NULL);
    fill_normal(&r, x, nh * hd, 1.0f);
    /* HF */
    for (int h = 0; h < nh; h++)
        for (int d = 0; d < hd; d++) {
            float ang = (float)pos * f[d % half];
            float xr = d < half ? -x[h * hd + d + half] : x[h * hd + d - half];
            ex[h * hd + d] = (float)((double)x[h * hd + d] * cos(ang) + (double)xr * sin(ang));
        }
    memcpy(a, x, sizeof x);
    ref_rope(a, nh, hd, pos, f, 0);
    cr_assert(rel_err(a, ex, nh * hd) <= 1e-6, "hf: %.3g", rel_err(a, ex, nh * hd));
    memcpy(b, x, sizeof x);
    cpu_rope_cs(cs, hd, pos, f);
    cpu_rope(b, nh, hd, cs, 0);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    /* interleaved */
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < half; i++) {
            float ang = (float)pos * f[i];
            double x0 = x[h * hd + 2 * i], x1 = x[h * hd + 2 * i + 1];
            ex[h * hd + 2 * i] = (float)(x0 * cos(ang) - x1 * sin(ang));
            ex[h * hd + 2 * i + 1] = (float)(x1 * cos(ang) + x0 * sin(ang));
        }
    memcpy(a, x, sizeof x);
    ref_rope(a, nh, hd, pos, f, 1);
    cr_assert(rel_err(a, ex, nh * hd) <= 1e-6, "interleaved: %.3g", rel_err(a, ex, nh * hd));
    memcpy(b, x, sizeof x);
    cpu_rope(b, nh, hd, cs, 1);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    /* permutation: GGUF row 2i + j holds HF row j*half + i */
    float p[3 * 64];
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) p[h * hd + 2 * i + j] = x[h * hd + j * half + i];
    memcpy(a, x, sizeof x);
    ref_rope(a, nh, hd, pos, f, 0);
    ref_rope(p, nh, hd, pos, f, 1);
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                cr_assert(p[h * hd + 2 * i + j] == a[h * hd + j * half + i]);
}

/* ---------------------------------------------------------------- attention */
/* Direct causal GQA attention in double over the same cache layout. */
static void attention_double(float *out, const float *q, const float *k, const float *v, int n_q,
                             int pos0, int nh, int nkv, int hd, int max_seq) {
    for (int t = 0; t < n_q; t++)
        for (int h = 0; h < nh; h++) {
            int kvh = h / (nh / nkv), n_ctx = pos0 + t + 1;
            double s[256], mx = -1e300, sum = 0;
            for (int p = 0; p < n_ctx; p++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[(t * nh + h) * hd + i] * k[((size_t)kvh * max_seq + p) * hd + i];
                s[p] = d / sqrt((double)hd);
                if (s[p] > mx) mx = s[p];
            }
            for (int p = 0; p < n_ctx; p++) sum += (s[p] = exp(s[p] - mx));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int p = 0; p < n_ctx; p++) o += s[p] / sum * v[((size_t)kvh * max_seq + p) * hd + i];
                out[(t * nh + h) * hd + i] = (float)o;
            }
        }
}

static void check_attention(int n_q, int pos0, int nh, int nkv, int hd, uint64_t seed) {
    const int max_seq = 96;
    pg_rng r;
    pg_rng_seed(&r, seed);
    size_t nc = (size_t)nkv * max_seq * hd, nq = (size_t)n_q * nh * hd;
    float *k = pg_xmalloc(nc * 4), *v = pg_xmalloc(nc * 4), *q = pg_xmalloc(nq * 4);
    float *o_ref = pg_xmalloc(nq * 4), *o_fast = pg_xmalloc(nq * 4), *o_dbl = pg_xmalloc(nq * 4);
    float scratch[96];
    fill_normal(&r, k, nc, 1.0f);
    fill_normal(&r, v, nc, 1.0f);
    fill_normal(&r, q, nq, 1.0f);
    poison(o_ref, nq);
    poison(o_fast, nq);
    attention_double(o_dbl, q, k, v, n_q, pos0, nh, nkv, hd, max_seq);
    ref_attention(o_ref, q, k, v, n_q, pos0, nh, nkv, hd, max_seq, scratch);
    cr_assert(rel_err(o_ref, o_dbl, nq) <= 1e-5, "ref vs double: %.3g", rel_err(o_ref, o_dbl, nq));
    cpu_attention(o_fast, q, k, v, n_q, pos0, nh, nkv, hd, max_seq, scratch, 0, nh / 2);
    cpu_attention(o_fast, q, k, v, n_q, pos0, nh, nkv, hd, max_seq, scratch, nh / 2, nh);
    cr_assert(rel_err(o_fast, o_ref, nq) <= 1e-5, "fast vs ref: %.3g", rel_err(o_fast, o_ref, nq));
    /* causality: positions past the last query do not matter */
    for (int p = pos0 + n_q; p < max_seq; p++)
        for (int h = 0; h < nkv; h++)
            for (int i = 0; i < hd; i++) {
                k[((size_t)h * max_seq + p) * hd + i] = 1e6f;
                v[((size_t)h * max_seq + p) * hd + i] = NAN;
            }
    cpu_attention(o_fast, q, k, v, n_q, pos0, nh, nkv, hd, max_seq, scratch, 0, nh);
    cr_assert(rel_err(o_fast, o_ref, nq) <= 1e-5);
    free(k); free(v); free(q); free(o_ref); free(o_fast); free(o_dbl);
}

Test(attention, fast_ref_double) {
    check_attention(1, 37, 8, 2, 64, 1);    /* decode, GQA 4:1 */
    check_attention(5, 0, 8, 2, 64, 2);     /* prefill from 0 */
    check_attention(6, 20, 9, 3, 64, 3);    /* chunk after 20 cached (default model shape) */
    check_attention(3, 10, 4, 4, 20, 4);    /* MHA, head_dim not a multiple of 8 */
}

/* ---------------------------------------------------------------- thread pool */
typedef struct {
    int n_threads;
    int64_t *hits;   /* [n_chunks] */
    int64_t by_tid[8];
} pool_probe;

static void probe_fn(void *arg, int c, int tid) {
    pool_probe *p = arg;
    cr_assert(tid >= 0 && tid < p->n_threads);
    p->hits[c]++;    /* each chunk is run by one thread: no race */
    __atomic_fetch_add(&p->by_tid[tid], 1, __ATOMIC_RELAXED);
}

Test(threadpool, every_chunk_once_per_run) {
    for (int nt = 1; nt <= 4; nt++) {
        pg_pool *pool;
        pg_err err;
        cr_assert_eq(pool_create(nt, &pool, &err), PG_OK);
        cr_assert_eq(pool_size(pool), nt);
        pool_probe p = {.n_threads = nt};
        p.hits = pg_xcalloc(1000, sizeof *p.hits);
        int runs = 0;
        for (int run = 0; run < 2000; run++) {
            int n_chunks = 1 + run % 37;   /* varying sizes, including 1 */
            pool_run(pool, probe_fn, &p, n_chunks);
            runs++;
            for (int c = 0; c < n_chunks; c++) cr_assert_eq(p.hits[c], 1, "nt %d run %d chunk %d", nt, run, c);
            memset(p.hits, 0, 1000 * sizeof *p.hits);
        }
        int64_t total = 0;
        for (int i = 0; i < nt; i++) total += p.by_tid[i];
        cr_assert_gt(total, 0);
        free(p.hits);
        pool_free(pool);
    }
    pg_err err;
    pg_pool *pool;
    cr_assert_eq(pool_create(0, &pool, &err), PG_EINVAL);
}

/* A pool that goes idle long enough for its workers to sleep still runs jobs. */
Test(threadpool, wakes_after_sleep) {
    pg_pool *pool;
    pg_err err;
    cr_assert_eq(pool_create(2, &pool, &err), PG_OK);
    pool_probe p = {.n_threads = 2};
    p.hits = pg_xcalloc(64, sizeof *p.hits);
    for (int k = 0; k < 3; k++) {
        struct timespec ts = {0, 20 * 1000 * 1000};   /* 20 ms: past the spin phase */
        nanosleep(&ts, NULL);
        pool_run(pool, probe_fn, &p, 64);
        for (int c = 0; c < 64; c++) cr_assert_eq(p.hits[c], k + 1);
    }
    free(p.hits);
    pool_free(pool);
}

Test(threadpool, split_alignment) {
    int64_t lo, hi, prev = 0;
    for (int i = 0; i < 3; i++) {
        pool_split(100, i, 3, 16, &lo, &hi);
        cr_assert_eq(lo, prev);
        cr_assert(lo % 16 == 0 || lo == 100);
        prev = hi;
    }
    cr_assert_eq(prev, 100);
}
