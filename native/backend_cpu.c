/* backend_cpu.c: the CPU backend: every operation of backend.h on the pool.
 *
 * Results are batch-invariant by default: every token's row is computed with
 * the same arithmetic whether it arrives alone (decode), in a short verify
 * batch (speculative decoding) or inside a long prompt. Matrix products
 * quantize each activation row once to the weight's activation format and
 * dot every weight row with it in integers (each weight byte is read once per
 * call: decode is bound by memory bandwidth, and this reads the least), and
 * attention runs one query at a time in a fixed order. So a conversation that
 * reuses its KV cache, a request that recomputes only its last prompt token,
 * and a speculative verify pass all give bit-identical logits to a fresh
 * token-by-token run: the same seed and prompt give the same output, always.
 *
 * EXO_GEMM_MIN_TOKENS=N trades that away for prompt speed: batches of N or
 * more tokens multiply f32-dequantized weight tiles with OpenBLAS sgemm and run
 * attention as blocked sgemm (measured in docs/performance.md).
 *
 * Q4_0, Q4_1, Q8_0, Q4_K and Q6_K matrices are read from a packed copy
 * (quants.h: four rows as one stream) where the CPU has the kernels for it;
 * the packed kernels give bit-identical results, so packing changes speed
 * only.
 * EXO_PACK=0 reads the file's layout instead (for comparison).
 *
 * Scratch memory is the backend's context's, sized by reserve() and grown by
 * prepare() on the thread that runs forward passes; those are serialised by
 * the model layer, so one set of buffers serves every call. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../kernels/cpu/quants.h"
#include "../kernels/cpu/vec.h"
#include "backend.h"
#include "error.h"
#include "pool.h"

/* Rows of W dequantized per sgemm call: 64 rows of a 4096-wide matrix are
 * 1 MiB of f32, which stays in L2 while sgemm streams the activations. */
#define GEMM_TILE_ROWS 64
/* Token blocks for the integer path: a block of quantized activation rows
 * stays in L1/L2 while a weight row is dotted with each. */
#define DOT_TOKEN_BLOCK 16
/* Packed groups per call in a batch: the run (8 groups of a 4096-wide Q4_K
 * matrix: 74 KiB) stays in L2 while every token block of DOT_TOKEN_BLOCK
 * reads it, and the kernels' per-call set-up (the K formats reorder the
 * activations) is shared by the run. */
#define PACKED_T4_GROUPS 8

#define ATTN_QUERY_BLOCK 32

/* Bytes of one weight row unpacked on the stack (a Q8_0 row of 32768
 * elements; packing is only for rows up to this size). */
#define PACKED_MAX_ROW_BYTES (34 * 1024)

/* Batches of this many tokens or more take the sgemm paths (matmul and
 * attention); off unless EXO_GEMM_MIN_TOKENS is set. */
#define GEMM_OFF (1 << 30)

/* The CPU backend's context. Scratch is only touched by the thread running
 * a forward pass (the model layer serialises them). reserve, which any
 * thread may call (a sequence created on the loop thread while the engine
 * thread computes), allocates larger buffers at once, so a request too big
 * for memory fails on the call that asked and nothing else; it leaves them
 * as the next scratch, and prepare, at the start of a pass, swaps them in.
 * Replacing the scratch from reserve itself raced with kernels reading it
 * (found by ThreadSanitizer); only recording sizes for prepare let one
 * oversized request make every later pass fail. */
typedef struct cpu_scratch {
    int max_tokens, max_dim, max_ctx, n_threads;
    void *act;       /* quantized activations [max_tokens][act_row_size(max_dim)] */
    float *tiles;    /* per thread: [GEMM_TILE_ROWS][max_dim] */
    float *scores;   /* per thread: [ATTN_QUERY_BLOCK][max_ctx] */
    uint16_t *gather; /* per thread: gather_len() halves, a paged cache's rows made one run (attention) */
    void *act_tiles; /* the tiled GEMM's token groups (quants.h), where the CPU has it: [max_tokens / 16][...] */
    void *strips;    /* per thread: exo__tiled_scratch_bytes(max_dim), the tiled GEMM's unpacked rows */
} cpu_scratch;

typedef struct cpu_ctx {
    exo_pool *pool;
    int gemm_min_tokens;
    pthread_mutex_t next_lock;
    cpu_scratch next;  /* allocated by reserve, not yet in use (act NULL: none); under next_lock */
    cpu_scratch cur;   /* what passes use: written by prepare under next_lock, read by the pass's thread */
} cpu_ctx;

extern void openblas_set_num_threads(int);

/* Halves of one thread's gather scratch: attention over a paged cache with a
 * head size that is not a multiple of 64 copies 64 lanes of every position's
 * values into one run (attention_items). */
static size_t gather_len(int max_ctx)
{
    return (size_t)max_ctx * 64;
}

static void scratch_free(cpu_scratch *s)
{
    exo__aligned_free(s->act);
    exo__aligned_free(s->tiles);
    exo__aligned_free(s->scores);
    exo__aligned_free(s->act_tiles);
    exo__aligned_free(s->strips);
    exo__aligned_free(s->gather);
    memset(s, 0, sizeof *s);
}

