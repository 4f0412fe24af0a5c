/* quants_avx512.c: AVX-512 VNNI versions of the decode path's 32-element
 * dots (Q4_0, Q4_1, Q8_0 x Q8_32), for one weight row, for four, and for a
 * packed group of four (quants.h). One body per format serves all three:
 * the packed flag only changes where loads come from.
 *
 * Built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma
 * -mf16c; quants.c calls these only after checking the CPU. Each has a scalar
 * _ref twin in quants.c that defines its meaning.
 *
 * vpdpbusd (u8 x s8, four products summed into each int32 lane, no
 * saturation) replaces the AVX2 kernels' maddubs + madd pair. The kernels use
 * its 256-bit (VL) form: on AMD Zen 4, where they were tuned, a 512-bit op
 * occupies two 256-bit pipes, so 512-bit code measured no faster, and
 * four-block steps leave a two-block tail on the 576-element rows of the
 * default model. Blocks go in pairs as in quants_avx2.c: one register holds
 * both blocks' low nibbles, so lanes 0-3 belong to the first block and 4-7 to
 * the second.
 *
 * With VNNI doing the integer work, most of the remaining cost of a block is
 * its scales. Q4_1 and Q5_1 handle them four blocks at a time (one cvtph for
 * four blocks), and the four-row kernels (x4) load each activation block,
 * and do its share of the work, once for four weight rows. Q4_0, Q5_0,
 * IQ4_NL and Q8_0 follow the per-block order (quants.c): eight blocks' exact
 * integer sums become one vector (quants_blocks.h) and take one convert,
 * one multiply by dw * da and one FMA for the eight, the order the tiled
 * GEMM (gemm_q8_avx512.c) can follow with rows in its lanes.
 *
 * Offsets stay in integers: Q8_0's signed w goes through dpbusd as the
 * unsigned w ^ 0x80 = w + 128, and Q4_0's nibbles carry +8, so each block
 * sum takes -128 * sum(x) (or -8 * sum(x)) of its activation bytes: dpbusd
 * against a vector of 128s (or 8s), shared by the rows (Q4_1's lanes start
 * at it). The integer sums are exact, as in the _ref kernels. Q4_1's
 * minimum goes through the activation's s = d * sum(q) as in the AVX2 kernel.
 * Bounds: |lane| <= 2 * 4 * 255 * 127 per block, far inside int32. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512VNNI__) || \
    !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "quants_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c"
#endif

#include "quants_avx512.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"
#include "quants_blocks.h"
#include "quants_impl.h"
#include "quants_k_rows.h"

static inline uint32_t load_u32(const void *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u;
}


/* The four-row kernels read four rows side by side: four interleaved
 * streams. On the machine they were tuned on (a VM on AMD EPYC) the hardware
 * prefetchers keep up with one sequential stream but not with that pattern,
 * and from DRAM four-row reads ran at a third of one-row speed. So they
 * prefetch in software, in address order, as one stream: each step fetches as
 * many lines as it consumes, PREFETCH_GROUPS groups of four rows ahead. */
#ifndef PREFETCH_GROUPS
#define PREFETCH_GROUPS 2
#endif

/* Prefetches lines cache lines from address *pf on and advances *pf past
 * them. An integer address: near the end of a matrix it points past it
 * (prefetches never fault), where pointer arithmetic would be undefined. */
static inline void prefetch_lines(uintptr_t *pf, int lines)
{
    for (int l = 0; l < lines; l++) _mm_prefetch((const char *)(*pf + 64 * (uintptr_t)l), _MM_HINT_T0);
    *pf += 64 * (uintptr_t)lines;
}

/* The packed layout is one stream, which the hardware prefetchers follow;
 * but a decode step's matrices are a few hundred KiB each, split between the
 * threads, so every chunk starts cold and the prefetchers ramp up again. A
 * software prefetch PACKED_PREFETCH bytes ahead of the reads, as many lines
 * a step as the step consumes, hides that: in decode (two threads) the
 * gate/up loop went 26.4 -> 24.6 us and tg128 340-348 -> 356-359 tok/s. (One
 * core streaming alone from DRAM it costs a little: bench_quants.) */
#ifndef PACKED_PREFETCH
#define PACKED_PREFETCH 2048
#endif

static inline void prefetch_ahead(const uint8_t *p, int lines)
{
    for (int l = 0; l < lines; l++) _mm_prefetch((const char *)p + PACKED_PREFETCH + 64 * l, _MM_HINT_T0);
}

static inline float half_to_float(exo_half h)
{
    return _cvtsh_ss(h);
}

/* out[r] = sum of u[r]'s lanes for r < R, always in the order
 * ((u0 + u1) + (u2 + u3)) + ((u4 + u5) + (u6 + u7)): four rows share one
 * transposing reduction, and a single row adds in the same order, so the
 * four-row kernels return exactly what the one-row ones do. */
EXO_ALWAYS_INLINE void reduce_rows(const __m256 *u, float *out, const int R)
{
    if (R == 4) {
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(u[0], u[1]), _mm256_hadd_ps(u[2], u[3]));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    } else {
        FOR_ROWS(r, R) {
            __m256 h = _mm256_hadd_ps(u[r], u[r]);
            h = _mm256_hadd_ps(h, h);
            out[r] = _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        }
    }
}

/* 16 bytes from lo into the low 128 bits, 16 from hi into the high ones. */
static inline __m256i load_2x128(const void *lo, const void *hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
                                   _mm_loadu_si128((const __m128i *)hi), 1);
}

