// test_matmul.c: ggml_sparse_matmul (src/matmul.c) in real ggml graphs.
//
// For the five weight types x odd and even row counts x T in {1, 2, 3, 7, 33}:
//   - every output against a double-precision reference on the dequantised weights and the
//     activation as the kernels see it (for Q8_0/Q4_0 weights: quantised to Q8_0 by the kernel
//     table's quantiser, itself tested against the reference quantiser in test_kernels);
//   - bit-identical results for 1..4 threads;
//   - each token of a batch bit-identical to the same token computed alone (T = 1);
//   - where the kernel table has it (AVX-512, Q8_0/Q4_0/Q4_K/F16), the same weights in the 16-row
//     layout (ggml_sparse_matmul_pack) give the plain layout's results bit for bit, 1..3 threads
//     (F16: its own FMA chains, near the reference, the same bits for 1..3 threads and per token);
// plus the error paths (type, shapes, layout), and ggml_sparse_mul_mat's fallback to ggml.
#include "ggml-sparse.h"
#include "ts-kernels.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_failed = 0;
static int n_checks = 0;

#define CHECK(cond, ...) do {                                    \
        n_checks++;                                              \
        if (!(cond)) {                                           \
            n_failed++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fprintf(stderr, "\n");                               \
        }                                                        \
    } while (0)

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static float frand(void) { // uniform [-1, 1)
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float) ((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static const enum ggml_type TYPES[] = { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
                                        GGML_TYPE_Q4_K, GGML_TYPE_Q6_K };

static enum ts_type ts_type_of(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32:  return TS_TYPE_F32;
        case GGML_TYPE_F16:  return TS_TYPE_F16;
        case GGML_TYPE_BF16: return TS_TYPE_BF16;
        case GGML_TYPE_Q8_0: return TS_TYPE_Q8_0;
        case GGML_TYPE_Q4_K: return TS_TYPE_Q4_K;
        case GGML_TYPE_Q6_K: return TS_TYPE_Q6_K;
        default:             return TS_TYPE_Q4_0;
    }
}

static struct ggml_context * new_ctx(size_t mb) {
    struct ggml_init_params ip = { .mem_size = mb << 20, .mem_buffer = NULL, .no_alloc = false };
    return ggml_init(ip);
}

// y = W x by the node, computed with n_threads; copied into out [T * rows].
static void run_matmul(struct ggml_tensor * w, const float * x, int64_t T, int n_threads, float * out) {
    struct ggml_context * ctx = new_ctx(8 + (size_t) ((w->ne[0] + w->ne[1]) * T * 4 >> 20));
    struct ggml_tensor * xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], T);
    memcpy(xt->data, x, sizeof(float) * (size_t) (w->ne[0] * T));
    char err[256] = "";
    struct ggml_tensor * y = ggml_sparse_matmul(ctx, w, xt, err, sizeof(err));
    CHECK(y != NULL, "ggml_sparse_matmul refused a valid product: %s", err);
    if (y) {
        CHECK(y->ne[0] == w->ne[1] && y->ne[1] == T && y->type == GGML_TYPE_F32, "result shape");
        struct ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, y);
        CHECK(ggml_graph_compute_with_ctx(ctx, gf, n_threads) == GGML_STATUS_SUCCESS, "compute");
        memcpy(out, y->data, sizeof(float) * (size_t) (w->ne[1] * T));
    }
    ggml_free(ctx);
}

static int n_packed_tests = 0;

// Outputs y [T][rows] farther from the double-precision product of W (wf) and x as the dot
// product sees it (xd) than float accumulation explains; the first three are reported.
static int off_reference(enum ggml_type type, const float * y, const float * wf, const float * xd, int64_t n,
                         int64_t rows, int64_t T) {
    int bad = 0;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t r = 0; r < rows; r++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double) wf[r * n + i] * xd[t * n + i];
                mag += fabs((double) wf[r * n + i] * xd[t * n + i]);
            }
            const double tol = 1e-5 * mag + 1e-6; // float accumulation
            if (!(fabs(y[t * rows + r] - ref) <= tol) && bad++ < 3) {
                CHECK(0, "%s n=%lld rows=%lld T=%lld: y[%lld][%lld] = %.7g, reference %.7g", ggml_type_name(type),
                      (long long) n, (long long) rows, (long long) T, (long long) t, (long long) r,
                      y[t * rows + r], ref);
            }
        }
    }
    return bad;
}

