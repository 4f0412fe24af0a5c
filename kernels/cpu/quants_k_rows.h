/* quants_k_rows.h: the Q4_K and Q6_K dot bodies (internal), one per format,
 * for one weight row, for a packed group of four rows (quants.h) and for a
 * packed group against four tokens (a prompt's batch).
 *
 * Included by quants_avx2.c, quants_avx512.c and gemm_k_avx2.c only, each of which names the
 * bodies in its own exported kernels. The code is the same: built for
 * AVX-512 it has 32 vector registers, which keeps the four-row, four-token
 * accumulators out of memory. Integer sums are exact, and a (row, token)'s
 * lanes collapse in integers (a transposing add tree over four rows) to the
 * S and M of quants.c's per-super-block order before its one float step, so
 * the one-row kernels, the packed ones, both instruction sets, the tiled
 * GEMMs and the _ref kernels give bit-identical results.
 *
 * The quants and activations go through the registers in a lane order (see
 * krows_t4x4) in which a sub-block's scale is applied once a super-block,
 * not once per 32 values; the packed layout stores the weights in that order
 * (the four rows' quants of one super-block side by side, then their
 * headers: one sequential stream), and the packed kernels put the activation
 * row in it once per call. Q4_K's 6-bit scales and minimums are unpacked
 * with word-wide integer ops in registers. */
#ifndef EXO_QUANTS_K_ROWS_H
#define EXO_QUANTS_K_ROWS_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_impl.h"


/* Packed super-block chunk layout (quants.h): four rows' quants, then four
 * rows' headers. Q4_K: header d, dmin, scales (16 bytes, the block's first);
 * Q6_K: header scales, d (18 bytes, the block's last). */
#define KROWS_Q4K_HEAD 16
#define KROWS_Q4K_QS 128
#define KROWS_Q5K_QS 160 /* Q5_K: Q4_K's 128, then the fifth bits */
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

static inline void krows_prefetch(const uint8_t *p, int bytes)
{
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + KROWS_PREFETCH + o, _MM_HINT_T0);
}

/* quants.c's per-super-block order: each (row, token) pair's lane integers
 * collapse to S (and Q4_K/Q5_K's M) in integers, then one float step a
 * super-block. Four rows' eight int32 lanes each to a vector of the four
 * rows' sums: a transposing add tree (integers: any order is exact). */
static inline __m128i krows_sum4x4_epi32(__m128i a, __m128i b, __m128i c, __m128i d);

static inline __m128i krows_sum4x8_epi32(__m256i a, __m256i b, __m256i c, __m256i d)
{
    return krows_sum4x4_epi32(_mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1)),
                              _mm_add_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)),
                              _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)),
                              _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1)));
}

/* The same for four rows' four lanes (the minimums' products). */
static inline __m128i krows_sum4x4_epi32(__m128i a, __m128i b, __m128i c, __m128i d)
{
    /* unpacks and adds rather than phaddd: these have EVEX forms, so the AVX-512 build may keep
     * the rows' sums in any of its 32 registers (with phaddd GCC spilled the packed Q6_K loop) */
    const __m128i ab = _mm_add_epi32(_mm_unpacklo_epi32(a, b), _mm_unpackhi_epi32(a, b));
    const __m128i cd = _mm_add_epi32(_mm_unpacklo_epi32(c, d), _mm_unpackhi_epi32(c, d));
    return _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd));
}

/* R (1 or 4) rows' S from their lane vectors v[0..R): lane r row r's. */
EXO_ALWAYS_INLINE __m128i krows_rows_sum8(const __m256i *v, const int R)
{
    if (R == 4) return krows_sum4x8_epi32(v[0], v[1], v[2], v[3]);
    const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v[0]), _mm256_extracti128_si256(v[0], 1));
    return _mm_hadd_epi32(_mm_hadd_epi32(h, h), h);
}

