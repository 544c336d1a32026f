// bench_kernels.c: single-thread micro-benchmark of the gather kernels at the Mistral-7B FFN
// shape (n_embd 4096, n_ff 14336, 10% of the neurons active), for every kernel table this
// CPU runs. Reports time per call and GB/s of weight bytes read. Not a test: timings are
// machine-dependent and nothing here asserts them.
//
//   cmake --build <build dir> --target bench_kernels && <build dir>/tests/c/bench_kernels
//
// gate_up_exact: every gate row in order, then the up rows of the positive gates (about half
// here), all neurons of the layer. Its "cold" and "hot" differ only in the cache state left by
// the previous call: the whole 66 MB of gate+up does not fit in the last-level cache.
//
// `bench_kernels batch` runs only the prompt-processing tables (bench_batch, bench_axpy_batch
// below), `bench_kernels axpy` only the latter; BENCH_ISA=avx512
// limits it (and the single-token rows) to one kernel table. K-quant rows (q4_K, q6_K) are
// random quant and scale bytes: no K quantiser in the kernels (speed does not depend on values).
//
// "cold": a new random active set every call, so most gathered rows come from DRAM (the
// matrices are larger than the caches); "hot": the same set each call (rows mostly cached).
#define _POSIX_C_SOURCE 199309L
#include "ts-kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

enum { N_EMBD = 4096, N_FF = 14336, N_ACTIVE = 1434, N_SETS = 16 };

