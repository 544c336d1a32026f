// moe.c: the Mixtral mixture-of-experts FFN. Routing as Mixtral: softmax over the router
// logits, top-k experts, their weights renormalised to sum 1.
//
// Three ways to build it:
//   - dense SwiGLU experts with a standard down projection where ggml's kernels beat ours on
//     this CPU (ggml_sparse_matmul_preferred, src/matmul.c): ggml_mul_mat_id as in llama.cpp, on
//     ggml's repacked layout (repack.c). Where ours are faster (AVX-512) they go through the MoE
//     ops like the rest: measured on the Mixtral shape (bench_moe.py, Q4_0, 128-token prefill)
//     ggml's mul_mat_id of this ggml ran at 0.7x llama.cpp's, the MoE ops' dense matmuls at 2x;
//   - every other case whose expert weights have kernels (F32/F16/BF16/Q8_0/Q4_0): the MoE
//     ops of ggml-sparse.h, one node per step of the layer over the (token, expert) pairs
//     sorted by expert, so each token reads only its two experts (and their predictors), and
//     a batch reads each expert's rows once per sub-batch of the tokens that chose it;
//   - else (types without kernels) each expert's FFN through ts_build_ffn_one on its own 2-D
//     weight slices, on the batch with the tokens not routed to it zeroed: a zero input makes
//     no neuron active (no biases), so the sparse op reads (almost) nothing for them, and their
//     output is weighted by 0 anyway. In predicted mode a zero input still gives predictor
//     logits of 0, which pass a negative threshold: those tokens' logits get -INFINITY added,
//     so that no neuron is computed (or counted in the density) for a token the expert does
//     not serve.
#include "ffn.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

// dst [n, 2 n_expert] from router logits src[0] [n_expert, n]: row e holds expert e's weight of
// each token (0 when not routed), row n_expert + e the predictor logit bias (0 when routed,
// else -INFINITY). k in userdata. Ties go to the lower expert index.
static void route_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct ggml_tensor * logits = dst->src[0];
    const int k = (int) (intptr_t) userdata;
    const int64_t X = logits->ne[0], n = logits->ne[1];
    float p[256];
    int chosen[256];
    for (int64_t t = ith; t < n; t += nth) {
        const float * l = (const float *) ((const char *) logits->data + t * logits->nb[1]);
        float mx = -INFINITY;
        for (int64_t e = 0; e < X; e++) mx = l[e] > mx ? l[e] : mx;
        for (int64_t e = 0; e < X; e++) { p[e] = expf(l[e] - mx); chosen[e] = 0; }
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < X; e++) {
                if (!chosen[e] && (best < 0 || p[e] > p[best])) best = e;
            }
            chosen[best] = 1;
            sum += p[best];
        }
        for (int64_t e = 0; e < X; e++) {
            float * w = (float *) ((char *) dst->data + e * dst->nb[1]) + t;
            float * b = (float *) ((char *) dst->data + (X + e) * dst->nb[1]) + t;
            *w = chosen[e] ? p[e] / sum : 0.0f;
            *b = chosen[e] ? 0.0f : -INFINITY;
        }
    }
}

static struct ggml_tensor * slice(struct ggml_context * g, struct ggml_tensor * t, int64_t e) {
    return t ? ggml_view_2d(g, t, t->ne[0], t->ne[1], t->nb[1], t->nb[2] * e) : NULL;
}

