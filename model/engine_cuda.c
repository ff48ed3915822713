/*
 * model/engine_cuda.c — the CUDA backend of the engine (engine_internal.h).
 *
 * Memory (all cudaMalloc'd once in init, never in a step):
 *   weights      one allocation; per layer wqkv [(nh+2nkv)*hd][dim] (q, k, v
 *                rows concatenated), wo, w13 [2*hidden][dim] (gate rows then
 *                up rows), w2; norms as f32. Each matrix is bf16 or one of
 *                our quantized formats (QI8/QI4, kernels_cuda.h), chosen by
 *                opts.quant (mat_fmt): NONE keeps float weights as bf16 and
 *                converts GGUF Q8_0/Q4_0/Q4_1 exactly to QI8/QI4 group 32;
 *                BF16 makes all bf16; INT8/INT4 quantize on the device
 *                (k_quantize, bit-identical to quant_matrix) from what was
 *                uploaded. The embedding table keeps its stored format (one
 *                row gathered per token); the LM head follows opts.quant
 *                unless quant_lm_head = 0 (then as NONE), and shares the
 *                table when tied and of the same format.
 *   KV cache     [layer][slot][kv_head][max_seq][head_dim], K and V: bf16
 *                (--kv-cache bf16, the default) or int8 (--kv-cache int8)
 *                with one f32 scale per (layer, slot, kv_head, position) for
 *                K and V, quantized when written (k_rope_kv_write_int8) and
 *                dequantized inside the attention kernels. f32 is refused.
 *   activations  for CU_CHUNK tokens (prefill chunk) >= max_slots rows (decode).
 *   step I/O     device arrays of token ids, positions, slots, uniforms and
 *                sample flags, filled from pinned host arrays by copies that
 *                are part of the decode graph; sampled ids come back the same way.
 * Decode (every row has one token): the whole step — input copies,
 * embedding, all layers, final norm, LM head, sampling, output copy — is
 * captured once per batch size into a CUDA graph and replayed; with
 * use_graphs=0 the same launches run eagerly (bit-identical results).
 * Kernels are chained with programmatic dependent launch on Hopper (see
 * kernels/cuda/kc_util.cuh; PEREGRINE_NO_PDL=1 turns it off): each starts
 * while its predecessor drains, the matrix-vector kernels with their first
 * weight loads already in flight.
 * Quantized matrices are dequantized in registers by the decode kernels
 * (gemv_quant.cu).
 * Prefill runs eagerly, one row at a time, in chunks of CU_CHUNK tokens;
 * chunks of >= CU_GEMM_MIN tokens use the tensor cores (cuBLASLt; quantized
 * matrices are first dequantized to bf16 tile by tile into qscratch), the
 * rest the matrix-vector kernels (8 tokens per weight pass).
 * Sampling runs on the device inside forward() (the graph ends with it);
 * sample() waits for the step and hands the ids to the caller.
 * Thread safety: one engine thread drives it (engine.h).
 */
#include "engine_internal.h"

#if defined(PG_CUDA) && defined(PG_HAVE_ENGINE_CUDA)
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>
#include "../kernels/kernels.h"
#include "../kernels/cuda/kernels_cuda.h"
#include "quant.h"

#define CU_CHUNK     512         /* prefill tokens per forward chunk */
#define CU_GEMM_MIN  16          /* prefill chunks this long use cuBLASLt (bf16 weights) */
#define CU_KEEP_ROWS 8           /* logits rows computed at once for keep_all_logits */
#define CU_PF_DEC    16          /* prefill chunks this short after a long context use the decode attention */
#define CU_STAGE     (64u << 20) /* bytes of each of the two pinned staging buffers */
#define CU_QSCRATCH  (32u << 20) /* bf16 elements of dequantized weight tiles for prefill (64 MiB: row tiles of
                                    several thousand rows, enough GEMM tiles to fill the GPU) */

typedef struct {
    float    *attn_norm, *ffn_norm;   /* [dim] */
    kc_matrix wqkv, wo, w13, w2;
} cu_layer;

typedef struct {
    int dim, hidden, nl, nh, nkv, hd, vocab, q_rows, kv_rows, qkv_rows;
    int max_slots, max_seq, ch;
    float eps;
    kc_attn_shape sh;
    weight_quant quant;           /* engine_opts.quant, group_size, quant_lm_head */
    int group, quant_lm_head;
    int any_q;                    /* some matrix is QI8/QI4: prefill dequantizes tiles */
    int qi8_tiles, qi4_tiles;     /* layer matrices in QI8 with per-row scales / in QI4 are stored in the
                                     decode kernel's tile order (kernels_cuda.h); PEREGRINE_NO_QI8_TILES=1 /
                                     PEREGRINE_NO_QI4_TILES=1 keep them row-major (start-up configuration,
                                     for comparisons) */
    kc_bf16 *qscratch;            /* CU_QSCRATCH bf16 elements for those tiles */
    size_t    dev_used0, dev_peak;  /* device bytes in use before init / at its peak (load staging) */

    cudaStream_t st;
    kc_gemm_ctx *gemm;
    void     *wbuf;               /* all weights */
    size_t    wbytes;
    cu_layer *L;
    kc_matrix emb, lm_head;       /* lm_head == emb when tied */
    float    *out_norm, *inv_freq;

    void     *kvbuf;              /* the whole KV cache, one allocation */
    int       kv8;                /* 1: int8 elements + scales; 0: bf16 */
    kc_bf16  *kc, *vc;            /* bf16: [layer][slot][kv_head][max_seq][hd] */
    int8_t   *kc8, *vc8;          /* int8: same layout */
    float    *ks, *vs;            /* int8 scales: [layer][slot][kv_head][max_seq] */
    size_t    kv_layer;           /* elements per layer */
    size_t    kvs_layer;          /* scales per layer (int8) */

    void     *abuf;               /* activations, one allocation */
    float    *x, *xn, *y, *qkv, *att, *h, *gu, *part, *logits, *swork;
    int       fuse_norm;          /* decode products carry the RMSNorms (kc_gemv_epi): by default when a layer
                                     matrix is quantized (any_q), where it measured +6.6% (int8) and +6.8% (int4
                                     g32) on an H200, not for bf16 (-0.4% 7B, -1.3% 8B; bench/results/h200.md);
                                     PEREGRINE_FUSED_NORM=0/1 overrides (start-up configuration) */
    unsigned long long *ss_acc;   /* [ss_cols][2 nl][KC_SS_SLOTS]: sums of x^2 per column and norm site
                                     (only with fuse_norm) */
    int       ss_cols;            /* columns the gemv path takes: decode rows, short prefill chunks */
    kc_bf16  *xb;
    int32_t  *d_tok, *d_pos, *d_slot, *d_do; float *d_u;   /* [ch] step inputs */
    kc_sample_out *d_out;         /* [max_slots] */
    kc_sampler_params *d_sp;      /* [max_slots] */
    int32_t  *gen_count;          /* [max_slots][vocab] */
    uint8_t  *seen;               /* [max_slots][vocab] */

    void     *pin;                /* pinned host block */
    int32_t  *h_tok, *h_pos, *h_slot, *h_do; float *h_u;
    kc_sample_out *h_out;
    kc_sampler_params *h_sp;

    cudaGraphExec_t *graphs;      /* [max_slots + 1], captured on first use */
    int       use_graphs;
    float    *all_logits;         /* host [n_all][vocab] for keep_all_logits */
    size_t    all_cap;
} cu_state;

