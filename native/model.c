/* model.c: loading shards, KV-cache sequences, and batched forward passes.
 *
 * A shard is a layer range of one model file. Loading reads every
 * hyper-parameter from the file's metadata (prefixed by its architecture name,
 * as GGUF does), binds only the tensors the range needs, lets the backend
 * keep packed copies of the matrices a token reads (one arena per shard; the
 * file's pages are released after, and a model that would not fit packed
 * stays a mapping), and allocates the run state for one internal batch, so
 * a forward pass never allocates. The KV cache is f16, in the shard's
 * pool of fixed blocks, which sequences take as they grow and give back,
 * and may share: a sequence can start from another's prefix, holding its
 * full blocks too (reference counts, copy on write; model.h says how the
 * pool is laid out and sized).
 * Forward passes are serialised by one lock: the compute pool and the
 * backend's scratch are shared, and running two passes at once would only
 * make both slower. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/quants.h"
#include "error.h"
#include "pool.h"
#include "safetensors.h"

/* Tokens per internal batch: big enough for sgemm to reach its speed, small
 * enough that the run state stays a few MiB. */
#define SHARD_MAX_BATCH 256
/* A cache of this many positions at most, whatever a caller asks. */
#define SEQ_MAX_CTX (1 << 20)

static pthread_mutex_t forward_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- metadata ----------------------------------------------------------- */

bool exo__model_meta_has(const exo_shard *s, const char *suffix)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", s->arch_name, suffix);
    return exo__gguf_find_key(s->file, key) >= 0;
}

int exo__model_meta_int(const exo_shard *s, const char *suffix, int *out, bool required, int fallback)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", s->arch_name, suffix);
    if (exo__gguf_find_key(s->file, key) < 0) {
        if (required) return exo__error_set(EXO_EFORMAT, "model metadata lacks '%s'", key);
        *out = fallback;
        return EXO_OK;
    }
    int64_t v;
    int rc = exo__gguf_get_i64(s->file, key, &v);
    if (rc) return rc;
    if (v < 0 || v > (1 << 30)) return exo__error_set(EXO_EFORMAT, "model metadata '%s' = %lld is out of range", key, (long long)v);
    *out = (int)v;
    return EXO_OK;
}

int exo__model_meta_float(const exo_shard *s, const char *suffix, float *out, float fallback)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", s->arch_name, suffix);
    if (exo__gguf_find_key(s->file, key) < 0) {
        *out = fallback;
        return EXO_OK;
    }
    int rc = exo__gguf_get_f32(s->file, key, out);
    if (rc) return rc;
    if (!isfinite(*out)) return exo__error_set(EXO_EFORMAT, "model metadata '%s' is not finite", key);
    return EXO_OK;
}

/* The hyper-parameters every architecture shares; the architecture's
 * read_hparams then reads its own. */
static int read_hparams(exo_shard *s)
{
    exo_hparams *hp = &s->hp;
    int rc;
    if ((rc = exo__model_meta_int(s, "block_count", &hp->n_layer, true, 0))) return rc;
    if ((rc = exo__model_meta_int(s, "embedding_length", &hp->n_embd, true, 0))) return rc;
    if ((rc = exo__model_meta_int(s, "feed_forward_length", &hp->n_ff, true, 0))) return rc;
    if ((rc = exo__model_meta_int(s, "attention.head_count", &hp->n_head, true, 0))) return rc;
    if ((rc = exo__model_meta_int(s, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head))) return rc;
    if ((rc = exo__model_meta_int(s, "context_length", &hp->n_ctx_train, false, 2048))) return rc;
    if (hp->n_layer < 1 || hp->n_embd < 1 || hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_ff < 1 ||
        hp->n_ctx_train < 1)
        return exo__error_set(EXO_EFORMAT, "model hyper-parameters must be positive (layers %d, embd %d, heads %d/%d, "
                             "ff %d, context %d)", hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_ff,
                             hp->n_ctx_train);
    if (hp->n_layer > 4096 || hp->n_head > 4096 || hp->n_embd > (1 << 20) || hp->n_ff > (1 << 22))
        return exo__error_set(EXO_EFORMAT, "model hyper-parameters are implausibly large (layers %d, heads %d, embd %d, "
                             "ff %d)", hp->n_layer, hp->n_head, hp->n_embd, hp->n_ff);
    if (hp->n_head % hp->n_head_kv)
        return exo__error_set(EXO_EFORMAT, "%d heads are not a multiple of %d kv heads", hp->n_head, hp->n_head_kv);
    /* head_dim comes from metadata where the file says it (Qwen 3, Gemma:
     * not n_embd / n_head); otherwise the embedding splits evenly. */
    if (!exo__model_meta_has(s, "attention.key_length") && hp->n_embd % hp->n_head)
        return exo__error_set(EXO_EFORMAT, "embedding length %d is not a multiple of %d heads", hp->n_embd, hp->n_head);
    if ((rc = exo__model_meta_int(s, "attention.key_length", &hp->head_dim, false, hp->n_embd / hp->n_head))) return rc;
    int value_dim;
    if ((rc = exo__model_meta_int(s, "attention.value_length", &value_dim, false, hp->head_dim))) return rc;
    if (value_dim != hp->head_dim)
        return exo__error_set(EXO_ENOTSUP, "value length %d differs from key length %d (not supported)", value_dim,
                             hp->head_dim);
    if (hp->head_dim < 1 || hp->head_dim > 1024)
        return exo__error_set(EXO_EFORMAT, "head dimension %d is out of range", hp->head_dim);
    if ((rc = exo__model_meta_int(s, "rope.dimension_count", &hp->rope_dim, false, hp->head_dim))) return rc;
    if (hp->rope_dim > hp->head_dim || hp->rope_dim % 2)
        return exo__error_set(EXO_EFORMAT, "rope dimension %d does not fit head dimension %d", hp->rope_dim, hp->head_dim);
    if ((rc = exo__model_meta_float(s, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f))) return rc;
    if (!(hp->rms_eps >= 0 && hp->rms_eps < 1))
        return exo__error_set(EXO_EFORMAT, "RMS norm epsilon %g is out of range", hp->rms_eps);
    s->embd_scale = 1.0f;
    return EXO_OK;
}

/* The linear rope scaling factor the file declares (1 = none). */
int exo__model_rope_scaling(const exo_shard *s, float *linear_scale)
{
    *linear_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", s->arch_name);
    const char *type;
    size_t type_len;
    if (exo__gguf_get_str(s->file, key, &type, &type_len) != EXO_OK) return EXO_OK;
    if (type_len == 6 && !memcmp(type, "linear", 6)) {
        int rc = exo__model_meta_float(s, "rope.scaling.factor", linear_scale, 1.0f);
        if (rc) return rc;
        if (!(*linear_scale > 0))
            return exo__error_set(EXO_EFORMAT, "rope scaling factor %g is not positive", *linear_scale);
        return EXO_OK;
    }
    if (type_len == 4 && !memcmp(type, "none", 4)) return EXO_OK;
    return exo__error_set(EXO_ENOTSUP, "rope scaling type '%.*s' is not supported (linear and per-frequency factor "
                         "tensors are)", (int)(type_len > 32 ? 32 : type_len), type);
}

int exo__model_add_file_rope(exo_shard *s, int style, const char *factors)
{
    float freq_base, linear_scale;
    int rc;
    if ((rc = exo__model_meta_float(s, "rope.freq_base", &freq_base, 10000.0f))) return rc;
    if ((rc = exo__model_rope_scaling(s, &linear_scale))) return rc;
    return exo__model_add_rope(s, freq_base, linear_scale, style, factors);
}

