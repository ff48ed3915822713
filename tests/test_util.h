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
 *   device, then copies), randn (malloc'd N(0, std) floats).
 */
#ifndef PG_TEST_UTIL_H
#define PG_TEST_UTIL_H

#include <math.h>
#include <stddef.h>

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
#endif

#endif
