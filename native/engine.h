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

#endif