/* 16 bytes of packed nibbles -> 32 bytes 0..15 in element order. */
static inline __m256i q4_unpack(const uint8_t *qs)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* The formats that share the 4-bit nibble layout: Q5_0/Q5_1 add a fifth bit
 * from qh, IQ4_NL looks its nibbles up in a table (quants.h). The kind is a
 * constant at every call site. */
enum q4_kind { KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_IQ4_NL };

/* IQ4_NL's table + 128 (1..241, unsigned for dpbusd) in both 128-bit lanes;
 * the 128 comes back out through the lanes' starting values, as Q8_0's. */
static inline __m256i iq4nl_table_u8(void)
{
    __m128i t = _mm_loadu_si128((const __m128i *)exo_iq4nl_values);
    return _mm256_broadcastsi128_si256(_mm_xor_si128(t, _mm_set1_epi8((char)0x80)));
}

/* The unsigned quant bytes from nibbles (0..15) of kind K: Q5's fifth bits
 * come from the mask (bit j for byte j), added as 16; IQ4_NL's nibbles index
 * its table. */
EXO_ALWAYS_INLINE __m256i q4_widen(__m256i nib, __mmask32 high, const int K)
{
    if (K == KIND_Q5_0 || K == KIND_Q5_1) return _mm256_mask_add_epi8(nib, high, nib, _mm256_set1_epi8(16));
    if (K == KIND_IQ4_NL) return _mm256_shuffle_epi8(iq4nl_table_u8(), nib);
    return nib;
}

/* acc + the integer dot of two blocks (q: their 16 quant bytes each, side by
 * side; hl, hh: Q5's fifth bits for the low and high nibbles, q5_pair_masks)
 * with their activation pair (xl: both blocks' first 16 quants, xh: their
 * last 16): block 0 in lanes 0-3, block 1 in lanes 4-7. */
EXO_ALWAYS_INLINE __m256i q4_pair_dot(__m256i acc, __m256i q, __m256i xl, __m256i xh, __mmask32 hl, __mmask32 hh,
                                      const int K)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    acc = _mm256_dpbusd_epi32(acc, q4_widen(_mm256_and_si256(q, low4), hl, K), xl);
    return _mm256_dpbusd_epi32(acc, q4_widen(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), hh, K), xh);
}

/* The quants of four consecutive activation blocks as q4_pair_dot takes
 * them: x[0], x[1] the pair of blocks 0-1 (first 16 quants, last 16), x[2],
 * x[3] the pair of blocks 2-3. */
static inline void act_quad(const exo_block_q8_32 *a, __m256i x[4])
{
    for (int k = 0; k < 2; k++) {
        x[2 * k] = load_2x128(a[2 * k].qs, a[2 * k + 1].qs);
        x[2 * k + 1] = load_2x128(a[2 * k].qs + 16, a[2 * k + 1].qs + 16);
    }
}

/* Q5's fifth bits of two blocks (qh words at p0, p1) as q4_pair_dot's masks:
 * *hl for the low nibbles (elements 0-15 of block 0, then of block 1), *hh
 * for the high ones (elements 16-31). */
static inline void q5_pair_masks(const uint8_t *p0, const uint8_t *p1, __mmask32 *hl, __mmask32 *hh)
{
    uint32_t h0 = load_u32(p0), h1 = load_u32(p1);
    *hl = (h0 & 0xffffu) | (h1 << 16);
    *hh = (h0 >> 16) | (h1 & 0xffff0000u);
}

static inline __m256i load_256(const uint8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* Activation scales: [d0, s0, d1, s1] of a pair, the same for four blocks in
 * one register, and [d0, d1, d2, d3]. */
static inline __m128 act_pair_ds(const exo_block_q8_32 *a)
{
    return _mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)&a[0].d)), (const __m64 *)&a[1].d);
}

static inline __m256 act_quad_ds(const exo_block_q8_32 *a)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(act_pair_ds(a)), act_pair_ds(a + 2), 1);
}

static inline __m128 act_quad_d(const exo_block_q8_32 *a)
{
    return _mm_shuffle_ps(act_pair_ds(a), act_pair_ds(a + 2), _MM_SHUFFLE(2, 0, 2, 0));
}

/* The first 4 bytes of four blocks stride bytes apart, as four dwords. */
static inline __m128i dwords_4(const uint8_t *p, size_t stride)
{
    __m128i v01 = _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(p)), _mm_cvtsi32_si128((int)load_u32(p + stride)));
    __m128i v23 = _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(p + 2 * stride)),
                                     _mm_cvtsi32_si128((int)load_u32(p + 3 * stride)));
    return _mm_unpacklo_epi64(v01, v23);
}

/* The first fp16 of four blocks stride bytes apart, as four floats (each
 * block has at least 4 bytes, so the dword loads stay inside it). */
static inline __m128 halves_4(const uint8_t *p, size_t stride)
{
    __m128i v01 = _mm_unpacklo_epi16(_mm_cvtsi32_si128((int)load_u32(p)), _mm_cvtsi32_si128((int)load_u32(p + stride)));
    __m128i v23 = _mm_unpacklo_epi16(_mm_cvtsi32_si128((int)load_u32(p + 2 * stride)),
                                     _mm_cvtsi32_si128((int)load_u32(p + 3 * stride)));
    return _mm_cvtph_ps(_mm_unpacklo_epi32(v01, v23));
}

