/* quants_k_rows.h: the Q4_K and Q6_K dot bodies (internal), one per format,
 * for one weight row and for a packed group of four rows (quants.h), on AVX2
 * and on AVX-512 VNNI.
 *
 * Included by quants_avx2.c and quants_avx512.c only, each of which names the
 * bodies in its own exported kernels; what the instruction set changes is one
 * step: a scaled 16-bit product is added into the 32-bit sums with madd + add
 * on AVX2 and with one vpdpwssd on VNNI. Integer sums are exact either way,
 * and the float work (one FMA per super-block into eight lanes, the lanes
 * summed in one fixed order) is the same op for op, so the one-row kernel,
 * the packed kernel and both instruction sets give bit-identical results.
 *
 * The per-super-block costs the first one-row kernels paid through memory
 * stay in registers: Q4_K's 6-bit scales and minimums are unpacked with
 * word-wide integer ops into one vector of sixteen int16 (scales, then
 * minimums), and each sub-block's scale is spread over its lanes with one
 * vpshufb; Q6_K's sixteen scales are one sign extension. The packed layout
 * puts the four rows' quants of one super-block side by side, then their
 * headers, so a group is one sequential stream and the activation block is
 * loaded once for the four rows. */
#ifndef EXO_QUANTS_K_ROWS_H
#define EXO_QUANTS_K_ROWS_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_impl.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define KROWS_VNNI 1
#else
#define KROWS_VNNI 0
#endif

/* Packed super-block chunk layout (quants.h): four rows' quants, then four
 * rows' headers. Q4_K: header d, dmin, scales (16 bytes, the block's first);
 * Q6_K: header scales, d (18 bytes, the block's last). */
#define KROWS_Q4K_HEAD 16
#define KROWS_Q4K_QS 128
#define KROWS_Q6K_HEAD 18
#define KROWS_Q6K_QS 192

/* The packed kernels prefetch this far ahead, as many lines a super-block as
 * it consumes (the 32-element packed kernels found 2 KiB best). */
#ifndef KROWS_PREFETCH
#define KROWS_PREFETCH 2048
#endif

static inline uint32_t krows_u32(const void *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u;
}

static inline float krows_hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float krows_hsum4_ps(__m128 v)
{
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum += p * s, lanes of int16 pairs into int32 (exact). */
static inline __m256i krows_dot16(__m256i sum, __m256i p, __m256i s)
{
#if KROWS_VNNI
    return _mm256_dpwssd_epi32(sum, p, s);
#else
    return _mm256_add_epi32(sum, _mm256_madd_epi16(p, s));
#endif
}

/* int16 lane j of the 128-bit half s spread over both halves of a register. */
static inline __m256i krows_spread16(__m256i s, int j)
{
    return _mm256_shuffle_epi8(s, _mm256_set1_epi16((short)((2 * j + 1) << 8 | 2 * j)));
}

static inline void krows_prefetch(const uint8_t *p, int bytes)
{
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + KROWS_PREFETCH + o, _MM_HINT_T0);
}

/* R rows (1 or 4) of Q4_K at w0, w0 + stride, ...; with P the packed group
 * of four at w0; against T activation rows (1 or 4) act_stride bytes apart.
 * out[t * ldo + r] = row r's dot with activation t: the _ref kernel's sums,
 * exact in integers, d * sumi and dmin * summ accumulated per super-block.
 * A row's quants and scales are unpacked once for the T tokens (a prompt's
 * batch); each (row, token) pair goes through the same float operations
 * whatever R and T are, so every grouping gives the same bits. */
EXO_ALWAYS_INLINE void q4_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                 float *out, size_t ldo, const int R, const int T, const bool P)
{
    const int nb = n / EXO_QK_K;
    const size_t bs = sizeof(exo_block_q4_K);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const uint32_t low6 = 0x3f3f3f3fu, nib = 0x0f0f0f0fu, top2 = 0x03030303u;
    __m256 acc[4][4];
    __m128 accm[4][4];
    FOR_ROWS(r, R) FOR_ROWS(t, T) {
        acc[r][t] = _mm256_setzero_ps();
        accm[r][t] = _mm_setzero_ps();
    }
    for (int i = 0; i < nb; i++) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) krows_prefetch(c, 4 * (int)bs);
        const exo_block_q8_K *a[4];
        __m128i bsum_pairs[4];
        FOR_ROWS(t, T) {
            a[t] = (const exo_block_q8_K *)(act + (size_t)t * act_stride) + i;
            bsum_pairs[t] = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)a[t]->bsums),
                                           _mm_loadu_si128((const __m128i *)(a[t]->bsums + 8)));
        }
        FOR_ROWS(r, R) {
            const uint8_t *h = P ? c + 4 * KROWS_Q4K_QS + KROWS_Q4K_HEAD * r : w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *qs = P ? c + KROWS_Q4K_QS * r : h + offsetof(exo_block_q4_K, qs);
            exo_half hd[2];
            memcpy(hd, h, sizeof hd);
            const float dw = _cvtsh_ss(hd[0]), dminw = _cvtsh_ss(hd[1]);
            /* exo_k_scales_unpack, in registers */
            const uint32_t u0 = krows_u32(h + 4), u1 = krows_u32(h + 8), u2 = krows_u32(h + 12);
            const uint32_t s0 = u0 & low6, s1 = (u2 & nib) | (((u0 >> 6) & top2) << 4);
            const uint32_t m0 = u1 & low6, m1 = ((u2 >> 4) & nib) | (((u1 >> 6) & top2) << 4);
            const __m256i sm = _mm256_cvtepu8_epi16(_mm_setr_epi32((int)s0, (int)s1, (int)m0, (int)m1));
            const __m128i mins = _mm256_extracti128_si256(sm, 1);
            const __m256i sc = _mm256_permute2x128_si256(sm, sm, 0x00); /* the scales in both halves */
            __m256i qlo[4], qhi[4], slo[4], shi[4];
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                qlo[k] = _mm256_and_si256(q, low4);
                qhi[k] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                slo[k] = krows_spread16(sc, 2 * k);
                shi[k] = krows_spread16(sc, 2 * k + 1);
            }
            FOR_ROWS(t, T) {
                const float ad = a[t]->d, d = dw * ad, dmin = dminw * ad;
                accm[r][t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_madd_epi16(mins, bsum_pairs[t])),
                                          accm[r][t]);
                __m256i sumi = _mm256_setzero_si256();
                for (int k = 0; k < 4; k++) {
                    const __m256i x0 = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 64 * k));
                    const __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 64 * k + 32));
                    sumi = krows_dot16(sumi, _mm256_maddubs_epi16(qlo[k], x0), slo[k]);
                    sumi = krows_dot16(sumi, _mm256_maddubs_epi16(qhi[k], x1), shi[k]);
                }
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
    FOR_ROWS(r, R) FOR_ROWS(t, T) out[(size_t)t * ldo + r] = krows_hsum_ps(acc[r][t]) - krows_hsum4_ps(accm[r][t]);
}

