/* vec.c: the scalar f32 helpers, and the run-time choice between them and
 * the AVX2/FMA ones in vec_avx2.c.
 *
 * Each public helper calls through one of two const tables (scalar, AVX2):
 * the scalar one until exo__vec_init(), so the helpers are correct before it;
 * init only chooses which table is read. */
#include "vec.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "fp16.h"
#include "vec_avx2.h"

#if defined(__x86_64__) || defined(__i386__)
#define EXO_VEC_X86 1
#else
#define EXO_VEC_X86 0
#endif

/* Four partial sums: the same association as the attention code this
 * replaced, and a chain the compiler may keep in registers. */
void exo__vec_dots_f16_ref(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out)
{
    for (int p = 0; p < count; p++) {
        const uint16_t *kp = k + (size_t)p * k_stride;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        int i = 0;
        for (; i + 4 <= n; i += 4) {
            s0 += q[i] * exo__half_to_float(kp[i]);
            s1 += q[i + 1] * exo__half_to_float(kp[i + 1]);
            s2 += q[i + 2] * exo__half_to_float(kp[i + 2]);
            s3 += q[i + 3] * exo__half_to_float(kp[i + 3]);
        }
        for (; i < n; i++) s0 += q[i] * exo__half_to_float(kp[i]);
        out[p] = (s0 + s1) + (s2 + s3);
    }
}

/* Each output element is one chain of adds in key order; the blocks only
 * change which head's chains advance when, so every nq gives the same bits. */
static void wsum_heads_ref(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                           int count, float *out, size_t out_stride, bool more)
{
    if (!more)
        for (int g = 0; g < nq; g++)
            for (int i = 0; i < n; i++) out[(size_t)g * out_stride + i] = 0.0f;
    for (int p0 = 0; p0 < count; p0 += EXO_VEC_KEY_BLOCK) {
        const int p1 = count - p0 < EXO_VEC_KEY_BLOCK ? count : p0 + EXO_VEC_KEY_BLOCK;
        for (int g = 0; g < nq; g++) {
            const float *wg = w + (size_t)g * w_stride;
            float *og = out + (size_t)g * out_stride;
            for (int p = p0; p < p1; p++)
                for (int i = 0; i < n; i++) og[i] += wg[p] * exo__half_to_float(v[(size_t)p * v_stride + i]);
        }
    }
}

void exo__vec_wsum_f16_heads_ref(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                                 int count, float *out, size_t out_stride)
{
    wsum_heads_ref(n, nq, w, w_stride, v, v_stride, count, out, out_stride, false);
}

static void wsum_heads_more_ref(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                                int count, float *out, size_t out_stride)
{
    wsum_heads_ref(n, nq, w, w_stride, v, v_stride, count, out, out_stride, true);
}

void exo__vec_wsum_f16_ref(int n, const float *w, const uint16_t *v, size_t v_stride, int count, float *out)
{
    exo__vec_wsum_f16_heads_ref(n, 1, w, 0, v, v_stride, count, out, 0);
}

void exo__vec_f16_from_f32_ref(int n, const float *x, uint16_t *y)
{
    for (int i = 0; i < n; i++) y[i] = exo__float_to_half(x[i]);
}

void exo__vec_swiglu_f32_ref(int n, const float *gate, const float *up, float *out)
{
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* With libm's expf: llama.cpp's attention takes each score's exp with expf,
 * and a vector exp that differs from it by one ulp in 0.03% of inputs moved
 * this engine's teacher-forced gaps to llama.cpp's tokens from 0.25 to 0.62
 * (tests/lua/test_reference.lua). The AVX2 version computes expf's own steps
 * four lanes at a time (vec_avx2.c), the same bits at a tenth of the cost. */
float exo__vec_softmax_f32_ref(int n, float scale, float *x)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] *= scale;
        if (x[i] > max) max = x[i];
    }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    return sum;
}

/* Blocks of EXO_VEC_KEY_BLOCK keys, a multiple of four: the dots kernels
 * give a key the same arithmetic at the same offset modulo four (the AVX2
 * one takes four at a time), so a key's score is the same bits in a block
 * as in one call over all keys. */
