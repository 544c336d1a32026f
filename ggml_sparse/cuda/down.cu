// down.cu: the sparse down projection, neuron-major, without atomics. Each thread owns a
// "unit" of output columns (a 16-byte vector for the float types, 4 columns of a Q8_0/Q4_0
// block) and runs their fused multiply-add chains over the active rows in list order, so
// every y element is one fixed chain: with n_split == 1 exactly scalar.c's axpy_rows
// (explicit __fmul_rn/__fmaf_rn, nothing left to contraction). The active list is staged
// through shared memory a tile at a time.
//
// n_split > 1 cuts each token's list into equal ranges (blockIdx.y) whose chains go to
// `partial`; reduce_kernel then adds the ranges in order. Deterministic for a given n_split.
#include "common.cuh"

#define DOWN_THREADS 128

// Output columns per thread.
template <int TYPE, bool VEC>
static __host__ __device__ constexpr int unit_cols() {
    return TYPE == TS_TYPE_Q8_0 || TYPE == TS_TYPE_Q4_0 ? 4 : !VEC ? 1 : TYPE == TS_TYPE_F32 ? 4 : 8;
}

// acc[k] += aj * W_T[row][column k of unit u], one fused multiply-add per column.
template <int TYPE, bool VEC>
static __device__ __forceinline__ void axpy_unit(const char * row, int u, float aj, float * acc) {
    if (TYPE == TS_TYPE_F32) {
        if (VEC) {
            const float4 w = *(const float4 *) ((const float *) row + 4 * u);
            acc[0] = __fmaf_rn(aj, w.x, acc[0]);
            acc[1] = __fmaf_rn(aj, w.y, acc[1]);
            acc[2] = __fmaf_rn(aj, w.z, acc[2]);
            acc[3] = __fmaf_rn(aj, w.w, acc[3]);
        } else {
            acc[0] = __fmaf_rn(aj, ((const float *) row)[u], acc[0]);
        }
    } else if (TYPE == TS_TYPE_F16 || TYPE == TS_TYPE_BF16) {
        if (VEC) {
            const uint4 raw = *(const uint4 *) ((const uint16_t *) row + 8 * u);
            const uint32_t wv[4] = { raw.x, raw.y, raw.z, raw.w };
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const uint16_t lo = (uint16_t) (wv[e] & 0xffff), hi = (uint16_t) (wv[e] >> 16);
                acc[2 * e]     = __fmaf_rn(aj, TYPE == TS_TYPE_F16 ? ts_h2f(lo) : ts_bf2f(lo), acc[2 * e]);
                acc[2 * e + 1] = __fmaf_rn(aj, TYPE == TS_TYPE_F16 ? ts_h2f(hi) : ts_bf2f(hi), acc[2 * e + 1]);
            }
        } else {
            const uint16_t h = ((const uint16_t *) row)[u];
            acc[0] = __fmaf_rn(aj, TYPE == TS_TYPE_F16 ? ts_h2f(h) : ts_bf2f(h), acc[0]);
        }
    } else if (TYPE == TS_TYPE_Q8_0) { // unit u: columns 4p..4p+3 of block u/8, p = u%8
        const ts_block_q8_0 * blk = (const ts_block_q8_0 *) row + u / 8;
        const float s = __fmul_rn(aj, ts_h2f(blk->d));
        const int   q = ts_load_i8x4(blk->qs + 4 * (u % 8));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            acc[k] = __fmaf_rn(s, (float) (int8_t) (q >> (8 * k)), acc[k]);
        }
    } else if (TYPE == TS_TYPE_Q4_0) { // unit u: bytes 2p, 2p+1 of block u/8 = columns 2p, 2p+1, 16+2p, 17+2p
        const ts_block_q4_0 * blk = (const ts_block_q4_0 *) row + u / 8;
        const float    s = __fmul_rn(aj, ts_h2f(blk->d));
        const uint32_t q = *(const uint16_t *) (blk->qs + 2 * (u % 8));
        acc[0] = __fmaf_rn(s, (float) ((int) (q & 0x0F) - 8), acc[0]);
        acc[1] = __fmaf_rn(s, (float) ((int) ((q >> 8) & 0x0F) - 8), acc[1]);
        acc[2] = __fmaf_rn(s, (float) ((int) ((q >> 4) & 0x0F) - 8), acc[2]);
        acc[3] = __fmaf_rn(s, (float) ((int) (q >> 12) - 8), acc[3]);
    }
}

