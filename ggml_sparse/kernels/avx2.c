// avx2.c: the AVX2 (+FMA, F16C) kernel table, compiled with -mavx2 -mfma -mf16c and chosen
// at run time (dispatch.c). Quantised dot products follow ggml's vec_dot_q4_0_q8_0 /
// vec_dot_q8_0_q8_0: integer products per block, then one float multiply-add per block;
// dot_rows/dot_rows_batch of Q4_0 rows put eight rows in the lanes of a vector instead
// (see "Q4_0 rows, eight at a time" below). Batches of tokens use register tiles of rows x
// tokens with the per-token kernels' exact steps.
#include "ts-kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TS_KQ(name) ts_avx2_kq_##name // avx2-kquants.c
#include "simd-drivers.h"
#include "x86-helpers.h"

// K-quant rows against a batch of tokens (avx2-kquants.c): dot_rows' bits, each row unpacked
// once per tile of tokens.
void ts_avx2_kq_dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                               const void * x, size_t x_stride, int64_t n_tok,
                               const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride);

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

// Batch tiles: 2 rows x 3 tokens (16 ymm registers: 6 accumulators, or 12 for float rows).
#define TILE_ROWS 2
#define TILE_TOKS 3
TS_DEFINE_BATCH_DISPATCH(dot_float_tile, dot_quant_tile)

// ---- Q4_0 rows, eight at a time, against one or more tokens -----------------------------------
// dot_rows and dot_rows_batch of Q4_0 rows use this (gate_up keeps dot_quant_tile). Each 32-bit
// lane holds one row: a block of 8 rows is transposed into eight vectors of quants (vector g,
// lane r = row r's q, 0..15, at 4g..4g+3), and for every token eight maddubs against
// broadcast activation dwords, summed as 16-bit pairs (at most 8 * 2 * 15 * 127 < 2^15: no
// saturation), then one madd, give each row's whole block product q . y in its lane; minus
// 8 * sum(y) that is (q - 8) . y, exactly. The float work is then once per 8 rows and block.
// Per row and token the steps are fixed, whatever the tile:
//   acc = fma((float) sumi_b, d_w,b * d_x,b, acc)   from acc = 0, blocks in order,
// so dot_rows and dot_rows_batch agree bit for bit. (Q8_0 rows would need ggml's sign trick
// per token and gain little: they keep the 2 x 3 tiles.)

#define R8_ROWS  8
#define R8_CHUNK 32   // blocks unpacked at a time (9 KB)
#define R8_TILE  4    // tokens per tile (some accumulators spill: 16 registers; 2 measured no faster)
#define R8_MAX_BLOCKS 1024 // one-token path: per-call tables on the stack (rows up to 32768)
#define R8_AHEAD ((size_t) TS_PREFETCH_BYTES / R8_ROWS)

struct r8_block {
    __m256i w[8];
    __m256  d;    // lane r: row r's block scale
};

// 16 bytes at `off` of the eight rows, transposed: lane r of v[g] = row r's bytes 4g..4g+3.
// z[j] holds rows j and 4 + j in its 128-bit lanes, so that the result is in row order.
static ALWAYS_INLINE void load_8x16(const char * const * rows, size_t off, __m256i v[4]) {
    __m256i z[4];
    for (int j = 0; j < 4; j++) {
        z[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) (rows[j] + off))),
                                       _mm_loadu_si128((const __m128i *) (rows[4 + j] + off)), 1);
    }
    const __m256i t0 = _mm256_unpacklo_epi32(z[0], z[1]);
    const __m256i t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(z[2], z[3]);
    const __m256i t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2);
    v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3);
    v[3] = _mm256_unpackhi_epi64(t1, t3);
}

// Rows are read as streams continuing into the next group's rows (NULL for the last group),
// each prefetched R8_AHEAD bytes ahead, once per cache line.
static ALWAYS_INLINE void r8_prefetch(const char * const * rows, const char * const * next, size_t off, size_t row_len) {
    const size_t pos = off + R8_AHEAD;
    if ((pos & 63) >= sizeof(ts_block_q4_0)) {
        return;
    }
    if (pos < row_len) {
        prefetch_rows(R8_ROWS, rows, pos);
    } else if (next) {
        prefetch_rows(R8_ROWS, next, pos - row_len);
    }
}

static void r8_prefetch_head(const char * const * rows, size_t row_len) {
    const size_t end = row_len < R8_AHEAD ? row_len : R8_AHEAD;
    for (size_t pos = 0; pos < end; pos += 64) {
        prefetch_rows(R8_ROWS, rows, pos);
    }
}

