/* test_engine_coalesce.c: single forward jobs of one shard share a pass.
 *
 * The engine thread takes every JOB_FORWARD queued for the same shard with
 * another sequence alongside the one it pops and runs them as one
 * exo_shard_forward_batch pass (engine.c). Here the engine is held busy (a
 * job's completion callback waits on this thread) while jobs of several
 * sequences pile up, one sequence twice; then each job must complete exactly
 * once, with results bitwise equal to running the same steps alone, and the
 * jobs with callbacks must report one shared pass. This runs on a first
 * shard (token ids in, hidden states out) and a last one (hidden states in,
 * logits out, one job with every row's logits). A round with bad jobs (a
 * full context, a token id outside the vocabulary, a sequence of another
 * shard) must fail only those, each with its own message, and leave the bad
 * token's sequence where it was. In the ThreadSanitizer build it also checks
 * the callbacks' hand-off. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../native/engine.h"
#include "../native/exo.h"
#include "check.h"

#define N_SEQS 6
#define N_JOBS 7

/* One job of a round: which sequence, how many rows, every row's logits. */
typedef struct {
    int seq, n_tokens, all_logits;
} job_spec;

/* Sequence 0 twice (its second step must wait for the first), one job with
 * every row's logits, one of two rows. */
static const job_spec jobs[N_JOBS] = {{0, 1, 0}, {1, 1, 0}, {2, 3, 1}, {0, 1, 0}, {3, 1, 0}, {4, 2, 0}, {5, 1, 0}};

/* What a callback job reports, written on the engine thread. */
typedef struct {
    pthread_mutex_t lock;
    int calls, status;
    char err[256];
    uint64_t compute_ns;
} cb_result;

static void on_done(void *ctx, int status, const char *err, uint64_t compute_ns)
{
    cb_result *r = ctx;
    pthread_mutex_lock(&r->lock);
    r->calls++;
    r->status = status;
    snprintf(r->err, sizeof r->err, "%s", err);
    r->compute_ns = compute_ns;
    pthread_mutex_unlock(&r->lock);
}

/* The gate: the first job's callback holds the engine thread until this
 * thread has queued the round. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int entered, released;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void on_gate(void *ctx, int status, const char *err, uint64_t compute_ns)
{
    (void)ctx, (void)err, (void)compute_ns;
    CHECK(status == 0);
    pthread_mutex_lock(&gate.lock);
    gate.entered = 1;
    pthread_cond_broadcast(&gate.cond);
    while (!gate.released) pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
}

/* Queues a one-row pass on q whose completion blocks the engine thread, and
 * returns once it does. */
static void hold_engine(exo_shard *s, exo_seq *q, const int32_t *token, const float *hidden, float *out)
{
    pthread_mutex_lock(&gate.lock);
    gate.entered = gate.released = 0;
    pthread_mutex_unlock(&gate.lock);
    CHECK(exo__engine_submit_cb(s, q, token, hidden, 1, 0, out, on_gate, NULL) == 0);
    pthread_mutex_lock(&gate.lock);
    while (!gate.entered) pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
}

static void release_engine(void)
{
    pthread_mutex_lock(&gate.lock);
    gate.released = 1;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
}

/* Deterministic inputs: job j's token ids or hidden rows. */
static void fill_input(const exo_shard_info *info, int j, int n, int32_t *tokens, float *hidden)
{
    for (int r = 0; r < n; r++) {
        tokens[r] = (j * 37 + r * 11 + 5) % info->n_vocab;
        for (int e = 0; e < info->n_embd; e++)
            hidden[(size_t)r * info->n_embd + e] = (float)(((j * 131 + r * 17 + e * 7) % 97) - 48) / 48.0f;
    }
}