static struct ggml_tensor * moe_per_expert(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                           struct ggml_tensor * x, struct ggml_tensor * residual) {
    const struct ts_model_meta * h = &c->model->meta;
    const int64_t n = x->ne[1];
    struct ggml_tensor * router = ggml_sparse_mul_mat(g, l->ffn_gate_inp, x); // [n_expert, n]
    struct ggml_tensor * args[1] = { router };
    struct ggml_tensor * route = ggml_custom_4d(g, GGML_TYPE_F32, n, 2 * h->n_expert, 1, 1, args, 1, route_op,
                                                GGML_N_TASKS_MAX, (void *) (intptr_t) h->n_expert_used);
    struct ggml_tensor * u_all = h->predictor_input == TS_PRED_INPUT_RESIDUAL ? residual : x;
    struct ggml_tensor * out = NULL;
    for (int64_t e = 0; e < h->n_expert; e++) {
        struct ggml_tensor * w = ggml_view_2d(g, route, 1, n, sizeof(float), route->nb[1] * e); // [1, n]
        struct ggml_tensor * bias = ggml_view_2d(g, route, 1, n, sizeof(float), route->nb[1] * (h->n_expert + e));
        struct ggml_tensor * on = ggml_step(g, w);
        struct ggml_tensor * xe = ggml_mul(g, x, on);
        struct ggml_tensor * ue = u_all == x ? xe : ggml_mul(g, u_all, on);
        struct ggml_tensor * y = ts_build_ffn_one(c, g, xe, ue, slice(g, l->pred_fc1, e), slice(g, l->pred_fc2, e),
                                                  slice(g, l->ffn_gate, e), slice(g, l->ffn_up, e), slice(g, l->ffn_down, e), bias);
        if (!y) return NULL;
        y = ggml_mul(g, y, w);
        out = out ? ggml_add(g, out, y) : y;
    }
    return out;
}

static struct ggml_tensor * moe_dense(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                      struct ggml_tensor * x) {
    const struct ts_model_meta * h = &c->model->meta;
    const int64_t n = x->ne[1], X = h->n_expert, k = h->n_expert_used;
    struct ggml_tensor * probs = ggml_soft_max(g, ggml_sparse_mul_mat(g, l->ffn_gate_inp, x)); // [X, n]
    struct ggml_tensor * ids = ggml_argsort_top_k(g, probs, (int) k);                 // [k, n] i32
    struct ggml_tensor * w = ggml_get_rows(g, ggml_reshape_3d(g, probs, 1, X, n), ids); // [1, k, n]
    w = ggml_reshape_2d(g, w, k, n);
    w = ggml_div(g, w, ggml_sum_rows(g, w));
    w = ggml_reshape_3d(g, w, 1, k, n);

    struct ggml_tensor * x3 = ggml_reshape_3d(g, x, h->n_embd, 1, n);
    struct ggml_tensor * gate = ggml_mul_mat_id(g, l->ffn_gate, x3, ids); // [n_ff, k, n]
    struct ggml_tensor * up = ggml_mul_mat_id(g, l->ffn_up, x3, ids);
    struct ggml_tensor * a;
    switch (h->ffn_kind) {
        case TS_FFN_SWIGLU: a = ggml_swiglu_split(g, gate, up); break;
        case TS_FFN_REGLU:  a = ggml_reglu_split(g, gate, up); break;
        default:            a = ggml_mul(g, ggml_relu(g, gate), ggml_relu(g, up)); break;
    }
    struct ggml_tensor * ys = ggml_mul(g, ggml_mul_mat_id(g, l->ffn_down, a, ids), w); // [n_embd, k, n]
    struct ggml_tensor * out = NULL;
    for (int64_t j = 0; j < k; j++) {
        struct ggml_tensor * y = ggml_view_2d(g, ys, h->n_embd, n, ys->nb[2], ys->nb[1] * j);
        out = out ? ggml_add(g, out, y) : y;
    }
    return k == 1 ? ggml_cont(g, out) : out;
}

static bool has_kernel(const struct ggml_tensor * t) {
    switch (t ? t->type : GGML_TYPE_COUNT) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: case GGML_TYPE_Q8_0: case GGML_TYPE_Q4_0:
            return true;
        default:
            return false;
    }
}

// Whether the MoE ops can read every expert weight this mode reads.
static bool fused_ok(const struct ts_context * c, const struct ts_layer * l) {
    const bool predicted = c->ffn_mode == TS_FFN_MODE_PREDICTED;
    return has_kernel(l->ffn_gate) && has_kernel(l->ffn_up) && has_kernel(l->ffn_down) &&
           (!predicted || (has_kernel(l->pred_fc1) && has_kernel(l->pred_fc2)));
}

