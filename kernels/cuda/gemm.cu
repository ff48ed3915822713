/*
 * kernels/cuda/gemm.cu — prefill matrix products through cuBLASLt:
 * Y[n][rows] (fp32) = X[n][cols] (bf16) * W^T, W bf16 row-major [rows][cols].
 *
 * In cuBLAS's column-major terms this is D (rows x n) = op(A) * B with
 * A = W seen as a cols x rows column-major matrix (op = T) and B = X seen as
 * cols x n. Accumulation is fp32 (CUBLAS_COMPUTE_32F) and the output stays
 * fp32 so the residual stream never passes through bf16.
 * The context caches one heuristic-chosen algorithm per (m, n, k), so a
 * repeated shape costs no host-side search.
 */
#include "kc_util.cuh"
#include <cublasLt.h>

#define GEMM_WS_BYTES (32u << 20)
#define GEMM_PLANS 64

typedef struct {
    int m, n, k, ldc;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

struct kc_gemm_ctx {
    cublasLtHandle_t lt;
    void *ws;
    int n_plans;
    gemm_plan plans[GEMM_PLANS];
};

#define LT_CHECK(x) do { cublasStatus_t st_ = (x); if (st_ != CUBLAS_STATUS_SUCCESS) \
    pg_die(__FILE__, __LINE__, "cuBLASLt: %s: status %d", #x, (int)st_); } while (0)

extern "C" int kc_gemm_ctx_init(kc_gemm_ctx **out, pg_err *err)
{
    kc_gemm_ctx *c = (kc_gemm_ctx *)pg_xcalloc(1, sizeof(*c));
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        free(c);
        return pg_errf(err, PG_EDEVICE, "cuBLASLt: cublasLtCreate failed");
    }
    if (cudaMalloc(&c->ws, GEMM_WS_BYTES) != cudaSuccess) {
        cublasLtDestroy(c->lt);
        free(c);
        return pg_errf(err, PG_ENOMEM, "cuBLASLt: cannot allocate a %u MiB workspace",
                       GEMM_WS_BYTES >> 20);
    }
    *out = c;
    return PG_OK;
}

extern "C" void kc_gemm_ctx_free(kc_gemm_ctx *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++) {
        gemm_plan *p = &c->plans[i];
        cublasLtMatmulDescDestroy(p->op);
        cublasLtMatrixLayoutDestroy(p->a);
        cublasLtMatrixLayoutDestroy(p->b);
        cublasLtMatrixLayoutDestroy(p->c);
    }
    cudaFree(c->ws);
    cublasLtDestroy(c->lt);
    free(c);
}

static gemm_plan *gemm_get_plan(kc_gemm_ctx *c, int m, int n, int k, int ldc)
{
    for (int i = 0; i < c->n_plans; i++)
        if (c->plans[i].m == m && c->plans[i].n == n && c->plans[i].k == k && c->plans[i].ldc == ldc)
            return &c->plans[i];
    gemm_plan *p;
    if (c->n_plans < GEMM_PLANS) p = &c->plans[c->n_plans++];
    else {  // evict the oldest slot (plans are cheap to rebuild)
        p = &c->plans[0];
        cublasLtMatmulDescDestroy(p->op);
        cublasLtMatrixLayoutDestroy(p->a);
        cublasLtMatrixLayoutDestroy(p->b);
        cublasLtMatrixLayoutDestroy(p->c);
    }
    p->m = m; p->n = n; p->k = k; p->ldc = ldc;
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k, m, k));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k, n, k));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, m, n, ldc));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = GEMM_WS_BYTES;
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t res;
    int got = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &got));
    cublasLtMatmulPreferenceDestroy(pref);
    if (got < 1) PG_DIE("cuBLASLt: no algorithm for bf16 GEMM m=%d n=%d k=%d", m, n, k);
    p->algo = res.algo;
    return p;
}

extern "C" void k_gemm_bf16(kc_gemm_ctx *c, const kc_matrix *w, const kc_bf16 *x, int n,
                            float *y, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT(w->dtype == PG_BF16 && w->cols % 8 == 0);
    gemm_plan *p = gemm_get_plan(c, w->rows, n, w->cols, w->rows);
    const float one = 1.f, zero = 0.f;
    LT_CHECK(cublasLtMatmul(c->lt, p->op, &one, w->q, p->a, x, p->b, &zero, y, p->c, y, p->c,
                            &p->algo, c->ws, GEMM_WS_BYTES, s));
}

/*
 * Prefill with quantized weights (PG_QI8 / PG_QI4): the rows of W are
 * dequantized tile by tile into a bf16 scratch of scratch_elems elements
 * (the engine gives 64 MiB: row tiles large enough to fill the GPU with
 * GEMM tiles) and each tile goes
 * through the bf16 tensor-core GEMM into its rows of Y (row stride w->rows).
 * Same arithmetic as the bf16 path on the dequantized weights rounded to bf16.
 */
extern "C" void k_gemm_q(kc_gemm_ctx *c, const kc_matrix *w, const kc_bf16 *x, int n, float *y,
                         kc_bf16 *scratch, size_t scratch_elems, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT((w->dtype == PG_QI8 || w->dtype == PG_QI4) && w->cols % 16 == 0);
    int64_t rt = (int64_t)(scratch_elems / (size_t)w->cols) / 128 * 128;
    if (rt > 32768) rt = 32768;   /* k_dequant_bf16 takes < 65536 rows per call */
    if (rt > w->rows) rt = w->rows;
    PG_ASSERT(rt >= 128 || rt == w->rows);
    const float one = 1.f, zero = 0.f;
    for (int64_t r0 = 0; r0 < w->rows; r0 += rt) {
        int m = (int)(w->rows - r0 < rt ? w->rows - r0 : rt);
        k_dequant_bf16(w, r0, m, scratch, s);
        gemm_plan *p = gemm_get_plan(c, m, n, w->cols, w->rows);
        LT_CHECK(cublasLtMatmul(c->lt, p->op, &one, scratch, p->a, x, p->b, &zero, y + r0, p->c, y + r0, p->c,
                                &p->algo, c->ws, GEMM_WS_BYTES, s));
    }
}
