/*
 * server/sched.c — the request queue and the engine thread.
 *
 * HTTP threads call sched_submit(); the engine thread alone calls the
 * backend (engine_step and friends). A request holds n sequences (choices);
 * sequences are admitted into free slots in arrival order. Each engine step
 * carries one row per active sequence: a prefill chunk (up to prefill_chunk
 * prompt tokens) or one decode token. With max_slots == 1 (until the engine
 * batches) requests therefore run one at a time, in order; with more slots
 * the same loop batches them.
 *
 * After each sampled token the engine thread, under the request's mutex:
 * records the token (and logprobs), runs the detokenizer and the stop-string
 * matcher, appends the emitted text, decides whether the sequence is finished
 * (EOS, stop string, max tokens, context full), and calls the request's
 * notify hook. Cancellation (client gone, timeout, shutdown) is a flag that
 * this thread checks between steps; the slot is freed right there.
 *
 * Locks: sched.mu, then request.mu (never the other way round).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server_internal.h"

/* ---------------------------------------------------------------- requests */
srv_request *srv_request_new(int n_seqs) {
    srv_request *r = pg_xcalloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->refs = 1;
    atomic_init(&r->cancelled, 0);
    r->n_seqs = n_seqs;
    r->seqs = pg_xcalloc((size_t)(n_seqs > 0 ? n_seqs : 1), sizeof *r->seqs);
    for (int i = 0; i < n_seqs; i++) r->seqs[i].slot = -1;
    r->t_submit = pg_now();
    return r;
}

void srv_request_retain(srv_request *r) {
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
}

static void seq_free_private(srv_seq *q, const sched_backend *be) {
    if (q->detok && be) be->detok_free(q->detok);
    q->detok = NULL;
    stop_free(&q->stopm);
}

void srv_request_release(srv_request *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    for (int i = 0; i < r->n_seqs; i++) {
        srv_seq *q = &r->seqs[i];
        PG_ASSERT(!q->detok);  /* the engine thread frees it when the sequence finishes */
        stop_free(&q->stopm);
        sbuf_free(&q->text);
        free(q->out_ids);
        free(q->out_lp);
        free(q->out_top_ids);
        free(q->out_top_lp);
        free(q->out_text_end);
    }
    free(r->seqs);
    api_request_free(&r->api);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *finish_reason_name(finish_reason f) {
    switch (f) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_ERROR: return "error";
    default: return NULL;
    }
}

/* ---------------------------------------------------------------- scheduler */
struct sched {
    sched_backend   be;
    srv_metrics    *metrics;
    int             max_queue, prefill_chunk;

    pthread_mutex_t mu;
    pthread_cond_t  cv;        /* work arrived / drain state changed */
    pthread_cond_t  idle_cv;   /* the engine thread went idle */
    srv_request    *q_head, *q_tail;  /* requests with sequences not yet admitted */
    int             n_queued;
    atomic_int      n_running;  /* requests with an admitted, unfinished sequence; atomic so
                                   that it drops before the client is told (no s->mu there) */
    int             accepting, cancel_all, quit, idle;
    pthread_t       thread;
    int             started;

    /* Engine-thread private. */
    srv_seq       **active;     /* [max_slots] sequence in each slot, or NULL */
    srv_request   **active_req; /* [max_slots] */
    engine_row     *rows;       /* [max_slots] */
    engine_result  *res;        /* [max_slots] */
    int            *row_slot;   /* [max_slots] slot of each row */
};

