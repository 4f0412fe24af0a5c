/* model.h: shards, sequences and the per-architecture hooks (internal).
 *
 * model.c owns everything every architecture shares: opening the file,
 * reading hyper-parameters from GGUF metadata, the KV cache, positions,
 * batching and the lock that serialises forward passes. Each architecture
 * file (models/llama.c) binds its tensors and implements one batched forward over
 * the backend table. */
#ifndef EXO_MODEL_H
#define EXO_MODEL_H

#include <pthread.h>
#include <stdbool.h>

#include "backend.h"
#include "exo.h"
#include "gguf.h"
#include "tensor.h"

/* Hyper-parameters, all read from metadata. */
typedef struct exo_hparams {
    int n_vocab;
    int n_ctx_train;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int rope_dim;          /* rotated elements per head */
    int rope_style;        /* enum exo_rope_style */
    float rope_freq_base;
    float rope_linear_scale; /* positions are divided by this (1 = none) */
    float rms_eps;
} exo_hparams;

typedef struct exo_llama_layer {
    exo_tensor attn_norm;  /* (n_embd) */
    exo_tensor wq;         /* (n_embd -> n_head * head_dim) */
    exo_tensor wk;         /* (n_embd -> n_head_kv * head_dim) */
    exo_tensor wv;         /* (n_embd -> n_head_kv * head_dim) */
    exo_tensor wo;         /* (n_head * head_dim -> n_embd) */
    exo_tensor ffn_norm;   /* (n_embd) */
    exo_tensor w_gate;     /* (n_embd -> n_ff) */
    exo_tensor w_up;       /* (n_embd -> n_ff) */
    exo_tensor w_down;     /* (n_ff -> n_embd) */
} exo_llama_layer;

/* Activations for one internal batch, allocated once per shard. */
typedef struct exo_run_state {
    float *x;      /* (max_batch, n_embd) residual stream */
    float *xn;     /* (max_batch, n_embd) normalised input of a block */
    float *q;      /* (max_batch, n_head * head_dim) */
    float *k;      /* (max_batch, n_head_kv * head_dim) */
    float *v;      /* (max_batch, n_head_kv * head_dim) */
    float *att;    /* (max_batch, n_head * head_dim) attention output */
    float *gate;   /* (max_batch, n_ff) */
    float *up;     /* (max_batch, n_ff) */
    float *rope_cos; /* (max_batch, rope_dim / 2) */
    float *rope_sin;
} exo_run_state;

struct exo_shard {
    exo_gguf *file;
    char arch[32];
    exo_hparams hp;
    int layer_start, layer_end;
    bool is_first, is_last;
    int max_batch;
    int64_t weight_bytes;
    const exo_backend *backend;

    exo_tensor tok_embd;     /* (n_vocab, n_embd), first shard or tied head */
    exo_tensor output_norm;  /* (n_embd), last shard */
    exo_tensor output;       /* (n_vocab, n_embd), last shard; tok_embd when tied */
    float *rope_inv_freq;    /* (rope_dim / 2) */
    exo_llama_layer *layers; /* layer_end - layer_start entries */
    exo_run_state rs;
    void *packed;            /* the backend's packed copies of the weights (exo_weights_alloc) */
    size_t packed_bytes;
};

struct exo_seq {
    exo_shard *shard;
    int n_ctx;
    int pos;               /* positions [0, pos) are in the cache */
    uint16_t *k_cache;     /* (n_layers_in_shard, n_ctx, n_head_kv * head_dim), f16 as llama.cpp's default */
    uint16_t *v_cache;
};

/* Architecture hooks (models/llama.c). */
int exo_llama_bind(exo_shard *s);
/* One batch of n_tokens <= max_batch at positions seq->pos..; writes hidden
 * states or logits as exo_shard_forward documents (logits_from: first row
 * that needs logits). Does not advance seq->pos. */
int exo_llama_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int logits_from, float *out);

/* Helpers the architecture files share. */
int exo_model_bind_tensor(exo_shard *s, exo_tensor *t, const char *name, int n_dims, int64_t ne0, int64_t ne1,
                          bool required);
/* Lets the backend pack the matrices that every token reads (ws: the bound
 * matmul weights, NULL entries skipped) into one arena of the shard. */
int exo_model_pack_weights(exo_shard *s, exo_tensor *const *ws, int n);

#endif
