/* safetensors_model.c: Hugging Face model folders read through the GGUF view.
 *
 * The converter turns a folder (config.json, *.safetensors parsed by
 * safetensors.c, tokenizer.json, tokenizer_config.json) into the GGUF that
 * llama.cpp's converter would write, so that the shard loader, the tokenizer
 * and the metadata readers need no second code path: hyper-parameters from
 * config.json under the GGUF keys, HF tensor names mapped to GGUF names,
 * vectors widened to f32 (the engine keeps norms and biases in f32), and for
 * the llama family the Q and K rows of each head reordered. Hugging Face's
 * llama rotates the two halves of a head (dimension i pairs with i + d/2);
 * GGUF llama files are laid out for the rope that rotates adjacent pairs (2i
 * with 2i + 1), so row i of a head moves to 2i and row d/2 + i to 2i + 1.
 * Qwen 2/3 GGUF files keep the halves (their rope is the NEOX style), so
 * their rows stay. Matrices keep their dtype (F32, F16 and BF16 all have
 * kernels) unless a quantized type was asked for. The tokenizer becomes
 * tokenizer.ggml.* keys: vocabulary, merges, token types from added_tokens,
 * the pre-tokenizer named by what tokenizer.json declares, special ids, the
 * chat template. The result is written, one tensor at a time, into an
 * anonymous memory file and mapped like any other GGUF. */
#define _GNU_SOURCE /* memfd_create, fallocate */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/cpu/fp16.h"
#include "../kernels/cpu/quants.h"
#include "dtype.h"
#include "error.h"
#include "exo.h"
#include "exo_defs.h"
#include "grow.h"
#include "json.h"
#include "safetensors.h"
#include "tensor.h"

/* Limits on the folder's files, far above real models'. */
#define ST_MAX_FILES 4096
#define ST_MAX_CONFIG (4u << 20)
#define ST_MAX_TOKENIZER (256u << 20)
#define ST_MAX_VOCAB (1 << 22)

/* ---- the folder ------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The folder of a model path: the path itself, or a .safetensors file's. */
static int model_dir(const char *path, char *dir, size_t cap)
{
    struct stat st;
    if (stat(path, &st)) return exo__error_set(EXO_EIO, "%s: %s", path, strerror(errno));
    if (snprintf(dir, cap, "%s", path) >= (int)cap) return exo__error_set(EXO_EINVAL, "%s: path too long", path);
    if (S_ISDIR(st.st_mode)) return 0;
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    return 0;
}

bool exo__safetensors_is_model(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st)) return false;
    if (S_ISREG(st.st_mode)) return ends_with(path, ".safetensors");
    if (!S_ISDIR(st.st_mode)) return false;
    char cfg[4096];
    if (snprintf(cfg, sizeof cfg, "%s/config.json", path) >= (int)sizeof cfg) return false;
    return stat(cfg, &st) == 0;
}

/* A small JSON file of the folder, parsed; *j stays NULL when the file does
 * not exist and !required. */
static int read_json(const char *dir, const char *name, size_t max, bool required, exo_json **j)
{
    *j = NULL;
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (!required && stat(path, &st) && errno == ENOENT) return 0;
    void *map;
    size_t size;
    int rc = exo__safetensors_map(path, max, &map, &size);
    if (rc) return rc;
    rc = exo__json_parse(map, size, path, j);
    if (map) munmap(map, size);
    return rc;
}

/* The whole text of a small optional file (chat_template.jinja), or NULL. */
static char *read_text(const char *dir, const char *name, size_t max)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    void *map;
    size_t size;
    if (exo__safetensors_map(path, max, &map, &size)) return NULL;
    char *s = malloc(size + 1);
    if (s) {
        if (size) memcpy(s, map, size);
        s[size] = 0;
    }
    if (map) munmap(map, size);
    return s;
}

struct folder {
    char dir[4096];
    exo_st_file **files;
    size_t n_files;
    exo_json *config, *tokenizer, *tok_config;
    char *template_file;
    float *rope_factors;
    /* from config.json */
    char arch[16];
    bool permute_qk;
    int64_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_ctx, vocab_size;
};

static void folder_free(struct folder *m)
{
    for (size_t i = 0; i < m->n_files; i++) exo__safetensors_close(m->files[i]);
    free(m->files);
    exo__json_free(m->config);
    exo__json_free(m->tokenizer);
    exo__json_free(m->tok_config);
    free(m->template_file);
    free(m->rope_factors);
}

/* A shard file name from the index: a plain name inside the folder. */
static bool plain_name(const char *s, size_t len)
{
    return len > 0 && len < 256 && strlen(s) == len && !strchr(s, '/') && s[0] != '.';
}

static int add_file(struct folder *m, const char *name)
{
    if (m->n_files >= ST_MAX_FILES) return exo__error_set(EXO_EFORMAT, "%s: more than %d safetensors files", m->dir, ST_MAX_FILES);
    exo_st_file **grown = realloc(m->files, (m->n_files + 1) * sizeof *grown);
    if (!grown) return exo__error_set(EXO_ENOMEM, "out of memory");
    m->files = grown;
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", m->dir, name);
    int rc = exo__safetensors_open(path, &m->files[m->n_files]);
    if (rc) return rc;
    m->n_files++;
    return 0;
}

static int cfg_int(struct folder *m, const char *key, int64_t *out, bool required, int64_t fallback)
{
    int32_t v = exo__json_get(m->config, 0, key);
    if (v < 0 || exo__json_kind(m->config, v) == EXO_JSON_NULL) {
        if (required) return exo__error_set(EXO_EFORMAT, "%s/config.json lacks '%s'", m->dir, key);
        *out = fallback;
        return 0;
    }
    if (!exo__json_int(m->config, v, out) || *out < 0 || *out > (1ll << 30))
        return exo__error_set(EXO_EFORMAT, "%s/config.json: '%s' is not an integer in 0..2^30", m->dir, key);
    return 0;
}

static int cfg_float(struct folder *m, const char *key, double *out, double fallback)
{
    int32_t v = exo__json_get(m->config, 0, key);
    if (v < 0 || exo__json_kind(m->config, v) == EXO_JSON_NULL) {
        *out = fallback;
        return 0;
    }
    *out = exo__json_num(m->config, v);
    if (!isfinite(*out)) return exo__error_set(EXO_EFORMAT, "%s/config.json: '%s' is not a finite number", m->dir, key);
    return 0;
}

static int read_config(struct folder *m)
{
    int rc = read_json(m->dir, "config.json", ST_MAX_CONFIG, true, &m->config);
    if (rc) return rc;
    const char *type = exo__json_str(m->config, exo__json_get(m->config, 0, "model_type"), NULL);
    if (!type) return exo__error_set(EXO_EFORMAT, "%s/config.json has no model_type", m->dir);
    /* The families whose tensors are the llama layout under HF names. */
    if (!strcmp(type, "llama") || !strcmp(type, "mistral")) snprintf(m->arch, sizeof m->arch, "llama"), m->permute_qk = true;
    else if (!strcmp(type, "qwen2")) snprintf(m->arch, sizeof m->arch, "qwen2");
    else if (!strcmp(type, "qwen3")) snprintf(m->arch, sizeof m->arch, "qwen3");
    else
        return exo__error_set(EXO_ENOTSUP, "%s: model_type '%.40s' is not supported from safetensors (llama, mistral, "
                             "qwen2 and qwen3 are; a GGUF of it may be)", m->dir, type);
    if ((rc = cfg_int(m, "num_hidden_layers", &m->n_layer, true, 0)) ||
        (rc = cfg_int(m, "hidden_size", &m->n_embd, true, 0)) ||
        (rc = cfg_int(m, "intermediate_size", &m->n_ff, true, 0)) ||
        (rc = cfg_int(m, "num_attention_heads", &m->n_head, true, 0)) ||
        (rc = cfg_int(m, "num_key_value_heads", &m->n_head_kv, false, m->n_head)) ||
        (rc = cfg_int(m, "max_position_embeddings", &m->n_ctx, false, 2048)) ||
        (rc = cfg_int(m, "vocab_size", &m->vocab_size, false, 0)))
        return rc;
    if (m->n_head < 1 || m->n_embd < 1 || m->n_head_kv < 1)
        return exo__error_set(EXO_EFORMAT, "%s/config.json: heads and hidden size must be positive", m->dir);
    if ((rc = cfg_int(m, "head_dim", &m->head_dim, false, m->n_embd / m->n_head))) return rc;
    if (m->permute_qk && (m->head_dim % 2 || m->head_dim < 2))
        return exo__error_set(EXO_EFORMAT, "%s/config.json: head dimension %lld is odd", m->dir, (long long)m->head_dim);
    return 0;
}

