// ggml-sparse.h: sparse-FFN operations for ggml graphs (SPEC §1, §2).
//
// Each function adds nodes to a ggml graph; nothing is computed until the graph is. The
// sparse pieces are ggml custom ops (ggml_custom_4d) that run inside an ordinary
// ggml_graph_compute on ggml's thread pool; the dense pieces (predictor, dense FFN) are
// ggml's own mul_mat, so the dense path is exactly ggml's. Callers never see which
// backend runs a node: a CUDA implementation of the same functions comes later.
//
// Shapes follow ggml (ne0 first). n_embd = model width, n_ff = FFN width, T = tokens:
//   x, u           [n_embd, T]  f32   FFN input (RMS-normed) and predictor input
//   fc1            [n_embd, r]        predictor first layer   (HF [r, n_embd])
//   fc2            [r, n_ff]          predictor second layer  (HF [n_ff, r])
//   w_gate, w_up   [n_embd, n_ff]     row i = neuron i        (HF [n_ff, n_embd])
//   w_down         standard:     [n_ff, n_embd]  (HF [n_embd, n_ff], what llama.cpp stores)
//                  neuron-major: [n_embd, n_ff]  row i = neuron i's output vector
//   result         [n_embd, T]  f32
// Weight types with fast sparse kernels: F32, F16, BF16, Q8_0, Q4_0. Other ggml types are
// dequantised row by row through ggml's type traits (correct, slower); a type ggml cannot
// convert to float is refused with a message naming it (ggml_sparse_check_ffn).
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ggml_sparse_ffn_kind {
    GGML_SPARSE_FFN_SWIGLU = 0, // silu(g) * u       dense only (no natural zeros)
    GGML_SPARSE_FFN_REGLU  = 1, // relu(g) * u
    GGML_SPARSE_FFN_DRELU  = 2, // relu(g) * relu(u)
};

enum ggml_sparse_mode {
    GGML_SPARSE_MODE_DENSE     = 0, // every neuron, ggml mul_mat (the reference)
    GGML_SPARSE_MODE_PREDICTED = 1, // neurons with predictor logit > threshold only
    GGML_SPARSE_MODE_EXACT     = 2, // gate for all, up where gate > 0, down where a != 0
    GGML_SPARSE_MODE_THRESHOLD = 3, // SwiGLU (CATS): gate for all, up and down only where
                                    // |silu(gate)| >= threshold (lossy; -inf = every neuron)
};

enum ggml_sparse_down_layout {
    GGML_SPARSE_DOWN_STANDARD     = 0,
    GGML_SPARSE_DOWN_NEURON_MAJOR = 1,
};

// Running counts a graph adds to as it computes (integer atomics; may be shared by all
// layers of a model). Only the sparse gate/up node counts (predicted and exact modes).
//   predicted mode: neurons_computed = neurons predicted active (gate and up rows read)
//   exact mode:     neurons_computed = neurons found active (a != 0; every gate row and the
//                   up rows of positive gates were read)
struct ggml_sparse_stats {
    int64_t neurons_computed;
    int64_t neurons_total;   // n_ff per token
    int64_t tokens;          // token-FFN evaluations (T per sparse gate/up node)
    // Weight rows read, a batch's union once per sub-batch (every token's own rows at T = 1):
    //   predicted mode: the gate rows of the sub-batches' unions of selected neurons
    //   exact mode:     the up rows (every gate row is read anyway)
    int64_t rows_read;
    int64_t rows_total;      // n_ff per sparse gate/up node evaluation
};

// Histogram of |silu(gate)| of a threshold-mode node (for calibrating thresholds): value v
// falls in bin (bits of the float |v|) >> 16, so bins are ordered like the values, each
// 2^-7 of its value wide, and bin b holds exactly the v with ggml_sparse_act_hist_edge(b) <=
// |v| < ggml_sparse_act_hist_edge(b + 1): a threshold at an edge splits the counts exactly.
#define GGML_SPARSE_ACT_HIST_BINS 32768
struct ggml_sparse_act_hist {
    int64_t counts[GGML_SPARSE_ACT_HIST_BINS]; // added to with integer atomics
};

