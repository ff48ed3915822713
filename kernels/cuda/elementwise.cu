/*
 * kernels/cuda/elementwise.cu — the small kernels around the matrix
 * products: weight conversion and repacking at load time, random weights,
 * embedding gather, RMSNorm fused with the residual add, SwiGLU, and RoPE
 * fused with the KV-cache write (bf16 cache, or int8 quantized as it is
 * written).
 *
 * All are memory-bound and tiny next to the weight stream; they are written
 * for clarity, with fp32 arithmetic and fixed reduction orders (so a graph
 * replay computes bit-identical results to an eager run).
 */
#include "kc_util.cuh"
#include "kv_write.cuh"

// ---------------------------------------------------------------- PDL switch
int kc_pdl_enabled(void)
{
    static int on = -1;   // a device property, read once (benign race: same value)
    if (on < 0) {
        int dev = 0, major = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            major = 0;
        }
        on = major >= 9 && !pg_env_flag("PEREGRINE_NO_PDL", 0);
    }
    return on;
}

// ---------------------------------------------------------------- sizes
extern "C" size_t kc_matrix_q_bytes(pg_dtype t, int64_t rows, int64_t cols)
{
    switch (t) {
    case PG_BF16: return (size_t)(rows * cols * 2);
    case PG_Q8_0: return (size_t)(rows * cols);
    case PG_Q4_0: case PG_Q4_1: return (size_t)(rows * cols / 2);
    default: return 0;
    }
}
extern "C" size_t kc_matrix_s_bytes(pg_dtype t, int64_t rows, int64_t cols)
{
    switch (t) {
    case PG_Q8_0: case PG_Q4_0: return (size_t)(rows * (cols / 32) * 2);
    case PG_Q4_1: return (size_t)(rows * (cols / 32) * 4);
    default: return 0;
    }
}
extern "C" size_t kc_matrix_bytes(pg_dtype t, int64_t rows, int64_t cols)
{
    return kc_matrix_q_bytes(t, rows, cols) + kc_matrix_s_bytes(t, rows, cols);
}

// ---------------------------------------------------------------- load-time
// One thread per 32-element block; src blocks are not aligned (34/18/20 B).
__global__ void repack_kernel(const uint8_t *__restrict__ src, int t, int64_t nblk,
                              uint8_t *__restrict__ q, uint16_t *__restrict__ s)
{
    int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (b >= nblk) return;
    if (t == PG_Q8_0) {
        const uint8_t *p = src + b * 34;
        s[b] = (uint16_t)(p[0] | (p[1] << 8));
        for (int j = 0; j < 32; j++) q[b * 32 + j] = p[2 + j];
    } else if (t == PG_Q4_0) {
        const uint8_t *p = src + b * 18;
        s[b] = (uint16_t)(p[0] | (p[1] << 8));
        for (int j = 0; j < 16; j++) q[b * 16 + j] = p[2 + j];
    } else {  // Q4_1
        const uint8_t *p = src + b * 20;
        s[2 * b] = (uint16_t)(p[0] | (p[1] << 8));
        s[2 * b + 1] = (uint16_t)(p[2] | (p[3] << 8));
        for (int j = 0; j < 16; j++) q[b * 16 + j] = p[4 + j];
    }
}

extern "C" void k_repack_blocks(const void *src, pg_dtype t, int64_t rows, int64_t cols,
                                kc_matrix *m, int64_t row0, cudaStream_t s)
{
    PG_ASSERT(t == PG_Q8_0 || t == PG_Q4_0 || t == PG_Q4_1);
    PG_ASSERT(m->dtype == t && cols == m->cols && cols % 32 == 0);
    int64_t nblk = rows * cols / 32;
    uint8_t *q = (uint8_t *)m->q + kc_matrix_q_bytes(t, row0, cols);
    uint16_t *sc = (uint16_t *)((uint8_t *)m->s + kc_matrix_s_bytes(t, row0, cols));
    if (nblk == 0) return;
    repack_kernel<<<(unsigned)KC_CDIV(nblk, 256), 256, 0, s>>>((const uint8_t *)src, t, nblk, q, sc);
    KC_LAUNCH_CHECK();
}

