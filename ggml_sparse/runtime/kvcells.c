// kvcells.c: the KV cache's cell bookkeeping (kvcells.h). Plain arrays and linear scans: n_ctx
// is at most a few hundred thousand, and a scan per batch costs little next to its graph.
#include "kvcells.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ts_kv_cells_init(struct ts_kv_cells * kc, int32_t n_ctx, int32_t n_seq, char * err, size_t err_size) {
    memset(kc, 0, sizeof(*kc));
    kc->pos = malloc(sizeof(int32_t) * (size_t) n_ctx);
    kc->seq = malloc(sizeof(int32_t) * (size_t) n_ctx);
    kc->next_pos = calloc((size_t) n_seq, sizeof(int32_t));
    kc->top = malloc(sizeof(int32_t) * (size_t) n_seq);
    if (!kc->pos || !kc->seq || !kc->next_pos || !kc->top) {
        snprintf(err, err_size, "out of memory for the KV cache's cell table (%d cells)", n_ctx);
        ts_kv_cells_free(kc);
        return false;
    }
    kc->n_ctx = n_ctx;
    kc->n_seq = n_seq;
    ts_kv_cells_clear(kc);
    return true;
}

void ts_kv_cells_free(struct ts_kv_cells * kc) {
    free(kc->pos);
    free(kc->seq);
    free(kc->next_pos);
    free(kc->top);
    memset(kc, 0, sizeof(*kc));
}

void ts_kv_cells_clear(struct ts_kv_cells * kc) {
    for (int32_t i = 0; i < kc->n_ctx; i++) {
        kc->pos[i] = -1;
        kc->seq[i] = -1;
    }
    memset(kc->next_pos, 0, sizeof(int32_t) * (size_t) kc->n_seq);
    for (int32_t s = 0; s < kc->n_seq; s++) kc->top[s] = -1;
    kc->n_used = 0;
}

void ts_kv_cells_remove_seq(struct ts_kv_cells * kc, int32_t s) {
    for (int32_t i = 0; i < kc->n_ctx; i++) {
        if (kc->seq[i] == s) {
            kc->seq[i] = -1;
            kc->pos[i] = -1;
            kc->n_used--;
        }
    }
    kc->next_pos[s] = 0;
    kc->top[s] = -1;
}

static int32_t free_from(const struct ts_kv_cells * kc, const uint8_t * taken, int32_t from) {
    for (int32_t i = from; i < kc->n_ctx; i++) {
        if (kc->seq[i] < 0 && !taken[i]) return i;
    }
    return -1;
}

bool ts_kv_cells_find(const struct ts_kv_cells * kc, const int32_t * seq, int32_t n, int32_t * idx, uint8_t * taken) {
    if (n > kc->n_ctx - kc->n_used) return false;
    memset(taken, 0, (size_t) kc->n_ctx);
    int32_t top[TS_KV_MAX_SEQ]; // each sequence's highest cell, counting this batch's
    memcpy(top, kc->top, sizeof(int32_t) * (size_t) kc->n_seq);
    for (int32_t i = 0; i < n; i++) {
        int32_t cell = free_from(kc, taken, top[seq[i]] + 1);
        if (cell < 0) cell = free_from(kc, taken, 0);
        if (cell < 0) return false;
        taken[cell] = 1;
        idx[i] = cell;
        if (cell > top[seq[i]]) top[seq[i]] = cell;
    }
    return true;
}

void ts_kv_cells_commit(struct ts_kv_cells * kc, const int32_t * idx, const int32_t * pos,
                        const int32_t * seq, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        kc->seq[idx[i]] = seq[i];
        kc->pos[idx[i]] = pos[i];
        kc->next_pos[seq[i]] = pos[i] + 1;
        if (idx[i] > kc->top[seq[i]]) kc->top[seq[i]] = idx[i];
    }
    kc->n_used += n;
}

int32_t ts_kv_cells_span(const struct ts_kv_cells * kc) {
    for (int32_t i = kc->n_ctx; i > 0; i--) {
        if (kc->seq[i - 1] >= 0) return i;
    }
    return 0;
}
