// test_ops.c: the sparse-FFN ggml ops in real ggml graphs, against a float reference
// computed here from the SPEC §1 math on the dequantised weights.
//
// For every weight type (the five with kernels and a few dequantised through ggml's type
// traits) x FFN kind x T in {1, 3} x threads 1..4:
//   - dense mode (standard down: ggml's own FFN; neuron-major down: mul_mat + sparse down)
//   - predicted mode (reference masked by the logits the graph computed), through the finer
//     ops and through ggml_sparse_ffn
//   - exact mode, against the reference and against dense
//   - the down node and the gate/up node are bit-identical for every thread count
// plus batches of T in {2, 3, 5, 17, 40} against the same tokens one at a time (bit for bit),
// threshold extremes, a no_alloc context with ggml-alloc, and the error paths.
#include "ggml-sparse.h"
#include "ts-kernels.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_failed = 0;
static int n_checks = 0;

#define CHECK(cond, ...) do {                                  \
        n_checks++;                                            \
        if (!(cond)) {                                         \
            n_failed++;                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                      \
            fprintf(stderr, "\n");                             \
        }                                                      \
    } while (0)

// ---- random data ---------------------------------------------------------------------------

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float frand(void) { // uniform [-1, 1)
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float) ((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void fill_random(float * v, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) {
        v[i] = frand() * scale;
    }
}

// ---- weights ---------------------------------------------------------------------------------

static bool ts_type_of(enum ggml_type type, enum ts_type * out) {
    switch (type) {
        case GGML_TYPE_F32:  *out = TS_TYPE_F32;  return true;
        case GGML_TYPE_F16:  *out = TS_TYPE_F16;  return true;
        case GGML_TYPE_BF16: *out = TS_TYPE_BF16; return true;
        case GGML_TYPE_Q8_0: *out = TS_TYPE_Q8_0; return true;
        case GGML_TYPE_Q4_0: *out = TS_TYPE_Q4_0; return true;
        case GGML_TYPE_Q4_K: *out = TS_TYPE_Q4_K; return true;
        case GGML_TYPE_Q6_K: *out = TS_TYPE_Q6_K; return true;
        default:             return false;
    }
}

// Stores `src` (ne1 rows of ne0) into w in w's type.
static void store_weight(struct ggml_tensor * w, const float * src) {
    ggml_quantize_chunk(w->type, src, w->data, 0, w->ne[1], w->ne[0], NULL);
}

// What the weight holds, as f32 (the reference reads these).
static void load_weight(const struct ggml_tensor * w, float * dst) {
    enum ts_type tt;
    for (int64_t r = 0; r < w->ne[1]; r++) {
        const void * row = (const char *) w->data + r * w->nb[1];
        if (ts_type_of(w->type, &tt)) {
            ts_to_float(tt, row, dst + r * w->ne[0], w->ne[0]);
        } else {
            ggml_get_type_traits(w->type)->to_float(row, dst + r * w->ne[0], w->ne[0]);
        }
    }
}

// ---- the fixture: one FFN's weights and inputs --------------------------------------------------

struct ffn {
    enum ggml_type type;
    enum ggml_sparse_ffn_kind kind;
    int64_t n_embd, n_ff, r, T;
    struct ggml_context * ctx;
    struct ggml_tensor * x, * u, * fc1, * fc2, * w_gate, * w_up, * w_down_t, * w_down;
    // reference copies (f32, row-major as HF: gate/up [n_ff][n_embd], down_t [n_ff][n_embd])
    float * gate, * up, * down_t;
    float * x_dot; // x as the sparse kernels see it (Q8_0-rounded for Q8_0/Q4_0 weights, Q8_K for Q4_K/Q6_K)
};

static void ffn_init(struct ffn * f, enum ggml_type type, enum ggml_sparse_ffn_kind kind,
                     int64_t n_embd, int64_t n_ff, int64_t r, int64_t T) {
    memset(f, 0, sizeof(*f));
    f->type = type; f->kind = kind; f->n_embd = n_embd; f->n_ff = n_ff; f->r = r; f->T = T;
    struct ggml_init_params ip = { .mem_size = 64u << 20, .mem_buffer = NULL, .no_alloc = false };
    f->ctx = ggml_init(ip);
    f->x        = ggml_new_tensor_2d(f->ctx, GGML_TYPE_F32, n_embd, T);
    f->u        = ggml_new_tensor_2d(f->ctx, GGML_TYPE_F32, n_embd, T);
    f->fc1      = ggml_new_tensor_2d(f->ctx, GGML_TYPE_F32, n_embd, r);
    f->fc2      = ggml_new_tensor_2d(f->ctx, GGML_TYPE_F32, r, n_ff);
    f->w_gate   = ggml_new_tensor_2d(f->ctx, type, n_embd, n_ff);
    f->w_up     = ggml_new_tensor_2d(f->ctx, type, n_embd, n_ff);
    f->w_down_t = ggml_new_tensor_2d(f->ctx, type, n_embd, n_ff);
    f->w_down   = ggml_new_tensor_2d(f->ctx, GGML_TYPE_F32, n_ff, n_embd);

    fill_random(f->x->data, n_embd * T, 1.0f);
    fill_random(f->u->data, n_embd * T, 1.0f);
    fill_random(f->fc1->data, n_embd * r, 0.2f);
    fill_random(f->fc2->data, r * n_ff, 0.2f);

    float * tmp = malloc(sizeof(float) * n_embd * n_ff);
    f->gate   = malloc(sizeof(float) * n_embd * n_ff);
    f->up     = malloc(sizeof(float) * n_embd * n_ff);
    f->down_t = malloc(sizeof(float) * n_embd * n_ff);
    fill_random(tmp, n_embd * n_ff, 0.1f); store_weight(f->w_gate, tmp);   load_weight(f->w_gate, f->gate);
    fill_random(tmp, n_embd * n_ff, 0.1f); store_weight(f->w_up, tmp);     load_weight(f->w_up, f->up);
    fill_random(tmp, n_embd * n_ff, 0.1f); store_weight(f->w_down_t, tmp); load_weight(f->w_down_t, f->down_t);
    free(tmp);
    // The standard-layout down holds exactly the same values, transposed.
    for (int64_t i = 0; i < n_ff; i++) {
        for (int64_t c = 0; c < n_embd; c++) {
            ((float *) f->w_down->data)[c * n_ff + i] = f->down_t[i * n_embd + c];
        }
    }

    f->x_dot = malloc(sizeof(float) * n_embd * T);
    enum ts_type tt;
    const enum ts_type dt = ts_type_of(type, &tt) ? ts_dot_type(tt) : TS_TYPE_F32;
    void * blocks = malloc(ts_row_size(dt, n_embd));
    for (int64_t t = 0; t < T; t++) {
        const float * xt = (const float *) f->x->data + t * n_embd;
        if (dt != TS_TYPE_F32) {
            ts_from_float(dt, xt, blocks, n_embd);
            ts_to_float(dt, blocks, f->x_dot + t * n_embd, n_embd);
        } else {
            memcpy(f->x_dot + t * n_embd, xt, sizeof(float) * n_embd);
        }
    }
    free(blocks);
}

static void ffn_free(struct ffn * f) {
    ggml_free(f->ctx);
    free(f->gate); free(f->up); free(f->down_t); free(f->x_dot);
}

// ---- the reference ---------------------------------------------------------------------------

static double act_ref(enum ggml_sparse_ffn_kind kind, double g, double u) {
    switch (kind) {
        case GGML_SPARSE_FFN_DRELU:  return (g > 0 ? g : 0) * (u > 0 ? u : 0);
        case GGML_SPARSE_FFN_REGLU:  return (g > 0 ? g : 0) * u;
        case GGML_SPARSE_FFN_SWIGLU: return g / (1.0 + exp(-g)) * u;
    }
    return 0;
}

// y [T][n_embd] and the scale sum_i |a_i * W_down_T[i][c]| per element (errors are measured
// against it, so cancellation in y does not make the tolerance meaningless). mask [T][n_ff]
// (NULL: all neurons); x is x or x_dot.
static void ffn_ref(const struct ffn * f, const float * x, const float * logits, float tau,
                    double * y, double * scale) {
    const int64_t n = f->n_embd;
    for (int64_t t = 0; t < f->T; t++) {
        const float * xt = x + t * n;
        for (int64_t c = 0; c < n; c++) {
            y[t * n + c] = 0; scale[t * n + c] = 0;
        }
        for (int64_t i = 0; i < f->n_ff; i++) {
            if (logits && !(logits[t * f->n_ff + i] > tau)) {
                continue;
            }
            double g = 0, u = 0;
            for (int64_t k = 0; k < n; k++) {
                g += (double) f->gate[i * n + k] * xt[k];
                u += (double) f->up[i * n + k] * xt[k];
            }
            const double a = act_ref(f->kind, g, u);
            for (int64_t c = 0; c < n; c++) {
                y[t * n + c]     += a * f->down_t[i * n + c];
                scale[t * n + c] += fabs(a * f->down_t[i * n + c]);
            }
        }
    }
}

// max over elements of |got - want| / (max scale), i.e. error relative to the output's size.
static double rel_err(const float * got, const double * want, const double * scale, int64_t n) {
    double err = 0, s = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs(got[i] - want[i]));
        s   = fmax(s, scale[i]);
        if (isnan(got[i])) {
            return INFINITY;
        }
    }
    return err / s;
}

