// kvcache.h: per-layer key/value cache (runtime-internal).
#pragma once

#include "ggml.h"

#include <stdbool.h>

// K of layer l is [n_embd_kv, n_ctx] (one row per position); V is stored transposed,
// [n_ctx, n_embd_kv], so that attention's kq·V is a plain mul_mat over positions.
struct ts_kv_cache {
    struct ggml_context * ctx;
    void                * buf;  // ctx's memory (allocated here, see kvcache.c)
    struct ggml_tensor ** k;
    struct ggml_tensor ** v;
    int32_t               n_layer;
    int32_t               n_ctx;
    int32_t               n_embd_kv;
    enum ggml_type        type;
};

bool ts_kv_cache_init(struct ts_kv_cache * kv, int32_t n_layer, int32_t n_embd_kv, int32_t n_ctx,
                      enum ggml_type type, char * err, size_t err_size);
void ts_kv_cache_clear(struct ts_kv_cache * kv);
void ts_kv_cache_free(struct ts_kv_cache * kv);