/* config.json's rope_scaling as GGUF keys (linear) or llama.cpp's rope_freqs
 * tensor (Llama 3.1's per-frequency divisors: wavelengths shorter than the
 * original context / high_freq_factor keep their frequency, longer than
 * context / low_freq_factor are divided by factor, and those between blend
 * the two by where the wavelength falls). */
static int rope_metadata(struct folder *m, exo_gguf_writer *w, float **factors, int64_t *n_factors)
{
    double theta;
    int rc = cfg_float(m, "rope_theta", &theta, 10000.0);
    if (rc) return rc;
    char key[96];
    snprintf(key, sizeof key, "%s.rope.freq_base", m->arch);
    if ((rc = exo__gguf_writer_add_f32(w, key, (float)theta))) return rc;
    int32_t rs = exo__json_get(m->config, 0, "rope_scaling");
    if (rs < 0 || exo__json_kind(m->config, rs) == EXO_JSON_NULL) return 0;
    const char *type = exo__json_str(m->config, exo__json_get(m->config, rs, "rope_type"), NULL);
    if (!type) type = exo__json_str(m->config, exo__json_get(m->config, rs, "type"), NULL);
    double factor = exo__json_num(m->config, exo__json_get(m->config, rs, "factor"));
    if (type && !strcmp(type, "default")) return 0;
    if (!type || !(factor > 0))
        return exo__error_set(EXO_EFORMAT, "%s/config.json: rope_scaling lacks a type or a positive factor", m->dir);
    if (!strcmp(type, "linear")) {
        snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch);
        if ((rc = exo__gguf_writer_add_str(w, key, "linear"))) return rc;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", m->arch);
        return exo__gguf_writer_add_f32(w, key, (float)factor);
    }
    if (strcmp(type, "llama3"))
        return exo__error_set(EXO_ENOTSUP, "%s/config.json: rope_scaling type '%.32s' is not supported (linear and "
                             "llama3 are)", m->dir, type);
    double lo = exo__json_num(m->config, exo__json_get(m->config, rs, "low_freq_factor"));
    double hi = exo__json_num(m->config, exo__json_get(m->config, rs, "high_freq_factor"));
    double old_ctx = exo__json_num(m->config, exo__json_get(m->config, rs, "original_max_position_embeddings"));
    if (!(lo > 0) || !(hi > lo) || !(old_ctx > 0))
        return exo__error_set(EXO_EFORMAT, "%s/config.json: llama3 rope_scaling needs 0 < low_freq_factor < "
                             "high_freq_factor and original_max_position_embeddings", m->dir);
    int64_t half = m->head_dim / 2;
    float *f = malloc(sizeof(float) * (size_t)half);
    if (!f) return exo__error_set(EXO_ENOMEM, "out of memory");
    for (int64_t i = 0; i < half; i++) {
        double freq = pow(theta, -2.0 * (double)i / (double)m->head_dim);
        double wavelen = 2 * M_PI / freq;
        if (wavelen < old_ctx / hi) f[i] = 1.0f;
        else if (wavelen > old_ctx / lo) f[i] = (float)factor;
        else {
            double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            f[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
        }
    }
    *factors = f;
    *n_factors = half;
    return 0;
}

static int hparams_metadata(struct folder *m, exo_gguf_writer *w)
{
    char key[96];
    int rc;
    const struct {
        const char *suffix;
        int64_t v;
    } ints[] = {
        {"block_count", m->n_layer},         {"context_length", m->n_ctx},         {"embedding_length", m->n_embd},
        {"feed_forward_length", m->n_ff},    {"attention.head_count", m->n_head},  {"attention.head_count_kv", m->n_head_kv},
        {"attention.key_length", m->head_dim}, {"attention.value_length", m->head_dim},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", m->arch, ints[i].suffix);
        if ((rc = exo__gguf_writer_add_u32(w, key, (uint32_t)ints[i].v))) return rc;
    }
    double eps;
    if ((rc = cfg_float(m, "rms_norm_eps", &eps, 1e-6))) return rc;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", m->arch);
    return exo__gguf_writer_add_f32(w, key, (float)eps);
}

/* ---- the tokenizer --------------------------------------------------------- */

/* The pre-tokenizer regexes of tokenizer.json files, as they read once the
 * JSON is decoded, and the tokenizer.ggml.pre name that selects the same
 * split in tokenizer.c. */
static const struct {
    const char *regex;
    const char *pre;
} split_regexes[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "llama-bpe"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"},
};

/* What a pre-tokenizer node declares, walking into Sequences. */
struct pre_seen {
    const char *split;    /* a Split's regex */
    bool digits;          /* Digits with individual_digits */
    bool byte_level;      /* ByteLevel */
    bool byte_level_regex; /* ByteLevel with use_regex (GPT-2's split) */
    bool other;           /* anything else */
};

static void walk_pre(const exo_json *j, int32_t node, struct pre_seen *s, int depth)
{
    const char *type = exo__json_str(j, exo__json_get(j, node, "type"), NULL);
    if (!type || depth > 4) {
        s->other = true;
        return;
    }
    if (!strcmp(type, "Sequence")) {
        int32_t list = exo__json_get(j, node, "pretokenizers");
        for (int32_t e = exo__json_first(j, list); e != EXO_JSON_NONE; e = exo__json_next(j, e)) walk_pre(j, e, s, depth + 1);
    } else if (!strcmp(type, "Split")) {
        const char *re = exo__json_str(j, exo__json_get(j, exo__json_get(j, node, "pattern"), "Regex"), NULL);
        if (!re || s->split) s->other = true;
        s->split = re;
    } else if (!strcmp(type, "Digits")) {
        s->digits = exo__json_kind(j, exo__json_get(j, node, "individual_digits")) == EXO_JSON_TRUE;
        if (!s->digits) s->other = true;
    } else if (!strcmp(type, "ByteLevel")) {
        s->byte_level = true;
        /* use_regex defaults to true in the tokenizers library. */
        s->byte_level_regex = exo__json_kind(j, exo__json_get(j, node, "use_regex")) != EXO_JSON_FALSE;
    } else {
        s->other = true;
    }
}

static int pre_name(const char *dir, const exo_json *j, const char **out)
{
    struct pre_seen s = {0};
    walk_pre(j, exo__json_get(j, 0, "pre_tokenizer"), &s, 0);
    *out = NULL;
    if (!s.other && s.byte_level) {
        if (s.split && !s.digits && !s.byte_level_regex)
            for (size_t i = 0; i < sizeof split_regexes / sizeof split_regexes[0]; i++)
                if (!strcmp(s.split, split_regexes[i].regex)) *out = split_regexes[i].pre;
        if (!s.split && s.digits && s.byte_level_regex) *out = "smollm"; /* single digits, then GPT-2's split */
        if (!s.split && !s.digits && s.byte_level_regex) *out = "gpt2";
    }
    if (!*out)
        return exo__error_set(EXO_ENOTSUP, "%s/tokenizer.json: its pre-tokenizer is not one exo knows (Llama 3's and "
                             "Qwen 2's splits, SmolLM's digits + byte level, GPT-2's byte level are)", dir);
    return 0;
}

/* A token given as "text" or {"content": "text"} (tokenizer_config.json). */
static const char *token_text(const exo_json *j, int32_t v)
{
    const char *s = exo__json_str(j, v, NULL);
    return s ? s : exo__json_str(j, exo__json_get(j, v, "content"), NULL);
}