/* Append one token record to q's output (under r->mu). */
static void seq_record(srv_seq *q, const engine_result *res) {
    if (q->n_out == q->cap_out) {
        q->cap_out = q->cap_out ? 2 * q->cap_out : 16;
        size_t c = (size_t)q->cap_out;
        q->out_ids = pg_xrealloc(q->out_ids, c * sizeof *q->out_ids);
        q->out_text_end = pg_xrealloc(q->out_text_end, c * sizeof *q->out_text_end);
        if (q->want_logprobs) {
            q->out_lp = pg_xrealloc(q->out_lp, c * sizeof *q->out_lp);
            if (q->top_n) {
                q->out_top_ids = pg_xrealloc(q->out_top_ids, c * (size_t)q->top_n * sizeof *q->out_top_ids);
                q->out_top_lp = pg_xrealloc(q->out_top_lp, c * (size_t)q->top_n * sizeof *q->out_top_lp);
            }
        }
    }
    int i = q->n_out++;
    q->out_ids[i] = res->token;
    q->out_text_end[i] = q->text.n;
    if (q->want_logprobs) {
        q->out_lp[i] = res->logprob;
        for (int k = 0; k < q->top_n; k++) {
            int ok = k < res->n_top;
            q->out_top_ids[(size_t)i * q->top_n + k] = ok ? res->top_ids[k] : -1;
            q->out_top_lp[(size_t)i * q->top_n + k] = ok ? res->top_logprobs[k] : 0.0f;
        }
    }
}

/* Push text through the stop matcher into q->text; returns 1 on a stop match. */
static int seq_emit(srv_seq *q, const char *s, int n) {
    if (n <= 0) return 0;
    return stop_feed(&q->stopm, s, (size_t)n, &q->text);
}

/* Finish q (under r->mu): flush held text unless a stop string or an error
 * ended it, free the slot and the private state. Returns 1 if the whole
 * request is now finished. */
static int seq_finish(sched *s, srv_request *r, srv_seq *q, finish_reason why, const char *msg) {
    if (q->state == SEQ_DONE) return 0;
    if (q->detok && why != FINISH_ERROR && !q->stopm.stopped) {
        char *rest = NULL;
        int n = s->be.detok_flush(q->detok, &rest);
        int stopped = seq_emit(q, rest, n);
        free(rest);
        if (stopped) why = FINISH_STOP;
    }
    stop_flush(&q->stopm, &q->text);
    if (q->n_out > 0) q->out_text_end[q->n_out - 1] = q->text.n;
    seq_free_private(q, &s->be);
    q->finish = why;
    if (msg) snprintf(q->error, sizeof q->error, "%s", msg);
    if (q->slot >= 0) {
        s->active[q->slot] = NULL;
        s->active_req[q->slot] = NULL;
        q->slot = -1;
    }
    q->state = SEQ_DONE;
    metrics_tokens(s->metrics, q->n_prefilled, q->n_gen);
    if (q->n_gen > 1 && q->t_last > q->t_first)
        metrics_decode_rate(s->metrics, (q->n_gen - 1) / (q->t_last - q->t_first));
    return ++r->n_done == r->n_seqs;
}

/* Finish a sequence from the engine thread and drop the scheduler's
 * reference when its request is complete. */
static void finish_and_notify(sched *s, srv_request *r, srv_seq *q, finish_reason why, const char *msg) {
    pthread_mutex_lock(&r->mu);
    int final = seq_finish(s, r, q, why, msg);
    if (final) atomic_fetch_sub(&s->n_running, 1);
    if (final && why == FINISH_CANCELLED) metrics_cancelled(s->metrics);
    if (r->notify) r->notify(r, final);
    pthread_mutex_unlock(&r->mu);
    if (final) srv_request_release(r);
}

/* Sampler parameters for q. With min_tokens (and EOS not ignored) the
 * sampler also returns alternatives, so that an EOS sampled too early can be
 * replaced by the most likely other token (see seq_token). vLLM masks EOS
 * instead; a slot's logit bias cannot change mid-sequence without a reset,
 * and a reset restarts the slot. */
static int seq_reset_sampler(sched *s, srv_seq *q, pg_err *err) {
    sampler_params p = q->sp;
    if (q->min_tokens > 0 && !q->ignore_eos) {
        p.logprobs = 1;
        int want = s->be.n_eos + 1;
        if (p.top_logprobs < want) p.top_logprobs = want < SAMPLER_MAX_TOP_LOGPROBS ? want : SAMPLER_MAX_TOP_LOGPROBS;
    }
    return s->be.slot_reset(s->be.ctx, q->slot, &p, err);
}

