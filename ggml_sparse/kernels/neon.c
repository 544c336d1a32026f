// neon.c: the NEON kernel table (aarch64 base ISA; uses the dot-product extension when the
// compiler targets it, __ARM_FEATURE_DOTPROD). Same structure as the x86 tables: groups of
// rows share the loads of x (dot) or y (axpy), one float multiply-add per quantised block.
// Batches of tokens: register tiles of rows x tokens (dot) and of columns x tokens (axpy)
// with the per-token kernels' exact steps.
#include "ts-kernels.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#define TS_KQ(name) ts_neon_kq_##name // neon-kquants.c
#include "simd-drivers.h"

static ALWAYS_INLINE float half_at(const char * p) {
    __fp16 h;
    memcpy(&h, p, 2);
    return (float) h;
}

static ALWAYS_INLINE void prefetch_rows(int R, const char * const * next, size_t off) {
    for (int r = 0; r < R; r++) {
        __builtin_prefetch(next[r] + off);
    }
}

// Four elements of a float row as f32, exactly.
static ALWAYS_INLINE float32x4_t load4(enum ts_type type, const char * row, int64_t k) {
    switch (type) {
        case TS_TYPE_F16:
            return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8((const uint8_t *) (row + 2 * k))));
        case TS_TYPE_BF16:
            return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8((const uint8_t *) (row + 2 * k))), 16));
        default:
            return vreinterpretq_f32_u8(vld1q_u8((const uint8_t *) (row + 4 * k)));
    }
}

static ALWAYS_INLINE float load1(enum ts_type type, const char * row, int64_t k) {
    switch (type) {
        case TS_TYPE_F16:  return half_at(row + 2 * k);
        case TS_TYPE_BF16: { uint16_t h; memcpy(&h, row + 2 * k, 2); return ts_bf16_to_fp32(h); }
        default:           { float f; memcpy(&f, row + 4 * k, 4); return f; }
    }
}

// ---- quantise activations -------------------------------------------------------------------

static void quantize_q8_0(const float * x, ts_block_q8_0 * y, int64_t n) {
    for (int64_t b = 0; b < n / TS_QK; b++) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + b * TS_QK + 4 * k);
            amax = vmaxq_f32(amax, vabsq_f32(v[k]));
        }
        const float d  = vmaxvq_f32(amax) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ts_fp32_to_fp16(d);
        for (int k = 0; k < 8; k += 2) {
            // vcvtaq rounds to nearest with ties away from zero: exactly roundf
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[k + 1], id));
            const int16x8_t q  = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            vst1_s8(y[b].qs + 4 * k, vmovn_s16(q));
        }
    }
}

// ---- dot products -------------------------------------------------------------------------

// R rows x TT tokens (token t at x + t * x_stride, its results at out + t * out_stride, rows
// r < nr written). Each row and token has its own accumulators and the same steps whatever
// R and TT are, so the batch tiles (dot_rows_batch) give dot_rows' results bit for bit.
static ALWAYS_INLINE void dot_float_tile(enum ts_type type, int R, int TT, const char * const * rows,
                                         const char * const * next, int64_t n, const char * x, size_t x_stride,
                                         int nr, float * out, int64_t out_stride) {
    const size_t esz = elem_size(type);
    float32x4_t acc0[TS_GROUP][TS_GROUP], acc1[TS_GROUP][TS_GROUP];
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < TT; t++) {
            acc0[r][t] = vdupq_n_f32(0.0f);
            acc1[r][t] = vdupq_n_f32(0.0f);
        }
    }
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        if (next && (((size_t) k * esz) & 63) == 0) {
            prefetch_rows(R, next, (size_t) k * esz);
        }
        float32x4_t w0[TS_GROUP], w1[TS_GROUP];
        for (int r = 0; r < R; r++) {
            w0[r] = load4(type, rows[r], k);
            w1[r] = load4(type, rows[r], k + 4);
        }
        for (int t = 0; t < TT; t++) {
            const float * xt = (const float *) (x + (size_t) t * x_stride);
            const float32x4_t x0 = vld1q_f32(xt + k);
            const float32x4_t x1 = vld1q_f32(xt + k + 4);
            for (int r = 0; r < R; r++) {
                acc0[r][t] = vfmaq_f32(acc0[r][t], w0[r], x0);
                acc1[r][t] = vfmaq_f32(acc1[r][t], w1[r], x1);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        for (int t = 0; t < TT; t++) {
            const float * xt = (const float *) (x + (size_t) t * x_stride);
            float s = vaddvq_f32(vaddq_f32(acc0[r][t], acc1[r][t]));
            for (int64_t i = k; i < n; i++) {
                s += load1(type, rows[r], i) * xt[i];
            }
            out[t * out_stride + r] = s;
        }
    }
}

