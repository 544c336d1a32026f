// ops.c: the sparse-FFN ggml ops (ggml-sparse.h) on the CPU.
//
// The builders check their inputs and add nodes; the sparse pieces are ggml_custom_4d nodes
// whose callbacks run on every thread of ggml_graph_compute and split the work by ith/nth.
// All arithmetic is done by the kernel table (ts-kernels.h); weight types without a kernel
// are dequantised row by row through ggml's type traits and go through the F32 kernels.
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "scratch.h"

#include "ggml.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

// ---- errors -------------------------------------------------------------------------------

static bool fail(char * err, size_t err_size, const char * fmt, ...) {
    if (err && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return false;
}

// ---- weight types -------------------------------------------------------------------------

// The kernel type of a ggml type, when the kernels handle it directly.
static bool kernel_type(enum ggml_type type, enum ts_type * out) {
    switch (type) {
        case GGML_TYPE_F32:  *out = TS_TYPE_F32;  return true;
        case GGML_TYPE_F16:  *out = TS_TYPE_F16;  return true;
        case GGML_TYPE_BF16: *out = TS_TYPE_BF16; return true;
        case GGML_TYPE_Q8_0: *out = TS_TYPE_Q8_0; return true;
        case GGML_TYPE_Q4_0: *out = TS_TYPE_Q4_0; return true;
        default:             return false;
    }
}

// How a sparse node reads a weight matrix: with a kernel of its own type, or dequantised
// to f32 row by row (to_float != NULL).
struct weight_reader {
    bool            fast;
    enum ts_type    type;     // the kernel type; F32 for the generic path
    ggml_to_float_t to_float; // generic path only
    int64_t         blck;     // ggml block size (generic path)
    size_t          blck_bytes;
};

static struct weight_reader weight_reader_of(enum ggml_type type) {
    struct weight_reader r = { 0 };
    if (kernel_type(type, &r.type)) {
        r.fast = true;
        return r;
    }
    r.type       = TS_TYPE_F32;
    r.to_float   = ggml_get_type_traits(type)->to_float;
    r.blck       = ggml_blck_size(type);
    r.blck_bytes = ggml_type_size(type);
    return r;
}

static bool sparse_type_ok(const struct ggml_tensor * w, const char * name, char * err, size_t err_size) {
    enum ts_type tt;
    if (kernel_type(w->type, &tt)) {
        return true;
    }
    if ((unsigned) w->type >= GGML_TYPE_COUNT || ggml_get_type_traits(w->type)->to_float == NULL ||
        ggml_blck_size(w->type) <= 0) {
        return fail(err, err_size, "%s: weight type %s cannot be read by the sparse ops (ggml has no to_float for it)",
                    name, ggml_type_name(w->type));
    }
    return true;
}

// ---- shape checks ---------------------------------------------------------------------------

static bool is_2d(const struct ggml_tensor * t) {
    return t->ne[2] == 1 && t->ne[3] == 1;
}

// An f32 activation matrix [n0, T] whose rows (tokens) are contiguous.
static bool check_act(const struct ggml_tensor * t, const char * name, int64_t n0, int64_t T,
                      char * err, size_t err_size) {
    if (!t) {
        return fail(err, err_size, "%s: missing", name);
    }
    if (t->type != GGML_TYPE_F32) {
        return fail(err, err_size, "%s: type %s, expected f32", name, ggml_type_name(t->type));
    }
    if (!is_2d(t) || t->ne[0] != n0 || (T >= 0 && t->ne[1] != T)) {
        return fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                    (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                    (long long) n0, (long long) (T >= 0 ? T : t->ne[1]));
    }
    if (t->nb[0] != sizeof(float)) {
        return fail(err, err_size, "%s: rows are not contiguous", name);
    }
    return true;
}

// A weight matrix of shape [ne0, ne1], contiguous.
static bool check_weight(const struct ggml_tensor * w, const char * name, int64_t ne0, int64_t ne1,
                         char * err, size_t err_size) {
    if (!w) {
        return fail(err, err_size, "%s: missing", name);
    }
    if (!is_2d(w) || w->ne[0] != ne0 || (ne1 >= 0 && w->ne[1] != ne1)) {
        return fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                    (long long) w->ne[0], (long long) w->ne[1], (long long) w->ne[2], (long long) w->ne[3],
                    (long long) ne0, (long long) (ne1 >= 0 ? ne1 : w->ne[1]));
    }
    if (!ggml_is_contiguous(w)) {
        return fail(err, err_size, "%s: not contiguous", name);
    }
    return true;
}

