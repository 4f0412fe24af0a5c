/* llama.c: the Llama architecture (Llama 2/3/3.x, Mistral, SmolLM).
 *
 * Pre-norm transformer: per layer, x += Wo · attention(rope(Wq·rmsnorm(x)),
 * rope(Wk·rmsnorm(x)), Wv·rmsnorm(x)) with grouped-query attention, then
 * x += Wdown · (silu(Wgate·rmsnorm(x)) * Wup·rmsnorm(x)). The rope rotates
 * adjacent pairs (GGUF converters permute Llama's Q and K for that), with
 * Llama 3's per-frequency factors (rope_freqs.weight) or linear scaling when
 * the file has them. Mistral files use this architecture; a sliding window
 * is applied to every layer when the metadata declares one. */
#include <stdlib.h>

#include "../error.h"
#include "../model.h"

typedef struct llama_model {
    int window;                  /* attention.sliding_window, 0 = none */
    exo_decoder_layer layers[];  /* layer_end - layer_start */
} llama_model;

static int llama_read_hparams(exo_shard *s)
{
    float freq_base, linear_scale;
    int rc, window;
    if ((rc = exo_model_meta_float(s, "rope.freq_base", &freq_base, 10000.0f))) return rc;
    if ((rc = exo_model_rope_scaling(s, &linear_scale))) return rc;
    if ((rc = exo_model_add_rope(s, freq_base, linear_scale, EXO_ROPE_NORM, "rope_freqs.weight")) < 0) return rc;
    if ((rc = exo_model_meta_int(s, "attention.sliding_window", &window, false, 0))) return rc;
    llama_model *m = calloc(1, sizeof *m + sizeof m->layers[0] * (size_t)(s->layer_end - s->layer_start));
    if (!m) return exo_error_set(EXO_ENOMEM, "out of memory");
    m->window = window;
    s->arch_data = m;
    return EXO_OK;
}

static int llama_bind(exo_shard *s)
{
    llama_model *m = s->arch_data;
    int rc = exo_layers_bind(s, m->layers, 0, EXO_FFN_SILU);
    for (int i = 0; rc == EXO_OK && i < s->layer_end - s->layer_start; i++) m->layers[i].attn.window = m->window;
    return rc;
}

static int llama_forward(exo_shard *s, exo_seq *q, const int32_t *tokens, const float *hidden, int n_tokens,
                         int logits_from, float *out)
{
    const llama_model *m = s->arch_data;
    return exo_layers_forward(s, q, m->layers, tokens, hidden, n_tokens, logits_from, out);
}

const exo_arch exo_arch_llama = {"llama", llama_read_hparams, llama_bind, llama_forward};
