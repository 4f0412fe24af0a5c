/* gemm_q8_avx512.c: the tiled int8 GEMM for Q4_0 and Q8_0 prompt batches on
 * AVX-512 VNNI.
 *
 * The two formats' dots follow the per-block order (quants.c): each block's
 * exact integer sum, then one FMA of (dw * da) into chain b % 8. A GEMM can
 * keep that order with the rows in the lanes: a strip of STRIP_ROWS (16)
 * weight rows is unpacked once per product into plain unsigned byte codes
 * (Q4_0's nibbles 0..15, Q8_0's w ^ 0x80), four bytes a row side by side,
 * so one zmm holds a step of four elements of all sixteen rows, and the
 * rows' d's as floats. Every token of the batch then runs past it: per
 * block, eight vpdpbusd (the token's four activation bytes broadcast) give
 * the sixteen rows' block sums, starting from -8 or -128 times the sum of
 * the token's block (the offset, as the decode kernels take it out), and
 * one convert, one multiply (dw * da, sixteen rows) and one FMA add them to
 * the token's chain. Chain j (blocks j, j + 8, ...) is one pass over the
 * strip; the eight chains are summed in the order's tree at the end. So each
 * (row, token) gets bit for bit what vec_dot_packed gives it, and a batch
 * may take this path or the others.
 *
 * The activations are laid out once per product in token groups of sixteen
 * (pack_act): per block, the tokens' 32 quants, their d's, and each token's
 * starting sum. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512VNNI__) || \
    !defined(__F16C__)
#error "gemm_q8_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mf16c"
#endif

#include "gemm_q8_avx512.h"
#include "gemm_q8_avx2.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_impl.h"

#define STRIP_ROWS 16
#define TOK EXO_TILED_TOKENS
#define CHAINS EXO_BLOCK_CHAINS

/* A token group's block: gemm_q8_avx2.h (EXO_Q8_TILE_*), laid out by its pack_act. */
#define ACT_D EXO_Q8_TILE_D
#define ACT_C EXO_Q8_TILE_C
#define ACT_BLOCK EXO_Q8_TILE_BLOCK
_Static_assert(ACT_BLOCK * (EXO_QK_K / EXO_QK) <= EXO_TILED_ACT_SB_BYTES, "token group layout");

/* A strip's block: the codes (step k's at 64 k, four bytes a row), the rows' d's. */
#define STRIP_D 512
#define STRIP_BLOCK 576
_Static_assert(STRIP_BLOCK * (EXO_QK_K / EXO_QK) <= EXO_TILED_STRIP_SB_BYTES, "strip layout");

enum { FMT_Q4_0, FMT_Q8_0 };

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u;
}

/* ---- the activations -------------------------------------------------------- */

static void pack_act_q4_0(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    exo__q8_tile_pack_act(n, act_rows, act_stride, n_tok, tile, 8);
}

static void pack_act_q8_0(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    exo__q8_tile_pack_act(n, act_rows, act_stride, n_tok, tile, 128);
}

/* ---- the strip ---------------------------------------------------------------- */

/* Unpacks rows [0, rows) of the strip whose groups start at g0 (rows past
 * `rows`: zero codes and d, their results never written). */
static void unpack_strip(const uint8_t *g0, size_t group_bytes, int rows, int nb, uint8_t *strip, int fmt)
{
    const bool q4 = fmt == FMT_Q4_0;
    const size_t bs = q4 ? sizeof(exo_block_q4_0) : sizeof(exo_block_q8_0);
    for (int b = 0; b < nb; b++) {
        uint8_t *st = strip + (size_t)b * STRIP_BLOCK;
        float *dr = (float *)(st + STRIP_D);
        for (int r = 0; r < STRIP_ROWS; r++) {
            uint8_t codes[EXO_QK];
            if (r < rows) {
                const uint8_t *dp, *qs = exo__q8_packed_block(g0 + (size_t)(r / 4) * group_bytes, nb, bs, q4, r % 4, b, &dp);
                if (q4) {
                    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
                    _mm_storeu_si128((__m128i *)codes, _mm_and_si128(raw, low4));
                    _mm_storeu_si128((__m128i *)(codes + 16), _mm_and_si128(_mm_srli_epi16(raw, 4), low4));
                } else {
                    _mm256_storeu_si256((__m256i *)codes, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)qs),
                                                                          _mm256_set1_epi8((char)0x80)));
                }
                exo_half h;
                memcpy(&h, dp, sizeof h);
                dr[r] = _cvtsh_ss(h); /* as the decode kernels convert it */
            } else {
                memset(codes, 0, sizeof codes);
                dr[r] = 0.0f;
            }
            for (int k = 0; k < EXO_QK / 4; k++) memcpy(st + 64 * k + 4 * r, codes + 4 * k, 4);
        }
    }
}

/* ---- the product ---------------------------------------------------------------- */