static bool check_predictor(const struct ggml_tensor * fc1, const struct ggml_tensor * fc2,
                            const struct ggml_tensor * u, int64_t n_embd, int64_t n_ff, int64_t T,
                            char * err, size_t err_size) {
    if (!fc1 || !fc2 || !u) {
        return fail(err, err_size, "%s: missing (the predictor needs u, fc1 and fc2)",
                    !u ? "u" : !fc1 ? "fc1" : "fc2");
    }
    if (!check_act(u, "u", n_embd, T, err, err_size) ||
        !check_weight(fc1, "fc1", n_embd, -1, err, err_size) ||
        !check_weight(fc2, "fc2", fc1->ne[1], n_ff, err, err_size)) {
        return false;
    }
    return true;
}

static bool sparse_kind_ok(enum ggml_sparse_ffn_kind kind, char * err, size_t err_size) {
    if (kind == GGML_SPARSE_FFN_REGLU || kind == GGML_SPARSE_FFN_DRELU) {
        return true;
    }
    if (kind == GGML_SPARSE_FFN_SWIGLU) {
        return fail(err, err_size, "params: SwiGLU has no natural zeros; it runs in dense mode only");
    }
    return fail(err, err_size, "params: unknown FFN kind %d", (int) kind);
}

static bool check_gate_up(const struct ggml_tensor * w_gate, const struct ggml_tensor * w_up,
                          const struct ggml_tensor * x, char * err, size_t err_size) {
    if (!check_act(x, "x", x ? x->ne[0] : 0, -1, err, err_size)) {
        return false;
    }
    const int64_t n_embd = x->ne[0];
    if (!check_weight(w_gate, "w_gate", n_embd, -1, err, err_size) ||
        !check_weight(w_up, "w_up", n_embd, w_gate->ne[1], err, err_size)) {
        return false;
    }
    if (w_gate->type != w_up->type) {
        return fail(err, err_size, "w_up: type %s differs from w_gate's %s", ggml_type_name(w_up->type),
                    ggml_type_name(w_gate->type));
    }
    return sparse_type_ok(w_gate, "w_gate", err, err_size);
}

bool ggml_sparse_check_ffn(
        const struct ggml_tensor * x, const struct ggml_tensor * u,
        const struct ggml_tensor * fc1, const struct ggml_tensor * fc2,
        const struct ggml_tensor * w_gate, const struct ggml_tensor * w_up,
        const struct ggml_tensor * w_down,
        const struct ggml_sparse_ffn_params * params,
        char * err, size_t err_size) {
    if (!params) {
        return fail(err, err_size, "params: missing");
    }
    if ((unsigned) params->kind > GGML_SPARSE_FFN_DRELU) {
        return fail(err, err_size, "params: unknown FFN kind %d", (int) params->kind);
    }
    if ((unsigned) params->mode > GGML_SPARSE_MODE_EXACT) {
        return fail(err, err_size, "params: unknown mode %d", (int) params->mode);
    }
    if ((unsigned) params->down_layout > GGML_SPARSE_DOWN_NEURON_MAJOR) {
        return fail(err, err_size, "params: unknown down layout %d", (int) params->down_layout);
    }
    if (!check_act(x, "x", x ? x->ne[0] : 0, -1, err, err_size)) {
        return false;
    }
    const int64_t n_embd = x->ne[0];
    const int64_t T      = x->ne[1];
    if (!check_weight(w_gate, "w_gate", n_embd, -1, err, err_size)) {
        return false;
    }
    const int64_t n_ff = w_gate->ne[1];
    if (!check_weight(w_up, "w_up", n_embd, n_ff, err, err_size)) {
        return false;
    }
    const bool neuron_major = params->down_layout == GGML_SPARSE_DOWN_NEURON_MAJOR;
    if (!check_weight(w_down, neuron_major ? "w_down (neuron-major)" : "w_down (standard)",
                      neuron_major ? n_embd : n_ff, neuron_major ? n_ff : n_embd, err, err_size)) {
        return false;
    }
    if (neuron_major && !sparse_type_ok(w_down, "w_down", err, err_size)) {
        return false;
    }
    if (params->mode == GGML_SPARSE_MODE_DENSE) {
        return true;
    }
    if (!sparse_kind_ok(params->kind, err, err_size) ||
        !check_gate_up(w_gate, w_up, x, err, err_size)) {
        return false;
    }
    if (params->mode == GGML_SPARSE_MODE_PREDICTED) {
        if (isnan(params->threshold)) {
            return fail(err, err_size, "params: threshold is NaN");
        }
        return check_predictor(fc1, fc2, u, n_embd, n_ff, T, err, err_size);
    }
    return true;
}

