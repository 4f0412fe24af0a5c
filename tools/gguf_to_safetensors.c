/* gguf_to_safetensors.c: writes a Hugging Face model folder from a GGUF file.
 *
 * The tests' way to get a safetensors model holding exactly the weights of a
 * GGUF one (no network here, and nothing copied from a hub): config.json from
 * the GGUF hyper-parameters, the tensors under their HF names in F32, F16 or
 * BF16 (Q/K rows of llama files put back in HF's half-rotation order), in one
 * file or split in several with an index, and tokenizer.json /
 * tokenizer_config.json from a byte-level BPE vocabulary. Loading the folder
 * must then give the logits and tokens the GGUF gives.
 *
 * usage: exo-gguf-to-safetensors IN.gguf OUTDIR [--dtype f32|f16|bf16]
 *        [--vector-dtype f32|f16|bf16] [--shards N] [--as MODEL_TYPE]
 * --dtype converts matrices (default: keep F32/F16/BF16, others become F32);
 * --vector-dtype converts norms and biases (default f32); --as writes another
 * model_type (a llama file as "qwen2": the same weights under the half-rotation
 * rope, which checks the Q/K reordering against the engine's other rope). */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "../kernels/cpu/fp16.h"
#include "../kernels/cpu/quants.h"
#include "../native/dtype.h"
#include "../native/error.h"
#include "../native/gguf.h"
#include "../native/safetensors.h"

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "exo-gguf-to-safetensors: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static FILE *create(const char *dir, const char *name)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot create %s", path);
    return f;
}

static void close_checked(FILE *f, const char *name)
{
    if (ferror(f) || fclose(f)) die("write failed: %s", name);
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void put_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void put_cstr(FILE *f, const char *s)
{
    put_str(f, s, strlen(s));
}

static const exo_gguf *g;
static char arch[32];

static int64_t meta_int(const char *suffix, int64_t fallback)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return exo__gguf_get_i64(g, key, &v) ? fallback : v;
}

static double meta_float(const char *suffix, double fallback)
{
    char key[128];
    float v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return exo__gguf_get_f32(g, key, &v) ? fallback : v;
}

static const char *token(int64_t id)
{
    static char buf[1 << 16];
    int64_t k = exo__gguf_find_key(g, "tokenizer.ggml.tokens");
    const char *s;
    size_t n;
    if (id < 0 || exo__gguf_arr_str(g, k, (uint64_t)id, &s, &n)) return NULL;
    snprintf(buf, sizeof buf, "%.*s", (int)n, s);
    return buf;
}

static void write_config(const char *dir, const char *model_type, int64_t vocab)
{
    static const struct {
        const char *type, *class_name;
    } classes[] = {{"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"}};
    const char *class_name = NULL;
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (!strcmp(classes[i].type, model_type)) class_name = classes[i].class_name;
    if (!class_name) die("model type %s has no safetensors layout here (llama, qwen2, qwen3)", model_type);
    int64_t n_embd = meta_int("embedding_length", 0), n_head = meta_int("attention.head_count", 1);
    FILE *f = create(dir, "config.json");
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", class_name, model_type);
    fprintf(f, "  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n  \"num_hidden_layers\": %lld,\n",
            (long long)n_embd, (long long)meta_int("feed_forward_length", 0), (long long)meta_int("block_count", 0));
    fprintf(f, "  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n  \"head_dim\": %lld,\n",
            (long long)n_head, (long long)meta_int("attention.head_count_kv", n_head),
            (long long)meta_int("attention.key_length", n_embd / n_head));
    fprintf(f, "  \"max_position_embeddings\": %lld,\n  \"rms_norm_eps\": %.9g,\n  \"rope_theta\": %.9g,\n",
            (long long)meta_int("context_length", 2048), meta_float("attention.layer_norm_rms_epsilon", 1e-5),
            meta_float("rope.freq_base", 10000.0));
    int64_t bos, eos;
    if (!exo__gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &bos)) fprintf(f, "  \"bos_token_id\": %lld,\n", (long long)bos);
    if (!exo__gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &eos)) fprintf(f, "  \"eos_token_id\": %lld,\n", (long long)eos);
    fprintf(f, "  \"tie_word_embeddings\": %s,\n  \"vocab_size\": %lld\n}\n",
            exo__gguf_find_tensor(g, "output.weight") < 0 ? "true" : "false", (long long)vocab);
    close_checked(f, "config.json");
}

