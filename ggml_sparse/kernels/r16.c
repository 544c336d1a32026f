// r16.c: the 16-row layout of dense quantised matrices (ts-kernels.h): packing a plain
// matrix into it, and reading a row back out (the reference kernels and the tests use that).
#include "ts-kernels.h"

#include <string.h>

bool ts_r16_ok(enum ts_type type, int64_t n) {
    return (type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0) && ts_row_ok(type, n);
}

// Bytes of one block of one row, and of its quants.
static size_t block_size_of(enum ts_type type) {
    return type == TS_TYPE_Q4_0 ? sizeof(ts_block_q4_0) : sizeof(ts_block_q8_0);
}

// Where row r's block b lives in the 16-row layout: its scale at *d, quant byte j at
// q + (j / 4) * 64 + (j % 4) (the group's dword r of vector j / 4). Plain tail rows: the
// block itself (scale, then contiguous quants): q_stride 1 there, the dword step otherwise.
struct r16_place {
    const char * d;
    const char * q;
    bool         packed;
};

static struct r16_place place(enum ts_type type, int64_t n, int64_t n_rows, const char * w16, int64_t r, int64_t b) {
    const size_t bs = block_size_of(type);
    const int64_t nb = n / TS_QK;
    const int64_t n_groups = n_rows / TS_R16;
    struct r16_place p;
    if (r < n_groups * TS_R16) {
        const int64_t g = r / TS_R16, rr = r % TS_R16;
        const char * blk = w16 + ((size_t) g * (size_t) nb + (size_t) b) * TS_R16 * bs;
        p.d = blk + 2 * rr;
        p.q = blk + 2 * TS_R16 + 4 * rr;
        p.packed = true;
    } else {
        const char * blk = w16 + (size_t) r * (size_t) nb * bs + (size_t) b * bs;
        p.d = blk;
        p.q = blk + 2;
        p.packed = false;
    }
    return p;
}

static size_t quant_offset(const struct r16_place * p, size_t j) {
    return p->packed ? (j / 4) * 64 + j % 4 : j;
}

void ts_pack_r16(enum ts_type type, int64_t n, int64_t n_rows, const void * w, void * dst) {
    const size_t bs = block_size_of(type), q_bytes = bs - 2;
    const int64_t nb = n / TS_QK;
    const size_t row_bytes = (size_t) nb * bs;
    const int64_t n_packed = n_rows / TS_R16 * TS_R16;
    char * out = dst;
    for (int64_t r0 = 0; r0 < n_packed; r0 += TS_R16) { // groups, in the order they are stored
        for (int64_t b = 0; b < nb; b++) {
            for (int rr = 0; rr < TS_R16; rr++) {
                const char * blk = (const char *) w + (size_t) (r0 + rr) * row_bytes + (size_t) b * bs;
                memcpy(out + 2 * rr, blk, 2);
                for (size_t j = 0; j < q_bytes; j += 4) {
                    memcpy(out + 2 * TS_R16 + j / 4 * 64 + 4 * rr, blk + 2 + j, 4);
                }
            }
            out += TS_R16 * bs;
        }
    }
    memcpy(out, (const char *) w + (size_t) n_packed * row_bytes, (size_t) (n_rows - n_packed) * row_bytes);
}

void ts_r16_block(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, int64_t b, void * blk) {
    const struct r16_place p = place(type, n, n_rows, w16, r, b);
    memcpy(blk, p.d, 2);
    for (size_t j = 0; j < block_size_of(type) - 2; j++) {
        ((char *) blk)[2 + j] = p.q[quant_offset(&p, j)];
    }
}

void ts_r16_row(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, void * row) {
    for (int64_t b = 0; b < n / TS_QK; b++) {
        ts_r16_block(type, n, n_rows, w16, r, b, (char *) row + (size_t) b * block_size_of(type));
    }
}