// ---- op parameters -------------------------------------------------------------------------

struct gate_up_op {
    enum ts_act                act;
    float                      threshold;
    bool                       predicted; // else exact
    struct ggml_sparse_stats * stats;
};

static void stats_add(int64_t * counter, int64_t value) {
    __atomic_fetch_add(counter, value, __ATOMIC_RELAXED);
}

// ---- the x operand of a dot product --------------------------------------------------------

// x in the dot type of the weights: Q8_0 blocks for Q8_0/Q4_0 rows (as ggml's own mul_mat
// quantises activations for those types), the f32 row itself otherwise.
static const void * dot_operand(const struct ts_kernels * k, const struct weight_reader * r,
                                const float * x, int64_t n, void * q8_buf) {
    if (r->fast && ts_dot_type(r->type) == TS_TYPE_Q8_0) {
        k->quantize_q8_0(x, q8_buf, n);
        return q8_buf;
    }
    return x;
}

static void dequant_row(const struct weight_reader * r, const void * w, size_t row_bytes,
                        int64_t i, float * out, int64_t n) {
    r->to_float((const char *) w + (size_t) i * row_bytes, out, n);
}

// ---- sparse gate/up ---------------------------------------------------------------------------

// Gate/up of the neurons idx[0..n_idx) into a_compact, through dequantised rows when the
// type has no kernel.
static void gate_up_list(const struct ts_kernels * k, const struct weight_reader * r, enum ts_act act,
                         int64_t n, const struct ggml_tensor * wg, const struct ggml_tensor * wu,
                         const void * xd, const int32_t * idx, int64_t n_idx, float * a_compact,
                         float * row_g, float * row_u) {
    const size_t row_bytes = wg->nb[1];
    if (r->fast) {
        k->gate_up(r->type, act, n, wg->data, wu->data, row_bytes, xd, idx, n_idx, a_compact);
        return;
    }
    for (int64_t j = 0; j < n_idx; j++) {
        dequant_row(r, wg->data, row_bytes, idx[j], row_g, n);
        dequant_row(r, wu->data, row_bytes, idx[j], row_u, n);
        k->gate_up(TS_TYPE_F32, act, n, row_g, row_u, 0, xd, NULL, 1, a_compact + j);
    }
}

// Exact-mode gate/up over neurons [i0, i1) into a[0..i1-i0); returns the non-zero count.
static int64_t gate_up_range(const struct ts_kernels * k, const struct weight_reader * r, enum ts_act act,
                             int64_t n, const struct ggml_tensor * wg, const struct ggml_tensor * wu,
                             const void * xd, int64_t i0, int64_t i1, float * a,
                             float * row_g, float * row_u) {
    const size_t row_bytes = wg->nb[1];
    if (r->fast) {
        return k->gate_up_exact(r->type, act, n, wg->data, wu->data, row_bytes, xd, i0, i1, a);
    }
    int64_t n_active = 0;
    for (int64_t i = i0; i < i1; i++) {
        float g = 0.0f, v = 0.0f;
        dequant_row(r, wg->data, row_bytes, i, row_g, n);
        k->dot_rows(TS_TYPE_F32, n, row_g, 0, xd, NULL, 1, &g);
        if (g > 0.0f) {
            float u = 0.0f;
            dequant_row(r, wu->data, row_bytes, i, row_u, n);
            k->dot_rows(TS_TYPE_F32, n, row_u, 0, xd, NULL, 1, &u);
            v = ts_act_apply(act, g, u);
        }
        a[i - i0] = v;
        n_active += v != 0.0f;
    }
    return n_active;
}