/* Fresh sequences of s, each given a prompt of 3 + i rows synchronously. */
static void open_seqs(exo_shard *s, const exo_shard_info *info, exo_seq **seqs)
{
    int32_t tokens[16];
    float *hidden = malloc(sizeof(float) * 16 * info->n_embd);
    float *out = malloc(sizeof(float) * 16 * (info->is_last ? info->n_vocab : info->n_embd));
    for (int i = 0; i < N_SEQS; i++) {
        CHECK(exo_seq_new(s, 64, &seqs[i]) == 0);
        fill_input(info, 100 + i, 3 + i, tokens, hidden);
        CHECK_MSG(exo_shard_forward(s, seqs[i], info->is_first ? tokens : NULL, info->is_first ? NULL : hidden, 3 + i,
                                    0, out) == 0, "%s", exo_last_error());
    }
    free(hidden);
    free(out);
}

static size_t out_floats(const exo_shard_info *info, const job_spec *j)
{
    if (!info->is_last) return (size_t)j->n_tokens * info->n_embd;
    return (size_t)(j->all_logits ? j->n_tokens : 1) * info->n_vocab;
}

/* One round on shard s: the jobs alone, then queued behind a held engine
 * (even jobs through the completion queue, odd ones with callbacks); the
 * outputs must match bitwise and each job complete once. */
static void coalesced_round(exo_shard *s, const char *what)
{
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    int32_t tokens[N_JOBS][4];
    float *hidden[N_JOBS], *solo[N_JOBS], *queued[N_JOBS];
    const int32_t *tok[N_JOBS]; /* each job's input: token ids or hidden rows, by the shard's place */
    const float *hid[N_JOBS];
    for (int j = 0; j < N_JOBS; j++) {
        hidden[j] = malloc(sizeof(float) * 4 * info.n_embd);
        fill_input(&info, j, jobs[j].n_tokens, tokens[j], hidden[j]);
        tok[j] = info.is_first ? tokens[j] : NULL;
        hid[j] = info.is_first ? NULL : hidden[j];
        solo[j] = calloc(out_floats(&info, &jobs[j]), sizeof(float));
        queued[j] = calloc(out_floats(&info, &jobs[j]), sizeof(float));
    }

    exo_seq *seqs[N_SEQS];
    open_seqs(s, &info, seqs);
    for (int j = 0; j < N_JOBS; j++)
        CHECK_MSG(exo_shard_forward(s, seqs[jobs[j].seq], tok[j], hid[j], jobs[j].n_tokens, jobs[j].all_logits,
                                    solo[j]) == 0, "%s: solo job %d: %s", what, j, exo_last_error());
    for (int i = 0; i < N_SEQS; i++) exo_seq_free(seqs[i]);

    open_seqs(s, &info, seqs);
    exo_seq *holder = NULL;
    CHECK(exo_seq_new(s, 4, &holder) == 0);
    float *holder_out = malloc(sizeof(float) * (info.is_last ? info.n_vocab : info.n_embd));
    hold_engine(s, holder, tok[0], hid[0], holder_out);
    cb_result results[N_JOBS];
    for (int j = 0; j < N_JOBS; j++) {
        memset(&results[j], 0, sizeof results[j]);
        pthread_mutex_init(&results[j].lock, NULL);
        exo_seq *q = seqs[jobs[j].seq];
        int rc = j % 2 == 0 ? exo_engine_submit(s, q, tok[j], hid[j], jobs[j].n_tokens, jobs[j].all_logits,
                                                 queued[j], 500 + (uint64_t)j)
                            : exo__engine_submit_cb(s, q, tok[j], hid[j], jobs[j].n_tokens,
                                                    jobs[j].all_logits, queued[j], on_done, &results[j]);
        CHECK_MSG(rc == 0, "%s: submit %d: %s", what, j, exo_last_error());
    }
    release_engine();
    CHECK(exo_engine_wait_idle() == 0);

    int seen[N_JOBS] = {0};
    uint64_t id;
    int status;
    char err[256];
    while (exo_engine_next_completion(&id, &status, err, sizeof err) == 1) {
        int j = (int)(id - 500);
        CHECK_MSG(j >= 0 && j < N_JOBS && j % 2 == 0, "%s: a completion for job id %llu", what,
                  (unsigned long long)id);
        if (j < 0 || j >= N_JOBS) continue;
        seen[j]++;
        CHECK_MSG(status == 0, "%s: job %d: %s", what, j, err);
    }
    uint64_t pass_ns = 0;
    for (int j = 0; j < N_JOBS; j++) {
        if (j % 2 == 1) {
            pthread_mutex_lock(&results[j].lock);
            seen[j] = results[j].calls;
            CHECK_MSG(results[j].status == 0, "%s: job %d: %s", what, j, results[j].err);
            /* Jobs 1, 5 (and not 3: sequence 0 is taken by job 0) share the
             * first pass, so they report the same pass time. */
            if (j == 1) pass_ns = results[j].compute_ns;
            if (j == 5) CHECK_MSG(results[j].compute_ns == pass_ns, "%s: jobs 1 and 5 ran in different passes", what);
            pthread_mutex_unlock(&results[j].lock);
            pthread_mutex_destroy(&results[j].lock);
        }
        CHECK_MSG(seen[j] == 1, "%s: job %d completed %d times", what, j, seen[j]);
        CHECK_MSG(memcmp(solo[j], queued[j], out_floats(&info, &jobs[j]) * sizeof(float)) == 0,
                  "%s: job %d differs from its solo run", what, j);
    }

    for (int i = 0; i < N_SEQS; i++) exo_seq_free(seqs[i]);
    exo_seq_free(holder);
    free(holder_out);
    for (int j = 0; j < N_JOBS; j++) {
        free(hidden[j]);
        free(solo[j]);
        free(queued[j]);
    }
}

