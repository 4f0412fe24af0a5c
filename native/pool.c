/* pool.c: worker threads and a low-latency parallel-for.
 *
 * Each parallel-for publishes a job and bumps a generation counter. Workers
 * spin on the counter for a short while (a decode step issues the next loop
 * within microseconds) and only then sleep on a condition variable, so steady
 * decoding never pays for a wake-up. Chunks are claimed from both ends of the
 * loop (pool_claim), so a slow core does not hold the others back. When the caller
 * knows no work is coming soon (the engine's queue ran dry), it parks the
 * pool: workers then sleep at once instead of spinning, which matters when
 * several nodes of a cluster share one machine's cores. */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Spins before a worker sleeps: long enough to bridge the gap between two
 * loops of one decode step, short enough not to burn a core when idle. */
#define POOL_SPIN_ITERATIONS 200000
/* After this many pauses a waiting thread yields its core each round: when
 * the machine is oversubscribed the thread we wait for may need it. */
#define POOL_YIELD_AFTER 2000

typedef struct pool_job {
    exo_pool_fn fn;
    void *ctx;
    int64_t n;
    int64_t grain;
    _Atomic uint64_t span;    /* unclaimed items [front, back): front | back << 32 */
    _Atomic int remaining;    /* threads that have not finished this job */
} pool_job;

typedef struct pool_worker {
    exo_pool *pool;
    pthread_t thread;
    int index;
} pool_worker;

struct exo_pool {
    int n_threads;
    pool_worker *workers;        /* n_threads - 1 */
    pool_job job;
    _Atomic uint64_t generation; /* bumped once per job */
    _Atomic int stop;
    _Atomic int parked;          /* no work expected soon: sleep instead of spinning */
    _Atomic int sleepers;
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    pthread_mutex_t submit_lock; /* one parallel-for at a time */
};

/* Claims the next chunk: the caller (thread 0) from the front of what is
 * left, the workers from the back, each 1/n_threads of what is left (never
 * under the grain). So with two threads each one's chunks lie next to each
 * other in memory (weights stream on without restarting; with more, the
 * workers' claims interleave at the back), the first chunks are long, and the
 * shrinking last ones let the threads finish together when one runs slower
 * (on a VM one core often does). front and back share one atomic word, whose
 * cache line moves between the cores on every claim: halving what is left
 * makes few claims (a share of 1/(2 n_threads) made twice as many and measured
 * 3% slower in decode). */
static bool pool_claim(pool_job *job, int n_threads, int thread, int64_t *begin, int64_t *end)
{
    uint64_t span = atomic_load_explicit(&job->span, memory_order_relaxed), next;
    int64_t front, back, size;
    do {
        front = (int64_t)(span & 0xffffffffu);
        back = (int64_t)(span >> 32);
        if (front >= back) return false;
        int64_t left = back - front;
        size = (left + n_threads - 1) / n_threads;
        if (size < job->grain) size = job->grain;
        if (size > left) size = left;
        next = thread == 0 ? (uint64_t)(front + size) | ((uint64_t)back << 32)
                           : (uint64_t)front | ((uint64_t)(back - size) << 32);
    } while (!atomic_compare_exchange_weak_explicit(&job->span, &span, next, memory_order_relaxed,
                                                    memory_order_relaxed));
    *begin = thread == 0 ? front : back - size;
    *end = thread == 0 ? front + size : back;
    return true;
}

static void pool_run_chunks(exo_pool *p, int thread)
{
    pool_job *job = &p->job;
    int64_t begin, end;
    while (pool_claim(job, p->n_threads, thread, &begin, &end)) job->fn(job->ctx, begin, end, thread);
    atomic_fetch_sub_explicit(&job->remaining, 1, memory_order_release);
}

static void *pool_worker_main(void *arg)
{
    pool_worker *w = arg;
    exo_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            if (++spins < POOL_SPIN_ITERATIONS && !atomic_load_explicit(&p->parked, memory_order_relaxed)) {
                if (spins > POOL_YIELD_AFTER)
                    sched_yield();
                else
                    cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->sleep_lock);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->sleep_lock);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->sleep_lock);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = gen;
        pool_run_chunks(p, w->index);
    }
}

