/* quants_avx2.h: the AVX2/FMA/F16C kernels (internal).
 *
 * quants_avx2.c is the only file built with -mavx2 -mfma -mf16c; quants.c is
 * built without them and names these functions only in the tables
 * exo__quants_init() picks after seeing the CPU support all three (or in
 * exo__quants_kernels(), whose callers check the CPU). Contracts are the ones
 * of the matching _ref kernels in quants.c (see quants.h). */
#ifndef EXO_QUANTS_AVX2_H
#define EXO_QUANTS_AVX2_H

#include <stddef.h>
#include <stdint.h>

#include "quants_impl.h"

#if EXO_QUANTS_X86
float exo__vec_dot_q4_0_q8_32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q4_1_q8_32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q8_0_q8_32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_0_q8_32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_1_q8_32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_iq4_nl_q8_32_avx2(int n, const void *w_row, const void *act_row);
/* The 4-bit products over a packed group of four rows (quants.h), bit for
 * bit what the one-row kernels above give on each row. (Q8_0 has none on
 * AVX2: packed it measured no faster, 27.5 against 27.4 GB/s in cache.) */
void exo__vec_dot_packed_q4_0_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_q4_1_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
float exo__vec_dot_q4_K_q8_K_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_K_q8_K_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q6_K_q8_K_avx2(int n, const void *w_row, const void *act_row);
/* Q4_K, Q5_K and Q6_K over a packed group of four rows (quants.h), bit for bit the
 * one-row results (quants_k_rows.h). */
void exo__vec_dot_packed_q4_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q4_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
void exo__vec_dot_packed_q5_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q5_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
void exo__vec_dot_packed_q6_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q6_K_q8_K_avx2(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
float exo__vec_dot_q2_K_q8_K_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q3_K_q8_K_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_iq4_xs_q8_K_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_f32_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_f16_avx2(int n, const void *w_row, const void *act_row);
float exo__vec_dot_bf16_avx2(int n, const void *w_row, const void *act_row);

void exo__to_float_q4_0_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q4_1_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q8_0_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q5_0_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q5_1_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_iq4_nl_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q2_K_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_q3_K_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_iq4_xs_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_f16_avx2(const void *src, float *dst, int64_t n);
void exo__to_float_bf16_avx2(const void *src, float *dst, int64_t n);

void exo__quantize_act_q8_32_avx2(const float *x, void *dst, int n);
void exo__quantize_act_q8_K_avx2(const float *x, void *dst, int n);
#endif

#endif
