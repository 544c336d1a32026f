// common.cuh: what the CUDA kernel files share: exact conversions, warp reductions, the
// row-dot of every weight type, and the host-side argument checks.
#pragma once

#include "ts-cuda.h"

#include <cuda_runtime.h>
#include <cuda_fp16.h>

#define TS_WARP 32
#define TS_FULL_MASK 0xffffffffu

// ---- conversions (exact: the same bits as ts_fp16_to_fp32 / ts_bf16_to_fp32) ---------------

static __device__ __forceinline__ float ts_h2f(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

static __device__ __forceinline__ float ts_bf2f(uint16_t h) {
    return __uint_as_float((uint32_t) h << 16);
}

// ---- warp reductions -------------------------------------------------------------------------
// Butterfly (xor) reductions: every lane ends with the same bits, so a branch on the result
// is warp-uniform.

static __device__ __forceinline__ float ts_warp_sum(float v) {
#pragma unroll
    for (int o = TS_WARP / 2; o > 0; o >>= 1) {
        v += __shfl_xor_sync(TS_FULL_MASK, v, o);
    }
    return v;
}

static __device__ __forceinline__ float ts_warp_max(float v) {
#pragma unroll
    for (int o = TS_WARP / 2; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(TS_FULL_MASK, v, o));
    }
    return v;
}

// ---- loads -----------------------------------------------------------------------------------
// Q8_0 (34 bytes) and Q4_0 (18 bytes) blocks are only 2-byte aligned, so their quants are read
// as 16-bit halves (what ggml's CUDA kernels do too).

static __device__ __forceinline__ int ts_load_i8x4(const void * p) {
    const uint16_t * h = (const uint16_t *) p;
    return (int) ((uint32_t) h[0] | ((uint32_t) h[1] << 16));
}

// ---- row dots ----------------------------------------------------------------------------------
// dot_lane<TYPE, VEC, NR>: this lane's share of dot(rows[r], x) for NR rows at once (gate and
// up together read in one pass); the caller sums over the warp. VEC: 16-byte vector loads for
// the float types, allowed when n and every row/x address suit them (ts_vec_ok on the host).
// Quantised types: 8 lanes per Q8_0 block (4 quants each), 4 lanes per Q4_0 block
// (8 quants each); the block's integer dot comes from __dp4a, then its scale, as in scalar.c.

template <int TYPE, bool VEC, int NR>
static __device__ __forceinline__ void ts_dot_lane(const char * const * rows, const void * x, int n,
                                                   int lane, float * acc) {
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;

    if (TYPE == TS_TYPE_F32) {
        const float * xv = (const float *) x;
        if (VEC) {
            for (int k = lane * 4; k < n; k += TS_WARP * 4) {
                const float4 x4 = *(const float4 *) (xv + k);
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    const float4 w4 = *(const float4 *) ((const float *) rows[r] + k);
                    acc[r] += w4.x * x4.x + w4.y * x4.y + w4.z * x4.z + w4.w * x4.w;
                }
            }
        } else {
            for (int k = lane; k < n; k += TS_WARP) {
#pragma unroll
                for (int r = 0; r < NR; r++) acc[r] += ((const float *) rows[r])[k] * xv[k];
            }
        }
    } else if (TYPE == TS_TYPE_F16 || TYPE == TS_TYPE_BF16) {
        const float * xv = (const float *) x;
        if (VEC) {
            for (int k = lane * 8; k < n; k += TS_WARP * 8) {
                const float4 xa = *(const float4 *) (xv + k);
                const float4 xb = *(const float4 *) (xv + k + 4);
                const float xs[8] = { xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w };
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    const uint4 raw = *(const uint4 *) ((const uint16_t *) rows[r] + k);
                    const uint32_t wv[4] = { raw.x, raw.y, raw.z, raw.w };
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const uint16_t lo = (uint16_t) (wv[e] & 0xffff), hi = (uint16_t) (wv[e] >> 16);
                        const float wl = TYPE == TS_TYPE_F16 ? ts_h2f(lo) : ts_bf2f(lo);
                        const float wh = TYPE == TS_TYPE_F16 ? ts_h2f(hi) : ts_bf2f(hi);
                        acc[r] += wl * xs[2 * e] + wh * xs[2 * e + 1];
                    }
                }
            }
        } else {
            for (int k = lane; k < n; k += TS_WARP) {
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    const uint16_t h = ((const uint16_t *) rows[r])[k];
                    acc[r] += (TYPE == TS_TYPE_F16 ? ts_h2f(h) : ts_bf2f(h)) * xv[k];
                }
            }
        }
    } else if (TYPE == TS_TYPE_Q8_0) {
        const ts_block_q8_0 * xb = (const ts_block_q8_0 *) x;
        const int part = lane % 8;
        for (int b = lane / 8; b < n / TS_QK; b += TS_WARP / 8) {
            const int   xq = ts_load_i8x4(xb[b].qs + 4 * part);
            const float xd = ts_h2f(xb[b].d);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                const ts_block_q8_0 * wb = (const ts_block_q8_0 *) rows[r] + b;
                const int sumi = __dp4a(ts_load_i8x4(wb->qs + 4 * part), xq, 0);
                acc[r] += (float) sumi * (ts_h2f(wb->d) * xd);
            }
        }
    } else if (TYPE == TS_TYPE_Q4_0) {
        const ts_block_q8_0 * xb = (const ts_block_q8_0 *) x;
        const int part = lane % 4;
        for (int b = lane / 4; b < n / TS_QK; b += TS_WARP / 4) {
            const int   xlo = ts_load_i8x4(xb[b].qs + 4 * part);
            const int   xhi = ts_load_i8x4(xb[b].qs + TS_QK / 2 + 4 * part);
            const float xd  = ts_h2f(xb[b].d);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                const ts_block_q4_0 * wb = (const ts_block_q4_0 *) rows[r] + b;
                const uint32_t q  = (uint32_t) ts_load_i8x4(wb->qs + 4 * part);
                const int      lo = (int) __vsub4(q & 0x0F0F0F0Fu, 0x08080808u);        // x[4p..4p+3] - 8
                const int      hi = (int) __vsub4((q >> 4) & 0x0F0F0F0Fu, 0x08080808u); // x[16+4p..] - 8
                const int sumi = __dp4a(lo, xlo, __dp4a(hi, xhi, 0));
                acc[r] += (float) sumi * (ts_h2f(wb->d) * xd);
            }
        }
    }
}

