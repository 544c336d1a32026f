// avx512.c: the AVX-512 kernel table (F/BW/VL/DQ + VNNI), chosen at run time (dispatch.c
// checks every one of these). Float rows use 512-bit vectors with masked tails; quantised
// dot products stay at one 32-value block per 256-bit vector as in ggml, with VNNI's dpbusd
// doing the multiply-add of unsigned weight bytes and signed activation bytes, except in
// dot_rows/dot_rows_batch, which put sixteen rows in the lanes of a vector (see "quantised
// rows, sixteen at a time"), and dot_rows_r16, which reads the same vectors ready-made from
// the 16-row layout (ts-kernels.h). Batches of tokens use register tiles of rows x tokens with the
// per-token kernels' exact steps, so batch size never changes a bit.
#include "ts-kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define TS_KQ(name) ts_avx512_kq_##name // avx512-kquants.c
#include "simd-drivers.h"
#include "x86-helpers.h"

// K-quant rows against a batch of tokens (avx512-kquants.c): dot_rows' bits, each row unpacked
// once per tile of tokens.
void ts_avx512_kq_dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                                 const void * x, size_t x_stride, int64_t n_tok,
                                 const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride);
// Groups [g0, g1) of a Q4_K matrix in the 16-row layout: dot_rows' bits (avx512-kquants.c).
void ts_avx512_kq_dot_rows_r16(int64_t n, const void * w16, int64_t g0, int64_t g1, const void * x, size_t x_stride,
                               int64_t n_tok, float * out, int64_t out_stride);
// The K-quant down projection of a batch: axpy_rows' bits per token, each row's 64-column unit
// unpacked once per tile of tokens.
void ts_avx512_kq_axpy_rows_batch(enum ts_type type, const void * w_t, size_t row_bytes, const int32_t * idx,
                                  const float * a, int64_t a_stride, int64_t n_idx, int64_t n_tok,
                                  int64_t c0, int64_t c1, float * y, int64_t y_stride);

// Sixteen elements of a float row as f32, exactly; lanes outside `m` read nothing and are 0.
static ALWAYS_INLINE __m512 load16(enum ts_type type, const char * row, int64_t k, __mmask16 m) {
    if (m == 0xFFFF) {
        // Plain loads for full vectors: gcc keeps an all-ones mask as a masked load, and
        // those read F16 rows ~20% slower from DRAM here (bench_kernels, cold gate_up and
        // gate_up_exact; hot unchanged). F32 takes the same path, not measured separately.
        if (type == TS_TYPE_F32) {
            return _mm512_loadu_ps((const float *) row + k);
        }
        const __m256i h = _mm256_loadu_si256((const __m256i *) (row + 2 * k));
        return type == TS_TYPE_F16 ? _mm512_cvtph_ps(h)
                                   : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    switch (type) {
        case TS_TYPE_F16:
            return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k));
        case TS_TYPE_BF16:
            return _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row + 2 * k)), 16));
        default:
            return _mm512_maskz_loadu_ps(m, (const float *) row + k);
    }
}

static ALWAYS_INLINE __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << left) - 1);
}

// ---- quantise activations -------------------------------------------------------------------

static void quantize_q8_0(const float * x, ts_block_q8_0 * y, int64_t n) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + b * TS_QK);
        const __m512 v1 = _mm512_loadu_ps(x + b * TS_QK + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        const float d  = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ts_fp32_to_fp16(d);
        const __m512 vid = _mm512_set1_ps(id);
        for (int h = 0; h < 2; h++) {
            // roundf: truncate, then step away from zero when the (exact) fraction is >= 1/2
            const __m512 v    = _mm512_mul_ps(h ? v1 : v0, vid);
            const __m512 t    = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m512 frac = _mm512_andnot_ps(sign, _mm512_sub_ps(v, t));
            const __m512 step = _mm512_or_ps(_mm512_and_ps(v, sign), _mm512_set1_ps(1.0f));
            const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
            const __m512 r    = _mm512_mask_add_ps(t, up, t, step);
            _mm_storeu_si128((__m128i *) (y[b].qs + 16 * h), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)));
        }
    }
}

// ---- dot products -------------------------------------------------------------------------

// The first sum of a float dot product covers [0, h) and the second [h, n) (tail included),
// h a multiple of 32: two chains per row for the out-of-order core, each a contiguous stretch,
// so that dot_float_tile can run them one after the other without reading a line twice.
static ALWAYS_INLINE int64_t dot_float_half(int64_t n) { return n / 64 * 32; }

static ALWAYS_INLINE void dot_float(enum ts_type type, int R, const char * const * rows,
                                    const char * const * next, int64_t n, const float * x, float * out) {
    const size_t esz = elem_size(type);
    const int64_t h = dot_float_half(n);
    __m512 acc0[TS_GROUP], acc1[TS_GROUP];
    for (int r = 0; r < R; r++) {
        acc0[r] = _mm512_setzero_ps();
        acc1[r] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < h; k += 32) {
        prefetch_rows_l2(R, next, (size_t) k * esz);
        prefetch_rows_l2(R, next, (size_t) (h + k) * esz);
        if (esz == 4) {
            prefetch_rows_l2(R, next, (size_t) k * esz + 64);
            prefetch_rows_l2(R, next, (size_t) (h + k) * esz + 64);
        }
        for (int s = 0; s < 32; s += 16) {
            const __m512 x0 = _mm512_loadu_ps(x + k + s);
            const __m512 x1 = _mm512_loadu_ps(x + h + k + s);
            for (int r = 0; r < R; r++) {
                acc0[r] = _mm512_fmadd_ps(load16(type, rows[r], k + s,     0xFFFF), x0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(load16(type, rows[r], h + k + s, 0xFFFF), x1, acc1[r]);
            }
        }
    }
    for (int64_t k = 2 * h; k < n; k += 16) {
        const __mmask16 m  = tail_mask(n - k);
        const __m512    x1 = _mm512_maskz_loadu_ps(m, x + k);
        for (int r = 0; r < R; r++) {
            acc1[r] = _mm512_fmadd_ps(load16(type, rows[r], k, m), x1, acc1[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    }
}

// Q4_0, eight blocks a step, two blocks per 512-bit vector. The per-block loop spends most
// of its instructions on things other than the multiply: a scalar f16 load, convert, multiply
// and broadcast for every block's scale, and a 128-bit shuffle to split the nibbles. Here:
//  - the eight scales of a row come from two 64-byte loads and one word permute (block k's
//    scale is 16-bit word 9k of the 144 bytes), are converted and multiplied by the eight
//    activation scales at once, and each pair is spread over its lanes by one vpermps;
//  - a vector holds the quants of blocks b, b+1, b, b+1 in its four 128-bit lanes (two
//    broadcast loads, one of them masked), and one AND keeps the low nibbles in lanes 0-1
//    and 16 * the high nibbles in lanes 2-3. The activations are rearranged once per group
//    (shared by its rows) to match: [y_b 0..15, y_b+1 0..15, y_b 16..31, y_b+1 16..31];
//  - the bias, 8 * sum(y) in lanes 0-1 and 16 * 8 * sum(y) in lanes 2-3, is subtracted by
//    starting the dpbusd from its negation; lanes 2-3 are then 16 * (q - 8) . y, exactly
//    (|sum| < 2^24), and their scale is divided by 16 (exact: a power of two, far from the
//    float range's ends), so the product is the same float as unscaled value * scale.
// Every block's integer dot product and f32 scale are the same as in the per-block loop;
// only the order of the float additions differs. Returns the number of blocks done.
static ALWAYS_INLINE int64_t dot_q4_0_x8(int R, const char * const * rows, const char * const * next,
                                         int64_t nb, const ts_block_q8_0 * x, __m256 * acc) {
    const __m512i zero   = _mm512_setzero_si512();
    const __m512i nibble = _mm512_inserti64x4(_mm512_set1_epi8(0x0F), _mm256_set1_epi8((char) 0xF0), 1);
    const __m512i bias   = _mm512_inserti64x4(_mm512_set1_epi8(8), _mm256_set1_epi8((char) 0x80), 1);
    const __m512i y_order  = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i d_words  = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
    const __m512i pair_lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 8, 8, 8, 8, 9, 9, 9, 9);
    __m512 acc2[TS_GROUP];
    for (int r = 0; r < R; r++) {
        acc2[r] = _mm512_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const size_t off = (size_t) b * sizeof(ts_block_q4_0);
        // 144 bytes a step: prefetch points at most 64 bytes apart touch every line
        prefetch_rows_l2(R, next, off);
        prefetch_rows_l2(R, next, off + 64);
        prefetch_rows_l2(R, next, off + 128);

        const ts_block_q8_0 * xb = x + b;
        const __m256 dy = _mm256_cvtph_ps(_mm_setr_epi16(
            (short) xb[0].d, (short) xb[1].d, (short) xb[2].d, (short) xb[3].d,
            (short) xb[4].d, (short) xb[5].d, (short) xb[6].d, (short) xb[7].d));
        __m512i y[4], nbias[4];
        for (int k = 0; k < 4; k++) {
            y[k] = _mm512_permutex2var_epi64(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) xb[2 * k].qs)), y_order,
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) xb[2 * k + 1].qs)));
            nbias[k] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, y[k]));
        }
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            const __m512i h16 = _mm512_permutex2var_epi16(_mm512_loadu_si512(blk), d_words,
                                                          _mm512_loadu_si512(blk + 64));
            const __m256 s8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm512_castsi512_si128(h16)), dy);
            // lanes 0-7: scales of the low nibbles, 8-15: of the 16x high nibbles
            const __m512 scale = _mm512_insertf32x8(_mm512_castps256_ps512(s8),
                                                    _mm256_mul_ps(s8, _mm256_set1_ps(1.0f / 16)), 1);
            for (int k = 0; k < 4; k++) {
                const char * q = blk + 2 * k * sizeof(ts_block_q4_0) + 2;
                const __m512i q2 = _mm512_mask_broadcast_i32x4(
                    _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *) q)), 0xF0F0,
                    _mm_loadu_si128((const __m128i *) (q + sizeof(ts_block_q4_0))));
                const __m512i p32 = _mm512_dpbusd_epi32(nbias[k], _mm512_and_si512(q2, nibble), y[k]);
                const __m512  s   = _mm512_permutexvar_ps(_mm512_add_epi32(pair_lanes, _mm512_set1_epi32(2 * k)), scale);
                acc2[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p32), s, acc2[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        acc[r] = _mm256_add_ps(acc[r], _mm256_add_ps(_mm512_castps512_ps256(acc2[r]),
                                                     _mm512_extractf32x8_ps(acc2[r], 1)));
    }
    return b;
}

