/* llama.c: the Llama architecture (Llama 2/3/3.x, Mistral, SmolLM).
 *
 * Pre-norm transformer: per layer, x += Wo · attention(rope(Wq·rmsnorm(x)),
 * rope(Wk·rmsnorm(x)), Wv·rmsnorm(x)) with grouped-query attention, then
 * x += Wdown · (silu(Wgate·rmsnorm(x)) * Wup·rmsnorm(x)). The first shard
 * embeds tokens; the last applies the final norm and the output head (the
 * token embedding when output.weight is absent: tied weights). Tensor names
 * and shapes are those GGUF converters write; shapes are checked at bind time
 * against the hyper-parameters, so the forward pass trusts them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../model.h"

int exo_llama_bind(exo_shard *s)
{
    exo_hparams *hp = &s->hp;
    const int64_t n_embd = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    int rc;

    /* The vocabulary size is the embedding's row count (vocab_size metadata is optional). */
    int64_t emb_idx = exo_gguf_find_tensor(s->file, "token_embd.weight");
    if (emb_idx < 0) return exo_error_set(EXO_EFORMAT, "model lacks tensor 'token_embd.weight'");
    const exo_gguf_tensor *emb = exo_gguf_tensor_at(s->file, emb_idx);
    if (emb->n_dims != 2 || emb->ne[0] != n_embd || emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
        return exo_error_set(EXO_EFORMAT, "token_embd.weight has shape [%lld, %lld], expected [%lld, n_vocab]",
                             (long long)emb->ne[0], (long long)emb->ne[1], (long long)n_embd);
    hp->n_vocab = (int)emb->ne[1];

    if (s->is_first) {
        if ((rc = exo_model_bind_tensor(s, &s->tok_embd, "token_embd.weight", 2, n_embd, hp->n_vocab, true)))
            return rc;
        /* A lookup reads one row per token, not the table. */
        s->weight_bytes -= (int64_t)(emb->size - s->tok_embd.nb[1]);
    }
    if (s->is_last) {
        if ((rc = exo_model_bind_tensor(s, &s->output_norm, "output_norm.weight", 1, n_embd, 1, true))) return rc;
        if ((rc = exo_model_bind_tensor(s, &s->output, "output.weight", 2, n_embd, hp->n_vocab, false))) return rc;
        if (!s->output.data) {
            /* Tied head: the embedding doubles as the output projection. */
            if ((rc = exo_model_bind_tensor(s, &s->output, "token_embd.weight", 2, n_embd, hp->n_vocab, true)))
                return rc;
        }
    }

    int n = s->layer_end - s->layer_start;
    s->layers = calloc((size_t)n, sizeof *s->layers);
    if (!s->layers) return exo_error_set(EXO_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        exo_llama_layer *l = &s->layers[i];
        int il = s->layer_start + i;
        char name[96];
#define BIND(field, suffix, dims, ne0, ne1)                                            \
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);                              \
    if ((rc = exo_model_bind_tensor(s, &l->field, name, dims, ne0, ne1, true))) return rc;
        BIND(attn_norm, "attn_norm.weight", 1, n_embd, 1);
        BIND(wq, "attn_q.weight", 2, n_embd, q_dim);
        BIND(wk, "attn_k.weight", 2, n_embd, kv_dim);
        BIND(wv, "attn_v.weight", 2, n_embd, kv_dim);
        BIND(wo, "attn_output.weight", 2, q_dim, n_embd);
        BIND(ffn_norm, "ffn_norm.weight", 1, n_embd, 1);
        BIND(w_gate, "ffn_gate.weight", 2, n_embd, hp->n_ff);
        BIND(w_up, "ffn_up.weight", 2, n_embd, hp->n_ff);
        BIND(w_down, "ffn_down.weight", 2, hp->n_ff, n_embd);
#undef BIND
    }

    /* Every matrix a token reads, for the backend to pack; the head first:
     * packing reads a matrix's file pages in, so the largest one is best done
     * while little else is resident (peak RSS). */
    int n_ws = 7 * n + 1;
    exo_tensor **ws = calloc((size_t)n_ws, sizeof *ws);
    if (!ws) return exo_error_set(EXO_ENOMEM, "out of memory");
    ws[0] = s->is_last ? &s->output : NULL;
    for (int i = 0; i < n; i++) {
        exo_llama_layer *l = &s->layers[i];
        exo_tensor *layer_ws[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        memcpy(ws + 1 + 7 * i, layer_ws, sizeof layer_ws);
    }
    rc = exo_model_pack_weights(s, ws, n_ws);
    free(ws);
    return rc;
}