int engine_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { (void)cudaGetLastError(); return 0; }
    return n;
}

/* ---------------------------------------------------------------- layout */
/* A bump allocator run twice: first with base == NULL to size, then to carve. */
typedef struct { char *base; size_t off; } carver;
static void *carve(carver *c, size_t bytes)
{
    c->off = (c->off + 255) & ~(size_t)255;
    void *p = c->base ? c->base + c->off : NULL;
    c->off += bytes;
    return p;
}

/* Device format of a matrix stored as tensor t, `cols` wide (engine.h
 * weight_quant): NONE keeps floats as bf16, turns GGUF blocks into QI8/QI4
 * group 32 exactly and keeps QI8/QI4 tensors (a `peregrine quantize`
 * checkpoint) as they are; BF16 makes everything bf16; INT8 is QI8 per output
 * channel, INT4 QI4 with the group quant_group_for gives this width (as the
 * CPU engine, so both devices hold the same model). plain = 1 forces NONE
 * (the embedding table, and the LM head under quant_lm_head = 0). */
typedef struct { pg_dtype t; int group; } cu_fmt;
static int is_gguf(pg_dtype t) { return t == PG_Q8_0 || t == PG_Q4_0 || t == PG_Q4_1; }
static int is_qi(pg_dtype t) { return t == PG_QI8 || t == PG_QI4; }
static cu_fmt mat_fmt(const cu_state *s, const tensor *t, int cols, int plain)
{
    switch (plain ? WQUANT_NONE : s->quant) {
    case WQUANT_BF16: return (cu_fmt){ PG_BF16, 0 };
    case WQUANT_INT8: return (cu_fmt){ PG_QI8, cols };
    case WQUANT_INT4: return (cu_fmt){ PG_QI4, quant_group_for(PG_QI4, s->group, cols) };
    default:
        if (t->dtype == PG_Q8_0) return (cu_fmt){ PG_QI8, 32 };
        if (t->dtype == PG_Q4_0 || t->dtype == PG_Q4_1) return (cu_fmt){ PG_QI4, 32 };
        if (is_qi(t->dtype)) return (cu_fmt){ t->dtype, t->group };
        return (cu_fmt){ PG_BF16, 0 };
    }
}
/* The LM head's source tensor (the embedding table when tied) and format. */
static const tensor *lm_src(const model *m) { return m->cfg.tie_embeddings ? &m->w.tok_embd : &m->w.lm_head; }
static cu_fmt lm_fmt(const cu_state *s, const model *m)
{
    return mat_fmt(s, lm_src(m), s->dim, !s->quant_lm_head);
}
/* 1 when the tied LM head can share the embedding table's device copy. */
static int lm_shares_emb(const cu_state *s, const model *m)
{
    cu_fmt a = mat_fmt(s, &m->w.tok_embd, s->dim, 1), b = lm_fmt(s, m);
    return m->cfg.tie_embeddings && a.t == b.t && a.group == b.group;
}

static void carve_matrix(carver *c, kc_matrix *m, cu_fmt f, int rows, int cols)
{
    m->dtype = f.t; m->rows = rows; m->cols = cols; m->group = f.group; m->tiles = KC_TILES_NONE;
    m->q = carve(c, kc_qm_q_bytes(f.t, rows, cols, f.group));
    size_t sb = kc_qm_s_bytes(f.t, rows, cols, f.group);
    m->s = sb ? carve(c, sb) : NULL;
}

/* m in the decode kernel's tile order where its format, shape and the
 * start-up switches allow (kc_q_tileable) */
static void tile_matrix(const cu_state *s, kc_matrix *m, int tiles)
{
    const int on = m->dtype == PG_QI8 ? s->qi8_tiles : m->dtype == PG_QI4 ? s->qi4_tiles : 0;
    if (on && kc_q_tileable(m, tiles)) m->tiles = tiles;
}

static void carve_weights(cu_state *s, const model *m, carver *c)
{
    const model_weights *w = &m->w;
    for (int l = 0; l < s->nl; l++) {
        const layer_weights *lw = &w->layers[l];
        cu_layer *L = &s->L[l];
        L->attn_norm = carve(c, (size_t)s->dim * 4);
        L->ffn_norm = carve(c, (size_t)s->dim * 4);
        carve_matrix(c, &L->wqkv, mat_fmt(s, &lw->wq, s->dim, 0), s->qkv_rows, s->dim);
        carve_matrix(c, &L->wo, mat_fmt(s, &lw->wo, s->q_rows, 0), s->dim, s->q_rows);
        carve_matrix(c, &L->w13, mat_fmt(s, &lw->w_gate, s->dim, 0), 2 * s->hidden, s->dim);
        carve_matrix(c, &L->w2, mat_fmt(s, &lw->w_down, s->hidden, 0), s->dim, s->hidden);
        /* the decode products; SwiGLU's gate and up rows tile in pairs */
        tile_matrix(s, &L->wqkv, KC_TILES_ROWS);
        tile_matrix(s, &L->wo, KC_TILES_ROWS);
        tile_matrix(s, &L->w13, KC_TILES_PAIRS);
        tile_matrix(s, &L->w2, KC_TILES_ROWS);
    }
    carve_matrix(c, &s->emb, mat_fmt(s, &w->tok_embd, s->dim, 1), s->vocab, s->dim);
    if (lm_shares_emb(s, m)) s->lm_head = s->emb;
    else carve_matrix(c, &s->lm_head, lm_fmt(s, m), s->vocab, s->dim);
    s->out_norm = carve(c, (size_t)s->dim * 4);
    s->inv_freq = carve(c, (size_t)s->hd / 2 * 4);
}

static void carve_acts(cu_state *s, carver *c)
{
    size_t ch = (size_t)s->ch, ms = (size_t)s->max_slots, V = (size_t)s->vocab;
    size_t wide = (size_t)s->dim;
    if ((size_t)s->q_rows > wide) wide = (size_t)s->q_rows;
    if ((size_t)s->hidden > wide) wide = (size_t)s->hidden;
    s->x = carve(c, ch * s->dim * 4);
    s->xn = carve(c, ch * s->dim * 4);
    s->y = carve(c, ch * s->dim * 4);
    s->qkv = carve(c, ch * s->qkv_rows * 4);
    s->att = carve(c, ch * s->q_rows * 4);
    s->h = carve(c, ch * s->hidden * 4);
    s->gu = carve(c, ch * 2 * s->hidden * 4);
    s->qscratch = s->any_q ? carve(c, (size_t)CU_QSCRATCH * 2) : NULL;
    s->xb = carve(c, ch * wide * 2);
    s->ss_cols = s->max_slots > CU_GEMM_MIN ? s->max_slots : CU_GEMM_MIN;
    s->ss_acc = s->fuse_norm ? carve(c, (size_t)s->ss_cols * 2 * s->nl * KC_SS_SLOTS * 8) : NULL;
    s->part = carve(c, k_attn_decode_part_floats(s->max_slots > CU_PF_DEC ? s->max_slots : CU_PF_DEC, s->sh) * 4);
    s->logits = carve(c, (ms + CU_KEEP_ROWS) * V * 4);
    s->swork = carve(c, ms * V * 4);
    s->d_tok = carve(c, ch * 4);
    s->d_pos = carve(c, ch * 4);
    s->d_slot = carve(c, ch * 4);
    s->d_do = carve(c, ch * 4);
    s->d_u = carve(c, ch * 4);
    s->d_out = carve(c, ms * sizeof(kc_sample_out));
    s->d_sp = carve(c, ms * sizeof(kc_sampler_params));
    s->gen_count = carve(c, ms * V * 4);
    s->seen = carve(c, ms * V);
}

