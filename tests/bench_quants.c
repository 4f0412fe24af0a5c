/* bench_quants.c: single-core speed of the decode path's hot dots (not a test).
 *
 * Times matrix-vector products built from vec_dot, fast and _ref, for Q4_1
 * and Q8_0 weights with the default model's row lengths (576 and 1536), and
 * prints GB/s of weight bytes read. The 1536x576 and 576x1536 matrices fit in
 * L2, so they show the kernels' compute speed; the 49152x576 matrix (the
 * size of the model's output head) does not fit in any cache and shows how
 * close one core gets to memory bandwidth. A plain read loop over the same
 * bytes gives that bandwidth for comparison. Each number is the best of many
 * short runs taken in turn, so other load on the machine mostly washes out.
 *
 * Usage: bench_quants [rounds] (default 15). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/cpu/quants.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile float sink;
static volatile uint64_t sink64;

static void matvec(exo_vec_dot_fn dot, const uint8_t *w, size_t row_bytes, int rows, int cols,
                   const void *act, float *y)
{
    for (int r = 0; r < rows; r++) y[r] = dot(cols, w + (size_t)r * row_bytes, act);
}

/* Repeats until at least min_s have passed; returns weight bytes per second. */
static double time_matvec(exo_vec_dot_fn dot, const uint8_t *w, size_t row_bytes, int rows, int cols,
                          const void *act, float *y, double min_s)
{
    long reps = 0;
    double t0 = now(), t;
    do {
        matvec(dot, w, row_bytes, rows, cols, act, y);
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

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    const double slice = 0.02;
    if (rounds < 1) rounds = 1;
    exo_quants_init();
    printf("bench_quants: fast path is %s; GB/s of weight bytes, one core\n",
           exo_quants_have_avx2() ? "AVX2" : "scalar (same as ref)");

    static const int dtypes[] = { EXO_DTYPE_Q4_1, EXO_DTYPE_Q8_0 };
    static const struct { int rows, cols; } shapes[] = { { 1536, 576 }, { 576, 1536 }, { 49152, 576 }, { 65536, 1536 } };
    srand(1);
    for (int di = 0; di < 2; di++) {
        const exo_type_traits *t = exo_type_traits_get(dtypes[di]);
        for (int si = 0; si < 4; si++) {
            int rows = shapes[si].rows, cols = shapes[si].cols;
            size_t row_bytes = exo_dtype_row_size(dtypes[di], cols);
            size_t bytes = row_bytes * (size_t)rows;
            float *x = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
            float *wrow = malloc((size_t)cols * sizeof(float));
            uint8_t *w = malloc(bytes);
            void *act = malloc(exo_act_row_size(t->act_type, cols));
            for (int r = 0; r < rows; r++) {
                for (int i = 0; i < cols; i++) wrow[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
                t->from_float_ref(wrow, w + (size_t)r * row_bytes, cols);
            }
            for (int i = 0; i < cols; i++) x[i] = (float)((double)rand() / RAND_MAX) - 0.5f;
            exo_quantize_act(t->act_type, x, act, cols);

            double fast = 0, ref = 0, rd = 0;
            for (int k = 0; k < rounds; k++) {
                fast = fmax(fast, time_matvec(t->vec_dot, w, row_bytes, rows, cols, act, y, slice));
                ref = fmax(ref, time_matvec(t->vec_dot_ref, w, row_bytes, rows, cols, act, y, slice));
                rd = fmax(rd, time_read(w, bytes, slice));
            }
            printf("  %-5s %5dx%-5d %6.2f MB  fast %6.2f GB/s  ref %6.2f GB/s  (x%.1f)  read loop %6.2f GB/s\n",
                   t->name, rows, cols, bytes / 1e6, fast / 1e9, ref / 1e9, fast / ref, rd / 1e9);
            free(x); free(y); free(wrow); free(w); free(act);
        }
    }
    return 0;
}
