/* backend.h: the seam between model code and the hardware that runs it.
 *
 * A backend is an instance: a table of operations plus its own context
 * (ctx), which every operation receives as its first argument (the backend
 * itself), as ggml's backends are. Model code (layers.c, models/) expresses a
 * forward pass only through these operations, over f32 activations laid out
 * row-major [n_tokens][dim] and weight tensors of any dtype, and allocates
 * its run state and KV caches through alloc/release, so a device backend
 * owns device memory for them and model code never assumes host memory:
 * activations cross in and out only through copy_in / copy_out.
 *
 * What a new backend implements: every operation below except the optional
 * packed_size / pack; reserve (record the largest call it must serve),
 * prepare (grow its scratch to that; called at the start of every forward
 * pass, on the thread that runs it, with passes serialised by the model
 * layer, so scratch is only ever touched by that thread), alloc / release,
 * copy_in / copy_out, and the compute operations. backend_cpu.c is the
 * reference implementation; nothing in the model layer changes for a new
 * one. No operation allocates on the per-token path. */
#ifndef EXO_BACKEND_H
#define EXO_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

enum exo_rope_style {
    EXO_ROPE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): Llama as GGUF stores it */
    EXO_ROPE_NEOX = 1  /* rotate halves (x[i], x[i + d/2]) */
};

/* The activation of a gated feed-forward (matmul_glu). */
enum exo_ffn_act {
    EXO_FFN_SILU = 0,      /* silu(gate) * up: SwiGLU (Llama, Qwen, Phi 3) */
    EXO_FFN_GELU_TANH = 1  /* gelu_tanh(gate) * up: GeGLU (Gemma) */
};

/* Precomputed rotation for a batch: cos/sin [n_tokens][rope_dim/2]. */
typedef struct exo_rope_table {
    const float *cos;
    const float *sin;
    int rope_dim;
    int style;
} exo_rope_table;

/* One attention call: queries for n_tokens consecutive positions starting at
 * pos0, against a cache that already holds keys/values for positions
 * [0, pos0 + n_tokens). Causal: token t sees positions <= pos0 + t.
 * The cache is one run of rows (k_cache, v_cache: each position's KV heads
 * side by side) or, when k_blocks is set, a block table, the paged KV pool's
 * layout (model.h): position p is in block p / block_len, where KV head h's
 * row for it is row h * block_len + p % block_len (each head's rows of a
 * block one run, head_dim apart: attention streams them). */
typedef struct exo_attention_args {
    const float *q;        /* [n_tokens][n_head * head_dim] */
    const uint16_t *k_cache; /* [n_ctx][n_head_kv * head_dim], f16 */
    const uint16_t *v_cache; /* [n_ctx][n_head_kv * head_dim], f16 */
    const uint16_t *const *k_blocks; /* or NULL: [block][n_head_kv][block_len][head_dim], f16 */
    const uint16_t *const *v_blocks;
    int block_len;         /* positions per block, a multiple of EXO_VEC_KEY_BLOCK (64) */
    float *out;            /* [n_tokens][n_head * head_dim] */
    int n_tokens;
    int pos0;
    int n_head;
    int n_head_kv;
    int head_dim;
    float scale;           /* usually 1/sqrt(head_dim) */
    int window;            /* sliding window: query at p sees keys in (p - window, p]; 0 = all of [0, p] */
} exo_attention_args;

/* One product of a matmul_multi call: y[t * ldy + r] = w[r] . x[t]. */
typedef struct exo_matmul_out {
    const exo_tensor *w;
    float *y;
    int ldy;
} exo_matmul_out;

/* What a buffer holds, so a backend can place it (host memory for the CPU). */
enum exo_buffer_kind {
    EXO_BUFFER_ACTIVATIONS = 0, /* a shard's run state */
    EXO_BUFFER_KV_CACHE = 1,    /* a sequence's keys and values */
    EXO_BUFFER_WEIGHTS = 2      /* the backend's own copies of weight matrices */
};