/* SentencePiece's space marker, U+2581. */
static const char spm_mark[] = "\xE2\x96\x81";

/* What a normalizer or pre-tokenizer node of a SentencePiece-style file does
 * to spaces, walking into Sequences: *replace when spaces become the marker,
 * *prefix when one is put before the text (*scheme: Metaspace's rule for
 * that, see spm_spaces), false when it does anything else. */
static bool walk_spaces(const exo_json *j, int32_t node, bool *replace, bool *prefix, const char **scheme, int depth)
{
    int kind = exo__json_kind(j, node);
    if (kind == EXO_JSON_NULL || node == EXO_JSON_NONE) return true;
    const char *type = exo__json_str(j, exo__json_get(j, node, "type"), NULL);
    if (!type || depth > 4) return false;
    if (!strcmp(type, "Sequence")) {
        int32_t list = exo__json_get(j, node, "normalizers");
        if (list == EXO_JSON_NONE) list = exo__json_get(j, node, "pretokenizers");
        for (int32_t e = exo__json_first(j, list); e != EXO_JSON_NONE; e = exo__json_next(j, e))
            if (!walk_spaces(j, e, replace, prefix, scheme, depth + 1)) return false;
        return true;
    }
    if (!strcmp(type, "Replace")) {
        const char *from = exo__json_str(j, exo__json_get(j, exo__json_get(j, node, "pattern"), "String"), NULL);
        const char *to = exo__json_str(j, exo__json_get(j, node, "content"), NULL);
        return *replace = from && to && !strcmp(from, " ") && !strcmp(to, spm_mark);
    }
    if (!strcmp(type, "Split")) {
        /* A split at spaces after a normalizer replaced them all splits
         * nothing (some SentencePiece-style files declare one). */
        const char *at = exo__json_str(j, exo__json_get(j, exo__json_get(j, node, "pattern"), "String"), NULL);
        return *replace && at && !strcmp(at, " ");
    }
    if (!strcmp(type, "Prepend")) {
        const char *p = exo__json_str(j, exo__json_get(j, node, "prepend"), NULL);
        return *prefix = p && !strcmp(p, spm_mark);
    }
    if (!strcmp(type, "Metaspace")) {
        /* The marker defaults to U+2581; prepend_scheme (newer files) or
         * add_prefix_space (older ones) says whether one leads the text.
         * Its split (at each marker) is not done, as llama.cpp does not: a
         * SentencePiece vocabulary has no piece with a marker inside a word. */
        const char *r = exo__json_str(j, exo__json_get(j, node, "replacement"), NULL);
        if (r && strcmp(r, spm_mark)) return false;
        *replace = true;
        const char *ps = exo__json_str(j, exo__json_get(j, node, "prepend_scheme"), NULL);
        if (ps && strcmp(ps, "always") && strcmp(ps, "first") && strcmp(ps, "never")) return false;
        if (ps) *prefix = strcmp(ps, "never") != 0;
        else *prefix = exo__json_kind(j, exo__json_get(j, node, "add_prefix_space")) != EXO_JSON_FALSE;
        *scheme = ps && !strcmp(ps, "first") ? "first" : "always";
        return true;
    }
    return false;
}

/* Whether a SentencePiece-style tokenizer.json puts a marker before the text
 * (Llama 2, Mistral: yes; Gemma: no). Its spaces must become the marker and
 * nothing else may change the text: the engine's SentencePiece tokenizer does
 * exactly that, so a file asking for more is refused, not tokenized wrongly.
 * A Prepend normalizer prefixes every piece of text between special tokens,
 * as llama.cpp does; a Metaspace one (*scheme "always" or "first") does not
 * when the text starts with a space, and with "first" only at the start of
 * the whole text: tokenizer.c does that when tokenizer.exo.prefix_scheme says. */
static int spm_spaces(struct folder *m, const exo_json *j, bool *prefix, const char **scheme)
{
    bool replace = false;
    *prefix = false;
    *scheme = NULL;
    if (!walk_spaces(j, exo__json_get(j, 0, "normalizer"), &replace, prefix, scheme, 0) ||
        !walk_spaces(j, exo__json_get(j, 0, "pre_tokenizer"), &replace, prefix, scheme, 0) || !replace)
        return exo__error_set(EXO_ENOTSUP, "%s/tokenizer.json: a SentencePiece-style tokenizer whose normalizer or "
                             "pre-tokenizer is not one exo knows (spaces replaced by U+2581 through Replace or "
                             "Metaspace, optionally Prepend U+2581, are)", m->dir);
    return 0;
}

struct vocab {
    const char **text; /* by id */
    int32_t *type;
    float *score;      /* SentencePiece style only */
    int64_t n;
    char *pads;        /* "[PAD123]" names for ids nothing defines */
    int32_t *index;    /* text -> id, open addressing (-1: empty) */
    uint64_t mask;
};

static uint64_t text_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

/* The text -> id index, built once every id has its text: merges and special
 * names are looked up in it (a 262k vocabulary and 500k merges rule out a
 * scan per lookup). Later ids win a repeated text, as in tokenizer.c. */
static int vocab_index(struct vocab *v)
{
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)v->n) cap *= 2;
    if (!(v->index = malloc(cap * sizeof *v->index))) return exo__error_set(EXO_ENOMEM, "out of memory");
    memset(v->index, 0xff, cap * sizeof *v->index);
    v->mask = cap - 1;
    for (int64_t i = 0; i < v->n; i++) {
        size_t len = strlen(v->text[i]);
        uint64_t h = text_hash(v->text[i], len) & v->mask;
        while (v->index[h] >= 0 && strcmp(v->text[v->index[h]], v->text[i])) h = (h + 1) & v->mask;
        v->index[h] = (int32_t)i;
    }
    return 0;
}

static int32_t vocab_lookup(const struct vocab *v, const char *s, size_t len)
{
    if (!s || !v->index) return -1;
    for (uint64_t h = text_hash(s, len) & v->mask; v->index[h] >= 0; h = (h + 1) & v->mask) {
        const char *t = v->text[v->index[h]];
        if (strlen(t) == len && !memcmp(t, s, len)) return v->index[h];
    }
    return -1;
}

static int32_t vocab_find(const struct vocab *v, const char *s)
{
    return s ? vocab_lookup(v, s, strlen(s)) : -1;
}

/* Token id's text and type. added_tokens may repeat a vocabulary entry (same
 * text), or, SentencePiece style (rename), give the raw text of a piece the
 * vocabulary spells with markers; anything else claiming a taken id is a
 * broken file. */
static int vocab_put(struct folder *m, struct vocab *v, int64_t id, const char *s, size_t len, int32_t type, bool added,
                     bool rename)
{
    if (id < 0 || id >= v->n || !s || strlen(s) != len || len > (1u << 20))
        return exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: token id %lld or its text is invalid", m->dir,
                             (long long)id);
    if (v->text[id] && (!added || (!rename && strcmp(v->text[id], s))))
        return exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: token id %lld is defined twice", m->dir, (long long)id);
    v->text[id] = s;
    v->type[id] = type;
    return 0;
}

/* Byte-level BPE's merges as tokenizer.ggml.merges: "a b" strings, or
 * [a, b] pairs in newer files. */