EXO_ALWAYS_INLINE __m128i krows_rows_sum4(const __m128i *v, const int R)
{
    if (R == 4) return krows_sum4x4_epi32(v[0], v[1], v[2], v[3]);
    return _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[0]), v[0]);
}

/* The float step for R rows (lane r) and one token of scale ad:
 * acc = fma(dw * ad, S, acc), then (mins) acc = fma(-(dmin * ad), M, acc). */
EXO_ALWAYS_INLINE __m128 krows_step(__m128 acc, __m128 dw, __m128 dmin, float ad, __m128i S, __m128i M, const bool mins)
{
    const __m128 a = _mm_set1_ps(ad);
    acc = _mm_fmadd_ps(_mm_mul_ps(dw, a), _mm_cvtepi32_ps(S), acc);
    return mins ? _mm_fnmadd_ps(_mm_mul_ps(dmin, a), _mm_cvtepi32_ps(M), acc) : acc;
}

EXO_ALWAYS_INLINE void krows_store(const __m128 *acc, float *out, size_t ldo, const int R, const int T)
{
    FOR_ROWS(t, T) {
        float v[4];
        _mm_storeu_ps(v, acc[t]);
        FOR_ROWS(r, R) out[(size_t)t * ldo + r] = v[r];
    }
}

/* The lane order. A super-block's 256 values (weights or activations) are
 * taken as eight registers of 32 bytes, "lo" c and "hi" c for c = 0..3:
 * byte p of lo c is element 64 (p / 8) + 8 c + p % 8 (of sub-block 2 (p / 8)),
 * hi c the element 32 after it (sub-block 2 (p / 8) + 1). Every 32-bit lane
 * then stays within one 32-element sub-block (and one 16-element group)
 * across all four c, so the maddubs products of the four registers add up in
 * 16 bits (|sum| <= 4 * 2 * 15 * 127 for Q4_K, 2 * 2 * 63 * 127 for Q6_K's
 * pairs) and the sub-block scales are applied once a super-block, one madd
 * for the lo and one for the hi registers, instead of once per sub-block:
 * 10 multiplies a row and super-block instead of 16. From the natural order
 * (register j = sub-block j) this order is a 4 x 4 transpose of 64-bit words
 * of registers 0, 2, 4, 6 (giving lo) and 1, 3, 5, 7 (hi). */
static inline void krows_t4x4(__m256i a, __m256i b, __m256i c, __m256i d, __m256i out[4])
{
    const __m256i t0 = _mm256_unpacklo_epi64(a, b), t1 = _mm256_unpackhi_epi64(a, b);
    const __m256i t2 = _mm256_unpacklo_epi64(c, d), t3 = _mm256_unpackhi_epi64(c, d);
    out[0] = _mm256_permute2x128_si256(t0, t2, 0x20);
    out[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
    out[2] = _mm256_permute2x128_si256(t0, t2, 0x31);
    out[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
}

/* The activation quants of a super-block (natural order at x) in the lane
 * order: lo c at 64 c, hi c at 64 c + 32. */
static inline void krows_act_lanes(const int8_t *x, uint8_t *out)
{
    __m256i v[8], lo[4], hi[4];
    for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_si256((const __m256i *)(x + 32 * j));
    krows_t4x4(v[0], v[2], v[4], v[6], lo);
    krows_t4x4(v[1], v[3], v[5], v[7], hi);
    for (int c = 0; c < 4; c++) {
        _mm256_storeu_si256((__m256i *)(out + 64 * c), lo[c]);
        _mm256_storeu_si256((__m256i *)(out + 64 * c + 32), hi[c]);
    }
}

/* T activation rows (nb super-blocks each, act_stride bytes apart) into the
 * lane order, 256 bytes a super-block, token t from t * nb * 256. */
static inline void krows_acts_lanes(const uint8_t *act, size_t act_stride, int nb, int T, uint8_t *out)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < nb; i++)
            krows_act_lanes(((const exo_block_q8_K *)(act + (size_t)t * act_stride))[i].qs,
                            out + ((size_t)t * nb + i) * EXO_QK_K);
}

