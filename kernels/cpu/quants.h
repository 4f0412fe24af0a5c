/* quants.h: weight formats, their block layouts, and the kernels over them.
 *
 * Every block struct matches the byte layout GGUF files use, with a
 * static_assert on its size. One table of per-type traits (exo_type_traits)
 * drives all generic code: the model loader, the matrix-vector product and the
 * tests never switch on a dtype themselves.
 *
 * Dot products run weight row x quantized activation row: before a
 * matrix-vector product the activation vector is quantized once to the weight
 * type's activation format (act_type), then every row's dot runs in integers.
 * Each kernel has a plain scalar _ref version that the fast (AVX2/FMA,
 * AVX-512 VNNI) versions are tested against; exo__quants_init() picks the
 * fast ones when the CPU has them. */
#ifndef EXO_QUANTS_H
#define EXO_QUANTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../native/exo_defs.h"
#include "fp16.h"

#define EXO_QK 32     /* elements per block of the 32-element formats */
#define EXO_QK_K 256  /* elements per super-block of the K formats */
#define EXO_K_SCALE_SIZE 12
/* Q4_0, Q5_0, IQ4_NL and Q8_0 dots add their blocks' terms in this many
 * float chains (quants.c: "the per-block order"). */
#define EXO_BLOCK_CHAINS 8

typedef struct {
    exo_half d;                  /* scale */
    uint8_t qs[EXO_QK / 2];      /* x[i] = (nibble - 8) * d; low nibbles hold 0..15, high 16..31 */
} exo_block_q4_0;
_Static_assert(sizeof(exo_block_q4_0) == 18, "q4_0 block size");

typedef struct {
    exo_half d;                  /* scale */
    exo_half m;                  /* minimum */
    uint8_t qs[EXO_QK / 2];      /* x[i] = nibble * d + m; low nibbles hold 0..15, high 16..31 */
} exo_block_q4_1;
_Static_assert(sizeof(exo_block_q4_1) == 20, "q4_1 block size");

typedef struct {
    exo_half d;
    int8_t qs[EXO_QK];           /* x[i] = qs[i] * d */
} exo_block_q8_0;
_Static_assert(sizeof(exo_block_q8_0) == 34, "q8_0 block size");

typedef struct {
    exo_half d;                  /* scale */
    uint8_t qh[4];               /* bit i of this little-endian word: the fifth bit of element i */
    uint8_t qs[EXO_QK / 2];      /* x[i] = (q - 16) * d; low 4 bits as in q4_0 (low nibbles 0..15) */
} exo_block_q5_0;
_Static_assert(sizeof(exo_block_q5_0) == 22, "q5_0 block size");

typedef struct {
    exo_half d;                  /* scale */
    exo_half m;                  /* minimum */
    uint8_t qh[4];               /* fifth bits, as in q5_0 */
    uint8_t qs[EXO_QK / 2];      /* x[i] = q * d + m */
} exo_block_q5_1;
_Static_assert(sizeof(exo_block_q5_1) == 24, "q5_1 block size");

/* IQ4_NL and IQ4_XS: a 4-bit index into this non-linear table (denser near
 * zero, where weights are), times the scale. */
