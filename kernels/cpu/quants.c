/* quants.c: the weight-format traits table, fp16/bf16 conversions, and the
 * scalar reference kernels (dequantize, quantize, dot) for every format.
 *
 * The _ref kernels are the definition of each format's meaning: plain loops
 * that follow GGUF's block layouts, written for clarity. The fast kernels in
 * quants_avx2.c and quants_avx512.c are tested against them. The traits table
 * starts out pointing at the _ref kernels (static initializers), so code that
 * runs before exo_quants_init() is correct, only slower; init swaps in the
 * AVX2 ones once, and over those the AVX-512 VNNI ones where the CPU has them.
 *
 * Activation quantization (Q8_32, Q8_K) is symmetric: d = amax/127 and
 * q = round-to-nearest-even(x/d), so |q| <= 127. The AVX2 dots depend on that
 * bound (no -128) to stay clear of int16 saturation in maddubs. */
#include "quants.h"

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quants_avx2.h"
#include "quants_avx512.h"
#include "vec.h"

#if EXO_QUANTS_X86
#include <cpuid.h>
#endif

/* ---- fp16 / bf16 ---------------------------------------------------------- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float exo_half_to_float(exo_half h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) /* inf or NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    if (em >= 0x0400u) /* normal: rebias the exponent from 15 to 127 */
        return f32_from_bits(sign | ((em << 13) + ((127u - 15u) << 23)));
    /* zero or subnormal: em * 2^-24 is exact in float */
    return f32_from_bits(sign | f32_bits((float)em * 0x1p-24f));
}

exo_half exo_float_to_half(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) { /* inf, or NaN kept quiet and non-zero */
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return (exo_half)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) /* >= 65520 rounds past 65504 to inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) { /* normal half: drop 13 bits, ties to even; a carry
                              * into the exponent is the right answer */
        uint32_t m = ax - ((127u - 15u) << 23);
        m += 0xfffu + ((m >> 13) & 1u);
        return (exo_half)(sign | (m >> 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds (ties to even) to zero */
        return sign;
    /* subnormal half: value = mant * 2^(e-150), unit 2^-24, so shift by 126-e */
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t r = (mant + (1u << (shift - 1)) - 1u + ((mant >> shift) & 1u)) >> shift;
    return (exo_half)(sign | r);
}

float exo_bf16_to_float(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t exo_float_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncating could make it inf */
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u); /* ties to even; overflow carries to inf */
    return (uint16_t)(x >> 16);
}

/* ---- quantizer helpers ------------------------------------------------------ */

/* Round to nearest, ties to even (the default FP mode), the same as the AVX2
 * kernels' _mm256_round_ps, so fast and reference activations match exactly.
 * rintf also keeps the compiler from fusing the caller's multiply into it. */
static inline int round_nearest(float v)
{
    return (int)rintf(v);
}

static inline int clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* The smallest half >= v. Scales are rounded up so the quantization grid
 * still covers the block's range after the scale is stored as fp16. */
static exo_half half_round_up(float v)
{
    exo_half h = exo_float_to_half(v);
    if (exo_half_to_float(h) < v) {
        if ((h & 0x7fffu) == 0) h = 0x0001u;
        else if (h & 0x8000u) h--;
        else h++;
    }
    return h;
}

/* The largest half <= v (a minimum rounded down keeps every value >= it). */
static exo_half half_round_down(float v)
{
    return (exo_half)(half_round_up(-v) ^ 0x8000u);
}

/* ---- F32, F16, BF16 --------------------------------------------------------- */