static uint64_t rng_state = 12345;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_sym(void) { return 2.0f * (float) (rng_u64() >> 40) / (float) (1 << 24) - 1.0f; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void * random_matrix(enum ts_type type, int64_t n_rows, int64_t n) {
    const size_t row_bytes = ts_row_size(type, n);
    char * w = malloc(row_bytes * (size_t) n_rows);
    if (ts_is_kquant(type)) { // random quant and scale bytes, small super-block scales (no K quantiser here)
        const size_t bs = ts_row_size(type, TS_QK_K);
        for (size_t i = 0; i < row_bytes * (size_t) n_rows; i++) w[i] = (char) rng_u64();
        for (size_t b = 0; b < row_bytes * (size_t) n_rows / bs; b++) {
            const uint16_t d = ts_fp32_to_fp16(rng_sym() * 0.01f);
            memcpy(w + b * bs + (type == TS_TYPE_Q6_K ? bs - 2 : 0), &d, 2);
            if (type == TS_TYPE_Q4_K) memcpy(w + b * bs + 2, &d, 2);
        }
        return w;
    }
    float * tmp = malloc((size_t) n * sizeof(float));
    for (int64_t i = 0; i < n_rows; i++) {
        for (int64_t k = 0; k < n; k++) tmp[k] = rng_sym();
        ts_from_float(type, tmp, w + (size_t) i * row_bytes, n);
    }
    free(tmp);
    return w;
}

// N_ACTIVE distinct rows of N_FF, ascending (selection sampling).
static void random_subset(int32_t * idx) {
    int64_t need = N_ACTIVE;
    for (int64_t i = 0, count = 0; i < N_FF && count < N_ACTIVE; i++) {
        if ((int64_t) (rng_u64() % (uint64_t) (N_FF - i)) < need) {
            idx[count++] = (int32_t) i;
            need--;
        }
    }
}

// ---- prompt processing: dense rows against a batch of tokens ----------------------------------
// dot_rows_batch over a whole matrix (n_embd 4096 columns; 4096 or 14336 rows), called as
// src/matmul.c does (16 rows a call, every token; BENCH_CALL_ROWS=n changes it), against the per-token loop (dot_rows once
// per token, which re-reads every row per token) in the same run. GOP/s = 2 rows n n_tok / t.

enum { BATCH_CALL_ROWS = 16 };

static double time_best(double min_s, int min_reps, void (*fn)(void *), void * arg) {
    double best = 1e30, total = 0;
    for (int r = 0; r < min_reps || total < min_s; r++) {
        const double t0 = now_s();
        fn(arg);
        const double dt = now_s() - t0;
        total += dt;
        best = dt < best ? dt : best;
    }
    return best;
}

struct batch_args {
    const struct ts_kernels * K;
    enum ts_type type;
    int64_t n, n_rows, n_tok;
    const void * w;
    const void * x;
    size_t x_stride;
    float * out;
};

static int64_t call_rows = BATCH_CALL_ROWS; // BENCH_CALL_ROWS=n: rows per dot_rows_batch call

static bool blocked; // BENCH_BLOCKED=1: the whole matrix through ts_dot_rows_blocked, as src/matmul.c

static void run_batch(void * p) {
    const struct batch_args * b = p;
    const size_t row_bytes = ts_row_size(b->type, b->n);
    if (blocked) {
        ts_dot_rows_blocked(b->K, b->type, b->n, b->w, row_bytes, b->x, b->x_stride, b->n_tok, NULL, b->n_rows,
                            b->out, b->n_rows);
        return;
    }
    for (int64_t r = 0; r < b->n_rows; r += call_rows) {
        const int64_t nr = b->n_rows - r < call_rows ? b->n_rows - r : call_rows;
        b->K->dot_rows_batch(b->type, b->n, (const char *) b->w + (size_t) r * row_bytes, row_bytes,
                             b->x, b->x_stride, b->n_tok, NULL, nr, b->out + r, b->n_rows);
    }
}

static void run_per_token(void * p) {
    const struct batch_args * b = p;
    const size_t row_bytes = ts_row_size(b->type, b->n);
    for (int64_t t = 0; t < b->n_tok; t++) {
        b->K->dot_rows(b->type, b->n, b->w, row_bytes, (const char *) b->x + (size_t) t * b->x_stride,
                       NULL, b->n_rows, b->out + t * b->n_rows);
    }
}

struct axpy_args {
    const struct ts_kernels * K;
    enum ts_type type;
    int64_t n_tok;
    const void * w;
    const int32_t * idx;
    const float * a; // n_tok x N_ACTIVE
    float * y;       // n_tok x N_EMBD
};

static void run_axpy_batch(void * p) {
    const struct axpy_args * b = p;
    b->K->axpy_rows_batch(b->type, N_EMBD, b->w, ts_row_size(b->type, N_EMBD), b->idx, b->a, N_ACTIVE, N_ACTIVE,
                          b->n_tok, 0, N_EMBD, b->y, N_EMBD);
}

static void run_axpy_per_token(void * p) {
    const struct axpy_args * b = p;
    for (int64_t t = 0; t < b->n_tok; t++) {
        b->K->axpy_rows(b->type, N_EMBD, b->w, ts_row_size(b->type, N_EMBD), b->idx, b->a + t * N_ACTIVE, N_ACTIVE,
                        0, N_EMBD, b->y + t * N_EMBD);
    }
}

// The sparse down projection of a batch: N_ACTIVE rows of W_down_T (a batch's union of active
// neurons), every token with its own values; GOP/s = 2 N_ACTIVE n_embd n_tok / t.
static void bench_axpy_batch(void) {
    const enum ts_type types[] = { TS_TYPE_Q4_0, TS_TYPE_Q8_0, TS_TYPE_F16 };
    const int64_t toks[] = { 4, 16, 64 };
    int32_t * idx = malloc(N_ACTIVE * sizeof(int32_t));
    random_subset(idx);
    float * a = malloc((size_t) (64 * N_ACTIVE) * sizeof(float));
    for (int64_t i = 0; i < 64 * N_ACTIVE; i++) a[i] = rng_sym();
    float * y = malloc((size_t) (64 * N_EMBD) * sizeof(float));
    const char * only = getenv("BENCH_ISA");
    printf("\naxpy_rows_batch: %d of %d rows, n_embd %d\n", N_ACTIVE, N_FF, N_EMBD);
    printf("%-5s %-8s %5s %12s %9s %12s %9s %8s\n", "type", "isa", "n_tok", "batch us", "GOP/s", "per-tok us", "GOP/s", "speedup");
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        void * w = random_matrix(types[ti], N_FF, N_EMBD);
        for (int isa = 1; isa < TS_ISA_COUNT; isa++) {
            const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
            if (!K || (only && strcmp(only, K->name) != 0)) continue;
            for (size_t k = 0; k < sizeof(toks) / sizeof(toks[0]); k++) {
                struct axpy_args b = { K, types[ti], toks[k], w, idx, a, y };
                const double tb = time_best(0.3, 3, run_axpy_batch, &b);
                const double tp = time_best(0.3, 3, run_axpy_per_token, &b);
                const double ops = 2.0 * N_ACTIVE * N_EMBD * (double) toks[k];
                printf("%-5s %-8s %5lld %12.1f %9.1f %12.1f %9.1f %8.2f\n", ts_type_name(types[ti]), K->name, (long long) toks[k],
                       tb * 1e6, ops / tb * 1e-9, tp * 1e6, ops / tp * 1e-9, tp / tb);
                fflush(stdout);
            }
        }
        free(w);
    }
    free(idx); free(a); free(y);
}

