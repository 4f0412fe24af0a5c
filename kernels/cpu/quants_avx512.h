/* quants_avx512.h: the AVX-512 VNNI kernels (internal).
 *
 * quants_avx512.c is the only file built with -mavx512f -mavx512bw
 * -mavx512vl -mavx512vnni (plus the AVX2 set); quants.c names these only in
 * the table exo__quants_init() picks after seeing the CPU support all of them
 * (or in exo__quants_kernels(), whose callers check the CPU). The one-row
 * dots have the contracts of the matching _ref kernels in quants.c; the
 * four-row dots are exo_vec_dot_x4_fn (see quants.h). */
#ifndef EXO_QUANTS_AVX512_H
#define EXO_QUANTS_AVX512_H

#include <stddef.h>
#include <stdint.h>

#include "quants_impl.h"

#if EXO_QUANTS_X86
float exo__vec_dot_q4_0_q8_32_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q4_1_q8_32_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q8_0_q8_32_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_0_q8_32_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_1_q8_32_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_iq4_nl_q8_32_avx512(int n, const void *w_row, const void *act_row);

void exo__vec_dot_x4_q4_0_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out);
void exo__vec_dot_x4_q4_1_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out);
void exo__vec_dot_x4_q8_0_q8_32_avx512(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out);

/* The same products over a packed group of four rows (quants.h). */
void exo__vec_dot_packed_q4_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_q4_1_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_q8_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
/* Q4_0's packed dot for four activation rows (a batch): exo_vec_dot_packed_t4_fn. */
void exo__vec_dot_packed_t4_q4_0_q8_32_avx512(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                              size_t act_stride, float *out, size_t ldo);

/* Q4_K, Q5_K and Q6_K, one row and packed: the AVX2 bodies with 32 registers
 * (quants_k_rows.h), bit for bit the AVX2 kernels' results. */
float exo__vec_dot_q4_K_q8_K_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q5_K_q8_K_avx512(int n, const void *w_row, const void *act_row);
float exo__vec_dot_q6_K_q8_K_avx512(int n, const void *w_row, const void *act_row);
void exo__vec_dot_packed_q4_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q4_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
void exo__vec_dot_packed_q5_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q5_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
void exo__vec_dot_packed_q6_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
void exo__vec_dot_packed_t4_q6_K_q8_K_avx512(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);
#endif

#endif