static void to_float_f32_ref(const void *src, float *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void from_float_f32_ref(const float *src, void *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static float vec_dot_f32_ref(int n, const void *w_row, const void *act_row)
{
    const float *w = w_row, *x = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static void to_float_f16_ref(const void *src, float *dst, int64_t n)
{
    const exo_half *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = exo_half_to_float(s[i]);
}

static void from_float_f16_ref(const float *src, void *dst, int64_t n)
{
    exo_half *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = exo_float_to_half(src[i]);
}

static float vec_dot_f16_ref(int n, const void *w_row, const void *act_row)
{
    const exo_half *w = w_row;
    const float *x = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += exo_half_to_float(w[i]) * x[i];
    return sum;
}

static void to_float_bf16_ref(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = exo_bf16_to_float(s[i]);
}

static void from_float_bf16_ref(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = exo_float_to_bf16(src[i]);
}

static float vec_dot_bf16_ref(int n, const void *w_row, const void *act_row)
{
    const uint16_t *w = w_row;
    const float *x = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += exo_bf16_to_float(w[i]) * x[i];
    return sum;
}

/* ---- Q4_0: x = (q - 8) * d -------------------------------------------------- */

static void to_float_q4_0_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo_half_to_float(b[i].d);
        for (int j = 0; j < EXO_QK / 2; j++) {
            dst[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            dst[j + EXO_QK / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* As ggml does: the value of largest magnitude maps to -8 exactly, so the
 * grid is [-8d, 7d] and values near +8d clip to 7d: error <= |d|, and <= |d|/2
 * for values inside the grid. */
static void from_float_q4_0_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < EXO_QK; j++) {
            if (fabsf(src[j]) > amax) {
                amax = fabsf(src[j]);
                vmax = src[j];
            }
        }
        b[i].d = exo_float_to_half(vmax / -8.0f);
        float d = exo_half_to_float(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < EXO_QK / 2; j++) {
            int q0 = clamp_int(round_nearest(src[j] * id) + 8, 0, 15);
            int q1 = clamp_int(round_nearest(src[j + EXO_QK / 2] * id) + 8, 0, 15);
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static float vec_dot_q4_0_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q4_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0f) - 8) * a[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + EXO_QK / 2];
        }
        sum += (float)sumi * (exo_half_to_float(w[i].d) * a[i].d);
    }
    return sum;
}

/* ---- Q4_1: x = q * d + m ---------------------------------------------------- */

static void to_float_q4_1_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo_half_to_float(b[i].d), m = exo_half_to_float(b[i].m);
        for (int j = 0; j < EXO_QK / 2; j++) {
            dst[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
            dst[j + EXO_QK / 2] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* m is the block minimum rounded down to fp16 and d the range over 15 rounded
 * up, so the grid covers the block: error <= d/2. */
static void from_float_q4_1_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        float vmin = src[0], vmax = src[0];
        for (int j = 1; j < EXO_QK; j++) {
            vmin = fminf(vmin, src[j]);
            vmax = fmaxf(vmax, src[j]);
        }
        b[i].m = half_round_down(vmin);
        float m = exo_half_to_float(b[i].m);
        b[i].d = half_round_up((vmax - m) / 15.0f);
        float d = exo_half_to_float(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < EXO_QK / 2; j++) {
            int q0 = clamp_int(round_nearest((src[j] - m) * id), 0, 15);
            int q1 = clamp_int(round_nearest((src[j + EXO_QK / 2] - m) * id), 0, 15);
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static float vec_dot_q4_1_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q4_1 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK / 2; j++) {
            sumi += (w[i].qs[j] & 0x0f) * a[i].qs[j];
            sumi += (w[i].qs[j] >> 4) * a[i].qs[j + EXO_QK / 2];
        }
        /* sum((q*dw + m) * qa*da) = dw*da*sum(q*qa) + m*s */
        sum += (float)sumi * (exo_half_to_float(w[i].d) * a[i].d) + exo_half_to_float(w[i].m) * a[i].s;
    }
    return sum;
}

/* ---- Q8_0: x = q * d -------------------------------------------------------- */

static void to_float_q8_0_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo_half_to_float(b[i].d);
        for (int j = 0; j < EXO_QK; j++) dst[j] = (float)b[i].qs[j] * d;
    }
}

