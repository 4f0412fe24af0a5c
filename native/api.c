/* api.c: the thin public wrappers of exo.h that have no other home.
 *
 * Runtime settings, model-file metadata for Lua (over the GGUF reader), and the
 * measurements `exo bench` and a node's capabilities need (memory bandwidth,
 * fp32 throughput, peak RSS, a clock). Each
 * wrapper validates its arguments and maps failures to EXO_E* codes, in the
 * style of OpenResty's ngx_http_lua_ffi_* functions. */
#define _GNU_SOURCE
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cblas.h>
#include <sodium.h>

#include "../kernels/cpu/quants.h"
#include "dtype.h"
#include "error.h"
#include "exo.h"
#include "gguf.h"
#include "pool.h"
#include "safetensors.h"
#include "tensor.h"

#ifndef EXO_VERSION_STRING
#define EXO_VERSION_STRING "0.1.0"
#endif

int exo_abi_version(void)
{
    return EXO_ABI_VERSION;
}

const char *exo_version(void)
{
    return EXO_VERSION_STRING;
}

int exo_runtime_random(void *buf, size_t n)
{
    if (!buf && n) return exo__error_set(EXO_EINVAL, "exo_runtime_random: NULL buffer");
    if (sodium_init() < 0) return exo__error_set(EXO_EIO, "libsodium cannot start (no randomness?)");
    randombytes_buf(buf, n);
    return EXO_OK;
}

/* Ctrl-C while exo is interactive (a chat, the REPL): a flag the loops poll,
 * not the end of the process. No SA_RESTART: a blocking read returns EINTR, so
 * readline can give the line up. */
static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

int exo_runtime_catch_interrupt(int on)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on ? on_interrupt : SIG_DFL;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0) return exo__error_set(EXO_EIO, "cannot catch Ctrl-C (sigaction)");
    interrupted = 0;
    return EXO_OK;
}

int exo_runtime_interrupted(int clear)
{
    int was = interrupted;
    if (clear) interrupted = 0;
    return was;
}

int exo_runtime_set_threads(int n_threads)
{
    if (n_threads < 0) return exo__error_set(EXO_EINVAL, "thread count %d is negative", n_threads);
    return exo__pool_global_set_threads(n_threads);
}

int exo_runtime_threads(void)
{
    return exo__pool_threads(exo__pool_global());
}

const char *exo_runtime_cpu_features(void)
{
    exo__quants_init();
    return exo__quants_have_avx512() ? "avx512vnni avx2 fma f16c" : exo__quants_have_avx2() ? "avx2 fma f16c" : "scalar";
}

/* ---- model files -------------------------------------------------------- */

struct exo_file {
    exo_gguf *g;
};

int exo_file_open(const char *path, exo_file **out)
{
    if (!path || !out) return exo__error_set(EXO_EINVAL, "exo_file_open: NULL argument");
    *out = NULL;
    exo_file *f = calloc(1, sizeof *f);
    if (!f) return exo__error_set(EXO_ENOMEM, "out of memory");
    int rc = exo__model_file_open(path, EXO_MODEL_OPEN_INFO, 0, -1, 1, 1, &f->g);
    if (rc) {
        free(f);
        return rc;
    }
    *out = f;
    return EXO_OK;
}

void exo_file_close(exo_file *f)
{
    if (!f) return;
    exo__gguf_close(f->g);
    free(f);
}

int64_t exo_file_meta_count(const exo_file *f)
{
    return f ? exo__gguf_kv_count(f->g) : 0;
}

const char *exo_file_meta_key(const exo_file *f, int64_t i)
{
    if (!f || i < 0 || i >= exo__gguf_kv_count(f->g)) return NULL;
    return exo__gguf_key_name(f->g, i);
}

int exo_file_meta_type(const exo_file *f, int64_t i)
{
    if (!f || i < 0 || i >= exo__gguf_kv_count(f->g)) return -1;
    return exo__gguf_kv_type(f->g, i);
}

int exo_file_get_str(const exo_file *f, const char *key, const char **s, size_t *len)
{
    if (!f || !key || !s || !len) return exo__error_set(EXO_EINVAL, "exo_file_get_str: NULL argument");
    return exo__gguf_get_str(f->g, key, s, len);
}

int exo_file_get_int(const exo_file *f, const char *key, int64_t *out)
{
    if (!f || !key || !out) return exo__error_set(EXO_EINVAL, "exo_file_get_int: NULL argument");
    return exo__gguf_get_i64(f->g, key, out);
}

