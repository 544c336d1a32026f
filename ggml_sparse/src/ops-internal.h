// ops-internal.h: what the MoE ops (moe-ops.c) share with the sparse-FFN ops (ops.c): the
// per-thread bodies of the gate/up and down nodes, run on 2-D tensors that may be views made
// on the fly (one expert's slice, one expert's range of token rows).
#pragma once

#include "ggml-sparse.h"
#include "ts-kernels.h"

struct gate_up_op {
    enum ts_act                act;
    float                      threshold;
    bool                       predicted; // else exact
    int                        sub_batch; // T > 1: tokens per sub-batch, 0 = adaptive
    struct ggml_sparse_stats * stats;
};

// The kernel type of a ggml type, when the kernels handle it directly.
bool ts_kernel_type(enum ggml_type type, enum ts_type * out);

// TURBOSPARSE_SUB_BATCH: 0 = adaptive sub-batches, N > 0 = N tokens.
int ts_sub_batch_setting(void);

// Thread ith of nth computes its share of a [n_ff, T] from w_gate/w_up [n_embd, n_ff] and
// x [n_embd, T] (and logits lg [n_ff, T] when op->predicted); returns its count for
// stats.neurons_computed (the caller adds it) and adds the weight rows it read to *rows_read
// (when not NULL; for stats.rows_read). Every element of a is written.
int64_t ts_gate_up_run(const struct gate_up_op * op, const struct ggml_tensor * wg, const struct ggml_tensor * wu,
                       const struct ggml_tensor * x, const struct ggml_tensor * lg, struct ggml_tensor * a,
                       int ith, int nth, int64_t * rows_read);

// The arguments of a sparse down node (ggml_sparse_down, ggml_sparse_down_chunked): false
// with err filled when they do not fit.
bool ts_check_down(const struct ggml_tensor * w_down_t, const struct ggml_tensor * a, char * err, size_t err_size);

// Thread ith of nth computes its columns of y [n_embd, T] = w_down_t [n_embd, n_ff] by the
// non-zeros of a [n_ff, T]. setting: ts_sub_batch_setting().
void ts_down_run(const struct ggml_tensor * w, const struct ggml_tensor * a, struct ggml_tensor * y,
                 int setting, int ith, int nth);
