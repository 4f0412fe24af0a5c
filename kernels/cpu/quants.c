/* quants.c: the weight-format traits tables and the scalar reference kernels
 * (dequantize, quantize, dot) for every format.
 *
 * The _ref kernels are the definition of each format's meaning: plain loops
 * that follow GGUF's block layouts, written for clarity. The fast kernels in
 * quants_avx2.c and quants_avx512.c are tested against them. There is one
 * const traits table per instruction set (scalar, AVX2, AVX-512 VNNI), fixed
 * at compile time; the scalar one is in use until exo__quants_init(), so code
 * that runs before it is correct, only slower, and init only chooses which
 * table later lookups read.
 *
 * Activation quantization (Q8_32, Q8_K) is symmetric: d = amax/127 and
 * q = round-to-nearest-even(x/d), so |q| <= 127. The AVX2 dots depend on that
 * bound (no -128) to stay clear of int16 saturation in maddubs. */
#include "quants.h"

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu_features.h"
#include "gemm_k_avx2.h"
#include "gemm_k_avx512.h"
#include "gemm_q8_avx2.h"
#include "gemm_q8_avx512.h"
#include "quants_avx2.h"
#include "quants_avx512.h"
#include "quants_impl.h"
#include "vec.h"


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
    exo_half h = exo__float_to_half(v);
    if (exo__half_to_float(h) < v) {
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
    for (int64_t i = 0; i < n; i++) dst[i] = exo__half_to_float(s[i]);
}

static void from_float_f16_ref(const float *src, void *dst, int64_t n)
{
    exo_half *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = exo__float_to_half(src[i]);
}

static float vec_dot_f16_ref(int n, const void *w_row, const void *act_row)
{
    const exo_half *w = w_row;
    const float *x = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += exo__half_to_float(w[i]) * x[i];
    return sum;
}

static void to_float_bf16_ref(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = exo__bf16_to_float(s[i]);
}

static void from_float_bf16_ref(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = exo__float_to_bf16(src[i]);
}

static float vec_dot_bf16_ref(int n, const void *w_row, const void *act_row)
{
    const uint16_t *w = w_row;
    const float *x = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += exo__bf16_to_float(w[i]) * x[i];
    return sum;
}

/* ---- the per-block order of Q4_0, Q5_0, IQ4_NL and Q8_0 ----------------------
 *
 * A block of these formats dots to one exact integer sum times dw * da, and
 * every kernel for them (scalar, AVX2, AVX-512, one row, four rows, packed,
 * the tiled GEMM) adds the blocks in this one order, so all give the same
 * bits: block b goes into chain b % 8 as c = fmaf(dw * da, (float)isum, c)
 * (dw * da rounded to float first; isum is below 2^24, so exact), blocks in
 * increasing order, and the row's result is
 * ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)). Eight chains are the
 * eight float lanes of a vector: decode turns eight blocks' lane sums into
 * one vector of block sums (a few horizontal adds) and spends one convert
 * and one FMA on the eight; a GEMM with rows in the lanes spends one of each
 * per block on sixteen rows (quants_blocks.h, gemm_q8_avx512.c). */
static inline void chains_add(float c[EXO_BLOCK_CHAINS], int b, float p, int isum)
{
    c[b % EXO_BLOCK_CHAINS] = fmaf(p, (float)isum, c[b % EXO_BLOCK_CHAINS]);
}

static inline float chains_sum(const float c[EXO_BLOCK_CHAINS])
{
    return ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7]));
}

/* ---- Q4_0: x = (q - 8) * d -------------------------------------------------- */

static void to_float_q4_0_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d);
        for (int j = 0; j < EXO_QK / 2; j++) {
            dst[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            dst[j + EXO_QK / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* The quantizers of the 32-element formats fill L[32] with each element's
 * quant (0..qmax) in element order; the callers pack them. */

/* As ggml does: the value of largest magnitude maps to -qneg exactly (qneg 8
 * for Q4_0, 16 for Q5_0), so the grid is [-qneg d, (qneg - 1) d] and values
 * near +qneg d clip: error <= |d|, and <= |d|/2 for values inside the grid. */
static exo_half quantize_block_sym(const float *x, int qneg, uint8_t L[EXO_QK])
{
    float amax = 0.0f, vmax = 0.0f;
    for (int j = 0; j < EXO_QK; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            vmax = x[j];
        }
    }
    exo_half dh = exo__float_to_half(vmax / (float)-qneg);
    float d = exo__half_to_float(dh);
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < EXO_QK; j++) L[j] = (uint8_t)clamp_int(round_nearest(x[j] * id) + qneg, 0, 2 * qneg - 1);
    return dh;
}

/* m is the block minimum rounded down to fp16 and d the range over qmax
 * rounded up, so the grid covers the block: error <= d/2. */
static void quantize_block_min(const float *x, int qmax, exo_half *d_out, exo_half *m_out, uint8_t L[EXO_QK])
{
    float vmin = x[0], vmax = x[0];
    for (int j = 1; j < EXO_QK; j++) {
        vmin = fminf(vmin, x[j]);
        vmax = fmaxf(vmax, x[j]);
    }
    *m_out = half_round_down(vmin);
    float m = exo__half_to_float(*m_out);
    *d_out = half_round_up((vmax - m) / (float)qmax);
    float d = exo__half_to_float(*d_out);
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < EXO_QK; j++) L[j] = (uint8_t)clamp_int(round_nearest((x[j] - m) * id), 0, qmax);
}

/* Low 4 bits of L into q4_0's nibble order: element j in the low nibble of
 * qs[j], element j + 16 in the high one. */
static void pack_nibbles(const uint8_t L[EXO_QK], uint8_t qs[EXO_QK / 2])
{
    for (int j = 0; j < EXO_QK / 2; j++) qs[j] = (uint8_t)((L[j] & 0x0f) | ((L[j + EXO_QK / 2] & 0x0f) << 4));
}

/* The nibble of element j (0..31) of a 32-element block. */
static inline int nibble_at(const uint8_t qs[EXO_QK / 2], int j)
{
    return (qs[j % 16] >> (4 * (j / 16))) & 0x0f;
}

static void from_float_q4_0_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q4_0 *b = dst;
    uint8_t L[EXO_QK];
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        b[i].d = quantize_block_sym(src, 8, L);
        pack_nibbles(L, b[i].qs);
    }
}

static float vec_dot_q4_0_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q4_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float c[EXO_BLOCK_CHAINS] = { 0 };
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0f) - 8) * a[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + EXO_QK / 2];
        }
        chains_add(c, i, exo__half_to_float(w[i].d) * a[i].d, sumi);
    }
    return chains_sum(c);
}

/* ---- Q4_1: x = q * d + m ---------------------------------------------------- */