static int bpe_merges(struct folder *m, const exo_json *j, int32_t merges, exo_gguf_writer *w)
{
    int64_t n_merges = exo__json_count(j, merges);
    const char **merge_text = calloc((size_t)n_merges + 1, sizeof *merge_text);
    size_t buf_len = 0;
    for (int32_t e = exo__json_first(j, merges); e != EXO_JSON_NONE; e = exo__json_next(j, e)) {
        size_t a = 0, b = 0;
        exo__json_str(j, exo__json_first(j, e), &a);
        exo__json_str(j, exo__json_next(j, exo__json_first(j, e)), &b);
        buf_len += a + b + 2;
    }
    char *merge_buf = malloc(buf_len + 1);
    int rc = 0;
    if (!merge_text || !merge_buf) {
        rc = exo__error_set(EXO_ENOMEM, "out of memory");
        goto done;
    }
    char *p = merge_buf;
    int64_t k = 0;
    for (int32_t e = exo__json_first(j, merges); e != EXO_JSON_NONE; e = exo__json_next(j, e), k++) {
        size_t len;
        const char *s = exo__json_str(j, e, &len);
        if (s) {
            merge_text[k] = s;
            continue;
        }
        size_t a, b;
        const char *x = exo__json_str(j, exo__json_first(j, e), &a);
        const char *y = exo__json_str(j, exo__json_next(j, exo__json_first(j, e)), &b);
        if (!x || !y || exo__json_count(j, e) != 2) {
            rc = exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: merge %lld is neither \"a b\" nor [a, b]", m->dir,
                                (long long)k);
            goto done;
        }
        merge_text[k] = p;
        memcpy(p, x, a), p += a, *p++ = ' ';
        memcpy(p, y, b), p += b, *p++ = 0;
    }
    rc = exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.merges", merge_text, (uint64_t)n_merges);
done:
    free(merge_text);
    free(merge_buf);
    return rc;
}

/* Scores and types of a SentencePiece-style vocabulary. The engine merges
 * the adjacent pair whose joined piece scores highest; a byte-fallback BPE
 * file merges the pair of lowest rank, so a piece scores minus the rank of
 * the first merge that makes it (what a SentencePiece BPE model's own scores
 * are: pieces in the order their merges were learnt) and a piece no merge
 * makes scores below them all. Unigram files carry their scores (the engine
 * merges by them rather than searching the best split, as llama.cpp does with
 * such models). <0xNN> pieces are byte tokens when the file falls back to
 * bytes; the unknown piece is named by model.unk_token or model.unk_id. */
static int spm_scores(struct folder *m, const exo_json *j, int32_t model, struct vocab *v, bool unigram, int32_t *unk)
{
    int64_t id = -1;
    *unk = -1;
    if (unigram) {
        if (exo__json_int(j, exo__json_get(j, model, "unk_id"), &id) && id >= 0 && id < v->n) *unk = (int32_t)id;
    } else {
        int32_t merges = exo__json_get(j, model, "merges");
        int64_t n_merges = exo__json_count(j, merges), k = 0;
        for (int64_t i = 0; i < v->n; i++) v->score[i] = NAN;
        char *buf = NULL;
        size_t cap = 0;
        for (int32_t e = exo__json_first(j, merges); e != EXO_JSON_NONE; e = exo__json_next(j, e), k++) {
            size_t a, b;
            const char *x = exo__json_str(j, e, &a), *y = NULL;
            if (x) { /* "a b": the pieces have markers, never spaces */
                const char *sp = memchr(x, ' ', a);
                if (sp) y = sp + 1, b = a - (size_t)(y - x), a = (size_t)(sp - x);
            } else if (exo__json_count(j, e) == 2) {
                x = exo__json_str(j, exo__json_first(j, e), &a);
                y = exo__json_str(j, exo__json_next(j, exo__json_first(j, e)), &b);
            }
            if (!x || !y) {
                free(buf);
                return exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: merge %lld is neither \"a b\" nor [a, b]",
                                      m->dir, (long long)k);
            }
            if (exo_grow(&buf, &cap, a + b + 1, 1)) { /* +1: never empty, even for "" + "" */
                free(buf);
                return exo__error_set(EXO_ENOMEM, "out of memory");
            }
            memcpy(buf, x, a);
            memcpy(buf + a, y, b);
            int32_t t = vocab_lookup(v, buf, a + b);
            if (t >= 0 && isnan(v->score[t])) v->score[t] = -(float)k;
        }
        free(buf);
        for (int64_t i = 0; i < v->n; i++)
            if (isnan(v->score[i])) v->score[i] = -(float)(n_merges + 1);
        *unk = vocab_find(v, exo__json_str(j, exo__json_get(j, model, "unk_token"), NULL));
    }
    bool fallback = exo__json_kind(j, exo__json_get(j, model, "byte_fallback")) == EXO_JSON_TRUE;
    for (int64_t i = 0; i < v->n; i++) {
        const char *s = v->text[i];
        if (fallback && v->type[i] == 1 && strlen(s) == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' &&
            isxdigit((unsigned char)s[3]) && isxdigit((unsigned char)s[4]))
            v->type[i] = 6 /* byte */;
    }
    if (*unk >= 0 && v->type[*unk] == 1) v->type[*unk] = 2 /* unknown */;
    return 0;
}

/* Whether tokenizer.json's post-processor puts a special token first (BOS),
 * for a file whose tokenizer_config.json does not say: -1 when it has none. */
static int post_adds_bos(const exo_json *j)
{
    int32_t pp = exo__json_get(j, 0, "post_processor");
    const char *type = exo__json_str(j, exo__json_get(j, pp, "type"), NULL);
    if (!type || strcmp(type, "TemplateProcessing")) return -1;
    int32_t first = exo__json_first(j, exo__json_get(j, pp, "single"));
    return exo__json_get(j, first, "SpecialToken") != EXO_JSON_NONE;
}

/* tokenizer.json as tokenizer.ggml.* keys. Byte-level BPE (Llama 3, Qwen,
 * SmolLM) becomes the "gpt2" model with its merges and pre-tokenizer name;
 * SentencePiece style (byte-fallback BPE of Llama 2, Mistral, Gemma, Phi 3,
 * or Unigram) becomes the "llama" model with scores (see spm_scores) and
 * whether a marker leads the text. */
