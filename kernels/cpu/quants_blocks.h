/* quants_blocks.h: the per-block float order of Q4_0, Q5_0, IQ4_NL and Q8_0
 * (quants.c, "the per-block order") in AVX2 registers, shared by the AVX2
 * and AVX-512 decode kernels (internal; include only from files built with
 * at least -mavx2 -mfma -mf16c).
 *
 * The order keeps eight float chains, chain j the blocks b with b % 8 == j:
 * that is one __m256 accumulator whose lane j is chain j, fed eight blocks at
 * a time. The kernels compute each block's exact integer sum as int32 lanes
 * (a pair register: lanes 0-3 one block's partial sums, 4-7 the next one's;
 * or a single register: all eight lanes one block's), turn eight blocks'
 * lanes into one vector of block sums here, and spend one convert, one
 * multiply (dw * da) and one FMA on the eight blocks. */
#ifndef EXO_QUANTS_BLOCKS_H
#define EXO_QUANTS_BLOCKS_H

#include <immintrin.h>

#include "quants.h"

/* Blocks 0..7's sums in lanes 0..7 from four pair registers (pair k: block
 * 2k in lanes 0-3, 2k + 1 in lanes 4-7). Integer adds: any order is exact. */
static inline __m256i exo_pair_block_sums(__m256i p0, __m256i p1, __m256i p2, __m256i p3)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3)); /* b0 b2 b4 b6 | b1 b3 b5 b7 */
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Blocks 0..7's sums in lanes 0..7 from eight single registers. */
static inline __m256i exo_single_block_sums(const __m256i v[8])
{
    /* a transposing add tree: unpacks and adds (cheaper than hadd's shuffles on Zen 4) */
    __m256i t[4], u[2];
    for (int k = 0; k < 4; k++) /* [v0_0+v0_2, v1_0+v1_2, v0_1+v0_3, v1_1+v1_3 | the same for lanes 4-7] */
        t[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]), _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 2; k++) /* [v0, v1, v2, v3 (half sums) | the same] */
        u[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]), _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x20), _mm256_permute2x128_si256(u[0], u[1], 0x31));
}

/* The activation scales of eight consecutive blocks. */
static inline __m256 exo_act_d8(const exo_block_q8_32 *a)
{
    return _mm256_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d, a[4].d, a[5].d, a[6].d, a[7].d);
}

/* One chain step for eight blocks: acc + (dw * da) * isum, lane by lane. */
static inline __m256 exo_chains_step(__m256 acc, __m256 dw, __m256 da, __m256i isum)
{
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum), acc);
}

/* The end of the order: ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)). */
static inline float exo_chains_sum(__m256 c)
{
    __m256 h = _mm256_hadd_ps(c, c);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* A row's last M blocks (M < 8, a constant at every call site) go as an
 * eight-block step whose missing blocks have zero activations and scales:
 * fma(0, 0, c) == c for c != -0, and a chain that starts at +0 never
 * becomes -0. These give the step's da and dw (the fp16 at dp[k]) with
 * zeros past M. M must be a constant: vectors built through memory stalled
 * store forwarding (576-wide rows ran at half speed). */
static inline __attribute__((always_inline)) __m256 exo_tail_da(const exo_block_q8_32 *t, const int M)
{
#define EXO_TAIL_D(k) ((k) < M ? t[k].d : 0.0f)
    return _mm256_setr_ps(EXO_TAIL_D(0), EXO_TAIL_D(1), EXO_TAIL_D(2), EXO_TAIL_D(3), EXO_TAIL_D(4), EXO_TAIL_D(5),
                          EXO_TAIL_D(6), EXO_TAIL_D(7));
#undef EXO_TAIL_D
}

static inline __attribute__((always_inline)) __m256 exo_tail_dw(const uint8_t *const dp[8], const int M)
{
#define EXO_TAIL_H(k) ((k) < M ? (short)(dp[k][0] | dp[k][1] << 8) : (short)0)
    return _mm256_cvtph_ps(_mm_setr_epi16(EXO_TAIL_H(0), EXO_TAIL_H(1), EXO_TAIL_H(2), EXO_TAIL_H(3), EXO_TAIL_H(4),
                                          EXO_TAIL_H(5), EXO_TAIL_H(6), EXO_TAIL_H(7)));
#undef EXO_TAIL_H
}

/* Calls body(..., M) with M = m (1..7) a constant: the tails above. */
#define EXO_TAIL_SWITCH(m, body, ...)         \
    switch (m) {                              \
    case 1: body(__VA_ARGS__, 1); break;      \
    case 2: body(__VA_ARGS__, 2); break;      \
    case 3: body(__VA_ARGS__, 3); break;      \
    case 4: body(__VA_ARGS__, 4); break;      \
    case 5: body(__VA_ARGS__, 5); break;      \
    case 6: body(__VA_ARGS__, 6); break;      \
    case 7: body(__VA_ARGS__, 7); break;      \
    default: break;                           \
    }

#endif
