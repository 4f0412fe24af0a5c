/* quants_avx2.c: AVX2/FMA/F16C versions of the hot quantized kernels.
 *
 * Built with -mavx2 -mfma -mf16c; quants.c calls these only after checking
 * the CPU. Each has a scalar _ref twin in quants.c that defines its meaning.
 *
 * The 32-element dots (Q4_0, Q4_1, Q8_0 x Q8_32) are the decode path's hot
 * loop. The integer work is maddubs (u8 x s8 -> pairs of int16), madd against
 * ones (-> 8 int32), one convert and one FMA with the product of the block
 * scales, into two independent accumulators; the only horizontal sums happen
 * after the loop. The 4-bit formats take blocks in pairs (one register holds
 * both blocks' low nibbles), which halves that work per block and lets one
 * cvtph2ps convert both blocks' fp16 scales. Q4_1's minimum and Q4_0's -8
 * offset are folded through the activation's s = d * sum(q), so the 4-bit
 * quants stay unsigned and need no subtraction.
 *
 * The 4-bit kernels have one body for a single row and for a packed group of
 * four rows (quants.h), which share the activation loads: the packed kernel
 * gives bit for bit the one-row results.
 *
 * Range assumptions: activation quants are in [-127, 127] (quants.c never
 * produces -128), so |u8 x s8| pair sums stay inside int16. */
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "quants_avx2.c must be compiled with -mavx2 -mfma -mf16c"
#endif

#include "quants_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "quants.h"
#include "quants_blocks.h"
#include "quants_impl.h"
#include "quants_k_rows.h"

static inline float half_to_float(exo_half h)
{
    return _cvtsh_ss(h);
}

static inline float hsum_ps(__m256 v)
{
    return krows_hsum_ps(v); /* quants_k_rows.h: one order of adds for every kernel */
}

static inline int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* 16 bytes of packed nibbles -> 32 bytes 0..15 in element order (the low
 * nibbles are elements 0-15, the high nibbles 16-31). */
static inline __m256i q4_unpack(const uint8_t *qs)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* 16 bytes from lo into the low 128 bits, 16 from hi into the high ones. */
static inline __m256i load_2x128(const void *lo, const void *hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
                                   _mm_loadu_si128((const __m128i *)hi), 1);
}

/* Dot of 32 unsigned bytes with 32 signed bytes as 8 float partial sums. */
static inline __m256 dot_u8_s8(__m256i u, __m256i s)
{
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* Dot of 32 signed bytes with 32 signed bytes: maddubs wants its first
 * operand unsigned, so move w's sign onto x. |w| may be 128 (a -128 from a
 * file), which maddubs reads correctly as unsigned 128. */
static inline __m256 dot_s8_s8(__m256i w, __m256i x)
{
    return dot_u8_s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

/* ---- 32-element formats x Q8_32 ------------------------------------------ */

static inline uint32_t load_u32(const void *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u;
}

/* Activation scales of two consecutive blocks as [d0, s0, d1, s1]. */
static inline __m128 act_pair_ds(const exo_block_q8_32 *a)
{
    return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)&a[0].d)), (const __m64 *)&a[1].d);
}

/* [p0, p1, p2, p3] -> p0 in the low 128 bits, p2 in the high ones: the scale
 * vector for q4_pair_dot's layout. */
static inline __m256 pair_spread(__m128 p)
{
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
}

/* The 4-bit formats and their kin with the same nibble layout: Q5_0/Q5_1
 * add a fifth bit from qh, IQ4_NL looks its nibbles up in a table of signed
 * values. One body serves them all (q4_rows); the kind is a constant at
 * every call site, so each instance keeps only its own work. */
enum q4_kind { KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_IQ4_NL };

/* 0x10 in each byte whose bit is set, for 32 bits picked out of v by pick
 * (each byte of pick names the byte of v, within its 128-bit lane, holding
 * the bit; the byte's index mod 8 says which bit): Q5's fifth bits, spread
 * to OR onto the nibbles. */
static inline __m256i q5_highs(__m256i v, __m256i pick)
{
    const __m256i bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe); /* all bits but bit (byte index mod 8) */
    __m256i m = _mm256_cmpeq_epi8(_mm256_or_si256(_mm256_shuffle_epi8(v, pick), bit), _mm256_set1_epi8(-1));
    return _mm256_and_si256(m, _mm256_set1_epi8(0x10));
}

/* The fifth bits of two Q5 blocks (qh words at p0 and p1), laid out as
 * q4_pair_dot's nibble registers: lo holds elements 0-15 of block 0 in the
 * low 128 bits and of block 1 in the high ones, hi elements 16-31. */
static inline void q5_pair_highs(const uint8_t *p0, const uint8_t *p1, __m256i *lo, __m256i *hi)
{
    const __m256i pick01 = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m256i pick23 = _mm256_add_epi8(pick01, _mm256_set1_epi8(2));
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_cvtsi32_si128((int)load_u32(p0))),
                                        _mm_cvtsi32_si128((int)load_u32(p1)), 1);
    *lo = q5_highs(v, pick01);
    *hi = q5_highs(v, pick23);
}

/* The fifth bits of one Q5 block in element order (q4_unpack's layout). */
static inline __m256i q5_block_highs(const uint8_t *qh)
{
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    return q5_highs(_mm256_set1_epi32((int)load_u32(qh)), pick);
}

/* IQ4_NL's table in both 128-bit lanes, for pshufb lookups. */
static inline __m256i iq4nl_table(void)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)exo_iq4nl_values));
}

