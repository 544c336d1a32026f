// kvcells.h: which sequence and position each KV cache cell holds (runtime-internal).
//
// The cache (kvcache.h) is n_ctx rows of K and V per layer; a cell is one row index. Several
// sequences share the cells: cell i holds position pos[i] of sequence seq[i], or is free
// (seq[i] == -1). A batch entry attends to the cells of its own sequence at positions up to
// its own (the mask, graph.c), so the sequences never see each other. Each sequence grows by
// appending: its next position is next_pos[s], and its cells are removed all at once.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TS_KV_MAX_SEQ 256 // TS_MAX_SEQ of turbosparse.h

struct ts_kv_cells {
    int32_t   n_ctx;
    int32_t   n_seq;     // sequence ids are 0..n_seq-1
    int32_t * pos;       // [n_ctx]
    int32_t * seq;       // [n_ctx], -1 = free
    int32_t * next_pos;  // [n_seq] position the sequence's next token takes (its length)
    int32_t * top;       // [n_seq] the sequence's highest cell, -1 when it has none
    int32_t   n_used;
};

bool ts_kv_cells_init(struct ts_kv_cells * kc, int32_t n_ctx, int32_t n_seq, char * err, size_t err_size);
void ts_kv_cells_free(struct ts_kv_cells * kc);
void ts_kv_cells_clear(struct ts_kv_cells * kc);

// Frees every cell of sequence s (its next position is 0 again).
void ts_kv_cells_remove_seq(struct ts_kv_cells * kc, int32_t s);

// A free cell for each entry of sequences seq[0..n) into idx[0..n); false when fewer than n
// are free. Each entry takes the lowest free cell above its sequence's cells where there is
// one (else the lowest free cell): a sequence's cells then stay in position order, which is
// the order attention sums them in, so a sequence decoded beside others gets the bits it gets
// alone. taken: scratch of n_ctx. Marks nothing.
bool ts_kv_cells_find(const struct ts_kv_cells * kc, const int32_t * seq, int32_t n, int32_t * idx, uint8_t * taken);

// Marks idx[i] as holding position pos[i] of sequence seq[i] and advances next_pos.
void ts_kv_cells_commit(struct ts_kv_cells * kc, const int32_t * idx, const int32_t * pos,
                        const int32_t * seq, int32_t n);

// 1 + the highest used cell (the cells a batch's attention has to look at); 0 when empty.
int32_t ts_kv_cells_span(const struct ts_kv_cells * kc);
