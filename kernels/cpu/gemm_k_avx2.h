/* gemm_k_avx2.h: the tiled int8 GEMM for K-quant prompt batches on AVX2
 * (internal; quants.h's exo_tiled_gemm says what the kernels do).
 *
 * gemm_k_avx2.c is built with the AVX2 flags; quants.c names these only in
 * the AVX2 table (the AVX-512 table layers gemm_k_avx512.c's over them),
 * which exo__quants_init() picks after the CPU check. */
#ifndef EXO_GEMM_K_AVX2_H
#define EXO_GEMM_K_AVX2_H

#include "quants.h"
#include "quants_impl.h"

#if EXO_QUANTS_X86
extern const exo_tiled_gemm exo__tiled_q4_K_avx2;
extern const exo_tiled_gemm exo__tiled_q5_K_avx2;
extern const exo_tiled_gemm exo__tiled_q6_K_avx2;
#endif

#endif
