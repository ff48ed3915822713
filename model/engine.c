/* model/engine.c — engine lifecycle, argument validation and backend dispatch
 * (model/engine.h; the backends are described in model/engine_internal.h). */
#include "engine_internal.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void engine_opts_default(engine_opts *o) {
    memset(o, 0, sizeof *o);
    o->device = ENGINE_DEVICE_CPU;
    o->max_slots = 1;
    o->max_seq_len = 0;
    o->n_threads = 0;
    o->kv = KV_AUTO;
    o->quant = WQUANT_NONE;
    o->group_size = 32;
    o->quant_lm_head = -1;
    o->use_graphs = 1;
    o->gpu_id = 0;
}

const char *engine_quant_name(weight_quant q) {
    switch (q) {
    case WQUANT_NONE: return "none";
    case WQUANT_BF16: return "bf16";
    case WQUANT_INT8: return "int8";
    case WQUANT_INT4: return "int4";
    }
    return "?";
}

const char *engine_kv_name(kv_dtype k) {
    switch (k) {
    case KV_AUTO: return "auto";
    case KV_F32: return "f32";
    case KV_BF16: return "bf16";
    case KV_INT8: return "int8";
    }
    return "?";
}

int engine_opts_parse_formats(engine_opts *o, const char *quant, int group_size, const char *kv, pg_err *err) {
    if (!quant || !strcmp(quant, "none")) o->quant = WQUANT_NONE;
    else if (!strcmp(quant, "bf16")) o->quant = WQUANT_BF16;
    else if (!strcmp(quant, "int8")) o->quant = WQUANT_INT8;
    else if (!strcmp(quant, "int4")) o->quant = WQUANT_INT4;
    else return pg_errf(err, PG_EINVAL, "--quant: '%s' is not one of none, bf16, int8, int4", quant);
    if (group_size != 32 && group_size != 64 && group_size != 128)
        return pg_errf(err, PG_EINVAL, "--group-size: %d is not one of 32, 64, 128", group_size);
    o->group_size = group_size;
    if (!kv || !strcmp(kv, "auto")) o->kv = KV_AUTO;
    else if (!strcmp(kv, "f32")) o->kv = KV_F32;
    else if (!strcmp(kv, "bf16")) o->kv = KV_BF16;
    else if (!strcmp(kv, "int8")) o->kv = KV_INT8;
    else return pg_errf(err, PG_EINVAL, "--kv-cache: '%s' is not one of auto, f32, bf16, int8", kv);
    return PG_OK;
}

int engine_cuda_available(void) {
#if defined(PG_CUDA) && defined(PG_HAVE_ENGINE_CUDA)
    return engine_cuda_device_count() > 0;
#else
    return 0;
#endif
}

static int resolve_opts(const model *m, engine_opts *o, pg_err *err) {
    const model_config *c = &m->cfg;
    if (o->max_slots < 1 || o->max_slots > 4096)
        return pg_errf(err, PG_EINVAL, "engine: max_slots %d out of range [1, 4096]", o->max_slots);
    int cap = c->max_pos > 0 ? c->max_pos : 4096;
    if (o->max_seq_len == 0) o->max_seq_len = cap < 4096 ? cap : 4096;
    if (o->max_seq_len < 1 || o->max_seq_len > cap)
        return pg_errf(err, PG_EINVAL, "engine: max_seq_len %d out of range [1, %d] (model max_position_embeddings)",
                       o->max_seq_len, cap);
    if (o->n_threads == 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        o->n_threads = nc > 0 ? (int)(nc < 256 ? nc : 256) : 1;
    }
    if (o->n_threads < 1 || o->n_threads > 256)
        return pg_errf(err, PG_EINVAL, "engine: n_threads %d out of range [1, 256]", o->n_threads);
    if (o->kv == KV_AUTO) o->kv = o->device == ENGINE_DEVICE_CUDA ? KV_BF16 : KV_F32;
    if (o->quant_lm_head < -1 || o->quant_lm_head > 1)
        return pg_errf(err, PG_EINVAL, "engine: quant_lm_head %d is not -1 (auto), 0 or 1", o->quant_lm_head);
    if (o->quant_lm_head < 0) o->quant_lm_head = quant_lm_head_auto(m);
    return PG_OK;
}