static void bench_batch(void) {
    const enum ts_type types[] = { TS_TYPE_Q4_0, TS_TYPE_Q8_0, TS_TYPE_F16, TS_TYPE_F32 };
    const int64_t row_counts[] = { 4096, 14336 };
    const int64_t toks[] = { 1, 4, 16, 64, 128 };
    const int64_t n = N_EMBD, max_tok = 128;
    // BENCH_XPAD=k: k floats of padding after each token's activations (a stride of exactly
    // 16 KB puts every token's same columns in the same L1 sets)
    const int64_t xs = n + (getenv("BENCH_XPAD") ? atoll(getenv("BENCH_XPAD")) : 0);
    float * xf = malloc((size_t) (xs * max_tok) * sizeof(float));
    for (int64_t k = 0; k < xs * max_tok; k++) xf[k] = rng_sym();
    const size_t q_stride = ts_row_size(TS_TYPE_Q8_0, n);
    char * xq = malloc(q_stride * (size_t) max_tok);
    for (int64_t t = 0; t < max_tok; t++) ts_quantize_row_q8_0_ref(xf + t * xs, (ts_block_q8_0 *) (xq + t * q_stride), n);
    float * out = malloc((size_t) (14336 * max_tok) * sizeof(float));
    const char * only = getenv("BENCH_ISA"); // e.g. avx512: one table only
    if (getenv("BENCH_CALL_ROWS")) call_rows = atoll(getenv("BENCH_CALL_ROWS"));
    if (call_rows < 1) call_rows = BATCH_CALL_ROWS;
    blocked = getenv("BENCH_BLOCKED") != NULL;
    const bool quick = getenv("BENCH_QUICK") != NULL; // 4096 rows, 16 and 128 tokens, no per-token loop
    const char * only_type = getenv("BENCH_TYPE"); // e.g. f16: one weight type only
    if (blocked) {
        printf("\ndot_rows_batch: whole matrix through ts_dot_rows_blocked\n");
    } else {
        printf("\ndot_rows_batch: %lld rows a call\n", (long long) call_rows);
    }

    printf("%-5s %-8s %6s %5s %12s %9s %12s %9s %8s\n", "type", "isa", "rows", "n_tok",
           "batch us", "GOP/s", "per-tok us", "GOP/s", "speedup");
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        if (only_type && strcmp(only_type, ts_type_name(types[ti])) != 0) continue;
        for (size_t ri = 0; ri < 2; ri++) {
            const int64_t n_rows = row_counts[ri];
            void * w = random_matrix(types[ti], n_rows, n);
            for (int isa = 1; isa < TS_ISA_COUNT; isa++) { // the scalar table is far too slow here
                const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
                if (!K || (only && strcmp(only, K->name) != 0)) continue;
                for (size_t k = 0; k < sizeof(toks) / sizeof(toks[0]); k++) {
                    const bool quant = ts_dot_type(types[ti]) == TS_TYPE_Q8_0;
                    if (quick && (n_rows != 4096 || (toks[k] != 16 && toks[k] != 128))) continue;
                    struct batch_args b = { K, types[ti], n, n_rows, toks[k], w, quant ? (const void *) xq : (const void *) xf,
                                            quant ? q_stride : (size_t) xs * sizeof(float), out };
                    const double tb = time_best(0.3, 3, run_batch, &b);
                    if (quick && (n_rows != 4096 || (toks[k] != 16 && toks[k] != 128))) continue;
                    const double tp = quick ? 1e30 : time_best(0.3, 3, run_per_token, &b);
                    const double ops = 2.0 * (double) n_rows * (double) n * (double) toks[k];
                    printf("%-5s %-8s %6lld %5lld %12.1f %9.1f %12.1f %9.1f %8.2f\n", ts_type_name(types[ti]), K->name,
                           (long long) n_rows, (long long) toks[k], tb * 1e6, ops / tb * 1e-9, tp * 1e6, ops / tp * 1e-9, tp / tb);
                    fflush(stdout);
                }
            }
            free(w);
        }
    }
    free(xf); free(xq); free(out);
}