/* The same for two blocks: [h0, h1, -, -] (lanes 2 and 3 are junk that the
 * callers never read). */
static inline __m128 halves_2(const uint8_t *p, size_t stride)
{
    __m128i h0 = _mm_cvtsi32_si128((int)load_u32(p)), h1 = _mm_cvtsi32_si128((int)load_u32(p + stride));
    return _mm_cvtph_ps(_mm_unpacklo_epi16(h0, h1));
}

/* -k * (sum of each lane's activation bytes in xl and xh): the starting lane
 * values that take an offset of k off every weight quant. */
static inline __m256i neg_offset_sums(__m256i xl, __m256i xh, __m256i k)
{
    __m256i s = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), k, xl), k, xh);
    return _mm256_sub_epi32(_mm256_setzero_si256(), s);
}

/* Block geometry of kind K: bytes, offset of qs, offset of qh (Q5). */
#define KIND_BYTES(K) ((K) == KIND_Q4_1 ? sizeof(exo_block_q4_1) : (K) == KIND_Q5_0 ? sizeof(exo_block_q5_0) \
                       : (K) == KIND_Q5_1 ? sizeof(exo_block_q5_1) : sizeof(exo_block_q4_0))
#define KIND_QS(K) ((K) == KIND_Q4_1 ? offsetof(exo_block_q4_1, qs) : (K) == KIND_Q5_0 ? offsetof(exo_block_q5_0, qs) \
                    : (K) == KIND_Q5_1 ? offsetof(exo_block_q5_1, qs) : offsetof(exo_block_q4_0, qs))
#define KIND_QH(K) ((K) == KIND_Q5_1 ? offsetof(exo_block_q5_1, qh) : offsetof(exo_block_q5_0, qh))

/* The integer dots of four consecutive blocks of one row with their
 * activations (act_quad): s[0] for blocks 0-1, s[1] for blocks 2-3, lanes
 * starting at c0 and c1. The blocks are at w, bs bytes apart, or with P in a
 * packed chunk whose row pairs start at cr and cr + 128. */
EXO_ALWAYS_INLINE void q4_quad_dot(const uint8_t *w, const uint8_t *cr, size_t bs, const __m256i x[4], __m256i c0,
                                   __m256i c1, __m256i s[2], const bool P, const int K)
{
    const size_t qo = KIND_QS(K), ho = KIND_QH(K);
    __m256i q0 = P ? load_256(cr) : load_2x128(w + qo, w + bs + qo);
    __m256i q1 = P ? load_256(cr + 128) : load_2x128(w + 2 * bs + qo, w + 3 * bs + qo);
    __mmask32 hl0 = 0, hh0 = 0, hl1 = 0, hh1 = 0;
    if (K == KIND_Q5_0 || K == KIND_Q5_1) {
        q5_pair_masks(w + ho, w + bs + ho, &hl0, &hh0);
        q5_pair_masks(w + 2 * bs + ho, w + 3 * bs + ho, &hl1, &hh1);
    }
    s[0] = q4_pair_dot(c0, q0, x[0], x[1], hl0, hh0, K);
    s[1] = q4_pair_dot(c1, q1, x[2], x[3], hl1, hh1, K);
}

/* ---- Q4_1, Q5_1: x = q * d + m ---------------------------------------------- */

/* R rows (1 or 4) of Q4_1 or Q5_1 at w0, w0 + stride, ... against one
 * activation row; or, with P, the packed group of four Q4_1 rows at w0
 * (quants.h: a chunk of cb blocks starting at block i begins at byte
 * 4 * i * 20 and holds 2-block pairs of quants, 32 bytes a row, then each
 * row's [d m] for its blocks). The arithmetic is the same either way: only
 * the loads differ. Per four blocks: p = [dw0*da0, mw0*s0, dw1*da1, mw1*s1,
 * ...] from one cvtph; its even lanes, spread over each block's lanes, scale
 * the integer dots, and its odd lanes (the minimum terms) sum on the side in
 * accm. */