static int pick_backend(const engine_opts *o, const engine_backend **be, pg_err *err) {
    if (o->device == ENGINE_DEVICE_CPU) {
        *be = &engine_backend_cpu;
        return PG_OK;
    }
    if (o->device != ENGINE_DEVICE_CUDA)
        return pg_errf(err, PG_EINVAL, "engine: unknown device %d", (int)o->device);
    if (o->observe)
        return pg_errf(err, PG_EUNSUPPORTED, "engine: observing the inputs of the matrices (calibration) "
                                             "runs on the cpu device only");
#if defined(PG_CUDA) && defined(PG_HAVE_ENGINE_CUDA)
    int n = engine_cuda_device_count();
    if (n <= 0)
        return pg_errf(err, PG_EDEVICE, "engine: no CUDA GPU is visible (device count 0); use the cpu device");
    if (o->gpu_id < 0 || o->gpu_id >= n)
        return pg_errf(err, PG_EINVAL, "engine: gpu_id %d out of range (%d GPUs visible)", o->gpu_id, n);
    *be = &engine_backend_cuda;
    return PG_OK;
#else
    return pg_errf(err, PG_EUNSUPPORTED, "engine: built without CUDA (rebuild with nvcc, without NO_CUDA=1)");
#endif
}

int engine_create(const model *m, const engine_opts *opts, engine **out, pg_err *err) {
    *out = NULL;
    if (!m) return pg_errf(err, PG_EINVAL, "engine: model is NULL");
    engine_opts o;
    if (opts) o = *opts;
    else engine_opts_default(&o);
    PG_TRY(resolve_opts(m, &o, err));
    const engine_backend *be = NULL;
    PG_TRY(pick_backend(&o, &be, err));

    engine *e = pg_xcalloc(1, sizeof *e);
    e->m = m;
    e->cfg = m->cfg;
    e->opts = o;
    e->be = be;
    e->slots = pg_xcalloc((size_t)o.max_slots, sizeof *e->slots);
    for (int i = 0; i < o.max_slots; i++) sampler_slot_init(&e->slots[i], m->cfg.vocab_size);
    e->last_n_tokens = pg_xcalloc((size_t)o.max_slots, sizeof *e->last_n_tokens);
    e->slot_len = pg_xcalloc((size_t)o.max_slots, sizeof *e->slot_len);
    int rc = be->init(e, err);
    if (rc != PG_OK) {
        e->be_state = NULL;
        engine_free(e);
        return rc;
    }
    *out = e;
    return PG_OK;
}

void engine_free(engine *e) {
    if (!e) return;
    if (e->be && e->be_state) e->be->destroy(e);
    if (e->slots)
        for (int i = 0; i < e->opts.max_slots; i++) sampler_slot_free(&e->slots[i]);
    free(e->slots);
    free(e->last_n_tokens);
    free(e->slot_len);
    free(e);
}

void engine_info(const engine *e, engine_info_t *info) {
    memset(info, 0, sizeof *info);
    info->device_name = e->device_name;
    info->max_slots = e->opts.max_slots;
    info->max_seq_len = e->opts.max_seq_len;
    info->vocab_size = e->cfg.vocab_size;
    info->weight_bytes = e->weight_bytes;
    info->kv_bytes = e->kv_bytes;
    info->kv_bytes_per_token = e->kv_bytes_per_token;
    info->step_weight_bytes = e->step_weight_bytes;
    info->quant = e->opts.quant;
    info->group_size = e->opts.group_size;
    info->quant_lm_head = e->opts.quant_lm_head;
    info->kv = e->opts.kv;
}

void engine_weights_desc(const engine_info_t *info, char *buf, size_t cap) {
    const char *head = info->quant != WQUANT_NONE && !info->quant_lm_head ? ", LM head as stored" : "";
    if (info->quant == WQUANT_NONE) snprintf(buf, cap, "as stored");
    else if (info->quant == WQUANT_INT4) snprintf(buf, cap, "int4 g%d%s", info->group_size, head);
    else snprintf(buf, cap, "%s%s", engine_quant_name(info->quant), head);
}

