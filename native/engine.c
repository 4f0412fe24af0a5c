/* engine.c: the engine thread and the completion queue Lua drains.
 *
 * The loop thread never computes: it submits forward passes and loads
 * (a shard, with its weight packing; a tokenizer) here and goes back to
 * serving sockets. One engine thread runs submitted jobs in order (driving
 * the compute pool); each finished job is appended to a completion queue and
 * an eventfd is signalled, which luv polls. Lua then drains the queue through
 * exo_engine_next_completion. No C code ever calls into Lua. A finished load
 * leaves its object in a list, under the same lock as the queue, until the
 * loop thread takes it (exo_engine_take_shard/_tokenizer): the engine thread
 * builds it and never touches it again, so ownership passes with the lock.
 * Loads share the queue with passes rather than a thread of their own: both
 * drive the whole compute pool (packing is a parallel loop), so running them
 * side by side would only slow both, and a pass queued behind a load waits
 * for it. C callers (the wire transport) may instead ask for a C function to
 * be called on the engine thread when their job is done (engine.h). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"
#include "error.h"
#include "exo.h"
#include "pool.h"

/* Jobs in flight at once; submit fails with EAGAIN beyond this rather than
 * growing without bound. */
#define ENGINE_QUEUE_CAP 1024

enum job_kind { JOB_FORWARD, JOB_FORWARD_BATCH, JOB_LOAD_SHARD, JOB_LOAD_TOKENIZER };

typedef struct engine_job {
    int kind;
    /* JOB_FORWARD */
    exo_shard *shard;
    exo_seq *seq;
    const int32_t *tokens;
    const float *hidden;
    int n_tokens;
    int all_logits;
    float *out;
    /* JOB_FORWARD_BATCH: exo_shard_forward_batch's arrays (the caller's) */
    int n_seqs;
    exo_seq *const *seqs;
    const int32_t *const *seq_tokens;
    const float *const *seq_hidden;
    const int *seq_n_tokens, *seq_n_logits;
    float *const *seq_out;
    /* loads: what exo_shard_load / exo_tokenizer_load take (path is a copy the
     * engine thread frees) */
    char *path;
    int layer_start, layer_end, is_first, is_last;
    uint64_t id;
    exo_engine_done_fn done; /* when set, called instead of queueing a completion */
    void *done_ctx;
    exo_engine_pass_end_fn pass_end; /* when set, called once the pass's done callbacks have run */
    void *pass_end_ctx;
    int status;
    char err[256];
} engine_job;

/* A loaded object waiting for the loop thread to take it. */
typedef struct loaded_item {
    uint64_t id;
    int kind;
    void *object; /* exo_shard * or exo_tokenizer * */
    struct loaded_item *next;
} loaded_item;

/* A bounded ring of jobs. */
typedef struct job_ring {
    engine_job items[ENGINE_QUEUE_CAP];
    size_t head, count;
} job_ring;

static struct {
    pthread_once_t once;
    int init_rc;
    int fd;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t has_work;
    pthread_cond_t idle;   /* signalled when the queue is empty and no job runs */
    int running;           /* a job is being computed */
    int started;
    job_ring pending;
    job_ring done;
    loaded_item *loaded;   /* finished loads not taken yet */
} engine = {.once = PTHREAD_ONCE_INIT, .fd = -1};

static void ring_push(job_ring *r, const engine_job *j)
{
    r->items[(r->head + r->count) % ENGINE_QUEUE_CAP] = *j;
    r->count++;
}

static engine_job ring_pop(job_ring *r)
{
    engine_job j = r->items[r->head];
    r->head = (r->head + 1) % ENGINE_QUEUE_CAP;
    r->count--;
    return j;
}

/* Runs a load job on the engine thread; on success *item holds the object
 * for the loop thread to take. */
