// matmul.c: the dense product y = W x on the turbosparse kernels (ggml-sparse.h), and the
// policy that says when it replaces ggml's own mul_mat.
//
// One ggml_custom_4d node. Every thread quantises the whole x into its own scratch (x is
// small next to W: a token is n floats, W is rows x n weights), so no thread reads what
// another writes and the node needs no barrier; then each thread takes a fixed slice of the
// rows and runs k->dot_rows (one token) or k->dot_rows_batch (several). Every output is
// one dot_rows result whichever thread computes it, so the thread count never changes a bit.
// (Splitting a batch's tokens among threads instead, each quantising only its own, measured
// slower: 4096x4096 Q4_0, 2 threads, T=16: 11.2 vs 7.6 ms; T=128: 39 vs 36 ms. So did rows
// claimed in 128 KiB chunks from a shared counter, as ggml's mul_mat does: one token, 2
// threads, 4096x4096 Q4_0 2.0 vs 1.4 ms, the 4096x32000 Q8_0 head 26.5 vs 15.4 ms; one
// contiguous slice per thread keeps each thread's stream long for the hardware prefetcher.)
#include "ggml-sparse.h"
#include "ts-kernels.h"
#include "scratch.h"
#include "op-error.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Rows are handed to threads in multiples of this, so that the batch kernel's row tiles are
// never cut by a thread boundary.
#define ROW_CHUNK TS_R16


static bool matmul_type(enum ggml_type type, enum ts_type * out) {
    switch (type) {
        case GGML_TYPE_F32:  *out = TS_TYPE_F32;  return true;
        case GGML_TYPE_F16:  *out = TS_TYPE_F16;  return true;
        case GGML_TYPE_BF16: *out = TS_TYPE_BF16; return true;
        case GGML_TYPE_Q8_0: *out = TS_TYPE_Q8_0; return true;
        case GGML_TYPE_Q4_0: *out = TS_TYPE_Q4_0; return true;
        case GGML_TYPE_Q4_K: *out = TS_TYPE_Q4_K; return true;
        case GGML_TYPE_Q6_K: *out = TS_TYPE_Q6_K; return true;
        default:             return false;
    }
}

static const char * name_of(const struct ggml_tensor * t, const char * role) {
    return t->name[0] ? t->name : role;
}

// A weight in ggml's repack buffer (or any non-host buffer) holds its blocks in another
// layout; only ggml's own kernels can read it.
static bool plain_layout(const struct ggml_tensor * w) {
    return w->extra == NULL && (w->buffer == NULL || ggml_backend_buffer_is_host(w->buffer));
}

// The mark of a weight in the kernels' 16-row layout: its `extra` points here. ggml reads
// `extra` only for tensors in its own extra buffer types, which these never are.
static const char R16_LAYOUT[] = "turbosparse 16-row layout";

static bool r16_layout(const struct ggml_tensor * w) {
    return w->extra == (const void *) R16_LAYOUT;
}

static bool check_matmul(const struct ggml_tensor * w, const struct ggml_tensor * x, char * err, size_t err_size) {
    if (!w || !x) {
        return ts_op_fail(err, err_size, "%s: missing", !w ? "W" : "x");
    }
    enum ts_type tt;
    if (!matmul_type(w->type, &tt)) {
        return ts_op_fail(err, err_size, "W (%s): type %s has no turbosparse kernel (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K)",
                    name_of(w, "W"), ggml_type_name(w->type));
    }
    if (w->ne[2] != 1 || w->ne[3] != 1 || !ggml_is_contiguous(w)) {
        return ts_op_fail(err, err_size, "W (%s): shape [%lld, %lld, %lld, %lld]: must be a contiguous 2-D matrix",
                    name_of(w, "W"), (long long) w->ne[0], (long long) w->ne[1], (long long) w->ne[2],
                    (long long) w->ne[3]);
    }
    if (!ts_row_ok(tt, w->ne[0])) {
        return ts_op_fail(err, err_size, "W (%s): row length %lld is not a whole number of %s blocks",
                    name_of(w, "W"), (long long) w->ne[0], ggml_type_name(w->type));
    }
    if (!plain_layout(w) && !r16_layout(w)) {
        return ts_op_fail(err, err_size, "W (%s): held in a repacked ggml buffer; only ggml_mul_mat reads that layout",
                    name_of(w, "W"));
    }
    if (x->type != GGML_TYPE_F32) {
        return ts_op_fail(err, err_size, "x (%s): type %s, expected f32", name_of(x, "x"), ggml_type_name(x->type));
    }
    if (x->ne[0] != w->ne[0] || x->ne[2] != 1 || x->ne[3] != 1) {
        return ts_op_fail(err, err_size, "x (%s): shape [%lld, %lld, %lld, %lld], expected [%lld, T] to meet W (%s) [%lld, %lld]",
                    name_of(x, "x"), (long long) x->ne[0], (long long) x->ne[1], (long long) x->ne[2],
                    (long long) x->ne[3], (long long) w->ne[0], name_of(w, "W"), (long long) w->ne[0],
                    (long long) w->ne[1]);
    }
    if (x->nb[0] != sizeof(float)) {
        return ts_op_fail(err, err_size, "x (%s): rows are not contiguous", name_of(x, "x"));
    }
    return true;
}

