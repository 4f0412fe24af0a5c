/* bench_quants.c: single-core speed of the decode path's hot dots (not a test).
 *
 * Times matrix-vector products built from each available version of vec_dot
 * (_ref, AVX2, AVX-512 VNNI, the AVX-512 four-row vec_dot_x4, and the
 * same four rows from the packed layout) for every weight format with a
 * fast dot: the 32-element ones with the default model's row lengths (576
 * and 1536), the 256-element K formats with 512 for 576 (their rows are
 * whole super-blocks), and prints GB/s of weight bytes read. The 1536x576 and 576x1536 matrices
 * fit in L2, so they show the kernels' compute speed; the 49152x576 matrix
 * (the size of the model's output head) does not fit in any cache and shows
 * how close one core gets to memory bandwidth. A plain read loop over the
 * same bytes gives that bandwidth for comparison. Each number is the best of
 * many short runs taken in turn, so other load on the machine mostly washes
 * out; kernels absent on this CPU print as "-".
 *
 * Usage: bench_quants [rounds [types]] (default 15 rounds, every type; types
 * is a comma-separated list of names as the traits give them: q4_0,q5_0).
 * bench_quants gemm [rounds [types]] times prompt products of the K formats,
 * Q4_0 and Q8_0 instead (the four-token kernels against the tiled GEMM:
 * bench_gemm). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/cpu/quants.h"

/* This thread's CPU time, not the wall clock: on a machine shared with
 * builds and tests, time spent descheduled is not the kernel's. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile float sink;
static volatile uint64_t sink64;

/* One kernel to time: a one-row dot, or a four-row one (rows % 4 == 0 here). */
typedef struct {
    const char *name;
    exo_vec_dot_fn dot;
    exo_vec_dot_x4_fn dot4;
    exo_vec_dot_packed_fn packed; /* reads the packed copy of the matrix */
} kernel;

static const uint8_t *packed_w; /* the matrix being timed, packed (quants.h) */

static void matvec(const kernel *k, const uint8_t *w, size_t row_bytes, int rows, int cols, const void *act, float *y)
{
    if (k->packed)
        k->packed(cols, packed_w, rows / 4, act, y);
    else if (k->dot4)
        for (int r = 0; r < rows; r += 4) k->dot4(cols, w + (size_t)r * row_bytes, row_bytes, act, y + r);
    else
        for (int r = 0; r < rows; r++) y[r] = k->dot(cols, w + (size_t)r * row_bytes, act);
}

/* Repeats until at least min_s have passed; returns weight bytes per second. */
static double time_matvec(const kernel *k, const uint8_t *w, size_t row_bytes, int rows, int cols, const void *act,
                          float *y, double min_s)
{
    long reps = 0;
    double t0 = now(), t;
    do {
        matvec(k, w, row_bytes, rows, cols, act, y);
        reps++;
        t = now() - t0;
    } while (t < min_s);
    sink = y[rows - 1];
    return (double)row_bytes * rows * (double)reps / t;
}

static double time_read(const uint8_t *buf, size_t bytes, double min_s)
{
    const uint64_t *p = (const uint64_t *)buf;
    size_t n = bytes / 8;
    long reps = 0;
    double t0 = now(), t;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    do {
        for (size_t i = 0; i + 4 <= n; i += 4) {
            a += p[i];
            b += p[i + 1];
            c += p[i + 2];
            d += p[i + 3];
        }
        reps++;
        t = now() - t0;
    } while (t < min_s);
    sink64 = a + b + c + d;
    return (double)(n / 4 * 32) * (double)reps / t;
}

/* A prompt's batch of BATCH tokens over the packed matrix, as the CPU
 * backend runs it: runs of 8 groups, each read by every token (four at a
 * time where the format has vec_dot_packed_t4, unless use_t4 is false: the
 * "batch16/1" column, one token at a time). Returns weight bytes times
 * tokens per second: comparable with the one-token columns, which it beats
 * by what a weight byte's reuse saves. */
