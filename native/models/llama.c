/* llama.c: the Llama architecture (Llama 2/3/3.x, Mistral, SmolLM).
 *
 * Pre-norm transformer: per layer, x += Wo · attention(rope(Wq·rmsnorm(x)),
 * rope(Wk·rmsnorm(x)), Wv·rmsnorm(x)) with grouped-query attention, then
 * x += Wdown · (silu(Wgate·rmsnorm(x)) * Wup·rmsnorm(x)). The rope rotates
 * adjacent pairs (GGUF converters permute Llama's Q and K for that), with
 * Llama 3's per-frequency factors (rope_freqs.weight) or linear scaling when
 * the file has them. Mistral files use this architecture; a sliding window
 * is applied to every layer when the metadata declares one. */
#include "../error.h"
#include "../model.h"

static int llama_read_hparams(exo_shard *s)
{
    int rc = exo__model_add_file_rope(s, EXO_ROPE_NORM, "rope_freqs.weight");
    return rc < 0 ? rc : exo__layers_alloc(s);
}

static int llama_bind(exo_shard *s)
{
    exo_decoder_layer *layers = s->arch_data;
    int window, rc;
    if ((rc = exo__model_sliding_window(s, &window))) return rc;
    rc = exo__layers_bind(s, layers, 0, EXO_FFN_SILU);
    for (int i = 0; rc == EXO_OK && i < s->layer_end - s->layer_start; i++) layers[i].attn.window = window;
    return rc;
}

const exo_arch exo__arch_llama = {"llama", llama_read_hparams, llama_bind, exo__layers_forward_arch};
