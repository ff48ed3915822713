/*
 * kernels/cuda/microbench.cu — micro-benchmarks of the hot kernels at one
 * model shape (`peregrine bench --kernels`). Each line gives the median time
 * of several timed batches (CUDA events), the bytes or FLOPs counted for the
 * kernel, the achieved rate, and that rate over the ceiling measured in the
 * same run: device-to-device copy bandwidth (bytes read + written) for
 * memory-bound kernels, a large cuBLASLt bf16 GEMM for matrix-bound ones.
 * Weights rotate over enough copies (> 4x L2) that no repeat hits in L2, and
 * every input is random (never zeros).
 */
#include "kc_util.cuh"
#include <algorithm>
#include <vector>

#define MB_CHECK(x) KC_CHECK(x)

template <class F>
static float time_med(cudaStream_t s, int iters, F f)
{
    cudaEvent_t a, b;
    MB_CHECK(cudaEventCreate(&a)); MB_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) f(i);   // warm-up
    std::vector<float> t;
    for (int r = 0; r < 7; r++) {
        MB_CHECK(cudaEventRecord(a, s));
        for (int i = 0; i < iters; i++) f(i);
        MB_CHECK(cudaEventRecord(b, s));
        MB_CHECK(cudaEventSynchronize(b));
        float ms; MB_CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1e3f / iters);
    }
    cudaEventDestroy(a); cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];   // µs
}

static void *dalloc(size_t n) { void *p; MB_CHECK(cudaMalloc(&p, n)); return p; }