__device__ __forceinline__ float load_any(const void *src, int t, int64_t i)
{
    if (t == PG_F32) return ((const float *)src)[i];
    if (t == PG_F16) return kc_f16_f(((const uint16_t *)src)[i]);
    return kc_bf16_f(((const uint16_t *)src)[i]);
}

__global__ void to_bf16_kernel(const void *src, int t, int64_t n, uint16_t *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = t == PG_BF16 ? ((const uint16_t *)src)[i] : kc_f_bf16(load_any(src, t, i));
}
__global__ void to_f32_kernel(const void *src, int t, int64_t n, float *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = load_any(src, t, i);
}

static unsigned grid_for(int64_t n) { int64_t g = KC_CDIV(n, 256); return (unsigned)(g > 65536 ? 65536 : (g < 1 ? 1 : g)); }

extern "C" void k_to_bf16(const void *src, pg_dtype t, int64_t n, kc_bf16 *dst, cudaStream_t s)
{
    PG_ASSERT(t == PG_F32 || t == PG_F16 || t == PG_BF16);
    to_bf16_kernel<<<grid_for(n), 256, 0, s>>>(src, t, n, dst);
    KC_LAUNCH_CHECK();
}
extern "C" void k_to_f32(const void *src, pg_dtype t, int64_t n, float *dst, cudaStream_t s)
{
    PG_ASSERT(t == PG_F32 || t == PG_F16 || t == PG_BF16);
    to_f32_kernel<<<grid_for(n), 256, 0, s>>>(src, t, n, dst);
    KC_LAUNCH_CHECK();
}

__global__ void f32_to_bf16_kernel(const float *src, uint16_t *dst, int64_t n)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = kc_f_bf16(src[i]);
}
extern "C" void k_f32_to_bf16(const float *src, kc_bf16 *dst, int64_t n, cudaStream_t s)
{
    kc_launch(f32_to_bf16_kernel, dim3(grid_for(n)), dim3(256), 0, s, src, dst, n);
    KC_LAUNCH_CHECK();
}

