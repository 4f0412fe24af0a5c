/* test_quants.c: the weight formats, their conversions and their kernels.
 *
 * Checks, on random rows with fixed seeds:
 * - fp16/bf16 conversions: known values, round trips over every half/bf16,
 *   round-to-nearest-even at every tie between neighbours, and (where the CPU
 *   has F16C) agreement with the hardware conversion;
 * - hand-built blocks of each format decode to values worked out by hand from
 *   GGUF's layouts;
 * - each format's reference quantizer stays within its error bound;
 * - vec_dot_ref equals the dot of the dequantized weight row with the
 *   dequantized activation row (the formula is right), and is within the
 *   activation quantization's error of the float dot;
 * - the fast (AVX2) to_float, vec_dot and activation quantizers agree with
 *   the reference ones, when the CPU has them;
 * - every fast dot the CPU can run, whatever the dispatch picked (the AVX2
 *   ones, the AVX-512 VNNI one-row and four-row ones), agrees with vec_dot_ref
 *   as closely as the dispatched one must; four-row dots are tried at two row
 *   strides, one of them not a multiple of 4;
 * - the f32 helpers of vec.h (dots, wsum, swiglu, softmax): scalar and fast
 *   against double-precision sums;
 * - the traits table, row sizes, and init's dispatch (EXO_FORCE_SCALAR,
 *   EXO_DISABLE_AVX512).
 *
 * Error bounds used for the reference quantizers (step = one quant's worth of
 * the decoded scale, off = the value decoded from quant 0):
 *   Q8_0, Q4_1, Q5_1, Q6_K: |err| <= step/2 (grids cover each block)
 *   Q4_0, Q5_0, Q3_K: |err| <= step        (grid is [-8, 7] * d, ggml style)
 *   Q2_K, Q4_K, Q5_K: |err| <= max(step, dmin)/2 per sub-block
 *   IQ4_NL, IQ4_XS:   |err| <= the distance to the nearest point of the
 *                     element's grid (scale * the non-linear table)
 *   F16 / BF16:       |err| <= |x| * 2^-11 / 2^-8 (half an ulp) */
#include <float.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../kernels/cpu/quants.h"
#include "../kernels/cpu/quants_avx2.h"
#include "../kernels/cpu/quants_avx512.h"
#include "../kernels/cpu/vec.h"
#include "../native/dtype.h"
#include "check.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_HW_F16C_CHECK 1
#else
#define HAVE_HW_F16C_CHECK 0
#endif

/* ---- random numbers (splitmix64) --------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) /* [0, 1) */
{
    return (float)(rng_next() >> 40) * 0x1p-24f;
}

static float rng_normal(void)
{
    float u1 = rng_uniform() + 0x1p-25f, u2 = rng_uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* Weight-like data: normal values whose scale and offset change every 32
 * elements, with rare outliers and an occasional all-zero block, so scales,
 * minimums and the zero-scale paths all get exercised. */
static void random_row(float *x, int n)
{
    for (int b = 0; b < n; b += 32) {
        float amp = expf(4.0f * rng_uniform() - 2.0f);
        float mean = (rng_uniform() < 0.3f) ? amp * (2.0f * rng_uniform() - 1.0f) : 0.0f;
        bool zero = rng_uniform() < 0.03f;
        for (int i = b; i < b + 32 && i < n; i++) {
            float v = mean + amp * rng_normal();
            if (rng_uniform() < 0.02f) v *= 6.0f;
            x[i] = zero ? 0.0f : v;
        }
    }
}

/* ---- fp16 / bf16 ----------------------------------------------------------------- */

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#if HAVE_HW_F16C_CHECK
static bool cpu_has_f16c(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) && ((ecx >> 29) & 1u);
}

__attribute__((target("f16c"))) static uint16_t hw_float_to_half(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_half_to_float(uint16_t h)
{
    return _cvtsh_ss(h);
}
#endif

/* Which kernel sets this CPU can run, independent of the dispatch (which
 * EXO_FORCE_SCALAR and EXO_DISABLE_AVX512 change). */
static bool cpu_runs_avx2(void)
{
#if HAVE_HW_F16C_CHECK
    return cpu_has_f16c() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

static bool cpu_runs_avx512(void)
{
#if HAVE_HW_F16C_CHECK
    return cpu_runs_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

static void test_half(void)
{
    static const struct { float f; exo_half h; } known[] = {
        { 0.0f, 0x0000 }, { -0.0f, 0x8000 }, { 1.0f, 0x3c00 }, { -2.0f, 0xc000 },
        { 65504.0f, 0x7bff }, { 65519.99f, 0x7bff }, { 65520.0f, 0x7c00 }, { 1e6f, 0x7c00 },
        { -1e6f, 0xfc00 }, { INFINITY, 0x7c00 }, { -INFINITY, 0xfc00 },
        { 0x1p-24f, 0x0001 }, { 0x1p-25f, 0x0000 }, { 0x1.000002p-25f, 0x0001 },
        { 0x1.8p-24f, 0x0002 }, { 0x1.4p-23f, 0x0002 }, { 0x1p-14f, 0x0400 },
        { 1023 * 0x1p-24f, 0x03ff }, { -0x1p-24f, 0x8001 }, { 0.1f, 0x2e66 },
        { 1.0f / 3.0f, 0x3555 }, { 1.0f + 0x1p-11f, 0x3c00 }, { 1.0f + 3 * 0x1p-11f, 0x3c02 },
        { 0x1p-30f, 0x0000 }, { -0x1p-30f, 0x8000 },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        exo_half h = exo__float_to_half(known[i].f);
        CHECK_MSG(h == known[i].h, "float_to_half(%a) = 0x%04x, want 0x%04x", known[i].f, h, known[i].h);
        if (fabsf(known[i].f) >= 0x1p-14f && fabsf(known[i].f) < 65504.5f) {
            /* normal values decode back to within half an ulp */
            float back = exo__half_to_float(known[i].h);
            CHECK(fabsf(back - known[i].f) <= fabsf(known[i].f) * 0x1p-11f);
        }
    }
    exo_half hn = exo__float_to_half(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x03ff) != 0);
    CHECK(isnan(exo__half_to_float(0x7e00)) && isnan(exo__half_to_float(0xfc01)));
    CHECK(exo__half_to_float(0x7c00) == INFINITY && exo__half_to_float(0xfc00) == -INFINITY);
    CHECK(exo__half_to_float(0x0001) == 0x1p-24f && exo__half_to_float(0x03ff) == 1023 * 0x1p-24f);
    CHECK(exo__half_to_float(0x7bff) == 65504.0f && exo__half_to_float(0x3c00) == 1.0f);
    CHECK(exo__half_to_float(0x8000) == 0.0f && signbit(exo__half_to_float(0x8000)));

    /* every half round-trips; every tie between neighbours goes to the even
     * one and a float on either side of it to that side */
    int bad_rt = 0, bad_tie = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = exo__half_to_float((exo_half)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            bad_rt += !isnan(f) || (exo__float_to_half(f) & 0x7fff) <= 0x7c00;
            continue;
        }
        bad_rt += exo__float_to_half(f) != h;
        if ((h & 0x7fff) >= 0x7c00) continue;
        exo_half up = (exo_half)(h + 1); /* next larger magnitude, same sign */
        double mid_d = ((double)f + (double)exo__half_to_float(up)) / 2.0;
        float mid = (float)mid_d; /* 12 significant bits: exact */
        if ((up & 0x7fff) == 0x7c00) mid = (h & 0x8000) ? -65520.0f : 65520.0f;
        exo_half even = (h & 1) ? up : (exo_half)h;
        bad_tie += exo__float_to_half(mid) != even;
        bad_tie += exo__float_to_half(nextafterf(mid, 0.0f)) != h;
        bad_tie += exo__float_to_half(nextafterf(mid, (h & 0x8000) ? -INFINITY : INFINITY)) != up;
    }
    CHECK_MSG(bad_rt == 0, "%d halves do not round-trip", bad_rt);
    CHECK_MSG(bad_tie == 0, "%d half rounding ties wrong", bad_tie);

#if HAVE_HW_F16C_CHECK
    if (cpu_has_f16c()) {
        int bad = 0;
        for (uint64_t u = 0; u < 0x100000000ull; u += 9973) {
            float f = float_of((uint32_t)u);
            exo_half a = exo__float_to_half(f), b = hw_float_to_half(f);
            if (isnan(f)) bad += !isnan(exo__half_to_float(a));
            else bad += a != b;
        }
        for (uint32_t h = 0; h < 0x10000; h++) {
            float a = exo__half_to_float((exo_half)h), b = hw_half_to_float((uint16_t)h);
            bad += isnan(b) ? !isnan(a) : bits_of(a) != bits_of(b);
        }
        CHECK_MSG(bad == 0, "%d conversions differ from F16C", bad);
        printf("  fp16: matches the F16C instructions\n");
    }
#endif
}

static void test_bf16(void)
{
    CHECK(exo__float_to_bf16(1.0f) == 0x3f80);
    CHECK(exo__float_to_bf16(-2.0f) == 0xc000);
    CHECK(exo__float_to_bf16(0.0f) == 0x0000 && exo__float_to_bf16(-0.0f) == 0x8000);
    CHECK(exo__float_to_bf16(INFINITY) == 0x7f80 && exo__float_to_bf16(-INFINITY) == 0xff80);
    CHECK(exo__float_to_bf16(float_of(0x3f808000u)) == 0x3f80); /* tie to even (down) */
    CHECK(exo__float_to_bf16(float_of(0x3f818000u)) == 0x3f82); /* tie to even (up) */
    CHECK(exo__float_to_bf16(float_of(0x3f808001u)) == 0x3f81);
    CHECK(exo__float_to_bf16(FLT_MAX) == 0x7f80);                /* rounds past the max */
    CHECK(exo__float_to_bf16(float_of(0x00010000u)) == 0x0001);  /* subnormal */
    uint16_t bn = exo__float_to_bf16(float_of(0x7f800001u));     /* NaN with low payload */
    CHECK((bn & 0x7f80) == 0x7f80 && (bn & 0x7f) != 0);
    CHECK(exo__bf16_to_float(0x3f80) == 1.0f && exo__bf16_to_float(0xff80) == -INFINITY);

    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = exo__bf16_to_float((uint16_t)h);
        if (isnan(f)) {
            bad += !isnan(exo__bf16_to_float(exo__float_to_bf16(f)));
            continue;
        }
        bad += exo__float_to_bf16(f) != h;
        if ((h & 0x7fff) >= 0x7f80) continue;
        uint32_t mid = (h << 16) | 0x8000u;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        bad += exo__float_to_bf16(float_of(mid)) != even;
        bad += exo__float_to_bf16(float_of(mid - 1)) != h;
        bad += exo__float_to_bf16(float_of(mid + 1)) != (uint16_t)(h + 1);
    }
    CHECK_MSG(bad == 0, "%d bf16 conversions wrong", bad);
}

/* ---- traits, sizes, dispatch ---------------------------------------------------------- */

