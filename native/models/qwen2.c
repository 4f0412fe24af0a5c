/* qwen2.c: Qwen 2 and 2.5 (and DeepSeek-R1-Distill-Qwen, which is Qwen 2).
 *
 * Llama's layer with biases on the Q, K and V projections (bound when the
 * file has them), the rope rotating halves of each head (NEOX style) with
 * the base from metadata (1e6 in Qwen 2.5), and a head tied to the
 * embedding or not. */
#include "../model.h"

static int qwen2_read_hparams(exo_shard *s)
{
    int rc = exo__model_add_file_rope(s, EXO_ROPE_NEOX, NULL);
    return rc < 0 ? rc : exo__layers_alloc(s);
}

static int qwen2_bind(exo_shard *s)
{
    return exo__layers_bind(s, s->arch_data, 0, EXO_FFN_SILU);
}

const exo_arch exo__arch_qwen2 = {"qwen2", qwen2_read_hparams, qwen2_bind, exo__layers_forward_arch};