/* Dot of two consecutive blocks (q: their 16 quant bytes each, side by
 * side; hlo, hhi: Q5's fifth bits from q5_pair_highs, or zero) with their
 * activation pair (xlo: both blocks' first 16 quants, xhi: their last 16), as
 * 8 int32 partial sums, less off16 (q4_pair_off16: Q4_0's and Q5_0's offsets,
 * taken off in 16 bits), exact: block 0's in the low 128 bits, block 1's in
 * the high.
 * Putting the two blocks' low nibbles in one register and their high nibbles
 * in another halves the maddubs/madd/convert work per block; the two maddubs
 * results add without overflow (|.| <= 2*2*31*127). IQ4_NL's looked-up values
 * are signed, up to 127: the sign moves onto x and its two products go
 * through madd apart, as their sum could pass int16. */
EXO_ALWAYS_INLINE __m256i q4_pair_isum(__m256i q, __m256i hlo, __m256i hhi, __m256i xlo, __m256i xhi, __m256i off16,
                                       const int K)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256i qlo = _mm256_and_si256(q, low4);
    __m256i qhi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
    if (K == KIND_IQ4_NL) {
        const __m256i table = iq4nl_table();
        qlo = _mm256_shuffle_epi8(table, qlo);
        qhi = _mm256_shuffle_epi8(table, qhi);
        __m256i plo = _mm256_maddubs_epi16(_mm256_sign_epi8(qlo, qlo), _mm256_sign_epi8(xlo, qlo));
        __m256i phi = _mm256_maddubs_epi16(_mm256_sign_epi8(qhi, qhi), _mm256_sign_epi8(xhi, qhi));
        return _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
    }
    if (K == KIND_Q5_0 || K == KIND_Q5_1) {
        qlo = _mm256_or_si256(qlo, hlo);
        qhi = _mm256_or_si256(qhi, hhi);
    }
    __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(qlo, xlo), _mm256_maddubs_epi16(qhi, xhi));
    return _mm256_madd_epi16(_mm256_sub_epi16(s16, off16), ones);
}

/* The same as float lanes, no offset (Q4_1, Q5_1: their minimum goes in through s). */
EXO_ALWAYS_INLINE __m256 q4_pair_dot(__m256i q, __m256i hlo, __m256i hhi, __m256i xlo, __m256i xhi, const int K)
{
    return _mm256_cvtepi32_ps(q4_pair_isum(q, hlo, hhi, xlo, xhi, _mm256_setzero_si256(), K));
}

static inline int load_u16(const void *p)
{
    uint16_t u;
    memcpy(&u, p, sizeof u);
    return u;
}

/* The first 4 bytes of two blocks stride bytes apart, as two dwords. */
static inline __m128i dwords_2(const void *p, size_t stride)
{
    return _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(p)),
                              _mm_cvtsi32_si128((int)load_u32((const uint8_t *)p + stride)));
}

/* Sum of lanes 1 and 3: the minimum (or offset) terms of the pair scales. */
static inline float odd_lanes_sum(__m128 v)
{
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1));
}

/* sum(qw * qa) of one block (quants at qs, Q5's qh at qh) as 8 float partial
 * sums (the odd tail). */
EXO_ALWAYS_INLINE __m256 q4_one_dot(const uint8_t *qs, const uint8_t *qh, const exo_block_q8_32 *a, const int K)
{
    __m256i q = q4_unpack(qs), x = _mm256_loadu_si256((const __m256i *)a->qs);
    if (K == KIND_IQ4_NL) return dot_s8_s8(_mm256_shuffle_epi8(iq4nl_table(), q), x);
    if (K == KIND_Q5_0 || K == KIND_Q5_1) q = _mm256_or_si256(q, q5_block_highs(qh));
    return dot_u8_s8(q, x);
}

/* R rows (1 or 4) of a 4-bit format at w0, w0 + stride, ...; or, with P, the
 * packed group of four at w0 (quants.h: the chunk that starts at block i
 * begins at byte 4 * i * block bytes and holds 2-block pairs of quants, 32
 * bytes a row, then each row's block headers). Formats with a minimum (MIN:
 * Q4_1, Q5_1) and without differ only in their pair scales: [dw0*da0,
 * mw0*s0, dw1*da1, mw1*s1] from one cvtph of both blocks' (d, m), or
 * [dw0*da0, dw0*s0, dw1*da1, dw1*s1] (the -8 or -16 offset of Q4_0 and Q5_0,
 * taken out at the end; IQ4_NL, which has none, leaves the odd lanes
 * unused). The same arithmetic either layout, row by row: a packed group
 * gives bit for bit the one-row results. (Only Q4_0 and Q4_1 are packed.) */
EXO_ALWAYS_INLINE __m128 q4_pair_scales(const uint8_t *hdr, size_t stride, __m128 ads, const bool MIN)
{
    if (MIN) return _mm_mul_ps(_mm_cvtph_ps(dwords_2(hdr, stride)), ads);
    __m128 d = _mm_cvtph_ps(_mm_unpacklo_epi16(_mm_cvtsi32_si128(load_u16(hdr)),
                                               _mm_cvtsi32_si128(load_u16(hdr + stride)))); /* [dw0, dw1, 0, 0] */
    return _mm_mul_ps(_mm_unpacklo_ps(d, d), ads);
}

