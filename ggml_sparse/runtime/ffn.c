// ffn.c: the feed-forward block of a dense layer: which tensors feed the sparse FFN op and
// what the predictor sees (turbosparse.predictor.input).
#include "ffn.h"

#include <stdio.h>

// The FFN from plain ggml ops, predicted mode as a mask on the dense result (same values as
// the sparse op, none of its speed): the fallback while ggml_sparse_ffn is unavailable.
static struct ggml_tensor * ffn_plain(struct ts_context * c, struct ggml_context * g,
                                      struct ggml_tensor * x, struct ggml_tensor * u,
                                      struct ggml_tensor * fc1, struct ggml_tensor * fc2,
                                      struct ggml_tensor * w_gate, struct ggml_tensor * w_up,
                                      struct ggml_tensor * w_down) {
    const struct ts_model_meta * h = &c->model->meta;
    struct ggml_tensor * gate = ggml_mul_mat(g, w_gate, x);
    struct ggml_tensor * up = ggml_mul_mat(g, w_up, x);
    struct ggml_tensor * a;
    switch (h->ffn_kind) {
        case TS_FFN_SWIGLU: a = ggml_swiglu_split(g, gate, up); break;
        case TS_FFN_REGLU:  a = ggml_reglu_split(g, gate, up); break;
        default:            a = ggml_mul(g, ggml_relu(g, gate), ggml_relu(g, up)); break;
    }
    if (c->ffn_mode == TS_FFN_MODE_PREDICTED) {
        struct ggml_tensor * logits = ggml_mul_mat(g, fc2, ggml_relu(g, ggml_mul_mat(g, fc1, u)));
        struct ggml_tensor * keep = ggml_step(g, ggml_scale_bias(g, logits, 1.0f, -c->threshold));
        a = ggml_mul(g, a, keep);
    }
    if (h->down_neuron_major) {
        // y = sum_i a_i * w_down_t[i]: an outer product over the neuron axis
        return ggml_out_prod(g, w_down, ggml_cont(g, ggml_transpose(g, a)));
    }
    return ggml_mul_mat(g, w_down, a);
}

struct ggml_tensor * ts_build_ffn_one(struct ts_context * c, struct ggml_context * g,
                                      struct ggml_tensor * x, struct ggml_tensor * u,
                                      struct ggml_tensor * fc1, struct ggml_tensor * fc2,
                                      struct ggml_tensor * w_gate, struct ggml_tensor * w_up,
                                      struct ggml_tensor * w_down) {
    return ffn_plain(c, g, x, u, fc1, fc2, w_gate, w_up, w_down);
}

struct ggml_tensor * ts_build_ffn(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                  struct ggml_tensor * x, struct ggml_tensor * residual) {
    if (c->model->meta.n_expert > 0) {
        return ts_build_moe(c, g, l, x, residual);
    }
    struct ggml_tensor * u = c->model->meta.predictor_input == TS_PRED_INPUT_RESIDUAL ? residual : x;
    return ts_build_ffn_one(c, g, x, u, l->pred_fc1, l->pred_fc2, l->ffn_gate, l->ffn_up, l->ffn_down);
}
