// avx512-kquants.c: the AVX-512 (BW, VNNI) K-quant primitives (kquant-group.h) for Q4_K and
// Q6_K rows; compiled with avx512.c's flags, used by its table through simd-drivers.h.
//
// Dot products follow ggml's vec_dot_q4_K_q8_K / vec_dot_q6_K_q8_K: per super-block, the
// quants (u8) times the activations (s8) in 16-bit pairs (maddubs, exact: |pair| < 2^15),
// then the 16-bit sub-block scales in one dpwssd, into an exact 32-bit sum; Q6_K's -32 and
// Q4_K's mins meet the activations' 16-element sums (bsums). Then f32 multiply-adds per
// super-block and row, into scalar chains per row (Q4_K two, Q6_K one) whose bits do not depend
// on how the exact integers were formed (see dot_q4_K). So batches of tokens (prompt
// processing) and the 16-row layout (ts-kernels.h), at the end of the file, put sixteen rows in
// the lanes of a vector (dpbusd) and still give the same bits per (row, token).
#include "ts-kernels.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define TS_KQ(name) ts_avx512_kq_##name
#include "kquant-group.h"
#include "x86-helpers.h"


// Lane r of the result: the sum of the int32 lanes of v[r] (exact), four rows' sums at once.
static ALWAYS_INLINE __m128i hsum4_epi32(const __m256i v[4]) {
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

static ALWAYS_INLINE __m256i fold512_epi32(__m512i v) {
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// The eight 6-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K block, unpacked as
// ts_q4_K_scale_min does, by ggml's 32-bit word shuffle.
static ALWAYS_INLINE __m128i q4_K_scales_mins(const uint8_t * scales) {
    uint32_t u[4];
    memcpy(u, scales, 12);
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t m03 = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[2] = m03;
    u[0] &= k1;
    return _mm_loadu_si128((const __m128i *) u);
}

// Q4_K: each row's result is two f32 chains over its super-blocks, one multiply-add each per
// block: sum = fma((float) T, xd * d, sum) and summ = fma((float) M, xd * dmin, summ), result
// sum - summ, where T = sum over sub-blocks of sc * (quants . activations) and M = sum of
// min * (the activations' sub-block sum) are exact 32-bit integers (|T| < 2^25, |M| < 2^21).
// How T and M are computed does not matter to the result, so the batch kernel, which puts
// sixteen rows in the lanes of a vector (rows_q4_K below), gives these bits exactly.
static ALWAYS_INLINE void dot_q4_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m128 sum = _mm_setzero_ps(), summ = _mm_setzero_ps(); // lane r: row r
    // word index vectors: chunk c's 64 quants are sub-blocks 2c (words 0-15) and 2c+1 (16-31)
    __m512i pick[4];
    for (int c = 0; c < 4; c++) {
        pick[c] = _mm512_inserti64x4(_mm512_set1_epi16((short) (2 * c)), _mm256_set1_epi16((short) (2 * c + 1)), 1);
    }
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q4_K), sizeof(ts_block_q4_K));
        const ts_block_q8_K * xb = x + b;
        __m512i y[4];
        for (int c = 0; c < 4; c++) {
            y[c] = _mm512_loadu_si512(xb->qs + 64 * c);
        }
        // per sub-block sums of the activations: bsums in pairs
        const __m256i ysub = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) xb->bsums), _mm256_set1_epi16(1));
        __m256i T[4], M[4]; // per row, lanes to sum (rows past R: 0)
        float dd[4] = { 0 }, dm[4] = { 0 };
        for (int r = 0; r < R; r++) {
            const ts_block_q4_K * blk = (const ts_block_q4_K *) rows[r] + b;
            const __m128i sm = q4_K_scales_mins(blk->scales);
            const __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
            __m512i acc = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *) (blk->qs + 32 * c));
                const __m512i w = _mm512_and_si512(
                    _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), low4);
                const __m512i p16 = _mm512_maddubs_epi16(w, y[c]);
                acc = _mm512_dpwssd_epi32(acc, p16, _mm512_permutexvar_epi16(pick[c], sc16));
            }
            const __m256i mins = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
            T[r] = fold512_epi32(acc);
            M[r] = _mm256_mullo_epi32(mins, ysub);
            dd[r] = xb->d * _cvtsh_ss(blk->d);
            dm[r] = xb->d * _cvtsh_ss(blk->dmin);
        }
        for (int r = R; r < 4; r++) {
            T[r] = M[r] = _mm256_setzero_si256();
        }
        sum  = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_epi32(T)), _mm_loadu_ps(dd), sum);
        summ = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_epi32(M)), _mm_loadu_ps(dm), summ);
    }
    float res[4];
    _mm_storeu_ps(res, _mm_sub_ps(sum, summ));
    for (int r = 0; r < R; r++) {
        out[r] = res[r];
    }
}