/* With AVX-512 VNNI (the file built for it) the bodies sum a lane's
 * products with vpdpbusd into 32 bits, one instruction where AVX2 takes
 * maddubs and a 16-bit add, and apply the scales with a 32-bit multiply
 * (vpmulld) instead of madd: the same exact integer sums, so the same bits.
 * The scales then come one per 32-bit lane (two lanes a sub-block) instead
 * of one per 16-bit lane (four). */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define KROWS_VNNI 1
#define KROWS_SCALE_REP 2
#else
#define KROWS_VNNI 0
#define KROWS_SCALE_REP 4
#endif

/* A 16-byte shuffle control: byte i takes source byte base + step * (i / rep)
 * (rep 2 or 4; the bytes past 4 steps are not read). */
static inline __m128i krows_ctl(int base, int step, int rep)
{
    char b[16];
    for (int i = 0; i < 16; i++) b[i] = (char)(base + step * (i / rep < 4 ? i / rep : 3));
    return _mm_loadu_si128((const __m128i *)b);
}

/* R rows (1 or 4) of Q4_K against T activation rows (1 or 4, act_stride
 * bytes apart): out[t * ldo + r]. With P the rows are the packed group of
 * four at w0 (quants.h; quants in the lane order), and xt holds the T rows'
 * activation quants in the lane order (krows_acts_lanes); without P, row r
 * is at w0 + r * stride in the file's layout and both are put in the lane
 * order here. The _ref kernel's sums, exact in integers, then its float
 * step per super-block (krows_step): each (row, token) pair goes through the
 * same operations whatever R, T and P are, so every path gives the same
 * bits. */
/* Q5 (Q5_K): the same with a fifth bit per value. Packed, a row's
 * super-block is its 128 bytes of nibbles as Q4_K's, then 32 bytes whose byte
 * p holds the fifth bits of the eight registers' byte p (bit 2 c: lo c, bit
 * 2 c + 1: hi c); 4-register sums stay in 16 bits (4 * 2 * 31 * 127). */
EXO_ALWAYS_INLINE void q45_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                  const uint8_t *xt, float *out, size_t ldo, const int R, const int T, const bool P,
                                  const bool Q5)
{
    const int nb = n / EXO_QK_K;
    const size_t bs = Q5 ? sizeof(exo_block_q5_K) : sizeof(exo_block_q4_K);
    const size_t qs_bytes = Q5 ? KROWS_Q5K_QS : KROWS_Q4K_QS;
    const __m256i bit4 = _mm256_set1_epi8(0x10), one = _mm256_set1_epi8(1);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m128i ctl_even = krows_ctl(0, 2, KROWS_SCALE_REP), ctl_odd = krows_ctl(1, 2, KROWS_SCALE_REP);
    const uint32_t low6 = 0x3f3f3f3fu, nib = 0x0f0f0f0fu, top2 = 0x03030303u;
    __m128 acc[4]; /* per token, lane r: row r */
    FOR_ROWS(t, T) acc[t] = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256i S[4][4]; /* [token][row]: the lanes of S */
        __m128i M[4][4]; /* [token][row]: the lanes of M */
        float dws[4], dmins[4];
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) krows_prefetch(c, 4 * (int)bs);
        const exo_block_q8_K *a[4];
        __m128i bsum_pairs[4];
        uint8_t xl_local[P ? 1 : EXO_QK_K];
        const uint8_t *xl[4];
        FOR_ROWS(t, T) {
            a[t] = (const exo_block_q8_K *)(act + (size_t)t * act_stride) + i;
            bsum_pairs[t] = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)a[t]->bsums),
                                           _mm_loadu_si128((const __m128i *)(a[t]->bsums + 8)));
            if (P) {
                xl[t] = xt + ((size_t)t * nb + i) * EXO_QK_K;
            } else {
                krows_act_lanes(a[t]->qs, xl_local); /* the one-row kernel: T is 1 */
                xl[t] = xl_local;
            }
        }
        FOR_ROWS(r, R) {
            const uint8_t *h = P ? c + 4 * qs_bytes + KROWS_Q4K_HEAD * r : w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *qs = P ? c + qs_bytes * r : h + (Q5 ? offsetof(exo_block_q5_K, qs) : offsetof(exo_block_q4_K, qs));
            exo_half hd[2];
            memcpy(hd, h, sizeof hd);
            dws[r] = _cvtsh_ss(hd[0]);
            dmins[r] = _cvtsh_ss(hd[1]);
            /* exo_k_scales_unpack, in registers */
            const uint32_t u0 = krows_u32(h + 4), u1 = krows_u32(h + 8), u2 = krows_u32(h + 12);
            const uint32_t s0 = u0 & low6, s1 = (u2 & nib) | (((u0 >> 6) & top2) << 4);
            const uint32_t m0 = u1 & low6, m1 = ((u2 >> 4) & nib) | (((u1 >> 6) & top2) << 4);
            const __m128i sc8 = _mm_cvtsi64_si128((long long)((uint64_t)s1 << 32 | s0));
            const __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)((uint64_t)m1 << 32 | m0)));
