// threshold.c: the threshold-mode (CATS) up node of SwiGLU FFNs (ggml-sparse.h,
// ggml_sparse_up_threshold): a = s * (W_up x) for the neurons whose |s| = |silu(W_gate x)|
// reaches the layer's threshold, 0 elsewhere, so that the down node (which skips zeros)
// reads only those neurons' rows. The gate and silu are ggml nodes before this one.
//
// Threads split the neurons: thread ith owns [n_ff ith / nth, n_ff (ith + 1) / nth) of every
// token, gathers the selected rows of its share and runs dot_rows on them (a prompt's tokens
// in sub-batches through dot_rows_batch, which gives the same bits), so each a[i] is one
// dot_rows result times s[i] whoever computes it and however the tokens are batched. Every
// type with a kernel (ts_kernel_type: F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K) takes it; other
// types are dequantised a row at a time and go through the F32 kernel (slow: Q4_K rows took
// that path before and the up node cost 2x a dense FFN's up).
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "scratch.h"
#include "op-error.h"
#include "ops-internal.h"

#include "ggml.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

struct up_threshold_op {
    float                         threshold;
    struct ggml_sparse_stats    * stats;
    struct ggml_sparse_act_hist * hist;
};


float ggml_sparse_act_hist_edge(int32_t bin) {
    if (bin <= 0) return 0.0f;
    if (bin >= GGML_SPARSE_ACT_HIST_BINS) return INFINITY; // bin 32767 starts at NaNs; nothing is above
    const uint32_t bits = (uint32_t) bin << 16;
    float v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

static int32_t hist_bin(float v) {
    uint32_t bits;
    v = fabsf(v);
    memcpy(&bits, &v, sizeof(bits));
    return (int32_t) (bits >> 16);
}

// Tokens per sub-batch of a prompt (T > 1): a sub-batch reads each row of its union once
// (dot_rows_batch) instead of once per token. At 50% sparsity the union of 32 tokens is
// nearly every row of the share, so it computes about twice the products it keeps, for a
// 16x cut in row reads; batch kernels give dot_rows' bits, so results do not change.
#define SUB_BATCH 32

struct up_share {
    const struct ts_kernels * k;
    enum ts_type type;
    bool fast, quantised; // quantised: x goes to the kernels in the dot type (Q8_0 / Q8_K)
    ggml_to_float_t to_float;
    int64_t n_embd;
    size_t x_bytes;
    const struct ggml_tensor * w, * x, * s;
    struct ggml_tensor * a;
};

static const float * row_of(const struct ggml_tensor * t, int64_t i) {
    return (const float *) ((const char *) t->data + i * t->nb[1]);
}

static void load_x(const struct up_share * u, int64_t t, void * dst) {
    if (u->quantised) ts_quantize_dot(u->k, u->type, row_of(u->x, t), dst, u->n_embd);
    else              memcpy(dst, row_of(u->x, t), (size_t) u->n_embd * sizeof(float));
}

// One token, neurons idx[0..n_sel): a[idx[j]] = s[idx[j]] * dot(W_up[idx[j]], x_t).
static void up_one(const struct up_share * u, int64_t t, const int32_t * idx, int64_t n_sel,
                   void * xd, float * out, float * deq) {
    const float * st = row_of(u->s, t);
    float * at = (float *) row_of(u->a, t);
    if (u->fast) {
        load_x(u, t, xd);
        u->k->dot_rows(u->type, u->n_embd, u->w->data, u->w->nb[1], xd, idx, n_sel, out);
    } else {
        for (int64_t j = 0; j < n_sel; j++) {
            u->to_float((const char *) u->w->data + (size_t) idx[j] * u->w->nb[1], deq, u->n_embd);
            u->k->dot_rows(TS_TYPE_F32, u->n_embd, deq, 0, row_of(u->x, t), NULL, 1, out + j);
        }
    }
    for (int64_t j = 0; j < n_sel; j++) {
        at[idx[j]] = st[idx[j]] * out[j];
    }
}

// dst a [n_ff, T]; src: w_up [n_embd, n_ff], x [n_embd, T], s [n_ff, T].
static void up_threshold_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct up_threshold_op * op = userdata;
    const struct ggml_tensor * w = dst->src[0], * x = dst->src[1], * s = dst->src[2];
    const int64_t n_embd = w->ne[0], n_ff = w->ne[1], T = x->ne[1];
    const int64_t i0 = n_ff * ith / nth, i1 = n_ff * (ith + 1) / nth;
    if (i1 <= i0) return;

    struct up_share u = { .k = ts_kernels_best(), .n_embd = n_embd, .w = w, .x = x, .s = s, .a = dst };
    u.fast = ts_kernel_type(w->type, &u.type);
    u.quantised = u.fast && ts_dot_type(u.type) != TS_TYPE_F32;
    u.to_float = u.fast ? NULL : ggml_get_type_traits(w->type)->to_float;
    u.x_bytes = u.fast ? ts_row_size(ts_dot_type(u.type), n_embd) : (size_t) n_embd * sizeof(float);
    const int64_t share = i1 - i0;
    const int64_t cap = u.fast && T > 1 ? (T < SUB_BATCH ? T : SUB_BATCH) : 1;
    char * cur = ts_scratch(ts_carve_size((size_t) cap * u.x_bytes) + ts_carve_size((size_t) share * sizeof(int32_t)) +
                            ts_carve_size((size_t) (cap * share) * sizeof(float)) +
                            ts_carve_size((size_t) share) +
                            ts_carve_size(u.fast ? 0 : (size_t) n_embd * sizeof(float)));
    char    * xd   = ts_carve(&cur, (size_t) cap * u.x_bytes);
    int32_t * idx  = ts_carve(&cur, (size_t) share * sizeof(int32_t));
    float   * out  = ts_carve(&cur, (size_t) (cap * share) * sizeof(float));
    uint8_t * used = ts_carve(&cur, (size_t) share);
    float   * deq  = ts_carve(&cur, u.fast ? 0 : (size_t) n_embd * sizeof(float));

    int64_t n_computed = 0;
    for (int64_t t0 = 0; t0 < T; t0 += cap) {
        const int64_t n_tok = T - t0 < cap ? T - t0 : cap;
        // selection (and zeros elsewhere) for the sub-batch's tokens; the union of their rows
        memset(used, 0, (size_t) share);
        int64_t n_sel = 0;
        for (int64_t t = t0; t < t0 + n_tok; t++) {
            const float * st = row_of(s, t);
            float * at = (float *) row_of(dst, t);
            for (int64_t i = i0; i < i1; i++) {
                const bool in = fabsf(st[i]) >= op->threshold;
                at[i] = 0.0f;
                used[i - i0] |= in;
                n_sel += in;
            }
            if (op->hist) {
                for (int64_t i = i0; i < i1; i++) {
                    __atomic_fetch_add(&op->hist->counts[hist_bin(st[i])], 1, __ATOMIC_RELAXED);
                }
            }
        }
        n_computed += n_sel;
        if (n_sel == 0) continue;
        if (n_tok == 1) {
            int64_t m = 0;
            for (int64_t i = i0; i < i1; i++) {
                if (used[i - i0]) idx[m++] = (int32_t) i;
            }
            up_one(&u, t0, idx, m, xd, out, deq);
            continue;
        }
        int64_t n_union = 0;
        for (int64_t i = i0; i < i1; i++) {
            if (used[i - i0]) idx[n_union++] = (int32_t) i;
        }
        for (int64_t j = 0; j < n_tok; j++) load_x(&u, t0 + j, xd + j * u.x_bytes);
        u.k->dot_rows_batch(u.type, n_embd, w->data, w->nb[1], xd, u.x_bytes, n_tok, idx, n_union, out, n_union);
        for (int64_t j = 0; j < n_tok; j++) {
            const float * st = row_of(s, t0 + j);
            float * at = (float *) row_of(dst, t0 + j);
            for (int64_t m = 0; m < n_union; m++) {
                const int32_t i = idx[m];
                if (fabsf(st[i]) >= op->threshold) at[i] = st[i] * out[j * n_union + m];
            }
        }
    }
    if (op->stats) {
        __atomic_fetch_add(&op->stats->neurons_computed, n_computed, __ATOMIC_RELAXED);
        if (ith == 0) {
            __atomic_fetch_add(&op->stats->neurons_total, n_ff * T, __ATOMIC_RELAXED);
            __atomic_fetch_add(&op->stats->tokens, T, __ATOMIC_RELAXED);
        }
    }
}

