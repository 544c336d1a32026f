// r16.c: the 16-row layout of dense matrices (ts-kernels.h: quantised rows, and F16 rows
// element-major): packing a plain matrix into it, and reading a row back out (the reference
// kernels and the tests use that).
#include "ts-kernels.h"

#include <string.h>

bool ts_r16_ok(enum ts_type type, int64_t n) {
    return (type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0 || type == TS_TYPE_Q4_K || type == TS_TYPE_F16) &&
           ts_row_ok(type, n);
}

// Bytes of a block before its dwords: its f16 scale (Q4_K: d, then dmin), kept as 16-bit units.
static size_t head_bytes(enum ts_type type) { return type == TS_TYPE_Q4_K ? 4 : 2; }

// Where byte j of row r's block b lives in the 16-row layout, as an offset from w16. In a group
// (rows 16 g .. 16 g + 15) block b holds, for the 16 rows in order: their f16 scales (Q4_K: the
// 16 d, then the 16 dmin: 32 bytes each), then their remaining bytes as vectors of 16 dwords:
// dword r of vector v is row r's dword v (Q4_K: three vectors of scale bytes, then 32 of quants).
// F16 (a block is one element): block b of a group is the 16 rows' halves of element b.
// Tail rows (past the last whole group) keep the plain layout. Reading back uses it; packing
// (below) writes the same places group block by group block (test_kernels reads every row back).
static size_t byte_offset(enum ts_type type, int64_t n, int64_t n_rows, int64_t r, int64_t b, size_t j) {
    const size_t bs = ts_row_size(type, (int64_t) ts_block_size(type));
    const int64_t nb = n / (int64_t) ts_block_size(type);
    if (r >= n_rows / TS_R16 * TS_R16) {
        return ((size_t) r * (size_t) nb + (size_t) b) * bs + j;
    }
    const size_t grp = ((size_t) (r / TS_R16) * (size_t) nb + (size_t) b) * TS_R16 * bs;
    const size_t rr = (size_t) (r % TS_R16), h = head_bytes(type);
    if (type == TS_TYPE_F16) {
        return grp + 2 * rr + j;
    }
    if (j < h) { // scale half-word j / 2 of the row
        return grp + (j / 2) * 2 * TS_R16 + 2 * rr + j % 2;
    }
    return grp + h * TS_R16 + ((j - h) / 4) * 64 + 4 * rr + (j - h) % 4;
}

// In the order the layout stores the blocks (groups, blocks, rows), so dst is written in
// sequence: 413 MB of dense weights of the bench model in ~60 ms over a plain copy's time.
// (byte_offset's placement, unrolled: a group block's scales, then its dword vectors.)
static void pack_quant_groups(enum ts_type type, int64_t n, int64_t packed, const void * w, void * dst) {
    const size_t bs = ts_row_size(type, (int64_t) ts_block_size(type));
    const int64_t nb = n / (int64_t) ts_block_size(type);
    const size_t h = head_bytes(type);
    for (int64_t r0 = 0; r0 < packed; r0 += TS_R16) {
        for (int64_t b = 0; b < nb; b++) {
            char * grp = (char *) dst + ((size_t) (r0 / TS_R16) * (size_t) nb + (size_t) b) * TS_R16 * bs;
            for (int64_t rr = 0; rr < TS_R16; rr++) {
                const char * blk = (const char *) w + ((size_t) (r0 + rr) * (size_t) nb + (size_t) b) * bs;
                for (size_t j = 0; j < h; j += 2) {
                    memcpy(grp + (j / 2) * 2 * TS_R16 + 2 * (size_t) rr, blk + j, 2);
                }
                char * q = grp + h * TS_R16 + 4 * (size_t) rr;
                for (size_t j = h; j < bs; j += 4) { // dwords stay whole in both layouts
                    memcpy(q + ((j - h) / 4) * 64, blk + j, 4);
                }
            }
        }
    }
}

// F16: element k of a group's 16 rows, then element k + 1, ... (byte_offset's F16 case).
static void pack_f16_groups(int64_t n, int64_t packed, const uint16_t * w, uint16_t * dst) {
    for (int64_t r0 = 0; r0 < packed; r0 += TS_R16) {
        const uint16_t * src = w + (size_t) r0 * (size_t) n;
        uint16_t * grp = dst + (size_t) r0 * (size_t) n;
        for (int64_t k = 0; k < n; k++) {
            for (int64_t rr = 0; rr < TS_R16; rr++) {
                grp[(size_t) k * TS_R16 + (size_t) rr] = src[(size_t) rr * (size_t) n + (size_t) k];
            }
        }
    }
}

void ts_pack_r16(enum ts_type type, int64_t n, int64_t n_rows, const void * w, void * dst) {
    const size_t row_bytes = ts_row_size(type, n);
    const int64_t packed = n_rows / TS_R16 * TS_R16;
    if (type == TS_TYPE_F16) {
        pack_f16_groups(n, packed, w, dst);
    } else {
        pack_quant_groups(type, n, packed, w, dst);
    }
    // the tail rows keep the plain layout, at their plain place
    memcpy((char *) dst + (size_t) packed * row_bytes, (const char *) w + (size_t) packed * row_bytes,
           (size_t) (n_rows - packed) * row_bytes);
}

void ts_r16_block(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, int64_t b, void * blk) {
    const size_t bs = ts_row_size(type, (int64_t) ts_block_size(type));
    for (size_t j = 0; j < bs; j++) {
        ((char *) blk)[j] = ((const char *) w16)[byte_offset(type, n, n_rows, r, b, j)];
    }
}

void ts_r16_row(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, void * row) {
    const size_t bs = ts_row_size(type, (int64_t) ts_block_size(type));
    for (int64_t b = 0; b < n / (int64_t) ts_block_size(type); b++) {
        ts_r16_block(type, n, n_rows, w16, r, b, (char *) row + (size_t) b * bs);
    }
}