// dpbusd multiplies unsigned bytes by signed bytes. Q4_0: q in 0..15, (q - 8) * y = q * y - 8 * y.
// Q8_0: w + 128 in 0..255, w * y = (w + 128) * y - 128 * y. The second term depends only on
// the activations and is shared by the rows of the group; both are exact for any bytes.
//
// Q4_0 runs eight blocks (144 bytes) a step through dot_q4_0_x8 below; the per-block loop
// handles Q8_0 and the last n/32 % 8 blocks of Q4_0.

static ALWAYS_INLINE void dot_quant(enum ts_type type, int R, const char * const * rows,
                                    const char * const * next, int64_t n, const ts_block_q8_0 * x,
                                    float * out) {
    const size_t bs = block_bytes(type);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i bias = _mm256_set1_epi8(type == TS_TYPE_Q4_0 ? 8 : (char) 0x80);
    __m256 acc[TS_GROUP];
    for (int r = 0; r < R; r++) {
        acc[r] = _mm256_setzero_ps();
    }
    const int64_t b0 = type == TS_TYPE_Q4_0 ? dot_q4_0_x8(R, rows, next, n / TS_QK, x, acc) : 0;
    for (int64_t b = b0; b < n / TS_QK; b++) {
        const size_t off = (size_t) b * bs;
        if ((off & 63) < bs) {
            prefetch_rows_l2(R, next, off);
        }
        const __m256i y     = _mm256_loadu_si256((const __m256i *) x[b].qs);
        const float   dy    = _cvtsh_ss(x[b].d);
        const __m256i ybias = _mm256_dpbusd_epi32(zero, bias, y);
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            __m256i wu;
            if (type == TS_TYPE_Q4_0) {
                const __m128i q = _mm_loadu_si128((const __m128i *) (blk + 2));
                wu = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);
            } else {
                wu = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *) (blk + 2)), bias);
            }
            const __m256i p32 = _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, wu, y), ybias);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(half_at(blk) * dy), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = hsum256(acc[r]);
    }
}

// ---- quantised rows, sixteen at a time, against one or more tokens ---------------------------
// dot_rows and dot_rows_batch of Q8_0/Q4_0 rows use this (gate_up keeps dot_quant above). Each
// 32-bit lane holds one row: a block of 16 rows is transposed once into eight vectors of
// signed weight bytes (vector g, lane r = row r's quants 4g..4g+3), and for every token eight
// dpbusd against broadcast activation dwords give each row's whole block product in its
// lane. So the float work (convert, scale, multiply-add) is once per 16 rows and block, not
// once per 2 blocks of one row, and the unpacked weights serve every token of a tile.
//
// dpbusd multiplies unsigned by signed bytes: the activations are stored as y + 128 (u8) and
// the weights' -128 * sum(w) per row and block starts the integer sum, which is then exactly
// sum(w * y) (|sum| < 2^24, so its float conversion is exact too).
//
// Per row and token the arithmetic is fixed, whatever the tile: for blocks b in order,
//   acc = fma((float) sumi_b, d_w,b * d_x,b, acc)   from acc = 0,
// so dot_rows (one token) and dot_rows_batch (any tokens, any grouping of rows) agree bit for
// bit: a row's lane never meets another row's or token's numbers.

#define Q16_ROWS  16 // rows per group: one per 32-bit lane
#define Q16_CHUNK 32 // blocks unpacked at a time (20 KB of weights, 18 KB of activations: L1)
#define Q16_TILE  16 // tokens per register tile (their accumulators stay in registers)

struct q16_block {   // one block of a group of rows, unpacked
    __m512i w[8];    // w[g] lane r: row r's quants 4g..4g+3 as signed bytes (Q4_0: q - 8)
    __m512i bias;    // lane r: -128 * sum of row r's quants
    __m512  d;       // lane r: row r's block scale
};

struct q16_act {     // the activations of one tile of tokens over one chunk of blocks
    uint32_t q[Q16_TILE][Q16_CHUNK][8]; // y + 128, four bytes a dword
    float    d[Q16_TILE][Q16_CHUNK];
};

// dword g of each 128-bit lane of z[0..3] gathered into v[g]: lane 4L + j of v[g] is dword g
// of lane L of z[j] (a 4x4 transpose inside each 128-bit lane).
static ALWAYS_INLINE void transpose_lanes(const __m512i z[4], __m512i v[4]) {
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]);
    const __m512i t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]);
    const __m512i t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
}

// 16 bytes at `off` of the sixteen rows, transposed: lane r of v[g] = row r's bytes 4g..4g+3.
// z[j] holds rows j, 4 + j, 8 + j, 12 + j in its 128-bit lanes, so that the result is in row order.
static ALWAYS_INLINE void load_16x16(const char * const * rows, size_t off, __m512i v[4]) {
    __m512i z[4];
    for (int j = 0; j < 4; j++) {
        z[j] = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *) (rows[j] + off)));
        z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128((const __m128i *) (rows[4 + j] + off)), 1);
        z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128((const __m128i *) (rows[8 + j] + off)), 2);
        z[j] = _mm512_inserti32x4(z[j], _mm_loadu_si128((const __m128i *) (rows[12 + j] + off)), 3);
    }
    transpose_lanes(z, v);
}

// The group's rows are read as one stream per row, each continuing into the next group's
// row (next, NULL for the last group); every row's stream is prefetched Q16_AHEAD bytes ahead
// of the block being read (once per cache line): the 16 rows together keep TS_PREFETCH_BYTES
// in flight, which fits L1, for any row length.
#define Q16_AHEAD ((size_t) TS_PREFETCH_BYTES / Q16_ROWS)

static ALWAYS_INLINE void q16_prefetch(const char * const * rows, const char * const * next, size_t off,
                                       size_t bs, size_t row_len) {
    const size_t pos = off + Q16_AHEAD;
    if ((pos & 63) >= bs) {
        return;
    }
    if (pos < row_len) {
        prefetch_rows(Q16_ROWS, rows, pos);
    } else if (next) {
        prefetch_rows(Q16_ROWS, next, pos - row_len);
    }
}

// The first Q16_AHEAD bytes of the first group's rows, which no earlier group prefetched:
// requested together, they arrive in parallel instead of one miss at a time.
static void q16_prefetch_head(const char * const * rows, size_t row_len) {
    const size_t end = row_len < Q16_AHEAD ? row_len : Q16_AHEAD;
    for (size_t pos = 0; pos < end; pos += 64) {
        prefetch_rows(Q16_ROWS, rows, pos);
    }
}

static void r16_prefetch_head(const char * grp, size_t bytes) {
    const size_t end = bytes < R16_AHEAD ? bytes : R16_AHEAD;
    for (size_t o = 0; o < end; o += 64) {
        _mm_prefetch(grp + o, _MM_HINT_T0);
    }
}

// Block b of a group of 16 rows: v[g] lane r = row r's quant bytes 4g..4g+3 (g < 4 for
// Q4_0, g < 8 for Q8_0), and the rows' scales as f32. From 16 row pointers at byte `off`
// (plain layout), or from the group's block blk16 (16-row layout: packed, no transposing).
// Prefetches the stream(s) ahead as well.
static ALWAYS_INLINE __m512 q16_load(enum ts_type type, bool packed, const char * const * rows,
                                     const char * const * next, const char * blk16, size_t off,
                                     size_t row_len, __m512i v[8]) {
    const size_t bs = block_bytes(type);
    const int nv = type == TS_TYPE_Q4_0 ? 4 : 8;
    if (packed) {
        r16_prefetch(blk16, Q16_ROWS * bs);
        for (int g = 0; g < nv; g++) {
            v[g] = _mm512_loadu_si512(blk16 + 2 * Q16_ROWS + 64 * g);
        }
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) blk16));
    }
    q16_prefetch(rows, next, off, bs, row_len);
    load_16x16(rows, off + 2, v);
    if (type == TS_TYPE_Q8_0) {
        load_16x16(rows, off + 18, v + 4);
    }
    uint16_t h[Q16_ROWS];
    for (int r = 0; r < Q16_ROWS; r++) {
        memcpy(&h[r], rows[r] + off, 2);
    }
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) h));
}