/* One token group past the strip: res[t] = the sixteen rows' results for
 * token t. Chain j is a pass over blocks j, j + 8, ...; the tokens' chains
 * stay in registers through it. */
static void strip_x_tokens(int nb, const uint8_t *strip, const uint8_t *tile, __m512 res[TOK])
{
    __m512 ch[CHAINS][TOK];
    for (int j = 0; j < CHAINS; j++) {
        __m512 acc[TOK];
        for (int t = 0; t < TOK; t++) acc[t] = _mm512_setzero_ps();
        for (int b = j; b < nb; b += CHAINS) {
            const uint8_t *st = strip + (size_t)b * STRIP_BLOCK, *at = tile + (size_t)b * ACT_BLOCK;
            __m512i w[EXO_QK / 4];
            for (int k = 0; k < EXO_QK / 4; k++) w[k] = _mm512_load_si512((const void *)(st + 64 * k));
            const __m512 dw = _mm512_load_ps((const float *)(st + STRIP_D));
            for (int t = 0; t < TOK; t++) {
                const uint8_t *x = at + 32 * t;
                __m512i s0 = _mm512_set1_epi32((int)ld32(at + ACT_C + 4 * t)), s1 = _mm512_setzero_si512();
                for (int k = 0; k < EXO_QK / 4; k += 2) {
                    s0 = _mm512_dpbusd_epi32(s0, w[k], _mm512_set1_epi32((int)ld32(x + 4 * k)));
                    s1 = _mm512_dpbusd_epi32(s1, w[k + 1], _mm512_set1_epi32((int)ld32(x + 4 * k + 4)));
                }
                float da;
                memcpy(&da, at + ACT_D + 4 * t, sizeof da);
                const __m512 p = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                acc[t] = _mm512_fmadd_ps(p, _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[t]);
            }
        }
        for (int t = 0; t < TOK; t++) ch[j][t] = acc[t];
    }
    for (int t = 0; t < TOK; t++)
        res[t] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(ch[0][t], ch[1][t]), _mm512_add_ps(ch[2][t], ch[3][t])),
                               _mm512_add_ps(_mm512_add_ps(ch[4][t], ch[5][t]), _mm512_add_ps(ch[6][t], ch[7][t])));
}

static void tiled_gemm(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out, size_t ldo,
                       void *scratch, int fmt)
{
    const int nb = n / EXO_QK;
    const size_t bs = fmt == FMT_Q4_0 ? sizeof(exo_block_q4_0) : sizeof(exo_block_q8_0);
    const size_t group_bytes = (size_t)nb * 4 * bs, tile_bytes = exo__tiled_act_bytes(n);
    uint8_t *strip = scratch;
    for (int r0 = 0; r0 < n_rows; r0 += STRIP_ROWS) {
        const int rows = n_rows - r0 < STRIP_ROWS ? n_rows - r0 : STRIP_ROWS;
        unpack_strip((const uint8_t *)groups + (size_t)(r0 / 4) * group_bytes, group_bytes, rows, nb, strip, fmt);
        const __mmask16 keep = (__mmask16)((1u << rows) - 1);
        for (int t0 = 0; t0 < n_tokens; t0 += TOK) {
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t0 / TOK) * tile_bytes;
            __m512 res[TOK];
            strip_x_tokens(nb, strip, tile, res);
            const int toks = n_tokens - t0 < TOK ? n_tokens - t0 : TOK;
            for (int t = 0; t < toks; t++) _mm512_mask_storeu_ps(out + (size_t)(t0 + t) * ldo + r0, keep, res[t]);
        }
    }
}

/* Below this many tokens the packed kernels win: a strip's unpacking is
 * shared by fewer tokens, a token group is part empty (bench_quants gemm,
 * one core: at 16 tokens the tiled GEMM is 0.6-1.0x the four-token Q4_0 and
 * the packed Q8_0 kernels, at 32 about 1.0x and 1.5x, at 64 1.1-1.7x and
 * 2-2.1x, at 512 2-2.4x and 3.3-4.6x; docs/performance.md). */
#define TILED_MIN_TOKENS 32

#define TILED_FORMAT(fmt, FMT, MIN)                                                                                \
    static void gemm_##fmt(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out,     \
                           size_t ldo, void *scratch)                                                              \
    {                                                                                                              \
        tiled_gemm(n, groups, n_rows, tiles, n_tokens, out, ldo, scratch, FMT);                                    \
    }                                                                                                              \
    const exo_tiled_gemm exo__tiled_##fmt##_avx512 = {MIN, pack_act_##fmt, gemm_##fmt};
TILED_FORMAT(q4_0, FMT_Q4_0, TILED_MIN_TOKENS)
TILED_FORMAT(q8_0, FMT_Q8_0, TILED_MIN_TOKENS)
#undef TILED_FORMAT
