/*
 * tests/test_util.h — small helpers shared by the Criterion suites (each
 * tests/test_*.c is its own binary, so these are static inline).
 *
 *   rel_err      ||out - ref|| / ||ref|| in double (DESIGN.md's measure);
 *                a non-finite output gives INFINITY, so poisoned outputs
 *                that were never written fail every threshold
 *   fill_normal  x[i] ~ N(0, std) from a seeded pg_rng (never zeros)
 *   poison       NaN everywhere, before a kernel writes its output
 * With PG_CUDA, for the GPU suites (which skip without a GPU):
 *   have_gpu / NEED_GPU, dev_from (device copy of host bytes), dev_poison
 *   (device buffer of all-ones bytes: NaN as f32), to_host (waits for the
 *   device, then copies), randn (malloc'd N(0, std) floats), and (after
 *   criterion.h) check_gemv_norm_epi, the norm epilogues' check shared by the
 *   bf16 and the quantized suites.
 */
#ifndef PG_TEST_UTIL_H
#define PG_TEST_UTIL_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "common/common.h"

static inline double rel_err(const float *out, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) return INFINITY;
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-30);
}

static inline void fill_normal(pg_rng *r, float *x, size_t n, float std)
{
    for (size_t i = 0; i < n; i++) x[i] = std * pg_rng_normal(r);
}

static inline void poison(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

#ifdef PG_CUDA
#include <cuda_runtime_api.h>
#include "kernels/cuda/kernels_cuda.h"

static inline int have_gpu(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { (void)cudaGetLastError(); return 0; }
    return n > 0;
}
#define NEED_GPU() do { if (!have_gpu()) cr_skip("no CUDA GPU visible"); } while (0)

static inline void *dev_from(const void *h, size_t n)
{
    void *d;
    KC_CHECK(cudaMalloc(&d, n ? n : 1));
    if (h) KC_CHECK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
    return d;
}
static inline void *dev_poison(size_t n)
{
    void *d;
    KC_CHECK(cudaMalloc(&d, n ? n : 1));
    KC_CHECK(cudaMemset(d, 0xff, n));   /* all-ones bytes: NaN as f32, -1 as int8 */
    return d;
}
static inline void to_host(void *h, const void *d, size_t n)
{
    KC_CHECK(cudaDeviceSynchronize());
    KC_CHECK(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost));
}
static inline float *randn(pg_rng *r, size_t n, float std)
{
    float *x = pg_xmalloc(n * sizeof *x);
    fill_normal(r, x, n, std);
    return x;
}

#ifdef CRITERION_H_
/* The RMSNorm epilogues of the decode products (kc_gemv_epi) on device
 * matrices wp (a producer: rows = the model dim) and wc (its consumer: cols =
 * the model dim; swiglu: 2R rows), n columns:
 *   the producer leaves exactly x0 + (W v) in the residual stream, (x0 + W v)
 *   * g in xg and the fixed-point sum of (x0 + W v)^2, each x^2 rounded as
 *   KC_SS_ONE units (bit for bit: the same f32 operations, integer sums),
 *   and that sum is within its rounding of sum x^2 in double;
 *   the consumer equals the plain product of xg scaled by rsqrt(mean + eps)
 *   per column (before the SiLU for SwiGLU), <= 1e-5 (rsqrtf's error; for
 *   SwiGLU the plain kernel's different K split, ~1e-7; for the quantized
 *   kernel the elements the plain product leaves in f16's subnormals, which
 *   a consumer scales up).
 * wc_plain: the consumer's weights for that plain product, NULL for wc (a
 * SwiGLU consumer in int8 pair tiles has no plain k_gemv: its row-major twin,
 * whose products are the same bits). amp scales x0 and v (residual streams of
 * 1e-2 .. 1e2 rms). The plain products are checked against the CPU twins in
 * the suites. */
