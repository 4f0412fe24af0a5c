/* model.h: shards, sequences, the architecture table and the pieces every
 * architecture builds its forward pass from (internal).
 *
 * model.c owns what every architecture shares: opening the file, the
 * hyper-parameters all decoder-only transformers have (read from GGUF
 * metadata under the architecture's prefix), the KV cache, positions,
 * batching and the lock that serialises forward passes. An architecture is
 * one file in native/models/ providing an exo_arch entry (arch.c lists them):
 * it reads its own hyper-parameters, binds its tensors into its own layer
 * structs, and writes its forward pass from the shared pieces below
 * (layers.c: embedding, attention block, feed-forward block, head), which
 * run on the shard's backend. */
#ifndef EXO_MODEL_H
#define EXO_MODEL_H

#include <pthread.h>
#include <stdbool.h>

#include "backend.h"
#include "exo.h"
#include "gguf.h"
#include "tensor.h"

/* Hyper-parameters every architecture has, all read from metadata. */
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
    float rms_eps;
} exo_hparams;

/* One rotary embedding: the inverse frequency of each rotated pair, and the
 * cos/sin of this batch's positions (filled once per forward, shared by every
 * layer that uses it). Gemma 3's local and global layers use two. */
#define EXO_MAX_ROPES 2
typedef struct exo_rope {
    float *inv_freq;       /* (rope_dim / 2) */
    float *inv_freq_long;  /* or NULL: used instead for sequences of more than long_above_ctx positions (Phi 3) */
    int long_above_ctx;
    float freq_base;
    float linear_scale;    /* positions are divided by this (1 = none) */
    float attn_factor;     /* cos and sin are multiplied by this (Phi 3's long-context scaling; 1 = none) */
    float *cos, *sin;      /* (max_batch, rope_dim / 2) */
    int style;             /* enum exo_rope_style */
} exo_rope;

/* Activations for one internal batch, allocated once per shard. */
typedef struct exo_run_state {
    size_t bytes;  /* of the one backend buffer the arrays below are cut from */
    float *base;
    float *x;      /* (max_batch, n_embd) residual stream */
    float *xn;     /* (max_batch, max(n_embd, q_dim)) normalised input of a block, then its output */
    float *q;      /* (max_batch, n_head * head_dim) */
    float *k;      /* (max_batch, n_head_kv * head_dim) */
    float *v;      /* (max_batch, n_head_kv * head_dim) */
    float *att;    /* (max_batch, n_head * head_dim) attention output */
    float *gate;   /* (max_batch, n_ff) */
    float *up;     /* (max_batch, n_ff) */
} exo_run_state;

typedef struct exo_arch exo_arch;

/* A forward pass's input: rows, each with its sequence and position (as
 * llama.cpp's llama_batch), so several requests' decode steps, a prompt's
 * chunk and a speculative verify are the same call. The rows of one sequence
 * are one run of consecutive positions starting where its cache ends; runs
 * of different sequences follow each other. Matrix products take every row
 * at once; attention runs per run, against its own sequence's cache. */
typedef struct exo_batch {
    int n_rows;
    const int32_t *tokens;   /* [n_rows] token ids (first shard) */
    const float *hidden;     /* [n_rows][n_embd] hidden states (other shards) */
    exo_seq *const *seq;     /* [n_rows] the sequence of each row */
    const int32_t *pos;      /* [n_rows] its position there */
    int logits_from;         /* a last shard gives logits for rows >= this (others: every row's hidden state) */
} exo_batch;

/* One sequence's rows of a batch: rows [row0, row0 + n) at positions pos0... */
typedef struct exo_batch_run {
    exo_seq *seq;
    int row0, n, pos0;
} exo_batch_run;

/* Positions per KV block: a multiple of the attention kernels' own blocks
 * of keys (EXO_VEC_KEY_BLOCK), so a block never splits one of them. */
#define EXO_KV_BLOCK 64

/* One backend buffer of the pool: n blocks laid out as
 * [K, V][layer][block][n_head_kv][EXO_KV_BLOCK][head_dim] f16: in a block
 * each KV head's rows are one run, which attention streams (backend.h). */
typedef struct exo_kv_chunk {
    uint16_t *mem;
    size_t bytes;
    int first, n;          /* its blocks are ids [first, first + n) */
} exo_kv_chunk;