EXO_ALWAYS_INLINE void q4_rows(int n, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, float *out,
                               const int R, const bool P, const int K)
{
    const bool MIN = K == KIND_Q4_1 || K == KIND_Q5_1, HI = K == KIND_Q5_0 || K == KIND_Q5_1;
    const size_t bs = K == KIND_Q4_1 ? sizeof(exo_block_q4_1) : K == KIND_Q5_0 ? sizeof(exo_block_q5_0)
                    : K == KIND_Q5_1 ? sizeof(exo_block_q5_1) : sizeof(exo_block_q4_0); /* Q4_0, IQ4_NL */
    const size_t hb = K == KIND_Q4_1 ? offsetof(exo_block_q4_1, qs) : K == KIND_Q5_0 ? offsetof(exo_block_q5_0, qs)
                    : K == KIND_Q5_1 ? offsetof(exo_block_q5_1, qs) : offsetof(exo_block_q4_0, qs);
    const size_t qho = K == KIND_Q5_1 ? offsetof(exo_block_q5_1, qh) : offsetof(exo_block_q5_0, qh);
    const float offset = K == KIND_Q5_0 ? -16.0f : -8.0f; /* of the formats without a minimum */
    const int nb = n / EXO_QK;
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc0[4], acc1[4];
    __m128 acco0[4], acco1[4]; /* lanes 1, 3: sum of m * s (or dw * s) */
    float off[4];
    FOR_ROWS(r, R) {
        acc0[r] = acc1[r] = _mm256_setzero_ps();
        acco0[r] = acco1[r] = _mm_setzero_ps();
    }
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        const __m256i xlo0 = load_2x128(a[i].qs, a[i + 1].qs), xhi0 = load_2x128(a[i].qs + 16, a[i + 1].qs + 16);
        const __m256i xlo1 = load_2x128(a[i + 2].qs, a[i + 3].qs), xhi1 = load_2x128(a[i + 2].qs + 16, a[i + 3].qs + 16);
        const __m128 ads0 = act_pair_ds(a + i), ads1 = act_pair_ds(a + i + 2);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            /* packed: row r's headers of the four blocks side by side */
            const uint8_t *h = P ? c + 256 + 4 * hb * r : w;
            const size_t hs = P ? hb : bs;
            __m128 p0 = q4_pair_scales(h, hs, ads0, MIN), p1 = q4_pair_scales(h + 2 * hs, hs, ads1, MIN);
            acco0[r] = _mm_add_ps(acco0[r], p0);
            acco1[r] = _mm_add_ps(acco1[r], p1);
            __m256i q0 = P ? _mm256_loadu_si256((const __m256i *)(c + 32 * r)) : load_2x128(w + hb, w + bs + hb);
            __m256i q1 = P ? _mm256_loadu_si256((const __m256i *)(c + 128 + 32 * r))
                           : load_2x128(w + 2 * bs + hb, w + 3 * bs + hb);
            __m256i hlo0 = zero, hhi0 = zero, hlo1 = zero, hhi1 = zero;
            if (HI) {
                q5_pair_highs(w + qho, w + bs + qho, &hlo0, &hhi0);
                q5_pair_highs(w + 2 * bs + qho, w + 3 * bs + qho, &hlo1, &hhi1);
            }
            acc0[r] = _mm256_fmadd_ps(pair_spread(p0), q4_pair_dot(q0, hlo0, hhi0, xlo0, xhi0, K), acc0[r]);
            acc1[r] = _mm256_fmadd_ps(pair_spread(p1), q4_pair_dot(q1, hlo1, hhi1, xlo1, xhi1, K), acc1[r]);
        }
    }
    if (i + 2 <= nb) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        const __m256i xlo = load_2x128(a[i].qs, a[i + 1].qs), xhi = load_2x128(a[i].qs + 16, a[i + 1].qs + 16);
        const __m128 ads = act_pair_ds(a + i);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *h = P ? c + 128 + 2 * hb * r : w;
            __m128 p0 = q4_pair_scales(h, P ? hb : bs, ads, MIN);
            acco0[r] = _mm_add_ps(acco0[r], p0);
            __m256i q = P ? _mm256_loadu_si256((const __m256i *)(c + 32 * r)) : load_2x128(w + hb, w + bs + hb);
            __m256i hlo = zero, hhi = zero;
            if (HI) q5_pair_highs(w + qho, w + bs + qho, &hlo, &hhi);
            acc0[r] = _mm256_fmadd_ps(pair_spread(p0), q4_pair_dot(q, hlo, hhi, xlo, xhi, K), acc0[r]);
        }
        i += 2;
    }
    FOR_ROWS(r, R) off[r] = odd_lanes_sum(_mm_add_ps(acco0[r], acco1[r]));
    if (i < nb) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            const uint8_t *h = P ? c + 64 + hb * r : w, *qs = P ? c + 16 * r : w + hb;
            exo_half hd[2] = {0, 0};
            memcpy(hd, h, MIN ? 4 : 2);
            float d = half_to_float(hd[0]);
            acc1[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[i].d), q4_one_dot(qs, w + qho, a + i, K), acc1[r]);
            /* fmaf spelled out: whether the compiler contracts a * b + c
             * must not differ between the one-row and four-row bodies */
            off[r] = fmaf(MIN ? half_to_float(hd[1]) : d, a[i].s, off[r]);
        }
    }
    FOR_ROWS(r, R) {
        float sum = hsum_ps(_mm256_add_ps(acc0[r], acc1[r]));
        out[r] = MIN ? sum + off[r] : K == KIND_IQ4_NL ? sum : fmaf(offset, off[r], sum);
    }
}

/* ---- Q4_0, Q5_0, IQ4_NL: the per-block order (quants_blocks.h) --------------- */

/* These three add each block's exact integer sum into eight float chains
 * (quants.c: "the per-block order"): a pair of blocks gives one pair
 * register of int32 lanes (block 0 in lanes 0-3, block 1 in 4-7), eight
 * blocks one vector of block sums. Q4_0's +8 and Q5_0's +16 come off in
 * 16 bits: maddubs(offset, x) is subtracted from the pair's products before
 * madd (|.| <= 2 * 2 * 31 * 127 + 2 * 2 * 16 * 127, inside int16); IQ4_NL's
 * signed table values go through q4_pair_isum's exact path. */

