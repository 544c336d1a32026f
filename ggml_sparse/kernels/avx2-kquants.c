// avx2-kquants.c: the AVX2 (+FMA, F16C) K-quant primitives (kquant-group.h) for Q4_K and
// Q6_K rows; compiled with avx2.c's flags, used by its table through simd-drivers.h.
// The same steps as avx512-kquants.c on 32-byte vectors: quants (u8) times activations (s8)
// in exact 16-bit pairs (maddubs), times the sub-block scales into 32-bit sums (madd), one
// f32 multiply-add per super-block and row.
#include "ts-kernels.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define TS_KQ(name) ts_avx2_kq_##name
#include "kquant-group.h"
#include "x86-helpers.h"


// Q4_K's eight scales (bytes 0-7) and mins (bytes 8-15), as ts_q4_K_scale_min.
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

// Words w and w + 1 of a vector of eight words, each broadcast over one 128-bit half.
static ALWAYS_INLINE __m256i pair_words(__m128i words, int w) {
    const __m128i lo = _mm_shuffle_epi8(words, _mm_set1_epi16((short) (0x0100 + 0x0202 * w)));
    const __m128i hi = _mm_shuffle_epi8(words, _mm_set1_epi16((short) (0x0100 + 0x0202 * (w + 1))));
    return _mm256_set_m128i(hi, lo);
}

static ALWAYS_INLINE void dot_q4_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 accd[4], accm[4];
    for (int r = 0; r < R; r++) {
        accd[r] = _mm256_setzero_ps();
        accm[r] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q4_K), sizeof(ts_block_q4_K));
        const ts_block_q8_K * xb = x + b;
        const __m256i ysub = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) xb->bsums), _mm256_set1_epi16(1));
        for (int r = 0; r < R; r++) {
            const ts_block_q4_K * blk = (const ts_block_q4_K *) rows[r] + b;
            const __m128i sm = q4_K_scales_mins(blk->scales);
            const __m128i sc16 = _mm_cvtepu8_epi16(sm);
            __m256i acc = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *) (blk->qs + 32 * c));
                const __m256i y0 = _mm256_loadu_si256((const __m256i *) (xb->qs + 64 * c));
                const __m256i y1 = _mm256_loadu_si256((const __m256i *) (xb->qs + 64 * c + 32));
                const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(q, low4), y0);
                const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), y1);
                // sub-block 2c's 16 pair sums, then 2c+1's: one scale each
                const __m256i sc = pair_words(sc16, 2 * c); // lo half: sc[2c], hi half: sc[2c+1]
                const __m256i s0 = _mm256_permute2x128_si256(sc, sc, 0x00);
                const __m256i s1 = _mm256_permute2x128_si256(sc, sc, 0x11);
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
            }
            const __m256i mins = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
            const float dd = xb->d * _cvtsh_ss(blk->d), dm = xb->d * _cvtsh_ss(blk->dmin);
            accd[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(dd), accd[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(mins, ysub)), _mm256_set1_ps(dm), accm[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = hsum256(accd[r]) - hsum256(accm[r]);
    }
}

