/* gemm_q8_avx2.c: the tiled int8 GEMM for Q4_0 and Q8_0 prompt batches on
 * AVX2 (maddubs), for CPUs without AVX-512 VNNI, and Q8_0's packed dot
 * there (so Q8_0 weights get the packed layout the GEMM reads).
 *
 * The order is quants.c's per-block one: each block's exact integer sum,
 * one FMA of (dw * da) into chain b % 8, the chains summed in its tree. As
 * in gemm_q8_avx512.c the rows sit in the lanes: a strip of eight rows is
 * unpacked once per product, four bytes a row side by side, so one ymm holds
 * a step of four elements of all eight rows; every token of the batch runs
 * past it with its four activation bytes broadcast. Q4_0's codes 0..15 go to
 * maddubs as they are (the -8 comes back as -8 x the token's block sum, put
 * in once per token block): a pair is at most 2 x 15 x 127 and a block's
 * eight steps add up to at most 30480 in 16 bits, so one madd a block turns
 * them into int32 exactly. Q8_0's weights are signed: the strip holds |w|
 * and w, maddubs multiplies |w| by x with w's sign moved onto it (vpsignb),
 * a pair at most 2 x 128 x 127 = 32512, one madd a step. So each
 * (row, token) gets bit for bit what vec_dot_packed gives it.
 *
 * The activations are laid out once per product in token groups of sixteen
 * (pack_act): per block, the tokens' 32 quants, their d's, and each token's
 * starting sum. */
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "gemm_q8_avx2.c must be compiled with -mavx2 -mfma -mf16c"
#endif

#include "gemm_q8_avx2.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_blocks.h"
#include "quants_impl.h"

#define STRIP_ROWS 8
#define TOK EXO_TILED_TOKENS
#define CHAINS EXO_BLOCK_CHAINS
#define STEPS (EXO_QK / 4)

/* A token group's block: gemm_q8_avx2.h (EXO_Q8_TILE_*). */
#define ACT_D EXO_Q8_TILE_D
#define ACT_C EXO_Q8_TILE_C
#define ACT_BLOCK EXO_Q8_TILE_BLOCK
_Static_assert(ACT_BLOCK * (EXO_QK_K / EXO_QK) <= EXO_TILED_ACT_SB_BYTES, "token group layout");

/* A strip's block: the codes (step k's at 32 k, four bytes a row), Q8_0's
 * signed weights in the same order, the rows' d's. */
#define STRIP_W 256
#define STRIP_D 512
#define STRIP_BLOCK 544
_Static_assert(STRIP_BLOCK * (EXO_QK_K / EXO_QK) <= EXO_TILED_STRIP_SB_BYTES, "strip layout");

enum { FMT_Q4_0, FMT_Q8_0 };

/* ---- the activations -------------------------------------------------------- */

void exo__q8_tile_pack_act(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile, int offset)
{
    const int nb = n / EXO_QK;
    memset(tile, 0, (size_t)nb * ACT_BLOCK);
    for (int t = 0; t < n_tok; t++) {
        const exo_block_q8_32 *a = (const exo_block_q8_32 *)((const uint8_t *)act_rows + (size_t)t * act_stride);
        for (int i = 0; i < nb; i++) {
            uint8_t *at = (uint8_t *)tile + (size_t)i * ACT_BLOCK;
            int sum = 0;
            for (int j = 0; j < EXO_QK; j++) sum += a[i].qs[j];
            const int32_t c = -offset * sum;
            memcpy(at + 32 * t, a[i].qs, EXO_QK);
            memcpy(at + ACT_D + 4 * t, &a[i].d, sizeof(float));
            memcpy(at + ACT_C + 4 * t, &c, sizeof c);
        }
    }
}

static void pack_act_q4_0(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    exo__q8_tile_pack_act(n, act_rows, act_stride, n_tok, tile, 8);
}

static void pack_act_q8_0(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile)
{
    exo__q8_tile_pack_act(n, act_rows, act_stride, n_tok, tile, 0);
}

/* ---- the packed layout -------------------------------------------------------- */

const uint8_t *exo__q8_packed_block(const uint8_t *group, int nb, size_t bs, bool pairs, int r, int b, const uint8_t **d)
{
    const int nb4 = nb / 4 * 4;
    int i, cb;
    if (b < nb4) {
        i = b / 4 * 4;
        cb = 4;
    } else if (pairs && nb - nb4 >= 2 && b < nb4 + 2) {
        i = nb4;
        cb = 2;
    } else {
        i = b;
        cb = 1;
    }
    const size_t head = sizeof(exo_half), qsb = bs - head;
    const int unit = pairs && cb >= 2 ? 2 : 1, u = (b - i) / unit * unit, k = (b - i) % unit;
    const uint8_t *c = group + (size_t)i * 4 * bs;
    *d = c + (size_t)cb * 4 * qsb + ((size_t)r * (size_t)cb + (size_t)(b - i)) * head;
    return c + ((size_t)u * 4 + (size_t)r * unit + (size_t)k) * qsb;
}

