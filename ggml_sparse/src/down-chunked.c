// down-chunked.c: the sparse down projection of SwiGLU FFNs (ggml-sparse.h,
// ggml_sparse_down_chunked) split by neurons as well as by columns, so that two threads read
// whole rows instead of each reading half of every selected row.
//
// ggml_sparse_down splits only the output columns: with 2 threads each reads 1152 of a Q4_0
// row's 2304 bytes, and a selected row costs two short streams. Measured on the Zen 4 VM (one
// thread, Q4_0 4096 x 14336, half the rows selected, from DRAM): the rows over half the
// columns took 1.11-1.26 ms, half the rows over all columns 0.8-1.0 ms.
//
// Here the neurons fall into DOWN_CHUNKS fixed ranges (a function of n_ff alone). Node one
// computes each range's partial sum P_k = sum over its non-zeros of a[i] * w_down_t[i] (one
// ts_down_run on the range's rows: the same FMA chains ggml_sparse_down makes, per range);
// its work items are (range, column slice) pairs, as many slices as it takes to give every
// thread an item. Node two adds y = ((P_0 + P_1) + P_2) + P_3 column by column. Each P_k
// element is one chain fixed by the range whatever the item split, and the sum's order is
// fixed, so the result does not depend on the thread count or on the batch (ts_down_run
// gives a token the same bits alone or in a batch). It differs from ggml_sparse_down's
// single chain by rounding; the SwiGLU modes that read a neuron-major down (threshold and
// dense) both use this one, so that a threshold of -inf still gives the dense bits.
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "ops-internal.h"

#include "ggml.h"

#include <string.h>

// Neuron ranges. Four: two per thread on the 2-core machine this was measured on; more
// threads take column slices of the ranges. The partials take DOWN_CHUNKS x the output's size.
#define DOWN_CHUNKS 4

static int64_t range_start(int64_t n_ff, int64_t k) {
    return n_ff * k / DOWN_CHUNKS;
}

// dst P [n_embd, DOWN_CHUNKS * T]: column k * T + t holds range k's partial for token t.
// src: w_down_t [n_embd, n_ff], a [n_ff, T]. userdata: the sub-batch setting.
static void parts_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    const struct ggml_tensor * w = dst->src[0], * a = dst->src[1];
    const int64_t n_ff = w->ne[1], T = a->ne[1];
    const int n_slices = (nth + DOWN_CHUNKS - 1) / DOWN_CHUNKS;
    const int n_items = DOWN_CHUNKS * n_slices;
    for (int item = n_items * ith / nth; item < n_items * (ith + 1) / nth; item++) {
        const int64_t k = item / n_slices;
        const int slice = item % n_slices;
        const int64_t r0 = range_start(n_ff, k), r1 = range_start(n_ff, k + 1);
        struct ggml_tensor w_k = *w, a_k = *a, p_k = *dst;
        w_k.data  = (char *) w->data + r0 * w->nb[1];
        w_k.ne[1] = r1 - r0;
        a_k.data  = (char *) a->data + r0 * a->nb[0];
        a_k.ne[0] = r1 - r0;
        p_k.data  = (char *) dst->data + k * T * dst->nb[1];
        p_k.ne[1] = T;
        if (r1 > r0) {
            ts_down_run(&w_k, &a_k, &p_k, (int) (intptr_t) userdata, slice, n_slices);
        } else { // an empty range (n_ff < DOWN_CHUNKS): a zero partial
            int64_t c0, c1;
            ts_split_cols(w->ne[0], slice, n_slices, &c0, &c1);
            for (int64_t t = 0; t < T; t++) {
                memset((float *) ((char *) p_k.data + t * p_k.nb[1]) + c0, 0, (size_t) (c1 - c0) * sizeof(float));
            }
        }
    }
}

// dst y [n_embd, T]; src: P [n_embd, DOWN_CHUNKS * T].
static void sum_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * p = dst->src[0];
    const int64_t n = dst->ne[0], T = dst->ne[1];
    int64_t c0, c1;
    ts_split_cols(n, ith, nth, &c0, &c1);
    for (int64_t t = 0; t < T; t++) {
        float * y = (float *) ((char *) dst->data + t * dst->nb[1]);
        const float * p0 = (const float *) ((const char *) p->data + t * p->nb[1]);
        memcpy(y + c0, p0 + c0, (size_t) (c1 - c0) * sizeof(float));
        for (int64_t k = 1; k < DOWN_CHUNKS; k++) {
            const float * pk = (const float *) ((const char *) p->data + (k * T + t) * p->nb[1]);
            for (int64_t c = c0; c < c1; c++) y[c] += pk[c];
        }
    }
}

struct ggml_tensor * ggml_sparse_down_chunked(
        struct ggml_context * ctx,
        struct ggml_tensor  * w_down_t,
        struct ggml_tensor  * a,
        char * err, size_t err_size) {
    if (!ts_check_down(w_down_t, a, err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[2] = { w_down_t, a };
    struct ggml_tensor * p = ggml_custom_4d(ctx, GGML_TYPE_F32, w_down_t->ne[0], DOWN_CHUNKS * a->ne[1], 1, 1, args, 2,
                                            parts_compute, GGML_N_TASKS_MAX, (void *) (intptr_t) ts_sub_batch_setting());
    ggml_set_name(p, "sparse_down_parts");
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w_down_t->ne[0], a->ne[1], 1, 1, &p, 1,
                                            sum_compute, GGML_N_TASKS_MAX, NULL);
    ggml_set_name(y, "sparse_down_sum");
    return y;
}
