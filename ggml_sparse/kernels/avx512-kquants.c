// avx512-kquants.c: the AVX-512 (BW, VNNI) K-quant primitives (kquant-group.h) for Q4_K and
// Q6_K rows; compiled with avx512.c's flags, used by its table through simd-drivers.h.
//
// Dot products follow ggml's vec_dot_q4_K_q8_K / vec_dot_q6_K_q8_K: per super-block, the
// quants (u8) times the activations (s8) in 16-bit pairs (maddubs, exact: |pair| < 2^15),
// then the 16-bit sub-block scales in one dpwssd, into an exact 32-bit sum; Q6_K's -32 and
// Q4_K's mins meet the activations' 16-element sums (bsums). Then one f32 multiply-add per
// super-block and row (Q4_K: two).
// Batches of tokens (prompt processing) get their own loops at the end of the file: the same
// steps per (row, token), with each row's quants unpacked once per tile of tokens.
#include "ts-kernels.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define TS_KQ(name) ts_avx512_kq_##name
#include "kquant-group.h"

static ALWAYS_INLINE void prefetch_span(int R, const char * const * next, size_t off, size_t bytes) {
    for (int r = 0; r < R; r++) {
        for (size_t o = 0; o < bytes; o += 64) {
            _mm_prefetch(next[r] + off + o, _MM_HINT_T0);
        }
    }
}

static ALWAYS_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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

static ALWAYS_INLINE void dot_q4_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512 accd[4];
    __m256 accm[4];
    for (int r = 0; r < R; r++) {
        accd[r] = _mm512_setzero_ps();
        accm[r] = _mm256_setzero_ps();
    }
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
            const float dd = xb->d * _cvtsh_ss(blk->d), dm = xb->d * _cvtsh_ss(blk->dmin);
            accd[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(dd), accd[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(mins, ysub)), _mm256_set1_ps(dm), accm[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = _mm512_reduce_add_ps(accd[r]) - hsum256(accm[r]);
    }
}

static ALWAYS_INLINE void dot_q6_K(int R, const char * const * rows, const char * const * next,
                                   int64_t n, const ts_block_q8_K * x, float * out) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i hi2  = _mm512_set1_epi8(0x30);
    __m512 accd[4];
    __m256 accb[4];
    for (int r = 0; r < R; r++) {
        accd[r] = _mm512_setzero_ps();
        accb[r] = _mm256_setzero_ps();
    }
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
            // the -32 of every quant: 32 * sum over groups of scale * bsum (exact)
            const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
            const float dd = xb->d * _cvtsh_ss(blk->d);
            accd[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(dd), accd[r]);
            accb[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bias), _mm256_set1_ps(dd), accb[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        out[r] = _mm512_reduce_add_ps(accd[r]) - hsum256(accb[r]);
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

// ---- rows x tokens (prompt processing) ----------------------------------------------------------
// dot_q4_K / dot_q6_K meet one token per call, so every token unpacks every row's quants and
// scales again (two thirds of the work of a step). Here a tile is one row against up to KB_TOK
// tokens: per super-block the row is unpacked once, then each token takes exactly the steps
// dot_q4_K / dot_q6_K take for that (row, token): the same exact integer sum, the same two float
// accumulations in block order, the same final reduction. So the batch gives dot_rows' bits.
// Loop order as the float batch kernels' (avx512.c): a block of KB_ROWS rows meets each tile of
// tokens chunk by chunk (KB_BLKS super-blocks): the tile's activations of the chunk (7 KB) stay
// in L1 while the block's rows stream through it, from memory for the first token tile (which
// prefetches the row read next) and from L2 for the others; each (row, token) pair's two
// accumulators live in memory between chunks (9 KB for the block).
#define KB_TOK  6
#define KB_ROWS 16
#define KB_BLKS 4

struct kq_acc {
    __m512 d[KB_TOK]; // the scaled integer sums, as dot_q4_K's accd
    __m256 m[KB_TOK]; // Q4_K: the mins' part (accm); Q6_K: the -32 part (accb)
};

// ysub: per token and super-block of the chunk, the activations' eight sub-block sums as floats
// (exact: |sum| <= 32 * 128); times the mins as floats, exact too (< 2^24), they give dot_q4_K's
// converted integer products mins * ysub.
static ALWAYS_INLINE void tile_q4_K(int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                                    const __m256 * ysub, int64_t b0, int64_t b1, struct kq_acc * s) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512 accd[KB_TOK];
    __m256 accm[KB_TOK];
    for (int t = 0; t < TT; t++) {
        accd[t] = s->d[t];
        accm[t] = s->m[t];
    }
    for (int64_t b = b0; b < b1; b++) {
        if (next) {
            prefetch_span(1, &next, (size_t) b * sizeof(ts_block_q4_K), sizeof(ts_block_q4_K));
        }
        const ts_block_q4_K * blk = (const ts_block_q4_K *) row + b;
        const __m128i sm = q4_K_scales_mins(blk->scales);
        const __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
        __m512i w[4], sc[4];
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *) (blk->qs + 32 * c));
            w[c] = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), low4);
            const __m512i pick = _mm512_inserti64x4(_mm512_set1_epi16((short) (2 * c)), _mm256_set1_epi16((short) (2 * c + 1)), 1);
            sc[c] = _mm512_permutexvar_epi16(pick, sc16);
        }
        const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)));
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(blk->d));
        const __m256 dmin = _mm256_set1_ps(_cvtsh_ss(blk->dmin));
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_K * xb = xt[t] + b;
            __m512i acc = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w[c], _mm512_loadu_si512(xb->qs + 64 * c)), sc[c]);
            }
            // dot_q4_K's scalars xb->d * d and xb->d * dmin, as vectors (the same products)
            const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(xb->d));
            const __m256 dm = _mm256_mul_ps(dmin, _mm256_set1_ps(xb->d));
            accd[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), dd, accd[t]);
            accm[t] = _mm256_fmadd_ps(_mm256_mul_ps(mins, ysub[t * KB_BLKS + (b - b0)]), dm, accm[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        s->d[t] = accd[t];
        s->m[t] = accm[t];
    }
}