/* The shard's KV pool (model.c): the keys and values of every sequence of
 * the shard, in blocks of EXO_KV_BLOCK positions x all the shard's layers.
 * A sequence takes blocks as it grows and gives them back when truncated or
 * freed. A block may be held by several sequences (exo_seq_share_prefix:
 * the same prompt prefix, computed once); it is then never written, and
 * goes back to the free list when its last holder lets go. Two sizings: a budget of blocks made once
 * (exo_shard_set_kv_tokens: sequences share it, a pass that needs a block
 * when none is free fails with EXO_EBUSY), or none (the default): each
 * sequence reserves blocks for its whole context when created, as the
 * per-sequence caches before the pool did, and the pool grows by a chunk
 * when the reservations pass what it holds. Under its own lock: sequences
 * come and go on the loop thread while a pass takes blocks on the engine's. */
typedef struct exo_kv_pool {
    pthread_mutex_t lock;
    exo_backend *backend;  /* the chunks' */
    int refs;              /* the shard and each live sequence: the last to go frees the pool */
    size_t run_halves;     /* one layer's K (or V) rows of one block: EXO_KV_BLOCK * n_head_kv * head_dim */
    int n_head_kv, head_dim;
    int n_layers;
    int budget;            /* blocks, or 0: per-sequence reservations */
    int reserved;          /* without a budget: blocks the live sequences reserved */
    int n_blocks, n_free;  /* made (ids [0, n_blocks)) and free among them; chunks are kept till the shard goes */
    int n_seqs;            /* live sequences */
    int *holders;          /* (n_blocks) sequences holding each block: 0 free, > 1 shared (read only) */
    int *chunk_of;         /* (n_blocks) its chunk */
    exo_kv_chunk *chunks;
    int n_chunks;
} exo_kv_pool;

struct exo_shard {
    exo_gguf *file;
    char arch_name[32];
    const exo_arch *arch;
    exo_hparams hp;
    int layer_start, layer_end;
    bool is_first, is_last;
    int max_batch;
    int64_t weight_bytes;
    exo_backend *backend;

    exo_tensor tok_embd;     /* (n_vocab, n_embd), first shard or tied head */
    float embd_scale;        /* embeddings are multiplied by this (Gemma: sqrt(n_embd)); 1 = none */
    exo_tensor output_norm;  /* (n_embd), last shard */
    exo_tensor output;       /* (n_vocab, n_embd), last shard; tok_embd when tied */
    exo_tensor output_bias;  /* (n_vocab) or absent */
    exo_rope rope[EXO_MAX_ROPES];
    int n_rope;
    void *arch_data;         /* the architecture's hyper-parameters and layers (one malloc, freed with the shard) */
    exo_run_state rs;
    exo_batch_run *runs;     /* (max_batch) the current batch's runs, found by exo__model_forward_batch */
    int n_runs;
    exo_seq **batch_seq;     /* (max_batch) scratch for exo_shard_forward's batches */
    int32_t *batch_pos;
    void *packed;            /* the backend's packed copies of the weights (its EXO_BUFFER_WEIGHTS) */
    struct exo_multi_scratch *multi; /* exo_shard_forward_batch's scratch, made on its first call */
    size_t packed_bytes;
    exo_kv_pool *kv;         /* every sequence's keys and values */
};

struct exo_seq {
    exo_shard *shard;      /* not used by exo_seq_free: a shard freed first leaves its pool to its sequences */
    exo_kv_pool *pool;
    int n_ctx;
    int pos;               /* positions [0, pos) are in the cache; written under the pool's lock (a share
                            * from this sequence reads it on the loop thread while a pass advances it) */
    int max_blocks;        /* ceil(n_ctx / EXO_KV_BLOCK) */
    int n_blocks;          /* blocks held: positions [0, n_blocks * EXO_KV_BLOCK) have memory */
    int reserved;          /* blocks this sequence reserved in a pool without a budget */
    int32_t *block;        /* (max_blocks) the pool's block id of each block of positions */
    /* Per layer of the shard, the block table as the attention kernel takes
     * it: k_blocks[il * max_blocks + b] is block b's keys of layer il. */
    const uint16_t **k_blocks;
    const uint16_t **v_blocks;
};

/* ---- the architecture table (arch.c) --------------------------------------- */

