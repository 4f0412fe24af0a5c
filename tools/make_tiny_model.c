/* make_tiny_model.c: writes a small Llama-architecture GGUF with random weights.
 *
 * The forward-pass tests need a real model file that loads through the same
 * path as a downloaded one, yet runs in milliseconds. This writes one: every
 * metadata key a Llama GGUF carries, tensors named and shaped as converters
 * write them, weights quantized with the reference quantizers. Deterministic
 * for a given seed.
 *
 * With --tokenizer 1 the file also carries a small SentencePiece-style
 * vocabulary (control tokens, the 256 byte tokens, then letters and letter
 * pairs) and a plain chat template, so the whole text path (API, cluster)
 * can run on it.
 *
 * usage: exo-make-tiny-model OUT.gguf [--type q4_1] [--embd-type q8_0]
 *        [--layers 4] [--seed 1] [--tied 1] [--tokenizer 0] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../kernels/cpu/quants.h"
#include "../native/gguf.h"

typedef struct tiny_config {
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    int weight_type, embd_type;
    int tied;
    int tokenizer;
    uint64_t seed;
} tiny_config;

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

static int dtype_from_name(const char *name)
{
    static const int dtypes[] = {EXO_DTYPE_F32, EXO_DTYPE_F16, EXO_DTYPE_BF16, EXO_DTYPE_Q8_0, EXO_DTYPE_Q4_0,
                                 EXO_DTYPE_Q4_1, EXO_DTYPE_Q4_K, EXO_DTYPE_Q5_K, EXO_DTYPE_Q6_K};
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        const exo_type_traits *tr = exo_type_traits_get(dtypes[i]);
        if (tr && strcasecmp(tr->name, name) == 0) return dtypes[i];
    }
    return -1;
}

/* Adds a [rows][cols] matrix (ne = {cols, rows}) of random values with the
 * given standard deviation, quantized to dtype. */
static int add_matrix(exo_gguf_writer *w, const char *name, int dtype, int64_t cols, int64_t rows, float std)
{
    const exo_type_traits *tr = exo_type_traits_get(dtype);
    size_t n = (size_t)(cols * rows);
    float *values = malloc(n * sizeof(float));
    size_t bytes = exo_dtype_row_size(dtype, cols) * (size_t)rows;
    void *data = malloc(bytes);
    if (!values || !data) {
        free(values);
        free(data);
        return -1;
    }
    for (size_t i = 0; i < n; i++) values[i] = rng_normal() * std;
    for (int64_t r = 0; r < rows; r++)
        tr->from_float_ref(values + r * cols, (char *)data + (size_t)r * exo_dtype_row_size(dtype, cols), cols);
    int64_t ne[2] = {cols, rows};
    int rc = exo_gguf_writer_add_tensor(w, name, dtype, 2, ne, data, bytes);
    free(values);
    free(data);
    return rc;
}

/* A norm weight near 1, as trained models have. */
static int add_norm(exo_gguf_writer *w, const char *name, int64_t n)
{
    float *values = malloc((size_t)n * sizeof(float));
    if (!values) return -1;
    for (int64_t i = 0; i < n; i++) values[i] = 1.0f + 0.1f * rng_normal();
    int64_t ne[1] = {n};
    int rc = exo_gguf_writer_add_tensor(w, name, EXO_DTYPE_F32, 1, ne, values, (size_t)n * sizeof(float));
    free(values);
    return rc;
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
    rc |= exo_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    rc |= exo_gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", ptrs, (uint64_t)n_vocab);
    rc |= exo_gguf_writer_add_arr(w, "tokenizer.ggml.scores", EXO_GGUF_FLOAT32, scores, (uint64_t)n_vocab);
    rc |= exo_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", EXO_GGUF_INT32, types, (uint64_t)n_vocab);
    rc |= exo_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    rc |= exo_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    rc |= exo_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    rc |= exo_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
    rc |= exo_gguf_writer_add_str(w, "tokenizer.chat_template",
                                  "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}assistant:{% endif %}");
    free(text), free(ptrs), free(scores), free(types);
    return rc;
}