static void to_float_q4_1_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d), m = exo__half_to_float(b[i].m);
        for (int j = 0; j < EXO_QK / 2; j++) {
            dst[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
            dst[j + EXO_QK / 2] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

static void from_float_q4_1_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q4_1 *b = dst;
    uint8_t L[EXO_QK];
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        quantize_block_min(src, 15, &b[i].d, &b[i].m, L);
        pack_nibbles(L, b[i].qs);
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
        sum += (float)sumi * (exo__half_to_float(w[i].d) * a[i].d) + exo__half_to_float(w[i].m) * a[i].s;
    }
    return sum;
}

/* ---- Q8_0: x = q * d -------------------------------------------------------- */

static void to_float_q8_0_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d);
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
        float d = exo__half_to_float(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < EXO_QK; j++) b[i].qs[j] = (int8_t)clamp_int(round_nearest(src[j] * id), -127, 127);
    }
}

static float vec_dot_q8_0_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q8_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float c[EXO_BLOCK_CHAINS] = { 0 };
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK; j++) sumi += w[i].qs[j] * a[i].qs[j];
        chains_add(c, i, exo__half_to_float(w[i].d) * a[i].d, sumi);
    }
    return chains_sum(c);
}

/* ---- Q5_0: x = (q - 16) * d; Q5_1: x = q * d + m ---------------------------------
 *
 * The low 4 bits are packed as in Q4_0/Q4_1; bit j of the little-endian word
 * qh is the fifth bit of element j. */

static inline uint32_t qh_word(const uint8_t qh[4])
{
    uint32_t u;
    memcpy(&u, qh, sizeof u);
    return u;
}

static inline int q5_at(const uint8_t qs[EXO_QK / 2], uint32_t qh, int j)
{
    return nibble_at(qs, j) | (int)(((qh >> j) & 1u) << 4);
}

/* Packs L (0..31) into qs and qh. */
static void pack_q5(const uint8_t L[EXO_QK], uint8_t qs[EXO_QK / 2], uint8_t qh[4])
{
    uint32_t h = 0;
    for (int j = 0; j < EXO_QK; j++) h |= (uint32_t)(L[j] >> 4) << j;
    pack_nibbles(L, qs);
    memcpy(qh, &h, sizeof h);
}

/* sum of (q - off) * x[j] over one block's 32 elements */
static int q5_block_dot(const uint8_t qs[EXO_QK / 2], const uint8_t qh[4], const int8_t x[EXO_QK], int off)
{
    uint32_t h = qh_word(qh);
    int sumi = 0;
    for (int j = 0; j < EXO_QK; j++) sumi += (q5_at(qs, h, j) - off) * x[j];
    return sumi;
}

static void to_float_q5_0_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d);
        uint32_t qh = qh_word(b[i].qh);
        for (int j = 0; j < EXO_QK; j++) dst[j] = (float)(q5_at(b[i].qs, qh, j) - 16) * d;
    }
}

static void from_float_q5_0_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q5_0 *b = dst;
    uint8_t L[EXO_QK];
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        b[i].d = quantize_block_sym(src, 16, L);
        pack_q5(L, b[i].qs, b[i].qh);
    }
}

static float vec_dot_q5_0_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q5_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float c[EXO_BLOCK_CHAINS] = { 0 };
    for (int i = 0; i < n / EXO_QK; i++)
        chains_add(c, i, exo__half_to_float(w[i].d) * a[i].d, q5_block_dot(w[i].qs, w[i].qh, a[i].qs, 16));
    return chains_sum(c);
}

static void to_float_q5_1_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d), m = exo__half_to_float(b[i].m);
        uint32_t qh = qh_word(b[i].qh);
        for (int j = 0; j < EXO_QK; j++) dst[j] = (float)q5_at(b[i].qs, qh, j) * d + m;
    }
}

static void from_float_q5_1_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q5_1 *b = dst;
    uint8_t L[EXO_QK];
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        quantize_block_min(src, 31, &b[i].d, &b[i].m, L);
        pack_q5(L, b[i].qs, b[i].qh);
    }
}

static float vec_dot_q5_1_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q5_1 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK; i++)
        sum += (float)q5_block_dot(w[i].qs, w[i].qh, a[i].qs, 0) * (exo__half_to_float(w[i].d) * a[i].d) +
               exo__half_to_float(w[i].m) * a[i].s;
    return sum;
}

/* ---- IQ4_NL: x = d * values[q] (quants.h: exo_iq4nl_values) -----------------------
 *
 * The reference quantizer rounds each value to the nearest point of the
 * grid d * values[], for the better (by squared error) of two scales: the
 * one that puts the block's largest magnitude on the table's -127 end, and
 * the one that puts it on the +113 end (the table is lopsided). */

/* Indices of the grid points s * values[] nearest to x[0..n); returns the
 * squared error (the first of two equally near points wins). */
static float iq4_round(const float *x, int n, float s, uint8_t *L)
{
    float err = 0.0f;
    for (int j = 0; j < n; j++) {
        int best = 0;
        float best_e = fabsf(x[j] - s * exo_iq4nl_values[0]);
        for (int k = 1; k < 16; k++) {
            float e = fabsf(x[j] - s * exo_iq4nl_values[k]);
            if (e < best_e) {
                best_e = e;
                best = k;
            }
        }
        L[j] = (uint8_t)best;
        err += best_e * best_e;
    }
    return err;
}

/* The better of the two candidate scales for x[0..n), each first passed
 * through round_scale (the rounding the format stores it with). */
static float iq4_pick_scale(const float *x, int n, float (*round_scale)(float))
{
    float amax = 0.0f, vmax = 0.0f;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            vmax = x[j];
        }
    }
    uint8_t L[EXO_QK_K];
    float s0 = round_scale(vmax / (float)exo_iq4nl_values[0]), s1 = round_scale(vmax / (float)exo_iq4nl_values[15]);
    return iq4_round(x, n, s1, L) < iq4_round(x, n, s0, L) ? s1 : s0;
}

static float half_rounded(float v)
{
    return exo__half_to_float(exo__float_to_half(v));
}

static void to_float_iq4_nl_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_iq4_nl *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float d = exo__half_to_float(b[i].d);
        for (int j = 0; j < EXO_QK; j++) dst[j] = d * (float)exo_iq4nl_values[nibble_at(b[i].qs, j)];
    }
}

static void from_float_iq4_nl_ref(const float *src, void *dst, int64_t n)
{
    exo_block_iq4_nl *b = dst;
    uint8_t L[EXO_QK];
    for (int64_t i = 0; i < n / EXO_QK; i++, src += EXO_QK) {
        float d = iq4_pick_scale(src, EXO_QK, half_rounded);
        b[i].d = exo__float_to_half(d);
        iq4_round(src, EXO_QK, d, L);
        pack_nibbles(L, b[i].qs);
    }
}

