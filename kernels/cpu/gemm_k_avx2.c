/* gemm_k_avx2.c: the tiled int8 GEMM for K-quant prompt batches (Q4_K,
 * Q5_K, Q6_K) on AVX2 (maddubs), for CPUs without AVX-512 VNNI.
 *
 * The four-token packed kernels (quants_k_rows.h) unpack each group of four
 * weight rows (nibbles, fifth or top bits, 6-bit scales) again for every
 * four tokens. Here a strip of up to STRIP_ROWS rows is unpacked once per
 * product into plain unsigned byte codes (Q4_K 0..15, Q5_K 0..31, Q6_K
 * 0..63) in quants_k_rows.h's lane order, with each row's scales already
 * spread as the madds want them, and every token of the batch runs past it.
 *
 * The integer work per (row, token, super-block) is the packed kernels',
 * register for register: the row's eight code registers stay loaded while
 * the tokens go by, each token's activations (put in the lane order once per
 * product) are maddubs's memory operand, the products of a lane's 16 (Q6_K:
 * 8) elements add up in 16 bits, one madd a unit applies its scale. The eight
 * int32 lanes of eight tokens then collapse to their S (quants.c's
 * per-super-block order) with a transposing add tree, the minimums' M run
 * eight tokens a register, and one convert and FMA each finish (row, eight
 * tokens, super-block): bit for bit vec_dot_ref and every other K kernel.
 * What the batch shares is hoisted: the unpacking, the scales, the products
 * dw * ad and dmin * ad (one multiply for eight tokens).
 *
 * Saturation: maddubs adds two u8 x s8 products into int16 with saturation,
 * and the packed kernels add four such results (Q6_K: two) in int16. With
 * activations in [-127, 127] (quants.c never produces -128) the largest sum
 * is 8 * 31 * 127 = 31496 (Q5_K; Q4_K 15240, Q6_K 4 * 63 * 127 = 32004):
 * nothing saturates or wraps, so the sums are exact. */
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "gemm_k_avx2.c must be compiled with -mavx2 -mfma -mf16c"
#endif

#include "gemm_k_avx2.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_impl.h"
#include "quants_k_rows.h"

#define TOK EXO_TILED_TOKENS
/* Two packed groups a strip: each token group's super-block (4.6 KiB) is
 * read once for eight rows instead of four, and eight rows x 16 tokens of
 * accumulators (4 KiB) still sit in L1. */
#define STRIP_ROWS 8

/* A token group's super-block (at most EXO_TILED_ACT_SB_BYTES): the tokens'
 * quants in the lane order, 256 bytes a token (krows_act_lanes); their d;
 * then Q4_K/Q5_K: int32 pairs (bsum of sub-block 2 m, of 2 m + 1), [m][token],
 * for the minimums eight tokens a register; Q6_K: the 16 bsums a token. */
#define ACT_D 4096
#define ACT_BS 4160
_Static_assert(ACT_BS + TOK * 32 <= EXO_TILED_ACT_SB_BYTES, "token group layout");

/* A strip's super-block (at most EXO_TILED_STRIP_SB_BYTES): the codes, 256
 * bytes a row (lo c at 64 c, hi c at 64 c + 32, as the activations); the
 * scales as int16 lanes, 32 bytes a register: Q4_K/Q5_K [row][even, odd],
 * Q6_K [row][group m = 0..3]; Q6_K: -32 * its 16 scales a row, the offset
 * madd's operand; Q4_K/Q5_K: a row's int32 minimum pairs (m 0..3); the
 * rows' d and dmin. */
#define ST_SC 2048
#define ST_OFF 3072
#define ST_MN 3072
#define ST_D 3328
#define ST_DMIN 3360
#define ST_SB 3392
_Static_assert(ST_SB <= EXO_TILED_STRIP_SB_BYTES && ST_SB % 64 == 0, "strip layout");

enum { FMT_Q4_K, FMT_Q5_K, FMT_Q6_K };

/* ---- the activations -------------------------------------------------------- */

/* What every format's token group holds: the quants in the lane order and
 * the tokens' d, zeros for the tokens past n_tok. */
