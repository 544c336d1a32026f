// scalar.c: the reference kernel table. Plain C, one element at a time; every SIMD table
// is tested against it, and it is the fallback on CPUs without a faster one.
#include "ts-kernels.h"

#include <math.h>

static const void * row_at(const void * w, size_t row_bytes, const int32_t * idx, int64_t j) {
    int64_t i = idx ? idx[j] : j;
    return (const char *) w + (size_t) i * row_bytes;
}

// K-quant rows against Q8_K activations: per super-block an exact integer sum (the
// sub-blocks' scaled dot products; Q4_K's mins meet the activations' 16-element sums), then
// one f32 multiply-add per super-block (Q4_K: two, scale and min).
// One super-block's terms added to sum (dot_row_q4_K's loop body).
static float q4_K_block_step(const ts_block_q4_K * w, const ts_block_q8_K * x, float sum) {
    int sumi = 0, summ = 0;
    for (int s = 0; s < 8; s++) {
        int sc, m;
        ts_q4_K_scale_min(w->scales, s, &sc, &m);
        int p = 0;
        for (int l = 0; l < 32; l++) {
            const uint8_t byte = w->qs[32 * (s / 2) + l];
            p += (s % 2 ? byte >> 4 : byte & 0x0F) * x->qs[32 * s + l];
        }
        sumi += sc * p;
        summ += m * (x->bsums[2 * s] + x->bsums[2 * s + 1]);
    }
    sum += (x->d * ts_fp16_to_fp32(w->d)) * (float) sumi;
    sum -= (x->d * ts_fp16_to_fp32(w->dmin)) * (float) summ;
    return sum;
}

static float dot_row_q4_K(int64_t n, const ts_block_q4_K * w, const ts_block_q8_K * x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        sum = q4_K_block_step(w + b, x + b, sum);
    }
    return sum;
}

static float dot_row_q6_K(int64_t n, const ts_block_q6_K * w, const ts_block_q8_K * x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        int sumi = 0;
        for (int g = 0; g < 16; g++) {
            int p = 0;
            for (int l = 0; l < 16; l++) {
                p += (ts_q6_K_quant(&w[b], 16 * g + l) - 32) * x[b].qs[16 * g + l];
            }
            sumi += w[b].scales[g] * p;
        }
        sum += (x[b].d * ts_fp16_to_fp32(w[b].d)) * (float) sumi;
    }
    return sum;
}

// dot(row, x) for one row; x is f32 for float rows, Q8_0 blocks for Q8_0/Q4_0 rows and
// Q8_K super-blocks for K-quant rows.
static float dot_row(enum ts_type type, int64_t n, const void * row, const void * x) {
    float sum = 0.0f;
    switch (type) {
        case TS_TYPE_Q4_K: return dot_row_q4_K(n, row, x);
        case TS_TYPE_Q6_K: return dot_row_q6_K(n, row, x);
        case TS_TYPE_F32: {
            const float * w = row; const float * v = x;
            for (int64_t k = 0; k < n; k++) sum += w[k] * v[k];
            break;
        }
        case TS_TYPE_F16: {
            const uint16_t * w = row; const float * v = x;
            for (int64_t k = 0; k < n; k++) sum += ts_fp16_to_fp32(w[k]) * v[k];
            break;
        }
        case TS_TYPE_BF16: {
            const uint16_t * w = row; const float * v = x;
            for (int64_t k = 0; k < n; k++) sum += ts_bf16_to_fp32(w[k]) * v[k];
            break;
        }
        case TS_TYPE_Q8_0: {
            const ts_block_q8_0 * w = row; const ts_block_q8_0 * v = x;
            for (int64_t b = 0; b < n / TS_QK; b++) {
                int sumi = 0;
                for (int j = 0; j < TS_QK; j++) sumi += w[b].qs[j] * v[b].qs[j];
                sum += sumi * (ts_fp16_to_fp32(w[b].d) * ts_fp16_to_fp32(v[b].d));
            }
            break;
        }
        case TS_TYPE_Q4_0: {
            const ts_block_q4_0 * w = row; const ts_block_q8_0 * v = x;
            for (int64_t b = 0; b < n / TS_QK; b++) {
                int sumi = 0;
                for (int j = 0; j < TS_QK / 2; j++) {
                    sumi += ((w[b].qs[j] & 0x0F) - 8) * v[b].qs[j];
                    sumi += ((w[b].qs[j] >> 4) - 8) * v[b].qs[j + TS_QK / 2];
                }
                sum += sumi * (ts_fp16_to_fp32(w[b].d) * ts_fp16_to_fp32(v[b].d));
            }
            break;
        }
        default: break;
    }
    return sum;
}

