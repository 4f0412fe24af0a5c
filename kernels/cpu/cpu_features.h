/* cpu_features.h: the one probe of which instruction sets the CPU kernels
 * may use (internal).
 *
 * quants.c and vec.c both pick their kernels from this answer, so the weight
 * formats and the f32/f16 helpers never disagree about the machine. */
#ifndef EXO_CPU_FEATURES_H
#define EXO_CPU_FEATURES_H

#include <stdbool.h>

typedef struct exo_cpu_features {
    bool avx2;   /* AVX2 + FMA + F16C, with the YMM state saved by the OS */
    bool avx512; /* AVX-512 F, BW, VL, VNNI (ZMM state saved) on top of avx2 */
} exo_cpu_features;

/* What the kernels may use: the CPU's instruction sets, less those turned
 * off by EXO_FORCE_SCALAR=1 (all) or EXO_DISABLE_AVX512=1 in the environment.
 * Probed once (thread-safe); the answer never changes afterwards. All false
 * off x86. */
const exo_cpu_features *exo__cpu_features_get(void);

#endif