// Q6_K: as Q4_K, one f32 chain per row: sum = fma((float) T, xd * d, sum), T = sum over the
// 16-element groups of scale * ((quants - 32) . activations), exact (|T| < 2^29): the -32 is
// 32 * the sum of scale * the activations' group sum. The lane kernel (rows_q6_K) forms T its
// own way and gets these bits.
static ALWAYS_INLINE void dot_q6_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i hi2  = _mm512_set1_epi8(0x30);
    __m128 sum = _mm_setzero_ps(); // lane r: row r
    // the 64 quants of quarter k are the 16-element groups 4k .. 4k+3, eight words each
    __m512i pick[4];
    for (int k = 0; k < 4; k++) {
        pick[k] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16((short) (4 * k + 1)), _mm_set1_epi16((short) (4 * k)))),
            _mm256_set_m128i(_mm_set1_epi16((short) (4 * k + 3)), _mm_set1_epi16((short) (4 * k + 2))), 1);
    }
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q6_K), sizeof(ts_block_q6_K));
        const ts_block_q8_K * xb = x + b;
        __m512i y[4];
        for (int k = 0; k < 4; k++) {
            y[k] = _mm512_loadu_si512(xb->qs + 64 * k);
        }
        const __m256i bsums = _mm256_loadu_si256((const __m256i *) xb->bsums);
        __m256i T[4]; // per row, lanes to sum (rows past R: 0)
        float dd[4] = { 0 };
        for (int r = 0; r < R; r++) {
            const ts_block_q6_K * blk = (const ts_block_q6_K *) rows[r] + b;
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) blk->scales));
            const __m512i sc512 = _mm512_castsi256_si512(sc16);
            __m512i acc = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++) {
                const __m512i L = _mm512_loadu_si512(blk->ql + 64 * h);
                const __m256i H = _mm256_loadu_si256((const __m256i *) (blk->qh + 32 * h));
                // high bits of elements 0-31 (bits 0-1) and 32-63 (bits 2-3) of this half
                const __m512i H2 = _mm512_inserti64x4(_mm512_castsi256_si512(H), _mm256_srli_epi16(H, 2), 1);
                const __m512i w0 = _mm512_or_si512(_mm512_and_si512(L, low4),
                                                   _mm512_and_si512(_mm512_slli_epi16(H2, 4), hi2));
                const __m512i w1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), low4),
                                                   _mm512_and_si512(H2, hi2)); // bits 4-5 and 6-7
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w0, y[2 * h]),
                                          _mm512_permutexvar_epi16(pick[2 * h], sc512));
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w1, y[2 * h + 1]),
                                          _mm512_permutexvar_epi16(pick[2 * h + 1], sc512));
            }
            // the -32 of every quant: 32 * sum over groups of scale * bsum
            T[r] = _mm256_sub_epi32(fold512_epi32(acc), _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5));
            dd[r] = xb->d * _cvtsh_ss(blk->d);
        }
        for (int r = R; r < 4; r++) {
            T[r] = _mm256_setzero_si256();
        }
        sum = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_epi32(T)), _mm_loadu_ps(dd), sum);
    }
    float res[4];
    _mm_storeu_ps(res, sum);
    for (int r = 0; r < R; r++) {
        out[r] = res[r];
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

static ALWAYS_INLINE __m512 u8x16_to_ps(__m128i q) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
}