static inline float half_at(const uint8_t *p)
{
    exo_half h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h); /* as the decode kernels convert it */
}

/* Q8_0's packed dot: per row, eight blocks a step as quants_avx2.c's one-row
 * kernel adds them (a block's sum with w's sign moved onto x, madd, eight
 * blocks' lanes one vector of block sums), the last blocks with zeros. */
static inline __m256i q8_0_isum(const uint8_t *w, const int8_t *x)
{
    const __m256i wq = _mm256_loadu_si256((const __m256i *)w), xq = _mm256_loadu_si256((const __m256i *)x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq)),
                             _mm256_set1_epi16(1));
}

void exo__vec_dot_packed_q8_0_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const exo_block_q8_32 *a = act_row;
    const int nb = n / EXO_QK;
    const size_t bs = sizeof(exo_block_q8_0), group_bytes = (size_t)nb * 4 * bs;
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *grp = (const uint8_t *)groups + (size_t)g * group_bytes;
        __m256 acc[4];
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= nb; i += 8) { /* two four-block chunks, read front to back */
            const uint8_t *c0 = grp + (size_t)i * 4 * bs, *c1 = c0 + 16 * bs;
            const __m256 da = exo_act_d8(a + i);
            for (int r = 0; r < 4; r++) {
                __m256i v[8];
                for (int k = 0; k < 4; k++) {
                    v[k] = q8_0_isum(c0 + (size_t)(k * 4 + r) * EXO_QK, a[i + k].qs);
                    v[k + 4] = q8_0_isum(c1 + (size_t)(k * 4 + r) * EXO_QK, a[i + 4 + k].qs);
                }
                const __m256 dw = _mm256_cvtph_ps(
                    _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(c0 + 16 * EXO_QK + 8 * r)),
                                       _mm_loadl_epi64((const __m128i *)(c1 + 16 * EXO_QK + 8 * r))));
                acc[r] = exo_chains_step(acc[r], dw, da, exo_single_block_sums(v));
            }
        }
        for (int r = 0; r < 4; r++) {
            if (i < nb) { /* the last blocks: zero sums and scales past them keep every chain as it is */
                __m256i v[8];
                float dw[8], da[8];
                for (int k = 0; k < 8; k++) {
                    if (i + k < nb) {
                        const uint8_t *dp, *qs = exo__q8_packed_block(grp, nb, bs, false, r, i + k, &dp);
                        v[k] = q8_0_isum(qs, a[i + k].qs);
                        dw[k] = half_at(dp);
                        da[k] = a[i + k].d;
                    } else {
                        v[k] = _mm256_setzero_si256();
                        dw[k] = da[k] = 0.0f;
                    }
                }
                acc[r] = exo_chains_step(acc[r], _mm256_loadu_ps(dw), _mm256_loadu_ps(da), exo_single_block_sums(v));
            }
            out[4 * g + r] = exo_chains_sum(acc[r]);
        }
    }
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
            uint8_t codes[EXO_QK], w[EXO_QK];
            memset(w, 0, sizeof w);
            if (r < rows) {
                const uint8_t *dp, *qs = exo__q8_packed_block(g0 + (size_t)(r / 4) * group_bytes, nb, bs, q4, r % 4, b, &dp);
                if (q4) {
                    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
                    _mm_storeu_si128((__m128i *)codes, _mm_and_si128(raw, low4));
                    _mm_storeu_si128((__m128i *)(codes + 16), _mm_and_si128(_mm_srli_epi16(raw, 4), low4));
                } else {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)qs);
                    _mm256_storeu_si256((__m256i *)codes, _mm256_sign_epi8(q, q));
                    memcpy(w, qs, EXO_QK);
                }
                dr[r] = half_at(dp);
            } else {
                memset(codes, 0, sizeof codes);
                dr[r] = 0.0f;
            }
            for (int k = 0; k < STEPS; k++) {
                memcpy(st + 32 * k + 4 * r, codes + 4 * k, 4);
                memcpy(st + STRIP_W + 32 * k + 4 * r, w + 4 * k, 4);
            }
        }
    }
}

/* ---- the product ---------------------------------------------------------------- */

static inline __m256i bcast4(const int8_t *x)
{
    int32_t u;
    memcpy(&u, x, sizeof u);
    return _mm256_set1_epi32(u);
}

/* One token group past the strip: res[t] = the eight rows' results for
 * token t. Chain j is a pass over blocks j, j + 8, ...; a block's codes stay
 * in registers while the tokens go by. */
