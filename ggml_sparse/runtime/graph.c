// graph.c: the Llama/Mistral/Mixtral forward pass of one batch as a ggml graph: RMSNorm,
// RoPE (normal mode: Q/K rows are stored permuted as llama.cpp's converter does), grouped-query
// attention over the KV cache with a per-sequence causal (and optionally sliding-window) mask, the FFN of
// ffn.c / moe.c, and the output projection. The weight products go through
// ggml_sparse_mul_mat: the turbosparse kernels where they beat ggml's on this CPU (the policy
// in src/matmul.c), else ggml's mul_mat on its repacked layout (repack.c places each weight
// for the kernel that will read it).
#include "graph.h"
#include "ffn.h"

#include <math.h>
#include <string.h>

static struct ggml_tensor * rms_norm(struct ggml_context * g, struct ggml_tensor * x, struct ggml_tensor * w, float eps) {
    return ggml_mul(g, ggml_rms_norm(g, x, eps), w);
}

static struct ggml_tensor * rope(struct ggml_context * g, const struct ts_model_meta * h,
                                 struct ggml_tensor * x, struct ggml_tensor * pos) {
    return ggml_rope_ext(g, x, pos, NULL, h->n_rot, 0 /* normal */, h->n_ctx_train, h->rope_theta,
                         h->rope_freq_scale, 0.0f, 1.0f, 0.0f, 0.0f);
}