// The unit's 64 quants as floats, in column order (Q6_K: q - 32).
static ALWAYS_INLINE void unit_quants(enum ts_type type, const char * row, int64_t c, __m512 w[4]) {
    const int64_t b = c / TS_QK_K;
    const int e0 = (int) (c % TS_QK_K);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    if (type == TS_TYPE_Q4_K) {
        const uint8_t * qs = ((const ts_block_q4_K *) row + b)->qs + 32 * (e0 / 64);
        for (int v = 0; v < 2; v++) {
            const __m128i q = _mm_loadu_si128((const __m128i *) (qs + 16 * v));
            w[v]     = u8x16_to_ps(_mm_and_si128(q, low4));
            w[2 + v] = u8x16_to_ps(_mm_and_si128(_mm_srli_epi16(q, 4), low4));
        }
    } else {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const int h = e0 / 128, p = (e0 % 128) / 64;
        const __m512 m32 = _mm512_set1_ps(32.0f);
        for (int v = 0; v < 4; v++) {
            const __m128i lo = _mm_loadu_si128((const __m128i *) (blk->ql + 64 * h + 16 * v));
            const __m128i hb = _mm_loadu_si128((const __m128i *) (blk->qh + 32 * h + 16 * (v % 2)));
            const __m128i ql = _mm_and_si128(p ? _mm_srli_epi16(lo, 4) : lo, low4);
            const __m128i qh = _mm_and_si128(_mm_srl_epi16(hb, _mm_cvtsi32_si128(4 * p + 2 * (v / 2))), _mm_set1_epi8(3));
            w[v] = _mm512_sub_ps(u8x16_to_ps(_mm_or_si128(ql, _mm_slli_epi16(qh, 4))), m32); // exact
        }
    }
}

// ts_kq_block_scales (kquant-group.h) in vectors: the same products, so the same floats (d * sc
// and dmin * m are exact; a times them rounds once either way). A row's scalar version cost
// more than the block's 256 multiply-adds it serves (a down row of one token).
static ALWAYS_INLINE void kq_block_scales(enum ts_type type, const char * row, int64_t b, float a, float s[16], float m[8]) {
    if (type == TS_TYPE_Q4_K) {
        const ts_block_q4_K * blk = (const ts_block_q4_K *) row + b;
        const __m512 scm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q4_K_scales_mins(blk->scales))); // 8 sc, 8 m
        const __m512 dd = _mm512_insertf32x8(_mm512_set1_ps(_cvtsh_ss(blk->d)), _mm256_set1_ps(_cvtsh_ss(blk->dmin)), 1);
        const __m512 v = _mm512_mul_ps(_mm512_set1_ps(a), _mm512_mul_ps(dd, scm));
        _mm256_storeu_ps(s, _mm512_castps512_ps256(v));
        _mm256_storeu_ps(m, _mm512_extractf32x8_ps(v, 1));
    } else {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) blk->scales)));
        _mm512_storeu_ps(s, _mm512_mul_ps(_mm512_set1_ps(a), _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(blk->d)), sc)));
    }
}

// Per super-block: each row's sub-block scalars once (kq_block_scales), then the block's
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
            kq_block_scales(type, rows[r], b, a[r], s[r], m[r]);
        }
        for (int64_t c = cs; c < ce; c += 64) {
            const int u = (int) (c % TS_QK_K) / 64;
            __m512 yv[4];
            for (int v = 0; v < 4; v++) {
                yv[v] = _mm512_loadu_ps(y + c + 16 * v);
            }
            for (int r = 0; r < R; r++) {
                const float * sr = s[r];
                const float * mr = m[r];
                __m512 w[4];
                unit_quants(type, rows[r], c, w);
                for (int v = 0; v < 4; v++) {
                    if (type == TS_TYPE_Q4_K) {
                        yv[v] = _mm512_fmadd_ps(_mm512_set1_ps(sr[2 * u + v / 2]), w[v], _mm512_sub_ps(yv[v], _mm512_set1_ps(mr[2 * u + v / 2])));
                    } else {
                        yv[v] = _mm512_fmadd_ps(_mm512_set1_ps(sr[4 * u + v]), w[v], yv[v]);
                    }
                }
            }
            for (int v = 0; v < 4; v++) {
                _mm512_storeu_ps(y + c + 16 * v, yv[v]);
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

// ---- sixteen rows in the lanes (prompt processing, the 16-row layout) ---------------------------
// dot_q4_K / dot_q6_K meet one token per call, so every token unpacks every row's quants and
// scales again (two thirds of the work of a step). The kernels below unpack them once for many
// tokens and give, for every (row, token), exactly the bits of dot_rows.

// Q4_K: sixteen rows in the lanes of a vector. Per super-block the rows' quants are transposed
// once (lane r of vector k: row r's quants of elements 4k..4k+3, one per byte), so that one
// dpbusd multiplies 64 quant-activation pairs against one token's four activations (broadcast):
// half the multiply instructions of dot_q4_K's maddubs + dpwssd per 64 pairs, and no
// per-token unpacking. T and M (see dot_q4_K) come out exact in each lane, so each lane's two
// chains are dot_q4_K's. A group of 16 rows meets the tokens KL_TOK at a time, block by block;
// the tokens' sums live in memory (8 KB), the group's rows (16 x 2.3 KB at n = 4096) in L2.
#define KL_ROWS 16
#define KL_TOK  64

// A super-block of 16 rows, unpacked for the lanes: q[v], dword r: row r's qs dword v (so lo
// nibbles of vector 8c + k are elements 64c + 4k .. 64c + 4k + 3, hi nibbles 64c + 32 + 4k ..);
// sc[s]: the 6-bit scale of sub-block s; mp[i]: the mins of sub-blocks 2i and 2i + 1 as two
// int16; d, dmin as f32.
struct q4_K_lanes {
    _Alignas(64) uint32_t q[32][KL_ROWS];
    _Alignas(64) int32_t  sc[8][KL_ROWS];
    _Alignas(64) int32_t  mp[4][KL_ROWS];
    _Alignas(64) float    d[KL_ROWS], dmin[KL_ROWS];
};

// From 16 plain rows (a gathered list: transposed here).
static void q4_K_lanes_fill(const char * const * rows, int64_t b, struct q4_K_lanes * L) {
    for (int r = 0; r < KL_ROWS; r++) {
        const ts_block_q4_K * blk = (const ts_block_q4_K *) rows[r] + b;
        uint32_t qd[32];
        memcpy(qd, blk->qs, sizeof(qd));
        for (int dw = 0; dw < 32; dw++) {
            L->q[dw][r] = qd[dw];
        }
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *) sm, q4_K_scales_mins(blk->scales));
        for (int sb = 0; sb < 8; sb++) {
            L->sc[sb][r] = sm[sb];
        }
        for (int i = 0; i < 4; i++) {
            L->mp[i][r] = (int32_t) ((uint32_t) sm[8 + 2 * i] | ((uint32_t) sm[9 + 2 * i] << 16));
        }
        L->d[r] = _cvtsh_ss(blk->d);
        L->dmin[r] = _cvtsh_ss(blk->dmin);
    }
}

