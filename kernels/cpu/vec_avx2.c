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
#include <stdbool.h>
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

/* Eight elements of a key or value row at i: f16 from the cache, or f32 from
 * a block the grouped helpers widened once for all the group's heads (the
 * widening is exact, so both give the same floats and the same sums). */
#define ROW8(row, i) (wide ? _mm256_loadu_ps((const float *)(row) + (i)) : load_h8((const uint16_t *)(row) + (i)))
#define ROW1(row, i) (wide ? ((const float *)(row))[i] : half_to_float(((const uint16_t *)(row))[i]))
#define ROW_AT(base, p, stride) ((const char *)(base) + (size_t)(p) * (stride) * (wide ? sizeof(float) : sizeof(uint16_t)))

/* Four keys at a time, two accumulators each (eight FMA chains in flight);
 * the remaining keys one by one. k_stride in elements. */
static inline __attribute__((always_inline)) void dots_body(int n, const float *q, const void *k, size_t k_stride,
                                                            int count, float *out, const int wide)
{
    const int n8 = n & ~7;
    int p = 0;
    for (; p + 4 <= count; p += 4) {
        const void *k0 = ROW_AT(k, p, k_stride), *k1 = ROW_AT(k, p + 1, k_stride), *k2 = ROW_AT(k, p + 2, k_stride),
                   *k3 = ROW_AT(k, p + 3, k_stride);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + 8);
            a0 = _mm256_fmadd_ps(qa, ROW8(k0, i), a0);
            a1 = _mm256_fmadd_ps(qa, ROW8(k1, i), a1);
            a2 = _mm256_fmadd_ps(qa, ROW8(k2, i), a2);
            a3 = _mm256_fmadd_ps(qa, ROW8(k3, i), a3);
            b0 = _mm256_fmadd_ps(qb, ROW8(k0, i + 8), b0);
            b1 = _mm256_fmadd_ps(qb, ROW8(k1, i + 8), b1);
            b2 = _mm256_fmadd_ps(qb, ROW8(k2, i + 8), b2);
            b3 = _mm256_fmadd_ps(qb, ROW8(k3, i + 8), b3);
        }
        if (i < n8) {
            __m256 qa = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qa, ROW8(k0, i), a0);
            a1 = _mm256_fmadd_ps(qa, ROW8(k1, i), a1);
            a2 = _mm256_fmadd_ps(qa, ROW8(k2, i), a2);
            a3 = _mm256_fmadd_ps(qa, ROW8(k3, i), a3);
        }
        /* [s0 s1 s2 s3] from the four keys' eight lanes each */
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1)),
                                  _mm256_hadd_ps(_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        if (n8 < n) {
            float tail[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
            for (int j = n8; j < n; j++) {
                /* fmaf, not a * b + c: whether the compiler fuses that
                 * differed between the f16 and f32 bodies */
                tail[0] = fmaf(q[j], ROW1(k0, j), tail[0]);
                tail[1] = fmaf(q[j], ROW1(k1, j), tail[1]);
                tail[2] = fmaf(q[j], ROW1(k2, j), tail[2]);
                tail[3] = fmaf(q[j], ROW1(k3, j), tail[3]);
            }
            s = _mm_add_ps(s, _mm_loadu_ps(tail));
        }
        _mm_storeu_ps(out + p, s);
    }
    for (; p < count; p++) {
        const void *kp = ROW_AT(k, p, k_stride);
        __m256 acc = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ROW8(kp, i), acc);
        float sum = hsum_ps(acc);
        for (; i < n; i++) sum = fmaf(q[i], ROW1(kp, i), sum);
        out[p] = sum;
    }
}

void exo__vec_f16_dots_avx2(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out)
{
    dots_body(n, q, k, k_stride, count, out, 0);
}

/* Rows of the widest head the grouped helpers widen (larger ones go head by
 * head): a block of keys is EXO_VEC_KEY_BLOCK x 256 floats, 64 KiB of stack. */
#define WIDE_MAX_N 256

/* Rows ahead that widen_rows asks for: a cache's rows of one KV head lie a
 * whole position (all KV heads) apart, and the hardware prefetcher left the
 * widening waiting on memory (78% of its samples on the first use of each
 * load, perf annotate, 4,000 positions). Prefetches past the cache are
 * harmless (they never fault). */
#define WIDEN_PREFETCH_ROWS 16