static int run_load(engine_job *job, loaded_item **item)
{
    *item = calloc(1, sizeof **item);
    int rc;
    if (!*item) {
        rc = exo__error_set(EXO_ENOMEM, "out of memory");
    } else if (job->kind == JOB_LOAD_SHARD) {
        exo_shard *s = NULL;
        rc = exo_shard_load(job->path, job->layer_start, job->layer_end, job->is_first, job->is_last, &s);
        (*item)->object = s;
    } else {
        exo_tokenizer *t = NULL;
        rc = exo_tokenizer_load(job->path, &t);
        (*item)->object = t;
    }
    free(job->path);
    job->path = NULL;
    if (rc) {
        free(*item);
        *item = NULL;
        return rc;
    }
    (*item)->id = job->id;
    (*item)->kind = job->kind;
    return EXO_OK;
}

/* ---- coalescing single forward jobs ---------------------------------------
 *
 * Callers that submit one sequence per job (the wire transport: each route's
 * tensor frame; a one-node caller stepping sequences one by one) would make
 * every weight pass serve one row. So when the engine thread takes a
 * JOB_FORWARD it also takes the other JOB_FORWARDs queued for the same shard,
 * each of another sequence, and runs them all as one exo_shard_forward_batch
 * pass. The model is batch-invariant, so each job's results are bit-identical
 * to its solo pass; each job still completes on its own, with its own status. */

/* Jobs one coalesced pass takes at most (and its rows stay within the
 * shard's max_batch). */
#define COALESCE_MAX 64

/* The engine thread's group and exo_shard_forward_batch's arrays for it; only
 * that thread touches them. */
static struct {
    engine_job jobs[COALESCE_MAX];
    exo_seq *seqs[COALESCE_MAX];
    const int32_t *tokens[COALESCE_MAX];
    const float *hidden[COALESCE_MAX];
    int n_tokens[COALESCE_MAX], n_logits[COALESCE_MAX];
    float *out[COALESCE_MAX];
} group;

/* With the lock held and group.jobs[0] the JOB_FORWARD just popped, moves
 * into the group the pending JOB_FORWARDs that can share its pass; returns
 * the group's size. The scan stops at the first job of another kind (a load
 * or a batch job keeps its place relative to every forward) and at the first
 * that does not fit, and skips a sequence already taken, so each sequence's
 * jobs still run in the order they were submitted. */
static int coalesce_locked(int max_rows)
{
    exo_shard *s = group.jobs[0].shard;
    int n = 1, rows = group.jobs[0].n_tokens;
    if (rows < 1 || rows >= max_rows) return 1;
    job_ring *r = &engine.pending;
    size_t kept = 0, i = 0;
    for (; i < r->count; i++) {
        engine_job *j = &r->items[(r->head + i) % ENGINE_QUEUE_CAP];
        if (j->kind != JOB_FORWARD || n == COALESCE_MAX) break;
        int take = j->shard == s;
        for (int k = 0; take && k < n; k++) take = group.jobs[k].seq != j->seq;
        if (take && (j->n_tokens < 1 || rows + j->n_tokens > max_rows)) break;
        if (take) {
            group.jobs[n++] = *j;
            rows += j->n_tokens;
        } else {
            r->items[(r->head + kept++) % ENGINE_QUEUE_CAP] = *j; /* kept <= i: moving towards the head is safe */
        }
    }
    for (; i < r->count; i++) r->items[(r->head + kept++) % ENGINE_QUEUE_CAP] = r->items[(r->head + i) % ENGINE_QUEUE_CAP];
    r->count = kept;
    return n;
}

static int run_forward(engine_job *j)
{
    return exo_shard_forward(j->shard, j->seq, j->tokens, j->hidden, j->n_tokens, j->all_logits, j->out);
}

/* Runs the group's n jobs as one pass. Should that fail (one job's bad
 * input: a full context, a token id out of range), nothing has moved (the
 * batch is all or nothing), so each job runs alone and only the bad one
 * fails, with its own message. */
