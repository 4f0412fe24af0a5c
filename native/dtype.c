/* dtype.c: the table of GGUF tensor types (dtype.h).
 *
 * One row per type number of ggml's enum ggml_type, with its block size and
 * bytes per block as ggml's block structs define them (the numbers are fixed
 * by the file format). Retired numbers keep their names, so an old file's
 * error says what it holds. */
#include "dtype.h"

/* Loadable rows: exo has CPU kernels (kernels/cpu/quants.c). */
#define LOADS(name_, block_, bytes_) { name_, block_, bytes_, true }
/* Rows exo can size and name but not run. */
#define NAMED(name_, block_, bytes_) { name_, block_, bytes_, false }
#define RETIRED(name_) { name_, 0, 0, false }

static const exo_dtype_info dtype_table[] = {
    [0] = LOADS("F32", 1, 4),
    [1] = LOADS("F16", 1, 2),
    [2] = LOADS("Q4_0", 32, 18),
    [3] = LOADS("Q4_1", 32, 20),
    [4] = RETIRED("Q4_2 (removed)"),
    [5] = RETIRED("Q4_3 (removed)"),
    [6] = LOADS("Q5_0", 32, 22),
    [7] = LOADS("Q5_1", 32, 24),
    [8] = LOADS("Q8_0", 32, 34),
    [9] = NAMED("Q8_1", 32, 36),
    [10] = LOADS("Q2_K", 256, 84),
    [11] = LOADS("Q3_K", 256, 110),
    [12] = LOADS("Q4_K", 256, 144),
    [13] = LOADS("Q5_K", 256, 176),
    [14] = LOADS("Q6_K", 256, 210),
    /* exo's activation format (kernels/cpu); a model file never stores it */
    [15] = NAMED("Q8_K", 256, 292),
    [16] = NAMED("IQ2_XXS", 256, 66),
    [17] = NAMED("IQ2_XS", 256, 74),
    [18] = NAMED("IQ3_XXS", 256, 98),
    [19] = NAMED("IQ1_S", 256, 50),
    [20] = LOADS("IQ4_NL", 32, 18),
    [21] = NAMED("IQ3_S", 256, 110),
    [22] = NAMED("IQ2_S", 256, 82),
    [23] = LOADS("IQ4_XS", 256, 136),
    [24] = NAMED("I8", 1, 1),
    [25] = NAMED("I16", 1, 2),
    [26] = NAMED("I32", 1, 4),
    [27] = NAMED("I64", 1, 8),
    [28] = NAMED("F64", 1, 8),
    [29] = NAMED("IQ1_M", 256, 56),
    [30] = LOADS("BF16", 1, 2),
    [31] = RETIRED("Q4_0_4_4 (removed)"),
    [32] = RETIRED("Q4_0_4_8 (removed)"),
    [33] = RETIRED("Q4_0_8_8 (removed)"),
    [34] = NAMED("TQ1_0", 256, 54),
    [35] = NAMED("TQ2_0", 256, 66),
    [36] = RETIRED("IQ4_NL_4_4 (removed)"),
    [37] = RETIRED("IQ4_NL_4_8 (removed)"),
    [38] = RETIRED("IQ4_NL_8_8 (removed)"),
    [39] = NAMED("MXFP4", 32, 17),
    [40] = NAMED("NVFP4", 64, 36),
    [41] = NAMED("Q1_0", 128, 18),
    [42] = NAMED("Q2_0", 64, 18),
};

const exo_dtype_info *exo__dtype_info_get(int dtype)
{
    if (dtype < 0 || (size_t)dtype >= sizeof dtype_table / sizeof dtype_table[0] || !dtype_table[dtype].name)
        return NULL;
    return &dtype_table[dtype];
}

size_t exo__dtype_info_bytes(int dtype, int64_t n)
{
    const exo_dtype_info *d = exo__dtype_info_get(dtype);
    if (!d || !d->block_size || n < 0) return 0;
    return (size_t)(n / d->block_size) * d->type_size;
}
