/* test_vec.c: attention's grouped-query helpers (kernels/cpu/vec.h).
 *
 * exo__vec_dots_f16_heads and exo__vec_wsum_f16_heads serve several query
 * heads that share one KV head in blocks of keys. The backend splits a group
 * into runs of heads depending on the batch (a decode step of a model with one
 * KV head splits it to keep both threads busy), so batch invariance rests on
 * a head's result being the same bits in any run: checked here against the
 * one-head calls for every run length, head size (multiples of 64 and the
 * tails past them) and key count around the block size, on the path the CPU
 * picks (AVX2) and, run again with EXO_FORCE_SCALAR=1 (CMakeLists.txt), on
 * the scalar one; and both against a double-precision sum. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/fp16.h"
#include "../kernels/cpu/quants.h"
#include "../kernels/cpu/vec.h"
#include "check.h"

static uint64_t rng = 7;
static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) & 0xffffff) / (float)0x800000 - 1.0f;
}

/* nq heads of size n against count keys k_stride halves apart. */
static void check_case(int n, int nq, int count)
{
    const size_t k_stride = (size_t)n * 3 + 8, row = (size_t)count + 5; /* like a cache of several KV heads */
    uint16_t *kv = malloc(sizeof(uint16_t) * (k_stride * (size_t)(count + 1)));
    float *q = malloc(sizeof(float) * (size_t)nq * n), *w = malloc(sizeof(float) * (size_t)nq * row);
    float *dots = malloc(sizeof(float) * (size_t)nq * row), *dots1 = malloc(sizeof(float) * row);
    float *sums = malloc(sizeof(float) * ((size_t)nq * n + 1)), *sums1 = malloc(sizeof(float) * (size_t)n);
    for (size_t i = 0; i < k_stride * (size_t)(count + 1); i++) kv[i] = exo__float_to_half(frand());
    for (int i = 0; i < nq * n; i++) q[i] = frand();
    for (size_t i = 0; i < (size_t)nq * row; i++) w[i] = frand(), dots[i] = 12345.0f;
    sums[(size_t)nq * n] = 12345.0f;

    exo__vec_dots_f16_heads(n, nq, q, (size_t)n, kv, k_stride, count, dots, row);
    exo__vec_wsum_f16_heads(n, nq, w, row, kv, k_stride, count, sums, (size_t)n);
    CHECK_MSG(sums[(size_t)nq * n] == 12345.0f, "wsum wrote past its heads (n %d, nq %d)", n, nq);
    double worst = 0;
    for (int g = 0; g < nq; g++) {
        CHECK_MSG(dots[(size_t)g * row + count] == 12345.0f, "dots wrote past count %d", count);
        exo__vec_dots_f16(n, q + (size_t)g * n, kv, k_stride, count, dots1);
        exo__vec_wsum_f16(n, w + (size_t)g * row, kv, k_stride, count, sums1);
        CHECK_MSG(memcmp(dots1, dots + (size_t)g * row, sizeof(float) * (size_t)count) == 0,
                  "dots of head %d of %d (n %d, %d keys) differ from the one-head call", g, nq, n, count);
        CHECK_MSG(memcmp(sums1, sums + (size_t)g * n, sizeof(float) * (size_t)n) == 0,
                  "wsum of head %d of %d (n %d, %d keys) differs from the one-head call", g, nq, n, count);
        for (int p = 0; p < count; p++) {
            double exact = 0, mag = 1e-30;
            for (int i = 0; i < n; i++) {
                double t = (double)q[(size_t)g * n + i] * exo__half_to_float(kv[(size_t)p * k_stride + i]);
                exact += t, mag += fabs(t);
            }
            worst = fmax(worst, fabs(dots[(size_t)g * row + p] - exact) / mag);
        }
        for (int i = 0; i < n; i++) {
            double exact = 0, mag = 1e-30;
            for (int p = 0; p < count; p++) {
                double t = (double)w[(size_t)g * row + p] * exo__half_to_float(kv[(size_t)p * k_stride + i]);
                exact += t, mag += fabs(t);
            }
            if (count == 0) CHECK_MSG(sums[(size_t)g * n + i] == 0.0f, "wsum of no keys is not 0");
            worst = fmax(worst, fabs(sums[(size_t)g * n + i] - exact) / mag);
        }
    }
    CHECK_MSG(worst < 1e-5, "n %d nq %d count %d: relative error %g against double sums", n, nq, count, worst);
    free(kv), free(q), free(w), free(dots), free(dots1), free(sums), free(sums1);
}

int main(void)
{
    exo__quants_init(); /* picks the vec helpers too */
    printf("test_vec: %s helpers\n", exo__vec_have_avx2() ? "AVX2" : "scalar");
    const int sizes[] = {8, 20, 64, 80, 96, 128, 256};
    const int counts[] = {0, 1, 3, 5, 63, 64, 65, 127, 130, 300};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int nq = 1; nq <= 8; nq += nq < 4 ? 1 : 3)
            for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) check_case(sizes[si], nq, counts[ci]);
    if (!check_failures) printf("test_vec: grouped dots and weighted sums equal the one-head calls bit for bit\n");
    CHECK_DONE();
}