EXO_ALWAYS_INLINE void strip_x_tokens(int nb, const uint8_t *strip, const uint8_t *tile, __m256 res[TOK], const int F)
{
    __m256 ch[CHAINS][TOK];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int j = 0; j < CHAINS; j++) {
        __m256 acc[TOK];
        for (int t = 0; t < TOK; t++) acc[t] = _mm256_setzero_ps();
        for (int b = j; b < nb; b += CHAINS) {
            const uint8_t *st = strip + (size_t)b * STRIP_BLOCK, *at = tile + (size_t)b * ACT_BLOCK;
            __m256i w[STEPS];
            for (int k = 0; k < STEPS; k++) w[k] = _mm256_load_si256((const __m256i *)(st + 32 * k));
            const __m256 dw = _mm256_load_ps((const float *)(st + STRIP_D));
            for (int t = 0; t < TOK; t++) {
                const int8_t *x = (const int8_t *)(at + 32 * t);
                int32_t c;
                memcpy(&c, at + ACT_C + 4 * t, sizeof c);
                __m256i s;
                if (F == FMT_Q4_0) {
                    __m256i s16 = _mm256_maddubs_epi16(w[0], bcast4(x));
                    for (int k = 1; k < STEPS; k++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[k], bcast4(x + 4 * k)));
                    s = _mm256_add_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(c));
                } else {
                    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
                    for (int k = 0; k < STEPS; k += 2) {
                        const __m256i sw0 = _mm256_load_si256((const __m256i *)(st + STRIP_W + 32 * k));
                        const __m256i sw1 = _mm256_load_si256((const __m256i *)(st + STRIP_W + 32 * k + 32));
                        s0 = _mm256_add_epi32(
                            s0, _mm256_madd_epi16(_mm256_maddubs_epi16(w[k], _mm256_sign_epi8(bcast4(x + 4 * k), sw0)), ones));
                        s1 = _mm256_add_epi32(
                            s1, _mm256_madd_epi16(_mm256_maddubs_epi16(w[k + 1], _mm256_sign_epi8(bcast4(x + 4 * k + 4), sw1)),
                                                  ones));
                    }
                    s = _mm256_add_epi32(s0, s1);
                }
                float da;
                memcpy(&da, at + ACT_D + 4 * t, sizeof da);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(da)), _mm256_cvtepi32_ps(s), acc[t]);
            }
        }
        for (int t = 0; t < TOK; t++) ch[j][t] = acc[t];
    }
    for (int t = 0; t < TOK; t++)
        res[t] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(ch[0][t], ch[1][t]), _mm256_add_ps(ch[2][t], ch[3][t])),
                               _mm256_add_ps(_mm256_add_ps(ch[4][t], ch[5][t]), _mm256_add_ps(ch[6][t], ch[7][t])));
}

EXO_ALWAYS_INLINE void tiled_gemm(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out,
                                  size_t ldo, void *scratch, const int F)
{
    const int nb = n / EXO_QK;
    const size_t bs = F == FMT_Q4_0 ? sizeof(exo_block_q4_0) : sizeof(exo_block_q8_0);
    const size_t group_bytes = (size_t)nb * 4 * bs, tile_bytes = exo__tiled_act_bytes(n);
    uint8_t *strip = scratch;
    for (int r0 = 0; r0 < n_rows; r0 += STRIP_ROWS) {
        const int rows = n_rows - r0 < STRIP_ROWS ? n_rows - r0 : STRIP_ROWS;
        unpack_strip((const uint8_t *)groups + (size_t)(r0 / 4) * group_bytes, group_bytes, rows, nb, strip, F);
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int t0 = 0; t0 < n_tokens; t0 += TOK) {
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t0 / TOK) * tile_bytes;
            __m256 res[TOK];
            strip_x_tokens(nb, strip, tile, res, F);
            const int toks = n_tokens - t0 < TOK ? n_tokens - t0 : TOK;
            for (int t = 0; t < toks; t++) _mm256_maskstore_ps(out + (size_t)(t0 + t) * ldo + r0, keep, res[t]);
        }
    }
}

/* Below this many tokens the packed kernels win: a token group of sixteen
 * is one strip pass either way (bench_quants gemm, one core, AVX2: at 16
 * tokens the tiled GEMM is 0.9-1.0x the four-token Q4_0 and the packed Q8_0
 * kernels, at 32 1.3-1.4x and 1.3-1.7x, at 512 1.7-2.0x and 1.8-2.6x). */
#define TILED_MIN_TOKENS 32

#define TILED_FORMAT(fmt, FMT, MIN)                                                                                \
    static void gemm_##fmt(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out,     \
                           size_t ldo, void *scratch)                                                              \
    {                                                                                                              \
        tiled_gemm(n, groups, n_rows, tiles, n_tokens, out, ldo, scratch, FMT);                                    \
    }                                                                                                              \
    const exo_tiled_gemm exo__tiled_##fmt##_avx2 = {MIN, pack_act_##fmt, gemm_##fmt};
TILED_FORMAT(q4_0, FMT_Q4_0, TILED_MIN_TOKENS)
TILED_FORMAT(q8_0, FMT_Q8_0, TILED_MIN_TOKENS)
#undef TILED_FORMAT
