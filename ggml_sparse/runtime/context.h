// context.h: an inference context: KV cache, graph allocator, thread pool, statistics
// (runtime-internal).
#pragma once

#include "model.h"
#include "kvcache.h"
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
    int32_t                  n_past;

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