static ALWAYS_INLINE void dot_float(enum ts_type type, int R, const char * const * rows,
                                    const char * const * next, int64_t n, const float * x, float * out) {
    dot_float_tile(type, R, 1, rows, next, n, (const char *) x, 0, R, out, 0);
}

// Integer products of one block of weights (lo = values 0..15, hi = 16..31) with one block
// of activations, as four int32 partial sums.
static ALWAYS_INLINE int32x4_t block_dot(int8x16_t lo, int8x16_t hi, int8x16_t y0, int8x16_t y1) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, y0), hi, y1);
#else
    int32x4_t p = vpaddlq_s16(vmull_s8(vget_low_s8(lo), vget_low_s8(y0)));
    p = vpadalq_s16(p, vmull_s8(vget_high_s8(lo), vget_high_s8(y0)));
    p = vpadalq_s16(p, vmull_s8(vget_low_s8(hi), vget_low_s8(y1)));
    return vpadalq_s16(p, vmull_s8(vget_high_s8(hi), vget_high_s8(y1)));
#endif
}

// R rows x TT tokens, as dot_float_tile: a block's weights are unpacked once for the tokens,
// a token's activations once for the rows.
static ALWAYS_INLINE void dot_quant_tile(enum ts_type type, int R, int TT, const char * const * rows,
                                         const char * const * next, int64_t n, const char * x, size_t x_stride,
                                         int nr, float * out, int64_t out_stride) {
    const size_t bs = block_bytes(type);
    float32x4_t acc[TS_GROUP][TS_GROUP];
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < TT; t++) {
            acc[r][t] = vdupq_n_f32(0.0f);
        }
    }
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const size_t off = (size_t) b * bs;
        if (next && (off & 63) < bs) {
            prefetch_rows(R, next, off);
        }
        int8x16_t lo[TS_GROUP], hi[TS_GROUP];
        float dw[TS_GROUP];
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            if (type == TS_TYPE_Q4_0) {
                const uint8x16_t q = vld1q_u8((const uint8_t *) (blk + 2));
                lo[r] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
                hi[r] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
            } else {
                lo[r] = vld1q_s8((const int8_t *) (blk + 2));
                hi[r] = vld1q_s8((const int8_t *) (blk + 18));
            }
            dw[r] = half_at(blk);
        }
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_0 * xb = (const ts_block_q8_0 *) (x + (size_t) t * x_stride) + b;
            const int8x16_t y0 = vld1q_s8(xb->qs);
            const int8x16_t y1 = vld1q_s8(xb->qs + 16);
            const float     dy = half_at((const char *) &xb->d);
            for (int r = 0; r < R; r++) {
                const float32x4_t p = vcvtq_f32_s32(block_dot(lo[r], hi[r], y0, y1));
                acc[r][t] = vfmaq_n_f32(acc[r][t], p, dw[r] * dy);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        for (int t = 0; t < TT; t++) {
            out[t * out_stride + r] = vaddvq_f32(acc[r][t]);
        }
    }
}

static ALWAYS_INLINE void dot_quant(enum ts_type type, int R, const char * const * rows,
                                    const char * const * next, int64_t n, const ts_block_q8_0 * x,
                                    float * out) {
    dot_quant_tile(type, R, 1, rows, next, n, (const char *) x, 0, R, out, 0);
}

// ---- down projection (axpy) ------------------------------------------------------------------
// Every y element gets the FMAs of the group's rows in row order, as the scalar reference.

static ALWAYS_INLINE void axpy_float(enum ts_type type, int R, const char * const * rows,
                                     const char * const * next, const float * a,
                                     int64_t c0, int64_t c1, float * y) {
    const size_t esz = elem_size(type);
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        if ((((size_t) c * esz) & 63) == 0) {
            prefetch_rows(R, next, (size_t) c * esz);
        }
        float32x4_t y0 = vld1q_f32(y + c);
        float32x4_t y1 = vld1q_f32(y + c + 4);
        for (int r = 0; r < R; r++) {
            y0 = vfmaq_n_f32(y0, load4(type, rows[r], c),     a[r]);
            y1 = vfmaq_n_f32(y1, load4(type, rows[r], c + 4), a[r]);
        }
        vst1q_f32(y + c, y0);
        vst1q_f32(y + c + 4, y1);
    }
    for (; c < c1; c++) {
        float v = y[c];
        for (int r = 0; r < R; r++) {
            v = fmaf(a[r], load1(type, rows[r], c), v);
        }
        y[c] = v;
    }
}

