// moe-ops.c: the mixture-of-experts ops (ggml-sparse.h) on the CPU.
//
// A routing node sorts each batch's (token, chosen expert) pairs by expert; the token rows
// are gathered into that order once (ggml_get_rows), and every later node works on each
// expert's contiguous range of pairs with that expert's slice of the stacked weights. So a
// token reads only its experts' rows, and the tokens of a batch that chose the same expert
// read its rows together: the sub-batch machinery of the sparse ops (ops.c) runs on each
// expert's pairs as on the tokens of a dense layer, and each expert's union of rows is read
// once per sub-batch. One node per step of the layer (route, predictor, gate/up, down,
// combine), not one per expert: in decoding the per-node cost is what dominated.
//
// Thread-count independence: every thread walks the experts in the same order and takes a
// share of each expert's work that depends only on ith/nth; each output element is written
// by one thread with the same arithmetic whatever nth is.
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "scratch.h"
#include "op-error.h"
#include "ops-internal.h"

#include "ggml.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_EXPERTS 256


// ---- the routing table ---------------------------------------------------------------------
//
// i32 [3 P + X + 1] for P = T k pairs:
//   tok[P]   the token of each pair, pairs sorted by expert, then by token (ggml_get_rows index)
//   off[X+1] expert e's pairs are [off[e], off[e+1])
//   pos[P]   pos[t k + j]: the sorted pair of token t's j-th choice (j by falling probability)
//   wgt[P]   the routing weight of each sorted pair, float bits

static const int32_t * route_off(const struct ggml_tensor * route, int64_t P) {
    return (const int32_t *) route->data + P;
}

static int64_t route_experts(const struct ggml_tensor * route, int64_t P) {
    return route->ne[0] - 3 * P - 1;
}

// Mixtral's routing: softmax over the logits, the top k (ties to the lower expert), their
// probabilities renormalised to sum 1. Small: thread 0 does it all.
static void route_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return;
    }
    const struct ggml_tensor * logits = dst->src[0];
    const int k = (int) (intptr_t) userdata;
    const int64_t X = logits->ne[0], T = logits->ne[1], P = T * k;
    int32_t * tok = dst->data;
    int32_t * off = tok + P;
    int32_t * pos = off + X + 1;
    float   * wgt = (float *) (pos + P);
    char * cur = ts_scratch(2 * ts_carve_size((size_t) P * sizeof(int32_t)));
    int32_t * choice = ts_carve(&cur, (size_t) P * sizeof(int32_t)); // [T][k] expert of each choice
    float   * w_tok  = ts_carve(&cur, (size_t) P * sizeof(float));   // [T][k] its weight
    int32_t count[MAX_EXPERTS] = { 0 };
    for (int64_t t = 0; t < T; t++) {
        const float * l = (const float *) ((const char *) logits->data + t * logits->nb[1]);
        float p[MAX_EXPERTS], mx = -INFINITY;
        bool chosen[MAX_EXPERTS];
        for (int64_t e = 0; e < X; e++) mx = l[e] > mx ? l[e] : mx;
        for (int64_t e = 0; e < X; e++) { p[e] = expf(l[e] - mx); chosen[e] = false; }
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < X; e++) {
                if (!chosen[e] && (best < 0 || p[e] > p[best])) best = e;
            }
            chosen[best] = true;
            choice[t * k + j] = (int32_t) best;
            sum += p[best];
            count[best]++;
        }
        for (int j = 0; j < k; j++) w_tok[t * k + j] = p[choice[t * k + j]] / sum;
    }
    // counting sort by expert, stable: tokens ascending within an expert
    int32_t fill[MAX_EXPERTS];
    off[0] = 0;
    for (int64_t e = 0; e < X; e++) {
        fill[e] = off[e];
        off[e + 1] = off[e] + count[e];
    }
    for (int64_t i = 0; i < P; i++) {
        const int32_t s = fill[choice[i]]++;
        tok[s] = (int32_t) (i / k);
        pos[i] = s;
        wgt[s] = w_tok[i];
    }
}

