/* test_model.c: forward passes of the tiny synthetic models.
 *
 * The properties that make a shard engine trustworthy, checked on every tiny
 * model the build writes (different weight dtypes, tied and untied heads,
 * every architecture):
 * a batched prompt gives the same logits as decoding token by token; a model
 * split into shards [0,k) and [k,n) gives the same logits as the whole;
 * truncating the KV cache and decoding again gives the same logits as a fresh
 * sequence; packed weights give the same logits as the file's layout; one
 * batch holding rows of several sequences gives each the logits it gets
 * alone; and bad calls fail with the right code instead of crashing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/cpu/quants.h"
#include "../native/error.h"
#include "../native/exo.h"
#include "../native/gguf.h"
#include "../native/model.h"
#include "check.h"

#define N_PROMPT 40 /* above the GEMM threshold: exercises both matmul paths */

static int32_t prompt[N_PROMPT];

/* sum((a-b)^2) / sum(b^2): scale-free, as llama.cpp's backend tests use. */
static double nmse(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

static exo_shard *load(const char *path, int start, int end)
{
    exo_shard *s = NULL;
    int rc = exo_shard_load(path, start, end, -1, -1, &s);
    CHECK_MSG(rc == 0, "load %s [%d,%d): %s", path, start, end, exo_last_error());
    return s;
}

static void test_batched_equals_stepwise(const char *path)
{
    exo_shard *s = load(path, 0, -1);
    if (!s) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    int nv = info.n_vocab;
    exo_seq *batch_seq = NULL, *step_seq = NULL;
    CHECK(exo_seq_new(s, 128, &batch_seq) == 0);
    CHECK(exo_seq_new(s, 128, &step_seq) == 0);
    float *batch = malloc(sizeof(float) * nv * N_PROMPT), *step = malloc(sizeof(float) * nv * N_PROMPT);

    /* Batch invariance: every row is computed with the same arithmetic in a
     * batch as alone, so the logits are bit-identical. */
    CHECK(exo_shard_forward(s, batch_seq, prompt, NULL, 8, 1, batch) == 0);
    for (int t = 0; t < 8; t++) CHECK(exo_shard_forward(s, step_seq, prompt + t, NULL, 1, 1, step + (size_t)t * nv) == 0);
    double e = nmse(batch, step, (size_t)nv * 8);
    CHECK_MSG(e == 0, "%s: short batch vs stepwise nmse %g", path, e);

    /* A long batch (several internal batches of the shard) as well. */
    exo_seq_truncate(batch_seq, 0);
    CHECK(exo_shard_forward(s, batch_seq, prompt, NULL, N_PROMPT, 1, batch) == 0);
    for (int t = 8; t < N_PROMPT; t++)
        CHECK(exo_shard_forward(s, step_seq, prompt + t, NULL, 1, 1, step + (size_t)t * nv) == 0);
    e = nmse(batch, step, (size_t)nv * N_PROMPT);
    CHECK_MSG(e == 0, "%s: long batch vs stepwise nmse %g", path, e);
    CHECK(exo_seq_pos(batch_seq) == N_PROMPT && exo_seq_pos(step_seq) == N_PROMPT);

    /* Last-position-only output equals the last row of all_logits. */
    float *last = malloc(sizeof(float) * nv);
    exo_seq_truncate(batch_seq, 0);
    CHECK(exo_shard_forward(s, batch_seq, prompt, NULL, N_PROMPT, 0, last) == 0);
    e = nmse(last, batch + (size_t)(N_PROMPT - 1) * nv, nv);
    CHECK_MSG(e == 0, "%s: last-only logits differ, nmse %g", path, e);

    free(last);
    free(batch);
    free(step);
    exo_seq_free(batch_seq);
    exo_seq_free(step_seq);
    exo_shard_free(s);
}

static void test_shards_equal_whole(const char *path)
{
    exo_shard *whole = load(path, 0, -1);
    if (!whole) return;
    exo_shard_info info;
    exo_shard_get_info(whole, &info);
    int k = info.n_layer / 2, nv = info.n_vocab, ne = info.n_embd;
    exo_shard *a = load(path, 0, k), *b = load(path, k, -1);
    if (!a || !b) return;
    exo_shard_info ia, ib;
    exo_shard_get_info(a, &ia);
    exo_shard_get_info(b, &ib);
    CHECK(ia.is_first && !ia.is_last && !ib.is_first && ib.is_last);
    /* A middle shard reads only its layers: fewer weight bytes than the whole. */
    CHECK(ia.weight_bytes < info.weight_bytes && ib.weight_bytes < info.weight_bytes);

    exo_seq *qw = NULL, *qa = NULL, *qb = NULL;
    CHECK(exo_seq_new(whole, 64, &qw) == 0 && exo_seq_new(a, 64, &qa) == 0 && exo_seq_new(b, 64, &qb) == 0);
    float *lw = malloc(sizeof(float) * nv * 12), *lb = malloc(sizeof(float) * nv * 12);
    float *hidden = malloc(sizeof(float) * ne * 12);
    CHECK(exo_shard_forward(whole, qw, prompt, NULL, 10, 1, lw) == 0);
    CHECK(exo_shard_forward(a, qa, prompt, NULL, 10, 1, hidden) == 0);
    CHECK(exo_shard_forward(b, qb, NULL, hidden, 10, 1, lb) == 0);
    double e = nmse(lb, lw, (size_t)nv * 10);
    CHECK_MSG(e == 0, "%s: split [0,%d)+[%d,n) vs whole nmse %g", path, k, k, e);
    /* Then one decode step through both. */
    CHECK(exo_shard_forward(whole, qw, prompt + 10, NULL, 1, 0, lw) == 0);
    CHECK(exo_shard_forward(a, qa, prompt + 10, NULL, 1, 0, hidden) == 0);
    CHECK(exo_shard_forward(b, qb, NULL, hidden, 1, 0, lb) == 0);
    e = nmse(lb, lw, nv);
    CHECK_MSG(e == 0, "%s: split decode step nmse %g", path, e);
    /* Wrong input kind for the shard is a clear error. */
    CHECK(exo_shard_forward(b, qb, prompt, NULL, 1, 0, lb) == EXO_EINVAL);

    free(lw);
    free(lb);
    free(hidden);
    exo_seq_free(qw);
    exo_seq_free(qa);
    exo_seq_free(qb);
    exo_shard_free(whole);
    exo_shard_free(a);
    exo_shard_free(b);
}

static void test_truncate_then_redecode(const char *path)
{
    exo_shard *s = load(path, 0, -1);
    if (!s) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    int nv = info.n_vocab;
    exo_seq *q = NULL, *fresh = NULL;
    CHECK(exo_seq_new(s, 64, &q) == 0 && exo_seq_new(s, 64, &fresh) == 0);
    float *a = malloc(sizeof(float) * nv), *b = malloc(sizeof(float) * nv);
    /* Decode 12 tokens, roll back to 6 (as a rejected speculation does), then
     * feed a different continuation; compare with a sequence that never saw the
     * rolled-back tokens. */
    CHECK(exo_shard_forward(s, q, prompt, NULL, 12, 0, a) == 0);
    CHECK(exo_seq_truncate(q, 6) == 0);
    CHECK(exo_seq_pos(q) == 6);
    int32_t other[4] = {7, 8, 9, 10};
    CHECK(exo_shard_forward(s, q, other, NULL, 4, 0, a) == 0);
    CHECK(exo_shard_forward(s, fresh, prompt, NULL, 6, 0, b) == 0);
    CHECK(exo_shard_forward(s, fresh, other, NULL, 4, 0, b) == 0);
    double e = nmse(a, b, nv);
    CHECK_MSG(e == 0, "%s: truncate+redecode vs fresh nmse %g", path, e);
    CHECK(exo_seq_truncate(q, 11) == EXO_ERANGE);
    CHECK(exo_seq_truncate(q, -1) == EXO_ERANGE);
    free(a);
    free(b);
    exo_seq_free(q);
    exo_seq_free(fresh);
    exo_shard_free(s);
}

/* Packed weights (backend_cpu.c) change where bytes live, not arithmetic:
 * logits equal the file layout's bit for bit, in a batch and step by step.
 * (Where the CPU has no packed kernels both loads read the file layout.) */
static void test_packed_equals_file_layout(const char *path, int weight_dtype)
{
    exo_shard *packed = load(path, 0, -1);
    setenv("EXO_PACK", "0", 1);
    exo_shard *plain = load(path, 0, -1);
    unsetenv("EXO_PACK");
    if (!packed || !plain) {
        exo_shard_free(packed);
        exo_shard_free(plain);
        return;
    }
    exo_shard_info info, plain_info;
    exo_shard_get_info(packed, &info);
    exo_shard_get_info(plain, &plain_info);
    /* Packing really happened wherever the CPU has a packed kernel for the
     * layers' format (or the test would pass with nothing packed). */
    const exo_type_traits *tr = exo__type_traits_get(weight_dtype);
    if (tr && tr->vec_dot_packed)
        CHECK_MSG(info.packed_bytes > 0, "%s: nothing was packed", path);
    CHECK_MSG(plain_info.packed_bytes == 0, "%s: EXO_PACK=0 still packed %lld bytes", path,
              (long long)plain_info.packed_bytes);
    const int nv = info.n_vocab, n = 12;
    exo_seq *seqs[2] = {NULL, NULL};
    exo_shard *shards[2] = {packed, plain};
    float *out[2] = {malloc(sizeof(float) * nv * n * 2), malloc(sizeof(float) * nv * n * 2)};
    for (int k = 0; k < 2; k++) {
        CHECK(exo_seq_new(shards[k], 64, &seqs[k]) == 0);
        CHECK(exo_shard_forward(shards[k], seqs[k], prompt, NULL, n, 1, out[k]) == 0);
        for (int t = 0; t < n; t++)
            CHECK(exo_shard_forward(shards[k], seqs[k], prompt + n + t, NULL, 1, 1, out[k] + (size_t)(n + t) * nv) == 0);
    }
    CHECK_MSG(memcmp(out[0], out[1], sizeof(float) * nv * n * 2) == 0, "%s: packed and file-layout logits differ",
              path);
    for (int k = 0; k < 2; k++) {
        exo_seq_free(seqs[k]);
        exo_shard_free(shards[k]);
        free(out[k]);
    }
}

/* Two sequences in one batch (a decode step of one beside a prompt chunk of
 * the other) give each exactly the logits it gets alone. */
static void test_batch_of_sequences(const char *path)
{
    exo_shard *s = load(path, 0, -1);
    if (!s) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    const int nv = info.n_vocab;
    exo_seq *a = NULL, *b = NULL, *a1 = NULL, *b1 = NULL;
    CHECK(exo_seq_new(s, 64, &a) == 0 && exo_seq_new(s, 64, &b) == 0);
    CHECK(exo_seq_new(s, 64, &a1) == 0 && exo_seq_new(s, 64, &b1) == 0);
    float *out = malloc(sizeof(float) * nv * 8), *alone = malloc(sizeof(float) * nv * 8);
    /* a has 8 positions cached, b 5. */
    CHECK(exo_shard_forward(s, a, prompt, NULL, 8, 0, out) == 0 && exo_shard_forward(s, a1, prompt, NULL, 8, 0, out) == 0);
    CHECK(exo_shard_forward(s, b, prompt + 20, NULL, 5, 0, out) == 0);
    CHECK(exo_shard_forward(s, b1, prompt + 20, NULL, 5, 0, out) == 0);
    /* One batch: a's next token, then three of b's. */
    int32_t tokens[4] = {prompt[8], prompt[25], prompt[26], prompt[27]};
    exo_seq *seqs[4] = {a, b, b, b};
    int32_t pos[4] = {8, 5, 6, 7};
    exo_batch batch = {.n_rows = 4, .tokens = tokens, .seq = seqs, .pos = pos};
    CHECK_MSG(exo__model_forward_batch(s, &batch, out) == 0, "%s", exo_last_error());
    CHECK(exo_seq_pos(a) == 9 && exo_seq_pos(b) == 8);
    CHECK(exo_shard_forward(s, a1, tokens, NULL, 1, 1, alone) == 0);
    CHECK(exo_shard_forward(s, b1, tokens + 1, NULL, 3, 1, alone + nv) == 0);
    double e = nmse(out, alone, (size_t)nv * 4);
    CHECK_MSG(e == 0, "%s: a batch of two sequences vs each alone: nmse %g", path, e);
    /* What the attention relies on is checked: a sequence's rows together,
     * at consecutive positions, starting where its cache ends. */
    exo_seq *split[3] = {a, b, a};
    int32_t split_pos[3] = {9, 8, 10};
    exo_batch bad = {.n_rows = 3, .tokens = tokens, .seq = split, .pos = split_pos};
    CHECK(exo__model_forward_batch(s, &bad, out) == EXO_EINVAL);
    int32_t gap_pos[2] = {9, 11};
    exo_seq *same[2] = {a, a};
    bad = (exo_batch){.n_rows = 2, .tokens = tokens, .seq = same, .pos = gap_pos};
    CHECK(exo__model_forward_batch(s, &bad, out) == EXO_EINVAL);
    int32_t stale_pos[1] = {3};
    bad = (exo_batch){.n_rows = 1, .tokens = tokens, .seq = same, .pos = stale_pos};
    CHECK(exo__model_forward_batch(s, &bad, out) == EXO_EINVAL);
    CHECK(exo_seq_pos(a) == 9 && exo_seq_pos(b) == 8); /* refused batches move nothing */
    free(out);
    free(alone);
    exo_seq_free(a);
    exo_seq_free(b);
    exo_seq_free(a1);
    exo_seq_free(b1);
    exo_shard_free(s);
}

/* A metadata-only file: the architecture, the usual hyper-parameters of a
 * small model, and one key overridden (or removed with value < 0). */
static void write_meta(const char *path, const char *arch, const char *key, int64_t value)
{
    static const char *const keys[] = {"block_count", "embedding_length", "feed_forward_length",
                                       "attention.head_count", "attention.head_count_kv", "context_length",
                                       "attention.sliding_window", "attention.key_length"};
    static const int64_t values[] = {4, 256, 512, 8, 2, 512, 0, 32};
    exo_gguf_writer *w = exo__gguf_writer_new();
    exo__gguf_writer_add_str(w, "general.architecture", arch);
    char name[96];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int64_t v = key && !strcmp(key, keys[i]) ? value : values[i];
        if (v < 0 || (!strcmp(keys[i], "attention.sliding_window") && v == 0)) continue;
        snprintf(name, sizeof name, "%s.%s", arch, keys[i]);
        exo__gguf_writer_add_u32(w, name, (uint32_t)v);
    }
    CHECK(exo__gguf_writer_write(w, path) == 0);
    exo__gguf_writer_free(w);
}

