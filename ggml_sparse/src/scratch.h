// scratch.h: per-thread scratch memory for the custom-op callbacks.
//
// ggml hands a custom op no work buffer, and the buffers the sparse ops need (active lists,
// compact activations, the quantised input) scale with n_ff, too big for every caller's
// thread stack. Each compute thread keeps one growing buffer instead: allocated on first
// use, reused by every later node and compute on that thread (ggml's threadpool keeps its
// threads), freed when the thread exits. So the hot path does no malloc.
#pragma once

#include <stddef.h>

// A 64-byte-aligned buffer of at least `size` bytes owned by the calling thread, valid
// until its next ts_scratch call. Aborts (through ggml) only when memory is exhausted.
void * ts_scratch(size_t size);

// Carves consecutive 64-byte-aligned pieces out of a scratch buffer: first sum the sizes
// with ts_carve_size, then take them in the same order with ts_carve.
static inline size_t ts_carve_size(size_t bytes) {
    return (bytes + 63) & ~(size_t) 63;
}

static inline void * ts_carve(char ** cursor, size_t bytes) {
    void * p = *cursor;
    *cursor += ts_carve_size(bytes);
    return p;
}