/* tokenizer.json for a byte-level BPE vocabulary, with the pre-tokenizer
 * declaration that stands for the file's tokenizer.ggml.pre. */
static void write_tokenizer(const char *dir)
{
    const char *s;
    size_t n;
    if (exo__gguf_get_str(g, "tokenizer.ggml.model", &s, &n) || n != 4 || memcmp(s, "gpt2", 4)) return;
    char pre[64] = "gpt2";
    if (!exo__gguf_get_str(g, "tokenizer.ggml.pre", &s, &n)) snprintf(pre, sizeof pre, "%.*s", (int)n, s);
    int64_t kt = exo__gguf_find_key(g, "tokenizer.ggml.tokens"), km = exo__gguf_find_key(g, "tokenizer.ggml.merges");
    uint64_t n_tok = 0, n_merge = 0;
    int et;
    exo__gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok);
    if (km >= 0) exo__gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n_merge);
    const int32_t *types = NULL;
    uint64_t n_types = 0;
    if (!exo__gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n_types) && et == EXO_GGUF_INT32 && n_types == n_tok)
        types = exo__gguf_arr_data(g, exo__gguf_find_key(g, "tokenizer.ggml.token_type"));

    FILE *f = create(dir, "tokenizer.json");
    fprintf(f, "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [");
    bool first = true;
    for (uint64_t i = 0; types && i < n_tok; i++) {
        int32_t t;
        memcpy(&t, types + i, 4);
        if (t != 3 && t != 4) continue;
        exo__gguf_arr_str(g, kt, i, &s, &n);
        fprintf(f, "%s\n    {\"id\": %llu, \"content\": ", first ? "" : ",", (unsigned long long)i);
        put_str(f, s, n);
        fprintf(f, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
                   "\"special\": %s}", t == 3 ? "true" : "false");
        first = false;
    }
    fprintf(f, "\n  ],\n  \"normalizer\": null,\n  \"pre_tokenizer\": ");
    const char *regex = exo__safetensors_split_regex(pre);
    if (regex) {
        fprintf(f, "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": ");
        put_cstr(f, regex);
        fprintf(f, "}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": "
                   "false, \"trim_offsets\": true, \"use_regex\": false}]}");
    } else if (!strcmp(pre, "smollm") || !strcmp(pre, "starcoder")) {
        fprintf(f, "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", \"individual_digits\": true}, "
                   "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true}]}");
    } else if (!strcmp(pre, "gpt2")) {
        fprintf(f, "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true}");
    } else {
        die("no tokenizer.json pre-tokenizer for tokenizer.ggml.pre '%s'", pre);
    }
    fprintf(f, ",\n  \"post_processor\": null,\n  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
               "\"trim_offsets\": true, \"use_regex\": true},\n");
    fprintf(f, "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": "
               "null, \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": "
               "%s,\n    \"vocab\": {", !strcmp(pre, "llama-bpe") ? "true" : "false");
    for (uint64_t i = 0; i < n_tok; i++) {
        exo__gguf_arr_str(g, kt, i, &s, &n);
        fprintf(f, "%s\n      ", i ? "," : "");
        put_str(f, s, n);
        fprintf(f, ": %llu", (unsigned long long)i);
    }
    fprintf(f, "\n    },\n    \"merges\": [");
    for (uint64_t i = 0; i < n_merge; i++) {
        exo__gguf_arr_str(g, km, i, &s, &n);
        fprintf(f, "%s\n      ", i ? "," : "");
        put_str(f, s, n);
    }
    fprintf(f, "\n    ]\n  }\n}\n");
    close_checked(f, "tokenizer.json");

    f = create(dir, "tokenizer_config.json");
    fprintf(f, "{");
    const char *sep = "\n";
    bool add_bos;
    if (!exo__gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos))
        fprintf(f, "%s  \"add_bos_token\": %s", sep, add_bos ? "true" : "false"), sep = ",\n";
    const char *names[][2] = {{"bos_token", "tokenizer.ggml.bos_token_id"}, {"eos_token", "tokenizer.ggml.eos_token_id"}};
    for (int i = 0; i < 2; i++) {
        int64_t id;
        const char *text = exo__gguf_get_i64(g, names[i][1], &id) ? NULL : token(id);
        if (!text) continue;
        fprintf(f, "%s  \"%s\": ", sep, names[i][0]);
        put_cstr(f, text);
        sep = ",\n";
    }
    if (!exo__gguf_get_str(g, "tokenizer.chat_template", &s, &n)) {
        fprintf(f, "%s  \"chat_template\": ", sep);
        put_str(f, s, n);
    }
    fprintf(f, "\n}\n");
    close_checked(f, "tokenizer_config.json");
}