// dst a [n_ff, T]; src: w_gate, w_up, x, and logits in predicted mode.
static void gate_up_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct gate_up_op * op = userdata;
    const struct ggml_tensor * wg = dst->src[0];
    const struct ggml_tensor * wu = dst->src[1];
    const struct ggml_tensor * x  = dst->src[2];
    const struct ggml_tensor * lg = op->predicted ? dst->src[3] : NULL;

    const struct ts_kernels * k = ts_kernels_best();
    const struct weight_reader r = weight_reader_of(wg->type);
    const int64_t n_embd = wg->ne[0];
    const int64_t n_ff   = wg->ne[1];
    const int64_t T      = x->ne[1];

    const size_t q8_bytes  = ts_row_size(TS_TYPE_Q8_0, n_embd);
    const size_t row_bytes = r.fast ? 0 : (size_t) n_embd * sizeof(float);
    const size_t lst_bytes = op->predicted ? (size_t) n_ff * sizeof(int32_t) : 0;
    char * cur = ts_scratch(ts_carve_size(q8_bytes) + 2 * ts_carve_size(row_bytes) + 2 * ts_carve_size(lst_bytes));
    void    * q8     = ts_carve(&cur, q8_bytes);
    float   * row_g  = ts_carve(&cur, row_bytes);
    float   * row_u  = ts_carve(&cur, row_bytes);
    int32_t * idx    = ts_carve(&cur, lst_bytes);
    float   * a_comp = ts_carve(&cur, lst_bytes);

    int64_t n_computed = 0;
    for (int64_t t = 0; t < T; t++) {
        const float * xt = (const float *) ((const char *) x->data + t * x->nb[1]);
        float       * at = (float *) ((char *) dst->data + t * dst->nb[1]);
        if (!op->predicted) {
            const int64_t i0 = n_ff * ith / nth;
            const int64_t i1 = n_ff * (ith + 1) / nth;
            if (i1 > i0) {
                const void * xd = dot_operand(k, &r, xt, n_embd, q8);
                n_computed += gate_up_range(k, &r, op->act, n_embd, wg, wu, xd, i0, i1, at + i0, row_g, row_u);
            }
            continue;
        }
        // Every thread finds the whole active list (a cheap scan) and takes a balanced share
        // of it. The thread owns the neurons from its first active one up to the next
        // thread's first: it writes zeros there and scatters its results, so every element of
        // a is written by exactly one thread.
        const float * lt = (const float *) ((const char *) lg->data + t * lg->nb[1]);
        const int64_t n_act = ts_select_active(lt, n_ff, op->threshold, idx);
        const int64_t k0 = n_act * ith / nth;
        const int64_t k1 = n_act * (ith + 1) / nth;
        const int64_t lo = ith == 0 ? 0 : (k0 < n_act ? idx[k0] : n_ff);
        const int64_t hi = ith == nth - 1 ? n_ff : (k1 < n_act ? idx[k1] : n_ff);
        if (hi > lo) {
            memset(at + lo, 0, (size_t) (hi - lo) * sizeof(float));
        }
        if (k1 > k0) {
            const void * xd = dot_operand(k, &r, xt, n_embd, q8);
            gate_up_list(k, &r, op->act, n_embd, wg, wu, xd, idx + k0, k1 - k0, a_comp, row_g, row_u);
            for (int64_t j = 0; j < k1 - k0; j++) {
                at[idx[k0 + j]] = a_comp[j];
            }
        }
        if (ith == 0) {
            n_computed += n_act;
        }
    }
    if (op->stats) {
        stats_add(&op->stats->neurons_computed, n_computed);
        if (ith == 0) {
            stats_add(&op->stats->neurons_total, n_ff * T);
            stats_add(&op->stats->tokens, T);
        }
    }
}

// ---- sparse down -------------------------------------------------------------------------------

// The generic path's rows are dequantised in groups of this many, so that the F32 kernel
// runs over a group at a time.
#define DOWN_GROUP 16