static void pack_tokens(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    for (int i = 0; i < n / EXO_QK_K; i++) {
        uint8_t *at = (uint8_t *)tile + (size_t)i * EXO_TILED_ACT_SB_BYTES;
        memset(at + (size_t)n_tok * EXO_QK_K, 0, (size_t)(TOK - n_tok) * EXO_QK_K);
        memset(at + ACT_D, 0, EXO_TILED_ACT_SB_BYTES - ACT_D);
        for (int t = 0; t < n_tok; t++) {
            const exo_block_q8_K *a = (const exo_block_q8_K *)((const uint8_t *)act_rows + (size_t)t * act_stride) + i;
            krows_act_lanes(a->qs, at + (size_t)t * EXO_QK_K);
            memcpy(at + ACT_D + 4 * t, &a->d, sizeof(float));
        }
    }
}

/* Q4_K and Q5_K lay the activations out alike, so one product may mix them:
 * the sub-block sums in 16 bits, as the packed kernels' hadd makes them. */
static void pack_act_q45(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    pack_tokens(n, act_rows, act_stride, n_tok, tile);
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < n / EXO_QK_K; i++) {
            const int16_t *bs = ((const exo_block_q8_K *)((const uint8_t *)act_rows + (size_t)t * act_stride) + i)->bsums;
            uint32_t *pairs = (uint32_t *)((uint8_t *)tile + (size_t)i * EXO_TILED_ACT_SB_BYTES + ACT_BS) + t;
            for (int m = 0; m < 4; m++)
                pairs[TOK * m] = (uint32_t)(uint16_t)(bs[4 * m] + bs[4 * m + 1]) |
                                 (uint32_t)(uint16_t)(bs[4 * m + 2] + bs[4 * m + 3]) << 16;
        }
}

static void pack_act_q6(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    pack_tokens(n, act_rows, act_stride, n_tok, tile);
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < n / EXO_QK_K; i++)
            memcpy((uint8_t *)tile + (size_t)i * EXO_TILED_ACT_SB_BYTES + ACT_BS + 32 * t,
                   ((const exo_block_q8_K *)((const uint8_t *)act_rows + (size_t)t * act_stride) + i)->bsums,
                   sizeof(int16_t) * 16);
}

/* ---- the strip ---------------------------------------------------------------- */

/* One row's codes of a super-block from its packed quants (quants_k_rows.h:
 * lo c's low four bits are the low nibbles of bytes 32 c .. 32 c + 31, hi
 * c's the high ones; Q5_K's fifth bits at 128 + p, bit 2 c (lo) and 2 c + 1
 * (hi); Q6_K's top two bits at 128 + 32 (c / 2) + p, bits 4 (c % 2) (lo) and
 * 4 (c % 2) + 2 (hi)). A 16-bit shift then a byte mask takes a byte's bits:
 * what the shift brings in from the byte above lies above the mask. */
static void strip_codes(const uint8_t *qs, uint8_t *dst, int fmt)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f), top = _mm256_set1_epi8(fmt == FMT_Q6_K ? 3 : 1);
    for (int c = 0; c < 4; c++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(q, low4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
        if (fmt != FMT_Q4_K) {
            const bool q6 = fmt == FMT_Q6_K;
            const __m256i h = _mm256_loadu_si256((const __m256i *)(qs + 128 + (q6 ? 32 * (c / 2) : 0)));
            const int s_lo = q6 ? 4 * (c % 2) : 2 * c, s_hi = s_lo + (q6 ? 2 : 1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(s_lo)), top), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(s_hi)), top), 4));
        }
        _mm256_store_si256((__m256i *)(dst + 64 * c), lo);
        _mm256_store_si256((__m256i *)(dst + 64 * c + 32), hi);
    }
}

static inline float half_at(const uint8_t *p)
{
    exo_half h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h); /* as the packed kernels convert it */
}

/* Row r's scales of a strip's super-block from its packed header. Int16
 * lane i of a 32-bit lane L (i = 2 L, 2 L + 1) meets elements of lane L,
 * i.e. of sub-blocks 2 (L / 2) (lo) and 2 (L / 2) + 1 (hi) for Q4_K/Q5_K
 * (d, dmin, 12 bytes of scales), of 16-element groups 4 (L / 2) + m for
 * Q6_K's registers lo 2 m, 2 m + 1 (hi: + 2; 16 scales, then d): one byte
 * shuffle each (ctl: krows_ctl's, as the packed kernels spread them). */