static int tokenizer_metadata(struct folder *m, exo_gguf_writer *w)
{
    const exo_json *j = m->tokenizer;
    int32_t model = exo__json_get(j, 0, "model");
    const char *type = exo__json_str(j, exo__json_get(j, model, "type"), NULL);
    bool unigram = type && !strcmp(type, "Unigram");
    if (!type || (!unigram && strcmp(type, "BPE")))
        return exo__error_set(EXO_ENOTSUP, "%s/tokenizer.json: model type '%.32s' is not supported (BPE and Unigram "
                             "are)", m->dir, type ? type : "?");
    bool spm = unigram || exo__json_kind(j, exo__json_get(j, model, "byte_fallback")) == EXO_JSON_TRUE;
    const char *pre = NULL, *scheme = NULL;
    bool prefix = false;
    int rc = spm ? spm_spaces(m, j, &prefix, &scheme) : pre_name(m->dir, j, &pre);
    if (rc) return rc;
    int32_t vocab = exo__json_get(j, model, "vocab"), merges = exo__json_get(j, model, "merges"),
            added = exo__json_get(j, 0, "added_tokens");
    if (unigram ? exo__json_kind(j, vocab) != EXO_JSON_ARRAY
                : exo__json_kind(j, vocab) != EXO_JSON_OBJECT || exo__json_kind(j, merges) != EXO_JSON_ARRAY)
        return exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: model.vocab %s is missing", m->dir,
                              unigram ? "(a list of [piece, score])" : "or model.merges");
    /* The vocabulary spans every id used, and the embedding's rows. */
    int64_t n = m->vocab_size, id;
    if (unigram && exo__json_count(j, vocab) > n) n = exo__json_count(j, vocab);
    for (int32_t e = exo__json_first(j, vocab); !unigram && e != EXO_JSON_NONE; e = exo__json_next(j, e))
        if (exo__json_int(j, e, &id) && id >= n) n = id + 1;
    for (int32_t e = exo__json_first(j, added); e != EXO_JSON_NONE; e = exo__json_next(j, e))
        if (exo__json_int(j, exo__json_get(j, e, "id"), &id) && id >= n) n = id + 1;
    if (n < 1 || n > ST_MAX_VOCAB)
        return exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: vocabulary of %lld ids (1..%d)", m->dir, (long long)n,
                             ST_MAX_VOCAB);
    struct vocab v = {calloc((size_t)n, sizeof *v.text), calloc((size_t)n, sizeof *v.type),
                      spm ? calloc((size_t)n, sizeof *v.score) : NULL, n, NULL, NULL, 0};
    if (!v.text || !v.type || (spm && !v.score)) {
        rc = exo__error_set(EXO_ENOMEM, "out of memory");
        goto done;
    }
    id = 0;
    for (int32_t e = exo__json_first(j, vocab); e != EXO_JSON_NONE && !rc; e = exo__json_next(j, e)) {
        size_t len;
        if (unigram) {
            const char *s = exo__json_str(j, exo__json_first(j, e), &len);
            int32_t sc = exo__json_next(j, exo__json_first(j, e));
            if (!s || exo__json_count(j, e) != 2 || exo__json_kind(j, sc) != EXO_JSON_NUMBER ||
                !isfinite(exo__json_num(j, sc)))
                rc = exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: model.vocab[%lld] is not [piece, score]", m->dir,
                                    (long long)id);
            else if (!(rc = vocab_put(m, &v, id, s, len, 1 /* normal */, false, false)))
                v.score[id] = (float)exo__json_num(j, sc);
            id++;
            continue;
        }
        const char *s = exo__json_key(j, e, &len);
        if (!exo__json_int(j, e, &id)) rc = exo__error_set(EXO_EFORMAT, "%s/tokenizer.json: vocab id of '%.40s' is not an integer", m->dir, s);
        else rc = vocab_put(m, &v, id, s, len, 1 /* normal */, false, false);
    }
    for (int32_t e = exo__json_first(j, added); e != EXO_JSON_NONE && !rc; e = exo__json_next(j, e)) {
        size_t len;
        const char *s = exo__json_str(j, exo__json_get(j, e, "content"), &len);
        bool special = exo__json_kind(j, exo__json_get(j, e, "special")) == EXO_JSON_TRUE;
        if (!exo__json_int(j, exo__json_get(j, e, "id"), &id)) id = -1;
        rc = vocab_put(m, &v, id, s, len, special ? 3 /* control */ : 4 /* user defined */, true, spm);
    }
    if (rc) goto done;
    /* Ids nothing names (an embedding padded past the vocabulary) get
     * placeholder names, as converters write them. */
    int64_t holes = 0;
    for (int64_t i = 0; i < n; i++) holes += !v.text[i];
    if (holes) {
        v.pads = malloc((size_t)holes * 20);
        if (!v.pads) {
            rc = exo__error_set(EXO_ENOMEM, "out of memory");
            goto done;
        }
        char *p = v.pads;
        for (int64_t i = 0; i < n; i++)
            if (!v.text[i]) {
                snprintf(p, 20, "[PAD%lld]", (long long)i);
                v.text[i] = p, v.type[i] = 5 /* unused */;
                if (v.score) v.score[i] = -INFINITY;
                p += 20;
            }
    }
    if ((rc = vocab_index(&v))) goto done;
    int32_t unk = -1;
    if (spm && (rc = spm_scores(m, j, model, &v, unigram, &unk))) goto done;
    if ((rc = exo__gguf_writer_add_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2")) ||
        (!spm && (rc = exo__gguf_writer_add_str(w, "tokenizer.ggml.pre", pre))) ||
        (rc = exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", v.text, (uint64_t)n)) ||
        (rc = exo__gguf_writer_add_arr(w, "tokenizer.ggml.token_type", EXO_GGUF_INT32, v.type, (uint64_t)n)))
        goto done;
    if (spm) {
        if ((rc = exo__gguf_writer_add_arr(w, "tokenizer.ggml.scores", EXO_GGUF_FLOAT32, v.score, (uint64_t)n)) ||
            (rc = exo__gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", prefix)) ||
            (prefix && scheme && (rc = exo__gguf_writer_add_str(w, "tokenizer.exo.prefix_scheme", scheme))) ||
            (unk >= 0 && (rc = exo__gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk))))
            goto done;
    } else if ((rc = bpe_merges(m, j, merges, w))) {
        goto done;
    }
    /* Special ids: tokenizer_config.json names them; config.json numbers them. */
    const exo_json *tc = m->tok_config;
    const struct {
        const char *name, *key, *cfg_key;
    } specials[] = {
        {"bos_token", "tokenizer.ggml.bos_token_id", "bos_token_id"},
        {"eos_token", "tokenizer.ggml.eos_token_id", "eos_token_id"},
        {"pad_token", "tokenizer.ggml.padding_token_id", "pad_token_id"},
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        int32_t tid = tc ? vocab_find(&v, token_text(tc, exo__json_get(tc, 0, specials[i].name))) : -1;
        int32_t cv = exo__json_get(m->config, 0, specials[i].cfg_key);
        if (exo__json_kind(m->config, cv) == EXO_JSON_ARRAY) cv = exo__json_first(m->config, cv);
        if (tid < 0 && exo__json_int(m->config, cv, &id) && id >= 0 && id < n) tid = (int32_t)id;
        if (tid >= 0 && (rc = exo__gguf_writer_add_u32(w, specials[i].key, (uint32_t)tid))) goto done;
    }
    int32_t add_bos = tc ? exo__json_get(tc, 0, "add_bos_token") : EXO_JSON_NONE;
    int kind = exo__json_kind(tc, add_bos), post = spm ? post_adds_bos(j) : -1;
    if ((kind == EXO_JSON_TRUE || kind == EXO_JSON_FALSE || post >= 0) &&
        (rc = exo__gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token",
                                        kind == EXO_JSON_TRUE || (kind != EXO_JSON_FALSE && post > 0))))
        goto done;
done:
    free(v.text);
    free(v.type);
    free(v.score);
    free(v.pads);
    free(v.index);
    return rc;
}

/* The chat template: tokenizer_config.json's chat_template (a string, or a
 * list of named ones of which "default" is taken), else chat_template.jinja. */
static int template_metadata(struct folder *m, exo_gguf_writer *w)
{
    const exo_json *tc = m->tok_config;
    int32_t ct = tc ? exo__json_get(tc, 0, "chat_template") : EXO_JSON_NONE;
    const char *tpl = exo__json_str(tc, ct, NULL);
    for (int32_t e = exo__json_first(tc, ct); !tpl && e != EXO_JSON_NONE; e = exo__json_next(tc, e)) {
        const char *name = exo__json_str(tc, exo__json_get(tc, e, "name"), NULL);
        if (name && !strcmp(name, "default")) tpl = exo__json_str(tc, exo__json_get(tc, e, "template"), NULL);
    }
    if (!tpl) tpl = m->template_file = read_text(m->dir, "chat_template.jinja", 16u << 20);
    return tpl ? exo__gguf_writer_add_str(w, "tokenizer.chat_template", tpl) : 0;
}

/* ---- the tensors ----------------------------------------------------------- */

/* HF's per-layer names and their GGUF suffixes. */
static const struct {
    const char *hf, *gguf;
} layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

/* The GGUF name of an HF tensor into out; 0 = mapped, 1 = not part of the
 * model (rotary caches), or an error for a name the converter cannot place. */
static int gguf_name(const struct folder *m, const char *hf, char *out, size_t cap, int *heads)
{
    *heads = 0;
    if (!strcmp(hf, "model.embed_tokens.weight")) return snprintf(out, cap, "token_embd.weight"), 0;
    if (!strcmp(hf, "model.norm.weight")) return snprintf(out, cap, "output_norm.weight"), 0;
    if (!strcmp(hf, "lm_head.weight")) return snprintf(out, cap, "output.weight"), 0;
    if (ends_with(hf, "rotary_emb.inv_freq")) return 1;
    long layer;
    int used = 0;
    if (sscanf(hf, "model.layers.%ld.%n", &layer, &used) == 1 && used > 0 && layer >= 0 && layer < m->n_layer) {
        const char *suffix = hf + used;
        for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
            if (!strcmp(suffix, layer_names[i].hf)) {
                snprintf(out, cap, "blk.%ld.%s", layer, layer_names[i].gguf);
                if (m->permute_qk && !strncmp(suffix, "self_attn.q_proj.", 17)) *heads = (int)m->n_head;
                if (m->permute_qk && !strncmp(suffix, "self_attn.k_proj.", 17)) *heads = (int)m->n_head_kv;
                return 0;
            }
    }
    return exo__error_set(EXO_ENOTSUP, "%s: tensor '%.200s' has no place in a %s model", m->dir, hf, m->arch);
}