/* count rows of n halves, stride apart, into dst as floats n apart. */
static void widen_rows(int n, const uint16_t *src, size_t stride, int count, float *dst)
{
    for (int p = 0; p < count; p++) {
        const uint16_t *row = src + (size_t)p * stride;
        const char *ahead = (const char *)(row + WIDEN_PREFETCH_ROWS * stride);
        for (int b = 0; b < n * (int)sizeof(uint16_t); b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
        float *d = dst + (size_t)p * n;
        int i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, load_h8(row + i));
        for (; i < n; i++) d[i] = half_to_float(row[i]);
    }
}

/* Keys strided in memory (each position's KV heads side by side) are
 * widened a block at a time, then every head's dots read floats: the
 * conversion and the strided reads, not the multiply, were the cost of a key
 * shared by four heads. Keys that are one run (the KV pool's blocks) are read
 * as halves by every head: the block stays in L1, and widening it cost more
 * than converting on the fly (bench_attention, 1B shape at 4,000 positions:
 * 18.0 ms widened, 15.9 one head at a time). Either way the same bits. */
void exo__vec_f16_dots_heads_avx2(int n, int nq, const float *q, size_t q_stride, const uint16_t *k,
                                  size_t k_stride, int count, float *out, size_t out_stride)
{
    float wide[EXO_VEC_KEY_BLOCK * WIDE_MAX_N];
    for (int p0 = 0; p0 < count; p0 += EXO_VEC_KEY_BLOCK) {
        const int np = count - p0 < EXO_VEC_KEY_BLOCK ? count - p0 : EXO_VEC_KEY_BLOCK;
        const uint16_t *kb = k + (size_t)p0 * k_stride;
        if (nq > 1 && n <= WIDE_MAX_N && k_stride != (size_t)n) {
            widen_rows(n, kb, k_stride, np, wide);
            for (int g = 0; g < nq; g++)
                dots_body(n, q + (size_t)g * q_stride, wide, (size_t)n, np, out + (size_t)g * out_stride + p0, 1);
        } else {
            for (int g = 0; g < nq; g++)
                dots_body(n, q + (size_t)g * q_stride, kb, k_stride, np, out + (size_t)g * out_stride + p0, 0);
        }
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

/* One head's 64-lane chunks over keys [p0, p1) of the rows at v (f16 or
 * widened f32), each lane one FMA chain in key order, resumed from out. */
static inline __attribute__((always_inline)) void wsum_block(int n64, const float *w, const void *v, size_t v_stride,
                                                             int p0, int p1, float *out, bool resume, const int wide)
{
    for (int i = 0; i < n64; i += 64) {
        float *o = out + i;
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = resume ? _mm256_loadu_ps(o + 8 * c) : _mm256_setzero_ps();
        for (int p = p0; p < p1; p++) {
            const void *vp = ROW_AT(v, p - p0, v_stride);
            __m256 wp = _mm256_broadcast_ss(w + p);
            for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(wp, ROW8(vp, i + 8 * c), acc[c]);
        }
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(o + 8 * c, acc[c]);
    }
}

/* 64 output lanes at a time, each one FMA chain over the keys in order; the
 * chains of every head advance a block of values (widened once for the
 * group), parking in out between blocks, which changes no bits. The lanes
 * past the last 64 (head sizes like 80 or 96) go unblocked, head by head. */
static void wsum_heads(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                       int count, float *out, size_t out_stride, bool more)
{
    const int n64 = n & ~63;
    float wide[EXO_VEC_KEY_BLOCK * WIDE_MAX_N];
    for (int p0 = 0; n64 && (p0 == 0 || p0 < count); p0 += EXO_VEC_KEY_BLOCK) {
        const int p1 = count - p0 < EXO_VEC_KEY_BLOCK ? count : p0 + EXO_VEC_KEY_BLOCK;
        const uint16_t *vb = v + (size_t)p0 * v_stride;
        const bool widened = nq > 1 && n64 <= WIDE_MAX_N && v_stride != (size_t)n; /* as in dots_heads */
        if (widened) widen_rows(n64, vb, v_stride, p1 - p0, wide);
        for (int g = 0; g < nq; g++) {
            const float *wg = w + (size_t)g * w_stride;
            float *og = out + (size_t)g * out_stride;
            if (widened) wsum_block(n64, wg, wide, (size_t)n64, p0, p1, og, more || p0, 1);
            else wsum_block(n64, wg, vb, v_stride, p0, p1, og, more || p0, 0);
        }
    }
    if (n64 < n)
        for (int g = 0; g < nq; g++)
            wsum_tail(n64, n, w + (size_t)g * w_stride, v, v_stride, count, out + (size_t)g * out_stride);
}

void exo__vec_f16_wsum_heads_avx2(int n, int nq, const float *w, size_t w_stride, const uint16_t *v,
                                  size_t v_stride, int count, float *out, size_t out_stride)
{
    wsum_heads(n, nq, w, w_stride, v, v_stride, count, out, out_stride, false);
}

/* n a multiple of 64 (vec.h): only the resumable 64-lane chains run. */
void exo__vec_f16_wsum_heads_more_avx2(int n, int nq, const float *w, size_t w_stride, const uint16_t *v,
                                       size_t v_stride, int count, float *out, size_t out_stride)
{
    wsum_heads(n & ~63, nq, w, w_stride, v, v_stride, count, out, out_stride, true);
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

/* ---- softmax with libm's expf, eight at a time ------------------------------
 *
 * Attention's exp must be expf's exact bits (vec.c says why), and calling
 * expf per score cost ~3.3 ns: a quarter of a decode step's attention at
 * 4,000 positions. glibc (since 2.27) computes expf in double precision:
 * exp(x) = 2^(k/32) * 2^(r/32) with k = round(x * 32/ln2), the 2^(k/32) part
 * from a table of 32 doubles with k's high bits added to the exponent, the
 * other from a cubic; on CPUs with FMA and AVX2 its FMA build runs, whose
 * compiler fused the multiply-adds below. The same operations on four lanes
 * give the same bits: every step is one IEEE operation (FMA included) on the
 * same values, and tests/test_vec.c checks it against expf on every float
 * in the range softmax uses. Inputs of magnitude >= 88 (underflow, NaN, inf)
 * take expf itself, as its own slow path does.
 *
 * The constants are math, not tuning: the table holds 2^(i/32) rounded to
 * double, less i << 47 (the exponent bits the index adds back); the
 * polynomial's three coefficients are the ones glibc's data carries (read
 * from libm's __exp2f_data; a fit of 2^(r/32)), and 0x1.8p52 rounds a double
 * to an integer in its low bits. */
static const uint64_t exp2_32_table[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

/* expf of four floats (widened), in double until the last rounding. */
static inline __m128 expf4_libm(__m128 x)
{
    const __m256d inv_ln2_32 = _mm256_set1_pd(0x1.71547652b82fep+5), shift = _mm256_set1_pd(0x1.8p52);
    const __m256d c0 = _mm256_set1_pd(0x1.c6af84b912394p-20), c1 = _mm256_set1_pd(0x1.ebfce50fac4f3p-13);
    const __m256d c2 = _mm256_set1_pd(0x1.62e42ff0c52d6p-6), one = _mm256_set1_pd(1.0);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(inv_ln2_32, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(inv_ln2_32, xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)exp2_32_table, _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d z = _mm256_fmadd_pd(r, c0, c1);
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, c2, one);
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

/* expf of eight floats; lanes of magnitude >= 88 (or NaN) go to expf. */
static inline __m256 expf8_libm(__m256 x)
{
    __m256i top = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(x), 20), _mm256_set1_epi32(0x7ff));
    __m256 y = _mm256_set_m128(expf4_libm(_mm256_extractf128_ps(x, 1)), expf4_libm(_mm256_castps256_ps128(x)));
    if (!_mm256_testz_si256(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x42a)), _mm256_set1_epi32(-1))) {
        float in[8], out[8];
        _mm256_storeu_ps(in, x);
        _mm256_storeu_ps(out, y);
        for (int i = 0; i < 8; i++) {
            uint32_t bits;
            memcpy(&bits, &in[i], sizeof bits);
            if (((bits >> 20) & 0x7ff) > 0x42a) out[i] = expf(in[i]);
        }
        y = _mm256_loadu_ps(out);
    }
    return y;
}

float exo__vec_f32_softmax_avx2(int n, float scale, float *x)
{
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vscale);
        _mm256_storeu_ps(x + i, v);
        vmax = _mm256_max_ps(v, vmax); /* a NaN score is passed over, as in the scalar loop */
    }
    float m[8], max;
    _mm256_storeu_ps(m, vmax);
    max = m[0];
    for (int l = 1; l < 8; l++) max = m[l] > max ? m[l] : max;
    for (; i < n; i++) {
        x[i] *= scale;
        if (x[i] > max) max = x[i];
    }
    /* The sum goes key by key, as the scalar loop's does: summed in lanes,
     * Gemma 3's greedy answers over three nodes left llama.cpp's after a few
     * words (test_cluster's GemmaRing). Its chain of adds overlaps the next
     * keys' exps, so it costs less than a third of what expf did. */
    const __m256 vm = _mm256_set1_ps(max);
    float sum = 0.0f;
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, expf8_libm(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
        for (int l = 0; l < 8; l++) sum += x[i + l];
    }
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    return sum;
}