int main(int argc, char ** argv) {
    if (argc > 1 && strcmp(argv[1], "batch") == 0) { // prompt-processing rows only
        bench_batch();
        bench_axpy_batch();
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "axpy") == 0) {
        bench_axpy_batch();
        return 0;
    }
    const enum ts_type types[] = { TS_TYPE_Q4_0, TS_TYPE_Q4_K, TS_TYPE_Q6_K, TS_TYPE_F16 };
    int32_t (*sets)[N_ACTIVE] = malloc(sizeof(int32_t) * N_ACTIVE * N_SETS);
    for (int s = 0; s < N_SETS; s++) random_subset(sets[s]);
    float * xf = malloc(N_EMBD * sizeof(float));
    for (int k = 0; k < N_EMBD; k++) xf[k] = rng_sym();
    ts_block_q8_0 * xq = malloc(ts_row_size(TS_TYPE_Q8_0, N_EMBD));
    ts_quantize_row_q8_0_ref(xf, xq, N_EMBD);
    ts_block_q8_K * xk = malloc(ts_row_size(TS_TYPE_Q8_K, N_EMBD));
    ts_quantize_row_q8_K_ref(xf, xk, N_EMBD);
    float * a = malloc(N_ACTIVE * sizeof(float));
    for (int j = 0; j < N_ACTIVE; j++) a[j] = rng_sym();
    float * out = malloc(N_ACTIVE * sizeof(float));
    float * y = malloc(N_EMBD * sizeof(float));
    float * y_ff = malloc(N_FF * sizeof(float));

    printf("%-5s %-8s %-16s %-5s %10s %8s\n", "type", "isa", "kernel", "set", "us/call", "GB/s");
    for (int ti = 0; ti < 4; ti++) {
        const enum ts_type type = types[ti];
        const size_t row_bytes = ts_row_size(type, N_EMBD);
        void * w_gate = random_matrix(type, N_FF, N_EMBD);
        void * w_up   = random_matrix(type, N_FF, N_EMBD);
        void * w_down = random_matrix(type, N_FF, N_EMBD); // neuron-major: row i = neuron i
        const void * x = ts_dot_type(type) == TS_TYPE_F32 ? (const void *) xf
                       : ts_dot_type(type) == TS_TYPE_Q8_K ? (const void *) xk : (const void *) xq;
        for (int isa = 0; isa < TS_ISA_COUNT; isa++) {
            const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
            const char * only = getenv("BENCH_ISA");
            if (!K || (only && strcmp(only, K->name) != 0)) continue;
            for (int kernel = 0; kernel < 3; kernel++) {
                for (int cold = 1; cold >= 0; cold--) {
                    const int reps = isa == TS_ISA_SCALAR ? 8 : 64;
                    double best = 1e30, total = 0;
                    int64_t n_up = 0; // exact mode: up rows read (ReGLU: one per positive gate)
                    for (int r = 0; r < reps; r++) {
                        const int32_t * idx = sets[cold ? r % N_SETS : 0];
                        const double t0 = now_s();
                        if (kernel == 0) {
                            K->gate_up(type, TS_ACT_DRELU, N_EMBD, w_gate, w_up, row_bytes, x, idx, N_ACTIVE, out);
                        } else if (kernel == 2) {
                            n_up = K->gate_up_exact(type, TS_ACT_REGLU, N_EMBD, w_gate, w_up, row_bytes, x, 0, N_FF, y_ff);
                        } else {
                            K->axpy_rows(type, N_EMBD, w_down, row_bytes, idx, a, N_ACTIVE, 0, N_EMBD, y);
                        }
                        const double dt = now_s() - t0;
                        total += dt;
                        best = dt < best ? dt : best;
                    }
                    const double t = cold ? total / reps : best; // cold: mean over changing sets
                    const double rows_read = kernel == 0 ? 2.0 * N_ACTIVE : kernel == 1 ? N_ACTIVE : (double) (N_FF + n_up);
                    const double bytes = (double) row_bytes * rows_read;
                    printf("%-5s %-8s %-16s %-5s %10.1f %8.2f\n", ts_type_name(type), K->name,
                           kernel == 0 ? "gate_up (2 rows)" : kernel == 1 ? "axpy (down)" : "gate_up_exact",
                           cold ? "cold" : "hot",
                           t * 1e6, bytes / t * 1e-9);
                }
            }
        }
        free(w_gate); free(w_up); free(w_down);
    }
    free(sets); free(xf); free(xq); free(xk); free(a); free(out); free(y); free(y_ff);
    bench_batch();
    bench_axpy_batch();
    return 0;
}