static const int all_dtypes[] = {
    EXO_DTYPE_F32, EXO_DTYPE_F16, EXO_DTYPE_BF16, EXO_DTYPE_Q8_0, EXO_DTYPE_Q4_0,
    EXO_DTYPE_Q4_1, EXO_DTYPE_Q5_0, EXO_DTYPE_Q5_1, EXO_DTYPE_IQ4_NL, EXO_DTYPE_Q2_K,
    EXO_DTYPE_Q3_K, EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K, EXO_DTYPE_Q6_K, EXO_DTYPE_IQ4_XS,
};
#define N_DTYPES ((int)(sizeof all_dtypes / sizeof all_dtypes[0]))

/* Entries handed out before exo__quants_init(), and copies of them then. */
static const exo_type_traits *early[N_DTYPES];
static exo_type_traits early_copy[N_DTYPES];

static void test_traits_before_init(void)
{
    /* before exo__quants_init() everything already points at the _ref kernels */
    for (int k = 0; k < N_DTYPES; k++) {
        const exo_type_traits *t = exo__type_traits_get(all_dtypes[k]);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK(t->vec_dot == t->vec_dot_ref && t->to_float == t->to_float_ref);
        CHECK(t->vec_dot_ref && t->to_float_ref && t->from_float_ref);
        early[k] = t;
        memcpy(&early_copy[k], t, sizeof *t);
    }
}

/* Init picks a table; it never rewrites an entry. A thread that took its
 * traits before init (or while another thread ran it) keeps a consistent
 * set of kernels: the _ref ones, correct if slower. With the old table that
 * init patched in place, this fails wherever AVX2 is picked. */
static void test_traits_unchanged_by_init(void)
{
    for (int k = 0; k < N_DTYPES; k++) {
        if (!early[k]) continue;
        CHECK_MSG(memcmp(early[k], &early_copy[k], sizeof early_copy[k]) == 0, "%s: entry changed by init",
                  early_copy[k].name);
        CHECK(early[k]->vec_dot == early[k]->vec_dot_ref && early[k]->to_float == early[k]->to_float_ref);
    }
}

/* The traits in use are exactly the chosen instruction sets' kernels
 * (exo__quants_kernels) over the _ref ones, the newest set first: so every
 * kernel the dispatch runs is one that test_format compares with _ref through
 * paths_for. */
static void test_traits_layering(void)
{
    for (int k = 0; k < N_DTYPES; k++) {
        const exo_type_traits *t = exo__type_traits_get(all_dtypes[k]);
        const exo_kernel_set *a2 = exo__quants_have_avx2() ? exo__quants_kernels(all_dtypes[k], EXO_ISA_AVX2) : NULL;
        const exo_kernel_set *a5 = exo__quants_have_avx512() ? exo__quants_kernels(all_dtypes[k], EXO_ISA_AVX512) : NULL;
#define NEWEST(member, none) (a5 && a5->member ? a5->member : a2 && a2->member ? a2->member : (none))
        CHECK_MSG(t->vec_dot == NEWEST(vec_dot, t->vec_dot_ref), "%s: vec_dot", t->name);
        CHECK_MSG(t->to_float == NEWEST(to_float, t->to_float_ref), "%s: to_float", t->name);
        CHECK_MSG(t->vec_dot_x4 == NEWEST(vec_dot_x4, NULL), "%s: vec_dot_x4", t->name);
        CHECK_MSG(t->vec_dot_packed == NEWEST(vec_dot_packed, NULL), "%s: vec_dot_packed", t->name);
        CHECK_MSG(t->vec_dot_packed_t4 == NEWEST(vec_dot_packed_t4, NULL), "%s: vec_dot_packed_t4", t->name);
#undef NEWEST
        int x4_min = a5 && a5->vec_dot_x4 ? a5->x4_min_tokens : a2 && a2->vec_dot_x4 ? a2->x4_min_tokens : 0;
        CHECK_MSG(t->x4_min_tokens == x4_min, "%s: x4_min_tokens", t->name);
    }
}

static void test_traits(void)
{
    static const struct { int dtype; const char *name; int bs; size_t ts; int act; } want[] = {
        { EXO_DTYPE_F32, "f32", 1, 4, EXO_ACT_F32 },
        { EXO_DTYPE_F16, "f16", 1, 2, EXO_ACT_F32 },
        { EXO_DTYPE_BF16, "bf16", 1, 2, EXO_ACT_F32 },
        { EXO_DTYPE_Q4_0, "q4_0", 32, 18, EXO_ACT_Q8_32 },
        { EXO_DTYPE_Q4_1, "q4_1", 32, 20, EXO_ACT_Q8_32 },
        { EXO_DTYPE_Q8_0, "q8_0", 32, 34, EXO_ACT_Q8_32 },
        { EXO_DTYPE_Q4_K, "q4_K", 256, 144, EXO_ACT_Q8_K },
        { EXO_DTYPE_Q5_K, "q5_K", 256, 176, EXO_ACT_Q8_K },
        { EXO_DTYPE_Q6_K, "q6_K", 256, 210, EXO_ACT_Q8_K },
        { EXO_DTYPE_Q5_0, "q5_0", 32, 22, EXO_ACT_Q8_32 },
        { EXO_DTYPE_Q5_1, "q5_1", 32, 24, EXO_ACT_Q8_32 },
        { EXO_DTYPE_IQ4_NL, "iq4_nl", 32, 18, EXO_ACT_Q8_32 },
        { EXO_DTYPE_Q2_K, "q2_K", 256, 84, EXO_ACT_Q8_K },
        { EXO_DTYPE_Q3_K, "q3_K", 256, 110, EXO_ACT_Q8_K },
        { EXO_DTYPE_IQ4_XS, "iq4_xs", 256, 136, EXO_ACT_Q8_K },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const exo_type_traits *t = exo__type_traits_get(want[i].dtype);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK(strcmp(t->name, want[i].name) == 0);
        CHECK(t->block_size == want[i].bs && t->type_size == want[i].ts && t->act_type == want[i].act);
        CHECK(t->vec_dot && t->to_float);
    }
    static const int unsupported[] = { -1, 4, 5, 9, EXO_DTYPE_Q8_K, 16, 17, 18, 19, 21, 22, 24, 29, 31, 39,
                                       EXO_DTYPE_COUNT, 99, 1000, INT_MIN, INT_MAX };
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        CHECK_MSG(exo__type_traits_get(unsupported[i]) == NULL, "dtype %d", unsupported[i]);
        CHECK(exo__dtype_row_size(unsupported[i], 256) == 0);
    }

    CHECK(exo__dtype_row_size(EXO_DTYPE_Q4_1, 576) == 18 * 20);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q8_0, 1536) == 48 * 34);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q4_K, 512) == 2 * 144);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q6_K, 256) == 210);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q5_0, 2560) == 80 * 22);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q5_1, 64) == 2 * 24);
    CHECK(exo__dtype_row_size(EXO_DTYPE_IQ4_NL, 96) == 3 * 18);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q2_K, 512) == 2 * 84);
    CHECK(exo__dtype_row_size(EXO_DTYPE_Q3_K, 768) == 3 * 110);
    CHECK(exo__dtype_row_size(EXO_DTYPE_IQ4_XS, 1792) == 7 * 136);
    CHECK(exo__dtype_row_size(EXO_DTYPE_F16, 7) == 14);
    CHECK(exo__dtype_row_size(EXO_DTYPE_F32, 7) == 28);
    CHECK(exo__act_row_size(EXO_ACT_F32, 7) == 28);
    CHECK(exo__act_row_size(EXO_ACT_Q8_32, 576) == 18 * 40);
    CHECK(exo__act_row_size(EXO_ACT_Q8_K, 512) == 2 * 292);
    CHECK(exo__act_row_size(3, 256) == 0 && exo__act_row_size(-1, 256) == 0);

    /* init is idempotent: a second call changes nothing */
    const exo_type_traits *t = exo__type_traits_get(EXO_DTYPE_Q4_1);
    exo_vec_dot_fn first = t->vec_dot;
    exo__quants_init();
    CHECK(t->vec_dot == first);
    CHECK(exo__quants_have_avx2() == (t->vec_dot != t->vec_dot_ref));
    const char *force = getenv("EXO_FORCE_SCALAR");
    const char *no512 = getenv("EXO_DISABLE_AVX512");
    bool forced = force && strcmp(force, "1") == 0, disabled = no512 && strcmp(no512, "1") == 0;
    if (forced) CHECK(!exo__quants_have_avx2() && !exo__quants_have_avx512());
    if (disabled) CHECK(!exo__quants_have_avx512());
    CHECK(!exo__quants_have_avx512() || exo__quants_have_avx2());
    CHECK(exo__quants_have_avx2() == (!forced && cpu_runs_avx2()));
    CHECK(exo__quants_have_avx512() == (!forced && !disabled && cpu_runs_avx512()));
    CHECK(exo__vec_have_avx2() == (!forced && cpu_runs_avx2()));
#if EXO_QUANTS_X86
    /* the AVX-512 set covers the 32-element formats, and brings the 4-bit ones four-row dots */
    if (exo__quants_have_avx512()) {
        CHECK(exo__type_traits_get(EXO_DTYPE_Q4_0)->vec_dot == exo__vec_dot_q4_0_q8_32_avx512);
        CHECK(exo__type_traits_get(EXO_DTYPE_Q4_1)->vec_dot == exo__vec_dot_q4_1_q8_32_avx512);
        CHECK(exo__type_traits_get(EXO_DTYPE_Q8_0)->vec_dot == exo__vec_dot_q8_0_q8_32_avx512);
        CHECK(exo__type_traits_get(EXO_DTYPE_Q5_0)->vec_dot == exo__vec_dot_q5_0_q8_32_avx512);
        CHECK(exo__type_traits_get(EXO_DTYPE_Q5_1)->vec_dot == exo__vec_dot_q5_1_q8_32_avx512);
        CHECK(exo__type_traits_get(EXO_DTYPE_IQ4_NL)->vec_dot == exo__vec_dot_iq4_nl_q8_32_avx512);
    } else if (exo__quants_have_avx2()) {
        CHECK(exo__type_traits_get(EXO_DTYPE_Q4_1)->vec_dot == exo__vec_dot_q4_1_q8_32_avx2);
        CHECK(exo__type_traits_get(EXO_DTYPE_Q5_0)->vec_dot == exo__vec_dot_q5_0_q8_32_avx2);
    }
    /* every format has fast kernels where the CPU runs AVX2 */
    if (exo__quants_have_avx2())
        for (int k = 0; k < N_DTYPES; k++) {
            const exo_type_traits *tk = exo__type_traits_get(all_dtypes[k]);
            CHECK_MSG(tk->vec_dot != tk->vec_dot_ref, "%s: no fast vec_dot", tk->name);
            bool plain = all_dtypes[k] == EXO_DTYPE_F32 || all_dtypes[k] == EXO_DTYPE_Q4_K ||
                         all_dtypes[k] == EXO_DTYPE_Q5_K || all_dtypes[k] == EXO_DTYPE_Q6_K;
            CHECK_MSG(plain || tk->to_float != tk->to_float_ref, "%s: no fast to_float", tk->name);
        }