/* Bad metadata is a clear load error naming what is wrong, never a crash. */
static void test_bad_metadata(void)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/exo_test_meta_%d.gguf", (int)getpid());
    struct {
        const char *arch, *key;
        int64_t value;
        int code;
        const char *says;
    } cases[] = {
        {"mamba", NULL, 0, EXO_ENOTSUP, "architecture 'mamba' is not supported (supported: llama, qwen2, qwen3"},
        {"llama", "block_count", -1, EXO_EFORMAT, "lacks 'llama.block_count'"},
        {"qwen2", "attention.head_count_kv", 3, EXO_EFORMAT, "8 heads are not a multiple of 3 kv heads"},
        {"gemma3", "attention.sliding_window", 4096, EXO_EFORMAT, "sliding window of 4096 positions is larger"},
        {"qwen3", "attention.key_length", 0, EXO_EFORMAT, "head dimension 0"},
        {"phi3", "attention.head_count", 0, EXO_EFORMAT, "must be positive"},
        {"llama", "block_count", 1 << 29, EXO_EFORMAT, "implausibly large"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_meta(path, cases[i].arch, cases[i].key, cases[i].value);
        exo_shard *s = NULL;
        int rc = exo_shard_load(path, 0, -1, -1, -1, &s);
        CHECK_MSG(rc == cases[i].code && s == NULL && strstr(exo_last_error(), cases[i].says),
                  "%s with %s = %lld: rc %d, '%s'", cases[i].arch, cases[i].key ? cases[i].key : "-",
                  (long long)cases[i].value, rc, exo_last_error());
    }
    unlink(path);
}