template <int TYPE, bool VEC>
static __device__ __forceinline__ void store_unit(float * y, int u, const float * acc) {
    if (TYPE == TS_TYPE_Q8_0) {
        float * yc = y + (u / 8) * TS_QK + 4 * (u % 8);
#pragma unroll
        for (int k = 0; k < 4; k++) yc[k] = acc[k];
    } else if (TYPE == TS_TYPE_Q4_0) {
        float * yc = y + (u / 8) * TS_QK + 2 * (u % 8);
        yc[0] = acc[0];
        yc[1] = acc[1];
        yc[TS_QK / 2]     = acc[2];
        yc[TS_QK / 2 + 1] = acc[3];
    } else {
        constexpr int C = unit_cols<TYPE, VEC>();
#pragma unroll
        for (int k = 0; k < C; k++) y[C * u + k] = acc[k];
    }
}

template <int TYPE, bool VEC>
static __global__ void down_kernel(int n, const char * w, size_t row_bytes, int n_ff, const int32_t * idx,
                                   const float * a_compact, const int32_t * count, int T, float * out) {
    __shared__ int32_t s_idx[DOWN_THREADS];
    __shared__ float   s_a[DOWN_THREADS];
    constexpr int C = unit_cols<TYPE, VEC>();
    const int  t       = blockIdx.z;
    const int  split   = blockIdx.y;
    const int  n_split = gridDim.y;
    const int  u       = blockIdx.x * DOWN_THREADS + threadIdx.x;
    const bool mine    = u < n / C; // threads past the end still help stage the list

    const int64_t cnt = count[t];
    const int     j0  = (int) (cnt * split / n_split);
    const int     j1  = (int) (cnt * (split + 1) / n_split);
    const int32_t * it = idx + (size_t) t * n_ff;
    const float   * at = a_compact + (size_t) t * n_ff;

    float acc[C];
#pragma unroll
    for (int k = 0; k < C; k++) acc[k] = 0.0f;

    for (int jt = j0; jt < j1; jt += DOWN_THREADS) {
        const int m = j1 - jt < DOWN_THREADS ? j1 - jt : DOWN_THREADS;
        if ((int) threadIdx.x < m) {
            s_idx[threadIdx.x] = it[jt + threadIdx.x];
            s_a[threadIdx.x]   = at[jt + threadIdx.x];
        }
        __syncthreads();
        if (mine) {
            for (int jj = 0; jj < m; jj++) {
                axpy_unit<TYPE, VEC>(w + (size_t) s_idx[jj] * row_bytes, u, s_a[jj], acc);
            }
        }
        __syncthreads();
    }
    if (mine) {
        store_unit<TYPE, VEC>(out + ((size_t) split * T + t) * n, u, acc);
    }
}

// y[t][c] = partial[0][t][c] + partial[1][t][c] + ... in range order.
static __global__ void reduce_kernel(const float * partial, int64_t n_elem, int n_split, float * y) {
    const int64_t e = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_elem) {
        return;
    }
    float s = partial[e];
    for (int k = 1; k < n_split; k++) {
        s = __fadd_rn(s, partial[(size_t) k * n_elem + e]);
    }
    y[e] = s;
}

extern "C" size_t ts_cuda_down_partial_bytes(int64_t n, int64_t T, int n_split) {
    return n_split > 1 ? (size_t) n_split * (size_t) T * (size_t) n * sizeof(float) : 0;
}

extern "C" const char * ts_cuda_down(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                                     int64_t n_ff, const int32_t * idx, const float * a_compact,
                                     const int32_t * count, int64_t T, int n_split, float * partial, float * y,
                                     ts_cuda_stream stream) {
    const char * err = ts_check_rows(type, n, row_bytes, n_ff, T);
    if (err) return err;
    if (!w_t || !idx || !a_compact || !count || !y) return "w_t, idx, a_compact, count, y: NULL";
    if (n_split < 1 || n_split > 65535) return "n_split: not in 1..65535";
    if (n_split > 1 && !partial) return "partial: NULL with n_split > 1 (ts_cuda_down_partial_bytes)";
    const bool vec = ts_vec_ok(type, n, w_t, row_bytes, NULL);
    float * out = n_split > 1 ? partial : y;
    ts_dispatch(type, vec, [&](auto tc, auto vc) {
        constexpr int TYPE = decltype(tc)::value;
        constexpr bool VEC = decltype(vc)::value;
        const int64_t n_units = n / unit_cols<TYPE, VEC>();
        const dim3 grid((unsigned) ((n_units + DOWN_THREADS - 1) / DOWN_THREADS), (unsigned) n_split, (unsigned) T);
        down_kernel<TYPE, VEC><<<grid, DOWN_THREADS, 0, (cudaStream_t) stream>>>(
            (int) n, (const char *) w_t, row_bytes, (int) n_ff, idx, a_compact, count, (int) T, out);
    });
    if (n_split > 1) {
        const int64_t n_elem = n * T;
        reduce_kernel<<<(unsigned) ((n_elem + 255) / 256), 256, 0, (cudaStream_t) stream>>>(partial, n_elem, n_split, y);
    }
    return ts_launch_error();
}