// Counter-based normal draws: splitmix64 of (seed, index) -> two uniforms ->
// Box-Muller. Deterministic for a given seed, independent of the launch shape.
__device__ __forceinline__ uint64_t kc_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float kc_normal(uint64_t seed, int64_t i)
{
    uint64_t h = kc_mix64(seed ^ kc_mix64((uint64_t)i));
    float u1 = ((h >> 40) + 1) * (1.0f / 16777217.0f);      // (0, 1]
    float u2 = ((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
    return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}
__global__ void fill_normal_kernel(uint16_t *bf, float *f, int64_t n, uint64_t seed, float mean, float std)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = mean + std * kc_normal(seed, i);
        if (bf) bf[i] = kc_f_bf16(v); else f[i] = v;
    }
}
extern "C" void k_fill_normal_bf16(kc_bf16 *dst, int64_t n, uint64_t seed, float mean, float std,
                                   cudaStream_t s)
{
    fill_normal_kernel<<<grid_for(n), 256, 0, s>>>(dst, NULL, n, seed, mean, std);
    KC_LAUNCH_CHECK();
}
extern "C" void k_fill_normal_f32(float *dst, int64_t n, uint64_t seed, float mean, float std,
                                  cudaStream_t s)
{
    fill_normal_kernel<<<grid_for(n), 256, 0, s>>>(NULL, dst, n, seed, mean, std);
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- embedding
__device__ __forceinline__ float kc_dequant(const kc_matrix &m, int64_t r, int j)
{
    int64_t cols = m.cols;
    switch (m.dtype) {
    case PG_BF16: return kc_bf16_f(((const uint16_t *)m.q)[r * cols + j]);
    case PG_QI8: return kc_f16_f(((const uint16_t *)m.s)[r * (cols / m.group) + j / m.group]) *
                        (float)((const int8_t *)m.q)[kc_qi8_at(m.tiles, m.rows, cols, r, j)];
    case PG_QI4: {   /* s*q is exact in f32: fmaf = the reference's product, then + m */
        uint32_t sm = ((const uint32_t *)m.s)[kc_qi4_s_at(m.tiles, m.rows, cols, m.group, r, j / m.group)];
        int v = (((const uint8_t *)m.q)[kc_q_at(&m, r, j)] >> (4 * (j & 1))) & 15;
        return fmaf(kc_f16_f((uint16_t)(sm & 0xffff)), (float)v, kc_f16_f((uint16_t)(sm >> 16)));
    }
    case PG_Q8_0: return kc_f16_f(((const uint16_t *)m.s)[r * (cols / 32) + j / 32]) *
                         (float)((const int8_t *)m.q)[r * cols + j];
    default: {
        int b = j / 32, e = j % 32;
        uint8_t byte = ((const uint8_t *)m.q)[r * (cols / 2) + b * 16 + (e & 15)];
        float qv = (float)(e < 16 ? (byte & 15) : (byte >> 4));
        if (m.dtype == PG_Q4_0)
            return kc_f16_f(((const uint16_t *)m.s)[r * (cols / 32) + b]) * (qv - 8.f);
        const uint16_t *dm = (const uint16_t *)m.s + 2 * (r * (cols / 32) + b);
        return kc_f16_f(dm[0]) * qv + kc_f16_f(dm[1]);
    }
    }
}

__global__ void embed_kernel(kc_matrix m, const int32_t *tokens, float *out)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    int i = blockIdx.x;
    int64_t r = tokens[i];
    for (int j = threadIdx.x; j < m.cols; j += blockDim.x)
        out[(size_t)i * m.cols + j] = kc_dequant(m, r, j);
}
extern "C" void k_embed(const kc_matrix *emb, const int32_t *tokens, int n, float *out,
                        cudaStream_t s)
{
    if (n <= 0) return;
    kc_launch(embed_kernel, dim3(n), dim3(256), 0, s, *emb, tokens, out);
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- norms
// One block per row. PER > 0: the row lives in registers, PER elements per
// thread at most (dim <= PER * blockDim.x), and the norm weights are loaded
// before waiting for the previous kernel (they are constants), so a decode
// step pays one dependent global round trip (read x and y) instead of three
// (read, then re-read x after the reduction, then w). PER = 0: any dim, a
// loop that re-reads x. Both sum in the same order: the same bits.
template <int PER>
__global__ void add_rmsnorm_kernel(float *resid, const float *delta, const float *w, float eps,
                                   int dim, float *out, uint16_t *out_bf)
{
    kc_pdl_trigger();
    __shared__ float sh[32];
    float *r = resid + (size_t)blockIdx.x * dim;
    const float *d = delta ? delta + (size_t)blockIdx.x * dim : NULL;
    float *o = out ? out + (size_t)blockIdx.x * dim : NULL;
    uint16_t *ob = out_bf ? out_bf + (size_t)blockIdx.x * dim : NULL;
    float ss = 0.f;
    if constexpr (PER > 0) {
        float wv[PER], v[PER];
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int j = threadIdx.x + k * blockDim.x;
            wv[k] = j < dim ? w[j] : 0.f;
        }
        kc_pdl_wait();
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int j = threadIdx.x + k * blockDim.x;
            v[k] = 0.f;
            if (j < dim) {
                v[k] = r[j];
                if (d) { v[k] += d[j]; r[j] = v[k]; }
                ss += v[k] * v[k];
            }
        }
        ss = kc_block_sum(ss, sh);
        const float inv = rsqrtf(ss / (float)dim + eps);
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int j = threadIdx.x + k * blockDim.x;
            if (j < dim) {
                const float y = v[k] * inv * wv[k];
                if (o) o[j] = y;
                if (ob) ob[j] = kc_f_bf16(y);
            }
        }
        return;
    }
    kc_pdl_wait();
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = r[j];
        if (d) { v += d[j]; r[j] = v; }
        ss += v * v;
    }
    ss = kc_block_sum(ss, sh);
    float inv = rsqrtf(ss / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = r[j] * inv * w[j];
        if (o) o[j] = v;
        if (ob) ob[j] = kc_f_bf16(v);
    }
}
extern "C" void k_add_rmsnorm(float *resid, const float *delta, const float *w, float eps,
                              int n, int dim, float *out_f32, kc_bf16 *out_bf16, cudaStream_t s)
{
    if (n <= 0) return;
    int threads = dim >= 4096 ? 1024 : (dim >= 1024 ? 512 : 256);
    if (dim <= 8 * threads)
        kc_launch(add_rmsnorm_kernel<8>, dim3(n), dim3(threads), 0, s, resid, delta, w, eps, dim, out_f32,
                  (uint16_t *)out_bf16);
    else
        kc_launch(add_rmsnorm_kernel<0>, dim3(n), dim3(threads), 0, s, resid, delta, w, eps, dim, out_f32,
                  (uint16_t *)out_bf16);
    KC_LAUNCH_CHECK();
}