/* offset * (the pair's activation bytes summed in twos), for q4_pair_isum. */
EXO_ALWAYS_INLINE __m256i q4_pair_off16(__m256i xlo, __m256i xhi, const int K)
{
    if (K == KIND_IQ4_NL) return _mm256_setzero_si256();
    const __m256i off = _mm256_set1_epi8(K == KIND_Q5_0 ? 16 : 8);
    return _mm256_add_epi16(_mm256_maddubs_epi16(off, xlo), _mm256_maddubs_epi16(off, xhi));
}

/* Pair k (0..3) of a four-block step of row w (blocks bs bytes apart) or of
 * packed row r of the chunk at c. */
EXO_ALWAYS_INLINE __m256i q4_0_pair_at(const uint8_t *w, size_t bs, size_t qo, size_t qho, const uint8_t *cr,
                                       const __m256i *x, const __m256i *off, int k, const bool P, const int K)
{
    __m256i hlo = _mm256_setzero_si256(), hhi = hlo;
    if (K == KIND_Q5_0) q5_pair_highs(w + 2 * k * bs + qho, w + (2 * k + 1) * bs + qho, &hlo, &hhi);
    __m256i q = P ? _mm256_loadu_si256((const __m256i *)(cr + 128 * (k % 2))) : load_2x128(w + 2 * k * bs + qo, w + (2 * k + 1) * bs + qo);
    return q4_pair_isum(q, hlo, hhi, x[2 * k], x[2 * k + 1], off[k], K);
}

/* The last M (1..7, a constant) blocks of q4_0_rows as an eight-block step
 * with zeros past M (quants_blocks.h): packed, a four-block chunk if M >= 4,
 * then a pair chunk, then a single block, each pair (or lone block, zero
 * extended) one pair register. */
EXO_ALWAYS_INLINE void q4_0_tail_m(int i, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, __m256 *acc,
                                   const int R, const bool P, const int K, const int M)
{
    const size_t bs = K == KIND_Q5_0 ? sizeof(exo_block_q5_0) : sizeof(exo_block_q4_0);
    const size_t qo = K == KIND_Q5_0 ? offsetof(exo_block_q5_0, qs) : offsetof(exo_block_q4_0, qs);
    const size_t qho = offsetof(exo_block_q5_0, qh);
    const __m256i zero = _mm256_setzero_si256();
    __m256i x[8], off[4];
    for (int p = 0; p < 4; p++) {
        const exo_block_q8_32 *b = a + i + 2 * p;
        const int nbk = M - 2 * p >= 2 ? 2 : M - 2 * p;
        x[2 * p] = nbk == 2 ? load_2x128(b[0].qs, b[1].qs)
                 : nbk == 1 ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)b[0].qs)) : zero;
        x[2 * p + 1] = nbk == 2 ? load_2x128(b[0].qs + 16, b[1].qs + 16)
                     : nbk == 1 ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(b[0].qs + 16))) : zero;
        off[p] = q4_pair_off16(x[2 * p], x[2 * p + 1], K);
    }
    const __m256 da = exo_tail_da(a + i, M);
    FOR_ROWS(r, R) {
        __m256i s[4];
        const uint8_t *dp[8] = { 0 };
        for (int p = 0; p < 4; p++) {
            const int k = 2 * p, nbk = M - k >= 2 ? 2 : M - k;
            if (nbk <= 0) {
                s[p] = zero;
                continue;
            }
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)(i + k) * bs;
            const bool in_quad = M >= 4 && p < 2;
            const uint8_t *c = w0 + (size_t)(in_quad ? i : i + k) * 4 * bs;
            const uint8_t *qp = P ? (in_quad ? c + 128 * p + 32 * r : nbk == 2 ? c + 32 * r : c + 16 * r) : w + qo;
            dp[k] = P ? (in_quad ? c + 256 + 8 * r + 2 * k : nbk == 2 ? c + 128 + 4 * r : c + 64 + 2 * r) : w;
            if (nbk == 2) dp[k + 1] = P ? dp[k] + 2 : w + bs;
            __m256i q = nbk == 2 ? (P ? _mm256_loadu_si256((const __m256i *)qp) : load_2x128(qp, qp + bs))
                                 : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)qp));
            __m256i hlo = zero, hhi = zero;
            if (K == KIND_Q5_0) q5_pair_highs(w + qho, w + (nbk == 2 ? bs : 0) + qho, &hlo, &hhi);
            s[p] = q4_pair_isum(q, hlo, hhi, x[k], x[k + 1], off[p], K);
        }
        acc[r] = exo_chains_step(acc[r], exo_tail_dw(dp, M), da, exo_pair_block_sums(s[0], s[1], s[2], s[3]));
    }
}

/* R rows (1 or 4) of a Q4_0-like format at w0, w0 + stride, ...; or, with
 * P, the packed group of four Q4_0 rows at w0 (quants.h), eight blocks (two
 * four-block chunks) a step, then the last blocks as the packed layout has
 * them (a four-block chunk, a pair, a single). */
