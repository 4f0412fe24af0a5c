/* vec_avx2.c: AVX2/FMA versions of vec.h's f32 helpers.
 *
 * Built with -mavx2 -mfma -mf16c; vec.c calls these only after checking the
 * CPU. Attention calls them on head-sized vectors (64 or 128 floats), so the
 * loops take 32 floats at a time into four accumulators (enough to cover the
 * FMA latency), then 8 at a time, then a scalar tail. The many-key versions
 * (dots, wsum) keep the query, or 64 floats of the output row, in registers
 * across keys, and dots reduces four keys' sums with one transposing hadd.
 * SwiGLU computes exp in double precision, four lanes at a time, so the
 * result is the correctly rounded float nearly always: it differs from
 * libm's expf by one ulp in about 0.03% of inputs (measured). Even that moves
 * the default model's logits by a few tenths after 30 layers (the int8
 * activation quantization turns last-bit changes into whole steps), so any
 * change here is checked against llama.cpp's answers
 * (tests/lua/test_reference.lua), not against our own earlier logits.
 * (llama.cpp's SiLU uses a vector exp too; its attention softmax uses expf,
 * and so does ours: vec.c.) */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "vec_avx2.c must be compiled with -mavx2 -mfma"
#endif

#include "vec.h"
#include "vec_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight IEEE halves widened to floats. */
static inline __m256 load_h8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline float half_to_float(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* Four keys at a time, two accumulators each (eight FMA chains in flight);
 * the remaining keys one by one. Keys are f16, widened on load. */
void exo__vec_f16_dots_avx2(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out)
{
    const int n8 = n & ~7;
    int p = 0;
    for (; p + 4 <= count; p += 4) {
        const uint16_t *k0 = k + (size_t)p * k_stride, *k1 = k0 + k_stride, *k2 = k1 + k_stride, *k3 = k2 + k_stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + 8);
            a0 = _mm256_fmadd_ps(qa, load_h8(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qa, load_h8(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qa, load_h8(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qa, load_h8(k3 + i), a3);
            b0 = _mm256_fmadd_ps(qb, load_h8(k0 + i + 8), b0);
            b1 = _mm256_fmadd_ps(qb, load_h8(k1 + i + 8), b1);
            b2 = _mm256_fmadd_ps(qb, load_h8(k2 + i + 8), b2);
            b3 = _mm256_fmadd_ps(qb, load_h8(k3 + i + 8), b3);
        }
        if (i < n8) {
            __m256 qa = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qa, load_h8(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qa, load_h8(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qa, load_h8(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qa, load_h8(k3 + i), a3);
        }
        /* [s0 s1 s2 s3] from the four keys' eight lanes each */
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1)),
                                  _mm256_hadd_ps(_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        if (n8 < n) {
            float tail[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
            for (int j = n8; j < n; j++) {
                tail[0] += q[j] * half_to_float(k0[j]);
                tail[1] += q[j] * half_to_float(k1[j]);
                tail[2] += q[j] * half_to_float(k2[j]);
                tail[3] += q[j] * half_to_float(k3[j]);
            }
            s = _mm_add_ps(s, _mm_loadu_ps(tail));
        }
        _mm_storeu_ps(out + p, s);
    }
    for (; p < count; p++) {
        const uint16_t *kp = k + (size_t)p * k_stride;
        __m256 acc = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_h8(kp + i), acc);
        float sum = hsum_ps(acc);
        for (; i < n; i++) sum += q[i] * half_to_float(kp[i]);
        out[p] = sum;
    }
}

/* The output's lanes past the last multiple of 64, for one head: eight at a
 * time with two chains (even and odd keys), then one by one. */
static void wsum_tail(int i, int n, const float *w, const uint16_t *v, size_t v_stride, int count, float *out)
{
    for (; i + 8 <= n; i += 8) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int p = 0;
        for (; p + 2 <= count; p += 2) {
            acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p), load_h8(v + (size_t)p * v_stride + i), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p + 1), load_h8(v + (size_t)(p + 1) * v_stride + i), acc1);
        }
        if (p < count) acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + p), load_h8(v + (size_t)p * v_stride + i), acc0);
        _mm256_storeu_ps(out + i, _mm256_add_ps(acc0, acc1));
    }
    for (; i < n; i++) {
        float s = 0.0f;
        for (int p = 0; p < count; p++) s += w[p] * half_to_float(v[(size_t)p * v_stride + i]);
        out[i] = s;
    }
}