static ALWAYS_INLINE void r8_unpack(const char * const * rows, size_t off, struct r8_block * pb) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256i v[4];
    load_8x16(rows, off + 2, v);
    for (int g = 0; g < 4; g++) {
        pb->w[g]     = _mm256_and_si256(v[g], low4);                       // quants 4g..4g+3
        pb->w[4 + g] = _mm256_and_si256(_mm256_srli_epi16(v[g], 4), low4); // 16 + 4g..
    }
    uint16_t h[R8_ROWS];
    for (int r = 0; r < R8_ROWS; r++) {
        memcpy(&h[r], rows[r] + off, 2);
    }
    pb->d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) h));
}

static ALWAYS_INLINE __m256i bcast32(const int8_t * p) { // four bytes to every dword (a load)
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

// One token's block: y its 32 activation bytes, bias = -8 * sum(y), dy its scale.
static ALWAYS_INLINE __m256 r8_step(const struct r8_block * pb, const int8_t * y, int32_t bias, float dy, __m256 acc) {
    __m256i p16 = _mm256_maddubs_epi16(pb->w[0], bcast32(y));
    for (int g = 1; g < 8; g++) {
        p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(pb->w[g], bcast32(y + 4 * g)));
    }
    const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)), _mm256_set1_epi32(bias));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(pb->d, _mm256_set1_ps(dy)), acc);
}

static ALWAYS_INLINE int32_t q8_bias(const ts_block_q8_0 * xb) { // -8 * sum of the block's quants
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *) xb->qs)),
                                        _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return -8 * _mm_cvtsi128_si32(s);
}

static ALWAYS_INLINE __m256i r8_mask(int nr) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void r8_rows_batch(int64_t n, const char * const * rows, const char * const * next, int nr,
                          const void * x, size_t x_stride, int64_t n_tok, float * out, int64_t out_stride) {
    _Alignas(32) struct r8_block pb[R8_CHUNK];
    int32_t bias[R8_TILE][R8_CHUNK];
    float   dy[R8_TILE][R8_CHUNK];
    const __m256i m = r8_mask(nr);
    const int64_t nb = n / TS_QK;
    const size_t bs = sizeof(ts_block_q4_0);
    if (nb == 0) {
        for (int64_t t = 0; t < n_tok; t++) {
            _mm256_maskstore_ps(out + t * out_stride, m, _mm256_setzero_ps());
        }
        return;
    }
    for (int64_t c = 0; c < nb; c += R8_CHUNK) {
        const int nblk = (int) drv_min(R8_CHUNK, nb - c);
        for (int b = 0; b < nblk; b++) {
            r8_prefetch(rows, next, (size_t) (c + b) * bs, (size_t) nb * bs);
            r8_unpack(rows, (size_t) (c + b) * bs, &pb[b]);
        }
        for (int64_t t0 = 0; t0 < n_tok; t0 += R8_TILE) {
            const int tt = (int) drv_min(R8_TILE, n_tok - t0);
            const ts_block_q8_0 * xt[R8_TILE];
            for (int t = 0; t < tt; t++) {
                xt[t] = (const ts_block_q8_0 *) ((const char *) x + (size_t) (t0 + t) * x_stride) + c;
                for (int b = 0; b < nblk; b++) {
                    bias[t][b] = q8_bias(&xt[t][b]);
                    dy[t][b] = _cvtsh_ss(xt[t][b].d);
                }
            }
            __m256 acc[R8_TILE];
            for (int t = 0; t < tt; t++) {
                acc[t] = c == 0 ? _mm256_setzero_ps() : _mm256_maskload_ps(out + (t0 + t) * out_stride, m);
            }
            if (tt == R8_TILE) { // full tiles: the token loop unrolled, accumulators in registers
                __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
                for (int b = 0; b < nblk; b++) {
                    a0 = r8_step(&pb[b], xt[0][b].qs, bias[0][b], dy[0][b], a0);
                    a1 = r8_step(&pb[b], xt[1][b].qs, bias[1][b], dy[1][b], a1);
                    a2 = r8_step(&pb[b], xt[2][b].qs, bias[2][b], dy[2][b], a2);
                    a3 = r8_step(&pb[b], xt[3][b].qs, bias[3][b], dy[3][b], a3);
                }
                acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
            } else {
                for (int t = 0; t < tt; t++) {
                    for (int b = 0; b < nblk; b++) {
                        acc[t] = r8_step(&pb[b], xt[t][b].qs, bias[t][b], dy[t][b], acc[t]);
                    }
                }
            }
            for (int t = 0; t < tt; t++) {
                _mm256_maskstore_ps(out + (t0 + t) * out_stride, m, acc[t]);
            }
        }
    }
}