/* Good jobs beside bad ones on a whole model: only the bad ones fail, each
 * with its own message, and the bad token's sequence has not moved. */
static void bad_round(exo_shard *s, exo_shard *other)
{
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    float *hidden = malloc(sizeof(float) * 16 * info.n_embd);
    int32_t tokens[N_SEQS][4] = {{0}}; /* one token each is filled; the "full" sequence takes two */
    float *solo[N_SEQS], *queued[N_SEQS];
    for (int i = 0; i < N_SEQS; i++) {
        fill_input(&info, 200 + i, 1, tokens[i], hidden);
        solo[i] = calloc(info.n_vocab, sizeof(float));
        queued[i] = calloc(info.n_vocab, sizeof(float));
    }
    exo_seq *seqs[N_SEQS];
    open_seqs(s, &info, seqs);
    for (int i = 0; i < N_SEQS; i++)
        CHECK_MSG(exo_shard_forward(s, seqs[i], tokens[i], NULL, 1, 0, solo[i]) == 0, "%s", exo_last_error());
    for (int i = 0; i < N_SEQS; i++) exo_seq_free(seqs[i]);

    open_seqs(s, &info, seqs);
    exo_seq *full = NULL, *foreign = NULL, *holder = NULL;
    CHECK(exo_seq_new(s, 2, &full) == 0);
    float *scratch = malloc(sizeof(float) * 2 * info.n_vocab);
    CHECK(exo_shard_forward(s, full, tokens[0], NULL, 2, 0, scratch) == 0); /* now full */
    CHECK(exo_seq_new(other, 16, &foreign) == 0);
    CHECK(exo_seq_new(s, 4, &holder) == 0);
    int32_t bad_token[1] = {info.n_vocab + 7};
    cb_result bad[3];
    for (int k = 0; k < 3; k++) {
        memset(&bad[k], 0, sizeof bad[k]);
        pthread_mutex_init(&bad[k].lock, NULL);
    }

    hold_engine(s, holder, tokens[0], NULL, scratch);
    /* Good jobs on sequences 0-2 and 4-5; sequence 3 gets the bad token. */
    for (int i = 0; i < N_SEQS; i++) {
        if (i == 3) continue;
        CHECK(exo_engine_submit(s, seqs[i], tokens[i], NULL, 1, 0, queued[i], 700 + (uint64_t)i) == 0);
        if (i == 1) CHECK(exo__engine_submit_cb(s, full, tokens[i], NULL, 1, 0, scratch, on_done, &bad[0]) == 0);
        if (i == 2) CHECK(exo__engine_submit_cb(s, seqs[3], bad_token, NULL, 1, 0, scratch, on_done, &bad[1]) == 0);
        if (i == 4) CHECK(exo__engine_submit_cb(s, foreign, tokens[i], NULL, 1, 0, scratch, on_done, &bad[2]) == 0);
    }
    release_engine();
    CHECK(exo_engine_wait_idle() == 0);

    int seen[N_SEQS] = {0};
    uint64_t id;
    int status;
    char err[256];
    while (exo_engine_next_completion(&id, &status, err, sizeof err) == 1) {
        int i = (int)(id - 700);
        CHECK_MSG(i >= 0 && i < N_SEQS && i != 3, "bad round: a completion for job id %llu", (unsigned long long)id);
        if (i < 0 || i >= N_SEQS) continue;
        seen[i]++;
        CHECK_MSG(status == 0, "bad round: good job on sequence %d failed: %s", i, err);
    }
    for (int i = 0; i < N_SEQS; i++) {
        if (i == 3) continue;
        CHECK_MSG(seen[i] == 1, "bad round: sequence %d's job completed %d times", i, seen[i]);
        CHECK_MSG(memcmp(solo[i], queued[i], sizeof(float) * info.n_vocab) == 0,
                  "bad round: sequence %d differs from its solo run", i);
    }
    const char *want[3] = {"context full", "outside the vocabulary", "another shard"};
    for (int k = 0; k < 3; k++) {
        pthread_mutex_lock(&bad[k].lock);
        CHECK_MSG(bad[k].calls == 1, "bad job %d completed %d times", k, bad[k].calls);
        CHECK_MSG(bad[k].status != 0 && strstr(bad[k].err, want[k]), "bad job %d: status %d, message '%s'", k,
                  bad[k].status, bad[k].err);
        pthread_mutex_unlock(&bad[k].lock);
        pthread_mutex_destroy(&bad[k].lock);
    }
    /* The bad token moved nothing: sequence 3's good step now equals its solo one. */
    CHECK_MSG(exo_shard_forward(s, seqs[3], tokens[3], NULL, 1, 0, queued[3]) == 0, "%s", exo_last_error());
    CHECK_MSG(memcmp(solo[3], queued[3], sizeof(float) * info.n_vocab) == 0,
              "a failed job moved its sequence");

    for (int i = 0; i < N_SEQS; i++) {
        exo_seq_free(seqs[i]);
        free(solo[i]);
        free(queued[i]);
    }
    exo_seq_free(full);
    exo_seq_free(foreign);
    exo_seq_free(holder);
    free(scratch);
    free(hidden);
}

int main(void)
{
    const char *tiny = getenv("EXO_TINY_MODEL");
    if (!tiny) {
        fprintf(stderr, "EXO_TINY_MODEL is not set (ctest sets it)\n");
        return 1;
    }
    exo_shard *whole = NULL, *first = NULL, *last = NULL, *other = NULL;
    CHECK_MSG(exo_shard_load(tiny, 0, -1, -1, -1, &whole) == 0, "%s", exo_last_error());
    CHECK_MSG(exo_shard_load(tiny, 0, 1, -1, -1, &first) == 0, "%s", exo_last_error());
    CHECK_MSG(exo_shard_load(tiny, 1, -1, -1, -1, &last) == 0, "%s", exo_last_error());
    CHECK_MSG(exo_shard_load(tiny, 0, -1, -1, -1, &other) == 0, "%s", exo_last_error());
    if (!whole || !first || !last || !other) return 1;
    coalesced_round(whole, "whole model");
    coalesced_round(first, "first shard");
    coalesced_round(last, "last shard");
    bad_round(whole, other);
    exo_shard_free(whole);
    exo_shard_free(first);
    exo_shard_free(last);
    exo_shard_free(other);
    CHECK_DONE();
}
