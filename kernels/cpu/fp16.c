/* fp16.c: exact conversions between float and IEEE fp16 / bf16 (fp16.h).
 *
 * Plain integer code, round-to-nearest-even, with inf and NaN kept: the
 * definition the F16C instructions are tested against (test_quants), used by
 * the reference kernels, the f16 KV cache and the wire's f16 rows. */
#include "fp16.h"

#include <string.h>

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float exo__half_to_float(exo_half h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) /* inf or NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    if (em >= 0x0400u) /* normal: rebias the exponent from 15 to 127 */
        return f32_from_bits(sign | ((em << 13) + ((127u - 15u) << 23)));
    /* zero or subnormal: em * 2^-24 is exact in float */
    return f32_from_bits(sign | f32_bits((float)em * 0x1p-24f));
}

exo_half exo__float_to_half(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) { /* inf, or NaN kept quiet and non-zero */
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return (exo_half)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) /* >= 65520 rounds past 65504 to inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) { /* normal half: drop 13 bits, ties to even; a carry
                              * into the exponent is the right answer */
        uint32_t m = ax - ((127u - 15u) << 23);
        m += 0xfffu + ((m >> 13) & 1u);
        return (exo_half)(sign | (m >> 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds (ties to even) to zero */
        return sign;
    /* subnormal half: value = mant * 2^(e-150), unit 2^-24, so shift by 126-e */
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t r = (mant + (1u << (shift - 1)) - 1u + ((mant >> shift) & 1u)) >> shift;
    return (exo_half)(sign | r);
}

float exo__bf16_to_float(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t exo__float_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncating could make it inf */
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u); /* ties to even; overflow carries to inf */
    return (uint16_t)(x >> 16);
}
