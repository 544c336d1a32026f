// simd-drivers.h: the row-walking parts of a SIMD kernel table, shared by avx2.c, avx512.c
// and neon.c. Each of those files defines two primitives on a small group of rows and then
// includes this file, which turns them into the table's entries:
//
//   dot_group(type, R, rows, next, n, x, out)     out[r] = dot(rows[r], x), r < R
//   axpy_group(type, R, rows, next, a, c0, c1, y) y[c] = fma(a[r], rows[r][c], y[c]) for
//                                                 r = 0..R-1 in order, c in [c0, c1)
//
// R is 1..TS_GROUP. Rows are walked TS_GROUP at a time so that they share the loads of x
// (dot) or of y (axpy); `next` holds the rows of a later group (drv_ahead), which the
// primitive prefetches at the offset it is reading, so gathered rows arrive before they are
// needed.
// Not a public header: it holds static functions and is compiled once per ISA.
#pragma once

#include "ts-kernels.h"
#include "kquant-group.h" // the K-quant primitives: the including file defines TS_KQ first

#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))

#define TS_GROUP 4

// The two primitives each ISA file defines (above).
static void dot_group(enum ts_type type, int R, const char * const * rows, const char * const * next,
                      int64_t n, const void * x, float * out);
static void axpy_group(enum ts_type type, int R, const char * const * rows, const char * const * next,
                       const float * a, int64_t c0, int64_t c1, float * y);

static ALWAYS_INLINE size_t elem_size(enum ts_type type) { return type == TS_TYPE_F32 ? 4 : 2; }

static ALWAYS_INLINE size_t block_bytes(enum ts_type type) {
    return type == TS_TYPE_Q4_0 ? sizeof(ts_block_q4_0) : sizeof(ts_block_q8_0);
}


// How far ahead `next` points, in bytes of weights to be read before it. The prefetches
// land in L1 (48 KB per core on the machine measured), so this must stay well below it.
// bench_kernels (cold, AVX-512, one thread): Q4_0 rows at n_embd 4096 (9 KB groups) were
// a few % faster two groups ahead than one, F16 rows (32 KB groups) a few % slower; both
// effects are near the run-to-run noise. Overridable for measuring: -DTS_PREFETCH_BYTES=n.
#ifndef TS_PREFETCH_BYTES
#define TS_PREFETCH_BYTES (20 * 1024)
#endif

// Rows ahead of the current group's first row that `next` points at: whole groups, at
// least one, at most 16 (short rows: far enough, and the list runs out anyway).
static inline int64_t drv_ahead(size_t row_bytes) {
    int64_t groups = row_bytes ? (int64_t) (TS_PREFETCH_BYTES / (TS_GROUP * row_bytes)) : 1;
    groups = groups < 1 ? 1 : groups > 16 ? 16 : groups;
    return groups * TS_GROUP;
}

// Exact mode computes the gates of this many rows, then the up rows of the positive ones
// as a gathered list, so those up rows get prefetched like any gathered rows (all but the
// first drv_ahead() of each chunk; the chunk is long so that share is small).
#define TS_EXACT_CHUNK 256

static inline const char * drv_row(const void * w, size_t row_bytes, const int32_t * idx, int64_t j) {
    const int64_t i = idx ? idx[j] : j;
    return (const char *) w + (size_t) i * row_bytes;
}

static inline int64_t drv_min(int64_t a, int64_t b) { return a < b ? a : b; }

// The TS_GROUP row pointers of the group starting at list entry j (R of them real, the rest
// repeating the last) and of the group `ahead` entries later, for prefetching.
static inline void drv_group(const void * w, size_t row_bytes, const int32_t * idx, int64_t n_idx, int64_t j,
                             int R, int64_t ahead, const char ** rows, const char ** next) {
    for (int r = 0; r < TS_GROUP; r++) {
        rows[r] = drv_row(w, row_bytes, idx, j + (r < R ? r : R - 1));
        next[r] = drv_row(w, row_bytes, idx, drv_min(j + ahead + r, n_idx - 1));
    }
}

static void drv_dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                         const void * x, const int32_t * idx, int64_t n_idx, float * out) {
    const int64_t ahead = drv_ahead(row_bytes);
    for (int64_t j = 0; j < n_idx; j += TS_GROUP) {
        const int R = (int) drv_min(TS_GROUP, n_idx - j);
        const char * rows[TS_GROUP];
        const char * next[TS_GROUP];
        drv_group(w, row_bytes, idx, n_idx, j, R, ahead, rows, next);
        dot_group(type, R, rows, next, n, x, out + j);
    }
}

