/* gemm_k_avx512.c: the tiled int8 GEMM for K-quant prompt batches (Q4_K,
 * Q5_K, Q6_K) on AVX-512 VNNI.
 *
 * The packed four-token kernels (quants_k_rows.h) unpack each group of four
 * weight rows again for every four tokens, and the unpacking and scale work,
 * not the multiply-adds, bounds them. Here a strip of STRIP_ROWS weight rows
 * is unpacked once into plain unsigned byte codes (Q4_K 0..15, Q5_K 0..31,
 * Q6_K 0..63) and integer sub-block scales, and every token of the batch
 * runs past it: one zmm a row holds sixteen tokens' int32 sums, and each
 * step of four k-elements is one 64-byte load of the sixteen tokens'
 * activation bytes and one vpdpbusd a row with the row's four code bytes
 * broadcast. The activations are put in that layout once per product.
 *
 * Bit for bit vec_dot_ref and every other K kernel: quants.c's
 * per-super-block order. Each row's units (a sub-block's or a 16-element
 * group's elements of one lane, times its scale) add up in one int32 vector
 * of sixteen tokens, S; Q4_K/Q5_K's minimums in another, M (vpdpwssd of the
 * int16 (min, min) pairs and the tokens' sub-block sums); Q6_K's -32 offset
 * goes into S the same way. Then one convert and FMA (two with minimums) per
 * (row, sixteen tokens, super-block). The lanes: lane l covers 32 elements
 * of the super-block; Q4_K/Q5_K's lane l = 2 p + h is elements o of
 * sub-blocks 2 p and 2 p + 1 (two units of four steps) with (o / 4) % 2 == h,
 * Q6_K's lane l is all of groups 2 l and 2 l + 1 (two units of four steps:
 * one scale multiply a group, not one a half-group). */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512VNNI__) || \
    !defined(__F16C__)
#error "gemm_k_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mf16c"
#endif

#include "gemm_k_avx512.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_impl.h"

/* Rows a strip: sixteen int32 unit sums and eight lane sums in registers
 * (one zmm each a row), the activation vector and the broadcasts beside them. */
#define STRIP_ROWS 8
#define TOK EXO_TILED_TOKENS
#define STEPS 64 /* steps of four elements a super-block */

/* A token group's super-block (at most EXO_TILED_ACT_SB_BYTES): the quants, step s
 * at 64 s (four bytes a token); the tokens' d; int32 pairs of int16 sums per
 * token (Q4_K/Q5_K: pair m is (bsums of sub-block 2 m, of 2 m + 1) for
 * m < 4; Q6_K: pair i is (bsums[2 i], bsums[2 i + 1])). */
#define ACT_D 4096
#define ACT_PAIRS 4160
_Static_assert(ACT_PAIRS + 8 * TOK * 4 <= EXO_TILED_ACT_SB_BYTES, "token group layout");

/* A strip's super-block (at most EXO_TILED_STRIP_SB_BYTES): the codes, step s at
 * 32 s (four bytes a row); each unit's scale as int32, [lane][unit][row];
 * the rows' d and dmin as floats; int32 pairs of int16 per row (Q4_K/Q5_K:
 * minimums of sub-blocks 2 m, 2 m + 1; Q6_K: scales 2 i, 2 i + 1). */
#define STRIP_SC 2048
#define STRIP_D 3072
#define STRIP_DMIN 3104
#define STRIP_PAIRS 3136
_Static_assert(STRIP_PAIRS + 8 * STRIP_ROWS * 4 <= EXO_TILED_STRIP_SB_BYTES, "strip layout");

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u;
}

static inline void st32(uint8_t *p, uint32_t u)
{
    memcpy(p, &u, sizeof u);
}

static inline float half_to_float(const uint8_t *p)
{
    exo_half h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h); /* as the packed kernels convert it */
}

/* Element offset (in its super-block) of the first of step s's four
 * elements: steps go lane by lane, unit by unit (see the top). */
static inline int step_element(bool q6, int s)
{
    const int l = s / 8;
    if (!q6) {
        const int p = l / 2, h = l % 2; /* unit u: sub-block 2 p + u, four steps of 8 */
        const int u = (s % 8) / 4, q = s % 4;
        return 32 * (2 * p + u) + 8 * q + 4 * h;
    }
    /* Q6_K: lane L is groups 2 L and 2 L + 1 (unit u, four steps each), so a unit's elements are
     * all of its group's 16: 64 (L / 2) + 8 c + 4 h, with c = 4 (L % 2) + 2 u + (s / 2) % 2, h = s % 2 */
    const int u = (s % 8) / 4, c = 4 * (l % 2) + 2 * u + (s / 2) % 2;
    return 64 * (l / 2) + 8 * c + 4 * (s % 2);
}