static inline unsigned long long ss_fixed(float x)
{
    const float v = x * x * (float)KC_SS_ONE;
    return (unsigned long long)nearbyintf(v);
}
static inline void check_gemv_norm_epi(const kc_matrix *wp, const kc_matrix *wc, const kc_matrix *wc_plain,
                                       int swiglu, int n, uint64_t seed, float amp)
{
    const int dim = wp->rows, k = wp->cols, r2 = wc->rows, oc = swiglu ? r2 / 2 : r2;
    const float eps = 1e-5f;
    cr_assert(wc->cols == dim);
    pg_rng r;
    pg_rng_seed(&r, seed);
    float *x0 = randn(&r, (size_t)n * dim, amp), *v = randn(&r, (size_t)n * k, amp), *g = randn(&r, dim, 1.f);
    float *dx = dev_from(x0, (size_t)n * dim * 4), *dv = dev_from(v, (size_t)n * k * 4), *dg = dev_from(g, dim * 4);
    float *dxg = dev_poison((size_t)n * dim * 4), *dyp = dev_poison((size_t)n * dim * 4);
    const size_t ab = (size_t)n * KC_SS_SLOTS * 8;
    unsigned long long *dacc = dev_from(NULL, ab);
    KC_CHECK(cudaMemset(dacc, 0, ab));
    k_gemv(wp, dv, n, dyp, 0);
    const kc_gemv_epi pe = { .resid = dx, .xg = dxg, .g = dg, .acc_out = dacc };
    k_gemv_epi(wp, dv, n, NULL, 0, &pe, 0);
    float *yp = pg_xmalloc((size_t)n * dim * 4), *x1 = pg_xmalloc((size_t)n * dim * 4);
    float *xg = pg_xmalloc((size_t)n * dim * 4);
    unsigned long long *acc = pg_xmalloc(ab);
    to_host(yp, dyp, (size_t)n * dim * 4); to_host(x1, dx, (size_t)n * dim * 4);
    to_host(xg, dxg, (size_t)n * dim * 4); to_host(acc, dacc, ab);
    size_t bad_x = 0, bad_g = 0, bad_s = 0;
    float *inv = pg_xmalloc((size_t)n * 4);
    for (int c = 0; c < n; c++) {
        unsigned long long want = 0, got = 0;
        double exact = 0;
        for (int i = 0; i < dim; i++) {
            const size_t j = (size_t)c * dim + i;
            const float xr = x0[j] + yp[j];
            bad_x += memcmp(&xr, &x1[j], 4) != 0;
            const float xgr = xr * g[i];
            bad_g += memcmp(&xgr, &xg[j], 4) != 0;
            want += ss_fixed(xr);
            exact += (double)xr * xr;
        }
        for (int q = 0; q < KC_SS_SLOTS; q++) got += acc[(size_t)c * KC_SS_SLOTS + q];
        bad_s += got != want;
        const double ss = (double)got / KC_SS_ONE;
        cr_expect(fabs(ss - exact) <= dim * 0.5 / KC_SS_ONE + 1e-7 * exact,
                  "column %d: fixed-point sum %.9g vs %.9g in double", c, ss, exact);
        inv[c] = 1.f / sqrtf((float)ss / (float)dim + eps);
    }
    cr_expect(bad_x == 0 && bad_g == 0 && bad_s == 0,
              "producer %s %dx%d n=%d: %zu residual values, %zu x*g values, %zu sums differ", pg_dtype_name(wp->dtype),
              dim, k, n, bad_x, bad_g, bad_s);

    float *dyc = dev_poison((size_t)n * oc * 4), *dyr = dev_poison((size_t)n * r2 * 4);
    const kc_gemv_epi ce = { .acc_in = dacc, .eps = eps };
    k_gemv_epi(wc, dxg, n, dyc, swiglu, &ce, 0);
    k_gemv(wc_plain ? wc_plain : wc, dxg, n, dyr, 0);
    float *yc = pg_xmalloc((size_t)n * oc * 4), *yr = pg_xmalloc((size_t)n * r2 * 4);
    float *ref = pg_xmalloc((size_t)n * oc * 4);
    to_host(yc, dyc, (size_t)n * oc * 4); to_host(yr, dyr, (size_t)n * r2 * 4);
    for (int c = 0; c < n; c++)
        for (int i = 0; i < oc; i++) {
            const float a = yr[(size_t)c * r2 + i] * inv[c];
            if (swiglu) {
                const float b = yr[(size_t)c * r2 + oc + i] * inv[c];
                ref[(size_t)c * oc + i] = a / (1.f + expf(-a)) * b;
            } else {
                ref[(size_t)c * oc + i] = a;
            }
        }
    const double e = rel_err(yc, ref, (size_t)n * oc);
    cr_log_info("norm epilogues %s %dx%d -> %s %dx%d swiglu=%d n=%d amp=%g: consumer rel err %.3g",
                pg_dtype_name(wp->dtype), dim, k, pg_dtype_name(wc->dtype), r2, dim, swiglu, n, amp, e);
    cr_expect(e <= 1e-5, "consumer %s %dx%d swiglu=%d n=%d: rel err %.3g > 1e-5", pg_dtype_name(wc->dtype), r2, dim,
              swiglu, n, e);
    cudaFree(dx); cudaFree(dv); cudaFree(dg); cudaFree(dxg); cudaFree(dyp); cudaFree(dacc);
    cudaFree(dyc); cudaFree(dyr);
    free(x0); free(v); free(g); free(yp); free(x1); free(xg); free(acc); free(inv);
    free(yc); free(yr); free(ref);
}
#endif
#endif

#endif
