/*
 * kernels/threadpool.h — a small persistent pthread pool for the CPU engine.
 *
 * pool_run(p, fn, arg) runs fn(arg, i, n) once for every i in [0, n) where
 * n = pool_size(p); the calling thread runs i = 0 and n - 1 workers run the
 * rest. It returns when all have finished. fn splits its work by i (e.g.
 * matmul rows [i*R/n, (i+1)*R/n)). pool_run neither allocates nor takes a lock
 * on its fast path: workers spin on a generation counter for a short while
 * (decode issues a few hundred small jobs per token, and a futex wake-up per
 * job would cost more than the job) and then sleep on a condition variable,
 * so an idle engine uses no CPU.
 *
 * Thread safety: one thread (the engine thread) calls pool_run at a time;
 * pool_create/pool_free are not concurrent with pool_run.
 */
#ifndef PG_THREADPOOL_H
#define PG_THREADPOOL_H

#include "../common/common.h"

typedef struct pg_pool pg_pool;
typedef void (*pool_fn)(void *arg, int i, int n);

/* n_threads >= 1 (1 = no worker threads; pool_run calls fn(arg, 0, 1)). */
int  pool_create(int n_threads, pg_pool **out, pg_err *err);
void pool_free(pg_pool *p);
int  pool_size(const pg_pool *p);
void pool_run(pg_pool *p, pool_fn fn, void *arg);

/* Split [0, total) into n near-equal contiguous parts; part i is [*lo, *hi).
 * align (>= 1): part boundaries are multiples of align (except total). */
void pool_split(int64_t total, int i, int n, int64_t align, int64_t *lo, int64_t *hi);

#endif
