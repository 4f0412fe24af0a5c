/* quants_impl.h: what the reference kernels (quants.c) and the SIMD ones
 * (quants_avx2.c, quants_avx512.c) share (internal): decoders of the packed
 * scale fields, and the macros the SIMD bodies are written with.
 *
 * A leaf: it includes no other kernel header, so the kernel files depend on
 * it and on quants.h, never on each other's internals. */
#ifndef EXO_QUANTS_IMPL_H
#define EXO_QUANTS_IMPL_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define EXO_QUANTS_X86 1
#else
#define EXO_QUANTS_X86 0
#endif

/* The SIMD kernels' row count (1 or 4) and layout flag are constants at each
 * call site, so forcing the shared bodies inline lets the compiler unroll the
 * row loops and keep every accumulator in a register. GCC needs the unroll
 * asked for early: left to itself it kept the accumulator arrays in memory
 * and stored them on every step (clang unrolls them on its own, and does
 * worse with the pragma). */
#define EXO_ALWAYS_INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define FOR_ROWS(r, R) for (int r = 0; r < (R); r++)
#else
#define FOR_ROWS(r, R) _Pragma("GCC unroll 4") for (int r = 0; r < (R); r++)
#endif

/* Unpacks the 12 bytes of a Q4_K/Q5_K super-block into eight 6-bit scales
 * and eight 6-bit minimums (GGUF's layout: bytes 0-3 hold scales 0-3 in their
 * low 6 bits, bytes 4-7 minimums 0-3, bytes 8-11 the low nibbles of scales
 * 4-7 (low half) and minimums 4-7 (high half); the top 2 bits of bytes 0-7 are
 * the high bits of scales/minimums 4-7). Word-wide so it has no branches. */
static inline void exo_k_scales_unpack(const uint8_t packed[12], uint8_t sc[8], uint8_t mn[8])
{
    uint32_t u[3];
    memcpy(u, packed, sizeof u);
    const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, top2 = 0x03030303u;
    uint32_t s[2] = { u[0] & low6, (u[2] & low4) | (((u[0] >> 6) & top2) << 4) };
    uint32_t m[2] = { u[1] & low6, ((u[2] >> 4) & low4) | (((u[1] >> 6) & top2) << 4) };
    memcpy(sc, s, 8);
    memcpy(mn, m, 8);
}

/* Unpacks Q3_K's sixteen 6-bit scales and takes their offset of 32 off
 * (GGUF's layout: bytes 0-7 hold scales 0-7 in their low nibbles and 8-15 in
 * their high nibbles; byte 8 + j holds the top 2 bits of scales j, 4 + j,
 * 8 + j and 12 + j, from its low bits up). Word-wide so it has no branches. */
static inline void exo_q3_k_scales_unpack(const uint8_t packed[12], int8_t sc[16])
{
    uint32_t u[3];
    memcpy(u, packed, sizeof u);
    const uint32_t low4 = 0x0f0f0f0fu, top2 = 0x03030303u;
    uint32_t s[4] = { (u[0] & low4) | ((u[2] & top2) << 4), (u[1] & low4) | (((u[2] >> 2) & top2) << 4),
                      ((u[0] >> 4) & low4) | (((u[2] >> 4) & top2) << 4),
                      ((u[1] >> 4) & low4) | (((u[2] >> 6) & top2) << 4) };
    uint8_t b[16];
    memcpy(b, s, sizeof b);
    for (int k = 0; k < 16; k++) sc[k] = (int8_t)(b[k] - 32);
}

/* The scale of IQ4_XS sub-block j (0..7), offset of 32 taken off. */
static inline int exo_iq4_xs_scale(const uint8_t scales_l[4], uint16_t scales_h, int j)
{
    return (((scales_l[j / 2] >> (4 * (j % 2))) & 0x0f) | (((scales_h >> (2 * j)) & 3) << 4)) - 32;
}

#endif