static int scratch_alloc(cpu_scratch *s, int max_tokens, int max_dim, int max_ctx, int n_threads)
{
    size_t act_row = exo__act_row_size(EXO_ACT_Q8_32, max_dim);
    size_t act_row_k = exo__act_row_size(EXO_ACT_Q8_K, max_dim);
    if (act_row_k > act_row) act_row = act_row_k;
    *s = (cpu_scratch){max_tokens, max_dim, max_ctx, n_threads, exo__aligned_alloc(act_row * (size_t)max_tokens),
                       exo__aligned_alloc(sizeof(float) * GEMM_TILE_ROWS * (size_t)max_dim * (size_t)n_threads),
                       exo__aligned_alloc(sizeof(float) * (size_t)max_ctx * ATTN_QUERY_BLOCK * (size_t)n_threads),
                       exo__aligned_alloc(sizeof(uint16_t) * gather_len(max_ctx) * (size_t)n_threads),
                       NULL, NULL}; /* act_tiles and strips: below */
    /* The tiled GEMM's buffers, only where some format has the kernel:
     * ~1.1 bytes per token and input element, and a strip of 8 rows a thread. */
    const exo_type_traits *kq = exo__type_traits_get(EXO_DTYPE_Q4_K);
    if (kq && kq->tiled && s->act) {
        s->act_tiles = exo__aligned_alloc(exo__tiled_act_bytes(max_dim) *
                                          (size_t)((max_tokens + EXO_TILED_TOKENS - 1) / EXO_TILED_TOKENS));
        s->strips = exo__aligned_alloc(exo__tiled_scratch_bytes(max_dim) * (size_t)n_threads);
        if (!s->act_tiles || !s->strips) {
            exo__aligned_free(s->act);
            s->act = NULL; /* reported below */
        }
    }
    if (s->act && s->tiles && s->scores && s->gather) return EXO_OK;
    scratch_free(s);
    return exo__error_set(EXO_ENOMEM, "out of memory for CPU scratch of %d tokens x %d, context %d", max_tokens,
                          max_dim, max_ctx);
}

static bool scratch_covers(const cpu_scratch *s, int max_tokens, int max_dim, int max_ctx, int n_threads)
{
    return s->act && max_tokens <= s->max_tokens && max_dim <= s->max_dim && max_ctx <= s->max_ctx &&
           n_threads <= s->n_threads;
}

static int cpu_reserve(exo_backend *be, int max_tokens, int max_dim, int max_ctx)
{
    cpu_ctx *c = be->ctx;
    if (max_tokens < 1 || max_dim < 1 || max_ctx < 1)
        return exo__error_set(EXO_EINVAL, "reserve of %d tokens x %d, context %d", max_tokens, max_dim, max_ctx);
    const int n_threads = exo__pool_threads(c->pool);
    pthread_mutex_lock(&c->next_lock);
    /* What is in use or waiting already may serve the call; grow to cover both. */
    const cpu_scratch *have = c->next.act ? &c->next : &c->cur;
    bool covered = scratch_covers(have, max_tokens, max_dim, max_ctx, n_threads);
    if (have->max_tokens > max_tokens) max_tokens = have->max_tokens;
    if (have->max_dim > max_dim) max_dim = have->max_dim;
    if (have->max_ctx > max_ctx) max_ctx = have->max_ctx;
    pthread_mutex_unlock(&c->next_lock);
    if (covered) return EXO_OK;
    cpu_scratch grown;
    int rc = scratch_alloc(&grown, max_tokens, max_dim, max_ctx, n_threads);
    if (rc) return rc;
    pthread_mutex_lock(&c->next_lock);
    cpu_scratch old = c->next;
    c->next = grown;
    pthread_mutex_unlock(&c->next_lock);
    scratch_free(&old);
    return EXO_OK;
}

static int cpu_prepare(exo_backend *be)
{
    cpu_ctx *c = be->ctx;
    /* cur changes only here, under the lock reserve reads it with. */
    cpu_scratch old = {0};
    pthread_mutex_lock(&c->next_lock);
    if (c->next.act) {
        old = c->cur;
        c->cur = c->next;
        memset(&c->next, 0, sizeof c->next);
    }
    pthread_mutex_unlock(&c->next_lock);
    scratch_free(&old);
    return c->cur.act ? EXO_OK : exo__error_set(EXO_ESTATE, "the CPU backend has no scratch: nothing was reserved");
}

/* Not zeroed: a KV cache is only read where it was written, and the pages of
 * a large one stay unresident until a long conversation reaches them (a
 * context of 8192 positions is 188 MB for the default model). */
static void *cpu_alloc(exo_backend *be, size_t bytes, int kind)
{
    (void)be;
    if (kind == EXO_BUFFER_WEIGHTS) return exo__weights_alloc(bytes);
    return exo__aligned_alloc(bytes);
}

static void cpu_release(exo_backend *be, void *p, size_t bytes, int kind)
{
    (void)be;
    if (kind == EXO_BUFFER_WEIGHTS)
        exo__weights_free(p, bytes);
    else
        exo__aligned_free(p);
}

static void cpu_copy(exo_backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    memcpy(dst, src, sizeof(float) * n);
}

/* ---- matrix products ---------------------------------------------------- */

/* Several products that share one input (Q, K and V; gate and up) run as one
 * parallel loop over the concatenated rows: the input is quantized once and
 * the pool synchronises once instead of per matrix. */
#define MATMUL_MAX_OUTS 4

typedef struct matmul_job {
    const cpu_ctx *c;
    const exo_matmul_out *outs;
    int n_outs;
    int64_t first[MATMUL_MAX_OUTS + 1]; /* first global row (or tile) of each output */
    int tile_rows[MATMUL_MAX_OUTS];     /* GEMM path: weight rows per tile */
    const exo_type_traits *tr[MATMUL_MAX_OUTS];
    const float *x;
    int k;
    const char *act;                    /* quantized activations (integer path) */
    bool packed;                        /* every output has a packed copy: items are groups of 4 rows */
    size_t act_stride;
    int act_type;
    int n_tokens;
    int glu_act;                        /* gated feed-forward: enum exo_ffn_act; -1: plain products */
    bool tiled;                         /* packed weights, a batch: the tiled GEMM over act_tiles */
} matmul_job;

/* Row r of weight w in the file's layout: from the packed copy where there is
 * one (unpacked into buf, PACKED_MAX_ROW_BYTES; the file's pages were
 * released after packing), else from the mapping. */