struct exo_arch {
    const char *name;      /* general.architecture, as GGUF converters write it */
    /* After the shared hyper-parameters: this family's own keys, checks and
     * ropes (exo__model_add_rope), and arch_data with room for its layers. */
    int (*read_hparams)(exo_shard *s);
    /* Binds the tensors of layers [layer_start, layer_end) (and the
     * embedding / head a first / last shard holds) and packs the matrices. */
    int (*bind)(exo_shard *s);
    /* One batch of at most max_batch rows, checked and cut into runs
     * (s->runs) by the model layer; writes hidden states for every row, or
     * logits for rows >= logits_from, to out. Does not advance positions. */
    int (*forward)(exo_shard *s, const exo_batch *b, float *out);
};

/* The entry for an architecture name, or NULL. */
const exo_arch *exo__arch_find(const char *name);
/* "llama, qwen2, ...": the supported names, for error messages. */
const char *exo__arch_names(void);

/* ---- metadata and binding helpers (model.c) -------------------------------- */

/* "<arch>.<suffix>" as an integer in [0, 2^30]; absent: an error when
 * required, else fallback. */
int exo__model_meta_int(const exo_shard *s, const char *suffix, int *out, bool required, int fallback);
/* "<arch>.<suffix>" as a finite float; absent: fallback. */
int exo__model_meta_float(const exo_shard *s, const char *suffix, float *out, float fallback);
/* Whether "<arch>.<suffix>" is present. */
bool exo__model_meta_has(const exo_shard *s, const char *suffix);
/* The linear rope scaling the file declares ("<arch>.rope.scaling.*"):
 * positions are divided by *linear_scale (1 when none); other kinds are
 * refused. */
int exo__model_rope_scaling(const exo_shard *s, float *linear_scale);
/* "<arch>.attention.sliding_window" (0 when absent); larger than the
 * training context is an error. */
int exo__model_sliding_window(const exo_shard *s, int *window);
/* Adds the rope the file describes: "<arch>.rope.freq_base" (default
 * 10000), its linear scaling, and the factors tensor when named and present. */
int exo__model_add_file_rope(exo_shard *s, int style, const char *factors);
/* Gives rope `rope` a second set of frequencies, with the factors tensor
 * named, for sequences whose context is over above_ctx positions (Phi 3's
 * long factors, as llama.cpp picks them per context). */
int exo__model_rope_long_factors(exo_shard *s, int rope, const char *factors, int above_ctx);
/* Adds a rotary embedding (freq_base, linear scaling; factors: the tensor of
 * per-pair frequency divisors Llama 3 and Phi 3 files carry, or NULL) and
 * returns its index in s->rope, or a negative error. */
int exo__model_add_rope(exo_shard *s, float freq_base, float linear_scale, int style, const char *factors);
/* Binds a tensor of the file by name, checking its shape; absent: an error
 * when required, else t is zeroed (t->data NULL). */
int exo__model_bind_tensor(exo_shard *s, exo_tensor *t, const char *name, int n_dims, int64_t ne0, int64_t ne1,
                          bool required);
/* Binds "blk.<il>.<suffix>" (the per-layer names GGUF converters write). */
int exo__model_bind_layer_tensor(exo_shard *s, exo_tensor *t, int il, const char *suffix, int n_dims, int64_t ne0,
                                int64_t ne1, bool required);
/* A view of rows [row0, row0 + n_rows) of matrix m (a fused QKV or gate/up
 * matrix cut into its parts). */
void exo__model_row_view(exo_tensor *t, const exo_tensor *m, int64_t row0, int64_t n_rows);
/* Binds the vocabulary-sized tensors: sets n_vocab from token_embd.weight,
 * binds the embedding (first shard) and the final norm, head and optional
 * head bias (last shard; the embedding when output.weight is absent). */
int exo__model_bind_embeddings(exo_shard *s);
/* Lets the backend pack the matrices that every token reads (ws: the bound
 * matmul weights, NULL or absent entries skipped) into one arena of the
 * shard. The head goes first. */
int exo__model_pack_weights(exo_shard *s, exo_tensor *const *ws, int n);

/* ---- the pieces of a forward pass (layers.c) ------------------------------- */