// Two neurons per group: their gate and up rows share the loads of x.
static void drv_gate_up(enum ts_type type, enum ts_act act, int64_t n,
                        const void * w_gate, const void * w_up, size_t row_bytes,
                        const void * x, const int32_t * idx, int64_t n_idx, float * a) {
    const int64_t ahead = drv_ahead(row_bytes) / 2; // neurons: a group holds two of them
    for (int64_t j = 0; j < n_idx; j += 2) {
        const int pairs = (int) drv_min(2, n_idx - j);
        const char * rows[TS_GROUP];
        const char * next[TS_GROUP];
        for (int p = 0; p < 2; p++) {
            const int64_t jr = j + (p < pairs ? p : pairs - 1);
            const int64_t jn = drv_min(j + ahead + p, n_idx - 1);
            rows[2 * p]     = drv_row(w_gate, row_bytes, idx, jr);
            rows[2 * p + 1] = drv_row(w_up,   row_bytes, idx, jr);
            next[2 * p]     = drv_row(w_gate, row_bytes, idx, jn);
            next[2 * p + 1] = drv_row(w_up,   row_bytes, idx, jn);
        }
        float gu[TS_GROUP];
        dot_group(type, 2 * pairs, rows, next, n, x, gu);
        for (int p = 0; p < pairs; p++) {
            a[j + p] = ts_act_apply(act, gu[2 * p], gu[2 * p + 1]);
        }
    }
}

// Gate rows of a chunk (TS_EXACT_CHUNK rows, read in order, prefetched ahead like gathered
// rows); then the up rows of just those neurons whose gate is positive, as a gathered list
// through drv_dot_rows, which prefetches them. Up rows of the others are never touched.
static int64_t drv_gate_up_exact(enum ts_type type, enum ts_act act, int64_t n,
                                 const void * w_gate, const void * w_up, size_t row_bytes,
                                 const void * x, int64_t i0, int64_t i1, float * a) {
    const int64_t ahead = drv_ahead(row_bytes);
    int64_t n_active = 0;
    for (int64_t c = i0; c < i1; c += TS_EXACT_CHUNK) {
        const int64_t c_end = drv_min(c + TS_EXACT_CHUNK, i1);
        float g[TS_EXACT_CHUNK];
        for (int64_t i = c; i < c_end; i += TS_GROUP) {
            const int R = (int) drv_min(TS_GROUP, c_end - i);
            const char * rows[TS_GROUP];
            const char * next[TS_GROUP];
            for (int r = 0; r < TS_GROUP; r++) {
                rows[r] = drv_row(w_gate, row_bytes, NULL, i + (r < R ? r : R - 1));
                next[r] = drv_row(w_gate, row_bytes, NULL, drv_min(i + ahead + r, i1 - 1));
            }
            dot_group(type, R, rows, next, n, x, g + (i - c));
        }

        int32_t pos[TS_EXACT_CHUNK]; // rows (absolute) with a positive gate
        int n_pos = 0;
        for (int64_t i = c; i < c_end; i++) {
            if (g[i - c] > 0.0f) {
                pos[n_pos++] = (int32_t) i;
            }
        }
        float u[TS_EXACT_CHUNK];
        drv_dot_rows(type, n, w_up, row_bytes, x, pos, n_pos, u);

        int k = 0;
        for (int64_t i = c; i < c_end; i++) {
            float v = 0.0f;
            if (k < n_pos && pos[k] == i) {
                v = ts_act_apply(act, g[i - c], u[k++]);
            }
            a[i - i0] = v;
            n_active += v != 0.0f;
        }
    }
    return n_active;
}

// K-quant batches: each group of rows meets every token through the same dot_group call as
// drv_dot_rows makes (so every result is dot_rows' bits) while the group's rows sit in L1.
static inline void drv_kq_dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                                  const void * x, size_t x_stride, int64_t n_tok,
                                  const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t ahead = drv_ahead(row_bytes);
    for (int64_t j = 0; j < n_idx; j += TS_GROUP) {
        const int R = (int) drv_min(TS_GROUP, n_idx - j);
        const char * rows[TS_GROUP];
        const char * next[TS_GROUP];
        drv_group(w, row_bytes, idx, n_idx, j, R, ahead, rows, next);
        for (int64_t t = 0; t < n_tok; t++) {
            dot_group(type, R, rows, t == 0 ? next : rows, n, (const char *) x + (size_t) t * x_stride,
                      out + t * out_stride + j);
        }
    }
}

// The K-quant down projection of a batch: per slice of KQ_BATCH_COLS columns, each token's
// axpy_rows chains over all rows (the slice's blocks of the rows stay in L2 across tokens).
// Each column's chain is the one drv_axpy_rows makes: bit-identical per token.
#define KQ_BATCH_COLS 256