static void strip_scales(const uint8_t *head, uint8_t *st, int r, int fmt, const __m128i ctl[4])
{
    __m256i *sc = (__m256i *)(st + ST_SC) + (fmt == FMT_Q6_K ? 4 : 2) * r;
    float *d = (float *)(st + ST_D), *dmin = (float *)(st + ST_DMIN);
    if (fmt == FMT_Q6_K) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)head);
        for (int m = 0; m < 4; m++) _mm256_store_si256(sc + m, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, ctl[m])));
        _mm256_store_si256((__m256i *)(st + ST_OFF) + r, /* -32 * scale, exact in 16 bits */
                           _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5)));
        d[r] = half_at(head + 16);
        dmin[r] = 0.0f;
        return;
    }
    uint8_t s8[16] = {0}, mn[8];
    exo_k_scales_unpack(head + 4, s8, mn);
    const __m128i s = _mm_loadu_si128((const __m128i *)s8);
    for (int u = 0; u < 2; u++) _mm256_store_si256(sc + u, _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s, ctl[u])));
    uint32_t *pairs = (uint32_t *)(st + ST_MN) + 4 * r;
    for (int m = 0; m < 4; m++) pairs[m] = (uint32_t)mn[2 * m] | (uint32_t)mn[2 * m + 1] << 16;
    d[r] = half_at(head);
    dmin[r] = half_at(head + 2);
}

/* The strip of the packed groups at g (rows 4 k .. 4 k + 3 from group k,
 * n_groups of them) over nb super-blocks (quants.h: a super-block's chunk
 * holds the four rows' quants, then their headers). */
static size_t block_bytes(int fmt)
{
    return fmt == FMT_Q6_K ? sizeof(exo_block_q6_K) : fmt == FMT_Q5_K ? sizeof(exo_block_q5_K) : sizeof(exo_block_q4_K);
}

static void unpack_strip(const uint8_t *g, int n_groups, int nb, uint8_t *strip, int fmt)
{
    const size_t bs = block_bytes(fmt);
    const size_t qs_bytes = fmt == FMT_Q6_K ? KROWS_Q6K_QS : fmt == FMT_Q5_K ? KROWS_Q5K_QS : KROWS_Q4K_QS;
    const size_t head_bytes = fmt == FMT_Q6_K ? KROWS_Q6K_HEAD : KROWS_Q4K_HEAD;
    const size_t group_bytes = (size_t)nb * 4 * bs;
    __m128i ctl[4]; /* Q6_K: group 4 (i / 4) + m to int16 lane i; Q4_K/Q5_K: sub-block 2 (i / 4) (+ 1) */
    for (int m = 0; m < 4; m++) ctl[m] = fmt == FMT_Q6_K ? krows_ctl(m, 4, 4) : krows_ctl(m % 2, 2, 4);
    for (int i = 0; i < nb; i++) {
        uint8_t *st = strip + (size_t)i * ST_SB;
        for (int r = 0; r < 4 * n_groups; r++) {
            const uint8_t *chunk = g + (size_t)(r / 4) * group_bytes + (size_t)i * 4 * bs;
            strip_codes(chunk + qs_bytes * (r % 4), st + EXO_QK_K * r, fmt);
            strip_scales(chunk + 4 * qs_bytes + head_bytes * (r % 4), st, r, fmt, ctl);
        }
    }
}

/* ---- the micro-kernel ------------------------------------------------------------ */

/* Tokens 0-3's half sums in a, 4-7's in b (lanes 0-3: low halves, 4-7: high
 * halves) to token j's sum in lane j. */
static inline __m256i sum2x4_epi32(__m256i a, __m256i b)
{
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* Eight tokens' int32 lane vectors to one vector of their sums (token t in
 * lane t): a transposing add tree (integers: exact in any order). */
static inline __m256i sum8x8_epi32(const __m256i v[8])
{
    return sum2x4_epi32(_mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3])),
                        _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7])));
}

/* A row's eight int32 lanes against token t's activations x (lane order;
 * at: the token group's super-block, for Q6_K's bsums). */