static ALWAYS_INLINE void dot_q6_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i hi2  = _mm256_set1_epi8(0x30);
    __m256 accd[4], accb[4];
    for (int r = 0; r < R; r++) {
        accd[r] = _mm256_setzero_ps();
        accb[r] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        prefetch_span(R, next, (size_t) b * sizeof(ts_block_q6_K), sizeof(ts_block_q6_K));
        const ts_block_q8_K * xb = x + b;
        const __m256i bsums = _mm256_loadu_si256((const __m256i *) xb->bsums);
        for (int r = 0; r < R; r++) {
            const ts_block_q6_K * blk = (const ts_block_q6_K *) rows[r] + b;
            const __m128i sc8 = _mm_loadu_si128((const __m128i *) blk->scales);
            const __m128i sc_lo = _mm_cvtepi8_epi16(sc8), sc_hi = _mm_cvtepi8_epi16(_mm_srli_si128(sc8, 8));
            __m256i acc = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                const __m256i L0 = _mm256_loadu_si256((const __m256i *) (blk->ql + 64 * h));
                const __m256i L1 = _mm256_loadu_si256((const __m256i *) (blk->ql + 64 * h + 32));
                const __m256i H  = _mm256_loadu_si256((const __m256i *) (blk->qh + 32 * h));
                __m256i w[4];
                w[0] = _mm256_or_si256(_mm256_and_si256(L0, low4), _mm256_and_si256(_mm256_slli_epi16(H, 4), hi2));
                w[1] = _mm256_or_si256(_mm256_and_si256(L1, low4), _mm256_and_si256(_mm256_slli_epi16(H, 2), hi2));
                w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), low4), _mm256_and_si256(H, hi2));
                w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), low4),
                                       _mm256_and_si256(_mm256_srli_epi16(H, 2), hi2));
                for (int k = 0; k < 4; k++) {
                    const __m256i y = _mm256_loadu_si256((const __m256i *) (xb->qs + 128 * h + 32 * k));
                    const int g = 8 * h + 2 * k; // the 32 quants are groups g and g + 1
                    const __m256i sc = pair_words(g < 8 ? sc_lo : sc_hi, g % 8);
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w[k], y), sc));
                }
            }
            const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(bsums, _mm256_set_m128i(sc_hi, sc_lo)), 5);
            const float dd = xb->d * _cvtsh_ss(blk->d);
            accd[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(dd), accd[r]);
            accb[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bias), _mm256_set1_ps(dd), accb[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = hsum256(accd[r]) - hsum256(accb[r]);
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

static ALWAYS_INLINE __m256 u8x8_to_ps(__m128i q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
}

// The unit's 64 quants as floats, in column order (Q6_K: q - 32).
static ALWAYS_INLINE void unit_quants(enum ts_type type, const char * row, int64_t c, __m256 w[8]) {
    const int64_t b = c / TS_QK_K;
    const int e0 = (int) (c % TS_QK_K);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    if (type == TS_TYPE_Q4_K) {
        const uint8_t * qs = ((const ts_block_q4_K *) row + b)->qs + 32 * (e0 / 64);
        for (int v = 0; v < 2; v++) {
            const __m128i q  = _mm_loadu_si128((const __m128i *) (qs + 16 * v));
            const __m128i lo = _mm_and_si128(q, low4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), low4);
            w[2 * v]     = u8x8_to_ps(lo);
            w[2 * v + 1] = u8x8_to_ps(_mm_srli_si128(lo, 8));
            w[4 + 2 * v] = u8x8_to_ps(hi);
            w[5 + 2 * v] = u8x8_to_ps(_mm_srli_si128(hi, 8));
        }
    } else {
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const int h = e0 / 128, p = (e0 % 128) / 64;
        const __m256 m32 = _mm256_set1_ps(32.0f);
        for (int v = 0; v < 4; v++) {
            const __m128i lo = _mm_loadu_si128((const __m128i *) (blk->ql + 64 * h + 16 * v));
            const __m128i hb = _mm_loadu_si128((const __m128i *) (blk->qh + 32 * h + 16 * (v % 2)));
            const __m128i ql = _mm_and_si128(p ? _mm_srli_epi16(lo, 4) : lo, low4);
            const __m128i qh = _mm_and_si128(_mm_srl_epi16(hb, _mm_cvtsi32_si128(4 * p + 2 * (v / 2))), _mm_set1_epi8(3));
            const __m128i q  = _mm_or_si128(ql, _mm_slli_epi16(qh, 4));
            w[2 * v]     = _mm256_sub_ps(u8x8_to_ps(q), m32); // exact
            w[2 * v + 1] = _mm256_sub_ps(u8x8_to_ps(_mm_srli_si128(q, 8)), m32);
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
            __m256 yv[8];
            for (int v = 0; v < 8; v++) {
                yv[v] = _mm256_loadu_ps(y + c + 8 * v);
            }
            for (int r = 0; r < R; r++) {
                const float * sr = s[r];
                const float * mr = m[r];
                __m256 w[8];
                unit_quants(type, rows[r], c, w);
                for (int v = 0; v < 8; v++) {
                    if (type == TS_TYPE_Q4_K) {
                        yv[v] = _mm256_fmadd_ps(_mm256_set1_ps(sr[2 * u + v / 4]), w[v], _mm256_sub_ps(yv[v], _mm256_set1_ps(mr[2 * u + v / 4])));
                    } else {
                        yv[v] = _mm256_fmadd_ps(_mm256_set1_ps(sr[4 * u + v / 2]), w[v], yv[v]);
                    }
                }
            }
            for (int v = 0; v < 8; v++) {
                _mm256_storeu_ps(y + c + 8 * v, yv[v]);
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

// ---- rows x tokens (prompt processing) ----------------------------------------------------------
// As in avx512-kquants.c: dot_q4_K / dot_q6_K unpack every row's quants and scales again for
// each token. Here one row meets a tile of up to KB_TOK tokens: per super-block the row's
// unpacked quant vectors and scale vectors go to a 512-byte scratch in L1 (sixteen registers
// hold no more), then each token takes exactly dot_q4_K's / dot_q6_K's steps for that (row,
// token), reading them from there: the same exact integer sums, the same float accumulations,
// the same final sums. So the batch gives dot_rows' bits. The rows and tokens are walked by
// the row walk below (a block of KB_ROWS rows, chunks of KB_BLKS super-blocks).
#define KB_TOK  4
#define KB_ROWS 16
#define KB_BLKS 4

struct kq_acc {
    __m256 d[KB_TOK]; // dot_q4_K's accd
    __m256 m[KB_TOK]; // Q4_K: accm; Q6_K: accb
};

static ALWAYS_INLINE void tile_q4_K(int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                                    int64_t b0, int64_t b1, struct kq_acc * s) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 accd[KB_TOK], accm[KB_TOK];
    for (int t = 0; t < TT; t++) {
        accd[t] = s->d[t];
        accm[t] = s->m[t];
    }
    _Alignas(32) __m256i w[8], sc[8]; // per chunk c: quants of sub-blocks 2c, 2c+1 and their scales
    for (int64_t b = b0; b < b1; b++) {
        if (next) {
            prefetch_span(1, &next, (size_t) b * sizeof(ts_block_q4_K), sizeof(ts_block_q4_K));
        }
        const ts_block_q4_K * blk = (const ts_block_q4_K *) row + b;
        const __m128i sm = q4_K_scales_mins(blk->scales);
        const __m128i sc16 = _mm_cvtepu8_epi16(sm);
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *) (blk->qs + 32 * c));
            w[2 * c]     = _mm256_and_si256(q, low4);
            w[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            const __m256i p = pair_words(sc16, 2 * c);
            sc[2 * c]     = _mm256_permute2x128_si256(p, p, 0x00);
            sc[2 * c + 1] = _mm256_permute2x128_si256(p, p, 0x11);
        }
        const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)));
        const float d = _cvtsh_ss(blk->d), dmin = _cvtsh_ss(blk->dmin);
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_K * xb = xt[t] + b;
            __m256i acc = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i p0 = _mm256_maddubs_epi16(w[2 * c], _mm256_loadu_si256((const __m256i *) (xb->qs + 64 * c)));
                const __m256i p1 = _mm256_maddubs_epi16(w[2 * c + 1], _mm256_loadu_si256((const __m256i *) (xb->qs + 64 * c + 32)));
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(p0, sc[2 * c]), _mm256_madd_epi16(p1, sc[2 * c + 1])));
            }
            const float dd = xb->d * d, dm = xb->d * dmin;
            accd[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(dd), accd[t]);
            // the activations' sub-block sums (exact as floats); times the mins as floats (exact,
            // < 2^24) they equal dot_q4_K's converted integer products mins * ysub
            const __m256 ysub = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) xb->bsums),
                                                                     _mm256_set1_epi16(1)));
            accm[t] = _mm256_fmadd_ps(_mm256_mul_ps(mins, ysub), _mm256_set1_ps(dm), accm[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        s->d[t] = accd[t];
        s->m[t] = accm[t];
    }
}