static void run_group(int n, int is_last)
{
    if (n > 1) {
        for (int i = 0; i < n; i++) {
            engine_job *j = &group.jobs[i];
            group.seqs[i] = j->seq;
            group.tokens[i] = j->tokens;
            group.hidden[i] = j->hidden;
            group.n_tokens[i] = j->n_tokens;
            group.n_logits[i] = is_last && !j->all_logits ? 1 : j->n_tokens;
            group.out[i] = j->out;
        }
        int rc = exo_shard_forward_batch(group.jobs[0].shard, n, group.seqs, group.tokens, group.hidden,
                                         group.n_tokens, group.n_logits, group.out);
        if (rc == EXO_OK) {
            for (int i = 0; i < n; i++) group.jobs[i].status = EXO_OK;
            return;
        }
    }
    for (int i = 0; i < n; i++) {
        engine_job *j = &group.jobs[i];
        j->status = run_forward(j);
        j->err[0] = 0;
        if (j->status) snprintf(j->err, sizeof j->err, "%s", exo_last_error());
    }
}

static void *engine_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&engine.lock);
        while (engine.pending.count == 0) pthread_cond_wait(&engine.has_work, &engine.lock);
        group.jobs[0] = ring_pop(&engine.pending);
        int n = 1, is_last = 0;
        if (group.jobs[0].kind == JOB_FORWARD) {
            exo_shard_info info;
            /* A NULL shard is refused at submit; get_info only reads fields
             * fixed at load. */
            if (exo_shard_get_info(group.jobs[0].shard, &info) == EXO_OK) {
                n = coalesce_locked(info.max_batch);
                is_last = info.is_last;
            }
        }
        engine.running = 1;
        pthread_mutex_unlock(&engine.lock);

        engine_job *job = &group.jobs[0];
        double started = exo_now();
        loaded_item *item = NULL;
        job->err[0] = 0;
        if (job->kind == JOB_FORWARD) {
            run_group(n, is_last);
        } else {
            if (job->kind == JOB_FORWARD_BATCH)
                job->status = exo_shard_forward_batch(job->shard, job->n_seqs, job->seqs, job->seq_tokens,
                                                      job->seq_hidden, job->seq_n_tokens, job->seq_n_logits,
                                                      job->seq_out);
            else
                job->status = run_load(job, &item);
            if (job->status) snprintf(job->err, sizeof job->err, "%s", exo_last_error());
        }
        /* Each job of a shared pass is reported the whole pass's time: it is
         * what that job waited on. */
        uint64_t compute_ns = (uint64_t)((exo_now() - started) * 1e9);
        /* Nothing queued: let the workers sleep now rather than spin through
         * the gap until the next token (other processes may want the cores). */
        pthread_mutex_lock(&engine.lock);
        int idle = engine.pending.count == 0;
        pthread_mutex_unlock(&engine.lock);
        if (idle) exo__pool_park(exo__pool_global());
        int queued = 0;
        for (int i = 0; i < n; i++) {
            engine_job *j = &group.jobs[i];
            if (j->done) j->done(j->done_ctx, j->status, j->err, compute_ns);
            else queued = 1;
        }
        for (int i = 0; i < n; i++) { /* each caller's pass_end once, after all of the pass's callbacks */
            engine_job *j = &group.jobs[i];
            int first = j->pass_end != NULL;
            for (int k = 0; first && k < i; k++)
                first = group.jobs[k].pass_end != j->pass_end || group.jobs[k].pass_end_ctx != j->pass_end_ctx;
            if (first) j->pass_end(j->pass_end_ctx);
        }

        pthread_mutex_lock(&engine.lock);
        engine.running = 0;
        if (item) {
            item->next = engine.loaded;
            engine.loaded = item;
        }
        for (int i = 0; i < n; i++)
            if (!group.jobs[i].done) ring_push(&engine.done, &group.jobs[i]);
        if (engine.pending.count == 0) pthread_cond_broadcast(&engine.idle);
        pthread_mutex_unlock(&engine.lock);
        if (!queued) continue;
        uint64_t one = 1;
        ssize_t w = write(engine.fd, &one, sizeof one);
        (void)w; /* an eventfd write only fails at counter overflow, and readiness is already set then */
    }
    return NULL;
}

