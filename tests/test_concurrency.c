/* test_concurrency.c: the loop thread's work while the engine thread computes.
 *
 * One request's prompt goes through the engine chunk by chunk while this
 * thread creates sequences longer than any reserved so far on a second model
 * (which makes the backend grow its scratch) and loads another shard, and a
 * shard load queued on the engine thread behind each pass is handed back here
 * and freed; the logits must be the same as a run with nothing else going
 * on. Loads through the engine also give a shard that computes as one loaded
 * here, a bad file's message and a tokenizer, each taken once. Run in the
 * ThreadSanitizer build (scripts/test) it also proves the two threads share
 * nothing unguarded: creating a sequence used to replace the backend's
 * scratch while kernels were reading it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../native/error.h"
#include "../native/exo.h"
#include "check.h"

#define N_STEPS 24
#define STEP_TOKENS 16 /* per step: long enough that the loop thread's work lands inside it */

/* Waits for the next completion, which must be job want; returns its status
 * (its message in err). */
static int next_completion(uint64_t want, char err[256])
{
    for (int spins = 0; spins < 200000; spins++) {
        uint64_t id;
        int status;
        if (exo_engine_next_completion(&id, &status, err, 256) == 1) {
            CHECK_MSG(id == want, "job %llu completed while waiting for %llu", (unsigned long long)id,
                      (unsigned long long)want);
            return status;
        }
        usleep(50);
    }
    CHECK_MSG(0, "job %llu never completed", (unsigned long long)want);
    return -1;
}

static int wait_completion(uint64_t want)
{
    char err[256];
    int status = next_completion(want, err);
    CHECK_MSG(status == 0, "job %llu: status %d %s", (unsigned long long)want, status, err);
    return status;
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
            /* And a load on the engine thread, queued behind the pass: the
             * shard it builds there is freed here. */
            CHECK(exo_engine_submit_load(other, 0, -1, -1, -1, 1000 + (uint64_t)step) == 0);
        }
        wait_completion((uint64_t)step + 1);
        if (disturb) {
            wait_completion(1000 + (uint64_t)step);
            exo_shard *s4 = NULL;
            CHECK(exo_engine_take_shard(1000 + (uint64_t)step, &s4) == 0 && s4);
            exo_shard_free(s4);
        }
        memcpy(logits_out + (size_t)step * info.n_vocab, logits, sizeof(float) * info.n_vocab);
    }
    CHECK(exo_engine_wait_idle() == 0);
    free(logits);
    exo_seq_free(q);
    exo_shard_free(s);
    exo_shard_free(s2);
}

/* Loads through the engine: a shard equal to one loaded here, a bad path's
 * message, a tokenizer; each object taken once. path: a model with a tokenizer. */
static void engine_loads(const char *path)
{
    char err[256];
    CHECK(exo_engine_submit_load(path, 0, -1, -1, -1, 1) == 0);
    CHECK(exo_engine_submit_load("/nonexistent/model.gguf", 0, -1, -1, -1, 2) == 0);
    CHECK(exo_engine_submit_load_tokenizer(path, 3) == 0);
    CHECK(exo_engine_submit_load(NULL, 0, -1, -1, -1, 4) == EXO_EINVAL);

    wait_completion(1);
    exo_shard *loaded = NULL, *here = NULL, *none = NULL;
    CHECK(exo_engine_take_shard(1, &loaded) == 0 && loaded);
    CHECK(exo_engine_take_shard(1, &none) == EXO_ESTATE && !none); /* taken already */
    CHECK(exo_shard_load(path, 0, -1, -1, -1, &here) == 0);
    exo_shard_info info;
    exo_shard_get_info(here, &info);
    float *a = malloc(sizeof(float) * info.n_vocab), *b = malloc(sizeof(float) * info.n_vocab);
    int32_t prompt[4] = {1, 2, 3, 4};
    exo_seq *qa = NULL, *qb = NULL;
    CHECK(exo_seq_new(loaded, 16, &qa) == 0 && exo_seq_new(here, 16, &qb) == 0);
    CHECK(exo_shard_forward(loaded, qa, prompt, NULL, 4, 0, a) == 0);
    CHECK(exo_shard_forward(here, qb, prompt, NULL, 4, 0, b) == 0);
    CHECK_MSG(memcmp(a, b, sizeof(float) * info.n_vocab) == 0, "a shard loaded on the engine thread computes otherwise");

    CHECK(next_completion(2, err) == EXO_EIO);
    CHECK_MSG(strstr(err, "/nonexistent/model.gguf") != NULL, "the failed load says: %s", err);
    CHECK(exo_engine_take_shard(2, &none) == EXO_ESTATE && !none);

    wait_completion(3);
    exo_tokenizer *tok = NULL;
    CHECK(exo_engine_take_shard(3, &none) == EXO_ESTATE && !none); /* a tokenizer is not a shard */
    CHECK(exo_engine_take_tokenizer(3, &tok) == 0 && tok);
    CHECK(tok && exo_tokenizer_n_vocab(tok) == info.n_vocab);
    exo_tokenizer_free(tok);
    free(a);
    free(b);
    exo_seq_free(qa);
    exo_seq_free(qb);
    exo_shard_free(loaded);
    exo_shard_free(here);
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
    char chat[4096];
    snprintf(chat, sizeof chat, "%.*s-chat.gguf", (int)strlen(tiny) - 5, tiny);
    engine_loads(chat);
    decode(tiny, other, busy, 1);
    decode(tiny, other, quiet, 0);
    CHECK_MSG(memcmp(quiet, busy, n * sizeof(float)) == 0, "logits decoded beside loads differ from quiet ones");
    free(quiet);
    free(busy);
    CHECK_DONE();
}