// dst y [rows, T] f32; src: W [n, rows], x [n, T].
static void matmul_compute(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * x = dst->src[1];
    const int64_t n    = w->ne[0];
    const int64_t rows = w->ne[1];
    const int64_t T    = x->ne[1];

    const int64_t n_chunks = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    int64_t r0 = n_chunks * ith / nth * ROW_CHUNK;
    const int64_t r1 = n_chunks * (ith + 1) / nth * ROW_CHUNK < rows ? n_chunks * (ith + 1) / nth * ROW_CHUNK : rows;
    if (r1 <= r0) {
        return;
    }
    enum ts_type tt = TS_TYPE_F32;
    matmul_type(w->type, &tt); // checked by the builder
    const struct ts_kernels * k = ts_kernels_best();

    const void * xd = x->data;
    size_t x_stride = x->nb[1];
    if (ts_dot_type(tt) != TS_TYPE_F32) {
        x_stride = ts_row_size(ts_dot_type(tt), n);
        char * q = ts_scratch(x_stride * (size_t) T);
        for (int64_t t = 0; t < T; t++) {
            ts_quantize_dot(k, tt, (const float *) ((const char *) x->data + t * x->nb[1]), q + t * x_stride, n);
        }
        xd = q;
    }
    const size_t row_bytes = w->nb[1];
    float * y = dst->data;
    const int64_t y_stride = (int64_t) (dst->nb[1] / sizeof(float));
    if (r16_layout(w)) {
        // the groups of 16 rows in [r0, r1) (r0 is a multiple of 16), then any plain tail rows
        const int64_t packed_end = rows / TS_R16 * TS_R16;
        const int64_t r_mid = r1 < packed_end ? r1 : packed_end;
        if (r_mid > r0) {
            k->dot_rows_r16(tt, n, w->data, r0 / TS_R16, r_mid / TS_R16, xd, x_stride, T, y + r0, y_stride);
        }
        r0 = r_mid > r0 ? r_mid : r0;
        if (r1 <= r0) {
            return;
        }
    }
    if (T == 1) {
        k->dot_rows(tt, n, (const char *) w->data + r0 * row_bytes, row_bytes, xd, NULL, r1 - r0, y + r0);
        return;
    }
    ts_dot_rows_blocked(k, tt, n, (const char *) w->data + r0 * row_bytes, row_bytes, xd, x_stride, T,
                        NULL, r1 - r0, y + r0, y_stride);
}

struct ggml_tensor * ggml_sparse_matmul(
        struct ggml_context * ctx,
        struct ggml_tensor  * w,
        struct ggml_tensor  * x,
        char * err, size_t err_size) {
    if (!check_matmul(w, x, err, err_size)) {
        return NULL;
    }
    struct ggml_tensor * args[2] = { w, x };
    struct ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], 1, 1, args, 2,
                                            matmul_compute, GGML_N_TASKS_MAX, NULL);
    // named after the weight without its layer (the profile's table groups by node name)
    const char * wn = w->name;
    if (strncmp(wn, "blk.", 4) == 0 && strchr(wn + 4, '.')) {
        wn = strchr(wn + 4, '.') + 1;
    }
    ggml_format_name(y, "ts_matmul %s", wn);
    return y;
}