/* Move queued sequences into free slots (engine thread, s->mu held). */
static void admit(sched *s) {
    for (int slot = 0; slot < s->be.max_slots && s->q_head; slot++) {
        if (s->active[slot]) continue;
        srv_request *r = s->q_head;
        srv_seq *q = NULL;
        for (int i = 0; i < r->n_seqs; i++)
            if (r->seqs[i].state == SEQ_QUEUED) { q = &r->seqs[i]; break; }
        PG_ASSERT(q);
        int first = q == &r->seqs[0];
        /* last sequence admitted: the request leaves the queue */
        int last = 1;
        for (srv_seq *o = q + 1; o < r->seqs + r->n_seqs; o++)
            if (o->state == SEQ_QUEUED) last = 0;
        if (last) {
            s->q_head = r->next_in_queue;
            if (!s->q_head) s->q_tail = NULL;
            r->next_in_queue = NULL;
            s->n_queued--;
        }
        if (first) atomic_fetch_add(&s->n_running, 1);
        q->slot = slot;
        q->state = SEQ_PREFILL;
        q->t_start = pg_now();
        s->active[slot] = q;
        s->active_req[slot] = r;
        q->detok = s->be.detok_new(s->be.ctx);
        stop_init(&q->stopm, r->api.stop, r->api.n_stop);
    }
}

/* Cancellation, deadlines and departed clients (engine thread, s->mu held). */
static void reap(sched *s, double now) {
    for (int slot = 0; slot < s->be.max_slots; slot++) {
        srv_request *r = s->active_req[slot];
        if (!r) continue;
        if (r->peer_gone && now - r->last_peek > 0.05) {
            r->last_peek = now;
            pthread_mutex_lock(&r->mu);
            int gone = r->peer_gone(r);
            pthread_mutex_unlock(&r->mu);
            if (gone) atomic_store(&r->cancelled, 1);
        }
    }
    for (srv_request *r = s->q_head; r; r = r->next_in_queue) {
        if (r->peer_gone && now - r->last_peek > 0.2) {
            r->last_peek = now;
            pthread_mutex_lock(&r->mu);
            int gone = r->peer_gone(r);
            pthread_mutex_unlock(&r->mu);
            if (gone) atomic_store(&r->cancelled, 1);
        }
    }
    /* Queued requests that are cancelled (or past their deadline) leave the
     * queue without taking a slot. */
    srv_request **link = &s->q_head, *prev = NULL;
    while (*link) {
        srv_request *r = *link;
        int cancelled = atomic_load(&r->cancelled) || s->cancel_all;
        int late = r->deadline > 0 && now > r->deadline;
        if (!cancelled && !late) { prev = r; link = &r->next_in_queue; continue; }
        *link = r->next_in_queue;
        if (s->q_tail == r) s->q_tail = prev;
        s->n_queued--;
        int started = r->seqs[0].state != SEQ_QUEUED;
        if (!started) atomic_fetch_add(&s->n_running, 1);  /* finish_and_notify decrements it */
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < r->n_seqs; i++)
            if (r->seqs[i].state == SEQ_QUEUED)
                finish_and_notify(s, r, &r->seqs[i], cancelled ? FINISH_CANCELLED : FINISH_LENGTH, NULL);
        pthread_mutex_lock(&s->mu);
        link = &s->q_head;  /* the queue may have changed while unlocked */
        prev = NULL;
    }
}