EXO_ALWAYS_INLINE void q4_0_rows(int n, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, float *out,
                                 const int R, const bool P, const int K)
{
    const size_t bs = K == KIND_Q5_0 ? sizeof(exo_block_q5_0) : sizeof(exo_block_q4_0); /* Q4_0, IQ4_NL */
    const size_t qo = K == KIND_Q5_0 ? offsetof(exo_block_q5_0, qs) : offsetof(exo_block_q4_0, qs);
    const size_t qho = offsetof(exo_block_q5_0, qh);
    const int nb = n / EXO_QK;
    __m256 acc[4];
    FOR_ROWS(r, R) acc[r] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        __m256i x[8], off[4];
        for (int k = 0; k < 4; k++) {
            x[2 * k] = load_2x128(a[i + 2 * k].qs, a[i + 2 * k + 1].qs);
            x[2 * k + 1] = load_2x128(a[i + 2 * k].qs + 16, a[i + 2 * k + 1].qs + 16);
            off[k] = q4_pair_off16(x[2 * k], x[2 * k + 1], K);
        }
        const __m256 da = exo_act_d8(a + i);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            __m256 d;
            if (P) {
                d = _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c + 256 + 8 * r)),
                                                       _mm_loadl_epi64((const __m128i *)(c + 16 * bs + 256 + 8 * r))));
            } else {
                exo_half h[8];
                for (int k = 0; k < 8; k++) memcpy(&h[k], w + k * bs, sizeof h[k]);
                d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
            }
            __m256i s[4];
            for (int k = 0; k < 4; k++)
                s[k] = q4_0_pair_at(w, bs, qo, qho, c + (size_t)(k / 2) * 16 * bs + 32 * r, x, off, k, P, K);
            acc[r] = exo_chains_step(acc[r], d, da, exo_pair_block_sums(s[0], s[1], s[2], s[3]));
        }
    }
    if (i < nb) EXO_TAIL_SWITCH(nb - i, q4_0_tail_m, i, w0, stride, a, acc, R, P, K)
    FOR_ROWS(r, R) out[r] = exo_chains_sum(acc[r]);
}

/* The one-row dots, one per format over its body. */
#define Q4_ONE_ROW(fmt, body, kind)                                                   \
    float exo__vec_dot_##fmt##_q8_32_avx2(int n, const void *w_row, const void *act_row) \
    {                                                                                 \
        float out;                                                                    \
        body(n, w_row, 0, act_row, &out, 1, false, kind);                             \
        return out;                                                                   \
    }
Q4_ONE_ROW(q4_0, q4_0_rows, KIND_Q4_0)
Q4_ONE_ROW(q4_1, q4_rows, KIND_Q4_1)
Q4_ONE_ROW(q5_0, q4_0_rows, KIND_Q5_0)
Q4_ONE_ROW(q5_1, q4_rows, KIND_Q5_1)
Q4_ONE_ROW(iq4_nl, q4_0_rows, KIND_IQ4_NL)
#undef Q4_ONE_ROW

void exo__vec_dot_packed_q4_1_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const size_t group_bytes = (size_t)(n / EXO_QK) * 4 * sizeof(exo_block_q4_1);
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes) q4_rows(n, g, 0, act_row, out + 4 * k, 4, true, KIND_Q4_1);
}

void exo__vec_dot_packed_q4_0_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const size_t group_bytes = (size_t)(n / EXO_QK) * 4 * sizeof(exo_block_q4_0);
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes) q4_0_rows(n, g, 0, act_row, out + 4 * k, 4, true, KIND_Q4_0);
}

/* Q8_0 in the per-block order: each block's exact sum as int32 lanes
 * (maddubs with w's sign moved onto x, then madd: |.| <= 2 * 128 * 127 in
 * 16 bits), eight blocks' lanes one vector of block sums. */
static inline __m256i q8_0_block_isum(const exo_block_q8_0 *w, const exo_block_q8_32 *a)
{
    const __m256i wq = _mm256_loadu_si256((const __m256i *)w->qs), x = _mm256_loadu_si256((const __m256i *)a->qs);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(x, wq)),
                             _mm256_set1_epi16(1));
}

/* The last M (1..7, a constant) blocks of a Q8_0 row, zeros past M (quants_blocks.h). */
EXO_ALWAYS_INLINE void q8_0_tail_m(const exo_block_q8_0 *w, const exo_block_q8_32 *a, __m256 *acc, const int M)
{
    __m256i v[8];
    const uint8_t *dp[8] = { 0 };
    for (int k = 0; k < 8; k++) {
        v[k] = k < M ? q8_0_block_isum(w + k, a + k) : _mm256_setzero_si256();
        if (k < M) dp[k] = (const uint8_t *)&w[k].d;
    }
    *acc = exo_chains_step(*acc, exo_tail_dw(dp, M), exo_tail_da(a, M), exo_single_block_sums(v));
}

float exo__vec_dot_q8_0_q8_32_avx2(int n, const void *w_row, const void *act_row)
{
    const exo_block_q8_0 *w = w_row;
    const exo_block_q8_32 *a = act_row;
    const int nb = n / EXO_QK;
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i v[8];
        exo_half h[8];
        for (int k = 0; k < 8; k++) {
            v[k] = q8_0_block_isum(w + i + k, a + i + k);
            h[k] = w[i + k].d;
        }
        acc = exo_chains_step(acc, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)), exo_act_d8(a + i),
                              exo_single_block_sums(v));
    }
    if (i < nb) EXO_TAIL_SWITCH(nb - i, q8_0_tail_m, w + i, a + i, &acc)
    return exo_chains_sum(acc);
}

/* ---- K formats x Q8_K ------------------------------------------------------ */

/* Q4_K, Q5_K and Q6_K: quants_k_rows.h (one body for one row and packed groups,
 * shared with the AVX-512 kernels). */
KROWS_KERNELS(q4_K, avx2)
KROWS_KERNELS(q5_K, avx2)
KROWS_KERNELS(q6_K, avx2)

/* From s, eight int16 scales repeated in both 128-bit lanes: scale 2k
 * spread over the low lane and 2k+1 over the high one (k 0..3), the scales
 * of the two 16-element groups a 32-byte register of K-format quants holds. */
