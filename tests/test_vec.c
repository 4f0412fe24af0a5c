/* test_vec.c: attention's grouped-query helpers (kernels/cpu/vec.h).
 *
 * exo__vec_dots_f16_heads and exo__vec_wsum_f16_heads serve several query
 * heads that share one KV head in blocks of keys. The backend splits a group
 * into runs of heads depending on the batch (a decode step of a model with one
 * KV head splits it to keep both threads busy), so batch invariance rests on
 * a head's result being the same bits in any run: checked here against the
 * one-head calls for every run length, head size (multiples of 64 and the
 * tails past them), key count around the block size and row layout (strided,
 * or one run as in a KV block: the helpers read them differently), on the path the CPU
 * picks (AVX2) and, run again with EXO_FORCE_SCALAR=1 (CMakeLists.txt), on
 * the scalar one; and both against a double-precision sum. A weighted sum
 * taken in pieces (wsum_heads_more, for a paged cache) gives one call's bits.
 *
 * The softmax's exps must be libm's expf bits (vec.c says why): checked for
 * floats across the whole range a softmax feeds it (scale * score - max <= 0,
 * one float in 7 of them, and every one where expf turns to its slow path),
 * in runs of every length mod 8 so vector bodies and tails both serve. */
#include <math.h>
#include <stdbool.h>
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
static void check_case(int n, int nq, int count, bool one_run)
{
    /* Rows strided like a cache of several KV heads side by side, or one run (a KV block's head). */
    const size_t k_stride = one_run ? (size_t)n : (size_t)n * 3 + 8, row = (size_t)count + 5;
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
    if (n % EXO_VEC_WSUM_MORE_LANES == 0) {
        /* The keys in pieces (a paged cache's blocks: any split) give one call's bits. */
        float *pieces = malloc(sizeof(float) * (size_t)nq * n);
        int split[] = {count / 3, count / 3 + 1 + count / 2};
        exo__vec_wsum_f16_heads(n, nq, w, row, kv, k_stride, split[0] < count ? split[0] : count, pieces, (size_t)n);
        for (int s = 0; s < 2; s++) {
            int from = split[s] < count ? split[s] : count, to = s == 0 && split[1] < count ? split[1] : count;
            exo__vec_wsum_f16_heads_more(n, nq, w + from, row, kv + (size_t)from * k_stride, k_stride, to - from, pieces,
                                         (size_t)n);
        }
        CHECK_MSG(memcmp(pieces, sums, sizeof(float) * (size_t)nq * n) == 0,
                  "wsum in pieces differs from one call (n %d, nq %d, %d keys, stride %zu)", n, nq, count, k_stride);
        free(pieces);
    }
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

/* Softmax of [0, v...] (max 0, scale 1) is expf of each v: compares n_vals
 * floats from vals with expf, in calls of len values (plus the 0). */
static long check_softmax_exps(const float *vals, int n_vals, int len)
{
    float x[64];
    long bad = 0;
    for (int at = 0; at < n_vals; at += len) {
        int m = n_vals - at < len ? n_vals - at : len;
        x[0] = 0.0f;
        memcpy(x + 1, vals + at, sizeof(float) * (size_t)m);
        float sum = exo__vec_softmax_f32(m + 1, 1.0f, x), want_sum = 1.0f;
        for (int i = 0; i < m; i++) {
            float want = expf(vals[at + i]);
            want_sum += want; /* in order, as every version sums */
            if (memcmp(&want, &x[i + 1], sizeof want) != 0 && bad++ < 5)
                fprintf(stderr, "softmax: exp(%a) = %a, expf gives %a\n", (double)vals[at + i], (double)x[i + 1],
                        (double)want);
        }
        CHECK_MSG(isnan(want_sum) ? isnan(sum) : sum == want_sum, "softmax sum %a, expected %a", (double)sum,
                  (double)want_sum);
        CHECK_MSG(x[0] == 1.0f, "exp(0) is %g", x[0]);
    }
    return bad;
}

static void check_softmax(void)
{
    enum { CHUNK = 1 << 16 };
    static float vals[CHUNK];
    long bad = 0, n = 0;
    int len = 1, k = 0;
    /* Non-positive floats from -0 to past expf's underflow (-104), one bit
     * pattern in 7; every pattern in [-89, -87] and [-105, -103], where the
     * slow path starts; then -inf, NaN and the smallest magnitudes. */
    for (uint32_t b = 0x80000000u; b <= 0xc2d20000u; b += (b >= 0xc2ae0000u && b <= 0xc2b20000u) ||
                                                            (b >= 0xc2ce0000u) ? 1 : 7) {
        memcpy(&vals[k++], &b, sizeof b);
        if (k == CHUNK) {
            bad += check_softmax_exps(vals, k, len), n += k, k = 0;
            len = len % 40 + 1;
        }
    }
    const float special[] = {-INFINITY, NAN, -0.0f, 0.0f, -0x1p-149f, -0x1p-126f, -88.0f, -87.9f, -103.97f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) vals[k++] = special[i];
    bad += check_softmax_exps(vals, k, 9), n += k;
    CHECK_MSG(bad == 0, "softmax: %ld of %ld exps differ from expf", bad, n);
    if (!bad) printf("test_vec: softmax's exps equal expf's bits on %ld inputs\n", n);
}

int main(void)
{
    exo__quants_init(); /* picks the vec helpers too */
    printf("test_vec: %s helpers\n", exo__vec_have_avx2() ? "AVX2" : "scalar");
    const int sizes[] = {8, 20, 64, 80, 96, 128, 256};
    const int counts[] = {0, 1, 3, 5, 63, 64, 65, 127, 130, 300};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int nq = 1; nq <= 8; nq += nq < 4 ? 1 : 3)
            for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
                check_case(sizes[si], nq, counts[ci], false);
                check_case(sizes[si], nq, counts[ci], true);
            }
    check_softmax();
    if (!check_failures) printf("test_vec: grouped dots and weighted sums equal the one-head calls bit for bit\n");
    CHECK_DONE();
}
