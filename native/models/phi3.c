/* phi3.c: Phi 3 and 3.5 (dense).
 *
 * Llama's layer with Q, K and V in one matrix (attn_qkv: rows of Q, then K,
 * then V) and gate and up in one (ffn_up: 2 * n_ff rows, gate first), both
 * cut into row views at bind time, so the forward pass is the shared one;
 * the rope rotates halves (NEOX). Long-context files carry two sets of
 * per-frequency factors: as llama.cpp does, the long ones apply to a
 * sequence whose context is larger than the original one
 * (rope.scaling.original_context_length), the short ones to the others, and
 * cos/sin are scaled by rope.scaling.attn_factor. The
 * sliding window some Phi 3 files declare is ignored, as llama.cpp does (its
 * converters write it wrongly). */
#include "../error.h"
#include "../model.h"

static int phi3_read_hparams(exo_shard *s)
{
    int rc, orig_ctx;
    float attn_factor;
    if ((rc = exo__model_meta_int(s, "rope.scaling.original_context_length", &orig_ctx, false, s->hp.n_ctx_train)))
        return rc;
    if ((rc = exo__model_meta_float(s, "rope.scaling.attn_factor", &attn_factor, 1.0f))) return rc;
    if (!(attn_factor > 0)) return exo__error_set(EXO_EFORMAT, "rope attention factor %g is not positive", attn_factor);
    int rope = exo__model_add_file_rope(s, EXO_ROPE_NEOX, "rope_factors_short.weight");
    if (rope < 0) return rope;
    s->rope[rope].attn_factor = attn_factor;
    if (exo__gguf_find_tensor(s->file, "rope_factors_long.weight") >= 0 &&
        (rc = exo__model_rope_long_factors(s, rope, "rope_factors_long.weight", orig_ctx)))
        return rc;
    return exo__layers_alloc(s);
}

static int phi3_bind(exo_shard *s)
{
    return exo__layers_bind(s, s->arch_data, 0, EXO_FFN_SILU);
}

const exo_arch exo__arch_phi3 = {"phi3", phi3_read_hparams, phi3_bind, exo__layers_forward_arch};
