/* make_tiny_model.c: writes a small GGUF model with random weights.
 *
 * The forward-pass tests need a real model file that loads through the same
 * path as a downloaded one, yet runs in milliseconds. This writes one, of any
 * architecture exo runs (--arch llama, qwen2, qwen3, gemma3, phi3): the
 * metadata keys that architecture's GGUF files carry, tensors named and
 * shaped as converters write them (Qwen 2's biases, Qwen 3's and Gemma 3's
 * per-head norms, Gemma's post norms, Phi 3's fused QKV and gate/up, Llama 3's
 * and Phi 3's rope factors where a vocabulary is asked for), weights
 * quantized with the reference quantizers. Deterministic for a given seed.
 * Gemma 3 files get a small sliding window (--window, default 8) and a
 * pattern of 3 (layers 2, 5, ... are global), so short tests exercise both
 * kinds of layer.
 *
 * With --tokenizer 1 the file also carries a small SentencePiece-style
 * vocabulary (control tokens, the 256 byte tokens, then letters and letter
 * pairs) and a plain chat template, so the whole text path (API, cluster)
 * can run on it.
 *
 * With --shape NAME it writes a model of a real model's shape instead
 * (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, qwen2.5-0.5b, qwen2.5-7b: their
 * layers, widths, heads and tying), and with --tokenizer-from FILE.gguf it
 * copies that file's tokenizer (every tokenizer.* key; the vocabulary sets
 * the embedding's rows). With --type f16 such a file is what llama-quantize
 * turns into the formats hub files come in, for benchmarks at real sizes
 * (docs/performance.md). Tensors are made as the file is written, one at a
 * time (the writer's fill callback, drawing the same random numbers in the
 * same order), so memory stays near the largest tensor: the 16 GB F16 8B
 * shape writes in well under 1 GB.
 *
 * usage: exo-make-tiny-model OUT.gguf [--arch llama] [--type q4_1]
 *        [--embd-type q8_0] [--layers 4] [--seed 1] [--tied 1] [--tokenizer 0]
 *        [--head-dim N] [--window N] [--ctx N] [--shape NAME]
 *        [--tokenizer-from FILE.gguf] */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../kernels/cpu/quants.h"
#include "../native/gguf.h"

typedef struct tiny_config {
    const char *arch;
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    int head_dim;     /* 0: n_embd / n_head */
    int window;       /* gemma3's sliding window */
    int weight_type, embd_type;
    int tied;
    int tokenizer;
    const char *tokenizer_from; /* copy this GGUF file's tokenizer */
    float rope_base;            /* 0: the architecture's default */
    bool real_shape;            /* a --shape: Llama 3's rope factors, a real name */
    uint64_t seed;
} tiny_config;

/* Real models' shapes (their config.json): the matrices a benchmark streams. */
typedef struct real_shape {
    const char *name, *arch;
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, tied;
    float rope_base;
} real_shape;