/* d = amax/127 rounded up to fp16: error <= d/2, |q| <= 127. */
static void from_float_q8_0_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        float amax = 0.0f;
        for (int j = 0; j < EXO_QK; j++) amax = fmaxf(amax, fabsf(src[j]));
        b[i].d = half_round_up(amax / 127.0f);
        float d = exo_half_to_float(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < EXO_QK; j++) b[i].qs[j] = (int8_t)clamp_int(round_nearest(src[j] * id), -127, 127);
    }
}

static float vec_dot_q8_0_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q8_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK; j++) sumi += w[i].qs[j] * a[i].qs[j];
        sum += (float)sumi * (exo_half_to_float(w[i].d) * a[i].d);
    }
    return sum;
}

/* ---- Q4_K / Q5_K: x = d*sc[j]*q - dmin*mn[j] per 32-element sub-block j --------
 *
 * Within each 64-element chunk c of a super-block, qs[32c + l] holds element
 * 64c + l in its low nibble and 64c + 32 + l in its high nibble; Q5_K's fifth
 * bit of those two elements is bit 2c and 2c+1 of qh[l]. */

static void k_scales_pack(uint8_t packed[12], const uint8_t sc[8], const uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        packed[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        packed[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

/* The Q4_K/Q5_K quantizer (qmax 15 or 31). Each sub-block's range is
 * [min(0, lo), hi]; dmin is the largest -lo over 63 and d the largest needed
 * top over qmax*63, both rounded up, and each 6-bit scale is rounded up so
 * the grid covers the sub-block. Error per sub-block <= max(d*sc, dmin)/2.
 * L receives the quants in element order. */
static void quantize_k_superblock(const float *x, int qmax, exo_half *d_out, exo_half *dmin_out,
                                  uint8_t packed[12], uint8_t L[EXO_QK_K])
{
    float lo[8], hi[8], max_neg = 0.0f;
    for (int j = 0; j < 8; j++) {
        lo[j] = 0.0f;
        hi[j] = x[32 * j];
        for (int l = 0; l < 32; l++) {
            lo[j] = fminf(lo[j], x[32 * j + l]);
            hi[j] = fmaxf(hi[j], x[32 * j + l]);
        }
        max_neg = fmaxf(max_neg, -lo[j]);
    }
    *dmin_out = half_round_up(max_neg / 63.0f);
    float dmin = exo_half_to_float(*dmin_out);

    uint8_t sc[8], mn[8];
    float moff[8], top = 0.0f;
    for (int j = 0; j < 8; j++) {
        mn[j] = (uint8_t)(dmin > 0.0f ? clamp_int(round_nearest(-lo[j] / dmin), 0, 63) : 0);
        moff[j] = dmin * mn[j];
        top = fmaxf(top, hi[j] + moff[j]);
    }
    *d_out = half_round_up(top / (float)(qmax * 63));
    float d = exo_half_to_float(*d_out);

    for (int j = 0; j < 8; j++) {
        /* the small slack keeps a ratio of 3.0000001 from costing a whole step */
        float need = d > 0.0f ? (hi[j] + moff[j]) / ((float)qmax * d) : 0.0f;
        sc[j] = (uint8_t)clamp_int((int)ceilf(need - 1e-3f), 0, 63);
        float dj = d * sc[j];
        float id = dj != 0.0f ? 1.0f / dj : 0.0f;
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)clamp_int(round_nearest((x[32 * j + l] + moff[j]) * id), 0, qmax);
    }
    k_scales_pack(packed, sc, mn);
}

static void to_float_q4_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = exo_half_to_float(b[i].d), dmin = exo_half_to_float(b[i].dmin);
        uint8_t sc[8], mn[8];
        exo_k_scales_unpack(b[i].scales, sc, mn);
        for (int j = 0; j < 8; j++, dst += 32) {
            const uint8_t *q = b[i].qs + 32 * (j / 2);
            int shift = (j & 1) * 4;
            float dj = d * sc[j], mj = dmin * mn[j];
            for (int l = 0; l < 32; l++) dst[l] = dj * (float)((q[l] >> shift) & 0x0f) - mj;
        }
    }
}