// y[c0, c1) = sum_j a[j] * W_T[idx[j]][c0, c1) for a type without a kernel: the ggml blocks
// covering the slice of each row are dequantised into a group buffer and summed there by the
// F32 kernel; groups are added in order. The grouping depends on the active list only, so
// the result is still the same for any thread count.
static void down_generic(const struct ts_kernels * k, const struct weight_reader * r,
                         const struct ggml_tensor * w, const int32_t * idx, const float * a, int64_t n_idx,
                         int64_t c0, int64_t c1, float * y, float * rows, float * part) {
    const int64_t b0    = c0 / r->blck;
    const int64_t b1    = (c1 + r->blck - 1) / r->blck;
    const int64_t width = (b1 - b0) * r->blck;
    const int64_t off   = c0 - b0 * r->blck;
    const int64_t n_col = c1 - c0;
    if (n_idx == 0) {
        memset(y + c0, 0, (size_t) n_col * sizeof(float));
        return;
    }
    for (int64_t j0 = 0; j0 < n_idx; j0 += DOWN_GROUP) {
        const int64_t n_grp = n_idx - j0 < DOWN_GROUP ? n_idx - j0 : DOWN_GROUP;
        for (int64_t j = 0; j < n_grp; j++) {
            const char * row = (const char *) w->data + (size_t) idx[j0 + j] * w->nb[1];
            r->to_float(row + (size_t) b0 * r->blck_bytes, rows + j * width, width);
        }
        k->axpy_rows(TS_TYPE_F32, width, rows, (size_t) width * sizeof(float), NULL, a + j0, n_grp,
                     off, off + n_col, part);
        if (j0 == 0) {
            memcpy(y + c0, part + off, (size_t) n_col * sizeof(float));
        } else {
            for (int64_t c = 0; c < n_col; c++) {
                y[c0 + c] += part[off + c];
            }
        }
    }
}

// dst y [n_embd, T]; src: w_down_t [n_embd, n_ff], a [n_ff, T].
static void down_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * a = dst->src[1];
    const int64_t n_embd = w->ne[0];
    const int64_t n_ff   = w->ne[1];
    const int64_t T      = a->ne[1];

    int64_t c0, c1;
    ts_split_cols(n_embd, ith, nth, &c0, &c1);
    if (c1 <= c0) {
        return;
    }
    const struct ts_kernels * k = ts_kernels_best();
    const struct weight_reader r = weight_reader_of(w->type);

    size_t rows_bytes = 0, part_bytes = 0;
    if (!r.fast) {
        const int64_t width = ((c1 + r.blck - 1) / r.blck - c0 / r.blck) * r.blck;
        rows_bytes = (size_t) DOWN_GROUP * width * sizeof(float);
        part_bytes = (size_t) width * sizeof(float);
    }
    const size_t lst_bytes = (size_t) n_ff * sizeof(int32_t);
    char * cur = ts_scratch(2 * ts_carve_size(lst_bytes) + ts_carve_size(rows_bytes) + ts_carve_size(part_bytes));
    int32_t * idx    = ts_carve(&cur, lst_bytes);
    float   * a_comp = ts_carve(&cur, lst_bytes);
    float   * rows   = ts_carve(&cur, rows_bytes);
    float   * part   = ts_carve(&cur, part_bytes);

    for (int64_t t = 0; t < T; t++) {
        const float * at = (const float *) ((const char *) a->data + t * a->nb[1]);
        float       * yt = (float *) ((char *) dst->data + t * dst->nb[1]);
        const int64_t n_nz = ts_select_nonzero(at, n_ff, idx, a_comp);
        if (r.fast) {
            k->axpy_rows(r.type, n_embd, w->data, w->nb[1], idx, a_comp, n_nz, c0, c1, yt);
        } else {
            down_generic(k, &r, w, idx, a_comp, n_nz, c0, c1, yt, rows, part);
        }
    }
}

// ---- builders --------------------------------------------------------------------------------