static const real_shape real_shapes[] = {
    {"llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, 128256, 1, 500000.0f},
    {"llama-3.2-3b", "llama", 28, 3072, 24, 8, 8192, 128256, 1, 500000.0f},
    {"llama-3.1-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 0, 500000.0f},
    {"qwen2.5-0.5b", "qwen2", 24, 896, 14, 2, 4864, 151936, 1, 1000000.0f},
    {"qwen2.5-7b", "qwen2", 28, 3584, 28, 4, 18944, 152064, 0, 1000000.0f},
};

static uint64_t rng_state;

/* splitmix64: tiny, good enough for test weights, same on every platform. */
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Approximately normal: the sum of four uniforms, centred and scaled. */
static float rng_normal(void)
{
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)(rng_next() >> 11) / (double)(1ULL << 53);
    return (float)((s - 2.0) * sqrt(3.0));
}

/* Any dtype with a reference quantizer, by its name ("q4_k"). */
static int dtype_from_name(const char *name)
{
    for (int dtype = 0; dtype < EXO_DTYPE_COUNT; dtype++) {
        const exo_type_traits *tr = exo__type_traits_get(dtype);
        if (tr && tr->from_float_ref && strcasecmp(tr->name, name) == 0) return dtype;
    }
    return -1;
}

/* What a tensor's values are; its bytes are made when the writer reaches it. */
enum tensor_kind { T_MATRIX, T_VECTOR, T_ROPE, T_NORM };

typedef struct tensor_plan {
    enum tensor_kind kind;
    int dtype;
    int64_t cols, rows; /* rows 1 for the f32 vectors */
    float std;
} tensor_plan;

/* The tensors in the order added (and written); the generator draws from the
 * one random stream in this order, so the file is the same for a seed. */
static tensor_plan *plans;
static size_t n_plans, cap_plans;

static int plan(exo_gguf_writer *w, const char *name, tensor_plan p)
{
    int64_t ne[2] = {p.cols, p.rows};
    size_t bytes = exo__dtype_row_size(p.dtype, p.cols) * (size_t)p.rows;
    if (n_plans == cap_plans) {
        size_t cap = cap_plans ? 2 * cap_plans : 64;
        tensor_plan *grown = realloc(plans, cap * sizeof *plans);
        if (!grown) return -1;
        plans = grown, cap_plans = cap;
    }
    int rc = exo__gguf_writer_add_tensor_later(w, name, p.dtype, p.kind == T_MATRIX ? 2 : 1, ne, bytes);
    if (!rc) plans[n_plans++] = p;
    return rc;
}

/* The writer's fill callback: one tensor's values, drawn row by row (a row's
 * floats are the only scratch) and quantized with the reference quantizer. */
static int fill_tensor(void *ud, size_t index, void *buf, size_t size)
{
    (void)ud, (void)size;
    if (index >= n_plans) return -1;
    const tensor_plan *p = &plans[index];
    float *values = malloc((size_t)p->cols * sizeof(float));
    if (!values) return -1;
    const exo_type_traits *tr = exo__type_traits_get(p->dtype);
    size_t row_bytes = exo__dtype_row_size(p->dtype, p->cols);
    for (int64_t r = 0; r < p->rows; r++) {
        for (int64_t i = 0; i < p->cols; i++) {
            if (p->kind == T_MATRIX || p->kind == T_VECTOR) values[i] = p->std * rng_normal();
            else if (p->kind == T_ROPE) values[i] = 1.0f + (float)((rng_next() >> 11) % 3000) / 1000.0f;
            else values[i] = 1.0f + 0.1f * rng_normal();
        }
        if (p->kind == T_MATRIX) tr->from_float_ref(values, (char *)buf + (size_t)r * row_bytes, p->cols);
        else memcpy(buf, values, (size_t)p->cols * sizeof(float));
    }
    free(values);
    return 0;
}

/* A [rows][cols] matrix (ne = {cols, rows}) of random values with the given
 * standard deviation, quantized to dtype. */
static int add_matrix(exo_gguf_writer *w, const char *name, int dtype, int64_t cols, int64_t rows, float std)
{
    return plan(w, name, (tensor_plan){T_MATRIX, dtype, cols, rows, std});
}

/* A vector of random values (biases). */
static int add_vector(exo_gguf_writer *w, const char *name, int64_t n, float std)
{
    return plan(w, name, (tensor_plan){T_VECTOR, EXO_DTYPE_F32, n, 1, std});
}

/* Per-frequency rope divisors, as Llama 3 (rope_freqs) and Phi 3 long
 * context files (rope_factors_short/long) carry: values in [1, 4). */
static int add_rope_factors(exo_gguf_writer *w, const char *name, int64_t n)
{
    return plan(w, name, (tensor_plan){T_ROPE, EXO_DTYPE_F32, n, 1, 0});
}

/* A norm weight near 1, as trained models have. */
static int add_norm(exo_gguf_writer *w, const char *name, int64_t n)
{
    return plan(w, name, (tensor_plan){T_NORM, EXO_DTYPE_F32, n, 1, 0});
}

/* SentencePiece layout as llama.cpp's converter writes it: <unk> <s> </s>,
 * <0x00>..<0xFF>, then ordinary pieces ("\u2581" marks a word start) whose
 * prefixes are all pieces too, so every merge path exists. */
static int add_tokenizer(exo_gguf_writer *w, int n_vocab)
{
    enum { MAX_PIECE = 16 };
    char (*text)[MAX_PIECE] = calloc((size_t)n_vocab, MAX_PIECE);
    const char **ptrs = calloc((size_t)n_vocab, sizeof *ptrs);
    float *scores = calloc((size_t)n_vocab, sizeof *scores);
    int32_t *types = calloc((size_t)n_vocab, sizeof *types);
    if (!text || !ptrs || !scores || !types || n_vocab < 259 + 53) {
        free(text), free(ptrs), free(scores), free(types);
        return -1;
    }
    const char *controls[] = {"<unk>", "<s>", "</s>"};
    const int control_types[] = {2, 3, 3};
    int n = 0;
    for (int i = 0; i < 3; i++, n++) {
        snprintf(text[n], MAX_PIECE, "%s", controls[i]);
        types[n] = control_types[i];
    }
    for (int b = 0; b < 256; b++, n++) {
        snprintf(text[n], MAX_PIECE, "<0x%02X>", b);
        types[n] = 6;
    }
    const char *space = "\xe2\x96\x81";
    snprintf(text[n++], MAX_PIECE, "%s", space);
    for (char ch = 'a'; ch <= 'z'; ch++) snprintf(text[n++], MAX_PIECE, "%c", ch);
    for (char ch = 'a'; ch <= 'z'; ch++) snprintf(text[n++], MAX_PIECE, "%s%c", space, ch);
    const char *pairs = "etaoinshrdlu";
    for (int i = 0; n < n_vocab; i++) {
        const char *lead = pairs + (i / 12) % 12, *next = pairs + i % 12;
        if (i < 144) snprintf(text[n++], MAX_PIECE, "%c%c", *lead, *next);
        else snprintf(text[n++], MAX_PIECE, "%s%c%c", space, pairs[(i - 144) / 12 % 12], pairs[(i - 144) % 12]);
    }
    for (int i = 0; i < n_vocab; i++) {
        ptrs[i] = text[i];
        if (i >= 259) {
            types[i] = 1;
            scores[i] = -(float)(i - 259); /* earlier pieces merge first */
        }
    }
    int32_t bos = 1, eos = 2, unk = 0;
    int rc = 0;
    rc |= exo__gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    rc |= exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", ptrs, (uint64_t)n_vocab);
    rc |= exo__gguf_writer_add_arr(w, "tokenizer.ggml.scores", EXO_GGUF_FLOAT32, scores, (uint64_t)n_vocab);
    rc |= exo__gguf_writer_add_arr(w, "tokenizer.ggml.token_type", EXO_GGUF_INT32, types, (uint64_t)n_vocab);
    rc |= exo__gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    rc |= exo__gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    rc |= exo__gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    rc |= exo__gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
    rc |= exo__gguf_writer_add_str(w, "tokenizer.chat_template",
                                  "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}assistant:{% endif %}");
    free(text), free(ptrs), free(scores), free(types);
    return rc;
}

/* Copies every tokenizer.* key of the GGUF file at path (the default model's
 * tokenizer for real-shape benchmark models); *n_vocab gets its token count. */
static int copy_tokenizer(exo_gguf_writer *w, const char *path, int *n_vocab)
{
    exo_gguf *g;
    if (exo__gguf_open(path, &g)) return -1;
    int rc = 0;
    *n_vocab = 0;
    for (int64_t i = 0; i < exo__gguf_kv_count(g) && !rc; i++) {
        const char *key = exo__gguf_key_name(g, i);
        if (strncmp(key, "tokenizer.", 10)) continue;
        int type = exo__gguf_kv_type(g, i);
        if (type == EXO_GGUF_STRING) {
            const char *s;
            size_t len;
            char *copy = NULL;
            rc = exo__gguf_get_str(g, key, &s, &len);
            if (!rc && (copy = strndup(s, len)) == NULL) rc = -1;
            if (!rc) rc = exo__gguf_writer_add_str(w, key, copy);
            free(copy);
        } else if (type == EXO_GGUF_BOOL) {
            bool b;
            rc = exo__gguf_get_bool(g, key, &b);
            if (!rc) rc = exo__gguf_writer_add_bool(w, key, b);
        } else if (type == EXO_GGUF_UINT32 || type == EXO_GGUF_INT32) {
            int64_t v;
            rc = exo__gguf_get_i64(g, key, &v);
            if (!rc) rc = type == EXO_GGUF_UINT32 ? exo__gguf_writer_add_u32(w, key, (uint32_t)v)
                                                 : exo__gguf_writer_add_i32(w, key, (int32_t)v);
        } else if (type == EXO_GGUF_FLOAT32) {
            float v;
            rc = exo__gguf_get_f32(g, key, &v);
            if (!rc) rc = exo__gguf_writer_add_f32(w, key, v);
        } else if (type == EXO_GGUF_ARRAY) {
            int elem;
            uint64_t n;
            rc = exo__gguf_get_arr(g, key, &elem, &n);
            if (rc) break;
            if (!strcmp(key, "tokenizer.ggml.tokens")) *n_vocab = (int)n;
            if (elem == EXO_GGUF_STRING) {
                char **strs = calloc(n ? n : 1, sizeof *strs);
                rc = strs ? 0 : -1;
                for (uint64_t j = 0; j < n && !rc; j++) {
                    const char *s;
                    size_t len;
                    rc = exo__gguf_arr_str(g, i, j, &s, &len);
                    if (!rc && (strs[j] = strndup(s, len)) == NULL) rc = -1;
                }
                if (!rc) rc = exo__gguf_writer_add_str_arr(w, key, (const char *const *)strs, n);
                for (uint64_t j = 0; strs && j < n; j++) free(strs[j]);
                free(strs);
            } else {
                rc = exo__gguf_writer_add_arr(w, key, elem, exo__gguf_arr_data(g, i), n);
            }
        } else {
            fprintf(stderr, "exo-make-tiny-model: %s: key %s of type %d not copied\n", path, key, type);
        }
    }
    exo__gguf_close(g);
    return rc || *n_vocab < 1 ? -1 : 0;
}

static bool is_arch(const tiny_config *c, const char *name)
{
    return strcmp(c->arch, name) == 0;
}

/* One layer's tensors, as the architecture's converter names and shapes them. */
static int add_layer(exo_gguf_writer *w, const tiny_config *c, int l, int head_dim)
{
    const int q_dim = c->n_head * head_dim, kv_dim = c->n_head_kv * head_dim;
    const float std = 1.0f / sqrtf((float)c->n_embd);
    char name[64];
    int rc = 0;
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
    rc |= add_norm(w, NAME("attn_norm.weight"), c->n_embd);
    if (is_arch(c, "phi3")) {
        rc |= add_matrix(w, NAME("attn_qkv.weight"), c->weight_type, c->n_embd, q_dim + 2 * kv_dim, std);
    } else {
        rc |= add_matrix(w, NAME("attn_q.weight"), c->weight_type, c->n_embd, q_dim, std);
        rc |= add_matrix(w, NAME("attn_k.weight"), c->weight_type, c->n_embd, kv_dim, std);
        rc |= add_matrix(w, NAME("attn_v.weight"), c->weight_type, c->n_embd, kv_dim, std);
    }
    if (is_arch(c, "qwen2")) {
        rc |= add_vector(w, NAME("attn_q.bias"), q_dim, 0.5f);
        rc |= add_vector(w, NAME("attn_k.bias"), kv_dim, 0.5f);
        rc |= add_vector(w, NAME("attn_v.bias"), kv_dim, 0.5f);
    }
    if (is_arch(c, "qwen3") || is_arch(c, "gemma3")) {
        rc |= add_norm(w, NAME("attn_q_norm.weight"), head_dim);
        rc |= add_norm(w, NAME("attn_k_norm.weight"), head_dim);
    }
    rc |= add_matrix(w, NAME("attn_output.weight"), c->weight_type, q_dim, c->n_embd, 1.0f / sqrtf((float)q_dim));
    if (is_arch(c, "gemma3")) rc |= add_norm(w, NAME("post_attention_norm.weight"), c->n_embd);
    rc |= add_norm(w, NAME("ffn_norm.weight"), c->n_embd);
    if (is_arch(c, "phi3")) {
        rc |= add_matrix(w, NAME("ffn_up.weight"), c->weight_type, c->n_embd, 2 * c->n_ff, std);
    } else {
        rc |= add_matrix(w, NAME("ffn_gate.weight"), c->weight_type, c->n_embd, c->n_ff, std);
        rc |= add_matrix(w, NAME("ffn_up.weight"), c->weight_type, c->n_embd, c->n_ff, std);
    }
    rc |= add_matrix(w, NAME("ffn_down.weight"), c->weight_type, c->n_ff, c->n_embd, 1.0f / sqrtf((float)c->n_ff));
    if (is_arch(c, "gemma3")) rc |= add_norm(w, NAME("post_ffw_norm.weight"), c->n_embd);
#undef NAME
    return rc;
}

/* Writes the file beside path and renames it into place: a process that has
 * the old file mapped (a test's node, while another test rewrites the tiny
 * models) keeps reading the old bytes instead of dying of SIGBUS on a file
 * truncated under it. */
static int write_replacing(exo_gguf_writer *w, const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        fprintf(stderr, "exo-make-tiny-model: path too long: %s\n", path);
        return -1;
    }
    int rc = exo__gguf_writer_write_fill(w, tmp, fill_tensor, NULL);
    if (!rc && rename(tmp, path) != 0) {
        fprintf(stderr, "exo-make-tiny-model: %s: cannot rename into place: %s\n", path, strerror(errno));
        remove(tmp);
        rc = -1;
    }
    return rc;
}
static int write_model(const tiny_config *c, const char *path)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    if (!w) return -1;
    rng_state = c->seed;
    int head_dim = c->head_dim ? c->head_dim : c->n_embd / c->n_head;
    char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", c->arch, suffix), key)
    int rc = 0;
    rc |= exo__gguf_writer_add_str(w, "general.architecture", c->arch);
    rc |= exo__gguf_writer_add_str(w, "general.name", c->real_shape ? "exo random weights, real shape" : "exo tiny test model");
    rc |= exo__gguf_writer_add_u32(w, "general.alignment", 32);
    rc |= exo__gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)c->n_layer);
    rc |= exo__gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)c->n_ctx);
    rc |= exo__gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)c->n_embd);
    rc |= exo__gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)c->n_ff);
    rc |= exo__gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head);
    rc |= exo__gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv);
    rc |= exo__gguf_writer_add_f32(w, KEY("rope.freq_base"),
                                   c->rope_base > 0 ? c->rope_base : is_arch(c, "llama") ? 10000.0f : 1000000.0f);
    rc |= exo__gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), is_arch(c, "gemma3") ? 1e-6f : 1e-5f);
    rc |= exo__gguf_writer_add_u32(w, KEY("rope.dimension_count"), (uint32_t)head_dim);
    rc |= exo__gguf_writer_add_u32(w, KEY("vocab_size"), (uint32_t)c->n_vocab);
    if (c->head_dim) {
        rc |= exo__gguf_writer_add_u32(w, KEY("attention.key_length"), (uint32_t)head_dim);
        rc |= exo__gguf_writer_add_u32(w, KEY("attention.value_length"), (uint32_t)head_dim);
    }
    if (is_arch(c, "gemma3")) {
        rc |= exo__gguf_writer_add_u32(w, KEY("attention.sliding_window"), (uint32_t)c->window);
        rc |= exo__gguf_writer_add_u32(w, KEY("attention.sliding_window_pattern"), 3);
    }
    if (is_arch(c, "phi3")) {
        /* A long-context Phi 3 in small: beyond 32 positions of context the
         * long factors apply (the tests' sequences are longer). */
        rc |= exo__gguf_writer_add_f32(w, KEY("rope.scaling.attn_factor"), 1.2f);
        rc |= exo__gguf_writer_add_u32(w, KEY("rope.scaling.original_context_length"), 32);
    }
