/* fp16.h: IEEE fp16 and bf16 bits and their conversions to and from float.
 *
 * A leaf of the CPU kernels: the weight formats (quants.h) and the f32/f16
 * helpers (vec.h) both build on it, so neither needs the other's header. */
#ifndef EXO_FP16_H
#define EXO_FP16_H

#include <stdint.h>

typedef uint16_t exo_half; /* IEEE fp16 bits */

/* Exact, round-to-nearest-even; inf and NaN are kept. */
float exo__half_to_float(exo_half h);
exo_half exo__float_to_half(float f);
float exo__bf16_to_float(uint16_t h);
uint16_t exo__float_to_bf16(float f);

#endif