void exo__safetensors_permute_rows(const void *src, void *dst, int64_t rows, size_t row_bytes, int heads, bool to_hf)
{
    const uint8_t *s = src;
    uint8_t *o = dst;
    int64_t d = rows / heads, half = d / 2;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < half; r++)
            for (int k = 0; k < 2; k++) {
                size_t hf = (size_t)(h * d + k * half + r), gguf = (size_t)(h * d + 2 * r + k);
                memcpy(o + (to_hf ? hf : gguf) * row_bytes, s + (to_hf ? gguf : hf) * row_bytes, row_bytes);
            }
}

int exo__safetensors_hf_name(const char *gguf, char *out, size_t cap)
{
    const struct {
        const char *hf, *gguf;
    } globals[] = {{"model.embed_tokens.weight", "token_embd.weight"},
                   {"model.norm.weight", "output_norm.weight"},
                   {"lm_head.weight", "output.weight"}};
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++)
        if (!strcmp(gguf, globals[i].gguf)) return snprintf(out, cap, "%s", globals[i].hf) < (int)cap ? 0 : -1;
    long layer;
    int used = 0;
    if (sscanf(gguf, "blk.%ld.%n", &layer, &used) != 1 || used <= 0 || layer < 0) return -1;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(gguf + used, layer_names[i].gguf))
            return snprintf(out, cap, "model.layers.%ld.%s", layer, layer_names[i].hf) < (int)cap ? 0 : -1;
    return -1;
}

const char *exo__safetensors_split_regex(const char *pre)
{
    for (size_t i = 0; i < sizeof split_regexes / sizeof split_regexes[0]; i++)
        if (!strcmp(pre, split_regexes[i].pre)) return split_regexes[i].regex;
    return NULL;
}

/* One tensor of the GGUF being written: where its bytes come from and what
 * happens to them on the way (widening a vector, reordering Q/K rows). */
struct plan {
    const exo_st_tensor *src; /* NULL: own holds the bytes (rope factors) */
    const void *own;
    int dtype;                /* in the GGUF */
    int heads;                /* Q/K rows to reorder per this many heads, or 0 */
    int64_t rows;             /* rows reordered (a bias: its elements) */
    size_t size;
    bool hole;                /* listed for its shape only: never made, its pages freed */
    int64_t cols;             /* a quantized matrix: elements per row */
};

struct plans {
    struct plan *p;
    size_t n, cap;
    bool info_only;           /* tensor infos only: the data is never made */
    int start, end;           /* the shard's layers (end <= 0: all) */
    bool first, last;         /* whether it embeds tokens, whether it ends in the head */
    bool has_head;            /* the folder has lm_head (an untied head) */
};

/* Whether a GGUF tensor belongs to the shard: its layers, the head and
 * final norm when it is the last, the rope factors, and the embedding,
 * always (the loader takes the vocabulary size from its shape) but made only
 * where it is read: by the first shard, and by the last when the head is
 * tied to it; elsewhere it is a hole (*hole). */
static bool in_shard(const struct plans *ps, const char *name, bool *hole)
{
    long layer;
    *hole = false;
    if (sscanf(name, "blk.%ld.", &layer) == 1) return ps->end <= 0 || (layer >= ps->start && layer < ps->end);
    if (!strncmp(name, "output", 6)) return ps->last;
    if (!strcmp(name, "token_embd.weight")) *hole = !ps->first && !(ps->last && !ps->has_head);
    return true;
}

static int add_plan(struct plans *ps, exo_gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                    struct plan p)
{
    if (exo_grow(&ps->p, &ps->cap, ps->n + 1, sizeof *ps->p)) return exo__error_set(EXO_ENOMEM, "out of memory");
    int rc = exo__gguf_writer_add_tensor_later(w, name, p.dtype, n_dims, ne, p.size);
    if (!rc) ps->p[ps->n++] = p;
    return rc;
}

/* The type matrices are quantized to at load (-1: kept as they are). One
 * setting for the process, as the thread count is: the host sets it from
 * --quantize before loading. */
static int quantize_type = -1;

int exo_safetensors_set_quantize(const char *type)
{
    static const struct {
        const char *name;
        int dtype;
    } types[] = {{"q8_0", EXO_DTYPE_Q8_0}, {"q4_0", EXO_DTYPE_Q4_0}, {"q4_k", EXO_DTYPE_Q4_K}};
    int t = -1;
    for (size_t i = 0; type && *type && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(type, types[i].name)) t = types[i].dtype;
    if (type && *type && t < 0)
        return exo__error_set(EXO_EINVAL, "quantize type '%.32s' is not one of q8_0, q4_0, q4_k", type);
    __atomic_store_n(&quantize_type, t, __ATOMIC_RELAXED);
    return 0;
}

/* The type a matrix of cols-element rows is quantized to: the one asked
 * for, Q8_0 where its rows do not fill the asked type's blocks (Q4_K's 256
 * in Qwen 2.5 0.5B's 896-wide rows), else none (-1). */
static int quantized_type(int64_t cols)
{
    int t = __atomic_load_n(&quantize_type, __ATOMIC_RELAXED);
    if (t < 0) return -1;
    if (cols % exo__dtype_info_get(t)->block_size == 0) return t;
    return cols % exo__dtype_info_get(EXO_DTYPE_Q8_0)->block_size == 0 ? EXO_DTYPE_Q8_0 : -1;
}

static int plan_tensor(struct folder *m, exo_gguf_writer *w, struct plans *ps, const exo_st_tensor *t)
{
    char name[96];
    int heads;
    int rc = gguf_name(m, t->name, name, sizeof name, &heads);
    if (rc) return rc < 0 ? rc : 0;
    bool hole;
    if (!in_shard(ps, name, &hole)) return 0;
    if (t->dtype != EXO_DTYPE_F32 && t->dtype != EXO_DTYPE_F16 && t->dtype != EXO_DTYPE_BF16)
        return exo__error_set(EXO_ENOTSUP, "%s: tensor '%s' is %s (F32, F16 and BF16 are supported)", m->dir, t->name,
                             t->dtype_name);
    if (t->n_dims < 1 || t->n_dims > 2)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' has %d dimensions (1 or 2 expected)", m->dir, t->name,
                             t->n_dims);
    int64_t rows = t->n_dims == 2 ? t->shape[0] : 1, cols = t->shape[t->n_dims - 1];
    int64_t ne[2] = {cols, rows};
    struct plan p = {t, NULL, t->dtype, heads, t->n_dims == 2 ? rows : cols, t->size, hole, 0};
    if (heads && (p.rows % heads || (p.rows / heads) % 2))
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' has %lld rows, not %d heads of an even size", m->dir,
                             t->name, (long long)p.rows, heads);
    /* Vectors in f32: the engine reads norms and biases as floats. */
    if (t->n_dims == 1) p.dtype = EXO_DTYPE_F32, p.size = sizeof(float) * (size_t)cols;
    int qt = t->n_dims == 2 && !hole ? quantized_type(cols) : -1;
    if (qt >= 0) p.dtype = qt, p.cols = cols, p.size = exo__dtype_row_size(qt, cols) * (size_t)rows;
    return add_plan(ps, w, name, t->n_dims, ne, p);
}

/* Element i of a F32/F16/BF16 tensor as a float. */
static float element(const void *data, int dtype, size_t i)
{
    if (dtype == EXO_DTYPE_F32) {
        float f;
        memcpy(&f, (const char *)data + 4 * i, 4);
        return f;
    }
    uint16_t bits;
    memcpy(&bits, (const char *)data + 2 * i, 2);
    return dtype == EXO_DTYPE_F16 ? exo__half_to_float(bits) : exo__bf16_to_float(bits);
}

/* A matrix quantized row by row with the format's reference quantizer
 * (each GGUF row taken from its HF row when Q/K rows are reordered). */