#endif
    for (int k = 0; k < N_DTYPES; k++) {
        const exo_type_traits *tk = exo__type_traits_get(all_dtypes[k]);
        bool four_bit = all_dtypes[k] == EXO_DTYPE_Q4_0 || all_dtypes[k] == EXO_DTYPE_Q4_1;
        bool q8 = all_dtypes[k] == EXO_DTYPE_Q8_0;
        bool kq = all_dtypes[k] == EXO_DTYPE_Q4_K || all_dtypes[k] == EXO_DTYPE_Q5_K || all_dtypes[k] == EXO_DTYPE_Q6_K;
        bool want_x4 = exo__quants_have_avx512() && (four_bit || q8);
        CHECK_MSG((tk->vec_dot_x4 != NULL) == want_x4, "%s: vec_dot_x4 %s", tk->name, tk->vec_dot_x4 ? "set" : "NULL");
        /* Q8_0's four-row dot is for batches only (see quants.c). */
        if (want_x4) CHECK(tk->x4_min_tokens == (q8 ? 2 : 0));
        /* The packed layout exists for these formats; its kernel with AVX-512 VNNI, and with AVX2
         * for the 4-bit ones and Q8_0 (whose tiled GEMM reads the layout). */
        CHECK_MSG((tk->pack_x4 != NULL) == (four_bit || q8 || kq) && (tk->unpack_x4_row != NULL) == (four_bit || q8 || kq),
                  "%s: pack_x4 / unpack_x4_row", tk->name);
        bool want_packed = exo__quants_have_avx512() ? four_bit || q8 || kq : exo__quants_have_avx2() && (four_bit || q8 || kq);
        CHECK_MSG((tk->vec_dot_packed != NULL) == want_packed, "%s: vec_dot_packed", tk->name);
        /* four-token kernels: the K formats on both sets, Q4_0 with AVX-512 VNNI */
        bool want_t4 = want_packed && (kq || (exo__quants_have_avx512() && all_dtypes[k] == EXO_DTYPE_Q4_0));
        CHECK_MSG((tk->vec_dot_packed_t4 != NULL) == want_t4, "%s: vec_dot_packed_t4", tk->name);
        /* the tiled batch product: the K formats, Q4_0 and Q8_0, on AVX2 (maddubs) and AVX-512 VNNI */
        bool want_tiled = exo__quants_have_avx2() && (kq || all_dtypes[k] == EXO_DTYPE_Q4_0 || q8);
        CHECK_MSG((tk->tiled != NULL) == want_tiled, "%s: tiled", tk->name);
        if (want_tiled) CHECK(tk->tiled->min_tokens >= 1 && tk->tiled->pack_act && tk->tiled->gemm);
        /* Q4_K and Q5_K share token groups (a layer may mix them), Q6_K lays them out its own way */
        if (want_tiled && all_dtypes[k] == EXO_DTYPE_Q5_K)
            CHECK(tk->tiled->pack_act == exo__type_traits_get(EXO_DTYPE_Q4_K)->tiled->pack_act &&
                  tk->tiled->pack_act != exo__type_traits_get(EXO_DTYPE_Q6_K)->tiled->pack_act);
    }
}

/* native/dtype.c's table agrees with the kernels: a type is loadable there
 * exactly when it has kernels here, with the same block geometry. */
static void test_dtype_table(void)
{
    for (int d = -2; d < 64; d++) {
        const exo_dtype_info *info = exo__dtype_info_get(d);
        const exo_type_traits *t = exo__type_traits_get(d);
        CHECK_MSG((info && info->loadable) == (t != NULL), "dtype %d (%s): loadable and kernels disagree", d,
                  info ? info->name : "none");
        if (!t || !info) continue;
        CHECK_MSG(info->block_size == (uint32_t)t->block_size && info->type_size == t->type_size &&
                      strcasecmp(info->name, t->name) == 0,
                  "dtype %d: %s %u/%u, kernels %s %d/%zu", d, info->name, info->block_size, info->type_size, t->name,
                  t->block_size, t->type_size);
    }
    const exo_dtype_info *q8k = exo__dtype_info_get(EXO_DTYPE_Q8_K);
    CHECK(q8k && q8k->block_size == EXO_QK_K && q8k->type_size == sizeof(exo_block_q8_K));
}

static void test_layout(void)
{
    CHECK(sizeof(exo_block_q4_0) == 18 && sizeof(exo_block_q4_1) == 20 && sizeof(exo_block_q8_0) == 34);
    CHECK(sizeof(exo_block_q4_K) == 144 && sizeof(exo_block_q5_K) == 176 && sizeof(exo_block_q6_K) == 210);
    CHECK(sizeof(exo_block_q8_32) == 40 && sizeof(exo_block_q8_K) == 292);
    CHECK(offsetof(exo_block_q4_1, qs) == 4 && offsetof(exo_block_q8_0, qs) == 2);
    CHECK(offsetof(exo_block_q4_K, scales) == 4 && offsetof(exo_block_q4_K, qs) == 16);
    CHECK(offsetof(exo_block_q5_K, qh) == 16 && offsetof(exo_block_q5_K, qs) == 48);
    CHECK(offsetof(exo_block_q6_K, qh) == 128 && offsetof(exo_block_q6_K, scales) == 192);
    CHECK(offsetof(exo_block_q6_K, d) == 208);
    CHECK(offsetof(exo_block_q8_32, qs) == 8 && offsetof(exo_block_q8_K, bsums) == 260);
    CHECK(sizeof(exo_block_q5_0) == 22 && offsetof(exo_block_q5_0, qh) == 2 && offsetof(exo_block_q5_0, qs) == 6);
    CHECK(sizeof(exo_block_q5_1) == 24 && offsetof(exo_block_q5_1, qh) == 4 && offsetof(exo_block_q5_1, qs) == 8);
    CHECK(sizeof(exo_block_iq4_nl) == 18 && offsetof(exo_block_iq4_nl, qs) == 2);
    CHECK(sizeof(exo_block_q2_K) == 84 && offsetof(exo_block_q2_K, qs) == 16 && offsetof(exo_block_q2_K, d) == 80);
    CHECK(offsetof(exo_block_q2_K, dmin) == 82);
    CHECK(sizeof(exo_block_q3_K) == 110 && offsetof(exo_block_q3_K, qs) == 32 && offsetof(exo_block_q3_K, scales) == 96);
    CHECK(offsetof(exo_block_q3_K, d) == 108);
    CHECK(sizeof(exo_block_iq4_xs) == 136 && offsetof(exo_block_iq4_xs, scales_h) == 2);
    CHECK(offsetof(exo_block_iq4_xs, scales_l) == 4 && offsetof(exo_block_iq4_xs, qs) == 8);
}

/* ---- hand-built blocks ------------------------------------------------------------------- */

static float decode_one(int dtype, const void *block, int nblock_elems, int index)
{
    float out[256];
    exo__type_traits_get(dtype)->to_float_ref(block, out, nblock_elems);
    return out[index];
}

