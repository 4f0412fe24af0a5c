/* dtype.h: the generic facts of every GGUF tensor type (internal).
 *
 * Name, block size and bytes per block for each type number GGUF defines,
 * whether or not exo has kernels for it: the GGUF reader and writer, tensors
 * and the tools size data from this one table, and an error can name a type
 * exo refuses ("IQ2_XXS") instead of giving its number. What to do with the
 * bytes (dequantize, dot, pack) is the CPU kernels' table
 * (kernels/cpu/quants.h); `loadable` here says which types that one has, and
 * test_quants checks that the two agree. */
#ifndef EXO_DTYPE_H
#define EXO_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "exo_defs.h"

typedef struct exo_dtype_info {
    const char *name;    /* GGUF's spelling: "Q4_K", "IQ2_XXS" */
    uint32_t block_size; /* elements per block; 0 for a number GGUF no longer uses */
    uint32_t type_size;  /* bytes per block */
    bool loadable;       /* exo has kernels for it, so a model may hold it */
} exo_dtype_info;

/* The facts of GGUF type number dtype, or NULL for a number GGUF has never
 * defined (a retired number has an entry, with block_size 0). */
const exo_dtype_info *exo__dtype_info_get(int dtype);

/* Bytes of n elements of dtype (n a whole number of blocks), or 0 when the
 * type has no layout (unknown or retired). */
size_t exo__dtype_info_bytes(int dtype, int64_t n);

#endif
