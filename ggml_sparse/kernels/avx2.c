// avx2.c: the AVX2 (+FMA, F16C) kernel table, compiled with -mavx2 -mfma -mf16c and chosen
// at run time (dispatch.c). Quantised dot products follow ggml's vec_dot_q4_0_q8_0 /
// vec_dot_q8_0_q8_0: integer products per block, then one float multiply-add per block.
#include "ts-kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd-drivers.h"
#include "x86-helpers.h"

// Eight elements of a float row (F32/F16/BF16) as f32, exactly.
static ALWAYS_INLINE __m256 load8(enum ts_type type, const char * row, int64_t k) {
    switch (type) {
        case TS_TYPE_F16:
            return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (row + 2 * k)));
        case TS_TYPE_BF16:
            return _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) (row + 2 * k))), 16));
        default:
            return _mm256_loadu_ps((const float *) row + k);
    }
}

static ALWAYS_INLINE float load1(enum ts_type type, const char * row, int64_t k) {
    switch (type) {
        case TS_TYPE_F16:  return half_at(row + 2 * k);
        case TS_TYPE_BF16: { uint16_t h; memcpy(&h, row + 2 * k, 2); return ts_bf16_to_fp32(h); }
        default:           return ((const float *) row)[k];
    }
}

// ---- quantise activations -------------------------------------------------------------------

// roundf (half away from zero) for |v| < 2^23: truncate, then step away from zero when the
// dropped fraction is at least one half. v - trunc(v) is exact, so this is bit-identical.
static ALWAYS_INLINE __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t    = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step));
}

static void quantize_q8_0(const float * x, ts_block_q8_0 * y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const float * xb = x + b * TS_QK;
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d  = _mm_cvtss_f32(m) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ts_fp32_to_fp16(d);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            q[k] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[k], _mm256_set1_ps(id))));
        }
        // packs interleave the 128-bit lanes; the permute puts the 32 values back in order
        const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
        const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p   = _mm256_packs_epi16(p01, p23);
        const __m256i ord = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *) y[b].qs, ord);
    }
}

// ---- dot products -------------------------------------------------------------------------