static void test_known_blocks(void)
{
    exo_block_q4_0 b40;
    memset(&b40, 0, sizeof b40);
    b40.d = 0x3800; /* 0.5 */
    b40.qs[0] = 0x1f;
    CHECK(decode_one(EXO_DTYPE_Q4_0, &b40, 32, 0) == 3.5f);   /* (15-8)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q4_0, &b40, 32, 16) == -3.5f); /* (1-8)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q4_0, &b40, 32, 5) == -4.0f);

    exo_block_q4_1 b41;
    memset(&b41, 0, sizeof b41);
    b41.d = 0x3800;
    b41.m = 0xbc00; /* -1 */
    b41.qs[3] = 0xa2;
    CHECK(decode_one(EXO_DTYPE_Q4_1, &b41, 32, 3) == 0.0f);  /* 2*0.5-1 */
    CHECK(decode_one(EXO_DTYPE_Q4_1, &b41, 32, 19) == 4.0f); /* 10*0.5-1 */

    exo_block_q8_0 b80;
    memset(&b80, 0, sizeof b80);
    b80.d = 0x4000; /* 2 */
    b80.qs[5] = -3;
    b80.qs[31] = -128;
    CHECK(decode_one(EXO_DTYPE_Q8_0, &b80, 32, 5) == -6.0f);
    CHECK(decode_one(EXO_DTYPE_Q8_0, &b80, 32, 31) == -256.0f);

    /* 6-bit scales {1,2,3,4,33,34,35,63} and minimums {5,6,7,8,40,41,42,60},
     * packed by hand */
    static const uint8_t kscales[12] = { 0x81, 0x82, 0x83, 0xc4, 0x85, 0x86, 0x87, 0xc8, 0x81, 0x92, 0xa3, 0xcf };
    exo_block_q4_K b4k;
    memset(&b4k, 0, sizeof b4k);
    b4k.d = 0x3c00;    /* 1 */
    b4k.dmin = 0x3800; /* 0.5 */
    memcpy(b4k.scales, kscales, 12);
    b4k.qs[0] = 0x3a;
    b4k.qs[96 + 31] = 0xf0;
    CHECK(decode_one(EXO_DTYPE_Q4_K, &b4k, 256, 0) == 7.5f);     /* 1*10 - 0.5*5 */
    CHECK(decode_one(EXO_DTYPE_Q4_K, &b4k, 256, 32) == 3.0f);    /* 2*3 - 0.5*6 */
    CHECK(decode_one(EXO_DTYPE_Q4_K, &b4k, 256, 223) == -21.0f); /* 35*0 - 0.5*42 */
    CHECK(decode_one(EXO_DTYPE_Q4_K, &b4k, 256, 255) == 915.0f); /* 63*15 - 0.5*60 */
    CHECK(decode_one(EXO_DTYPE_Q4_K, &b4k, 256, 130) == -20.0f); /* 33*0 - 0.5*40 */

    exo_block_q5_K b5k;
    memset(&b5k, 0, sizeof b5k);
    b5k.d = 0x3c00;
    b5k.dmin = 0x3800;
    memcpy(b5k.scales, kscales, 12);
    b5k.qs[0] = 0x3a;
    b5k.qs[96 + 31] = 0xf0;
    b5k.qh[0] = 0x03;  /* fifth bit of elements 0 and 32 */
    b5k.qh[31] = 0x80; /* fifth bit of element 255 */
    CHECK(decode_one(EXO_DTYPE_Q5_K, &b5k, 256, 0) == 23.5f);     /* 1*26 - 2.5 */
    CHECK(decode_one(EXO_DTYPE_Q5_K, &b5k, 256, 32) == 35.0f);    /* 2*19 - 3 */
    CHECK(decode_one(EXO_DTYPE_Q5_K, &b5k, 256, 223) == -21.0f);
    CHECK(decode_one(EXO_DTYPE_Q5_K, &b5k, 256, 255) == 1923.0f); /* 63*31 - 30 */

    exo_block_q6_K b6k;
    memset(&b6k, 0, sizeof b6k);
    b6k.d = 0x3400; /* 0.25 */
    for (int g = 0; g < 16; g++) b6k.scales[g] = (int8_t)(g - 8);
    b6k.ql[0] = 0x21;
    b6k.ql[32] = 0x43;
    b6k.qh[0] = 0xe4; /* 2-bit fields 0, 1, 2, 3 */
    b6k.ql[64 + 17] = 0x0f;
    b6k.qh[32 + 17] = 0x03;
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 0) == 62.0f);   /* .25 * -8 * (1-32) */
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 32) == 19.5f);  /* .25 * -6 * (19-32) */
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 64) == -2.0f);  /* .25 * -4 * (34-32) */
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 96) == -10.0f); /* .25 * -2 * (52-32) */
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 145) == 7.75f); /* .25 * 1 * (63-32) */
    CHECK(decode_one(EXO_DTYPE_Q6_K, &b6k, 256, 255) == -56.0f); /* .25 * 7 * (0-32) */

    exo_block_q5_0 b50;
    memset(&b50, 0, sizeof b50);
    b50.d = 0x3800; /* 0.5 */
    b50.qs[0] = 0x1f;
    b50.qs[15] = 0x90;
    b50.qh[0] = 0x21;  /* fifth bits of elements 0 and 5 */
    b50.qh[3] = 0x80;  /* element 31 */
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 0) == 7.5f);   /* (31-16)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 16) == -7.5f); /* (1-16)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 5) == 0.0f);   /* (16-16)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 3) == -8.0f);
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 31) == 4.5f);  /* (25-16)*0.5 */
    CHECK(decode_one(EXO_DTYPE_Q5_0, &b50, 32, 15) == -8.0f);

    exo_block_q5_1 b51;
    memset(&b51, 0, sizeof b51);
    b51.d = 0x3800;
    b51.m = 0xbc00; /* -1 */
    b51.qs[3] = 0xa2;
    b51.qh[0] = 0x08;  /* element 3 */
    b51.qh[2] = 0x08;  /* element 19 */
    CHECK(decode_one(EXO_DTYPE_Q5_1, &b51, 32, 3) == 8.0f);   /* 18*0.5-1 */
    CHECK(decode_one(EXO_DTYPE_Q5_1, &b51, 32, 19) == 12.0f); /* 26*0.5-1 */
    CHECK(decode_one(EXO_DTYPE_Q5_1, &b51, 32, 4) == -1.0f);

    exo_block_iq4_nl bnl;
    memset(&bnl, 0, sizeof bnl);
    bnl.d = 0x3800;
    bnl.qs[0] = 0xf0;
    bnl.qs[7] = 0x98;
    CHECK(decode_one(EXO_DTYPE_IQ4_NL, &bnl, 32, 0) == -63.5f); /* -127*0.5 */
    CHECK(decode_one(EXO_DTYPE_IQ4_NL, &bnl, 32, 16) == 56.5f); /* 113*0.5 */
    CHECK(decode_one(EXO_DTYPE_IQ4_NL, &bnl, 32, 7) == 0.5f);   /* 1*0.5 */
    CHECK(decode_one(EXO_DTYPE_IQ4_NL, &bnl, 32, 23) == 6.5f);  /* 13*0.5 */

    exo_block_q2_K b2k;
    memset(&b2k, 0, sizeof b2k);
    b2k.d = 0x3c00;    /* 1 */
    b2k.dmin = 0x3800; /* 0.5 */
    b2k.scales[0] = 0x53; /* scale 3, minimum 5 */
    b2k.scales[2] = 0x11;
    b2k.scales[5] = 0x2f;
    b2k.scales[15] = 0x07;
    b2k.qs[0] = 0x0e;  /* element 0: 2, element 32: 3 */
    b2k.qs[16] = 0x30; /* element 80: 3, element 16: 0 */
    b2k.qs[63] = 0x80; /* element 255: 2 */
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 0) == 3.5f);   /* 3*2 - 0.5*5 */
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 32) == 2.5f);  /* 1*3 - 0.5*1 */
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 80) == 44.0f); /* 15*3 - 0.5*2 */
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 16) == 0.0f);
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 255) == 14.0f); /* 7*2 */
    CHECK(decode_one(EXO_DTYPE_Q2_K, &b2k, 256, 159) == 0.0f);

    /* stored scales 33, 0, 63, 40 for groups 0, 5, 10, 15 and 32 elsewhere,
     * packed by hand */
    static const uint8_t q3scales[12] = { 0x01, 0x00, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x80, 0xaa, 0xa2, 0xba, 0xaa };
    exo_block_q3_K b3k;
    memset(&b3k, 0, sizeof b3k);
    b3k.d = 0x3400; /* 0.25 */
    memcpy(b3k.scales, q3scales, 12);
    b3k.qs[0] = 0x03;
    b3k.hmask[0] = 0x01;  /* element 0: 3 | 4 */
    b3k.qs[16] = 0x10;    /* element 80: 1 */
    b3k.qs[42] = 0x08;    /* element 170: 2 */
    b3k.hmask[10] = 0x20; /* element 170's third bit */
    b3k.qs[63] = 0x40;    /* element 255: 1 */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 0) == 0.75f);   /* .25 * 1 * (7-4) */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 1) == -1.0f);   /* .25 * 1 * (0-4) */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 80) == 24.0f);  /* .25 * -32 * (1-4) */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 170) == 15.5f); /* .25 * 31 * (6-4) */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 255) == -6.0f); /* .25 * 8 * (1-4) */
    CHECK(decode_one(EXO_DTYPE_Q3_K, &b3k, 256, 100) == 0.0f);  /* scale 32 - 32 */

    exo_block_iq4_xs bxs;
    memset(&bxs, 0, sizeof bxs);
    bxs.d = 0x3800; /* 0.5 */
    /* stored scales 33, 0, 63 for sub-blocks 0, 3, 7 and 32 elsewhere */
    bxs.scales_l[0] = 0x01;
    bxs.scales_l[3] = 0xf0;
    bxs.scales_h = 0xea2a;
    bxs.qs[0] = 0xf0;
    bxs.qs[48] = 0x08;
    bxs.qs[127] = 0xc0;
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 0) == -63.5f);  /* .5 * 1 * -127 */
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 16) == 56.5f);  /* .5 * 1 * 113 */
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 96) == -16.0f); /* .5 * -32 * 1 */
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 112) == 2032.0f); /* .5 * -32 * -127 */
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 255) == 821.5f); /* .5 * 31 * 53 */
    CHECK(decode_one(EXO_DTYPE_IQ4_XS, &bxs, 256, 40) == 0.0f);
}

/* ---- per-format helpers ----------------------------------------------------------------- */

/* Sets every quant of a block row to q (raw value, before any offset). */
static void fill_quants(int dtype, void *row, int n, int q)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    for (int b = 0; b < n / t->block_size; b++) {
        uint8_t *p = (uint8_t *)row + (size_t)b * t->type_size;
        switch (dtype) {
        case EXO_DTYPE_Q4_0: memset(((exo_block_q4_0 *)p)->qs, q * 0x11, 16); break;
        case EXO_DTYPE_Q4_1: memset(((exo_block_q4_1 *)p)->qs, q * 0x11, 16); break;
        case EXO_DTYPE_Q8_0: memset(((exo_block_q8_0 *)p)->qs, q, 32); break;
        case EXO_DTYPE_Q4_K: memset(((exo_block_q4_K *)p)->qs, q * 0x11, 128); break;
        case EXO_DTYPE_Q5_K:
            memset(((exo_block_q5_K *)p)->qs, (q & 15) * 0x11, 128);
            memset(((exo_block_q5_K *)p)->qh, (q >> 4) ? 0xff : 0, 32);
            break;
        case EXO_DTYPE_Q6_K:
            memset(((exo_block_q6_K *)p)->ql, (q & 15) * 0x11, 128);
            memset(((exo_block_q6_K *)p)->qh, ((q >> 4) & 3) * 0x55, 64);
            break;
        case EXO_DTYPE_Q5_0:
            memset(((exo_block_q5_0 *)p)->qs, (q & 15) * 0x11, 16);
            memset(((exo_block_q5_0 *)p)->qh, (q >> 4) ? 0xff : 0, 4);
            break;
        case EXO_DTYPE_Q5_1:
            memset(((exo_block_q5_1 *)p)->qs, (q & 15) * 0x11, 16);
            memset(((exo_block_q5_1 *)p)->qh, (q >> 4) ? 0xff : 0, 4);
            break;
        case EXO_DTYPE_IQ4_NL: memset(((exo_block_iq4_nl *)p)->qs, q * 0x11, 16); break;
        case EXO_DTYPE_IQ4_XS: memset(((exo_block_iq4_xs *)p)->qs, q * 0x11, 128); break;
        case EXO_DTYPE_Q2_K: memset(((exo_block_q2_K *)p)->qs, (q & 3) * 0x55, 64); break;
        case EXO_DTYPE_Q3_K:
            memset(((exo_block_q3_K *)p)->qs, (q & 3) * 0x55, 64);
            memset(((exo_block_q3_K *)p)->hmask, (q >> 2) ? 0xff : 0, 32);
            break;
        default: break;
        }
    }
}

/* Per element: step (the value of one quant) and off (the value of quant 0),
 * read by decoding copies of the row with every quant set to 0 and to 1.
 * Float formats have neither. */
static void steps_and_offsets(int dtype, const void *row, int n, float *step, float *off)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    if (t->block_size == 1) {
        for (int i = 0; i < n; i++) step[i] = off[i] = 0.0f;
        return;
    }
    size_t size = exo__dtype_row_size(dtype, n);
    void *tmp = malloc(size);
    float *one = malloc((size_t)n * sizeof(float));
    memcpy(tmp, row, size);
    fill_quants(dtype, tmp, n, 0);
    t->to_float_ref(tmp, off, n);
    fill_quants(dtype, tmp, n, 1);
    t->to_float_ref(tmp, one, n);
    for (int i = 0; i < n; i++) step[i] = fabsf(one[i] - off[i]);
    free(one);
    free(tmp);
}

/* Random bytes with sane fp16 scales: every bit pattern of the quants,
 * negative scales included (a file may hold them). */
static void random_blocks(int dtype, void *row, int n)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    size_t size = exo__dtype_row_size(dtype, n);
    for (size_t i = 0; i < size; i++) ((uint8_t *)row)[i] = (uint8_t)rng_next();
    for (int b = 0; b < n / t->block_size; b++) {
        uint8_t *p = (uint8_t *)row + (size_t)b * t->type_size;
        exo_half d = exo__float_to_half(0.05f * rng_normal()), m = exo__float_to_half(0.2f * rng_normal());
        switch (dtype) {
        case EXO_DTYPE_Q4_0: ((exo_block_q4_0 *)p)->d = d; break;
        case EXO_DTYPE_Q4_1: ((exo_block_q4_1 *)p)->d = d; ((exo_block_q4_1 *)p)->m = m; break;
        case EXO_DTYPE_Q8_0: ((exo_block_q8_0 *)p)->d = d; break;
        case EXO_DTYPE_Q4_K: ((exo_block_q4_K *)p)->d = d; ((exo_block_q4_K *)p)->dmin = m; break;
        case EXO_DTYPE_Q5_K: ((exo_block_q5_K *)p)->d = d; ((exo_block_q5_K *)p)->dmin = m; break;
        case EXO_DTYPE_Q6_K: ((exo_block_q6_K *)p)->d = d; break;
        case EXO_DTYPE_Q5_0: ((exo_block_q5_0 *)p)->d = d; break;
        case EXO_DTYPE_Q5_1: ((exo_block_q5_1 *)p)->d = d; ((exo_block_q5_1 *)p)->m = m; break;
        case EXO_DTYPE_IQ4_NL: ((exo_block_iq4_nl *)p)->d = d; break;
        case EXO_DTYPE_Q2_K: ((exo_block_q2_K *)p)->d = d; ((exo_block_q2_K *)p)->dmin = m; break;
        case EXO_DTYPE_Q3_K: ((exo_block_q3_K *)p)->d = d; break;
        case EXO_DTYPE_IQ4_XS: ((exo_block_iq4_xs *)p)->d = d; break;
        default: break;
        }
    }
    if (dtype == EXO_DTYPE_F16 || dtype == EXO_DTYPE_BF16 || dtype == EXO_DTYPE_F32) {
        float *x = malloc((size_t)n * sizeof(float));
        random_row(x, n);
        t->from_float_ref(x, row, n);
        free(x);
    }
}