#define BATCH 16
static double time_batch(const exo_type_traits *t, size_t row_bytes, int rows, int cols, const uint8_t *acts,
                         size_t act_stride, float *y, double min_s, bool use_t4)
{
    const size_t group_bytes = 4 * row_bytes;
    const int n_groups = rows / 4;
    long reps = 0;
    double t0 = now(), el;
    do {
        for (int g = 0; g < n_groups; g += 8) {
            const int ng = n_groups - g < 8 ? n_groups - g : 8;
            const uint8_t *run = packed_w + (size_t)g * group_bytes;
            int tok = 0;
            if (t->vec_dot_packed_t4 && use_t4)
                for (; tok + 4 <= BATCH; tok += 4)
                    t->vec_dot_packed_t4(cols, run, ng, acts + tok * act_stride, act_stride, y + (size_t)tok * rows + 4 * g,
                                         (size_t)rows);
            for (; tok < BATCH; tok++)
                t->vec_dot_packed(cols, run, ng, acts + tok * act_stride, y + (size_t)tok * rows + 4 * g);
        }
        reps++;
        el = now() - t0;
    } while (el < min_s);
    sink = y[rows - 1];
    return (double)row_bytes * rows * BATCH * (double)reps / el;
}

/* A prompt's product as the CPU backend runs it (integer path, packed
 * weights): the four-token kernels (Q8_0: the packed one a token) over runs
 * of 8 groups for each block of 16 tokens, or the tiled GEMM (quants.h) over all tokens with its
 * activations laid out once. Returns multiply-adds per second of this
 * thread's CPU time. */
static double time_prompt(const exo_type_traits *t, const uint8_t *groups, int rows, int cols, const uint8_t *acts,
                          size_t act_stride, int n_tok, float *y, uint8_t *tiles, uint8_t *scratch, bool tiled,
                          double min_s)
{
    const size_t gb = (size_t)cols / (size_t)t->block_size * t->type_size * 4;
    long reps = 0;
    double t0 = now(), el;
    do {
        if (tiled) {
            const size_t tb = exo__tiled_act_bytes(cols);
            for (int t0k = 0; t0k < n_tok; t0k += EXO_TILED_TOKENS) {
                const int k = n_tok - t0k < EXO_TILED_TOKENS ? n_tok - t0k : EXO_TILED_TOKENS;
                t->tiled->pack_act(cols, acts + (size_t)t0k * act_stride, act_stride, k,
                                   tiles + (size_t)(t0k / EXO_TILED_TOKENS) * tb);
            }
            t->tiled->gemm(cols, groups, rows, tiles, n_tok, y, (size_t)rows, scratch);
        } else {
            for (int tb = 0; tb < n_tok; tb += 16)
                for (int g = 0; g < rows / 4; g += 8) {
                    const int ng = rows / 4 - g < 8 ? rows / 4 - g : 8;
                    for (int tok = tb; tok < tb + 16 && tok < n_tok; tok += t->vec_dot_packed_t4 ? 4 : 1)
                        if (t->vec_dot_packed_t4)
                            t->vec_dot_packed_t4(cols, groups + (size_t)g * gb, ng, acts + (size_t)tok * act_stride,
                                                 act_stride, y + (size_t)tok * rows + 4 * g, (size_t)rows);
                        else /* Q8_0: the packed kernel a token */
                            t->vec_dot_packed(cols, groups + (size_t)g * gb, ng, acts + (size_t)tok * act_stride,
                                              y + (size_t)tok * rows + 4 * g);
                }
        }
        reps++;
        el = now() - t0;
    } while (el < min_s);
    sink = y[rows - 1];
    return (double)rows * cols * n_tok * (double)reps / el;
}

/* "bench_quants gemm [rounds [types]]": the prompt products of the K
 * formats, Q4_0 and Q8_0 at the 1B shape's widths (2048 -> 2048, 2048 ->
 * 8192, 8192 -> 2048) and the 8B shape's FFN (4096 -> 14336), 8 to 512
 * tokens, four-token (or packed) kernels against the tiled GEMM. */