static double rel_err_f(const float * got, const float * want, int64_t n) {
    double err = 0, s = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double) got[i] - want[i]));
        s   = fmax(s, fabs((double) want[i]));
        if (isnan(got[i])) {
            return INFINITY;
        }
    }
    return err / s;
}

// ---- graphs ---------------------------------------------------------------------------------

// A context for one graph's nodes and ggml_graph_compute_with_ctx's work buffer.
static struct ggml_context * graph_ctx(void) {
    struct ggml_init_params ip = { .mem_size = 16u << 20, .mem_buffer = NULL, .no_alloc = false };
    return ggml_init(ip);
}

// Computes `out` (and everything it depends on) with nth threads; returns a malloc'd copy.
static float * compute(struct ggml_context * gctx, struct ggml_tensor * out, int nth) {
    struct ggml_cgraph * gf = ggml_new_graph(gctx);
    ggml_build_forward_expand(gf, out);
    enum ggml_status st = ggml_graph_compute_with_ctx(gctx, gf, nth);
    CHECK(st == GGML_STATUS_SUCCESS, "graph compute failed: %d", (int) st);
    float * copy = malloc(ggml_nbytes(out));
    memcpy(copy, out->data, ggml_nbytes(out));
    return copy;
}

static const char * kind_name(enum ggml_sparse_ffn_kind kind) {
    return kind == GGML_SPARSE_FFN_DRELU ? "drelu" : kind == GGML_SPARSE_FFN_REGLU ? "reglu" : "swiglu";
}