static void engine_start(void)
{
    pthread_mutex_init(&engine.lock, NULL);
    pthread_cond_init(&engine.has_work, NULL);
    pthread_cond_init(&engine.idle, NULL);
    engine.started = 1;
    engine.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (engine.fd < 0) {
        engine.init_rc = exo__error_set(EXO_EIO, "eventfd failed");
        return;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&engine.thread, &attr, engine_main, NULL) != 0)
        engine.init_rc = exo__error_set(EXO_EIO, "could not start the engine thread");
    pthread_attr_destroy(&attr);
}

static int engine_ready(void)
{
    pthread_once(&engine.once, engine_start);
    if (engine.init_rc) return exo__error_set(engine.init_rc, "the engine thread is not running");
    return EXO_OK;
}

int exo_engine_wait_idle(void)
{
    if (!engine.started) return EXO_OK;
    pthread_mutex_lock(&engine.lock);
    while (engine.pending.count > 0 || engine.running) pthread_cond_wait(&engine.idle, &engine.lock);
    pthread_mutex_unlock(&engine.lock);
    return EXO_OK;
}

int exo_engine_fd(void)
{
    if (engine_ready()) return -1;
    return engine.fd;
}

/* Queues n jobs under one lock, all or none. */
static int engine_push_many(const engine_job *jobs, int n)
{
    int rc = engine_ready();
    if (rc) return rc;
    pthread_mutex_lock(&engine.lock);
    if (engine.pending.count + engine.done.count + (size_t)n > ENGINE_QUEUE_CAP) {
        pthread_mutex_unlock(&engine.lock);
        return exo__error_set(EXO_EAGAIN, "engine queue full (%d jobs)", ENGINE_QUEUE_CAP);
    }
    for (int i = 0; i < n; i++) ring_push(&engine.pending, &jobs[i]);
    pthread_cond_signal(&engine.has_work);
    pthread_mutex_unlock(&engine.lock);
    return EXO_OK;
}

static int engine_push(const engine_job *job) { return engine_push_many(job, 1); }

static int push_forward(const engine_job *job)
{
    if (!job->shard || !job->seq || !job->out) return exo__error_set(EXO_EINVAL, "exo_engine_submit: NULL argument");
    return engine_push(job);
}

int exo_engine_submit(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out, uint64_t job_id)
{
    engine_job job = {.kind = JOB_FORWARD, .shard = s, .seq = q, .tokens = tokens, .hidden = hidden,
                      .n_tokens = n_tokens, .all_logits = all_logits, .out = out, .id = job_id};
    return push_forward(&job);
}

int exo_engine_submit_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out,
                            uint64_t job_id)
{
    /* Checked again on the engine thread (positions move meanwhile); here so
     * misuse fails at the call rather than in a completion. */
    if (!s || !seqs || !n_tokens || !out)
        return exo__error_set(EXO_EINVAL, "exo_engine_submit_batch: NULL argument");
    engine_job job = {.kind = JOB_FORWARD_BATCH, .shard = s, .n_seqs = n_seqs, .seqs = seqs, .seq_tokens = tokens,
                      .seq_hidden = hidden, .seq_n_tokens = n_tokens, .seq_n_logits = n_logits, .seq_out = out,
                      .id = job_id};
    return engine_push(&job);
}

int exo__engine_submit_cb(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                         int all_logits, float *out, exo_engine_done_fn done, void *done_ctx)
{
    engine_job job = {.kind = JOB_FORWARD, .shard = s, .seq = q, .tokens = tokens, .hidden = hidden,
                      .n_tokens = n_tokens, .all_logits = all_logits, .out = out, .done = done, .done_ctx = done_ctx};
    return push_forward(&job);
}