int engine_slot_reset(engine *e, int slot, const sampler_params *p, pg_err *err) {
    if (slot < 0 || slot >= e->opts.max_slots)
        return pg_errf(err, PG_EINVAL, "engine: slot %d out of range [0, %d)", slot, e->opts.max_slots);
    sampler_params def;
    if (!p) { sampler_params_default(&def); p = &def; }
    PG_TRY(sampler_slot_reset(&e->slots[slot], p, err));
    e->slot_len[slot] = 0;
    if (e->be->slot_reset) PG_TRY(e->be->slot_reset(e, slot, err));
    return PG_OK;
}

/* Everything engine_step promises to reject, before any state changes. */
static int check_rows(engine *e, const engine_row *rows, int n_rows,
                      const engine_result *results, pg_err *err) {
    if (!rows || n_rows < 1 || n_rows > e->opts.max_slots)
        return pg_errf(err, PG_EINVAL, "engine: n_rows %d out of range [1, %d]", n_rows, e->opts.max_slots);
    int vocab = e->cfg.vocab_size;
    for (int i = 0; i < n_rows; i++) {
        const engine_row *r = &rows[i];
        if (r->slot < 0 || r->slot >= e->opts.max_slots)
            return pg_errf(err, PG_EINVAL, "engine: row %d: slot %d out of range [0, %d)", i, r->slot,
                           e->opts.max_slots);
        for (int j = 0; j < i; j++)
            if (rows[j].slot == r->slot)
                return pg_errf(err, PG_EINVAL, "engine: rows %d and %d both name slot %d", j, i, r->slot);
        if (r->n_tokens < 1 || !r->tokens)
            return pg_errf(err, PG_EINVAL, "engine: row %d: no tokens (n_tokens %d)", i, r->n_tokens);
        if (r->pos < 0 || r->pos > e->slot_len[r->slot])
            return pg_errf(err, PG_EINVAL, "engine: row %d: pos %d but slot %d holds %d positions",
                           i, r->pos, r->slot, e->slot_len[r->slot]);
        if ((int64_t)r->pos + r->n_tokens > e->opts.max_seq_len)
            return pg_errf(err, PG_ERANGE, "engine: row %d: positions %d..%d exceed max_seq_len %d",
                           i, r->pos, r->pos + r->n_tokens - 1, e->opts.max_seq_len);
        for (int j = 0; j < r->n_tokens; j++)
            if (r->tokens[j] < 0 || r->tokens[j] >= vocab)
                return pg_errf(err, PG_EINVAL, "engine: row %d: token id %d out of range [0, %d)",
                               i, (int)r->tokens[j], vocab);
        if (r->sample && !results)
            return pg_errf(err, PG_EINVAL, "engine: row %d samples but results is NULL", i);
    }
    return PG_OK;
}

int engine_step(engine *e, const engine_row *rows, int n_rows,
                engine_result *results, pg_err *err) {
    PG_TRY(check_rows(e, rows, n_rows, results, err));
    e->last_n_rows = 0;
    e->n_all_logits = 0;
    int rc = e->be->forward(e, rows, n_rows, err);
    if (rc != PG_OK) return rc;
    for (int i = 0; i < n_rows; i++) {
        e->slot_len[rows[i].slot] = rows[i].pos + rows[i].n_tokens;
        e->last_n_tokens[i] = rows[i].n_tokens;
        if (rows[i].count_prompt)
            sampler_slot_observe(&e->slots[rows[i].slot], rows[i].tokens, rows[i].n_tokens, 0);
    }
    e->last_n_rows = n_rows;
    int any = 0;
    for (int i = 0; i < n_rows; i++) any |= rows[i].sample != 0;
    if (any) PG_TRY(e->be->sample(e, rows, n_rows, results, err));
    return PG_OK;
}

int engine_get_logits(engine *e, int row, float *out, pg_err *err) {
    if (row < 0 || row >= e->last_n_rows)
        return pg_errf(err, PG_EINVAL, "engine: row %d not in the last step (%d rows)", row, e->last_n_rows);
    return e->be->get_logits(e, row, -1, out, err);
}

void engine_keep_all_logits(engine *e, int on) { e->keep_all_logits = on != 0; }

int engine_get_logits_at(engine *e, int j, float *out, pg_err *err) {
    if (e->last_n_rows < 1 || j < 0 || j >= e->n_all_logits)
        return pg_errf(err, PG_EINVAL, "engine: logits of token %d of row 0 were not kept (%d kept)",
                       j, e->n_all_logits);
    return e->be->get_logits(e, 0, j, out, err);
}