static void carve_pinned(cu_state *s, carver *c)
{
    size_t ch = (size_t)s->ch, ms = (size_t)s->max_slots;
    s->h_tok = carve(c, ch * 4);
    s->h_pos = carve(c, ch * 4);
    s->h_slot = carve(c, ch * 4);
    s->h_do = carve(c, ch * 4);
    s->h_u = carve(c, ch * 4);
    s->h_out = carve(c, ms * sizeof(kc_sample_out));
    s->h_sp = carve(c, ms * sizeof(kc_sampler_params));
}

/* ---------------------------------------------------------------- upload */
typedef struct {
    cudaStream_t st;
    void *pin[2];
    cudaEvent_t ev[2];
    int turn;
    void *dstage;        /* device staging for tensors that need conversion */
} uploader;

/* Host bytes -> device through the two pinned buffers, double-buffered: the
 * memcpy into one buffer overlaps the DMA out of the other. */
static void up_copy(uploader *u, void *dst, const void *src, size_t n)
{
    for (size_t off = 0; off < n; off += CU_STAGE) {
        size_t k = n - off < CU_STAGE ? n - off : CU_STAGE;
        int b = u->turn; u->turn ^= 1;
        KC_CHECK(cudaEventSynchronize(u->ev[b]));
        memcpy(u->pin[b], (const char *)src + off, k);
        KC_CHECK(cudaMemcpyAsync((char *)dst + off, u->pin[b], k, cudaMemcpyHostToDevice, u->st));
        KC_CHECK(cudaEventRecord(u->ev[b], u->st));
    }
}