#if KROWS_VNNI
            /* int32 lane i: the scale of lo (even) or hi (odd) sub-block 2 (i / 2) */
            const __m256i sc_even = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(sc8, ctl_even));
            const __m256i sc_odd = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(sc8, ctl_odd));
#else
            /* int16 lane i: the scale of lo (even) or hi (odd) sub-block 2 (i / 4) */
            const __m256i sc_even = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, ctl_even));
            const __m256i sc_odd = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sc8, ctl_odd));
#endif
            __m256i qlo[4], qhi[4];
            if (P) {
                const __m256i hb = Q5 ? _mm256_loadu_si256((const __m256i *)(qs + KROWS_Q4K_QS)) : _mm256_setzero_si256();
                for (int k = 0; k < 4; k++) {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                    qlo[k] = _mm256_and_si256(q, low4);
                    qhi[k] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                    if (Q5) { /* bit 2k (lo) and 2k + 1 (hi) of each byte to bit 4 */
                        const int lo = 2 * k, hi = 2 * k + 1;
                        qlo[k] = _mm256_or_si256(qlo[k], _mm256_and_si256(lo <= 4 ? _mm256_slli_epi16(hb, 4 - lo)
                                                                                     : _mm256_srli_epi16(hb, lo - 4), bit4));
                        qhi[k] = _mm256_or_si256(qhi[k], _mm256_and_si256(hi <= 4 ? _mm256_slli_epi16(hb, 4 - hi)
                                                                                     : _mm256_srli_epi16(hb, hi - 4), bit4));
                    }
                }
            } else {
                __m256i raw[4], q[4];
                for (int k = 0; k < 4; k++) raw[k] = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                krows_t4x4(raw[0], raw[1], raw[2], raw[3], q);
                /* Q5: the file's qh byte m holds sub-block j's fifth bit of element m at bit j; lo k
                 * byte p is element 8 k + p % 8 of sub-block 2 (p / 8): qword k of qh in every
                 * qword, shifted by 2 (p / 8) (hi: + 1) */
                const __m256i qh = Q5 ? _mm256_loadu_si256((const __m256i *)(h + offsetof(exo_block_q5_K, qh)))
                                      : _mm256_setzero_si256();
                const __m256i sh_lo = _mm256_setr_epi64x(0, 2, 4, 6), sh_hi = _mm256_setr_epi64x(1, 3, 5, 7);
                for (int k = 0; k < 4; k++) {
                    qlo[k] = _mm256_and_si256(q[k], low4);
                    qhi[k] = _mm256_and_si256(_mm256_srli_epi16(q[k], 4), low4);
                    if (Q5) {
                        __m256i hk = qh;
                        switch (k) { /* permute4x64 wants a constant */
                        case 0: hk = _mm256_permute4x64_epi64(qh, 0x00); break;
                        case 1: hk = _mm256_permute4x64_epi64(qh, 0x55); break;
                        case 2: hk = _mm256_permute4x64_epi64(qh, 0xaa); break;
                        default: hk = _mm256_permute4x64_epi64(qh, 0xff); break;
                        }
                        qlo[k] = _mm256_or_si256(qlo[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srlv_epi64(hk, sh_lo), one), 4));
                        qhi[k] = _mm256_or_si256(qhi[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srlv_epi64(hk, sh_hi), one), 4));
                    }
                }
            }
            FOR_ROWS(t, T) {
                M[t][r] = _mm_madd_epi16(mins, bsum_pairs[t]);
                __m256i se = _mm256_setzero_si256(), so = _mm256_setzero_si256();
                for (int k = 0; k < 4; k++) {
                    const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xl[t] + 64 * k));
                    const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xl[t] + 64 * k + 32));