static bool check_f32_rows(const struct ggml_tensor * t, const char * name, int64_t n0, int64_t T,
                           char * err, size_t err_size) {
    if (!t) return ts_op_fail(err, err_size, "%s: missing", name);
    if (t->type != GGML_TYPE_F32) return ts_op_fail(err, err_size, "%s: type %s, expected f32", name, ggml_type_name(t->type));
    if (t->ne[0] != n0 || t->ne[1] != T || t->ne[2] != 1 || t->ne[3] != 1) {
        return ts_op_fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                    (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                    (long long) n0, (long long) T);
    }
    if (t->nb[0] != sizeof(float)) return ts_op_fail(err, err_size, "%s: rows are not contiguous", name);
    return true;
}

struct ggml_tensor * ggml_sparse_up_threshold(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_up,
        struct ggml_tensor  * x,
        struct ggml_tensor  * s,
        float threshold,
        struct ggml_sparse_stats * stats,
        struct ggml_sparse_act_hist * hist,
        char * err, size_t err_size) {
    if (!w_up) { ts_op_fail(err, err_size, "w_up: missing"); return NULL; }
    if (w_up->ne[2] != 1 || w_up->ne[3] != 1 || !ggml_is_contiguous(w_up)) {
        ts_op_fail(err, err_size, "w_up: must be a contiguous 2-D matrix");
        return NULL;
    }
    enum ts_type tt;
    if (!ts_kernel_type(w_up->type, &tt) && ggml_get_type_traits(w_up->type)->to_float == NULL) {
        ts_op_fail(err, err_size, "w_up: weight type %s cannot be read by the sparse ops (ggml has no to_float for it)",
             ggml_type_name(w_up->type));
        return NULL;
    }
    if (!check_f32_rows(x, "x", w_up->ne[0], x ? x->ne[1] : 0, err, err_size) ||
        !check_f32_rows(s, "s", w_up->ne[1], x->ne[1], err, err_size)) {
        return NULL;
    }
    if (isnan(threshold)) { ts_op_fail(err, err_size, "threshold is NaN"); return NULL; }
    struct up_threshold_op * op = ggml_new_buffer(ctx, sizeof(*op));
    op->threshold = threshold;
    op->stats     = stats;
    op->hist      = hist;
    struct ggml_tensor * args[3] = { w_up, x, s };
    struct ggml_tensor * a = ggml_custom_4d(ctx, GGML_TYPE_F32, w_up->ne[1], x->ne[1], 1, 1, args, 3,
                                            up_threshold_compute, GGML_N_TASKS_MAX, op);
    ggml_set_name(a, "sparse_up_threshold");
    return a;
}
