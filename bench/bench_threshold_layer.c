// bench_threshold_layer.c: one thread, one Mistral-7B-shape FFN layer (n_embd 4096, n_ff 14336)
// in Q4_0 from DRAM: the dense mode's three 16-row streams (gate, up, down; what the runtime
// reads after repacking) against the threshold mode's kernels at a density (default 0.5):
// the 16-row gate, the gathered up rows (dot_rows with the index list) and the axpy of the
// selected ffn_down_t rows. Prints each part's time and GB/s of weights, the ratio, and the
// ratio the bytes alone would give (3 / (1 + 2 density)); then the memory's own limit: a plain
// read of a whole matrix and of its selected rows (one 8-byte load per cache line, no
// arithmetic; the selected rows prefetched as the kernels do) and the ratio the threshold mode would reach if every
// kernel ran at those read speeds. Min of 15 interleaved rounds, each
// after reading 256 MB to evict the caches; matrices on 2 MiB pages (as the runtime's
// copies). Not a test: timings are machine-dependent and nothing here asserts them.
//
//   cmake --build <build dir> --target bench_threshold_layer && <build dir>/tests/c/bench_threshold_layer [density]
//
// Random quant bytes with small scales (speed does not depend on values); a new random
// selection each round.
#define _GNU_SOURCE // madvise
#include "ts-kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { N_EMBD = 4096, N_FF = 14336, ROUNDS = 15 };
#define FLUSH_BYTES ((size_t) 256 << 20)

static uint64_t rng_state = 1;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void * huge(size_t bytes) {
    void * p = NULL;
    if (posix_memalign(&p, (size_t) 2 << 20, bytes) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

// rows x n Q4_0 weights, plain layout
static char * q4_0_matrix(int64_t rows, int64_t n) {
    const size_t row_bytes = ts_row_size(TS_TYPE_Q4_0, n);
    char * w = huge(row_bytes * (size_t) rows);
    for (size_t i = 0; i < row_bytes * (size_t) rows; i++) w[i] = (char) rng_u64();
    const uint16_t d = ts_fp32_to_fp16(0.01f);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b = 0; b < n / TS_QK; b++) memcpy(w + (size_t) r * row_bytes + (size_t) b * sizeof(ts_block_q4_0), &d, 2);
    }
    return w;
}

static char * r16_matrix(int64_t rows, int64_t n) {
    char * plain = q4_0_matrix(rows, n);
    char * packed = huge(ts_row_size(TS_TYPE_Q4_0, n) * (size_t) rows);
    ts_pack_r16(TS_TYPE_Q4_0, n, rows, plain, packed);
    free(plain);
    return packed;
}

// Touches every cache line of rows idx[0..n) of row_bytes each, the row AHEAD entries later
// prefetched into L2 as the gathered kernels do; idx NULL: all rows in order, no prefetch
// (the hardware's stream prefetcher reads a whole matrix faster on its own).
static uint64_t read_rows(const char * w, size_t row_bytes, const int32_t * idx, int64_t n) {
    enum { AHEAD = 8 };
    uint64_t sum[4] = { 0, 0, 0, 0 };
    for (int64_t j = 0; j < n; j++) {
        const char * row = w + (size_t) (idx ? idx[j] : j) * row_bytes;
        const int64_t jn = j + AHEAD < n ? j + AHEAD : n - 1;
        const char * next = w + (size_t) (idx ? idx[jn] : jn) * row_bytes;
        for (size_t o = 0; o < row_bytes; o += 64) {
            if (idx) __builtin_prefetch(next + o, 0, 2);
            uint64_t v;
            memcpy(&v, row + o, sizeof(v));
            sum[(o / 64) & 3] += v;
        }
    }
    return sum[0] + sum[1] + sum[2] + sum[3];
}

static void flush(volatile char * buf) {
    for (size_t i = 0; i < FLUSH_BYTES; i += 64) buf[i]++;
}