struct ggml_tensor * ggml_sparse_moe_route(struct ggml_context * ctx, struct ggml_tensor * logits, int k,
                                           char * err, size_t err_size) {
    if (!logits || logits->type != GGML_TYPE_F32 || logits->ne[2] != 1 || logits->ne[3] != 1 ||
        logits->nb[0] != sizeof(float)) {
        ts_op_fail(err, err_size, "moe route: logits must be f32 [n_expert, T] with contiguous rows");
        return NULL;
    }
    if (logits->ne[0] < 1 || logits->ne[0] > MAX_EXPERTS || k < 1 || k > logits->ne[0]) {
        ts_op_fail(err, err_size, "moe route: %lld experts, %d used: need 1 <= used <= experts <= %d",
             (long long) logits->ne[0], k, MAX_EXPERTS);
        return NULL;
    }
    const int64_t P = logits->ne[1] * k;
    struct ggml_tensor * args[1] = { logits };
    struct ggml_tensor * r = ggml_custom_4d(ctx, GGML_TYPE_I32, 3 * P + logits->ne[0] + 1, 1, 1, 1, args, 1,
                                            route_compute, 1, (void *) (intptr_t) k);
    ggml_set_name(r, "moe_route");
    return r;
}

struct ggml_tensor * ggml_sparse_moe_tokens(struct ggml_context * ctx, struct ggml_tensor * route, int64_t n_pairs) {
    return ggml_view_1d(ctx, route, n_pairs, 0);
}

// ---- checks ---------------------------------------------------------------------------------

// A stacked expert weight [ne0, ne1, n_expert], contiguous, of a type with kernels.
static bool check_experts(const struct ggml_tensor * w, const char * name, int64_t ne0, int64_t ne1,
                          char * err, size_t err_size) {
    enum ts_type tt;
    if (!w) {
        return ts_op_fail(err, err_size, "%s: missing", name);
    }
    if (w->ne[0] != ne0 || (ne1 >= 0 && w->ne[1] != ne1) || w->ne[3] != 1 || !ggml_is_contiguous(w)) {
        return ts_op_fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected a contiguous [%lld, %lld, n_expert]",
                    name, (long long) w->ne[0], (long long) w->ne[1], (long long) w->ne[2], (long long) w->ne[3],
                    (long long) ne0, (long long) (ne1 >= 0 ? ne1 : w->ne[1]));
    }
    if (!ts_kernel_type(w->type, &tt) || !ts_row_ok(tt, ne0)) {
        return ts_op_fail(err, err_size, "%s: type %s has no kernel for the MoE ops (f32, f16, bf16, q8_0, q4_0)",
                    name, ggml_type_name(w->type));
    }
    return true;
}

// Pair activations [n, P] f32 with contiguous rows, and a route over the same P pairs and
// the weight's experts.
static bool check_pairs(const struct ggml_tensor * x, const char * name, int64_t n, const struct ggml_tensor * route,
                        int64_t n_expert, char * err, size_t err_size) {
    if (!x || x->type != GGML_TYPE_F32 || x->ne[0] != n || x->ne[2] != 1 || x->ne[3] != 1 ||
        x->nb[0] != sizeof(float)) {
        return ts_op_fail(err, err_size, "%s: expected f32 [%lld, n_pairs] with contiguous rows", name, (long long) n);
    }
    if (!route || route->type != GGML_TYPE_I32 || route_experts(route, x->ne[1]) != n_expert) {
        return ts_op_fail(err, err_size, "%s: the route is not over %lld pairs and %lld experts", name,
                    (long long) x->ne[1], (long long) n_expert);
    }
    return true;
}

// A 2-D view of expert e's slice of a stacked weight, made on the stack for the 2-D bodies.
static struct ggml_tensor expert_slice(const struct ggml_tensor * w, int64_t e) {
    struct ggml_tensor s = *w;
    s.data  = (char *) w->data + e * w->nb[2];
    s.ne[2] = 1;
    return s;
}

// Rows [r0, r0 + n) of a [ne0, P] tensor, as a tensor of its own.
static struct ggml_tensor pair_rows(const struct ggml_tensor * t, int64_t r0, int64_t n) {
    struct ggml_tensor s = *t;
    s.data  = (char *) t->data + r0 * t->nb[1];
    s.ne[1] = n;
    return s;
}