static const void *weight_row(const exo_tensor *w, int64_t r, void *buf)
{
    if (!w->packed) return exo_tensor_row(w, r);
    exo__type_traits_get(w->dtype)->unpack_x4_row((const char *)w->packed + (size_t)(r / 4) * 4 * w->nb[1], (int)(r % 4),
                                                 (int)w->ne[0], buf);
    return buf;
}

/* Which output a global row or tile index belongs to. */
static int matmul_out_of(const matmul_job *j, int64_t index)
{
    int i = 0;
    while (i + 1 < j->n_outs && index >= j->first[i + 1]) i++;
    return i;
}

/* Rows [r0, r1) of output o for every token; with packed weights r0 and r1
 * count groups of four rows (each group one sequential run of memory). */
static void dot_output_range(const matmul_job *j, int o, int64_t r0, int64_t r1, int thread)
{
    const exo_matmul_out *out = &j->outs[o];
    if (j->tiled) { /* every token past each strip of rows, unpacked once (quants.h) */
        const size_t strip_bytes = exo__tiled_scratch_bytes(j->c->cur.max_dim);
        j->tr[o]->tiled->gemm(j->k, (const char *)out->w->packed + (size_t)r0 * 4 * out->w->nb[1], (int)(4 * (r1 - r0)),
                              j->c->cur.act_tiles, j->n_tokens, out->y + 4 * r0, (size_t)out->ldy,
                              (char *)j->c->cur.strips + (size_t)thread * strip_bytes);
        return;
    }
    const exo_vec_dot_fn dot = j->tr[o]->vec_dot;
    const exo_vec_dot_x4_fn dot4 = j->n_tokens >= j->tr[o]->x4_min_tokens ? j->tr[o]->vec_dot_x4 : NULL;
    for (int t0 = 0; t0 < j->n_tokens; t0 += DOT_TOKEN_BLOCK) {
        int t1 = t0 + DOT_TOKEN_BLOCK < j->n_tokens ? t0 + DOT_TOKEN_BLOCK : j->n_tokens;
        if (j->packed) {
            const size_t group_bytes = 4 * out->w->nb[1];
            const char *first = (const char *)out->w->packed + (size_t)r0 * group_bytes;
            if (t1 - t0 == 1) /* decode: one call streams the whole range */
                j->tr[o]->vec_dot_packed(j->k, first, r1 - r0, j->act + (size_t)t0 * j->act_stride,
                                         out->y + (size_t)t0 * out->ldy + 4 * r0);
            else /* a batch: each group, still in L1, serves every token (four at a time where the
                  * format has a kernel for that: bit for bit the same, with the group unpacked once) */
                for (int64_t g = r0; g < r1; g += PACKED_T4_GROUPS) {
                    const char *group = first + (size_t)(g - r0) * group_bytes;
                    const int64_t ng = r1 - g < PACKED_T4_GROUPS ? r1 - g : PACKED_T4_GROUPS;
                    int t = t0;
                    if (j->tr[o]->vec_dot_packed_t4)
                        for (; t + 4 <= t1; t += 4)
                            j->tr[o]->vec_dot_packed_t4(j->k, group, ng, j->act + (size_t)t * j->act_stride,
                                                        j->act_stride, out->y + (size_t)t * out->ldy + 4 * g,
                                                        (size_t)out->ldy);
                    for (; t < t1; t++)
                        j->tr[o]->vec_dot_packed(j->k, group, ng, j->act + (size_t)t * j->act_stride,
                                                 out->y + (size_t)t * out->ldy + 4 * g);
                }
            continue;
        }
        int64_t r = r0;
        /* Four rows per call where the format has a four-row dot: each
         * activation block is loaded once for the four. Its results are
         * bit-identical to dot's, so grouping changes no output. */
        if (dot4)
            for (; r + 4 <= r1; r += 4) {
                const void *rows = exo_tensor_row(out->w, r);
                for (int t = t0; t < t1; t++)
                    dot4(j->k, rows, out->w->nb[1], j->act + (size_t)t * j->act_stride,
                         out->y + (size_t)t * out->ldy + r);
            }
        for (; r < r1; r++) {
            const void *row = exo_tensor_row(out->w, r);
            for (int t = t0; t < t1; t++)
                out->y[(size_t)t * out->ldy + r] = dot(j->k, row, j->act + (size_t)t * j->act_stride);
        }
    }
}

/* Items are the rows (or packed groups) of all outputs one after another. */
static void matmul_dot_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    const matmul_job *j = ctx;
    while (begin < end) {
        int o = matmul_out_of(j, begin);
        int64_t stop = end < j->first[o + 1] ? end : j->first[o + 1];
        dot_output_range(j, o, begin - j->first[o], stop - j->first[o], thread);
        begin = stop;
    }
}

/* GELU (tanh form, as Gemma was trained with) of every f16 value, as f16:
 * the gate's input and output are rounded to f16 here as in llama.cpp's CPU
 * GELU, which makes exo's Gemma logits closer to llama.cpp's than exact
 * arithmetic does (docs/numerics.md), and a lookup is cheaper than tanhf. */
static uint16_t gelu_f16_table[1 << 16];

static void gelu_table_init(void)
{
    const float sqrt_2_over_pi = 0.79788456080286535588f;
    for (int h = 0; h < (1 << 16); h++) {
        float x = exo__half_to_float((exo_half)h);
        gelu_f16_table[h] = exo__float_to_half(0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * (1.0f + 0.044715f * x * x))));
    }
}

/* out[i] = gelu(gate[i]) * up[i]; beyond +-10 GELU is x or 0 to f16 precision. */
static void geglu(int n, const float *gate, const float *up, float *out)
{
    for (int i = 0; i < n; i++) {
        float x = gate[i];
        if (x <= -10.0f)
            out[i] = 0.0f;
        else if (x >= 10.0f)
            out[i] = x * up[i];
        else
            out[i] = exo__half_to_float(gelu_f16_table[exo__float_to_half(x)]) * up[i];
    }
}

