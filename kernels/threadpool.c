/* kernels/threadpool.c — persistent spin-then-sleep worker pool (threadpool.h). */
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

typedef struct {
    pg_pool  *pool;
    int       index;
    pthread_t th;
} pool_worker;

struct pg_pool {
    int              n;           /* threads including the caller */
    pool_worker     *workers;     /* [n - 1] */
    /* current job */
    pool_fn          fn;
    void            *arg;
    atomic_uint      gen;         /* incremented once per job (and for shutdown) */
    atomic_int       done;        /* workers finished with the current job */
    atomic_int       n_sleeping;  /* workers blocked (or about to block) on cv */
    atomic_int       stop;
    pthread_mutex_t  mu;
    pthread_cond_t   cv;
};

static void *pool_main(void *argp) {
    pool_worker *w = argp;
    pg_pool *p = w->pool;
    unsigned seen = 0;   /* gen starts at 0; a job kicked before this thread runs is not missed */
    for (;;) {
        /* wait for a new generation: spin, then sleep */
        unsigned g;
        unsigned spins = 0;
        double t0 = 0.0, waited = 0.0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if ((++spins & 63) != 0) { CPU_RELAX(); continue; }
            if (t0 == 0.0) t0 = pg_now();
            waited = pg_now() - t0;
            if (waited < POOL_SPIN_S) continue;
            if (waited < POOL_SLEEP_S) { sched_yield(); continue; }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            /* re-check under the lock: pool_run bumps gen before it reads
             * n_sleeping, so either it sees us sleeping or we see the bump */
            while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
            t0 = 0.0;
        }
        seen = g;
        if (atomic_load(&p->stop)) return NULL;
        p->fn(p->arg, w->index, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void pool_kick(pg_pool *p) {
    atomic_fetch_add(&p->gen, 1);
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
    atomic_init(&p->gen, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->workers = pg_xcalloc((size_t)n_threads, sizeof *p->workers);
    for (int i = 1; i < n_threads; i++) {
        pool_worker *w = &p->workers[i - 1];
        w->pool = p;
        w->index = i;
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
    pool_kick(p);
    for (int i = 1; i < p->n; i++) pthread_join(p->workers[i - 1].th, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->workers);
    free(p);
}

int pool_size(const pg_pool *p) { return p->n; }

void pool_run(pg_pool *p, pool_fn fn, void *arg) {
    if (p->n == 1) { fn(arg, 0, 1); return; }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    pool_kick(p);   /* seq_cst: publishes fn/arg/done before workers see gen */
    fn(arg, 0, p->n);
    /* workers finish at about the same time; yield now and then in case one
     * was descheduled (a loaded machine) so we do not burn its core */
    unsigned spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < p->n - 1)
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