int exo__model_sliding_window(const exo_shard *s, int *window)
{
    int rc = exo__model_meta_int(s, "attention.sliding_window", window, false, 0);
    if (rc) return rc;
    if (*window > s->hp.n_ctx_train)
        return exo__error_set(EXO_EFORMAT, "sliding window of %d positions is larger than the context of %d", *window,
                             s->hp.n_ctx_train);
    return EXO_OK;
}

/* inv[i] = base^(-2i/rope_dim), divided by the factors tensor's values when
 * the file has one of that name (Llama 3's and Phi 3's per-frequency
 * divisors). */
static int rope_frequencies(exo_shard *s, float freq_base, const char *factors, float *inv)
{
    const exo_hparams *hp = &s->hp;
    const int half = hp->rope_dim / 2;
    for (int i = 0; i < half; i++) inv[i] = (float)pow(freq_base, -2.0 * i / hp->rope_dim);
    int64_t idx = factors ? exo__gguf_find_tensor(s->file, factors) : -1;
    if (idx < 0) return EXO_OK;
    const exo_gguf_tensor *t = exo__gguf_tensor_at(s->file, idx);
    if (t->dtype != EXO_DTYPE_F32 || t->ne[0] != half || t->n_dims != 1)
        return exo__error_set(EXO_EFORMAT, "%s should be f32 of %d elements", factors, half);
    const float *values = t->data;
    for (int i = 0; i < half; i++) {
        float f;
        memcpy(&f, values + i, sizeof f);
        if (!(f > 0) || !isfinite(f)) return exo__error_set(EXO_EFORMAT, "%s[%d] = %g is not positive", factors, i, f);
        inv[i] /= f;
    }
    return EXO_OK;
}

int exo__model_add_rope(exo_shard *s, float freq_base, float linear_scale, int style, const char *factors)
{
    if (s->n_rope >= EXO_MAX_ROPES) return exo__error_set(EXO_EINVAL, "more than %d ropes", EXO_MAX_ROPES);
    if (!(freq_base > 0)) return exo__error_set(EXO_EFORMAT, "rope frequency base %g is not positive", freq_base);
    const int half = s->hp.rope_dim / 2;
    exo_rope *r = &s->rope[s->n_rope];
    r->style = style;
    r->freq_base = freq_base;
    r->linear_scale = linear_scale;
    r->attn_factor = 1.0f;
    r->inv_freq = malloc(sizeof(float) * (size_t)(half > 0 ? half : 1));
    r->cos = exo__aligned_alloc(sizeof(float) * (size_t)s->max_batch * (size_t)(half + 1));
    r->sin = exo__aligned_alloc(sizeof(float) * (size_t)s->max_batch * (size_t)(half + 1));
    s->n_rope++;
    if (!r->inv_freq || !r->cos || !r->sin) return exo__error_set(EXO_ENOMEM, "out of memory");
    int rc = rope_frequencies(s, freq_base, factors, r->inv_freq);
    return rc ? rc : s->n_rope - 1;
}

int exo__model_rope_long_factors(exo_shard *s, int rope, const char *factors, int above_ctx)
{
    exo_rope *r = &s->rope[rope];
    const int half = s->hp.rope_dim / 2;
    r->inv_freq_long = malloc(sizeof(float) * (size_t)(half > 0 ? half : 1));
    if (!r->inv_freq_long) return exo__error_set(EXO_ENOMEM, "out of memory");
    r->long_above_ctx = above_ctx;
    return rope_frequencies(s, r->freq_base, factors, r->inv_freq_long);
}

int exo__model_bind_tensor(exo_shard *s, exo_tensor *t, const char *name, int n_dims, int64_t ne0, int64_t ne1,
                          bool required)
{
    int64_t idx = exo__gguf_find_tensor(s->file, name);
    if (idx < 0) {
        memset(t, 0, sizeof *t);
        return required ? exo__error_set(EXO_EFORMAT, "model lacks tensor '%s'", name) : EXO_OK;
    }
    const exo_gguf_tensor *g = exo__gguf_tensor_at(s->file, idx);
    int64_t g_ne1 = g->n_dims > 1 ? g->ne[1] : 1;
    if (g->n_dims != n_dims || g->ne[0] != ne0 || g_ne1 != ne1)
        return exo__error_set(EXO_EFORMAT, "tensor '%s' has shape [%lld, %lld] (%d dims), expected [%lld, %lld]",
                             name, (long long)g->ne[0], (long long)g_ne1, g->n_dims, (long long)ne0, (long long)ne1);
    if (!exo__type_traits_get(g->dtype))
        return exo__error_set(EXO_ENOTSUP, "tensor '%s' has unsupported type %d (%s)", name, g->dtype,
                             exo_dtype_name(g->dtype));
    if (n_dims == 1 && g->dtype != EXO_DTYPE_F32)
        return exo__error_set(EXO_ENOTSUP, "tensor '%s' is a vector of type %s; only f32 vectors are supported",
                             name, exo_dtype_name(g->dtype));
    int64_t ne[2] = {ne0, ne1};
    int rc = exo__tensor_view(t, g->dtype, n_dims, ne, g->data);
    if (rc) return exo__error_set(rc, "tensor '%s': %s", name, exo_last_error());
    s->weight_bytes += (int64_t)g->size;
    return EXO_OK;
}

int exo__model_bind_layer_tensor(exo_shard *s, exo_tensor *t, int il, const char *suffix, int n_dims, int64_t ne0,
                                int64_t ne1, bool required)
{
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return exo__model_bind_tensor(s, t, name, n_dims, ne0, ne1, required);
}

void exo__model_row_view(exo_tensor *t, const exo_tensor *m, int64_t row0, int64_t n_rows)
{
    *t = *m;
    t->ne[1] = n_rows;
    t->data = (char *)m->data + (size_t)row0 * m->nb[1];
    t->packed = NULL;
}