#undef KEY
    if (rc) goto done;

    if (c->tokenizer_from) {
        int n_vocab;
        rc = copy_tokenizer(w, c->tokenizer_from, &n_vocab);
        if (!rc && n_vocab != c->n_vocab) rc = -1; /* main() took the vocabulary from the same file */
        if (rc) {
            fprintf(stderr, "exo-make-tiny-model: could not copy the tokenizer of %s\n", c->tokenizer_from);
            goto done;
        }
    } else if (c->tokenizer) {
        rc = add_tokenizer(w, c->n_vocab);
    }
    if (rc) goto done;

    rc = add_matrix(w, "token_embd.weight", c->embd_type, c->n_embd, c->n_vocab, 1.0f);
    /* Llama 3's and Phi 3's rope factors, in the architecture models of the
     * test suite (the plain tiny llama models stay without). */
    if (!rc && (c->tokenizer || c->real_shape) && is_arch(c, "llama")) rc = add_rope_factors(w, "rope_freqs.weight", head_dim / 2);
    if (!rc && is_arch(c, "phi3")) {
        rc = add_rope_factors(w, "rope_factors_short.weight", head_dim / 2);
        if (!rc) rc = add_rope_factors(w, "rope_factors_long.weight", head_dim / 2);
    }
    for (int l = 0; l < c->n_layer && !rc; l++) rc = add_layer(w, c, l, head_dim);
    if (rc) goto done;
    rc = add_norm(w, "output_norm.weight", c->n_embd);
    if (!rc && !c->tied)
        rc = add_matrix(w, "output.weight", c->weight_type, c->n_embd, c->n_vocab, 1.0f / sqrtf((float)c->n_embd));
    if (!rc) rc = write_replacing(w, path);