// From a block of the 16-row layout (ts-kernels.h): the quants are already in place (q points
// there); the packed scales are unpacked lane by lane as q4_K_scales_mins does.
static ALWAYS_INLINE const uint32_t (*q4_K_lanes_r16(const char * blk, struct q4_K_lanes * L))[KL_ROWS] {
    const __m512i u0 = _mm512_loadu_si512(blk + 64), u1 = _mm512_loadu_si512(blk + 128), u2 = _mm512_loadu_si512(blk + 192);
    const __m512i k1 = _mm512_set1_epi32(0x3f3f3f3f), k2 = _mm512_set1_epi32(0x0f0f0f0f), k3 = _mm512_set1_epi32(0x03030303);
    const __m512i sc03 = _mm512_and_si512(u0, k1);
    const __m512i sc47 = _mm512_or_si512(_mm512_and_si512(u2, k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k3), 4));
    const __m512i m03  = _mm512_and_si512(u1, k1);
    const __m512i m47  = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k2), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k3), 4));
    const __m512i ff = _mm512_set1_epi32(0xFF), ff16 = _mm512_set1_epi32(0x00FF0000);
    for (int s = 0; s < 4; s++) {
        _mm512_store_si512(L->sc[s],     _mm512_and_si512(_mm512_srli_epi32(sc03, 8 * s), ff));
        _mm512_store_si512(L->sc[4 + s], _mm512_and_si512(_mm512_srli_epi32(sc47, 8 * s), ff));
    }
    // mins 2i, 2i + 1 (bytes 2i % 4, 2i % 4 + 1 of m03 / m47) -> the low and high int16
    _mm512_store_si512(L->mp[0], _mm512_or_si512(_mm512_and_si512(m03, ff), _mm512_and_si512(_mm512_slli_epi32(m03, 8), ff16)));
    _mm512_store_si512(L->mp[1], _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m03, 16), ff), _mm512_and_si512(_mm512_srli_epi32(m03, 8), ff16)));
    _mm512_store_si512(L->mp[2], _mm512_or_si512(_mm512_and_si512(m47, ff), _mm512_and_si512(_mm512_slli_epi32(m47, 8), ff16)));
    _mm512_store_si512(L->mp[3], _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(m47, 16), ff), _mm512_and_si512(_mm512_srli_epi32(m47, 8), ff16)));
    _mm512_store_ps(L->d,    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) blk)));
    _mm512_store_ps(L->dmin, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (blk + 32))));
    return (const uint32_t (*)[KL_ROWS]) (blk + 256);
}