int exo__model_bind_embeddings(exo_shard *s)
{
    exo_hparams *hp = &s->hp;
    const int64_t n_embd = hp->n_embd;
    int rc;
    /* The vocabulary size is the embedding's row count (vocab_size metadata is optional). */
    int64_t emb_idx = exo__gguf_find_tensor(s->file, "token_embd.weight");
    if (emb_idx < 0) return exo__error_set(EXO_EFORMAT, "model lacks tensor 'token_embd.weight'");
    const exo_gguf_tensor *emb = exo__gguf_tensor_at(s->file, emb_idx);
    if (emb->n_dims != 2 || emb->ne[0] != n_embd || emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
        return exo__error_set(EXO_EFORMAT, "token_embd.weight has shape [%lld, %lld], expected [%lld, n_vocab]",
                             (long long)emb->ne[0], (long long)emb->ne[1], (long long)n_embd);
    hp->n_vocab = (int)emb->ne[1];

    if (s->is_first) {
        if ((rc = exo__model_bind_tensor(s, &s->tok_embd, "token_embd.weight", 2, n_embd, hp->n_vocab, true)))
            return rc;
        /* A lookup reads one row per token, not the table. */
        s->weight_bytes -= (int64_t)(emb->size - s->tok_embd.nb[1]);
    }
    if (s->is_last) {
        if ((rc = exo__model_bind_tensor(s, &s->output_norm, "output_norm.weight", 1, n_embd, 1, true))) return rc;
        if ((rc = exo__model_bind_tensor(s, &s->output, "output.weight", 2, n_embd, hp->n_vocab, false))) return rc;
        if (!s->output.data) {
            /* Tied head: the embedding doubles as the output projection. */
            if ((rc = exo__model_bind_tensor(s, &s->output, "token_embd.weight", 2, n_embd, hp->n_vocab, true)))
                return rc;
        }
        if ((rc = exo__model_bind_tensor(s, &s->output_bias, "output.bias", 1, hp->n_vocab, 1, false))) return rc;
    }
    return EXO_OK;
}

static size_t round_to_line(size_t n)
{
    return (n + 63) / 64 * 64;
}

/* Bytes of memory the kernel reports available (MemAvailable), or -1. */
static int64_t mem_available_bytes(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[128];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : (int64_t)kb * 1024;
}

int exo__model_pack_weights(exo_shard *s, exo_tensor *const *ws, int n)
{
    exo_backend *be = s->backend;
    if (!be->packed_size || !be->pack) return EXO_OK;
    /* Sizes asked once: the arena is cut by these same numbers. */
    size_t *sizes = calloc((size_t)(n > 0 ? n : 1), sizeof *sizes), total = 0;
    if (!sizes) return exo__error_set(EXO_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        if (ws[i] && ws[i]->data) total += round_to_line(sizes[i] = be->packed_size(be, ws[i]));
    /* The packed copy is anonymous memory, where the file's pages were page
     * cache the kernel could drop: a model that only fits as a mapping stays
     * a mapping (slower, but it runs). */
    int64_t available = mem_available_bytes();
    char *arena = NULL;
    if (total && (available < 0 || (int64_t)total <= available / 10 * 9)) arena = be->alloc(be, total, EXO_BUFFER_WEIGHTS);
    if (arena) {
        s->packed = arena;
        s->packed_bytes = total;
        size_t used = 0;
        for (int i = 0; i < n; i++) {
            if (!sizes[i]) continue;
            be->pack(be, ws[i], arena + used);
            used += round_to_line(sizes[i]);
            /* The file's copy is off the hot path now: its pages can go (read
             * again from the page cache if a row is ever needed). A tied
             * head's embedding looks its rows up in the packed copy too. */
            if (ws[i]->data == s->tok_embd.data) s->tok_embd.packed = ws[i]->packed;
            if (exo__gguf_is_file_mapped(s->file)) exo__release_pages(ws[i]->data, sizes[i]);
        }
    }
    free(sizes);
    return EXO_OK;
}

/* ---- shards ------------------------------------------------------------- */

typedef struct exo_multi_scratch exo_multi_scratch;
static void multi_free(exo_multi_scratch *m);
static int kv_pool_init(exo_shard *s);
static void kv_pool_unref(exo_kv_pool *p);

/* The run state: one backend buffer cut into the arrays of exo_run_state. */
static int alloc_run_state(exo_shard *s)
{
    const exo_hparams *hp = &s->hp;
    size_t b = (size_t)s->max_batch;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    size_t widths[8] = {(size_t)hp->n_embd, q_dim > (size_t)hp->n_embd ? q_dim : (size_t)hp->n_embd, q_dim, kv_dim,
                        kv_dim, q_dim, (size_t)hp->n_ff, (size_t)hp->n_ff};
    exo_run_state *rs = &s->rs;
    float **arrays[8] = {&rs->x, &rs->xn, &rs->q, &rs->k, &rs->v, &rs->att, &rs->gate, &rs->up};
    size_t total = 0;
    for (int i = 0; i < 8; i++) total += round_to_line(sizeof(float) * b * widths[i]);
    rs->base = s->backend->alloc(s->backend, total, EXO_BUFFER_ACTIVATIONS);
    if (!rs->base) return exo__error_set(EXO_ENOMEM, "out of memory allocating the run state (%zu MiB)", total >> 20);
    rs->bytes = total;
    s->runs = calloc(b, sizeof *s->runs);
    s->batch_seq = calloc(b, sizeof *s->batch_seq);
    s->batch_pos = calloc(b, sizeof *s->batch_pos);
    if (!s->runs || !s->batch_seq || !s->batch_pos) return exo__error_set(EXO_ENOMEM, "out of memory");
    char *at = (char *)rs->base;
    for (int i = 0; i < 8; i++) {
        *arrays[i] = (float *)at;
        at += round_to_line(sizeof(float) * b * widths[i]);
    }
    int max_dim = hp->n_embd;
    if (hp->n_ff > max_dim) max_dim = hp->n_ff;
    if ((int)q_dim > max_dim) max_dim = (int)q_dim;
    /* Attention's scratch grows with each sequence's context (exo_seq_new
     * reserves it), not with the file's claim, which may be 2^30. */
    return s->backend->reserve(s->backend, s->max_batch, max_dim, 1);
}

void exo_shard_free(exo_shard *s)
{
    if (!s) return;
    exo_backend *be = s->backend;
    if (s->rs.base) be->release(be, s->rs.base, s->rs.bytes, EXO_BUFFER_ACTIVATIONS);
    for (int i = 0; i < s->n_rope; i++) {
        free(s->rope[i].inv_freq);
        free(s->rope[i].inv_freq_long);
        exo__aligned_free(s->rope[i].cos);
        exo__aligned_free(s->rope[i].sin);
    }
    free(s->arch_data);
    free(s->runs);
    free(s->batch_seq);
    free(s->batch_pos);
    multi_free(s->multi);
    kv_pool_unref(s->kv);
    if (s->packed) be->release(be, s->packed, s->packed_bytes, EXO_BUFFER_WEIGHTS);
    exo__gguf_close(s->file);
    free(s);
}

int exo_shard_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, exo_shard **out)
{
    return exo__model_load(path, layer_start, layer_end, is_first, is_last, "cpu", out);
}

int exo__model_load(const char *path, int layer_start, int layer_end, int is_first, int is_last, const char *backend,
                   exo_shard **out)
{
    if (!path || !out) return exo__error_set(EXO_EINVAL, "exo_shard_load: path and out are required");
    *out = NULL;
    exo_backend *be = exo__backend_find(backend);
    if (!be)
        return exo__error_set(EXO_ENOTSUP, "backend '%s' is not in this build (it has: cpu)", backend ? backend : "");
    exo_shard *s = calloc(1, sizeof *s);
    if (!s) return exo__error_set(EXO_ENOMEM, "out of memory");
    s->backend = be;
    s->max_batch = SHARD_MAX_BATCH;
    exo__quants_init();
    int rc = exo__model_file_open(path, EXO_MODEL_OPEN_ALL, layer_start, layer_end, is_first, is_last, &s->file);
    if (rc) goto fail;

    const char *arch;
    size_t arch_len;
    if ((rc = exo__gguf_get_str(s->file, "general.architecture", &arch, &arch_len))) {
        rc = exo__error_set(EXO_EFORMAT, "%s: no general.architecture in metadata", path);
        goto fail;
    }
    if (arch_len >= sizeof s->arch_name) arch_len = sizeof s->arch_name - 1;
    memcpy(s->arch_name, arch, arch_len);
    s->arch_name[arch_len] = 0;
    s->arch = exo__arch_find(s->arch_name);
    if (!s->arch) {
        rc = exo__error_set(EXO_ENOTSUP, "%s: architecture '%s' is not supported (supported: %s)", path, s->arch_name,
                           exo__arch_names());
        goto fail;
    }
    if ((rc = read_hparams(s))) goto fail;

    int n_layer = s->hp.n_layer;
    if (layer_end < 0) layer_end = n_layer;
    if (layer_start < 0 || layer_start >= layer_end || layer_end > n_layer) {
        rc = exo__error_set(EXO_ERANGE, "layer range [%d, %d) is not inside the model's %d layers", layer_start,
                           layer_end, n_layer);
        goto fail;
    }
    s->layer_start = layer_start;
    s->layer_end = layer_end;
    s->is_first = is_first < 0 ? layer_start == 0 : is_first != 0;
    s->is_last = is_last < 0 ? layer_end == n_layer : is_last != 0;
    if (s->is_first && layer_start != 0) {
        rc = exo__error_set(EXO_EINVAL, "a first shard must start at layer 0, not %d", layer_start);
        goto fail;
    }
    if ((rc = s->arch->read_hparams(s))) goto fail;
    if ((rc = kv_pool_init(s))) goto fail;
    if ((rc = s->arch->bind(s))) goto fail;
    if ((rc = alloc_run_state(s))) goto fail;
    *out = s;
    return EXO_OK;
fail:
    exo_shard_free(s);
    return rc;
}

int exo_shard_get_info(const exo_shard *s, exo_shard_info *out)
{
    if (!s || !out) return exo__error_set(EXO_EINVAL, "exo_shard_get_info: NULL argument");
    memset(out, 0, sizeof *out);
    snprintf(out->arch, sizeof out->arch, "%s", s->arch_name);
    out->n_layer = s->hp.n_layer;
    out->layer_start = s->layer_start;
    out->layer_end = s->layer_end;
    out->is_first = s->is_first;
    out->is_last = s->is_last;
    out->n_embd = s->hp.n_embd;
    out->n_vocab = s->hp.n_vocab;
    out->n_head = s->hp.n_head;
    out->n_head_kv = s->hp.n_head_kv;
    out->head_dim = s->hp.head_dim;
    out->n_ff = s->hp.n_ff;
    out->n_ctx_train = s->hp.n_ctx_train;
    out->max_batch = s->max_batch;
    out->weight_bytes = s->weight_bytes;
    out->packed_bytes = (int64_t)s->packed_bytes;
    return EXO_OK;
}

/* ---- the KV pool ---------------------------------------------------------- */

/* Called once the shard's hyper-parameters and layer range are known. */
static int kv_pool_init(exo_shard *s)
{
    exo_kv_pool *p = calloc(1, sizeof *p);
    if (!p || pthread_mutex_init(&p->lock, NULL)) {
        free(p);
        return exo__error_set(EXO_ENOMEM, "out of memory for the KV pool");
    }
    p->backend = s->backend;
    p->refs = 1;
    p->run_halves = (size_t)EXO_KV_BLOCK * s->hp.n_head_kv * s->hp.head_dim;
    p->n_head_kv = s->hp.n_head_kv;
    p->head_dim = s->hp.head_dim;
    p->n_layers = s->layer_end - s->layer_start;
    s->kv = p;
    return EXO_OK;
}

/* Drops one reference (the shard's or a sequence's); the last frees it. */
static void kv_pool_unref(exo_kv_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    int refs = --p->refs;
    pthread_mutex_unlock(&p->lock);
    if (refs) return;
    for (int c = 0; c < p->n_chunks; c++)
        p->backend->release(p->backend, p->chunks[c].mem, p->chunks[c].bytes, EXO_BUFFER_KV_CACHE);
    free(p->chunks);
    free(p->holders);
    free(p->chunk_of);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Keys (v = 0) or values (v = 1) of layer il (of the shard) in block b. */
static uint16_t *kv_block_rows(const exo_kv_pool *p, int b, int il, int v)
{
    const exo_kv_chunk *c = &p->chunks[p->chunk_of[b]];
    size_t run = (size_t)((v * p->n_layers + il) * c->n + (b - c->first));
    return c->mem + run * p->run_halves;
}

/* Adds a chunk of n blocks. With the lock held. */
static int kv_pool_grow(exo_kv_pool *p, int n)
{
    size_t bytes = sizeof(uint16_t) * p->run_halves * 2 * (size_t)p->n_layers * (size_t)n;
    uint16_t *mem = p->backend->alloc(p->backend, bytes, EXO_BUFFER_KV_CACHE);
    if (!mem)
        return exo__error_set(EXO_ENOMEM, "out of memory for %d KV blocks of %d positions (%zu MiB)", n, EXO_KV_BLOCK,
                             bytes >> 20);
    exo_kv_chunk *chunks = realloc(p->chunks, sizeof *chunks * (size_t)(p->n_chunks + 1));
    if (chunks) p->chunks = chunks;
    int *holders = chunks ? realloc(p->holders, sizeof(int) * (size_t)(p->n_blocks + n)) : NULL;
    if (holders) p->holders = holders;
    int *chunk_of = holders ? realloc(p->chunk_of, sizeof(int) * (size_t)(p->n_blocks + n)) : NULL;
    if (chunk_of) p->chunk_of = chunk_of;
    if (!chunk_of) {
        p->backend->release(p->backend, mem, bytes, EXO_BUFFER_KV_CACHE);
        return exo__error_set(EXO_ENOMEM, "out of memory");
    }
    p->chunks[p->n_chunks] = (exo_kv_chunk){.mem = mem, .bytes = bytes, .first = p->n_blocks, .n = n};
    for (int b = p->n_blocks; b < p->n_blocks + n; b++) {
        p->holders[b] = 0;
        p->chunk_of[b] = p->n_chunks;
    }
    p->n_chunks++;
    p->n_blocks += n;
    p->n_free += n;
    return EXO_OK;
}

/* A free block: the lowest-numbered one (attention reads a sequence block
 * by block, so where its blocks lie changes neither its results nor, much,
 * its speed; the lowest keep the pool's resident pages few). With the lock
 * held; n_free > 0. */
static int kv_pool_pick(const exo_kv_pool *p)
{
    int b = 0;
    while (p->holders[b]) b++;
    return b;
}

/* Makes pool block b q's block i (its table and every layer's K and V
 * pointers). With the lock held. */
static void kv_seq_set_block(exo_seq *q, int i, int b)
{
    exo_kv_pool *p = q->pool;
    q->block[i] = b;
    for (int il = 0; il < p->n_layers; il++) {
        q->k_blocks[(size_t)il * q->max_blocks + i] = kv_block_rows(p, b, il, 0);
        q->v_blocks[(size_t)il * q->max_blocks + i] = kv_block_rows(p, b, il, 1);
    }
}

/* Takes the free block kv_pool_pick gives, for one holder. With the lock
 * held; n_free > 0. */
static int kv_pool_take(exo_kv_pool *p)
{
    int b = kv_pool_pick(p);
    p->holders[b] = 1;
    p->n_free--;
    return b;
}

/* One holder lets go of block b; the last one gives it back. With the lock held. */
static void kv_pool_release(exo_kv_pool *p, int b)
{
    if (--p->holders[b] == 0) p->n_free++;
}

/* Copies the first n_rows positions of block src into block dst, every
 * layer, K and V, each KV head's rows (a block is [head][EXO_KV_BLOCK][dim]
 * per layer). Only those rows are read: a pass may be writing the rows
 * after them in src at the same time (a share from a running sequence).
 * The pool is host memory (the CPU backend's buffers), so a plain copy. */
static void kv_copy_rows(const exo_kv_pool *p, int dst, int src, int n_rows)
{
    size_t head = (size_t)EXO_KV_BLOCK * p->head_dim, bytes = (size_t)n_rows * p->head_dim * sizeof(uint16_t);
    for (int v = 0; v < 2; v++)
        for (int il = 0; il < p->n_layers; il++) {
            uint16_t *d = kv_block_rows(p, dst, il, v);
            const uint16_t *s = kv_block_rows(p, src, il, v);
            for (int h = 0; h < p->n_head_kv; h++) memcpy(d + h * head, s + h * head, bytes);
        }
}

/* Makes sure q has blocks for positions [0, n_pos). A pool with a budget
 * that has no free block fails with EXO_EBUSY (q keeps what it took). */
static int kv_seq_grow(exo_seq *q, int n_pos)
{
    exo_kv_pool *p = q->pool;
    int need = (n_pos + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK, rc = EXO_OK;
    if (need <= q->n_blocks) return EXO_OK;
    pthread_mutex_lock(&p->lock);
    while (q->n_blocks < need) {
        if (p->n_free == 0) {
            rc = exo__error_set(EXO_EBUSY,
                                "KV pool exhausted: position %d needs a block and all %d blocks (%d positions) are "
                                "taken",
                                q->n_blocks * EXO_KV_BLOCK, p->n_blocks, p->n_blocks * EXO_KV_BLOCK);
            break;
        }
        kv_seq_set_block(q, q->n_blocks, kv_pool_take(p));
        q->n_blocks++;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* Lets go of q's blocks past its position. With the lock held. */
static void kv_seq_trim_locked(exo_seq *q)
{
    int keep = (q->pos + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK;
    for (; q->n_blocks > keep; q->n_blocks--) kv_pool_release(q->pool, q->block[q->n_blocks - 1]);
}

/* Moves q back to position pos (no later than where it is) and lets go of
 * the blocks past it: a failed pass's undo. Never inside a shared block:
 * a sequence's shared blocks all lie below its position. */
static void kv_seq_rewind(exo_seq *q, int pos)
{
    pthread_mutex_lock(&q->pool->lock);
    q->pos = pos;
    kv_seq_trim_locked(q);
    pthread_mutex_unlock(&q->pool->lock);
}

int exo_shard_set_kv_tokens(exo_shard *s, int64_t n_tokens)
{
    if (!s) return exo__error_set(EXO_EINVAL, "exo_shard_set_kv_tokens: NULL shard");
    if (n_tokens < 1 || n_tokens > (int64_t)SEQ_MAX_CTX * 1024)
        return exo__error_set(EXO_ERANGE, "a KV pool of %lld positions (1 to %d)", (long long)n_tokens,
                             SEQ_MAX_CTX * 1024);
    exo_kv_pool *p = s->kv;
    pthread_mutex_lock(&p->lock);
    int rc = EXO_OK;
    if (p->n_seqs || p->n_blocks) {
        rc = exo__error_set(EXO_ESTATE, "the KV pool is sized once, before the shard's first sequence");
    } else {
        int blocks = (int)((n_tokens + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK);
        rc = kv_pool_grow(p, blocks);
        if (rc == EXO_OK) p->budget = blocks;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int exo_shard_kv_info(exo_shard *s, exo_kv_info *out)
{
    if (!s || !out) return exo__error_set(EXO_EINVAL, "exo_shard_kv_info: NULL argument");
    exo_kv_pool *p = s->kv;
    pthread_mutex_lock(&p->lock);
    int shared = 0;
    for (int b = 0; b < p->n_blocks; b++) shared += p->holders[b] > 1;
    *out = (exo_kv_info){.block_len = EXO_KV_BLOCK, .budget = p->budget, .blocks = p->n_blocks, .free = p->n_free,
                         .reserved = p->reserved, .sequences = p->n_seqs,
                         .block_bytes = (int64_t)(sizeof(uint16_t) * p->run_halves * 2 * (size_t)p->n_layers),
                         .shared = shared};
    pthread_mutex_unlock(&p->lock);
    return EXO_OK;
}

/* ---- sequences ---------------------------------------------------------- */

static void seq_free_tables(exo_seq *q)
{
    free(q->block);
    free(q->k_blocks);
    free(q->v_blocks);
    free(q);
}

int exo_seq_new(exo_shard *s, int n_ctx, exo_seq **out)
{
    if (!s || !out) return exo__error_set(EXO_EINVAL, "exo_seq_new: NULL argument");
    *out = NULL;
    if (n_ctx <= 0) n_ctx = s->hp.n_ctx_train < SEQ_MAX_CTX ? s->hp.n_ctx_train : SEQ_MAX_CTX;
    if (n_ctx > SEQ_MAX_CTX) return exo__error_set(EXO_ERANGE, "context of %d positions is over %d", n_ctx, SEQ_MAX_CTX);
    exo_kv_pool *p = s->kv;
    exo_seq *q = calloc(1, sizeof *q);
    if (!q) return exo__error_set(EXO_ENOMEM, "out of memory");
    q->shard = s;
    q->n_ctx = n_ctx;
    q->max_blocks = (n_ctx + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK;
    size_t tables = (size_t)q->max_blocks * (size_t)p->n_layers;
    q->block = malloc(sizeof *q->block * (size_t)q->max_blocks);
    q->k_blocks = malloc(sizeof *q->k_blocks * tables);
    q->v_blocks = malloc(sizeof *q->v_blocks * tables);
    if (!q->block || !q->k_blocks || !q->v_blocks) {
        seq_free_tables(q);
        return exo__error_set(EXO_ENOMEM, "out of memory for the block table of %d positions", n_ctx);
    }
    /* Without a budget the sequence reserves its whole context, as its own
     * cache did before the pool: what it may take is there when it needs it. */
    int rc = EXO_OK;
    pthread_mutex_lock(&p->lock);
    if (!p->budget) {
        int short_by = p->reserved + q->max_blocks - p->n_blocks;
        if (short_by > 0) rc = kv_pool_grow(p, short_by);
        if (rc == EXO_OK) {
            q->reserved = q->max_blocks;
            p->reserved += q->reserved;
        }
    }
    if (rc == EXO_OK) {
        p->n_seqs++;
        p->refs++;
        q->pool = p;
    }
    pthread_mutex_unlock(&p->lock);
    if (rc) {
        size_t mib = (size_t)q->max_blocks * p->run_halves * 2 * sizeof(uint16_t) * (size_t)p->n_layers >> 20;
        seq_free_tables(q);
        return exo__error_set(rc, "out of memory for a KV cache of %d positions (%zu MiB)", n_ctx, mib);
    }
    /* The backend's scratch for attention over n_ctx positions: a context
     * too large for memory fails here and changes nothing for other
     * sequences. */
    rc = s->backend->reserve(s->backend, s->max_batch, s->hp.n_embd, n_ctx);
    if (rc) {
        exo_seq_free(q);
        return rc;
    }
    *out = q;
    return EXO_OK;
}

void exo_seq_free(exo_seq *q)
{
    if (!q) return;
    exo_kv_pool *p = q->pool;
    kv_seq_rewind(q, 0);
    pthread_mutex_lock(&p->lock);
    p->reserved -= q->reserved;
    p->n_seqs--;
    pthread_mutex_unlock(&p->lock);
    seq_free_tables(q);
    kv_pool_unref(p);
}

int exo_seq_pos(const exo_seq *q)
{
    if (!q) return 0;
    pthread_mutex_lock(&q->pool->lock);
    int pos = q->pos;
    pthread_mutex_unlock(&q->pool->lock);
    return pos;
}

int exo_seq_n_ctx(const exo_seq *q)
{
    return q ? q->n_ctx : 0;
}

/* Whether truncating q to pos lands inside a block other sequences hold too
 * (which must then be copied first). With the lock held. */
static bool kv_truncate_copies(const exo_seq *q, int pos)
{
    int b = pos / EXO_KV_BLOCK;
    return pos % EXO_KV_BLOCK && b < q->n_blocks && q->pool->holders[q->block[b]] > 1;
}

/* Copy on write: a shared block is never written, so a sequence moving back
 * into one (its next pass writes there) first takes a private copy of the
 * positions it keeps. Running on the caller's thread is safe beside a pass
 * of another holder: that pass only reads the shared block, and the copy
 * reads only positions below pos. */
int exo_seq_truncate(exo_seq *q, int pos)
{
    if (!q) return exo__error_set(EXO_EINVAL, "exo_seq_truncate: NULL sequence");
    exo_kv_pool *p = q->pool;
    int rc = EXO_OK;
    pthread_mutex_lock(&p->lock);
    if (pos < 0 || pos > q->pos) {
        rc = exo__error_set(EXO_ERANGE, "cannot truncate a sequence of %d positions to %d", q->pos, pos);
    } else if (kv_truncate_copies(q, pos)) {
        if (p->n_free == 0) {
            rc = exo__error_set(EXO_EBUSY,
                                "KV pool exhausted: truncating to position %d copies a shared block and all %d "
                                "blocks (%d positions) are taken",
                                pos, p->n_blocks, p->n_blocks * EXO_KV_BLOCK);
        } else {
            int i = pos / EXO_KV_BLOCK, shared = q->block[i], b = kv_pool_take(p);
            kv_copy_rows(p, b, shared, pos % EXO_KV_BLOCK);
            kv_pool_release(p, shared);
            kv_seq_set_block(q, i, b);
        }
    }
    if (rc == EXO_OK) {
        q->pos = pos;
        kv_seq_trim_locked(q);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* Race-free against a pass in flight on src (the batcher runs other
 * requests' passes while the loop thread starts a new one from src's
 * prefix), with the pool's lock rather than the forward lock, so the loop
 * never waits for a pass: block tables, holder counts and positions change
 * only under that lock; the blocks shared lie wholly below src's position,
 * which no pass writes; and the partial last block's copy reads only
 * positions below n, while a pass on src writes at src's position or
 * after. The copy (at most one block: 2 MiB at a 1B shape) runs under the
 * lock, which a pass takes only briefly (a new block, its position). */
int exo_seq_share_prefix(exo_seq *dst, exo_seq *src, int n)
{
    if (!dst || !src) return exo__error_set(EXO_EINVAL, "exo_seq_share_prefix: NULL sequence");
    if (dst == src) return exo__error_set(EXO_EINVAL, "a sequence cannot share its own prefix");
    if (dst->pool != src->pool) return exo__error_set(EXO_EINVAL, "the two sequences belong to different shards");
    exo_kv_pool *p = dst->pool;
    int full = n / EXO_KV_BLOCK, part = n % EXO_KV_BLOCK, rc = EXO_OK;
    pthread_mutex_lock(&p->lock);
    if (dst->pos != 0) {
        rc = exo__error_set(EXO_ESTATE, "a sequence takes a shared prefix only when empty (it holds %d positions)",
                            dst->pos);
    } else if (n < 0 || n > src->pos || n > dst->n_ctx) {
        rc = exo__error_set(EXO_ERANGE, "cannot share %d positions of a sequence of %d into a context of %d", n,
                            src->pos, dst->n_ctx);
    } else if (part && p->n_free == 0) {
        rc = exo__error_set(EXO_EBUSY,
                            "KV pool exhausted: sharing %d positions copies the last %d into a block, and all %d "
                            "blocks (%d positions) are taken",
                            n, part, p->n_blocks, p->n_blocks * EXO_KV_BLOCK);
    } else {
        for (int i = 0; i < full; i++) {
            p->holders[src->block[i]]++;
            kv_seq_set_block(dst, i, src->block[i]);
        }
        if (part) {
            int b = kv_pool_take(p);
            kv_copy_rows(p, b, src->block[full], part);
            kv_seq_set_block(dst, full, b);
        }
        dst->n_blocks = full + (part > 0);
        dst->pos = n;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int exo_seq_kv_need(const exo_seq *q, int keep, int n_pos, int *blocks)
{
    if (!q || !blocks) return exo__error_set(EXO_EINVAL, "exo_seq_kv_need: NULL argument");
    exo_kv_pool *p = q->pool;
    int rc = EXO_OK;
    pthread_mutex_lock(&p->lock);
    if (keep < 0 || keep > q->pos || n_pos < keep || n_pos > q->n_ctx) {
        rc = exo__error_set(EXO_ERANGE, "a sequence of %d positions (context %d) kept to %d and grown to %d", q->pos,
                            q->n_ctx, keep, n_pos);
    } else {
        int kept = (keep + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK, need = (n_pos + EXO_KV_BLOCK - 1) / EXO_KV_BLOCK;
        int n = need - kept + kv_truncate_copies(q, keep);
        for (int i = kept; i < q->n_blocks; i++) n -= p->holders[q->block[i]] == 1;
        *blocks = n;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* ---- forward ------------------------------------------------------------ */

/* Cuts a batch into its sequences' runs (s->runs), checking what the
 * attention and the caches rely on: every sequence belongs to this shard,
 * its rows are together at consecutive positions starting where its cache
 * ends, and they fit in it. */
static int batch_runs(exo_shard *s, const exo_batch *b)
{
    if (b->n_rows < 1 || b->n_rows > s->max_batch)
        return exo__error_set(EXO_EINVAL, "a batch of %d rows (1 to %d)", b->n_rows, s->max_batch);
    if (!b->seq || !b->pos || (s->is_first ? !b->tokens : !b->hidden))
        return exo__error_set(EXO_EINVAL, "a %s shard's batch takes %s, sequences and positions",
                             s->is_first ? "first" : "middle", s->is_first ? "token ids" : "hidden states");
    if (b->logits_from < 0 || b->logits_from > b->n_rows)
        return exo__error_set(EXO_EINVAL, "logits from row %d of %d", b->logits_from, b->n_rows);
    s->n_runs = 0;
    for (int r = 0; r < b->n_rows; r++) {
        exo_seq *q = b->seq[r];
        if (!q || q->shard != s) return exo__error_set(EXO_EINVAL, "row %d's sequence belongs to another shard", r);
        exo_batch_run *run = s->n_runs ? &s->runs[s->n_runs - 1] : NULL;
        if (run && run->seq == q) {
            if (b->pos[r] != run->pos0 + run->n)
                return exo__error_set(EXO_EINVAL, "row %d is at position %d, after %d", r, b->pos[r],
                                     run->pos0 + run->n - 1);
            run->n++;
        } else {
            for (int i = 0; i < s->n_runs; i++)
                if (s->runs[i].seq == q)
                    return exo__error_set(EXO_EINVAL, "row %d: a sequence's rows must be together in a batch", r);
            if (b->pos[r] != q->pos)
                return exo__error_set(EXO_EINVAL, "row %d is at position %d; its sequence continues at %d", r,
                                     b->pos[r], q->pos);
            s->runs[s->n_runs++] = (exo_batch_run){.seq = q, .row0 = r, .n = 1, .pos0 = b->pos[r]};
        }
        if (b->pos[r] >= q->n_ctx)
            return exo__error_set(EXO_ERANGE, "context full: position %d does not fit in %d", b->pos[r], q->n_ctx);
    }
    return EXO_OK;
}

/* With forward_lock held. */
static int forward_batch_locked(exo_shard *s, const exo_batch *b, float *out)
{
    int rc = batch_runs(s, b);
    /* Every row's block first: a pool with none left fails the pass before
     * anything is computed. */
    for (int i = 0; i < s->n_runs && rc == EXO_OK; i++) rc = kv_seq_grow(s->runs[i].seq, s->runs[i].pos0 + s->runs[i].n);
    if (rc == EXO_OK) rc = s->arch->forward(s, b, out);
    /* Positions move under the pool's lock: a share from one of these
     * sequences may be reading them on the loop thread. */
    pthread_mutex_lock(&s->kv->lock);
    for (int i = 0; i < s->n_runs; i++) {
        if (rc == EXO_OK) s->runs[i].seq->pos += s->runs[i].n;
        else kv_seq_trim_locked(s->runs[i].seq);
    }
    pthread_mutex_unlock(&s->kv->lock);
    return rc;
}

int exo__model_forward_batch(exo_shard *s, const exo_batch *b, float *out)
{
    if (!s || !b || !out) return exo__error_set(EXO_EINVAL, "exo__model_forward_batch: NULL argument");
    pthread_mutex_lock(&forward_lock);
    int rc = s->backend->prepare(s->backend);
    if (rc == EXO_OK) rc = forward_batch_locked(s, b, out);
    pthread_mutex_unlock(&forward_lock);
    return rc;
}

int exo_shard_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                      int all_logits, float *out)
{
    if (!s || !q || !out) return exo__error_set(EXO_EINVAL, "exo_shard_forward: NULL argument");
    if (q->shard != s) return exo__error_set(EXO_EINVAL, "sequence belongs to another shard");
    if (s->is_first ? !tokens : !hidden)
        return exo__error_set(EXO_EINVAL, "a %s shard takes %s", s->is_first ? "first" : "middle",
                             s->is_first ? "token ids" : "hidden states");
    if (n_tokens < 1) return exo__error_set(EXO_EINVAL, "forward of %d tokens", n_tokens);
    if (n_tokens > q->n_ctx - q->pos)
        return exo__error_set(EXO_ERANGE, "context full: %d positions used, %d more do not fit in %d", q->pos,
                             n_tokens, q->n_ctx);
    const int n_embd = s->hp.n_embd;
    const int out_width = s->is_last ? s->hp.n_vocab : n_embd;
    pthread_mutex_lock(&forward_lock);
    int rc = s->backend->prepare(s->backend);
    const int start = q->pos;
    /* One sequence's positions, max_batch rows at a time. */
    for (int done = 0; done < n_tokens && rc == EXO_OK;) {
        int n = n_tokens - done < s->max_batch ? n_tokens - done : s->max_batch;
        for (int i = 0; i < n; i++) {
            s->batch_seq[i] = q;
            s->batch_pos[i] = q->pos + i;
        }
        exo_batch b = {.n_rows = n, .tokens = tokens ? tokens + done : NULL,
                       .hidden = hidden ? hidden + (size_t)done * n_embd : NULL, .seq = s->batch_seq,
                       .pos = s->batch_pos};
        float *dst;
        if (!s->is_last) {
            dst = out + (size_t)done * n_embd;
        } else if (all_logits) {
            dst = out + (size_t)done * out_width;
        } else {
            /* Only the very last position needs logits. */
            b.logits_from = done + n == n_tokens ? n - 1 : n;
            dst = out;
        }
        rc = forward_batch_locked(s, &b, dst);
        done += n;
    }
    /* All or nothing: a later chunk's failure (a bad token id) takes back
     * the chunks before it, so the caller's error leaves the cache as it was. */
    if (rc) kv_seq_rewind(q, start);
    pthread_mutex_unlock(&forward_lock);
    return rc;
}

/* ---- several sequences in one pass (continuous batching) ---------------- */

/* Logit rows one internal pass computes at most: the scratch they land in is
 * this many vocabulary-wide rows (16 MiB for a 128k vocabulary), and decode
 * steps beyond it take a second pass (results do not depend on the split). */
#define MULTI_MAX_LOGIT_ROWS 64

/* exo_shard_forward_batch's scratch, made once per shard on first use so a
 * pass allocates nothing: a pass's input rows, its output rows, and each
 * sequence's progress. */
struct exo_multi_scratch {
    int32_t *tokens;   /* (max_batch) */
    float *hidden;     /* (max_batch, n_embd), middle shards */
    float *out;        /* (MULTI_MAX_LOGIT_ROWS, n_vocab) last shard, else (max_batch, n_embd) */
    int *done;         /* (max_batch) rows of each sequence computed so far */
    int *start;        /* (max_batch) each sequence's position before the call */
    int *take;         /* (max_batch) rows of each sequence in the current pass */
    int *kind;         /* (max_batch) enum multi_kind of that chunk */
    int *row0;         /* (max_batch) its first row in the pass */
};

/* What a sequence's chunk of a pass wants back from a last shard: nothing,
 * the logits of a suffix of its rows (at most one such chunk per pass: it
 * sits where the logit rows begin), or the logits of every row. */
enum multi_kind { MULTI_NONE, MULTI_SUFFIX, MULTI_ALL };

static void multi_free(exo_multi_scratch *m)
{
    if (!m) return;
    free(m->tokens);
    free(m->hidden);
    free(m->out);
    free(m->done);
    free(m->start);
    free(m->take);
    free(m->kind);
    free(m->row0);
    free(m);
}

static int multi_scratch(exo_shard *s, exo_multi_scratch **out)
{
    if (s->multi) {
        *out = s->multi;
        return EXO_OK;
    }
    size_t b = (size_t)s->max_batch, embd = (size_t)s->hp.n_embd;
    size_t out_floats = s->is_last ? (size_t)MULTI_MAX_LOGIT_ROWS * s->hp.n_vocab : b * embd;
    exo_multi_scratch *m = calloc(1, sizeof *m);
    if (m) {
        m->tokens = malloc(b * sizeof *m->tokens);
        m->hidden = s->is_first ? NULL : malloc(b * embd * sizeof *m->hidden);
        m->out = malloc(out_floats * sizeof *m->out);
        m->done = malloc(b * sizeof(int));
        m->start = malloc(b * sizeof(int));
        m->take = malloc(b * sizeof(int));
        m->kind = malloc(b * sizeof(int));
        m->row0 = malloc(b * sizeof(int));
    }
    if (!m || !m->tokens || (!s->is_first && !m->hidden) || !m->out || !m->done || !m->start || !m->take || !m->kind ||
        !m->row0) {
        multi_free(m);
        return exo__error_set(EXO_ENOMEM, "out of memory for a batch's scratch (%zu MiB)",
                             out_floats * sizeof(float) >> 20);
    }
    s->multi = m;
    *out = m;
    return EXO_OK;
}

/* Checks a multi-sequence call before anything runs: each sequence belongs
 * to the shard and appears once, its rows fit its cache, it has its input and
 * output, and wants logits of at most its rows. */
static int multi_check(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                       const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out)
{
    if (!s || !seqs || !n_tokens || !out || (s->is_first ? !tokens : !hidden) || (s->is_last && !n_logits))
        return exo__error_set(EXO_EINVAL, "exo_shard_forward_batch: NULL argument");
    if (n_seqs < 1 || n_seqs > s->max_batch)
        return exo__error_set(EXO_EINVAL, "a batch of %d sequences (1 to %d)", n_seqs, s->max_batch);
    for (int i = 0; i < n_seqs; i++) {
        exo_seq *q = seqs[i];
        if (!q || q->shard != s) return exo__error_set(EXO_EINVAL, "sequence %d belongs to another shard", i);
        for (int j = 0; j < i; j++)
            if (seqs[j] == q) return exo__error_set(EXO_EINVAL, "sequence %d appears twice (also as %d)", i, j);
        if (n_tokens[i] < 1) return exo__error_set(EXO_EINVAL, "sequence %d: forward of %d tokens", i, n_tokens[i]);
        if (n_tokens[i] > q->n_ctx - q->pos)
            return exo__error_set(EXO_ERANGE, "sequence %d: context full: %d positions used, %d more do not fit in %d",
                                 i, q->pos, n_tokens[i], q->n_ctx);
        if (s->is_first ? !tokens[i] : !hidden[i])
            return exo__error_set(EXO_EINVAL, "sequence %d has no %s", i, s->is_first ? "token ids" : "hidden states");
        if (s->is_last && (n_logits[i] < 0 || n_logits[i] > n_tokens[i]))
            return exo__error_set(EXO_EINVAL, "sequence %d: logits of %d rows of %d", i, n_logits[i], n_tokens[i]);
        if (!out[i] && (!s->is_last || n_logits[i] > 0))
            return exo__error_set(EXO_EINVAL, "sequence %d has no output buffer", i);
    }
    return EXO_OK;
}

/* Chooses the next internal pass: how many rows of each sequence (m->take)
 * and what its chunk wants back (m->kind), within max_batch rows and
 * MULTI_MAX_LOGIT_ROWS logit rows. Sequences are served in the caller's order
 * (the batcher puts decode steps first). Always takes at least one row while
 * any is left. Returns the pass's row count. */
static int multi_plan(const exo_shard *s, exo_multi_scratch *m, int n_seqs, const int *n_tokens, const int *n_logits)
{
    int rows = 0, logit_rows = 0, suffix_taken = 0;
    for (int i = 0; i < n_seqs; i++) {
        m->take[i] = 0;
        m->kind[i] = MULTI_NONE;
        int left = n_tokens[i] - m->done[i];
        if (left == 0 || rows == s->max_batch) continue;
        int take = left < s->max_batch - rows ? left : s->max_batch - rows;
        if (s->is_last) {
            int first_wanted = n_tokens[i] - n_logits[i]; /* the sequence's rows from here on want logits */
            int unwanted = first_wanted - m->done[i];     /* rows of the chunk before them */
            if (unwanted < 0) unwanted = 0;
            if (unwanted < take) {
                int room = MULTI_MAX_LOGIT_ROWS - logit_rows;
                int wanted = take - unwanted < room ? take - unwanted : room;
                if (unwanted > 0 && suffix_taken) wanted = 0; /* one suffix chunk per pass: the rest next pass */
                take = unwanted + wanted;
                if (wanted > 0) {
                    m->kind[i] = unwanted > 0 ? MULTI_SUFFIX : MULTI_ALL;
                    suffix_taken |= unwanted > 0;
                    logit_rows += wanted;
                }
            }
        }
        if (take == 0) continue;
        m->take[i] = take;
        rows += take;
    }
    return rows;
}

/* Lays the planned chunks out as one batch (chunks wanting nothing, then the
 * suffix chunk, then chunks wanting every row's logits, so the logit rows are
 * the batch's last), runs it, and copies each sequence's output rows to its
 * buffer. With forward_lock held. */
static int multi_pass(exo_shard *s, exo_multi_scratch *m, int n_seqs, exo_seq *const *seqs,
                      const int32_t *const *tokens, const float *const *hidden, const int *n_tokens,
                      const int *n_logits, float *const *out, int n_rows)
{
    const int n_embd = s->hp.n_embd;
    int row = 0, logits_from = n_rows;
    for (int kind = MULTI_NONE; kind <= MULTI_ALL; kind++) {
        for (int i = 0; i < n_seqs; i++) {
            if (m->take[i] == 0 || m->kind[i] != kind) continue;
            m->row0[i] = row;
            if (kind == MULTI_SUFFIX) logits_from = row + (n_tokens[i] - n_logits[i] - m->done[i]);
            else if (kind == MULTI_ALL && logits_from == n_rows) logits_from = row;
            for (int r = 0; r < m->take[i]; r++) {
                s->batch_seq[row + r] = seqs[i];
                s->batch_pos[row + r] = seqs[i]->pos + r;
            }
            if (s->is_first)
                memcpy(m->tokens + row, tokens[i] + m->done[i], (size_t)m->take[i] * sizeof *m->tokens);
            else
                memcpy(m->hidden + (size_t)row * n_embd, hidden[i] + (size_t)m->done[i] * n_embd,
                       (size_t)m->take[i] * n_embd * sizeof(float));
            row += m->take[i];
        }
    }
    exo_batch b = {.n_rows = n_rows, .tokens = s->is_first ? m->tokens : NULL,
                   .hidden = s->is_first ? NULL : m->hidden, .seq = s->batch_seq, .pos = s->batch_pos,
                   .logits_from = s->is_last ? logits_from : 0};
    int rc = forward_batch_locked(s, &b, m->out);
    if (rc) return rc;
    for (int i = 0; i < n_seqs; i++) {
        if (m->take[i] == 0) continue;
        if (!s->is_last) {
            memcpy(out[i] + (size_t)m->done[i] * n_embd, m->out + (size_t)m->row0[i] * n_embd,
                   (size_t)m->take[i] * n_embd * sizeof(float));
        } else if (m->kind[i] != MULTI_NONE) {
            const size_t n_vocab = (size_t)s->hp.n_vocab;
            int first_wanted = n_tokens[i] - n_logits[i];
            int from = m->done[i] > first_wanted ? m->done[i] : first_wanted; /* the chunk's first wanted row */
            int n = m->done[i] + m->take[i] - from;
            int batch_row = m->row0[i] + (from - m->done[i]);
            memcpy(out[i] + (size_t)(from - first_wanted) * n_vocab, m->out + (size_t)(batch_row - logits_from) * n_vocab,
                   (size_t)n * n_vocab * sizeof(float));
        }
        m->done[i] += m->take[i];
    }
    return EXO_OK;
}

int exo_shard_forward_batch(exo_shard *s, int n_seqs, exo_seq *const *seqs, const int32_t *const *tokens,
                            const float *const *hidden, const int *n_tokens, const int *n_logits, float *const *out)
{
    int rc = multi_check(s, n_seqs, seqs, tokens, hidden, n_tokens, n_logits, out);
    if (rc) return rc;
    pthread_mutex_lock(&forward_lock);
    exo_multi_scratch *m = NULL;
    rc = multi_scratch(s, &m);
    if (rc == EXO_OK) rc = s->backend->prepare(s->backend);
    if (rc == EXO_OK) {
        for (int i = 0; i < n_seqs; i++) {
            m->done[i] = 0;
            m->start[i] = seqs[i]->pos;
        }
        for (;;) {
            int n_rows = multi_plan(s, m, n_seqs, n_tokens, n_logits);
            if (n_rows == 0) break;
            rc = multi_pass(s, m, n_seqs, seqs, tokens, hidden, n_tokens, n_logits, out, n_rows);
            if (rc) break;
        }
        /* All or nothing, as exo_shard_forward: a failure leaves every cache
         * where it was. */
        if (rc)
            for (int i = 0; i < n_seqs; i++) kv_seq_rewind(seqs[i], m->start[i]);
    }
    pthread_mutex_unlock(&forward_lock);
    return rc;
}