/* 64 output lanes at a time, each one FMA chain over the keys in order; the
 * chains of every head advance a block of keys (in L1 after the first head
 * read it), parking in out between blocks, which changes no bits. The lanes
 * past the last 64 (head sizes like 80 or 96) go unblocked, head by head. */
void exo__vec_f16_wsum_heads_avx2(int n, int nq, const float *w, size_t w_stride, const uint16_t *v,
                                  size_t v_stride, int count, float *out, size_t out_stride)
{
    const int n64 = n & ~63;
    for (int p0 = 0; n64 && (p0 == 0 || p0 < count); p0 += EXO_VEC_KEY_BLOCK) {
        const int p1 = count - p0 < EXO_VEC_KEY_BLOCK ? count : p0 + EXO_VEC_KEY_BLOCK;
        for (int g = 0; g < nq; g++) {
            const float *wg = w + (size_t)g * w_stride;
            for (int i = 0; i < n64; i += 64) {
                float *og = out + (size_t)g * out_stride + i;
                __m256 acc[8];
                for (int c = 0; c < 8; c++) acc[c] = p0 ? _mm256_loadu_ps(og + 8 * c) : _mm256_setzero_ps();
                for (int p = p0; p < p1; p++) {
                    const uint16_t *vp = v + (size_t)p * v_stride + i;
                    __m256 wp = _mm256_broadcast_ss(wg + p);
                    for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(wp, load_h8(vp + 8 * c), acc[c]);
                }
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(og + 8 * c, acc[c]);
            }
        }
    }
    if (n64 < n)
        for (int g = 0; g < nq; g++)
            wsum_tail(n64, n, w + (size_t)g * w_stride, v, v_stride, count, out + (size_t)g * out_stride);
}

/* Round to nearest even, as vcvtps2ph does with rounding mode 0. */
void exo__vec_f16_from_f32_avx2(int n, const float *x, uint16_t *y)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

/* exp of four floats (as doubles) to double precision: x = n ln2 + r with
 * |r| <= ln2/2, exp(r) by its Taylor series to r^11 (error under 1e-14),
 * 2^n built in the exponent bits. */
static inline __m256d exp_pd(__m256d x)
{
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(0.6931471805598903), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(5.497923018708371e-14), r);
    static const double inv_fact[] = { 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040,
                                       1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0 };
    __m256d p = _mm256_set1_pd(inv_fact[0]);
    for (int k = 1; k < 12; k++) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(inv_fact[k]));
    const __m256i e = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
}

/* expf of eight floats. Inputs are clamped to [-104, 89], where float's exp
 * is already 0 or infinity, so 2^n stays a normal double. */
static inline __m256 exp_ps(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(89.0f));
    __m128 lo = _mm256_cvtpd_ps(exp_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x))));
    __m128 hi = _mm256_cvtpd_ps(exp_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

static inline __m256 swiglu_ps(__m256 g, __m256 u)
{
    __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

/* The tail goes through the same vector code (padded), so an element's value
 * never depends on where a call's range starts or ends: the backend applies
 * this to chunks of rows whose bounds vary from run to run. */
void exo__vec_f32_swiglu_avx2(int n, const float *gate, const float *up, float *out)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, swiglu_ps(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        float g[8] = {0}, u[8] = {0}, o[8];
        memcpy(g, gate + i, sizeof(float) * (size_t)(n - i));
        memcpy(u, up + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(o, swiglu_ps(_mm256_loadu_ps(g), _mm256_loadu_ps(u)));
        memcpy(out + i, o, sizeof(float) * (size_t)(n - i));
    }
}