/* A load that fails must not leave the backend asking for what it could
 * not have: a sequence too large for memory fails alone, and passes on
 * other sequences go on; the thread count is fixed once models run. */
static void test_failures_stay_contained(const char *path)
{
    exo_shard *s = load(path, 0, -1);
    if (!s) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    float *out = malloc(sizeof(float) * info.n_vocab);
    exo_seq *ok_seq = NULL, *huge = NULL;
    CHECK(exo_seq_new(s, 64, &ok_seq) == 0);
    CHECK(exo_shard_forward(s, ok_seq, prompt, NULL, 4, 0, out) == 0);
    /* A file claiming 2^30 positions loads, and asks nothing of the backend
     * for them: it used to reserve attention scratch for the whole claim
     * (256 GB), which every later pass then failed to allocate. */
    char big[4096];
    snprintf(big, sizeof big, "%.*s-bigctx.gguf", (int)strlen(path) - 5, path);
    exo_shard *claims = load(big, 0, -1);
    CHECK_MSG(exo_shard_forward(s, ok_seq, prompt + 4, NULL, 1, 0, out) == 0, "after the 2^30 claim: %s",
              exo_last_error());
    exo_shard_free(claims);
    /* 2^20 positions: a KV cache and attention scratch of gigabytes. With
     * the memory or without it, the next pass on ok_seq must work. */
    int rc = exo_seq_new(s, 1 << 20, &huge);
    CHECK(rc == 0 || rc == EXO_ENOMEM);
    exo_seq_free(huge);
    CHECK_MSG(exo_shard_forward(s, ok_seq, prompt + 5, NULL, 1, 0, out) == 0, "%s", exo_last_error());
    int threads = exo_runtime_threads();
    CHECK(exo_runtime_set_threads(threads) == 0);
    CHECK(exo_runtime_set_threads(threads + 1) == EXO_ESTATE);
    CHECK(exo_shard_forward(s, ok_seq, prompt + 6, NULL, 1, 0, out) == 0);
    free(out);
    exo_seq_free(ok_seq);
    exo_shard_free(s);
}