EXO_ALWAYS_INLINE void q4_1_rows(int n, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, float *out,
                                 const int R, const bool P, const int K)
{
    const size_t bs = KIND_BYTES(K), qo = KIND_QS(K), ho = KIND_QH(K);
    const bool HI = K == KIND_Q5_1;
    const int nb = n / EXO_QK;
    const __m256i sp0 = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), sp1 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc0[4], acc1[4], accm[4];
    float tail[4];
    FOR_ROWS(r, R) {
        acc0[r] = acc1[r] = accm[r] = _mm256_setzero_ps();
        tail[r] = 0.0f;
    }
    uintptr_t pf = (uintptr_t)w0 + PREFETCH_GROUPS * R * stride;
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        if (R == 4 && !P) prefetch_lines(&pf, 5); /* 4 rows x 4 blocks x 20 bytes */
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) prefetch_ahead(c, 5);
        __m256i x[4];
        act_quad(a + i, x);
        const __m256 ads = act_quad_ds(a + i);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            __m128i dm = P ? _mm_loadu_si128((const __m128i *)(c + 256 + 16 * r)) : dwords_4(w, bs);
            __m256 p = _mm256_mul_ps(_mm256_cvtph_ps(dm), ads);
            accm[r] = _mm256_add_ps(accm[r], p);
            __m256i s[2];
            q4_quad_dot(w, c + 32 * r, bs, x, zero, zero, s, P, K);
            acc0[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(p, sp0), _mm256_cvtepi32_ps(s[0]), acc0[r]);
            acc1[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(p, sp1), _mm256_cvtepi32_ps(s[1]), acc1[r]);
        }
    }
    if (i + 2 <= nb) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        const __m256i xl = load_2x128(a[i].qs, a[i + 1].qs), xh = load_2x128(a[i].qs + 16, a[i + 1].qs + 16);
        const __m128 ads = act_pair_ds(a + i);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            __m128i h = P ? _mm_loadl_epi64((const __m128i *)(c + 128 + 8 * r))
                          : _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(w)), _mm_cvtsi32_si128((int)load_u32(w + bs)));
            __m256 p = _mm256_zextps128_ps256(_mm_mul_ps(_mm_cvtph_ps(h), ads));
            accm[r] = _mm256_add_ps(accm[r], p);
            __mmask32 hl = 0, hh = 0;
            if (HI) q5_pair_masks(w + ho, w + bs + ho, &hl, &hh);
            __m256i s = q4_pair_dot(zero, P ? load_256(c + 32 * r) : load_2x128(w + qo, w + bs + qo), xl, xh, hl, hh, K);
            acc0[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(p, sp0), _mm256_cvtepi32_ps(s), acc0[r]);
        }
        i += 2;
    }
    if (i < nb) {
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        const __m256i x = _mm256_loadu_si256((const __m256i *)a[i].qs);
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            exo_half dm[2];
            memcpy(dm, P ? c + 64 + 4 * r : w, sizeof dm);
            __m256i q = q4_widen(q4_unpack(P ? c + 16 * r : w + qo), HI ? load_u32(w + ho) : 0, K);
            __m256i s = _mm256_dpbusd_epi32(zero, q, x);
            acc1[r] = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(dm[0]) * a[i].d), _mm256_cvtepi32_ps(s), acc1[r]);
            tail[r] = half_to_float(dm[1]) * a[i].s;
        }
    }
    __m256 u[4];
    FOR_ROWS(r, R)
        u[r] = _mm256_add_ps(_mm256_add_ps(acc0[r], acc1[r]), _mm256_blend_ps(_mm256_setzero_ps(), accm[r], 0xaa));
    reduce_rows(u, out, R);
    FOR_ROWS(r, R) out[r] += tail[r];
}

void exo__vec_dot_x4_q4_1_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out)
{
    q4_1_rows(n, w_rows, row_stride, act_row, out, 4, false, KIND_Q4_1);
}

void exo__vec_dot_packed_q4_1_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const size_t group_bytes = (size_t)(n / EXO_QK) * 4 * sizeof(exo_block_q4_1);
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes)
        q4_1_rows(n, g, 0, act_row, out + 4 * k, 4, true, KIND_Q4_1);
}

/* ---- Q4_0, Q5_0, IQ4_NL: x = (q - 8) * d, (q - 16) * d, d * values[q] -------- */

/* These follow the per-block order (quants.c; quants_blocks.h): each block's
 * integer sum exact in int32 lanes, eight blocks' sums as one vector, the
 * offset (8, 16, or IQ4_NL's 128) taken off as one vector of
 * -offset * sum(x) per block (shared by the rows), then one convert,
 * multiply and FMA for the eight blocks. */
#define KIND_OFFSET(K) ((char)((K) == KIND_Q5_0 ? 16 : (K) == KIND_IQ4_NL ? 128 : 8))

/* Eight fp16 scales, four blocks stride bytes apart twice. */
static inline __m256 halves_8(const uint8_t *p, size_t stride)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(halves_4(p, stride)), halves_4(p + 4 * stride, stride), 1);
}

/* Row r's eight d's of two consecutive packed four-block chunks (at c and
 * c + chunk bytes, each holding the rows' four d's at scales + 8 r). */
static inline __m256 packed_d8(const uint8_t *c, size_t chunk, size_t scales, int r)
{
    const __m128i lo = _mm_loadl_epi64((const __m128i *)(c + scales + 8 * r));
    const __m128i hi = _mm_loadl_epi64((const __m128i *)(c + chunk + scales + 8 * r));
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(lo, hi));
}

/* -offset * (each block's activation quants summed) for the eight blocks
 * whose pairs are x[2 k], x[2 k + 1] (act_quad's layout), in block order. */
static inline __m256i q4_0_offsets(const __m256i x[8], __m256i offset)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i s[4];
    for (int k = 0; k < 4; k++) s[k] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, offset, x[2 * k]), offset, x[2 * k + 1]);
    return _mm256_sub_epi32(zero, exo_pair_block_sums(s[0], s[1], s[2], s[3]));
}

/* -128 * (each block's activation quants summed), blocks 0..7 (x[k] block k's quants). */
static inline __m256i q8_0_offsets(const __m256i x[8])
{
    const __m256i bias = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256i s[8];
    for (int k = 0; k < 8; k++) s[k] = _mm256_dpbusd_epi32(zero, bias, x[k]);
    return _mm256_sub_epi32(zero, exo_single_block_sums(s));
}

/* An eight-block step's activation terms that every row shares: the
 * blocks' offset terms and d's. The packed kernels compute them once a call
 * for all of its groups (a decode step's range of rows), not once a group. */
typedef struct {
    __m256i off;
    __m256 da;
} step_act;