// Tolerances, relative to the output's scale. Sparse nodes see the same x as the reference
// (x_dot), so they differ by f32 rounding only. ggml's mul_mat converts x to the weights'
// own dot type (f16, bf16, Q8_0, Q8_1, Q8_K), so dense mode is compared more loosely.
#define TOL_SPARSE 1e-4
static double tol_dense(enum ggml_type type) {
    return type == GGML_TYPE_F32 ? 1e-4 : 2e-2;
}

static void test_ffn_case(enum ggml_type type, enum ggml_sparse_ffn_kind kind, int64_t n_embd,
                          int64_t n_ff, int64_t T) {
    struct ffn f;
    ffn_init(&f, type, kind, n_embd, n_ff, 48, T);
    const int64_t ny = n_embd * T;
    double * y_ref = malloc(sizeof(double) * ny);
    double * scale = malloc(sizeof(double) * ny);
    const char * tn = ggml_type_name(type);
    const char * kn = kind_name(kind);
    char err[256];

    // reference on the unrounded x (dense) and on x_dot (sparse), no mask
    double * y_ref_dot = malloc(sizeof(double) * ny);
    double * scale_dot = malloc(sizeof(double) * ny);
    ffn_ref(&f, f.x->data, NULL, 0, y_ref, scale);
    ffn_ref(&f, f.x_dot, NULL, 0, y_ref_dot, scale_dot);

    float * y_exact_1 = NULL, * y_pred_1 = NULL, * a_pred_1 = NULL, * logits_1 = NULL;
    const float tau = 0.01f;

    for (int nth = 1; nth <= 4; nth++) {
        // dense, standard down: ggml's FFN
        struct ggml_sparse_ffn_params p = { kind, GGML_SPARSE_MODE_DENSE, GGML_SPARSE_DOWN_STANDARD, 0.0f, NULL };
        struct ggml_context * g = graph_ctx();
        struct ggml_tensor * y = ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down, &p, err, sizeof(err));
        CHECK(y, "%s %s dense: %s", tn, kn, err);
        float * y_dense = y ? compute(g, y, nth) : NULL;
        ggml_free(g);
        if (y_dense) {
            double e = rel_err(y_dense, y_ref, scale, ny);
            CHECK(e <= tol_dense(type), "%s %s T=%lld nth=%d dense(standard) vs ref: rel err %.3g",
                  tn, kn, (long long) T, nth, e);
        }

        // dense, neuron-major down
        p.down_layout = GGML_SPARSE_DOWN_NEURON_MAJOR;
        g = graph_ctx();
        y = ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
        CHECK(y, "%s %s dense nm: %s", tn, kn, err);
        float * y_dense_nm = y ? compute(g, y, nth) : NULL;
        ggml_free(g);
        if (y_dense_nm) {
            double e = rel_err(y_dense_nm, y_ref, scale, ny);
            CHECK(e <= tol_dense(type), "%s %s T=%lld nth=%d dense(neuron-major) vs ref: rel err %.3g",
                  tn, kn, (long long) T, nth, e);
        }
        if (kind == GGML_SPARSE_FFN_SWIGLU) {
            free(y_dense); free(y_dense_nm);
            continue;
        }

        // exact mode: lossless, so equal to the reference on x_dot and to dense
        struct ggml_sparse_stats stats = { 0 };
        p.mode = GGML_SPARSE_MODE_EXACT; p.stats = &stats;
        g = graph_ctx();
        y = ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
        CHECK(y, "%s %s exact: %s", tn, kn, err);
        float * y_exact = y ? compute(g, y, nth) : NULL;
        ggml_free(g);
        if (y_exact) {
            double e = rel_err(y_exact, y_ref_dot, scale_dot, ny);
            CHECK(e <= TOL_SPARSE, "%s %s T=%lld nth=%d exact vs ref: rel err %.3g", tn, kn, (long long) T, nth, e);
            e = rel_err_f(y_exact, y_dense, ny);
            CHECK(e <= tol_dense(type) * 4, "%s %s T=%lld nth=%d exact vs dense: rel err %.3g", tn, kn, (long long) T, nth, e);
            CHECK(stats.tokens == T && stats.neurons_total == n_ff * T &&
                  stats.neurons_computed > 0 && stats.neurons_computed < n_ff * T,
                  "%s %s exact stats: tokens %lld total %lld computed %lld", tn, kn,
                  (long long) stats.tokens, (long long) stats.neurons_total, (long long) stats.neurons_computed);
            if (nth == 1) {
                y_exact_1 = y_exact;
            } else {
                CHECK(memcmp(y_exact, y_exact_1, ny * sizeof(float)) == 0,
                      "%s %s T=%lld exact mode differs between 1 and %d threads", tn, kn, (long long) T, nth);
                free(y_exact);
            }
        }

        // predicted mode through the finer ops, so the logits can be read back
        g = graph_ctx();
        struct ggml_tensor * logits = ggml_sparse_predictor(g, f.fc1, f.fc2, f.u, err, sizeof(err));
        CHECK(logits, "%s %s predictor: %s", tn, kn, err);
        struct ggml_tensor * a = ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, logits, kind, tau, NULL, err, sizeof(err));
        CHECK(a, "%s %s gate_up: %s", tn, kn, err);
        struct ggml_tensor * yp = ggml_sparse_down(g, f.w_down_t, a, err, sizeof(err));
        CHECK(yp, "%s %s down: %s", tn, kn, err);
        struct ggml_cgraph * gf = ggml_new_graph(g);
        ggml_build_forward_expand(gf, yp);
        CHECK(ggml_graph_compute_with_ctx(g, gf, nth) == GGML_STATUS_SUCCESS, "compute");
        int64_t n_active = 0;
        for (int64_t i = 0; i < n_ff * T; i++) {
            n_active += ((float *) logits->data)[i] > tau;
        }
        CHECK(n_active > n_ff * T / 10 && n_active < n_ff * T * 9 / 10, "%s predicted density %lld / %lld is not a useful test",
              tn, (long long) n_active, (long long) (n_ff * T));
        // neurons outside the mask are exactly zero
        int64_t bad_zero = 0;
        for (int64_t i = 0; i < n_ff * T; i++) {
            bad_zero += !(((float *) logits->data)[i] > tau) && ((float *) a->data)[i] != 0.0f;
        }
        CHECK(bad_zero == 0, "%s %s predicted: %lld neurons outside the mask are non-zero", tn, kn, (long long) bad_zero);
        double * y_ref_m = malloc(sizeof(double) * ny);
        double * scale_m = malloc(sizeof(double) * ny);
        ffn_ref(&f, f.x_dot, logits->data, tau, y_ref_m, scale_m);
        double e = rel_err(yp->data, y_ref_m, scale_m, ny);
        CHECK(e <= TOL_SPARSE, "%s %s T=%lld nth=%d predicted vs masked ref: rel err %.3g", tn, kn, (long long) T, nth, e);
        free(y_ref_m); free(scale_m);
        if (nth == 1) {
            y_pred_1 = malloc(ny * sizeof(float));   memcpy(y_pred_1, yp->data, ny * sizeof(float));
            a_pred_1 = malloc(ggml_nbytes(a));       memcpy(a_pred_1, a->data, ggml_nbytes(a));
            logits_1 = malloc(ggml_nbytes(logits));  memcpy(logits_1, logits->data, ggml_nbytes(logits));
        } else {
            // the logits come from ggml's mul_mat; the bit-identity claims below are about our
            // nodes, so they are made only when the mask is the same
            if (memcmp(logits_1, logits->data, ggml_nbytes(logits)) == 0) {
                CHECK(memcmp(a_pred_1, a->data, ggml_nbytes(a)) == 0,
                      "%s %s T=%lld gate_up differs between 1 and %d threads", tn, kn, (long long) T, nth);
                CHECK(memcmp(y_pred_1, yp->data, ny * sizeof(float)) == 0,
                      "%s %s T=%lld down differs between 1 and %d threads", tn, kn, (long long) T, nth);
            }
        }
        ggml_free(g);

        // the whole op in predicted mode equals the finer ops' composition
        p.mode = GGML_SPARSE_MODE_PREDICTED; p.threshold = tau; p.stats = &stats;
        memset(&stats, 0, sizeof(stats));
        g = graph_ctx();
        y = ggml_sparse_ffn(g, f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
        CHECK(y, "%s %s predicted ffn: %s", tn, kn, err);
        if (y) {
            float * y_pred = compute(g, y, nth);
            e = rel_err_f(y_pred, y_pred_1, ny);
            CHECK(e <= TOL_SPARSE, "%s %s T=%lld nth=%d ggml_sparse_ffn(predicted) vs finer ops: %.3g", tn, kn, (long long) T, nth, e);
            CHECK(stats.tokens == T && stats.neurons_total == n_ff * T && stats.neurons_computed == n_active,
                  "%s predicted stats: computed %lld, expected %lld", tn, (long long) stats.neurons_computed, (long long) n_active);
            free(y_pred);
        }
        ggml_free(g);
        free(y_dense); free(y_dense_nm);
    }
    free(y_exact_1); free(y_pred_1); free(a_pred_1); free(logits_1);
    free(y_ref); free(scale); free(y_ref_dot); free(scale_dot);
    ffn_free(&f);
}