/* out[i] = act(gate[i]) * up[i] for a gated feed-forward (enum exo_ffn_act). */
static void glu_apply(int act, const float *gate, const float *up, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i += INT32_MAX / 2) {
        int len = (int)(n - i < INT32_MAX / 2 ? n - i : INT32_MAX / 2);
        if (act == EXO_FFN_GELU_TANH)
            geglu(len, gate + i, up + i, out + i);
        else /* a vectorised exp: with expf this was the largest serial step of a decode pass */
            exo__vec_swiglu_f32(len, gate + i, up + i, out + i);
    }
}

/* A gated feed-forward: item i is row (or group) i of both gate and up, so
 * the thread that computes a row also applies act(gate) * up to it, on data
 * still in its cache, instead of one thread doing all of it after the loop. */
static void matmul_glu_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    const matmul_job *j = ctx;
    dot_output_range(j, 0, begin, end, thread);
    dot_output_range(j, 1, begin, end, thread);
    const int64_t unit = j->packed ? 4 : 1, r0 = begin * unit, n = (end - begin) * unit;
    for (int t = 0; t < j->n_tokens; t++) {
        float *gate = j->outs[0].y + (size_t)t * j->outs[0].ldy + r0;
        glu_apply(j->glu_act, gate, j->outs[1].y + (size_t)t * j->outs[1].ldy + r0, gate, n);
    }
}

static void matmul_quantize_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    matmul_job *j = ctx;
    for (int64_t t = begin; t < end; t++)
        exo__quantize_act(j->act_type, j->x + (size_t)t * j->k, (char *)j->act + (size_t)t * j->act_stride, j->k);
}

/* Token groups [begin, end) of the tiled GEMM's activations, from the quantized rows. */
static void matmul_pack_tiles(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    const matmul_job *j = ctx;
    const size_t bytes = exo__tiled_act_bytes(j->k);
    for (int64_t g = begin; g < end; g++) {
        const int t0 = (int)g * EXO_TILED_TOKENS, n = j->n_tokens - t0 < EXO_TILED_TOKENS ? j->n_tokens - t0 : EXO_TILED_TOKENS;
        j->tr[0]->tiled->pack_act(j->k, j->act + (size_t)t0 * j->act_stride, j->act_stride, n,
                                  (char *)j->c->cur.act_tiles + (size_t)g * bytes);
    }
}

/* Whether output o's batch of n_tokens takes the tiled GEMM: its packed
 * weights have the kernel, and the batch is large enough for it to win. */
static const exo_tiled_gemm *tiled_for(const exo_type_traits *tr, const exo_matmul_out *out, int n_tokens)
{
    return out->w->packed && tr->tiled && n_tokens >= tr->tiled->min_tokens ? tr->tiled : NULL;
}