// Per lane (row): the sum over groups g of sc[g] * (the group's quants . the token's activations),
// exact. w[k]: elements 4k .. 4k + 3 of each row (u8); y4[k]: the token's four activations there;
// a group is `per` consecutive dwords (Q4_K: 8 sub-blocks of 32, Q6_K: 16 groups of 16).
static ALWAYS_INLINE __m512i lanes_scaled_sum(const __m512i * w, const int32_t * y4, const int32_t (*sc)[KL_ROWS],
                                              int groups, int per) {
    __m512i T = _mm512_setzero_si512();
    for (int g = 0; g < groups; g++) {
        __m512i S = _mm512_setzero_si512();
        for (int k = 0; k < per; k++) {
            S = _mm512_dpbusd_epi32(S, w[per * g + k], _mm512_set1_epi32(y4[per * g + k]));
        }
        T = _mm512_add_epi32(T, _mm512_mullo_epi32(S, _mm512_load_si512(sc[g])));
    }
    return T;
}

// acc[2 t], acc[2 t + 1]: token t's sum and summ (lanes: rows), updated with super-block b;
// q: the 32 quant vectors (L->q, or in place in the 16-row layout).
static ALWAYS_INLINE void q4_K_lanes_tokens(const struct q4_K_lanes * L, const uint32_t (*q)[KL_ROWS], const char * x,
                                            size_t x_stride, int nt, int64_t b, __m512 * acc) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512i w[64];
    for (int c = 0; c < 4; c++) {
        for (int k = 0; k < 8; k++) {
            const __m512i v = _mm512_loadu_si512(q[8 * c + k]);
            w[16 * c + k]     = _mm512_and_si512(v, low4);                        // elements 64c + 4k ..
            w[16 * c + 8 + k] = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4); // elements 64c + 32 + 4k ..
        }
    }
    const __m512 d = _mm512_load_ps(L->d), dmin = _mm512_load_ps(L->dmin);
    for (int t = 0; t < nt; t++) {
        const ts_block_q8_K * xb = (const ts_block_q8_K *) (x + (size_t) t * x_stride) + b;
        const __m512i T = lanes_scaled_sum(w, (const int32_t *) xb->qs, L->sc, 8, 8);
        // the activations' sub-block sums in int16 pairs (|sum| <= 4096)
        int32_t yp[4];
        for (int i = 0; i < 4; i++) {
            const int32_t s0 = xb->bsums[4 * i] + xb->bsums[4 * i + 1], s1 = xb->bsums[4 * i + 2] + xb->bsums[4 * i + 3];
            yp[i] = (int32_t) ((uint32_t) (uint16_t) (int16_t) s0 | ((uint32_t) (uint16_t) (int16_t) s1 << 16));
        }
        __m512i M = _mm512_setzero_si512();
        for (int i = 0; i < 4; i++) {
            M = _mm512_dpwssd_epi32(M, _mm512_load_si512(L->mp[i]), _mm512_set1_epi32(yp[i]));
        }
        const __m512 xd = _mm512_set1_ps(xb->d);
        acc[2 * t]     = _mm512_fmadd_ps(_mm512_cvtepi32_ps(T), _mm512_mul_ps(xd, d), acc[2 * t]);
        acc[2 * t + 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), _mm512_mul_ps(xd, dmin), acc[2 * t + 1]);
    }
}

// Q6_K the same way, from plain rows only. The block's bytes before d are whole dwords (ql:
// 0-31, qh: 32-47, scales: 48-51): lane r of q[v] is row r's dword v. Unpacked, w[k] holds
// elements 4k .. 4k + 3 of each lane's row as u8 (0..63): for half h and dword u < 8 of it, ql
// dwords 16h + u and 16h + 8 + u and qh dword 8h + u give elements 128h + 4u (+ 32, + 64, + 96)
// (ts_q6_K_quant). Then per token, per 16-element group s: S = the sum of 4 dpbusd,
// T += sc_s * S, and T -= 32 * the sum of sc_s * bsum_s (dpwssd on int16 pairs): dot_q6_K's T.
// (Unpacking a block costs about as much as one token's products, so decode keeps dot_q6_K.)
struct q6_K_lanes {
    _Alignas(64) uint32_t q[52][KL_ROWS];
    _Alignas(64) int32_t  sc[16][KL_ROWS]; // the 16 group scales, sign-extended
    _Alignas(64) int32_t  sp[8][KL_ROWS];  // scales 2i and 2i + 1 as two int16
    _Alignas(64) float    d[KL_ROWS];
};

