/*
 * kernels/threadpool.h — a small persistent pthread pool for the CPU engine.
 *
 * pool_run(p, fn, arg, n_chunks) calls fn(arg, c, tid) exactly once for
 * every chunk c in [0, n_chunks) and returns when all calls have finished;
 * tid in [0, pool_size) names the thread running the call (0 = the caller),
 * for per-thread scratch buffers. The calling thread works too. Chunks are claimed dynamically (an atomic
 * counter), so a worker that the OS deschedules on a busy machine delays the
 * job by at most the chunk it holds instead of a fixed share of the work.
 * Which thread runs a chunk never changes what the chunk computes, so results
 * are deterministic.
 *
 * pool_run neither allocates nor takes a lock on its fast path: workers spin
 * on a job counter for a short while (decode issues a few hundred small jobs
 * per token, and a futex wake-up per job would cost more than the job), then
 * poll with sched_yield, then sleep on a condition variable, so an idle
 * engine uses no CPU.
 *
 * Thread safety: one thread (the engine thread) calls pool_run at a time;
 * pool_create/pool_free are not concurrent with pool_run. fn runs on several
 * threads at once and must only write what its chunk owns.
 */
#ifndef PG_THREADPOOL_H
#define PG_THREADPOOL_H

#include "../common/common.h"

typedef struct pg_pool pg_pool;
typedef void (*pool_fn)(void *arg, int chunk, int tid);

/* n_threads >= 1 (1 = no worker threads; pool_run runs every chunk itself). */
int  pool_create(int n_threads, pg_pool **out, pg_err *err);
void pool_free(pg_pool *p);
int  pool_size(const pg_pool *p);
void pool_run(pg_pool *p, pool_fn fn, void *arg, int n_chunks);

/* Split [0, total) into n near-equal contiguous parts; part i is [*lo, *hi).
 * align (>= 1): part boundaries are multiples of align (except total). */
void pool_split(int64_t total, int i, int n, int64_t align, int64_t *lo, int64_t *hi);

#endif