/* Handle one sampled token of q (engine thread). */
static void seq_token(sched *s, srv_request *r, srv_seq *q, const engine_result *res, int was_prefill) {
    double now = pg_now();
    int32_t t = res->token;
    q->n_gen++;
    if (q->n_gen == 1) {
        q->t_first = now;
        metrics_ttft(s->metrics, now - r->t_submit);
    } else metrics_itl(s->metrics, now - q->t_last);
    q->t_last = now;
    q->pos = was_prefill ? q->n_prompt : q->pos + 1;  /* where t would be written */

    engine_result sub;
    if (!q->ignore_eos && q->n_gen <= q->min_tokens && s->be.is_eos(s->be.ctx, t)) {
        /* too early for EOS: take the most likely token that is not one */
        for (int k = 0; k < res->n_top; k++)
            if (!s->be.is_eos(s->be.ctx, res->top_ids[k])) {
                sub = *res;
                sub.token = t = res->top_ids[k];
                sub.logprob = res->top_logprobs[k];
                res = &sub;
                break;
            }
    }
    int eos = !q->ignore_eos && s->be.is_eos(s->be.ctx, t);
    finish_reason why = FINISH_NONE;
    pthread_mutex_lock(&r->mu);
    if (eos) why = FINISH_STOP;
    else {
        seq_record(q, res);
        char *piece = NULL;
        int n = s->be.detok_push(q->detok, t, &piece);
        int stopped = seq_emit(q, piece, n);
        free(piece);
        q->out_text_end[q->n_out - 1] = q->text.n;
        if (stopped) why = FINISH_STOP;
        else if (q->n_gen >= q->max_new || q->pos >= s->be.max_seq_len) why = FINISH_LENGTH;
    }
    int final = 0;
    if (why != FINISH_NONE) final = seq_finish(s, r, q, why, NULL);
    if (final) atomic_fetch_sub(&s->n_running, 1);
    if (r->notify) r->notify(r, final);
    pthread_mutex_unlock(&r->mu);
    if (final) {
        srv_request_release(r);
        return;
    }
    if (why != FINISH_NONE) return;
    q->next = t;
    q->state = SEQ_DECODE;
}

/* One engine step over all active sequences (engine thread, s->mu NOT held). */
static void run_step(sched *s) {
    int n = 0;
    pg_err err = {0};
    for (int slot = 0; slot < s->be.max_slots; slot++) {
        srv_seq *q = s->active[slot];
        if (!q) continue;
        srv_request *r = s->active_req[slot];
        if (q->state == SEQ_PREFILL && q->n_prefilled == 0) {
            if (seq_reset_sampler(s, q, &err)) {
                LOG_ERROR("request: sampler reset failed: %s", err.msg);
                finish_and_notify(s, r, q, FINISH_ERROR, err.msg);
                continue;
            }
        }
        engine_row *row = &s->rows[n];
        if (q->state == SEQ_PREFILL) {
            int left = q->n_prompt - q->n_prefilled;
            int chunk = left < s->prefill_chunk ? left : s->prefill_chunk;
            *row = (engine_row){.slot = slot, .tokens = q->prompt + q->n_prefilled, .n_tokens = chunk,
                                .pos = q->n_prefilled, .sample = chunk == left, .count_prompt = 1};
        } else {
            *row = (engine_row){.slot = slot, .tokens = &q->next, .n_tokens = 1, .pos = q->pos, .sample = 1};
        }
        s->row_slot[n++] = slot;
    }
    if (n == 0) return;
    double t0 = pg_now();
    int rc = s->be.step(s->be.ctx, s->rows, n, s->res, &err);
    double dt = pg_now() - t0;
    for (int i = 0; i < n; i++) {
        int slot = s->row_slot[i];
        srv_seq *q = s->active[slot];
        srv_request *r = s->active_req[slot];
        if (rc) {
            LOG_ERROR("engine step failed: %s", err.msg);
            finish_and_notify(s, r, q, FINISH_ERROR, err.msg);
            continue;
        }
        int was_prefill = q->state == SEQ_PREFILL;
        if (was_prefill) q->n_prefilled += s->rows[i].n_tokens;
        else q->decode_step_s += dt;
        if (s->rows[i].sample) seq_token(s, r, q, &s->res[i], was_prefill);
    }
}

