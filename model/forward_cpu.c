/* model/forward_cpu.c — the CPU engine backend (engine_backend_cpu): the
 * Llama forward pass in f32 over the static KV cache, on the fast CPU kernels
 * (kernels/kernels.h) split across a persistent thread pool.
 *
 * A step's tokens (all rows, in row order) are processed in chunks of at most
 * CPU_MAX_TOK tokens; each chunk runs through every layer with its matmuls
 * batched over the chunk's tokens, so a prefill reads each weight once per
 * chunk and decode of several slots reads it once per step. Only the tokens
 * whose logits are needed (the last token of every row; every token of row 0
 * under keep_all_logits) go through the final norm and the LM head.
 * Everything the forward touches is allocated in cpu_init, except the
 * keep_all_logits buffer (a test/perplexity path), which grows on demand.
 * Weights: cpu_init converts the matrices to engine_opts.quant (bf16, QI8,
 * QI4; model/quant.h quant_weights_make, on the pool's threads) or borrows
 * them as stored; the forward reads st->qw.w and dispatches each matrix to
 * cpu_matmul (stored dtypes) or cpu_matmul_q (QI8/QI4) in mm_rows.
 */
#include "engine_internal.h"
#include "quant.h"
#include "../kernels/kernels.h"
#include "../kernels/threadpool.h"

#include <stdlib.h>
#include <string.h>

#define CPU_MAX_TOK 64   /* tokens per chunk: activations stay in L2 */
#define LM_GROUP 8       /* tokens per LM-head pass */

typedef struct {
    int row;     /* index into the step's rows */
    int start;   /* first token index within the chunk */
    int n;       /* tokens */
    int pos0;    /* position of the first token */
} cpu_seg;

typedef struct {
    pg_pool *pool;
    int      n_threads;
    /* shapes */
    int dim, hd, nh, nkv, q_dim, kv_dim, hidden, vocab, max_seq, max_slots, n_layers;
    /* KV cache: [layer][slot][kv_head][max_seq][head_dim] elements of type
     * kv (engine_opts.kv: f32, bf16 or int8; kernels.h conventions). int8
     * adds one f32 scale per (layer, slot, kv head, position) in kv_ks/kv_vs:
     * [layer][slot][kv_head][max_seq]. K/V are converted when written
     * (bf16: round to nearest even; int8: ref_kv_quant_int8) and widened
     * inside cpu_attention_*; the rest of the forward is f32. */
    kv_dtype kv;
    size_t   kv_esz;         /* bytes per cached element: 4, 2 or 1 */
    uint8_t *kv_k, *kv_v;
    float   *kv_ks, *kv_vs;  /* int8 only, else NULL */
    size_t   kv_ls;          /* elements per (layer, slot) */
    float   *inv_freq;       /* [hd/2] (llama3 scaling applied) */
    /* activations of one chunk */
    float   *x;              /* [CPU_MAX_TOK][dim] residual stream */
    float   *xb;             /* [CPU_MAX_TOK][dim] normed input of a block */
    float   *q, *att;        /* [CPU_MAX_TOK][q_dim] */
    float   *k, *v;          /* [CPU_MAX_TOK][kv_dim] */
    float   *tmp;            /* [CPU_MAX_TOK][dim] projection output */
    float   *hb, *hb2;       /* [CPU_MAX_TOK][hidden] */
    float   *cs;             /* [CPU_MAX_TOK][hd/2][2] rope cos/sin per token */
    int     *tok_row;        /* [CPU_MAX_TOK] row of each chunk token */
    int     *tok_idx;        /* [CPU_MAX_TOK] index of the token within its row */
    cpu_seg *segs;           /* [CPU_MAX_TOK] */
    float   *att_scratch;    /* [n_threads][max_seq] */
    float   *lm_x;           /* [LM_GROUP][dim] */
    float   *lm_out;         /* [LM_GROUP][vocab] */
    /* results */
    float   *logits;         /* [max_slots][vocab]: last token of step row i */
    float   *all_logits;     /* [all_cap][vocab]: every token of row 0 (keep_all) */
    int      all_cap;
    sampler_scratch sc;
    /* weights the forward reads (engine_opts.quant): converted matrices are
     * owned here, everything else is borrowed from the model */
    quant_weights qw;
} cpu_state;

