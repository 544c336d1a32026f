// ops.c: the sparse-FFN ggml ops (ggml-sparse.h) on the CPU.
//
// The builders check their inputs and add nodes; the sparse pieces are ggml_custom_4d nodes
// whose callbacks run on every thread of ggml_graph_compute and split the work by ith/nth.
// All arithmetic is done by the kernel table (ts-kernels.h); weight types without a kernel
// are dequantised row by row through ggml's type traits and go through the F32 kernels.
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "scratch.h"
#include "op-error.h"
#include "ops-internal.h"

#include "ggml.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- weight types -------------------------------------------------------------------------

// The kernel type of a ggml type, when the kernels handle it directly.
bool ts_kernel_type(enum ggml_type type, enum ts_type * out) {
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
    if (ts_kernel_type(type, &r.type)) {
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
    if (ts_kernel_type(w->type, &tt)) {
        return true;
    }
    if ((unsigned) w->type >= GGML_TYPE_COUNT || ggml_get_type_traits(w->type)->to_float == NULL ||
        ggml_blck_size(w->type) <= 0) {
        return ts_op_fail(err, err_size, "%s: weight type %s cannot be read by the sparse ops (ggml has no to_float for it)",
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
        return ts_op_fail(err, err_size, "%s: missing", name);
    }
    if (t->type != GGML_TYPE_F32) {
        return ts_op_fail(err, err_size, "%s: type %s, expected f32", name, ggml_type_name(t->type));
    }
    if (!is_2d(t) || t->ne[0] != n0 || (T >= 0 && t->ne[1] != T)) {
        return ts_op_fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                    (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                    (long long) n0, (long long) (T >= 0 ? T : t->ne[1]));
    }
    if (t->nb[0] != sizeof(float)) {
        return ts_op_fail(err, err_size, "%s: rows are not contiguous", name);
    }
    return true;
}

// A weight matrix of shape [ne0, ne1], contiguous.
static bool check_weight(const struct ggml_tensor * w, const char * name, int64_t ne0, int64_t ne1,
                         char * err, size_t err_size) {
    if (!w) {
        return ts_op_fail(err, err_size, "%s: missing", name);
    }
    if (!is_2d(w) || w->ne[0] != ne0 || (ne1 >= 0 && w->ne[1] != ne1)) {
        return ts_op_fail(err, err_size, "%s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                    (long long) w->ne[0], (long long) w->ne[1], (long long) w->ne[2], (long long) w->ne[3],
                    (long long) ne0, (long long) (ne1 >= 0 ? ne1 : w->ne[1]));
    }
    if (!ggml_is_contiguous(w)) {
        return ts_op_fail(err, err_size, "%s: not contiguous", name);
    }
    return true;
}

static bool check_predictor(const struct ggml_tensor * fc1, const struct ggml_tensor * fc2,
                            const struct ggml_tensor * u, int64_t n_embd, int64_t n_ff, int64_t T,
                            char * err, size_t err_size) {
    if (!fc1 || !fc2 || !u) {
        return ts_op_fail(err, err_size, "%s: missing (the predictor needs u, fc1 and fc2)",
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
        return ts_op_fail(err, err_size, "params: SwiGLU has no natural zeros; it runs in dense mode only");
    }
    return ts_op_fail(err, err_size, "params: unknown FFN kind %d", (int) kind);
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
        return ts_op_fail(err, err_size, "w_up: type %s differs from w_gate's %s", ggml_type_name(w_up->type),
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
        return ts_op_fail(err, err_size, "params: missing");
    }
    if ((unsigned) params->kind > GGML_SPARSE_FFN_DRELU) {
        return ts_op_fail(err, err_size, "params: unknown FFN kind %d", (int) params->kind);
    }
    if ((unsigned) params->mode > GGML_SPARSE_MODE_THRESHOLD) {
        return ts_op_fail(err, err_size, "params: unknown mode %d", (int) params->mode);
    }
    if ((unsigned) params->down_layout > GGML_SPARSE_DOWN_NEURON_MAJOR) {
        return ts_op_fail(err, err_size, "params: unknown down layout %d", (int) params->down_layout);
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
    if (params->mode == GGML_SPARSE_MODE_THRESHOLD) {
        if (params->kind != GGML_SPARSE_FFN_SWIGLU) {
            return ts_op_fail(err, err_size, "params: threshold mode is for SwiGLU FFNs (ReGLU/dReLU have exact zeros: "
                        "use the exact or predicted mode)");
        }
        if (isnan(params->threshold)) {
            return ts_op_fail(err, err_size, "params: threshold is NaN");
        }
        return sparse_type_ok(w_up, "w_up", err, err_size);
    }
    if (!sparse_kind_ok(params->kind, err, err_size) ||
        !check_gate_up(w_gate, w_up, x, err, err_size)) {
        return false;
    }
    if (params->mode == GGML_SPARSE_MODE_PREDICTED) {
        if (isnan(params->threshold)) {
            return ts_op_fail(err, err_size, "params: threshold is NaN");
        }
        return check_predictor(fc1, fc2, u, n_embd, n_ff, T, err, err_size);
    }
    return true;
}

// ---- op parameters -------------------------------------------------------------------------


static void stats_add(int64_t * counter, int64_t value) {
    __atomic_fetch_add(counter, value, __ATOMIC_RELAXED);
}

static void dequant_row(const struct weight_reader * r, const void * w, size_t row_bytes,
                        int64_t i, float * out, int64_t n) {
    r->to_float((const char *) w + (size_t) i * row_bytes, out, n);
}

// ---- sparse gate/up over batches of tokens ------------------------------------------------------
//
// The gate/up node runs sub-batches of tokens through dot_rows_batch, which reads each weight
// row once per sub-batch instead of once per token (a single token is a sub-batch of one).
// A sub-batch computes the gates of every (row, token) pair of the union of its tokens'
// rows, then the up rows some token still needs (it selected the row and its gate is
// positive: otherwise a = 0 in both FFN kinds), and keeps only the pairs a token uses. The
// batch kernels give dot_rows' bits for every pair, so each token's result is bit for bit its
// result run alone (a T = 1 graph); the down node relies on axpy_rows_batch likewise.
//
// Sub-batch sizing: a sub-batch S with union U costs about |U| * (ROW_COST + |S|) in units of
// one (row, token) product, ROW_COST being the price of fetching a row. The union of many
// tokens approaches every row, and then each extra token mostly adds products it does not
// need. So from each starting token the plan measures the union of the next 1, 2, ..., cap
// tokens (row sets as bitsets: an OR and a popcount per token) and takes the count with the
// least cost per token. Tokens that use no row at all (MoE tokens not routed to this
// expert) join no sub-batch: their output is zero.
// TURBOSPARSE_SUB_BATCH=N fixes the size at N tokens instead (for measuring).

// The price of reading one weight row, in (row, token) products. Measured (AVX-512, Q4_0,
// one thread, ts-main on the 8-layer Mistral-shaped bench model, a 119-token prompt, CPU
// time): predicted 10%/25% and exact prefill were flat within noise for values 0.5..4, and
// worse at 8 and above (exact 1.11 s at 4, 1.28 at 8, 1.69 at 16): the batch kernels' tiles
// cost nearly as much per product as a row costs to fetch, so sub-batches pay only where
// the tokens share most of their rows. Re-measure when the batch kernels change
// (TURBOSPARSE_ROW_COST=r overrides; bench_ffn.py --batch).
#define ROW_COST 3.0
// The same for the down node, whose batch tile (12 tokens x 32 columns of a row per step)
// costs more per product next to its single-token path than the gate/up tiles do: measured
// (AVX-512, Q4_0, dense mode on the natural-25% bench model, 128-token prompt, TURBOSPARSE_PROFILE
// per-node times) the down node took ~0.6 s at 1, 0.84-0.96 s at 3, ~0.6 s with one token per
// sub-batch (TURBOSPARSE_DOWN_ROW_COST=r overrides).
#define DOWN_ROW_COST 1.0
// Float rows (F32/F16/BF16) where the table's batch kernels block for the caches themselves
// (AVX-512: float_batch_blocked, dot tiles over L1 chunks of the activations, the down tile
// over packed L1 panels): a product costs far less than a row fetched again. Measured (F16,
// ts-main, 128-token prompt, the 2-core Xeon): down node in dense and exact mode on the
// natural-25% bench model, per-node profile: at 1 every token ran alone (its 25% of the rows
// from DRAM) and it took 0.96 / 1.09 s, at 4, 8, 16 and 64 0.62-0.66 s; gate/up in predicted
// mode at 25% density, prefill tok/s over 3 alternated runs: 3 -> 8: 49-54 -> 59-61 on the
// natural-25% model, 58-62 -> 72-75 on the natural-10% one; 16 and 32 no better than 8.
#define ROW_COST_FLOAT_BLOCKED 8.0
#define DOWN_ROW_COST_FLOAT_BLOCKED 8.0
// Tokens in a sub-batch at most: the down node keeps n_ff values per token of one.
#define SUB_BATCH_MAX 64
// Tokens per sub-batch of the exact-mode gate/up node at most (its scratch holds this many
// tokens' activations and ROW_CHUNK gates and ups of each).
#define EXACT_CAP 512
// Rows per batch-kernel call in the gate/up node: long, so that the kernels' prefetching
// (which starts a few rows into each call) covers most rows; the gates stay in L2.
#define ROW_CHUNK 256
// Rows dequantised at a time for types without a kernel.
#define DEQ_GROUP 16

static double row_cost_env, down_row_cost_env; // TURBOSPARSE_ROW_COST / _DOWN_ROW_COST; 0: not given
static pthread_once_t row_cost_once = PTHREAD_ONCE_INIT;

static void row_cost_read(void) {
    const char * s = getenv("TURBOSPARSE_ROW_COST");
    row_cost_env = s && atof(s) > 0.0 ? atof(s) : 0.0;
    s = getenv("TURBOSPARSE_DOWN_ROW_COST");
    down_row_cost_env = s && atof(s) > 0.0 ? atof(s) : 0.0;
}

// ROW_COST (down: DOWN_ROW_COST), or *_FLOAT_BLOCKED for float rows read by a kernel of a
// table with float_batch_blocked, or the environment's value when set (for measuring).
static double row_cost(bool down, const struct ts_kernels * k, const struct weight_reader * r) {
    pthread_once(&row_cost_once, row_cost_read);
    const double env = down ? down_row_cost_env : row_cost_env;
    if (env > 0.0) {
        return env;
    }
    if (r->fast && ts_is_float(r->type) && k->float_batch_blocked) {
        return down ? DOWN_ROW_COST_FLOAT_BLOCKED : ROW_COST_FLOAT_BLOCKED;
    }
    return down ? DOWN_ROW_COST : ROW_COST;
}

// 0: adaptive; N > 0: sub-batches of N tokens (at most 256).
int ts_sub_batch_setting(void) {
    const char * s = getenv("TURBOSPARSE_SUB_BATCH");
    int n = s ? atoi(s) : 0;
    return n < 0 ? 0 : n > 256 ? 256 : n; // the down node keeps n_ff floats per token of one
}

// Most tokens a sub-batch may hold.
static int64_t sub_batch_cap(int setting, int64_t T) {
    const int64_t cap = setting > 0 ? setting : SUB_BATCH_MAX;
    return cap < T ? cap : T;
}

// The sub-batches, in token order. Every thread builds the same plan from the same inputs,
// so they agree on every sub-batch without talking.
struct plan {
    int        setting; // ts_sub_batch_setting()
    int64_t    cap;     // sub_batch_cap()
    double     row_cost; // row_cost() of the node
    int64_t    n_words; // 64-bit words of one token's row set
    uint64_t * sets;    // [T][n_words] each token's rows
    int64_t  * n_set;   // [T] rows per token
    uint64_t * uni;     // [n_words] scratch for unions
    int32_t  * rows;    // [n_all] the current sub-batch's union, ascending
    int64_t    n_rows;
    int32_t  * tok;     // [cap] the current sub-batch's tokens, ascending
    int64_t    n_tok;
};

static size_t plan_bytes(int64_t T, int64_t n_all, int64_t cap) {
    const int64_t n_words = (n_all + 63) / 64;
    return ts_carve_size((size_t) (T * n_words) * sizeof(uint64_t)) + ts_carve_size((size_t) T * sizeof(int64_t)) +
           ts_carve_size((size_t) n_words * sizeof(uint64_t)) + ts_carve_size((size_t) n_all * sizeof(int32_t)) +
           ts_carve_size((size_t) cap * sizeof(int32_t));
}

static struct plan plan_carve(char ** cur, int setting, double row_cost, int64_t T, int64_t n_all, int64_t cap) {
    struct plan p = { .setting = setting, .cap = cap, .row_cost = row_cost, .n_words = (n_all + 63) / 64 };
    p.sets  = ts_carve(cur, (size_t) (T * p.n_words) * sizeof(uint64_t));
    p.n_set = ts_carve(cur, (size_t) T * sizeof(int64_t));
    p.uni   = ts_carve(cur, (size_t) p.n_words * sizeof(uint64_t));
    p.rows  = ts_carve(cur, (size_t) n_all * sizeof(int32_t));
    p.tok   = ts_carve(cur, (size_t) cap * sizeof(int32_t));
    return p;
}

// Token t's row set: the i < n with v[i] > tau (predicted) or v[i] != 0 (nonzero).
static void plan_set(struct plan * p, int64_t t, const float * v, int64_t n, float tau, bool nonzero) {
    uint64_t * st = p->sets + t * p->n_words;
    memset(st, 0, (size_t) p->n_words * sizeof(uint64_t));
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        const bool in = nonzero ? v[i] != 0.0f : v[i] > tau;
        st[i >> 6] |= (uint64_t) in << (i & 63);
        count += in;
    }
    p->n_set[t] = count;
}

// The next sub-batch from token *t (tokens with an empty set skipped): its tokens and the
// union of their rows. False when no token is left.
static bool plan_next(struct plan * p, int64_t T, int64_t * t) {
    int64_t m = 0;
    for (int64_t i = *t; i < T && m < p->cap; i++) {
        if (p->n_set[i] > 0) {
            p->tok[m++] = (int32_t) i;
        }
    }
    if (m == 0) {
        *t = T;
        return false;
    }
    const int64_t W = p->n_words;
    int64_t best = m;
    if (p->setting == 0) {
        memset(p->uni, 0, (size_t) W * sizeof(uint64_t));
        int64_t n_union = 0;
        double best_cost = INFINITY;
        const double r = p->row_cost;
        for (int64_t n = 1; n <= m; n++) {
            const uint64_t * st = p->sets + p->tok[n - 1] * W;
            for (int64_t w = 0; w < W; w++) {
                n_union += __builtin_popcountll(st[w] & ~p->uni[w]);
                p->uni[w] |= st[w];
            }
            const double cost = (double) n_union * (r + (double) n) / (double) n;
            if (cost < best_cost) {
                best_cost = cost;
                best = n;
            }
        }
    }
    memset(p->uni, 0, (size_t) W * sizeof(uint64_t));
    for (int64_t n = 0; n < best; n++) {
        const uint64_t * st = p->sets + p->tok[n] * W;
        for (int64_t w = 0; w < W; w++) {
            p->uni[w] |= st[w];
        }
    }
    p->n_rows = 0;
    for (int64_t w = 0; w < W; w++) {
        for (uint64_t bits = p->uni[w]; bits; bits &= bits - 1) {
            p->rows[p->n_rows++] = (int32_t) (w * 64 + __builtin_ctzll(bits));
        }
    }
    p->n_tok = best;
    *t = p->tok[best - 1] + 1;
    return true;
}

// out[s * out_stride + j] = dot(W[rows[j]], x_s) for the tokens of a sub-batch, x_s at
// x + s * x_stride in the dot type. Types without a kernel go through dequantised groups of
// rows and the F32 kernel (same arithmetic as their T = 1 path).
static void dot_batch(const struct ts_kernels * k, const struct weight_reader * r, int64_t n,
                      const struct ggml_tensor * w, const void * x, size_t x_stride, int64_t n_tok,
                      const int32_t * rows, int64_t n_rows, float * out, int64_t out_stride, float * deq) {
    if (r->fast) {
        // (one token: the table's own single-token path, which gives the same bits)
        if (n_tok == 1) {
            k->dot_rows(r->type, n, w->data, w->nb[1], x, rows, n_rows, out);
        } else {
            ts_dot_rows_blocked(k, r->type, n, w->data, w->nb[1], x, x_stride, n_tok, rows, n_rows, out, out_stride);
        }
        return;
    }
    for (int64_t j0 = 0; j0 < n_rows; j0 += DEQ_GROUP) {
        const int64_t n_grp = n_rows - j0 < DEQ_GROUP ? n_rows - j0 : DEQ_GROUP;
        for (int64_t j = 0; j < n_grp; j++) {
            dequant_row(r, w->data, w->nb[1], rows[j0 + j], deq + j * n, n);
        }
        k->dot_rows_batch(TS_TYPE_F32, n, deq, (size_t) n * sizeof(float), x, x_stride, n_tok,
                          NULL, n_grp, out + j0, out_stride);
    }
}

// What the gate/up node of a batch works with, per thread.
struct gu_batch {
    const struct ts_kernels  * k;
    struct weight_reader       r;
    const struct gate_up_op  * op;
    const struct ggml_tensor * wg, * wu, * x, * lg; // lg: logits, NULL in exact mode
    struct ggml_tensor       * a;
    int64_t n_embd, n_ff;
    size_t  x_bytes;  // one token's x in the dot type
    char  * xd;       // [cap] tokens' x in the dot type
    float * g, * u;   // [cap][ROW_CHUNK]
    int32_t * up_rows, * up_pos; // [ROW_CHUNK] the chunk's union of rows needing up, their positions
    int32_t * tok_rows;          // [ROW_CHUNK] one token's rows needing up
    uint8_t * need;              // [cap][ROW_CHUNK] whether the pair needs its up value
    float * deq;      // [DEQ_GROUP][n_embd], generic path
    int64_t rows_read; // this thread's count for stats.rows_read
};

static float * act_row(const struct gu_batch * b, int64_t t) {
    return (float *) ((char *) b->a->data + t * b->a->nb[1]);
}

// Whether token t computes neuron i (predicted: its logit passes the threshold).
static bool gu_selected(const struct gu_batch * b, int64_t t, int64_t i) {
    if (!b->lg) {
        return true;
    }
    const float * lt = (const float *) ((const char *) b->lg->data + t * b->lg->nb[1]);
    return lt[i] > b->op->threshold;
}

// The tokens tok[0..n_tok) in the dot type, one after another in b->xd.
static void gu_load_x(struct gu_batch * b, const int32_t * tok, int64_t n_tok) {
    for (int64_t s = 0; s < n_tok; s++) {
        const float * xt = (const float *) ((const char *) b->x->data + tok[s] * b->x->nb[1]);
        char * dst = b->xd + s * b->x_bytes;
        ts_quantize_dot(b->k, b->r.type, xt, dst, b->n_embd); // the generic path: r.type F32, a copy
    }
}

// Neurons rows[0..n_rows) for the tokens tok[0..n_tok) (their x in b->xd): a = act(g, u)
// where the token selected the neuron and g > 0, else 0. Gates first, for every pair; then
// the up values of just the pairs that need one: by the same cost model as the sub-batches,
// either each row of the chunk's union once for all tokens, or each token's own rows (when
// few tokens share them, as in exact mode, where about half the gates of a token are
// positive but the union of many tokens is every row). Returns how many written values are
// non-zero.
static int64_t gu_rows(struct gu_batch * b, const int32_t * tok, int64_t n_tok,
                       const int32_t * rows, int64_t n_rows) {
    const double r = row_cost(false, b->k, &b->r);
    int64_t n_nz = 0;
    for (int64_t j0 = 0; j0 < n_rows; j0 += ROW_CHUNK) {
        const int64_t n_ch = n_rows - j0 < ROW_CHUNK ? n_rows - j0 : ROW_CHUNK;
        const int32_t * ch = rows + j0;
        dot_batch(b->k, &b->r, b->n_embd, b->wg, b->xd, b->x_bytes, n_tok, ch, n_ch, b->g, ROW_CHUNK, b->deq);
        int64_t n_up = 0, n_pairs = 0;
        for (int64_t j = 0; j < n_ch; j++) {
            bool any = false;
            for (int64_t s = 0; s < n_tok; s++) {
                const bool need = b->g[s * ROW_CHUNK + j] > 0.0f && gu_selected(b, tok[s], ch[j]);
                b->need[s * ROW_CHUNK + j] = need;
                any |= need;
                n_pairs += need;
            }
            if (any) {
                b->up_rows[n_up] = ch[j];
                b->up_pos[n_up++] = (int32_t) j;
            }
        }
        const bool per_token = n_tok > 1 && (double) n_pairs * (r + 1.0) < (double) n_up * (r + (double) n_tok);
        if (!b->lg) { // exact mode: the up rows are what sparsity saves (stats.rows_read)
            b->rows_read += per_token ? n_pairs : n_up;
        }
        if (per_token) { // b->u[s][m]: token s's m-th needed row
            for (int64_t s = 0; s < n_tok; s++) {
                int64_t n_s = 0;
                for (int64_t j = 0; j < n_ch; j++) {
                    if (b->need[s * ROW_CHUNK + j]) {
                        b->tok_rows[n_s++] = ch[j];
                    }
                }
                dot_batch(b->k, &b->r, b->n_embd, b->wu, b->xd + s * b->x_bytes, b->x_bytes, 1, b->tok_rows, n_s,
                          b->u + s * ROW_CHUNK, ROW_CHUNK, b->deq);
            }
        } else {         // b->u[s][m]: the m-th row of the union, for token s
            dot_batch(b->k, &b->r, b->n_embd, b->wu, b->xd, b->x_bytes, n_tok, b->up_rows, n_up, b->u, ROW_CHUNK, b->deq);
        }
        for (int64_t s = 0; s < n_tok; s++) {
            float * at = act_row(b, tok[s]);
            const float   * gs = b->g + s * ROW_CHUNK;
            const float   * us = b->u + s * ROW_CHUNK;
            const uint8_t * ns = b->need + s * ROW_CHUNK;
            int64_t m_union = 0, m_tok = 0;
            for (int64_t j = 0; j < n_ch; j++) {
                const bool in_union = m_union < n_up && b->up_pos[m_union] == j;
                float v = 0.0f;
                if (ns[j]) {
                    v = ts_act_apply(b->op->act, gs[j], per_token ? us[m_tok++] : us[m_union]);
                }
                m_union += in_union;
                at[ch[j]] = v;
                n_nz += v != 0.0f;
            }
        }
    }
    return n_nz;
}

// Exact mode: every neuron of this thread's share [i0, i1) for sub-batches of the tokens
// whose x is not all zero (a zero x has no positive gate: its a is 0, as at T = 1).
static int64_t gu_batch_exact(struct gu_batch * b, int64_t T, int64_t cap, int ith, int nth,
                              int32_t * tok, int32_t * rows) {
    const int64_t i0 = b->n_ff * ith / nth;
    const int64_t i1 = b->n_ff * (ith + 1) / nth;
    if (i1 <= i0) {
        return 0;
    }
    for (int64_t i = i0; i < i1; i++) {
        rows[i - i0] = (int32_t) i;
    }
    int64_t n_nz = 0, n_tok = 0;
    for (int64_t t = 0; t <= T; t++) {
        bool zero = true;
        if (t < T) {
            const float * xt = (const float *) ((const char *) b->x->data + t * b->x->nb[1]);
            for (int64_t c = 0; c < b->n_embd && zero; c++) {
                zero = xt[c] == 0.0f;
            }
            if (zero) {
                memset(act_row(b, t) + i0, 0, (size_t) (i1 - i0) * sizeof(float));
            } else {
                tok[n_tok++] = (int32_t) t;
            }
        }
        if (n_tok > 0 && (n_tok == cap || t == T)) {
            gu_load_x(b, tok, n_tok);
            n_nz += gu_rows(b, tok, n_tok, rows, i1 - i0);
            n_tok = 0;
        }
    }
    return n_nz;
}

// Predicted mode: the thread takes a balanced share of each sub-batch's union and owns the
// neurons from its first row up to the next thread's first, writing zeros there for the
// sub-batch's tokens first; so every element of a is written by exactly one thread.
// Returns the neurons selected (counted on thread 0 only).
static int64_t gu_batch_predicted(struct gu_batch * b, int64_t T, struct plan * p, int ith, int nth) {
    const int64_t n_ff = b->n_ff;
    int64_t n_selected = 0;
    for (int64_t t = 0; t < T; t++) {
        const float * lt = (const float *) ((const char *) b->lg->data + t * b->lg->nb[1]);
        plan_set(p, t, lt, n_ff, b->op->threshold, false);
        n_selected += p->n_set[t];
        if (p->n_set[t] == 0) {
            const int64_t z0 = n_ff * ith / nth, z1 = n_ff * (ith + 1) / nth;
            memset(act_row(b, t) + z0, 0, (size_t) (z1 - z0) * sizeof(float));
        }
    }
    for (int64_t t = 0; plan_next(p, T, &t);) {
        const int64_t k0 = p->n_rows * ith / nth;
        const int64_t k1 = p->n_rows * (ith + 1) / nth;
        const int64_t lo = ith == 0 ? 0 : (k0 < p->n_rows ? p->rows[k0] : n_ff);
        const int64_t hi = ith == nth - 1 ? n_ff : (k1 < p->n_rows ? p->rows[k1] : n_ff);
        for (int64_t s = 0; s < p->n_tok && hi > lo; s++) {
            memset(act_row(b, p->tok[s]) + lo, 0, (size_t) (hi - lo) * sizeof(float));
        }
        if (ith == 0) { // predicted mode: each sub-batch reads its union's gate rows once
            b->rows_read += p->n_rows;
        }
        if (k1 > k0) {
            gu_load_x(b, p->tok, p->n_tok);
            gu_rows(b, p->tok, p->n_tok, p->rows + k0, k1 - k0);
        }
    }
    return ith == 0 ? n_selected : 0;
}

int64_t ts_gate_up_run(const struct gate_up_op * op, const struct ggml_tensor * wg, const struct ggml_tensor * wu,
                       const struct ggml_tensor * x, const struct ggml_tensor * lg, struct ggml_tensor * a,
                       int ith, int nth, int64_t * rows_read) {
    struct gu_batch b = {
        .k = ts_kernels_best(), .r = weight_reader_of(wg->type), .op = op,
        .wg = wg, .wu = wu, .x = x, .lg = op->predicted ? lg : NULL,
        .a = a, .n_embd = wg->ne[0], .n_ff = wg->ne[1],
    };
    const int64_t T   = b.x->ne[1];
    // exact mode: every token's gates are read anyway, so its sub-batches are only as small
    // as the scratch needs (a 128-token prompt in two sub-batches of 64 read gate and up twice)
    const int64_t cap = op->predicted || op->sub_batch > 0 ? sub_batch_cap(op->sub_batch, T) : (T < EXACT_CAP ? T : EXACT_CAP);
    b.x_bytes = ts_row_size(ts_dot_type(b.r.type), b.n_embd);
    const size_t ff_i32  = (size_t) b.n_ff * sizeof(int32_t);
    const size_t tile    = (size_t) cap * ROW_CHUNK * sizeof(float);
    const size_t chunk   = ROW_CHUNK * sizeof(int32_t);
    const size_t deq     = b.r.fast ? 0 : (size_t) DEQ_GROUP * b.n_embd * sizeof(float);
    const size_t plan    = b.lg ? plan_bytes(T, b.n_ff, cap) : 0;
    const size_t need    = (size_t) cap * ROW_CHUNK;
    char * cur = ts_scratch(ts_carve_size(cap * b.x_bytes) + 2 * ts_carve_size(tile) + 3 * ts_carve_size(chunk) +
                            ts_carve_size(need) +
                            ts_carve_size(deq) + ts_carve_size(ff_i32) + ts_carve_size((size_t) T * sizeof(int32_t)) +
                            plan);
    b.xd      = ts_carve(&cur, cap * b.x_bytes);
    b.g       = ts_carve(&cur, tile);
    b.u       = ts_carve(&cur, tile);
    b.up_rows = ts_carve(&cur, chunk);
    b.up_pos  = ts_carve(&cur, chunk);
    b.tok_rows = ts_carve(&cur, chunk);
    b.need    = ts_carve(&cur, need);
    b.deq     = ts_carve(&cur, deq);
    int32_t * rows = ts_carve(&cur, ff_i32);
    int32_t * tok  = ts_carve(&cur, (size_t) T * sizeof(int32_t));
    int64_t n_computed;
    if (!b.lg) {
        n_computed = gu_batch_exact(&b, T, cap, ith, nth, tok, rows);
    } else {
        struct plan p = plan_carve(&cur, op->sub_batch, row_cost(false, b.k, &b.r), T, b.n_ff, cap);
        n_computed = gu_batch_predicted(&b, T, &p, ith, nth);
    }
    if (rows_read) {
        *rows_read += b.rows_read;
    }
    return n_computed;
}

// One thread's share of a gate/up evaluation of T tokens over n_ff neurons: its computed
// neurons and rows read; thread 0 adds the evaluation's totals.
static void stats_of_gate_up(struct ggml_sparse_stats * stats, int64_t n_computed, int64_t rows_read, int64_t n_ff,
                             int64_t T, int ith) {
    if (stats) {
        stats_add(&stats->neurons_computed, n_computed);
        stats_add(&stats->rows_read, rows_read);
        if (ith == 0) {
            stats_add(&stats->neurons_total, n_ff * T);
            stats_add(&stats->tokens, T);
            stats_add(&stats->rows_total, n_ff);
        }
    }
}

// dst a [n_ff, T]; src: w_gate, w_up, x, and logits in predicted mode.
static void gate_up_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct gate_up_op * op = userdata;
    int64_t rows_read = 0;
    const int64_t n_computed = ts_gate_up_run(op, dst->src[0], dst->src[1], dst->src[2],
                                              op->predicted ? dst->src[3] : NULL, dst, ith, nth, &rows_read);
    stats_of_gate_up(op->stats, n_computed, rows_read, dst->ne[0], dst->ne[1], ith);
}

// ---- sparse down over batches of tokens ---------------------------------------------------------


// The down node for T > 1 (types with a kernel): this thread's columns [c0, c1) of every
// token, sub-batches over the union of the tokens' non-zero rows.
static void down_batch(const struct ts_kernels * k, const struct weight_reader * r, const struct ggml_tensor * w,
                       const struct ggml_tensor * a, struct ggml_tensor * dst, int setting, int64_t c0, int64_t c1) {
    const enum ts_type type = r->type;
    const int64_t n_embd = w->ne[0];
    const int64_t n_ff   = w->ne[1];
    const int64_t T      = a->ne[1];
    const int64_t cap    = sub_batch_cap(setting, T);
    const size_t vals   = (size_t) cap * n_ff * sizeof(float);
    const size_t ybuf   = (size_t) cap * n_embd * sizeof(float);
    char * cur = ts_scratch(plan_bytes(T, n_ff, cap) + ts_carve_size(vals) + ts_carve_size(ybuf));
    struct plan p = plan_carve(&cur, setting, row_cost(true, k, r), T, n_ff, cap);
    float * av = ts_carve(&cur, vals);
    float * yb = ts_carve(&cur, ybuf);
    const int64_t y_stride = (int64_t) (dst->nb[1] / sizeof(float));

    for (int64_t t = 0; t < T; t++) {
        plan_set(&p, t, (const float *) ((const char *) a->data + t * a->nb[1]), n_ff, 0.0f, true);
        if (p.n_set[t] == 0) {
            float * yt = (float *) ((char *) dst->data + t * dst->nb[1]);
            memset(yt + c0, 0, (size_t) (c1 - c0) * sizeof(float));
        }
    }
    for (int64_t t = 0; plan_next(&p, T, &t);) {
        for (int64_t s = 0; s < p.n_tok; s++) {
            const float * at = (const float *) ((const char *) a->data + p.tok[s] * a->nb[1]);
            for (int64_t j = 0; j < p.n_rows; j++) {
                av[s * p.n_rows + j] = at[p.rows[j]];
            }
        }
        if (p.n_tok == 1) { // the table's own single-token path, which gives the same bits
            float * yt = (float *) ((char *) dst->data + p.tok[0] * dst->nb[1]);
            k->axpy_rows(type, n_embd, w->data, w->nb[1], p.rows, av, p.n_rows, c0, c1, yt);
        } else if (p.tok[p.n_tok - 1] - p.tok[0] == p.n_tok - 1) { // consecutive tokens: straight into dst
            float * y0 = (float *) ((char *) dst->data + p.tok[0] * dst->nb[1]);
            k->axpy_rows_batch(type, n_embd, w->data, w->nb[1], p.rows, av, p.n_rows, p.n_rows,
                               p.n_tok, c0, c1, y0, y_stride);
        } else {
            k->axpy_rows_batch(type, n_embd, w->data, w->nb[1], p.rows, av, p.n_rows, p.n_rows,
                               p.n_tok, c0, c1, yb, n_embd);
            for (int64_t s = 0; s < p.n_tok; s++) {
                float * yt = (float *) ((char *) dst->data + p.tok[s] * dst->nb[1]);
                memcpy(yt + c0, yb + s * n_embd + c0, (size_t) (c1 - c0) * sizeof(float));
            }
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

void ts_down_run(const struct ggml_tensor * w, const struct ggml_tensor * a, struct ggml_tensor * dst,
                 int setting, int ith, int nth) {
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
    if (T > 1 && r.fast) {
        // (the generic path stays per token: its group sums follow each token's own list)
        down_batch(k, &r, w, a, dst, setting, c0, c1);
        return;
    }

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

// dst y [n_embd, T]; src: w_down_t [n_embd, n_ff], a [n_ff, T].
// userdata: the sub-batch setting, as an intptr_t.
static void down_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    ts_down_run(dst->src[0], dst->src[1], dst, (int) (intptr_t) userdata, ith, nth);
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
            ts_op_fail(err, err_size, "threshold is NaN");
            return NULL;
        }
    }
    struct gate_up_op * op = ggml_new_buffer(ctx, sizeof(*op));
    op->act       = kind == GGML_SPARSE_FFN_DRELU ? TS_ACT_DRELU : TS_ACT_REGLU;
    op->threshold = threshold;
    op->predicted = logits != NULL;
    op->sub_batch = ts_sub_batch_setting();
    op->stats     = stats;
    struct ggml_tensor * args[4] = { w_gate, w_up, x, logits };
    struct ggml_tensor * a = ggml_custom_4d(ctx, GGML_TYPE_F32, n_ff, T, 1, 1, args, logits ? 4 : 3,
                                            gate_up_compute, GGML_N_TASKS_MAX, op);
    ggml_format_name(a, "sparse_gate_up%s", logits ? "" : "_exact");
    return a;
}

bool ts_check_down(const struct ggml_tensor * w_down_t, const struct ggml_tensor * a, char * err, size_t err_size) {
    return check_weight(w_down_t, "w_down_t", w_down_t ? w_down_t->ne[0] : 0, -1, err, err_size) &&
           sparse_type_ok(w_down_t, "w_down_t", err, err_size) &&
           check_act(a, "a", w_down_t->ne[1], -1, err, err_size);
}

struct ggml_tensor * ggml_sparse_down(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_down_t,
        struct ggml_tensor  * a,
        char * err, size_t err_size) {
    if (!ts_check_down(w_down_t, a, err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[2] = { w_down_t, a };
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w_down_t->ne[0], a->ne[1], 1, 1, args, 2,
                                            down_compute, GGML_N_TASKS_MAX, (void *) (intptr_t) ts_sub_batch_setting());
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

// Exact mode over a batch of at least this many tokens computes gate and up as two dense
// products: each token's positive gates (a third to a half of the rows in dReLU models) leave
// hardly a row that no token of the batch needs, and the dense tiles cost less per product
// than the exact node's chunked ones (F16 prefill of the 8-layer bench model, 128 tokens: the
// exact gate/up node 1.43-1.50 s against 1.30-1.38 s for the two dense products).
#define EXACT_DENSE_MIN_TOKENS 16

// dst: a view of a (in place); adds a's non-zero values and its shape to the exact mode's
// statistics, as the exact gate/up node counts them (every up row read once for the batch).
static void exact_count_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    struct ggml_sparse_stats * stats = userdata;
    const struct ggml_tensor * a = dst;
    const int64_t n_ff = a->ne[0], T = a->ne[1];
    const int64_t t0 = T * ith / nth, t1 = T * (ith + 1) / nth;
    int64_t n_nz = 0;
    for (int64_t t = t0; t < t1; t++) {
        const float * at = (const float *) ((const char *) a->data + t * a->nb[1]);
        for (int64_t i = 0; i < n_ff; i++) {
            n_nz += at[i] != 0.0f;
        }
    }
    // every up row read once for the batch (thread 0 counts the rows with the totals)
    stats_of_gate_up(stats, n_nz, ith == 0 ? n_ff : 0, n_ff, T, ith);
}

// Exact mode's activations of a batch through the dense products, where those give the exact
// node's bits (the matmul runs our kernels: dot_rows' bits, like the exact node); else NULL.
static struct ggml_tensor * exact_dense_act(struct ggml_context * ctx, const struct ggml_sparse_ffn_params * params,
                                            struct ggml_tensor * x, struct ggml_tensor * w_gate,
                                            struct ggml_tensor * w_up) {
    if (x->ne[1] < EXACT_DENSE_MIN_TOKENS || params->kind == GGML_SPARSE_FFN_SWIGLU ||
        !ggml_sparse_matmul_preferred(w_gate) || !ggml_sparse_matmul_preferred(w_up)) {
        return NULL;
    }
    struct ggml_tensor * a = dense_act(ctx, params->kind, ggml_sparse_mul_mat(ctx, w_gate, x),
                                       ggml_sparse_mul_mat(ctx, w_up, x));
    if (params->stats) {
        a = ggml_custom_inplace(ctx, a, NULL, 0, exact_count_compute, GGML_N_TASKS_MAX, params->stats);
    }
    return a;
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
    } else if (params->mode == GGML_SPARSE_MODE_THRESHOLD) {
        // silu by ggml's own op: the same bits its swiglu multiplies by u (dense mode)
        struct ggml_tensor * s = ggml_silu(ctx, ggml_sparse_mul_mat(ctx, w_gate, x));
        a = ggml_sparse_up_threshold(ctx, w_up, x, s, params->threshold, params->stats, params->hist, err, err_size);
        if (!a) {
            return NULL;
        }
    } else if (params->mode == GGML_SPARSE_MODE_EXACT && (a = exact_dense_act(ctx, params, x, w_gate, w_up))) {
        // (a batch: the dense products, see EXACT_DENSE_MIN_TOKENS)
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
    if (!neuron_major) {
        return ggml_sparse_mul_mat(ctx, w_down, a);
    }
    // SwiGLU's neuron-major down (threshold mode, and dense mode on such a file, so that a
    // threshold of -inf gives the dense bits) splits the neurons among threads too
    return params->kind == GGML_SPARSE_FFN_SWIGLU ? ggml_sparse_down_chunked(ctx, w_down, a, err, err_size)
                                                  : ggml_sparse_down(ctx, w_down, a, err, err_size);
}

size_t ggml_sparse_ffn_ctx_size(void) {
    // At most 7 nodes (predictor 3, gate/up 1, down 1; dense: 3 mul_mat + 3 activation ops;
    // exact over a batch: 2 mul_mat + 3 activation ops + the count + down; threshold: gate,
    // silu, up, down parts and sum) plus one parameter block (gate/up's or threshold.c's,
    // which is smaller); the slack covers ggml's object headers.
    return 8 * ggml_tensor_overhead() + sizeof(struct gate_up_op) + 256;
}

const char * ggml_sparse_isa(void) {
    return ts_kernels_best()->name;
}
