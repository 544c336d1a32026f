// ts-cuda.h: the sparse-FFN kernels on an NVIDIA GPU, free of ggml and of the runtime.
//
// The CUDA twin of ts-kernels.h: the same arithmetic (scalar.c is the reference the unit
// test compares against), on device pointers, queued on a stream; nothing synchronises.
// Every function returns NULL when the work was queued, else a message naming the bad
// argument (or CUDA's own error string when a launch failed).
//
// Layouts (all device memory, all contiguous, T = tokens):
//   weights      as in ts-kernels.h: n_rows rows of n elements of one ts_type, row_bytes apart
//   x            [T] rows in the dot type of the weights (ts_dot_type): f32 [T][n] for
//                F32/F16/BF16 weights, Q8_0 blocks [T][n/32] for Q8_0/Q4_0 weights
//   logits, a    [T][n_ff] f32
//   idx          [T][n_ff] int32: token t's active neurons, ascending, in idx[t*n_ff + 0..count[t])
//   count        [T] int32
//   a_compact    [T][n_ff] f32: the activation of idx[t*n_ff + j] at a_compact[t*n_ff + j]
//   y            [T][n] f32
// The active counts stay on the device: no kernel here needs the host to read them, so a
// whole FFN (select, gate/up, down) queues without a synchronisation.
#pragma once

#include "ts-kernels.h"

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st * ts_cuda_stream; // a cudaStream_t; NULL = the legacy default stream

// Activations to Q8_0, bit-identical to ts_quantize_row_q8_0_ref: x [T][n] f32 -> y [T][n/32].
const char * ts_cuda_quantize_q8_0(const float * x, ts_block_q8_0 * y, int64_t n, int64_t T,
                                   ts_cuda_stream stream);

// Dense rows (the predictor's two layers): out[t*n_rows + i] = dot(W[i], x_t), or its relu
// when relu is set.
const char * ts_cuda_dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                              int64_t n_rows, const void * x, int64_t T, bool relu, float * out,
                              ts_cuda_stream stream);

// Predictor -> active set (ts_select_active per token): idx gets every i with
// logits[t*n_ff + i] > tau, ascending, count[t] how many. Order-preserving compaction by warp
// ballots and a block-wide prefix sum, one block per token.
const char * ts_cuda_select_active(const float * logits, int64_t n_ff, int64_t T, float tau,
                                   int32_t * idx, int32_t * count, ts_cuda_stream stream);

// Non-zero entries of a (ts_select_nonzero per token): idx, a_compact, count.
const char * ts_cuda_select_nonzero(const float * a, int64_t n_ff, int64_t T,
                                    int32_t * idx, float * a_compact, int32_t * count,
                                    ts_cuda_stream stream);

// Sparse gate/up fused with the activation (the table's gate_up, per token):
// a_compact[t*n_ff + j] = act(dot(W_gate[i], x_t), dot(W_up[i], x_t)), i = idx[t*n_ff + j],
// for j < count[t]. One warp per (token, active neuron); both rows are read in one pass.
const char * ts_cuda_gate_up(enum ts_type type, enum ts_act act, int64_t n,
                             const void * w_gate, const void * w_up, size_t row_bytes, int64_t n_ff,
                             const void * x, int64_t T, const int32_t * idx, const int32_t * count,
                             float * a_compact, ts_cuda_stream stream);

// Exact mode (the table's gate_up_exact over all neurons, per token): g = dot(W_gate[i], x_t);
// where g > 0 also u = dot(W_up[i], x_t) and a[t*n_ff + i] = act(g, u); elsewhere 0 and the
// W_up row is not read. One warp per neuron, looping over the tokens (the gate row is read
// from DRAM once for all T). Follow with ts_cuda_select_nonzero for the down projection.
const char * ts_cuda_gate_up_exact(enum ts_type type, enum ts_act act, int64_t n,
                                   const void * w_gate, const void * w_up, size_t row_bytes,
                                   int64_t n_ff, const void * x, int64_t T, float * a,
                                   ts_cuda_stream stream);

// Sparse down projection, neuron-major (the table's axpy_rows, per token):
//   y[t*n + c] = sum over j < count[t] of a_compact[t*n_ff + j] * W_T[idx[t*n_ff + j]][c]
// No atomics: each thread owns a few output columns and runs their chains of fused
// multiply-adds in the order of j.
//   n_split == 1: one chain per column from 0, exactly the CPU's: bit-identical to
//                 ts_kernels.axpy_rows of every ISA. Parallelism is limited to n columns x T.
//   n_split  > 1: the active list of each token is cut into n_split equal ranges, one chain
//                 per range into `partial` (ts_cuda_down_partial_bytes), then summed in range
//                 order. More blocks in flight; deterministic (same bits every run, on every
//                 GPU) for a given n_split, but not bit-identical to the CPU.
const char * ts_cuda_down(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                          int64_t n_ff, const int32_t * idx, const float * a_compact,
                          const int32_t * count, int64_t T, int n_split, float * partial, float * y,
                          ts_cuda_stream stream);
size_t ts_cuda_down_partial_bytes(int64_t n, int64_t T, int n_split);

#ifdef __cplusplus
}
#endif