static void matmul_gemm_tiles(void *ctx, int64_t begin, int64_t end, int thread)
{
    const matmul_job *j = ctx;
    const int k = j->k;
    float *tile = j->c->cur.tiles + (size_t)thread * GEMM_TILE_ROWS * j->c->cur.max_dim;
    for (int64_t index = begin; index < end; index++) {
        int o = matmul_out_of(j, index);
        const exo_matmul_out *out = &j->outs[o];
        const int64_t n_rows = out->w->ne[1];
        int64_t r0 = (index - j->first[o]) * j->tile_rows[o];
        int rows = (int)(r0 + j->tile_rows[o] <= n_rows ? j->tile_rows[o] : n_rows - r0);
        const float *w;
        if (out->w->dtype == EXO_DTYPE_F32) {
            w = exo_tensor_row(out->w, r0);
        } else {
            char row[PACKED_MAX_ROW_BYTES];
            for (int r = 0; r < rows; r++) j->tr[o]->to_float(weight_row(out->w, r0 + r, row), tile + (size_t)r * k, k);
            w = tile;
        }
        /* y[t][r0 + r] = sum_k x[t][k] * w[r][k] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n_tokens, rows, k, 1.0f, j->x, k, w, k, 0.0f,
                    out->y + r0, out->ldy);
    }
}

/* The products of matmul_multi; with glu_act >= 0, outs are gate and up and
 * the loop also applies act(gate) * up (matmul_glu_rows) where it can. */
static int matmul_run(cpu_ctx *c, const exo_matmul_out *outs, int n_outs, const float *x, int n_tokens, int glu_act)
{
    if (n_outs < 1 || n_outs > MATMUL_MAX_OUTS)
        return exo__error_set(EXO_EINVAL, "matmul of %d outputs (1 to %d)", n_outs, MATMUL_MAX_OUTS);
    matmul_job job = {.c = c, .outs = outs, .n_outs = n_outs, .x = x, .k = (int)outs[0].w->ne[0], .n_tokens = n_tokens,
                      .glu_act = glu_act};
    for (int o = 0; o < n_outs; o++) {
        job.tr[o] = exo__type_traits_get(outs[o].w->dtype);
        if (!job.tr[o]) return exo__error_set(EXO_ENOTSUP, "matmul: unsupported weight dtype %d", outs[o].w->dtype);
        if (outs[o].w->ne[0] != job.k) return exo__error_set(EXO_EINVAL, "matmul outputs differ in input width");
    }
    /* Outputs whose weights want different activation formats, or of which
     * only some are packed, or that lay out the tiled GEMM's activations
     * differently (Q4_K and Q6_K in one Q4_K_M layer), run one by one. */
    const exo_tiled_gemm *tiled = tiled_for(job.tr[0], &outs[0], n_tokens);
    for (int o = 1; o < n_outs; o++) {
        const exo_tiled_gemm *to = tiled_for(job.tr[o], &outs[o], n_tokens);
        if (job.tr[o]->act_type != job.tr[0]->act_type || outs[o].w->dtype == EXO_DTYPE_F32 ||
            !outs[o].w->packed != !outs[0].w->packed || (to ? to->pack_act : NULL) != (tiled ? tiled->pack_act : NULL)) {
            for (int i = 0; i < n_outs; i++) {
                int rc = matmul_run(c, &outs[i], 1, x, n_tokens, -1);
                if (rc) return rc;
            }
            if (glu_act >= 0) glu_apply(glu_act, outs[0].y, outs[1].y, outs[0].y, (int64_t)n_tokens * outs[0].w->ne[1]);
            return EXO_OK;
        }
    }
    if (n_tokens > c->cur.max_tokens || job.k > c->cur.max_dim)
        return exo__error_set(EXO_ERANGE, "matmul of %d tokens x %d over the reserved %d x %d", n_tokens, job.k,
                             c->cur.max_tokens, c->cur.max_dim);
    exo_pool *pool = c->pool;
    int n_threads = exo__pool_threads(pool);

    if (n_tokens >= c->gemm_min_tokens) {
        int64_t total_rows = 0;
        for (int o = 0; o < n_outs; o++) total_rows += outs[o].w->ne[1];
        /* At least 4 tiles per thread over all outputs, so no thread idles at the end. */
        int64_t per_tile = total_rows / (4 * n_threads);
        int tile_rows = (int)(per_tile >= GEMM_TILE_ROWS ? GEMM_TILE_ROWS : per_tile < 8 ? 8 : per_tile);
        for (int o = 0; o < n_outs; o++) {
            job.tile_rows[o] = tile_rows;
            job.first[o + 1] = job.first[o] + (outs[o].w->ne[1] + tile_rows - 1) / tile_rows;
        }
        exo__pool_for(pool, job.first[n_outs], 1, matmul_gemm_tiles, &job);
        if (glu_act >= 0) glu_apply(glu_act, outs[0].y, outs[1].y, outs[0].y, (int64_t)n_tokens * outs[0].w->ne[1]);
        return EXO_OK;
    }

    job.act_type = job.tr[0]->act_type;
    if (job.act_type == EXO_ACT_F32) {
        job.act = (const char *)x;
        job.act_stride = sizeof(float) * (size_t)job.k;
    } else {
        job.act = c->cur.act;
        job.act_stride = exo__act_row_size(job.act_type, job.k);
        /* A few rows quantize faster on this thread than a pool round trip. */
        if (n_tokens <= 4)
            matmul_quantize_rows(&job, 0, n_tokens, 0);
        else
            exo__pool_for(pool, n_tokens, 1, matmul_quantize_rows, &job);
    }
    job.packed = outs[0].w->packed != NULL;
    job.tiled = tiled && c->cur.act_tiles;
    if (job.tiled) {
        const int64_t groups = (n_tokens + EXO_TILED_TOKENS - 1) / EXO_TILED_TOKENS;
        if (groups == 1)
            matmul_pack_tiles(&job, 0, 1, 0);
        else
            exo__pool_for(pool, groups, 1, matmul_pack_tiles, &job);
    }
    const int64_t unit = job.packed ? 4 : 1;
    for (int o = 0; o < n_outs; o++) job.first[o + 1] = job.first[o] + outs[o].w->ne[1] / unit;
    /* 16 rows per chunk at least: a chunk is then a few KiB of weights. */
    if (glu_act >= 0)
        exo__pool_for(pool, job.first[1], 16 / unit, matmul_glu_rows, &job);
    else
        exo__pool_for(pool, job.first[n_outs], 16 / unit, matmul_dot_rows, &job);
    return EXO_OK;
}

static int cpu_matmul_multi(exo_backend *be, const exo_matmul_out *outs, int n_outs, const float *x, int n_tokens)
{
    return matmul_run(be->ctx, outs, n_outs, x, n_tokens, -1);
}

static int cpu_matmul_glu(exo_backend *be, const exo_tensor *w_gate, const exo_tensor *w_up, const float *x, int n_tokens,
                          float *gate, float *up, int act)
{
    if (w_gate->ne[1] != w_up->ne[1])
        return exo__error_set(EXO_EINVAL, "glu: gate has %lld rows, up %lld", (long long)w_gate->ne[1],
                             (long long)w_up->ne[1]);
    if (act != EXO_FFN_SILU && act != EXO_FFN_GELU_TANH)
        return exo__error_set(EXO_EINVAL, "glu: unknown activation %d", act);
    const int n = (int)w_gate->ne[1];
    exo_matmul_out outs[2] = {{w_gate, gate, n}, {w_up, up, n}};
    return matmul_run(be->ctx, outs, 2, x, n_tokens, act);
}

static int cpu_matmul(exo_backend *be, const exo_tensor *w, const float *x, int n_tokens, float *y, int ldy)
{
    exo_matmul_out out = {.w = w, .y = y, .ldy = ldy};
    return cpu_matmul_multi(be, &out, 1, x, n_tokens);
}

/* ---- element-wise and normalisation ------------------------------------- */

static void cpu_rmsnorm(exo_backend *be, const float *x, const float *weight, float *y, int n_tokens, int dim, float eps)
{
    (void)be;
    for (int t = 0; t < n_tokens; t++) {
        const float *xt = x + (size_t)t * dim;
        float *yt = y + (size_t)t * dim;
        /* Eight partial sums: a single chain of dependent double adds made
         * this 1 us per call, 67 us of a 2.8 ms decode step, all serial. */
        double part[8] = {0};
        int i = 0;
        for (; i + 8 <= dim; i += 8)
            for (int k = 0; k < 8; k++) part[k] += (double)xt[i + k] * xt[i + k];
        for (; i < dim; i++) part[0] += (double)xt[i] * xt[i];
        double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        float inv = (float)(1.0 / sqrt(sum / dim + eps));
        if (weight)
            for (i = 0; i < dim; i++) yt[i] = xt[i] * inv * weight[i];
        else
            for (i = 0; i < dim; i++) yt[i] = xt[i] * inv;
    }
}

static void cpu_rope(exo_backend *be, float *x, int n_tokens, int n_heads, int head_dim, const exo_rope_table *rope)
{
    (void)be;
    const int half = rope->rope_dim / 2;
    for (int t = 0; t < n_tokens; t++) {
        const float *c = rope->cos + (size_t)t * half;
        const float *s = rope->sin + (size_t)t * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            if (rope->style == EXO_ROPE_NEOX) {
                for (int i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half];
                    v[i] = a * c[i] - b * s[i];
                    v[i + half] = a * s[i] + b * c[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = v[2 * i], b = v[2 * i + 1];
                    v[2 * i] = a * c[i] - b * s[i];
                    v[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
        }
    }
}

static void cpu_to_f16(exo_backend *be, const float *x, uint16_t *y, int64_t n)
{
    (void)be;
    for (int64_t i = 0; i < n; i += INT32_MAX / 2) {
        int len = (int)(n - i < INT32_MAX / 2 ? n - i : INT32_MAX / 2);
        exo__vec_f16_from_f32(len, x + i, y + i);
    }
}

static void cpu_add(exo_backend *be, float *y, const float *x, int64_t n)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

static void cpu_scale(exo_backend *be, float *y, float factor, int64_t n)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) y[i] *= factor;
}

static int cpu_get_rows(exo_backend *be, const exo_tensor *emb, const int32_t *ids, int n_tokens, float *out)
{
    (void)be;
    const exo_type_traits *tr = exo__type_traits_get(emb->dtype);
    if (!tr) return exo__error_set(EXO_ENOTSUP, "embedding dtype %d unsupported", emb->dtype);
    const int64_t dim = emb->ne[0];
    for (int t = 0; t < n_tokens; t++) {
        if (ids[t] < 0 || ids[t] >= emb->ne[1])
            return exo__error_set(EXO_ERANGE, "token id %d outside the vocabulary of %lld", ids[t],
                                 (long long)emb->ne[1]);
        /* A tied head's embedding reads its rows from the packed copy, so
         * lookups never fault the file's pages back in. */
        char row[PACKED_MAX_ROW_BYTES];
        tr->to_float(weight_row(emb, ids[t], row), out + (size_t)t * dim, dim);
    }
    return EXO_OK;
}

/* ---- attention ---------------------------------------------------------- */

typedef struct attention_job {
    const exo_attention_args *a;
    const cpu_ctx *c;
    int run; /* query heads per item in attention_items: a group, or part of one */
} attention_job;

/* KV head kvh's row at position p: in one run of rows (each position's heads
 * side by side, kv_stride apart), or in a block of the pool, where each KV
 * head's rows are a run of their own (exo_attention_args). */
static inline const uint16_t *kv_head_row(const uint16_t *run, const uint16_t *const *blocks, int block_len,
                                          int n_head_kv, int hd, int kvh, int p)
{
    if (!blocks) return run + ((size_t)p * n_head_kv + kvh) * hd;
    return blocks[p / block_len] + ((size_t)kvh * block_len + p % block_len) * hd;
}

/* Keys from p0 to the end of p0's block or to pos, whichever comes first:
 * one piece of a paged cache that attention reads as a run. */
static inline int kv_piece_len(int p0, int pos, int block_len)
{
    const int block_end = (p0 / block_len + 1) * block_len;
    return block_end < pos + 1 ? block_end - p0 : pos + 1 - p0;
}

/* One work item is (token, KV head, a run of the query heads that share that
 * KV head): the run reads each block of the KV head's keys and values once
 * for all its heads (vec.h's _heads helpers), where one item per query head
 * read the whole cache once per head (4x the bytes at Llama's groups of 4;
 * at 4,000 positions that no longer comes from cache). A head's result is
 * the same bits in any run, so cpu_attention may split groups into shorter
 * runs to give every thread work (a decode step of a model with one KV head)
 * and results stay batch-invariant.
 *
 * A paged cache is read block by block: in a block a KV head's keys are one
 * run of rows head_dim apart, which the memory streams (with every head's
 * rows side by side, each head read 128 of every 1,024 bytes at Llama 1B's
 * shape, and its decode attention at 4,000 positions took 1.7x as long). The
 * pieces are cut at block bounds, which depend on positions only, so where
 * the pool put a sequence's blocks changes no bits; a key's score is its own
 * dot, and the weighted sums go on across pieces (wsum_heads_more). */
static void attention_items(void *ctx, int64_t begin, int64_t end, int thread)
{
    const attention_job *j = ctx;
    const exo_attention_args *a = j->a;
    const int hd = a->head_dim, B = a->block_len;
    const int kv_stride = a->n_head_kv * hd;
    const int group = a->n_head / a->n_head_kv;
    const int runs = (group + j->run - 1) / j->run;
    const size_t row = (size_t)j->c->cur.max_ctx; /* one head's scores */
    float *scores = j->c->cur.scores + (size_t)thread * row * ATTN_QUERY_BLOCK;
    uint16_t *gather = j->c->cur.gather + (size_t)thread * gather_len(j->c->cur.max_ctx);
    for (int64_t item = begin; item < end; item++) {
        int t = (int)(item / ((int64_t)a->n_head_kv * runs)), rest = (int)(item % ((int64_t)a->n_head_kv * runs));
        int kvh = rest / runs, h0 = kvh * group + rest % runs * j->run;
        int nh = kvh * group + group - h0 < j->run ? kvh * group + group - h0 : j->run;
        /* Keys [first, pos]: all of them, or the last `window` (sliding window). */
        int pos = a->pos0 + t, first = a->window > 0 && pos >= a->window ? pos - a->window + 1 : 0;
        int n_pos = pos + 1 - first;
        const float *q = a->q + ((size_t)t * a->n_head + h0) * hd;
        float *out = a->out + ((size_t)t * a->n_head + h0) * hd;
        float inv[ATTN_QUERY_BLOCK];
        if (!a->k_blocks) {
            const size_t head = (size_t)kvh * hd;
            exo__vec_dots_f16_heads(hd, nh, q, (size_t)hd, a->k_cache + (size_t)first * kv_stride + head,
                                    (size_t)kv_stride, n_pos, scores, row);
            for (int g = 0; g < nh; g++) inv[g] = 1.0f / exo__vec_softmax_f32(n_pos, a->scale, scores + g * row);
            exo__vec_wsum_f16_heads(hd, nh, scores, row, a->v_cache + (size_t)first * kv_stride + head,
                                    (size_t)kv_stride, n_pos, out, (size_t)hd);
        } else {
            for (int p0 = first, np; p0 <= pos; p0 += np) {
                np = kv_piece_len(p0, pos, B);
                exo__vec_dots_f16_heads(hd, nh, q, (size_t)hd,
                                        kv_head_row(NULL, a->k_blocks, B, a->n_head_kv, hd, kvh, p0), (size_t)hd, np,
                                        scores + (p0 - first), row);
            }
            for (int g = 0; g < nh; g++) inv[g] = 1.0f / exo__vec_softmax_f32(n_pos, a->scale, scores + g * row);
            if (hd % EXO_VEC_WSUM_MORE_LANES == 0) {
                for (int p0 = first, np; p0 <= pos; p0 += np) {
                    np = kv_piece_len(p0, pos, B);
                    const uint16_t *v = kv_head_row(NULL, a->v_blocks, B, a->n_head_kv, hd, kvh, p0);
                    if (p0 == first)
                        exo__vec_wsum_f16_heads(hd, nh, scores, row, v, (size_t)hd, np, out, (size_t)hd);
                    else
                        exo__vec_wsum_f16_heads_more(hd, nh, scores + (p0 - first), row, v, (size_t)hd, np, out,
                                                     (size_t)hd);
                }
            } else {
                /* Head sizes past a multiple of 64: each output lane is its
                 * own chain over the keys in order, so slices of 64 lanes (the
                 * kernels' own chunks) over the values copied into one run
                 * give one call's bits. */
                for (int l0 = 0; l0 < hd; l0 += 64) {
                    int nl = hd - l0 < 64 ? hd - l0 : 64;
                    for (int p = 0; p < n_pos; p++)
                        memcpy(gather + (size_t)p * nl,
                               kv_head_row(NULL, a->v_blocks, B, a->n_head_kv, hd, kvh, first + p) + l0,
                               sizeof(uint16_t) * nl);
                    exo__vec_wsum_f16_heads(nl, nh, scores, row, gather, (size_t)nl, n_pos, out + l0, (size_t)hd);
                }
            }
        }
        for (int g = 0; g < nh; g++)
            for (int i = 0; i < hd; i++) out[(size_t)g * hd + i] *= inv[g];
    }
}

/* Batched attention: one work item is (head, block of ATTN_QUERY_BLOCK
 * queries). Scores for the block come from one sgemm against the head's keys,
 * the causal mask and softmax run per row, and one more sgemm weighs the
 * values. The scratch row of scores is max_ctx wide per query of the block. */
static void attention_blocks(void *ctx, int64_t begin, int64_t end, int thread)
{
    const attention_job *j = ctx;
    const exo_attention_args *a = j->a;
    const int hd = a->head_dim;
    const int q_stride = a->n_head * hd;
    const int group = a->n_head / a->n_head_kv;
    const int n_blocks = (a->n_tokens + ATTN_QUERY_BLOCK - 1) / ATTN_QUERY_BLOCK;
    float *scores = j->c->cur.scores + (size_t)thread * j->c->cur.max_ctx * ATTN_QUERY_BLOCK;
    /* f32 copies of GEMM_TILE_ROWS keys (or values) at a time, for sgemm */
    float *kv = j->c->cur.tiles + (size_t)thread * GEMM_TILE_ROWS * j->c->cur.max_dim;
    const exo_to_float_fn widen = exo__type_traits_get(EXO_DTYPE_F16)->to_float;
    for (int64_t item = begin; item < end; item++) {
        int h = (int)(item / n_blocks), blk = (int)(item % n_blocks);
        int kvh = h / group;
        int t0 = blk * ATTN_QUERY_BLOCK;
        int nq = a->n_tokens - t0 < ATTN_QUERY_BLOCK ? a->n_tokens - t0 : ATTN_QUERY_BLOCK;
        int n_pos = a->pos0 + t0 + nq; /* keys the last query of the block sees */
        const float *q = a->q + (size_t)t0 * q_stride + (size_t)h * hd;
        /* scores[i][p] = scale * q_i . k_p, rows n_pos wide */
        for (int p0 = 0; p0 < n_pos; p0 += GEMM_TILE_ROWS) {
            int np = n_pos - p0 < GEMM_TILE_ROWS ? n_pos - p0 : GEMM_TILE_ROWS;
            for (int p = 0; p < np; p++)
                widen(kv_head_row(a->k_cache, a->k_blocks, a->block_len, a->n_head_kv, hd, kvh, p0 + p),
                      kv + (size_t)p * hd, hd);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, np, hd, a->scale, q, q_stride, kv, hd, 0.0f,
                        scores + p0, n_pos);
        }
        for (int i = 0; i < nq; i++) {
            float *row = scores + (size_t)i * n_pos;
            /* Query i sees keys [first, visible): causal, and within the window. */
            int visible = a->pos0 + t0 + i + 1;
            int first = a->window > 0 && visible > a->window ? visible - a->window : 0;
            float max = -INFINITY;
            for (int p = first; p < visible; p++) max = row[p] > max ? row[p] : max;
            float sum = 0;
            for (int p = first; p < visible; p++) sum += row[p] = expf(row[p] - max);
            float inv = 1.0f / sum;
            for (int p = 0; p < first; p++) row[p] = 0.0f; /* outside the window */
            for (int p = first; p < visible; p++) row[p] *= inv;
            for (int p = visible; p < n_pos; p++) row[p] = 0.0f; /* causal mask */
        }
        float *out = a->out + (size_t)t0 * q_stride + (size_t)h * hd;
        for (int p0 = 0; p0 < n_pos; p0 += GEMM_TILE_ROWS) {
            int np = n_pos - p0 < GEMM_TILE_ROWS ? n_pos - p0 : GEMM_TILE_ROWS;
            for (int p = 0; p < np; p++)
                widen(kv_head_row(a->v_cache, a->v_blocks, a->block_len, a->n_head_kv, hd, kvh, p0 + p),
                      kv + (size_t)p * hd, hd);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, np, 1.0f, scores + p0, n_pos, kv, hd,
                        p0 ? 1.0f : 0.0f, out, q_stride);
        }
    }
}

