// r16.c: the 16-row layout of dense quantised matrices (ts-kernels.h): packing a plain
// matrix into it, and reading a row back out (the reference kernels and the tests use that).
#include "ts-kernels.h"

#include <string.h>

bool ts_r16_ok(enum ts_type type, int64_t n) {
    return (type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0) && ts_row_ok(type, n);
}

// Where row r's block b lives in the 16-row layout: its scale at d, quant byte j at
// q + quant_offset(j) (in a group: dword r of vector j / 4; in a plain tail row: the block's
// own contiguous quants). The layout's one statement: packing and reading back both use it.
struct r16_place {
    char * d;
    char * q;
    bool   packed;
};

static struct r16_place place(enum ts_type type, int64_t n, int64_t n_rows, const char * w16, int64_t r, int64_t b) {
    const size_t bs = ts_row_size(type, TS_QK);
    const int64_t nb = n / TS_QK;
    struct r16_place p;
    if (r < n_rows / TS_R16 * TS_R16) {
        const int64_t g = r / TS_R16, rr = r % TS_R16;
        char * blk = (char *) w16 + ((size_t) g * (size_t) nb + (size_t) b) * TS_R16 * bs;
        p.d = blk + 2 * rr;
        p.q = blk + 2 * TS_R16 + 4 * rr;
        p.packed = true;
    } else {
        char * blk = (char *) w16 + (size_t) r * (size_t) nb * bs + (size_t) b * bs;
        p.d = blk;
        p.q = blk + 2;
        p.packed = false;
    }
    return p;
}

static size_t quant_offset(const struct r16_place * p, size_t j) {
    return p->packed ? (j / 4) * 64 + j % 4 : j;
}

// In the order the layout stores the blocks (groups, blocks, rows), so dst is written in
// sequence: 413 MB of dense weights of the bench model in ~60 ms over a plain copy's time.
void ts_pack_r16(enum ts_type type, int64_t n, int64_t n_rows, const void * w, void * dst) {
    const size_t bs = ts_row_size(type, TS_QK);
    const int64_t nb = n / TS_QK;
    for (int64_t r0 = 0; r0 < n_rows; r0 += TS_R16) {
        for (int64_t b = 0; b < nb; b++) {
            for (int64_t r = r0; r < r0 + TS_R16 && r < n_rows; r++) {
                const char * blk = (const char *) w + ((size_t) r * (size_t) nb + (size_t) b) * bs;
                const struct r16_place p = place(type, n, n_rows, dst, r, b);
                memcpy(p.d, blk, 2);
                for (size_t j = 0; j < bs - 2; j += 4) { // dwords stay whole in both layouts
                    memcpy(p.q + quant_offset(&p, j), blk + 2 + j, 4);
                }
            }
        }
    }
}

void ts_r16_block(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, int64_t b, void * blk) {
    const struct r16_place p = place(type, n, n_rows, w16, r, b);
    memcpy(blk, p.d, 2);
    for (size_t j = 0; j < ts_row_size(type, TS_QK) - 2; j++) {
        ((char *) blk)[2 + j] = p.q[quant_offset(&p, j)];
    }
}

void ts_r16_row(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, void * row) {
    for (int64_t b = 0; b < n / TS_QK; b++) {
        ts_r16_block(type, n, n_rows, w16, r, b, (char *) row + (size_t) b * ts_row_size(type, TS_QK));
    }
}
