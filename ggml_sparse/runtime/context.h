// context.h: an inference context: KV cache and its cell table (one or several sequences),
// graph allocator, thread pool, statistics (runtime-internal).
#pragma once

#include "model.h"
#include "kvcache.h"
#include "kvcells.h"
#include "ggml-sparse.h"
#include "ggml-alloc.h"
#include "ggml-cpu.h"

#include <stdatomic.h>

struct ts_context {
    struct ts_model        * model;
    int32_t                  n_ctx;
    int32_t                  n_threads;
    enum ts_ffn_mode         ffn_mode;   // resolved, never AUTO
    float                    threshold;

    struct ts_kv_cache       kv;
    struct ts_kv_cells       cells;      // which sequence and position each KV row holds
    int32_t                * cell_seq;   // [n_ctx] scratch for the mask (graph.c)
    int32_t                * cell_pos;

    struct ggml_threadpool * threadpool;
    ggml_gallocr_t           galloc;
    void                   * graph_meta; // memory for the per-batch graph's tensor headers
    size_t                   graph_meta_size;
    int32_t                  graph_size; // max nodes
    uint8_t                * work;       // ggml_graph_compute scratch
    size_t                   work_size;

    struct ts_profile      * profile;    // TURBOSPARSE_PROFILE=1: per-node timing (profile.c)
    atomic_int               abort;
    struct ggml_sparse_stats sparse_stats; // updated by the sparse ops while computing
    // threshold mode: per-layer cuts on |silu(gate)|, counts and (collect_act_hist) histograms
    float                       * act_thresholds; // [n_layer]
    struct ggml_sparse_stats    * layer_stats;    // [n_layer]
    struct ggml_sparse_act_hist * act_hist;       // [n_layer] or NULL
    struct ts_stats          stats;
    char                     err[512];
};

// Sets c->err from the format and returns status (context.c).
int32_t ts_context_fail(struct ts_context * c, int32_t status, const char * fmt, ...);

// Computes an allocated graph on the context's thread pool, honouring ts_context_abort; TS_OK,
// TS_ERR_ABORTED or TS_ERR_COMPUTE with c->err set (context.c).
int32_t ts_context_compute(struct ts_context * c, struct ggml_cgraph * gf);