/* R rows (1 or 4) of Q6_K against T activation rows, as q4_K_rows. The
 * quants go through maddubs unsigned (0..63) and the -32 comes out once a
 * super-block as 32 * sum_g scale[g] * bsums[g] (Q6_K's 16-element groups
 * are Q8_K's). */
EXO_ALWAYS_INLINE void q6_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                 float *out, size_t ldo, const int R, const int T, const bool P)
{
    const int nb = n / EXO_QK_K;
    const size_t bs = sizeof(exo_block_q6_K);
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    /* scale 2k over the low half of a register, 2k + 1 over the high one */
    const __m256i pair_base = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                               2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    __m256 acc[4][4];
    FOR_ROWS(r, R) FOR_ROWS(t, T) acc[r][t] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) krows_prefetch(c, 4 * (int)bs);
        const exo_block_q8_K *a[4];
        FOR_ROWS(t, T) a[t] = (const exo_block_q8_K *)(act + (size_t)t * act_stride) + i;
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *ql = P ? c + KROWS_Q6K_QS * r : w;
            const uint8_t *qhp = ql + offsetof(exo_block_q6_K, qh);
            const uint8_t *h = P ? c + 4 * KROWS_Q6K_QS + KROWS_Q6K_HEAD * r : w + offsetof(exo_block_q6_K, scales);
            exo_half hd;
            memcpy(&hd, h + 16, sizeof hd);
            const float dw = _cvtsh_ss(hd);
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)h));
            __m256i q[8], sk[8];
            for (int half = 0; half < 2; half++) {
                const uint8_t *l = ql + 64 * half;
                const __m256i s8 = _mm256_permute2x128_si256(sc16, sc16, half ? 0x11 : 0x00);
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)l);
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(l + 32));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(qhp + 32 * half));
                __m256i *qq = q + 4 * half;
                qq[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4));
                qq[1] = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4));
                qq[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4));
                qq[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4));
                for (int k = 0; k < 4; k++)
                    sk[4 * half + k] = _mm256_shuffle_epi8(s8, _mm256_add_epi8(pair_base, _mm256_set1_epi8((char)(4 * k))));
            }
            FOR_ROWS(t, T) {
                const float d = dw * a[t]->d;
                const __m256i bsums = _mm256_loadu_si256((const __m256i *)a[t]->bsums);
                /* -32 * sum_g sc[g] * bsums[g] */
                __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5));
                for (int k = 0; k < 8; k++) {
                    const __m256i xk = _mm256_loadu_si256((const __m256i *)(a[t]->qs + 32 * k));
                    sumi = krows_dot16(sumi, _mm256_maddubs_epi16(q[k], xk), sk[k]);
                }
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r][t]);
            }
        }
    }
    FOR_ROWS(r, R) FOR_ROWS(t, T) out[(size_t)t * ldo + r] = krows_hsum_ps(acc[r][t]);
}

/* The exported kernels of one instruction set (SUFFIX avx2 or avx512):
 * one-row dots, packed dots over n_groups consecutive groups, and one packed
 * group against four activation rows (a batch). */
#define KROWS_KERNELS(fmt, SUFFIX)                                                                                  \
    float exo__vec_dot_##fmt##_q8_K_##SUFFIX(int n, const void *w_row, const void *act_row)                          \
    {                                                                                                               \
        float out;                                                                                                  \
        fmt##_rows(n, w_row, 0, act_row, 0, &out, 0, 1, 1, false);                                                  \
        return out;                                                                                                 \
    }                                                                                                               \
    void exo__vec_dot_packed_##fmt##_q8_K_##SUFFIX(int n, const void *groups, int64_t n_groups, const void *act_row, \
                                                    float *out)                                                     \
    {                                                                                                               \
        const size_t group_bytes = (size_t)(n / EXO_QK_K) * 4 * sizeof(exo_block_##fmt);                            \
        const uint8_t *g = groups;                                                                                  \
        for (int64_t k = 0; k < n_groups; k++, g += group_bytes)                                                    \
            fmt##_rows(n, g, 0, act_row, 0, out + 4 * k, 0, 4, 1, true);                                            \
    }                                                                                                               \
    void exo__vec_dot_packed_t4_##fmt##_q8_K_##SUFFIX(int n, const void *group, const void *act_rows,               \
                                                       size_t act_stride, float *out, size_t ldo)                   \
    {                                                                                                               \
        fmt##_rows(n, group, 0, act_rows, act_stride, out, ldo, 4, 4, true);                                        \
    }

#endif