static inline void drv_kq_axpy_rows_batch(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                                   const int32_t * idx, const float * a, int64_t a_stride, int64_t n_idx,
                                   int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    (void) n;
    if (c1 <= c0) {
        return;
    }
    for (int64_t t = 0; t < n_tok; t++) {
        memset(y + t * y_stride + c0, 0, (size_t) (c1 - c0) * sizeof(float));
    }
    const int64_t ahead = drv_ahead(row_bytes);
    for (int64_t cc = c0; cc < c1; cc += KQ_BATCH_COLS) {
        const int64_t ce = drv_min(cc + KQ_BATCH_COLS, c1);
        for (int64_t t = 0; t < n_tok; t++) {
            for (int64_t j = 0; j < n_idx; j += TS_GROUP) {
                const int R = (int) drv_min(TS_GROUP, n_idx - j);
                const char * rows[TS_GROUP];
                const char * next[TS_GROUP];
                for (int r = 0; r < TS_GROUP; r++) {
                    rows[r] = drv_row(w_t, row_bytes, idx, j + (r < R ? r : R - 1));
                    next[r] = drv_row(w_t, row_bytes, idx, drv_min(j + ahead + r, n_idx - 1));
                }
                axpy_group(type, R, rows, next, a + t * a_stride + j, cc, ce, y + t * y_stride);
            }
        }
    }
}

static void drv_axpy_rows(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                          const int32_t * idx, const float * a, int64_t n_idx,
                          int64_t c0, int64_t c1, float * y) {
    (void) n;
    if (c1 <= c0) {
        return;
    }
    memset(y + c0, 0, (size_t) (c1 - c0) * sizeof(float));
    const int64_t ahead = drv_ahead(row_bytes);
    for (int64_t j = 0; j < n_idx; j += TS_GROUP) {
        const int R = (int) drv_min(TS_GROUP, n_idx - j);
        const char * rows[TS_GROUP];
        const char * next[TS_GROUP];
        for (int r = 0; r < TS_GROUP; r++) {
            rows[r] = drv_row(w_t, row_bytes, idx, j + (r < R ? r : R - 1));
            next[r] = drv_row(w_t, row_bytes, idx, drv_min(j + ahead + r, n_idx - 1));
        }
        axpy_group(type, R, rows, next, a + j, c0, c1, y);
    }
}

// Instantiates a primitive FN(type, R, ...) for a runtime R in 1..TS_GROUP, so that the
// per-row loops inside FN are fully unrolled and its accumulators stay in registers.
#define TS_FOR_R(R, FN, TYPE, ...)                                     \
    switch (R) {                                                       \
        case 4:  FN(TYPE, 4, __VA_ARGS__); break;                      \
        case 3:  FN(TYPE, 3, __VA_ARGS__); break;                      \
        case 2:  FN(TYPE, 2, __VA_ARGS__); break;                      \
        default: FN(TYPE, 1, __VA_ARGS__); break;                      \
    }

// The per-type dispatch every ISA file shares: dot_group and axpy_group call the file's
// dot_float / dot_quant / axpy_float / axpy_quant with the type and group size as
// compile-time constants (TS_FOR_R), so each combination is its own inlined loop.
#define TS_DOT_FLOAT(T, R_, rows, next, n, x, out) dot_float(T, R_, rows, next, n, (const float *) (x), out)
#define TS_DOT_QUANT(T, R_, rows, next, n, x, out) dot_quant(T, R_, rows, next, n, (const ts_block_q8_0 *) (x), out)

#define TS_DEFINE_GROUP_DISPATCH()                                                                    \
static void dot_group(enum ts_type type, int R, const char * const * rows, const char * const * next, \
                      int64_t n, const void * x, float * out) {                                       \
    switch (type) {                                                                                   \
        case TS_TYPE_F32:  TS_FOR_R(R, TS_DOT_FLOAT, TS_TYPE_F32,  rows, next, n, x, out); break;      \
        case TS_TYPE_F16:  TS_FOR_R(R, TS_DOT_FLOAT, TS_TYPE_F16,  rows, next, n, x, out); break;      \
        case TS_TYPE_BF16: TS_FOR_R(R, TS_DOT_FLOAT, TS_TYPE_BF16, rows, next, n, x, out); break;      \
        case TS_TYPE_Q8_0: TS_FOR_R(R, TS_DOT_QUANT, TS_TYPE_Q8_0, rows, next, n, x, out); break;      \
        case TS_TYPE_Q4_0: TS_FOR_R(R, TS_DOT_QUANT, TS_TYPE_Q4_0, rows, next, n, x, out); break;      \
        case TS_TYPE_Q4_K: case TS_TYPE_Q6_K: TS_KQ(dot_group)(type, R, rows, next, n, x, out); break; \
        default: break;                                                                               \
    }                                                                                                 \
}                                                                                                     \
static void axpy_group(enum ts_type type, int R, const char * const * rows, const char * const * next, \
                       const float * a, int64_t c0, int64_t c1, float * y) {                          \
    switch (type) {                                                                                   \
        case TS_TYPE_F32:  TS_FOR_R(R, axpy_float, TS_TYPE_F32,  rows, next, a, c0, c1, y); break;     \
        case TS_TYPE_F16:  TS_FOR_R(R, axpy_float, TS_TYPE_F16,  rows, next, a, c0, c1, y); break;     \
        case TS_TYPE_BF16: TS_FOR_R(R, axpy_float, TS_TYPE_BF16, rows, next, a, c0, c1, y); break;     \
        case TS_TYPE_Q8_0: TS_FOR_R(R, axpy_quant, TS_TYPE_Q8_0, rows, next, a, c0, c1, y); break;     \
        case TS_TYPE_Q4_0: TS_FOR_R(R, axpy_quant, TS_TYPE_Q4_0, rows, next, a, c0, c1, y); break;     \
        case TS_TYPE_Q4_K: case TS_TYPE_Q6_K: TS_KQ(axpy_group)(type, R, rows, next, a, c0, c1, y); break; \
        default: break;                                                                               \
    }                                                                                                 \
}

