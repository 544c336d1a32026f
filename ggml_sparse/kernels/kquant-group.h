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

// The row of list entry j (idx NULL: row j), for the batch kernels.
static inline const char * ts_kq_row(const void * w, size_t row_bytes, const int32_t * idx, int64_t j) {
    return (const char *) w + (size_t) (idx ? idx[j] : j) * row_bytes;
}