/* The last M = nb - i (1..7, a constant) blocks of rows r0 .. r0 + R - 1
 * into the rows' chains, as an eight-block step whose missing blocks have
 * zero activations and scales (fma(0, 0, c) leaves a chain as it is). With
 * P they lie as the packed layout has them: a four-block chunk if M >= 4,
 * then a pair chunk, then a single block. Shared with the four-token
 * kernel, so that both add the same terms in the same order. M is a
 * constant so that every vector stays in a register (building them through
 * memory stalled store forwarding: 576-wide rows ran at half speed). */
EXO_ALWAYS_INLINE void q4_0_tail_m(int i, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, __m256 *acc,
                                   const int R, const int r0, const bool P, const int K, const step_act *pt,
                                   const int M)
{
    const size_t bs = KIND_BYTES(K), qo = KIND_QS(K), ho = KIND_QH(K);
    const bool HI = K == KIND_Q5_0;
    const int quads = M >= 4 ? 1 : 0;
    const __m256i zero = _mm256_setzero_si256();
    __m256i x[8];
    for (int p = 0; p < 4; p++) {
        const exo_block_q8_32 *b = a + i + 2 * p;
        if (2 * p + 1 < M) {
            x[2 * p] = load_2x128(b[0].qs, b[1].qs);
            x[2 * p + 1] = load_2x128(b[0].qs + 16, b[1].qs + 16);
        } else if (2 * p < M) {
            x[2 * p] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)b[0].qs));
            x[2 * p + 1] = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(b[0].qs + 16)));
        } else {
            x[2 * p] = x[2 * p + 1] = zero;
        }
    }
    const __m256 da = pt ? pt->da : exo_tail_da(a + i, M);
    const __m256i off = pt ? pt->off : q4_0_offsets(x, _mm256_set1_epi8(KIND_OFFSET(K)));
    FOR_ROWS(r, R) {
        const int rr = r0 + r;
        __m256i s[4];
        const uint8_t *dp[8] = { 0 };
        for (int p = 0; p < 4; p++) {
            const int k = 2 * p, nbk = M - k >= 2 ? 2 : M - k; /* blocks in this pair */
            if (nbk <= 0) {
                s[p] = zero;
                continue;
            }
            const uint8_t *w = w0 + (size_t)rr * stride + (size_t)(i + k) * bs;
            const bool in_quad = p < 2 * quads;
            /* the packed chunk holding this pair, and where the row's quants and d's lie in it */
            const uint8_t *c = w0 + (size_t)(in_quad ? i : i + k) * 4 * bs;
            const uint8_t *qp = P ? (in_quad ? c + 128 * p + 32 * rr : nbk == 2 ? c + 32 * rr : c + 16 * rr) : w + qo;
            dp[k] = P ? (in_quad ? c + 256 + 8 * rr + 2 * k : nbk == 2 ? c + 128 + 4 * rr : c + 64 + 2 * rr) : w;
            if (nbk == 2) dp[k + 1] = P ? dp[k] + 2 : w + bs;
            __m256i q;
            if (nbk == 2) q = P ? load_256(qp) : load_2x128(qp, qp + bs);
            else q = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)qp));
            __mmask32 hl = 0, hh = 0;
            if (HI) q5_pair_masks(w + ho, w + (nbk == 2 ? bs : 0) + ho, &hl, &hh);
            s[p] = q4_pair_dot(zero, q, x[k], x[k + 1], hl, hh, K);
        }
        const __m256 d = exo_tail_dw(dp, M);
        acc[r] = exo_chains_step(acc[r], d, da, _mm256_add_epi32(exo_pair_block_sums(s[0], s[1], s[2], s[3]), off));
    }
}

/* pt: the tail's step_act computed once a call (tail_act), or NULL. */
EXO_ALWAYS_INLINE void q4_0_tail(int nb, int i, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a,
                                 __m256 *acc, const int R, const int r0, const bool P, const int K, const step_act *pt)
{
    EXO_TAIL_SWITCH(nb - i, q4_0_tail_m, i, w0, stride, a, acc, R, r0, P, K, pt)
}

/* The step_act of a row's last m (1..7) blocks, zeros past m, once a call
 * (its loops need no constant m: it runs once, not once a group). */
static step_act tail_act(const exo_block_q8_32 *a, int m, bool q4)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i x[8];
    float dav[8];
    for (int k = 0; k < 8; k++) {
        dav[k] = k < m ? a[k].d : 0.0f;
        if (!q4) x[k] = k < m ? _mm256_loadu_si256((const __m256i *)a[k].qs) : zero;
    }
    if (q4)
        for (int p = 0; p < 4; p++) {
            const int nbk = m - 2 * p >= 2 ? 2 : m - 2 * p;
            const exo_block_q8_32 *b = a + 2 * p;
            x[2 * p] = nbk == 2 ? load_2x128(b[0].qs, b[1].qs)
                     : nbk == 1 ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)b[0].qs)) : zero;
            x[2 * p + 1] = nbk == 2 ? load_2x128(b[0].qs + 16, b[1].qs + 16)
                         : nbk == 1 ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(b[0].qs + 16))) : zero;
        }
    return (step_act){ q4 ? q4_0_offsets(x, _mm256_set1_epi8(8)) : q8_0_offsets(x), _mm256_loadu_ps(dav) };
}

/* R rows (1 or 4) of a Q4_0-like format at w0, w0 + stride, ..., or with P
 * the packed group of four Q4_0 rows at w0 (quants.h: four-block chunks of
 * the rows' quant pairs, then each row's d's), against one activation row:
 * eight blocks (two chunks) a step. */