/* ---- the activations -------------------------------------------------------- */

static void pack_act(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile, bool q6)
{
    const int nb = n / EXO_QK_K;
    memset(tile, 0, exo__tiled_act_bytes(n));
    for (int t = 0; t < n_tok; t++) {
        const exo_block_q8_K *a = (const exo_block_q8_K *)((const uint8_t *)act_rows + (size_t)t * act_stride);
        for (int i = 0; i < nb; i++) {
            uint8_t *at = (uint8_t *)tile + (size_t)i * EXO_TILED_ACT_SB_BYTES;
            for (int s = 0; s < STEPS; s++)
                memcpy(at + 64 * s + 4 * t, a[i].qs + step_element(q6, s), 4);
            memcpy(at + ACT_D + 4 * t, &a[i].d, sizeof(float));
            for (int k = 0; k < 8; k++) {
                uint16_t lo, hi;
                if (q6) {
                    lo = (uint16_t)a[i].bsums[2 * k];
                    hi = (uint16_t)a[i].bsums[2 * k + 1];
                } else if (k < 4) { /* sub-block sums in 16 bits, as the packed kernels' hadd makes them */
                    lo = (uint16_t)(a[i].bsums[4 * k] + a[i].bsums[4 * k + 1]);
                    hi = (uint16_t)(a[i].bsums[4 * k + 2] + a[i].bsums[4 * k + 3]);
                } else {
                    lo = hi = 0;
                }
                st32(at + ACT_PAIRS + 64 * k + 4 * t, (uint32_t)lo | (uint32_t)hi << 16);
            }
        }
    }
}

/* ---- the strip ---------------------------------------------------------------- */

/* Row r of a strip's super-block where the strip has no row r: zero codes,
 * scales and pairs (its results are never written). */
static void strip_zero_row(uint8_t *st, int r)
{
    for (int s = 0; s < STEPS; s++) st32(st + 32 * s + 4 * r, 0);
    for (int k = 0; k < 32; k++) ((int32_t *)(st + STRIP_SC))[STRIP_ROWS * k + r] = 0;
    for (int k = 0; k < 8; k++) ((int32_t *)(st + STRIP_PAIRS))[STRIP_ROWS * k + r] = 0;
    ((float *)(st + STRIP_D))[r] = ((float *)(st + STRIP_DMIN))[r] = 0.0f;
}

enum { FMT_Q4_K, FMT_Q5_K, FMT_Q6_K };

/* v[r] holds row r's codes of eight steps (dword l: the packed lane l's);
 * stores dword l of every row side by side, as step base + 8 l wants them
 * (Q4_K/Q5_K; Q6_K: step base + 16 (l / 2) + l % 2, see step_element). */
static inline void strip_store_t8x8(const __m256i v[8], uint8_t *st, int base, bool q6)
{
#define STEP_OF(l) (base + (q6 ? 16 * ((l) / 2) + (l) % 2 : 8 * (l)))
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int l = 0; l < 4; l++) {
        _mm256_store_si256((__m256i *)(st + 32 * STEP_OF(l)), _mm256_permute2x128_si256(u[l], u[l + 4], 0x20));
        _mm256_store_si256((__m256i *)(st + 32 * STEP_OF(l + 4)), _mm256_permute2x128_si256(u[l], u[l + 4], 0x31));
    }
#undef STEP_OF
}

/* The codes of a strip's super-block from the eight rows' packed quants
 * (quants_k_rows.h's lane order, described at strip_row_q45 and
 * strip_row_q6), eight rows at once: a row's register holds the eight
 * lanes' dwords of a step, so a transpose puts each step's rows side by side. */