static int fill_quantized(const struct plan *p, void *buf)
{
    const exo_type_traits *tr = exo__type_traits_get(p->dtype);
    float *row = malloc(sizeof(float) * (size_t)p->cols);
    if (!tr || !tr->from_float_ref || !row) {
        free(row);
        return exo__error_set(EXO_ENOMEM, "out of memory quantizing '%s'", p->src->name);
    }
    size_t row_bytes = exo__dtype_row_size(p->dtype, p->cols);
    int64_t d = p->heads ? p->rows / p->heads : 1, half = d / 2;
    for (int64_t r = 0; r < p->rows; r++) {
        int64_t src = r;
        if (p->heads) src = r / d * d + (r % d % 2) * half + r % d / 2;
        for (int64_t i = 0; i < p->cols; i++) row[i] = element(p->src->data, p->src->dtype, (size_t)(src * p->cols + i));
        tr->from_float_ref(row, (char *)buf + (size_t)r * row_bytes, p->cols);
    }
    free(row);
    return 0;
}

/* The bytes of a plan with a source tensor into buf. */
static int fill_from_source(const struct plan *p, void *buf, size_t size)
{
    if (p->cols) return fill_quantized(p, buf);
    const void *data = p->src->data;
    void *tmp = NULL;
    if (p->dtype != p->src->dtype) {
        float *f = p->heads ? (tmp = malloc(size)) : buf;
        if (!f) return exo__error_set(EXO_ENOMEM, "out of memory converting '%s'", p->src->name);
        for (size_t i = 0; i < size / sizeof(float); i++) f[i] = element(data, p->src->dtype, i);
        data = f;
    }
    if (p->heads) exo__safetensors_permute_rows(data, buf, p->rows, size / (size_t)p->rows, p->heads, false);
    else if (data != buf) memcpy(buf, data, size);
    free(tmp);
    return 0;
}

/* The bytes of plan index into buf (the writer's fill callback). */
static int fill_tensor(void *ud, size_t index, void *buf, size_t size)
{
    struct plans *ps = ud;
    if (ps->info_only) return 1; /* stop at the first tensor's data: see open_safetensors_model */
    const struct plan *p = &ps->p[index];
    if (p->hole) {
        memset(buf, 0, size);
        return 0;
    }
    if (!p->src) {
        memcpy(buf, p->own, size);
        return 0;
    }
    int rc = fill_from_source(p, buf, size);
    /* Each source tensor is read once: its pages leave this process (the page
     * cache keeps them, for the kernel to drop), so converting a folder keeps
     * about one tensor of it resident rather than all of it. */
    exo__release_pages(p->src->data, p->src->size);
    return rc;
}

/* Whether the index's tensor hf (in a file not in the folder) is one the
 * shard reads: a tensor it maps to GGUF and makes data for. The info view
 * makes none, and a name the converter cannot place would fail only where
 * its file is read. */
static bool needed(struct folder *m, const struct plans *ps, const char *hf)
{
    char name[96];
    int heads;
    bool hole;
    if (ps->info_only || gguf_name(m, hf, name, sizeof name, &heads)) return false;
    return in_shard(ps, name, &hole) && !hole;
}

/* The weight files: those the index names (each once), or model.safetensors.
 * A file the index names that is not in the folder is left out when it
 * holds no tensor the shard reads: a ring member fetches only the files of
 * its layers (exo.download's safetensors_needs picks the same ones), and the
 * info view (the last node's text side, `exo show`) lists what the folder
 * holds. A missing file that holds a tensor the range reads is an error
 * naming both, before anything is converted. Sets ps->has_head from the
 * index, so a tied embedding's need is known when its file is missing. */
static int open_weights(struct folder *m, struct plans *ps)
{
    exo_json *index;
    int rc = read_json(m->dir, "model.safetensors.index.json", ST_MAX_TOKENIZER, false, &index);
    if (rc) return rc;
    if (!index) return add_file(m, "model.safetensors");
    int32_t map = exo__json_get(index, 0, "weight_map");
    if (exo__json_kind(index, map) != EXO_JSON_OBJECT) {
        exo__json_free(index);
        return exo__error_set(EXO_EFORMAT, "%s/model.safetensors.index.json: no weight_map object", m->dir);
    }
    ps->has_head = exo__json_get(index, map, "lm_head.weight") != EXO_JSON_NONE;
    struct seen {
        const char *name;
        bool present;
    } *seen = NULL;
    size_t n_seen = 0, cap = 0;
    for (int32_t e = exo__json_first(index, map); e != EXO_JSON_NONE && !rc; e = exo__json_next(index, e)) {
        size_t len;
        const char *name = exo__json_str(index, e, &len), *tensor = exo__json_key(index, e, NULL);
        if (!name || !plain_name(name, len)) {
            rc = exo__error_set(EXO_EFORMAT, "%s/model.safetensors.index.json: weight_map names a file outside the "
                                "folder or not a string", m->dir);
            break;
        }
        size_t k = 0;
        while (k < n_seen && strcmp(seen[k].name, name)) k++;
        if (k == n_seen) {
            char file[4400];
            snprintf(file, sizeof file, "%s/%s", m->dir, name);
            if (exo_grow(&seen, &cap, n_seen + 1, sizeof *seen)) {
                rc = exo__error_set(EXO_ENOMEM, "out of memory");
                break;
            }
            seen[n_seen++] = (struct seen){name, !(access(file, F_OK) && errno == ENOENT)};
            if (seen[k].present && (rc = add_file(m, name))) break;
        }
        if (!seen[k].present && tensor && needed(m, ps, tensor)) {
            char range[48] = "the whole model";
            if (ps->end > 0) snprintf(range, sizeof range, "layers %d-%d", ps->start, ps->end);
            rc = exo__error_set(EXO_EIO, "%s/%s is missing: it holds '%.200s', which %s need%s", m->dir, name, tensor,
                                range, ps->end > 0 ? "" : "s");
        }
    }
    if (!rc && n_seen && !m->n_files)
        rc = exo__error_set(EXO_EIO, "%s: none of the weight files model.safetensors.index.json names is here", m->dir);
    free(seen);
    exo__json_free(index);
    return rc;
}

/* ---- the GGUF in memory ------------------------------------------------------ */

static int convert(struct folder *m, int what, exo_gguf_writer *w, struct plans *ps)
{
    int rc;
    const char *base = strrchr(m->dir, '/');
    float *factors = NULL;
    int64_t n_factors = 0;
    if ((rc = exo__gguf_writer_add_str(w, "general.architecture", m->arch)) ||
        (rc = exo__gguf_writer_add_str(w, "general.name", base && base[1] ? base + 1 : m->dir)) ||
        (rc = hparams_metadata(m, w)) || (rc = rope_metadata(m, w, &factors, &n_factors)))
        return rc;
    m->rope_factors = factors;
    if (m->tokenizer && (rc = tokenizer_metadata(m, w))) return rc;
    if ((rc = template_metadata(m, w))) return rc;
    if (what == EXO_MODEL_OPEN_METADATA) return 0;
    if (factors) {
        int64_t ne[1] = {n_factors};
        struct plan p = {NULL, factors, EXO_DTYPE_F32, 0, 1, sizeof(float) * (size_t)n_factors, false, 0};
        if ((rc = add_plan(ps, w, "rope_freqs.weight", 1, ne, p))) return rc;
    }
    bool has_embd = false;
    for (size_t f = 0; f < m->n_files; f++)
        for (int64_t i = 0; i < exo__safetensors_count(m->files[f]); i++) {
            const char *name = exo__safetensors_at(m->files[f], i)->name;
            if (!strcmp(name, "lm_head.weight")) ps->has_head = true;
            if (!strcmp(name, "model.embed_tokens.weight")) has_embd = true;
        }
    for (size_t f = 0; f < m->n_files; f++)
        for (int64_t i = 0; i < exo__safetensors_count(m->files[f]); i++)
            if ((rc = plan_tensor(m, w, ps, exo__safetensors_at(m->files[f], i)))) return rc;
    /* A range whose folder lacks the embedding's file (it was not fetched:
     * see open_weights), or the info view of such a folder: the loader still
     * wants the embedding's shape for the vocabulary size, so it is listed
     * from config.json as a hole, which is never read here. */
    bool hole;
    if (!has_embd && m->vocab_size > 0 &&
        (ps->info_only || (ps->end > 0 && in_shard(ps, "token_embd.weight", &hole) && hole))) {
        int64_t ne[2] = {m->n_embd, m->vocab_size};
        struct plan p = {NULL, NULL, EXO_DTYPE_F32, 0, m->vocab_size,
                         sizeof(float) * (size_t)m->n_embd * (size_t)m->vocab_size, true, 0};
        if ((rc = add_plan(ps, w, "token_embd.weight", 2, ne, p))) return rc;
    }
    return 0;
}