// ---- dense products per expert ------------------------------------------------------------

// dst y [rows, P]: y_p = W_e x_p for each pair p of expert e. Each thread quantises every
// pair's x, then takes its slice of each expert's rows (in whole 16-row tiles).
static void matmul_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * x = dst->src[1];
    const struct ggml_tensor * route = dst->src[2];
    const int64_t n = w->ne[0], rows = w->ne[1], X = w->ne[2], P = x->ne[1];
    const int64_t n_chunks = (rows + TS_R16 - 1) / TS_R16;
    const int64_t r0 = n_chunks * ith / nth * TS_R16;
    const int64_t r1 = n_chunks * (ith + 1) / nth * TS_R16 < rows ? n_chunks * (ith + 1) / nth * TS_R16 : rows;
    if (r1 <= r0) {
        return;
    }
    enum ts_type tt = TS_TYPE_F32;
    ts_kernel_type(w->type, &tt);
    const struct ts_kernels * k = ts_kernels_best();
    const char * xd = x->data;
    size_t x_stride = x->nb[1];
    if (ts_dot_type(tt) == TS_TYPE_Q8_0) {
        x_stride = ts_row_size(TS_TYPE_Q8_0, n);
        char * q = ts_scratch(x_stride * (size_t) P);
        for (int64_t p = 0; p < P; p++) {
            k->quantize_q8_0((const float *) ((const char *) x->data + p * x->nb[1]), (ts_block_q8_0 *) (q + p * x_stride), n);
        }
        xd = q;
    }
    const int32_t * off = route_off(route, P);
    const size_t row_bytes = w->nb[1];
    const int64_t y_stride = (int64_t) (dst->nb[1] / sizeof(float));
    for (int64_t e = 0; e < X; e++) {
        const int64_t n_e = off[e + 1] - off[e];
        if (n_e == 0) {
            continue;
        }
        const char * we = (const char *) w->data + e * w->nb[2] + r0 * row_bytes;
        const char * xe = xd + off[e] * x_stride;
        float * ye = (float *) dst->data + off[e] * y_stride + r0;
        if (n_e == 1) { // the single-token kernel, which the batch kernels match bit for bit
            k->dot_rows(tt, n, we, row_bytes, xe, NULL, r1 - r0, ye);
        } else {
            ts_dot_rows_blocked(k, tt, n, we, row_bytes, xe, x_stride, n_e, NULL, r1 - r0, ye, y_stride);
        }
    }
}

struct ggml_tensor * ggml_sparse_moe_matmul(struct ggml_context * ctx, struct ggml_tensor * w, struct ggml_tensor * x,
                                            struct ggml_tensor * route, char * err, size_t err_size) {
    if (!check_experts(w, "moe matmul: W", x ? x->ne[0] : 0, -1, err, err_size) ||
        !check_pairs(x, "moe matmul: x", w->ne[0], route, w->ne[2], err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[3] = { w, x, route };
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], 1, 1, args, 3,
                                            matmul_compute, GGML_N_TASKS_MAX, NULL);
    const char * wn = w->name;
    if (strncmp(wn, "blk.", 4) == 0 && strchr(wn + 4, '.')) {
        wn = strchr(wn + 4, '.') + 1;
    }
    ggml_format_name(y, "moe_matmul %s", wn);
    return y;
}

// ---- sparse gate/up and down per expert ------------------------------------------------------

struct moe_gate_up_op {
    struct gate_up_op base; // its stats is NULL: the MoE node counts for all experts at once
    struct ggml_sparse_stats * stats;
    int k;
};