__global__ void swiglu_kernel(const float *gu, int hidden, float *y, uint16_t *yb)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const float *g = gu + (size_t)blockIdx.y * 2 * hidden;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= hidden) return;
    float a = g[j], b = g[hidden + j];
    float v = a / (1.f + __expf(-a)) * b;
    if (y) y[(size_t)blockIdx.y * hidden + j] = v;
    if (yb) yb[(size_t)blockIdx.y * hidden + j] = kc_f_bf16(v);
}
extern "C" void k_swiglu(const float *gu, int n, int hidden, float *y, kc_bf16 *y_bf16,
                         cudaStream_t s)
{
    if (n <= 0) return;
    kc_launch(swiglu_kernel, dim3(dim3(KC_CDIV(hidden, 256), n)), dim3(256), 0, s, gu, hidden, y, y_bf16);
    KC_LAUNCH_CHECK();
}

__global__ void add_kernel(float *y, const float *x, int64_t n)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}
extern "C" void k_add(float *y, const float *x, int64_t n, cudaStream_t s)
{
    if (n <= 0) return;
    kc_launch(add_kernel, dim3(grid_for(n)), dim3(256), 0, s, y, x, n);
    KC_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- RoPE + KV
// Grid (token, work slice). Work items: q pairs, k pairs (rotated, written
// to the cache), v elements (copied to the cache); one item per thread, so a
// decode step spreads over many SMs instead of one block's loop.
__global__ void rope_kv_kernel(float *qkv, int stride, const int32_t *pos, const int32_t *slot,
                               const float *inv_freq, kc_attn_shape sh, uint16_t *kc, uint16_t *vc)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int i = blockIdx.x, hd = sh.head_dim, half = hd / 2;
    float *row = qkv + (size_t)i * stride;
    const int p = pos[i];
    const size_t cache_row0 = (size_t)slot[i] * sh.n_kv_heads * sh.max_seq;
    const int nq = sh.n_heads * half, nk = sh.n_kv_heads * half, nv = sh.n_kv_heads * hd;
    for (int t = blockIdx.y * blockDim.x + threadIdx.x; t < nq + nk + nv; t += gridDim.y * blockDim.x) {
        if (t < nq + nk) {
            int head = t / half, k = t % half;   // head counts q heads then k heads
            float *x = row + (size_t)head * hd;
            int i0 = sh.interleaved ? 2 * k : k, i1 = sh.interleaved ? 2 * k + 1 : k + half;
            float sn, cs;
            sincosf((float)p * inv_freq[k], &sn, &cs);
            float r0, r1;
            kc_rope_rot(x[i0], x[i1], cs, sn, &r0, &r1);
            if (t < nq) { x[i0] = r0; x[i1] = r1; }
            else {
                int kh = head - sh.n_heads;
                uint16_t *dst = kc + ((cache_row0 + (size_t)kh * sh.max_seq + p) * hd);
                dst[i0] = kc_f_bf16(r0); dst[i1] = kc_f_bf16(r1);
            }
        } else {
            int e = t - nq - nk, kh = e / hd, d = e % hd;
            float v = row[(size_t)(sh.n_heads + sh.n_kv_heads) * hd + e];
            vc[(cache_row0 + (size_t)kh * sh.max_seq + p) * hd + d] = kc_f_bf16(v);
        }
    }
}
extern "C" void k_rope_kv_write(float *qkv, int row_stride, int n, const int32_t *pos,
                                const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                                kc_bf16 *kc, kc_bf16 *vc, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT(sh.head_dim % 2 == 0 && sh.n_heads % sh.n_kv_heads == 0);
    int work = (sh.n_heads + sh.n_kv_heads) * sh.head_dim / 2 + sh.n_kv_heads * sh.head_dim;
    kc_launch(rope_kv_kernel, dim3(dim3(n, KC_CDIV(work, 128))), dim3(128), 0, s, qkv, row_stride, pos, slot, inv_freq, sh, kc, vc);
    KC_LAUNCH_CHECK();
}