static ALWAYS_INLINE void fma_i8x8(float32x4_t * y, int8x8_t q, float s) {
    const int16x8_t w = vmovl_s8(q);
    y[0] = vfmaq_n_f32(y[0], vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))),  s);
    y[1] = vfmaq_n_f32(y[1], vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), s);
}

static ALWAYS_INLINE void axpy_quant(enum ts_type type, int R, const char * const * rows,
                                     const char * const * next, const float * a,
                                     int64_t c0, int64_t c1, float * y) {
    const size_t bs = block_bytes(type);
    for (int64_t b = c0 / TS_QK; b < c1 / TS_QK; b++) {
        const size_t off = (size_t) b * bs;
        if ((off & 63) < bs) {
            prefetch_rows(R, next, off);
        }
        float * yb = y + b * TS_QK;
        float32x4_t yv[8];
        for (int k = 0; k < 8; k++) {
            yv[k] = vld1q_f32(yb + 4 * k);
        }
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            const float s = a[r] * half_at(blk);
            int8x16_t lo, hi; // values 0..15 and 16..31
            if (type == TS_TYPE_Q4_0) {
                const uint8x16_t q = vld1q_u8((const uint8_t *) (blk + 2));
                lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
                hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
            } else {
                lo = vld1q_s8((const int8_t *) (blk + 2));
                hi = vld1q_s8((const int8_t *) (blk + 18));
            }
            fma_i8x8(yv + 0, vget_low_s8(lo),  s);
            fma_i8x8(yv + 2, vget_high_s8(lo), s);
            fma_i8x8(yv + 4, vget_low_s8(hi),  s);
            fma_i8x8(yv + 6, vget_high_s8(hi), s);
        }
        for (int k = 0; k < 8; k++) {
            vst1q_f32(yb + 4 * k, yv[k]);
        }
    }
}

// ---- down projection of a batch of tokens -------------------------------------------------------
// Tiles of 16 columns x 4 tokens (16 accumulators), over chunks of AXPY_ROWS rows (the sums
// go through y between chunks, exactly): each row's 16 weights are dequantised once for the
// tile's tokens. Every element still gets y = fma(s, w, y) over the rows in order from 0, with
// s = a (float rows) or a * d (quantised rows) as in axpy_rows: each token's columns are its
// axpy_rows result bit for bit. A float row's last n % 16 columns take fmaf, the same
// correctly rounded operation one lane at a time.

#define AXPY_TILE 4
#define AXPY_ROWS 64

static ALWAYS_INLINE void axpy_batch_tile(enum ts_type type, int TT, const void * w_t, size_t row_bytes,
                                          const int32_t * idx, const float * a, int64_t a_stride, int64_t j0, int64_t j1,
                                          int64_t c, float * y, int64_t y_stride) {
    const bool quant = type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0;
    const size_t off = quant ? (size_t) (c / TS_QK) * block_bytes(type) : 0;
    const bool second = c % TS_QK != 0; // quantised rows: the block's values 16..31
    float32x4_t acc[AXPY_TILE][4];
    for (int t = 0; t < TT; t++) { // rows before j0 were summed by an earlier chunk
        for (int k = 0; k < 4; k++) {
            acc[t][k] = j0 == 0 ? vdupq_n_f32(0.0f) : vld1q_f32(y + t * y_stride + c + 4 * k);
        }
    }
    for (int64_t j = j0; j < j1; j++) {
        const char * row = drv_row(w_t, row_bytes, idx, j);
        float32x4_t w[4];
        float d = 1.0f;
        if (quant) {
            int8x16_t v;
            if (type == TS_TYPE_Q4_0) {
                const uint8x16_t q = vld1q_u8((const uint8_t *) (row + off + 2));
                const uint8x16_t u = second ? vshrq_n_u8(q, 4) : vandq_u8(q, vdupq_n_u8(0x0F));
                v = vsubq_s8(vreinterpretq_s8_u8(u), vdupq_n_s8(8));
            } else {
                v = vld1q_s8((const int8_t *) (row + off + 2 + (second ? 16 : 0)));
            }
            const int16x8_t v0 = vmovl_s8(vget_low_s8(v)), v1 = vmovl_s8(vget_high_s8(v));
            w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(v0)));
            w[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(v0)));
            w[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(v1)));
            w[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(v1)));
            d = half_at(row + off);
        } else {
            for (int k = 0; k < 4; k++) {
                w[k] = load4(type, row, c + 4 * k);
            }
        }
        for (int t = 0; t < TT; t++) {
            const float sv = quant ? a[t * a_stride + j] * d : a[t * a_stride + j];
            for (int k = 0; k < 4; k++) {
                acc[t][k] = vfmaq_n_f32(acc[t][k], w[k], sv);
            }
        }
    }
    for (int t = 0; t < TT; t++) {
        for (int k = 0; k < 4; k++) {
            vst1q_f32(y + t * y_stride + c + 4 * k, acc[t][k]);
        }
    }
}