static ALWAYS_INLINE void q16_unpack(enum ts_type type, bool packed, const char * const * rows,
                                     const char * const * next, const char * blk16, size_t off, size_t row_len,
                                     struct q16_block * pb) {
    __m512i v[8];
    pb->d = q16_load(type, packed, rows, next, blk16, off, row_len, v);
    if (type == TS_TYPE_Q4_0) {
        const __m512i low4  = _mm512_set1_epi8(0x0F);
        const __m512i eight = _mm512_set1_epi8(8);
        for (int g = 0; g < 4; g++) {
            pb->w[g]     = _mm512_sub_epi8(_mm512_and_si512(v[g], low4), eight);                       // quants 4g..
            pb->w[4 + g] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v[g], 4), low4), eight); // 16 + 4g..
        }
    } else {
        for (int g = 0; g < 8; g++) {
            pb->w[g] = v[g];
        }
    }
    const __m512i c128 = _mm512_set1_epi8((char) 0x80);
    __m512i s = _mm512_setzero_si512();
    for (int g = 0; g < 8; g++) {
        s = _mm512_dpbusd_epi32(s, c128, pb->w[g]);
    }
    pb->bias = _mm512_sub_epi32(_mm512_setzero_si512(), s);
}

// The activations of tokens [0, TT) over blocks [b0, b0 + nblk).
static ALWAYS_INLINE void q16_pack_act(int TT, const char * x, size_t x_stride, int64_t b0, int nblk,
                                       struct q16_act * pa) {
    const __m256i c128 = _mm256_set1_epi8((char) 0x80);
    for (int t = 0; t < TT; t++) {
        const ts_block_q8_0 * xb = (const ts_block_q8_0 *) (x + (size_t) t * x_stride) + b0;
        for (int b = 0; b < nblk; b++) {
            _mm256_store_si256((__m256i *) pa->q[t][b],
                               _mm256_xor_si256(_mm256_loadu_si256((const __m256i *) xb[b].qs), c128));
            pa->d[t][b] = _cvtsh_ss(xb[b].d);
        }
    }
}

// TT tokens (a compile-time constant) of a tile, starting at token t0 of the tile, over the
// unpacked blocks: acc[t] lane r += the blocks' terms of row r and token t0 + t, in order.
static ALWAYS_INLINE void q16_tile(int TT, const struct q16_block * pb, int nblk,
                                   const struct q16_act * pa, int t0, __m512 * acc) {
    for (int b = 0; b < nblk; b++) {
        for (int t = 0; t < TT; t++) {
            const uint32_t * y = pa->q[t0 + t][b];
            // two integer chains so that one token's eight dpbusd are not one long dependency
            __m512i s0 = pb[b].bias, s1 = _mm512_setzero_si512();
            for (int g = 0; g < 8; g += 2) {
                s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32((int) y[g]),     pb[b].w[g]);
                s1 = _mm512_dpbusd_epi32(s1, _mm512_set1_epi32((int) y[g + 1]), pb[b].w[g + 1]);
            }
            const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            acc[t] = _mm512_fmadd_ps(p, _mm512_mul_ps(pb[b].d, _mm512_set1_ps(pa->d[t0 + t][b])), acc[t]);
        }
    }
}

// TT tokens starting at tile token t0: accumulators from out (zero for the first chunk), the
// chunk's blocks, back to out. Only the lanes in m (the group's real rows) are read or written.
static ALWAYS_INLINE void q16_run(int TT, const struct q16_block * pb, int nblk, const struct q16_act * pa,
                                  int t0, bool first, __mmask16 m, float * out, int64_t out_stride) {
    __m512 acc[Q16_TILE];
    for (int t = 0; t < TT; t++) {
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, out + (t0 + t) * out_stride);
    }
    q16_tile(TT, pb, nblk, pa, t0, acc);
    for (int t = 0; t < TT; t++) {
        _mm512_mask_storeu_ps(out + (t0 + t) * out_stride, m, acc[t]);
    }
}

// Rows rows[0..nr) (padded to 16 with repeats of a real row) against tokens [0, n_tok):
// out[t * out_stride + r] for r < nr.
// rows == NULL: the group's blocks in the 16-row layout at grp instead.
static void q16_rows(enum ts_type type, int64_t n, const char * const * rows, const char * const * next,
                     const char * grp, int nr, const void * x, size_t x_stride, int64_t n_tok,
                     float * out, int64_t out_stride) {
    _Alignas(64) struct q16_block pb[Q16_CHUNK];
    _Alignas(64) struct q16_act   pa;
    const __mmask16 m = (__mmask16) ((1u << nr) - 1);
    const int64_t nb = n / TS_QK;
    const size_t bs = block_bytes(type);
    if (nb == 0) {
        for (int64_t t = 0; t < n_tok; t++) {
            _mm512_mask_storeu_ps(out + t * out_stride, m, _mm512_setzero_ps());
        }
        return;
    }
    for (int64_t c = 0; c < nb; c += Q16_CHUNK) {
        const int nblk = (int) drv_min(Q16_CHUNK, nb - c);
        for (int b = 0; b < nblk; b++) {
            const size_t off = (size_t) (c + b) * bs, row_len = (size_t) nb * bs;
            const bool packed = rows == NULL;
            const char * blk16 = packed ? grp + Q16_ROWS * off : NULL;
            if (type == TS_TYPE_Q4_0) {
                q16_unpack(TS_TYPE_Q4_0, packed, rows, next, blk16, off, row_len, &pb[b]);
            } else {
                q16_unpack(TS_TYPE_Q8_0, packed, rows, next, blk16, off, row_len, &pb[b]);
            }
        }
        for (int64_t t0 = 0; t0 < n_tok; t0 += Q16_TILE) {
            const int tt = (int) drv_min(Q16_TILE, n_tok - t0);
            q16_pack_act(tt, (const char *) x + (size_t) t0 * x_stride, x_stride, c, nblk, &pa);
            float * o = out + t0 * out_stride;
            // the tile's tokens in register tiles of 16, 8, 4, 2, 1 (each a compiled constant)
            int t = 0;
            if (tt - t >= 16) { q16_run(16, pb, nblk, &pa, t, c == 0, m, o, out_stride); t += 16; }
            if (tt - t >= 8)  { q16_run(8,  pb, nblk, &pa, t, c == 0, m, o, out_stride); t += 8; }
            if (tt - t >= 4)  { q16_run(4,  pb, nblk, &pa, t, c == 0, m, o, out_stride); t += 4; }
            if (tt - t >= 2)  { q16_run(2,  pb, nblk, &pa, t, c == 0, m, o, out_stride); t += 2; }
            if (tt - t >= 1)  { q16_run(1,  pb, nblk, &pa, t, c == 0, m, o, out_stride); t += 1; }
        }
    }
}

// One token (dot_rows) or a few: the same float steps, but nothing is stored between unpacking and
// use, and the integer sums are formed the other way round, which needs no copy of the
// activations: weights as unsigned bytes (Q4_0: q, Q8_0: w + 128) against the signed
// activation bytes straight from x, minus 8 * sum(y) (Q4_0) or 128 * sum(y) (Q8_0) per block,
// shared by all groups (xbias). The integer sums are exact both ways, so the results are the
// batch path's bit for bit.
#define Q16_MAX_BLOCKS 1024 // rows up to 32768 long take this path (per-call tables on the stack)
#define Q16_FEW 8           // token counts up to this take it too: per block, unpack, then each token

// TT tokens (a compile-time constant, 1..Q16_FEW), token t at x + t * x_stride, its -8 or -128
// times sum(y) per block in xbias[t], its scales in xd[t]; results at out + t * out_stride.
static ALWAYS_INLINE void q16_rows_few(enum ts_type type, int TT, bool packed, int64_t nb, const char * const * rows,
                                       const char * const * next, const char * grp, const char * x, size_t x_stride,
                                       const int32_t (*xbias)[Q16_MAX_BLOCKS], const float (*xd)[Q16_MAX_BLOCKS],
                                       __mmask16 m, float * out, int64_t out_stride) {
    const size_t bs = block_bytes(type);
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i c128 = _mm512_set1_epi8((char) 0x80);
    __m512 acc[Q16_FEW];
    for (int t = 0; t < TT; t++) {
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const size_t off = (size_t) b * bs;
        __m512i w[8], v[8];
        const __m512 d = q16_load(type, packed, rows, next, packed ? grp + Q16_ROWS * off : NULL, off,
                                  (size_t) nb * bs, v);
        if (type == TS_TYPE_Q4_0) {
            for (int g = 0; g < 4; g++) {
                w[g]     = _mm512_and_si512(v[g], low4);
                w[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v[g], 4), low4);
            }
        } else {
            for (int g = 0; g < 8; g++) {
                w[g] = _mm512_xor_si512(v[g], c128);
            }
        }
        for (int t = 0; t < TT; t++) {
            int32_t y[8];
            memcpy(y, ((const ts_block_q8_0 *) (x + (size_t) t * x_stride))[b].qs, sizeof(y));
            __m512i s0 = _mm512_set1_epi32(xbias[t][b]), s1 = _mm512_setzero_si512();
            for (int g = 0; g < 8; g += 2) {
                s0 = _mm512_dpbusd_epi32(s0, w[g],     _mm512_set1_epi32(y[g]));
                s1 = _mm512_dpbusd_epi32(s1, w[g + 1], _mm512_set1_epi32(y[g + 1]));
            }
            const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            acc[t] = _mm512_fmadd_ps(p, _mm512_mul_ps(d, _mm512_set1_ps(xd[t][b])), acc[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        _mm512_mask_storeu_ps(out + t * out_stride, m, acc[t]);
    }
}

// xbias[b] = -8 * sum(y) (Q4_0) or -128 * sum(y) (Q8_0) of each block of x, xd[b] its scale.
// Eight blocks at a time: dpbusd sums each block's bytes in fours, three rounds of hadd and
// one cross-lane add leave the eight block sums in order (a per-call cost, which matters
// when a call has few rows).
static void q16_act_sums(enum ts_type type, const ts_block_q8_0 * x, int64_t nb, int32_t * xbias, float * xd) {
    const __m256i ones = _mm256_set1_epi8(1);
    const int32_t mul = type == TS_TYPE_Q4_0 ? -8 : -128;
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m256i v[8];
        for (int k = 0; k < 8; k++) {
            v[k] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, _mm256_loadu_si256((const __m256i *) x[b + k].qs));
        }
        const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        const __m256i s  = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
        _mm256_storeu_si256((__m256i *) (xbias + b), _mm256_mullo_epi32(s, _mm256_set1_epi32(mul)));
        for (int k = 0; k < 8; k++) {
            xd[b + k] = _cvtsh_ss(x[b + k].d);
        }
    }
    for (; b < nb; b++) {
        const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, _mm256_loadu_si256((const __m256i *) x[b].qs));
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        xbias[b] = mul * _mm_cvtsi128_si32(_mm_hadd_epi32(_mm_hadd_epi32(s4, s4), _mm_hadd_epi32(s4, s4)));
        xd[b] = _cvtsh_ss(x[b].d);
    }
}