// Threshold extremes: nothing predicted gives y == 0; everything predicted gives the dense
// result (a standalone logits tensor, no predictor).
static void test_threshold_extremes(enum ggml_type type) {
    struct ffn f;
    const int64_t T = 2;
    ffn_init(&f, type, GGML_SPARSE_FFN_DRELU, 64, 40, 16, T);
    char err[256];
    const int64_t ny = f.n_embd * T;
    struct ggml_tensor * logits = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, f.n_ff, T);
    for (int64_t i = 0; i < f.n_ff * T; i++) {
        ((float *) logits->data)[i] = frand();
    }
    for (int nth = 1; nth <= 3; nth++) {
        struct ggml_context * g = graph_ctx();
        struct ggml_tensor * a = ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, logits, f.kind, INFINITY, NULL, err, sizeof(err));
        struct ggml_tensor * y = a ? ggml_sparse_down(g, f.w_down_t, a, err, sizeof(err)) : NULL;
        CHECK(y, "extremes: %s", err);
        if (y) {
            float * yv = compute(g, y, nth);
            int64_t nz = 0;
            for (int64_t i = 0; i < ny; i++) nz += yv[i] != 0.0f;
            CHECK(nz == 0, "%s tau=+inf: %lld non-zero outputs", ggml_type_name(type), (long long) nz);
            free(yv);
        }
        ggml_free(g);

        g = graph_ctx();
        a = ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, logits, f.kind, -INFINITY, NULL, err, sizeof(err));
        y = a ? ggml_sparse_down(g, f.w_down_t, a, err, sizeof(err)) : NULL;
        struct ggml_tensor * a_ex = ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, NULL, f.kind, 0, NULL, err, sizeof(err));
        CHECK(y && a_ex, "extremes: %s", err);
        if (y && a_ex) {
            struct ggml_cgraph * gf = ggml_new_graph(g);
            ggml_build_forward_expand(gf, y);
            ggml_build_forward_expand(gf, a_ex);
            CHECK(ggml_graph_compute_with_ctx(g, gf, nth) == GGML_STATUS_SUCCESS, "compute");
            // all-predicted and exact agree on every activation (same kernels, same rows)
            CHECK(memcmp(a->data, a_ex->data, ggml_nbytes(a)) == 0, "%s tau=-inf activations differ from exact mode",
                  ggml_type_name(type));
        }
        ggml_free(g);
    }
    ffn_free(&f);
}