int main(int argc, char ** argv) {
    const double density = argc > 1 ? atof(argv[1]) : 0.5;
    if (!(density > 0.0 && density <= 1.0)) {
        fprintf(stderr, "usage: %s [density in (0, 1]]\n", argv[0]);
        return 1;
    }
    const struct ts_kernels * k = ts_kernels_best();
    const enum ts_type q = TS_TYPE_Q4_0;
    const size_t row_bytes = ts_row_size(q, N_EMBD);
    char * gate16 = r16_matrix(N_FF, N_EMBD), * up16 = r16_matrix(N_FF, N_EMBD), * down16 = r16_matrix(N_EMBD, N_FF);
    char * up = q4_0_matrix(N_FF, N_EMBD), * down_t = q4_0_matrix(N_FF, N_EMBD);
    char * flush_buf = malloc(FLUSH_BYTES);
    float * xf = malloc(N_FF * sizeof(float));
    char * x = malloc(ts_row_size(TS_TYPE_Q8_0, N_FF)), * a_q = malloc(ts_row_size(TS_TYPE_Q8_0, N_FF));
    float * g = malloc(N_FF * sizeof(float)), * u = malloc(N_FF * sizeof(float)), * y = malloc(N_EMBD * sizeof(float));
    float * a = malloc(N_FF * sizeof(float));
    int32_t * idx = malloc(N_FF * sizeof(int32_t));
    if (!flush_buf || !xf || !x || !a_q || !g || !u || !y || !a || !idx) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(flush_buf, 1, FLUSH_BYTES);
    for (int64_t i = 0; i < N_FF; i++) xf[i] = (float) (rng_u64() % 1000) / 1000.0f - 0.5f;
    ts_quantize_dot(k, q, xf, x, N_EMBD);
    ts_quantize_dot(k, q, xf, a_q, N_FF);

    double t_dense = 1e9, t_thr = 1e9, t_gate = 1e9, t_up = 1e9, t_down = 1e9, t_read_all = 1e9, t_read_sel = 1e9;
    uint64_t read_sum = 0;
    int64_t n_sel = 0;
    for (int round = 0; round < ROUNDS; round++) {
        flush(flush_buf);
        const double d0 = now_s();
        k->dot_rows_r16(q, N_EMBD, gate16, 0, N_FF / TS_R16, x, 0, 1, g, N_FF);
        k->dot_rows_r16(q, N_EMBD, up16, 0, N_FF / TS_R16, x, 0, 1, u, N_FF);
        k->dot_rows_r16(q, N_FF, down16, 0, N_EMBD / TS_R16, a_q, 0, 1, y, N_EMBD);
        const double d1 = now_s();
        t_dense = d1 - d0 < t_dense ? d1 - d0 : t_dense;

        n_sel = 0;
        for (int64_t i = 0; i < N_FF; i++) {
            if ((double) (rng_u64() % 1000000) / 1e6 < density) {
                idx[n_sel] = (int32_t) i;
                a[n_sel++] = 0.1f;
            }
        }
        flush(flush_buf);
        const double s0 = now_s();
        k->dot_rows_r16(q, N_EMBD, gate16, 0, N_FF / TS_R16, x, 0, 1, g, N_FF);
        const double s1 = now_s();
        k->dot_rows(q, N_EMBD, up, row_bytes, x, idx, n_sel, u);
        const double s2 = now_s();
        k->axpy_rows(q, N_EMBD, down_t, row_bytes, idx, a, n_sel, 0, N_EMBD, y);
        const double s3 = now_s();
        t_thr  = s3 - s0 < t_thr  ? s3 - s0 : t_thr;
        t_gate = s1 - s0 < t_gate ? s1 - s0 : t_gate;
        t_up   = s2 - s1 < t_up   ? s2 - s1 : t_up;
        t_down = s3 - s2 < t_down ? s3 - s2 : t_down;

        flush(flush_buf);
        const double r0 = now_s();
        read_sum += read_rows(up, row_bytes, NULL, N_FF);
        const double r1 = now_s();
        flush(flush_buf);
        const double r2 = now_s();
        read_sum += read_rows(down_t, row_bytes, idx, n_sel);
        const double r3 = now_s();
        t_read_all = r1 - r0 < t_read_all ? r1 - r0 : t_read_all;
        t_read_sel = r3 - r2 < t_read_sel ? r3 - r2 : t_read_sel;
    }
    const double mb = (double) N_FF * (double) row_bytes / 1e6, sel_mb = mb * (double) n_sel / N_FF;
    printf("kernels %s, one thread, Q4_0 %d x %d, density %.2f, min of %d\n", k->name, N_EMBD, N_FF, density, ROUNDS);
    printf("dense (3 x 16-row stream)   %7.3f ms  %5.1f GB/s\n", t_dense * 1e3, 3 * mb / t_dense / 1e3);
    printf("threshold                   %7.3f ms\n", t_thr * 1e3);
    printf("  gate (16-row stream)      %7.3f ms  %5.1f GB/s\n", t_gate * 1e3, mb / t_gate / 1e3);
    printf("  up (gathered dot_rows)    %7.3f ms  %5.1f GB/s\n", t_up * 1e3, sel_mb / t_up / 1e3);
    printf("  down (axpy_rows)          %7.3f ms  %5.1f GB/s\n", t_down * 1e3, sel_mb / t_down / 1e3);
    printf("threshold vs dense %.3fx (the bytes alone: %.3fx)\n", t_dense / t_thr, 3.0 / (1.0 + 2.0 * density));
    printf("plain read, whole matrix         %7.3f ms  %5.1f GB/s\n", t_read_all * 1e3, mb / t_read_all / 1e3);
    printf("plain read, selected rows        %7.3f ms  %5.1f GB/s\n", t_read_sel * 1e3, sel_mb / t_read_sel / 1e3);
    printf("threshold vs dense at those read speeds %.3fx (checksum %llu)\n",
           3.0 * t_read_all / (t_read_all + 2.0 * t_read_sel), (unsigned long long) (read_sum & 0xFF));
    return 0;
}