int exo_file_get_float(const exo_file *f, const char *key, double *out)
{
    if (!f || !key || !out) return exo__error_set(EXO_EINVAL, "exo_file_get_float: NULL argument");
    float v;
    int rc = exo__gguf_get_f32(f->g, key, &v);
    if (rc == EXO_OK) *out = v;
    return rc;
}

int exo_file_get_bool(const exo_file *f, const char *key, int *out)
{
    if (!f || !key || !out) return exo__error_set(EXO_EINVAL, "exo_file_get_bool: NULL argument");
    bool v;
    int rc = exo__gguf_get_bool(f->g, key, &v);
    if (rc == EXO_OK) *out = v;
    return rc;
}

int exo_file_get_arr_info(const exo_file *f, const char *key, int *elem_type, uint64_t *len)
{
    if (!f || !key || !elem_type || !len) return exo__error_set(EXO_EINVAL, "exo_file_get_arr_info: NULL argument");
    return exo__gguf_get_arr(f->g, key, elem_type, len);
}

static int file_array(const exo_file *f, const char *key, uint64_t j, int *elem_type, int64_t *kv)
{
    uint64_t len;
    int rc = exo__gguf_get_arr(f->g, key, elem_type, &len);
    if (rc) return rc;
    if (j >= len) return exo__error_set(EXO_ERANGE, "index %llu past the %llu elements of '%s'", (unsigned long long)j,
                                       (unsigned long long)len, key);
    *kv = exo__gguf_find_key(f->g, key);
    return EXO_OK;
}

int exo_file_get_arr_str(const exo_file *f, const char *key, uint64_t j, const char **s, size_t *len)
{
    if (!f || !key || !s || !len) return exo__error_set(EXO_EINVAL, "exo_file_get_arr_str: NULL argument");
    int elem_type;
    int64_t kv = -1;
    int rc = file_array(f, key, j, &elem_type, &kv);
    if (rc) return rc;
    if (elem_type != EXO_GGUF_STRING) return exo__error_set(EXO_EFORMAT, "'%s' is not an array of strings", key);
    return exo__gguf_arr_str(f->g, kv, j, s, len);
}

int exo_file_get_arr_num(const exo_file *f, const char *key, uint64_t j, double *out)
{
    if (!f || !key || !out) return exo__error_set(EXO_EINVAL, "exo_file_get_arr_num: NULL argument");
    int elem_type;
    int64_t kv = -1;
    int rc = file_array(f, key, j, &elem_type, &kv);
    if (rc) return rc;
    const unsigned char *p = exo__gguf_arr_data(f->g, kv);
    /* Array data may be unaligned in the file: copy each element out. */
#define READ_AS(ctype)                          \
    {                                           \
        ctype v;                                \
        memcpy(&v, p + j * sizeof v, sizeof v); \
        *out = (double)v;                       \
        return EXO_OK;                          \
    }
    switch (elem_type) {
    case EXO_GGUF_UINT8: READ_AS(uint8_t)
    case EXO_GGUF_INT8: READ_AS(int8_t)
    case EXO_GGUF_UINT16: READ_AS(uint16_t)
    case EXO_GGUF_INT16: READ_AS(int16_t)
    case EXO_GGUF_UINT32: READ_AS(uint32_t)
    case EXO_GGUF_INT32: READ_AS(int32_t)
    case EXO_GGUF_FLOAT32: READ_AS(float)
    case EXO_GGUF_BOOL: READ_AS(uint8_t)
    case EXO_GGUF_UINT64: READ_AS(uint64_t)
    case EXO_GGUF_INT64: READ_AS(int64_t)
    case EXO_GGUF_FLOAT64: READ_AS(double)
    default: return exo__error_set(EXO_EFORMAT, "'%s' is not an array of numbers", key);
    }
#undef READ_AS
}

int64_t exo_file_tensor_count(const exo_file *f)
{
    return f ? exo__gguf_tensor_count(f->g) : 0;
}

int exo_file_tensor_info(const exo_file *f, int64_t i, const char **name, int *dtype, int *n_dims, int64_t *ne,
                         uint64_t *nbytes)
{
    if (!f || !name || !dtype || !n_dims || !ne || !nbytes)
        return exo__error_set(EXO_EINVAL, "exo_file_tensor_info: NULL argument");
    if (i < 0 || i >= exo__gguf_tensor_count(f->g)) return exo__error_set(EXO_ERANGE, "no tensor %lld", (long long)i);
    const exo_gguf_tensor *t = exo__gguf_tensor_at(f->g, i);
    *name = t->name;
    *dtype = t->dtype;
    *n_dims = t->n_dims;
    for (int d = 0; d < EXO_GGUF_MAX_DIMS; d++) ne[d] = t->ne[d];
    *nbytes = t->size;
    return EXO_OK;
}