static void strip_codes(const uint8_t *qs[8], uint8_t *st, int fmt)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(3);
    __m256i v[2][8];
    if (fmt != FMT_Q6_K) {
        for (int q = 0; q < 4; q++) {
            for (int r = 0; r < 8; r++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(qs[r] + 32 * q));
                v[0][r] = _mm256_and_si256(w, low4);
                v[1][r] = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
                if (fmt == FMT_Q5_K) { /* fifth bits 2 q (lo) and 2 q + 1 (hi) of byte p at 128 + p */
                    const __m256i f = _mm256_loadu_si256((const __m256i *)(qs[r] + 128));
                    v[0][r] = _mm256_or_si256(v[0][r], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(f, 2 * q), one), 4));
                    v[1][r] = _mm256_or_si256(v[1][r], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(f, 2 * q + 1), one), 4));
                }
            }
            strip_store_t8x8(v[0], st, q, false);     /* unit 0: step 8 l + q */
            strip_store_t8x8(v[1], st, 4 + q, false); /* unit 1: step 8 l + 4 + q */
        }
        return;
    }
    for (int c = 0; c < 4; c++) { /* lo c: c of step_element 2 c; hi c: 4 + c */
        for (int r = 0; r < 8; r++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(qs[r] + 32 * c));
            const __m256i top = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(qs[r] + 128 + 32 * (c / 2))), 4 * (c % 2));
            v[0][r] = _mm256_or_si256(_mm256_and_si256(w, low4), _mm256_slli_epi16(_mm256_and_si256(top, two), 4));
            v[1][r] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 4), low4),
                                      _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(top, 2), two), 4));
        }
        strip_store_t8x8(v[0], st, 2 * c, true);
        strip_store_t8x8(v[1], st, 8 + 2 * c, true);
    }
}

/* Row r's scales of a strip's super-block from its header (d, dmin, the 12
 * bytes of scales). Its codes come from its packed quants (quants_k_rows.h's
 * lane order: lo c's byte p the low nibble of byte 32 c + p, hi c's the high
 * one; Q5_K's fifth bits at 128 + p, bit 2 c (lo) and 2 c + 1 (hi)). */
static void strip_head_q45(const uint8_t *head, uint8_t *st, int r)
{
    int32_t *sc32 = (int32_t *)(st + STRIP_SC), *pairs = (int32_t *)(st + STRIP_PAIRS);
    uint8_t sc[8], mn[8];
    exo_k_scales_unpack(head + 4, sc, mn);
    /* (units 2, 3 of a lane and pairs 4..7 are Q6_K's only: the kernel never reads them here) */
    for (int l = 0; l < 8; l++)
        for (int u = 0; u < 2; u++) sc32[STRIP_ROWS * (4 * l + u) + r] = sc[2 * (l / 2) + u];
    for (int k = 0; k < 4; k++) pairs[STRIP_ROWS * k + r] = (int32_t)((uint32_t)mn[2 * k] | (uint32_t)mn[2 * k + 1] << 16);
    ((float *)(st + STRIP_D))[r] = half_to_float(head);
    ((float *)(st + STRIP_DMIN))[r] = half_to_float(head + 2);
}

/* The same for Q6_K: the header is the 16 scales, then d (the codes: lo c /
 * hi c's low four bits as the low / high nibbles of byte 32 c + p, their top
 * two bits at 128 + 32 (c / 2) + p, bits 4 (c % 2) (lo) and 4 (c % 2) + 2 (hi)). */
static void strip_head_q6(const uint8_t *head, uint8_t *st, int r)
{
    int32_t *sc32 = (int32_t *)(st + STRIP_SC), *pairs = (int32_t *)(st + STRIP_PAIRS);
    const int8_t *scales = (const int8_t *)head;
    for (int l = 0; l < 8; l++)
        for (int u = 0; u < 2; u++) sc32[STRIP_ROWS * (4 * l + u) + r] = scales[2 * l + u];
    for (int k = 0; k < 8; k++)
        pairs[STRIP_ROWS * k + r] =
            (int32_t)((uint32_t)(uint16_t)scales[2 * k] | (uint32_t)(uint16_t)scales[2 * k + 1] << 16);
    ((float *)(st + STRIP_D))[r] = half_to_float(head + 16);
    ((float *)(st + STRIP_DMIN))[r] = 0.0f;
}

/* A strip of nb super-blocks: its row r is row r % 4 of packed group g[r / 4]
 * (quants.h: a super-block's chunk holds the four rows' quants, then their
 * headers); a NULL group's rows are zeros. */