static void dots_heads_ref(int n, int nq, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                           int count, float *out, size_t out_stride)
{
    for (int p0 = 0; p0 < count; p0 += EXO_VEC_KEY_BLOCK) {
        const int np = count - p0 < EXO_VEC_KEY_BLOCK ? count - p0 : EXO_VEC_KEY_BLOCK;
        for (int g = 0; g < nq; g++)
            exo__vec_dots_f16_ref(n, q + (size_t)g * q_stride, k + (size_t)p0 * k_stride, k_stride, np,
                                  out + (size_t)g * out_stride + p0);
    }
}

typedef void (*swiglu_fn)(int n, const float *gate, const float *up, float *out);
typedef void (*dots_fn)(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out);
typedef void (*dots_heads_fn)(int n, int nq, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                              int count, float *out, size_t out_stride);
typedef void (*wsum_heads_fn)(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                              int count, float *out, size_t out_stride);
typedef void (*to_f16_fn)(int n, const float *x, uint16_t *y);
typedef float (*softmax_fn)(int n, float scale, float *x);

/* The helpers for one instruction set, fixed at compile time. */
typedef struct {
    dots_fn dots;
    dots_heads_fn dots_heads;
    wsum_heads_fn wsum_heads;
    wsum_heads_fn wsum_heads_more;
    to_f16_fn to_f16;
    swiglu_fn swiglu;
    softmax_fn softmax;
    bool avx2;
} vec_kernels;

static const vec_kernels vec_scalar = {
    .dots = exo__vec_dots_f16_ref,
    .dots_heads = dots_heads_ref,
    .wsum_heads = exo__vec_wsum_f16_heads_ref,
    .wsum_heads_more = wsum_heads_more_ref,
    .to_f16 = exo__vec_f16_from_f32_ref,
    .swiglu = exo__vec_swiglu_f32_ref,
    .softmax = exo__vec_softmax_f32_ref,
};

#if EXO_VEC_X86
static const vec_kernels vec_avx2 = {
    .dots = exo__vec_f16_dots_avx2,
    .dots_heads = exo__vec_f16_dots_heads_avx2,
    .wsum_heads = exo__vec_f16_wsum_heads_avx2,
    .wsum_heads_more = exo__vec_f16_wsum_heads_more_avx2,
    .to_f16 = exo__vec_f16_from_f32_avx2,
    .swiglu = exo__vec_f32_swiglu_avx2,
    .softmax = exo__vec_f32_softmax_avx2,
    .avx2 = true,
};
#endif

/* The set in use. Atomic only so that a caller that skipped exo__vec_init()
 * may run beside it; the sets never change, so relaxed loads suffice. */
static _Atomic(const vec_kernels *) active = &vec_scalar;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static inline const vec_kernels *active_kernels(void)
{
    return atomic_load_explicit(&active, memory_order_relaxed);
}

static void vec_init_once(void)
{
#if EXO_VEC_X86
    if (exo__cpu_features_get()->avx2) atomic_store_explicit(&active, &vec_avx2, memory_order_relaxed);
#endif
}

void exo__vec_init(void)
{
    pthread_once(&init_once, vec_init_once);
}

bool exo__vec_have_avx2(void)
{
    return active_kernels()->avx2;
}

void exo__vec_dots_f16(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out)
{
    active_kernels()->dots(n, q, k, k_stride, count, out);
}

void exo__vec_wsum_f16(int n, const float *w, const uint16_t *v, size_t v_stride, int count, float *out)
{
    active_kernels()->wsum_heads(n, 1, w, 0, v, v_stride, count, out, 0);
}

void exo__vec_dots_f16_heads(int n, int nq, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                             int count, float *out, size_t out_stride)
{
    active_kernels()->dots_heads(n, nq, q, q_stride, k, k_stride, count, out, out_stride);
}

void exo__vec_wsum_f16_heads(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                             int count, float *out, size_t out_stride)
{
    active_kernels()->wsum_heads(n, nq, w, w_stride, v, v_stride, count, out, out_stride);
}

void exo__vec_wsum_f16_heads_more(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                                  int count, float *out, size_t out_stride)
{
    active_kernels()->wsum_heads_more(n, nq, w, w_stride, v, v_stride, count, out, out_stride);
}

void exo__vec_f16_from_f32(int n, const float *x, uint16_t *y)
{
    active_kernels()->to_f16(n, x, y);
}

void exo__vec_swiglu_f32(int n, const float *gate, const float *up, float *out)
{
    active_kernels()->swiglu(n, gate, up, out);
}

float exo__vec_softmax_f32(int n, float scale, float *x)
{
    return active_kernels()->softmax(n, scale, x);
}