static void dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                     const void * x, const int32_t * idx, int64_t n_idx, float * out) {
    for (int64_t j = 0; j < n_idx; j++) {
        out[j] = dot_row(type, n, row_at(w, row_bytes, idx, j), x);
    }
}

static void gate_up(enum ts_type type, enum ts_act act, int64_t n,
                    const void * w_gate, const void * w_up, size_t row_bytes,
                    const void * x, const int32_t * idx, int64_t n_idx, float * a) {
    for (int64_t j = 0; j < n_idx; j++) {
        float g = dot_row(type, n, row_at(w_gate, row_bytes, idx, j), x);
        float u = dot_row(type, n, row_at(w_up,   row_bytes, idx, j), x);
        a[j] = ts_act_apply(act, g, u);
    }
}

static int64_t gate_up_exact(enum ts_type type, enum ts_act act, int64_t n,
                             const void * w_gate, const void * w_up, size_t row_bytes,
                             const void * x, int64_t i0, int64_t i1, float * a) {
    int64_t n_active = 0;
    for (int64_t i = i0; i < i1; i++) {
        float g = dot_row(type, n, (const char *) w_gate + (size_t) i * row_bytes, x);
        float v = 0.0f;
        if (g > 0.0f) {
            float u = dot_row(type, n, (const char *) w_up + (size_t) i * row_bytes, x);
            v = ts_act_apply(act, g, u);
        }
        a[i - i0] = v;
        n_active += v != 0.0f;
    }
    return n_active;
}

// The K-quant rows' FMA chains (ts-kernels.h), columns [c0, c1) (multiples of 64).
static void axpy_row_q4_K(const ts_block_q4_K * row, float aj, int64_t c0, int64_t c1, float * y) {
    for (int64_t c = c0; c < c1; c++) {
        const ts_block_q4_K * blk = row + c / TS_QK_K;
        const int e = (int) (c % TS_QK_K);
        int sc, m;
        ts_q4_K_scale_min(blk->scales, e / 32, &sc, &m);
        const float s  = aj * (ts_fp16_to_fp32(blk->d) * (float) sc);
        const float mn = aj * (ts_fp16_to_fp32(blk->dmin) * (float) m);
        const uint8_t byte = blk->qs[32 * (e / 64) + e % 32];
        const int q = (e % 64) < 32 ? byte & 0x0F : byte >> 4;
        y[c] = fmaf(s, (float) q, y[c] - mn);
    }
}

static void axpy_row_q6_K(const ts_block_q6_K * row, float aj, int64_t c0, int64_t c1, float * y) {
    for (int64_t c = c0; c < c1; c++) {
        const ts_block_q6_K * blk = row + c / TS_QK_K;
        const int e = (int) (c % TS_QK_K);
        const float s = aj * (ts_fp16_to_fp32(blk->d) * (float) blk->scales[e / 16]);
        y[c] = fmaf(s, (float) (ts_q6_K_quant(blk, e) - 32), y[c]);
    }
}