/* ---------------------------------------------------------------- parallel jobs */
/* Work is cut into chunks that the pool's threads claim dynamically:
 * matmuls by blocks of output rows (about 8 chunks per thread, so a thread
 * the OS deschedules holds up little), attention by (segment, query head). */
enum { JOB_MM, JOB_GATE_UP, JOB_ATTN };

typedef struct {
    cpu_state      *st;
    int             kind;
    const float    *x;       /* JOB_MM / JOB_GATE_UP input [n][cols] */
    int             n;
    const tensor   *w[3];    /* JOB_MM: n_w matrices; JOB_GATE_UP: gate, up */
    float          *y[3];
    int             n_w;
    int64_t         chunk_rows[3];  /* rows per chunk of each matrix */
    int             first[4];       /* first chunk of each matrix; first[n_w] = total */
    /* JOB_ATTN */
    const cpu_seg  *segs;
    int             n_segs;
    const engine_row *rows;
    int             layer;
} cpu_job;

/* y rows [lo, hi) = x . W^T for a stored-dtype or QI8/QI4 matrix. */
static void mm_rows(float *y, const float *x, int n, const tensor *w, int64_t lo, int64_t hi) {
    if (w->dtype == PG_QI8 || w->dtype == PG_QI4) {
        qmatrix q = {.dtype = w->dtype, .rows = w->rows, .cols = w->cols, .group = w->group,
                     .q = w->data, .scale = w->qscale, .min = w->qmin};
        cpu_matmul_q(y, x, n, &q, lo, hi);
    } else {
        cpu_matmul(y, x, n, w->data, w->dtype, w->rows, w->cols, lo, hi);
    }
}

static int64_t rows_per_chunk(int64_t rows, int n_threads) {
    int64_t r = (rows + 8 * n_threads - 1) / (8 * n_threads);
    r = (r + 15) / 16 * 16;
    return r < 16 ? 16 : r;
}

/* Fill chunk_rows/first for the job's matrices; returns the chunk count. */
static int plan_chunks(cpu_job *j, int n_threads) {
    j->first[0] = 0;
    for (int m = 0; m < j->n_w; m++) {
        j->chunk_rows[m] = rows_per_chunk(j->w[m]->rows, n_threads);
        j->first[m + 1] = j->first[m] + (int)((j->w[m]->rows + j->chunk_rows[m] - 1) / j->chunk_rows[m]);
    }
    return j->first[j->n_w];
}