EXO_ALWAYS_INLINE void q4_0_rows(int n, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, float *out,
                                 const int R, const bool P, const int K, const step_act *pre)
{
    const size_t bs = KIND_BYTES(K);
    const int nb = n / EXO_QK;
    const __m256i offset = _mm256_set1_epi8(KIND_OFFSET(K)), zero = _mm256_setzero_si256();
    __m256 acc[4];
    FOR_ROWS(r, R) acc[r] = _mm256_setzero_ps();
    uintptr_t pf = (uintptr_t)w0 + PREFETCH_GROUPS * R * stride;
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        if (R == 4 && !P) prefetch_lines(&pf, 9); /* 4 x 8 x 18 = 576 bytes */
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) prefetch_ahead(c, 9);
        __m256i x[8];
        act_quad(a + i, x);
        act_quad(a + i + 4, x + 4);
        const __m256i off = pre ? pre[i / 8].off : q4_0_offsets(x, offset);
        const __m256 da = pre ? pre[i / 8].da : exo_act_d8(a + i);
        /* The loads in address order (as q8_0_rows): packed, pair by pair with the rows side by
         * side, else row by row. Then each row's block sums. */
        __m256i s[4][4];
        if (P)
            for (int k = 0; k < 4; k++)
                FOR_ROWS(r, R) s[r][k] = q4_pair_dot(zero, load_256(c + (k / 2) * 16 * bs + 128 * (k % 2) + 32 * r),
                                                     x[2 * k], x[2 * k + 1], 0, 0, K);
        else
            FOR_ROWS(r, R) {
                const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
                q4_quad_dot(w, c, bs, x, zero, zero, s[r], false, K);
                q4_quad_dot(w + 4 * bs, c, bs, x + 4, zero, zero, s[r] + 2, false, K);
            }
        FOR_ROWS(r, R) {
            const uint8_t *w = w0 + (size_t)r * stride + (size_t)i * bs;
            const __m256 d = P ? packed_d8(c, 16 * bs, 256, r) : halves_8(w, bs);
            acc[r] = exo_chains_step(acc[r], d, da,
                                     _mm256_add_epi32(exo_pair_block_sums(s[r][0], s[r][1], s[r][2], s[r][3]), off));
        }
    }
    if (i < nb) q4_0_tail(nb, i, w0, stride, a, acc, R, 0, P, K, pre ? &pre[nb / 8] : NULL);
    reduce_rows(acc, out, R);
}

void exo__vec_dot_x4_q4_0_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out)
{
    q4_0_rows(n, w_rows, row_stride, act_row, out, 4, false, KIND_Q4_0, NULL);
}

void exo__vec_dot_packed_q4_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const size_t group_bytes = (size_t)(n / EXO_QK) * 4 * sizeof(exo_block_q4_0);
    const exo_block_q8_32 *a = act_row;
    step_act pre[n / (8 * EXO_QK) + 1];
    for (int q = 0; q < n / (8 * EXO_QK); q++) {
        __m256i x[8];
        act_quad(a + 8 * q, x);
        act_quad(a + 8 * q + 4, x + 4);
        pre[q] = (step_act){ q4_0_offsets(x, _mm256_set1_epi8(8)), exo_act_d8(a + 8 * q) };
    }
    if (n / EXO_QK % 8) pre[n / (8 * EXO_QK)] = tail_act(a + n / (8 * EXO_QK) * 8, n / EXO_QK % 8, true);
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes)
        q4_0_rows(n, g, 0, act_row, out + 4 * k, 4, true, KIND_Q4_0, pre);
}

/* The one-row dots of the 4-bit bodies, one per format. */
#define Q4_ONE_ROW(fmt, body, kind, ...)                                                \
    float exo__vec_dot_##fmt##_q8_32_avx512(int n, const void *w_row, const void *act_row) \
    {                                                                                   \
        float out;                                                                      \
        body(n, w_row, 0, act_row, &out, 1, false, kind __VA_ARGS__);                   \
        return out;                                                                     \
    }
Q4_ONE_ROW(q4_0, q4_0_rows, KIND_Q4_0, , NULL)
Q4_ONE_ROW(q4_1, q4_1_rows, KIND_Q4_1)
Q4_ONE_ROW(q5_0, q4_0_rows, KIND_Q5_0, , NULL)
Q4_ONE_ROW(q5_1, q4_1_rows, KIND_Q5_1)
Q4_ONE_ROW(iq4_nl, q4_0_rows, KIND_IQ4_NL, , NULL)
#undef Q4_ONE_ROW

/* ---- Q8_0: x = q * d ------------------------------------------------------ */


/* One block's 8 int32 lanes of w ^ 0x80 times x (the offset comes off later). */
static inline __m256i q8_0_block_dot(const void *q, __m256i x)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_xor_si256(load_256(q), _mm256_set1_epi8((char)0x80)), x);
}

/* The last M (1..7, a constant) blocks of q8_0_rows as an eight-block step
 * with zeros past M (as q4_0_tail_m); packed: a four-block chunk if M >= 4,
 * then single blocks. */
