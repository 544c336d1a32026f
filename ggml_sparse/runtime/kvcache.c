// kvcache.c: allocates the KV cache in one ggml context of its own, on memory it allocates
// itself: ggml_init would abort the process (GGML_ASSERT) when its buffer cannot be had, and a
// context too large for the machine must be an error the caller can report (ts-main -c 100000000).
#include "kvcache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The machine's physical memory in bytes (0 when unknown).
static uint64_t physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (uint64_t) pages * (uint64_t) page : 0;
}

bool ts_kv_cache_init(struct ts_kv_cache * kv, int32_t n_layer, int32_t n_embd_kv, int32_t n_ctx,
                      enum ggml_type type, char * err, size_t err_size) {
    memset(kv, 0, sizeof(*kv));
    // in 64 bits: n_embd_kv * n_ctx passes 2^31 for large contexts, and the total 2^32
    const uint64_t per_tensor = (uint64_t) ggml_row_size(type, (int64_t) n_embd_kv * n_ctx) + GGML_MEM_ALIGN;
    const uint64_t size = 2 * (uint64_t) n_layer * (per_tensor + ggml_tensor_overhead()) + 1024;
    const double mib = (double) size / (1024.0 * 1024.0);
    // Refused before allocating: with overcommit, malloc of more than the RAM can succeed and
    // the clearing below would then get the process killed by the OOM killer instead.
    const uint64_t phys = physical_memory();
    if ((phys > 0 && size > phys) || size != (uint64_t) (size_t) size) {
        snprintf(err, err_size, "the KV cache for a context of %d tokens needs %.0f MiB (%d layers, K and V of "
                 "%d x %d %s values each), more than this machine's %.0f MiB of memory: use a smaller context size",
                 n_ctx, mib, n_layer, n_embd_kv, n_ctx, ggml_type_name(type), (double) phys / (1024.0 * 1024.0));
        return false;
    }
    void * buf = NULL;
    if (posix_memalign(&buf, 64, (size_t) size) != 0) buf = NULL;
    struct ggml_init_params ip = { .mem_size = (size_t) size, .mem_buffer = buf, .no_alloc = false };
    kv->buf = buf;
    kv->ctx = buf ? ggml_init(ip) : NULL;
    kv->k = calloc(n_layer, sizeof(*kv->k));
    kv->v = calloc(n_layer, sizeof(*kv->v));
    if (!kv->ctx || !kv->k || !kv->v) {
        snprintf(err, err_size, "cannot allocate the KV cache for a context of %d tokens (%.0f MiB, %d layers): "
                 "out of memory; use a smaller context size", n_ctx, mib, n_layer);
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
    free(kv->buf);  // after ggml_free: the context does not own a buffer it was given
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof(*kv));
}
