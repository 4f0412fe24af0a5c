/* gemma3.c: Gemma 3 (text).
 *
 * What sets it apart from Llama, each checked against llama.cpp's graph on
 * the real Gemma 3 270M file: embeddings are multiplied by sqrt(n_embd);
 * every query and key head is RMS-normalised before the rope (NEOX style);
 * both blocks normalise their output as well as their input (the norm
 * weights in GGUF already include Gemma's +1); the feed-forward gate is
 * GELU (tanh form); the head is tied to the embedding. Layers alternate
 * local and global attention: with a sliding window in the metadata, layer
 * il is local unless il % pattern == pattern - 1 (pattern 6 unless the file
 * says otherwise), and local layers see only the last `window` positions and
 * use their own rope base (rope.freq_base_swa, 10000 by default; the global
 * layers' linear scaling does not apply to them). Queries are scaled by
 * 1/sqrt(head_dim), except in the 27B model (62 layers), which uses
 * 1/sqrt(n_embd / n_head), as Google's reference code does. A final logit
 * soft-cap is applied when the metadata declares one. */
#include <math.h>
#include <stdlib.h>

#include "../error.h"
#include "../model.h"

typedef struct gemma3_model {
    int window;                 /* local layers' sliding window; 0: every layer is global */
    int pattern;                /* every pattern-th layer is global */
    float softcap;              /* final logits: softcap * tanh(logits / softcap); 0 = none */
    exo_decoder_layer layers[]; /* layer_end - layer_start */
} gemma3_model;

enum { ROPE_GLOBAL = 0, ROPE_LOCAL = 1 };

static int gemma3_read_hparams(exo_shard *s)
{
    const exo_hparams *hp = &s->hp;
    int rc, window, pattern;
    float base_local, softcap;
    if ((rc = exo__model_sliding_window(s, &window))) return rc;
    if ((rc = exo__model_meta_int(s, "attention.sliding_window_pattern", &pattern, false, 6))) return rc;
    if (window > 0 && pattern < 1)
        return exo__error_set(EXO_EFORMAT, "sliding window pattern %d must be at least 1", pattern);
    if ((rc = exo__model_meta_float(s, "rope.freq_base_swa", &base_local, 10000.0f))) return rc;
    if ((rc = exo__model_meta_float(s, "final_logit_softcapping", &softcap, 0.0f))) return rc;
    if (softcap < 0) return exo__error_set(EXO_EFORMAT, "final logit soft-cap %g is negative", softcap);
    if ((rc = exo__model_add_file_rope(s, EXO_ROPE_NEOX, NULL)) != ROPE_GLOBAL) return rc < 0 ? rc : EXO_EINVAL;
    if ((rc = exo__model_add_rope(s, base_local, 1.0f, EXO_ROPE_NEOX, NULL)) != ROPE_LOCAL) return rc < 0 ? rc : EXO_EINVAL;
    gemma3_model *m = calloc(1, sizeof *m + sizeof m->layers[0] * (size_t)(s->layer_end - s->layer_start));
    if (!m) return exo__error_set(EXO_ENOMEM, "out of memory");
    m->window = window;
    m->pattern = pattern;
    m->softcap = softcap;
    s->arch_data = m;
    s->embd_scale = sqrtf((float)hp->n_embd);
    return EXO_OK;
}

static int gemma3_bind(exo_shard *s)
{
    gemma3_model *m = s->arch_data;
    const exo_hparams *hp = &s->hp;
    int rc = exo__layers_bind(s, m->layers, EXO_BIND_QK_NORM | EXO_BIND_POST_NORMS, EXO_FFN_GELU_TANH);
    if (rc) return rc;
    const float scale = hp->n_layer == 62 ? 1.0f / sqrtf((float)(hp->n_embd / hp->n_head))
                                          : 1.0f / sqrtf((float)hp->head_dim);
    for (int i = 0; i < s->layer_end - s->layer_start; i++) {
        int il = s->layer_start + i;
        bool local = m->window > 0 && il % m->pattern < m->pattern - 1;
        m->layers[i].attn.rope = local ? ROPE_LOCAL : ROPE_GLOBAL;
        m->layers[i].attn.window = local ? m->window : 0;
        m->layers[i].attn.scale = scale;
    }
    return EXO_OK;
}

static int gemma3_forward(exo_shard *s, const exo_batch *b, float *out)
{
    const gemma3_model *m = s->arch_data;
    int rc = exo__layers_forward(s, b, m->layers, out);
    if (rc || !s->is_last || m->softcap == 0 || b->logits_from >= b->n_rows) return rc;
    size_t n = (size_t)(b->n_rows - b->logits_from) * s->hp.n_vocab;
    for (size_t i = 0; i < n; i++) out[i] = m->softcap * tanhf(out[i] / m->softcap);
    return EXO_OK;
}

const exo_arch exo__arch_gemma3 = {"gemma3", gemma3_read_hparams, gemma3_bind, gemma3_forward};