static void test_errors(const char *path)
{
    exo_shard *s = NULL;
    CHECK(exo_shard_load("/nonexistent/model.gguf", 0, -1, -1, -1, &s) != 0 && s == NULL);
    CHECK(strstr(exo_last_error(), "/nonexistent/model.gguf") != NULL);
    CHECK(exo_shard_load(path, 3, 2, -1, -1, &s) == EXO_ERANGE && s == NULL);
    CHECK(exo_shard_load(path, 0, 1000, -1, -1, &s) == EXO_ERANGE && s == NULL);
    /* The backend is a parameter of loading; one this build lacks is named. */
    CHECK(exo__model_load(path, 0, -1, -1, -1, "cuda", &s) == EXO_ENOTSUP && s == NULL);
    CHECK(strstr(exo_last_error(), "backend 'cuda'") != NULL);
    CHECK(exo__model_load(path, 0, -1, -1, -1, "cpu", &s) == 0 && s != NULL);
    exo_shard_free(s);
    s = NULL;
    s = load(path, 0, -1);
    if (!s) return;
    exo_shard_info info;
    exo_shard_get_info(s, &info);
    exo_seq *q = NULL;
    CHECK(exo_seq_new(s, 4, &q) == 0);
    float *out = malloc(sizeof(float) * info.n_vocab);
    int32_t bad = info.n_vocab;
    CHECK(exo_shard_forward(s, q, &bad, NULL, 1, 0, out) == EXO_ERANGE);
    CHECK(exo_shard_forward(s, q, prompt, NULL, 5, 0, out) == EXO_ERANGE); /* over n_ctx 4 */
    CHECK(exo_shard_forward(s, q, prompt, NULL, 4, 0, out) == 0);
    CHECK(exo_shard_forward(s, q, prompt, NULL, 1, 0, out) == EXO_ERANGE); /* full */
    CHECK(strstr(exo_last_error(), "context full") != NULL);
    free(out);
    exo_seq_free(q);
    /* A failure in a later internal batch leaves the sequence where it was:
     * 300 tokens (two batches of at most 256), the 290th out of range. */
    int32_t *many = malloc(sizeof(int32_t) * 300);
    for (int i = 0; i < 300; i++) many[i] = prompt[i % N_PROMPT];
    many[289] = info.n_vocab;
    out = malloc(sizeof(float) * info.n_vocab);
    CHECK(exo_seq_new(s, 400, &q) == 0);
    CHECK(exo_shard_forward(s, q, prompt, NULL, 3, 0, out) == 0);
    CHECK(exo_shard_forward(s, q, many, NULL, 300, 0, out) == EXO_ERANGE);
    CHECK_MSG(exo_seq_pos(q) == 3, "a failed forward left the sequence at %d, not 3", exo_seq_pos(q));
    free(many);
    free(out);
    exo_seq_free(q);
    exo_shard_free(s);
}