/* Dequantized activation row and the scale d of each element's block. */
static void act_to_float(int act_type, const void *act, const float *x, int n, float *out, float *d)
{
    if (act_type == EXO_ACT_F32) {
        memcpy(out, x, (size_t)n * sizeof(float));
        for (int i = 0; i < n; i++) d[i] = 0.0f;
    } else if (act_type == EXO_ACT_Q8_32) {
        const exo_block_q8_32 *a = act;
        for (int i = 0; i < n; i++) {
            out[i] = a[i / 32].d * a[i / 32].qs[i % 32];
            d[i] = a[i / 32].d;
        }
    } else {
        const exo_block_q8_K *a = act;
        for (int i = 0; i < n; i++) {
            out[i] = a[i / 256].d * a[i / 256].qs[i % 256];
            d[i] = a[i / 256].d;
        }
    }
}

/* ---- activation quantization --------------------------------------------------------------- */

static void test_act(int act_type, int n)
{
    size_t size = exo__act_row_size(act_type, n);
    float *x = malloc((size_t)n * sizeof(float)), *deq = malloc((size_t)n * sizeof(float));
    float *d = malloc((size_t)n * sizeof(float));
    void *ref = malloc(size), *fast = malloc(size);
    random_row(x, n);
    if (n >= 64) for (int i = 32; i < 64; i++) x[i] = 0.0f; /* a zero block */
    exo__quantize_act_ref(act_type, x, ref, n);
    exo__quantize_act(act_type, x, fast, n);
    if (exo__quants_have_avx2()) CHECK_MSG(memcmp(ref, fast, size) == 0, "act %d n %d: fast != ref", act_type, n);

    act_to_float(act_type, ref, x, n, deq, d);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += !(fabsf(deq[i] - x[i]) <= 0.5f * d[i] * (1.0f + 1e-5f) + 1e-30f);
    CHECK_MSG(bad == 0, "act %d n %d: %d values off by more than d/2", act_type, n, bad);

    if (act_type == EXO_ACT_Q8_32) {
        const exo_block_q8_32 *a = ref;
        for (int b = 0; b < n / 32; b++) {
            int sum = 0;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) {
                sum += a[b].qs[j];
                amax = fmaxf(amax, fabsf(x[32 * b + j]));
                CHECK(a[b].qs[j] >= -127);
            }
            CHECK(a[b].s == a[b].d * (float)sum);
            CHECK(a[b].d == amax / 127.0f);
        }
    } else if (act_type == EXO_ACT_Q8_K) {
        const exo_block_q8_K *a = ref;
        for (int b = 0; b < n / 256; b++) {
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int j = 0; j < 16; j++) {
                    sum += a[b].qs[16 * g + j];
                    CHECK(a[b].qs[16 * g + j] >= -127);
                }
                CHECK_MSG(a[b].bsums[g] == sum, "bsums[%d] = %d, want %d", g, a[b].bsums[g], sum);
            }
        }
    } else {
        CHECK(memcmp(ref, x, size) == 0);
    }
    free(x); free(deq); free(d); free(ref); free(fast);
}

/* ---- one format, one row ---------------------------------------------------------------------- */

/* A fast dot of one format the CPU can run, tested whatever the dispatch
 * chose: one-row (dot) or four-row (dot4, with twin: the one-row dot of the
 * same kernel set, whose results it must match bit for bit). */
typedef struct {
    const char *name;
    exo_vec_dot_fn dot;
    exo_vec_dot_x4_fn dot4;
    exo_vec_dot_fn twin;
} kernel_path;

#define MAX_PATHS 3

static int paths_for(int dtype, kernel_path *p)
{
    int n = 0;
    const exo_kernel_set *avx2 = exo__quants_kernels(dtype, EXO_ISA_AVX2);
    const exo_kernel_set *avx512 = exo__quants_kernels(dtype, EXO_ISA_AVX512);
    if (avx2 && avx2->vec_dot && cpu_runs_avx2()) p[n++] = (kernel_path){ "avx2", avx2->vec_dot, NULL, NULL };
    if (avx512 && avx512->vec_dot && cpu_runs_avx512()) {
        p[n++] = (kernel_path){ "avx512", avx512->vec_dot, NULL, NULL };
        if (avx512->vec_dot_x4) p[n++] = (kernel_path){ "avx512x4", NULL, avx512->vec_dot_x4, avx512->vec_dot };
    }
    return n;
}

typedef struct {
    double max_fast_dot;   /* |fast - ref| / magnitude */
    double max_formula;    /* |ref - dot(dequantized w, dequantized act)| / magnitude */
    double max_act_err;    /* |ref - dot(w, x)| / its bound */
    double max_to_float;   /* |fast - ref| / (|ref| + |off|) */
    double max_path_dot[MAX_PATHS]; /* |path - ref| / magnitude, for paths_for()'s kernels */
    double sq_err, sq_sig; /* for the quantizer's relative RMSE */
    int rows;
} stats;

/* Checks the dot and dequantization kernels of one weight row w against an
 * activation row made from x2. */
static void check_row_kernels(int dtype, const void *w, const float *x2, int n, stats *st)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    float *wf = malloc((size_t)n * sizeof(float)), *wf_fast = malloc((size_t)n * sizeof(float));
    float *step = malloc((size_t)n * sizeof(float)), *off = malloc((size_t)n * sizeof(float));
    float *ad = malloc((size_t)n * sizeof(float)), *astep = malloc((size_t)n * sizeof(float));
    void *act = malloc(exo__act_row_size(t->act_type, n));

    t->to_float_ref(w, wf, n);
    steps_and_offsets(dtype, w, n, step, off);
    if (exo__quants_have_avx2()) {
        t->to_float(w, wf_fast, n);
        for (int i = 0; i < n; i++) {
            double e = fabs((double)wf_fast[i] - wf[i]), mag = fabs(wf[i]) + fabs(off[i]);
            double rel = e == 0.0 ? 0.0 : e / (mag > 0 ? mag : 1e-30);
            if (rel > st->max_to_float) st->max_to_float = rel;
        }
    }

    exo__quantize_act_ref(t->act_type, x2, act, n);
    act_to_float(t->act_type, act, x2, n, ad, astep);
    double exact = 0, mag = 0, fdot = 0, act_bound = 0;
    for (int i = 0; i < n; i++) {
        exact += (double)wf[i] * ad[i];
        mag += (fabs(wf[i]) + fabs(off[i])) * fabs(ad[i]);
        fdot += (double)wf[i] * x2[i];
        act_bound += fabs(wf[i]) * 0.5 * astep[i];
    }
    mag += 1e-30;
    double ref = t->vec_dot_ref(n, w, act);
    double formula = fabs(ref - exact) / mag;
    if (formula > st->max_formula) st->max_formula = formula;
    double aerr = fabs(ref - fdot) / (act_bound * 1.001 + 1e-4 * mag);
    if (aerr > st->max_act_err) st->max_act_err = aerr;
    if (exo__quants_have_avx2()) {
        double fast = t->vec_dot(n, w, act);
        double rel = fabs(fast - ref) / mag;
        if (rel > st->max_fast_dot) st->max_fast_dot = rel;
    }
    kernel_path paths[MAX_PATHS];
    int np = paths_for(dtype, paths);
    for (int k = 0; k < np; k++) {
        if (!paths[k].dot) continue;
        double rel = fabs(paths[k].dot(n, w, act) - ref) / mag;
        if (rel > st->max_path_dot[k]) st->max_path_dot[k] = rel;
    }
    st->rows++;
    free(wf); free(wf_fast); free(step); free(off); free(ad); free(astep); free(act);
}

/* The distance from v to the nearest point of element i's grid in an IQ4
 * row (its scale times the non-linear table), the scale read from the block
 * fields directly. */
static double iq4_grid_distance(int dtype, const void *w, int i, float v)
{
    double s;
    if (dtype == EXO_DTYPE_IQ4_NL) {
        s = exo__half_to_float(((const exo_block_iq4_nl *)w)[i / 32].d);
    } else {
        const exo_block_iq4_xs *b = (const exo_block_iq4_xs *)w + i / 256;
        int j = (i % 256) / 32;
        int ls = (((b->scales_l[j / 2] >> (4 * (j % 2))) & 15) | (((b->scales_h >> (2 * j)) & 3) << 4)) - 32;
        s = (double)exo__half_to_float(b->d) * ls;
    }
    double best = INFINITY;
    for (int k = 0; k < 16; k++) best = fmin(best, fabs(v - s * exo_iq4nl_values[k]));
    return best;
}

/* The reference quantizer's output against the format's error bound. */
static void check_roundtrip(int dtype, const float *x, const void *w, int n, stats *st)
{
    float *wf = malloc((size_t)n * sizeof(float));
    float *step = malloc((size_t)n * sizeof(float)), *off = malloc((size_t)n * sizeof(float));
    const exo_type_traits *t = exo__type_traits_get(dtype);
    t->to_float_ref(w, wf, n);
    steps_and_offsets(dtype, w, n, step, off);
    int bad = 0, first = -1;
    for (int i = 0; i < n; i++) {
        double err = fabs((double)wf[i] - x[i]), bound;
        float absmax = 0.0f; /* of the element's 32-block, for float rounding slack */
        for (int j = i - i % 32; j < i - i % 32 + 32 && j < n; j++) absmax = fmaxf(absmax, fabsf(x[j]));
        double slack = 1e-6 * absmax + 1e-30;
        switch (dtype) {
        case EXO_DTYPE_F32: bound = 0.0; break;
        case EXO_DTYPE_F16: bound = fabs(x[i]) * 0x1p-11 + 0x1p-25; break;
        case EXO_DTYPE_BF16: bound = fabs(x[i]) * 0x1p-8 + 1e-38; break;
        case EXO_DTYPE_Q4_0:
        case EXO_DTYPE_Q5_0:
        case EXO_DTYPE_Q3_K: bound = step[i] * (1 + 1e-4) + slack; break;
        case EXO_DTYPE_IQ4_NL:
        case EXO_DTYPE_IQ4_XS: bound = iq4_grid_distance(dtype, w, i, x[i]) * (1 + 1e-4) + slack; break;
        case EXO_DTYPE_Q2_K: {
            const exo_block_q2_K *b = (const exo_block_q2_K *)w + i / 256;
            bound = 0.5 * fmax(step[i], exo__half_to_float(b->dmin)) * (1 + 1e-3) + slack;
            break;
        }
        case EXO_DTYPE_Q4_K: {
            const exo_block_q4_K *b = (const exo_block_q4_K *)w + i / 256;
            bound = 0.5 * fmax(step[i], exo__half_to_float(b->dmin)) * (1 + 1e-3) + slack;
            break;
        }
        case EXO_DTYPE_Q5_K: {
            const exo_block_q5_K *b = (const exo_block_q5_K *)w + i / 256;
            bound = 0.5 * fmax(step[i], exo__half_to_float(b->dmin)) * (1 + 1e-3) + slack;
            break;
        }
        default: bound = 0.5 * step[i] * (1 + 1e-4) + slack; break; /* Q8_0, Q4_1, Q5_1, Q6_K */
        }
        if (!(err <= bound)) {
            if (first < 0) first = i;
            bad++;
        }
        st->sq_err += err * err;
        st->sq_sig += (double)x[i] * x[i];
    }
    CHECK_MSG(bad == 0, "%s n=%d: %d values over the error bound (first at %d: x=%g got %g step %g)",
              t->name, n, bad, first, first >= 0 ? x[first] : 0.0, first >= 0 ? wf[first] : 0.0,
              first >= 0 ? step[first] : 0.0);
    free(wf); free(step); free(off);
}