/* An attention block's weights and settings. Optional tensors have data NULL. */
typedef struct exo_attn_block {
    exo_tensor norm;       /* (n_embd) RMSNorm before the block */
    exo_tensor wq;         /* (n_embd -> n_head * head_dim) */
    exo_tensor wk;         /* (n_embd -> n_head_kv * head_dim) */
    exo_tensor wv;         /* (n_embd -> n_head_kv * head_dim) */
    exo_tensor wo;         /* (n_head * head_dim -> n_embd) */
    exo_tensor bq, bk, bv, bo; /* optional biases (Qwen 2) */
    exo_tensor q_norm;     /* optional (head_dim) RMSNorm of each query head (Qwen 3, Gemma 3) */
    exo_tensor k_norm;     /* optional, of each key head */
    exo_tensor post_norm;  /* optional (n_embd) RMSNorm of the block's output (Gemma) */
    int rope;              /* index into s->rope */
    int window;            /* sliding window: a query sees the last `window` positions; 0 = all */
    float scale;           /* attention logits are q.k * scale */
} exo_attn_block;

/* A gated feed-forward block: down(act(gate . x) * (up . x)). */
typedef struct exo_ffn_block {
    exo_tensor norm;       /* (n_embd) RMSNorm before the block */
    exo_tensor gate;       /* (n_embd -> n_ff) */
    exo_tensor up;         /* (n_embd -> n_ff) */
    exo_tensor down;       /* (n_ff -> n_embd) */
    exo_tensor post_norm;  /* optional (n_embd) RMSNorm of the block's output (Gemma) */
    int act;               /* enum exo_ffn_act */
} exo_ffn_block;

/* One decoder layer: attention, then feed-forward. */
typedef struct exo_decoder_layer {
    exo_attn_block attn;
    exo_ffn_block ffn;
} exo_decoder_layer;

/* What exo__layers_bind looks for besides the tensors every layer has. */
enum exo_bind_flags {
    EXO_BIND_QK_NORM = 1,    /* attn_q_norm / attn_k_norm (required) */
    EXO_BIND_POST_NORMS = 2  /* post_attention_norm / post_ffw_norm (required) */
};

/* Binds the tensors of the shard's layers (layers[i] is layer
 * layer_start + i) under the names GGUF converters write: attn_norm,
 * attn_q/k/v (or a fused attn_qkv, cut into views), optional Q/K/V/output
 * biases, attn_output, ffn_norm, ffn_gate/up/down (or an ffn_up of 2 * n_ff
 * rows holding gate then up), plus what flags name; the embeddings; then
 * packs every matrix. Each block gets rope 0, no window, scale
 * 1/sqrt(head_dim) and act: the architecture changes them after. */
int exo__layers_bind(exo_shard *s, exo_decoder_layer *layers, int flags, int act);
/* A whole forward pass over decoder layers: begin, every layer, end. */
int exo__layers_forward(exo_shard *s, const exo_batch *b, const exo_decoder_layer *layers, float *out);
/* For architectures whose arch_data is just their layers: allocates them
 * (read_hparams), and the exo_arch.forward that runs them. */
int exo__layers_alloc(exo_shard *s);
int exo__layers_forward_arch(exo_shard *s, const exo_batch *b, float *out);

/* The steps of a forward pass, for architectures that need their own order. */
/* Fills the batch's residual stream rs.x: embeds tokens (first shard, times
 * s->embd_scale) or copies the hidden states in; fills every rope's table
 * for the rows' positions. */
int exo__layers_begin(exo_shard *s, const exo_batch *b);
/* x += post_norm(Wo . attention(...)) for layer il_local of the shard. */
int exo__layers_attention(exo_shard *s, const exo_batch *batch, int il_local, const exo_attn_block *b);
/* x += post_norm(down(act(gate . norm(x)) * up . norm(x))). */
int exo__layers_ffn(exo_shard *s, const exo_batch *batch, const exo_ffn_block *b);
/* The shard's output: hidden states (not last) or logits of rows
 * [logits_from, n_rows) after the final norm and head. */
int exo__layers_end(exo_shard *s, const exo_batch *b, float *out);

/* exo_shard_load on a backend chosen by name (exo__backend_find: "cpu"). */
int exo__model_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, const char *backend,
                   exo_shard **out);

/* Runs a checked batch through the shard (model.c): rows of at most
 * max_batch, each sequence's rows one run of consecutive positions starting
 * where its cache ends; advances each sequence past its rows. Serialised
 * with every other forward pass. */
int exo__model_forward_batch(exo_shard *s, const exo_batch *b, float *out);

#endif
