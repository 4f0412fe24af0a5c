/* vec_avx2.h: the AVX2/FMA versions of vec.h's helpers (internal).
 *
 * vec_avx2.c is built with -mavx2 -mfma -mf16c; vec.c names these only in
 * the table exo__vec_init() picks after seeing the CPU support them.
 * Contracts as in vec.h. */
#ifndef EXO_VEC_AVX2_H
#define EXO_VEC_AVX2_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
void exo__vec_f16_dots_avx2(int n, const float *q, const uint16_t *k, size_t k_stride, int count, float *out);
void exo__vec_f16_dots_heads_avx2(int n, int nq, const float *q, size_t q_stride, const uint16_t *k,
                                  size_t k_stride, int count, float *out, size_t out_stride);
void exo__vec_f16_wsum_heads_avx2(int n, int nq, const float *w, size_t w_stride, const uint16_t *v,
                                  size_t v_stride, int count, float *out, size_t out_stride);
void exo__vec_f16_wsum_heads_more_avx2(int n, int nq, const float *w, size_t w_stride, const uint16_t *v,
                                       size_t v_stride, int count, float *out, size_t out_stride);
void exo__vec_f16_from_f32_avx2(int n, const float *x, uint16_t *y);
void exo__vec_f32_swiglu_avx2(int n, const float *gate, const float *up, float *out);
float exo__vec_f32_softmax_avx2(int n, float scale, float *x);
#endif

#endif