EXO_ALWAYS_INLINE void q8_0_tail_m(int i, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, __m256 *acc,
                                   const int R, const bool P, const step_act *pt, const int M)
{
    const size_t bs = sizeof(exo_block_q8_0);
    const __m256i zero = _mm256_setzero_si256();
    __m256i x[8];
    for (int k = 0; k < 8; k++) x[k] = k < M ? _mm256_loadu_si256((const __m256i *)a[i + k].qs) : zero;
    const __m256 da = pt ? pt->da : exo_tail_da(a + i, M);
    const __m256i off = pt ? pt->off : q8_0_offsets(x);
    __m256i v[4][8];
    const uint8_t *dp[4][8] = { { 0 } };
    for (int k = 0; k < 8; k++) /* block by block, the rows side by side: address order when packed */
        FOR_ROWS(r, R) {
            if (k >= M) {
                v[r][k] = zero;
                continue;
            }
            const bool quad = M >= 4 && k < 4;
            const uint8_t *c = w0 + (size_t)(quad ? i : i + k) * 4 * bs;
            const exo_block_q8_0 *w = (const exo_block_q8_0 *)(w0 + (size_t)r * stride) + i + k;
            const uint8_t *q = P ? (quad ? c + 128 * k + 32 * r : c + 32 * r) : (const uint8_t *)w->qs;
            dp[r][k] = P ? (quad ? c + 512 + 8 * r + 2 * k : c + 128 + 2 * r) : (const uint8_t *)w;
            v[r][k] = q8_0_block_dot(q, x[k]);
        }
    FOR_ROWS(r, R) acc[r] = exo_chains_step(acc[r], exo_tail_dw(dp[r], M), da, _mm256_add_epi32(exo_single_block_sums(v[r]), off));
}

/* One block per register (32 quants, 8 lanes); w ^ 0x80 makes the weights
 * unsigned, and -128 * sum(x) per block (shared by the rows) takes the 128
 * back out of the eight blocks' sums (the per-block order, quants_blocks.h).
 * Packed (P) chunks hold, block by block, the four rows' 32 quants, then
 * each row's d's; past the last four-block chunk, single blocks. From the
 * file's layout, quants.c dispatches the four-row kernel only for batches:
 * it was 1.5x faster on rows in L2 but slower streaming from DRAM, where
 * Q8_0 matrices (the output head) live; the packed layout, one stream,
 * beats both (bench_quants shows all three). */
EXO_ALWAYS_INLINE void q8_0_rows(int n, const uint8_t *w0, size_t stride, const exo_block_q8_32 *a, float *out,
                                 const int R, const bool P, const step_act *pre)
{
    const size_t bs = sizeof(exo_block_q8_0);
    const int nb = n / EXO_QK;
    __m256 acc[4];
    FOR_ROWS(r, R) acc[r] = _mm256_setzero_ps();
    uintptr_t pf = (uintptr_t)w0 + PREFETCH_GROUPS * R * stride;
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        if (R == 4 && !P) prefetch_lines(&pf, 17); /* 4 x 8 x 34 = 1088 bytes */
        const uint8_t *c = w0 + (size_t)i * 4 * bs;
        if (P) prefetch_ahead(c, 17);
        __m256i x[8];
        for (int k = 0; k < 8; k++) x[k] = _mm256_loadu_si256((const __m256i *)a[i + k].qs);
        const __m256i off = pre ? pre[i / 8].off : q8_0_offsets(x);
        const __m256 da = pre ? pre[i / 8].da : exo_act_d8(a + i);
        /* The loads in address order: packed, block by block with the rows side by side (the
         * layout's order; row by row, the packed kernel streamed from DRAM at 0.8x), else row by
         * row. Then each row's block sums. */
        __m256i v[4][8];
        if (P)
            for (int k = 0; k < 8; k++)
                FOR_ROWS(r, R) v[r][k] = q8_0_block_dot(c + (k / 4) * 16 * bs + 128 * (k % 4) + 32 * r, x[k]);
        else
            FOR_ROWS(r, R) {
                const exo_block_q8_0 *w = (const exo_block_q8_0 *)(w0 + (size_t)r * stride) + i;
                for (int k = 0; k < 8; k++) v[r][k] = q8_0_block_dot(w[k].qs, x[k]);
            }
        FOR_ROWS(r, R) {
            const exo_block_q8_0 *w = (const exo_block_q8_0 *)(w0 + (size_t)r * stride) + i;
            const __m256 d = P ? packed_d8(c, 16 * bs, 512, r) : halves_8((const uint8_t *)w, bs);
            acc[r] = exo_chains_step(acc[r], d, da, _mm256_add_epi32(exo_single_block_sums(v[r]), off));
        }
    }
    const step_act *pt = pre ? &pre[nb / 8] : NULL;
    EXO_TAIL_SWITCH(nb - i, q8_0_tail_m, i, w0, stride, a, acc, R, P, pt) /* the last blocks */
    reduce_rows(acc, out, R);
}

float exo__vec_dot_q8_0_q8_32_avx512(int n, const void *w_row, const void *act_row)
{
    float out;
    q8_0_rows(n, w_row, 0, act_row, &out, 1, false, NULL);
    return out;
}

void exo__vec_dot_x4_q8_0_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out)
{
    q8_0_rows(n, w_rows, row_stride, act_row, out, 4, false, NULL);
}

void exo__vec_dot_packed_q8_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out)
{
    const size_t group_bytes = (size_t)(n / EXO_QK) * 4 * sizeof(exo_block_q8_0);
    const exo_block_q8_32 *a = act_row;
    step_act pre[n / (8 * EXO_QK) + 1];
    for (int q = 0; q < n / (8 * EXO_QK); q++) {
        __m256i x[8];
        for (int k = 0; k < 8; k++) x[k] = _mm256_loadu_si256((const __m256i *)a[8 * q + k].qs);
        pre[q] = (step_act){ q8_0_offsets(x), exo_act_d8(a + 8 * q) };
    }
    if (n / EXO_QK % 8) pre[n / (8 * EXO_QK)] = tail_act(a + n / (8 * EXO_QK) * 8, n / EXO_QK % 8, false);
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes) q8_0_rows(n, g, 0, act_row, out + 4 * k, 4, true, pre);
}