static void unpack_strip(const uint8_t *g[2], int nb, uint8_t *strip, int fmt)
{
    const size_t bs = fmt == FMT_Q6_K ? sizeof(exo_block_q6_K) : fmt == FMT_Q5_K ? sizeof(exo_block_q5_K)
                                                                                 : sizeof(exo_block_q4_K);
    /* quants_k_rows.h's KROWS_Q4K_QS, KROWS_Q5K_QS, KROWS_Q6K_QS and the header sizes */
    const size_t qs_bytes = fmt == FMT_Q6_K ? 192 : fmt == FMT_Q5_K ? 160 : 128, head_bytes = fmt == FMT_Q6_K ? 18 : 16;
    static const uint8_t zeros[192] __attribute__((aligned(64)));
    for (int i = 0; i < nb; i++) {
        uint8_t *st = strip + (size_t)i * EXO_TILED_STRIP_SB_BYTES;
        const uint8_t *qs[STRIP_ROWS];
        for (int r = 0; r < STRIP_ROWS; r++) {
            if (!g[r / 4]) {
                strip_zero_row(st, r);
                qs[r] = zeros;
                continue;
            }
            const uint8_t *chunk = g[r / 4] + (size_t)i * 4 * bs;
            const uint8_t *head = chunk + 4 * qs_bytes + head_bytes * (r % 4);
            qs[r] = chunk + qs_bytes * (r % 4);
            if (fmt == FMT_Q6_K)
                strip_head_q6(head, st, r);
            else
                strip_head_q45(head, st, r);
        }
        strip_codes(qs, st, fmt);
    }
}

/* ---- the micro-kernel ------------------------------------------------------------ */

#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* The strip against one token group over all nb super-blocks: res[r] holds
 * the sixteen tokens' results of row r. NU units of SU steps a lane (Q4_K,
 * Q5_K: 2 x 4 and minimums; Q6_K: 4 x 2 and the -32 offset). Each row's
 * units and lanes add up in one int32 vector (S of quants.c's per-super-block
 * order, sixteen tokens), the minimums' products in another (M); then one
 * convert and FMA each per (row, super-block). */
EXO_ALWAYS_INLINE void strip_x_tokens(int nb, const uint8_t *strip, const uint8_t *tile, __m512 res[STRIP_ROWS],
                                      const int NU, const int SU, const bool q6)
{
    __m512 acc[STRIP_ROWS];
    UNROLL for (int r = 0; r < STRIP_ROWS; r++) acc[r] = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *st = strip + (size_t)i * EXO_TILED_STRIP_SB_BYTES;
        const uint8_t *at = tile + (size_t)i * EXO_TILED_ACT_SB_BYTES;
        const int32_t *sc32 = (const int32_t *)(st + STRIP_SC), *pairs = (const int32_t *)(st + STRIP_PAIRS);
        const float *dw = (const float *)(st + STRIP_D), *dmw = (const float *)(st + STRIP_DMIN);
        __m512i S[STRIP_ROWS];
        UNROLL for (int r = 0; r < STRIP_ROWS; r++) S[r] = _mm512_setzero_si512();
        for (int l = 0; l < 8; l++) {
            /* the lane's eight steps of activations stay in registers while each row's units
             * run as short chains: the rows' chains overlap out of order, and nothing spills
             * (with the rows side by side GCC kept every unit's sums to the end and spilled) */
            __m512i x[8];
            UNROLL for (int k = 0; k < 8; k++) x[k] = _mm512_load_si512(at + 64 * (8 * l + k));
            UNROLL for (int r = 0; r < STRIP_ROWS; r++) {
                __m512i lane = S[r];
                UNROLL for (int u = 0; u < NU; u++) {
                    __m512i unit = _mm512_setzero_si512();
                    UNROLL for (int q = 0; q < SU; q++) {
                        const int k = SU * u + q;
                        unit = _mm512_dpbusd_epi32(unit, _mm512_set1_epi32((int)ld32(st + 32 * (8 * l + k) + 4 * r)), x[k]);
                    }
                    lane = _mm512_add_epi32(lane, _mm512_mullo_epi32(unit, _mm512_set1_epi32(sc32[STRIP_ROWS * (4 * l + u) + r])));
                }
                S[r] = lane;
            }
        }
        if (q6) /* Q6_K's offset: - 32 sum_g sc[g] bsums[g], the pairs (2 k, 2 k + 1) a vpdpwssd each */
            UNROLL for (int r = 0; r < STRIP_ROWS; r++) {
                __m512i off = _mm512_setzero_si512();
                for (int k = 0; k < 8; k++)
                    off = _mm512_dpwssd_epi32(off, _mm512_load_si512(at + ACT_PAIRS + 64 * k),
                                              _mm512_set1_epi32(pairs[STRIP_ROWS * k + r]));
                S[r] = _mm512_sub_epi32(S[r], _mm512_slli_epi32(off, 5));
            }
        const __m512 ad = _mm512_load_ps(at + ACT_D);
        UNROLL for (int r = 0; r < STRIP_ROWS; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(dw[r]), ad), _mm512_cvtepi32_ps(S[r]), acc[r]);
        if (!q6) /* M: mn[2 m] bsum(2 m) + mn[2 m + 1] bsum(2 m + 1) over m, as int16 pairs */
            UNROLL for (int r = 0; r < STRIP_ROWS; r++) {
                __m512i M = _mm512_setzero_si512();
                for (int m = 0; m < 4; m++)
                    M = _mm512_dpwssd_epi32(M, _mm512_load_si512(at + ACT_PAIRS + 64 * m),
                                            _mm512_set1_epi32(pairs[STRIP_ROWS * m + r]));
                acc[r] = _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_set1_ps(dmw[r]), ad), _mm512_cvtepi32_ps(M), acc[r]);
            }
    }
    UNROLL for (int r = 0; r < STRIP_ROWS; r++) res[r] = acc[r];
}