// Self-attention of layer il: writes this batch's K/V into its cells, attends over cells
// 0..n_kv-1 through the mask (own sequence, positions up to the entry's). x is the normed
// input [n_embd, n].
static struct ggml_tensor * attention(struct ts_context * c, struct ggml_context * g, struct ggml_cgraph * gf,
                                      int il, struct ggml_tensor * x, const struct ts_graph_io * io, int64_t n_kv) {
    const struct ts_model_meta * h = &c->model->meta;
    const struct ts_layer * l = &c->model->layers[il];
    const int64_t n = x->ne[1], hd = h->head_dim;
    const int64_t E_kv = c->kv.n_embd_kv;
    struct ggml_tensor * kc = c->kv.k[il], * vc = c->kv.v[il];

    struct ggml_tensor * q = ggml_reshape_3d(g, ggml_sparse_mul_mat(g, l->wq, x), hd, h->n_head, n);
    struct ggml_tensor * k = ggml_reshape_3d(g, ggml_sparse_mul_mat(g, l->wk, x), hd, h->n_head_kv, n);
    struct ggml_tensor * v = ggml_sparse_mul_mat(g, l->wv, x);
    q = rope(g, h, q, io->pos);
    k = rope(g, h, k, io->pos);

    // store: K and V rows into the entries' cells (V in the cache's memory read as
    // [E_kv, n_ctx], one row per cell like K, the layout ggml's flash attention reads)
    const size_t v_row = ggml_row_size(vc->type, E_kv);
    struct ggml_tensor * v_rows = ggml_view_2d(g, vc, E_kv, c->kv.n_ctx, v_row, 0);
    ggml_build_forward_expand(gf, ggml_set_rows(g, kc, ggml_reshape_2d(g, k, E_kv, n), io->cells));
    ggml_build_forward_expand(gf, ggml_set_rows(g, v_rows, v, io->cells));

    struct ggml_tensor * K = ggml_view_3d(g, kc, hd, n_kv, h->n_head_kv, kc->nb[1], ggml_row_size(kc->type, hd), 0);
    struct ggml_tensor * V = ggml_view_3d(g, vc, hd, n_kv, h->n_head_kv, v_row, ggml_row_size(vc->type, hd), 0);
    struct ggml_tensor * Q = ggml_permute(g, q, 0, 2, 1, 3);                     // [hd, n, n_head]
    // one node for KQ, the masked softmax and KQV (instead of six): the per-node cost dominates
    // these small products in decoding
    struct ggml_tensor * kqv = ggml_flash_attn_ext(g, Q, K, V, io->mask, 1.0f / sqrtf((float) hd), 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(kqv, GGML_PREC_F32);
    struct ggml_tensor * o = ggml_reshape_2d(g, kqv, hd * h->n_head, n);          // [hd, n_head, n] -> rows
    return ggml_sparse_mul_mat(g, l->wo, o);
}

struct ggml_cgraph * ts_graph_build(struct ts_context * c, struct ggml_context * g,
                                    const struct ts_batch_plan * plan, struct ts_graph_io * io) {
    const struct ts_model * m = c->model;
    const struct ts_model_meta * h = &m->meta;
    const int32_t n = plan->batch->n_tokens;
    struct ggml_cgraph * gf = ggml_new_graph_custom(g, c->graph_size, false);

    io->tokens = ggml_new_tensor_1d(g, GGML_TYPE_I32, n);
    io->pos = ggml_new_tensor_1d(g, GGML_TYPE_I32, n);
    io->cells = ggml_new_tensor_1d(g, GGML_TYPE_I64, n);
    io->mask = ggml_new_tensor_2d(g, GGML_TYPE_F16, plan->n_kv, n); // flash attention takes f16
    io->out = plan->n_out < n ? ggml_new_tensor_1d(g, GGML_TYPE_I32, plan->n_out) : NULL;
    ggml_set_input(io->tokens);
    ggml_set_input(io->pos);
    ggml_set_input(io->cells);
    ggml_set_input(io->mask);
    if (io->out) ggml_set_input(io->out);

    struct ggml_tensor * x = ggml_get_rows(g, m->tok_embd, io->tokens); // [n_embd, n] f32
    for (int il = 0; il < h->n_layer; il++) {
        const struct ts_layer * l = &m->layers[il];
        struct ggml_tensor * a = attention(c, g, gf, il, rms_norm(g, x, l->attn_norm, h->rms_eps), io, plan->n_kv);
        struct ggml_tensor * resid = ggml_add(g, a, x); // the FFN's residual input
        struct ggml_tensor * f = ts_build_ffn(c, g, l, rms_norm(g, resid, l->ffn_norm, h->rms_eps), resid);
        if (!f) return NULL;
        x = ggml_add(g, f, resid);
    }
    if (io->out) {
        x = ggml_get_rows(g, x, io->out); // only the wanted entries go through the output matrix
    }
    x = rms_norm(g, x, m->output_norm, h->rms_eps);
    io->logits = ggml_sparse_mul_mat(g, m->output, x);
    ggml_set_output(io->logits);
    ggml_build_forward_expand(gf, io->logits);
    return gf;
}

void ts_graph_set_inputs(const struct ts_context * c, const struct ts_graph_io * io,
                         const struct ts_batch_plan * plan) {
    const struct ts_batch * b = plan->batch;
    const struct ts_kv_cells * kc = &c->cells;
    const int32_t window = c->model->meta.sliding_window;
    const int32_t n = b->n_tokens, n_kv = plan->n_kv;
    memcpy(io->tokens->data, b->tokens, sizeof(int32_t) * (size_t) n);
    memcpy(io->pos->data, b->pos, sizeof(int32_t) * (size_t) n);
    int64_t * cells = io->cells->data;
    for (int32_t i = 0; i < n; i++) cells[i] = plan->cells[i];
    if (io->out) memcpy(io->out->data, plan->out_rows, sizeof(int32_t) * (size_t) plan->n_out);

    // the cells as they will be once the batch is in: the table, plus the batch's own entries
    int32_t * cell_seq = c->cell_seq, * cell_pos = c->cell_pos;
    memcpy(cell_seq, kc->seq, sizeof(int32_t) * (size_t) n_kv);
    memcpy(cell_pos, kc->pos, sizeof(int32_t) * (size_t) n_kv);
    for (int32_t i = 0; i < n; i++) {
        cell_seq[plan->cells[i]] = b->seq[i];
        cell_pos[plan->cells[i]] = b->pos[i];
    }
    ggml_fp16_t * mask = io->mask->data;
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), minus_inf = ggml_fp32_to_fp16(-INFINITY);
    for (int32_t i = 0; i < n; i++) {
        const int32_t s = b->seq[i], p = b->pos[i];
        ggml_fp16_t * row = mask + (size_t) i * n_kv;
        for (int32_t j = 0; j < n_kv; j++) {
            // own sequence, causal; Mistral's window: position p sees p-window+1..p
            const bool visible = cell_seq[j] == s && cell_pos[j] <= p && (window <= 0 || p - cell_pos[j] < window);
            row[j] = visible ? zero : minus_inf;
        }
    }
}