const char *exo_dtype_name(int dtype)
{
    /* the kernels' spelling ("q4_K") for the types exo runs, GGUF's for the others */
    const exo_type_traits *tr = exo__type_traits_get(dtype);
    const exo_dtype_info *info = exo__dtype_info_get(dtype);
    return tr ? tr->name : info ? info->name : "unknown";
}

/* ---- measurement -------------------------------------------------------- */

double exo_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int64_t exo_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024;
}

typedef struct copy_job {
    const float *src;
    float *dst;
    size_t n;        /* floats */
    int64_t blocks;  /* the copy is split into this many equal blocks */
} copy_job;

static void copy_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    copy_job *j = ctx;
    size_t first = (size_t)begin * j->n / (size_t)j->blocks, last = (size_t)end * j->n / (size_t)j->blocks;
    memcpy(j->dst + first, j->src + first, sizeof(float) * (last - first));
}

/* Copy counts read + write bytes, as STREAM's "Copy" does; the best time
 * over reps and over several ways of cutting the copy between threads. */
double exo_measure_mem_bandwidth(size_t bytes, int reps)
{
    size_t n = bytes / sizeof(float);
    if (n < 1024) n = 1024;
    if (reps < 1) reps = 1;
    float *a = exo__aligned_alloc(n * sizeof(float)), *b = exo__aligned_alloc(n * sizeof(float));
    if (!a || !b) {
        exo__aligned_free(a);
        exo__aligned_free(b);
        return 0;
    }
    for (size_t i = 0; i < n; i++) a[i] = (float)i, b[i] = 0;
    exo_pool *pool = exo__pool_global();
    double best = INFINITY;
    /* The VM's bandwidth depends on how the copy is cut (few long streams or
     * many short ones); the best over several cuts is the machine's figure. */
    const int64_t cuts[] = {1, 4, 16};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        copy_job job = {a, b, n, cuts[c] * exo__pool_threads(pool)};
        for (int r = 0; r < reps; r++) {
            double t0 = exo_now();
            exo__pool_for(pool, job.blocks, 1, copy_range, &job);
            double dt = exo_now() - t0;
            if (dt < best) best = dt;
        }
    }
    exo__aligned_free(a);
    exo__aligned_free(b);
    return 2.0 * (double)n * sizeof(float) / best / 1e9;
}

/* fp32 throughput: every pool thread multiplies its own small matrices with
 * OpenBLAS (single-threaded sgemm, as the engine calls it). */
enum { FLOPS_N = 128, FLOPS_GEMMS = 4 };

typedef struct flops_job {
    float *buf; /* per thread: a, b, c of FLOPS_N^2 floats each */
} flops_job;

static void flops_run(void *ctx, int64_t begin, int64_t end, int thread)
{
    flops_job *j = ctx;
    float *a = j->buf + (size_t)thread * 3 * FLOPS_N * FLOPS_N, *b = a + FLOPS_N * FLOPS_N, *c = b + FLOPS_N * FLOPS_N;
    for (int64_t i = begin; i < end; i++)
        for (int k = 0; k < FLOPS_GEMMS; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, FLOPS_N, FLOPS_N, FLOPS_N, 1.0f, a, FLOPS_N, b,
                        FLOPS_N, 0.0f, c, FLOPS_N);
}

extern void openblas_set_num_threads(int);

double exo_measure_flops_fp32(int reps)
{
    exo_pool *pool = exo__pool_global();
    int threads = exo__pool_threads(pool);
    size_t floats = (size_t)threads * 3 * FLOPS_N * FLOPS_N;
    float *buf = exo__aligned_alloc(floats * sizeof(float));
    if (!buf) return 0;
    for (size_t i = 0; i < floats; i++) buf[i] = (float)(i % 7) * 0.25f;
    openblas_set_num_threads(1);
    flops_job job = {buf};
    int64_t items = 2 * (int64_t)threads;
    double best = INFINITY;
    if (reps < 1) reps = 1;
    for (int r = 0; r < reps; r++) {
        double t0 = exo_now();
        exo__pool_for(pool, items, 1, flops_run, &job);
        double dt = exo_now() - t0;
        if (dt < best) best = dt;
    }
    exo__aligned_free(buf);
    return 2.0 * FLOPS_N * FLOPS_N * FLOPS_N * FLOPS_GEMMS * (double)items / best / 1e9;
}