// q16_rows_few for the call's n_tok (P_: packed; rows, nx, grp, j from the caller's scope)
#define Q16_FEW_CASE(T_, P_, TT_) \
    case TT_: q16_rows_few(T_, TT_, P_, nb, rows, nx, grp, x, x_stride, xbias, xd, m, out + j, out_stride); break;
#define Q16_FEW_SWITCH(T_, P_) \
    switch (n_tok) {                                                                               \
        Q16_FEW_CASE(T_, P_, 1) Q16_FEW_CASE(T_, P_, 2) Q16_FEW_CASE(T_, P_, 3) Q16_FEW_CASE(T_, P_, 4) \
        Q16_FEW_CASE(T_, P_, 5) Q16_FEW_CASE(T_, P_, 6) Q16_FEW_CASE(T_, P_, 7) default: Q16_FEW_CASE(T_, P_, 8) }

// The rows the group after rows[j..j+16) reads, for prefetching. Dense rows (idx NULL): the
// last group's are the rows after the call's, which a caller walking a matrix in calls of a
// few rows (a thread's slice, 16 rows a call) reads next; a prefetch of them never faults and
// hides the first misses of that call. Gathered rows: NULL after the last group.
static ALWAYS_INLINE const char * const * q16_next(const void * w, size_t row_bytes, const int32_t * idx, int64_t n_idx,
                                                  int64_t j, const char ** next) {
    for (int r = 0; r < Q16_ROWS; r++) {
        if (idx == NULL) {
            next[r] = (const char *) ((uintptr_t) w + (uintptr_t) (j + Q16_ROWS + r) * row_bytes);
        } else {
            next[r] = drv_row(w, row_bytes, idx, drv_min(j + Q16_ROWS + r, n_idx - 1));
        }
    }
    return idx == NULL || j + Q16_ROWS < n_idx ? next : NULL;
}

static void q16_dot_rows_few(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                             const char * x, size_t x_stride, int64_t n_tok,
                             const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t nb = n / TS_QK;
    int32_t xbias[Q16_FEW][Q16_MAX_BLOCKS];
    float   xd[Q16_FEW][Q16_MAX_BLOCKS];
    for (int64_t t = 0; t < n_tok; t++) {
        q16_act_sums(type, (const ts_block_q8_0 *) (x + (size_t) t * x_stride), nb, xbias[t], xd[t]);
    }
    for (int64_t j = 0; j < n_idx; j += Q16_ROWS) {
        const int nr = (int) drv_min(Q16_ROWS, n_idx - j);
        const char * rows[Q16_ROWS];
        const char * next[Q16_ROWS];
        for (int r = 0; r < Q16_ROWS; r++) {
            rows[r] = drv_row(w, row_bytes, idx, j + (r < nr ? r : nr - 1));
        }
        const __mmask16 m = (__mmask16) ((1u << nr) - 1);
        const char * const * nx = q16_next(w, row_bytes, idx, n_idx, j, next);
        if (j == 0) {
            q16_prefetch_head(rows, (size_t) nb * block_bytes(type));
        }
        const char * grp = NULL;
        if (type == TS_TYPE_Q4_0) {
            Q16_FEW_SWITCH(TS_TYPE_Q4_0, false)
        } else {
            Q16_FEW_SWITCH(TS_TYPE_Q8_0, false)
        }
    }
}

// Groups of 16 rows (the last one padded), each against every token; the next group's rows
// are prefetched while a group is unpacked.
static void q16_dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                               const void * x, size_t x_stride, int64_t n_tok,
                               const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    for (int64_t j = 0; j < n_idx; j += Q16_ROWS) {
        const int nr = (int) drv_min(Q16_ROWS, n_idx - j);
        const char * rows[Q16_ROWS];
        const char * next[Q16_ROWS];
        for (int r = 0; r < Q16_ROWS; r++) {
            rows[r] = drv_row(w, row_bytes, idx, j + (r < nr ? r : nr - 1));
        }
        if (j == 0) {
            q16_prefetch_head(rows, (size_t) (n / TS_QK) * block_bytes(type));
        }
        q16_rows(type, n, rows, q16_next(w, row_bytes, idx, n_idx, j, next), NULL, nr, x, x_stride, n_tok,
                 out + j, out_stride);
    }
}

// ---- F16 rows in the 16-row layout: a row per lane -------------------------------------------
// Element k of a group is its 16 rows' halves (32 bytes): one load and convert gives a vector
// that meets every token with one FMA, and each row's lane is its FMA chain over k in order
// (the layout's arithmetic, ts-kernels.h). The plain layout's batch tiles instead convert a
// weight vector once per 6 tokens and end each (row, token) in a horizontal sum.
//
// One token: F16_STREAMS groups at a time, each one sequential stream and one chain, so that
// the chains' FMA latency overlaps (bench_matmul f16 14336 x 4096 and 4096 x 14336, one token,
// 2 threads: 2 / 4 / 8 streams 4.6-5.1 / 4.7-5.0 / 4.5-4.9 ms, the plain layout 4.4-4.7).
// A batch: tiles of two groups x F16_TILE tokens (24 accumulators: per element 2 loads and
// converts, 12 broadcasts, 24 FMAs), over the elements in
// chunks of F16_KC: a chunk of a group pair (128 KB) stays in L2 for all the token tiles, as do
// the chunk's activations (n_tok x 8 KB), and the tiles' sums go to `out` between chunks (the
// chain goes on from the stored value: the same bits). bench_matmul f16, 2 threads, 128 tokens,
// the Intel Xeon VM: 14336 x 4096 in the plain layout's tiles 75-77 ms; here with chunks of
// 256 / 512 / 1024 / 2048 / 4096 elements 67 / 64 / 58 / 57 / 58 ms (4096 x 14336 alike);
// 3 groups x 8 tokens 57.5, 1 x 24 134 (2 x 12 at 2048: 54-58 ms, ~265 GFLOP/s).
#define F16_STREAMS 8
#define F16_TILE    12
#define F16_KC      2048

static ALWAYS_INLINE __m512 f16_r16_at(const uint16_t * grp, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (grp + (size_t) k * TS_R16)));
}

static ALWAYS_INLINE float f32_at(const char * p) {
    float v;
    memcpy(&v, p, sizeof(v));
    return v;
}

// G groups (a constant) against one token: out[16 i + r] = row r of group i.
static ALWAYS_INLINE void f16_r16_one(int G, int64_t n, const uint16_t * const * grp, const char * x,
                                      float * out) {
    __m512 acc[F16_STREAMS];
    for (int i = 0; i < G; i++) {
        acc[i] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < n; k++) {
        if ((k & 1) == 0) { // a cache line holds two elements of a group
            for (int i = 0; i < G; i++) {
                r16_prefetch((const char *) (grp[i] + (size_t) k * TS_R16), 64);
            }
        }
        const __m512 xk = _mm512_set1_ps(f32_at(x + (size_t) k * sizeof(float)));
        for (int i = 0; i < G; i++) {
            acc[i] = _mm512_fmadd_ps(f16_r16_at(grp[i], k), xk, acc[i]);
        }
    }
    for (int i = 0; i < G; i++) {
        _mm512_storeu_ps(out + 16 * i, acc[i]);
    }
}

