/* test_kv_share.c: sharing a sequence's prefix while a pass runs on it.
 *
 * exo_seq_share_prefix runs on the loop thread while the engine thread may
 * be running a pass on the source sequence (a server's new request starting
 * from a running request's system prompt). Here passes of the source are
 * queued on the engine thread (exo_engine_submit), and meanwhile this thread
 * shares the source's first positions into new sequences (on a block
 * boundary and inside the block the passes are writing), truncates one of
 * them inside a shared block (copy on write), and reads positions and the
 * pool's counts. Afterwards every sequence's next logits must be bitwise
 * those of computing the same tokens alone in a fresh shard, and freeing
 * them all returns every block. The ThreadSanitizer build runs it to check
 * that the two threads share block tables, holder counts and positions only
 * under the pool's lock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../native/exo.h"
#include "check.h"

#define PROMPT 100 /* the source's positions before its passes: block 0 full, block 1 partly */
#define STEPS 24   /* decode passes queued on the source */
#define N_SHARES 4
#define ROUNDS 200

static const int share_at[N_SHARES] = {64, 100, 30, 100};

static int32_t token_at(int i, int vocab)
{
    return (int32_t)((i * 37 + 11) % vocab);
}

/* The logits of the last of ids[0..n) followed by next, computed alone. */
static void solo_logits(const char *path, const int32_t *ids, int n, int32_t next, float *out)
{
    exo_shard *s = NULL;
    exo_seq *q = NULL;
    CHECK_MSG(exo_shard_load(path, 0, -1, -1, -1, &s) == 0, "%s", exo_last_error());
    CHECK(s && exo_seq_new(s, 512, &q) == 0);
    if (!q) return;
    if (n > 0) CHECK_MSG(exo_shard_forward(s, q, ids, NULL, n, 0, out) == 0, "%s", exo_last_error());
    CHECK_MSG(exo_shard_forward(s, q, &next, NULL, 1, 0, out) == 0, "%s", exo_last_error());
    exo_seq_free(q);
    exo_shard_free(s);
}

static int same_bits(const float *a, const float *b, int n)
{
    return memcmp(a, b, sizeof(float) * (size_t)n) == 0;
}

int main(void)
{
    const char *tiny = getenv("EXO_TINY_MODEL");
    if (!tiny) {
        fprintf(stderr, "EXO_TINY_MODEL is not set (ctest sets it)\n");
        return 1;
    }
    exo_shard *s = NULL;
    CHECK_MSG(exo_shard_load(tiny, 0, -1, -1, -1, &s) == 0, "%s", exo_last_error());
    if (!s) return 1;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    const int V = info.n_vocab;
    CHECK(exo_shard_set_kv_tokens(s, 16 * 64) == 0);

    int32_t ids[PROMPT + STEPS];
    for (int i = 0; i < PROMPT + STEPS; i++) ids[i] = token_at(i, V);
    float *out = malloc(sizeof(float) * (size_t)V * (STEPS + 1));
    exo_seq *src = NULL, *dst[N_SHARES] = {0};
    CHECK(exo_seq_new(s, 512, &src) == 0);
    CHECK_MSG(exo_shard_forward(s, src, ids, NULL, PROMPT, 0, out) == 0, "%s", exo_last_error());

    /* The sharers exist first: making a sequence takes the forward lock
     * (the backend's attention scratch), which would order this thread
     * after the passes and hide a race from ThreadSanitizer. */
    for (int k = 0; k < N_SHARES; k++) CHECK(exo_seq_new(s, 512, &dst[k]) == 0);
    /* The source's decode steps queued on the engine thread... */
    for (int j = 0; j < STEPS; j++)
        CHECK_MSG(exo_engine_submit(s, src, &ids[PROMPT + j], NULL, 1, 0, out + (size_t)V * (j + 1), 900 + (uint64_t)j) ==
                      0,
                  "submit %d: %s", j, exo_last_error());
    /* ...while this thread shares its prefix, reads it, lets go and shares
     * again (many times, so that some of it overlaps the passes). */
    for (int round = 0; round < ROUNDS; round++)
        for (int k = 0; k < N_SHARES; k++) {
            CHECK(exo_seq_truncate(dst[k], 0) == 0);
            CHECK_MSG(exo_seq_share_prefix(dst[k], src, share_at[k]) == 0, "share %d: %s", k, exo_last_error());
            CHECK(exo_seq_pos(src) >= PROMPT);
            exo_kv_info kv;
            CHECK(exo_shard_kv_info(s, &kv) == 0 && kv.shared >= 1);
        }
    /* dst[3] moves back inside block 0, which src and the others hold. */
    CHECK_MSG(exo_seq_truncate(dst[3], 50) == 0, "%s", exo_last_error());
    CHECK(exo_engine_wait_idle() == 0);
    uint64_t id;
    int status, done = 0;
    char err[256];
    while (exo_engine_next_completion(&id, &status, err, sizeof err) == 1) {
        CHECK_MSG(status == 0, "job %llu: %s", (unsigned long long)id, err);
        done++;
    }
    CHECK(done == STEPS && exo_seq_pos(src) == PROMPT + STEPS);

    /* The source's last step and each sharer's next token are their solo results. */
    float *expect = malloc(sizeof(float) * (size_t)V);
    solo_logits(tiny, ids, PROMPT + STEPS - 1, ids[PROMPT + STEPS - 1], expect);
    CHECK_MSG(same_bits(out + (size_t)V * STEPS, expect, V), "the source's steps changed while shared");
    for (int k = 0; k < N_SHARES; k++) {
        int n = k == 3 ? 50 : share_at[k];
        int32_t next = token_at(1000 + k, V);
        CHECK_MSG(exo_shard_forward(s, dst[k], &next, NULL, 1, 0, out) == 0, "%s", exo_last_error());
        solo_logits(tiny, ids, n, next, expect);
        CHECK_MSG(same_bits(out, expect, V), "sharer %d (%d positions) differs from its solo run", k, n);
    }

    exo_seq_free(src);
    for (int k = 0; k < N_SHARES; k++) exo_seq_free(dst[k]);
    exo_kv_info kv;
    CHECK(exo_shard_kv_info(s, &kv) == 0 && kv.free == kv.blocks && kv.shared == 0);
    free(expect);
    free(out);
    exo_shard_free(s);
    CHECK_DONE();
}