static uint64_t cu_seed(uint64_t seed, int i) { return seed ^ ((uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull); }

/* One source tensor into rows [row0, row0 + t->rows) of m, converted to m's
 * format on the device. exact: GGUF blocks go to QI8/QI4 g32 bit for bit
 * (k_quant_from_gguf); otherwise QI8/QI4 targets are quantized from the
 * exactly dequantized source (k_quantize = quant_matrix). */
static void up_matrix(uploader *u, const tensor *t, kc_matrix *m, int64_t row0, uint64_t seed, int exact)
{
    int64_t n = t->rows * t->cols;
    kc_bf16 *dst16 = m->dtype == PG_BF16 ? (kc_bf16 *)m->q + row0 * m->cols : NULL;
    if (!t->data) {   /* random weights drawn on the device (bf16), then quantized */
        k_fill_normal_bf16(dst16 ? dst16 : (kc_bf16 *)u->dstage, n, seed, 0.f, 0.02f, u->st);
        if (!dst16) k_quantize(u->dstage, PG_BF16, t->rows, t->cols, m, row0, u->st);
        return;
    }
    if (dst16 && t->dtype == PG_BF16) { up_copy(u, dst16, t->data, t->nbytes); return; }
    if (is_qi(t->dtype)) {   /* a quantized checkpoint: same format on the device (mat_fmt) */
        PG_ASSERT(m->dtype == t->dtype && m->group == t->group && t->cols == m->cols);
        size_t ng = (size_t)t->rows * (size_t)(t->cols / t->group), pb = t->dtype == PG_QI4 ? 4 : 2;
        if (m->tiles) {   /* row-major in the file: through the staging buffer into tile order */
            up_copy(u, u->dstage, t->data, t->nbytes);
            k_q_place((const uint8_t *)u->dstage, t->rows, m, row0, u->st);
        } else {
            up_copy(u, (uint8_t *)m->q + (size_t)row0 * pg_dtype_row_bytes(t->dtype, t->cols), t->data, t->nbytes);
        }
        void *params = pg_xmalloc(ng * pb);
        kc_pack_qparams(t->dtype, t->qscale, t->qmin, ng, params);
        if (m->tiles && m->dtype == PG_QI4) {   /* tiled group words (kc_qi4_s_at); the stream orders this
                                                   copy into the staging buffer after k_q_place's reads */
            up_copy(u, u->dstage, params, ng * pb);
            k_qi4_s_place((const uint32_t *)u->dstage, t->rows, m, row0, u->st);
        } else {
            up_copy(u, (uint8_t *)m->s + (size_t)row0 * (size_t)(t->cols / t->group) * pb, params, ng * pb);
        }
        free(params);   /* up_copy has copied it into a pinned buffer already */
        return;
    }
    up_copy(u, u->dstage, t->data, t->nbytes);
    if (dst16 && is_gguf(t->dtype)) k_blocks_to_bf16(u->dstage, t->dtype, n, dst16, u->st);
    else if (dst16) k_to_bf16(u->dstage, t->dtype, n, dst16, u->st);
    else if (exact && is_gguf(t->dtype)) k_quant_from_gguf(u->dstage, t->dtype, t->rows, t->cols, m, row0, u->st);
    else k_quantize(u->dstage, t->dtype, t->rows, t->cols, m, row0, u->st);
}

static void up_vector(uploader *u, const tensor *t, float *dst, uint64_t seed)
{
    int64_t n = t->rows * t->cols;
    if (!t->data) k_fill_normal_f32(dst, n, seed, 1.f, 0.02f, u->st);
    else if (t->dtype == PG_F32) up_copy(u, dst, t->data, t->nbytes);
    else {
        up_copy(u, u->dstage, t->data, t->nbytes);
        k_to_f32(u->dstage, t->dtype, n, dst, u->st);
    }
}

/* Device staging bytes a tensor needs: matrices unless bf16 stays bf16 (those
 * are copied straight to their place; random weights for a quantized matrix
 * are drawn there as bf16), norm vectors unless already f32. */
static size_t stage_need_mq(const tensor *t, int quantized)
{
    if (!t->data) return quantized ? (size_t)(t->rows * t->cols) * 2 : 0;
    return t->dtype != PG_BF16 || quantized ? t->nbytes : 0;
}
static size_t stage_need_v(const tensor *t) { return t->data && t->dtype != PG_F32 ? t->nbytes : 0; }

static int upload_weights(cu_state *s, const model *m, pg_err *err)
{
    const model_weights *w = &m->w;
    size_t need = 0;
#define NEED(f, t) do { size_t n_ = f(&(t)); if (n_ > need) need = n_; } while (0)
#define NEEDM(t, mat) do { size_t n_ = stage_need_mq(&(t), (mat).dtype != PG_BF16); if (n_ > need) need = n_; } while (0)
    NEEDM(w->tok_embd, s->emb); NEEDM(*lm_src(m), s->lm_head); NEED(stage_need_v, w->out_norm);
    for (int l = 0; l < s->nl; l++) {
        const layer_weights *lw = &w->layers[l];
        const cu_layer *L = &s->L[l];
        NEED(stage_need_v, lw->attn_norm); NEED(stage_need_v, lw->ffn_norm);
        NEEDM(lw->wq, L->wqkv); NEEDM(lw->wk, L->wqkv); NEEDM(lw->wv, L->wqkv);
        NEEDM(lw->wo, L->wo); NEEDM(lw->w_gate, L->w13); NEEDM(lw->w_up, L->w13);
        NEEDM(lw->w_down, L->w2);
    }
#undef NEED
#undef NEEDM
    uploader u = { .st = s->st };
    if (need && cudaMalloc(&u.dstage, need) != cudaSuccess)
        return pg_errf(err, PG_ENOMEM, "cuda: cannot allocate %zu MiB to stage weight conversion", need >> 20);
    for (int b = 0; b < 2; b++) {
        KC_CHECK(cudaMallocHost(&u.pin[b], CU_STAGE));
        KC_CHECK(cudaEventCreateWithFlags(&u.ev[b], cudaEventDisableTiming));
        KC_CHECK(cudaEventRecord(u.ev[b], s->st));
    }
    const uint64_t seed = m->random_seed;
    const int ex = s->quant == WQUANT_NONE;   /* GGUF blocks convert exactly */
    int ti = 0;   /* tensor index for random streams, model.c order */
    up_matrix(&u, &w->tok_embd, &s->emb, 0, cu_seed(seed, ti), 1);
    /* a tied LM head in another format than the table: its own copy, same source */
    if (m->cfg.tie_embeddings && !lm_shares_emb(s, m))
        up_matrix(&u, &w->tok_embd, &s->lm_head, 0, cu_seed(seed, ti), ex || !s->quant_lm_head);
    ti++;
    up_vector(&u, &w->out_norm, s->out_norm, cu_seed(seed, ti++));
    if (!m->cfg.tie_embeddings) up_matrix(&u, &w->lm_head, &s->lm_head, 0, cu_seed(seed, ti), ex || !s->quant_lm_head);
    ti++;
    for (int l = 0; l < s->nl; l++) {
        const layer_weights *lw = &w->layers[l];
        cu_layer *L = &s->L[l];
        up_vector(&u, &lw->attn_norm, L->attn_norm, cu_seed(seed, ti++));
        up_matrix(&u, &lw->wq, &L->wqkv, 0, cu_seed(seed, ti++), ex);
        up_matrix(&u, &lw->wk, &L->wqkv, s->q_rows, cu_seed(seed, ti++), ex);
        up_matrix(&u, &lw->wv, &L->wqkv, s->q_rows + s->kv_rows, cu_seed(seed, ti++), ex);
        up_matrix(&u, &lw->wo, &L->wo, 0, cu_seed(seed, ti++), ex);
        up_vector(&u, &lw->ffn_norm, L->ffn_norm, cu_seed(seed, ti++));
        up_matrix(&u, &lw->w_gate, &L->w13, 0, cu_seed(seed, ti++), ex);
        up_matrix(&u, &lw->w_up, &L->w13, s->hidden, cu_seed(seed, ti++), ex);
        up_matrix(&u, &lw->w_down, &L->w2, 0, cu_seed(seed, ti++), ex);
    }
    KC_CHECK(cudaStreamSynchronize(s->st));
    size_t fr = 0, tot = 0;
    KC_CHECK(cudaMemGetInfo(&fr, &tot));
    s->dev_peak = tot - fr;   /* everything is allocated and the staging buffer still held */
    for (int b = 0; b < 2; b++) { cudaFreeHost(u.pin[b]); cudaEventDestroy(u.ev[b]); }
    cudaFree(u.dstage);
    return PG_OK;
}

/* ---------------------------------------------------------------- init */
/* q/k/v (and gate/up) share one device matrix, so they need one format. */
static int same_dev(const tensor *a, const tensor *b)
{
    cu_state none = { 0 };
    cu_fmt fa = mat_fmt(&none, a, 32, 1), fb = mat_fmt(&none, b, 32, 1);
    return fa.t == fb.t && fa.group == fb.group;
}

static void cu_destroy(engine *e);

/* a - b in GiB, or 0 when the device's use fell below the baseline b (memory
 * another engine of the same process released meanwhile): these are
 * process-wide readings, and a size_t difference must not wrap. */
static double gib_above(size_t a, size_t b)
{
    return a > b ? (double)(a - b) / 1073741824.0 : 0.0;
}

static int cu_init(engine *e, pg_err *err)
{
    const model *m = e->m;
    const model_config *c = &m->cfg;
    if (e->opts.kv != KV_BF16 && e->opts.kv != KV_INT8)
        return pg_errf(err, PG_EUNSUPPORTED, "cuda: KV cache dtype %s is not supported (bf16 or int8)",
                       e->opts.kv == KV_F32 ? "f32" : "?");
    if (e->opts.quant == WQUANT_INT4) {
        int g = e->opts.group_size, q_cols = c->n_heads * c->head_dim;
        if ((g != 32 && g != 64 && g != 128) || !quant_group_for(PG_QI4, g, c->dim) ||
            !quant_group_for(PG_QI4, g, c->hidden_dim) || !quant_group_for(PG_QI4, g, q_cols))
            return pg_errf(err, PG_EINVAL, "cuda: no int4 group of at most %d divides dim %d, hidden_dim %d and "
                           "%d query columns (32, 64 or 128)", g, c->dim, c->hidden_dim, q_cols);
    }
    /* A checkpoint written by `peregrine quantize` keeps its format: the
     * device quantizer reads float and GGUF sources only. */
    if (e->opts.quant != WQUANT_NONE) {
        for (int i = 0; i < model_n_tensors((model *)m); i++) {
            const tensor *t = model_tensor((model *)m, i);
            if (t->name && is_qi(t->dtype))
                return pg_errf(err, PG_EUNSUPPORTED, "cuda: %s is already quantized (%s, a `peregrine quantize` "
                               "checkpoint); load it with --quant none, which keeps its format",
                               t->name, pg_dtype_name(t->dtype));
        }
    }
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *lw = &m->w.layers[l];
        if (!same_dev(&lw->wq, &lw->wk) || !same_dev(&lw->wq, &lw->wv))
            return pg_errf(err, PG_EUNSUPPORTED, "cuda: layer %d: q/k/v weights have different types (%s, %s, %s)",
                           l, pg_dtype_name(lw->wq.dtype), pg_dtype_name(lw->wk.dtype), pg_dtype_name(lw->wv.dtype));
        if (!same_dev(&lw->w_gate, &lw->w_up))
            return pg_errf(err, PG_EUNSUPPORTED, "cuda: layer %d: gate/up weights have different types (%s, %s)",
                           l, pg_dtype_name(lw->w_gate.dtype), pg_dtype_name(lw->w_up.dtype));
    }
    int G = c->n_heads / c->n_kv_heads;
    if (G > 8 || G * c->head_dim > 1024 || c->head_dim < 16 || c->head_dim > 256 ||
        (c->head_dim & (c->head_dim - 1)))
        return pg_errf(err, PG_EUNSUPPORTED, "cuda: attention shape (head_dim %d, %d query heads per kv head) not supported",
                       c->head_dim, G);
    if (c->dim % 32 || c->hidden_dim % 32)
        return pg_errf(err, PG_EUNSUPPORTED, "cuda: dim %d and hidden_dim %d must be multiples of 32",
                       c->dim, c->hidden_dim);

    cu_state *s = pg_xcalloc(1, sizeof *s);
    e->be_state = s;
    KC_CHECK(cudaSetDevice(e->opts.gpu_id));
    KC_CHECK(cudaStreamCreateWithFlags(&s->st, cudaStreamNonBlocking));
    s->dim = c->dim; s->hidden = c->hidden_dim; s->nl = c->n_layers; s->nh = c->n_heads;
    s->nkv = c->n_kv_heads; s->hd = c->head_dim; s->vocab = c->vocab_size; s->eps = c->norm_eps;
    s->q_rows = s->nh * s->hd; s->kv_rows = s->nkv * s->hd; s->qkv_rows = s->q_rows + 2 * s->kv_rows;
    {
        size_t fr0 = 0, tot0 = 0;
        KC_CHECK(cudaMemGetInfo(&fr0, &tot0));
        s->dev_used0 = tot0 - fr0;
    }
    s->max_slots = e->opts.max_slots; s->max_seq = e->opts.max_seq_len;
    s->ch = s->max_seq < CU_CHUNK ? s->max_seq : CU_CHUNK;
    if (s->ch < s->max_slots) s->ch = s->max_slots;
    s->sh = (kc_attn_shape){ s->nh, s->nkv, s->hd, s->max_seq, c->rope_interleaved };
    s->use_graphs = e->opts.use_graphs;
    s->L = pg_xcalloc((size_t)s->nl, sizeof *s->L);
    s->quant = e->opts.quant; s->group = e->opts.group_size > 0 ? e->opts.group_size : 32;
    s->quant_lm_head = e->opts.quant_lm_head;
    s->qi8_tiles = !pg_env_flag("PEREGRINE_NO_QI8_TILES", 0);
    s->qi4_tiles = !pg_env_flag("PEREGRINE_NO_QI4_TILES", 0);
    s->any_q = 0;
    for (int l = 0; l < s->nl; l++) {
        const layer_weights *lw = &m->w.layers[l];
        const tensor *ts[4] = { &lw->wq, &lw->wo, &lw->w_gate, &lw->w_down };
        for (int k = 0; k < 4; k++) if (mat_fmt(s, ts[k], s->dim, 0).t != PG_BF16) s->any_q = 1;
    }
    s->fuse_norm = pg_env_flag("PEREGRINE_FUSED_NORM", s->any_q);

    carver cw = { 0 }, ca = { 0 };
    carve_weights(s, m, &cw);
    carve_acts(s, &ca);
    s->wbytes = cw.off;
    s->kv8 = e->opts.kv == KV_INT8;
    s->kv_layer = (size_t)s->max_slots * s->nkv * s->max_seq * s->hd;
    s->kvs_layer = (size_t)s->max_slots * s->nkv * s->max_seq;
    /* K and V: bf16 elements, or int8 elements plus one f32 scale per position */
    size_t kv_bytes = s->kv8 ? 2 * (size_t)s->nl * (s->kv_layer + s->kvs_layer * 4)
                             : 2 * (size_t)s->nl * s->kv_layer * 2;
    size_t fr = 0, tot = 0;
    KC_CHECK(cudaMemGetInfo(&fr, &tot));
    size_t need = cw.off + ca.off + kv_bytes + (64u << 20);   /* + cuBLASLt workspace, staging slack */
    if (need > fr) {
        cu_destroy(e);
        return pg_errf(err, PG_ENOMEM,
                       "cuda: needs %.2f GiB (weights %.2f, KV cache %.2f for %d slots x %d positions, "
                       "activations %.2f) but the GPU has %.2f GiB free of %.2f",
                       need / 1073741824.0, cw.off / 1073741824.0, kv_bytes / 1073741824.0,
                       s->max_slots, s->max_seq, ca.off / 1073741824.0, fr / 1073741824.0,
                       tot / 1073741824.0);
    }
    if (cudaMalloc(&s->wbuf, cw.off) != cudaSuccess || cudaMalloc(&s->abuf, ca.off) != cudaSuccess ||
        cudaMalloc(&s->kvbuf, kv_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        cu_destroy(e);
        return pg_errf(err, PG_ENOMEM, "cuda: cudaMalloc failed for %.2f GiB (weights + activations + KV)",
                       need / 1073741824.0);
    }
    if (s->kv8) {
        s->kc8 = s->kvbuf;
        s->vc8 = s->kc8 + (size_t)s->nl * s->kv_layer;
        s->ks = (float *)(s->vc8 + (size_t)s->nl * s->kv_layer);   /* kv_layer % 4 == 0: hd is even, >= 16 */
        s->vs = s->ks + (size_t)s->nl * s->kvs_layer;
    } else {
        s->kc = s->kvbuf;
        s->vc = s->kc + (size_t)s->nl * s->kv_layer;
    }
    cw = (carver){ s->wbuf, 0 };
    ca = (carver){ s->abuf, 0 };
    carve_weights(s, m, &cw);
    carve_acts(s, &ca);
    carver cp = { 0 };
    carve_pinned(s, &cp);
    KC_CHECK(cudaMallocHost(&s->pin, cp.off));
    cp = (carver){ s->pin, 0 };
    carve_pinned(s, &cp);

    double t0 = pg_now();
    int rc = upload_weights(s, m, err);
    if (rc) { cu_destroy(e); return rc; }
    double dt = pg_now() - t0;
    LOG_INFO("cuda: %.2f GB of weights on the device in %.2f s (%.1f GB/s)", s->wbytes / 1e9, dt,
             s->wbytes / 1e9 / (dt > 0 ? dt : 1e-9));

    float *inv = pg_xmalloc((size_t)s->hd / 2 * sizeof(float));
    ref_rope_llama3 l3 = { c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                           c->rope_orig_max_pos };
    ref_rope_freqs(inv, s->hd, c->rope_theta, c->rope_llama3 ? &l3 : NULL);
    KC_CHECK(cudaMemcpy(s->inv_freq, inv, (size_t)s->hd / 2 * sizeof(float), cudaMemcpyHostToDevice));
    free(inv);

    KC_CHECK(cudaMemsetAsync(s->kvbuf, 0, kv_bytes, s->st));
    KC_CHECK(cudaMemsetAsync(s->abuf, 0, ca.off, s->st));   /* attention counters start at 0 */
    KC_CHECK(cudaMemsetAsync(s->gen_count, 0, (size_t)s->max_slots * s->vocab * 4, s->st));
    KC_CHECK(cudaMemsetAsync(s->seen, 0, (size_t)s->max_slots * s->vocab, s->st));
    rc = kc_gemm_ctx_init(&s->gemm, err);
    if (rc) { cu_destroy(e); return rc; }
    s->graphs = pg_xcalloc((size_t)s->max_slots + 1, sizeof *s->graphs);
    for (int i = 0; i < s->max_slots; i++) {
        if (e->slots[i].vocab == 0) continue;
        if (e->be->slot_reset) { rc = e->be->slot_reset(e, i, err); if (rc) { cu_destroy(e); return rc; } }
    }
    KC_CHECK(cudaStreamSynchronize(s->st));

    struct cudaDeviceProp prop;
    KC_CHECK(cudaGetDeviceProperties(&prop, e->opts.gpu_id));
    snprintf(e->device_name, sizeof e->device_name, "%.120s", prop.name);
    e->weight_bytes = s->wbytes;
    {
        size_t fr1 = 0, tot1 = 0;
        KC_CHECK(cudaMemGetInfo(&fr1, &tot1));
        size_t used = tot1 - fr1, peak = s->dev_peak > used ? s->dev_peak : used;
        LOG_INFO("cuda: device memory of the engine: %.2f GiB after init, %.2f GiB peak during load "
                 "(weights %.2f GiB as %s, KV cache %.2f GiB)", gib_above(used, s->dev_used0),
                 gib_above(peak, s->dev_used0), s->wbytes / 1073741824.0, engine_quant_name(s->quant),
                 kv_bytes / 1073741824.0);
    }
    e->step_weight_bytes = s->wbytes - (lm_shares_emb(s, m) ? 0 :
        kc_qm_bytes(s->emb.dtype, s->emb.rows, s->emb.cols, s->emb.group));
    e->kv_bytes = kv_bytes;
    e->kv_bytes_per_token = (size_t)s->nl * 2 * s->nkv * (s->kv8 ? s->hd + 4 : s->hd * 2);
    return PG_OK;
}

static void cu_destroy(engine *e)
{
    cu_state *s = e->be_state;
    if (!s) return;
    if (s->graphs)
        for (int i = 0; i <= s->max_slots; i++) if (s->graphs[i]) cudaGraphExecDestroy(s->graphs[i]);
    free(s->graphs);
    kc_gemm_ctx_free(s->gemm);
    cudaFree(s->wbuf);
    cudaFree(s->abuf);
    cudaFree(s->kvbuf);
    if (s->pin) cudaFreeHost(s->pin);
    if (s->st) cudaStreamDestroy(s->st);
    free(s->L);
    free(s->all_logits);
    free(s);
    e->be_state = NULL;
}

/* ---------------------------------------------------------------- sampler state */
static int cu_slot_reset(engine *e, int slot, pg_err *err)
{
    cu_state *s = e->be_state;
    const sampler_params *p = &e->slots[slot].p;
    if (p->n_logit_bias > KC_MAX_BIAS)
        return pg_errf(err, PG_EINVAL, "logit_bias has %d entries; the CUDA sampler holds at most %d",
                       p->n_logit_bias, KC_MAX_BIAS);
    kc_sampler_params *h = &s->h_sp[slot];
    memset(h, 0, sizeof *h);
    h->temperature = p->temperature; h->top_p = p->top_p; h->min_p = p->min_p;
    h->rep_pen = p->repetition_penalty; h->pres_pen = p->presence_penalty;
    h->freq_pen = p->frequency_penalty; h->top_k = p->top_k; h->n_bias = p->n_logit_bias;
    h->logprobs = p->logprobs; h->top_logprobs = p->top_logprobs;
    for (int i = 0; i < p->n_logit_bias; i++) {
        h->bias_ids[i] = p->logit_bias_ids[i];
        h->bias_vals[i] = p->logit_bias_vals[i];
    }
    KC_CHECK(cudaMemcpyAsync(&s->d_sp[slot], h, sizeof *h, cudaMemcpyHostToDevice, s->st));
    KC_CHECK(cudaMemsetAsync(s->gen_count + (size_t)slot * s->vocab, 0, (size_t)s->vocab * 4, s->st));
    KC_CHECK(cudaMemsetAsync(s->seen + (size_t)slot * s->vocab, 0, (size_t)s->vocab, s->st));
    KC_CHECK(cudaStreamSynchronize(s->st));   /* h_sp is reused by the next reset */
    return PG_OK;
}

/* ---------------------------------------------------------------- forward */
/* Prefill GEMM for any weight format: bf16 straight to cuBLASLt, QI8/QI4
 * dequantized tile by tile into qscratch first (k_gemm_q). */
static void gemm_any(cu_state *s, const kc_matrix *w, const kc_bf16 *xb, int n, float *y)
{
    if (w->dtype == PG_BF16) k_gemm_bf16(s->gemm, w, xb, n, y, s->st);
    else k_gemm_q(s->gemm, w, xb, n, y, s->qscratch, CU_QSCRATCH, s->st);
}

static void mm(cu_state *s, const kc_matrix *w, int n, int gemm, const float *x, const kc_bf16 *xb, float *y)
{
    if (gemm) gemm_any(s, w, xb, n, y);
    else k_gemv(w, x, n, y, s->st);
}

/* RoPE + KV-cache write, then attention, of layer l (qkv -> att). Decode
 * does all three in one launch (k_rope_attn_decode: same bits as the
 * separate kernels); prefill writes the chunk's K/V first, then runs the
 * tensor-core prefill kernel, or for a short chunk after a long context the
 * decode kernel with one row per token (causal by each row's length, and
 * split along the keys, which the prefill kernel is not). */
static void cu_attention(cu_state *s, int l, int n, int decode, int pos0, int slot)
{
    cudaStream_t st = s->st;
    if (s->kv8) {
        int8_t *kc = s->kc8 + (size_t)l * s->kv_layer, *vc = s->vc8 + (size_t)l * s->kv_layer;
        float *ks = s->ks + (size_t)l * s->kvs_layer, *vs = s->vs + (size_t)l * s->kvs_layer;
        if (decode) {
            k_rope_attn_decode_int8(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, s->inv_freq, s->sh, kc, vc, ks, vs,
                                    s->part, s->att, s->q_rows, st);
            return;
        }
        k_rope_kv_write_int8(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, s->inv_freq, s->sh, kc, vc, ks, vs, st);
        if (n <= CU_PF_DEC && pos0 + n > 256)   /* a short chunk after a long context: split along the keys */
            k_attn_decode_int8(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, kc, vc, ks, vs, s->sh, s->part,
                               s->att, s->q_rows, st);
        else
            k_attn_prefill_int8(s->qkv, s->qkv_rows, n, pos0, slot, kc, vc, ks, vs, s->sh, s->att, s->q_rows, st);
        return;
    }
    kc_bf16 *kc = s->kc + (size_t)l * s->kv_layer, *vc = s->vc + (size_t)l * s->kv_layer;
    if (decode) {
        k_rope_attn_decode(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, s->inv_freq, s->sh, kc, vc, s->part,
                           s->att, s->q_rows, st);
        return;
    }
    k_rope_kv_write(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, s->inv_freq, s->sh, kc, vc, st);
    if (n <= CU_PF_DEC && pos0 + n > 256)   /* a short chunk after a long context: split along the keys */
        k_attn_decode(s->qkv, s->qkv_rows, n, s->d_pos, s->d_slot, kc, vc, s->sh, s->part, s->att, s->q_rows, st);
    else
        k_attn_prefill(s->qkv, s->qkv_rows, n, pos0, slot, kc, vc, s->sh, s->att, s->q_rows, st);
}

/* The gemv path of cu_layers with the RMSNorms carried by the products
 * (kc_gemv_epi): wo and w2 add their outputs to the residual stream x and
 * leave x * g of the next norm in xn with the sums of x^2; wqkv and w13 read
 * xn and scale by 1 / rms. The first norm and the final one stay kernels (the
 * embedding and the LM head's callers read xn normalised). Site 2l: the
 * input of layer l's attention, 2l + 1: of its MLP. */
static void cu_layers_fused(cu_state *s, int n, int decode, int pos0, int slot)
{
    cudaStream_t st = s->st;
    const int ld = 2 * s->nl * KC_SS_SLOTS;
    PG_ASSERT(n <= s->ss_cols);
    KC_CHECK(cudaMemsetAsync(s->ss_acc, 0, (size_t)n * ld * 8, st));
    for (int l = 0; l < s->nl; l++) {
        cu_layer *L = &s->L[l];
        unsigned long long *site_att = s->ss_acc + (size_t)(2 * l) * KC_SS_SLOTS;
        unsigned long long *site_ffn = site_att + KC_SS_SLOTS;
        if (l == 0) {
            k_add_rmsnorm(s->x, NULL, L->attn_norm, s->eps, n, s->dim, s->xn, NULL, st);
            k_gemv(&L->wqkv, s->xn, n, s->qkv, st);
        } else {
            const kc_gemv_epi c = { .acc_in = site_att, .eps = s->eps, .acc_ld = ld };
            k_gemv_epi(&L->wqkv, s->xn, n, s->qkv, 0, &c, st);
        }
        cu_attention(s, l, n, decode, pos0, slot);
        const kc_gemv_epi po = { .resid = s->x, .xg = s->xn, .g = L->ffn_norm, .acc_out = site_ffn, .acc_ld = ld };
        k_gemv_epi(&L->wo, s->att, n, NULL, 0, &po, st);
        const kc_gemv_epi ci = { .acc_in = site_ffn, .eps = s->eps, .acc_ld = ld };
        k_gemv_epi(&L->w13, s->xn, n, s->h, 1, &ci, st);
        if (l + 1 < s->nl) {
            const kc_gemv_epi p2 = { .resid = s->x, .xg = s->xn, .g = s->L[l + 1].attn_norm,
                                     .acc_out = site_att + 2 * KC_SS_SLOTS, .acc_ld = ld };
            k_gemv_epi(&L->w2, s->h, n, NULL, 0, &p2, st);
        } else {
            k_gemv(&L->w2, s->h, n, s->y, st);
        }
    }
    k_add_rmsnorm(s->x, s->y, s->out_norm, s->eps, n, s->dim, s->xn, NULL, st);
}

/* All layers and the final norm for n tokens already embedded in s->x.
 * decode: token i is row i of a batch (positions/slots from d_pos/d_slot);
 * else: n consecutive tokens of one sequence at pos0.. in slot. */
static void cu_layers(cu_state *s, int n, int decode, int pos0, int slot)
{
    const int gemm = !decode && n >= CU_GEMM_MIN;
    cudaStream_t st = s->st;
    if (!gemm && s->fuse_norm) { cu_layers_fused(s, n, decode, pos0, slot); return; }
    for (int l = 0; l < s->nl; l++) {
        cu_layer *L = &s->L[l];
        k_add_rmsnorm(s->x, l ? s->y : NULL, L->attn_norm, s->eps, n, s->dim, s->xn, gemm ? s->xb : NULL, st);
        mm(s, &L->wqkv, n, gemm, s->xn, s->xb, s->qkv);
        cu_attention(s, l, n, decode, pos0, slot);
        if (gemm) k_f32_to_bf16(s->att, s->xb, (int64_t)n * s->q_rows, st);
        mm(s, &L->wo, n, gemm, s->att, s->xb, s->y);
        k_add_rmsnorm(s->x, s->y, L->ffn_norm, s->eps, n, s->dim, s->xn, gemm ? s->xb : NULL, st);
        if (gemm) {
            gemm_any(s, &L->w13, s->xb, n, s->gu);
            k_swiglu(s->gu, n, s->hidden, NULL, s->xb, st);
            gemm_any(s, &L->w2, s->xb, n, s->y);
        } else {
            k_gemv_swiglu(&L->w13, s->xn, n, s->h, st);
            k_gemv(&L->w2, s->h, n, s->y, st);
        }
    }
    k_add_rmsnorm(s->x, s->y, s->out_norm, s->eps, n, s->dim, s->xn, NULL, st);
}

static kc_sampler_state cu_sstate(cu_state *s)
{
    return (kc_sampler_state){ s->d_sp, s->gen_count, s->seen, s->swork };
}

/* The decode step for B rows whose inputs are in h_tok/h_pos/h_slot/h_u/h_do. */
static void cu_decode_body(cu_state *s, int B)
{
    cudaStream_t st = s->st;
    KC_CHECK(cudaMemcpyAsync(s->d_tok, s->h_tok, (size_t)B * 4, cudaMemcpyHostToDevice, st));
    KC_CHECK(cudaMemcpyAsync(s->d_pos, s->h_pos, (size_t)B * 4, cudaMemcpyHostToDevice, st));
    KC_CHECK(cudaMemcpyAsync(s->d_slot, s->h_slot, (size_t)B * 4, cudaMemcpyHostToDevice, st));
    KC_CHECK(cudaMemcpyAsync(s->d_u, s->h_u, (size_t)B * 4, cudaMemcpyHostToDevice, st));
    KC_CHECK(cudaMemcpyAsync(s->d_do, s->h_do, (size_t)B * 4, cudaMemcpyHostToDevice, st));
    k_embed(&s->emb, s->d_tok, B, s->x, st);
    cu_layers(s, B, 1, 0, 0);
    k_gemv(&s->lm_head, s->xn, B, s->logits, st);
    k_sample(s->logits, s->vocab, B, s->d_slot, s->d_u, s->d_do, cu_sstate(s), s->d_out, st);
    KC_CHECK(cudaMemcpyAsync(s->h_out, s->d_out, (size_t)B * sizeof(kc_sample_out),
                             cudaMemcpyDeviceToHost, st));
}

/* u for a sampled row: drawn from the slot's host rng (one draw per
 * non-greedy token), so CPU and GPU share the random stream. */
static void cu_row_sampling(engine *e, const engine_row *r, float *u, int32_t *flag)
{
    *flag = r->sample != 0;
    *u = 0.f;
    if (r->sample && e->slots[r->slot].p.temperature > 0.f) *u = sampler_next_uniform(&e->slots[r->slot]);
}

static int cu_forward_decode(engine *e, const engine_row *rows, int B)
{
    cu_state *s = e->be_state;
    for (int i = 0; i < B; i++) {
        s->h_tok[i] = rows[i].tokens[0];
        s->h_pos[i] = rows[i].pos;
        s->h_slot[i] = rows[i].slot;
        cu_row_sampling(e, &rows[i], &s->h_u[i], &s->h_do[i]);
        if (rows[i].count_prompt) {   /* rare: a decode row that belongs to the prompt */
            KC_CHECK(cudaMemcpyAsync(s->d_tok + s->ch - 1, &s->h_tok[i], 4, cudaMemcpyHostToDevice, s->st));
            k_mark_seen(s->seen, s->vocab, rows[i].slot, s->d_tok + s->ch - 1, 1, s->st);
            KC_CHECK(cudaStreamSynchronize(s->st));
        }
    }
    if (!s->use_graphs) { cu_decode_body(s, B); return PG_OK; }
    if (!s->graphs[B]) {
        cudaGraph_t g;
        KC_CHECK(cudaStreamBeginCapture(s->st, cudaStreamCaptureModeThreadLocal));
        cu_decode_body(s, B);
        KC_CHECK(cudaStreamEndCapture(s->st, &g));
        KC_CHECK(cudaGraphInstantiate(&s->graphs[B], g, 0));
        cudaGraphDestroy(g);
    }
    KC_CHECK(cudaGraphLaunch(s->graphs[B], s->st));
    return PG_OK;
}

static void cu_keep_logits(engine *e, cu_state *s, int c, int j0)
{
    size_t V = (size_t)s->vocab;
    float *kl = s->logits + (size_t)s->max_slots * V;
    for (int t = 0; t < c; t += CU_KEEP_ROWS) {
        int k = c - t < CU_KEEP_ROWS ? c - t : CU_KEEP_ROWS;
        k_gemv(&s->lm_head, s->xn + (size_t)t * s->dim, k, kl, s->st);
        KC_CHECK(cudaMemcpyAsync(s->all_logits + (size_t)(j0 + t) * V, kl, (size_t)k * V * 4,
                                 cudaMemcpyDeviceToHost, s->st));
        KC_CHECK(cudaStreamSynchronize(s->st));
    }
    (void)e;
}

static int cu_forward_rows(engine *e, const engine_row *rows, int n_rows, pg_err *err)
{
    cu_state *s = e->be_state;
    const size_t V = (size_t)s->vocab;
    for (int i = 0; i < n_rows; i++) {
        const engine_row *r = &rows[i];
        int keep = i == 0 && e->keep_all_logits;
        if (keep) {
            size_t need = (size_t)r->n_tokens * V;
            if (need > s->all_cap) {   /* test/perplexity path only, never in serving */
                free(s->all_logits);
                s->all_logits = pg_xmalloc(need * sizeof(float));
                s->all_cap = need;
            }
        }
        for (int t0 = 0; t0 < r->n_tokens; t0 += s->ch) {
            int c = r->n_tokens - t0 < s->ch ? r->n_tokens - t0 : s->ch;
            KC_CHECK(cudaStreamSynchronize(s->st));   /* pinned inputs are reused */
            for (int j = 0; j < c; j++) {
                s->h_tok[j] = r->tokens[t0 + j];
                s->h_pos[j] = r->pos + t0 + j;
                s->h_slot[j] = r->slot;
            }
            KC_CHECK(cudaMemcpyAsync(s->d_tok, s->h_tok, (size_t)c * 4, cudaMemcpyHostToDevice, s->st));
            KC_CHECK(cudaMemcpyAsync(s->d_pos, s->h_pos, (size_t)c * 4, cudaMemcpyHostToDevice, s->st));
            KC_CHECK(cudaMemcpyAsync(s->d_slot, s->h_slot, (size_t)c * 4, cudaMemcpyHostToDevice, s->st));
            if (r->count_prompt) k_mark_seen(s->seen, s->vocab, r->slot, s->d_tok, c, s->st);
            k_embed(&s->emb, s->d_tok, c, s->x, s->st);
            cu_layers(s, c, 0, r->pos + t0, r->slot);
            if (keep) cu_keep_logits(e, s, c, t0);
            if (t0 + c == r->n_tokens)
                k_gemv(&s->lm_head, s->xn + (size_t)(c - 1) * s->dim, 1, s->logits + (size_t)i * V, s->st);
        }
        if (keep) e->n_all_logits = r->n_tokens;
    }
    /* sampling for all rows at once */
    KC_CHECK(cudaStreamSynchronize(s->st));
    int any = 0;
    for (int i = 0; i < n_rows; i++) {
        s->h_slot[i] = rows[i].slot;
        cu_row_sampling(e, &rows[i], &s->h_u[i], &s->h_do[i]);
        any |= rows[i].sample;
    }
    if (any) {
        KC_CHECK(cudaMemcpyAsync(s->d_slot, s->h_slot, (size_t)n_rows * 4, cudaMemcpyHostToDevice, s->st));
        KC_CHECK(cudaMemcpyAsync(s->d_u, s->h_u, (size_t)n_rows * 4, cudaMemcpyHostToDevice, s->st));
        KC_CHECK(cudaMemcpyAsync(s->d_do, s->h_do, (size_t)n_rows * 4, cudaMemcpyHostToDevice, s->st));
        k_sample(s->logits, s->vocab, n_rows, s->d_slot, s->d_u, s->d_do, cu_sstate(s), s->d_out, s->st);
        KC_CHECK(cudaMemcpyAsync(s->h_out, s->d_out, (size_t)n_rows * sizeof(kc_sample_out),
                                 cudaMemcpyDeviceToHost, s->st));
    }
    (void)err;
    return PG_OK;
}

static int cu_forward(engine *e, const engine_row *rows, int n_rows, pg_err *err)
{
    int decode = !e->keep_all_logits;
    for (int i = 0; i < n_rows; i++) decode &= rows[i].n_tokens == 1;
    if (decode) return cu_forward_decode(e, rows, n_rows);
    return cu_forward_rows(e, rows, n_rows, err);
}

static int cu_sample(engine *e, const engine_row *rows, int n_rows, engine_result *res, pg_err *err)
{
    cu_state *s = e->be_state;
    KC_CHECK(cudaStreamSynchronize(s->st));
    for (int i = 0; i < n_rows; i++) {
        if (!rows[i].sample) continue;
        const kc_sample_out *o = &s->h_out[i];
        engine_result *r = &res[i];
        r->token = o->token;
        r->logprob = o->logprob;
        r->n_top = o->n_top;
        for (int k = 0; k < o->n_top && k < SAMPLER_MAX_TOP_LOGPROBS; k++) {
            r->top_ids[k] = o->top_ids[k];
            r->top_logprobs[k] = o->top_logprobs[k];
        }
        int32_t tok = o->token;
        sampler_slot_observe(&e->slots[rows[i].slot], &tok, 1, 1);
    }
    (void)err;
    return PG_OK;
}

static int cu_get_logits(engine *e, int row, int j, float *out, pg_err *err)
{
    cu_state *s = e->be_state;
    size_t V = (size_t)s->vocab;
    if (j >= 0) {
        memcpy(out, s->all_logits + (size_t)j * V, V * sizeof(float));
        return PG_OK;
    }
    KC_CHECK(cudaStreamSynchronize(s->st));
    KC_CHECK(cudaMemcpy(out, s->logits + (size_t)row * V, V * sizeof(float), cudaMemcpyDeviceToHost));
    (void)err;
    return PG_OK;
}

const engine_backend engine_backend_cuda = {
    .name = "cuda",
    .init = cu_init,
    .forward = cu_forward,
    .sample = cu_sample,
    .get_logits = cu_get_logits,
    .slot_reset = cu_slot_reset,
    .destroy = cu_destroy,
};

#endif