int main(void)
{
    exo__quants_init();
    const char *tiny = getenv("EXO_TINY_MODEL");
    if (!tiny) {
        fprintf(stderr, "EXO_TINY_MODEL is not set (ctest sets it)\n");
        return 1;
    }
    for (int i = 0; i < N_PROMPT; i++) prompt[i] = (i * 37 + 11) % 500;
    /* The build writes tiny.gguf and variants beside it (see CMakeLists.txt). */
    const char *variants[] = {"", "-q4_0", "-q8_0", "-q4_k", "-q5_k", "-q6_k", "-f16", "-bf16", "-f32",
                              "-llama", "-qwen2", "-qwen3", "-gemma3", "-phi3"};
    const int layer_dtypes[] = {EXO_DTYPE_Q4_1, EXO_DTYPE_Q4_0, EXO_DTYPE_Q8_0, EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K,
                                EXO_DTYPE_Q6_K, EXO_DTYPE_F16, EXO_DTYPE_BF16, EXO_DTYPE_F32,
                                EXO_DTYPE_Q2_K, EXO_DTYPE_Q5_0, EXO_DTYPE_Q3_K, EXO_DTYPE_IQ4_XS, EXO_DTYPE_Q5_1};
    char path[4096];
    int tested = 0;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        size_t len = strlen(tiny);
        if (len < 5) break;
        snprintf(path, sizeof path, "%.*s%s.gguf", (int)(len - 5), tiny, variants[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            fprintf(stderr, "missing %s\n", path);
            check_failures++;
            continue;
        }
        fclose(f);
        test_batched_equals_stepwise(path);
        test_shards_equal_whole(path);
        test_truncate_then_redecode(path);
        test_packed_equals_file_layout(path, layer_dtypes[i]);
        test_batch_of_sequences(path);
        tested++;
    }
    test_errors(tiny);
    test_bad_metadata();
    test_failures_stay_contained(tiny);
    printf("tested %d tiny models\n", tested);
    CHECK_DONE();
}
