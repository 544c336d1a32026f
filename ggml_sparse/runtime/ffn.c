// ffn.c: the feed-forward block of a dense layer through ggml_sparse_ffn (ggml-sparse.h) in
// the context's mode: which tensors feed it and what the predictor sees
// (turbosparse.predictor.input).
#include "ffn.h"

#include <stdio.h>

struct ggml_tensor * ts_build_ffn_one(struct ts_context * c, struct ggml_context * g,
                                      struct ggml_tensor * x, struct ggml_tensor * u,
                                      struct ggml_tensor * fc1, struct ggml_tensor * fc2,
                                      struct ggml_tensor * w_gate, struct ggml_tensor * w_up,
                                      struct ggml_tensor * w_down, struct ggml_tensor * logit_bias) {
    const struct ts_model_meta * h = &c->model->meta;
    struct ggml_sparse_ffn_params p = {
        .kind        = (enum ggml_sparse_ffn_kind) h->ffn_kind,
        .mode        = (enum ggml_sparse_mode) c->ffn_mode,
        .down_layout = h->down_neuron_major ? GGML_SPARSE_DOWN_NEURON_MAJOR : GGML_SPARSE_DOWN_STANDARD,
        .threshold   = c->threshold,
        .stats       = &c->sparse_stats,
    };
    if (c->ffn_mode != TS_FFN_MODE_PREDICTED) {
        u = fc1 = fc2 = NULL;
    }
    char err[256];
    struct ggml_tensor * y;
    if (logit_bias && c->ffn_mode == TS_FFN_MODE_PREDICTED) {
        // ggml_sparse_ffn's predicted path, with the bias between the predictor and gate/up
        y = NULL;
        if (ggml_sparse_check_ffn(x, u, fc1, fc2, w_gate, w_up, w_down, &p, err, sizeof(err))) {
            struct ggml_tensor * logits = ggml_sparse_predictor(g, fc1, fc2, u, err, sizeof(err));
            struct ggml_tensor * a = logits ? ggml_sparse_gate_up(g, w_gate, w_up, x, ggml_add(g, logits, logit_bias),
                                                                  p.kind, p.threshold, p.stats, err, sizeof(err)) : NULL;
            if (a) {
                y = h->down_neuron_major ? ggml_sparse_down(g, w_down, a, err, sizeof(err)) : ggml_mul_mat(g, w_down, a);
            }
        }
    } else {
        y = ggml_sparse_ffn(g, x, u, fc1, fc2, w_gate, w_up, w_down, &p, err, sizeof(err));
    }
    if (!y) snprintf(c->err, sizeof(c->err), "sparse FFN: %s", err);
    return y;
}

struct ggml_tensor * ts_build_ffn(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                  struct ggml_tensor * x, struct ggml_tensor * residual) {
    if (c->model->meta.n_expert > 0) {
        return ts_build_moe(c, g, l, x, residual);
    }
    if (c->ffn_mode == TS_FFN_MODE_THRESHOLD) {
        // CATS: the layer's own cut on |silu(gate)|, its own counts, the neuron-major down
        const int il = (int) (l - c->model->layers);
        struct ggml_sparse_ffn_params p = {
            .kind = GGML_SPARSE_FFN_SWIGLU, .mode = GGML_SPARSE_MODE_THRESHOLD,
            .down_layout = GGML_SPARSE_DOWN_NEURON_MAJOR, .threshold = c->act_thresholds[il],
            .stats = &c->layer_stats[il], .hist = c->act_hist ? &c->act_hist[il] : NULL,
        };
        char err[256];
        struct ggml_tensor * y = ggml_sparse_ffn(g, x, NULL, NULL, NULL, l->ffn_gate, l->ffn_up, l->ffn_down_t, &p,
                                                 err, sizeof(err));
        if (!y) snprintf(c->err, sizeof(c->err), "sparse FFN (threshold mode, layer %d): %s", il, err);
        return y;
    }
    struct ggml_tensor * u = c->model->meta.predictor_input == TS_PRED_INPUT_RESIDUAL ? residual : x;
    return ts_build_ffn_one(c, g, x, u, l->pred_fc1, l->pred_fc2, l->ffn_gate, l->ffn_up, l->ffn_down, NULL);
}