EXO_ALWAYS_INLINE __m256i token_lanes(const __m256i qlo[4], const __m256i qhi[4], const __m256i *sc, __m256i off,
                                      const uint8_t *at, int t, const bool q6)
{
    const uint8_t *x = at + (size_t)EXO_QK_K * t;
#define X(o) _mm256_load_si256((const __m256i *)(x + (o)))
    if (!q6) { /* lo c: sub-block 2 p of lane 2 p + h, hi c: 2 p + 1 */
        __m256i se = _mm256_maddubs_epi16(qlo[0], X(0)), so = _mm256_maddubs_epi16(qhi[0], X(32));
        for (int c = 1; c < 4; c++) {
            se = _mm256_add_epi16(se, _mm256_maddubs_epi16(qlo[c], X(64 * c)));
            so = _mm256_add_epi16(so, _mm256_maddubs_epi16(qhi[c], X(64 * c + 32)));
        }
        return _mm256_add_epi32(_mm256_madd_epi16(se, sc[0]), _mm256_madd_epi16(so, sc[1]));
    }
    /* -32 * sum_g sc[g] bsums[g], then groups 4 p + m (lo 2 m, 2 m + 1) and + 2 (hi) */
    __m256i sumi = _mm256_madd_epi16(off, _mm256_load_si256((const __m256i *)(at + ACT_BS) + t));
    for (int m = 0; m < 2; m++) {
        const __m256i plo = _mm256_add_epi16(_mm256_maddubs_epi16(qlo[2 * m], X(128 * m)),
                                             _mm256_maddubs_epi16(qlo[2 * m + 1], X(128 * m + 64)));
        const __m256i phi = _mm256_add_epi16(_mm256_maddubs_epi16(qhi[2 * m], X(128 * m + 32)),
                                             _mm256_maddubs_epi16(qhi[2 * m + 1], X(128 * m + 96)));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(plo, sc[m]), _mm256_madd_epi16(phi, sc[2 + m])));
    }
    return sumi;
#undef X
}

/* Rows [0, R) of the strip against one token group over nb super-blocks;
 * results for rows < rows and tokens < toks go to out[t * ldo + r]. Each
 * (row, token)'s eight lanes collapse to S of quants.c's per-super-block
 * order eight tokens at a time, and the minimums' M run eight tokens a
 * register: one convert and FMA each per (row, eight tokens, super-block). */
EXO_ALWAYS_INLINE void strip_x_tokens(int nb, const uint8_t *strip, const uint8_t *tile, int R, float *out, size_t ldo,
                                      int rows, int toks, const bool q6)
{
    __m256 acc[STRIP_ROWS][TOK / 8]; /* token 8 h + lane */
    for (int r = 0; r < R; r++)
        for (int h = 0; h < TOK / 8; h++) acc[r][h] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *st = strip + (size_t)i * ST_SB, *at = tile + (size_t)i * EXO_TILED_ACT_SB_BYTES;
        const float *dw = (const float *)(st + ST_D), *dminw = (const float *)(st + ST_DMIN);
        for (int r = 0; r < R; r++) {
            const uint8_t *codes = st + EXO_QK_K * r;
            const __m256i *sc = (const __m256i *)(st + ST_SC) + (q6 ? 4 : 2) * r;
            __m256i qlo[4], qhi[4];
            for (int c = 0; c < 4; c++) {
                qlo[c] = _mm256_load_si256((const __m256i *)(codes + 64 * c));
                qhi[c] = _mm256_load_si256((const __m256i *)(codes + 64 * c + 32));
            }
            const __m256i off = q6 ? _mm256_load_si256((const __m256i *)(st + ST_OFF) + r) : _mm256_setzero_si256();
            for (int h = 0; h < TOK / 8; h++) {
                /* tokens 8 h .. 8 h + 7 to S, token j in lane j, by a transposing add tree:
                 * Q4_K/Q5_K add each pair's lanes as they come (few registers live: 6 % faster
                 * than all eight first); Q6_K, whose lanes take more registers, was 6 % faster
                 * with the eight tokens' lanes first (bench_quants gemm, AVX2) */
                __m256i S;
                if (!q6) {
                    __m256i pr[4];
                    for (int j = 0; j < 4; j++)
                        pr[j] = _mm256_hadd_epi32(token_lanes(qlo, qhi, sc, off, at, 8 * h + 2 * j, q6),
                                                  token_lanes(qlo, qhi, sc, off, at, 8 * h + 2 * j + 1, q6));
                    S = sum2x4_epi32(_mm256_hadd_epi32(pr[0], pr[1]), _mm256_hadd_epi32(pr[2], pr[3]));
                } else {
                    __m256i lanes[8];
                    _Pragma("GCC unroll 2") for (int j = 0; j < 8; j++) lanes[j] = token_lanes(qlo, qhi, sc, off, at, 8 * h + j, q6);
                    S = sum8x8_epi32(lanes);
                }
                const __m256 ad = _mm256_load_ps((const float *)(at + ACT_D) + 8 * h);
                acc[r][h] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dw[r]), ad), _mm256_cvtepi32_ps(S),
                                            acc[r][h]);
                if (!q6) { /* M: mn[2 m] bsum(2 m) + mn[2 m + 1] bsum(2 m + 1) over m */
                    __m256i M = _mm256_setzero_si256();
                    for (int m = 0; m < 4; m++) {
                        const __m256i bp = _mm256_load_si256((const __m256i *)(at + ACT_BS + 64 * m) + h);
                        M = _mm256_add_epi32(M, _mm256_madd_epi16(bp, _mm256_set1_epi32(((const int32_t *)(st + ST_MN))[4 * r + m])));
                    }
                    acc[r][h] = _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dminw[r]), ad), _mm256_cvtepi32_ps(M), acc[r][h]);
                }
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        float v[TOK] __attribute__((aligned(32)));
        for (int h = 0; h < TOK / 8; h++) _mm256_store_ps(v + 8 * h, acc[r][h]);
        for (int t = 0; t < toks; t++) out[(size_t)t * ldo + r] = v[t];
    }
}