static struct ggml_tensor * dense_act(struct ggml_context * g, enum ts_ffn_kind kind, struct ggml_tensor * gate,
                                      struct ggml_tensor * up) {
    switch (kind) {
        case TS_FFN_SWIGLU: return ggml_swiglu_split(g, gate, up);
        case TS_FFN_REGLU:  return ggml_reglu_split(g, gate, up);
        default:            return ggml_mul(g, ggml_relu(g, gate), ggml_relu(g, up));
    }
}

static struct ggml_tensor * moe_fused(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                      struct ggml_tensor * x, struct ggml_tensor * residual) {
    const struct ts_model_meta * h = &c->model->meta;
    const int k = h->n_expert_used;
    const int64_t P = x->ne[1] * k;
    char * err = c->err;
    const size_t es = sizeof(c->err);
    struct ggml_tensor * route = ggml_sparse_moe_route(g, ggml_sparse_mul_mat(g, l->ffn_gate_inp, x), k, err, es);
    if (!route) return NULL;
    struct ggml_tensor * tok = ggml_sparse_moe_tokens(g, route, P);
    struct ggml_tensor * xp = ggml_get_rows(g, x, tok); // [n_embd, P]
    struct ggml_tensor * a;
    if (c->ffn_mode == TS_FFN_MODE_DENSE) {
        struct ggml_tensor * gate = ggml_sparse_moe_matmul(g, l->ffn_gate, xp, route, err, es);
        struct ggml_tensor * up = gate ? ggml_sparse_moe_matmul(g, l->ffn_up, xp, route, err, es) : NULL;
        a = up ? dense_act(g, h->ffn_kind, gate, up) : NULL;
    } else {
        struct ggml_tensor * logits = NULL;
        if (c->ffn_mode == TS_FFN_MODE_PREDICTED) {
            struct ggml_tensor * up = h->predictor_input == TS_PRED_INPUT_RESIDUAL ? ggml_get_rows(g, residual, tok) : xp;
            struct ggml_tensor * hid = ggml_sparse_moe_matmul(g, l->pred_fc1, up, route, err, es);
            logits = hid ? ggml_sparse_moe_matmul(g, l->pred_fc2, ggml_relu(g, hid), route, err, es) : NULL;
            if (!logits) return NULL;
        }
        a = ggml_sparse_moe_gate_up(g, l->ffn_gate, l->ffn_up, xp, logits, route, k, (enum ggml_sparse_ffn_kind) h->ffn_kind,
                                    c->threshold, &c->sparse_stats, err, es);
    }
    if (!a) return NULL;
    struct ggml_tensor * y = h->down_neuron_major ? ggml_sparse_moe_down(g, l->ffn_down, a, route, err, es)
                                                  : ggml_sparse_moe_matmul(g, l->ffn_down, a, route, err, es);
    return y ? ggml_sparse_moe_combine(g, y, route, k, err, es) : NULL;
}

bool ts_moe_experts_ours(const struct ts_layer * l) {
    const struct ggml_tensor * w[3] = { l->ffn_gate, l->ffn_up, l->ffn_down };
    for (int i = 0; i < 3; i++) {
        if (!w[i]) return false;
        struct ggml_tensor slice = *w[i]; // one expert's 2-D slice: what the policy judges
        slice.ne[2] = 1;
        slice.nb[3] = slice.nb[2];
        if (!ggml_sparse_matmul_preferred(&slice)) return false;
    }
    return true;
}

struct ggml_tensor * ts_build_moe(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                  struct ggml_tensor * x, struct ggml_tensor * residual) {
    const struct ts_model_meta * h = &c->model->meta;
    if (c->ffn_mode == TS_FFN_MODE_DENSE && !h->down_neuron_major && h->ffn_kind == TS_FFN_SWIGLU &&
        !ts_moe_experts_ours(l)) {
        return moe_dense(c, g, l, x);
    }
    if (fused_ok(c, l) && getenv("TURBOSPARSE_MOE_PER_EXPERT") == NULL) {
        return moe_fused(c, g, l, x, residual);
    }
    if (c->ffn_mode == TS_FFN_MODE_DENSE && !h->down_neuron_major) {
        return moe_dense(c, g, l, x);
    }
    return moe_per_expert(c, g, l, x, residual);
}