static ALWAYS_INLINE void tile_q6_K(int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                                    int64_t b0, int64_t b1, struct kq_acc * s) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i hi2  = _mm256_set1_epi8(0x30);
    __m256 accd[KB_TOK], accb[KB_TOK];
    for (int t = 0; t < TT; t++) {
        accd[t] = s->d[t];
        accb[t] = s->m[t];
    }
    _Alignas(32) __m256i w[8], sc[8]; // per half h and quarter k: the 32 quants (groups 8h + 2k, + 1) and their scales
    for (int64_t b = b0; b < b1; b++) {
        if (next) {
            prefetch_span(1, &next, (size_t) b * sizeof(ts_block_q6_K), sizeof(ts_block_q6_K));
        }
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const __m128i sc8 = _mm_loadu_si128((const __m128i *) blk->scales);
        const __m128i sc_lo = _mm_cvtepi8_epi16(sc8), sc_hi = _mm_cvtepi8_epi16(_mm_srli_si128(sc8, 8));
        for (int h = 0; h < 2; h++) {
            const __m256i L0 = _mm256_loadu_si256((const __m256i *) (blk->ql + 64 * h));
            const __m256i L1 = _mm256_loadu_si256((const __m256i *) (blk->ql + 64 * h + 32));
            const __m256i H  = _mm256_loadu_si256((const __m256i *) (blk->qh + 32 * h));
            w[4 * h]     = _mm256_or_si256(_mm256_and_si256(L0, low4), _mm256_and_si256(_mm256_slli_epi16(H, 4), hi2));
            w[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(L1, low4), _mm256_and_si256(_mm256_slli_epi16(H, 2), hi2));
            w[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), low4), _mm256_and_si256(H, hi2));
            w[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), low4),
                                           _mm256_and_si256(_mm256_srli_epi16(H, 2), hi2));
            for (int k = 0; k < 4; k++) {
                const int g = 8 * h + 2 * k;
                sc[4 * h + k] = pair_words(g < 8 ? sc_lo : sc_hi, g % 8);
            }
        }
        const __m256i sc_all = _mm256_set_m128i(sc_hi, sc_lo);
        const float d = _cvtsh_ss(blk->d);
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_K * xb = xt[t] + b;
            __m256i acc = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                for (int k = 0; k < 4; k++) {
                    const __m256i y = _mm256_loadu_si256((const __m256i *) (xb->qs + 128 * h + 32 * k));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w[4 * h + k], y), sc[4 * h + k]));
                }
            }
            const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) xb->bsums), sc_all), 5);
            const float dd = xb->d * d;
            accd[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(dd), accd[t]);
            accb[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bias), _mm256_set1_ps(dd), accb[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        s->d[t] = accd[t];
        s->m[t] = accb[t];
    }
}