// G groups x TT tokens (constants) over elements [k0, k1): acc from out (0 at k0 == 0), back
// to out. x points at the tile's first token.
static ALWAYS_INLINE void f16_r16_tile(int G, int TT, const uint16_t * const * grp, int64_t k0, int64_t k1,
                                       const char * x, size_t x_stride, float * out, int64_t out_stride) {
    __m512 acc[2][F16_TILE];
    for (int i = 0; i < G; i++) {
        for (int t = 0; t < TT; t++) {
            acc[i][t] = k0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(out + t * out_stride + 16 * i);
        }
    }
    for (int64_t k = k0; k < k1; k++) {
        __m512 w[2];
        for (int i = 0; i < G; i++) {
            w[i] = f16_r16_at(grp[i], k);
        }
        for (int t = 0; t < TT; t++) {
            const __m512 xv = _mm512_set1_ps(f32_at(x + (size_t) t * x_stride + (size_t) k * sizeof(float)));
            for (int i = 0; i < G; i++) {
                acc[i][t] = _mm512_fmadd_ps(w[i], xv, acc[i][t]);
            }
        }
    }
    for (int i = 0; i < G; i++) {
        for (int t = 0; t < TT; t++) {
            _mm512_storeu_ps(out + t * out_stride + 16 * i, acc[i][t]);
        }
    }
}

#define F16_TILE_CASE(G_, TT_) \
    case TT_: f16_r16_tile(G_, TT_, grp, k0, k1, xt, x_stride, o, out_stride); break;
#define F16_TILE_SWITCH(G_) \
    switch (tt) {                                                                                  \
        F16_TILE_CASE(G_, 1) F16_TILE_CASE(G_, 2) F16_TILE_CASE(G_, 3) F16_TILE_CASE(G_, 4)          \
        F16_TILE_CASE(G_, 5) F16_TILE_CASE(G_, 6) F16_TILE_CASE(G_, 7) F16_TILE_CASE(G_, 8)          \
        F16_TILE_CASE(G_, 9) F16_TILE_CASE(G_, 10) F16_TILE_CASE(G_, 11) default: F16_TILE_CASE(G_, 12) }

static void f16_dot_rows_r16(int64_t n, const void * w16, int64_t g0, int64_t g1,
                             const char * x, size_t x_stride, int64_t n_tok, float * out, int64_t out_stride) {
    const uint16_t * w = w16;
    const size_t group_elems = (size_t) n * TS_R16;
    if (n_tok == 1) {
        for (int64_t g = g0; g < g1; g += F16_STREAMS) {
            const int G = (int) drv_min(F16_STREAMS, g1 - g);
            const uint16_t * grp[F16_STREAMS];
            for (int i = 0; i < G; i++) {
                grp[i] = w + (size_t) (g + i) * group_elems;
            }
            float * o = out + (g - g0) * TS_R16;
            switch (G) {
                case 8:  f16_r16_one(8, n, grp, x, o); break;
                case 7:  f16_r16_one(7, n, grp, x, o); break;
                case 6:  f16_r16_one(6, n, grp, x, o); break;
                case 5:  f16_r16_one(5, n, grp, x, o); break;
                case 4:  f16_r16_one(4, n, grp, x, o); break;
                case 3:  f16_r16_one(3, n, grp, x, o); break;
                case 2:  f16_r16_one(2, n, grp, x, o); break;
                default: f16_r16_one(1, n, grp, x, o); break;
            }
        }
        return;
    }
    for (int64_t k0 = 0; k0 < n; k0 += F16_KC) {
        const int64_t k1 = drv_min(k0 + F16_KC, n);
        for (int64_t g = g0; g < g1; g += 2) {
            const int G = (int) drv_min(2, g1 - g);
            const uint16_t * grp[2] = { w + (size_t) g * group_elems, w + (size_t) (g + G - 1) * group_elems };
            for (int64_t t0 = 0; t0 < n_tok; t0 += F16_TILE) {
                const int tt = (int) drv_min(F16_TILE, n_tok - t0);
                const char * xt = x + (size_t) t0 * x_stride;
                float * o = out + t0 * out_stride + (g - g0) * TS_R16;
                if (G == 2) {
                    F16_TILE_SWITCH(2)
                } else {
                    F16_TILE_SWITCH(1)
                }
            }
        }
    }
}

// Groups [g0, g1) of a matrix in the 16-row layout: the same float steps per row and token as
// the plain layout's q16_dot_rows_few / q16_dot_rows_batch (so the same bits), one stream.
static void dot_rows_r16(enum ts_type type, int64_t n, const void * w16, int64_t g0, int64_t g1,
                         const void * x_, size_t x_stride, int64_t n_tok, float * out, int64_t out_stride) {
    if (type == TS_TYPE_Q4_K) {
        ts_avx512_kq_dot_rows_r16(n, w16, g0, g1, x_, x_stride, n_tok, out, out_stride);
        return;
    }
    if (type == TS_TYPE_F16) {
        f16_dot_rows_r16(n, w16, g0, g1, x_, x_stride, n_tok, out, out_stride);
        return;
    }
    const int64_t nb = n / TS_QK;
    const size_t group_bytes = (size_t) nb * Q16_ROWS * block_bytes(type);
    const char * x = x_;
    if (g1 <= g0) {
        return;
    }
    r16_prefetch_head((const char *) w16 + (size_t) g0 * group_bytes, (size_t) (g1 - g0) * group_bytes);
    if (n_tok > Q16_FEW || nb > Q16_MAX_BLOCKS) {
        for (int64_t g = g0; g < g1; g++) {
            q16_rows(type, n, NULL, NULL, (const char *) w16 + (size_t) g * group_bytes, Q16_ROWS, x, x_stride,
                     n_tok, out + (g - g0) * Q16_ROWS, out_stride);
        }
        return;
    }
    int32_t xbias[Q16_FEW][Q16_MAX_BLOCKS];
    float   xd[Q16_FEW][Q16_MAX_BLOCKS];
    for (int64_t t = 0; t < n_tok; t++) {
        q16_act_sums(type, (const ts_block_q8_0 *) (x + (size_t) t * x_stride), nb, xbias[t], xd[t]);
    }
    const __mmask16 m = 0xFFFF;
    const char * const * rows = NULL;
    const char * const * nx = NULL;
    for (int64_t g = g0; g < g1; g++) {
        const char * grp = (const char *) w16 + (size_t) g * group_bytes;
        const int64_t j = (g - g0) * Q16_ROWS;
        if (type == TS_TYPE_Q4_0) {
            Q16_FEW_SWITCH(TS_TYPE_Q4_0, true)
        } else {
            Q16_FEW_SWITCH(TS_TYPE_Q8_0, true)
        }
    }
}

// ---- float rows against a batch of tokens ----------------------------------------------------
// Register tiles of FT_ROWS rows x FT_TOK tokens (24 accumulators of 32 registers): per
// 16-element step each row's weights are loaded and converted once for all the tile's tokens
// and each token's activations loaded once for all its rows, 4 x 32 + 6 x 64 bytes for 24
// FMAs. dot_float keeps two sums per row (the first and the second stretch of the row); here
// every (row, token) pair's two sums live in memory (`sums`, 24 KB for a block of FB_ROWS rows
// and one tile of tokens) and each stretch is walked in chunks of FB_K elements: per chunk, the
// six tokens' activations (24 KB of f32) stay in L1 while the block's row groups stream the
// chunk of their rows from L2 through the registers, and each tile's sums are loaded and stored
// once (48 memory operations for 1536 FMAs). Every sum still runs over its stretch in order and
// the two are added as dot_float adds them: dot_rows' bits exactly.
// Measured (F16 14336 x 4096 against 128 tokens, 2 threads, the 2-core Xeon, a standalone copy
// of both loops): the former order, a group's whole rows kept in L1 while every token tile read
// its activations from L2 over the full row (x: 16 bytes per FMA from L2), 83-96 ms; this 66-68.
// FB_ROWS and FB_K can be set with -D for measuring: 16 or 64 rows, 512 or 2048 elements were
// no faster (bench_matmul, F16 gate and down shapes against 128 tokens).
#define FT_ROWS 4
#define FT_TOK  6
#ifndef FB_ROWS
#define FB_ROWS 32
#endif
#ifndef FB_K
#define FB_K    1024
#endif

// acc[r][t] += row r . token t over the 16 elements at k (lanes outside m read nothing)
static ALWAYS_INLINE void dot_float_step(enum ts_type type, int TT, const char * const * rows,
                                         const float * const * xt, int64_t k, __mmask16 m,
                                         __m512 acc[FT_ROWS][FT_TOK]) {
    __m512 w[FT_ROWS];
    for (int r = 0; r < FT_ROWS; r++) {
        w[r] = load16(type, rows[r], k, m);
    }
    for (int t = 0; t < TT; t++) {
        const __m512 xv = m == 0xFFFF ? _mm512_loadu_ps(xt[t] + k) : _mm512_maskz_loadu_ps(m, xt[t] + k);
        for (int r = 0; r < FT_ROWS; r++) {
            acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
        }
    }
}

// sums[r * FT_TOK + t] += row r . token t over [k0, k1) (a tail shorter than 16 at the end);
// `next` (or NULL): rows read next, prefetched at the offset being read plus next_delta elements.
static ALWAYS_INLINE void dot_float_chunk(enum ts_type type, int TT, const char * const * rows,
                                          const char * const * next, int64_t next_delta,
                                          const float * const * xt, int64_t k0, int64_t k1, __m512 * sums) {
    const size_t esz = elem_size(type);
    __m512 acc[FT_ROWS][FT_TOK];
    for (int r = 0; r < FT_ROWS; r++) {
        for (int t = 0; t < TT; t++) {
            acc[r][t] = sums[r * FT_TOK + t];
        }
    }
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        if (next && k % 32 == 0) {
            prefetch_rows(FT_ROWS, next, (size_t) (k + next_delta) * esz);
            if (esz == 4) {
                prefetch_rows(FT_ROWS, next, (size_t) (k + next_delta) * esz + 64);
            }
        }
        dot_float_step(type, TT, rows, xt, k, 0xFFFF, acc);
    }
    if (k < k1) {
        dot_float_step(type, TT, rows, xt, k, tail_mask(k1 - k), acc);
    }
    for (int r = 0; r < FT_ROWS; r++) {
        for (int t = 0; t < TT; t++) {
            sums[r * FT_TOK + t] = acc[r][t];
        }
    }
}