static float vec_dot_iq4_nl_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_iq4_nl *w = w_row;
    const exo_block_q8_32 *a = act_row;
    float c[EXO_BLOCK_CHAINS] = { 0 };
    for (int i = 0; i < n / EXO_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < EXO_QK; j++) sumi += exo_iq4nl_values[nibble_at(w[i].qs, j)] * a[i].qs[j];
        chains_add(c, i, exo__half_to_float(w[i].d) * a[i].d, sumi);
    }
    return chains_sum(c);
}

/* ---- Q4_K / Q5_K: x = d*sc[j]*q - dmin*mn[j] per 32-element sub-block j --------
 *
 * Within each 64-element chunk c of a super-block, qs[32c + l] holds element
 * 64c + l in its low nibble and 64c + 32 + l in its high nibble; Q5_K's fifth
 * bit of those two elements is bit 2c and 2c+1 of qh[l]. */

/* The per-super-block order of Q4_K, Q5_K and Q6_K. A super-block dots to
 * two exact int32 sums: S = sum over sub-blocks (Q6_K: 16-element groups) of
 * scale * (the exact integer dot of its quants and the activation quants;
 * Q6_K's -32 included), and for Q4_K/Q5_K M = sum of min * (the sub-block's
 * activation sum). |S| <= 8 * 63 * 32 * 31 * 127 (Q5_K) or 16 * 127 * 16 *
 * 32 * 127 (Q6_K), both < 2^31. Every kernel of these formats (scalar,
 * AVX2, AVX-512, one row, packed, packed x four tokens, the tiled GEMMs)
 * reduces its lanes to these integers and takes this one float step per
 * super-block, super-blocks in order on one accumulator from +0:
 *   acc = fmaf(dw * da, (float)S, acc);  acc = fmaf(-(dmin * da), (float)M, acc)
 * (products rounded to float first; Q6_K has no second step). So all give
 * the same bits, alone or in any batch. The fast kernels find the integers
 * in vector lanes and collapse them in integers (a transposing add tree over
 * four rows in decode, adds across lanes in the GEMMs), so the float work is
 * one or two converts and FMAs per (row, token, super-block) instead of one
 * per lane. (float)S may round (|S| can pass 2^24): the conversion is the
 * same round-to-nearest everywhere. */
static inline float k_superblock_step(float acc, float dw, float dmin, float da, int32_t S, int32_t M, bool mins)
{
    acc = fmaf(dw * da, (float)S, acc);
    return mins ? fmaf(-(dmin * da), (float)M, acc) : acc;
}

static void k_scales_pack(uint8_t packed[12], const uint8_t sc[8], const uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        packed[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        packed[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

/* The quantizer of the K formats with a minimum (Q2_K, Q4_K, Q5_K): n_sub
 * sub-blocks of sub_len elements, each with a scale and a minimum of 0..smax
 * (6 or 4 bits) and quants of 0..qmax. Each sub-block's range is
 * [min(0, lo), hi]; dmin is the largest -lo over smax and d the largest
 * needed top over qmax*smax, both rounded up, and each scale is rounded up so
 * the grid covers the sub-block. Error per sub-block <= max(d*sc, dmin)/2.
 * L receives the quants in element order. */
static void quantize_k_superblock(const float *x, int n_sub, int sub_len, int smax, int qmax, exo_half *d_out,
                                  exo_half *dmin_out, uint8_t *sc, uint8_t *mn, uint8_t L[EXO_QK_K])
{
    float lo[16], hi[16], max_neg = 0.0f;
    for (int j = 0; j < n_sub; j++) {
        lo[j] = 0.0f;
        hi[j] = x[sub_len * j];
        for (int l = 0; l < sub_len; l++) {
            lo[j] = fminf(lo[j], x[sub_len * j + l]);
            hi[j] = fmaxf(hi[j], x[sub_len * j + l]);
        }
        max_neg = fmaxf(max_neg, -lo[j]);
    }
    *dmin_out = half_round_up(max_neg / (float)smax);
    float dmin = exo__half_to_float(*dmin_out);

    float moff[16], top = 0.0f;
    for (int j = 0; j < n_sub; j++) {
        mn[j] = (uint8_t)(dmin > 0.0f ? clamp_int(round_nearest(-lo[j] / dmin), 0, smax) : 0);
        moff[j] = dmin * mn[j];
        top = fmaxf(top, hi[j] + moff[j]);
    }
    *d_out = half_round_up(top / (float)(qmax * smax));
    float d = exo__half_to_float(*d_out);

    for (int j = 0; j < n_sub; j++) {
        /* the small slack keeps a ratio of 3.0000001 from costing a whole step */
        float need = d > 0.0f ? (hi[j] + moff[j]) / ((float)qmax * d) : 0.0f;
        sc[j] = (uint8_t)clamp_int((int)ceilf(need - 1e-3f), 0, smax);
        float dj = d * sc[j];
        float id = dj != 0.0f ? 1.0f / dj : 0.0f;
        for (int l = 0; l < sub_len; l++)
            L[sub_len * j + l] = (uint8_t)clamp_int(round_nearest((x[sub_len * j + l] + moff[j]) * id), 0, qmax);
    }
}

/* Q4_K/Q5_K: eight 32-element sub-blocks with 6-bit scales and minimums. */
static void quantize_q45_K_superblock(const float *x, int qmax, exo_half *d_out, exo_half *dmin_out,
                                      uint8_t packed[12], uint8_t L[EXO_QK_K])
{
    uint8_t sc[8], mn[8];
    quantize_k_superblock(x, 8, 32, 63, qmax, d_out, dmin_out, sc, mn, L);
    k_scales_pack(packed, sc, mn);
}

static void to_float_q4_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = exo__half_to_float(b[i].d), dmin = exo__half_to_float(b[i].dmin);
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
        quantize_q45_K_superblock(src, 15, &b[i].d, &b[i].dmin, b[i].scales, L);
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
        sum = k_superblock_step(sum, exo__half_to_float(w[i].d), exo__half_to_float(w[i].dmin), a[i].d, sumi, summ, true);
    }
    return sum;
}

static void to_float_q5_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = exo__half_to_float(b[i].d), dmin = exo__half_to_float(b[i].dmin);
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
        quantize_q45_K_superblock(src, 31, &b[i].d, &b[i].dmin, b[i].scales, L);
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
        sum = k_superblock_step(sum, exo__half_to_float(w[i].d), exo__half_to_float(w[i].dmin), a[i].d, sumi, summ, true);
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
        float d = exo__half_to_float(b[i].d);
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
        float d = exo__half_to_float(b[i].d);
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
        sum = k_superblock_step(sum, exo__half_to_float(w[i].d), 0.0f, a[i].d, sumi, 0, false);
    }
    return sum;
}

