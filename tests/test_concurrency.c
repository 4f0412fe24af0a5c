/* test_concurrency.c: the loop thread's work while the engine thread computes.
 *
 * A node loads models and opens sequences on its loop thread while earlier
 * requests run on the engine thread. This does exactly that: one request's
 * prompt goes through the engine chunk by chunk while this thread creates
 * sequences longer than any reserved so far on a second model (which makes
 * the backend grow its scratch) and loads another shard, then checks the
 * logits are the same as a run with nothing else going on. Run in the ThreadSanitizer build
 * (scripts/test) it also proves the two threads share nothing unguarded:
 * creating a sequence used to replace the backend's scratch while kernels
 * were reading it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../native/error.h"
#include "../native/exo.h"
#include "check.h"

#define N_STEPS 24
#define STEP_TOKENS 16 /* per step: long enough that the loop thread's work lands inside it */

static int wait_completion(uint64_t want)
{
    for (int spins = 0; spins < 200000; spins++) {
        uint64_t id;
        int status;
        char err[256];
        if (exo_engine_next_completion(&id, &status, err, sizeof err) == 1) {
            CHECK_MSG(id == want && status == 0, "job %llu: status %d %s", (unsigned long long)id, status, err);
            return status;
        }
        usleep(50);
    }
    CHECK_MSG(0, "job %llu never completed", (unsigned long long)want);
    return -1;
}

/* N_STEPS forward passes of STEP_TOKENS tokens through the engine, keeping
 * the last logits of each; while each runs, `disturb` (when set) opens a
 * sequence longer than any before on a second model (the backend must find
 * more scratch), then loads and frees a third shard. */
static void decode(const char *path, const char *other, float *logits_out, int disturb)
{
    exo_shard *s = NULL, *s2 = NULL;
    CHECK_MSG(exo_shard_load(path, 0, -1, -1, -1, &s) == 0, "%s", exo_last_error());
    CHECK_MSG(exo_shard_load(other, 0, -1, -1, -1, &s2) == 0, "%s", exo_last_error());
    if (!s || !s2) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    exo_seq *q = NULL;
    CHECK(exo_seq_new(s, N_STEPS * STEP_TOKENS, &q) == 0);
    float *logits = malloc(sizeof(float) * info.n_vocab);
    int32_t tokens[STEP_TOKENS];
    for (int step = 0; step < N_STEPS; step++) {
        for (int i = 0; i < STEP_TOKENS; i++) tokens[i] = (step * 31 + i * 7) % 500;
        CHECK(exo_engine_submit(s, q, tokens, NULL, STEP_TOKENS, 0, logits, (uint64_t)step + 1) == 0);
        if (disturb) {
            exo_seq *long_seq = NULL;
            CHECK(exo_seq_new(s2, 1024 + 512 * step, &long_seq) == 0);
            exo_seq_free(long_seq);
            exo_shard *s3 = NULL;
            CHECK_MSG(exo_shard_load(other, 0, -1, -1, -1, &s3) == 0, "%s", exo_last_error());
            exo_shard_free(s3);
        }
        wait_completion((uint64_t)step + 1);
        memcpy(logits_out + (size_t)step * info.n_vocab, logits, sizeof(float) * info.n_vocab);
    }
    CHECK(exo_engine_wait_idle() == 0);
    free(logits);
    exo_seq_free(q);
    exo_shard_free(s);
    exo_shard_free(s2);
}

int main(void)
{
    const char *tiny = getenv("EXO_TINY_MODEL");
    if (!tiny) {
        fprintf(stderr, "EXO_TINY_MODEL is not set (ctest sets it)\n");
        return 1;
    }
    char other[4096];
    snprintf(other, sizeof other, "%.*s-q8_0.gguf", (int)strlen(tiny) - 5, tiny);
    exo_shard *probe = NULL;
    CHECK_MSG(exo_shard_load(tiny, 0, -1, -1, -1, &probe) == 0, "%s", exo_last_error());
    if (!probe) return 1;
    exo_shard_info info;
    exo_shard_get_info(probe, &info);
    exo_shard_free(probe);
    size_t n = (size_t)N_STEPS * info.n_vocab;
    float *quiet = calloc(n, sizeof(float)), *busy = calloc(n, sizeof(float));
    decode(tiny, other, busy, 1);
    decode(tiny, other, quiet, 0);
    CHECK_MSG(memcmp(quiet, busy, n * sizeof(float)) == 0, "logits decoded beside loads differ from quiet ones");
    free(quiet);
    free(busy);
    CHECK_DONE();
}