/* ---- four tokens per pass over a packed group (a prompt's batch) ---------- */

/* Eight-block steps per pass over the four rows of a group in the
 * four-token kernel: the steps' activations for four tokens (5 KiB) stay in
 * L1 while each row of the group reads them. */
#define T4_STEPS 4

/* What q4_0_rows computes from one token's activations at an eight-block
 * step before it meets a row, computed once a call for every row: x as two
 * act_quads, the blocks' offset terms, their d's. */
typedef struct {
    __m256i x[8];
    __m256i off;
    __m256 da;
} q4_0_t4_step;

/* Row r of the eight-block step at c (two packed chunks) against the four
 * tokens' step activations, into their chains: the quants are unpacked and
 * the row's d's converted once for the four tokens, then q4_0_rows's
 * integer sums and its one chain step per token. */
static inline void q4_0_t4_step_row(const uint8_t *c, int r, const q4_0_t4_step *x, __m256 acc[4])
{
    const size_t bs = sizeof(exo_block_q4_0);
    const __m256i low4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const __m256 d = packed_d8(c, 16 * bs, 256, r);
    __m256i l[4], h[4];
    for (int k = 0; k < 4; k++) {
        const __m256i wk = load_256(c + (size_t)(k / 2) * 16 * bs + 128 * (k % 2) + 32 * r);
        l[k] = _mm256_and_si256(wk, low4);
        h[k] = _mm256_and_si256(_mm256_srli_epi16(wk, 4), low4);
    }
    for (int t = 0; t < 4; t++) {
        __m256i s[4];
        for (int k = 0; k < 4; k++)
            s[k] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, l[k], x[t].x[2 * k]), h[k], x[t].x[2 * k + 1]);
        acc[t] = exo_chains_step(acc[t], d, x[t].da, _mm256_add_epi32(exo_pair_block_sums(s[0], s[1], s[2], s[3]), x[t].off));
    }
}

/* Q4_0: n_groups packed groups against four tokens, bit for bit q4_0_rows
 * per token (the same integer sums and float operations per row and token,
 * then the same tail and reduction). In a batch the per-token packed kernel
 * spends as much on unpacking a row's nibbles and spreading its scales as on
 * the dots; here that is done once for four tokens. The tokens' step
 * activations are prepared once a call, on the stack: 320 bytes a token and
 * eight-block step, 40 KiB for a 8192-wide row. (Q8_0 has little to unpack,
 * and its four-token version measured no faster than the packed kernel per
 * token: it has none. Prompts of 32 tokens and more take the tiled GEMMs.) */
void exo__vec_dot_packed_t4_q4_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                              size_t act_stride, float *out, size_t ldo)
{
    const size_t bs = sizeof(exo_block_q4_0), group_bytes = (size_t)(n / EXO_QK) * 4 * bs;
    const int nb = n / EXO_QK, nq = nb / 8;
    const __m256i offset = _mm256_set1_epi8(8);
    const exo_block_q8_32 *a[4];
    q4_0_t4_step st[4 * (size_t)nq + 1]; /* token t's step q at st[4 q + t] */
    for (int t = 0; t < 4; t++) {
        a[t] = (const exo_block_q8_32 *)((const uint8_t *)act_rows + (size_t)t * act_stride);
        for (int q = 0; q < nq; q++) {
            q4_0_t4_step *s = &st[4 * q + t];
            act_quad(a[t] + 8 * q, s->x);
            act_quad(a[t] + 8 * q + 4, s->x + 4);
            s->off = q4_0_offsets(s->x, offset);
            s->da = exo_act_d8(a[t] + 8 * q);
        }
    }
    const uint8_t *g = groups;
    for (int64_t k = 0; k < n_groups; k++, g += group_bytes) {
        __m256 acc[4][4]; /* [row][token] */
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++) acc[r][t] = _mm256_setzero_ps();
        for (int q0 = 0; q0 < nq; q0 += T4_STEPS) {
            const int q1 = q0 + T4_STEPS < nq ? q0 + T4_STEPS : nq;
            for (int r = 0; r < 4; r++)
                for (int q = q0; q < q1; q++) {
                    const uint8_t *c = g + (size_t)q * 32 * bs;
                    if (r == 0) prefetch_ahead(c, 9);
                    q4_0_t4_step_row(c, r, &st[4 * q], acc[r]);
                }
        }
        for (int t = 0; t < 4; t++) {
            __m256 u[4];
            for (int r = 0; r < 4; r++) {
                if (nb > 8 * nq) q4_0_tail(nb, 8 * nq, g, 0, a[t], &acc[r][t], 1, r, true, KIND_Q4_0, NULL);
                u[r] = acc[r][t];
            }
            reduce_rows(u, out + (size_t)t * ldo + 4 * k, 4);
        }
    }
}

/* Q4_K, Q5_K and Q6_K: quants_k_rows.h (the AVX2 code, with 32 registers). */
KROWS_KERNELS(q4_K, avx512)
KROWS_KERNELS(q5_K, avx512)
KROWS_KERNELS(q6_K, avx512)