#if KROWS_VNNI
                    se = _mm256_dpbusd_epi32(se, qlo[k], x0);
                    so = _mm256_dpbusd_epi32(so, qhi[k], x1);
#else
                    se = _mm256_add_epi16(se, _mm256_maddubs_epi16(qlo[k], x0));
                    so = _mm256_add_epi16(so, _mm256_maddubs_epi16(qhi[k], x1));
#endif
                }
#if KROWS_VNNI
                S[t][r] = _mm256_add_epi32(_mm256_mullo_epi32(se, sc_even), _mm256_mullo_epi32(so, sc_odd));
#else
                S[t][r] = _mm256_add_epi32(_mm256_madd_epi16(se, sc_even), _mm256_madd_epi16(so, sc_odd));
#endif
            }
        }
        const __m128 dw = R == 4 ? _mm_setr_ps(dws[0], dws[1], dws[2], dws[3]) : _mm_set1_ps(dws[0]);
        const __m128 dmin = R == 4 ? _mm_setr_ps(dmins[0], dmins[1], dmins[2], dmins[3]) : _mm_set1_ps(dmins[0]);
        FOR_ROWS(t, T) acc[t] = krows_step(acc[t], dw, dmin, a[t]->d, krows_rows_sum8(S[t], R), krows_rows_sum4(M[t], R), true);
    }
    krows_store(acc, out, ldo, R, T);
}

EXO_ALWAYS_INLINE void q4_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                 const uint8_t *xt, float *out, size_t ldo, const int R, const int T, const bool P)
{
    q45_K_rows(n, w0, stride, act, act_stride, xt, out, ldo, R, T, P, false);
}

EXO_ALWAYS_INLINE void q5_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                 const uint8_t *xt, float *out, size_t ldo, const int R, const int T, const bool P)
{
    q45_K_rows(n, w0, stride, act, act_stride, xt, out, ldo, R, T, P, true);
}

/* Q6_K's values 0..63 of one super-block in the natural order: register
 * 4 h + k is sub-block 4 h + k (quants.c's q6_get). */
static inline void krows_q6_natural(const uint8_t *ql, const uint8_t *qh, __m256i q[8])
{
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    for (int half = 0; half < 2; half++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * half));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * half + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)(qh + 32 * half));
        __m256i *o = q + 4 * half;
        o[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(h, two), 4));
        o[1] = _mm256_or_si256(_mm256_and_si256(l1, low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), two), 4));
        o[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), two), 4));
        o[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), two), 4));
    }
}

/* Group scales of one half for the packed and one-row bodies: a lane's
 * scale of group 4 (lane / 2) + m (VNNI: int32) or 4 (lane / 4) + m (int16),
 * ctl krows_ctl(m, 4, KROWS_SCALE_REP). */
