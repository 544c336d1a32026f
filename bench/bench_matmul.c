// bench_matmul.c: the dense product y = W x, ggml's own mul_mat against ggml_sparse_matmul (our
// kernels), on one weight matrix, in the same run, interleaved. Says which is faster for a
// type on this CPU: the evidence behind src/matmul.c's policy (ours_is_faster).
// Not a test: nothing here asserts timings.
//
//   cmake --build <build dir> --target bench_matmul
//   <build dir>/tests/c/bench_matmul [type=q6_K] [rows=32000] [n=4096] [T=1] [threads=2] [reps=20]
//
// Default shape: the output head of a 7B Llama/Mistral (PowerInfer's and llama.cpp's quantize
// put it in q6_K). Several copies of W are cycled through so that each product reads W from
// DRAM as in decoding (the head is larger than the caches anyway).
#define _POSIX_C_SOURCE 199309L
#include "ggml-sparse.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int cmp_double(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

enum { N_COPIES = 2 };

// A copy of w in the first of ggml's CPU "extra" buffer types (its repacked layouts, which
// llama.cpp uses for weights read densely) whose kernels take a mul_mat with it; NULL when
// this ggml has none for the type. ggml answers through supports_op on a node whose weight
// sits in a (zero-size) buffer of that type, as runtime/repack.c asks it.
static struct ggml_tensor * repacked_copy(struct ggml_context * meta, const struct ggml_tensor * w,
                                          ggml_backend_buffer_t * buf_out) {
    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    ggml_backend_dev_t dev = ggml_backend_reg_dev_get(reg, 0);
    typedef ggml_backend_buffer_type_t * (*get_extra_t)(ggml_backend_dev_t);
    get_extra_t get_extra = (get_extra_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    ggml_backend_buffer_type_t * list = get_extra ? get_extra(dev) : NULL;
    struct ggml_tensor * t = ggml_new_tensor_2d(meta, w->type, w->ne[0], w->ne[1]);
    struct ggml_tensor * probe = ggml_mul_mat(meta, t, ggml_new_tensor_2d(meta, GGML_TYPE_F32, w->ne[0], 1));
    for (int i = 0; list && list[i]; i++) {
        ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(list[i], 0);
        t->buffer = dummy;
        const bool ok = ggml_backend_dev_supports_op(dev, probe);
        t->buffer = NULL;
        ggml_backend_buffer_free(dummy);
        if (!ok) continue;
        ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(list[i], ggml_backend_buft_get_alloc_size(list[i], t));
        if (!buf || ggml_backend_tensor_alloc(buf, t, ggml_backend_buffer_get_base(buf)) != GGML_STATUS_SUCCESS) {
            return NULL;
        }
        ggml_backend_tensor_set(t, w->data, 0, ggml_nbytes(w)); // repacks
        *buf_out = buf;
        return t;
    }
    return NULL;
}

int main(int argc, char ** argv) {
    const char * tname = argc > 1 ? argv[1] : "q6_K";
    const int64_t rows  = argc > 2 ? atoll(argv[2]) : 32000;
    const int64_t n     = argc > 3 ? atoll(argv[3]) : 4096;
    const int64_t T     = argc > 4 ? atoll(argv[4]) : 1;
    const int threads   = argc > 5 ? atoi(argv[5]) : 2;
    const int reps      = argc > 6 ? atoi(argv[6]) : 20;
    enum ggml_type type = GGML_TYPE_COUNT;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        if (ggml_get_type_traits((enum ggml_type) t)->type_name && strcmp(ggml_type_name((enum ggml_type) t), tname) == 0) {
            type = (enum ggml_type) t;
        }
    }
    if (type == GGML_TYPE_COUNT || n % ggml_blck_size(type) != 0) {
        fprintf(stderr, "bench_matmul: unknown type '%s' or n %lld not a multiple of its block\n", tname, (long long) n);
        return 2;
    }
    ggml_cpu_init();
    const size_t w_bytes = ggml_row_size(type, n) * (size_t) rows;
    struct ggml_init_params ip = { .mem_size = 2 * N_COPIES * w_bytes + (size_t) (64 << 20) + (size_t) (rows + n) * T * 8,
                                   .mem_buffer = NULL, .no_alloc = false };
    struct ggml_context * ctx = ggml_init(ip);
    float * tmp = malloc((size_t) n * sizeof(float));
    struct ggml_tensor * w[N_COPIES];
    for (int c = 0; c < N_COPIES; c++) {
        w[c] = ggml_new_tensor_2d(ctx, type, n, rows);
        ggml_set_name(w[c], "output.weight");
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t k = 0; k < n; k++) tmp[k] = (float) ((r * 31 + k * 17 + c) % 97) / 97.0f - 0.5f;
            ggml_quantize_chunk(type, tmp, (char *) w[c]->data + (size_t) r * w[c]->nb[1], 0, 1, n, NULL);
        }
    }
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, T);
    for (int64_t k = 0; k < n * T; k++) ((float *) x->data)[k] = (float) (k % 13) / 13.0f - 0.5f;

    struct ggml_init_params mp = { .mem_size = 16 * ggml_tensor_overhead() + ggml_graph_overhead(), .mem_buffer = NULL, .no_alloc = true };
    struct ggml_context * meta = ggml_init(mp);
    ggml_backend_buffer_t rp_buf = NULL;
    struct ggml_tensor * w_rp = repacked_copy(meta, w[0], &rp_buf);
    struct ggml_cgraph * g_rp = NULL;
    if (w_rp) {
        g_rp = ggml_new_graph(ctx);
        ggml_build_forward_expand(g_rp, ggml_mul_mat(ctx, w_rp, x));
    }

    struct ggml_cgraph * g[2][N_COPIES];
    char err[256] = "";
    // ours reads its own copies, in the kernels' 16-row layout where the runtime would store
    // them so (ggml_sparse_matmul_packable: the policy's choice, TURBOSPARSE_MATMUL=ours forces it)
    struct ggml_tensor * w_ours[N_COPIES];
    bool packed = false;
    for (int c = 0; c < N_COPIES; c++) {
        w_ours[c] = w[c];
        if (ggml_sparse_matmul_packable(w[c])) { // packs w[c]'s bytes into a new tensor's memory
            w_ours[c] = ggml_dup_tensor(ctx, w[c]);
            void * dst = w_ours[c]->data;
            w_ours[c]->data = w[c]->data;
            packed = ggml_sparse_matmul_pack(w_ours[c], dst);
        }
    }
    for (int c = 0; c < N_COPIES; c++) {
        struct ggml_tensor * y_ggml = ggml_mul_mat(ctx, w[c], x);
        struct ggml_tensor * y_ours = ggml_sparse_matmul(ctx, w_ours[c], x, err, sizeof(err));
        if (!y_ours) {
            fprintf(stderr, "bench_matmul: ggml_sparse_matmul refused: %s\n", err);
            return 1;
        }
        g[0][c] = ggml_new_graph(ctx);
        ggml_build_forward_expand(g[0][c], y_ggml);
        g[1][c] = ggml_new_graph(ctx);
        ggml_build_forward_expand(g[1][c], y_ours);
    }
    double * t_ms[3] = { malloc(sizeof(double) * reps), malloc(sizeof(double) * reps), malloc(sizeof(double) * reps) };
    for (int i = -2; i < reps; i++) { // two warm-up rounds
        for (int who = 0; who < (g_rp ? 3 : 2); who++) {
            const double t0 = now_s();
            ggml_graph_compute_with_ctx(ctx, who < 2 ? g[who][(i + 2) % N_COPIES] : g_rp, threads);
            if (i >= 0) t_ms[who][i] = 1e3 * (now_s() - t0);
        }
    }
    for (int who = 0; who < (g_rp ? 3 : 2); who++) qsort(t_ms[who], reps, sizeof(double), cmp_double);
    printf("bench_matmul %s %lld x %lld, T=%lld, %d threads, %d reps (kernels: %s)\n", tname, (long long) n,
           (long long) rows, (long long) T, threads, reps, ggml_sparse_isa());
    printf("  ggml mul_mat        min %8.3f ms  median %8.3f ms\n", t_ms[0][0], t_ms[0][reps / 2]);
    if (g_rp) {
        printf("  ggml mul_mat, repacked (%s; one copy, so it stays warmer than the others)  min %8.3f ms  median %8.3f ms\n",
               ggml_backend_buffer_name(rp_buf), t_ms[2][0], t_ms[2][reps / 2]);
    }
    printf("  ggml_sparse_matmul%s  min %8.3f ms  median %8.3f ms\n", packed ? " (16-row layout)" : "", t_ms[1][0], t_ms[1][reps / 2]);
    printf("  ours / ggml (median) %.3f  -> %s\n", t_ms[1][reps / 2] / t_ms[0][reps / 2],
           t_ms[1][reps / 2] < t_ms[0][reps / 2] ? "ours faster" : "ggml faster");
    free(tmp); free(t_ms[0]); free(t_ms[1]); free(t_ms[2]);
    if (rp_buf) ggml_backend_buffer_free(rp_buf);
    ggml_free(meta);
    ggml_free(ctx);
    return 0;
}
