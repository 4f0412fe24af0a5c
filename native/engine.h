/* engine.h: submitting forward passes from C (internal).
 *
 * The wire transport runs shards for peers without a trip through Lua: it
 * submits a job with a C function that the engine thread calls when the job
 * is done (it must only hand the result to its own thread, e.g. with
 * uv_async_send, and return at once). */
#ifndef EXO_ENGINE_H
#define EXO_ENGINE_H

#include "exo.h"

/* compute_ns: how long the forward pass itself ran on the engine thread. */
typedef void (*exo_engine_done_fn)(void *ctx, int status, const char *err, uint64_t compute_ns);

int exo__engine_submit_cb(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                         int all_logits, float *out, exo_engine_done_fn done, void *done_ctx);

/* Called on the engine thread once a pass has reported each of its jobs
 * (their done callbacks have all returned): a caller that sends a pass's
 * results together waits for this rather than for each job. */
typedef void (*exo_engine_pass_end_fn)(void *ctx);

typedef struct exo_engine_cb_job {
    exo_shard *shard;
    exo_seq *seq;
    const int32_t *tokens;
    const float *hidden;
    int n_tokens, all_logits;
    float *out;
    exo_engine_done_fn done;
    void *done_ctx;
} exo_engine_cb_job;

/* Queues n jobs at once, all or none (EAGAIN when the queue has no room for
 * all of them): the engine thread finds them side by side, so those of one
 * shard run in one pass (a batch frame's parts). pass_end(pass_end_ctx), when
 * given, follows the done callbacks of every pass that ran one of them, once
 * a pass. */
int exo__engine_submit_cb_many(const exo_engine_cb_job *jobs, int n, exo_engine_pass_end_fn pass_end,
                               void *pass_end_ctx);

#endif