/* |sum| of the dequantized |w| * |act| terms (weights' zero offsets
 * included): the scale of a dot's rounding error. */
static double dot_magnitude(int dtype, const void *w, const void *act, const float *x2, int n)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    float *wf = malloc((size_t)n * sizeof(float)), *step = malloc((size_t)n * sizeof(float));
    float *off = malloc((size_t)n * sizeof(float)), *ad = malloc((size_t)n * sizeof(float));
    float *astep = malloc((size_t)n * sizeof(float));
    t->to_float_ref(w, wf, n);
    steps_and_offsets(dtype, w, n, step, off);
    act_to_float(t->act_type, act, x2, n, ad, astep);
    double mag = 1e-30;
    for (int i = 0; i < n; i++) mag += (fabs(wf[i]) + fabs(off[i])) * fabs(ad[i]);
    free(wf); free(step); free(off); free(ad); free(astep);
    return mag;
}

/* The four-row dots on four rows (two quantized from random_row data, two
 * of random bits) laid out stride bytes apart, against vec_dot_ref per row,
 * and bit for bit against their one-row twin. */
static void check_x4_kernels(int dtype, int n, size_t stride, stats *st)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    kernel_path paths[MAX_PATHS];
    int np = paths_for(dtype, paths);
    size_t row = exo__dtype_row_size(dtype, n);
    uint8_t *w = malloc(3 * stride + row);
    float *x = malloc((size_t)n * sizeof(float)), *x2 = malloc((size_t)n * sizeof(float));
    void *act = malloc(exo__act_row_size(t->act_type, n));
    memset(w, 0xa5, 3 * stride + row); /* the gaps between rows hold junk the kernels must not read */
    for (int r = 0; r < 4; r++) {
        if (r < 2) {
            random_row(x, n);
            t->from_float_ref(x, w + r * stride, n);
        } else {
            random_blocks(dtype, w + r * stride, n);
        }
    }
    random_row(x2, n);
    exo__quantize_act_ref(t->act_type, x2, act, n);
    for (int k = 0; k < np; k++) {
        if (!paths[k].dot4) continue;
        float out[4];
        paths[k].dot4(n, w, stride, act, out);
        for (int r = 0; r < 4; r++) {
            const void *wr = w + r * stride;
            double rel = fabs(out[r] - (double)t->vec_dot_ref(n, wr, act)) / dot_magnitude(dtype, wr, act, x2, n);
            if (!(rel <= st->max_path_dot[k])) st->max_path_dot[k] = isnan(rel) ? INFINITY : rel;
            float one = paths[k].twin(n, wr, act);
            CHECK_MSG(memcmp(&one, &out[r], sizeof one) == 0, "%s %s n=%d row %d: %.9g, one-row %.9g", t->name,
                      paths[k].name, n, r, out[r], one);
        }
    }
    /* The packed layout: the same four rows repacked give bit for bit what
     * the one-row kernel gives on each, and the pack keeps every byte. */
    if (t->pack_x4) {
        uint8_t *group = malloc(4 * row);
        memset(group, 0x5a, 4 * row);
        t->pack_x4(w, stride, n, group);
        uint64_t hist_rows[256] = { 0 }, hist_group[256] = { 0 };
        for (int r = 0; r < 4; r++)
            for (size_t b = 0; b < row; b++) hist_rows[w[r * stride + b]]++;
        for (size_t b = 0; b < 4 * row; b++) hist_group[group[b]]++;
        /* (Q5_K's and Q6_K's packing regroups the bits of their values: only unpacking is checked.) */
        CHECK_MSG(dtype == EXO_DTYPE_Q5_K || dtype == EXO_DTYPE_Q6_K || memcmp(hist_rows, hist_group, sizeof hist_rows) == 0,
                  "%s n=%d: the packed group is not a rearrangement of the rows' bytes", t->name, n);
        uint8_t *back = malloc(row);
        for (int r = 0; r < 4; r++) {
            memset(back, 0x33, row);
            t->unpack_x4_row(group, r, n, back);
            CHECK_MSG(memcmp(back, w + r * stride, row) == 0, "%s n=%d: row %d does not unpack to itself", t->name,
                      n, r);
        }
        free(back);
        if (t->vec_dot_packed) {
            float out[4];
            t->vec_dot_packed(n, group, 1, act, out);
            for (int r = 0; r < 4; r++) {
                float one = t->vec_dot(n, w + r * stride, act);
                CHECK_MSG(memcmp(&one, &out[r], sizeof one) == 0, "%s packed n=%d row %d: %.9g, one-row %.9g",
                          t->name, n, r, out[r], one);
            }
        }
        /* Every instruction set's packed kernel the CPU runs, not only the
         * dispatched one, over a run of three groups (the group repeated):
         * bit for bit its own one-row kernel on each row. */
        uint8_t *groups = malloc(3 * 4 * row);
        for (int g = 0; g < 3; g++) memcpy(groups + (size_t)g * 4 * row, group, 4 * row);
        for (int isa = EXO_ISA_AVX2; isa <= EXO_ISA_AVX512; isa++) {
            const exo_kernel_set *ks = exo__quants_kernels(dtype, isa);
            if (!ks || !ks->vec_dot_packed || !(isa == EXO_ISA_AVX2 ? cpu_runs_avx2() : cpu_runs_avx512())) continue;
            exo_vec_dot_fn one_row = ks->vec_dot ? ks->vec_dot : exo__quants_kernels(dtype, EXO_ISA_AVX2)->vec_dot;
            float out[12];
            ks->vec_dot_packed(n, groups, 3, act, out);
            for (int k = 0; k < 12; k++) {
                float one = one_row(n, w + (k % 4) * stride, act);
                CHECK_MSG(memcmp(&one, &out[k], sizeof one) == 0, "%s packed (isa %d) n=%d row %d: %.9g, one-row %.9g",
                          t->name, isa, n, k, out[k], one);
            }
        }
        free(groups);
        /* A group against four tokens: bit for bit the packed kernel per token. */
        for (int isa = EXO_ISA_AVX2; isa <= EXO_ISA_AVX512; isa++) {
            const exo_kernel_set *ks = exo__quants_kernels(dtype, isa);
            if (!ks || !ks->vec_dot_packed_t4 || !(isa == EXO_ISA_AVX2 ? cpu_runs_avx2() : cpu_runs_avx512())) continue;
            const size_t act_bytes = exo__act_row_size(t->act_type, n), act_stride = act_bytes + 64;
            uint8_t *acts = malloc(4 * act_stride);
            float *xt = malloc((size_t)n * sizeof(float));
            for (int tok = 0; tok < 4; tok++) {
                if (tok == 0) memcpy(acts, act, act_bytes);
                else {
                    random_row(xt, n);
                    exo__quantize_act_ref(t->act_type, xt, acts + tok * act_stride, n);
                }
            }
            /* two groups (the same one twice), outputs 9 apart */
            uint8_t *two = malloc(2 * 4 * row);
            memcpy(two, group, 4 * row);
            memcpy(two + 4 * row, group, 4 * row);
            const size_t ldo = 9;
            float out[4 * 9], one[8];
            ks->vec_dot_packed_t4(n, two, 2, acts, act_stride, out, ldo);
            for (int tok = 0; tok < 4; tok++) {
                ks->vec_dot_packed(n, two, 2, acts + tok * act_stride, one);
                CHECK_MSG(memcmp(one, out + tok * ldo, sizeof one) == 0, "%s packed_t4 (isa %d) n=%d token %d: %.9g, "
                          "packed %.9g", t->name, isa, n, tok, out[tok * ldo], one[0]);
            }
            free(two);
            free(acts);
            free(xt);
        }
        /* The K formats' AVX-512 bodies are the AVX2 ones with vpdpwssd: the same bits (quants_k_rows.h). */
        const exo_kernel_set *k2 = exo__quants_kernels(dtype, EXO_ISA_AVX2), *k5 = exo__quants_kernels(dtype, EXO_ISA_AVX512);
        if (t->block_size == EXO_QK_K && k2 && k5 && k5->vec_dot && cpu_runs_avx512())
            for (int r = 0; r < 4; r++) {
                float a2 = k2->vec_dot(n, w + r * stride, act), a5 = k5->vec_dot(n, w + r * stride, act);
                CHECK_MSG(memcmp(&a2, &a5, sizeof a2) == 0, "%s n=%d row %d: avx2 %.9g, avx512 %.9g", t->name, n, r,
                          a2, a5);
            }
        free(group);
    }
    free(w); free(x); free(x2); free(act);
}

/* The tiled batch product (quants.h) of each instruction set against that
 * set's one-row kernel, bit for bit, for every (row, token) of odd shapes:
 * rows 1..37 (strips of eight or sixteen, groups of four cut short), tokens
 * 1..40 (token groups of sixteen cut short), widths of 1 to 8 super-blocks
 * (Q4_0, Q8_0: 1 to 64 blocks, every tail of the eight chains); rows
 * quantized from random data and rows of random bits (negative scales, every
 * code), a token with every quant at +-127 (the largest 16-bit sums of the
 * AVX2 kernel). Outputs outside the asked rows and tokens must stay
 * untouched. Run for every set the CPU has, whatever the dispatch picked. */
static void test_tiled_set(int dtype, const exo_kernel_set *ks, const char *isa);

/* A K-format row whose codes are all at their largest (Q4_K 15, Q5_K 31,
 * Q6_K 63), scales too (Q6_K's int8 scales all -1), d 0.01 and no minimum:
 * every product of a super-block has the same sign. Q4_0 and Q8_0: every
 * weight at its most negative (Q4_0's nibble 0 is -8, Q8_0's -128, which a
 * file may hold though the quantizer never writes it). */
enum { MAX_CODES_ROW = 35 };
static void max_codes_row(int dtype, uint8_t *row, int n)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    const exo_half d = exo__float_to_half(0.01f), zero = exo__float_to_half(0.0f);
    if (t->block_size == EXO_QK) {
        memset(row, dtype == EXO_DTYPE_Q8_0 ? 0x80 : 0x00, exo__dtype_row_size(dtype, n));
        for (int b = 0; b < n / EXO_QK; b++) memcpy((uint8_t *)row + (size_t)b * t->type_size, &d, sizeof d);
        return;
    }
    memset(row, 0xff, exo__dtype_row_size(dtype, n));
    for (int b = 0; b < n / EXO_QK_K; b++) {
        uint8_t *p = row + (size_t)b * t->type_size;
        if (dtype == EXO_DTYPE_Q6_K) {
            ((exo_block_q6_K *)p)->d = d;
        } else { /* Q4_K and Q5_K open with d, dmin */
            memcpy(p, &d, sizeof d);
            memcpy(p + sizeof d, &zero, sizeof zero);
        }
    }
}