// The smallest |v| of bin b (b = GGML_SPARSE_ACT_HIST_BINS: +inf's bin edge, i.e. nothing above).
float ggml_sparse_act_hist_edge(int32_t bin);

struct ggml_sparse_ffn_params {
    enum ggml_sparse_ffn_kind    kind;
    enum ggml_sparse_mode        mode;
    enum ggml_sparse_down_layout down_layout;
    float                        threshold; // predicted: predictor logit cut tau (SPEC §2; 0 =
                                            // trained cut); threshold mode: the cut on |silu(g)|
    struct ggml_sparse_stats   * stats;     // optional; must outlive every compute of the graph
    struct ggml_sparse_act_hist * hist;     // threshold mode, optional: |silu(g)| of every neuron
};

// ---- the whole FFN ---------------------------------------------------------------------------

// y = W_down · act(W_gate x, W_up x) in the mode of `params` (copied into ctx).
// fc1/fc2/u are needed in predicted mode only (may be NULL otherwise).
// Returns NULL and fills `err` (if given) when shapes, types or the mode do not fit.
//
// What each mode builds:
//   dense, standard down:      three ggml_mul_mat and ggml's activation ops (ggml's dense FFN)
//   dense, neuron-major down:  gate/up by ggml_mul_mat, activation by ggml ops, then the
//                              sparse down node over every row (it skips exact zeros)
//   predicted:                 predictor (ggml_mul_mat, relu, ggml_mul_mat), sparse gate/up
//   exact:                     sparse gate/up in exact mode; a batch of 16 tokens or more
//                              whose gate and up run on turbosparse's matmul: the two dense
//                              products and the activation ops instead (the same values and
//                              statistics; hardly a row is unused by that many tokens)
//   threshold (SwiGLU only):   gate by ggml_sparse_mul_mat, s = ggml_silu(gate) (ggml's own
//                              op, so s is the bits ggml's SwiGLU uses), then the sparse up
//                              node (ggml_sparse_up_threshold)
//   and in both sparse modes the sparse down node (neuron-major) or ggml_mul_mat (standard
//   down: correct, but W_down is then read whole).
// Requirements: x (and u) f32 [n_embd, T] with contiguous rows; weights 2-D, contiguous;
// w_gate and w_up of one type; SwiGLU in dense and threshold mode only (threshold mode for
// SwiGLU only, threshold not NaN); the sparse nodes need a weight
// type with a fast kernel or a ggml to_float.
//
// Memory: the nodes' metadata and a small parameter block live in ctx; a no_alloc context
// needs ggml_sparse_ffn_ctx_size() bytes per call on top of its other tensors.
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
        char * err, size_t err_size);

// Checks what ggml_sparse_ffn would check, without adding nodes. true when fine; else the
// first problem, naming the tensor, goes to err.
bool ggml_sparse_check_ffn(
        const struct ggml_tensor * x, const struct ggml_tensor * u,
        const struct ggml_tensor * fc1, const struct ggml_tensor * fc2,
        const struct ggml_tensor * w_gate, const struct ggml_tensor * w_up,
        const struct ggml_tensor * w_down,
        const struct ggml_sparse_ffn_params * params,
        char * err, size_t err_size);

// Upper bound on the context memory (tensor metadata and op parameters) one ggml_sparse_ffn
// call takes, for sizing no_alloc contexts.
size_t ggml_sparse_ffn_ctx_size(void);

// ---- the finer ops it is made of ---------------------------------------------------------
// Each returns NULL and fills `err` (if given) on bad shapes or types, naming the tensor.

// Predictor logits [n_ff, T] = fc2 · relu(fc1 · u)   (ggml mul_mat + relu).
struct ggml_tensor * ggml_sparse_predictor(
        struct ggml_context * ctx,
        struct ggml_tensor  * fc1,
        struct ggml_tensor  * fc2,
        struct ggml_tensor  * u,
        char * err, size_t err_size);

