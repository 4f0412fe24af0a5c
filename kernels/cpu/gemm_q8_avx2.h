/* gemm_q8_avx2.h: the tiled int8 GEMM for Q4_0 and Q8_0 prompt batches on
 * AVX2, and Q8_0's packed dot there (internal; quants.h says what they do).
 *
 * gemm_q8_avx2.c is built with the AVX2 flags; quants.c names these only in
 * the AVX2 table (the AVX-512 table layers gemm_q8_avx512.c's over them),
 * which exo__quants_init() picks after the CPU check. */
#ifndef EXO_GEMM_Q8_AVX2_H
#define EXO_GEMM_Q8_AVX2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quants.h"
#include "quants_impl.h"

#if EXO_QUANTS_X86
extern const exo_tiled_gemm exo__tiled_q4_0_avx2;
extern const exo_tiled_gemm exo__tiled_q8_0_avx2;

/* What this file and gemm_q8_avx512.c share (plain C, safe on either CPU).
 * A token group's block: the tokens' 32 quants (token t's at 32 t), their
 * d's at EXO_Q8_TILE_D + 4 t, their starting sums (-offset x the block's
 * quant sum) at EXO_Q8_TILE_C + 4 t; pack_act lays out n_tok tokens so. */
#define EXO_Q8_TILE_D 512
#define EXO_Q8_TILE_C 576
#define EXO_Q8_TILE_BLOCK 640
void exo__q8_tile_pack_act(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile, int offset);
/* Where row r's block b lies in a packed group of blocks of bs bytes (the
 * quants; *d: its fp16 d): quants.h's layout, chunks of four blocks, then,
 * for the 4-bit formats (pairs), a pair, then singles. */
const uint8_t *exo__q8_packed_block(const uint8_t *group, int nb, size_t bs, bool pairs, int r, int b, const uint8_t **d);

void exo__vec_dot_packed_q8_0_q8_32_avx2(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
#endif

#endif