static int write_model(const tiny_config *c, const char *path)
{
    exo_gguf_writer *w = exo_gguf_writer_new();
    if (!w) return -1;
    rng_state = c->seed;
    int head_dim = c->n_embd / c->n_head;
    int rc = 0;
    rc |= exo_gguf_writer_add_str(w, "general.architecture", "llama");
    rc |= exo_gguf_writer_add_str(w, "general.name", "exo tiny test model");
    rc |= exo_gguf_writer_add_u32(w, "general.alignment", 32);
    rc |= exo_gguf_writer_add_u32(w, "llama.block_count", (uint32_t)c->n_layer);
    rc |= exo_gguf_writer_add_u32(w, "llama.context_length", (uint32_t)c->n_ctx);
    rc |= exo_gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)c->n_embd);
    rc |= exo_gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)c->n_ff);
    rc |= exo_gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)c->n_head);
    rc |= exo_gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_head_kv);
    rc |= exo_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f);
    rc |= exo_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    rc |= exo_gguf_writer_add_u32(w, "llama.rope.dimension_count", (uint32_t)head_dim);
    rc |= exo_gguf_writer_add_u32(w, "llama.vocab_size", (uint32_t)c->n_vocab);
    if (rc) goto done;

    if (c->tokenizer) rc = add_tokenizer(w, c->n_vocab);
    if (rc) goto done;

    float std = 1.0f / sqrtf((float)c->n_embd);
    rc = add_matrix(w, "token_embd.weight", c->embd_type, c->n_embd, c->n_vocab, 1.0f);
    for (int l = 0; l < c->n_layer && !rc; l++) {
        char name[64];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
        rc |= add_norm(w, NAME("attn_norm.weight"), c->n_embd);
        rc |= add_matrix(w, NAME("attn_q.weight"), c->weight_type, c->n_embd, c->n_embd, std);
        rc |= add_matrix(w, NAME("attn_k.weight"), c->weight_type, c->n_embd, c->n_head_kv * head_dim, std);
        rc |= add_matrix(w, NAME("attn_v.weight"), c->weight_type, c->n_embd, c->n_head_kv * head_dim, std);
        rc |= add_matrix(w, NAME("attn_output.weight"), c->weight_type, c->n_embd, c->n_embd, std);
        rc |= add_norm(w, NAME("ffn_norm.weight"), c->n_embd);
        rc |= add_matrix(w, NAME("ffn_gate.weight"), c->weight_type, c->n_embd, c->n_ff, std);
        rc |= add_matrix(w, NAME("ffn_up.weight"), c->weight_type, c->n_embd, c->n_ff, std);
        rc |= add_matrix(w, NAME("ffn_down.weight"), c->weight_type, c->n_ff, c->n_embd, 1.0f / sqrtf((float)c->n_ff));
#undef NAME
    }
    if (rc) goto done;
    rc = add_norm(w, "output_norm.weight", c->n_embd);
    if (!rc && !c->tied) rc = add_matrix(w, "output.weight", c->weight_type, c->n_embd, c->n_vocab, std);
    if (!rc) rc = exo_gguf_writer_write(w, path);
done:
    exo_gguf_writer_free(w);
    return rc;
}

int main(int argc, char **argv)
{
    exo_quants_init();
    tiny_config c = {.n_layer = 4, .n_embd = 256, .n_head = 8, .n_head_kv = 2, .n_ff = 512, .n_vocab = 512,
                     .n_ctx = 512, .weight_type = EXO_DTYPE_Q4_1, .embd_type = EXO_DTYPE_Q8_0, .tied = 1, .seed = 1};
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] != '-') {
            out = a;
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
        } else {
            fprintf(stderr, "exo-make-tiny-model: unknown or incomplete option '%s'\n", a);
            return 2;
        }
    }
    if (!out || c.weight_type < 0 || c.embd_type < 0 || c.n_layer < 1 || c.n_layer > 64) {
        fprintf(stderr, "usage: exo-make-tiny-model OUT.gguf [--type q4_1] [--embd-type q8_0] [--layers 4] "
                        "[--seed 1] [--tied 1] [--tokenizer 0]\n");
        return 2;
    }
    if (write_model(&c, out) != 0) {
        fprintf(stderr, "exo-make-tiny-model: could not write %s\n", out);
        return 1;
    }
    return 0;
}