static int dtype_named(const char *s)
{
    if (!strcasecmp(s, "f32")) return EXO_DTYPE_F32;
    if (!strcasecmp(s, "f16")) return EXO_DTYPE_F16;
    if (!strcasecmp(s, "bf16")) return EXO_DTYPE_BF16;
    die("dtype %s is not f32, f16 or bf16", s);
    return -1;
}

static const char *st_name(int dtype)
{
    return dtype == EXO_DTYPE_F32 ? "F32" : dtype == EXO_DTYPE_F16 ? "F16" : "BF16";
}

struct out_tensor {
    char name[128];
    const exo_gguf_tensor *t;
    int dtype;
    int heads; /* Q/K rows to reorder, per this many heads */
    size_t size;
};

/* One tensor's bytes in its output dtype and HF row order. */
static void write_tensor(FILE *f, const struct out_tensor *o)
{
    const exo_gguf_tensor *t = o->t;
    int64_t cols = t->ne[0], rows = t->n_dims > 1 ? t->ne[1] : 1;
    size_t esize = o->dtype == EXO_DTYPE_F32 ? 4 : 2;
    uint8_t *buf = malloc(o->size), *perm = o->heads ? malloc(o->size) : NULL;
    float *row = malloc(sizeof(float) * (size_t)cols);
    if (!buf || !row || (o->heads && !perm)) die("out of memory for %s", o->name);
    const exo_type_traits *tr = exo__type_traits_get(t->dtype);
    size_t src_row = exo__dtype_row_size(t->dtype, cols);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *src = (const uint8_t *)t->data + (size_t)r * src_row;
        uint8_t *dst = buf + (size_t)r * (size_t)cols * esize;
        if (t->dtype == o->dtype) {
            memcpy(dst, src, src_row);
            continue;
        }
        tr->to_float_ref(src, row, cols);
        for (int64_t i = 0; i < cols; i++) {
            if (o->dtype == EXO_DTYPE_F32) memcpy(dst + 4 * i, &row[i], 4);
            else {
                uint16_t h = o->dtype == EXO_DTYPE_F16 ? exo__float_to_half(row[i]) : exo__float_to_bf16(row[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
        }
    }
    if (o->heads) {
        int64_t n_rows = t->n_dims > 1 ? rows : cols;
        exo__safetensors_permute_rows(buf, perm, n_rows, o->size / (size_t)n_rows, o->heads, true);
        fwrite(perm, 1, o->size, f);
    } else {
        fwrite(buf, 1, o->size, f);
    }
    free(buf);
    free(perm);
    free(row);
}

static void write_shard(const char *dir, const char *file, struct out_tensor *ts, size_t n)
{
    /* The header first: offsets follow from the sizes. */
    char *hdr = NULL;
    size_t hlen = 0;
    FILE *h = open_memstream(&hdr, &hlen);
    fprintf(h, "{\"__metadata__\": {\"format\": \"pt\"}");
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const exo_gguf_tensor *t = ts[i].t;
        fprintf(h, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", ts[i].name, st_name(ts[i].dtype));
        if (t->n_dims > 1) fprintf(h, "%lld, ", (long long)t->ne[1]);
        fprintf(h, "%lld], \"data_offsets\": [%llu, %llu]}", (long long)t->ne[0], (unsigned long long)off,
                (unsigned long long)(off + ts[i].size));
        off += ts[i].size;
    }
    fprintf(h, "}");
    while ((ftell(h) % 8) != 0) fputc(' ', h); /* data starts 8-aligned */
    fclose(h);
    FILE *f = create(dir, file);
    uint64_t len = hlen;
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(hdr, 1, hlen, f);
    free(hdr);
    for (size_t i = 0; i < n; i++) write_tensor(f, &ts[i]);
    close_checked(f, file);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: exo-gguf-to-safetensors IN.gguf OUTDIR [--dtype f32|f16|bf16] "
                        "[--vector-dtype f32|f16|bf16] [--shards N] [--as MODEL_TYPE]\n");
        return 2;
    }
    const char *in = argv[1], *dir = argv[2], *as = NULL;
    int mat_dtype = -1, vec_dtype = EXO_DTYPE_F32, shards = 1;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dtype")) mat_dtype = dtype_named(argv[i + 1]);
        else if (!strcmp(argv[i], "--vector-dtype")) vec_dtype = dtype_named(argv[i + 1]);
        else if (!strcmp(argv[i], "--shards")) shards = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--as")) as = argv[i + 1];
        else die("unknown option %s", argv[i]);
    }
    if (shards < 1 || shards > 99) die("--shards %s is not in 1..99", argv[argc - 1]);
    exo__quants_init();
    exo_gguf *file;
    if (exo__gguf_open(in, &file)) die("%s", exo_last_error());
    g = file;
    const char *s;
    size_t n;
    if (exo__gguf_get_str(g, "general.architecture", &s, &n) || n >= sizeof arch) die("%s: no architecture", in);
    snprintf(arch, sizeof arch, "%.*s", (int)n, s);
    if (mkdir(dir, 0755) && errno != EEXIST) die("cannot create %s", dir);

    int64_t n_t = exo__gguf_tensor_count(g);
    struct out_tensor *ts = calloc((size_t)n_t + 1, sizeof *ts);
    size_t n_out = 0;
    int64_t vocab = 0;
    bool llama = !strcmp(arch, "llama");
    for (int64_t i = 0; i < n_t; i++) {
        const exo_gguf_tensor *t = exo__gguf_tensor_at(g, i);
        struct out_tensor *o = &ts[n_out];
        if (exo__safetensors_hf_name(t->name, o->name, sizeof o->name)) die("tensor %s has no HF name", t->name);
        if (!strcmp(t->name, "token_embd.weight")) vocab = t->ne[1];
        o->t = t;
        o->dtype = t->n_dims == 1 ? vec_dtype : mat_dtype >= 0 ? mat_dtype
                 : (t->dtype == EXO_DTYPE_F16 || t->dtype == EXO_DTYPE_BF16) ? t->dtype : EXO_DTYPE_F32;
        if (llama && strstr(t->name, ".attn_q.")) o->heads = (int)meta_int("attention.head_count", 1);
        if (llama && strstr(t->name, ".attn_k."))
            o->heads = (int)meta_int("attention.head_count_kv", meta_int("attention.head_count", 1));
        o->size = (size_t)t->ne[0] * (size_t)(t->n_dims > 1 ? t->ne[1] : 1) * (o->dtype == EXO_DTYPE_F32 ? 4 : 2);
        n_out++;
    }
    write_config(dir, as ? as : arch, vocab);
    write_tokenizer(dir);
    if (shards == 1) {
        write_shard(dir, "model.safetensors", ts, n_out);
    } else {
        FILE *idx = create(dir, "model.safetensors.index.json");
        fprintf(idx, "{\"metadata\": {}, \"weight_map\": {");
        size_t per = (n_out + (size_t)shards - 1) / (size_t)shards;
        for (int k = 0; k < shards; k++) {
            char file[64];
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, shards);
            size_t a = (size_t)k * per, b = a + per < n_out ? a + per : n_out;
            if (a < b) write_shard(dir, file, ts + a, b - a);
            for (size_t i = a; i < b; i++) fprintf(idx, "%s\"%s\": \"%s\"", i ? ", " : "", ts[i].name, file);
        }
        fprintf(idx, "}}\n");
        close_checked(idx, "model.safetensors.index.json");
    }
    free(ts);
    exo__gguf_close(file);
    return 0;
}