static ALWAYS_INLINE void group_rows(const void * w, size_t row_bytes, const int32_t * idx, int64_t j,
                                     int64_t n_idx, const char * rows[FT_ROWS]) {
    for (int r = 0; r < FT_ROWS; r++) {
        rows[r] = drv_row(w, row_bytes, idx, drv_min(j + r, n_idx - 1));
    }
}

static ALWAYS_INLINE void dot_float_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                                          const void * x, size_t x_stride, int64_t n_tok,
                                          const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t h = dot_float_half(n);
    const int64_t stretch[3] = { 0, h, n };
    __m512 sums[2][FB_ROWS / FT_ROWS][FT_ROWS * FT_TOK];
    for (int64_t j0 = 0; j0 < n_idx; j0 += FB_ROWS) {
        const int64_t nb = drv_min(FB_ROWS, n_idx - j0);
        const int n_groups = (int) ((nb + FT_ROWS - 1) / FT_ROWS);
        for (int64_t t0 = 0; t0 < n_tok; t0 += FT_TOK) {
            const int TT = (int) drv_min(FT_TOK, n_tok - t0);
            const float * xt[FT_TOK];
            for (int t = 0; t < TT; t++) {
                xt[t] = (const float *) ((const char *) x + (size_t) (t0 + t) * x_stride);
            }
            memset(sums, 0, sizeof(sums));
            for (int pass = 0; pass < 2; pass++) {
                for (int64_t kc = stretch[pass]; kc < stretch[pass + 1]; kc += FB_K) {
                    const int64_t ke = drv_min(kc + FB_K, stretch[pass + 1]);
                    for (int g = 0; g < n_groups; g++) {
                        const char * rows[FT_ROWS];
                        group_rows(w, row_bytes, idx, j0 + g * FT_ROWS, n_idx, rows);
                        // Only the first token tile reads the rows from memory: it prefetches
                        // what it reads next (the next group's chunk, after the last group the
                        // first group's next chunk, after the last chunk the next block's start);
                        // the later tiles find the block (FB_ROWS rows) in L2.
                        const char * next_rows[FT_ROWS];
                        const char * const * next = NULL;
                        int64_t delta = 0;
                        if (t0 == 0) {
                            if (g + 1 < n_groups) {
                                group_rows(w, row_bytes, idx, j0 + (g + 1) * FT_ROWS, n_idx, next_rows);
                                next = next_rows;
                            } else if (ke < n || j0 + FB_ROWS < n_idx) {
                                const bool same_block = ke < n;
                                group_rows(w, row_bytes, idx, same_block ? j0 : j0 + FB_ROWS, n_idx, next_rows);
                                next = next_rows;
                                delta = same_block ? ke - kc : -kc;
                            }
                        }
                        __m512 * s = sums[pass][g];
                        switch (TT) {
                            case 6:  dot_float_chunk(type, 6, rows, next, delta, xt, kc, ke, s); break;
                            case 5:  dot_float_chunk(type, 5, rows, next, delta, xt, kc, ke, s); break;
                            case 4:  dot_float_chunk(type, 4, rows, next, delta, xt, kc, ke, s); break;
                            case 3:  dot_float_chunk(type, 3, rows, next, delta, xt, kc, ke, s); break;
                            case 2:  dot_float_chunk(type, 2, rows, next, delta, xt, kc, ke, s); break;
                            default: dot_float_chunk(type, 1, rows, next, delta, xt, kc, ke, s); break;
                        }
                    }
                }
            }
            for (int64_t j = 0; j < nb; j++) {
                const int g = (int) (j / FT_ROWS), r = (int) (j % FT_ROWS);
                for (int t = 0; t < TT; t++) {
                    out[(t0 + t) * out_stride + j0 + j] =
                        _mm512_reduce_add_ps(_mm512_add_ps(sums[0][g][r * FT_TOK + t], sums[1][g][r * FT_TOK + t]));
                }
            }
        }
    }
}

static bool is_quant(enum ts_type type) { return type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0; }

static void dot_rows(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                     const void * x, const int32_t * idx, int64_t n_idx, float * out) {
    if (is_quant(type) && n / TS_QK <= Q16_MAX_BLOCKS) {
        q16_dot_rows_few(type, n, w, row_bytes, x, 0, 1, idx, n_idx, out, 0);
    } else if (is_quant(type)) {
        q16_dot_rows_batch(type, n, w, row_bytes, x, 0, 1, idx, n_idx, out, 0);
    } else {
        drv_dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);
    }
}