static void cpu_attention(exo_backend *be, const exo_attention_args *a)
{
    const cpu_ctx *c = be->ctx;
    attention_job job = {a, c, 1};
    if (a->n_tokens >= c->gemm_min_tokens) {
        int64_t n_blocks = (a->n_tokens + ATTN_QUERY_BLOCK - 1) / ATTN_QUERY_BLOCK;
        exo__pool_for(c->pool, n_blocks * a->n_head, 1, attention_blocks, &job);
    } else {
        /* Whole groups, unless that leaves a thread idle: then as many runs
         * per group as it takes to give each thread an item. */
        const int group = a->n_head / a->n_head_kv, n_threads = exo__pool_threads(c->pool);
        const int64_t groups = (int64_t)a->n_tokens * a->n_head_kv;
        int64_t split = groups >= n_threads ? 1 : (n_threads + groups - 1) / groups;
        if (split > group) split = group;
        job.run = (int)((group + split - 1) / split);
        if (job.run > ATTN_QUERY_BLOCK) job.run = ATTN_QUERY_BLOCK;
        const int runs = (group + job.run - 1) / job.run;
        exo__pool_for(c->pool, groups * runs, 1, attention_items, &job);
    }
}

/* ---- packed weights ------------------------------------------------------ */

/* EXO_PACK=0 (or off, false, no) reads the file's layout. */
static bool packing_enabled(void)
{
    const char *env = getenv("EXO_PACK");
    return !(env && (!strcmp(env, "0") || !strcasecmp(env, "off") || !strcasecmp(env, "false") ||
                     !strcasecmp(env, "no")));
}