// From 16 plain rows (a gathered list: transposed here).
static void q6_K_lanes_fill(const char * const * rows, int64_t b, struct q6_K_lanes * L) {
    for (int r = 0; r < KL_ROWS; r++) {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) rows[r] + b;
        uint32_t qd[52];
        memcpy(qd, blk, sizeof(qd));
        for (int dw = 0; dw < 52; dw++) {
            L->q[dw][r] = qd[dw];
        }
        L->d[r] = _cvtsh_ss(blk->d);
    }
    for (int s = 0; s < 16; s++) { // the scale dwords q[48 .. 51], sign-extended
        const __m512i v = _mm512_load_si512(L->q[48 + s / 4]);
        _mm512_store_si512(L->sc[s], _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * (s % 4)), 24));
    }
    const __m512i lo16 = _mm512_set1_epi32(0xFFFF);
    for (int i = 0; i < 8; i++) {
        _mm512_store_si512(L->sp[i], _mm512_or_si512(_mm512_and_si512(_mm512_load_si512(L->sc[2 * i]), lo16),
                                                      _mm512_slli_epi32(_mm512_load_si512(L->sc[2 * i + 1]), 16)));
    }
}

// acc[2 t]: token t's sum (lanes: rows), updated with super-block b (acc[2 t + 1] stays 0).
static ALWAYS_INLINE void q6_K_lanes_tokens(const struct q6_K_lanes * L, const char * x, size_t x_stride, int nt,
                                            int64_t b, __m512 * acc) {
    const uint32_t (*q)[KL_ROWS] = L->q;
    const __m512i low4 = _mm512_set1_epi8(0x0F), hi2 = _mm512_set1_epi8(0x30);
    __m512i w[64];
    for (int h = 0; h < 2; h++) {
        for (int u = 0; u < 8; u++) {
            const __m512i la = _mm512_loadu_si512(q[16 * h + u]), lb = _mm512_loadu_si512(q[16 * h + 8 + u]);
            const __m512i qh = _mm512_loadu_si512(q[32 + 8 * h + u]);
            w[32 * h + u]      = _mm512_or_si512(_mm512_and_si512(la, low4), _mm512_and_si512(_mm512_slli_epi32(qh, 4), hi2));
            w[32 * h + 8 + u]  = _mm512_or_si512(_mm512_and_si512(lb, low4), _mm512_and_si512(_mm512_slli_epi32(qh, 2), hi2));
            w[32 * h + 16 + u] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(la, 4), low4), _mm512_and_si512(qh, hi2));
            w[32 * h + 24 + u] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(lb, 4), low4),
                                                 _mm512_and_si512(_mm512_srli_epi32(qh, 2), hi2));
        }
    }
    const __m512 d = _mm512_load_ps(L->d);
    for (int t = 0; t < nt; t++) {
        const ts_block_q8_K * xb = (const ts_block_q8_K *) (x + (size_t) t * x_stride) + b;
        const int32_t * yp = (const int32_t *) xb->bsums; // bsums 2i and 2i + 1 as two int16
        __m512i T = lanes_scaled_sum(w, (const int32_t *) xb->qs, L->sc, 16, 4);
        __m512i B = _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) {
            B = _mm512_dpwssd_epi32(B, _mm512_load_si512(L->sp[i]), _mm512_set1_epi32(yp[i]));
        }
        T = _mm512_sub_epi32(T, _mm512_slli_epi32(B, 5));
        acc[2 * t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(T), _mm512_mul_ps(_mm512_set1_ps(xb->d), d), acc[2 * t]);
    }
}