static void test_type(enum ggml_type type, int64_t n, int64_t rows) {
    static const int64_t TS[] = { 1, 2, 3, 7, 33 };
    const enum ts_type tt = ts_type_of(type);
    struct ggml_context * wctx = new_ctx(4 + (size_t) (n * rows * 4 >> 20));
    struct ggml_tensor * w = ggml_new_tensor_2d(wctx, type, n, rows);
    ggml_set_name(w, "blk.0.attn_q.weight");
    float * wf = malloc(sizeof(float) * (size_t) (n * rows));
    for (int64_t i = 0; i < n * rows; i++) wf[i] = frand();
    ggml_quantize_chunk(type, wf, w->data, 0, rows, n, NULL);
    for (int64_t r = 0; r < rows; r++) { // what W holds
        ts_to_float(tt, (const char *) w->data + r * w->nb[1], wf + r * n, n);
    }

    // the same weights in the kernels' 16-row layout, where this table has it (AVX-512)
    struct ggml_tensor * w16 = NULL;
    void * w16_data = NULL;
    if (ggml_sparse_matmul_packable(w)) {
        w16 = ggml_dup_tensor(wctx, w);
        ggml_set_name(w16, "blk.0.attn_q.weight");
        memcpy(w16->data, w->data, ggml_nbytes(w));
        w16_data = malloc(ggml_nbytes(w));
        CHECK(ggml_sparse_matmul_pack(w16, w16_data), "%s: packable but not packed", ggml_type_name(type));
        CHECK(w16->data == w16_data && memcmp(w16_data, w->data, ggml_nbytes(w)) != 0 || rows < 16,
              "%s rows=%lld: pack left the data as it was", ggml_type_name(type), (long long) rows);
        n_packed_tests++;
    }

    const int64_t T_max = 33;
    float * x   = malloc(sizeof(float) * (size_t) (n * T_max));
    float * xd  = malloc(sizeof(float) * (size_t) (n * T_max)); // x as the dot product sees it
    float * y   = malloc(sizeof(float) * (size_t) (rows * T_max));
    float * y1  = malloc(sizeof(float) * (size_t) (rows * T_max));
    float * y16 = malloc(sizeof(float) * (size_t) (rows * T_max));
    float * one = malloc(sizeof(float) * (size_t) rows);
    void * q = malloc(ts_row_size(ts_dot_type(tt), n));
    for (size_t ti = 0; ti < sizeof(TS) / sizeof(TS[0]); ti++) {
        const int64_t T = TS[ti];
        for (int64_t i = 0; i < n * T; i++) x[i] = frand() * 2.0f;
        for (int64_t t = 0; t < T; t++) {
            if (ts_dot_type(tt) != TS_TYPE_F32) {
                ts_quantize_dot(ts_kernels_best(), tt, x + t * n, q, n);
                ts_to_float(ts_dot_type(tt), q, xd + t * n, n);
            } else {
                memcpy(xd + t * n, x + t * n, sizeof(float) * (size_t) n);
            }
        }
        run_matmul(w, x, T, 1, y1);
        const int bad = off_reference(type, y1, wf, xd, n, rows, T);
        CHECK(bad == 0, "%s n=%lld rows=%lld T=%lld: %d outputs off the reference", ggml_type_name(type),
              (long long) n, (long long) rows, (long long) T, bad);
        for (int nt = 2; nt <= 4; nt++) {
            run_matmul(w, x, T, nt, y);
            CHECK(memcmp(y, y1, sizeof(float) * (size_t) (rows * T)) == 0,
                  "%s rows=%lld T=%lld: %d threads differ from 1 thread", ggml_type_name(type),
                  (long long) rows, (long long) T, nt);
        }
        // F16 rows in the 16-row layout have their own arithmetic (one FMA chain per row):
        // near the reference, and the same bits for any thread count and any batch
        for (int nt = 1; w16 && nt <= 3; nt++) {
            run_matmul(w16, x, T, nt, y);
            if (type != GGML_TYPE_F16) {
                CHECK(memcmp(y, y1, sizeof(float) * (size_t) (rows * T)) == 0,
                      "%s rows=%lld T=%lld, %d threads: the 16-row layout's results differ from the plain layout's",
                      ggml_type_name(type), (long long) rows, (long long) T, nt);
            } else if (nt == 1) {
                memcpy(y16, y, sizeof(float) * (size_t) (rows * T));
                CHECK(off_reference(type, y16, wf, xd, n, rows, T) == 0, "f16 rows=%lld T=%lld: the 16-row layout's "
                      "results are off the reference", (long long) rows, (long long) T);
            } else {
                CHECK(memcmp(y, y16, sizeof(float) * (size_t) (rows * T)) == 0,
                      "f16 rows=%lld T=%lld: the 16-row layout's results differ between 1 and %d threads",
                      (long long) rows, (long long) T, nt);
            }
        }
        if (w16 && type == GGML_TYPE_F16 && T > 1) {
            for (int64_t t = 0; t < T; t += T > 7 ? 8 : 1) {
                run_matmul(w16, x + t * n, 1, 2, one);
                CHECK(memcmp(one, y16 + t * rows, sizeof(float) * (size_t) rows) == 0,
                      "f16 rows=%lld T=%lld: in the 16-row layout, token %lld of the batch differs from it alone",
                      (long long) rows, (long long) T, (long long) t);
            }
        }
        if (T > 1) {
            for (int64_t t = 0; t < T; t += T > 7 ? 8 : 1) {
                run_matmul(w, x + t * n, 1, 2, one);
                CHECK(memcmp(one, y1 + t * rows, sizeof(float) * (size_t) rows) == 0,
                      "%s rows=%lld T=%lld: token %lld of the batch differs from it alone",
                      ggml_type_name(type), (long long) rows, (long long) T, (long long) t);
            }
        }
    }
    if (w16) {
        struct ggml_context * ctx = new_ctx(1);
        struct ggml_tensor * xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, 1);
        struct ggml_tensor * node = ggml_sparse_mul_mat(ctx, w16, xt);
        CHECK(node && node->op == GGML_OP_CUSTOM, "ggml_sparse_mul_mat must send a packed weight to ggml_sparse_matmul");
        CHECK(!ggml_sparse_matmul_pack(w16, w16_data), "a packed weight packed again");
        ggml_free(ctx);
    }
    free(w16_data);
    free(q); free(one); free(y16); free(y1); free(y); free(xd); free(x); free(wf);
    ggml_free(wctx);
}