static const int8_t exo_iq4nl_values[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

typedef struct {
    exo_half d;                  /* scale */
    uint8_t qs[EXO_QK / 2];      /* x[i] = d * values[index]; indices packed as q4_0's nibbles */
} exo_block_iq4_nl;
_Static_assert(sizeof(exo_block_iq4_nl) == 18, "iq4_nl block size");

/* Within each 128-element half h of a Q2_K/Q3_K super-block, element
 * 128h + 32j + l (j 0..3, l 0..31) keeps its low 2 bits in bits 2j, 2j+1 of
 * qs[32h + l]; its scale is the one of its 16-element group, index e / 16. */
typedef struct {
    uint8_t scales[EXO_QK_K / 16]; /* per 16 elements: scale in the low nibble, minimum in the high */
    uint8_t qs[EXO_QK_K / 4];    /* 2-bit quants */
    exo_half d;                  /* super-block scale for the scales */
    exo_half dmin;               /* super-block scale for the minimums */
} exo_block_q2_K;                /* x = d * scale * q - dmin * min */
_Static_assert(sizeof(exo_block_q2_K) == 84, "q2_K block size");

typedef struct {
    uint8_t hmask[EXO_QK_K / 8]; /* third bit of element 128h + 32j + l: bit 4h + j of hmask[l] */
    uint8_t qs[EXO_QK_K / 4];    /* low 2 bits, as in q2_K */
    uint8_t scales[12];          /* sixteen 6-bit scales stored with an offset of 32 */
    exo_half d;                  /* super-block scale */
} exo_block_q3_K;                /* x = d * (scale - 32) * (q - 4), q = low | third << 2 */
_Static_assert(sizeof(exo_block_q3_K) == 110, "q3_K block size");

typedef struct {
    exo_half d;                  /* super-block scale */
    uint16_t scales_h;           /* top 2 bits of sub-block j's scale: bits 2j, 2j+1 */
    uint8_t scales_l[EXO_QK_K / 64]; /* low 4 bits of sub-block j's scale: nibble j % 2 of byte j / 2 */
    uint8_t qs[EXO_QK_K / 2];    /* sub-block j (32 elements): 16 bytes from 16j, nibbles as iq4_nl */
} exo_block_iq4_xs;              /* x = d * (scale - 32) * values[index] */
_Static_assert(sizeof(exo_block_iq4_xs) == 136, "iq4_xs block size");

typedef struct {
    exo_half d;                  /* super-block scale for the 6-bit scales */
    exo_half dmin;               /* super-block scale for the 6-bit minimums */
    uint8_t scales[EXO_K_SCALE_SIZE]; /* 8 scales and 8 mins, 6 bits each */
    uint8_t qs[EXO_QK_K / 2];    /* 4-bit quants */
} exo_block_q4_K;
_Static_assert(sizeof(exo_block_q4_K) == 144, "q4_K block size");

typedef struct {
    exo_half d;
    exo_half dmin;
    uint8_t scales[EXO_K_SCALE_SIZE];
    uint8_t qh[EXO_QK_K / 8];    /* high bit of each 5-bit quant */
    uint8_t qs[EXO_QK_K / 2];    /* low 4 bits */
} exo_block_q5_K;
_Static_assert(sizeof(exo_block_q5_K) == 176, "q5_K block size");

typedef struct {
    uint8_t ql[EXO_QK_K / 2];    /* low 4 bits */
    uint8_t qh[EXO_QK_K / 4];    /* high 2 bits */
    int8_t scales[EXO_QK_K / 16];/* 8-bit scale per 16 elements */
    exo_half d;                  /* super-block scale */
} exo_block_q6_K;
_Static_assert(sizeof(exo_block_q6_K) == 210, "q6_K block size");

/* Activation formats (internal, never in files). */
typedef struct {
    float d;                     /* scale: x[i] ~= qs[i] * d */
    float s;                     /* d * sum(qs): lets q4_1's minimum and q4_0's offset cost one multiply */
    int8_t qs[EXO_QK];
} exo_block_q8_32;
_Static_assert(sizeof(exo_block_q8_32) == 40, "q8_32 block size");

typedef struct {
    float d;
    int8_t qs[EXO_QK_K];
    int16_t bsums[EXO_QK_K / 16]; /* sum of each 16 quants, for the K formats' minimums */
} exo_block_q8_K;
_Static_assert(sizeof(exo_block_q8_K) == 292, "q8_K block size");

enum exo_act_type {
    EXO_ACT_F32 = 0,   /* plain floats (F32, F16, BF16 weights) */
    EXO_ACT_Q8_32 = 1, /* exo_block_q8_32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL weights) */
    EXO_ACT_Q8_K = 2   /* exo_block_q8_K (Q2_K .. Q6_K, IQ4_XS weights) */
};

/* n is always a multiple of block_size; callers check this when loading. */
typedef void (*exo_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*exo_from_float_fn)(const float *src, void *dst, int64_t n);
typedef float (*exo_vec_dot_fn)(int n, const void *w_row, const void *act_row);
/* Four weight rows against one activation row: out[r] = dot of the row at
 * (const char *)w_rows + r * row_stride, for r = 0..3. A traits entry's
 * vec_dot_x4 gives bit-identical results to its vec_dot on each row, so a
 * caller may mix the two (e.g. for leftover rows) without results depending
 * on how rows were grouped. */
typedef void (*exo_vec_dot_x4_fn)(int n, const void *w_rows, size_t row_stride, const void *act_row, float *out);

/* The packed four-row layout. The CPU backend keeps its own copy of a
 * Q4_0, Q4_1 or Q8_0 weight matrix with rows in groups of four, each group
 * one sequential run of chunks of up to four block columns (then a pair,
 * then single blocks: the steps the kernels take). A chunk holds the four
 * rows' quants, then the four rows' scales. The quants of a 4-bit row go in
 * pairs of blocks, so one 32-byte load takes a row's pair; Q8_0 goes block by
 * block, one 32-byte load a row. Scales are each row's block headers side by
 * side (Q4_1: d, m per block), so one load takes them all. The same bytes as
 * the four rows, rearranged: the kernels read one stream instead of four
 * interleaved ones, with whole 32-byte loads (unaligned: groups are not
 * 32-byte aligned in general) and no gathering of scales, and give
 * bit-identical results to vec_dot_x4 on the original rows.
 *
 * pack_x4 writes one group (4 * row size bytes) from four rows row_stride
 * apart; unpack_x4_row gives back row r (0..3) of a group in the file's
 * layout; vec_dot_packed dots n_groups consecutive groups with one
 * activation row (out[4 g + r] for row r of group g: one call streams a
 * whole range of rows, with no call or set-up per group). */
typedef void (*exo_pack_x4_fn)(const void *w_rows, size_t row_stride, int n, void *dst);
typedef void (*exo_unpack_x4_row_fn)(const void *group, int r, int n, void *row);
typedef void (*exo_vec_dot_packed_fn)(int n, const void *groups, int64_t n_groups, const void *act_row, float *out);
/* n_groups consecutive packed groups against four activation rows
 * act_stride bytes apart (a batch's tokens): out[t * ldo + 4 g + r] for row
 * r of group g and token t, bit for bit what vec_dot_packed gives each
 * token. A group's quants and scales are unpacked once for the four tokens. */
typedef void (*exo_vec_dot_packed_t4_fn)(int n, const void *groups, int64_t n_groups, const void *act_rows,
                                         size_t act_stride, float *out, size_t ldo);

/* The tiled batch product (the K formats on AVX-512 VNNI: gemm_k_avx512.c;
 * on AVX2: gemm_k_avx2.c; Q4_0 and Q8_0 on AVX-512 VNNI: gemm_q8_avx512.c),
 * for a prompt's tokens. A strip of weight rows is unpacked once into plain
 * byte codes and integer scales, then every token of the batch runs past it
 * in tiles of rows x EXO_TILED_TOKENS tokens, so no unpacking or scale work
 * is repeated per token; each (row, token) gets bit for bit what
 * vec_dot_packed gives it, so a batch may take this path or the others.
 *
 * pack_act puts n_tok (1..EXO_TILED_TOKENS) activation rows of width n,
 * act_stride bytes apart, into one token group of exo__tiled_act_bytes(n)
 * bytes at tile (64-byte aligned; missing tokens are zeros). gemm multiplies
 * rows [0, n_rows) of the packed groups at groups (ceil(n_rows / 4) of them)
 * with n_tokens tokens, whose groups lie one after another at tiles:
 * out[t * ldo + r]. scratch is the calling thread's own,
 * exo__tiled_scratch_bytes(n) bytes, 64-byte aligned. Used for batches of at
 * least min_tokens. Formats with the same pack_act take the same token
 * groups, so one product may mix them (Q4_K and Q5_K do; Q6_K differs). */
#define EXO_TILED_TOKENS 16
typedef struct exo_tiled_gemm {
    int min_tokens;
    void (*pack_act)(int n, const void *act_rows, size_t act_stride, int n_tok, void *tile);
    void (*gemm)(int n, const void *groups, int n_rows, const void *tiles, int n_tokens, float *out, size_t ldo,
                 void *scratch);
} exo_tiled_gemm;

/* Bytes 256 elements take in a token group and in a thread's strip (the
 * layouts are each kernel file's own, within these sizes: Q4_0's and Q8_0's
 * take 640 and 576 a 32-element block, the most). Sizes count 32-element
 * blocks, so rows of those formats need not be whole super-blocks. */
#define EXO_TILED_ACT_SB_BYTES 5120
#define EXO_TILED_STRIP_SB_BYTES 4608
static inline size_t exo__tiled_act_bytes(int n)
{
    return (size_t)(n / EXO_QK) * (EXO_TILED_ACT_SB_BYTES / (EXO_QK_K / EXO_QK));
}
static inline size_t exo__tiled_scratch_bytes(int n)
{
    return (size_t)(n / EXO_QK) * (EXO_TILED_STRIP_SB_BYTES / (EXO_QK_K / EXO_QK));
}

typedef struct exo_type_traits {
    const char *name;             /* "q4_1" */
    int block_size;               /* elements per block */
    size_t type_size;             /* bytes per block */
    int act_type;                 /* enum exo_act_type */
    exo_to_float_fn to_float;     /* fastest available */
    exo_to_float_fn to_float_ref;
    exo_from_float_fn from_float_ref; /* reference quantizer (tests, tiny model writer) */
    exo_vec_dot_fn vec_dot;       /* fastest available */
    exo_vec_dot_fn vec_dot_ref;
    exo_vec_dot_x4_fn vec_dot_x4; /* fastest four-row dot, or NULL where none beats vec_dot */
    int x4_min_tokens;            /* use vec_dot_x4 only for batches of at least this many tokens */
    exo_pack_x4_fn pack_x4;       /* packs a group of four rows (formats that have the layout) */
    exo_unpack_x4_row_fn unpack_x4_row; /* one row back out of a packed group */
    exo_vec_dot_packed_fn vec_dot_packed; /* dot over a packed group, or NULL on CPUs without a kernel */
    exo_vec_dot_packed_t4_fn vec_dot_packed_t4; /* a packed group x four tokens, or NULL */
    const exo_tiled_gemm *tiled;  /* the tiled batch product over packed groups, or NULL */
} exo_type_traits;

/* The kernels written for one instruction set, whichever the dispatch
 * picked: tests compare every one the CPU can run with the _ref kernels, and
 * bench_quants times them side by side. A NULL member: none for that set. */
typedef struct exo_kernel_set {
    exo_vec_dot_fn vec_dot;
    exo_to_float_fn to_float;
    exo_vec_dot_x4_fn vec_dot_x4;
    int x4_min_tokens;            /* as in exo_type_traits */
    exo_vec_dot_packed_fn vec_dot_packed;
    exo_vec_dot_packed_t4_fn vec_dot_packed_t4;
    const exo_tiled_gemm *tiled;
} exo_kernel_set;

enum exo_isa {
    EXO_ISA_AVX2 = 0,  /* AVX2 + FMA + F16C */
    EXO_ISA_AVX512 = 1 /* AVX-512 F, BW, VL, VNNI (on top of the AVX2 set) */
};

/* dtype's kernels for isa (enum exo_isa), or NULL when it has none there (or
 * off x86). Whether the CPU runs them is the caller's question. */
const exo_kernel_set *exo__quants_kernels(int dtype, int isa);

/* Detects CPU features once and picks the traits table of the newest
 * instruction set the CPU has (the tables themselves are const); safe to call
 * many times. With EXO_FORCE_SCALAR=1 in the environment the _ref kernels are
 * used; with EXO_DISABLE_AVX512=1 the AVX2 ones even where AVX-512 VNNI is
 * there. Also runs exo__vec_init() (vec.h). */
void exo__quants_init(void);

/* Whether the AVX2/FMA kernels were chosen (also true when AVX-512 ones were:
 * those cover only some formats and build on the AVX2 set). */
bool exo__quants_have_avx2(void);

/* Whether the AVX-512 VNNI kernels (F, BW, VL, VNNI) were chosen. */
bool exo__quants_have_avx512(void);

/* Traits for a weight dtype, or NULL when the dtype is not supported. An
 * entry never changes: one taken before exo__quants_init() keeps the _ref
 * kernels (correct, only slower); init makes later calls return the fast
 * table's entries. */
const exo_type_traits *exo__type_traits_get(int dtype);

/* Bytes of a row of n elements of dtype (n a multiple of its block size). */
size_t exo__dtype_row_size(int dtype, int64_t n);

/* Activation rows: size in bytes for n elements, and quantization (fast and
 * reference). For EXO_ACT_F32 the "quantization" is a copy. */
size_t exo__act_row_size(int act_type, int n);
void exo__quantize_act(int act_type, const float *x, void *dst, int n);
void exo__quantize_act_ref(int act_type, const float *x, void *dst, int n);

/* fp16/bf16 scalar conversions: fp16.h. */

#endif
