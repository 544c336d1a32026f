// neon-kquants.c: the NEON K-quant primitives (kquant-group.h) for Q4_K and Q6_K rows, used
// by neon.c's table through simd-drivers.h. Integer dot products of 16 quants at a time
// (sdot with the dot-product extension, else widening multiplies), an exact 32-bit sum per
// super-block, one f32 multiply-add per super-block and row (Q4_K: two).
#include "ts-kernels.h"

#include <arm_neon.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define TS_KQ(name) ts_neon_kq_##name
#include "kquant-group.h"

static ALWAYS_INLINE void prefetch_span(int R, const char * const * next, size_t off, size_t bytes) {
    for (int r = 0; r < R; r++) {
        for (size_t o = 0; o < bytes; o += 64) {
            __builtin_prefetch(next[r] + off + o);
        }
    }
}

// acc + the four dot products of a and b's groups of four bytes (sums are exact either way).
static ALWAYS_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(acc, a, b);
#else
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(b)); // |a * b| <= 64 * 128: pairs fit
    return vpadalq_s16(acc, p);
#endif
}

static ALWAYS_INLINE float half_of(uint16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float) f;
}

static ALWAYS_INLINE void dot_q4_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    float accd[4] = { 0 }, accm[4] = { 0 };
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q4_K), sizeof(ts_block_q4_K));
        const ts_block_q8_K * xb = x + b;
        int ysub[8];
        for (int s = 0; s < 8; s++) {
            ysub[s] = xb->bsums[2 * s] + xb->bsums[2 * s + 1];
        }
        for (int r = 0; r < R; r++) {
            const ts_block_q4_K * blk = (const ts_block_q4_K *) rows[r] + b;
            int sumi = 0, summ = 0;
            for (int c = 0; c < 4; c++) {
                const uint8x16_t q0 = vld1q_u8(blk->qs + 32 * c), q1 = vld1q_u8(blk->qs + 32 * c + 16);
                const int8_t * y = xb->qs + 64 * c;
                int32x4_t plo = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(q0, low4)), vld1q_s8(y));
                plo = dot16(plo, vreinterpretq_s8_u8(vandq_u8(q1, low4)), vld1q_s8(y + 16));
                int32x4_t phi = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vld1q_s8(y + 32));
                phi = dot16(phi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(y + 48));
                int sc0, m0, sc1, m1;
                ts_q4_K_scale_min(blk->scales, 2 * c, &sc0, &m0);
                ts_q4_K_scale_min(blk->scales, 2 * c + 1, &sc1, &m1);
                sumi += sc0 * vaddvq_s32(plo) + sc1 * vaddvq_s32(phi);
                summ += m0 * ysub[2 * c] + m1 * ysub[2 * c + 1];
            }
            accd[r] += (xb->d * half_of(blk->d)) * (float) sumi;
            accm[r] += (xb->d * half_of(blk->dmin)) * (float) summ;
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = accd[r] - accm[r];
    }
}

static ALWAYS_INLINE void dot_q6_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const uint8x16_t low4 = vdupq_n_u8(0x0F), three = vdupq_n_u8(3);
    const int8x16_t m32 = vdupq_n_s8(32);
    float acc[4] = { 0 };
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q6_K), sizeof(ts_block_q6_K));
        const ts_block_q8_K * xb = x + b;
        for (int r = 0; r < R; r++) {
            const ts_block_q6_K * blk = (const ts_block_q6_K *) rows[r] + b;
            int sumi = 0;
            for (int h = 0; h < 2; h++) {
                for (int k = 0; k < 4; k++) {
                    for (int v = 0; v < 2; v++) { // the two 16-quant groups of 32 elements
                        const uint8x16_t lo = vld1q_u8(blk->ql + 64 * h + 32 * (k & 1) + 16 * v);
                        const uint8x16_t hb = vld1q_u8(blk->qh + 32 * h + 16 * v);
                        const uint8x16_t ql = k < 2 ? vandq_u8(lo, low4) : vshrq_n_u8(lo, 4);
                        const uint8x16_t qh = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t) (-2 * k))), three);
                        const int8x16_t w = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(ql, vshlq_n_u8(qh, 4))), m32);
                        const int g = 8 * h + 2 * k + v;
                        const int32x4_t p = dot16(vdupq_n_s32(0), w, vld1q_s8(xb->qs + 16 * g));
                        sumi += blk->scales[g] * vaddvq_s32(p);
                    }
                }
            }
            acc[r] += (xb->d * half_of(blk->d)) * (float) sumi;
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = acc[r];
    }
}

#define KQ_FOR_R(FN, R, ...)                  \
    switch (R) {                              \
        case 4:  FN(4, __VA_ARGS__); break;   \
        case 3:  FN(3, __VA_ARGS__); break;   \
        case 2:  FN(2, __VA_ARGS__); break;   \
        default: FN(1, __VA_ARGS__); break;   \
    }