static void test_tiled(int dtype)
{
    const exo_kernel_set *k2 = exo__quants_kernels(dtype, EXO_ISA_AVX2), *k5 = exo__quants_kernels(dtype, EXO_ISA_AVX512);
    CHECK_MSG(!k2 || k2->tiled, "dtype %d: no AVX2 tiled GEMM", dtype);
    CHECK_MSG(!k5 || k5->tiled, "dtype %d: no AVX-512 tiled GEMM", dtype);
    if (k2 && k2->tiled && cpu_runs_avx2()) test_tiled_set(dtype, k2, "avx2");
    if (k5 && k5->tiled && cpu_runs_avx512()) test_tiled_set(dtype, k5, "avx512");
}

static void test_tiled_set(int dtype, const exo_kernel_set *ks, const char *isa)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    enum { MAX_ROWS = 40, MAX_TOK = 40 };
    /* the 32-element formats: every tail of the eight-block chains (1, 3, 7, 2, 0 blocks past the last eight) */
    static const int widths_k[] = { 256, 768, 2048 }, widths_32[] = { 32, 96, 224, 576, 2048 };
    const bool block32 = t->block_size == EXO_QK;
    const int *widths = block32 ? widths_32 : widths_k;
    const size_t n_widths = block32 ? 5 : 3;
    static const int rows_tried[] = { 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 23, 31, 36, 37 };
    static const int toks_tried[] = { 1, 2, 5, 15, 16, 17, 31, 32, 33, 40 };
    for (size_t wi = 0; wi < n_widths; wi++) {
        const int n = widths[wi];
        const size_t row = exo__dtype_row_size(dtype, n), act_bytes = exo__act_row_size(t->act_type, n);
        uint8_t *w = malloc(MAX_ROWS * row), *groups = malloc(MAX_ROWS * row);
        uint8_t *acts = malloc(MAX_TOK * act_bytes);
        float *x = malloc((size_t)n * sizeof(float)), *want = malloc(sizeof(float) * MAX_ROWS * MAX_TOK);
        for (int r = 0; r < MAX_ROWS; r++) {
            if (r % 3 == 2) {
                random_blocks(dtype, w + r * row, n);
            } else {
                random_row(x, n);
                t->from_float_ref(x, w + r * row, n);
            }
        }
        max_codes_row(dtype, w + MAX_CODES_ROW * row, n);
        for (int g = 0; g < MAX_ROWS / 4; g++) t->pack_x4(w + (size_t)g * 4 * row, row, n, groups + (size_t)g * 4 * row);
        for (int tok = 0; tok < MAX_TOK; tok++) {
            random_row(x, n);
            if (tok == 3) for (int i = 0; i < n; i++) x[i] = i % 2 ? 1.0f : -1.0f; /* every quant at +-127 */
            if (tok == 4) for (int i = 0; i < n; i++) x[i] = 1.0f;                 /* every quant at 127 */
            exo__quantize_act_ref(t->act_type, x, acts + tok * act_bytes, n);
        }
        for (int r = 0; r < MAX_ROWS; r++)
            for (int tok = 0; tok < MAX_TOK; tok++)
                want[r * MAX_TOK + tok] = ks->vec_dot(n, w + r * row, acts + tok * act_bytes);
        /* the largest codes times the largest quants, no sign to cancel: a 16-bit sum that saturated
         * in the one-row kernel (and so, bit for bit, in the tiled one) would be far off here */
        const float big = want[MAX_CODES_ROW * MAX_TOK + 4], big_ref = t->vec_dot_ref(n, w + MAX_CODES_ROW * row, acts + 4 * act_bytes);
        CHECK_MSG(fabs((double)big - big_ref) <= 1e-5 * fabs((double)big_ref) && big_ref != 0.0f,
                  "%s (%s) n=%d largest codes and quants: %.9g, _ref %.9g", t->name, isa, n, big, big_ref);
        const size_t group_bytes = exo__tiled_act_bytes(n);
        uint8_t *tiles = aligned_alloc(64, group_bytes * ((MAX_TOK + EXO_TILED_TOKENS - 1) / EXO_TILED_TOKENS));
        uint8_t *scratch = aligned_alloc(64, exo__tiled_scratch_bytes(n)); /* sizes: multiples of 64 */
        const size_t ldo = MAX_ROWS + 3;
        float *out = malloc(sizeof(float) * ldo * MAX_TOK);
        for (size_t ti = 0; ti < sizeof toks_tried / sizeof toks_tried[0]; ti++) {
            const int nt = toks_tried[ti];
            for (int t0 = 0; t0 < nt; t0 += EXO_TILED_TOKENS) {
                const int k = nt - t0 < EXO_TILED_TOKENS ? nt - t0 : EXO_TILED_TOKENS;
                memset(tiles + (size_t)(t0 / EXO_TILED_TOKENS) * group_bytes, 0x77, group_bytes); /* padding is written */
                ks->tiled->pack_act(n, acts + t0 * act_bytes, act_bytes, k, tiles + (size_t)(t0 / EXO_TILED_TOKENS) * group_bytes);
            }
            for (size_t ri = 0; ri < sizeof rows_tried / sizeof rows_tried[0]; ri++) {
                const int nr = rows_tried[ri];
                for (size_t i = 0; i < ldo * MAX_TOK; i++) out[i] = -12345.0f;
                ks->tiled->gemm(n, groups, nr, tiles, nt, out, ldo, scratch);
                int bad = 0, stray = 0;
                for (int tok = 0; tok < MAX_TOK; tok++)
                    for (size_t r = 0; r < ldo; r++) {
                        const float got = out[tok * ldo + r];
                        if (tok < nt && (int)r < nr) {
                            if (memcmp(&got, &want[r * MAX_TOK + tok], sizeof got) != 0 && bad++ == 0)
                                CHECK_MSG(false, "%s tiled (%s) n=%d rows=%d tokens=%d: row %zu token %d %.9g, one-row %.9g",
                                          t->name, isa, n, nr, nt, r, tok, got, want[r * MAX_TOK + tok]);
                        } else {
                            stray += got != -12345.0f;
                        }
                    }
                CHECK_MSG(stray == 0, "%s tiled (%s) n=%d rows=%d tokens=%d: %d outputs written outside", t->name, isa, n,
                          nr, nt, stray);
            }
        }
        free(out);
        free(tiles);
        free(scratch);
        free(w); free(groups); free(acts); free(x); free(want);
    }
}

static void test_format(int dtype, double max_rmse)
{
    const exo_type_traits *t = exo__type_traits_get(dtype);
    static const int lens_32[] = { 32, 64, 96, 224, 576, 1536, 4096 };
    static const int lens_k[] = { 256, 512, 768, 1536, 1792, 4096 };
    static const int lens_f[] = { 1, 7, 8, 33, 100, 576, 1536, 4096 };
    const int *lens;
    int nlens;
    if (t->block_size == 32) { lens = lens_32; nlens = 7; }
    else if (t->block_size == 256) { lens = lens_k; nlens = 6; }
    else { lens = lens_f; nlens = 8; }

    stats st;
    memset(&st, 0, sizeof st);
    for (int li = 0; li < nlens; li++) {
        int n = lens[li];
        float *x = malloc((size_t)n * sizeof(float)), *x2 = malloc((size_t)n * sizeof(float));
        void *w = malloc(exo__dtype_row_size(dtype, n));
        for (int seed = 1; seed <= 4; seed++) {
            rng_seed((uint64_t)(dtype * 1000 + n * 10 + seed));
            random_row(x, n);
            random_row(x2, n);
            t->from_float_ref(x, w, n);
            check_roundtrip(dtype, x, w, n, &st);
            check_row_kernels(dtype, w, x2, n, &st);
            random_blocks(dtype, w, n); /* arbitrary bit patterns */
            check_row_kernels(dtype, w, x2, n, &st);
            if (t->block_size > 1) {
                size_t row = exo__dtype_row_size(dtype, n);
                check_x4_kernels(dtype, n, row, &st);
                /* the second stride keeps the fp16 fields' 2-byte alignment, not more */
                check_x4_kernels(dtype, n, row + 2 * (size_t)seed + 6, &st);
            }
        }
        free(x); free(x2); free(w);
    }
    double rmse = sqrt(st.sq_err / st.sq_sig);
    printf("  %-5s rows %3d  quantizer rel-RMSE %.5f  ref-formula %.1e  act-err/bound %.2f",
           t->name, st.rows, rmse, st.max_formula, st.max_act_err);
    if (exo__quants_have_avx2()) printf("  fast-dot %.1e  fast-to_float %.1e", st.max_fast_dot, st.max_to_float);
    kernel_path paths[MAX_PATHS];
    int np = paths_for(dtype, paths);
    for (int k = 0; k < np; k++) printf("  %s %.1e", paths[k].name, st.max_path_dot[k]);
    printf("\n");

    CHECK_MSG(rmse <= max_rmse, "%s: quantizer relative RMSE %g > %g", t->name, rmse, max_rmse);
    CHECK_MSG(st.max_formula <= 2e-5, "%s: vec_dot_ref differs from the dequantized dot by %g", t->name, st.max_formula);
    CHECK_MSG(st.max_act_err <= 1.0, "%s: vec_dot_ref outside the activation error bound (%g)", t->name, st.max_act_err);
    /* Q4_0, Q5_0, IQ4_NL and Q8_0 (quants.c, "the per-block order") and Q4_K, Q5_K and Q6_K ("the
     * per-super-block order") follow one float order on every path: their fast dots are _ref bit
     * for bit; the others within 2e-5 of its magnitude. */
    const bool per_block = dtype == EXO_DTYPE_Q4_0 || dtype == EXO_DTYPE_Q5_0 || dtype == EXO_DTYPE_IQ4_NL ||
                           dtype == EXO_DTYPE_Q8_0 || dtype == EXO_DTYPE_Q4_K || dtype == EXO_DTYPE_Q5_K ||
                           dtype == EXO_DTYPE_Q6_K;
    const double dot_tol = per_block ? 0.0 : 2e-5;
    if (exo__quants_have_avx2()) {
        CHECK_MSG(st.max_fast_dot <= dot_tol, "%s: fast vec_dot differs from ref by %g", t->name, st.max_fast_dot);
        /* exact everywhere except Q4_1 and Q5_1, whose fast paths fuse q*d + m */
        double tol = dtype == EXO_DTYPE_Q4_1 || dtype == EXO_DTYPE_Q5_1 ? 1e-6 : 0.0;
        CHECK_MSG(st.max_to_float <= tol, "%s: fast to_float differs from ref by %g", t->name, st.max_to_float);
    }
    for (int k = 0; k < np; k++)
        CHECK_MSG(st.max_path_dot[k] <= dot_tol, "%s: %s vec_dot differs from ref by %g", t->name, paths[k].name,
                  st.max_path_dot[k]);
}