// R rows x TT tokens (token t at x + t * x_stride, its results at out + t * out_stride). Each
// row and token has its own accumulators and the same steps whatever R and TT are, so the
// batch tiles (dot_rows_batch) give dot_rows' results bit for bit.
static ALWAYS_INLINE void dot_float_tile(enum ts_type type, int R, int TT, const char * const * rows,
                                         const char * const * next, int64_t n, const char * x, size_t x_stride,
                                         int nr, float * out, int64_t out_stride) {
    const size_t esz = elem_size(type);
    __m256 acc0[TS_GROUP][TS_GROUP], acc1[TS_GROUP][TS_GROUP];
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < TT; t++) {
            acc0[r][t] = _mm256_setzero_ps();
            acc1[r][t] = _mm256_setzero_ps();
        }
    }
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        if (next && (((size_t) k * esz) & 63) == 0) {
            prefetch_rows(R, next, (size_t) k * esz);
        }
        for (int h = 0; h < 2; h++) {
            __m256 w[TS_GROUP];
            for (int r = 0; r < R; r++) {
                w[r] = load8(type, rows[r], k + 8 * h);
            }
            for (int t = 0; t < TT; t++) {
                const __m256 xv = _mm256_loadu_ps((const float *) (x + (size_t) t * x_stride) + k + 8 * h);
                for (int r = 0; r < R; r++) {
                    if (h == 0) {
                        acc0[r][t] = _mm256_fmadd_ps(w[r], xv, acc0[r][t]);
                    } else {
                        acc1[r][t] = _mm256_fmadd_ps(w[r], xv, acc1[r][t]);
                    }
                }
            }
        }
    }
    if (k + 8 <= n) {
        for (int t = 0; t < TT; t++) {
            const __m256 xv = _mm256_loadu_ps((const float *) (x + (size_t) t * x_stride) + k);
            for (int r = 0; r < R; r++) {
                acc0[r][t] = _mm256_fmadd_ps(load8(type, rows[r], k), xv, acc0[r][t]);
            }
        }
        k += 8;
    }
    for (int r = 0; r < nr; r++) {
        for (int t = 0; t < TT; t++) {
            const float * xt = (const float *) (x + (size_t) t * x_stride);
            float s = hsum256(_mm256_add_ps(acc0[r][t], acc1[r][t]));
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

// Q4_0 rows: (q - 8) * y summed as q * y - 8 * y, both by maddubs (unsigned q), so the
// 8 * y part is shared by the rows of the group. Q8_0 rows: ggml's sign trick, |w| * sign(y, w);
// exact for every w, and for every activation the quantiser makes (|y| <= 127).
// R rows x TT tokens, as dot_float_tile: a block's weights are unpacked once for the tokens,
// a token's activations (and their 8 * y) once for the rows; each row and token keeps its own
// accumulator with the same steps for any R and TT.
static ALWAYS_INLINE void dot_quant_tile(enum ts_type type, int R, int TT, const char * const * rows,
                                         const char * const * next, int64_t n, const char * x, size_t x_stride,
                                         int nr, float * out, int64_t out_stride) {
    const size_t bs = block_bytes(type);
    const __m256i ones  = _mm256_set1_epi16(1);
    const __m256i low4  = _mm256_set1_epi8(0x0F);
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc[TS_GROUP][TS_GROUP];
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < TT; t++) {
            acc[r][t] = _mm256_setzero_ps();
        }
    }
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const size_t off = (size_t) b * bs;
        if (next && (off & 63) < bs) {
            prefetch_rows(R, next, off);
        }
        __m256i w[TS_GROUP]; // Q4_0: q (unsigned), Q8_0: w
        __m256  dw[TS_GROUP];
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            if (type == TS_TYPE_Q4_0) {
                const __m128i q = _mm_loadu_si128((const __m128i *) (blk + 2));
                w[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);
            } else {
                w[r] = _mm256_loadu_si256((const __m256i *) (blk + 2));
            }
            dw[r] = _mm256_set1_ps(half_at(blk));
        }
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_0 * xb = (const ts_block_q8_0 *) (x + (size_t) t * x_stride) + b;
            const __m256i y  = _mm256_loadu_si256((const __m256i *) xb->qs);
            const __m256  dy = _mm256_set1_ps(_cvtsh_ss(xb->d));
            const __m256i y8 = type == TS_TYPE_Q4_0 ? _mm256_maddubs_epi16(eight, y) : _mm256_setzero_si256();
            for (int r = 0; r < R; r++) {
                __m256i p16;
                if (type == TS_TYPE_Q4_0) {
                    p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(w[r], y), y8);
                } else {
                    p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w[r], w[r]), _mm256_sign_epi8(y, w[r]));
                }
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw[r], dy), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        for (int t = 0; t < TT; t++) {
            out[t * out_stride + r] = hsum256(acc[r][t]);
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
    __m256 av[TS_GROUP];
    for (int r = 0; r < R; r++) {
        av[r] = _mm256_set1_ps(a[r]);
    }
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        if ((((size_t) c * esz) & 63) == 0) {
            prefetch_rows(R, next, (size_t) c * esz);
        }
        __m256 yv = _mm256_loadu_ps(y + c);
        for (int r = 0; r < R; r++) {
            yv = _mm256_fmadd_ps(av[r], load8(type, rows[r], c), yv);
        }
        _mm256_storeu_ps(y + c, yv);
    }
    for (; c < c1; c++) {
        float v = y[c];
        for (int r = 0; r < R; r++) {
            v = fmaf(a[r], load1(type, rows[r], c), v);
        }
        y[c] = v;
    }
}

static ALWAYS_INLINE __m256 i8x8_to_ps(__m128i q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
}