done:
    exo__gguf_writer_free(w);
    free(plans);
    plans = NULL, n_plans = cap_plans = 0;
    return rc;
}

int main(int argc, char **argv)
{
    exo__quants_init();
    tiny_config c = {.arch = "llama", .window = 8, .n_layer = 4, .n_embd = 256, .n_head = 8, .n_head_kv = 2, .n_ff = 512, .n_vocab = 512,
                     .n_ctx = 512, .weight_type = EXO_DTYPE_Q4_1, .embd_type = EXO_DTYPE_Q8_0, .tied = 1, .seed = 1};
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] != '-') {
            out = a;
        } else if (v && !strcmp(a, "--arch")) {
            c.arch = v, i++;
        } else if (v && !strcmp(a, "--head-dim")) {
            c.head_dim = atoi(v), i++;
        } else if (v && !strcmp(a, "--ctx")) {
            c.n_ctx = atoi(v), i++;
        } else if (v && !strcmp(a, "--window")) {
            c.window = atoi(v), i++;
        } else if (v && !strcmp(a, "--type")) {
            c.weight_type = dtype_from_name(v), i++;
        } else if (v && !strcmp(a, "--embd-type")) {
            c.embd_type = dtype_from_name(v), i++;
        } else if (v && !strcmp(a, "--layers")) {
            c.n_layer = atoi(v), i++;
        } else if (v && !strcmp(a, "--seed")) {
            c.seed = strtoull(v, NULL, 10), i++;
        } else if (v && !strcmp(a, "--tied")) {
            c.tied = atoi(v), i++;
        } else if (v && !strcmp(a, "--tokenizer")) {
            c.tokenizer = atoi(v), i++;
        } else if (v && !strcmp(a, "--tokenizer-from")) {
            c.tokenizer_from = v, i++;
        } else if (v && !strcmp(a, "--shape")) {
            const real_shape *s = NULL;
            for (size_t k = 0; k < sizeof real_shapes / sizeof real_shapes[0]; k++)
                if (!strcmp(real_shapes[k].name, v)) s = &real_shapes[k];
            if (!s) {
                fprintf(stderr, "exo-make-tiny-model: unknown shape '%s' (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, "
                                "qwen2.5-0.5b, qwen2.5-7b)\n", v);
                return 2;
            }
            c.arch = s->arch, c.n_layer = s->n_layer, c.n_embd = s->n_embd, c.n_head = s->n_head;
            c.n_head_kv = s->n_head_kv, c.n_ff = s->n_ff, c.n_vocab = s->n_vocab, c.tied = s->tied;
            c.rope_base = s->rope_base, c.n_ctx = 8192, c.real_shape = true, i++;
        } else {
            fprintf(stderr, "exo-make-tiny-model: unknown or incomplete option '%s'\n", a);
            return 2;
        }
    }
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "gemma3", "phi3"};
    bool known_arch = false;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) known_arch |= !strcmp(c.arch, archs[i]);
    if (!out || !known_arch || c.weight_type < 0 || c.embd_type < 0 || c.n_layer < 1 || c.n_layer > 64 ||
        c.head_dim < 0 || c.head_dim > 256 || c.window < 1 || c.n_ctx < 1) {
        fprintf(stderr, "usage: exo-make-tiny-model OUT.gguf [--arch llama|qwen2|qwen3|gemma3|phi3] [--type q4_1] "
                        "[--embd-type q8_0] [--layers 4] [--seed 1] [--tied 1] [--tokenizer 0] [--head-dim N] "
                        "[--window N] [--ctx N] [--shape llama-3.2-1b|llama-3.2-3b|llama-3.1-8b|qwen2.5-0.5b|"
                        "qwen2.5-7b] [--tokenizer-from FILE.gguf]\n");
        return 2;
    }
    if (c.tokenizer_from) { /* the embedding's rows follow the copied vocabulary */
        exo_gguf *g;
        int elem;
        uint64_t n = 0;
        if (exo__gguf_open(c.tokenizer_from, &g) == 0) {
            if (exo__gguf_get_arr(g, "tokenizer.ggml.tokens", &elem, &n) || elem != EXO_GGUF_STRING) n = 0;
            exo__gguf_close(g);
        }
        if (n < 1 || n > (1u << 20)) {
            fprintf(stderr, "exo-make-tiny-model: %s has no tokenizer.ggml.tokens\n", c.tokenizer_from);
            return 1;
        }
        c.n_vocab = (int)n;
    }
    if (write_model(&c, out) != 0) {
        fprintf(stderr, "exo-make-tiny-model: could not write %s\n", out);
        return 1;
    }
    return 0;
}