// dot_rows_batch from an ISA file's register tiles FLOAT_TILE / QUANT_TILE (type, R, TT, rows,
// next, n, x, x_stride, nr, out, out_stride): R rows (compile-time TILE_ROWS, the last group
// padded with repeats of a real row, nr real) x TT tokens (1..TILE_TOKS). The tile functions
// must give every row and token the steps of the file's dot_group, so that the batch equals
// dot_rows bit for bit. Rows are walked a group at a time with every token tile, so the
// group's rows stay in L1 after the first tile (the only one that prefetches).
#define TS_TILE_CASE(TILE, TYPE, TT_) \
    case TT_: TILE(TYPE, TILE_ROWS, TT_, rows, nx, n, xt, x_stride, nr, o, out_stride); break;
#define TS_TILE_SWITCH(TILE, TYPE)                                                          \
    switch (tt) {                                                                           \
        TS_TILE_CASE(TILE, TYPE, 1) TS_TILE_CASE(TILE, TYPE, 2) TS_TILE_CASE(TILE, TYPE, 3) \
        default: TILE(TYPE, TILE_ROWS, 4, rows, nx, n, xt, x_stride, nr, o, out_stride); break; \
    }

#define TS_DEFINE_BATCH_DISPATCH(FLOAT_TILE, QUANT_TILE)                                                   \
_Static_assert(TILE_TOKS <= 4, "token tiles of at most 4");                                               \
static void drv_dot_rows_batch_tiled(enum ts_type type, int64_t n, const void * w, size_t row_bytes,       \
                                     const void * x, size_t x_stride, int64_t n_tok,                       \
                                     const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) { \
    if (n_tok == 1) {                                                                                      \
        drv_dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);                                           \
        return;                                                                                            \
    }                                                                                                      \
    if (ts_is_kquant(type)) {                                                                              \
        drv_kq_dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);     \
        return;                                                                                            \
    }                                                                                                      \
    const int64_t ahead = drv_ahead(row_bytes);                                                            \
    for (int64_t j = 0; j < n_idx; j += TILE_ROWS) {                                                       \
        const int nr = (int) drv_min(TILE_ROWS, n_idx - j);                                                \
        const char * rows[TILE_ROWS];                                                                      \
        const char * next[TILE_ROWS];                                                                      \
        for (int r = 0; r < TILE_ROWS; r++) {                                                              \
            rows[r] = drv_row(w, row_bytes, idx, j + (r < nr ? r : nr - 1));                               \
            next[r] = drv_row(w, row_bytes, idx, drv_min(j + ahead + r, n_idx - 1));                        \
        }                                                                                                  \
        for (int64_t t = 0; t < n_tok; t += TILE_TOKS) {                                                   \
            const int tt = (int) drv_min(TILE_TOKS, n_tok - t);                                            \
            const char * xt = (const char *) x + (size_t) t * x_stride;                                    \
            const char * const * nx = t == 0 ? next : NULL;                                                \
            float * o = out + t * out_stride + j;                                                          \
            switch (type) {                                                                                \
                case TS_TYPE_F32:  TS_TILE_SWITCH(FLOAT_TILE, TS_TYPE_F32)  break;                         \
                case TS_TYPE_F16:  TS_TILE_SWITCH(FLOAT_TILE, TS_TYPE_F16)  break;                         \
                case TS_TYPE_BF16: TS_TILE_SWITCH(FLOAT_TILE, TS_TYPE_BF16) break;                         \
                case TS_TYPE_Q8_0: TS_TILE_SWITCH(QUANT_TILE, TS_TYPE_Q8_0) break;                         \
                case TS_TYPE_Q4_0: TS_TILE_SWITCH(QUANT_TILE, TS_TYPE_Q4_0) break;                         \
                default: break;                                                                            \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}