// The path a runtime takes: nodes in a no_alloc context (parameters included) and the
// graph's memory from ggml-alloc.
static void test_no_alloc(void) {
    struct ffn f;
    ffn_init(&f, GGML_TYPE_Q4_0, GGML_SPARSE_FFN_DRELU, 128, 64, 32, 2);
    char err[256];
    struct ggml_init_params ip = { .mem_size = ggml_graph_overhead() + 4 * ggml_tensor_overhead() + ggml_sparse_ffn_ctx_size(),
                                   .mem_buffer = NULL, .no_alloc = true };
    struct ggml_context * g = ggml_init(ip);
    struct ggml_tensor * x = ggml_new_tensor_2d(g, GGML_TYPE_F32, f.n_embd, f.T);
    struct ggml_tensor * u = ggml_new_tensor_2d(g, GGML_TYPE_F32, f.n_embd, f.T);
    ggml_set_input(x); ggml_set_input(u);
    struct ggml_sparse_stats stats = { 0 };
    struct ggml_sparse_ffn_params p = { f.kind, GGML_SPARSE_MODE_PREDICTED, GGML_SPARSE_DOWN_NEURON_MAJOR, 0.0f, &stats };
    struct ggml_tensor * y = ggml_sparse_ffn(g, x, u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    CHECK(y, "no_alloc ffn: %s", err);
    if (y) {
        ggml_set_output(y);
        struct ggml_cgraph * gf = ggml_new_graph(g);
        ggml_build_forward_expand(gf, y);
        ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
        CHECK(ggml_gallocr_alloc_graph(galloc, gf), "gallocr");
        memcpy(x->data, f.x->data, ggml_nbytes(x));
        memcpy(u->data, f.u->data, ggml_nbytes(u));
        struct ggml_cplan plan = ggml_graph_plan(gf, 2, NULL);
        void * work = malloc(plan.work_size + 1);
        plan.work_data = work;
        CHECK(ggml_graph_compute(gf, &plan) == GGML_STATUS_SUCCESS, "compute");
        // the same computation in an allocating context
        struct ggml_context * g2 = graph_ctx();
        struct ggml_tensor * y2 = ggml_sparse_ffn(g2, f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
        float * want = compute(g2, y2, 2);
        double e = rel_err_f(y->data, want, ggml_nelements(y));
        CHECK(e == 0.0, "no_alloc graph differs from the allocated one: %.3g", e);
        CHECK(stats.tokens == 2 * f.T, "stats.tokens %lld", (long long) stats.tokens);
        free(want); ggml_free(g2); free(work);
        ggml_gallocr_free(galloc);
    }
    ggml_free(g);
    ffn_free(&f);
}

// ---- batches of tokens ------------------------------------------------------------------------

// Runs gate/up + sparse down on tokens [t0, t0 + n) of f's x with the given logits
// (NULL: exact mode) and nth threads; a_out [n][n_ff], y_out [n][n_embd]; stats added to st.
static void run_tokens(const struct ffn * f, const float * logits, float tau, int64_t t0, int64_t n, int nth,
                       float * a_out, float * y_out, struct ggml_sparse_stats * st) {
    char err[256];
    struct ggml_context * g = graph_ctx();
    struct ggml_tensor * x = ggml_new_tensor_2d(g, GGML_TYPE_F32, f->n_embd, n);
    memcpy(x->data, (const float *) f->x->data + t0 * f->n_embd, sizeof(float) * f->n_embd * n);
    struct ggml_tensor * lg = NULL;
    if (logits) {
        lg = ggml_new_tensor_2d(g, GGML_TYPE_F32, f->n_ff, n);
        memcpy(lg->data, logits + t0 * f->n_ff, sizeof(float) * f->n_ff * n);
    }
    struct ggml_tensor * a = ggml_sparse_gate_up(g, f->w_gate, f->w_up, x, lg, f->kind, tau, st, err, sizeof(err));
    struct ggml_tensor * y = a ? ggml_sparse_down(g, f->w_down_t, a, err, sizeof(err)) : NULL;
    CHECK(y, "batch graph: %s", err);
    if (y) {
        struct ggml_cgraph * gf = ggml_new_graph(g);
        ggml_build_forward_expand(gf, y);
        CHECK(ggml_graph_compute_with_ctx(g, gf, nth) == GGML_STATUS_SUCCESS, "compute");
        memcpy(a_out, a->data, ggml_nbytes(a));
        memcpy(y_out, y->data, ggml_nbytes(y));
    }
    ggml_free(g);
}

// Elements where got != want (== comparison, so -0 equals +0); the first one in *first.
static int64_t n_differ(const float * got, const float * want, int64_t n, int64_t * first) {
    int64_t bad = 0;
    for (int64_t i = n - 1; i >= 0; i--) {
        if (!(got[i] == want[i])) {
            bad++;
            *first = i;
        }
    }
    return bad;
}

// A batch of T tokens through the sparse nodes (predicted with given logits, and exact) in
// sub-batches (adaptive, 1 and 3 tokens) with 1..4 threads: (a) bit for bit the outputs of
// the same tokens run one at a time, (b) the double reference within tolerance, (c) stats.
// Some tokens use no neuron (all logits -inf; in exact mode a zero x), as the MoE path
// gives the tokens an expert does not serve.
static void test_batch_case(enum ggml_type type, enum ggml_sparse_ffn_kind kind, int64_t n_embd,
                            int64_t n_ff, int64_t T) {
    struct ffn f;
    ffn_init(&f, type, kind, n_embd, n_ff, 16, T);
    const char * tn = ggml_type_name(type);
    const char * kn = kind_name(kind);
    const float tau = 0.6f; // about 20% of the uniform [-1, 1) logits pass
    float * logits = malloc(sizeof(float) * n_ff * T);
    for (int64_t i = 0; i < n_ff * T; i++) {
        logits[i] = frand();
    }
    for (int64_t t = 1; t < T; t += 4) { // tokens 1, 5, 9, ...: nothing selected
        for (int64_t i = 0; i < n_ff; i++) logits[t * n_ff + i] = -INFINITY;
    }
    for (int64_t t = 2; t < T; t += 7) { // tokens 2, 9, 16, ...: zero input
        memset((float *) f.x->data + t * n_embd, 0, sizeof(float) * n_embd);
        memset(f.x_dot + t * n_embd, 0, sizeof(float) * n_embd);
    }
    const int64_t na = n_ff * T, ny = n_embd * T;
    double * y_ref = malloc(sizeof(double) * ny);
    double * scale = malloc(sizeof(double) * ny);

    for (int mode = 0; mode < 2; mode++) { // 0: predicted, 1: exact
        const float * lg = mode == 0 ? logits : NULL;
        const char * mn = mode == 0 ? "predicted" : "exact";
        // one token at a time (T = 1 graphs)
        float * a1 = malloc(sizeof(float) * na);
        float * y1 = malloc(sizeof(float) * ny);
        struct ggml_sparse_stats st1 = { 0 };
        for (int64_t t = 0; t < T; t++) {
            run_tokens(&f, lg, tau, t, 1, 1, a1 + t * n_ff, y1 + t * n_embd, &st1);
        }
        ffn_ref(&f, f.x_dot, lg, tau, y_ref, scale);
        int64_t want_computed = 0;
        for (int64_t i = 0; i < na; i++) {
            want_computed += mode == 0 ? logits[i] > tau : a1[i] != 0.0f;
        }
        CHECK(st1.neurons_computed == want_computed, "%s %s %s T=1 stats: computed %lld, expected %lld", tn, kn, mn,
              (long long) st1.neurons_computed, (long long) want_computed);

        const char * settings[] = { "0", "1", "3" };
        for (int si = 0; si < 3; si++) {
            setenv("TURBOSPARSE_SUB_BATCH", settings[si], 1);
            for (int nth = 1; nth <= 4; nth++) {
                float * a = malloc(sizeof(float) * na);
                float * y = malloc(sizeof(float) * ny);
                struct ggml_sparse_stats st = { 0 };
                run_tokens(&f, lg, tau, 0, T, nth, a, y, &st);
                int64_t first = 0;
                int64_t bad = n_differ(a, a1, na, &first);
                CHECK(bad == 0, "%s %s %s T=%lld sub-batch %s nth=%d: %lld activations differ from one token at a time "
                      "(first: token %lld neuron %lld: %g vs %g)", tn, kn, mn, (long long) T, settings[si], nth,
                      (long long) bad, (long long) (first / n_ff), (long long) (first % n_ff), a[first], a1[first]);
                bad = n_differ(y, y1, ny, &first);
                CHECK(bad == 0, "%s %s %s T=%lld sub-batch %s nth=%d: %lld outputs differ from one token at a time "
                      "(first: token %lld column %lld: %g vs %g)", tn, kn, mn, (long long) T, settings[si], nth,
                      (long long) bad, (long long) (first / n_embd), (long long) (first % n_embd), y[first], y1[first]);
                const double e = rel_err(y, y_ref, scale, ny);
                CHECK(e <= TOL_SPARSE, "%s %s %s T=%lld sub-batch %s nth=%d vs ref: rel err %.3g", tn, kn, mn,
                      (long long) T, settings[si], nth, e);
                CHECK(st.tokens == T && st.neurons_total == n_ff * T && st.neurons_computed == want_computed,
                      "%s %s %s T=%lld nth=%d stats: tokens %lld total %lld computed %lld, expected %lld", tn, kn, mn,
                      (long long) T, nth, (long long) st.tokens, (long long) st.neurons_total,
                      (long long) st.neurons_computed, (long long) want_computed);
                free(a); free(y);
            }
        }
        unsetenv("TURBOSPARSE_SUB_BATCH");
        free(a1); free(y1);
    }
    free(logits); free(y_ref); free(scale);
    ffn_free(&f);
}

// Exact mode with a standard-layout down (ggml's mul_mat after the sparse gate/up) on a batch.
static void test_batch_standard_down(enum ggml_type type, int64_t n_embd) {
    struct ffn f;
    const int64_t T = 17;
    ffn_init(&f, type, GGML_SPARSE_FFN_DRELU, n_embd, 150, 16, T);
    const int64_t ny = f.n_embd * T;
    double * y_ref = malloc(sizeof(double) * ny);
    double * scale = malloc(sizeof(double) * ny);
    ffn_ref(&f, f.x_dot, NULL, 0, y_ref, scale);
    char err[256];
    struct ggml_sparse_ffn_params p = { f.kind, GGML_SPARSE_MODE_EXACT, GGML_SPARSE_DOWN_STANDARD, 0.0f, NULL };
    for (int nth = 1; nth <= 3; nth += 2) {
        struct ggml_context * g = graph_ctx();
        struct ggml_tensor * y = ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down, &p, err, sizeof(err));
        CHECK(y, "%s standard down: %s", ggml_type_name(type), err);
        if (y) {
            float * yv = compute(g, y, nth);
            const double e = rel_err(yv, y_ref, scale, ny);
            CHECK(e <= 1e-2, "%s exact T=%lld nth=%d standard down vs ref: rel err %.3g", ggml_type_name(type),
                  (long long) T, nth, e);
            free(yv);
        }
        ggml_free(g);
    }
    free(y_ref); free(scale);
    ffn_free(&f);
}

// ---- errors ---------------------------------------------------------------------------------

static void expect_error(bool ok, const char * err, const char * needle, const char * what) {
    CHECK(!ok, "%s: accepted", what);
    CHECK(!ok && strstr(err, needle), "%s: message \"%s\" does not mention \"%s\"", what, err, needle);
}

static void test_errors(void) {
    struct ffn f;
    ffn_init(&f, GGML_TYPE_F16, GGML_SPARSE_FFN_DRELU, 64, 32, 16, 1);
    char err[256];
    struct ggml_sparse_ffn_params p = { GGML_SPARSE_FFN_DRELU, GGML_SPARSE_MODE_PREDICTED, GGML_SPARSE_DOWN_NEURON_MAJOR, 0.0f, NULL };
    struct ggml_context * g = graph_ctx();

    CHECK(ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err)), "valid: %s", err);

    bool ok = ggml_sparse_check_ffn(f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "u", "predicted without predictor");
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, NULL, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "fc2", "predicted without fc2");
    CHECK(ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err)) == NULL,
          "ggml_sparse_ffn accepted predicted mode without a predictor");

    struct ggml_tensor * fc2_bad = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, 17, f.n_ff);
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, fc2_bad, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "fc2", "fc2 rank mismatch");

    struct ggml_tensor * up_bad = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F16, f.n_embd, f.n_ff + 1);
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, up_bad, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "w_up", "w_up shape");

    struct ggml_tensor * up_type = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, f.n_embd, f.n_ff);
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, up_type, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "w_up", "w_up type differs");

    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down, &p, err, sizeof(err));
    expect_error(ok, err, "w_down", "standard down declared neuron-major");

    struct ggml_tensor * x_bad = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, f.n_embd + 32, 1);
    ok = ggml_sparse_check_ffn(x_bad, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "w_gate", "x width differs from w_gate");

    struct ggml_tensor * x_f16 = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F16, f.n_embd, 1);
    ok = ggml_sparse_check_ffn(x_f16, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "x", "x not f32");

    // a transposed view is not contiguous
    struct ggml_tensor * sq = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, f.n_embd, f.n_embd);
    struct ggml_tensor * sq_t = ggml_transpose(f.ctx, sq);
    struct ggml_tensor * x_sq = ggml_new_tensor_2d(f.ctx, GGML_TYPE_F32, f.n_embd, 1);
    struct ggml_sparse_ffn_params pe = p;
    pe.mode = GGML_SPARSE_MODE_EXACT;
    ok = ggml_sparse_check_ffn(x_sq, NULL, NULL, NULL, sq_t, sq, sq, &pe, err, sizeof(err));
    expect_error(ok, err, "w_gate", "non-contiguous w_gate");

    pe.kind = GGML_SPARSE_FFN_SWIGLU;
    ok = ggml_sparse_check_ffn(f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &pe, err, sizeof(err));
    expect_error(ok, err, "SwiGLU", "SwiGLU in exact mode");
    pe.mode = GGML_SPARSE_MODE_DENSE;
    CHECK(ggml_sparse_check_ffn(f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &pe, err, sizeof(err)),
          "SwiGLU dense refused: %s", err);

    struct ggml_sparse_ffn_params pn = p;
    pn.threshold = NAN;
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &pn, err, sizeof(err));
    expect_error(ok, err, "threshold", "NaN threshold");
    pn = p; pn.mode = (enum ggml_sparse_mode) 7;
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, &pn, err, sizeof(err));
    expect_error(ok, err, "mode", "unknown mode");
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, f.w_gate, f.w_up, f.w_down_t, NULL, err, sizeof(err));
    expect_error(ok, err, "params", "no params");

    // a type ggml cannot convert to float
    struct ggml_tensor * wi  = ggml_new_tensor_2d(f.ctx, GGML_TYPE_I32, f.n_embd, f.n_ff);
    struct ggml_tensor * wi2 = ggml_new_tensor_2d(f.ctx, GGML_TYPE_I32, f.n_embd, f.n_ff);
    ok = ggml_sparse_check_ffn(f.x, f.u, f.fc1, f.fc2, wi, wi2, f.w_down_t, &p, err, sizeof(err));
    expect_error(ok, err, "i32", "i32 weights");
    CHECK(ggml_sparse_down(g, wi, ggml_new_tensor_2d(g, GGML_TYPE_F32, f.n_ff, 1), err, sizeof(err)) == NULL,
          "sparse down accepted i32 weights");
    CHECK(strstr(err, "w_down_t") != NULL, "down error does not name the tensor: %s", err);

    // finer ops
    CHECK(ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, f.x, GGML_SPARSE_FFN_DRELU, 0, NULL, err, sizeof(err)) == NULL &&
          strstr(err, "logits"), "gate_up accepted logits of the wrong shape (%s)", err);
    CHECK(ggml_sparse_gate_up(g, f.w_gate, f.w_up, f.x, NULL, GGML_SPARSE_FFN_SWIGLU, 0, NULL, err, sizeof(err)) == NULL,
          "gate_up accepted SwiGLU");
    CHECK(ggml_sparse_down(g, f.w_down_t, f.x, err, sizeof(err)) == NULL && strstr(err, "a:"),
          "down accepted a of the wrong shape (%s)", err);
    CHECK(ggml_sparse_down(g, NULL, f.x, err, sizeof(err)) == NULL, "down accepted NULL weights");
    CHECK(ggml_sparse_predictor(g, f.fc2, f.fc1, f.u, err, sizeof(err)) == NULL, "predictor accepted swapped fc1/fc2");
    // err may be NULL
    CHECK(ggml_sparse_ffn(g, f.x, NULL, NULL, NULL, f.w_gate, f.w_up, f.w_down_t, &p, NULL, 0) == NULL, "NULL err");

    ggml_free(g);
    ffn_free(&f);
}