/* ---- Q2_K: x = d * (sc & 15) * q - dmin * (sc >> 4); Q3_K: x = d * sc * (q - 4) ------
 *
 * Both have sixteen 16-element groups, with quants.h's layout of the low 2
 * bits; group g's scale byte (Q2_K) or 6-bit scale (Q3_K) is index g. */

static inline int q2_at(const uint8_t qs[EXO_QK_K / 4], int e)
{
    int h = e / 128, j = (e % 128) / 32, l = e % 32;
    return (qs[32 * h + l] >> (2 * j)) & 3;
}

/* Q3_K's quant of element e, 0..7 (the value is this minus 4). */
static inline int q3_at(const exo_block_q3_K *b, int e)
{
    int h = e / 128, j = (e % 128) / 32, l = e % 32;
    return q2_at(b->qs, e) | (((b->hmask[l] >> (4 * h + j)) & 1) << 2);
}

/* Packs 2-bit quants L (element order) into quants.h's Q2_K/Q3_K layout. */
static void pack_q2(const uint8_t L[EXO_QK_K], uint8_t qs[EXO_QK_K / 4])
{
    memset(qs, 0, EXO_QK_K / 4);
    for (int e = 0; e < EXO_QK_K; e++) {
        int h = e / 128, j = (e % 128) / 32, l = e % 32;
        qs[32 * h + l] |= (uint8_t)((L[e] & 3) << (2 * j));
    }
}

static void to_float_q2_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q2_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, dst += EXO_QK_K) {
        float d = exo__half_to_float(b[i].d), dmin = exo__half_to_float(b[i].dmin);
        for (int e = 0; e < EXO_QK_K; e++) {
            uint8_t sc = b[i].scales[e / 16];
            float dl = d * (float)(sc & 0x0f), ml = dmin * (float)(sc >> 4);
            dst[e] = dl * (float)q2_at(b[i].qs, e) - ml;
        }
    }
}

static void from_float_q2_K_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q2_K *b = dst;
    uint8_t L[EXO_QK_K], sc[16], mn[16];
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        quantize_k_superblock(src, 16, 16, 15, 3, &b[i].d, &b[i].dmin, sc, mn, L);
        for (int g = 0; g < 16; g++) b[i].scales[g] = (uint8_t)(sc[g] | (mn[g] << 4));
        pack_q2(L, b[i].qs);
    }
}

static float vec_dot_q2_K_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q2_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int g = 0; g < 16; g++) {
            int dot = 0, xsum = 0;
            for (int l = 0; l < 16; l++) {
                dot += q2_at(w[i].qs, 16 * g + l) * a[i].qs[16 * g + l];
                xsum += a[i].qs[16 * g + l];
            }
            sumi += (w[i].scales[g] & 0x0f) * dot;
            summ += (w[i].scales[g] >> 4) * xsum;
        }
        sum += exo__half_to_float(w[i].d) * a[i].d * (float)sumi
             - exo__half_to_float(w[i].dmin) * a[i].d * (float)summ;
    }
    return sum;
}

static void to_float_q3_K_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_q3_K *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, dst += EXO_QK_K) {
        float d = exo__half_to_float(b[i].d);
        int8_t sc[16];
        exo_q3_k_scales_unpack(b[i].scales, sc);
        for (int e = 0; e < EXO_QK_K; e++) dst[e] = d * (float)sc[e / 16] * (float)(q3_at(&b[i], e) - 4);
    }
}

/* Each group's ideal scale puts its value of largest magnitude at -4 (the
 * grid is [-4, 3] * scale, as Q4_0's); d spreads those over the signed 6-bit
 * range and each group's scale is rounded away from zero, so values clip
 * only on the short side: error <= |d * scale|, and half that inside. */
static void from_float_q3_K_ref(const float *src, void *dst, int64_t n)
{
    exo_block_q3_K *b = dst;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        float want[16], top = 0.0f;
        for (int g = 0; g < 16; g++) {
            float amax = 0.0f, vmax = 0.0f;
            for (int l = 0; l < 16; l++) {
                if (fabsf(src[16 * g + l]) > amax) {
                    amax = fabsf(src[16 * g + l]);
                    vmax = src[16 * g + l];
                }
            }
            want[g] = vmax / -4.0f;
            top = fmaxf(top, amax / 4.0f);
        }
        b[i].d = half_round_up(top / 31.0f);
        float d = exo__half_to_float(b[i].d);
        uint8_t sc[16], L[EXO_QK_K];
        for (int g = 0; g < 16; g++) {
            float need = d > 0.0f ? fabsf(want[g]) / d : 0.0f;
            int s = clamp_int((int)ceilf(need - 1e-3f), 0, 31);
            if (want[g] < 0.0f) s = -s;
            sc[g] = (uint8_t)(s + 32);
            float dg = d * (float)s;
            float id = dg != 0.0f ? 1.0f / dg : 0.0f;
            for (int l = 0; l < 16; l++) L[16 * g + l] = (uint8_t)(clamp_int(round_nearest(src[16 * g + l] * id), -4, 3) + 4);
        }
        for (int j = 0; j < 8; j++) b[i].scales[j] = (uint8_t)((sc[j] & 0x0f) | ((sc[j + 8] & 0x0f) << 4));
        for (int j = 0; j < 4; j++)
            b[i].scales[8 + j] = (uint8_t)((sc[j] >> 4) | ((sc[4 + j] >> 4) << 2) | ((sc[8 + j] >> 4) << 4) |
                                           ((sc[12 + j] >> 4) << 6));
        pack_q2(L, b[i].qs);
        memset(b[i].hmask, 0, sizeof b[i].hmask);
        for (int e = 0; e < EXO_QK_K; e++) {
            int h = e / 128, j = (e % 128) / 32, l = e % 32;
            b[i].hmask[l] |= (uint8_t)((L[e] >> 2) << (4 * h + j));
        }
    }
}

static float vec_dot_q3_K_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_q3_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        int8_t sc[16];
        exo_q3_k_scales_unpack(w[i].scales, sc);
        int sumi = 0;
        for (int g = 0; g < 16; g++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += (q3_at(&w[i], 16 * g + l) - 4) * a[i].qs[16 * g + l];
            sumi += sc[g] * dot;
        }
        sum += exo__half_to_float(w[i].d) * a[i].d * (float)sumi;
    }
    return sum;
}

/* ---- IQ4_XS: x = d * scale[j] * values[q] per 32-element sub-block j ------------------ */

static float identity(float v)
{
    return v;
}

static void to_float_iq4_xs_ref(const void *src, float *dst, int64_t n)
{
    const exo_block_iq4_xs *b = src;
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = exo__half_to_float(b[i].d);
        for (int j = 0; j < 8; j++, dst += 32) {
            float dl = d * (float)exo_iq4_xs_scale(b[i].scales_l, b[i].scales_h, j);
            for (int l = 0; l < 32; l++) dst[l] = dl * (float)exo_iq4nl_values[nibble_at(b[i].qs + 16 * j, l)];
        }
    }
}

