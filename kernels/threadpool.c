/* kernels/threadpool.c — persistent worker pool with dynamically claimed
 * chunks (threadpool.h).
 *
 * Job protocol. A job is numbered j (32 bits, from p->job). The claim word
 * p->next holds (j << 32) | next unclaimed chunk. pool_run writes fn, arg and
 * n_chunks, resets p->completed, then publishes next = (j << 32) | 0 and
 * bumps p->job to wake the workers. A thread claims chunk c of job j by a CAS
 * of next from (j, c) to (j, c + 1); a thread that read a stale job (it slept
 * through one) fails the CAS and discards what it read. pool_run returns once
 * completed == n_chunks, so fn/arg are rewritten only when no chunk of the
 * previous job is outstanding. fn/arg/n_chunks are stored with release and
 * loaded with acquire: a worker that sees a new job's field also sees the
 * closed claim word stored before it, so its CAS on a stale word fails.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* A waiting worker spins (pause) for POOL_SPIN_S, then keeps polling with
 * sched_yield (so a loaded machine can run other work on its core) until
 * POOL_SLEEP_S, then sleeps on the condition variable. The gap between the
 * jobs of one decode step is far below POOL_SLEEP_S. */
#define POOL_SPIN_S  50e-6
#define POOL_SLEEP_S 2e-3
#define POOL_CLOSED  0xffffffffu   /* chunk index of a job being set up */

typedef struct {
    pg_pool  *pool;
    int       tid;
    pthread_t th;
} pool_worker;

struct pg_pool {
    int              n;           /* threads including the caller */
    pool_worker     *workers;     /* [n - 1], tid 1..n-1 */
    /* current job (atomics: a late worker may read them while they change) */
    _Atomic(pool_fn) fn;
    _Atomic(void *)  arg;
    atomic_int       n_chunks;
    atomic_uint_least64_t next;   /* (job << 32) | next chunk to claim */
    atomic_int       completed;   /* chunks of the current job finished */
    atomic_uint      job;         /* number of the current job; bumped to wake */
    atomic_int       n_sleeping;  /* workers blocked (or about to block) on cv */
    atomic_int       stop;
    pthread_mutex_t  mu;
    pthread_cond_t   cv;
};

/* Claim and run chunks of job j until none is left; returns chunks run. */
static int work(pg_pool *p, unsigned j, int tid) {
    int ran = 0;
    for (;;) {
        uint64_t cur = atomic_load_explicit(&p->next, memory_order_acquire);
        if ((unsigned)(cur >> 32) != j) return ran;           /* a newer job */
        uint32_t c = (uint32_t)cur;
        int n = atomic_load_explicit(&p->n_chunks, memory_order_acquire);
        if (c >= (uint32_t)n) return ran;   /* all claimed, or the job is not open yet */
        pool_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
        void *arg = atomic_load_explicit(&p->arg, memory_order_acquire);
        if (!atomic_compare_exchange_weak_explicit(&p->next, &cur, cur + 1,
                                                   memory_order_acq_rel, memory_order_acquire))
            continue;   /* someone else took it (or the job changed): re-read */
        fn(arg, (int)c, tid);
        atomic_fetch_add_explicit(&p->completed, 1, memory_order_release);
        ran++;
    }
}

static void *pool_main(void *argp) {
    pool_worker *w = argp;
    pg_pool *p = w->pool;
    unsigned seen = 0;   /* jobs start at 1; one published before we run is not missed */
    for (;;) {
        unsigned j;
        unsigned spins = 0;
        double t0 = 0.0;
        while ((j = atomic_load_explicit(&p->job, memory_order_acquire)) == seen) {
            if ((++spins & 63) != 0) { CPU_RELAX(); continue; }
            if (t0 == 0.0) t0 = pg_now();
            double waited = pg_now() - t0;
            if (waited < POOL_SPIN_S) continue;
            if (waited < POOL_SLEEP_S) { sched_yield(); continue; }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            /* re-check under the lock: pool_run bumps job before it reads
             * n_sleeping, so either it sees us sleeping or we see the bump */
            while (atomic_load(&p->job) == seen) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            t0 = 0.0;
        }
        seen = j;
        if (atomic_load(&p->stop)) return NULL;
        work(p, j, w->tid);
    }
}

static void pool_wake(pg_pool *p) {
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

int pool_create(int n_threads, pg_pool **out, pg_err *err) {
    if (n_threads < 1 || n_threads > 1024)
        return pg_errf(err, PG_EINVAL, "thread pool: n_threads %d out of range [1, 1024]", n_threads);
    pg_pool *p = pg_xcalloc(1, sizeof *p);
    p->n = n_threads;
    atomic_init(&p->fn, NULL);
    atomic_init(&p->arg, NULL);
    atomic_init(&p->n_chunks, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->completed, 0);
    atomic_init(&p->job, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->workers = pg_xcalloc((size_t)n_threads, sizeof *p->workers);
    for (int i = 1; i < n_threads; i++) {
        pool_worker *w = &p->workers[i - 1];
        w->pool = p;
        w->tid = i;
        int rc = pthread_create(&w->th, NULL, pool_main, w);
        if (rc != 0) {
            p->n = i;   /* only threads 1..i-1 exist */
            pool_free(p);
            return pg_errf(err, PG_ENOMEM, "thread pool: pthread_create failed: %s", strerror(rc));
        }
    }
    *out = p;
    return PG_OK;
}

void pool_free(pg_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->job, 1);
    pool_wake(p);
    for (int i = 1; i < p->n; i++) pthread_join(p->workers[i - 1].th, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->workers);
    free(p);
}

int pool_size(const pg_pool *p) { return p->n; }

void pool_run(pg_pool *p, pool_fn fn, void *arg, int n_chunks) {
    if (n_chunks <= 0) return;
    if (p->n == 1 || n_chunks == 1) {
        for (int c = 0; c < n_chunks; c++) fn(arg, c, 0);
        return;
    }
    unsigned j = atomic_load_explicit(&p->job, memory_order_relaxed) + 1;
    /* close the claim word first: a worker still holding a claim word of the
     * previous job now fails its CAS, so it cannot pair a stale chunk index
     * with the fields written below */
    atomic_store(&p->next, ((uint64_t)j << 32) | POOL_CLOSED);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->arg, arg, memory_order_release);
    atomic_store_explicit(&p->n_chunks, n_chunks, memory_order_release);
    atomic_store_explicit(&p->completed, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, (uint64_t)j << 32, memory_order_release);
    atomic_store(&p->job, j);   /* seq_cst: ordered before the n_sleeping read */
    pool_wake(p);
    work(p, j, 0);
    /* the remaining chunks are running on workers; they finish soon unless a
     * worker was descheduled, so yield now and then instead of burning a core */
    unsigned spins = 0;
    while (atomic_load_explicit(&p->completed, memory_order_acquire) < n_chunks)
        if ((++spins & 1023) == 0) sched_yield();
        else CPU_RELAX();
}

void pool_split(int64_t total, int i, int n, int64_t align, int64_t *lo, int64_t *hi) {
    if (align < 1) align = 1;
    int64_t units = (total + align - 1) / align;
    int64_t a = units * i / n, b = units * (i + 1) / n;
    *lo = a * align < total ? a * align : total;
    *hi = b * align < total ? b * align : total;
}
