/* pool.h: the worker thread pool and its parallel-for (internal).
 *
 * A decode step runs a few hundred small parallel loops (one per matrix), so
 * the pool is built for latency: workers spin briefly on a generation counter
 * before sleeping, and the calling thread takes a share of the work itself.
 * One parallel-for runs at a time; callers are serialised by a mutex. */
#ifndef EXO_POOL_H
#define EXO_POOL_H

#include <stdint.h>

/* Runs items [begin, end) of a loop. `thread` is 0..n_threads-1, for picking
 * per-thread scratch memory. */
typedef void (*exo_pool_fn)(void *ctx, int64_t begin, int64_t end, int thread);

typedef struct exo_pool exo_pool;

/* n_threads counts the caller: n_threads - 1 workers are started. 0 means the
 * number of online cores. */
int exo__pool_new(int n_threads, exo_pool **out);
void exo__pool_free(exo_pool *p);
int exo__pool_threads(const exo_pool *p);

/* Splits [0, n) into chunks of at least `grain` items and runs fn over them on
 * all threads, returning when every chunk is done. */
void exo__pool_for(exo_pool *p, int64_t n, int64_t grain, exo_pool_fn fn, void *ctx);

/* Tells the workers no loop is coming soon: they sleep rather than spin until
 * the next exo__pool_for wakes them. */
void exo__pool_park(exo_pool *p);

/* The process-wide pool (created on first use with EXO_THREADS or all cores). */
exo_pool *exo__pool_global(void);
/* Replaces the process-wide pool with one of n_threads (0 = cores). Not safe
 * while work runs; call before loading models. */
/* Fixes the global pool: exo__pool_global_set_threads refuses a change after. */
void exo__pool_global_pin(void);
int exo__pool_global_set_threads(int n_threads);

#endif
