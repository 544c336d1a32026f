// gate_up.cu: predicted-mode gate/up fused with the activation. One warp per (token, active
// neuron): the warp reads the neuron's gate and up rows in one pass (twice the loads in
// flight) and writes one compact activation. The active count stays on the device, so the
// grid covers n_ff neurons and the warps past count[t] leave at once.
#include "common.cuh"

#define GATE_UP_WARPS 4

template <int TYPE, bool VEC>
static __global__ void gate_up_kernel(int act, int n, const char * wg, const char * wu, size_t row_bytes,
                                      int n_ff, const char * x, size_t x_bytes,
                                      const int32_t * idx, const int32_t * count, float * a_compact) {
    const int t    = blockIdx.y;
    const int lane = threadIdx.x % TS_WARP;
    const int j    = blockIdx.x * GATE_UP_WARPS + threadIdx.x / TS_WARP;
    if (j >= count[t]) {
        return;
    }
    const size_t i = (size_t) idx[(size_t) t * n_ff + j];
    const char * rows[2] = { wg + i * row_bytes, wu + i * row_bytes };
    float acc[2];
    ts_dot_lane<TYPE, VEC, 2>(rows, x + (size_t) t * x_bytes, n, lane, acc);
    const float g = ts_warp_sum(acc[0]);
    const float u = ts_warp_sum(acc[1]);
    if (lane == 0) {
        a_compact[(size_t) t * n_ff + j] = ts_cu_act(act, g, u);
    }
}

extern "C" const char * ts_cuda_gate_up(enum ts_type type, enum ts_act act, int64_t n,
                                        const void * w_gate, const void * w_up, size_t row_bytes, int64_t n_ff,
                                        const void * x, int64_t T, const int32_t * idx, const int32_t * count,
                                        float * a_compact, ts_cuda_stream stream) {
    const char * err = ts_check_rows(type, n, row_bytes, n_ff, T);
    if (err) return err;
    if (act != TS_ACT_DRELU && act != TS_ACT_REGLU) return "act: not a ts_act";
    if (!w_gate || !w_up || !x || !idx || !count || !a_compact) return "w_gate, w_up, x, idx, count, a_compact: NULL";
    const dim3 grid((unsigned) ((n_ff + GATE_UP_WARPS - 1) / GATE_UP_WARPS), (unsigned) T);
    const size_t x_bytes = ts_cu_x_bytes(type, n);
    const bool vec = ts_vec_ok(type, n, w_gate, row_bytes, x) && ts_vec_ok(type, n, w_up, row_bytes, NULL);
    ts_dispatch(type, vec, [&](auto tc, auto vc) {
        gate_up_kernel<decltype(tc)::value, decltype(vc)::value><<<grid, GATE_UP_WARPS * TS_WARP, 0, (cudaStream_t) stream>>>(
            (int) act, (int) n, (const char *) w_gate, (const char *) w_up, row_bytes, (int) n_ff,
            (const char *) x, x_bytes, idx, count, a_compact);
    });
    return ts_launch_error();
}