static inline __m256i krows_q6_group_scales(__m128i sc8, __m128i ctl)
{
#if KROWS_VNNI
    return _mm256_cvtepi8_epi32(_mm_shuffle_epi8(sc8, ctl));
#else
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ctl));
#endif
}

/* A packed Q6_K row's (quants at q) registers lo c and hi c for c = 2 m,
 * 2 m + 1 (both from top-bit register m), values 0..63. */
static inline void krows_q6_packed_half(const uint8_t *q, int m, __m256i lo[2], __m256i hi[2])
{
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)(q + 128 + 32 * m));
    for (int j = 0; j < 2; j++) {
        const __m256i l = _mm256_loadu_si256((const __m256i *)(q + 32 * (2 * m + j)));
        /* The top bits moved to bits 4-5 and masked, then merged with the
         * nibble: with AVX-512 VL one vpternlogd (imm 0xec: a & c | b), 6.5
         * operations a register instead of 10.5; AVX2 an and and an or, 8.5 */
        const __m256i m30 = _mm256_set1_epi8(0x30);
        const __m256i xl = _mm256_and_si256(j ? hm : _mm256_slli_epi16(hm, 4), m30);
        const __m256i xh = _mm256_and_si256(j ? _mm256_srli_epi16(hm, 2) : _mm256_slli_epi16(hm, 2), m30);
#if KROWS_VNNI
        lo[j] = _mm256_ternarylogic_epi32(l, xl, low4, 0xec);
        hi[j] = _mm256_ternarylogic_epi32(_mm256_srli_epi16(l, 4), xh, low4, 0xec);
#else
        lo[j] = _mm256_or_si256(_mm256_and_si256(l, low4), xl);
        hi[j] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l, 4), low4), xh);
#endif
    }
}

/* The -32 of every value: -32 * sum_g sc[g] * bsums[g] (sc16 the
 * super-block's 16 scales as int16), the start of a (row, token)'s lanes. */
static inline __m256i krows_q6_offset(__m256i sc16, const exo_block_q8_K *a)
{
    const __m256i bsums = _mm256_loadu_si256((const __m256i *)a->bsums);
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5));
}

/* sumi plus one half's products: lo c, hi c (c = 2 m, 2 m + 1) against
 * the activations' lane-order registers at x (128 bytes), scaled by their
 * groups' scales gl (lo) and gh (hi). */
static inline __m256i krows_q6_half_dot(__m256i sumi, const __m256i lo[2], const __m256i hi[2], __m256i gl, __m256i gh,
                                        const uint8_t *x)
{
    const __m256i x0 = _mm256_loadu_si256((const __m256i *)x);
    const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));
    const __m256i x2 = _mm256_loadu_si256((const __m256i *)(x + 64));
    const __m256i x3 = _mm256_loadu_si256((const __m256i *)(x + 96));
#if KROWS_VNNI
    const __m256i zero = _mm256_setzero_si256();
    const __m256i plo = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, lo[0], x0), lo[1], x2);
    const __m256i phi = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, hi[0], x1), hi[1], x3);
    return _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_mullo_epi32(plo, gl), _mm256_mullo_epi32(phi, gh)));
#else
    const __m256i plo = _mm256_add_epi16(_mm256_maddubs_epi16(lo[0], x0), _mm256_maddubs_epi16(lo[1], x2));
    const __m256i phi = _mm256_add_epi16(_mm256_maddubs_epi16(hi[0], x1), _mm256_maddubs_epi16(hi[1], x3));
    return _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(plo, gl), _mm256_madd_epi16(phi, gh)));
#endif
}