void TS_KQ(dot_group)(enum ts_type type, int R, const char * const * rows, const char * const * next,
                      int64_t n, const void * x, float * out) {
    if (type == TS_TYPE_Q4_K) {
        KQ_FOR_R(dot_q4_K, R, rows, next, n, x, out)
    } else if (type == TS_TYPE_Q6_K) {
        KQ_FOR_R(dot_q6_K, R, rows, next, n, x, out)
    }
}

// ---- down projection: 64 columns (a Q4_K chunk, a Q6_K quarter) at a time -----------------------

// 16 unsigned bytes as four vectors of f32 (exact).
static ALWAYS_INLINE void u8x16_to_f32(uint8x16_t q, float32x4_t * f) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_u8(vget_high_u8(q));
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    f[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    f[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
}

// The unit's 64 quants as floats, in column order (Q6_K: q, the -32 is subtracted by the caller).
static ALWAYS_INLINE void unit_quants(enum ts_type type, const char * row, int64_t c, float32x4_t w[16]) {
    const int64_t b = c / TS_QK_K;
    const int e0 = (int) (c % TS_QK_K);
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    if (type == TS_TYPE_Q4_K) {
        const uint8_t * qs = ((const ts_block_q4_K *) row + b)->qs + 32 * (e0 / 64);
        for (int v = 0; v < 2; v++) {
            const uint8x16_t q = vld1q_u8(qs + 16 * v);
            u8x16_to_f32(vandq_u8(q, low4), w + 4 * v);
            u8x16_to_f32(vshrq_n_u8(q, 4), w + 8 + 4 * v);
        }
    } else {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const int h = e0 / 128, p = (e0 % 128) / 64;
        for (int v = 0; v < 4; v++) {
            const uint8x16_t lo = vld1q_u8(blk->ql + 64 * h + 16 * v);
            const uint8x16_t hb = vld1q_u8(blk->qh + 32 * h + 16 * (v % 2));
            const uint8x16_t ql = p ? vshrq_n_u8(lo, 4) : vandq_u8(lo, low4);
            const uint8x16_t qh = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t) -(4 * p + 2 * (v / 2)))), vdupq_n_u8(3));
            u8x16_to_f32(vorrq_u8(ql, vshlq_n_u8(qh, 4)), w + 4 * v);
        }
        const float32x4_t m32 = vdupq_n_f32(32.0f);
        for (int v = 0; v < 16; v++) {
            w[v] = vsubq_f32(w[v], m32); // exact
        }
    }
}

// Per super-block: each row's sub-block scalars once (ts_kq_block_scales), then the block's
// 64-column units in [c0, c1): y loaded once per unit, every row's FMA chain step in row order.
static ALWAYS_INLINE void axpy_kq(enum ts_type type, int R, const char * const * rows, const char * const * next,
                                  const float * a, int64_t c0, int64_t c1, float * y) {
    const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);
    for (int64_t b = c0 / TS_QK_K; b * TS_QK_K < c1; b++) {
        const int64_t cs = b * TS_QK_K > c0 ? b * TS_QK_K : c0;
        const int64_t ce = (b + 1) * TS_QK_K < c1 ? (b + 1) * TS_QK_K : c1;
        prefetch_span(R, next, (size_t) b * bs, bs);
        float s[4][16], m[4][8];
        for (int r = 0; r < R; r++) {
            ts_kq_block_scales(type, rows[r], b, a[r], s[r], m[r]);
        }
        for (int64_t c = cs; c < ce; c += 64) {
            const int u = (int) (c % TS_QK_K) / 64;
            float32x4_t yv[16];
            for (int v = 0; v < 16; v++) {
                yv[v] = vld1q_f32(y + c + 4 * v);
            }
            for (int r = 0; r < R; r++) {
                const float * sr = s[r];
                const float * mr = m[r];
                float32x4_t w[16];
                unit_quants(type, rows[r], c, w);
                for (int v = 0; v < 16; v++) {
                    if (type == TS_TYPE_Q4_K) {
                        yv[v] = vfmaq_f32(vsubq_f32(yv[v], vdupq_n_f32(mr[2 * u + v / 8])), vdupq_n_f32(sr[2 * u + v / 8]), w[v]);
                    } else {
                        yv[v] = vfmaq_f32(yv[v], vdupq_n_f32(sr[4 * u + v / 4]), w[v]);
                    }
                }
            }
            for (int v = 0; v < 16; v++) {
                vst1q_f32(y + c + 4 * v, yv[v]);
            }
        }
    }
}

#define AXPY_Q4_K(R_, ...) axpy_kq(TS_TYPE_Q4_K, R_, __VA_ARGS__)
#define AXPY_Q6_K(R_, ...) axpy_kq(TS_TYPE_Q6_K, R_, __VA_ARGS__)

void TS_KQ(axpy_group)(enum ts_type type, int R, const char * const * rows, const char * const * next,
                       const float * a, int64_t c0, int64_t c1, float * y) {
    if (type == TS_TYPE_Q4_K) {
        KQ_FOR_R(AXPY_Q4_K, R, rows, next, a, c0, c1, y)
    } else if (type == TS_TYPE_Q6_K) {
        KQ_FOR_R(AXPY_Q6_K, R, rows, next, a, c0, c1, y)
    }
}