// dst a [n_ff, P]; src: w_gate, w_up [n_embd, n_ff, X], x [n_embd, P], route, logits [n_ff, P].
static void gate_up_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct moe_gate_up_op * op = userdata;
    const struct ggml_tensor * wg = dst->src[0], * wu = dst->src[1], * x = dst->src[2], * route = dst->src[3];
    const struct ggml_tensor * lg = op->base.predicted ? dst->src[4] : NULL;
    const int64_t X = wg->ne[2], P = x->ne[1];
    const int32_t * off = route_off(route, P);
    int64_t n_computed = 0;
    for (int64_t e = 0; e < X; e++) {
        const int64_t n_e = off[e + 1] - off[e];
        if (n_e == 0) {
            continue;
        }
        struct ggml_tensor wg_e = expert_slice(wg, e), wu_e = expert_slice(wu, e);
        struct ggml_tensor x_e = pair_rows(x, off[e], n_e), a_e = pair_rows(dst, off[e], n_e);
        struct ggml_tensor lg_e = lg ? pair_rows(lg, off[e], n_e) : x_e;
        n_computed += ts_gate_up_run(&op->base, &wg_e, &wu_e, &x_e, lg ? &lg_e : NULL, &a_e, ith, nth, NULL);
    }
    if (op->stats) {
        __atomic_fetch_add(&op->stats->neurons_computed, n_computed, __ATOMIC_RELAXED);
        if (ith == 0) {
            // as X per-expert nodes over all T tokens would count (ts_context_get_stats scales
            // the total by n_expert_used / n_expert): the share is of the routed neurons
            const int64_t T = P / op->k;
            __atomic_fetch_add(&op->stats->neurons_total, wg->ne[1] * T * X, __ATOMIC_RELAXED);
            __atomic_fetch_add(&op->stats->tokens, T * X, __ATOMIC_RELAXED);
        }
    }
}

struct ggml_tensor * ggml_sparse_moe_gate_up(struct ggml_context * ctx, struct ggml_tensor * w_gate,
                                             struct ggml_tensor * w_up, struct ggml_tensor * x,
                                             struct ggml_tensor * logits, struct ggml_tensor * route, int k,
                                             enum ggml_sparse_ffn_kind kind, float threshold,
                                             struct ggml_sparse_stats * stats, char * err, size_t err_size) {
    if (kind != GGML_SPARSE_FFN_REGLU && kind != GGML_SPARSE_FFN_DRELU) {
        ts_op_fail(err, err_size, "moe gate/up: only ReGLU and dReLU experts have natural zeros");
        return NULL;
    }
    if (!check_experts(w_gate, "moe gate/up: w_gate", x ? x->ne[0] : 0, -1, err, err_size) ||
        !check_experts(w_up, "moe gate/up: w_up", w_gate->ne[0], w_gate->ne[1], err, err_size) ||
        !check_pairs(x, "moe gate/up: x", w_gate->ne[0], route, w_gate->ne[2], err, err_size)) {
        return NULL;
    }
    if (w_up->type != w_gate->type || w_up->ne[2] != w_gate->ne[2]) {
        ts_op_fail(err, err_size, "moe gate/up: w_up differs from w_gate in type or experts");
        return NULL;
    }
    if (logits && (!check_pairs(logits, "moe gate/up: logits", w_gate->ne[1], route, w_gate->ne[2], err, err_size) ||
                   logits->ne[1] != x->ne[1] || isnan(threshold))) {
        ts_op_fail(err, err_size, "moe gate/up: logits must be [n_ff, n_pairs] like x, threshold not NaN");
        return NULL;
    }
    if (k < 1 || x->ne[1] % k != 0) {
        ts_op_fail(err, err_size, "moe gate/up: %lld pairs is not a multiple of %d experts per token",
             (long long) x->ne[1], k);
        return NULL;
    }
    struct moe_gate_up_op * op = ggml_new_buffer(ctx, sizeof(*op));
    op->base = (struct gate_up_op) { .act = kind == GGML_SPARSE_FFN_DRELU ? TS_ACT_DRELU : TS_ACT_REGLU,
                                     .threshold = threshold, .predicted = logits != NULL,
                                     .sub_batch = ts_sub_batch_setting(), .stats = NULL };
    op->stats = stats;
    op->k = k;
    struct ggml_tensor * args[5] = { w_gate, w_up, x, route, logits };
    struct ggml_tensor * a = ggml_custom_4d(ctx, GGML_TYPE_F32, w_gate->ne[1], x->ne[1], 1, 1, args, logits ? 5 : 4,
                                            gate_up_compute, GGML_N_TASKS_MAX, op);
    ggml_format_name(a, "moe_gate_up%s", logits ? "" : "_exact");
    return a;
}