#define KB_TILE_CASE(FN, TT_, ...) case TT_: FN(TT_, __VA_ARGS__); break;
#define KB_TILE(FN, ...)                                                                                   \
    switch (TT) {                                                                                          \
        KB_TILE_CASE(FN, 4, __VA_ARGS__) KB_TILE_CASE(FN, 3, __VA_ARGS__) KB_TILE_CASE(FN, 2, __VA_ARGS__) \
        default: FN(1, __VA_ARGS__); break;                                                                \
    }

static void tile_kq(enum ts_type type, int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                    int64_t b0, int64_t b1, struct kq_acc * s) {
    if (type == TS_TYPE_Q4_K) {
        KB_TILE(tile_q4_K, row, next, xt, b0, b1, s)
    } else {
        KB_TILE(tile_q6_K, row, next, xt, b0, b1, s)
    }
}

// What the first token tile prefetches while it reads super-blocks [b0, b1) of entry j0 + j of a
// block of nr entries: the block's next row, after the last row the first row's next chunk, then
// the next block's start, as a pointer offset so that the tile's block offsets b * bs
// (b0 <= b < b1) land there; NULL at the end of the list. nb: super-blocks per row.
static const char * walk_next(const void * w, size_t row_bytes, const int32_t * idx, int64_t n_idx,
                              int64_t j0, int nr, int j, int64_t b0, int64_t b1, int64_t nb, size_t bs) {
    if (j + 1 < nr) {
        return ts_kq_row(w, row_bytes, idx, j0 + j + 1);
    }
    if (b1 < nb) {
        return ts_kq_row(w, row_bytes, idx, j0) + (size_t) (b1 - b0) * bs;
    }
    if (j0 + nr < n_idx) {
        return ts_kq_row(w, row_bytes, idx, j0 + nr) - (size_t) b0 * bs;
    }
    return NULL;
}

// The row walk: blocks of KB_ROWS list entries meet tiles of up to KB_TOK tokens chunk by chunk
// (KB_BLKS super-blocks): the tile's activations of the chunk stay in L1 while the block's rows
// stream through it, from memory for the first token tile (which prefetches what it reads next)
// and from L2 for the others; each entry's accumulators (zeroed per token tile) live in memory
// between chunks.
void TS_KQ(dot_rows_batch)(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t nb = n / TS_QK_K;
    const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);
    struct kq_acc acc[KB_ROWS];
    for (int64_t j0 = 0; j0 < n_idx; j0 += KB_ROWS) {
        const int nr = (int) (n_idx - j0 < KB_ROWS ? n_idx - j0 : KB_ROWS);
        for (int64_t t0 = 0; t0 < n_tok; t0 += KB_TOK) {
            const int TT = (int) (n_tok - t0 < KB_TOK ? n_tok - t0 : KB_TOK);
            const ts_block_q8_K * xt[KB_TOK];
            for (int t = 0; t < TT; t++) {
                xt[t] = (const ts_block_q8_K *) ((const char *) x + (size_t) (t0 + t) * x_stride);
            }
            memset(acc, 0, sizeof(acc));
            for (int64_t b0 = 0; b0 < nb; b0 += KB_BLKS) {
                const int64_t b1 = b0 + KB_BLKS < nb ? b0 + KB_BLKS : nb;
                for (int j = 0; j < nr; j++) {
                    const char * next = t0 == 0 ? walk_next(w, row_bytes, idx, n_idx, j0, nr, j, b0, b1, nb, bs) : NULL;
                    tile_kq(type, TT, ts_kq_row(w, row_bytes, idx, j0 + j), next, xt, b0, b1, &acc[j]);
                }
            }
            for (int j = 0; j < nr; j++) {
                for (int t = 0; t < TT; t++) {
                    out[(t0 + t) * out_stride + j0 + j] = hsum256(acc[j].d[t]) - hsum256(acc[j].m[t]);
                }
            }
        }
    }
}