static ALWAYS_INLINE void tile_q6_K(int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                                    int64_t b0, int64_t b1, struct kq_acc * s) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i hi2  = _mm512_set1_epi8(0x30);
    __m512 accd[KB_TOK];
    __m256 accb[KB_TOK];
    for (int t = 0; t < TT; t++) {
        accd[t] = s->d[t];
        accb[t] = s->m[t];
    }
    for (int64_t b = b0; b < b1; b++) {
        if (next) {
            prefetch_span(1, &next, (size_t) b * sizeof(ts_block_q6_K), sizeof(ts_block_q6_K));
        }
        const ts_block_q6_K * blk = (const ts_block_q6_K *) row + b;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) blk->scales));
        const __m512i sc512 = _mm512_castsi256_si512(sc16);
        __m512i w[4], sc[4];
        for (int h = 0; h < 2; h++) {
            const __m512i L = _mm512_loadu_si512(blk->ql + 64 * h);
            const __m256i H = _mm256_loadu_si256((const __m256i *) (blk->qh + 32 * h));
            const __m512i H2 = _mm512_inserti64x4(_mm512_castsi256_si512(H), _mm256_srli_epi16(H, 2), 1);
            w[2 * h]     = _mm512_or_si512(_mm512_and_si512(L, low4), _mm512_and_si512(_mm512_slli_epi16(H2, 4), hi2));
            w[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), low4), _mm512_and_si512(H2, hi2));
        }
        for (int k = 0; k < 4; k++) {
            const __m512i pick = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16((short) (4 * k + 1)), _mm_set1_epi16((short) (4 * k)))),
                _mm256_set_m128i(_mm_set1_epi16((short) (4 * k + 3)), _mm_set1_epi16((short) (4 * k + 2))), 1);
            sc[k] = _mm512_permutexvar_epi16(pick, sc512);
        }
        const float d = _cvtsh_ss(blk->d);
        for (int t = 0; t < TT; t++) {
            const ts_block_q8_K * xb = xt[t] + b;
            __m512i acc = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w[k], _mm512_loadu_si512(xb->qs + 64 * k)), sc[k]);
            }
            const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) xb->bsums), sc16), 5);
            const float dd = xb->d * d;
            accd[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(dd), accd[t]);
            accb[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bias), _mm256_set1_ps(dd), accb[t]);
        }
    }
    for (int t = 0; t < TT; t++) {
        s->d[t] = accd[t];
        s->m[t] = accb[t];
    }
}