/* ---- vec.h f32 helpers ---------------------------------------------------------------------------- */

/* The many-key helpers (dots, wsum), dispatched and scalar, against double
 * sums, on rows stride floats apart (stride > n, so rows have gaps); each
 * result may be off by a few float roundings of its sum of |terms|. */
static void test_vec_many(void)
{
    static const int lens[] = { 1, 7, 8, 15, 16, 24, 64, 65, 100, 128, 130 };
    static const int counts[] = { 0, 1, 3, 4, 5, 9, 33 };
    double max_dots = 0, max_dots_ref = 0, max_wsum = 0, max_wsum_ref = 0;
    rng_seed(78);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            int n = lens[li], count = counts[ci];
            size_t stride = (size_t)n + 3 + li;
            float *q = malloc((size_t)n * sizeof(float)), *w = malloc((size_t)(count + 1) * sizeof(float));
            float *rows = malloc((stride * (size_t)count + 1) * sizeof(float));
            uint16_t *rows16 = malloc((stride * (size_t)count + 1) * sizeof(uint16_t));
            float *out = malloc((size_t)(n + count + 1) * sizeof(float));
            float *out_ref = malloc((size_t)(n + count + 1) * sizeof(float));
            random_row(q, n);
            random_row(w, count + 1);
            random_row(rows, (int)(stride * (size_t)count + 1));
            /* the KV cache is f16: round, and compare against the rounded values */
            const int n_rows16 = (int)(stride * (size_t)count + 1);
            uint16_t *fast16 = malloc((size_t)n_rows16 * sizeof(uint16_t));
            exo__vec_f16_from_f32_ref(n_rows16, rows, rows16);
            exo__vec_f16_from_f32(n_rows16, rows, fast16);
            CHECK_MSG(memcmp(fast16, rows16, (size_t)n_rows16 * sizeof(uint16_t)) == 0, "f16 conversion of %d",
                      n_rows16);
            free(fast16);
            for (int i = 0; i < n_rows16; i++) rows[i] = exo__half_to_float(rows16[i]);
            out[count] = out_ref[count] = 12345.0f; /* one past the end */
            exo__vec_dots_f16(n, q, rows16, stride, count, out);
            exo__vec_dots_f16_ref(n, q, rows16, stride, count, out_ref);
            CHECK(out[count] == 12345.0f && out_ref[count] == 12345.0f);
            for (int p = 0; p < count; p++) {
                double exact = 0, mag = 1e-30;
                for (int i = 0; i < n; i++) {
                    exact += (double)q[i] * rows[(size_t)p * stride + i];
                    mag += fabs((double)q[i] * rows[(size_t)p * stride + i]);
                }
                max_dots = fmax(max_dots, fabs(out[p] - exact) / mag);
                max_dots_ref = fmax(max_dots_ref, fabs(out_ref[p] - exact) / mag);
            }
            for (int i = 0; i <= n; i++) out[i] = out_ref[i] = 12345.0f;
            exo__vec_wsum_f16(n, w, rows16, stride, count, out);
            exo__vec_wsum_f16_ref(n, w, rows16, stride, count, out_ref);
            CHECK(out[n] == 12345.0f && out_ref[n] == 12345.0f);
            for (int i = 0; i < n; i++) {
                double exact = 0, mag = 1e-30;
                for (int p = 0; p < count; p++) {
                    exact += (double)w[p] * rows[(size_t)p * stride + i];
                    mag += fabs((double)w[p] * rows[(size_t)p * stride + i]);
                }
                if (count == 0) CHECK(out[i] == 0.0f && out_ref[i] == 0.0f);
                max_wsum = fmax(max_wsum, fabs(out[i] - exact) / mag);
                max_wsum_ref = fmax(max_wsum_ref, fabs(out_ref[i] - exact) / mag);
            }
            free(q); free(w); free(rows); free(rows16); free(out); free(out_ref);
        }
    }
    printf("  vec   dots rel-err fast %.1e scalar %.1e  wsum rel-err fast %.1e scalar %.1e\n", max_dots, max_dots_ref,
           max_wsum, max_wsum_ref);
    CHECK_MSG(max_dots <= 1e-6 && max_dots_ref <= 1e-6, "vec dots: %g (fast), %g (scalar)", max_dots, max_dots_ref);
    CHECK_MSG(max_wsum <= 1e-6 && max_wsum_ref <= 1e-6, "vec wsum: %g (fast), %g (scalar)", max_wsum, max_wsum_ref);
}

/* SwiGLU against silu computed in double, over the whole float range that
 * matters (tiny, ordinary, and past the exp clamp both ways), in place too. */
static void test_vec_swiglu(void)
{
    enum { N = 4099 };
    float *g = malloc(N * sizeof(float)), *u = malloc(N * sizeof(float)), *out = malloc(N * sizeof(float));
    float *in_place = malloc(N * sizeof(float));
    rng_seed(91);
    for (int i = 0; i < N; i++) {
        double scale = i % 4 == 0 ? 1e-3 : i % 4 == 1 ? 3.0 : i % 4 == 2 ? 30.0 : 200.0;
        g[i] = (float)(rng_normal() * scale);
        u[i] = rng_normal();
    }
    g[0] = 0.0f; g[1] = -0.0f; g[2] = 88.0f; g[3] = -88.0f; g[4] = 1e30f; g[5] = -1e30f;
    double max_rel = 0, max_rel_ref = 0;
    exo__vec_swiglu_f32(N, g, u, out);
    memcpy(in_place, g, N * sizeof(float));
    exo__vec_swiglu_f32(N, in_place, u, in_place);
    float ref[1];
    for (int i = 0; i < N; i++) {
        double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        double mag = fabs(want) + 1e-30; /* results under 1e-30 count as 0 */
        exo__vec_swiglu_f32_ref(1, g + i, u + i, ref);
        CHECK_MSG(isfinite(out[i]), "swiglu(%g) = %g", g[i], out[i]);
        max_rel = fmax(max_rel, fabs(out[i] - want) / mag);
        max_rel_ref = fmax(max_rel_ref, fabs(ref[0] - want) / mag);
        CHECK(memcmp(&in_place[i], &out[i], sizeof(float)) == 0);
    }
    /* An element's value does not depend on how the vector is cut into calls. */
    for (int start = 0; start < N;) {
        int len = 1 + (int)(rng_next() % 37);
        if (len > N - start) len = N - start;
        exo__vec_swiglu_f32(len, g + start, u + start, in_place + start);
        start += len;
    }
    CHECK_MSG(memcmp(in_place, out, N * sizeof(float)) == 0, "swiglu differs when cut into pieces");
    printf("  vec   swiglu rel-err fast %.1e scalar %.1e\n", max_rel, max_rel_ref);
    CHECK_MSG(max_rel <= 1e-6 && max_rel_ref <= 1e-6, "vec swiglu: %g (fast), %g (scalar)", max_rel, max_rel_ref);
    free(g); free(u); free(out); free(in_place);
}

/* The softmax numerator against double precision, for lengths around the
 * vector width and scores far apart (underflowing terms must give 0). */
static void test_vec_softmax(void)
{
    static const int lens[] = { 1, 3, 8, 9, 17, 100, 1000 };
    double max_rel = 0;
    rng_seed(93);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
        for (int rep = 0; rep < 3; rep++) {
            for (int i = 0; i < n; i++) x[i] = (float)(rng_normal() * (rep == 2 ? 300.0 : 10.0));
            float scale = rep == 0 ? 0.125f : 1.0f;
            double m = -INFINITY;
            for (int i = 0; i < n; i++) m = fmax(m, (double)(x[i] * scale));
            memcpy(y, x, (size_t)n * sizeof(float));
            float sum_got = exo__vec_softmax_f32(n, scale, y);
            double sum = 0;
            for (int i = 0; i < n; i++) {
                double want = exp((double)(x[i] * scale) - m);
                sum += want;
                max_rel = fmax(max_rel, fabs(y[i] - want) / (want + 1e-30));
            }
            max_rel = fmax(max_rel, fabs(sum_got - sum) / sum);
        }
        free(x); free(y);
    }
    printf("  vec   softmax rel-err %.1e\n", max_rel);
    /* float rounding of scale * x - m (up to a few hundred here) is the limit */
    CHECK_MSG(max_rel <= 1e-5, "vec softmax: %g", max_rel);
}

static void test_vec(void)
{
    test_vec_many();
    test_vec_swiglu();
    test_vec_softmax();
}

int main(void)
{
    test_traits_before_init();
    exo__quants_init();
    printf("test_quants: dispatch picks %s; every fast kernel the CPU runs is compared with _ref\n",
           exo__quants_have_avx512() ? "AVX-512 VNNI" : exo__quants_have_avx2() ? "AVX2" : "scalar");
    test_layout();
    test_dtype_table();
    test_traits();
    test_traits_unchanged_by_init();
    test_traits_layering();
    test_half();
    test_bf16();
    test_known_blocks();

    static const int act_lens[] = { 256, 512, 1536, 4096 };
    for (int i = 0; i < 4; i++) {
        test_act(EXO_ACT_F32, act_lens[i]);
        test_act(EXO_ACT_Q8_32, act_lens[i]);
        test_act(EXO_ACT_Q8_K, act_lens[i]);
    }
    test_act(EXO_ACT_Q8_32, 32);
    test_act(EXO_ACT_Q8_32, 96);

    /* thresholds sit above what these quantizers reach on random_row data */
    test_format(EXO_DTYPE_F32, 0.0);
    test_format(EXO_DTYPE_F16, 3e-4);
    test_format(EXO_DTYPE_BF16, 3e-3);
    test_format(EXO_DTYPE_Q8_0, 0.01);
    test_format(EXO_DTYPE_Q4_0, 0.16);
    test_format(EXO_DTYPE_Q4_1, 0.10);
    test_format(EXO_DTYPE_Q4_K, 0.12);
    test_format(EXO_DTYPE_Q5_K, 0.06);
    test_format(EXO_DTYPE_Q6_K, 0.03);
    test_format(EXO_DTYPE_Q5_0, 0.08);
    test_format(EXO_DTYPE_Q5_1, 0.055);
    test_format(EXO_DTYPE_IQ4_NL, 0.12);
    test_format(EXO_DTYPE_Q2_K, 0.42);
    test_format(EXO_DTYPE_Q3_K, 0.22);
    test_format(EXO_DTYPE_IQ4_XS, 0.12);
    test_tiled(EXO_DTYPE_Q4_K);
    test_tiled(EXO_DTYPE_Q5_K);
    test_tiled(EXO_DTYPE_Q6_K);
    test_tiled(EXO_DTYPE_Q4_0);
    test_tiled(EXO_DTYPE_Q8_0);
    test_vec();

    if (!exo__quants_have_avx2()) printf("  fast-vs-ref comparisons: skipped (no AVX2/FMA/F16C, or EXO_FORCE_SCALAR)\n");
    if (!cpu_runs_avx2()) printf("  AVX2 kernel comparisons: skipped (the CPU lacks AVX2/FMA/F16C)\n");
    if (!cpu_runs_avx512()) printf("  AVX-512 kernel comparisons: skipped (the CPU lacks AVX-512 F/BW/VL/VNNI)\n");
    if (!check_failures) printf("test_quants: ok\n");
    CHECK_DONE();
}