// ---- policy ------------------------------------------------------------------------------------
//
// Measured on the 2-core AMD EPYC (AVX-512 VNNI) development VM, 2 threads, 8 weights in turn
// (cold cache), min of 5-40 interleaved runs, other sessions' jobs running (so memory
// bandwidth-bound figures are low in absolute terms; the ratios held across repeats):
//                                        ggml repacked   ggml plain    ours (huge pages)
//   AVX-512 table, Q4_0 4096x4096, T=1        1.71 ms       2.39 ms      1.62 ms
//                  Q4_0 1024x14336, T=1       1.54 ms       2.93 ms      1.36 ms
//                  Q4_0 4096x4096, T=128    140 ms        290 ms        38.6 ms
//                  Q8_0 4096x32000, T=1          -         21.6 ms      20.7 ms
//                  Q8_0 4096x32000, T=16         -          249 ms       64.6 ms
//   AVX2 table,    Q4_0 4096x4096, T=1        1.68 ms       2.35 ms      1.85 ms
//                  Q4_0 1024x14336, T=1       1.46 ms       3.14 ms      1.64 ms
//                  Q4_0 4096x4096, T=128    138 ms        284 ms       242 ms
//                  Q8_0 4096x32000, T=1          -         21.6 ms      14.0 ms
// (ggml's x86 repack has a layout for Q4_0 only; ggml here is the pip AVX2 build.)
// K-quants (bench/bench_matmul.c, 2 threads unless said, median of 10-200 interleaved runs, the
// machine heavily shared (load average ~10): absolute times are low, the ratios held):
//                                        ggml plain      ours
//   AVX-512 table, Q6_K 4096x32000, T=1     68.0 ms      64.0 ms  (the 7B output head, DRAM)
//                  Q6_K 4096x4096,  T=1     44.0 ms      36.0 ms
//                  Q6_K 4096x4096,  T=8     80.0 ms      44.0 ms
//                  Q6_K 4096x4096,  T=64     295 ms       192 ms
//                  Q6_K 4096x256 (L2), 1 thread  0.069 ms  0.042 ms;  Q4_K  0.074 vs 0.051 ms
//                  Q4_K 4096x4096,  T=1     29.7 ms      28.0 ms;   T=64  268 vs 248 ms
//   AVX2 table,    Q6_K 4096x256 (L2), 1 thread  0.071 ms  0.064 ms;  Q4_K  0.053 vs 0.057 ms
// ggml has an x86 repacked layout for Q4_K (q4_K_8x8, AVX2); none for Q6_K. Q4_K in the kernels'
// 16-row layout (sixteen rows in the lanes, dpbusd against broadcast activations; the Zen 4 VM,
// 2 threads, median of 3-30):
//                                        ggml plain   ggml repacked   ours (16-row layout)
//   Q4_K 14336 x 4096, T=1                 1.16 ms       0.93 ms        0.99 ms
//   Q4_K 14336 x 4096, T=128               99.8 ms       69.0 ms        31.9 ms
// So:
//   - AVX-512 table: ours for every type it has (decode and, by far, prompt processing),
//     Q4_K in the 16-row layout included (it had been left to ggml's repacked kernels while
//     ours only matched ggml's plain ones), and Q6_K except on CPUs that split 512-bit
//     operations in two (ts_cpu_halves_512: AMD Zen 4). There, on a quiet 2-core Zen 4 VM
//     (bench_matmul q6_K 32000 4096 T=1, 2 threads, 5 runs of 20), ggml took 3.2-3.9 ms (min)
//     against ours 4.9-6.8, T=8 the same 20 ms; ts-main decode with PowerInfer's Q6_K head,
//     Q4_0 predicted 10%: 49.8-60.6 -> 52.4-67.0 tok/s giving Q6_K to ggml. On a 2-core
//     Sapphire-Rapids-class Xeon VM, the other way round: the head 4.2-4.3 ms (ours) against
//     7.0-8.3 (ggml), and ts-main decode of the 8-layer Q4_K_M bench files (Q6_K head, some
//     attn_v and SwiGLU ffn_down) 35.8 -> 42.3 tok/s predicted 10%, 14.6 -> 17.8 dense SwiGLU,
//     22.9 -> 25.7 exact, giving Q6_K to ours. (Zen 4 not re-measured with the current
//     dot_q6_K, whose per-row sums now take one hadd tree for four rows.)
//   - AVX2 table: ggml's repacked kernels where ggml has a layout (Q4_0: faster GEMV and GEMM),
//     ours for Q8_0 (ggml has no x86 layout for it and its plain vec_dot is slower); K-quants
//     are left to ggml (ours not clearly faster: Q6_K 10% in L2, Q4_K 7% slower);
//     F32/F16/BF16 are left to ggml (not measured to be faster);
//   - NEON and scalar: ggml (it has ARM repacks for Q4_0 and Q8_0; ours not measured faster).
// Where the table has kernels for the 16-row layout (AVX-512: Q8_0, Q4_0, Q4_K, F16), the
// weights ours reads are stored in it (ggml_sparse_matmul_pack): 2 threads, 48 Q4_0 4096x4096
// matrices in turn from DRAM, T=1, 35 -> 44-46 GB/s (a plain read of the same memory: 46);
// decode of the 8-layer Mistral-shaped bench model, Q4_0, TURBOSPARSE_MATMUL=plain vs auto:
// SwiGLU dense 33.0 -> 41.6 tok/s, predicted 10% 75.3 -> 91.9. Results are the same bits
// either way, but for F16, whose layout has its own summation (ts-kernels.h) for a prompt
// GEMM that converts each weight once per 12 tokens: F16 14336x4096 against 128 tokens,
// Intel Xeon VM, 75-77 -> 54-58 ms; one token on par (4.5-4.9 against 4.4-4.7 ms).
// TURBOSPARSE_MATMUL=ours|plain|ggml overrides the choice for every type (for measuring;
// plain: ours in the file's layout); read once.
static int matmul_override(void) {
    static int choice = -2; // -1: none, 1: ours, 2: ours plain, 0: ggml; pure, so a race stores the same value
    if (choice != -2) {
        return choice;
    }
    int c = -1;
    const char * want = getenv("TURBOSPARSE_MATMUL");
    if (want && strcmp(want, "ours") == 0) {
        c = 1;
    } else if (want && strcmp(want, "plain") == 0) {
        c = 2;
    } else if (want && strcmp(want, "ggml") == 0) {
        c = 0;
    } else if (want && *want && strcmp(want, "auto") != 0) {
        fprintf(stderr, "turbosparse: TURBOSPARSE_MATMUL=%s is not one of ours, plain, ggml, auto; using auto\n", want);
    }
    choice = c;
    return choice;
}