/* cos/sin for every (token, pair) of this batch, shared by all layers. */
static void fill_rope_table(exo_shard *s, int pos0, int n_tokens, exo_rope_table *rope)
{
    const int half = s->hp.rope_dim / 2;
    for (int t = 0; t < n_tokens; t++) {
        float p = (float)(pos0 + t) / s->hp.rope_linear_scale;
        for (int i = 0; i < half; i++) {
            float theta = p * s->rope_inv_freq[i];
            s->rs.rope_cos[(size_t)t * half + i] = cosf(theta);
            s->rs.rope_sin[(size_t)t * half + i] = sinf(theta);
        }
    }
    rope->cos = s->rs.rope_cos;
    rope->sin = s->rs.rope_sin;
    rope->rope_dim = s->hp.rope_dim;
    rope->style = s->hp.rope_style;
}

int exo_llama_forward(exo_shard *s, exo_seq *seq, const int32_t *tokens, const float *hidden, int n_tokens,
                      int logits_from, float *out)
{
    const exo_backend *be = s->backend;
    const exo_hparams *hp = &s->hp;
    exo_run_state *rs = &s->rs;
    const int n_embd = hp->n_embd, head_dim = hp->head_dim;
    const int q_dim = hp->n_head * head_dim, kv_dim = hp->n_head_kv * head_dim;
    const int pos0 = seq->pos;
    int rc;

    if (s->is_first) {
        if ((rc = be->get_rows(&s->tok_embd, tokens, n_tokens, rs->x))) return rc;
    } else {
        memcpy(rs->x, hidden, sizeof(float) * (size_t)n_tokens * n_embd);
    }

    exo_rope_table rope;
    fill_rope_table(s, pos0, n_tokens, &rope);

    for (int i = 0; i < s->layer_end - s->layer_start; i++) {
        const exo_llama_layer *l = &s->layers[i];
        /* This layer's cache: (n_ctx, kv_dim); the new keys land at pos0. */
        uint16_t *k_cache = seq->k_cache + (size_t)i * seq->n_ctx * kv_dim;
        uint16_t *v_cache = seq->v_cache + (size_t)i * seq->n_ctx * kv_dim;

        be->rmsnorm(rs->x, l->attn_norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
        exo_matmul_out qkv[3] = {{&l->wq, rs->q, q_dim}, {&l->wk, rs->k, kv_dim}, {&l->wv, rs->v, kv_dim}};
        if ((rc = be->matmul_multi(qkv, 3, rs->xn, n_tokens))) return rc;
        be->rope(rs->q, n_tokens, hp->n_head, head_dim, &rope);
        be->rope(rs->k, n_tokens, hp->n_head_kv, head_dim, &rope);
        /* The new keys (roped) and values land in the f16 cache at pos0. */
        be->to_f16(rs->k, k_cache + (size_t)pos0 * kv_dim, (int64_t)n_tokens * kv_dim);
        be->to_f16(rs->v, v_cache + (size_t)pos0 * kv_dim, (int64_t)n_tokens * kv_dim);

        exo_attention_args att = {
            .q = rs->q, .k_cache = k_cache, .v_cache = v_cache, .out = rs->att, .n_tokens = n_tokens,
            .pos0 = pos0, .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = head_dim,
            .scale = 1.0f / sqrtf((float)head_dim),
        };
        be->attention(&att);
        /* Wo's output lands in xn, then joins the residual stream. */
        if ((rc = be->matmul(&l->wo, rs->att, n_tokens, rs->xn, n_embd))) return rc;
        be->add(rs->x, rs->xn, (int64_t)n_tokens * n_embd);

        be->rmsnorm(rs->x, l->ffn_norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
        if ((rc = be->matmul_swiglu(&l->w_gate, &l->w_up, rs->xn, n_tokens, rs->gate, rs->up))) return rc;
        if ((rc = be->matmul(&l->w_down, rs->gate, n_tokens, rs->xn, n_embd))) return rc;
        be->add(rs->x, rs->xn, (int64_t)n_tokens * n_embd);
    }

    if (!s->is_last) {
        memcpy(out, rs->x, sizeof(float) * (size_t)n_tokens * n_embd);
        return EXO_OK;
    }
    int n_out = n_tokens - logits_from;
    if (n_out <= 0) return EXO_OK;
    const float *x_out = rs->x + (size_t)logits_from * n_embd;
    be->rmsnorm(x_out, s->output_norm.data, rs->xn, n_out, n_embd, hp->rms_eps);
    return be->matmul(&s->output, rs->xn, n_out, out, hp->n_vocab);
}