static ALWAYS_INLINE void axpy_batch_chunk(enum ts_type type, const void * w_t, size_t row_bytes,
                                           const int32_t * idx, const float * a, int64_t a_stride, int64_t j0, int64_t j1,
                                           int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        int64_t t = 0;
        for (; n_tok - t >= 4; t += 4) {
            axpy_batch_tile(type, 4, w_t, row_bytes, idx, a + t * a_stride, a_stride, j0, j1, c, y + t * y_stride, y_stride);
        }
        if (n_tok - t >= 2) {
            axpy_batch_tile(type, 2, w_t, row_bytes, idx, a + t * a_stride, a_stride, j0, j1, c, y + t * y_stride, y_stride);
            t += 2;
        }
        if (n_tok - t >= 1) {
            axpy_batch_tile(type, 1, w_t, row_bytes, idx, a + t * a_stride, a_stride, j0, j1, c, y + t * y_stride, y_stride);
        }
    }
    for (int64_t t = 0; t < n_tok; t++) { // float rows' last columns (quantised slices end at a block)
        for (int64_t cc = c; cc < c1; cc++) {
            float v = j0 == 0 ? 0.0f : y[t * y_stride + cc];
            for (int64_t j = j0; j < j1; j++) {
                v = fmaf(a[t * a_stride + j], load1(type, drv_row(w_t, row_bytes, idx, j), cc), v);
            }
            y[t * y_stride + cc] = v;
        }
    }
}

static void axpy_rows_batch(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                            const int32_t * idx, const float * a, int64_t a_stride, int64_t n_idx,
                            int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    if (ts_is_kquant(type)) {
        drv_kq_axpy_rows_batch(type, n, w_t, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride);
        return;
    }
    if (n_tok == 1) {
        drv_axpy_rows(type, n, w_t, row_bytes, idx, a, n_idx, c0, c1, y);
        return;
    }
    if (c1 <= c0) {
        return;
    }
    if (n_idx == 0) {
        for (int64_t t = 0; t < n_tok; t++) {
            memset(y + t * y_stride + c0, 0, (size_t) (c1 - c0) * sizeof(float));
        }
        return;
    }
    for (int64_t j0 = 0; j0 < n_idx; j0 += AXPY_ROWS) {
        const int64_t j1 = drv_min(j0 + AXPY_ROWS, n_idx);
        switch (type) {
            case TS_TYPE_F32:  axpy_batch_chunk(TS_TYPE_F32,  w_t, row_bytes, idx, a, a_stride, j0, j1, n_tok, c0, c1, y, y_stride); break;
            case TS_TYPE_F16:  axpy_batch_chunk(TS_TYPE_F16,  w_t, row_bytes, idx, a, a_stride, j0, j1, n_tok, c0, c1, y, y_stride); break;
            case TS_TYPE_BF16: axpy_batch_chunk(TS_TYPE_BF16, w_t, row_bytes, idx, a, a_stride, j0, j1, n_tok, c0, c1, y, y_stride); break;
            case TS_TYPE_Q8_0: axpy_batch_chunk(TS_TYPE_Q8_0, w_t, row_bytes, idx, a, a_stride, j0, j1, n_tok, c0, c1, y, y_stride); break;
            case TS_TYPE_Q4_0: axpy_batch_chunk(TS_TYPE_Q4_0, w_t, row_bytes, idx, a, a_stride, j0, j1, n_tok, c0, c1, y, y_stride); break;
            default: break;
        }
    }
}

TS_DEFINE_GROUP_DISPATCH()

// Batch tiles: 2 rows x 4 tokens (of 32 vector registers: 16 accumulators for float rows).
#define TILE_ROWS 2
#define TILE_TOKS 4
TS_DEFINE_BATCH_DISPATCH(dot_float_tile, dot_quant_tile)

const struct ts_kernels ts_kernels_neon = {
    .isa           = TS_ISA_NEON,
    .name          = "neon",
    .quantize_q8_0 = quantize_q8_0,
    .dot_rows      = drv_dot_rows,
    .dot_rows_batch = drv_dot_rows_batch_tiled,
    .gate_up       = drv_gate_up,
    .gate_up_exact = drv_gate_up_exact,
    .axpy_rows     = drv_axpy_rows,
    .axpy_rows_batch = axpy_rows_batch,
};