// int8 cache (layout and quantizer: kernels/kernels.h). Grid (token, slice):
// slices [0, qb) rotate q pairs, one per thread; slices [qb, qb + hb) hold
// four warps, one per k or v head vector (kc_kv_write_head: rotate k, then
// the ref_kv_quant_int8 rule with the same f32 operations, so the bytes are
// identical).
__global__ void rope_kv_int8_kernel(float *qkv, int stride, const int32_t *pos, const int32_t *slot,
                                    const float *inv_freq, kc_attn_shape sh, int qb, int8_t *kc,
                                    int8_t *vc, float *ks, float *vs)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    const int i = blockIdx.x, hd = sh.head_dim, half = hd / 2;
    float *row = qkv + (size_t)i * stride;
    const int p = pos[i];
    if ((int)blockIdx.y < qb) {
        const int t = blockIdx.y * blockDim.x + threadIdx.x;
        if (t >= sh.n_heads * half) return;
        const int head = t / half, k = t % half;
        float *x = row + (size_t)head * hd;
        int i0, i1;
        kc_rope_pair(k, half, sh.interleaved, &i0, &i1);
        float sn, cs;
        sincosf((float)p * inv_freq[k], &sn, &cs);
        kc_rope_rot(x[i0], x[i1], cs, sn, &x[i0], &x[i1]);
        return;
    }
    const int vec = ((int)blockIdx.y - qb) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (vec >= 2 * sh.n_kv_heads) return;   // whole warps
    const bool is_v = vec >= sh.n_kv_heads;
    const int kh = is_v ? vec - sh.n_kv_heads : vec;
    const size_t at = ((size_t)slot[i] * sh.n_kv_heads + kh) * sh.max_seq + p;
    kc_kv_write_head<true>(row + (size_t)(sh.n_heads + vec) * hd, !is_v, p, inv_freq, sh.interleaved, hd,
                           (is_v ? vc : kc) + at * hd, (is_v ? vs : ks) + at);
}
extern "C" void k_rope_kv_write_int8(float *qkv, int row_stride, int n, const int32_t *pos,
                                     const int32_t *slot, const float *inv_freq, kc_attn_shape sh,
                                     int8_t *kc, int8_t *vc, float *ks, float *vs, cudaStream_t s)
{
    if (n <= 0) return;
    PG_ASSERT(sh.head_dim % 2 == 0 && sh.head_dim <= 256 && sh.n_heads % sh.n_kv_heads == 0);
    const int qb = KC_CDIV(sh.n_heads * sh.head_dim / 2, 128), hb = KC_CDIV(2 * sh.n_kv_heads, 4);
    kc_launch(rope_kv_int8_kernel, dim3(n, qb + hb), dim3(128), 0, s, qkv, row_stride, pos, slot, inv_freq,
              sh, qb, kc, vc, ks, vs);
    KC_LAUNCH_CHECK();
}

__global__ void mark_seen_kernel(uint8_t *seen, const int32_t *tokens, int n)
{
    kc_pdl_trigger();
    kc_pdl_wait();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        seen[tokens[i]] = 1;
}
extern "C" void k_mark_seen(uint8_t *seen, int vocab, int slot, const int32_t *tokens, int n,
                            cudaStream_t s)
{
    if (n <= 0) return;
    kc_launch(mark_seen_kernel, dim3(KC_CDIV(n, 256)), dim3(256), 0, s, seen + (size_t)slot * vocab, tokens, n);
    KC_LAUNCH_CHECK();
}