static void from_float_q4_K_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q4_K *b = dst;
    uint8_t L[EXO_QK_K];
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        quantize_k_superblock(src, 15, &b[i].d, &b[i].dmin, b[i].scales, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

static float vec_dot_q4_K_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q4_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        uint8_t sc[8], mn[8];
        exo_k_scales_unpack(w[i].scales, sc, mn);
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = w[i].qs + 32 * (j / 2);
            const int8_t *x = a[i].qs + 32 * j;
            int shift = (j & 1) * 4, dot = 0, xsum = 0;
            for (int l = 0; l < 32; l++) {
                dot += ((q[l] >> shift) & 0x0f) * x[l];
                xsum += x[l];
            }
            sumi += sc[j] * dot;
            summ += mn[j] * xsum;
        }
        sum += exo_half_to_float(w[i].d) * a[i].d * (float)sumi
             - exo_half_to_float(w[i].dmin) * a[i].d * (float)summ;
    }
    return sum;
}

static void to_float_q5_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = exo_half_to_float(b[i].d), dmin = exo_half_to_float(b[i].dmin);
        uint8_t sc[8], mn[8];
        exo_k_scales_unpack(b[i].scales, sc, mn);
        for (int j = 0; j < 8; j++, dst += 32) {
            const uint8_t *q = b[i].qs + 32 * (j / 2);
            int shift = (j & 1) * 4;
            float dj = d * sc[j], mj = dmin * mn[j];
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0f) | (((b[i].qh[l] >> j) & 1) << 4);
                dst[l] = dj * (float)v - mj;
            }
        }
    }
}

static void from_float_q5_K_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q5_K *b = dst;
    uint8_t L[EXO_QK_K];
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        quantize_k_superblock(src, 31, &b[i].d, &b[i].dmin, b[i].scales, L);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                int q0 = L[64 * c + l], q1 = L[64 * c + 32 + l];
                b[i].qs[32 * c + l] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
                b[i].qh[l] |= (uint8_t)(((q0 >> 4) << (2 * c)) | ((q1 >> 4) << (2 * c + 1)));
            }
        }
    }
}

static float vec_dot_q5_K_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q5_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        uint8_t sc[8], mn[8];
        exo_k_scales_unpack(w[i].scales, sc, mn);
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = w[i].qs + 32 * (j / 2);
            const int8_t *x = a[i].qs + 32 * j;
            int shift = (j & 1) * 4, dot = 0, xsum = 0;
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0f) | (((w[i].qh[l] >> j) & 1) << 4);
                dot += v * x[l];
                xsum += x[l];
            }
            sumi += sc[j] * dot;
            summ += mn[j] * xsum;
        }
        sum += exo_half_to_float(w[i].d) * a[i].d * (float)sumi
             - exo_half_to_float(w[i].dmin) * a[i].d * (float)summ;
    }
    return sum;
}

/* ---- Q6_K: x = d * scales[e/16] * (q - 32) -----------------------------------
 *
 * Each 128-element half h uses ql[64h..64h+63] and qh[32h..32h+31]: for l in
 * 0..31, element l is ql[l] low nibble + qh[l] bits 0-1, l+32 is ql[l+32] low
 * + bits 2-3, l+64 is ql[l] high + bits 4-5, l+96 is ql[l+32] high + bits 6-7. */

static inline int q6_get(const exo_block_q6_K *b, int e)
{
    int h = e / 128, r = e % 128, l = r % 32, part = r / 32; /* part 0..3 */
    uint8_t lo = b->ql[64 * h + l + 32 * (part & 1)];
    int low4 = (part < 2) ? (lo & 0x0f) : (lo >> 4);
    int high2 = (b->qh[32 * h + l] >> (2 * part)) & 3;
    return low4 | (high2 << 4);
}

static void to_float_q6_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q6_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, dst += EXO_QK_K) {
        float d = exo_half_to_float(b[i].d);
        for (int e = 0; e < EXO_QK_K; e++) dst[e] = d * (float)b[i].scales[e / 16] * (float)(q6_get(&b[i], e) - 32);
    }
}

