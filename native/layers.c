/* layers.c: the pieces decoder-only transformers are built from.
 *
 * An architecture's forward pass (native/models/) is a sequence of calls to
 * these: begin (embed or take hidden states, fill the rope tables), then per
 * layer an attention block and a feed-forward block, then end (final norm
 * and head). Each block is pre-norm with a residual add, and takes the
 * optional parts the families differ by as data in its struct: biases (Qwen
 * 2), per-head query/key norms (Qwen 3, Gemma 3), a norm of the block's
 * output (Gemma), a sliding window, the activation of the gate. All work
 * goes through the shard's backend, over the shard's run state, so a forward
 * pass never allocates. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"

/* cos/sin of every (row, pair) of this batch for one rope, at each row's position. */
static void fill_rope_table(const exo_shard *s, const exo_rope *r, const exo_batch *b)
{
    const int half = s->hp.rope_dim / 2;
    for (int t = 0; t < b->n_rows; t++) {
        float p = (float)b->pos[t] / r->linear_scale;
        const float *inv = r->inv_freq_long && b->seq[t]->n_ctx > r->long_above_ctx ? r->inv_freq_long : r->inv_freq;
        for (int i = 0; i < half; i++) {
            float theta = p * inv[i];
            r->cos[(size_t)t * half + i] = cosf(theta) * r->attn_factor;
            r->sin[(size_t)t * half + i] = sinf(theta) * r->attn_factor;
        }
    }
}

int exo__layers_begin(exo_shard *s, const exo_batch *b)
{
    exo_backend *be = s->backend;
    const int64_t n = (int64_t)b->n_rows * s->hp.n_embd;
    if (s->is_first) {
        int rc = be->get_rows(be, &s->tok_embd, b->tokens, b->n_rows, s->rs.x);
        if (rc) return rc;
        if (s->embd_scale != 1.0f) be->scale(be, s->rs.x, s->embd_scale, n);
    } else {
        be->copy_in(be, s->rs.x, b->hidden, (size_t)n);
    }
    for (int i = 0; i < s->n_rope; i++) fill_rope_table(s, &s->rope[i], b);
    return EXO_OK;
}

static void add_bias(exo_backend *be, float *y, const exo_tensor *bias, int n_tokens, int width)
{
    if (!bias->data) return;
    for (int t = 0; t < n_tokens; t++) be->add(be, y + (size_t)t * width, bias->data, width);
}