static void *engine_thread(void *arg) {
    sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        double now = pg_now();
        reap(s, now);
        /* cancelled or late active sequences are finished here, between steps */
        for (int slot = 0; slot < s->be.max_slots; slot++) {
            srv_seq *q = s->active[slot];
            if (!q) continue;
            srv_request *r = s->active_req[slot];
            int cancelled = atomic_load(&r->cancelled) || s->cancel_all;
            int late = r->deadline > 0 && now > r->deadline;
            if (!cancelled && !late) continue;
            pthread_mutex_unlock(&s->mu);
            finish_and_notify(s, r, q, cancelled ? FINISH_CANCELLED : FINISH_LENGTH, NULL);
            pthread_mutex_lock(&s->mu);
        }
        admit(s);
        int busy = 0;
        for (int slot = 0; slot < s->be.max_slots; slot++) busy |= s->active[slot] != NULL;
        if (!busy) {
            s->idle = !s->q_head;
            if (s->idle) pthread_cond_broadcast(&s->idle_cv);
            if (s->quit && !s->q_head) break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;  /* wake every 100 ms to watch queued clients */
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            continue;
        }
        s->idle = 0;
        pthread_mutex_unlock(&s->mu);
        run_step(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int sched_create(const sched_backend *be, int max_queue, int prefill_chunk, srv_metrics *metrics, sched **out,
                 pg_err *err) {
    *out = NULL;
    if (be->max_slots < 1 || be->max_seq_len < 2)
        return pg_errf(err, PG_EINVAL, "scheduler: engine has %d slots of %d tokens", be->max_slots, be->max_seq_len);
    sched *s = pg_xcalloc(1, sizeof *s);
    s->be = *be;
    s->metrics = metrics;
    s->max_queue = max_queue;
    s->prefill_chunk = prefill_chunk > 0 ? prefill_chunk : 512;
    s->accepting = 1;
    s->idle = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    size_t n = (size_t)be->max_slots;
    s->active = pg_xcalloc(n, sizeof *s->active);
    s->active_req = pg_xcalloc(n, sizeof *s->active_req);
    s->rows = pg_xcalloc(n, sizeof *s->rows);
    s->res = pg_xcalloc(n, sizeof *s->res);
    s->row_slot = pg_xcalloc(n, sizeof *s->row_slot);
    if (pthread_create(&s->thread, NULL, engine_thread, s)) {
        sched_free(s);
        return pg_errf(err, PG_EINTERNAL, "scheduler: cannot start the engine thread");
    }
    s->started = 1;
    *out = s;
    return PG_OK;
}

int sched_submit(sched *s, srv_request *r, pg_err *err) {
    pthread_mutex_lock(&s->mu);
    if (!s->accepting) {
        pthread_mutex_unlock(&s->mu);
        return pg_errf(err, PG_ECANCELLED, "the server is shutting down");
    }
    if (s->n_queued >= s->max_queue) {
        int q = s->n_queued;
        pthread_mutex_unlock(&s->mu);
        return pg_errf(err, PG_EBUSY, "the queue is full (%d requests waiting; --max-queue %d)", q, s->max_queue);
    }
    for (int i = 0; i < r->n_seqs; i++) r->seqs[i].state = SEQ_QUEUED;
    srv_request_retain(r);  /* the scheduler's reference */
    r->next_in_queue = NULL;
    if (s->q_tail) s->q_tail->next_in_queue = r;
    else s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
    s->idle = 0;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return PG_OK;
}

void sched_wake(sched *s) {
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_counts(sched *s, int *running, int *queued) {
    pthread_mutex_lock(&s->mu);
    *running = atomic_load(&s->n_running);
    *queued = s->n_queued;
    pthread_mutex_unlock(&s->mu);
}

/* Wait (s->mu held) until the engine thread is idle or `until` passes. */
static int wait_idle(sched *s, double until) {
    while (!(s->idle && !s->q_head)) {
        double left = until - pg_now();
        if (left <= 0) return 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = (long)((left < 0.1 ? left : 0.1) * 1e9);
        ts.tv_nsec += ns;
        while (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&s->idle_cv, &s->mu, &ts);
    }
    return 1;
}

void sched_drain(sched *s, double grace_s) {
    pthread_mutex_lock(&s->mu);
    s->accepting = 0;
    pthread_cond_signal(&s->cv);
    if (!wait_idle(s, pg_now() + grace_s)) {
        LOG_WARN("shutdown: grace period of %.1f s over; cancelling %d running and %d queued requests", grace_s,
                 atomic_load(&s->n_running), s->n_queued);
        s->cancel_all = 1;
        pthread_cond_signal(&s->cv);
        wait_idle(s, pg_now() + 3600);
    }
    pthread_mutex_unlock(&s->mu);
}

void sched_free(sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->accepting = 0;
        s->cancel_all = 1;
        s->quit = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->mu);
    free(s->active);
    free(s->active_req);
    free(s->rows);
    free(s->res);
    free(s->row_slot);
    free(s);
}
