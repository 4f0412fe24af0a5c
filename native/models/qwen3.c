/* qwen3.c: Qwen 3 (dense).
 *
 * Qwen 2's layer without the Q/K/V biases and with an RMSNorm over each
 * query and key head before the rope; head_dim comes from metadata
 * (attention.key_length: 128 while n_embd / n_head is 64 in Qwen3-0.6B). */
#include "../model.h"

static int qwen3_read_hparams(exo_shard *s)
{
    int rc = exo__model_add_file_rope(s, EXO_ROPE_NEOX, NULL);
    return rc < 0 ? rc : exo__layers_alloc(s);
}

static int qwen3_bind(exo_shard *s)
{
    return exo__layers_bind(s, s->arch_data, EXO_BIND_QK_NORM, EXO_FFN_SILU);
}

const exo_arch exo__arch_qwen3 = {"qwen3", qwen3_read_hparams, qwen3_bind, exo__layers_forward_arch};