/* R rows of Q6_K against T activation rows, as q4_K_rows. Packed, a row's
 * super-block is its values in the lane order: low 4 bits as nibbles (byte
 * 32 c + p: lo c's in the low nibble, hi c's in the high one), then the top
 * 2 bits (byte 32 (c / 2) + p, bits 4 (c % 2) + 0..1 for lo c, + 2..3 for
 * hi c). The values go through maddubs unsigned and the -32 comes out once a
 * super-block as 32 * sum_g scale[g] * bsums[g]; a 32-bit lane of lo c holds
 * group 4 (lane / 2) + c / 2 (hi c: + 2), so the products of c = 0, 1 and of
 * c = 2, 3 add up in 16 bits before their group's scale: four madds. */
EXO_ALWAYS_INLINE void q6_K_rows(int n, const uint8_t *w0, size_t stride, const uint8_t *act, size_t act_stride,
                                 const uint8_t *xt, float *out, size_t ldo, const int R, const int T, const bool P)
{
    const int nb = n / EXO_QK_K;
    const size_t bs = sizeof(exo_block_q6_K);
    const __m128i ctl[4] = { krows_ctl(0, 4, KROWS_SCALE_REP), krows_ctl(1, 4, KROWS_SCALE_REP),
                             krows_ctl(2, 4, KROWS_SCALE_REP), krows_ctl(3, 4, KROWS_SCALE_REP) };
    __m128 acc[4]; /* per token, lane r: row r */
    FOR_ROWS(t, T) acc[t] = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        __m256i S[4][4]; /* [token][row]: the lanes of S */
        float dws[4];
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) krows_prefetch(c, 4 * (int)bs);
        const exo_block_q8_K *a[4];
        uint8_t xl_local[P ? 1 : EXO_QK_K];
        const uint8_t *xl[4];
        FOR_ROWS(t, T) {
            a[t] = (const exo_block_q8_K *)(act + (size_t)t * act_stride) + i;
            if (P) {
                xl[t] = xt + ((size_t)t * nb + i) * EXO_QK_K;
            } else {
                krows_act_lanes(a[t]->qs, xl_local);
                xl[t] = xl_local;
            }
        }
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *h = P ? c + 4 * KROWS_Q6K_QS + KROWS_Q6K_HEAD * r : w + offsetof(exo_block_q6_K, scales);
            exo_half hd;
            memcpy(&hd, h + 16, sizeof hd);
            dws[r] = _cvtsh_ss(hd);
            const __m128i sc8 = _mm_loadu_si128((const __m128i *)h);
            const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
            /* AVX2 (16 ymm) unpacks one half m (lo c, hi c for c = 2 m, 2 m + 1:
             * packed, one top-bit register) and its two scale registers just
             * before its products: with all eight quant and four scale registers
             * live at once it spilled them to the stack. The AVX-512 build (32
             * registers) unpacks all up front, which measured 1-3% faster there. */
            const bool early = !P || KROWS_VNNI;
            __m256i qlo[4], qhi[4], gs[4];
            if (early)
                for (int g = 0; g < 4; g++) gs[g] = krows_q6_group_scales(sc8, ctl[g]);
            if (!P) {
                __m256i nat[8];
                krows_q6_natural(w, w + offsetof(exo_block_q6_K, qh), nat);
                krows_t4x4(nat[0], nat[2], nat[4], nat[6], qlo);
                krows_t4x4(nat[1], nat[3], nat[5], nat[7], qhi);
            } else if (early) {
                for (int m = 0; m < 2; m++) krows_q6_packed_half(c + KROWS_Q6K_QS * r, m, qlo + 2 * m, qhi + 2 * m);
            }
            __m256i sumi[4];
            if (early) { /* AVX-512: token outer, as before (1-2% faster for four tokens) */
                FOR_ROWS(t, T) {
                    sumi[t] = krows_q6_offset(sc16, a[t]);
                    for (int m = 0; m < 2; m++)
                        sumi[t] = krows_q6_half_dot(sumi[t], qlo + 2 * m, qhi + 2 * m, gs[m], gs[2 + m], xl[t] + 128 * m);
                }
            } else {
                FOR_ROWS(t, T) sumi[t] = krows_q6_offset(sc16, a[t]);
                for (int m = 0; m < 2; m++) {
                    krows_q6_packed_half(c + KROWS_Q6K_QS * r, m, qlo + 2 * m, qhi + 2 * m);
                    gs[m] = krows_q6_group_scales(sc8, ctl[m]);
                    gs[2 + m] = krows_q6_group_scales(sc8, ctl[2 + m]);
                    FOR_ROWS(t, T)
                        sumi[t] = krows_q6_half_dot(sumi[t], qlo + 2 * m, qhi + 2 * m, gs[m], gs[2 + m], xl[t] + 128 * m);
                }
            }
            FOR_ROWS(t, T) S[t][r] = sumi[t];
        }
        const __m128 dw = R == 4 ? _mm_setr_ps(dws[0], dws[1], dws[2], dws[3]) : _mm_set1_ps(dws[0]);
        FOR_ROWS(t, T) acc[t] = krows_step(acc[t], dw, dw, a[t]->d, krows_rows_sum8(S[t], R), _mm_setzero_si128(), false);
    }
    krows_store(acc, out, ldo, R, T);
}