/* Symmetric over [-31, 31] (q-32 never uses -32) with positive 8-bit scales,
 * each rounded up so its 16 values are covered: error <= d*scale/2. */
static void from_float_q6_K_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q6_K *b = dst;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        float amax[16], top = 0.0f;
        for (int g = 0; g < 16; g++) {
            amax[g] = 0.0f;
            for (int l = 0; l < 16; l++) amax[g] = fmaxf(amax[g], fabsf(src[16 * g + l]));
            top = fmaxf(top, amax[g]);
        }
        b[i].d = half_round_up(top / (31.0f * 127.0f));
        float d = exo_half_to_float(b[i].d);
        uint8_t L[EXO_QK_K];
        for (int g = 0; g < 16; g++) {
            float need = d > 0.0f ? amax[g] / (31.0f * d) : 0.0f;
            int sc = clamp_int((int)ceilf(need - 1e-3f), 0, 127);
            b[i].scales[g] = (int8_t)sc;
            float dg = d * (float)sc;
            float id = dg != 0.0f ? 1.0f / dg : 0.0f;
            for (int l = 0; l < 16; l++)
                L[16 * g + l] = (uint8_t)(clamp_int(round_nearest(src[16 * g + l] * id), -32, 31) + 32);
        }
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                b[i].ql[64 * h + l] = (uint8_t)((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                b[i].ql[64 * h + l + 32] = (uint8_t)((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                b[i].qh[32 * h + l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) |
                                                ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
            }
        }
    }
}

static float vec_dot_q6_K_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q6_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        int sumi = 0;
        for (int g = 0; g < 16; g++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += (q6_get(&w[i], 16 * g + l) - 32) * a[i].qs[16 * g + l];
            sumi += w[i].scales[g] * dot;
        }
        sum += exo_half_to_float(w[i].d) * a[i].d * (float)sumi;
    }
    return sum;
}

/* ---- activation quantization ----------------------------------------------------- */

