// graph.h: builds the forward graph of one batch (runtime-internal).
#pragma once

#include "context.h"

// Where a batch goes (batch.c fills it): each entry's KV cell, the cells attention looks at,
// and which entries' logits are wanted.
struct ts_batch_plan {
    const struct ts_batch * batch;
    const int32_t         * cells;    // [n_tokens] the cell each entry's K/V row goes to
    int32_t                 n_kv;     // attention reads cells 0..n_kv-1
    const int32_t         * out_rows; // [n_out] entries whose logits are computed, ascending
    int32_t                 n_out;
};

// Inputs the caller fills after allocation, and the result.
struct ts_graph_io {
    struct ggml_tensor * tokens; // i32 [n]
    struct ggml_tensor * pos;    // i32 [n]
    struct ggml_tensor * cells;  // i64 [n]: K/V rows written
    struct ggml_tensor * mask;   // f16 [n_kv, n]: 0 or -inf
    struct ggml_tensor * out;    // i32 [n_out] (NULL when every entry's logits are wanted)
    struct ggml_tensor * logits; // f32 [n_vocab, n_out]
};

// The graph of the plan's batch in `g` (a no_alloc context); NULL with c->err filled when a
// node cannot be built.
struct ggml_cgraph * ts_graph_build(struct ts_context * c, struct ggml_context * g,
                                    const struct ts_batch_plan * plan, struct ts_graph_io * io);

// Fills the inputs of an allocated graph: tokens, positions, cells, and the mask from the
// cell table with the batch's own cells added.
void ts_graph_set_inputs(const struct ts_context * c, const struct ts_graph_io * io,
                         const struct ts_batch_plan * plan);