static void job_run(void *arg, int c, int tid) {
    cpu_job *j = arg;
    cpu_state *st = j->st;
    switch (j->kind) {
    case JOB_MM: {
        int m = 0;
        while (c >= j->first[m + 1]) m++;
        const tensor *w = j->w[m];
        int64_t lo = (c - j->first[m]) * j->chunk_rows[m], hi = lo + j->chunk_rows[m];
        if (hi > w->rows) hi = w->rows;
        mm_rows(j->y[m], j->x, j->n, w, lo, hi);
        break;
    }
    case JOB_GATE_UP: {
        const tensor *g = j->w[0], *u = j->w[1];
        int64_t lo = c * j->chunk_rows[0], hi = lo + j->chunk_rows[0];
        if (hi > g->rows) hi = g->rows;
        mm_rows(j->y[0], j->x, j->n, g, lo, hi);
        mm_rows(j->y[1], j->x, j->n, u, lo, hi);
        for (int t = 0; t < j->n; t++) {
            float *h = j->y[0] + (size_t)t * g->rows + lo;
            cpu_silu_mul(h, h, j->y[1] + (size_t)t * g->rows + lo, hi - lo);
        }
        break;
    }
    case JOB_ATTN: {
        const cpu_seg *s = &j->segs[c / st->nh];
        int h = c % st->nh;
        int slot = j->rows[s->row].slot;
        size_t ls = (size_t)j->layer * st->max_slots + slot;   /* (layer, slot) index */
        size_t base = ls * st->kv_ls * st->kv_esz;               /* bytes */
        size_t off = (size_t)s->start * st->q_dim;
        float *scratch = st->att_scratch + (size_t)tid * st->max_seq;
        if (st->kv == KV_F32)
            cpu_attention(st->att + off, st->q + off, (const float *)(st->kv_k + base),
                          (const float *)(st->kv_v + base), s->n, s->pos0, st->nh, st->nkv, st->hd,
                          st->max_seq, scratch, h, h + 1);
        else if (st->kv == KV_BF16)
            cpu_attention_bf16(st->att + off, st->q + off, (const uint16_t *)(st->kv_k + base),
                               (const uint16_t *)(st->kv_v + base), s->n, s->pos0, st->nh, st->nkv,
                               st->hd, st->max_seq, scratch, h, h + 1);
        else {
            size_t sb = ls * st->nkv * st->max_seq;   /* first scale of this (layer, slot) */
            cpu_attention_int8(st->att + off, st->q + off, (const int8_t *)(st->kv_k + base),
                               st->kv_ks + sb, (const int8_t *)(st->kv_v + base), st->kv_vs + sb,
                               s->n, s->pos0, st->nh, st->nkv, st->hd, st->max_seq, scratch, h, h + 1);
        }
        break;
    }
    }
}

static void run_mm(cpu_state *st, const float *x, int n, int n_w, const tensor *w0, float *y0,
                   const tensor *w1, float *y1, const tensor *w2, float *y2) {
    cpu_job j = {.st = st, .kind = JOB_MM, .x = x, .n = n, .n_w = n_w,
                 .w = {w0, w1, w2}, .y = {y0, y1, y2}};
    pool_run(st->pool, job_run, &j, plan_chunks(&j, st->n_threads));
}

/* ---------------------------------------------------------------- init / destroy */
static int check_tensor(const tensor *t, int matrix, pg_err *err) {
    if (!t->data)
        return pg_errf(err, PG_EINVAL, "cpu engine: tensor %s has no host data (weights drawn on a GPU?)",
                       t->name ? t->name : "?");
    int ok = t->dtype == PG_F32 || t->dtype == PG_F16 || t->dtype == PG_BF16;
    if (matrix) ok |= t->dtype == PG_Q8_0 || t->dtype == PG_Q4_0 || t->dtype == PG_Q4_1 ||
                      ((t->dtype == PG_QI8 || t->dtype == PG_QI4) && t->qscale &&
                       (t->dtype == PG_QI8 || t->qmin));
    if (!ok)
        return pg_errf(err, PG_EUNSUPPORTED, "cpu engine: tensor %s has dtype %s",
                       t->name ? t->name : "?", pg_dtype_name(t->dtype));
    return PG_OK;
}

static float *alloc_f32(size_t n) { return pg_xcalloc(n ? n : 1, sizeof(float)); }

static void cpu_destroy(engine *e) {
    cpu_state *st = e->be_state;
    if (!st) return;
    pool_free(st->pool);
    free(st->kv_k); free(st->kv_v); free(st->kv_ks); free(st->kv_vs); free(st->inv_freq);
    free(st->x); free(st->xb); free(st->q); free(st->att); free(st->k); free(st->v);
    free(st->tmp); free(st->hb); free(st->hb2); free(st->cs);
    free(st->tok_row); free(st->tok_idx); free(st->segs); free(st->att_scratch);
    free(st->lm_x); free(st->lm_out); free(st->logits); free(st->all_logits);
    sampler_scratch_free(&st->sc);
    quant_weights_free(&st->qw);
    free(st);
    e->be_state = NULL;
}