/* Each sub-block's scale is picked as IQ4_NL's (unrounded), d spreads them
 * over the signed 6-bit range, and the values are rounded to the nearest
 * point of the grid the stored scale gives. */
static void from_float_iq4_xs_ref(const float *src, void *dst, int64_t n)
{
    exo_block_iq4_xs *b = dst;
    for (int64_t i = 0; i < n / EXO_QK_K; i++, src += EXO_QK_K) {
        float want[8], top = 0.0f;
        for (int j = 0; j < 8; j++) {
            want[j] = iq4_pick_scale(src + 32 * j, 32, identity);
            top = fmaxf(top, fabsf(want[j]));
        }
        b[i].d = half_round_up(top / 31.0f);
        float d = exo__half_to_float(b[i].d);
        b[i].scales_h = 0;
        memset(b[i].scales_l, 0, sizeof b[i].scales_l);
        for (int j = 0; j < 8; j++) {
            int s = d > 0.0f ? clamp_int(round_nearest(want[j] / d), -32, 31) : 0;
            b[i].scales_l[j / 2] |= (uint8_t)(((s + 32) & 0x0f) << (4 * (j % 2)));
            b[i].scales_h |= (uint16_t)(((s + 32) >> 4) << (2 * j));
            uint8_t L[32];
            iq4_round(src + 32 * j, 32, d * (float)s, L);
            for (int l = 0; l < 16; l++) b[i].qs[16 * j + l] = (uint8_t)(L[l] | (L[l + 16] << 4));
        }
    }
}