#define KB_TILE_CASE(FN, TT_, ...) case TT_: FN(TT_, __VA_ARGS__); break;
#define KB_TILE(FN, ...)                                                                                     \
    switch (TT) {                                                                                            \
        KB_TILE_CASE(FN, 6, __VA_ARGS__) KB_TILE_CASE(FN, 5, __VA_ARGS__) KB_TILE_CASE(FN, 4, __VA_ARGS__)   \
        KB_TILE_CASE(FN, 3, __VA_ARGS__) KB_TILE_CASE(FN, 2, __VA_ARGS__) default: FN(1, __VA_ARGS__); break; \
    }

static void tile_kq(enum ts_type type, int TT, const char * row, const char * next, const ts_block_q8_K * const * xt,
                    const __m256 * ysub, int64_t b0, int64_t b1, struct kq_acc * s) {
    if (type == TS_TYPE_Q4_K) {
        KB_TILE(tile_q4_K, row, next, xt, ysub, b0, b1, s)
    } else {
        KB_TILE(tile_q6_K, row, next, xt, b0, b1, s)
    }
}

static ALWAYS_INLINE const char * kb_row(const void * w, size_t row_bytes, const int32_t * idx, int64_t j) {
    return (const char *) w + (size_t) (idx ? idx[j] : j) * row_bytes;
}

void TS_KQ(dot_rows_batch)(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    const int64_t nb = n / TS_QK_K;
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
                __m256 ysub[KB_TOK * KB_BLKS];
                if (type == TS_TYPE_Q4_K) {
                    for (int t = 0; t < TT; t++) {
                        for (int64_t b = b0; b < b1; b++) {
                            const __m256i bs16 = _mm256_loadu_si256((const __m256i *) xt[t][b].bsums);
                            ysub[t * KB_BLKS + (b - b0)] = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs16, _mm256_set1_epi16(1)));
                        }
                    }
                }
                for (int j = 0; j < nr; j++) {
                    const char * row = kb_row(w, row_bytes, idx, j0 + j);
                    // the first token tile prefetches what it reads next: the block's next row,
                    // after the last row the first row's next chunk, then the next block's start
                    // (the pointer is offset so that the tile's block offsets land there)
                    const char * next = NULL;
                    if (t0 == 0) {
                        const size_t bs = type == TS_TYPE_Q4_K ? sizeof(ts_block_q4_K) : sizeof(ts_block_q6_K);
                        if (j + 1 < nr) {
                            next = kb_row(w, row_bytes, idx, j0 + j + 1);
                        } else if (b1 < nb) {
                            next = kb_row(w, row_bytes, idx, j0) + (size_t) (b1 - b0) * bs;
                        } else if (j0 + nr < n_idx) {
                            next = kb_row(w, row_bytes, idx, j0 + nr) - (size_t) b0 * bs;
                        }
                    }
                    tile_kq(type, TT, row, next, xt, ysub, b0, b1, &acc[j]);
                }
            }
            for (int j = 0; j < nr; j++) {
                for (int t = 0; t < TT; t++) {
                    out[(t0 + t) * out_stride + j0 + j] = _mm512_reduce_add_ps(acc[j].d[t]) - hsum256(acc[j].m[t]);
                }
            }
        }
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
            rows[j] = kb_row(w_t, row_bytes, idx, j0 + j);
        }
        for (int64_t b = c0 / TS_QK_K; b * TS_QK_K < c1; b++) {
            // the chunk's next super-block (its rows are row_bytes apart: a stride the hardware
            // prefetcher follows poorly)
            if ((b + 1) * TS_QK_K < c1) {
                prefetch_span(nj, rows, (size_t) (b + 1) * bs, bs);
            }
            for (int j = 0; j < nj; j++) {
                ts_kq_block_scales(type, rows[j], b, 1.0f, ds[j], dm[j]);
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
