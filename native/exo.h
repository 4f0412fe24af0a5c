/* exo.h: libexo's public API, the one surface LuaJIT sees through the FFI.
 *
 * Every function takes flat types (scalars, pointers, lengths), never touches
 * the Lua API, and returns 0 or a negative EXO_E* code with a message left for
 * exo_last_error(). lua/exo/native.lua declares exactly these lines (a test
 * compares them), so this file holds declarations only. */
#ifndef EXO_H
#define EXO_H

#include "exo_defs.h"

/* ---- runtime -------------------------------------------------------------- */

int exo_abi_version(void);
const char *exo_version(void);
const char *exo_last_error(void);
const char *exo_error_name(int code);
/* Sets the compute thread count (0 = all cores); call before loading models. */
int exo_runtime_set_threads(int n_threads);
int exo_runtime_threads(void);
/* "avx2 fma f16c" or "scalar": which kernels run. */
const char *exo_runtime_cpu_features(void);

/* ---- model files (metadata) ---------------------------------------------- */

typedef struct exo_file exo_file;

int exo_file_open(const char *path, exo_file **out);
void exo_file_close(exo_file *f);
int64_t exo_file_meta_count(const exo_file *f);
const char *exo_file_meta_key(const exo_file *f, int64_t i);
/* The GGUF value type of key i (8 string, 9 array, ...), or -1. */
int exo_file_meta_type(const exo_file *f, int64_t i);
int exo_file_get_str(const exo_file *f, const char *key, const char **s, size_t *len);
int exo_file_get_int(const exo_file *f, const char *key, int64_t *out);
int exo_file_get_float(const exo_file *f, const char *key, double *out);
int exo_file_get_bool(const exo_file *f, const char *key, int *out);
/* Arrays: length and element type; elements as strings or numbers. */
int exo_file_get_arr_info(const exo_file *f, const char *key, int *elem_type, uint64_t *len);
int exo_file_get_arr_str(const exo_file *f, const char *key, uint64_t j, const char **s, size_t *len);
int exo_file_get_arr_num(const exo_file *f, const char *key, uint64_t j, double *out);
int64_t exo_file_tensor_count(const exo_file *f);
/* Name, dtype, dims (ne[0] innermost) and bytes of tensor i. */
int exo_file_tensor_info(const exo_file *f, int64_t i, const char **name, int *dtype, int *n_dims, int64_t *ne,
                         uint64_t *nbytes);
const char *exo_dtype_name(int dtype);

/* ---- shards: a layer range of a model ------------------------------------ */

typedef struct exo_shard exo_shard;
typedef struct exo_seq exo_seq;

typedef struct exo_shard_info {
    char arch[32];
    int n_layer;        /* layers in the whole model */
    int layer_start;    /* this shard runs [layer_start, layer_end) */
    int layer_end;
    int is_first;       /* takes token ids (holds the embedding) */
    int is_last;        /* gives logits (holds the final norm and head) */
    int n_embd;
    int n_vocab;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_ctx_train;
    int max_batch;      /* tokens per internal batch */
    int64_t weight_bytes; /* bytes of weights this shard reads per token */
} exo_shard_info;

/* Loads layers [layer_start, layer_end) of the model at path (layer_end -1
 * means the last layer). is_first / is_last: -1 derives them from the range
 * (first when it starts at 0, last when it ends at the model's end); 0 or 1
 * forces them (a self-speculative draft is [0, K) with is_last = 1). */
int exo_shard_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, exo_shard **out);
void exo_shard_free(exo_shard *s);
int exo_shard_get_info(const exo_shard *s, exo_shard_info *out);

/* A sequence owns the KV cache of one request on one shard: n_ctx positions,
 * allocated once. */
int exo_seq_new(exo_shard *s, int n_ctx, exo_seq **out);
void exo_seq_free(exo_seq *q);
int exo_seq_pos(const exo_seq *q);
int exo_seq_n_ctx(const exo_seq *q);
/* Forgets positions >= pos (speculative rollback, edited history). */
int exo_seq_truncate(exo_seq *q, int pos);

/* Runs n_tokens new positions through the shard, appending them to the
 * sequence. Input: token ids when the shard is first, else hidden states
 * [n_tokens][n_embd]. Output: when the shard is last, logits [n_out][n_vocab]
 * where n_out is n_tokens with all_logits set and 1 (the last position)
 * otherwise; when not last, hidden states [n_tokens][n_embd]. The caller
 * thread waits; the work runs on the compute pool. */
int exo_shard_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out);

/* ---- asynchronous forward passes ----------------------------------------- */

/* The same work, run on the engine thread; the caller's buffers must stay
 * alive until the completion arrives. Completions are queued and the fd from
 * exo_engine_fd() becomes readable (an eventfd); the loop thread then drains
 * them with exo_engine_next_completion. */
int exo_engine_fd(void);
int exo_engine_submit(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out, uint64_t job_id);
/* Returns 1 and fills (job_id, status) when a completion was waiting, 0 when
 * none; status is the forward's return code (its message in err, up to
 * err_cap bytes). Clears the fd's readiness when the queue empties. */
int exo_engine_next_completion(uint64_t *job_id, int *status, char *err, size_t err_cap);

/* ---- measurement ---------------------------------------------------------- */

/* Memory bandwidth in GB/s from a STREAM-like copy over bytes of memory, best
 * of reps, using the compute pool. */
double exo_measure_mem_bandwidth(size_t bytes, int reps);
/* Peak resident set size of this process in bytes. */
int64_t exo_peak_rss_bytes(void);
/* Monotonic clock in seconds. */
double exo_now(void);

#endif