static bool name_listed(const char *list, const char *name);
static int bench_gemm(int rounds, const char *only)
{
    static const int dtypes[] = { EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K, EXO_DTYPE_Q6_K, EXO_DTYPE_Q4_0, EXO_DTYPE_Q8_0 };
    static const struct { int rows, cols; } shapes[] = { { 2048, 2048 }, { 8192, 2048 }, { 2048, 8192 }, { 14336, 4096 } };
    static const int toks[] = { 8, 16, 32, 64, 512 };
    printf("bench_quants gemm: G multiply-adds/s, one core (thread CPU time), best of %d, %s kernels\n", rounds,
           exo__quants_have_avx512() ? "AVX-512 VNNI" : exo__quants_have_avx2() ? "AVX2" : "scalar");
    printf("  %-6s %-11s %6s %9s %9s\n", "type", "shape", "tokens", "t4", "tiled");
    for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; di++) {
        const exo_type_traits *t = exo__type_traits_get(dtypes[di]);
        if (only && !name_listed(only, t->name)) continue;
        if (!t->vec_dot_packed) continue;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int rows = shapes[si].rows, cols = shapes[si].cols, max_tok = 512;
            const size_t row_bytes = exo__dtype_row_size(dtypes[di], cols), act_stride = exo__act_row_size(t->act_type, cols);
            float *x = malloc(sizeof(float) * (size_t)cols);
            uint8_t *w = malloc(row_bytes * rows), *groups = malloc(row_bytes * rows), *acts = malloc(act_stride * max_tok);
            for (int r = 0; r < rows; r++) {
                for (int i = 0; i < cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
                t->from_float_ref(x, w + (size_t)r * row_bytes, cols);
            }
            for (int r = 0; r < rows; r += 4) t->pack_x4(w + (size_t)r * row_bytes, row_bytes, cols, groups + (size_t)r * row_bytes);
            for (int k = 0; k < max_tok; k++) {
                for (int i = 0; i < cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
                exo__quantize_act(t->act_type, x, acts + (size_t)k * act_stride, cols);
            }
            float *y = malloc(sizeof(float) * (size_t)rows * max_tok);
            uint8_t *tiles = aligned_alloc(64, exo__tiled_act_bytes(cols) * (max_tok / EXO_TILED_TOKENS));
            uint8_t *scratch = aligned_alloc(64, exo__tiled_scratch_bytes(cols));
            for (size_t ti = 0; ti < sizeof toks / sizeof toks[0]; ti++) {
                double best[2] = { 0, 0 };
                for (int k = 0; k < rounds; k++)
                    for (int m = 0; m < 2; m++)
                        if (m == 0 || t->tiled)
                            best[m] = fmax(best[m], time_prompt(t, groups, rows, cols, acts, act_stride, toks[ti], y, tiles,
                                                                scratch, m == 1, 0.05));
                printf("  %-6s %5dx%-5d %6d %9.1f", t->name, rows, cols, toks[ti], best[0] / 1e9);
                if (t->tiled) printf(" %9.1f\n", best[1] / 1e9);
                else printf(" %9s\n", "-");
            }
            free(x); free(w); free(groups); free(acts); free(y); free(tiles); free(scratch);
        }
    }
    return 0;
}

#define MAX_KERNELS 5

/* The versions of dtype's dot this CPU can run, ref first. */
static int kernels_for(int dtype, kernel *k)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    int n = 0;
    k[n++] = (kernel){ "ref", t->vec_dot_ref, NULL, NULL };
    const exo_kernel_set *avx2 = exo__quants_kernels(dtype, EXO_ISA_AVX2);
    const exo_kernel_set *avx512 = exo__quants_kernels(dtype, EXO_ISA_AVX512);
    /* EXO_DISABLE_AVX512 leaves have_avx512 false; the CPU check is what matters here */
    bool cpu512 = false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    cpu512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    if (exo__quants_have_avx2() && avx2 && avx2->vec_dot) k[n++] = (kernel){ "avx2", avx2->vec_dot, NULL, NULL };
    if (exo__quants_have_avx2() && cpu512 && avx512 && avx512->vec_dot)
        k[n++] = (kernel){ "avx512", avx512->vec_dot, NULL, NULL };
    if (exo__quants_have_avx2() && cpu512 && avx512 && avx512->vec_dot_x4)
        k[n++] = (kernel){ "avx512x4", NULL, avx512->vec_dot_x4, NULL };
    /* the packed kernel dispatch chose (AVX-512 VNNI, or AVX2 with EXO_DISABLE_AVX512=1) */
    if (t->vec_dot_packed) k[n++] = (kernel){ "packed", NULL, NULL, t->vec_dot_packed };
    return n;
}

/* Whether name is an item of the comma-separated list. */
static bool name_listed(const char *list, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == len && strncmp(p, name, n) == 0) return true;
        p += n + (end != NULL);
    }
    return false;
}