static size_t cpu_packed_size(exo_backend *be, const exo_tensor *w)
{
    (void)be;
    exo__quants_init();
    const exo_type_traits *tr = exo__type_traits_get(w->dtype);
    if (!tr || !tr->pack_x4 || !tr->vec_dot_packed || w->n_dims != 2 || w->ne[1] % 4 || !packing_enabled() ||
        w->nb[1] > PACKED_MAX_ROW_BYTES)
        return 0;
    return (size_t)w->ne[1] * w->nb[1];
}

typedef struct pack_job {
    exo_tensor *w;
    char *dst;
    exo_pack_x4_fn pack;
} pack_job;

static void pack_groups(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    const pack_job *j = ctx;
    const size_t group_bytes = 4 * j->w->nb[1];
    for (int64_t g = begin; g < end; g++)
        j->pack(exo_tensor_row(j->w, 4 * g), j->w->nb[1], (int)j->w->ne[0], j->dst + (size_t)g * group_bytes);
}

static void cpu_pack(exo_backend *be, exo_tensor *w, void *dst)
{
    const cpu_ctx *c = be->ctx;
    pack_job job = {w, dst, exo__type_traits_get(w->dtype)->pack_x4};
    exo__pool_for(c->pool, w->ne[1] / 4, 64, pack_groups, &job);
    w->packed = dst;
}

