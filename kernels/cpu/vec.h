/* vec.h: f32 vector helpers for the CPU backend's attention (dot products
 * over the KV cache, weighted sums of values) and its SwiGLU.
 *
 * Each helper has a plain scalar _ref version and, on x86 with AVX2/FMA, a
 * fast one; exo__vec_init() picks once (exo__quants_init() calls it, so the
 * backend needs no extra call). Before init, and with EXO_FORCE_SCALAR=1 in
 * the environment, the _ref versions run. The fast versions sum in a
 * different order, so results differ from _ref by float rounding. */
#ifndef EXO_VEC_H
#define EXO_VEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Detects CPU features once and picks the fast helpers; safe to call many times. */
void exo__vec_init(void);

/* Whether the AVX2/FMA helpers were chosen. */
bool exo__vec_have_avx2(void);

/* Attention's two loops over the f16 KV cache (IEEE half bits), one call
 * each, so the query and the output row stay in registers across keys:
 * out[p] = sum of q[i] * k[p * k_stride + i] over i < n, for p < count (the
 * scores of one query against count keys k_stride halves apart), and
 * out[i] = sum of w[p] * v[p * v_stride + i] over p < count, for i < n (a
 * weighted sum of count value rows; out is overwritten, and is 0 when count
 * is 0). Keys and values are widened to f32; products and sums are f32. out
 * must not overlap the inputs. */
void exo__vec_dots_f16(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out);
void exo__vec_wsum_f16(int n, const float *w, const uint16_t *v, size_t v_stride, int count, float *out);

/* The same two loops for nq query heads that share one KV head (grouped-
 * query attention): for each head g < nq, exactly what dots (wsum) gives for
 * q + g * q_stride (w + g * w_stride) into out + g * out_stride, bit for bit,
 * whatever nq is; but the keys and values are taken in blocks of
 * EXO_VEC_KEY_BLOCK positions, each block read from memory once (the AVX2
 * versions widen it to f32 once, with prefetch, and every head reads the
 * floats), instead of the whole cache once per head.
 * wsum_heads's out rows must not overlap each other or the inputs. */
#define EXO_VEC_KEY_BLOCK 64
void exo__vec_dots_f16_heads(int n, int nq, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                             int count, float *out, size_t out_stride);
void exo__vec_wsum_f16_heads(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                             int count, float *out, size_t out_stride);

/* wsum_heads over more keys: each head's chains go on from what out holds
 * (wsum_heads's or this function's result over the keys before these), so
 * a run of keys taken in pieces gives the bits of one call over all of them
 * (a paged KV cache's blocks). n must be a multiple of 64: past the last 64
 * lanes the AVX2 version keeps two chains per lane, which out cannot hold. */
#define EXO_VEC_WSUM_MORE_LANES 64
void exo__vec_wsum_f16_heads_more(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                                  int count, float *out, size_t out_stride);

/* y[i] = x[i] rounded to f16 (nearest even; overflow gives infinity). */
void exo__vec_f16_from_f32(int n, const float *x, uint16_t *y);

/* out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i];
 * out may be gate or up. The fast version's exp agrees with expf (vec_avx2.c). */
void exo__vec_swiglu_f32(int n, const float *gate, const float *up, float *out);

/* Attention's softmax numerator, in place: x[i] = expf(scale * x[i] - m)
 * with m = max of scale * x[i]; returns the sum of the new x[i] (n >= 1).
 * Every version gives the same bits: libm's expf of each x[i] (vec.c says
 * why), summed in order. */
float exo__vec_softmax_f32(int n, float scale, float *x);

void exo__vec_swiglu_f32_ref(int n, const float *gate, const float *up, float *out);
void exo__vec_dots_f16_ref(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out);
void exo__vec_wsum_f16_ref(int n, const float *w, const uint16_t *v, size_t v_stride, int count, float *out);
void exo__vec_wsum_f16_heads_ref(int n, int nq, const float *w, size_t w_stride, const uint16_t *v, size_t v_stride,
                                 int count, float *out, size_t out_stride);
void exo__vec_f16_from_f32_ref(int n, const float *x, uint16_t *y);
float exo__vec_softmax_f32_ref(int n, float scale, float *x);

#endif
