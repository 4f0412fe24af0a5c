/* gemm_q8_avx512.h: the tiled int8 GEMM for Q4_0 and Q8_0 prompt batches on
 * AVX-512 VNNI (internal; quants.h's exo_tiled_gemm says what the kernels do).
 *
 * gemm_q8_avx512.c is built with the AVX-512 flags; quants.c names these only
 * in the AVX-512 table, which exo__quants_init() picks after the CPU check. */
#ifndef EXO_GEMM_Q8_AVX512_H
#define EXO_GEMM_Q8_AVX512_H

#include "quants.h"
#include "quants_impl.h"

#if EXO_QUANTS_X86
extern const exo_tiled_gemm exo__tiled_q4_0_avx512;
extern const exo_tiled_gemm exo__tiled_q8_0_avx512;
#endif

#endif