int exo__layers_attention(exo_shard *s, const exo_batch *batch, int il_local, const exo_attn_block *b)
{
    exo_backend *be = s->backend;
    const exo_hparams *hp = &s->hp;
    exo_run_state *rs = &s->rs;
    const int n_tokens = batch->n_rows;
    const int n_embd = hp->n_embd, head_dim = hp->head_dim;
    const int q_dim = hp->n_head * head_dim, kv_dim = hp->n_head_kv * head_dim;
    int rc;

    be->rmsnorm(be, rs->x, b->norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
    exo_matmul_out qkv[3] = {{&b->wq, rs->q, q_dim}, {&b->wk, rs->k, kv_dim}, {&b->wv, rs->v, kv_dim}};
    if ((rc = be->matmul_multi(be, qkv, 3, rs->xn, n_tokens))) return rc;
    add_bias(be, rs->q, &b->bq, n_tokens, q_dim);
    add_bias(be, rs->k, &b->bk, n_tokens, kv_dim);
    add_bias(be, rs->v, &b->bv, n_tokens, kv_dim);
    /* Per-head norms: each head's vector is one row of head_dim. */
    if (b->q_norm.data) be->rmsnorm(be, rs->q, b->q_norm.data, rs->q, n_tokens * hp->n_head, head_dim, hp->rms_eps);
    if (b->k_norm.data) be->rmsnorm(be, rs->k, b->k_norm.data, rs->k, n_tokens * hp->n_head_kv, head_dim, hp->rms_eps);
    const exo_rope *r = &s->rope[b->rope];
    exo_rope_table rope = {.cos = r->cos, .sin = r->sin, .rope_dim = hp->rope_dim, .style = r->style};
    be->rope(be, rs->q, n_tokens, hp->n_head, head_dim, &rope);
    be->rope(be, rs->k, n_tokens, hp->n_head_kv, head_dim, &rope);

    /* Each sequence's rows against its own cache, through its block table
     * (the KV pool, model.h): the run's new keys (roped) and values land at
     * its positions in f16, each KV head's in its own run of the block
     * (exo_attention_args says why). */
    for (int i = 0; i < s->n_runs; i++) {
        const exo_batch_run *run = &s->runs[i];
        exo_seq *seq = run->seq;
        const uint16_t *const *k_blocks = seq->k_blocks + (size_t)il_local * seq->max_blocks;
        const uint16_t *const *v_blocks = seq->v_blocks + (size_t)il_local * seq->max_blocks;
        for (int done = 0; done < run->n; done++) {
            int p = run->pos0 + done;
            size_t from = (size_t)(run->row0 + done) * kv_dim;
            for (int h = 0; h < hp->n_head_kv; h++) {
                size_t at = ((size_t)h * EXO_KV_BLOCK + p % EXO_KV_BLOCK) * head_dim;
                /* The pool's memory, written only here: the tables are const for the kernels. */
                be->to_f16(be, rs->k + from + (size_t)h * head_dim, (uint16_t *)k_blocks[p / EXO_KV_BLOCK] + at, head_dim);
                be->to_f16(be, rs->v + from + (size_t)h * head_dim, (uint16_t *)v_blocks[p / EXO_KV_BLOCK] + at, head_dim);
            }
        }
        exo_attention_args att = {
            .q = rs->q + (size_t)run->row0 * q_dim, .k_blocks = k_blocks, .v_blocks = v_blocks,
            .block_len = EXO_KV_BLOCK, .out = rs->att + (size_t)run->row0 * q_dim, .n_tokens = run->n,
            .pos0 = run->pos0, .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = head_dim,
            .scale = b->scale, .window = b->window,
        };
        be->attention(be, &att);
    }
    /* Wo's output lands in xn, then joins the residual stream. */
    if ((rc = be->matmul(be, &b->wo, rs->att, n_tokens, rs->xn, n_embd))) return rc;
    add_bias(be, rs->xn, &b->bo, n_tokens, n_embd);
    if (b->post_norm.data) be->rmsnorm(be, rs->xn, b->post_norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
    be->add(be, rs->x, rs->xn, (int64_t)n_tokens * n_embd);
    return EXO_OK;
}

int exo__layers_ffn(exo_shard *s, const exo_batch *batch, const exo_ffn_block *b)
{
    const int n_tokens = batch->n_rows;
    exo_backend *be = s->backend;
    const exo_hparams *hp = &s->hp;
    exo_run_state *rs = &s->rs;
    const int n_embd = hp->n_embd;
    int rc;
    be->rmsnorm(be, rs->x, b->norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
    if ((rc = be->matmul_glu(be, &b->gate, &b->up, rs->xn, n_tokens, rs->gate, rs->up, b->act))) return rc;
    if ((rc = be->matmul(be, &b->down, rs->gate, n_tokens, rs->xn, n_embd))) return rc;
    if (b->post_norm.data) be->rmsnorm(be, rs->xn, b->post_norm.data, rs->xn, n_tokens, n_embd, hp->rms_eps);
    be->add(be, rs->x, rs->xn, (int64_t)n_tokens * n_embd);
    return EXO_OK;
}

int exo__layers_end(exo_shard *s, const exo_batch *b, float *out)
{
    const int n_tokens = b->n_rows, logits_from = b->logits_from;
    exo_backend *be = s->backend;
    const exo_hparams *hp = &s->hp;
    exo_run_state *rs = &s->rs;
    const int n_embd = hp->n_embd;
    if (!s->is_last) {
        be->copy_out(be, out, rs->x, (size_t)n_tokens * n_embd);
        return EXO_OK;
    }
    int n_out = n_tokens - logits_from;
    if (n_out <= 0) return EXO_OK;
    const float *x_out = rs->x + (size_t)logits_from * n_embd;
    be->rmsnorm(be, x_out, s->output_norm.data, rs->xn, n_out, n_embd, hp->rms_eps);
    int rc = be->matmul(be, &s->output, rs->xn, n_out, out, hp->n_vocab);
    if (rc) return rc;
    add_bias(be, out, &s->output_bias, n_out, hp->n_vocab);
    return EXO_OK;
}

int exo__layers_forward(exo_shard *s, const exo_batch *b, const exo_decoder_layer *layers, float *out)
{
    int rc = exo__layers_begin(s, b);
    for (int i = 0; rc == EXO_OK && i < s->layer_end - s->layer_start; i++) {
        rc = exo__layers_attention(s, b, i, &layers[i].attn);
        if (rc == EXO_OK) rc = exo__layers_ffn(s, b, &layers[i].ffn);
    }
    return rc ? rc : exo__layers_end(s, b, out);
}

int exo__layers_alloc(exo_shard *s)
{
    s->arch_data = calloc((size_t)(s->layer_end - s->layer_start), sizeof(exo_decoder_layer));
    return s->arch_data ? EXO_OK : exo__error_set(EXO_ENOMEM, "out of memory");
}

int exo__layers_forward_arch(exo_shard *s, const exo_batch *b, float *out)
{
    return exo__layers_forward(s, b, s->arch_data, out);
}

/* ---- binding ------------------------------------------------------------- */

static int bind_attn(exo_shard *s, int il, exo_attn_block *b, int flags)
{
    const exo_hparams *hp = &s->hp;
    const int64_t n_embd = hp->n_embd, head_dim = hp->head_dim;
    const int64_t q_dim = hp->n_head * head_dim, kv_dim = hp->n_head_kv * head_dim;
    int rc;
#define BIND(field, suffix, dims, ne0, ne1, required)                                              \
    if ((rc = exo__model_bind_layer_tensor(s, &b->field, il, suffix, dims, ne0, ne1, required))) return rc;
    BIND(norm, "attn_norm.weight", 1, n_embd, 1, true);
    exo_tensor qkv;
    BIND(wq, "attn_q.weight", 2, n_embd, q_dim, false);
    if (!b->wq.data) { /* Phi 3: one matrix whose rows are Q's, then K's, then V's */
        if ((rc = exo__model_bind_layer_tensor(s, &qkv, il, "attn_qkv.weight", 2, n_embd, q_dim + 2 * kv_dim, true)))
            return rc;
        exo__model_row_view(&b->wq, &qkv, 0, q_dim);
        exo__model_row_view(&b->wk, &qkv, q_dim, kv_dim);
        exo__model_row_view(&b->wv, &qkv, q_dim + kv_dim, kv_dim);
    } else {
        BIND(wk, "attn_k.weight", 2, n_embd, kv_dim, true);
        BIND(wv, "attn_v.weight", 2, n_embd, kv_dim, true);
    }
    BIND(wo, "attn_output.weight", 2, q_dim, n_embd, true);
    BIND(bq, "attn_q.bias", 1, q_dim, 1, false);
    BIND(bk, "attn_k.bias", 1, kv_dim, 1, false);
    BIND(bv, "attn_v.bias", 1, kv_dim, 1, false);
    BIND(bo, "attn_output.bias", 1, n_embd, 1, false);
    if (flags & EXO_BIND_QK_NORM) {
        BIND(q_norm, "attn_q_norm.weight", 1, head_dim, 1, true);
        BIND(k_norm, "attn_k_norm.weight", 1, head_dim, 1, true);
    }
    if (flags & EXO_BIND_POST_NORMS) BIND(post_norm, "post_attention_norm.weight", 1, n_embd, 1, true);
#undef BIND
    b->rope = 0;
    b->window = 0;
    b->scale = 1.0f / sqrtf((float)head_dim);
    return EXO_OK;
}

static int bind_ffn(exo_shard *s, int il, exo_ffn_block *f, int flags, int act)
{
    const exo_hparams *hp = &s->hp;
    const int64_t n_embd = hp->n_embd, n_ff = hp->n_ff;
    int rc;
#define BIND(field, suffix, dims, ne0, ne1, required)                                              \
    if ((rc = exo__model_bind_layer_tensor(s, &f->field, il, suffix, dims, ne0, ne1, required))) return rc;
    BIND(norm, "ffn_norm.weight", 1, n_embd, 1, true);
    BIND(gate, "ffn_gate.weight", 2, n_embd, n_ff, false);
    if (!f->gate.data) { /* Phi 3: one matrix whose rows are the gate's, then up's */
        exo_tensor gate_up;
        if ((rc = exo__model_bind_layer_tensor(s, &gate_up, il, "ffn_up.weight", 2, n_embd, 2 * n_ff, true)))
            return rc;
        exo__model_row_view(&f->gate, &gate_up, 0, n_ff);
        exo__model_row_view(&f->up, &gate_up, n_ff, n_ff);
    } else {
        BIND(up, "ffn_up.weight", 2, n_embd, n_ff, true);
    }
    BIND(down, "ffn_down.weight", 2, n_ff, n_embd, true);
    if (flags & EXO_BIND_POST_NORMS) BIND(post_norm, "post_ffw_norm.weight", 1, n_embd, 1, true);
#undef BIND
    f->act = act;
    return EXO_OK;
}

int exo__layers_bind(exo_shard *s, exo_decoder_layer *layers, int flags, int act)
{
    int rc = exo__model_bind_embeddings(s);
    if (rc) return rc;
    const int n = s->layer_end - s->layer_start;
    for (int i = 0; i < n; i++) {
        if ((rc = bind_attn(s, s->layer_start + i, &layers[i].attn, flags))) return rc;
        if ((rc = bind_ffn(s, s->layer_start + i, &layers[i].ffn, flags, act))) return rc;
    }
    /* Every matrix a token reads, for the backend to pack; the head first:
     * packing reads a matrix's file pages in, so the largest one is best done
     * while little else is resident (peak RSS). */
    int n_ws = 7 * n + 1;
    exo_tensor **ws = calloc((size_t)n_ws, sizeof *ws);
    if (!ws) return exo__error_set(EXO_ENOMEM, "out of memory");
    ws[0] = s->is_last ? &s->output : NULL;
    for (int i = 0; i < n; i++) {
        exo_attn_block *a = &layers[i].attn;
        exo_ffn_block *f = &layers[i].ffn;
        exo_tensor *layer_ws[7] = {&a->wq, &a->wk, &a->wv, &a->wo, &f->gate, &f->up, &f->down};
        memcpy(ws + 1 + 7 * i, layer_ws, sizeof layer_ws);
    }
    rc = exo__model_pack_weights(s, ws, n_ws);
    free(ws);
    return rc;
}
