// graph.h: builds the forward graph of one batch (runtime-internal).
#pragma once

#include "context.h"

// Inputs the caller fills after allocation, and the result.
struct ts_graph_io {
    struct ggml_tensor * tokens; // i32 [n]
    struct ggml_tensor * pos;    // i32 [n]
    struct ggml_tensor * mask;   // f32 [n_kv, n]: 0 or -inf
    struct ggml_tensor * logits; // f32 [n_vocab, n or 1]
};

// The graph of n tokens at positions n_past..n_past+n-1 in `g` (a no_alloc context); NULL
// with c->err filled when a node cannot be built.
struct ggml_cgraph * ts_graph_build(struct ts_context * c, struct ggml_context * g, int32_t n,
                                    bool logits_all, struct ts_graph_io * io);

// Fills the inputs of an allocated graph.
void ts_graph_set_inputs(const struct ts_context * c, const struct ts_graph_io * io,
                         const int32_t * tokens, int32_t n);