static inline __m256i scale_pair(__m256i s, int k)
{
    const __m256i base = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                          2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    return _mm256_shuffle_epi8(s, _mm256_add_epi8(base, _mm256_set1_epi8((char)(4 * k))));
}

/* Q2_K and Q3_K: each 32-byte load of qs holds four registers' worth of
 * 2-bit quants (shift 2j), each register 32 consecutive elements, i.e. two
 * 16-element groups, scaled through madd by scale_pair. Q2_K's minimums cost
 * one madd with bsums a super-block; so does Q3_K's -4 offset (the quants go
 * through maddubs unsigned, 0..7). */
float exo__vec_dot_q2_K_q8_K_avx2(int n, const void *w_row, const void *act_row)
{
    const exo_block_q2_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    const int nb = n / EXO_QK_K;
    const __m128i low4 = _mm_set1_epi8(0x0f);
    const __m256i two = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)w[i].scales);
        const __m128i scl = _mm_and_si128(sc8, low4), mn = _mm_and_si128(_mm_srli_epi16(sc8, 4), low4);
        __m256i summ = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mn), _mm256_loadu_si256((const __m256i *)a[i].bsums));
        accm = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].dmin) * a[i].d), _mm256_cvtepi32_ps(summ), accm);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * h));
            const __m256i s8 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(h ? _mm_srli_si128(scl, 8) : scl));
            for (int j = 0; j < 4; j++) {
                __m256i qj = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two);
                __m256i x = _mm256_loadu_si256((const __m256i *)(a[i].qs + 128 * h + 32 * j));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(qj, x), scale_pair(s8, j)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].d) * a[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc) - hsum_ps(accm);
}

/* Q3_K's sixteen scales, offset taken off, as int8 in element-group order:
 * exo_q3_k_scales_unpack in registers (unpacking through memory cost a
 * store-forwarding stall a super-block). Reads only the 12 scale bytes. */
static inline __m128i q3_k_scales(const uint8_t packed[12])
{
    const __m128i low4 = _mm_set1_epi8(0x0f), two = _mm_set1_epi8(3);
    __m128i lo8 = _mm_loadl_epi64((const __m128i *)packed);
    /* scales 0-7: low nibbles of bytes 0-7; scales 8-15: their high nibbles */
    __m128i lows = _mm_unpacklo_epi64(_mm_and_si128(lo8, low4), _mm_and_si128(_mm_srli_epi16(lo8, 4), low4));
    /* top bits of scale k: bits 2(k/4), 2(k/4)+1 of byte 8 + k%4 */
    __m128i h = _mm_set1_epi32((int)load_u32(packed + 8));
    __m128i highs = _mm_and_si128(_mm_srlv_epi32(h, _mm_setr_epi32(0, 2, 4, 6)), two);
    return _mm_sub_epi8(_mm_or_si128(lows, _mm_slli_epi16(highs, 4)), _mm_set1_epi8(32));
}

float exo__vec_dot_q3_K_q8_K_avx2(int n, const void *w_row, const void *act_row)
{
    const exo_block_q3_K *w = w_row;
    const exo_block_q8_K *a = act_row;
    const int nb = n / EXO_QK_K;
    const __m256i two = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m128i sc = q3_k_scales(w[i].scales);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc);
        /* -4 * sum_g sc[g] * bsums[g] */
        __m256i sumi = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)a[i].bsums));
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sumi, 2));
        const __m256i hb = _mm256_loadu_si256((const __m256i *)w[i].hmask);
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * h));
            const __m256i s8 = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_srli_si128(sc, 8) : sc));
            for (int j = 0; j < 4; j++) {
                /* the 16-bit shift moves each byte's own bit 4h+j to its bit 0 */
                __m256i third = _mm256_and_si256(_mm256_srli_epi16(hb, 4 * h + j), one);
                __m256i qj = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two), _mm256_slli_epi16(third, 2));
                __m256i x = _mm256_loadu_si256((const __m256i *)(a[i].qs + 128 * h + 32 * j));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(qj, x), scale_pair(s8, j)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].d) * a[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

/* IQ4_XS: a 32-byte load of qs holds sub-blocks 2k (low 128 bits) and 2k+1
 * (high); its low nibbles are their first 16 elements and its high nibbles
 * their last 16, so the activations are loaded to match. Looked-up values
 * are signed as IQ4_NL's (the sign moves onto x), and each maddubs result
 * goes through madd with the sub-block scales on its own. */
/* IQ4_XS's eight sub-block scales, offset taken off, as int16: the low
 * nibbles interleaved from scales_l, the top 2 bits of scale j shifted to
 * the top of its lane by a multiply (AVX2 has no per-lane 16-bit shift) and
 * back down. In registers, for the reason q3_k_scales gives. */
static inline __m128i iq4_xs_scales(const exo_block_iq4_xs *b)
{
    const __m128i low4 = _mm_set1_epi8(0x0f);
    __m128i l4 = _mm_cvtsi32_si128((int)load_u32(b->scales_l));
    __m128i lows = _mm_unpacklo_epi8(_mm_and_si128(l4, low4), _mm_and_si128(_mm_srli_epi16(l4, 4), low4));
    __m128i h = _mm_set1_epi16((short)b->scales_h);
    h = _mm_mullo_epi16(h, _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1));
    __m128i highs = _mm_slli_epi16(_mm_srli_epi16(h, 14), 4);
    return _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lows), highs), _mm_set1_epi16(32));
}