// Rows of a gathered list (or dense, idx NULL) in groups of 16, or whole groups of a matrix in
// the 16-row layout (w16, rows NULL): either way the same lane steps, so the same bits. Each
// lane's result is acc[2 t] - acc[2 t + 1] (Q6_K: - 0, which changes no bit).
static ALWAYS_INLINE void rows_lanes(enum ts_type type, int64_t n, const void * w, size_t row_bytes, const char * w16,
                                     const char * x, size_t x_stride, int64_t n_tok, const int32_t * idx,
                                     int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t nb = n / TS_QK_K;
    const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);
    const size_t group_bytes = (size_t) nb * KL_ROWS * bs;
    union { struct q4_K_lanes q4; struct q6_K_lanes q6; } L; // the type's unpacked super-block
    __m512 acc[2 * KL_TOK];
    for (int64_t j0 = 0; j0 < n_idx; j0 += KL_ROWS) {
        const int nr = (int) (n_idx - j0 < KL_ROWS ? n_idx - j0 : KL_ROWS);
        const char * rows[KL_ROWS]; // the last real row repeats in the lanes past nr
        const char * grp = w16 ? w16 + (size_t) (j0 / KL_ROWS) * group_bytes : NULL;
        if (!w16) {
            for (int r = 0; r < KL_ROWS; r++) {
                const int64_t j = j0 + (r < nr ? r : nr - 1);
                rows[r] = (const char *) w + (size_t) (idx ? idx[j] : j) * row_bytes;
            }
        }
        for (int64_t t0 = 0; t0 < n_tok; t0 += KL_TOK) {
            const int nt = (int) (n_tok - t0 < KL_TOK ? n_tok - t0 : KL_TOK);
            for (int i = 0; i < 2 * nt; i++) {
                acc[i] = _mm512_setzero_ps();
            }
            const char * xt = x + (size_t) t0 * x_stride;
            for (int64_t b = 0; b < nb; b++) {
                const char * blk = NULL;
                if (w16) {
                    blk = grp + (size_t) b * KL_ROWS * bs;
                    r16_prefetch(blk, KL_ROWS * bs);
                } else if (b + 1 < nb) {
                    prefetch_span(KL_ROWS, rows, (size_t) (b + 1) * bs, bs);
                }
                if (type == TS_TYPE_Q4_K) {
                    if (!blk) q4_K_lanes_fill(rows, b, &L.q4);
                    q4_K_lanes_tokens(&L.q4, blk ? q4_K_lanes_r16(blk, &L.q4) : (const uint32_t (*)[KL_ROWS]) L.q4.q,
                                      xt, x_stride, nt, b, acc);
                } else { // plain rows only (Q6_K has no 16-row layout)
                    q6_K_lanes_fill(rows, b, &L.q6);
                    q6_K_lanes_tokens(&L.q6, xt, x_stride, nt, b, acc);
                }
            }
            const __mmask16 m = (__mmask16) ((1u << nr) - 1);
            for (int t = 0; t < nt; t++) {
                _mm512_mask_storeu_ps(out + (t0 + t) * out_stride + j0, m, _mm512_sub_ps(acc[2 * t], acc[2 * t + 1]));
            }
        }
    }
}

static void rows_q4_K(int64_t n, const void * w, size_t row_bytes, const char * w16, const char * x, size_t x_stride,
                      int64_t n_tok, const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    rows_lanes(TS_TYPE_Q4_K, n, w, row_bytes, w16, x, x_stride, n_tok, idx, n_idx, out, out_stride);
}

static void rows_q6_K(int64_t n, const void * w, size_t row_bytes, const char * x, size_t x_stride,
                      int64_t n_tok, const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    rows_lanes(TS_TYPE_Q6_K, n, w, row_bytes, NULL, x, x_stride, n_tok, idx, n_idx, out, out_stride);
}

// Groups [g0, g1) of a Q4_K matrix in the 16-row layout (the table's dot_rows_r16 for Q4_K).
void TS_KQ(dot_rows_r16)(int64_t n, const void * w16, int64_t g0, int64_t g1, const void * x, size_t x_stride,
                         int64_t n_tok, float * out, int64_t out_stride) {
    const size_t group_bytes = (size_t) (n / TS_QK_K) * KL_ROWS * sizeof(ts_block_q4_K);
    if (g1 > g0) {
        rows_q4_K(n, NULL, 0, (const char *) w16 + (size_t) g0 * group_bytes, x, x_stride, n_tok, NULL,
                  (g1 - g0) * KL_ROWS, out, out_stride);
    }
}

void TS_KQ(dot_rows_batch)(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    if (n_idx <= 0) {
        return;
    }
    if (type == TS_TYPE_Q4_K) {
        rows_q4_K(n, w, row_bytes, NULL, (const char *) x, x_stride, n_tok, idx, n_idx, out, out_stride);
    } else {
        rows_q6_K(n, w, row_bytes, (const char *) x, x_stride, n_tok, idx, n_idx, out, out_stride);
    }
}

// ---- down projection of a batch of tokens ---------------------------------------------------
// axpy_kq for one token at a time unpacks a row's 64-column unit and computes its sub-block
// scalars for every token. Here a chunk of KA_ROWS rows meets every token: per super-block the
// rows' exact products d * sc (and dmin * m) once; per 64-column unit each row's quants are
// unpacked once per tile of KA_TOK tokens, whose 4 x KA_TOK accumulators stay in registers
// over the chunk's rows. Every y_t[c] still gets axpy_kq's FMA chain in row order (a_t[j] times
// the exact products is axpy_kq's scalar), chunk after chunk: axpy_rows' bits per token.
#define KA_ROWS 64
#define KA_TOK  4