int main(int argc, char **argv)
{
    exo__quants_init();
    if (argc > 1 && strcmp(argv[1], "gemm") == 0) {
        int r = argc > 2 ? atoi(argv[2]) : 5;
        return bench_gemm(r < 1 ? 1 : r, argc > 3 ? argv[3] : NULL);
    }
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    const double slice = 0.02;
    if (rounds < 1) rounds = 1;
    printf("bench_quants: dispatch picks %s; GB/s of weight bytes, one core\n",
           exo__quants_have_avx512() ? "AVX-512 VNNI" : exo__quants_have_avx2() ? "AVX2" : "scalar (same as ref)");
    printf("  %-6s %-11s %8s %9s %9s %9s %9s %9s %9s %9s %9s\n", "type", "shape", "MB", "ref", "avx2", "avx512",
           "avx512x4", "packed", "batch16/1", "batch16", "read");

    static const int dtypes[] = { EXO_DTYPE_Q4_1, EXO_DTYPE_Q8_0, EXO_DTYPE_Q4_0, EXO_DTYPE_Q5_0, EXO_DTYPE_Q5_1,
                                  EXO_DTYPE_IQ4_NL, EXO_DTYPE_Q2_K, EXO_DTYPE_Q3_K, EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K,
                                  EXO_DTYPE_Q6_K, EXO_DTYPE_IQ4_XS };
    static const struct { int rows, cols; } shapes[] = { { 1536, 576 }, { 576, 1536 }, { 49152, 576 }, { 65536, 1536 } };
    const char *only = argc > 2 ? argv[2] : NULL;
    srand(1);
    for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; di++) {
        const exo_type_traits *t = exo__type_traits_get(dtypes[di]);
        if (only && !name_listed(only, t->name)) continue;
        kernel ks[MAX_KERNELS];
        int nk = kernels_for(dtypes[di], ks);
        for (int si = 0; si < 4; si++) {
            int rows = shapes[si].rows, cols = shapes[si].cols;
            if (cols % t->block_size) cols = cols / t->block_size * t->block_size; /* 576 -> 512 for K formats */
            size_t row_bytes = exo__dtype_row_size(dtypes[di], cols);
            size_t bytes = row_bytes * (size_t)rows;
            float *x = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
            float *wrow = malloc((size_t)cols * sizeof(float));
            uint8_t *w = malloc(bytes);
            void *act = malloc(exo__act_row_size(t->act_type, cols));
            for (int r = 0; r < rows; r++) {
                for (int i = 0; i < cols; i++) wrow[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
                t->from_float_ref(wrow, w + (size_t)r * row_bytes, cols);
            }
            for (int i = 0; i < cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
            exo__quantize_act(t->act_type, x, act, cols);
            uint8_t *packed = malloc(bytes);
            if (t->pack_x4)
                for (int r = 0; r < rows; r += 4) t->pack_x4(w + (size_t)r * row_bytes, row_bytes, cols, packed + (size_t)r * row_bytes);
            packed_w = packed;

            const size_t act_stride = exo__act_row_size(t->act_type, cols);
            uint8_t *acts = malloc(act_stride * BATCH);
            float *ys = malloc(sizeof(float) * (size_t)rows * BATCH);
            for (int b = 0; b < BATCH; b++) {
                for (int i = 0; i < cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
                exo__quantize_act(t->act_type, x, acts + b * act_stride, cols);
            }
            double best[MAX_KERNELS] = { 0 }, rd = 0, batch = 0, batch1 = 0;
            for (int k = 0; k < rounds; k++) {
                for (int ki = 0; ki < nk; ki++)
                    best[ki] = fmax(best[ki], time_matvec(&ks[ki], w, row_bytes, rows, cols, act, y, slice));
                if (t->vec_dot_packed && rows % 4 == 0) {
                    batch1 = fmax(batch1, time_batch(t, row_bytes, rows, cols, acts, act_stride, ys, slice, false));
                    batch = fmax(batch, time_batch(t, row_bytes, rows, cols, acts, act_stride, ys, slice, true));
                }
                rd = fmax(rd, time_read(w, bytes, slice));
            }
            free(acts);
            free(ys);
            printf("  %-6s %5dx%-5d %8.2f", t->name, rows, cols, bytes / 1e6);
            static const char *const cols_order[] = { "ref", "avx2", "avx512", "avx512x4", "packed" };
            for (int c = 0; c < 5; c++) {
                int found = -1;
                for (int ki = 0; ki < nk; ki++)
                    if (strcmp(ks[ki].name, cols_order[c]) == 0) found = ki;
                if (found >= 0) printf(" %9.2f", best[found] / 1e9);
                else printf(" %9s", "-");
            }
            if (batch > 0) printf(" %9.2f %9.2f", batch1 / 1e9, batch / 1e9);
            else printf(" %9s %9s", "-", "-");
            printf(" %9.2f\n", rd / 1e9);
            free(x); free(y); free(wrow); free(w); free(act); free(packed);
        }
    }
    return 0;
}