int exo__pool_new(int n_threads, exo_pool **out)
{
    *out = NULL;
    if (n_threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cores > 0 ? (int)cores : 1;
    }
    if (n_threads > 256) return exo__error_set(EXO_EINVAL, "thread count %d is over 256", n_threads);
    exo_pool *p = calloc(1, sizeof *p);
    if (!p) return exo__error_set(EXO_ENOMEM, "out of memory creating the thread pool");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->sleep_lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_mutex_init(&p->submit_lock, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return exo__error_set(EXO_ENOMEM, "out of memory creating the thread pool");
    }
    for (int i = 1; i < n_threads; i++) {
        pool_worker *w = &p->workers[i - 1];
        w->pool = p;
        w->index = i;
        if (pthread_create(&w->thread, NULL, pool_worker_main, w) != 0) {
            p->n_threads = i; /* the ones started are joined by free */
            exo__pool_free(p);
            return exo__error_set(EXO_EIO, "could not start worker thread %d", i);
        }
    }
    *out = p;
    return EXO_OK;
}

void exo__pool_free(exo_pool *p)
{
    if (!p) return;
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->sleep_lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->sleep_lock);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i - 1].thread, NULL);
    pthread_mutex_destroy(&p->sleep_lock);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->submit_lock);
    free(p->workers);
    free(p);
}

int exo__pool_threads(const exo_pool *p)
{
    return p->n_threads;
}

/* A loop of more items than one half of the claim word holds runs as several. */
#define POOL_MAX_ITEMS ((int64_t)UINT32_MAX)

typedef struct pool_slice {
    exo_pool_fn fn;
    void *ctx;
    int64_t offset;
} pool_slice;

static void pool_run_slice(void *ctx, int64_t begin, int64_t end, int thread)
{
    pool_slice *s = ctx;
    s->fn(s->ctx, s->offset + begin, s->offset + end, thread);
}

void exo__pool_for(exo_pool *p, int64_t n, int64_t grain, exo_pool_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (n > POOL_MAX_ITEMS) {
        for (int64_t offset = 0; offset < n; offset += POOL_MAX_ITEMS) {
            pool_slice slice = {fn, ctx, offset};
            exo__pool_for(p, n - offset < POOL_MAX_ITEMS ? n - offset : POOL_MAX_ITEMS, grain, pool_run_slice, &slice);
        }
        return;
    }
    /* Small loops run inline: waking workers would cost more than the work. */
    if (p->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->submit_lock);
    pool_job *job = &p->job;
    job->fn = fn;
    job->ctx = ctx;
    job->n = n;
    job->grain = grain;
    atomic_store_explicit(&job->span, (uint64_t)n << 32, memory_order_relaxed);
    atomic_store_explicit(&job->remaining, p->n_threads, memory_order_relaxed);
    atomic_store_explicit(&p->parked, 0, memory_order_relaxed);
    /* seq_cst pairs with the sleeper count check below (Dekker-style): either
     * the worker sees the new generation or we see it sleeping. */
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->sleep_lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->sleep_lock);
    }
    pool_run_chunks(p, 0);
    for (int spins = 0; atomic_load_explicit(&job->remaining, memory_order_acquire) > 0; spins++) {
        if (spins > POOL_YIELD_AFTER)
            sched_yield();
        else
            cpu_relax();
    }
    pthread_mutex_unlock(&p->submit_lock);
}

void exo__pool_park(exo_pool *p)
{
    atomic_store_explicit(&p->parked, 1, memory_order_relaxed);
}

static exo_pool *global_pool;
static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;

exo_pool *exo__pool_global(void)
{
    pthread_mutex_lock(&global_lock);
    if (!global_pool) {
        const char *env = getenv("EXO_THREADS");
        int n = env ? atoi(env) : 0;
        if (exo__pool_new(n, &global_pool) != EXO_OK) exo__pool_new(1, &global_pool);
    }
    exo_pool *p = global_pool;
    pthread_mutex_unlock(&global_lock);
    return p;
}

/* Once a backend holds the global pool (exo__pool_global_pin), replacing it
 * would free a pool that passes use: the thread count is then fixed. */
static int global_pinned;

void exo__pool_global_pin(void)
{
    pthread_mutex_lock(&global_lock);
    global_pinned = 1;
    pthread_mutex_unlock(&global_lock);
}

int exo__pool_global_set_threads(int n_threads)
{
    pthread_mutex_lock(&global_lock);
    int pinned = global_pinned, current = global_pool ? exo__pool_threads(global_pool) : -1;
    pthread_mutex_unlock(&global_lock);
    if (pinned) {
        if (n_threads == current) return EXO_OK;
        return exo__error_set(EXO_ESTATE, "the thread count is set before the first model loads (it is %d)", current);
    }
    exo_pool *fresh;
    int rc = exo__pool_new(n_threads, &fresh);
    if (rc) return rc;
    pthread_mutex_lock(&global_lock);
    exo_pool *old = global_pool;
    global_pool = fresh;
    pthread_mutex_unlock(&global_lock);
    exo__pool_free(old);
    return EXO_OK;
}