static ALWAYS_INLINE void axpy_quant(enum ts_type type, int R, const char * const * rows,
                                     const char * const * next, const float * a,
                                     int64_t c0, int64_t c1, float * y) {
    const size_t bs = block_bytes(type);
    const __m128i low4  = _mm_set1_epi8(0x0F);
    const __m128i eight = _mm_set1_epi8(8);
    for (int64_t b = c0 / TS_QK; b < c1 / TS_QK; b++) {
        const size_t off = (size_t) b * bs;
        if ((off & 63) < bs) {
            prefetch_rows(R, next, off);
        }
        float * yb = y + b * TS_QK;
        __m256 y0 = _mm256_loadu_ps(yb),      y1 = _mm256_loadu_ps(yb + 8);
        __m256 y2 = _mm256_loadu_ps(yb + 16), y3 = _mm256_loadu_ps(yb + 24);
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            const __m256 s = _mm256_set1_ps(a[r] * half_at(blk));
            __m256 w[4]; // values 0..7, 8..15, 16..23, 24..31
            if (type == TS_TYPE_Q4_0) {
                const __m128i q  = _mm_loadu_si128((const __m128i *) (blk + 2));
                const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, low4), eight);
                const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), low4), eight);
                w[0] = i8x8_to_ps(lo);
                w[1] = i8x8_to_ps(_mm_srli_si128(lo, 8));
                w[2] = i8x8_to_ps(hi);
                w[3] = i8x8_to_ps(_mm_srli_si128(hi, 8));
            } else {
                w[0] = i8x8_to_ps(_mm_loadl_epi64((const __m128i *) (blk + 2)));
                w[1] = i8x8_to_ps(_mm_loadl_epi64((const __m128i *) (blk + 10)));
                w[2] = i8x8_to_ps(_mm_loadl_epi64((const __m128i *) (blk + 18)));
                w[3] = i8x8_to_ps(_mm_loadl_epi64((const __m128i *) (blk + 26)));
            }
            y0 = _mm256_fmadd_ps(s, w[0], y0);
            y1 = _mm256_fmadd_ps(s, w[1], y1);
            y2 = _mm256_fmadd_ps(s, w[2], y2);
            y3 = _mm256_fmadd_ps(s, w[3], y3);
        }
        _mm256_storeu_ps(yb, y0);      _mm256_storeu_ps(yb + 8, y1);
        _mm256_storeu_ps(yb + 16, y2); _mm256_storeu_ps(yb + 24, y3);
    }
}

// ---- down projection of a batch of tokens -------------------------------------------------------
// Tiles of 16 columns x 4 tokens (8 accumulators), over chunks of AXPY_ROWS rows (the sums
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
    __m256 acc0[AXPY_TILE], acc1[AXPY_TILE];
    for (int t = 0; t < TT; t++) { // rows before j0 were summed by an earlier chunk
        acc0[t] = j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(y + t * y_stride + c);
        acc1[t] = j0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(y + t * y_stride + c + 8);
    }
    for (int64_t j = j0; j < j1; j++) {
        const char * row = drv_row(w_t, row_bytes, idx, j);
        __m256 w0, w1, d = _mm256_setzero_ps();
        if (quant) {
            __m128i v;
            if (type == TS_TYPE_Q4_0) {
                const __m128i q = _mm_loadu_si128((const __m128i *) (row + off + 2));
                v = _mm_sub_epi8(_mm_and_si128(second ? _mm_srli_epi16(q, 4) : q, _mm_set1_epi8(0x0F)), _mm_set1_epi8(8));
            } else {
                v = _mm_loadu_si128((const __m128i *) (row + off + 2 + (second ? 16 : 0)));
            }
            w0 = i8x8_to_ps(v);
            w1 = i8x8_to_ps(_mm_srli_si128(v, 8));
            d  = _mm256_set1_ps(half_at(row + off));
        } else {
            w0 = load8(type, row, c);
            w1 = load8(type, row, c + 8);
        }
        for (int t = 0; t < TT; t++) {
            const __m256 av = _mm256_set1_ps(a[t * a_stride + j]);
            const __m256 sv = quant ? _mm256_mul_ps(av, d) : av;
            acc0[t] = _mm256_fmadd_ps(sv, w0, acc0[t]);
            acc1[t] = _mm256_fmadd_ps(sv, w1, acc1[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        _mm256_storeu_ps(y + t * y_stride + c,     acc0[t]);
        _mm256_storeu_ps(y + t * y_stride + c + 8, acc1[t]);
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

// Batch tiles: 2 rows x 3 tokens (16 ymm registers: 6 accumulators, or 12 for float rows).
#define TILE_ROWS 2
#define TILE_TOKS 3
TS_DEFINE_BATCH_DISPATCH(dot_float_tile, dot_quant_tile)

const struct ts_kernels ts_kernels_avx2 = {
    .isa           = TS_ISA_AVX2,
    .name          = "avx2",
    .quantize_q8_0 = quantize_q8_0,
    .dot_rows      = drv_dot_rows,
    .dot_rows_batch = drv_dot_rows_batch_tiled,
    .gate_up       = drv_gate_up,
    .gate_up_exact = drv_gate_up_exact,
    .axpy_rows     = drv_axpy_rows,
    .axpy_rows_batch = axpy_rows_batch,
};
