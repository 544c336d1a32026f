// dot_rows.cu: dense row dots (the predictor's layers), one warp per (token, row).
#include "common.cuh"

#define DOT_WARPS 4

template <int TYPE, bool VEC>
static __global__ void dot_rows_kernel(int n, const char * w, size_t row_bytes, int n_rows,
                                       const char * x, size_t x_bytes, bool relu, float * out) {
    const int t    = blockIdx.y;
    const int lane = threadIdx.x % TS_WARP;
    const int i    = blockIdx.x * DOT_WARPS + threadIdx.x / TS_WARP;
    if (i >= n_rows) {
        return;
    }
    const char * rows[1] = { w + (size_t) i * row_bytes };
    float acc[1];
    ts_dot_lane<TYPE, VEC, 1>(rows, x + (size_t) t * x_bytes, n, lane, acc);
    const float s = ts_warp_sum(acc[0]);
    if (lane == 0) {
        out[(size_t) t * n_rows + i] = relu && s < 0.0f ? 0.0f : s;
    }
}

extern "C" const char * ts_cuda_dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                                         int64_t n_rows, const void * x, int64_t T, bool relu, float * out,
                                         ts_cuda_stream stream) {
    const char * err = ts_check_rows(type, n, row_bytes, n_rows, T);
    if (err) return err;
    if (!w || !x || !out) return "w, x, out: NULL";
    const dim3 grid((unsigned) ((n_rows + DOT_WARPS - 1) / DOT_WARPS), (unsigned) T);
    const size_t x_bytes = ts_cu_x_bytes(type, n);
    ts_dispatch(type, ts_vec_ok(type, n, w, row_bytes, x), [&](auto tc, auto vc) {
        dot_rows_kernel<decltype(tc)::value, decltype(vc)::value><<<grid, DOT_WARPS * TS_WARP, 0, (cudaStream_t) stream>>>(
            (int) n, (const char *) w, row_bytes, (int) n_rows, (const char *) x, x_bytes, relu, out);
    });
    return ts_launch_error();
}