// Sparse gate/up fused with the activation: a [n_ff, T] f32, zero for neurons not computed.
// With logits ([n_ff, T] f32): neurons with logit > threshold (predicted mode).
// With logits == NULL: exact mode (gate for all, up where gate > 0).
// kind must be REGLU or DRELU. stats may be NULL.
struct ggml_tensor * ggml_sparse_gate_up(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_gate,
        struct ggml_tensor  * w_up,
        struct ggml_tensor  * x,
        struct ggml_tensor  * logits,
        enum ggml_sparse_ffn_kind kind,
        float threshold,
        struct ggml_sparse_stats * stats,
        char * err, size_t err_size);

// Threshold-mode up and activation: a [n_ff, T] f32 with a[i] = s[i] * dot(w_up[i], x) where
// |s[i]| >= threshold and 0 elsewhere; s = silu(W_gate x) [n_ff, T] f32 (contiguous rows).
// Each a[i] is one dot_rows result times s[i]: the same bits for any thread count, batch size
// or threshold, and, at threshold -inf, the bits of ggml_swiglu_split(g, W_up x) when W_up x
// comes from ggml_sparse_matmul (same dot kernel; ggml's swiglu is its silu times u).
// stats counts the neurons computed; hist (optional) gets |s| of every neuron.
struct ggml_tensor * ggml_sparse_up_threshold(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_up,
        struct ggml_tensor  * x,
        struct ggml_tensor  * s,
        float threshold,
        struct ggml_sparse_stats * stats,
        struct ggml_sparse_act_hist * hist,
        char * err, size_t err_size);

// Sparse down projection y [n_embd, T] = sum over i with a[i] != 0 of a[i] * w_down_t[i],
// w_down_t neuron-major, a f32 [n_ff, T] with contiguous rows. Bit-identical for any
// thread count (each output column is one fixed chain of multiply-adds, see ts-kernels.h).
struct ggml_tensor * ggml_sparse_down(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_down_t,
        struct ggml_tensor  * a,
        char * err, size_t err_size);

// The same product, the neurons split into 4 fixed ranges whose partial sums are added in
// order (two nodes, src/down-chunked.c): threads then read whole rows, not slices of every
// row. Bit-identical for any thread count and batch size; differs from ggml_sparse_down by
// rounding. ggml_sparse_ffn uses it for SwiGLU's neuron-major down (threshold, dense modes).
struct ggml_tensor * ggml_sparse_down_chunked(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_down_t,
        struct ggml_tensor  * a,
        char * err, size_t err_size);

// ---- dense products on the turbosparse kernels (src/matmul.c) -----------------------------

// y [rows, T] f32 = W x, as ggml_mul_mat(W, x), for a contiguous 2-D W [n, rows] of type
// F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K in its plain layout (not in ggml's repack buffer) or the 16-row
// layout of ggml_sparse_matmul_pack, and x f32 [n, T]
// with contiguous rows. x is quantised to the row's dot type as ggml does (Q8_0 for Q8_0/Q4_0).
// Bit-identical for any thread count. NULL with err filled (naming the tensor) otherwise.
struct ggml_tensor * ggml_sparse_matmul(
        struct ggml_context * ctx,
        struct ggml_tensor  * w,
        struct ggml_tensor  * x,
        char * err, size_t err_size);

// Whether ggml_sparse_matmul is the faster choice for W on this CPU (the measured policy in
// matmul.c: the AVX-512 table yes; AVX2 for Q8_0 only; NEON/scalar no; TURBOSPARSE_MATMUL=
// ours|ggml overrides) and W's type and layout allow it. A loader asks this before choosing a weight's memory layout.
bool ggml_sparse_matmul_preferred(const struct ggml_tensor * w);