static void expect_error(struct ggml_context * ctx, struct ggml_tensor * w, struct ggml_tensor * x,
                         const char * want, const char * what) {
    char err[256] = "";
    struct ggml_tensor * y = ggml_sparse_matmul(ctx, w, x, err, sizeof(err));
    CHECK(y == NULL, "%s: accepted", what);
    CHECK(strstr(err, want) != NULL, "%s: error '%s' does not mention '%s'", what, err, want);
}

static void test_errors(void) {
    struct ggml_context * ctx = new_ctx(16);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx, GGML_TYPE_Q4_0, 64, 8);
    ggml_set_name(w, "my_weight");
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 64, 3);
    ggml_set_name(x, "my_x");

    struct ggml_tensor * w41 = ggml_new_tensor_2d(ctx, GGML_TYPE_Q4_1, 64, 8);
    ggml_set_name(w41, "q41_weight");
    expect_error(ctx, w41, x, "q41_weight", "type without a kernel");
    expect_error(ctx, w41, x, "q4_1", "type without a kernel");
    struct ggml_tensor * w3 = ggml_new_tensor_3d(ctx, GGML_TYPE_Q4_0, 64, 8, 2);
    ggml_set_name(w3, "stacked");
    expect_error(ctx, w3, x, "stacked", "3-D weight");
    struct ggml_tensor * wt = ggml_transpose(ctx, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 8, 64));
    ggml_set_name(wt, "transposed_w");
    expect_error(ctx, wt, x, "transposed_w", "non-contiguous weight");
    struct ggml_tensor * x_short = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 32, 3);
    ggml_set_name(x_short, "short_x");
    expect_error(ctx, w, x_short, "short_x", "x of the wrong length");
    expect_error(ctx, w, x_short, "[64, T]", "x of the wrong length");
    struct ggml_tensor * x16 = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, 64, 3);
    ggml_set_name(x16, "half_x");
    expect_error(ctx, w, x16, "half_x", "f16 x");
    struct ggml_tensor * x3 = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, 64, 3, 2);
    ggml_set_name(x3, "cube_x");
    expect_error(ctx, w, x3, "cube_x", "3-D x");
    struct ggml_tensor * xt = ggml_transpose(ctx, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 3, 64));
    ggml_set_name(xt, "strided_x");
    expect_error(ctx, w, xt, "not contiguous", "x with strided rows");
    expect_error(ctx, NULL, x, "W: missing", "no weight");
    expect_error(ctx, w, NULL, "x: missing", "no x");
    CHECK(ggml_sparse_matmul(ctx, w41, x, NULL, 0) == NULL, "refusal without an err buffer");

    // the dispatcher never fails: a type without a kernel goes to ggml's mul_mat
    struct ggml_tensor * y = ggml_sparse_mul_mat(ctx, w41, x);
    CHECK(y && y->op == GGML_OP_MUL_MAT, "ggml_sparse_mul_mat: q4_1 should fall back to ggml_mul_mat");
    CHECK(!ggml_sparse_matmul_preferred(w41) && !ggml_sparse_matmul_preferred(w3), "preferred for unsupported W");
    y = ggml_sparse_mul_mat(ctx, w, x);
    CHECK(y && (y->op == GGML_OP_MUL_MAT) == !ggml_sparse_matmul_preferred(w),
          "ggml_sparse_mul_mat: node kind does not follow the policy");
    ggml_free(ctx);
}