static cpu_ctx cpu_state = {.next_lock = PTHREAD_MUTEX_INITIALIZER};

static exo_backend cpu_backend = {
    .name = "cpu",
    .ctx = &cpu_state,
    .reserve = cpu_reserve,
    .prepare = cpu_prepare,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .matmul = cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .matmul_glu = cpu_matmul_glu,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .add = cpu_add,
    .scale = cpu_scale,
    .to_f16 = cpu_to_f16,
    .get_rows = cpu_get_rows,
    .packed_size = cpu_packed_size,
    .pack = cpu_pack,
};

static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

/* Settings read once, before any operation runs. */
static void cpu_init(void)
{
    exo__quants_init();
    /* Our pool parallelises over tiles; OpenBLAS threads would fight it. */
    openblas_set_num_threads(1);
    cpu_state.pool = exo__pool_global();
    exo__pool_global_pin(); /* passes use this pool from now on */
    gelu_table_init();
    const char *env = getenv("EXO_GEMM_MIN_TOKENS");
    cpu_state.gemm_min_tokens = env && atoi(env) > 0 ? atoi(env) : GEMM_OFF;
}

exo_backend *exo__backend_cpu(void)
{
    pthread_once(&cpu_once, cpu_init);
    return &cpu_backend;
}

exo_backend *exo__backend_find(const char *name)
{
    if (!name || !strcmp(name, "cpu")) return exo__backend_cpu();
    return NULL;
}