static int cpu_init(engine *e, pg_err *err) {
    const model_config *c = &e->cfg;
    const model_weights *w = &e->m->w;
    if (e->opts.kv != KV_F32 && e->opts.kv != KV_BF16 && e->opts.kv != KV_INT8)
        return pg_errf(err, PG_EINVAL, "cpu engine: unknown KV cache type %d", (int)e->opts.kv);
    if (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0)
        return pg_errf(err, PG_EINVAL, "cpu engine: bad head config (heads %d, kv heads %d, head_dim %d)",
                       c->n_heads, c->n_kv_heads, c->head_dim);
    PG_TRY(check_tensor(&w->tok_embd, 1, err));
    PG_TRY(check_tensor(&w->out_norm, 0, err));
    PG_TRY(check_tensor(&w->lm_head, 1, err));
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &w->layers[l];
        const tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) PG_TRY(check_tensor(mats[i], 1, err));
        PG_TRY(check_tensor(&L->attn_norm, 0, err));
        PG_TRY(check_tensor(&L->ffn_norm, 0, err));
    }

    cpu_state *st = pg_xcalloc(1, sizeof *st);
    e->be_state = st;
    st->dim = c->dim; st->hd = c->head_dim; st->nh = c->n_heads; st->nkv = c->n_kv_heads;
    st->q_dim = c->n_heads * c->head_dim; st->kv_dim = c->n_kv_heads * c->head_dim;
    st->hidden = c->hidden_dim; st->vocab = c->vocab_size; st->n_layers = c->n_layers;
    st->max_seq = e->opts.max_seq_len; st->max_slots = e->opts.max_slots;
    st->n_threads = e->opts.n_threads;

    int rc = pool_create(st->n_threads, &st->pool, err);
    if (rc != PG_OK) { cpu_destroy(e); return rc; }

    /* weights in the requested format, converted on the pool's threads */
    weight_quant wq = e->opts.quant;
    pg_dtype to = wq == WQUANT_BF16 ? PG_BF16 : wq == WQUANT_INT8 ? PG_QI8 : wq == WQUANT_INT4 ? PG_QI4
                                                                                                : PG_DTYPE_COUNT;
    rc = quant_weights_make(e->m, to, e->opts.group_size, e->opts.quant_lm_head, st->pool, &st->qw, err);
    if (rc != PG_OK) { cpu_destroy(e); return rc; }

    /* KV cache: calloc so untouched positions cost no physical memory.
     * bytes = K and V elements plus, for int8, their f32 scales. */
    st->kv = e->opts.kv;
    st->kv_esz = st->kv == KV_F32 ? 4 : st->kv == KV_BF16 ? 2 : 1;
    size_t kv_ls = (size_t)st->nkv * st->max_seq * st->hd, n_kv, n_sc = 0, bytes;
    if (pg_mul_overflow(kv_ls, (size_t)st->n_layers * st->max_slots, &n_kv) ||
        pg_mul_overflow(n_kv, 2 * st->kv_esz, &bytes)) {
        cpu_destroy(e);
        return pg_errf(err, PG_ENOMEM, "cpu engine: KV cache size overflows");
    }
    if (st->kv == KV_INT8) {
        n_sc = n_kv / st->hd;   /* one scale per (layer, slot, kv head, position) */
        bytes += 2 * n_sc * sizeof(float);
    }
    st->kv_ls = kv_ls;
    st->kv_k = calloc(n_kv, st->kv_esz);
    st->kv_v = calloc(n_kv, st->kv_esz);
    if (n_sc) {
        st->kv_ks = calloc(n_sc, sizeof(float));
        st->kv_vs = calloc(n_sc, sizeof(float));
    }
    if (!st->kv_k || !st->kv_v || (n_sc && (!st->kv_ks || !st->kv_vs))) {
        cpu_destroy(e);
        return pg_errf(err, PG_ENOMEM, "cpu engine: cannot allocate the KV cache: %zu MiB "
                       "(%d layers x %d slots x %d positions x %d kv heads x %d x %s x 2)",
                       bytes >> 20, st->n_layers, st->max_slots, st->max_seq, st->nkv, st->hd,
                       engine_kv_name(st->kv));
    }

    st->inv_freq = alloc_f32((size_t)st->hd / 2);
    ref_rope_llama3 l3 = {c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                          c->rope_orig_max_pos};
    ref_rope_freqs(st->inv_freq, st->hd, c->rope_theta, c->rope_llama3 ? &l3 : NULL);

    size_t T = CPU_MAX_TOK;
    st->x = alloc_f32(T * st->dim);
    st->xb = alloc_f32(T * st->dim);
    st->q = alloc_f32(T * st->q_dim);
    st->att = alloc_f32(T * st->q_dim);
    st->k = alloc_f32(T * st->kv_dim);
    st->v = alloc_f32(T * st->kv_dim);
    st->tmp = alloc_f32(T * st->dim);
    st->hb = alloc_f32(T * st->hidden);
    st->hb2 = alloc_f32(T * st->hidden);
    st->cs = alloc_f32(T * st->hd);
    st->tok_row = pg_xcalloc(T, sizeof *st->tok_row);
    st->tok_idx = pg_xcalloc(T, sizeof *st->tok_idx);
    st->segs = pg_xcalloc(T, sizeof *st->segs);
    st->att_scratch = alloc_f32((size_t)st->n_threads * st->max_seq);
    st->lm_x = alloc_f32((size_t)LM_GROUP * st->dim);
    st->lm_out = alloc_f32((size_t)LM_GROUP * st->vocab);
    st->logits = alloc_f32((size_t)st->max_slots * st->vocab);
    sampler_scratch_init(&st->sc, st->vocab);

    snprintf(e->device_name, sizeof e->device_name, "cpu (%d threads, %s)", st->n_threads,
             cpu_isa_name(cpu_isa_best()));
    e->weight_bytes = st->qw.bytes;
    /* a decode step reads every tensor once except the embedding table (one
     * row per token), unless that table is also the LM head */
    const model_weights *hw = &st->qw.w;
    e->step_weight_bytes = st->qw.bytes - (hw->lm_head.data == hw->tok_embd.data ? 0 : quant_held_bytes(&hw->tok_embd));
    e->kv_bytes = bytes;
    e->kv_bytes_per_token = (size_t)st->n_layers * 2 *
                            ((size_t)st->kv_dim * st->kv_esz + (st->kv == KV_INT8 ? st->nkv * sizeof(float) : 0));
    return PG_OK;
}

