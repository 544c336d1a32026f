// kvcache.c: allocates the KV cache in one ggml context of its own.
#include "kvcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ts_kv_cache_init(struct ts_kv_cache * kv, int32_t n_layer, int32_t n_embd_kv, int32_t n_ctx,
                      enum ggml_type type, char * err, size_t err_size) {
    memset(kv, 0, sizeof(*kv));
    const size_t per_tensor = ggml_row_size(type, (int64_t) n_embd_kv * n_ctx) + GGML_MEM_ALIGN;
    const size_t size = 2 * (size_t) n_layer * (per_tensor + ggml_tensor_overhead()) + 1024;
    struct ggml_init_params ip = { .mem_size = size, .mem_buffer = NULL, .no_alloc = false };
    kv->ctx = ggml_init(ip);
    kv->k = calloc(n_layer, sizeof(*kv->k));
    kv->v = calloc(n_layer, sizeof(*kv->v));
    if (!kv->ctx || !kv->k || !kv->v) {
        snprintf(err, err_size, "cannot allocate the KV cache (%zu MiB)", size >> 20);
        ts_kv_cache_free(kv);
        return false;
    }
    kv->n_layer = n_layer;
    kv->n_ctx = n_ctx;
    kv->n_embd_kv = n_embd_kv;
    kv->type = type;
    for (int il = 0; il < n_layer; il++) {
        kv->k[il] = ggml_new_tensor_2d(kv->ctx, type, n_embd_kv, n_ctx);
        kv->v[il] = ggml_new_tensor_2d(kv->ctx, type, n_ctx, n_embd_kv);
    }
    ts_kv_cache_clear(kv);
    return true;
}

// Zeroed so that nothing read by a masked position can be NaN.
void ts_kv_cache_clear(struct ts_kv_cache * kv) {
    for (int il = 0; il < kv->n_layer; il++) {
        memset(kv->k[il]->data, 0, ggml_nbytes(kv->k[il]));
        memset(kv->v[il]->data, 0, ggml_nbytes(kv->v[il]));
    }
}

void ts_kv_cache_free(struct ts_kv_cache * kv) {
    if (kv->ctx) ggml_free(kv->ctx);
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof(*kv));
}