int main(void) {
    ggml_cpu_init();
    printf("kernels: %s\n", ggml_sparse_isa());

    const enum ggml_type types[] = {
        GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
        GGML_TYPE_Q5_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_1, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        // K-quants need rows of 256; the others get a width whose last column slice is short
        const int64_t n_embd = ggml_blck_size(types[i]) == 256 ? 512 : 224;
        for (int64_t T = 1; T <= 3; T += 2) {
            test_ffn_case(types[i], GGML_SPARSE_FFN_DRELU, n_embd, 75, T);
            test_ffn_case(types[i], GGML_SPARSE_FFN_REGLU, n_embd, 75, T);
        }
        test_threshold_extremes(ggml_blck_size(types[i]) == 256 ? GGML_TYPE_Q5_0 : types[i]);
        const int64_t batch_T[] = { 2, 3, 5, 17, 40 };
        for (size_t j = 0; j < sizeof(batch_T) / sizeof(batch_T[0]); j++) {
            test_batch_case(types[i], j % 2 ? GGML_SPARSE_FFN_REGLU : GGML_SPARSE_FFN_DRELU, n_embd, 150, batch_T[j]);
        }
        test_batch_standard_down(types[i], n_embd);
        printf("%-5s ok so far: %d checks, %d failed\n", ggml_type_name(types[i]), n_checks, n_failed);
    }
    test_ffn_case(GGML_TYPE_F16, GGML_SPARSE_FFN_SWIGLU, 224, 75, 3);
    test_no_alloc();
    test_errors();

    printf("%d checks, %d failed\n", n_checks, n_failed);
    return n_failed ? 1 : 0;
}