static void quantize_act_q8_32_ref(const float *x, void *dst, int n)
{
    exo_block_q8_32 *y = dst;
    for (int i = 0; i < n / EXO_QK; i++, x += EXO_QK) {
        float amax = 0.0f;
        for (int j = 0; j < EXO_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < EXO_QK; j++) {
            int q = clamp_int(round_nearest(x[j] * id), -127, 127);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

static void quantize_act_q8_K_ref(const float *x, void *dst, int n)
{
    exo_block_q8_K *y = dst;
    for (int i = 0; i < n / EXO_QK_K; i++, x += EXO_QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < EXO_QK_K; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int g = 0; g < EXO_QK_K / 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                int q = clamp_int(round_nearest(x[16 * g + l] * id), -127, 127);
                y[i].qs[16 * g + l] = (int8_t)q;
                sum += q;
            }
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = d;
    }
}

static void quantize_act_f32(const float *x, void *dst, int n)
{
    memcpy(dst, x, (size_t)n * sizeof(float));
}

/* ---- the packed four-row layout (quants.h) --------------------------------------- */

/* Blocks in the next chunk: fours, then (4-bit formats) a pair, then singles,
 * the steps the kernels take. */
static int packed_chunk_blocks(bool pairs, int left)
{
    if (left >= 4) return 4;
    if (pairs && left >= 2) return 2;
    return 1;
}

/* Blocks are a header of head_bytes (the scales) and then the quants. With
 * unpack, row r of the group at dst goes back to the row at w_rows (the same
 * walk through the chunks, copying the other way). */
static void pack_x4_blocks(const void *w_rows, size_t row_stride, int n, void *dst, size_t block_bytes,
                           size_t head_bytes, bool pairs, bool unpack, int only_row)
{
    const int nb = n / EXO_QK;
    const size_t qs_bytes = block_bytes - head_bytes;
    uint8_t *rows = (uint8_t *)w_rows, *group = dst;
    for (int b = 0; b < nb;) {
        const int cb = packed_chunk_blocks(pairs, nb - b);
        const int unit = pairs && cb >= 2 ? 2 : 1; /* blocks side by side per row */
        for (int u = 0; u < cb; u += unit)
            for (int r = 0; r < 4; r++)
                for (int k = 0; k < unit; k++, group += qs_bytes) {
                    uint8_t *block = rows + (size_t)r * row_stride + (size_t)(b + u + k) * block_bytes;
                    if (!unpack) memcpy(group, block + head_bytes, qs_bytes);
                    else if (r == only_row) memcpy(rows + (size_t)(b + u + k) * block_bytes + head_bytes, group, qs_bytes);
                }
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < cb; k++, group += head_bytes) {
                if (!unpack) memcpy(group, rows + (size_t)r * row_stride + (size_t)(b + k) * block_bytes, head_bytes);
                else if (r == only_row) memcpy(rows + (size_t)(b + k) * block_bytes, group, head_bytes);
            }
        b += cb;
    }
}

#define PACKED_FORMAT(name, block, pairs)                                                              \
    static void pack_x4_##name(const void *w_rows, size_t row_stride, int n, void *dst)                 \
    {                                                                                                   \
        pack_x4_blocks(w_rows, row_stride, n, dst, sizeof(block), offsetof(block, qs), pairs, false, 0); \
    }                                                                                                   \
    static void unpack_x4_row_##name(const void *group, int r, int n, void *row)                        \
    {                                                                                                   \
        pack_x4_blocks(row, 0, n, (void *)group, sizeof(block), offsetof(block, qs), pairs, true, r);    \
    }
PACKED_FORMAT(q4_0, exo_block_q4_0, true)
PACKED_FORMAT(q4_1, exo_block_q4_1, true)
PACKED_FORMAT(q8_0, exo_block_q8_0, false)
#undef PACKED_FORMAT

/* ---- traits and dispatch ------------------------------------------------------- */

#define EXO_TRAITS(name_, bs_, ts_, act_, tf_, ff_, vd_) \
    { name_, bs_, ts_, act_, tf_, tf_, ff_, vd_, vd_, NULL }

/* Not const: exo_quants_init() fills the fast entries once. */
static exo_type_traits type_traits[EXO_DTYPE_COUNT] = {
    [EXO_DTYPE_F32] = EXO_TRAITS("f32", 1, sizeof(float), EXO_ACT_F32,
                                 to_float_f32_ref, from_float_f32_ref, vec_dot_f32_ref),
    [EXO_DTYPE_F16] = EXO_TRAITS("f16", 1, sizeof(exo_half), EXO_ACT_F32,
                                 to_float_f16_ref, from_float_f16_ref, vec_dot_f16_ref),
    [EXO_DTYPE_BF16] = EXO_TRAITS("bf16", 1, sizeof(uint16_t), EXO_ACT_F32,
                                  to_float_bf16_ref, from_float_bf16_ref, vec_dot_bf16_ref),
    [EXO_DTYPE_Q4_0] = EXO_TRAITS("q4_0", EXO_QK, sizeof(exo_block_q4_0), EXO_ACT_Q8_32,
                                  to_float_q4_0_ref, from_float_q4_0_ref, vec_dot_q4_0_ref),
    [EXO_DTYPE_Q4_1] = EXO_TRAITS("q4_1", EXO_QK, sizeof(exo_block_q4_1), EXO_ACT_Q8_32,
                                  to_float_q4_1_ref, from_float_q4_1_ref, vec_dot_q4_1_ref),
    [EXO_DTYPE_Q8_0] = EXO_TRAITS("q8_0", EXO_QK, sizeof(exo_block_q8_0), EXO_ACT_Q8_32,
                                  to_float_q8_0_ref, from_float_q8_0_ref, vec_dot_q8_0_ref),
    [EXO_DTYPE_Q4_K] = EXO_TRAITS("q4_K", EXO_QK_K, sizeof(exo_block_q4_K), EXO_ACT_Q8_K,
                                  to_float_q4_K_ref, from_float_q4_K_ref, vec_dot_q4_K_ref),
    [EXO_DTYPE_Q5_K] = EXO_TRAITS("q5_K", EXO_QK_K, sizeof(exo_block_q5_K), EXO_ACT_Q8_K,
                                  to_float_q5_K_ref, from_float_q5_K_ref, vec_dot_q5_K_ref),
    [EXO_DTYPE_Q6_K] = EXO_TRAITS("q6_K", EXO_QK_K, sizeof(exo_block_q6_K), EXO_ACT_Q8_K,
                                  to_float_q6_K_ref, from_float_q6_K_ref, vec_dot_q6_K_ref),
};

typedef void (*quantize_act_fn)(const float *x, void *dst, int n);
static quantize_act_fn act_q8_32 = quantize_act_q8_32_ref;
static quantize_act_fn act_q8_K = quantize_act_q8_K_ref;
static bool have_avx2, have_avx512;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static bool env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

#if EXO_QUANTS_X86
/* __builtin_cpu_supports checks that the OS saves the YMM registers too; clang
 * does not know the name "f16c", so that bit (CPUID.1:ECX.29) is read directly. */
static bool cpu_has_avx2_fma_f16c(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    return (ecx >> 29) & 1u;
}

/* __builtin_cpu_supports also checks that the OS saves the ZMM state. */
static bool cpu_has_avx512_vnni(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

static void quants_init_once(void)
{
    exo_vec_init();
    type_traits[EXO_DTYPE_Q4_0].pack_x4 = pack_x4_q4_0;
    type_traits[EXO_DTYPE_Q4_1].pack_x4 = pack_x4_q4_1;
    type_traits[EXO_DTYPE_Q8_0].pack_x4 = pack_x4_q8_0;
    type_traits[EXO_DTYPE_Q4_0].unpack_x4_row = unpack_x4_row_q4_0;
    type_traits[EXO_DTYPE_Q4_1].unpack_x4_row = unpack_x4_row_q4_1;
    type_traits[EXO_DTYPE_Q8_0].unpack_x4_row = unpack_x4_row_q8_0;
#if EXO_QUANTS_X86
    if (env_flag("EXO_FORCE_SCALAR")) return;
    if (!cpu_has_avx2_fma_f16c()) return;

    type_traits[EXO_DTYPE_F32].vec_dot = exo_vec_dot_f32_avx2;
    type_traits[EXO_DTYPE_F16].vec_dot = exo_vec_dot_f16_avx2;
    type_traits[EXO_DTYPE_F16].to_float = exo_to_float_f16_avx2;
    type_traits[EXO_DTYPE_BF16].vec_dot = exo_vec_dot_bf16_avx2;
    type_traits[EXO_DTYPE_BF16].to_float = exo_to_float_bf16_avx2;
    type_traits[EXO_DTYPE_Q4_0].vec_dot = exo_vec_dot_q4_0_q8_32_avx2;
    type_traits[EXO_DTYPE_Q4_0].to_float = exo_to_float_q4_0_avx2;
    type_traits[EXO_DTYPE_Q4_1].vec_dot = exo_vec_dot_q4_1_q8_32_avx2;
    type_traits[EXO_DTYPE_Q4_1].to_float = exo_to_float_q4_1_avx2;
    type_traits[EXO_DTYPE_Q8_0].vec_dot = exo_vec_dot_q8_0_q8_32_avx2;
    type_traits[EXO_DTYPE_Q8_0].to_float = exo_to_float_q8_0_avx2;
    type_traits[EXO_DTYPE_Q4_K].vec_dot = exo_vec_dot_q4_K_q8_K_avx2;
    type_traits[EXO_DTYPE_Q5_K].vec_dot = exo_vec_dot_q5_K_q8_K_avx2;
    type_traits[EXO_DTYPE_Q6_K].vec_dot = exo_vec_dot_q6_K_q8_K_avx2;
    act_q8_32 = exo_quantize_act_q8_32_avx2;
    act_q8_K = exo_quantize_act_q8_K_avx2;
    type_traits[EXO_DTYPE_Q4_0].vec_dot_packed = exo_vec_dot_packed_q4_0_q8_32_avx2;
    type_traits[EXO_DTYPE_Q4_1].vec_dot_packed = exo_vec_dot_packed_q4_1_q8_32_avx2;
    have_avx2 = true;

    if (env_flag("EXO_DISABLE_AVX512") || !cpu_has_avx512_vnni()) return;
    type_traits[EXO_DTYPE_Q4_0].vec_dot = exo_vec_dot_q4_0_q8_32_avx512;
    type_traits[EXO_DTYPE_Q4_0].vec_dot_x4 = exo_vec_dot_x4_q4_0_q8_32_avx512;
    type_traits[EXO_DTYPE_Q4_1].vec_dot = exo_vec_dot_q4_1_q8_32_avx512;
    type_traits[EXO_DTYPE_Q4_1].vec_dot_x4 = exo_vec_dot_x4_q4_1_q8_32_avx512;
    /* Q8_0's four-row dot wins only while the rows sit in cache: streaming
     * the output head from DRAM for one token it lost to one row, but a batch
     * (a speculative verify pass, a prompt) reuses each row group for every
     * token, and there it wins (verify of 9 positions: 24 -> 19 ms). */
    type_traits[EXO_DTYPE_Q8_0].vec_dot = exo_vec_dot_q8_0_q8_32_avx512;
    type_traits[EXO_DTYPE_Q8_0].vec_dot_x4 = exo_vec_dot_x4_q8_0_q8_32_avx512;
    type_traits[EXO_DTYPE_Q8_0].x4_min_tokens = 2;
    type_traits[EXO_DTYPE_Q4_0].vec_dot_packed = exo_vec_dot_packed_q4_0_q8_32_avx512;
    type_traits[EXO_DTYPE_Q4_1].vec_dot_packed = exo_vec_dot_packed_q4_1_q8_32_avx512;
    type_traits[EXO_DTYPE_Q8_0].vec_dot_packed = exo_vec_dot_packed_q8_0_q8_32_avx512;
    have_avx512 = true;
#endif
}

void exo_quants_init(void)
{
    pthread_once(&init_once, quants_init_once);
}

bool exo_quants_have_avx2(void)
{
    return have_avx2;
}

bool exo_quants_have_avx512(void)
{
    return have_avx512;
}

const exo_type_traits *exo_type_traits_get(int dtype)
{
    if (dtype < 0 || dtype >= EXO_DTYPE_COUNT || !type_traits[dtype].name) return NULL;
    return &type_traits[dtype];
}

size_t exo_dtype_row_size(int dtype, int64_t n)
{
    const exo_type_traits *t = exo_type_traits_get(dtype);
    if (!t) return 0;
    return (size_t)(n / t->block_size) * t->type_size;
}

size_t exo_act_row_size(int act_type, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: return (size_t)n * sizeof(float);
    case EXO_ACT_Q8_32: return (size_t)(n / EXO_QK) * sizeof(exo_block_q8_32);
    case EXO_ACT_Q8_K: return (size_t)(n / EXO_QK_K) * sizeof(exo_block_q8_K);
    default: return 0;
    }
}

void exo_quantize_act(int act_type, const float *x, void *dst, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: quantize_act_f32(x, dst, n); break;
    case EXO_ACT_Q8_32: act_q8_32(x, dst, n); break;
    case EXO_ACT_Q8_K: act_q8_K(x, dst, n); break;
    default: break;
    }
}

void exo_quantize_act_ref(int act_type, const float *x, void *dst, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: quantize_act_f32(x, dst, n); break;
    case EXO_ACT_Q8_32: quantize_act_q8_32_ref(x, dst, n); break;
    case EXO_ACT_Q8_K: quantize_act_q8_K_ref(x, dst, n); break;
    default: break;
    }
}