/* The exported kernels of one instruction set (SUFFIX avx2 or avx512):
 * one-row dots; packed dots over n_groups consecutive groups; the same for
 * four activation rows (a batch: out[t * ldo + 4 g + r]). The packed ones
 * put the activations in the lane order once per call, on the stack (a
 * super-block's 256 bytes a token: 56 KiB for four tokens of a 14336-wide
 * row). */
#define KROWS_KERNELS(fmt, SUFFIX)                                                                                  \
    float exo__vec_dot_##fmt##_q8_K_##SUFFIX(int n, const void *w_row, const void *act_row)                          \
    {                                                                                                               \
        float out;                                                                                                  \
        fmt##_rows(n, w_row, 0, act_row, 0, NULL, &out, 0, 1, 1, false);                                            \
        return out;                                                                                                 \
    }                                                                                                               \
    void exo__vec_dot_packed_##fmt##_q8_K_##SUFFIX(int n, const void *groups, int64_t n_groups, const void *act_row, \
                                                    float *out)                                                     \
    {                                                                                                               \
        const int nb = n / EXO_QK_K;                                                                                \
        const size_t group_bytes = (size_t)nb * 4 * sizeof(exo_block_##fmt);                                        \
        uint8_t xt[(size_t)nb * EXO_QK_K];                                                                          \
        krows_acts_lanes(act_row, 0, nb, 1, xt);                                                                    \
        const uint8_t *g = groups;                                                                                  \
        for (int64_t k = 0; k < n_groups; k++, g += group_bytes)                                                    \
            fmt##_rows(n, g, 0, act_row, 0, xt, out + 4 * k, 0, 4, 1, true);                                        \
    }                                                                                                               \
    void exo__vec_dot_packed_t4_##fmt##_q8_K_##SUFFIX(int n, const void *groups, int64_t n_groups,                  \
                                                       const void *act_rows, size_t act_stride, float *out,         \
                                                       size_t ldo)                                                  \
    {                                                                                                               \
        const int nb = n / EXO_QK_K;                                                                                \
        const size_t group_bytes = (size_t)nb * 4 * sizeof(exo_block_##fmt);                                        \
        uint8_t xt[4 * (size_t)nb * EXO_QK_K];                                                                      \
        krows_acts_lanes(act_rows, act_stride, nb, 4, xt);                                                          \
        const uint8_t *g = groups;                                                                                  \
        for (int64_t k = 0; k < n_groups; k++, g += group_bytes)                                                    \
            fmt##_rows(n, g, 0, act_rows, act_stride, xt, out + 4 * k, ldo, 4, 4, true);                            \
    }

#endif