static size_t padded(size_t n)
{
    return (n + 31) / 32 * 32; /* the writer's default alignment, which convert() keeps */
}

/* Where the memory file's data section starts: it is the file's tail, the
 * tensors back to back, each padded. */
static int data_offset(int fd, const struct plans *ps, const char *path, uint64_t *off)
{
    struct stat st;
    uint64_t total = 0;
    for (size_t i = 0; i < ps->n; i++) total += padded(ps->p[i].size);
    if (fstat(fd, &st) || (uint64_t)st.st_size < total)
        return exo__error_set(EXO_EIO, "%s: the memory file is shorter than its tensors", path);
    *off = (uint64_t)st.st_size - total;
    return 0;
}

/* Frees the memory file's pages under the hole tensors. */
static int punch_holes(int fd, const struct plans *ps, const char *path)
{
    uint64_t off = 0;
    int rc = data_offset(fd, ps, path, &off);
    if (rc) return rc;
    for (size_t i = 0; i < ps->n; i++) {
        if (ps->p[i].hole && ps->p[i].size &&
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)ps->p[i].size))
            return exo__error_set(EXO_EIO, "%s: cannot free unused pages: %s", path, strerror(errno));
        off += padded(ps->p[i].size);
    }
    return 0;
}

/* With --quantize the backend packs each quantized matrix into an arena of
 * its own and then drops the mapping's pages of it (exo__release_pages). A
 * memory file's pages dropped from a mapping stay in the file, so the shard
 * would take its quantized size twice. Instead the mapping's pages become
 * this process's own, one tensor at a time (written in place: copy on
 * write), and that tensor's bytes are punched out of the file: the mapping
 * then holds the only copy, and dropping a packed matrix's pages frees them.
 * Nothing reads a packed matrix from the mapping again (the CPU backend reads
 * rows from the packed copy); anything that did would read zeros, as from a
 * hole. It is a saving, not a need: tensors that do not match the plans
 * (never expected) or a call that fails leave the rest of the file as it is,
 * and the shard then holds the two copies it always did. */
static void own_pages(int fd, const exo_gguf *g, const struct plans *ps, const char *path)
{
    if (exo__gguf_tensor_count(g) != (int64_t)ps->n) return;
    for (size_t i = 0; i < ps->n; i++)
        if (exo__gguf_tensor_at(g, (int64_t)i)->size != ps->p[i].size) return;
    uint64_t data_off = 0;
    if (data_offset(fd, ps, path, &data_off)) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < ps->n; i++) {
        const exo_gguf_tensor *t = exo__gguf_tensor_at(g, (int64_t)i);
        if (ps->p[i].hole || !t->size) continue;
        uintptr_t a = (uintptr_t)t->data / page * page, e = ((uintptr_t)t->data + t->size + page - 1) / page * page;
        if (mprotect((void *)a, e - a, PROT_READ | PROT_WRITE)) return;
#ifdef MADV_POPULATE_WRITE
        /* One call where the kernel has it (5.14+), rather than a fault a page. */
        if (madvise((void *)a, e - a, MADV_POPULATE_WRITE))
#endif
            for (uintptr_t q = a; q < e; q += page) {
                volatile char *c = (volatile char *)q;
                *c = *c;
            }
        /* Every page of the tensor is the process's own now: read-only
         * again, as the reader mapped it, and the file's copy can go. */
        if (mprotect((void *)a, e - a, PROT_READ) ||
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(data_off + t->offset), (off_t)t->size))
            return;
    }
}

static int open_safetensors_model(const char *path, int what, int start, int end, int first, int last,
                                  exo_gguf **out)
{
    struct folder m;
    memset(&m, 0, sizeof m);
    struct plans ps = {NULL, 0, 0, what == EXO_MODEL_OPEN_INFO, start, end, true, true, false};
    exo_gguf_writer *w = NULL;
    int fd = -1;
    int rc = model_dir(path, m.dir, sizeof m.dir);
    if (!rc) rc = read_config(&m);
    /* As exo_shard_load reads them: -1 = from the range. */
    if (!rc && end > 0) {
        ps.first = first < 0 ? start == 0 : first != 0;
        ps.last = last < 0 ? end >= m.n_layer : last != 0;
    }
    if (!rc) rc = read_json(m.dir, "tokenizer.json", ST_MAX_TOKENIZER, false, &m.tokenizer);
    if (!rc) rc = read_json(m.dir, "tokenizer_config.json", ST_MAX_TOKENIZER, false, &m.tok_config);
    if (!rc && what != EXO_MODEL_OPEN_METADATA) rc = open_weights(&m, &ps);
    if (rc) goto done;
    if (!(w = exo__gguf_writer_new())) {
        rc = EXO_ENOMEM;
        goto done;
    }
    if ((rc = convert(&m, what, w, &ps))) goto done;
    /* Written into an anonymous memory file, one tensor at a time, and mapped
     * back by the one GGUF reader: the engine sees exactly what it would see
     * from disk, and memory holds one copy of the shard's weights. */
    fd = memfd_create("exo-safetensors", MFD_CLOEXEC);
    if (fd < 0) {
        rc = exo__error_set(EXO_EIO, "%s: cannot create a memory file: %s", path, strerror(errno));
        goto done;
    }
    char fd_path[64];
    snprintf(fd_path, sizeof fd_path, "/proc/self/fd/%d", fd);
    rc = exo__gguf_writer_write_fill(w, fd_path, fill_tensor, &ps);
    if (ps.info_only && ps.n && rc == EXO_EIO) {
        /* Tensor infos only (what metadata readers need): the writer stopped
         * at the first tensor's data, with the header and its padding
         * written; the data section becomes a hole of the right size, which
         * takes no memory and reads as zeros. */
        struct stat st;
        uint64_t total = 0;
        for (size_t i = 0; i < ps.n; i++) total += padded(ps.p[i].size);
        rc = fstat(fd, &st) || ftruncate(fd, st.st_size + (off_t)total)
                 ? exo__error_set(EXO_EIO, "%s: cannot size the memory file: %s", path, strerror(errno))
                 : 0;
    }
    if (!rc && !ps.info_only) rc = punch_holes(fd, &ps, path);
    if (rc) goto done;
    exo__gguf_writer_free(w);
    w = NULL;
    rc = exo__gguf_open(fd_path, out);
    bool quantized = false;
    for (size_t i = 0; i < ps.n; i++) quantized |= ps.p[i].cols > 0;
    if (!rc && quantized) own_pages(fd, *out, &ps, path);
done:
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", exo_last_error());
        if (!strstr(msg, m.dir[0] ? m.dir : path)) exo__error_set(rc, "%s: %s", path, msg);
    }
    if (fd >= 0) close(fd);
    exo__gguf_writer_free(w);
    free(ps.p);
    folder_free(&m);
    return rc;
}

int exo__model_file_open(const char *path, int what, int layer_start, int layer_end, int is_first, int is_last,
                         exo_gguf **out)
{
    if (!out) return exo__error_set(EXO_EINVAL, "exo__model_file_open: out is NULL");
    *out = NULL;
    if (!path) return exo__error_set(EXO_EINVAL, "exo__model_file_open: path is NULL");
    if (exo__safetensors_is_model(path))
        return open_safetensors_model(path, what, layer_start, layer_end, is_first, is_last, out);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return exo__error_set(EXO_EIO, "%s: a folder without config.json (a model folder has config.json and "
                             "*.safetensors; or give a .gguf file)", path);
    return exo__gguf_open(path, out);
}