// dst y [n_embd, P]; src: w_down_t [n_embd, n_ff, X], a [n_ff, P], route.
static void down_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct ggml_tensor * w = dst->src[0], * a = dst->src[1], * route = dst->src[2];
    const int64_t X = w->ne[2], P = a->ne[1];
    const int32_t * off = route_off(route, P);
    for (int64_t e = 0; e < X; e++) {
        const int64_t n_e = off[e + 1] - off[e];
        if (n_e == 0) {
            continue;
        }
        struct ggml_tensor w_e = expert_slice(w, e), a_e = pair_rows(a, off[e], n_e);
        struct ggml_tensor y_e = pair_rows(dst, off[e], n_e);
        ts_down_run(&w_e, &a_e, &y_e, (int) (intptr_t) userdata, ith, nth);
    }
}

struct ggml_tensor * ggml_sparse_moe_down(struct ggml_context * ctx, struct ggml_tensor * w_down_t,
                                          struct ggml_tensor * a, struct ggml_tensor * route,
                                          char * err, size_t err_size) {
    if (!check_experts(w_down_t, "moe down: w_down_t", w_down_t ? w_down_t->ne[0] : 0, -1, err, err_size) ||
        !check_pairs(a, "moe down: a", w_down_t->ne[1], route, w_down_t->ne[2], err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[3] = { w_down_t, a, route };
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w_down_t->ne[0], a->ne[1], 1, 1, args, 3,
                                            down_compute, GGML_N_TASKS_MAX,
                                            (void *) (intptr_t) ts_sub_batch_setting());
    ggml_set_name(y, "moe_down");
    return y;
}

// ---- weighted sum per token ----------------------------------------------------------------

// dst [n_embd, T]: token t's sum over its choices j = 0..k-1 (in that order) of weight * y.
static void combine_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const int k = (int) (intptr_t) userdata;
    const struct ggml_tensor * y = dst->src[0], * route = dst->src[1];
    const int64_t n = y->ne[0], P = y->ne[1], T = P / k, X = route_experts(route, P);
    const int32_t * pos = route_off(route, P) + X + 1;
    const float   * wgt = (const float *) (pos + P);
    int64_t c0, c1;
    ts_split_cols(n, ith, nth, &c0, &c1);
    for (int64_t t = 0; t < T; t++) {
        float * o = (float *) ((char *) dst->data + t * dst->nb[1]);
        for (int j = 0; j < k; j++) {
            const int32_t p = pos[t * k + j];
            const float w = wgt[p];
            const float * yp = (const float *) ((const char *) y->data + p * y->nb[1]);
            if (j == 0) {
                for (int64_t c = c0; c < c1; c++) o[c] = w * yp[c];
            } else {
                for (int64_t c = c0; c < c1; c++) o[c] += w * yp[c];
            }
        }
    }
}

struct ggml_tensor * ggml_sparse_moe_combine(struct ggml_context * ctx, struct ggml_tensor * y,
                                             struct ggml_tensor * route, int k, char * err, size_t err_size) {
    if (!y || y->type != GGML_TYPE_F32 || y->nb[0] != sizeof(float) || k < 1 || y->ne[1] % k != 0 ||
        !route || route->type != GGML_TYPE_I32 || route_experts(route, y->ne[1]) < k) {
        ts_op_fail(err, err_size, "moe combine: y must be f32 [n_embd, T * %d] over the route's pairs", k);
        return NULL;
    }
    struct ggml_tensor * args[2] = { y, route };
    struct ggml_tensor * out = ggml_custom_4d(ctx, GGML_TYPE_F32, y->ne[0], y->ne[1] / k, 1, 1, args, 2,
                                              combine_compute, GGML_N_TASKS_MAX, (void *) (intptr_t) k);
    ggml_set_name(out, "moe_combine");
    return out;
}