struct ggml_tensor * ggml_sparse_predictor(
        struct ggml_context * ctx,
        struct ggml_tensor  * fc1,
        struct ggml_tensor  * fc2,
        struct ggml_tensor  * u,
        char * err, size_t err_size) {
    if (!check_predictor(fc1, fc2, u, u ? u->ne[0] : 0, fc2 ? fc2->ne[1] : 0, -1, err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * h = ggml_relu(ctx, ggml_sparse_mul_mat(ctx, fc1, u));
    return ggml_sparse_mul_mat(ctx, fc2, h);
}

struct ggml_tensor * ggml_sparse_gate_up(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_gate,
        struct ggml_tensor  * w_up,
        struct ggml_tensor  * x,
        struct ggml_tensor  * logits,
        enum ggml_sparse_ffn_kind kind,
        float threshold,
        struct ggml_sparse_stats * stats,
        char * err, size_t err_size) {
    if (!sparse_kind_ok(kind, err, err_size) || !check_gate_up(w_gate, w_up, x, err, err_size)) {
        return NULL;
    }
    const int64_t n_ff = w_gate->ne[1];
    const int64_t T    = x->ne[1];
    if (logits) {
        if (!check_act(logits, "logits", n_ff, T, err, err_size)) {
            return NULL;
        }
        if (isnan(threshold)) {
            fail(err, err_size, "threshold is NaN");
            return NULL;
        }
    }
    struct gate_up_op * op = ggml_new_buffer(ctx, sizeof(*op));
    op->act       = kind == GGML_SPARSE_FFN_DRELU ? TS_ACT_DRELU : TS_ACT_REGLU;
    op->threshold = threshold;
    op->predicted = logits != NULL;
    op->stats     = stats;
    struct ggml_tensor * args[4] = { w_gate, w_up, x, logits };
    struct ggml_tensor * a = ggml_custom_4d(ctx, GGML_TYPE_F32, n_ff, T, 1, 1, args, logits ? 4 : 3,
                                            gate_up_compute, GGML_N_TASKS_MAX, op);
    ggml_format_name(a, "sparse_gate_up%s", logits ? "" : "_exact");
    return a;
}

struct ggml_tensor * ggml_sparse_down(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_down_t,
        struct ggml_tensor  * a,
        char * err, size_t err_size) {
    if (!check_weight(w_down_t, "w_down_t", w_down_t ? w_down_t->ne[0] : 0, -1, err, err_size) ||
        !sparse_type_ok(w_down_t, "w_down_t", err, err_size) ||
        !check_act(a, "a", w_down_t->ne[1], -1, err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[2] = { w_down_t, a };
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w_down_t->ne[0], a->ne[1], 1, 1, args, 2,
                                            down_compute, GGML_N_TASKS_MAX, NULL);
    ggml_set_name(y, "sparse_down");
    return y;
}

// The activation of a dense FFN by ggml's own ops.
static struct ggml_tensor * dense_act(struct ggml_context * ctx, enum ggml_sparse_ffn_kind kind,
                                      struct ggml_tensor * g, struct ggml_tensor * u) {
    switch (kind) {
        case GGML_SPARSE_FFN_SWIGLU: return ggml_swiglu_split(ctx, g, u);
        case GGML_SPARSE_FFN_REGLU:  return ggml_reglu_split(ctx, g, u);
        case GGML_SPARSE_FFN_DRELU:  return ggml_mul(ctx, ggml_relu(ctx, g), ggml_relu(ctx, u));
    }
    return NULL;
}

struct ggml_tensor * ggml_sparse_ffn(
        struct ggml_context * ctx,
        struct ggml_tensor  * x,
        struct ggml_tensor  * u,
        struct ggml_tensor  * fc1,
        struct ggml_tensor  * fc2,
        struct ggml_tensor  * w_gate,
        struct ggml_tensor  * w_up,
        struct ggml_tensor  * w_down,
        const struct ggml_sparse_ffn_params * params,
        char * err, size_t err_size) {
    if (!ggml_sparse_check_ffn(x, u, fc1, fc2, w_gate, w_up, w_down, params, err, err_size)) {
        return NULL;
    }
    const bool neuron_major = params->down_layout == GGML_SPARSE_DOWN_NEURON_MAJOR;
    struct ggml_tensor * a;
    if (params->mode == GGML_SPARSE_MODE_DENSE) {
        a = dense_act(ctx, params->kind, ggml_sparse_mul_mat(ctx, w_gate, x), ggml_sparse_mul_mat(ctx, w_up, x));
    } else {
        struct ggml_tensor * logits = NULL;
        if (params->mode == GGML_SPARSE_MODE_PREDICTED) {
            logits = ggml_sparse_predictor(ctx, fc1, fc2, u, err, err_size);
            if (!logits) {
                return NULL;
            }
        }
        a = ggml_sparse_gate_up(ctx, w_gate, w_up, x, logits, params->kind, params->threshold,
                                params->stats, err, err_size);
        if (!a) {
            return NULL;
        }
    }
    return neuron_major ? ggml_sparse_down(ctx, w_down, a, err, err_size) : ggml_sparse_mul_mat(ctx, w_down, a);
}

size_t ggml_sparse_ffn_ctx_size(void) {
    // At most 7 nodes (predictor 3, gate/up 1, down 1; dense: 3 mul_mat + 3 activation ops)
    // plus one parameter block; the slack covers ggml's object headers.
    return 8 * ggml_tensor_overhead() + sizeof(struct gate_up_op) + 256;
}

const char * ggml_sparse_isa(void) {
    return ts_kernels_best()->name;
}