// The kernel table's 16-row layout for a weight only ever read by ggml_sparse_matmul
// (ts-kernels.h: one memory stream per 16 rows; the AVX-512 dense product reads DRAM ~25%
// faster from it). packable: preferred, Q8_0/Q4_0, and the table has kernels for the layout
// (TURBOSPARSE_MATMUL=plain keeps the file's layout, for measuring). pack: writes W's data
// into dst (ggml_nbytes(W) bytes, apart from W's data) in that layout, points W at dst and
// marks it (W->extra); false, W untouched, where not packable. Afterwards only
// ggml_sparse_matmul / ggml_sparse_mul_mat may read W: pack no weight that another op or a
// view reads (a tied output matrix is the token embedding, read by get_rows).
bool ggml_sparse_matmul_packable(const struct ggml_tensor * w);
bool ggml_sparse_matmul_pack(struct ggml_tensor * w, void * dst);

// ggml_sparse_matmul where preferred (and x fits it) or W is packed, or for a batch (x with
// T > 1 tokens) of K-quant weights in the plain layout where the AVX-512 table's batch tiles
// run; else ggml_mul_mat.
struct ggml_tensor * ggml_sparse_mul_mat(
        struct ggml_context * ctx,
        struct ggml_tensor  * w,
        struct ggml_tensor  * x);

// Name of the kernel table in use ("scalar", "avx2", "avx512", "neon").
const char * ggml_sparse_isa(void);

// ---- mixture of experts (Mixtral) -----------------------------------------------------------
//
// One node per step of an MoE layer, over the batch's (token, chosen expert) pairs sorted by
// expert, so that each token reads only the rows of its experts and the tokens that chose
// the same expert read its rows together (sub-batches as in ggml_sparse_gate_up):
//   route  = ggml_sparse_moe_route(router logits [n_expert, T], k)        i32 routing table
//   x_p    = ggml_get_rows(x, ggml_sparse_moe_tokens(route, T k))         [n_embd, P], P = T k
//   y_p    = ggml_sparse_moe_matmul(W [n, rows, n_expert], x_p, route)    [rows, P] dense per pair
//   a_p    = ggml_sparse_moe_gate_up(w_gate, w_up [n_embd, n_ff, n_expert], x_p, logits_p, ...)
//   y_p    = ggml_sparse_moe_down(w_down_t [n_embd, n_ff, n_expert], a_p, route)
//   y      = ggml_sparse_moe_combine(y_p, route, k)                       [n_embd, T]
// Routing is Mixtral's: softmax, top k (ties to the lower expert), weights renormalised.
// Stacked weights must have a kernel type (F32, F16, BF16, Q8_0, Q4_0). Results do not depend
// on the thread count; a pair's result is bit for bit the same whatever else is in the batch.
// Each builder returns NULL and fills err when shapes or types do not fit.
struct ggml_tensor * ggml_sparse_moe_route(struct ggml_context * ctx, struct ggml_tensor * logits, int k,
                                           char * err, size_t err_size);
// The pairs' token indices (the routing table's first P entries), for ggml_get_rows.
struct ggml_tensor * ggml_sparse_moe_tokens(struct ggml_context * ctx, struct ggml_tensor * route, int64_t n_pairs);
struct ggml_tensor * ggml_sparse_moe_matmul(struct ggml_context * ctx, struct ggml_tensor * w, struct ggml_tensor * x,
                                            struct ggml_tensor * route, char * err, size_t err_size);
// logits_p: NULL in exact mode; stats counts as n_expert ggml_sparse_gate_up nodes over all
// T tokens would (neurons_total = n_ff T n_expert).
struct ggml_tensor * ggml_sparse_moe_gate_up(struct ggml_context * ctx, struct ggml_tensor * w_gate,
                                             struct ggml_tensor * w_up, struct ggml_tensor * x,
                                             struct ggml_tensor * logits, struct ggml_tensor * route, int k,
                                             enum ggml_sparse_ffn_kind kind, float threshold,
                                             struct ggml_sparse_stats * stats, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_down(struct ggml_context * ctx, struct ggml_tensor * w_down_t,
                                          struct ggml_tensor * a, struct ggml_tensor * route,
                                          char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_combine(struct ggml_context * ctx, struct ggml_tensor * y,
                                             struct ggml_tensor * route, int k, char * err, size_t err_size);

#ifdef __cplusplus
}
#endif