/* ---- the kernels ---------------------------------------------------------------- */

/* quants.h's gemm for format fmt: strip by strip, each against every token group. */
static void tiled_gemm(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out, size_t ldo,
                       void *scratch, int fmt)
{
    const int nb = n / EXO_QK_K;
    for (int r0 = 0; r0 < n_rows; r0 += STRIP_ROWS) {
        const int rows = n_rows - r0 < STRIP_ROWS ? n_rows - r0 : STRIP_ROWS;
        const int n_groups = (rows + 3) / 4; /* a group past n_rows is not there to read */
        unpack_strip((const uint8_t *)groups + (size_t)(r0 / 4) * nb * 4 * block_bytes(fmt), n_groups, nb, scratch, fmt);
        for (int t0 = 0; t0 < n_tokens; t0 += TOK) {
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t0 / TOK) * exo__tiled_act_bytes(n);
            const int toks = n_tokens - t0 < TOK ? n_tokens - t0 : TOK;
            float *o = out + (size_t)t0 * ldo + r0;
            if (fmt == FMT_Q6_K)
                strip_x_tokens(nb, scratch, tile, 4 * n_groups, o, ldo, rows, toks, true);
            else
                strip_x_tokens(nb, scratch, tile, 4 * n_groups, o, ldo, rows, toks, false);
        }
    }
}

/* Below this many tokens the four-token packed kernels win (bench_quants
 * gemm under EXO_DISABLE_AVX512=1, docs/performance.md): at 16 tokens the
 * tiled GEMM is 1.05-1.3x on Q4_K and Q5_K, 0.93-1.2x on Q6_K; at 8 it
 * loses on all three (a token group half empty). */
#define TILED_MIN_TOKENS 16

/* The formats' entry points (quants.h's signature has no format). */
#define GEMM_OF(fmt, FMT)                                                                                          \
    static void gemm_##fmt(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out,     \
                           size_t ldo, void *scratch)                                                              \
    {                                                                                                              \
        tiled_gemm(n, groups, n_rows, tiles, n_tokens, out, ldo, scratch, FMT);                                    \
    }
GEMM_OF(q4_K, FMT_Q4_K)
GEMM_OF(q5_K, FMT_Q5_K)
GEMM_OF(q6_K, FMT_Q6_K)

const exo_tiled_gemm exo__tiled_q4_K_avx2 = {TILED_MIN_TOKENS, pack_act_q45, gemm_q4_K};
const exo_tiled_gemm exo__tiled_q5_K_avx2 = {TILED_MIN_TOKENS, pack_act_q45, gemm_q5_K};
const exo_tiled_gemm exo__tiled_q6_K_avx2 = {TILED_MIN_TOKENS, pack_act_q6, gemm_q6_K};