int exo__engine_submit_cb_many(const exo_engine_cb_job *jobs, int n, exo_engine_pass_end_fn pass_end,
                               void *pass_end_ctx)
{
    engine_job batch[COALESCE_MAX];
    if (!jobs || n < 1 || n > COALESCE_MAX)
        return exo__error_set(EXO_EINVAL, "exo__engine_submit_cb_many: 1 .. %d jobs, not %d", COALESCE_MAX, n);
    for (int i = 0; i < n; i++) {
        const exo_engine_cb_job *c = &jobs[i];
        if (!c->shard || !c->seq || !c->out) return exo__error_set(EXO_EINVAL, "exo_engine_submit: NULL argument");
        batch[i] = (engine_job){.kind = JOB_FORWARD, .shard = c->shard, .seq = c->seq, .tokens = c->tokens,
                                .hidden = c->hidden, .n_tokens = c->n_tokens, .all_logits = c->all_logits,
                                .out = c->out, .done = c->done, .done_ctx = c->done_ctx, .pass_end = pass_end,
                                .pass_end_ctx = pass_end_ctx};
    }
    return engine_push_many(batch, n);
}

int exo_engine_next_completion(uint64_t *job_id, int *status, char *err, size_t err_cap)
{
    if (engine_ready()) return 0;
    pthread_mutex_lock(&engine.lock);
    if (engine.done.count == 0) {
        /* Reset readiness while holding the lock: a completion pushed after
         * this point writes the fd again. */
        uint64_t v;
        ssize_t r = read(engine.fd, &v, sizeof v);
        (void)r;
        pthread_mutex_unlock(&engine.lock);
        return 0;
    }
    engine_job job = ring_pop(&engine.done);
    pthread_mutex_unlock(&engine.lock);
    if (job_id) *job_id = job.id;
    if (status) *status = job.status;
    if (err && err_cap) snprintf(err, err_cap, "%s", job.err);
    return 1;
}

/* Queues a load; the job owns a copy of path from here on. */
static int push_load(engine_job *job, const char *path, const char *what)
{
    if (!path) return exo__error_set(EXO_EINVAL, "%s: path is required", what);
    job->path = strdup(path);
    if (!job->path) return exo__error_set(EXO_ENOMEM, "out of memory");
    int rc = engine_push(job);
    if (rc) free(job->path);
    return rc;
}

int exo_engine_submit_load(const char *path, int layer_start, int layer_end, int is_first, int is_last,
                           uint64_t job_id)
{
    engine_job job = {.kind = JOB_LOAD_SHARD, .layer_start = layer_start, .layer_end = layer_end,
                      .is_first = is_first, .is_last = is_last, .id = job_id};
    return push_load(&job, path, "exo_engine_submit_load");
}

int exo_engine_submit_load_tokenizer(const char *gguf_path, uint64_t job_id)
{
    engine_job job = {.kind = JOB_LOAD_TOKENIZER, .id = job_id};
    return push_load(&job, gguf_path, "exo_engine_submit_load_tokenizer");
}

/* Unlinks the object job_id's load of kind left into *out; EXO_ESTATE, naming
 * what was asked for, when there is none. */
static int take_loaded(uint64_t job_id, int kind, const char *what, void **out)
{
    *out = NULL;
    int rc = engine_ready();
    if (rc) return rc;
    pthread_mutex_lock(&engine.lock);
    for (loaded_item **at = &engine.loaded; *at; at = &(*at)->next) {
        if ((*at)->id == job_id && (*at)->kind == kind) {
            loaded_item *item = *at;
            *at = item->next;
            *out = item->object;
            free(item);
            break;
        }
    }
    pthread_mutex_unlock(&engine.lock);
    if (!*out) return exo__error_set(EXO_ESTATE, "job %llu left no loaded %s", (unsigned long long)job_id, what);
    return EXO_OK;
}

int exo_engine_take_shard(uint64_t job_id, exo_shard **out)
{
    if (!out) return exo__error_set(EXO_EINVAL, "exo_engine_take_shard: NULL argument");
    void *object;
    int rc = take_loaded(job_id, JOB_LOAD_SHARD, "shard", &object);
    *out = object;
    return rc;
}

int exo_engine_take_tokenizer(uint64_t job_id, exo_tokenizer **out)
{
    if (!out) return exo__error_set(EXO_EINVAL, "exo_engine_take_tokenizer: NULL argument");
    void *object;
    int rc = take_loaded(job_id, JOB_LOAD_TOKENIZER, "tokenizer", &object);
    *out = object;
    return rc;
}