// One token: nothing is stored between unpacking and use; -8 * sum(y) and the scales of x
// are computed once per call for every group.
static void r8_dot_rows1(int64_t n, const void * w, size_t row_bytes, const ts_block_q8_0 * x,
                         const int32_t * idx, int64_t n_idx, float * out) {
    const int64_t nb = n / TS_QK;
    const size_t bs = sizeof(ts_block_q4_0);
    int32_t xbias[R8_MAX_BLOCKS];
    float   xd[R8_MAX_BLOCKS];
    for (int64_t b = 0; b < nb; b++) {
        xbias[b] = q8_bias(&x[b]);
        xd[b] = _cvtsh_ss(x[b].d);
    }
    for (int64_t j = 0; j < n_idx; j += R8_ROWS) {
        const int nr = (int) drv_min(R8_ROWS, n_idx - j);
        const char * rows[R8_ROWS];
        const char * next[R8_ROWS];
        for (int r = 0; r < R8_ROWS; r++) {
            rows[r] = drv_row(w, row_bytes, idx, j + (r < nr ? r : nr - 1));
            next[r] = drv_row(w, row_bytes, idx, drv_min(j + R8_ROWS + r, n_idx - 1));
        }
        if (j == 0) {
            r8_prefetch_head(rows, (size_t) nb * bs);
        }
        const char * const * nx = j + R8_ROWS < n_idx ? next : NULL;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            struct r8_block pb;
            r8_prefetch(rows, nx, (size_t) b * bs, (size_t) nb * bs);
            r8_unpack(rows, (size_t) b * bs, &pb);
            acc = r8_step(&pb, x[b].qs, xbias[b], xd[b], acc);
        }
        _mm256_maskstore_ps(out + j, r8_mask(nr), acc);
    }
}

static void r8_dot_rows_batch(int64_t n, const void * w, size_t row_bytes, const void * x, size_t x_stride,
                              int64_t n_tok, const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    for (int64_t j = 0; j < n_idx; j += R8_ROWS) {
        const int nr = (int) drv_min(R8_ROWS, n_idx - j);
        const char * rows[R8_ROWS];
        const char * next[R8_ROWS];
        for (int r = 0; r < R8_ROWS; r++) {
            rows[r] = drv_row(w, row_bytes, idx, j + (r < nr ? r : nr - 1));
            next[r] = drv_row(w, row_bytes, idx, drv_min(j + R8_ROWS + r, n_idx - 1));
        }
        if (j == 0) {
            r8_prefetch_head(rows, (size_t) (n / TS_QK) * sizeof(ts_block_q4_0));
        }
        r8_rows_batch(n, rows, j + R8_ROWS < n_idx ? next : NULL, nr, x, x_stride, n_tok, out + j, out_stride);
    }
}

static void dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                     const void * x, const int32_t * idx, int64_t n_idx, float * out) {
    if (type == TS_TYPE_Q4_0 && n / TS_QK <= R8_MAX_BLOCKS) {
        r8_dot_rows1(n, w, row_bytes, x, idx, n_idx, out);
    } else if (type == TS_TYPE_Q4_0) {
        r8_dot_rows_batch(n, w, row_bytes, x, 0, 1, idx, n_idx, out, 0);
    } else {
        drv_dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);
    }
}

static void dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    if (n_tok == 1) {
        dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);
    } else if (type == TS_TYPE_Q4_0) {
        r8_dot_rows_batch(n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else if (ts_is_kquant(type)) {
        ts_avx2_kq_dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else {
        drv_dot_rows_batch_tiled(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    }
}

const struct ts_kernels ts_kernels_avx2 = {
    .isa           = TS_ISA_AVX2,
    .name          = "avx2",
    .quantize_q8_0 = quantize_q8_0,
    .dot_rows      = dot_rows,
    .dot_rows_batch = dot_rows_batch,
    .gate_up       = drv_gate_up,
    .gate_up_exact = drv_gate_up_exact,
    .axpy_rows     = drv_axpy_rows,
    .axpy_rows_batch = axpy_rows_batch,
};