float exo__vec_dot_iq4_xs_q8_K_avx2(int n, const void *w_row, const void *act_row)
{
    const exo_block_iq4_xs *w = w_row;
    const exo_block_q8_K *a = act_row;
    const int nb = n / EXO_QK_K;
    const __m256i table = iq4nl_table(), low4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256i s8 = _mm256_broadcastsi128_si256(iq4_xs_scales(&w[i]));
        __m256i sumi = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const int8_t *x = a[i].qs + 64 * k;
            __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * k));
            __m256i vlo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, low4));
            __m256i vhi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(q, 4), low4));
            __m256i xlo = load_2x128(x, x + 32), xhi = load_2x128(x + 16, x + 48);
            __m256i plo = _mm256_maddubs_epi16(_mm256_sign_epi8(vlo, vlo), _mm256_sign_epi8(xlo, vlo));
            __m256i phi = _mm256_maddubs_epi16(_mm256_sign_epi8(vhi, vhi), _mm256_sign_epi8(xhi, vhi));
            __m256i sk = scale_pair(s8, k);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(plo, sk), _mm256_madd_epi16(phi, sk)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].d) * a[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

/* ---- float formats x f32 ------------------------------------------------------ */

float exo__vec_dot_f32_avx2(int n, const void *w_row, const void *act_row)
{
    const float *w = w_row, *x = act_row;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static inline __m256 load_f16x8(const exo_half *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 load_bf16x8(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

float exo__vec_dot_f16_avx2(int n, const void *w_row, const void *act_row)
{
    const exo_half *w = w_row;
    const float *x = act_row;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(load_f16x8(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += half_to_float(w[i]) * x[i];
    return sum;
}

float exo__vec_dot_bf16_avx2(int n, const void *w_row, const void *act_row)
{
    const uint16_t *w = w_row;
    const float *x = act_row;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(load_bf16x8(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load_bf16x8(w + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += exo__bf16_to_float(w[i]) * x[i];
    return sum;
}

/* ---- dequantization (weight tiles for the prompt-processing GEMM) --------------- */

/* 16 bytes 0..15 -> 16 floats q*d + b, stored at dst[0..15]. */
static inline void u8x16_to_float(__m128i q, __m256 d, __m256 b, float *dst)
{
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(q, q)));
    _mm256_storeu_ps(dst, _mm256_fmadd_ps(f0, d, b));
    _mm256_storeu_ps(dst + 8, _mm256_fmadd_ps(f1, d, b));
}

/* (q - 8) * d computed as fma(q, d, -8d): -8d is exact, so the single rounding
 * of the fma gives the same bits as the reference. */
void exo__to_float_q4_0_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_0 *b = src;
    const __m128i low4 = _mm_set1_epi8(0x0f);
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float df = half_to_float(b[i].d);
        __m256 d = _mm256_set1_ps(df), off = _mm256_set1_ps(-8.0f * df);
        __m128i raw = _mm_loadu_si128((const __m128i *)b[i].qs);
        u8x16_to_float(_mm_and_si128(raw, low4), d, off, dst);
        u8x16_to_float(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), d, off, dst + 16);
    }
}

/* Fused q*d + m: within one rounding of the reference's two-step result. */
void exo__to_float_q4_1_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q4_1 *b = src;
    const __m128i low4 = _mm_set1_epi8(0x0f);
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        __m256 d = _mm256_set1_ps(half_to_float(b[i].d)), m = _mm256_set1_ps(half_to_float(b[i].m));
        __m128i raw = _mm_loadu_si128((const __m128i *)b[i].qs);
        u8x16_to_float(_mm_and_si128(raw, low4), d, m, dst);
        u8x16_to_float(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), d, m, dst + 16);
    }
}

/* 32 bytes 0..31 (element order) -> 32 floats q*d + b. */
static inline void u8x32_to_float(__m256i q, __m256 d, __m256 b, float *dst)
{
    u8x16_to_float(_mm256_castsi256_si128(q), d, b, dst);
    u8x16_to_float(_mm256_extracti128_si256(q, 1), d, b, dst + 16);
}

/* (q - 16) * d as fma(q, d, -16d): exact as Q4_0's. */
void exo__to_float_q5_0_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        float df = half_to_float(b[i].d);
        __m256i q = _mm256_or_si256(q4_unpack(b[i].qs), q5_block_highs(b[i].qh));
        u8x32_to_float(q, _mm256_set1_ps(df), _mm256_set1_ps(-16.0f * df), dst);
    }
}

/* Fused q*d + m, as Q4_1's. */
void exo__to_float_q5_1_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        __m256i q = _mm256_or_si256(q4_unpack(b[i].qs), q5_block_highs(b[i].qh));
        u8x32_to_float(q, _mm256_set1_ps(half_to_float(b[i].d)), _mm256_set1_ps(half_to_float(b[i].m)), dst);
    }
}

/* 16 signed bytes -> 16 floats v * d: exact as the reference's product. */
static inline void s8x16_to_float(__m128i v, __m256 d, float *dst)
{
    _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v))), d));
}

/* 32 signed bytes (element order) -> 32 floats v * d. */
static inline void s8x32_to_float(__m256i v, __m256 d, float *dst)
{
    s8x16_to_float(_mm256_castsi256_si128(v), d, dst);
    s8x16_to_float(_mm256_extracti128_si256(v, 1), d, dst + 16);
}

void exo__to_float_iq4_nl_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_iq4_nl *b = src;
    const __m256i table = iq4nl_table();
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK)
        s8x32_to_float(_mm256_shuffle_epi8(table, q4_unpack(b[i].qs)), _mm256_set1_ps(half_to_float(b[i].d)), dst);
}