// ---- host-side checks ----------------------------------------------------------------------

// Whether the float types may use 16-byte loads: n a multiple of the vector and every row
// (and x row) 16-byte aligned.
static inline bool ts_vec_ok(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                             const void * x) {
    const int64_t per = type == TS_TYPE_F32 ? 4 : 8;
    return n % per == 0 && row_bytes % 16 == 0 && ((uintptr_t) w) % 16 == 0 &&
           (x == NULL || (((uintptr_t) x) % 16 == 0 && (n * 4) % 16 == 0));
}

// Type facts as in common.c, repeated here so that this library needs no CPU kernel object.
static inline int64_t ts_cu_block(enum ts_type type) {
    return type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0 ? TS_QK : 1;
}

static inline size_t ts_cu_row_size(enum ts_type type, int64_t n) {
    switch (type) {
        case TS_TYPE_F32:  return (size_t) n * 4;
        case TS_TYPE_F16:
        case TS_TYPE_BF16: return (size_t) n * 2;
        case TS_TYPE_Q8_0: return (size_t) (n / TS_QK) * sizeof(ts_block_q8_0);
        case TS_TYPE_Q4_0: return (size_t) (n / TS_QK) * sizeof(ts_block_q4_0);
        default:           return 0;
    }
}

// Bytes of one token's x for weights of this type (f32 row or Q8_0 blocks).
static inline size_t ts_cu_x_bytes(enum ts_type type, int64_t n) {
    return ts_cu_block(type) == TS_QK ? ts_cu_row_size(TS_TYPE_Q8_0, n) : (size_t) n * 4;
}

// The checks every weight-reading function shares; NULL when fine.
static inline const char * ts_check_rows(enum ts_type type, int64_t n, size_t row_bytes, int64_t n_rows,
                                         int64_t T) {
    if ((unsigned) type >= TS_TYPE_COUNT) return "type: not a ts_type";
    if (type == TS_TYPE_Q4_K || type == TS_TYPE_Q6_K || type == TS_TYPE_Q8_K) return "type: K-quants have no CUDA kernels (CPU only)";
    if (n <= 0 || n % ts_cu_block(type) != 0) return "n: not a positive whole number of the type's blocks (32 for q8_0/q4_0)";
    if (n > INT32_MAX) return "n: above 2^31";
    if (row_bytes < ts_cu_row_size(type, n)) return "row_bytes: smaller than a row";
    if (row_bytes % (type == TS_TYPE_F32 ? 4 : 2) != 0) return "row_bytes: not a multiple of the element alignment (4 for f32, else 2)";
    if (n_rows <= 0 || n_rows > INT32_MAX) return "n_rows/n_ff: not in 1..2^31";
    if (T <= 0 || T > 65535) return "T: not in 1..65535";
    return NULL;
}

// The error of the launch just queued, or NULL.
static inline const char * ts_launch_error(void) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? NULL : cudaGetErrorString(e);
}

// ---- activation and dispatch -----------------------------------------------------------------

// ts_act_apply on the device (same arithmetic).
static __device__ __forceinline__ float ts_cu_act(int act, float g, float u) {
    const float rg = g > 0.0f ? g : 0.0f;
    if (act == TS_ACT_DRELU) {
        return u > 0.0f ? rg * u : 0.0f;
    }
    return rg * u;
}

template <int V> struct ts_type_c { static constexpr int value = V; };
template <bool V> struct ts_vec_c { static constexpr bool value = V; };

// Calls launch(ts_type_c<TYPE>, ts_vec_c<VEC>) with the run-time type and vec flag as
// compile-time constants (one kernel instance per type; VEC only for the float types).
template <class F>
static inline void ts_dispatch(enum ts_type type, bool vec, F launch) {
    switch (type) {
        case TS_TYPE_F32:  vec ? launch(ts_type_c<TS_TYPE_F32>(),  ts_vec_c<true>()) : launch(ts_type_c<TS_TYPE_F32>(),  ts_vec_c<false>()); break;
        case TS_TYPE_F16:  vec ? launch(ts_type_c<TS_TYPE_F16>(),  ts_vec_c<true>()) : launch(ts_type_c<TS_TYPE_F16>(),  ts_vec_c<false>()); break;
        case TS_TYPE_BF16: vec ? launch(ts_type_c<TS_TYPE_BF16>(), ts_vec_c<true>()) : launch(ts_type_c<TS_TYPE_BF16>(), ts_vec_c<false>()); break;
        case TS_TYPE_Q8_0: launch(ts_type_c<TS_TYPE_Q8_0>(), ts_vec_c<false>()); break;
        case TS_TYPE_Q4_0: launch(ts_type_c<TS_TYPE_Q4_0>(), ts_vec_c<false>()); break;
        default: break;
    }
}