/* ---- the kernels ---------------------------------------------------------------- */

static void tiled_gemm(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out, size_t ldo,
                       void *scratch, int fmt)
{
    const int nb = n / EXO_QK_K;
    const size_t bs = fmt == FMT_Q6_K ? sizeof(exo_block_q6_K) : fmt == FMT_Q5_K ? sizeof(exo_block_q5_K)
                                                                                 : sizeof(exo_block_q4_K);
    const size_t group_bytes = (size_t)nb * 4 * bs, tile_bytes = exo__tiled_act_bytes(n);
    uint8_t *strip = scratch;
    for (int r0 = 0; r0 < n_rows; r0 += STRIP_ROWS) {
        const uint8_t *g[2] = {(const uint8_t *)groups + (size_t)(r0 / 4) * group_bytes, NULL};
        if (r0 + 4 < n_rows) g[1] = g[0] + group_bytes;
        unpack_strip(g, nb, strip, fmt);
        const int rows = n_rows - r0 < STRIP_ROWS ? n_rows - r0 : STRIP_ROWS;
        for (int t0 = 0; t0 < n_tokens; t0 += TOK) {
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t0 / TOK) * tile_bytes;
            __m512 res[STRIP_ROWS];
            if (fmt == FMT_Q6_K)
                strip_x_tokens(nb, strip, tile, res, 2, 4, true);
            else
                strip_x_tokens(nb, strip, tile, res, 2, 4, false);
            float v[STRIP_ROWS][TOK];
            for (int r = 0; r < STRIP_ROWS; r++) _mm512_storeu_ps(v[r], res[r]);
            const int toks = n_tokens - t0 < TOK ? n_tokens - t0 : TOK;
            for (int t = 0; t < toks; t++)
                for (int r = 0; r < rows; r++) out[(size_t)(t0 + t) * ldo + r0 + r] = v[r][t];
        }
    }
}

/* Below this many tokens the four-token packed kernels win: a strip's
 * unpacking is shared by fewer tokens, and a token group is part empty
 * (bench_quants gemm: at 16 tokens the tiled GEMM is 0.8-0.9x, at 32
 * 1.0-1.3x, at 64 1.15-1.6x; docs/performance.md). */
#define TILED_MIN_TOKENS 32

/* Q4_K and Q5_K lay the activations out alike, so one product may mix them. */
static void pack_act_q45(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    pack_act(n, act_rows, act_stride, n_tok, tile, false);
}

static void pack_act_q6(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    pack_act(n, act_rows, act_stride, n_tok, tile, true);
}

#define TILED_FORMAT(fmt, FMT, pack)                                                                               \
    static void gemm_##fmt(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out,     \
                           size_t ldo, void *scratch)                                                              \
    {                                                                                                              \
        tiled_gemm(n, groups, n_rows, tiles, n_tokens, out, ldo, scratch, FMT);                                    \
    }                                                                                                              \
    const exo_tiled_gemm exo__tiled_##fmt##_avx512 = {TILED_MIN_TOKENS, pack, gemm_##fmt};
TILED_FORMAT(q4_K, FMT_Q4_K, pack_act_q45)
TILED_FORMAT(q5_K, FMT_Q5_K, pack_act_q45)
TILED_FORMAT(q6_K, FMT_Q6_K, pack_act_q6)