static bool ours_is_faster(enum ts_type type) {
    const int forced = matmul_override();
    if (forced >= 0) {
        return forced >= 1;
    }
    switch (ts_kernels_best()->isa) {
        case TS_ISA_AVX512: return type != TS_TYPE_Q6_K || !ts_cpu_halves_512();
        case TS_ISA_AVX2:   return type == TS_TYPE_Q8_0;
        default:            return false;
    }
}

// Prompt batches (T > 1) of K-quant weights held in the file's layout: the sparse FFN's gate
// and up of a dReLU file, which dense and exact mode multiply densely for a prompt, and Q6_K
// matrices (left to ggml for T = 1, see the policy below). The AVX-512 table puts 16 Q4_K rows
// in the lanes and unpacks a Q6_K row once per tile of 6 tokens (avx512-kquants.c); ggml's
// plain kernels unpack every row for every token. bench_matmul, 2 threads, the 2-core Zen 4
// VM, T=128, median of 3-7 (rows x n):
//                      ggml plain   ours, file's layout
//   Q4_K 14336 x 4096   99.8-123.8 ms   55 ms (Q6_K-style tiles before the lanes: 61-84 ms)
//   Q6_K  4096 x 14336  127.6 ms        64-69 ms
// ts-main, 8-layer Mistral-shaped Q4_K_M dReLU file, 128-token prompt: dense mode 40-46 -> 70-71
// tok/s with the tiles, 90-98 with the lanes and the 16-row layout for the other Q4_K weights.
static bool ours_is_faster_batch(enum ts_type type) {
    const int forced = matmul_override();
    if (forced >= 0) {
        return forced >= 1;
    }
    return ts_kernels_best()->isa == TS_ISA_AVX512 && ts_is_kquant(type);
}

static bool batch_preferred(const struct ggml_tensor * w, const struct ggml_tensor * x) {
    enum ts_type tt;
    return x->ne[1] > 1 && matmul_type(w->type, &tt) && ours_is_faster_batch(tt) && w->ne[2] == 1 && w->ne[3] == 1 &&
           ggml_is_contiguous(w) && ts_row_ok(tt, w->ne[0]) && plain_layout(w);
}

bool ggml_sparse_matmul_preferred(const struct ggml_tensor * w) {
    enum ts_type tt;
    return w && matmul_type(w->type, &tt) && ours_is_faster(tt) && w->ne[2] == 1 && w->ne[3] == 1 &&
           ggml_is_contiguous(w) && ts_row_ok(tt, w->ne[0]) && plain_layout(w);
}

bool ggml_sparse_matmul_packable(const struct ggml_tensor * w) {
    enum ts_type tt;
    return ggml_sparse_matmul_preferred(w) && matmul_override() != 2 && matmul_type(w->type, &tt) &&
           ts_r16_ok(tt, w->ne[0]) && ts_kernels_best()->dot_rows_r16 != NULL;
}

bool ggml_sparse_matmul_pack(struct ggml_tensor * w, void * dst) {
    if (!ggml_sparse_matmul_packable(w)) {
        return false;
    }
    enum ts_type tt = TS_TYPE_F32;
    matmul_type(w->type, &tt);
    ts_pack_r16(tt, w->ne[0], w->ne[1], w->data, dst);
    w->data = dst;
    w->extra = (void *) R16_LAYOUT;
    return true;
}

struct ggml_tensor * ggml_sparse_mul_mat(
        struct ggml_context * ctx,
        struct ggml_tensor  * w,
        struct ggml_tensor  * x) {
    if ((r16_layout(w) || ggml_sparse_matmul_preferred(w) || batch_preferred(w, x)) && check_matmul(w, x, NULL, 0)) {
        return ggml_sparse_matmul(ctx, w, x, NULL, 0);
    }
    return ggml_mul_mat(ctx, w, x);
}
