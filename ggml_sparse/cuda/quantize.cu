// quantize.cu: activations to Q8_0, one warp per block of 32, bit-identical to
// ts_quantize_row_q8_0_ref (IEEE division and rounding, no contraction: __fmul_rn).
#include "common.cuh"

#define QUANT_WARPS 8

static __global__ void quantize_q8_0_kernel(const float * x, ts_block_q8_0 * y, int64_t n_blocks) {
    const int64_t b    = (int64_t) blockIdx.x * QUANT_WARPS + threadIdx.x / TS_WARP;
    const int     lane = threadIdx.x % TS_WARP;
    if (b >= n_blocks) {
        return; // whole warps leave together
    }
    const float v    = x[b * TS_QK + lane];
    const float amax = ts_warp_max(fabsf(v));
    const float d    = amax / 127.0f;
    const float id   = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].qs[lane] = (int8_t) roundf(__fmul_rn(v, id));
    if (lane == 0) {
        y[b].d = __half_as_ushort(__float2half_rn(d));
    }
}

extern "C" const char * ts_cuda_quantize_q8_0(const float * x, ts_block_q8_0 * y, int64_t n, int64_t T,
                                              ts_cuda_stream stream) {
    if (!x || !y) return "x, y: NULL";
    if (n <= 0 || n % TS_QK != 0) return "n: not a positive multiple of 32";
    if (T <= 0) return "T: not positive";
    // Rows are contiguous and n is whole blocks, so the T rows are one run of blocks.
    const int64_t n_blocks = n / TS_QK * T;
    const int64_t grid     = (n_blocks + QUANT_WARPS - 1) / QUANT_WARPS;
    if (grid > INT32_MAX) return "n * T: too large";
    quantize_q8_0_kernel<<<(unsigned) grid, QUANT_WARPS * TS_WARP, 0, (cudaStream_t) stream>>>(x, y, n_blocks);
    return ts_launch_error();
}