static ALWAYS_INLINE void axpy_kq_tile(enum ts_type type, int TT, const char * const * rows, int nj,
                                       const float (*ds)[16], const float (*dm)[8], const float * a, int64_t a_stride,
                                       int64_t c, float * y, int64_t y_stride) {
    const int u = (int) (c % TS_QK_K) / 64;
    __m512 yv[KA_TOK][4];
    for (int t = 0; t < TT; t++) {
        for (int v = 0; v < 4; v++) {
            yv[t][v] = _mm512_loadu_ps(y + t * y_stride + c + 16 * v);
        }
    }
    for (int j = 0; j < nj; j++) {
        __m512 w[4];
        unit_quants(type, rows[j], c, w);
        for (int t = 0; t < TT; t++) {
            const float at = a[t * a_stride + j];
            for (int v = 0; v < 4; v++) {
                if (type == TS_TYPE_Q4_K) {
                    const int i = 2 * u + v / 2;
                    yv[t][v] = _mm512_fmadd_ps(_mm512_set1_ps(at * ds[j][i]), w[v],
                                               _mm512_sub_ps(yv[t][v], _mm512_set1_ps(at * dm[j][i])));
                } else {
                    yv[t][v] = _mm512_fmadd_ps(_mm512_set1_ps(at * ds[j][4 * u + v]), w[v], yv[t][v]);
                }
            }
        }
    }
    for (int t = 0; t < TT; t++) {
        for (int v = 0; v < 4; v++) {
            _mm512_storeu_ps(y + t * y_stride + c + 16 * v, yv[t][v]);
        }
    }
}

#define KA_TILE_CASE(T_, TT_) \
    case TT_: axpy_kq_tile(T_, TT_, rows, nj, ds, dm, a + t0 * a_stride + j0, a_stride, c, y + t0 * y_stride, y_stride); break;
#define KA_TILE(T_)                                                                  \
    switch (TT) {                                                                    \
        KA_TILE_CASE(T_, 4) KA_TILE_CASE(T_, 3) KA_TILE_CASE(T_, 2)                  \
        default: axpy_kq_tile(T_, 1, rows, nj, ds, dm, a + t0 * a_stride + j0, a_stride, c, y + t0 * y_stride, y_stride); break; \
    }

void TS_KQ(axpy_rows_batch)(enum ts_type type, const void * w_t, size_t row_bytes, const int32_t * idx,
                            const float * a, int64_t a_stride, int64_t n_idx, int64_t n_tok,
                            int64_t c0, int64_t c1, float * y, int64_t y_stride) {
    if (c1 <= c0) {
        return;
    }
    for (int64_t t = 0; t < n_tok; t++) {
        memset(y + t * y_stride + c0, 0, (size_t) (c1 - c0) * sizeof(float));
    }
    const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);
    float ds[KA_ROWS][16], dm[KA_ROWS][8];
    const char * rows[KA_ROWS];
    for (int64_t j0 = 0; j0 < n_idx; j0 += KA_ROWS) {
        const int nj = (int) (n_idx - j0 < KA_ROWS ? n_idx - j0 : KA_ROWS);
        for (int j = 0; j < nj; j++) {
            rows[j] = ts_kq_row(w_t, row_bytes, idx, j0 + j);
        }
        for (int64_t b = c0 / TS_QK_K; b * TS_QK_K < c1; b++) {
            // the chunk's next super-block (its rows are row_bytes apart: a stride the hardware
            // prefetcher follows poorly)
            if ((b + 1) * TS_QK_K < c1) {
                prefetch_span(nj, rows, (size_t) (b + 1) * bs, bs);
            }
            for (int j = 0; j < nj; j++) {
                kq_block_scales(type, rows[j], b, 1.0f, ds[j], dm[j]);
            }
            const int64_t cs = b * TS_QK_K > c0 ? b * TS_QK_K : c0;
            const int64_t ce = (b + 1) * TS_QK_K < c1 ? (b + 1) * TS_QK_K : c1;
            for (int64_t c = cs; c < ce; c += 64) {
                for (int64_t t0 = 0; t0 < n_tok; t0 += KA_TOK) {
                    const int TT = (int) (n_tok - t0 < KA_TOK ? n_tok - t0 : KA_TOK);
                    if (type == TS_TYPE_Q4_K) {
                        KA_TILE(TS_TYPE_Q4_K)
                    } else {
                        KA_TILE(TS_TYPE_Q6_K)
                    }
                }
            }
        }
    }
}
