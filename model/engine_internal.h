/*
 * model/engine_internal.h — what engine.c shares with the device backends
 * (model/forward_cpu.c for the CPU, model/engine_cuda.c for CUDA). Nothing in
 * server/ or tools/ includes this file; they see only model/engine.h.
 *
 * Split of work:
 *   engine.c    validates every engine_step() argument (slots, positions, ids,
 *               n_rows, distinct slots), owns the per-slot host sampler state
 *               (sampler.h: parameters, seed, penalty history, logit bias),
 *               records prompt tokens of rows with count_prompt=1 into that
 *               history BEFORE calling backend->sample, and dispatches.
 *   backend     owns device memory: weights as held on the device, the static
 *               KV cache [layer][slot][kv_head][max_seq][head_dim], activations
 *               and logits. It may trust its arguments (engine.c checked them).
 *
 * Backend selection: engine_create() picks engine_backend_cpu for
 * ENGINE_DEVICE_CPU. For ENGINE_DEVICE_CUDA it uses engine_backend_cuda when
 * the build defines PG_CUDA *and* PG_HAVE_ENGINE_CUDA (the Makefile defines the
 * latter when model/engine_cuda.c exists); without it engine_create() fails
 * with PG_EUNSUPPORTED "built without CUDA". engine_cuda.c must also define
 * engine_cuda_device_count() (declared below); engine.c uses it for
 * engine_cuda_available() and for a clear PG_EDEVICE when no GPU is visible.
 *
 * Thread safety: an engine is driven by one thread (see engine.h); backends
 * may use worker threads internally (the CPU backend's thread pool) but return
 * only when all their work is done.
 */
#ifndef PG_ENGINE_INTERNAL_H
#define PG_ENGINE_INTERNAL_H

#include "engine.h"
#include "sampler.h"

typedef struct engine_backend engine_backend;

struct engine {
    const model     *m;
    model_config     cfg;          /* copy of m->cfg */
    engine_opts      opts;         /* resolved: max_slots >= 1, max_seq_len > 0,
                                      n_threads > 0 (CPU) */
    const engine_backend *be;
    void            *be_state;     /* backend private state (set by be->init) */

    sampler_slot    *slots;        /* [max_slots] host sampler state (sampler.h) */

    /* keep_all_logits: engine_keep_all_logits() sets it; the next
     * be->forward keeps the logits of every token of rows[0] (not only the
     * last) and records how many in n_all_logits. */
    int              keep_all_logits;
    int              n_all_logits;  /* tokens of row 0 with logits kept in the last step */
    int              last_n_rows;   /* rows in the last successful step */
    int             *last_n_tokens; /* [max_slots] n_tokens of each row of the last step */
    /* [max_slots] positions of each slot whose K/V are valid; a row must
     * start at pos <= slot_len[slot] (engine_step rejects a gap, which would
     * otherwise attend over stale cache rows). Reset to 0 by engine_slot_reset. */
    int             *slot_len;

    /* Filled by be->init for engine_info(). */
    char             device_name[128];
    size_t           weight_bytes;
    size_t           kv_bytes;
    size_t           kv_bytes_per_token;
    size_t           step_weight_bytes;   /* engine_info_t; 0 = unknown */
};

struct engine_backend {
    const char *name;
    /* Allocate everything (weights on the device, KV cache, activations,
     * logits for max_slots rows); fill e->be_state, e->device_name,
     * e->weight_bytes, e->kv_bytes, e->kv_bytes_per_token. On failure, free
     * what was allocated and leave e->be_state NULL. */
    int  (*init)(engine *e, pg_err *err);
    /* Forward all rows: write K/V at positions [pos, pos + n_tokens) of each
     * row's slot; make the logits of the last token of every row available
     * (and of all tokens of rows[0] when e->keep_all_logits, setting
     * e->n_all_logits). Rows have distinct slots (checked by engine.c). */
    int  (*forward)(engine *e, const engine_row *rows, int n_rows, pg_err *err);
    /* For rows with sample=1: sample one token from the last token's logits
     * with the slot's sampler state (e->slots[row.slot]), record it into the
     * slot's penalty history, and fill res[i] (token, logprobs). Rows with
     * sample=0 are left untouched. */
    int  (*sample)(engine *e, const engine_row *rows, int n_rows,
                   engine_result *res, pg_err *err);
    /* Copy vocab_size raw logits of row `row`, token j of that row
     * (j == -1: its last token; j >= 0 only for row 0 of a step run with
     * keep_all_logits, j < e->n_all_logits). engine.c validates row and j. */
    int  (*get_logits)(engine *e, int row, int j, float *out, pg_err *err);
    /* Optional (may be NULL): engine_slot_reset() has reset the host state
     * of e->slots[slot]; a device sampler copies what it mirrors. */
    int  (*slot_reset)(engine *e, int slot, pg_err *err);
    /* Free everything init allocated; tolerates be_state == NULL. */
    void (*destroy)(engine *e);
};

extern const engine_backend engine_backend_cpu;      /* model/forward_cpu.c */

#if defined(PG_CUDA) && defined(PG_HAVE_ENGINE_CUDA)
extern const engine_backend engine_backend_cuda;     /* model/engine_cuda.c */
/* Number of visible CUDA devices (0 if the driver/runtime reports none or fails). */
int engine_cuda_device_count(void);
#endif

#endif
