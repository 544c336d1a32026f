// gate_up_exact.cu: exact-mode gate/up (no predictor). One warp per neuron, looping over the
// tokens: the gate row comes from DRAM once for all T (later tokens hit L1/L2), and the up
// row is read only for tokens whose gate is positive (a warp-uniform branch: the butterfly
// sum leaves the same g on every lane).
#include "common.cuh"

#define EXACT_WARPS 4

template <int TYPE, bool VEC>
static __global__ void gate_up_exact_kernel(int act, int n, const char * wg, const char * wu, size_t row_bytes,
                                            int n_ff, const char * x, size_t x_bytes, int T, float * a) {
    const int lane = threadIdx.x % TS_WARP;
    const int i    = blockIdx.x * EXACT_WARPS + threadIdx.x / TS_WARP;
    if (i >= n_ff) {
        return;
    }
    const char * gate[1] = { wg + (size_t) i * row_bytes };
    const char * up[1]   = { wu + (size_t) i * row_bytes };
    for (int t = 0; t < T; t++) {
        const char * xt = x + (size_t) t * x_bytes;
        float acc[1];
        ts_dot_lane<TYPE, VEC, 1>(gate, xt, n, lane, acc);
        const float g = ts_warp_sum(acc[0]);
        float v = 0.0f;
        if (g > 0.0f) {
            ts_dot_lane<TYPE, VEC, 1>(up, xt, n, lane, acc);
            v = ts_cu_act(act, g, ts_warp_sum(acc[0]));
        }
        if (lane == 0) {
            a[(size_t) t * n_ff + i] = v;
        }
    }
}

extern "C" const char * ts_cuda_gate_up_exact(enum ts_type type, enum ts_act act, int64_t n,
                                              const void * w_gate, const void * w_up, size_t row_bytes,
                                              int64_t n_ff, const void * x, int64_t T, float * a,
                                              ts_cuda_stream stream) {
    const char * err = ts_check_rows(type, n, row_bytes, n_ff, T);
    if (err) return err;
    if (act != TS_ACT_DRELU && act != TS_ACT_REGLU) return "act: not a ts_act";
    if (!w_gate || !w_up || !x || !a) return "w_gate, w_up, x, a: NULL";
    const unsigned grid = (unsigned) ((n_ff + EXACT_WARPS - 1) / EXACT_WARPS);
    const size_t x_bytes = ts_cu_x_bytes(type, n);
    const bool vec = ts_vec_ok(type, n, w_gate, row_bytes, x) && ts_vec_ok(type, n, w_up, row_bytes, NULL);
    ts_dispatch(type, vec, [&](auto tc, auto vc) {
        gate_up_exact_kernel<decltype(tc)::value, decltype(vc)::value><<<grid, EXACT_WARPS * TS_WARP, 0, (cudaStream_t) stream>>>(
            (int) act, (int) n, (const char *) w_gate, (const char *) w_up, row_bytes, (int) n_ff,
            (const char *) x, x_bytes, (int) T, a);
    });
    return ts_launch_error();
}