/* ---------------------------------------------------------------- forward */
/* LM head for the gathered tokens lm_x[0..n): logits to their destinations. */
static void lm_flush(engine *e, cpu_state *st, const int *dst_row, const int *dst_j, int n) {
    const model_weights *w = &st->qw.w;
    run_mm(st, st->lm_x, n, 1, &w->lm_head, st->lm_out, NULL, NULL, NULL, NULL);
    size_t vb = (size_t)st->vocab * sizeof(float);
    for (int t = 0; t < n; t++) {
        const float *src = st->lm_out + (size_t)t * st->vocab;
        if (dst_row[t] >= 0) memcpy(st->logits + (size_t)dst_row[t] * st->vocab, src, vb);
        if (dst_j[t] >= 0) memcpy(st->all_logits + (size_t)dst_j[t] * st->vocab, src, vb);
    }
}

/* Run the n chunk tokens named by st->tok_row / st->tok_idx through the model. */
static void forward_chunk(engine *e, cpu_state *st, const engine_row *rows, int n) {
    const model_config *c = &e->cfg;
    const model_weights *w = &st->qw.w;
    int dim = st->dim;
    engine_observe_fn obs = e->opts.observe;

    /* segments of consecutive tokens of one row */
    int n_segs = 0;
    for (int t = 0; t < n; t++) {
        int r = st->tok_row[t];
        if (n_segs == 0 || st->segs[n_segs - 1].row != r) {
            st->segs[n_segs] = (cpu_seg){.row = r, .start = t, .n = 0,
                                         .pos0 = rows[r].pos + st->tok_idx[t]};
            n_segs++;
        }
        st->segs[n_segs - 1].n++;
    }
    for (int t = 0; t < n; t++) {
        const engine_row *r = &rows[st->tok_row[t]];
        int32_t id = r->tokens[st->tok_idx[t]];
        quant_any_row(&w->tok_embd, id, st->x + (size_t)t * dim);   /* = ref_embed; also QI8/QI4 */
        cpu_rope_cs(st->cs + (size_t)t * st->hd, st->hd, r->pos + st->tok_idx[t], st->inv_freq);
    }

    for (int l = 0; l < st->n_layers; l++) {
        const layer_weights *L = &w->layers[l];
        /* attention block */
        cpu_rmsnorm(st->xb, st->x, L->attn_norm.data, L->attn_norm.dtype, n, dim, c->norm_eps);
        if (obs) obs(e->opts.observe_ctx, l, ENGINE_SITE_QKV, st->xb, n, dim);
        run_mm(st, st->xb, n, 3, &L->wq, st->q, &L->wk, st->k, &L->wv, st->v);
        for (int t = 0; t < n; t++) {
            const engine_row *r = &rows[st->tok_row[t]];
            int pos = r->pos + st->tok_idx[t];
            const float *cs = st->cs + (size_t)t * st->hd;
            float *kt = st->k + (size_t)t * st->kv_dim, *vt = st->v + (size_t)t * st->kv_dim;
            cpu_rope(st->q + (size_t)t * st->q_dim, st->nh, st->hd, cs, c->rope_interleaved);
            cpu_rope(kt, st->nkv, st->hd, cs, c->rope_interleaved);
            size_t ls = (size_t)l * st->max_slots + r->slot;   /* (layer, slot) index */
            for (int h = 0; h < st->nkv; h++) {
                size_t pi = (ls * st->nkv + h) * st->max_seq + pos;   /* (.., kv head, position) */
                size_t off = pi * st->hd * st->kv_esz;                 /* bytes */
                const float *kh = kt + (size_t)h * st->hd, *vh = vt + (size_t)h * st->hd;
                if (st->kv == KV_F32) {
                    memcpy(st->kv_k + off, kh, (size_t)st->hd * sizeof(float));
                    memcpy(st->kv_v + off, vh, (size_t)st->hd * sizeof(float));
                } else if (st->kv == KV_BF16) {
                    uint16_t *kd = (uint16_t *)(st->kv_k + off), *vd = (uint16_t *)(st->kv_v + off);
                    for (int d = 0; d < st->hd; d++) {
                        kd[d] = pg_f32_to_bf16(kh[d]);
                        vd[d] = pg_f32_to_bf16(vh[d]);
                    }
                } else {
                    ref_kv_quant_int8(kh, st->hd, (int8_t *)(st->kv_k + off), &st->kv_ks[pi]);
                    ref_kv_quant_int8(vh, st->hd, (int8_t *)(st->kv_v + off), &st->kv_vs[pi]);
                }
            }
        }
        cpu_job ja = {.st = st, .kind = JOB_ATTN, .segs = st->segs, .n_segs = n_segs,
                      .rows = rows, .layer = l};
        pool_run(st->pool, job_run, &ja, n_segs * st->nh);
        if (obs) obs(e->opts.observe_ctx, l, ENGINE_SITE_O, st->att, n, st->q_dim);
        run_mm(st, st->att, n, 1, &L->wo, st->tmp, NULL, NULL, NULL, NULL);
        for (size_t i = 0; i < (size_t)n * dim; i++) st->x[i] += st->tmp[i];
        /* MLP block */
        cpu_rmsnorm(st->xb, st->x, L->ffn_norm.data, L->ffn_norm.dtype, n, dim, c->norm_eps);
        if (obs) obs(e->opts.observe_ctx, l, ENGINE_SITE_GATE_UP, st->xb, n, dim);
        cpu_job jg = {.st = st, .kind = JOB_GATE_UP, .x = st->xb, .n = n, .n_w = 1,
                      .w = {&L->w_gate, &L->w_up, NULL}, .y = {st->hb, st->hb2, NULL}};
        pool_run(st->pool, job_run, &jg, plan_chunks(&jg, st->n_threads));   /* by gate rows */
        if (obs) obs(e->opts.observe_ctx, l, ENGINE_SITE_DOWN, st->hb, n, st->hidden);
        run_mm(st, st->hb, n, 1, &L->w_down, st->tmp, NULL, NULL, NULL, NULL);
        for (size_t i = 0; i < (size_t)n * dim; i++) st->x[i] += st->tmp[i];
    }

    /* final norm + LM head for the tokens whose logits are wanted */
    int dst_row[LM_GROUP], dst_j[LM_GROUP], g = 0;
    for (int t = 0; t < n; t++) {
        int r = st->tok_row[t], j = st->tok_idx[t];
        int last = j == rows[r].n_tokens - 1;
        int keep = e->keep_all_logits && r == 0;
        if (!last && !keep) continue;
        cpu_rmsnorm(st->lm_x + (size_t)g * dim, st->x + (size_t)t * dim, w->out_norm.data,
                    w->out_norm.dtype, 1, dim, c->norm_eps);
        dst_row[g] = last ? r : -1;
        dst_j[g] = keep ? j : -1;
        if (++g == LM_GROUP) { lm_flush(e, st, dst_row, dst_j, g); g = 0; }
    }
    if (g > 0) lm_flush(e, st, dst_row, dst_j, g);
}

