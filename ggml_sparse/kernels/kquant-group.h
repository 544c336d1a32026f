// kquant-group.h: the two K-quant (Q4_K, Q6_K) primitives each SIMD table takes from its
// <isa>-kquants.c file, with the same contracts as simd-drivers.h's dot_group / axpy_group:
//
//   dot_group:  out[r] = dot(rows[r], x) for r < R (1..4), x in Q8_K super-blocks; any float
//               order (tested within tolerance of the scalar reference), but each row's result
//               depends only on that row and x (not on R or the group's other rows), so that
//               batches give dot_rows' bits.
//   axpy_group: for c in [c0, c1) (multiples of 64), y[c] gets the FMA chain of ts-kernels.h
//               for rows r = 0..R-1 in order: bit-identical to the scalar reference.
//
// `next` holds rows of a later group, prefetched at the offsets being read. The including
// file defines TS_KQ(name) to give the functions its ISA's prefix.
// Not a public header.
#pragma once

#include "ts-kernels.h"

void TS_KQ(dot_group)(enum ts_type type, int R, const char * const * rows, const char * const * next,
                      int64_t n, const void * x, float * out);
void TS_KQ(axpy_group)(enum ts_type type, int R, const char * const * rows, const char * const * next,
                       const float * a, int64_t c0, int64_t c1, float * y);

// Per-row constants of super-block b of a row, computed in plain C so that every ISA multiplies
// the same floats: s[i] = a * (d * sc_i) for the block's sub-blocks (Q4_K: 8 of 32 columns;
// Q6_K: 16 of 16), m[i] = a * (dmin * min_i) (Q4_K only). d * sc and dmin * min are exact.
static inline void ts_kq_block_scales(enum ts_type type, const char * row, int64_t b, float a, float s[16], float m[8]) {
    if (type == TS_TYPE_Q4_K) {
        const ts_block_q4_K * blk = (const ts_block_q4_K *) row + b;
        const float d = ts_fp16_to_fp32(blk->d), dmin = ts_fp16_to_fp32(blk->dmin);
        for (int i = 0; i < 8; i++) {
            int sc, mn;
            ts_q4_K_scale_min(blk->scales, i, &sc, &mn);
            s[i] = a * (d * (float) sc);
            m[i] = a * (dmin * (float) mn);
        }
    } else {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const float d = ts_fp16_to_fp32(blk->d);
        for (int i = 0; i < 16; i++) {
            s[i] = a * (d * (float) blk->scales[i]);
        }
    }
}

// ---- the batch kernels' row walk (shared by the <isa>-kquants.c files) ----------------------------

// The row of list entry j (idx NULL: row j).
static inline const char * ts_kq_row(const void * w, size_t row_bytes, const int32_t * idx, int64_t j) {
    return (const char *) w + (size_t) (idx ? idx[j] : j) * row_bytes;
}

// What a batch kernel's first token tile prefetches while it reads super-blocks [b0, b1) of entry
// j0 + j of a block of nr entries: the block's next row, after the last row the first row's next
// chunk, then the next block's start, as a pointer offset so that the kernel's block offsets
// b * bs (b0 <= b < b1) land there; NULL at the end of the list. nb: super-blocks per row.
static inline const char * ts_kq_next(const void * w, size_t row_bytes, const int32_t * idx, int64_t n_idx,
                                      int64_t j0, int nr, int j, int64_t b0, int64_t b1, int64_t nb, size_t bs) {
    if (j + 1 < nr) {
        return ts_kq_row(w, row_bytes, idx, j0 + j + 1);
    }
    if (b1 < nb) {
        return ts_kq_row(w, row_bytes, idx, j0) + (size_t) (b1 - b0) * bs;
    }
    if (j0 + nr < n_idx) {
        return ts_kq_row(w, row_bytes, idx, j0 + nr) - (size_t) b0 * bs;
    }
    return NULL;
}

// A batch kernel's row walk, defined by each <isa>-kquants.c file for its own accumulators:
// blocks of ROWS_ list entries meet tiles of up to TOK_ tokens chunk by chunk (BLKS_
// super-blocks): the tile's activations of the chunk stay in L1 while the block's rows stream
// through it, from memory for the first token tile (which prefetches what it reads next) and
// from L2 for the others; each entry's accumulators (ACC, zeroed per token tile) live in memory
// between chunks. TILE(type, TT, row, next, xt, b0, b1, acc) adds super-blocks [b0, b1) of one
// row for the TT tokens xt; RESULT(acc, t) is token t's final value.
#define TS_KQ_DEFINE_ROW_WALK(NAME, ACC, TOK_, ROWS_, BLKS_, TILE, RESULT)                                     \
static void NAME(enum ts_type type, int64_t n, const void * w, size_t row_bytes, const void * x, size_t x_stride,  \
                 int64_t n_tok, const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {             \
    const int64_t nb = n / TS_QK_K;                                                                             \
    const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);                     \
    ACC acc[ROWS_];                                                                                             \
    for (int64_t j0 = 0; j0 < n_idx; j0 += ROWS_) {                                                             \
        const int nr = (int) (n_idx - j0 < ROWS_ ? n_idx - j0 : ROWS_);                                         \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TOK_) {                                                          \
            const int TT = (int) (n_tok - t0 < TOK_ ? n_tok - t0 : TOK_);                                       \
            const ts_block_q8_K * xt[TOK_];                                                                     \
            for (int t = 0; t < TT; t++) {                                                                      \
                xt[t] = (const ts_block_q8_K *) ((const char *) x + (size_t) (t0 + t) * x_stride);              \
            }                                                                                                   \
            memset(acc, 0, sizeof(acc));                                                                        \
            for (int64_t b0 = 0; b0 < nb; b0 += BLKS_) {                                                        \
                const int64_t b1 = b0 + BLKS_ < nb ? b0 + BLKS_ : nb;                                           \
                for (int j = 0; j < nr; j++) {                                                                  \
                    const char * next = t0 == 0 ? ts_kq_next(w, row_bytes, idx, n_idx, j0, nr, j, b0, b1, nb, bs) : NULL; \
                    TILE(type, TT, ts_kq_row(w, row_bytes, idx, j0 + j), next, xt, b0, b1, &acc[j]);            \
                }                                                                                               \
            }                                                                                                   \
            for (int j = 0; j < nr; j++) {                                                                      \
                for (int t = 0; t < TT; t++) {                                                                  \
                    out[(t0 + t) * out_stride + j0 + j] = RESULT(&acc[j], t);                                   \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
}