void exo__to_float_q8_0_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / EXO_QK; i++, dst += EXO_QK) {
        __m256 d = _mm256_set1_ps(half_to_float(b[i].d));
        for (int k = 0; k < 4; k++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * k));
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}

void exo__to_float_iq4_xs_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_iq4_xs *b = src;
    const __m256i table = iq4nl_table();
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = half_to_float(b[i].d);
        for (int j = 0; j < 8; j++, dst += 32) {
            float dl = d * (float)exo_iq4_xs_scale(b[i].scales_l, b[i].scales_h, j);
            s8x32_to_float(_mm256_shuffle_epi8(table, q4_unpack(b[i].qs + 16 * j)), _mm256_set1_ps(dl), dst);
        }
    }
}

/* 16 bytes 0..3 -> 16 floats dl * q - ml, multiply and subtract rounded
 * apart as the reference does. */
static inline void q2x16_to_float(__m128i q, float dl, float ml, float *dst)
{
    const __m256 d = _mm256_set1_ps(dl), m = _mm256_set1_ps(ml);
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(q, q)));
    _mm256_storeu_ps(dst, _mm256_sub_ps(_mm256_mul_ps(d, f0), m));
    _mm256_storeu_ps(dst + 8, _mm256_sub_ps(_mm256_mul_ps(d, f1), m));
}

void exo__to_float_q2_K_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q2_K *b = src;
    const __m128i two = _mm_set1_epi8(3);
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = half_to_float(b[i].d), dmin = half_to_float(b[i].dmin);
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++)
                for (int half = 0; half < 2; half++, dst += 16) {
                    uint8_t sc = b[i].scales[8 * h + 2 * j + half];
                    __m128i q = _mm_loadu_si128((const __m128i *)(b[i].qs + 32 * h + 16 * half));
                    q = _mm_and_si128(_mm_srli_epi16(q, 2 * j), two);
                    q2x16_to_float(q, d * (float)(sc & 0x0f), dmin * (float)(sc >> 4), dst);
                }
    }
}

void exo__to_float_q3_K_avx2(const void *src, float *dst, int64_t n)
{
    const exo_block_q3_K *b = src;
    const __m128i two = _mm_set1_epi8(3), one = _mm_set1_epi8(1), four = _mm_set1_epi8(4);
    for (int64_t i = 0; i < n / EXO_QK_K; i++) {
        float d = half_to_float(b[i].d);
        int8_t sc[16];
        exo_q3_k_scales_unpack(b[i].scales, sc);
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++)
                for (int half = 0; half < 2; half++, dst += 16) {
                    __m128i q = _mm_loadu_si128((const __m128i *)(b[i].qs + 32 * h + 16 * half));
                    __m128i hm = _mm_loadu_si128((const __m128i *)(b[i].hmask + 16 * half));
                    q = _mm_and_si128(_mm_srli_epi16(q, 2 * j), two);
                    q = _mm_or_si128(q, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hm, 4 * h + j), one), 2));
                    s8x16_to_float(_mm_sub_epi8(q, four), _mm256_set1_ps(d * (float)sc[8 * h + 2 * j + half]), dst);
                }
    }
}

void exo__to_float_f16_avx2(const void *src, float *dst, int64_t n)
{
    const exo_half *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(s + i));
    for (; i < n; i++) dst[i] = half_to_float(s[i]);
}

void exo__to_float_bf16_avx2(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(s + i));
    for (; i < n; i++) dst[i] = exo__bf16_to_float(s[i]);
}

/* ---- activation quantization --------------------------------------------------- */

/* 32 floats -> 32 int8 round(x * id), in order; returns their sum. Uses the
 * same multiply and ties-to-even rounding as the reference, so the bytes
 * match it exactly. */
static inline int quantize_32(const float *x, __m256 id, int8_t *out)
{
    __m256i v[4];
    for (int k = 0; k < 4; k++) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v[k] = _mm256_cvtps_epi32(r);
    }
    int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])));
    /* the packs interleave 128-bit lanes; the permute puts the dwords back */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out, p);
    return sum;
}

static inline __m256 abs_ps(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

void exo__quantize_act_q8_32_avx2(const float *x, void *dst, int n)
{
    exo_block_q8_32 *y = dst;
    for (int i = 0; i < n / EXO_QK; i++, x += EXO_QK) {
        __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(_mm256_loadu_ps(x)), abs_ps(_mm256_loadu_ps(x + 8))),
                                 _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + 16)), abs_ps(_mm256_loadu_ps(x + 24))));
        float d = hmax_ps(m) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = quantize_32(x, _mm256_set1_ps(id), y[i].qs);
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

void exo__quantize_act_q8_K_avx2(const float *x, void *dst, int n)
{
    exo_block_q8_K *y = dst;
    for (int i = 0; i < n / EXO_QK_K; i++, x += EXO_QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < EXO_QK_K; k += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + k)));
        float d = hmax_ps(m) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        for (int c = 0; c < EXO_QK_K / 32; c++) quantize_32(x + 32 * c, vid, y[i].qs + 32 * c);
        /* bsums: sum 16 bytes at a time, widening through maddubs with ones */
        const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
        for (int c = 0; c < EXO_QK_K / 32; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * c));
            __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16); /* 8 sums of 4 */
            __m256i s8 = _mm256_hadd_epi32(s4, s4); /* per lane: sums of 8 in dwords 0,1 */
            __m256i s16 = _mm256_hadd_epi32(s8, s8); /* per lane: sum of 16 in dword 0 */
            y[i].bsums[2 * c] = (int16_t)_mm256_extract_epi32(s16, 0);
            y[i].bsums[2 * c + 1] = (int16_t)_mm256_extract_epi32(s16, 4);
        }
        y[i].d = d;
    }
}