static float vec_dot_iq4_xs_ref(int n, const void *w_row, const void *act_row)
{
    const exo_block_iq4_xs *w = w_row;
    const exo_block_q8_K *a = act_row;
    float sum = 0.0f;
    for (int i = 0; i < n / EXO_QK_K; i++) {
        int sumi = 0;
        for (int j = 0; j < 8; j++) {
            int dot = 0;
            for (int l = 0; l < 32; l++)
                dot += exo_iq4nl_values[nibble_at(w[i].qs + 16 * j, l)] * a[i].qs[32 * j + l];
            sumi += exo_iq4_xs_scale(w[i].scales_l, w[i].scales_h, j) * dot;
        }
        sum += exo__half_to_float(w[i].d) * a[i].d * (float)sumi;
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

/* The K formats' packed layout (quants_k_rows.h): one chunk per
 * super-block, the four rows' quants in the kernels' lane order side by
 * side, then the four rows' headers as in the file. Lane order: byte p of
 * register "lo" c (c = 0..3) is element e = 64 (p / 8) + 8 c + p % 8 of the
 * super-block, of register "hi" c element e + 32. Q4_K keeps both in one
 * byte (lo's low nibble, hi's high one), which is file byte
 * 32 (p / 8) + 8 c + p % 8: its packing moves whole bytes. */
static inline int k_lane_element(int c, int p)
{
    return 64 * (p / 8) + 8 * c + p % 8;
}

static void pack_x4_q4_K_blocks(const void *w_rows, size_t row_stride, int n, void *dst, bool unpack, int only_row)
{
    const size_t bs = sizeof(exo_block_q4_K), hb = offsetof(exo_block_q4_K, qs);
    uint8_t *rows = (uint8_t *)w_rows, *group = dst;
    for (int b = 0; b < n / EXO_QK_K; b++) {
        for (int r = 0; r < 4; r++, group += EXO_QK_K / 2) {
            if (unpack && r != only_row) continue;
            uint8_t *qs = rows + (unpack ? 0 : (size_t)r * row_stride) + (size_t)b * bs + hb;
            for (int c = 0; c < 4; c++)
                for (int p = 0; p < 32; p++) {
                    const int f = k_lane_element(c, p) - 32 * (p / 8); /* 32 (p / 8) + 8 c + p % 8 */
                    if (unpack) qs[f] = group[32 * c + p];
                    else group[32 * c + p] = qs[f];
                }
        }
        for (int r = 0; r < 4; r++, group += hb) {
            if (!unpack) memcpy(group, rows + (size_t)r * row_stride + (size_t)b * bs, hb);
            else if (r == only_row) memcpy(rows + (size_t)b * bs, group, hb);
        }
    }
}

/* Q5_K: the nibbles as Q4_K's (128 bytes), then 32 bytes of fifth bits: byte
 * p bit 2 c + s (s 0: lo, 1: hi) is the fifth bit of register (c, s)'s byte
 * p, i.e. of element 8 c + p % 8 of sub-block 2 (p / 8) + s, which the file
 * keeps in bit 2 (p / 8) + s of qh[8 c + p % 8]. */
static void pack_x4_q5_K_blocks(const void *w_rows, size_t row_stride, int n, void *dst, bool unpack, int only_row)
{
    const size_t bs = sizeof(exo_block_q5_K), hb = offsetof(exo_block_q5_K, qh);
    uint8_t *rows = (uint8_t *)w_rows, *group = dst;
    for (int b = 0; b < n / EXO_QK_K; b++) {
        for (int r = 0; r < 4; r++, group += EXO_QK_K / 2 + 32) {
            if (unpack && r != only_row) continue;
            exo_block_q5_K *blk = (exo_block_q5_K *)(rows + (unpack ? 0 : (size_t)r * row_stride) + (size_t)b * bs);
            if (unpack) memset(blk->qh, 0, sizeof blk->qh);
            for (int p = 0; p < 32; p++) {
                uint8_t bits = 0;
                for (int c = 0; c < 4; c++) {
                    const int f = 32 * (p / 8) + 8 * c + p % 8, m = 8 * c + p % 8;
                    if (unpack) blk->qs[f] = group[32 * c + p];
                    else group[32 * c + p] = blk->qs[f];
                    for (int sb = 0; sb < 2; sb++) {
                        const int j = 2 * (p / 8) + sb, k = 2 * c + sb;
                        if (unpack) blk->qh[m] |= (uint8_t)(((group[128 + p] >> k) & 1) << j);
                        else bits |= (uint8_t)(((blk->qh[m] >> j) & 1) << k);
                    }
                }
                if (!unpack) group[128 + p] = bits;
            }
        }
        for (int r = 0; r < 4; r++, group += hb) {
            if (!unpack) memcpy(group, rows + (size_t)r * row_stride + (size_t)b * bs, hb);
            else if (r == only_row) memcpy(rows + (size_t)b * bs, group, hb);
        }
    }
}

/* Q6_K: each value's low 4 bits at byte 32 c + p (lo c's low nibble, hi c's
 * high one), its top 2 bits at byte 128 + 32 (c / 2) + p, bits 4 (c % 2) (lo)
 * and 4 (c % 2) + 2 (hi). Not a permutation of bytes: unpacking rebuilds the
 * file's ql and qh from the values (as from_float_q6_K_ref lays them out). */
static void pack_x4_q6_K_blocks(const void *w_rows, size_t row_stride, int n, void *dst, bool unpack, int only_row)
{
    const size_t bs = sizeof(exo_block_q6_K), ho = offsetof(exo_block_q6_K, scales), hb = bs - ho;
    uint8_t *rows = (uint8_t *)w_rows, *group = dst;
    for (int b = 0; b < n / EXO_QK_K; b++) {
        for (int r = 0; r < 4; r++, group += ho) {
            if (unpack && r != only_row) continue;
            exo_block_q6_K *blk = (exo_block_q6_K *)(rows + (unpack ? 0 : (size_t)r * row_stride) + (size_t)b * bs);
            uint8_t v[EXO_QK_K];
            if (unpack) {
                for (int c = 0; c < 4; c++)
                    for (int p = 0; p < 32; p++) {
                        const int e = k_lane_element(c, p);
                        const uint8_t lo = group[32 * c + p], hi = group[128 + 32 * (c / 2) + p];
                        v[e] = (uint8_t)((lo & 0x0f) | (((hi >> (4 * (c % 2))) & 3) << 4));
                        v[e + 32] = (uint8_t)((lo >> 4) | (((hi >> (4 * (c % 2) + 2)) & 3) << 4));
                    }
                memset(blk->qh, 0, sizeof blk->qh);
                for (int h = 0; h < 2; h++) {
                    const uint8_t *q = v + 128 * h;
                    for (int l = 0; l < 32; l++) {
                        blk->ql[64 * h + l] = (uint8_t)((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                        blk->ql[64 * h + l + 32] = (uint8_t)((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                        blk->qh[32 * h + l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) |
                                                        ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
                    }
                }
            } else {
                /* q6_get's values, a half (128) at a time: 4x faster than element by element,
                 * which made packing a quarter of a 1B Q6_K model's load */
                for (int h = 0; h < 2; h++)
                    for (int l = 0; l < 32; l++) {
                        const uint8_t a = blk->ql[64 * h + l], b = blk->ql[64 * h + l + 32], hb = blk->qh[32 * h + l];
                        v[128 * h + l] = (uint8_t)((a & 0x0f) | ((hb & 3) << 4));
                        v[128 * h + l + 32] = (uint8_t)((b & 0x0f) | (((hb >> 2) & 3) << 4));
                        v[128 * h + l + 64] = (uint8_t)((a >> 4) | (((hb >> 4) & 3) << 4));
                        v[128 * h + l + 96] = (uint8_t)((b >> 4) | ((hb >> 6) << 4));
                    }
                for (int c2 = 0; c2 < 2; c2++)
                    for (int p = 0; p < 32; p++) {
                        const int e0 = k_lane_element(2 * c2, p), e1 = k_lane_element(2 * c2 + 1, p);
                        group[64 * c2 + p] = (uint8_t)((v[e0] & 0x0f) | ((v[e0 + 32] & 0x0f) << 4));
                        group[64 * c2 + 32 + p] = (uint8_t)((v[e1] & 0x0f) | ((v[e1 + 32] & 0x0f) << 4));
                        group[128 + 32 * c2 + p] = (uint8_t)((v[e0] >> 4) | ((v[e0 + 32] >> 4) << 2) |
                                                             ((v[e1] >> 4) << 4) | ((v[e1 + 32] >> 4) << 6));
                    }
            }
        }
        for (int r = 0; r < 4; r++, group += hb) {
            if (!unpack) memcpy(group, rows + (size_t)r * row_stride + (size_t)b * bs + ho, hb);
            else if (r == only_row) memcpy(rows + (size_t)b * bs + ho, group, hb);
        }
    }
}

#define PACKED_K_FORMAT(name)                                                                                \
    static void pack_x4_##name(const void *w_rows, size_t row_stride, int n, void *dst)                      \
    {                                                                                                        \
        pack_x4_##name##_blocks(w_rows, row_stride, n, dst, false, 0);                                       \
    }                                                                                                        \
    static void unpack_x4_row_##name(const void *group, int r, int n, void *row)                             \
    {                                                                                                        \
        pack_x4_##name##_blocks(row, 0, n, (void *)group, true, r);                                          \
    }
PACKED_K_FORMAT(q4_K)
PACKED_K_FORMAT(q5_K)
PACKED_K_FORMAT(q6_K)
#undef PACKED_K_FORMAT

/* ---- traits and dispatch ------------------------------------------------------- */

typedef void (*quantize_act_fn)(const float *x, void *dst, int n);

/* Everything the dispatch picks for one instruction set: every format's
 * traits and the activation quantizers. One const instance per set, fixed at
 * compile time; exo__quants_init() only chooses which one is read. */
typedef struct {
    exo_type_traits traits[EXO_DTYPE_COUNT];
    quantize_act_fn act_q8_32;
    quantize_act_fn act_q8_K;
    bool avx2, avx512; /* the instruction sets its kernels use */
} cpu_kernels;

/* The tables are written in layers of designated initializers: a format's
 * BASE_ (what it is on any CPU, its fast members at the _ref kernels), then
 * its AVX2_ and AVX512_ kernels, each layer's members replacing the ones
 * before (C11 6.7.9: the last designator for a member wins). So a format's
 * facts are stated once, and each table differs only in the layers it takes. */
#define FORMAT(f, bs, ts, act) \
    .name = #f, .block_size = bs, .type_size = ts, .act_type = act, \
    .to_float = to_float_##f##_ref, .to_float_ref = to_float_##f##_ref, .from_float_ref = from_float_##f##_ref, \
    .vec_dot = vec_dot_##f##_ref, .vec_dot_ref = vec_dot_##f##_ref
/* The packed four-row layout is the same bytes on every CPU; only its dot is per instruction set. */
#define PACKED(f) .pack_x4 = pack_x4_##f, .unpack_x4_row = unpack_x4_row_##f

#define BASE_f32 FORMAT(f32, 1, sizeof(float), EXO_ACT_F32)
#define BASE_f16 FORMAT(f16, 1, sizeof(exo_half), EXO_ACT_F32)
#define BASE_bf16 FORMAT(bf16, 1, sizeof(uint16_t), EXO_ACT_F32)
#define BASE_q4_0 FORMAT(q4_0, EXO_QK, sizeof(exo_block_q4_0), EXO_ACT_Q8_32), PACKED(q4_0)
#define BASE_q4_1 FORMAT(q4_1, EXO_QK, sizeof(exo_block_q4_1), EXO_ACT_Q8_32), PACKED(q4_1)
#define BASE_q8_0 FORMAT(q8_0, EXO_QK, sizeof(exo_block_q8_0), EXO_ACT_Q8_32), PACKED(q8_0)
#define BASE_q5_0 FORMAT(q5_0, EXO_QK, sizeof(exo_block_q5_0), EXO_ACT_Q8_32)
#define BASE_q5_1 FORMAT(q5_1, EXO_QK, sizeof(exo_block_q5_1), EXO_ACT_Q8_32)
#define BASE_iq4_nl FORMAT(iq4_nl, EXO_QK, sizeof(exo_block_iq4_nl), EXO_ACT_Q8_32)
#define BASE_q2_K FORMAT(q2_K, EXO_QK_K, sizeof(exo_block_q2_K), EXO_ACT_Q8_K)
#define BASE_q3_K FORMAT(q3_K, EXO_QK_K, sizeof(exo_block_q3_K), EXO_ACT_Q8_K)
#define BASE_q4_K FORMAT(q4_K, EXO_QK_K, sizeof(exo_block_q4_K), EXO_ACT_Q8_K), PACKED(q4_K)
#define BASE_q5_K FORMAT(q5_K, EXO_QK_K, sizeof(exo_block_q5_K), EXO_ACT_Q8_K), PACKED(q5_K)
#define BASE_q6_K FORMAT(q6_K, EXO_QK_K, sizeof(exo_block_q6_K), EXO_ACT_Q8_K), PACKED(q6_K)
#define BASE_iq4_xs FORMAT(iq4_xs, EXO_QK_K, sizeof(exo_block_iq4_xs), EXO_ACT_Q8_K)

/* Every format, by the newest instruction set it has kernels for (each has
 * AVX2 ones; AVX-512 VNNI ones come on top of those). */
#define FORMATS_AVX2(X) \
    X(F32, f32) X(F16, f16) X(BF16, bf16) X(Q2_K, q2_K) X(Q3_K, q3_K) X(IQ4_XS, iq4_xs)
#define FORMATS_AVX512(X) \
    X(Q4_0, q4_0) X(Q4_1, q4_1) X(Q8_0, q8_0) X(Q5_0, q5_0) X(Q5_1, q5_1) X(IQ4_NL, iq4_nl) X(Q4_K, q4_K) \
    X(Q5_K, q5_K) X(Q6_K, q6_K)
#define FORMATS(X) FORMATS_AVX2(X) FORMATS_AVX512(X)

#define ROW_SCALAR(D, f) [EXO_DTYPE_##D] = { BASE_##f },

/* Before exo__quants_init(), and on CPUs without AVX2/FMA/F16C: the _ref kernels. */
static const cpu_kernels kernels_scalar = {
    .traits = { FORMATS(ROW_SCALAR) },
    .act_q8_32 = quantize_act_q8_32_ref,
    .act_q8_K = quantize_act_q8_K_ref,
};

#if EXO_QUANTS_X86
/* quants_avx2.c's kernels (Q8_0's packed dot and the Q4_0/Q8_0 GEMM: gemm_q8_avx2.c). */
#define AVX2_f32 .vec_dot = exo__vec_dot_f32_avx2
#define AVX2_f16 .vec_dot = exo__vec_dot_f16_avx2, .to_float = exo__to_float_f16_avx2
#define AVX2_bf16 .vec_dot = exo__vec_dot_bf16_avx2, .to_float = exo__to_float_bf16_avx2
#define AVX2_q4_0 \
    .vec_dot = exo__vec_dot_q4_0_q8_32_avx2, .to_float = exo__to_float_q4_0_avx2, \
    .vec_dot_packed = exo__vec_dot_packed_q4_0_q8_32_avx2, .tiled = &exo__tiled_q4_0_avx2
#define AVX2_q4_1 \
    .vec_dot = exo__vec_dot_q4_1_q8_32_avx2, .to_float = exo__to_float_q4_1_avx2, \
    .vec_dot_packed = exo__vec_dot_packed_q4_1_q8_32_avx2
/* Q8_0's packed dot (gemm_q8_avx2.c) is there for the layout its tiled GEMM reads. */
#define AVX2_q8_0 \
    .vec_dot = exo__vec_dot_q8_0_q8_32_avx2, .to_float = exo__to_float_q8_0_avx2, \
    .vec_dot_packed = exo__vec_dot_packed_q8_0_q8_32_avx2, .tiled = &exo__tiled_q8_0_avx2
#define AVX2_q5_0 .vec_dot = exo__vec_dot_q5_0_q8_32_avx2, .to_float = exo__to_float_q5_0_avx2
#define AVX2_q5_1 .vec_dot = exo__vec_dot_q5_1_q8_32_avx2, .to_float = exo__to_float_q5_1_avx2
#define AVX2_iq4_nl .vec_dot = exo__vec_dot_iq4_nl_q8_32_avx2, .to_float = exo__to_float_iq4_nl_avx2
#define AVX2_q2_K .vec_dot = exo__vec_dot_q2_K_q8_K_avx2, .to_float = exo__to_float_q2_K_avx2
#define AVX2_q3_K .vec_dot = exo__vec_dot_q3_K_q8_K_avx2, .to_float = exo__to_float_q3_K_avx2
/* The packed K formats: one row, a packed group, a group for four tokens (quants_k_rows.h). */
#define K_PACKED(fmt, isa)                                                                             \
    .vec_dot = exo__vec_dot_##fmt##_q8_K_##isa, .vec_dot_packed = exo__vec_dot_packed_##fmt##_q8_K_##isa, \
    .vec_dot_packed_t4 = exo__vec_dot_packed_t4_##fmt##_q8_K_##isa
/* and a prompt's batch through the tiled GEMM (gemm_k_avx2.c) */
#define AVX2_q4_K K_PACKED(q4_K, avx2), .tiled = &exo__tiled_q4_K_avx2
#define AVX2_q5_K K_PACKED(q5_K, avx2), .tiled = &exo__tiled_q5_K_avx2
#define AVX2_q6_K K_PACKED(q6_K, avx2), .tiled = &exo__tiled_q6_K_avx2
#define AVX2_iq4_xs .vec_dot = exo__vec_dot_iq4_xs_q8_K_avx2, .to_float = exo__to_float_iq4_xs_avx2

/* Q5_0, Q5_1 and IQ4_NL share the 4-bit bodies (the fifth bits go in through
 * a mask register, IQ4_NL's table through one vpshufb), with dpbusd doing the
 * integer work: bench_quants has Q5_0 at about 1.4x its AVX2 kernel. */
#define AVX512_q4_0 \
    .vec_dot = exo__vec_dot_q4_0_q8_32_avx512, .vec_dot_x4 = exo__vec_dot_x4_q4_0_q8_32_avx512, \
    .vec_dot_packed = exo__vec_dot_packed_q4_0_q8_32_avx512, \
    .vec_dot_packed_t4 = exo__vec_dot_packed_t4_q4_0_q8_32_avx512, \
    .tiled = &exo__tiled_q4_0_avx512
#define AVX512_q4_1 \
    .vec_dot = exo__vec_dot_q4_1_q8_32_avx512, .vec_dot_x4 = exo__vec_dot_x4_q4_1_q8_32_avx512, \
    .vec_dot_packed = exo__vec_dot_packed_q4_1_q8_32_avx512
/* Q8_0's four-row dot wins only while the rows sit in cache: streaming the
 * output head from DRAM for one token it lost to one row, but a batch (a
 * speculative verify pass, a prompt) reuses each row group for every token,
 * and there it wins (verify of 9 positions: 24 -> 19 ms). */
#define AVX512_q8_0 \
    .vec_dot = exo__vec_dot_q8_0_q8_32_avx512, .vec_dot_x4 = exo__vec_dot_x4_q8_0_q8_32_avx512, \
    .x4_min_tokens = 2, .vec_dot_packed = exo__vec_dot_packed_q8_0_q8_32_avx512, .tiled = &exo__tiled_q8_0_avx512
#define AVX512_q5_0 .vec_dot = exo__vec_dot_q5_0_q8_32_avx512
#define AVX512_q5_1 .vec_dot = exo__vec_dot_q5_1_q8_32_avx512
#define AVX512_iq4_nl .vec_dot = exo__vec_dot_iq4_nl_q8_32_avx512
/* the AVX2 bodies with 32 registers (quants_k_rows.h) */
/* and a prompt's batch through the tiled GEMM (gemm_k_avx512.c) */
#define AVX512_q4_K K_PACKED(q4_K, avx512), .tiled = &exo__tiled_q4_K_avx512
#define AVX512_q5_K K_PACKED(q5_K, avx512), .tiled = &exo__tiled_q5_K_avx512
#define AVX512_q6_K K_PACKED(q6_K, avx512), .tiled = &exo__tiled_q6_K_avx512

/* The activation quantizers have AVX2 versions only; the AVX-512 table uses them too. */
#define ACT_AVX2 .act_q8_32 = exo__quantize_act_q8_32_avx2, .act_q8_K = exo__quantize_act_q8_K_avx2

#define ROW_AVX2(D, f) [EXO_DTYPE_##D] = { BASE_##f, AVX2_##f },
#define ROW_AVX512(D, f) [EXO_DTYPE_##D] = { BASE_##f, AVX2_##f, AVX512_##f },
#define SET_AVX2(D, f) [EXO_DTYPE_##D] = { AVX2_##f },
#define SET_AVX512(D, f) [EXO_DTYPE_##D] = { AVX512_##f },

/* The layering replaces members on purpose (see above). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
static const cpu_kernels kernels_avx2 = {
    .traits = { FORMATS(ROW_AVX2) },
    ACT_AVX2,
    .avx2 = true,
};

static const cpu_kernels kernels_avx512 = {
    .traits = { FORMATS_AVX2(ROW_AVX2) FORMATS_AVX512(ROW_AVX512) },
    ACT_AVX2,
    .avx2 = true,
    .avx512 = true,
};
#pragma GCC diagnostic pop

/* Each instruction set's own kernels, from the same layers (exo__quants_kernels). */
static const exo_kernel_set sets_avx2[EXO_DTYPE_COUNT] = { FORMATS(SET_AVX2) };
static const exo_kernel_set sets_avx512[EXO_DTYPE_COUNT] = { FORMATS_AVX512(SET_AVX512) };
#endif

/* The table in use. Atomic only so that a reader that skipped
 * exo__quants_init() may run beside it: the tables never change, only which
 * one this points at, so relaxed loads suffice. */
static _Atomic(const cpu_kernels *) active = &kernels_scalar;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static inline const cpu_kernels *active_kernels(void)
{
    return atomic_load_explicit(&active, memory_order_relaxed);
}

const exo_kernel_set *exo__quants_kernels(int dtype, int isa)
{
#if EXO_QUANTS_X86
    if (dtype < 0 || dtype >= EXO_DTYPE_COUNT) return NULL;
    const exo_kernel_set *k = isa == EXO_ISA_AVX2 ? &sets_avx2[dtype] : isa == EXO_ISA_AVX512 ? &sets_avx512[dtype]
                                                                                             : NULL;
    return k && (k->vec_dot || k->to_float || k->vec_dot_x4 || k->vec_dot_packed || k->vec_dot_packed_t4) ? k : NULL;
#else
    (void)dtype;
    (void)isa;
    return NULL;
#endif
}

static void quants_init_once(void)
{
    exo__vec_init();
#if EXO_QUANTS_X86
    const exo_cpu_features *cpu = exo__cpu_features_get();
    const cpu_kernels *k = cpu->avx512 ? &kernels_avx512 : cpu->avx2 ? &kernels_avx2 : &kernels_scalar;
    atomic_store_explicit(&active, k, memory_order_relaxed);
#endif
}

void exo__quants_init(void)
{
    pthread_once(&init_once, quants_init_once);
}

bool exo__quants_have_avx2(void)
{
    return active_kernels()->avx2;
}

bool exo__quants_have_avx512(void)
{
    return active_kernels()->avx512;
}

const exo_type_traits *exo__type_traits_get(int dtype)
{
    if (dtype < 0 || dtype >= EXO_DTYPE_COUNT) return NULL;
    const exo_type_traits *t = &active_kernels()->traits[dtype];
    return t->name ? t : NULL;
}

size_t exo__dtype_row_size(int dtype, int64_t n)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    if (!t) return 0;
    return (size_t)(n / t->block_size) * t->type_size;
}

size_t exo__act_row_size(int act_type, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: return (size_t)n * sizeof(float);
    case EXO_ACT_Q8_32: return (size_t)(n / EXO_QK) * sizeof(exo_block_q8_32);
    case EXO_ACT_Q8_K: return (size_t)(n / EXO_QK_K) * sizeof(exo_block_q8_K);
    default: return 0;
    }
}

void exo__quantize_act(int act_type, const float *x, void *dst, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: quantize_act_f32(x, dst, n); break;
    case EXO_ACT_Q8_32: active_kernels()->act_q8_32(x, dst, n); break;
    case EXO_ACT_Q8_K: active_kernels()->act_q8_K(x, dst, n); break;
    default: break;
    }
}

void exo__quantize_act_ref(int act_type, const float *x, void *dst, int n)
{
    switch (act_type) {
    case EXO_ACT_F32: quantize_act_f32(x, dst, n); break;
    case EXO_ACT_Q8_32: quantize_act_q8_32_ref(x, dst, n); break;
    case EXO_ACT_Q8_K: quantize_act_q8_K_ref(x, dst, n); break;
    default: break;
    }
}