static int cpu_forward(engine *e, const engine_row *rows, int n_rows, pg_err *err) {
    cpu_state *st = e->be_state;
    if (e->keep_all_logits && rows[0].n_tokens > st->all_cap) {
        float *p = realloc(st->all_logits, (size_t)rows[0].n_tokens * st->vocab * sizeof(float));
        if (!p) return pg_errf(err, PG_ENOMEM, "cpu engine: no memory for %d x %d kept logits",
                               rows[0].n_tokens, st->vocab);
        st->all_logits = p;
        st->all_cap = rows[0].n_tokens;
    }
    int n = 0;
    for (int r = 0; r < n_rows; r++) {
        for (int j = 0; j < rows[r].n_tokens; j++) {
            st->tok_row[n] = r;
            st->tok_idx[n] = j;
            if (++n == CPU_MAX_TOK) { forward_chunk(e, st, rows, n); n = 0; }
        }
    }
    if (n > 0) forward_chunk(e, st, rows, n);
    e->n_all_logits = e->keep_all_logits ? rows[0].n_tokens : 0;
    return PG_OK;
}

/* ---------------------------------------------------------------- sample / logits */
static int cpu_sample(engine *e, const engine_row *rows, int n_rows, engine_result *res,
                      pg_err *err) {
    cpu_state *st = e->be_state;
    for (int i = 0; i < n_rows; i++) {
        if (!rows[i].sample) continue;
        sampler_sample(&e->slots[rows[i].slot], st->logits + (size_t)i * st->vocab, &st->sc, &res[i]);
    }
    return PG_OK;
}

static int cpu_get_logits(engine *e, int row, int j, float *out, pg_err *err) {
    cpu_state *st = e->be_state;
    const float *src = j < 0 ? st->logits + (size_t)row * st->vocab
                             : st->all_logits + (size_t)j * st->vocab;
    memcpy(out, src, (size_t)st->vocab * sizeof(float));
    return PG_OK;
}

const engine_backend engine_backend_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .forward = cpu_forward,
    .sample = cpu_sample,
    .get_logits = cpu_get_logits,
    .slot_reset = NULL,
    .destroy = cpu_destroy,
};
