// select.cu: per-token active lists on the device (ts_select_active / ts_select_nonzero),
// order-preserving: one block per token walks its row in chunks of the block size; a warp
// ballot gives each lane its rank in the warp, a scan of the warp totals the warp's offset,
// and the running base carries across chunks. No atomics, so the list comes out ascending.
#include "common.cuh"

#define SELECT_THREADS 1024
#define SELECT_WARPS   (SELECT_THREADS / TS_WARP)

// Rank of this thread's flag among the block's flags of this chunk, and the chunk total.
static __device__ __forceinline__ int block_rank(bool flag, int * warp_tot, int * total) {
    const int lane = threadIdx.x % TS_WARP, warp = threadIdx.x / TS_WARP;
    const unsigned ballot = __ballot_sync(TS_FULL_MASK, flag);
    const int in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_tot[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) { // exclusive scan of the warp totals by the first warp
        const int v = warp_tot[lane];
        int incl = v;
#pragma unroll
        for (int o = 1; o < TS_WARP; o <<= 1) {
            const int up = __shfl_up_sync(TS_FULL_MASK, incl, o);
            if (lane >= o) incl += up;
        }
        warp_tot[lane] = incl - v;
        if (lane == TS_WARP - 1) *total = incl;
    }
    __syncthreads();
    const int rank = warp_tot[warp] + in_warp;
    return rank;
}

// NONZERO: keep the non-zero entries and their values (select_nonzero); else threshold the logits.
template <bool NONZERO>
static __global__ void select_kernel(const float * v, int n, float tau, int32_t * idx, float * compact,
                                     int32_t * count) {
    __shared__ int warp_tot[SELECT_WARPS];
    __shared__ int total;
    const int64_t t = blockIdx.x;
    const float * vt = v + t * n;
    int32_t * it = idx + t * n;
    int base = 0;
    for (int c0 = 0; c0 < n; c0 += SELECT_THREADS) {
        const int   i    = c0 + threadIdx.x;
        const float val  = i < n ? vt[i] : 0.0f;
        const bool  flag = i < n && (NONZERO ? val != 0.0f : val > tau);
        const int   rank = block_rank(flag, warp_tot, &total);
        if (flag) {
            it[base + rank] = i;
            if (NONZERO) compact[t * n + base + rank] = val;
        }
        base += total;
        __syncthreads(); // warp_tot and total are rewritten by the next chunk
    }
    if (threadIdx.x == 0) count[t] = base;
}

static const char * check(const float * v, int64_t n_ff, int64_t T, const int32_t * idx, const int32_t * count) {
    if (!v || !idx || !count) return "logits/a, idx, count: NULL";
    if (n_ff <= 0 || n_ff > INT32_MAX) return "n_ff: not in 1..2^31";
    if (T <= 0 || T > INT32_MAX) return "T: not positive";
    return NULL;
}

extern "C" const char * ts_cuda_select_active(const float * logits, int64_t n_ff, int64_t T, float tau,
                                              int32_t * idx, int32_t * count, ts_cuda_stream stream) {
    const char * err = check(logits, n_ff, T, idx, count);
    if (err) return err;
    if (tau != tau) return "tau: NaN";
    select_kernel<false><<<(unsigned) T, SELECT_THREADS, 0, (cudaStream_t) stream>>>(
        logits, (int) n_ff, tau, idx, NULL, count);
    return ts_launch_error();
}

extern "C" const char * ts_cuda_select_nonzero(const float * a, int64_t n_ff, int64_t T,
                                               int32_t * idx, float * a_compact, int32_t * count,
                                               ts_cuda_stream stream) {
    const char * err = check(a, n_ff, T, idx, count);
    if (err) return err;
    if (!a_compact) return "a_compact: NULL";
    select_kernel<true><<<(unsigned) T, SELECT_THREADS, 0, (cudaStream_t) stream>>>(
        a, (int) n_ff, 0.0f, idx, a_compact, count);
    return ts_launch_error();
}