int main(void) {
    ggml_cpu_init();
    printf("test_matmul: kernel table %s\n", ggml_sparse_isa());
    static const int64_t ROWS[] = { 1, 17, 48, 67 }; // 16-row layout: tail only, 1 group + 1, groups only, 4 + 3
    for (size_t ti = 0; ti < sizeof(TYPES) / sizeof(TYPES[0]); ti++) {
        const bool k = ggml_blck_size(TYPES[ti]) == 256; // K-quants: rows of whole super-blocks
        for (size_t ri = 0; ri < sizeof(ROWS) / sizeof(ROWS[0]); ri++) {
            test_type(TYPES[ti], k ? 256 : 96, ROWS[ri]);
        }
        test_type(TYPES[ti], k ? 768 : 256, 40);
    }
    test_errors();
    // the AVX-512 table must have the 16-row layout for Q8_0, Q4_0, Q4_K and F16 (5 shapes each)
    CHECK(ts_kernels_best()->isa != TS_ISA_AVX512 || getenv("TURBOSPARSE_MATMUL") || n_packed_tests == 20,
          "16-row layout tested %d times, expected 20 on the AVX-512 table", n_packed_tests);
    printf("test_matmul: 16-row layout in %d of the cases\n", n_packed_tests);
    printf("test_matmul: %d checks, %d failed\n", n_checks, n_failed);
    return n_failed ? 1 : 0;
}