typedef struct exo_backend exo_backend;
struct exo_backend {
    const char *name;
    void *ctx;             /* the backend's own state (scratch, pool, settings) */
    /* Records that calls with up to max_tokens rows and rows of up to max_dim
     * elements, and attention over up to max_ctx positions, must be served.
     * Any thread; cheap; the memory is found by the next prepare. */
    int (*reserve)(exo_backend *be, int max_tokens, int max_dim, int max_ctx);
    /* Makes what reserve recorded available; at the start of each forward
     * pass, on its thread. Fails with EXO_ENOMEM when it cannot. */
    int (*prepare)(exo_backend *be);
    /* Memory of the backend for a buffer of the given kind (contents
     * undefined), or NULL; release takes it back (the same size). */
    void *(*alloc)(exo_backend *be, size_t bytes, int kind);
    void (*release)(exo_backend *be, void *p, size_t bytes, int kind);
    /* Host rows into / out of the backend's activations. */
    void (*copy_in)(exo_backend *be, float *dst, const float *host, size_t n);
    void (*copy_out)(exo_backend *be, float *host, const float *src, size_t n);
    /* y[t * ldy + r] = sum_k w[r][k] * x[t * k_dim + k] for r < w->ne[1], t < n_tokens. */
    int (*matmul)(exo_backend *be, const exo_tensor *w, const float *x, int n_tokens, float *y, int ldy);
    /* Up to four products sharing the input x (all w with the same row width):
     * Q, K and V, or gate and up, in one pass. */
    int (*matmul_multi)(exo_backend *be, const exo_matmul_out *outs, int n_outs, const float *x, int n_tokens);
    /* gate[t * n + r] = act(w_gate[r] . x[t]) * (w_up[r] . x[t]) for r < n =
     * w_gate->ne[1], act an enum exo_ffn_act (silu: SwiGLU; gelu_tanh:
     * GeGLU): a gated feed-forward's two products and their product in one
     * pass (up is scratch of the same shape). */
    int (*matmul_glu)(exo_backend *be, const exo_tensor *w_gate, const exo_tensor *w_up, const float *x, int n_tokens,
                      float *gate, float *up, int act);
    /* y[t] = x[t] / rms(x[t]) * weight (weight may be NULL); y may be x. */
    void (*rmsnorm)(exo_backend *be, const float *x, const float *weight, float *y, int n_tokens, int dim, float eps);
    /* In place on x [n_tokens][n_heads * head_dim]; rotates the first rope_dim
     * elements of each head. */
    void (*rope)(exo_backend *be, float *x, int n_tokens, int n_heads, int head_dim, const exo_rope_table *rope);
    void (*attention)(exo_backend *be, const exo_attention_args *a);
    /* y[i] += x[i] */
    void (*add)(exo_backend *be, float *y, const float *x, int64_t n);
    /* y[i] *= factor */
    void (*scale)(exo_backend *be, float *y, float factor, int64_t n);
    /* y[i] = x[i] as f16 (round to nearest even): rows into the KV cache. */
    void (*to_f16)(exo_backend *be, const float *x, uint16_t *y, int64_t n);
    /* out[t] = row ids[t] of the embedding matrix, as floats. */
    int (*get_rows)(exo_backend *be, const exo_tensor *emb, const int32_t *ids, int n_tokens, float *out);
    /* Optional: the bytes of the backend's own copy of weight matrix w in the
     * layout its kernels read fastest, or 0 to read w as the file has it. */
    size_t (*packed_size)(exo_backend *be, const exo_tensor *w);
    /* Writes that copy to dst (packed_size bytes, from alloc with
     * EXO_BUFFER_WEIGHTS) and points w->packed at it. Results do not
     * change, only speed. */
    void (*pack)(exo_backend *be, exo_tensor *w, void *dst);
};

/* The CPU backend (the process's compute pool). */
exo_backend *exo__backend_cpu(void);
/* A backend by name ("cpu"), or NULL when this build has none of that name. */
exo_backend *exo__backend_find(const char *name);

#endif