// Read-only stream: every 16-byte word of src once (4 loads in flight per
// thread), folded into one word per thread so the loads are not dead code.
// The ceiling of a kernel that only reads (the decode matrix-vector
// products), beside the copy's read + write figure.
__global__ void mb_read_kernel(const uint4 *__restrict__ src, size_t n16, uint32_t *out)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    uint32_t acc = 0;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = kc_ld_stream(src + i), b = kc_ld_stream(src + i + stride);
        uint4 c = kc_ld_stream(src + i + 2 * stride), d = kc_ld_stream(src + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) { uint4 a = kc_ld_stream(src + i); acc ^= a.x ^ a.y ^ a.z ^ a.w; }
    out[(size_t)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

struct MatSet {   // `copies` copies of one matrix, to defeat L2
    std::vector<kc_matrix> m;
    size_t bytes;
};
// group: QI8 / QI4 only (QI8: 0 = per output channel). Quantized copies
// are quantized on the device from normal(0, 0.02) bf16 weights. tiles: QI8
// per channel or QI4 in the decode kernel's tile order (KC_TILES_*) where the shape
// allows it (kc_q_tileable), row-major otherwise.
static MatSet make_mats(pg_dtype t, int rows, int cols, size_t l2, cudaStream_t s, uint64_t seed, int group = 0,
                        int tiles = KC_TILES_NONE)
{
    MatSet ms;
    const bool qi = t == PG_QI8 || t == PG_QI4;
    if (qi && group == 0) group = cols;
    ms.bytes = kc_qm_bytes(t, rows, cols, group);
    int copies = (int)std::min<size_t>(64, std::max<size_t>(2, 4 * l2 / ms.bytes + 1));
    kc_bf16 *tmp = qi ? (kc_bf16 *)dalloc((size_t)rows * cols * 2) : NULL;
    for (int c = 0; c < copies; c++) {
        kc_matrix m = { t, rows, cols, dalloc(kc_qm_q_bytes(t, rows, cols, group)), NULL, qi ? group : 0,
                        KC_TILES_NONE };
        if (tiles && kc_q_tileable(&m, tiles)) m.tiles = tiles;
        size_t sb = kc_matrix_s_bytes(t, rows, cols);
        if (t == PG_BF16) k_fill_normal_bf16((kc_bf16 *)m.q, (int64_t)rows * cols, seed + c, 0.f, 0.02f, s);
        else if (qi) {
            m.s = dalloc(kc_qm_s_bytes(t, rows, cols, group));
            k_fill_normal_bf16(tmp, (int64_t)rows * cols, seed + c, 0.f, 0.02f, s);
            k_quantize(tmp, PG_BF16, rows, cols, &m, 0, s);
        } else {
            // random bytes for quants; scales ~ N(0.002, 0.0005) as f16 bits are
            // not needed exactly: fill both with bf16 noise reinterpretation
            k_fill_normal_bf16((kc_bf16 *)m.q, (int64_t)kc_matrix_q_bytes(t, rows, cols) / 2, seed + c, 0.f, 1000.f, s);
            m.s = dalloc(sb);
            k_fill_normal_bf16((kc_bf16 *)m.s, (int64_t)sb / 2, seed + 100 + c, 0.f, 1e-30f, s);
        }
        ms.m.push_back(m);
    }
    if (tmp) { MB_CHECK(cudaStreamSynchronize(s)); cudaFree(tmp); }
    return ms;
}
static void free_mats(MatSet &ms) { for (auto &m : ms.m) { cudaFree(m.q); cudaFree(m.s); } }

// The access pattern of the quantized decode kernel (gemv_quant.cu) without
// its arithmetic: a matrix of rows x rowb bytes in tiles of 16 rows; warp w of
// a block reads 64-byte chunks w, w + 8, ... of the tile's rows, lane
// (g, t) 16 bytes of rows g and g + 8 at byte 16 t (8 rows x 64 bytes per
// warp load). frag = 0 reads the same bytes row by row instead (a warp load
// = 512 contiguous bytes of one row), the pattern of the bf16 kernel. Both
// keep 8 loads of 16 bytes in flight per lane.
__global__ void mb_read_tiles_kernel(const uint8_t *__restrict__ q, int rows, int rowb, int frag, uint32_t *out)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int tiles = rows / 16, nch = rowb / 64;
    const size_t tb = (size_t)16 * rowb;   // a tile's rows are contiguous
    uint32_t acc = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const uint8_t *base = q + (size_t)tile * tb;
        uint4 v[8];
        if (frag) {
            for (int c0 = warp; c0 < nch; c0 += 8 * 4) {
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const int ch = min(c0 + 8 * u, nch - 1);
                    v[2 * u] = kc_ld_stream(base + (size_t)g * rowb + ch * 64 + t * 16);
                    v[2 * u + 1] = kc_ld_stream(base + (size_t)(g + 8) * rowb + ch * 64 + t * 16);
                }
#pragma unroll
                for (int k = 0; k < 8; k++) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
            }
        } else {
            for (size_t o = (size_t)warp * 512 + lane * 16; o < tb; o += (size_t)8 * 512 * 8) {
#pragma unroll
                for (int u = 0; u < 8; u++) v[u] = kc_ld_stream(base + min(o + (size_t)u * 8 * 512, tb - 16));
#pragma unroll
                for (int k = 0; k < 8; k++) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
            }
        }
    }
    out[(size_t)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

extern "C" int kc_microbench(FILE *f, int dim, int hidden, int nh, int nkv, int hd, int vocab,
                             pg_err *err)
{
    cudaStream_t s;
    MB_CHECK(cudaStreamCreate(&s));
    cudaDeviceProp prop;
    MB_CHECK(cudaGetDeviceProperties(&prop, 0));
    size_t l2 = prop.l2CacheSize;
    fprintf(f, "kernel micro-benchmarks on %s (%d SMs, L2 %zu MB); shape dim %d hidden %d heads %d/%d hd %d vocab %d\n",
            prop.name, prop.multiProcessorCount, l2 >> 20, dim, hidden, nh, nkv, hd, vocab);

    // ---- ceilings
    size_t cb = 1ull << 30;
    void *ca = dalloc(cb), *cbuf = dalloc(cb);
    k_fill_normal_f32((float *)ca, cb / 4, 1, 0.f, 1.f, s);
    float tcopy = time_med(s, 5, [&](int) { MB_CHECK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, s)); });
    double copy_bw = 2.0 * cb / (tcopy * 1e-6) / 1e9;
    double read_bw = 0;
    {
        int sms = prop.multiProcessorCount, blocks = sms * 4;
        float tr = time_med(s, 5, [&](int) {
            mb_read_kernel<<<blocks, 512, 0, s>>>((const uint4 *)ca, cb / 16, (uint32_t *)cbuf);
        });
        KC_CHECK(cudaGetLastError());
        read_bw = cb / (tr * 1e-6) / 1e9;
        // the decode kernel's access pattern, 1 GiB as rows of 2048 bytes (int4 x 4096 columns)
        for (int frag = 0; frag < 2; frag++)
            for (int bps : { 2, 4 }) {
                float tt = time_med(s, 5, [&](int) {
                    mb_read_tiles_kernel<<<sms * bps, 256, 0, s>>>((const uint8_t *)ca, (int)(cb / 2048), 2048, frag,
                                                                   (uint32_t *)cbuf);
                });
                KC_CHECK(cudaGetLastError());
                fprintf(f, "read pattern %s, %d blocks of 8 warps per SM: %.0f GB/s\n",
                        frag ? "8 rows x 64 B per warp load (quantized decode kernel)" : "512 contiguous B per warp load",
                        bps, cb / (tt * 1e-6) / 1e9);
            }
    }
    cudaFree(ca); cudaFree(cbuf);
    double gemm_tf = 0;
    kc_gemm_ctx *g;
    if (kc_gemm_ctx_init(&g, err)) return err ? err->code : PG_EDEVICE;
    {
        int n = 8192;
        kc_matrix w = { PG_BF16, n, n, dalloc((size_t)n * n * 2), NULL, 0, KC_TILES_NONE };
        kc_bf16 *x = (kc_bf16 *)dalloc((size_t)n * n * 2);
        float *y = (float *)dalloc((size_t)n * n * 4);
        k_fill_normal_bf16((kc_bf16 *)w.q, (int64_t)n * n, 2, 0.f, 1.f, s);
        k_fill_normal_bf16(x, (int64_t)n * n, 3, 0.f, 1.f, s);
        float t = time_med(s, 3, [&](int) { k_gemm_bf16(g, &w, x, n, y, s); });
        double tf = 2.0 * n * n * (double)n / (t * 1e-6) / 1e12;
        gemm_tf = tf;
        fprintf(f, "ceilings: device-to-device copy %.0f GB/s (1 GiB, read+write); bf16 GEMM 8192^3 (cuBLASLt) %.0f TFLOP/s\n",
                copy_bw, tf);
        fprintf(f, "read-only stream (1 GiB, 16-byte loads): %.0f GB/s = %.1f%% of the copy figure (percentages below are of the copy)\n",
                read_bw, 100 * read_bw / copy_bw);
        cudaFree(w.q); cudaFree(x); cudaFree(y);
        fprintf(f, "%-44s %10s %10s %12s %7s\n", "kernel", "µs", "MB", "rate", "%ceil");
    }

    const int qkv = (nh + 2 * nkv) * hd;
    struct Shape { const char *name; int rows, cols; bool sw; } shapes[] = {
        { "wqkv", qkv, dim, false }, { "wo", dim, nh * hd, false },
        { "w13 (gate+up, SwiGLU fused)", 2 * hidden, dim, true }, { "w2", dim, hidden, false },
        { "lm_head", vocab, dim, false },
    };
    int maxc = std::max(hidden, std::max(dim, nh * hd));
    float *x = (float *)dalloc((size_t)512 * maxc * 4);
    kc_bf16 *xb = (kc_bf16 *)dalloc((size_t)512 * maxc * 2);
    float *y = (float *)dalloc((size_t)512 * std::max(2 * hidden, vocab) * 4);
    k_fill_normal_f32(x, (int64_t)512 * maxc, 5, 0.f, 1.f, s);
    k_fill_normal_bf16(xb, (int64_t)512 * maxc, 6, 0.f, 1.f, s);

    // bf16, QI8 per channel (row-major and tiled), QI4 g32 (row-major and
    // tiled) and g128 (bytes counted: q + scales + mins)
    struct WType { pg_dtype t; int group; int tiled; } types[] = {
        { PG_BF16, 0, 0 }, { PG_QI8, 0, 0 }, { PG_QI8, 0, 1 }, { PG_QI4, 32, 0 }, { PG_QI4, 32, 1 },
        { PG_QI4, 128, 0 } };
    kc_bf16 *qscr = (kc_bf16 *)dalloc((size_t)(32u << 20) * 2);   // prefill tiles, as the engine's CU_QSCRATCH
    for (WType wt : types) {
        pg_dtype t = wt.t;
        char tname[32];
        if (t == PG_BF16) snprintf(tname, sizeof tname, "bf16");
        else if (t == PG_QI8) snprintf(tname, sizeof tname, wt.tiled ? "int8-tiled" : "int8");
        else snprintf(tname, sizeof tname, wt.tiled ? "int4-g%d-tiled" : "int4-g%d", wt.group);
        double tot_bytes = 0, tot_us = 0;
        for (auto &sh : shapes) {
            // (the tiled lines also tile the LM head shape, which the engine
            // keeps row-major: its line tells whether tiling it would pay)
            MatSet ms = make_mats(t, sh.rows, sh.cols, l2, s, 10, wt.group,
                                  wt.tiled ? (sh.sw ? KC_TILES_PAIRS : KC_TILES_ROWS) : KC_TILES_NONE);
            int nc = (int)ms.m.size();
            for (int n : { 1, 4, 8 }) {
                float us = time_med(s, 2 * nc, [&](int i) {
                    if (sh.sw) k_gemv_swiglu(&ms.m[i % nc], x, n, y, s); else k_gemv(&ms.m[i % nc], x, n, y, s);
                });
                double gbs = ms.bytes / (us * 1e-6) / 1e9;
                char name[96];
                snprintf(name, sizeof name, "gemv %s %s n=%d %dx%d", tname, sh.name, n, sh.rows, sh.cols);
                fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, us, ms.bytes / 1e6, gbs, 100 * gbs / copy_bw);
                if (n == 1) { tot_bytes += ms.bytes; tot_us += us; }
            }
            if (t != PG_BF16) {   // prefill: dequantized tiles + tensor cores, n = 512
                float us = time_med(s, nc, [&](int i) {
                    k_gemm_q(g, &ms.m[i % nc], xb, 512, y, qscr, (size_t)32 << 20, s);
                });
                double tf = 2.0 * sh.rows * (double)sh.cols * 512 / (us * 1e-6) / 1e12;
                char name[96];
                snprintf(name, sizeof name, "gemm_q %s %s n=512", tname, sh.name);
                fprintf(f, "%-44s %10.1f %10.1f %6.0f TFLOP/s %6.1f%%\n", name, us, ms.bytes / 1e6, tf, 100 * tf / gemm_tf);
            }
            if (t == PG_BF16) {
                // cuBLASLt at n=1 and the prefill GEMM at n=512
                float us = time_med(s, 2 * nc, [&](int i) { k_gemm_bf16(g, &ms.m[i % nc], xb, 1, y, s); });
                double gbs = ms.bytes / (us * 1e-6) / 1e9;
                char name[96];
                snprintf(name, sizeof name, "cublasLt bf16 %s n=1", sh.name);
                fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, us, ms.bytes / 1e6, gbs, 100 * gbs / copy_bw);
                us = time_med(s, nc, [&](int i) { k_gemm_bf16(g, &ms.m[i % nc], xb, 512, y, s); });
                double tf = 2.0 * sh.rows * (double)sh.cols * 512 / (us * 1e-6) / 1e12;
                snprintf(name, sizeof name, "cublasLt bf16 %s n=512", sh.name);
                fprintf(f, "%-44s %10.1f %10.1f %6.0f TFLOP/s %6.1f%%\n", name, us, ms.bytes / 1e6, tf, 100 * tf / gemm_tf);
            }
            free_mats(ms);
        }
        char name[96];
        snprintf(name, sizeof name, "gemv %s n=1, byte-weighted (one layer+head)", tname);
        if (tot_us > 0)
            fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, tot_us, tot_bytes / 1e6,
                    tot_bytes / (tot_us * 1e-6) / 1e9, 100 * tot_bytes / (tot_us * 1e-6) / 1e9 / copy_bw);
    }
    cudaFree(qscr);
    {   // load-time quantizer: bf16 w13 -> int8 per channel / int4 g32 (bytes: bf16 read + result written)
        int rows = 2 * hidden, cols = dim;
        kc_bf16 *src = (kc_bf16 *)dalloc((size_t)rows * cols * 2);
        k_fill_normal_bf16(src, (int64_t)rows * cols, 90, 0.f, 0.02f, s);
        for (WType wt : { WType{ PG_QI8, cols, 0 }, WType{ PG_QI4, 32, 0 } }) {
            kc_matrix m = { wt.t, rows, cols, dalloc(kc_qm_q_bytes(wt.t, rows, cols, wt.group)),
                            dalloc(kc_qm_s_bytes(wt.t, rows, cols, wt.group)), wt.group, KC_TILES_NONE };
            float us = time_med(s, 2, [&](int) { k_quantize(src, PG_BF16, rows, cols, &m, 0, s); });
            double bytes = (double)rows * cols * 2 + kc_qm_bytes(wt.t, rows, cols, wt.group);
            char name[96];
            snprintf(name, sizeof name, "quantize bf16 -> %s %dx%d", wt.t == PG_QI8 ? "int8" : "int4-g32", rows, cols);
            fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, us, bytes / 1e6, bytes / (us * 1e-6) / 1e9,
                    100 * bytes / (us * 1e-6) / 1e9 / copy_bw);
            cudaFree(m.q); cudaFree(m.s);
        }
        cudaFree(src);
    }

    // ---- attention decode at several context lengths (one sequence)
    for (int ctx : { 512, 4096, 8192 }) {
        kc_attn_shape sh = { nh, nkv, hd, ctx, 0 };
        size_t kvn = (size_t)nkv * ctx * hd;
        int copies = (int)std::max<size_t>(2, 4 * l2 / (kvn * 4) + 1);
        copies = std::min(copies, 16);
        std::vector<kc_bf16 *> kc(copies), vc(copies);
        for (int c = 0; c < copies; c++) {
            kc[c] = (kc_bf16 *)dalloc(kvn * 2); vc[c] = (kc_bf16 *)dalloc(kvn * 2);
            k_fill_normal_bf16(kc[c], kvn, 20 + c, 0.f, 1.f, s);
            k_fill_normal_bf16(vc[c], kvn, 40 + c, 0.f, 1.f, s);
        }
        float *part = (float *)dalloc(k_attn_decode_part_floats(1, sh) * 4);
        MB_CHECK(cudaMemset(part, 0, k_attn_decode_part_floats(1, sh) * 4));
        int32_t hpos = ctx - 1, hslot = 0, *dp = (int32_t *)dalloc(8);
        MB_CHECK(cudaMemcpy(dp, &hpos, 4, cudaMemcpyHostToDevice));
        MB_CHECK(cudaMemcpy(dp + 1, &hslot, 4, cudaMemcpyHostToDevice));
        float us = time_med(s, 2 * copies, [&](int i) {
            k_attn_decode(x, qkv, 1, dp, dp + 1, kc[i % copies], vc[i % copies], sh, part, y, nh * hd, s);
        });
        double bytes = 2.0 * kvn * 2;
        char name[96];
        snprintf(name, sizeof name, "attn decode ctx=%d (K+V %.1f MB)", ctx, bytes / 1e6);
        fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, us, bytes / 1e6,
                bytes / (us * 1e-6) / 1e9, 100 * bytes / (us * 1e-6) / 1e9 / copy_bw);
        {   // int8 cache: the first kvn bytes of each copy as int8 elements (any bytes are valid), f32 scales
            std::vector<float *> sc(copies);
            for (int c = 0; c < copies; c++) {
                sc[c] = (float *)dalloc((size_t)2 * nkv * ctx * 4);
                k_fill_normal_f32(sc[c], (int64_t)2 * nkv * ctx, 80 + c, 0.f, 0.02f, s);
            }
            float us8 = time_med(s, 2 * copies, [&](int i) {
                const int c = i % copies;
                k_attn_decode_int8(x, qkv, 1, dp, dp + 1, (const int8_t *)kc[c], (const int8_t *)vc[c], sc[c],
                                   sc[c] + (size_t)nkv * ctx, sh, part, y, nh * hd, s);
            });
            double bytes8 = 2.0 * (kvn + (double)nkv * ctx * 4);
            snprintf(name, sizeof name, "attn decode int8 ctx=%d (K+V %.1f MB)", ctx, bytes8 / 1e6);
            fprintf(f, "%-44s %10.1f %10.1f %8.0f GB/s %6.1f%%\n", name, us8, bytes8 / 1e6,
                    bytes8 / (us8 * 1e-6) / 1e9, 100 * bytes8 / (us8 * 1e-6) / 1e9 / copy_bw);
            for (int c = 0; c < copies; c++) cudaFree(sc[c]);
        }
        // prefill attention, 512 queries at the start of the sequence
        if (ctx >= 512) {
            int n = 512;
            float *q = (float *)dalloc((size_t)n * qkv * 4), *o = (float *)dalloc((size_t)n * nh * hd * 4);
            k_fill_normal_f32(q, (int64_t)n * qkv, 60, 0.f, 1.f, s);
            float us2 = time_med(s, 5, [&](int i) {
                k_attn_prefill(q, qkv, n, 0, 0, kc[i % copies], vc[i % copies], sh, o, nh * hd, s);
            });
            double fl = 4.0 * nh * hd * (double)n * n / 2;   // causal: half of QK^T and PV
            snprintf(name, sizeof name, "attn prefill n=512 (max_seq %d)", ctx);
            fprintf(f, "%-44s %10.1f %10s %6.1f TFLOP/s %6.1f%%\n", name, us2, "-", fl / (us2 * 1e-6) / 1e12,
                    100 * fl / (us2 * 1e-6) / 1e12 / gemm_tf);
            cudaFree(q); cudaFree(o);
        }
        for (int c = 0; c < copies; c++) { cudaFree(kc[c]); cudaFree(vc[c]); }
        cudaFree(part); cudaFree(dp);
    }

    // ---- small kernels (batch 1)
    {
        float *resid = (float *)dalloc((size_t)dim * 4), *w = (float *)dalloc((size_t)dim * 4);
        k_fill_normal_f32(resid, dim, 70, 0.f, 1.f, s);
        k_fill_normal_f32(w, dim, 71, 1.f, 0.1f, s);
        float us = time_med(s, 200, [&](int) { k_add_rmsnorm(resid, x, w, 1e-5f, 1, dim, y, NULL, s); });
        fprintf(f, "%-44s %10.2f\n", "add_rmsnorm n=1", us);
        int32_t *dp = (int32_t *)dalloc(8);
        MB_CHECK(cudaMemset(dp, 0, 8));
        kc_attn_shape sh = { nh, nkv, hd, 16, 0 };
        kc_bf16 *kc = (kc_bf16 *)dalloc((size_t)nkv * 16 * hd * 2), *vc = (kc_bf16 *)dalloc((size_t)nkv * 16 * hd * 2);
        us = time_med(s, 200, [&](int) { k_rope_kv_write(y, qkv, 1, dp, dp + 1, w, sh, kc, vc, s); });
        fprintf(f, "%-44s %10.2f\n", "rope_kv_write n=1", us);
        float *ksc = (float *)dalloc((size_t)2 * nkv * 16 * 4);
        us = time_med(s, 200, [&](int) {
            k_rope_kv_write_int8(y, qkv, 1, dp, dp + 1, w, sh, (int8_t *)kc, (int8_t *)vc, ksc, ksc + nkv * 16, s);
        });
        fprintf(f, "%-44s %10.2f\n", "rope_kv_write int8 n=1", us);
        cudaFree(ksc);
        // sampling over the vocabulary: greedy and temperature + top-p
        kc_sampler_params hp[2];
        memset(hp, 0, sizeof hp);
        hp[0].temperature = 0.f; hp[0].top_p = 1.f; hp[0].rep_pen = 1.f;
        hp[1].temperature = 0.8f; hp[1].top_p = 0.9f; hp[1].rep_pen = 1.f;
        kc_sampler_params *dpar = (kc_sampler_params *)dalloc(sizeof hp);
        MB_CHECK(cudaMemcpy(dpar, hp, sizeof hp, cudaMemcpyHostToDevice));
        int32_t *gc = (int32_t *)dalloc((size_t)2 * vocab * 4);
        uint8_t *seen = (uint8_t *)dalloc((size_t)2 * vocab);
        float *work = (float *)dalloc((size_t)vocab * 4), *logits = (float *)dalloc((size_t)vocab * 4);
        MB_CHECK(cudaMemset(gc, 0, (size_t)2 * vocab * 4));
        MB_CHECK(cudaMemset(seen, 0, (size_t)2 * vocab));
        k_fill_normal_f32(logits, vocab, 80, 0.f, 3.f, s);
        int32_t hs[4] = { 0, 1, 1, 1 };
        float hu = 0.37f;
        int32_t *dsl = (int32_t *)dalloc(16);
        float *du = (float *)dalloc(4);
        MB_CHECK(cudaMemcpy(dsl, hs, 16, cudaMemcpyHostToDevice));
        MB_CHECK(cudaMemcpy(du, &hu, 4, cudaMemcpyHostToDevice));
        kc_sample_out *dout = (kc_sample_out *)dalloc(sizeof(kc_sample_out));
        kc_sampler_state st = { dpar, gc, seen, work };
        us = time_med(s, 50, [&](int) { k_sample(logits, vocab, 1, dsl, du, dsl + 2, st, dout, s); });
        fprintf(f, "%-44s %10.2f\n", "sample greedy", us);
        us = time_med(s, 50, [&](int) { k_sample(logits, vocab, 1, dsl + 1, du, dsl + 2, st, dout, s); });
        fprintf(f, "%-44s %10.2f\n", "sample T=0.8 top_p=0.9", us);
        cudaFree(resid); cudaFree(w); cudaFree(dp); cudaFree(kc); cudaFree(vc); cudaFree(dpar);
        cudaFree(gc); cudaFree(seen); cudaFree(work); cudaFree(logits); cudaFree(dsl); cudaFree(du); cudaFree(dout);
    }
    cudaFree(x); cudaFree(xb); cudaFree(y);
    kc_gemm_ctx_free(g);
    MB_CHECK(cudaStreamSynchronize(s));
    cudaStreamDestroy(s);
    return PG_OK;
}
