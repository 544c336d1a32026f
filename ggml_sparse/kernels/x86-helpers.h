// x86-helpers.h: small x86 pieces shared by avx2.c and avx512.c (each compiles them with
// its own target flags). Not a public header.
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static ALWAYS_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static ALWAYS_INLINE float half_at(const char * p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static ALWAYS_INLINE void prefetch_rows(int R, const char * const * next, size_t off) {
    for (int r = 0; r < R; r++) {
        _mm_prefetch(next[r] + off, _MM_HINT_T0);
    }
}