static void axpy_rows(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                      const int32_t * idx, const float * a, int64_t n_idx,
                      int64_t c0, int64_t c1, float * y) {
    (void) n;
    for (int64_t c = c0; c < c1; c++) {
        y[c] = 0.0f;
    }
    for (int64_t j = 0; j < n_idx; j++) {
        const void * row = row_at(w_t, row_bytes, idx, j);
        const float aj = a[j];
        switch (type) {
            case TS_TYPE_Q4_K: axpy_row_q4_K(row, aj, c0, c1, y); break;
            case TS_TYPE_Q6_K: axpy_row_q6_K(row, aj, c0, c1, y); break;
            case TS_TYPE_F32:
                for (int64_t c = c0; c < c1; c++) y[c] = fmaf(aj, ((const float *) row)[c], y[c]);
                break;
            case TS_TYPE_F16:
                for (int64_t c = c0; c < c1; c++) y[c] = fmaf(aj, ts_fp16_to_fp32(((const uint16_t *) row)[c]), y[c]);
                break;
            case TS_TYPE_BF16:
                for (int64_t c = c0; c < c1; c++) y[c] = fmaf(aj, ts_bf16_to_fp32(((const uint16_t *) row)[c]), y[c]);
                break;
            case TS_TYPE_Q8_0:
                for (int64_t b = c0 / TS_QK; b < c1 / TS_QK; b++) {
                    const ts_block_q8_0 * blk = (const ts_block_q8_0 *) row + b;
                    const float s = aj * ts_fp16_to_fp32(blk->d);
                    for (int k = 0; k < TS_QK; k++) {
                        y[b * TS_QK + k] = fmaf(s, (float) blk->qs[k], y[b * TS_QK + k]);
                    }
                }
                break;
            case TS_TYPE_Q4_0:
                for (int64_t b = c0 / TS_QK; b < c1 / TS_QK; b++) {
                    const ts_block_q4_0 * blk = (const ts_block_q4_0 *) row + b;
                    const float s = aj * ts_fp16_to_fp32(blk->d);
                    for (int k = 0; k < TS_QK / 2; k++) {
                        float * yb = y + b * TS_QK;
                        yb[k]             = fmaf(s, (float) ((blk->qs[k] & 0x0F) - 8), yb[k]);
                        yb[k + TS_QK / 2] = fmaf(s, (float) ((blk->qs[k] >> 4) - 8), yb[k + TS_QK / 2]);
                    }
                }
                break;
            default: break;
        }
    }
}

static void dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    for (int64_t t = 0; t < n_tok; t++) {
        dot_rows(type, n, w, row_bytes, (const char *) x + t * x_stride, idx, n_idx, out + t * out_stride);
    }
}

static void axpy_rows_batch(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                            const int32_t * idx, const float * a, int64_t a_stride, int64_t n_idx,
                            int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    for (int64_t t = 0; t < n_tok; t++) {
        axpy_rows(type, n, w_t, row_bytes, idx, a + t * a_stride, n_idx, c0, c1, y + t * y_stride);
    }
}

// The 16-row layout: each block read back into the plain layout, then dot_row's steps (one
// block at a time adds the same terms in the same order as dot_row over the whole row); F16
// rows: one FMA chain (ts-kernels.h).
static void dot_rows_r16(enum ts_type type, int64_t n, const void * w16, int64_t g0, int64_t g1,
                         const void * x, size_t x_stride, int64_t n_tok, float * out, int64_t out_stride) {
    for (int64_t t = 0; t < n_tok; t++) {
        const char * xt = (const char *) x + (size_t) t * x_stride;
        for (int64_t r = g0 * TS_R16; r < g1 * TS_R16; r++) {
            float sum = 0.0f;
            if (type == TS_TYPE_F16) { // the layout's own FMA chain (ts-kernels.h)
                const float * xf = (const float *) xt;
                for (int64_t k = 0; k < n; k++) {
                    uint16_t h;
                    ts_r16_block(type, n, g1 * TS_R16, w16, r, k, &h);
                    sum = fmaf(ts_fp16_to_fp32(h), xf[k], sum);
                }
            } else if (type == TS_TYPE_Q4_K) {
                for (int64_t b = 0; b < n / TS_QK_K; b++) {
                    ts_block_q4_K blk;
                    ts_r16_block(type, n, g1 * TS_R16, w16, r, b, &blk);
                    sum = q4_K_block_step(&blk, (const ts_block_q8_K *) xt + b, sum);
                }
            } else {
                for (int64_t b = 0; b < n / TS_QK; b++) {
                    ts_block_q8_0 blk; // room for either block type
                    ts_r16_block(type, n, g1 * TS_R16, w16, r, b, &blk);
                    sum += dot_row(type, TS_QK, &blk, (const ts_block_q8_0 *) xt + b);
                }
            }
            out[t * out_stride + (r - g0 * TS_R16)] = sum;
        }
    }
}

const struct ts_kernels ts_kernels_scalar = {
    .isa           = TS_ISA_SCALAR,
    .name          = "scalar",
    .quantize_q8_0 = ts_quantize_row_q8_0_ref,
    .dot_rows      = dot_rows,
    .dot_rows_batch = dot_rows_batch,
    .dot_rows_r16  = dot_rows_r16,
    .gate_up       = gate_up,
    .gate_up_exact = gate_up_exact,
    .axpy_rows     = axpy_rows,
    .axpy_rows_batch = axpy_rows_batch,
};