static void dot_rows_batch(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    if (ts_is_kquant(type) && n_tok == 1) {
        drv_dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);
    } else if (ts_is_kquant(type)) {
        ts_avx512_kq_dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else if (is_quant(type) && n_tok <= Q16_FEW && n / TS_QK <= Q16_MAX_BLOCKS) {
        q16_dot_rows_few(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else if (is_quant(type)) {
        q16_dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else if (n_tok == 1) {
        drv_dot_rows(type, n, w, row_bytes, x, idx, n_idx, out);
    } else if (type == TS_TYPE_F16) {
        dot_float_batch(TS_TYPE_F16, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else if (type == TS_TYPE_BF16) {
        dot_float_batch(TS_TYPE_BF16, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else {
        dot_float_batch(TS_TYPE_F32, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
    }
}

// ---- down projection (axpy) ------------------------------------------------------------------
// Every y element gets the FMAs of the group's rows in row order, as the scalar reference.

static ALWAYS_INLINE void axpy_float(enum ts_type type, int R, const char * const * rows,
                                     const char * const * next, const float * a,
                                     int64_t c0, int64_t c1, float * y) {
    const size_t esz = elem_size(type);
    __m512 av[TS_GROUP];
    for (int r = 0; r < R; r++) {
        av[r] = _mm512_set1_ps(a[r]);
    }
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        if ((((size_t) c * esz) & 63) == 0) {
            prefetch_rows_l2(R, next, (size_t) c * esz);
        }
        __m512 yv = _mm512_loadu_ps(y + c);
        for (int r = 0; r < R; r++) {
            yv = _mm512_fmadd_ps(av[r], load16(type, rows[r], c, 0xFFFF), yv);
        }
        _mm512_storeu_ps(y + c, yv);
    }
    if (c < c1) {
        const __mmask16 m = tail_mask(c1 - c);
        __m512 yv = _mm512_maskz_loadu_ps(m, y + c);
        for (int r = 0; r < R; r++) {
            yv = _mm512_fmadd_ps(av[r], load16(type, rows[r], c, m), yv);
        }
        _mm512_mask_storeu_ps(y + c, m, yv);
    }
}

static ALWAYS_INLINE __m512 i8x16_to_ps(__m128i q) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
}

// Q4_0 nibbles to floats: each byte widened to a dword lane (lane j holds quants j and j + 16),
// then a 16-entry table lookup (vpermps reads only the low 4 bits of each index) maps a nibble
// q straight to the float q - 8, the same exact value as converting the integer q - 8.
// (The earlier spread/shift/or-into-2^23 sequence took 8 vector ops per block, this 4; the
// axpy is bound by these ops, not by memory: one core, Zen 4, Q4_0 rows of 4096, L2-hot
// axpy_rows 9.5 -> 11.5 GB/s, 7168 of 14336 rows from DRAM 2.0 -> 1.8 ms.)
static ALWAYS_INLINE void q4_0_to_ps(__m128i q, __m512 * lo, __m512 * hi) {
    const __m512 table = _mm512_setr_ps(-8.0f, -7.0f, -6.0f, -5.0f, -4.0f, -3.0f, -2.0f, -1.0f,
                                        0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f);
    const __m512i bytes = _mm512_cvtepu8_epi32(q);
    *lo = _mm512_permutexvar_ps(bytes, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
}

static ALWAYS_INLINE void axpy_quant(enum ts_type type, int R, const char * const * rows,
                                     const char * const * next, const float * a,
                                     int64_t c0, int64_t c1, float * y) {
    const size_t bs = block_bytes(type);
    const int64_t b_end = c1 / TS_QK;
    int64_t b = c0 / TS_QK;
    if (type == TS_TYPE_Q4_0) {
        // Eight blocks a step: each row's eight scales a[r] * d come from two 64-byte loads
        // and one word permute (as in dot_q4_0_x8) and one vector multiply, instead of a
        // scalar load, convert, multiply and broadcast per block. They go through the stack
        // so that a block's is broadcast by a load (vbroadcastss), not a vpermps: the loop is
        // bound by port 5 (widening and two table lookups per block and row), and the one
        // shuffle fewer made L2-hot axpy_rows 12.4 -> 13.3 GB/s on the Intel Xeon VM. Same
        // products, same FMAs in the same order: bit-identical.
        const __m512i d_words = _mm512_zextsi128_si512(_mm_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63));
        for (; b + 8 <= b_end; b += 8) {
            const size_t off = (size_t) b * bs;
            prefetch_rows(R, next, off);
            prefetch_rows(R, next, off + 64);
            prefetch_rows(R, next, off + 128);
            _Alignas(32) float s8[TS_GROUP][8];
            for (int r = 0; r < R; r++) {
                const char * blk = rows[r] + off;
                const __m512i h16 = _mm512_permutex2var_epi16(_mm512_loadu_si512(blk), d_words,
                                                              _mm512_loadu_si512(blk + 64));
                _mm256_store_ps(s8[r], _mm256_mul_ps(_mm256_set1_ps(a[r]),
                                                     _mm256_cvtph_ps(_mm512_castsi512_si128(h16))));
            }
            for (int k = 0; k < 8; k++) {
                float * yb = y + (b + k) * TS_QK;
                __m512 y0 = _mm512_loadu_ps(yb), y1 = _mm512_loadu_ps(yb + 16);
                for (int r = 0; r < R; r++) {
                    const __m512 s = _mm512_set1_ps(s8[r][k]);
                    __m512 lo, hi;
                    q4_0_to_ps(_mm_loadu_si128((const __m128i *) (rows[r] + off + k * bs + 2)), &lo, &hi);
                    y0 = _mm512_fmadd_ps(s, lo, y0);
                    y1 = _mm512_fmadd_ps(s, hi, y1);
                }
                _mm512_storeu_ps(yb, y0);
                _mm512_storeu_ps(yb + 16, y1);
            }
        }
    }
    for (; b < b_end; b++) {
        const size_t off = (size_t) b * bs;
        if ((off & 63) < bs) {
            prefetch_rows(R, next, off);
        }
        float * yb = y + b * TS_QK;
        __m512 y0 = _mm512_loadu_ps(yb), y1 = _mm512_loadu_ps(yb + 16);
        for (int r = 0; r < R; r++) {
            const char * blk = rows[r] + off;
            const __m512 s = _mm512_set1_ps(a[r] * half_at(blk));
            __m512 lo, hi; // values 0..15 and 16..31
            if (type == TS_TYPE_Q4_0) {
                q4_0_to_ps(_mm_loadu_si128((const __m128i *) (blk + 2)), &lo, &hi);
            } else {
                lo = i8x16_to_ps(_mm_loadu_si128((const __m128i *) (blk + 2)));
                hi = i8x16_to_ps(_mm_loadu_si128((const __m128i *) (blk + 18)));
            }
            y0 = _mm512_fmadd_ps(s, lo, y0);
            y1 = _mm512_fmadd_ps(s, hi, y1);
        }
        _mm512_storeu_ps(yb, y0);
        _mm512_storeu_ps(yb + 16, y1);
    }
}

// ---- down projection of a batch of tokens -------------------------------------------------------
// Tiles of 32 columns x AXPY_TILE tokens: each row's 32 weights are loaded (dequantised) once
// and applied to every token of the tile, whose sums stay in registers over all the rows.
// Every element still gets y = fma(s, w, y) over the rows in order from 0, with s = a (float
// rows) or a * d (quantised rows) as in axpy_rows, so each token's columns are its axpy_rows
// result bit for bit (an FMA rounds each element on its own: lanes and grouping do not matter).

// A tile of 12 tokens holds 24 accumulators, so each row's 32 dequantised weights serve 24
// FMAs, and for whole tiles the driver multiplies the values by the quantised rows' scales
// once per column block (a * d for every row and token of the chunk), so the tile does nothing
// but convert and FMA (8-token tiles with a * d per tile: 20-25% slower, bench_kernels axpy).
#define AXPY_TILE 12 // tokens per tile: 24 accumulators
#define AXPY_ROWS 64 // rows per chunk
#define AXPY_TOKS 24 // tokens whose values are transposed at a time (2 tiles)
#define AXPY_PITCH 32 // floats per row of aT (a multiple of 16 >= AXPY_TOKS)

// A down tile's sums: y's columns [c, c + 32) of TT tokens (lanes outside m0/m1 untouched),
// or zeros for a tile's first rows.
static ALWAYS_INLINE void axpy_tile_load(int TT, bool first, const float * y, int64_t y_stride, int64_t c,
                                         __mmask16 m0, __mmask16 m1, __m512 * acc0, __m512 * acc1) {
    for (int t = 0; t < TT; t++) {
        acc0[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, y + t * y_stride + c);
        acc1[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + t * y_stride + c + 16);
    }
}

static ALWAYS_INLINE void axpy_tile_store(int TT, float * y, int64_t y_stride, int64_t c,
                                          __mmask16 m0, __mmask16 m1, const __m512 * acc0, const __m512 * acc1) {
    for (int t = 0; t < TT; t++) {
        _mm512_mask_storeu_ps(y + t * y_stride + c,      m0, acc0[t]);
        _mm512_mask_storeu_ps(y + t * y_stride + c + 16, m1, acc1[t]);
    }
}

// Quantised rows (Q8_0/Q4_0; float rows take the panel tile above). a: the chunk's values,
// token-contiguous per row, already times each row's scale when `scaled`, else multiplied here,
// token by token (the same a * d).
static ALWAYS_INLINE void axpy_batch_tile(enum ts_type type, int TT, const void * w_t, size_t row_bytes,
                                          const int32_t * idx, const float * a, bool scaled, int64_t j0, int64_t j1,
                                          int64_t c, int64_t c1, float * y, int64_t y_stride) {
    const __mmask16 m0 = tail_mask(c1 - c);
    const __mmask16 m1 = c1 - c > 16 ? tail_mask(c1 - c - 16) : 0;
    const size_t off = (size_t) (c / TS_QK) * block_bytes(type);
    __m512 acc0[AXPY_TILE], acc1[AXPY_TILE];
    axpy_tile_load(TT, j0 == 0, y, y_stride, c, m0, m1, acc0, acc1); // rows before j0: an earlier chunk's
    for (int64_t j = j0; j < j1; j++) {
        const char * row = drv_row(w_t, row_bytes, idx, j);
        // the next lines of this row, read by the next column tiles
        _mm_prefetch(row + off + 128, _MM_HINT_T1);
        __m512 w0, w1; // the integer quants (exact)
        if (type == TS_TYPE_Q4_0) {
            q4_0_to_ps(_mm_loadu_si128((const __m128i *) (row + off + 2)), &w0, &w1);
        } else {
            w0 = i8x16_to_ps(_mm_loadu_si128((const __m128i *) (row + off + 2)));
            w1 = i8x16_to_ps(_mm_loadu_si128((const __m128i *) (row + off + 18)));
        }
        const float * aj = a + (j - j0) * AXPY_PITCH; // the tile's values of this row
        const __m512 d = scaled ? _mm512_setzero_ps() : _mm512_set1_ps(half_at(row + off));
        for (int t = 0; t < TT; t++) {
            const __m512 sv = scaled ? _mm512_set1_ps(aj[t]) : _mm512_mul_ps(_mm512_set1_ps(aj[t]), d);
            acc0[t] = _mm512_fmadd_ps(sv, w0, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(sv, w1, acc1[t]);
        }
    }
    axpy_tile_store(TT, y, y_stride, c, m0, m1, acc0, acc1);
}

// One column tile for every token, in register tiles of 12, 8, 4, 2, 1 tokens (compiled constants).
static ALWAYS_INLINE void axpy_batch_cols(enum ts_type type, const void * w_t, size_t row_bytes,
                                          const int32_t * idx, const float * aT, bool scaled, int64_t j0, int64_t j1,
                                          int64_t n_tok, int64_t c, int64_t c1, float * y, int64_t y_stride) {
    int64_t t = 0;
    for (; n_tok - t >= 12; t += 12) {
        axpy_batch_tile(type, 12, w_t, row_bytes, idx, aT + t, scaled, j0, j1, c, c1, y + t * y_stride, y_stride);
    }
    if (n_tok - t >= 8) {
        axpy_batch_tile(type, 8, w_t, row_bytes, idx, aT + t, scaled, j0, j1, c, c1, y + t * y_stride, y_stride);
        t += 8;
    }
    if (n_tok - t >= 4) {
        axpy_batch_tile(type, 4, w_t, row_bytes, idx, aT + t, scaled, j0, j1, c, c1, y + t * y_stride, y_stride);
        t += 4;
    }
    if (n_tok - t >= 2) {
        axpy_batch_tile(type, 2, w_t, row_bytes, idx, aT + t, scaled, j0, j1, c, c1, y + t * y_stride, y_stride);
        t += 2;
    }
    if (n_tok - t >= 1) {
        axpy_batch_tile(type, 1, w_t, row_bytes, idx, aT + t, scaled, j0, j1, c, c1, y + t * y_stride, y_stride);
    }
}

// Float rows (F32/F16/BF16), packed. A column tile's 64-byte pieces of a chunk's rows lie a
// row apart (8 KB for 4096 f16 columns), so the pieces of one column map to the same L1 set
// and each token tile met them again from L2. Here a chunk's rows are copied, a column block
// (AXPY_PACK_BYTES of each row) at a time, into a contiguous panel that stays in L1 while every
// token tile of up to AXPY_PACK_TOKS tokens runs over it; the chunk's values are transposed
// once for all those tokens. The same FMAs in the same order as the tiles above: the same bits.
// Measured (F16 down 14336 -> 4096 against 128 tokens, 2 threads, the 2-core Xeon, a
// standalone copy of both loops): 106 ms unpacked, 58 ms packed (dense gate/up: 66-73 ms).
#define AXPY_PACK_BYTES 512                 // of each row per column block: 64 rows = 32 KB
#define AXPY_PACK_TOKS  (11 * AXPY_TILE)    // tokens whose values are transposed at a time

// y[t][c..c+32) (+)= sum over the panel's rows of a[j][t] * panel[j][c..]: TT tokens, the
// panel's rows `pitch` bytes apart, a's rows AXPY_TILE floats apart.
static ALWAYS_INLINE void axpy_panel_tile(enum ts_type type, int TT, const char * panel, size_t pitch, int64_t nj,
                                          const float * a, bool first, int64_t pc, int64_t pc1, float * y,
                                          int64_t yc, int64_t y_stride) {
    const __mmask16 m0 = tail_mask(pc1 - pc);
    const __mmask16 m1 = pc1 - pc > 16 ? tail_mask(pc1 - pc - 16) : 0;
    __m512 acc0[AXPY_TILE], acc1[AXPY_TILE];
    axpy_tile_load(TT, first, y, y_stride, yc, m0, m1, acc0, acc1);
    for (int64_t j = 0; j < nj; j++) {
        const char * row = panel + (size_t) j * pitch;
        const __m512 w0 = load16(type, row, pc, m0);
        const __m512 w1 = load16(type, row, pc + 16, m1);
        const float * aj = a + j * AXPY_TILE;
        for (int t = 0; t < TT; t++) {
            const __m512 sv = _mm512_set1_ps(aj[t]);
            acc0[t] = _mm512_fmadd_ps(sv, w0, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(sv, w1, acc1[t]);
        }
    }
    axpy_tile_store(TT, y, y_stride, yc, m0, m1, acc0, acc1);
}

static ALWAYS_INLINE void axpy_float_batch(enum ts_type type, const void * w_t, size_t row_bytes,
                                           const int32_t * idx, const float * a, int64_t a_stride, int64_t n_idx,
                                           int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    const size_t esz = elem_size(type);
    const int64_t block = AXPY_PACK_BYTES / (int64_t) esz; // columns per block, a multiple of 32
    _Alignas(64) char panel[AXPY_ROWS * AXPY_PACK_BYTES];
    _Alignas(64) float aT[AXPY_PACK_TOKS * AXPY_ROWS]; // [tile][row][token in tile]
    for (int64_t t0 = 0; t0 < n_tok; t0 += AXPY_PACK_TOKS) {
        const int64_t nt = drv_min(AXPY_PACK_TOKS, n_tok - t0);
        const int n_tiles = (int) ((nt + AXPY_TILE - 1) / AXPY_TILE);
        for (int64_t j0 = 0; j0 < n_idx; j0 += AXPY_ROWS) {
            const int64_t nj = drv_min(AXPY_ROWS, n_idx - j0);
            for (int g = 0; g < n_tiles; g++) {
                for (int64_t j = 0; j < nj; j++) {
                    for (int t = 0; t < AXPY_TILE; t++) {
                        const int64_t tt = (int64_t) g * AXPY_TILE + t;
                        aT[((int64_t) g * AXPY_ROWS + j) * AXPY_TILE + t] =
                            tt < nt ? a[(t0 + tt) * a_stride + j0 + j] : 0.0f;
                    }
                }
            }
            for (int64_t cb = c0; cb < c1; cb += block) {
                const int64_t nc = drv_min(block, c1 - cb);
                const size_t pitch = (size_t) nc * esz;
                for (int64_t j = 0; j < nj; j++) {
                    const char * row = drv_row(w_t, row_bytes, idx, j0 + j);
                    memcpy(panel + (size_t) j * pitch, row + (size_t) cb * esz, pitch);
                    // the same rows' next block, copied next (the last block: nothing)
                    if (cb + block < c1) {
                        for (size_t o = 0; o < AXPY_PACK_BYTES && (int64_t) o < (c1 - cb - block) * (int64_t) esz; o += 64) {
                            _mm_prefetch(row + (size_t) (cb + block) * esz + o, _MM_HINT_T1);
                        }
                    }
                }
                for (int g = 0; g < n_tiles; g++) {
                    const float * ag = aT + (int64_t) g * AXPY_ROWS * AXPY_TILE;
                    float * yg = y + (t0 + (int64_t) g * AXPY_TILE) * y_stride;
                    const int TT = (int) drv_min(AXPY_TILE, nt - (int64_t) g * AXPY_TILE);
                    for (int64_t pc = 0; pc < nc; pc += 32) {
                        #define PANEL_TILE(TT_) axpy_panel_tile(type, TT_, panel, pitch, nj, ag, j0 == 0, pc, nc, yg, cb + pc, y_stride)
                        switch (TT) {
                            case 12: PANEL_TILE(12); break;
                            case 11: PANEL_TILE(11); break;
                            case 10: PANEL_TILE(10); break;
                            case 9:  PANEL_TILE(9);  break;
                            case 8:  PANEL_TILE(8);  break;
                            case 7:  PANEL_TILE(7);  break;
                            case 6:  PANEL_TILE(6);  break;
                            case 5:  PANEL_TILE(5);  break;
                            case 4:  PANEL_TILE(4);  break;
                            case 3:  PANEL_TILE(3);  break;
                            case 2:  PANEL_TILE(2);  break;
                            default: PANEL_TILE(1);  break;
                        }
                        #undef PANEL_TILE
                    }
                }
            }
        }
    }
}

// Quantised rows: chunks of AXPY_ROWS (the sums go through y between chunks, exactly) and tokens in
// blocks of AXPY_TOKS, whose values of those rows are copied token-contiguous (aT); column
// tiles within, token tiles innermost: a column tile reads one 64-byte line or less of each
// of the chunk's rows, and the next tiles read on in the same lines, so the chunk's lines,
// aT and the tile's y all stay in L1.

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
    if (ts_is_kquant(type)) {
        ts_avx512_kq_axpy_rows_batch(type, w_t, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride);
        return;
    }
    if (ts_is_float(type)) {
        switch (type) {
            case TS_TYPE_F16:  axpy_float_batch(TS_TYPE_F16,  w_t, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride); break;
            case TS_TYPE_BF16: axpy_float_batch(TS_TYPE_BF16, w_t, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride); break;
            default:           axpy_float_batch(TS_TYPE_F32,  w_t, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride); break;
        }
        return;
    }
    _Alignas(64) float aT[AXPY_ROWS * AXPY_PITCH];
    _Alignas(64) float sT[AXPY_ROWS * AXPY_PITCH];
    for (int64_t j0 = 0; j0 < n_idx; j0 += AXPY_ROWS)
    for (int64_t t0 = 0; t0 < n_tok; t0 += AXPY_TOKS) {
        const int64_t j1 = drv_min(j0 + AXPY_ROWS, n_idx);
        const int64_t nt = drv_min(AXPY_TOKS, n_tok - t0);
        for (int64_t j = j0; j < j1; j++) {
            for (int64_t t = 0; t < nt; t++) {
                aT[(j - j0) * AXPY_PITCH + t] = a[(t0 + t) * a_stride + j];
            }
            for (int64_t t = nt; t < AXPY_PITCH; t++) { // scaled (16 at a time) but never used
                aT[(j - j0) * AXPY_PITCH + t] = 0.0f;
            }
        }
        float * yt = y + t0 * y_stride;
        for (int64_t c = c0; c < c1; c += 32) {
            // quantised rows and whole tiles: the values times the row's scale of this column
            // block, a * d per element as axpy_rows has it, once for all the tiles' FMAs
            // (for fewer tokens the products cost more here than in the tile)
            const bool scaled = nt >= AXPY_TILE;
            const float * at = aT;
            if (scaled) {
                const size_t off = (size_t) (c / TS_QK) * block_bytes(type);
                for (int64_t j = j0; j < j1; j++) {
                    const __m512 d = _mm512_set1_ps(half_at(drv_row(w_t, row_bytes, idx, j) + off));
                    for (int64_t t = 0; t < nt; t += 16) {
                        const size_t o = (size_t) (j - j0) * AXPY_PITCH + (size_t) t;
                        _mm512_store_ps(sT + o, _mm512_mul_ps(_mm512_load_ps(aT + o), d));
                    }
                }
                at = sT;
            }
            switch (type) {
                case TS_TYPE_Q8_0: axpy_batch_cols(TS_TYPE_Q8_0, w_t, row_bytes, idx, at, scaled, j0, j1, nt, c, c1, yt, y_stride); break;
                case TS_TYPE_Q4_0: axpy_batch_cols(TS_TYPE_Q4_0, w_t, row_bytes, idx, at, scaled, j0, j1, nt, c, c1, yt, y_stride); break;
                default: break;
            }
        }
    }
}

TS_DEFINE_GROUP_DISPATCH()

const struct ts_kernels ts_kernels_avx512 = {
    .isa           = TS_ISA_AVX512,
    .name          = "avx512",
    .quantize_q8_0 = quantize_q8_0,
    .dot_rows      = dot_rows,
    .dot_rows_batch = dot_rows_batch,
    .float_batch_blocked = true,
    .dot_rows_r16  = dot_rows_r16,
    .gate_up       = drv_gate_up,
    .gate_up_exact = drv_gate_up_exact,
    .axpy_rows     = drv_axpy_rows,
    .axpy_rows_batch = axpy_rows_batch,
};
