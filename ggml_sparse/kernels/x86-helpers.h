// x86-helpers.h: small x86 pieces shared by avx2.c, avx512.c and their -kquants.c files (each
// compiles them with its own target flags; the including file defines ALWAYS_INLINE). Not a
// public header.
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

// The same into L2 only. For gathered rows (dot products of a sparse row list, the F16 down
// rows) on the 2-core AMD EPYC (Zen 4, 32 KB L1d, 1 MB L2) VM: a group of F16 rows is 32 KB,
// so prefetching it a group ahead into L1 evicted what was being read. bench_kernels cold,
// one thread, AVX-512, two interleaved rounds, T0 -> T1: Q4_0 gate_up 8.8/7.4 -> 10.1/9.3
// GB/s, gate_up_exact 9.7/8.7 -> 13.3/12.2, F16 gate_up 12.2/11.1 -> 12.8/13.3, F16 axpy
// 13.3/11.2 -> 15.5/16.5, F16 gate_up_exact 13.7/11.7 -> 15.1/16.3; Q4_0 axpy 7.7/7.6 ->
// 6.8/6.9 (slower: it keeps T0), and without any prefetch all were 20-45% slower. The
// hardware's L1 prefetcher brings the lines on from L2.
static ALWAYS_INLINE void prefetch_rows_l2(int R, const char * const * next, size_t off) {
    for (int r = 0; r < R; r++) {
        _mm_prefetch(next[r] + off, _MM_HINT_T1);
    }
}

// Bytes [off, off + bytes) of each of R rows, into L1.
static ALWAYS_INLINE void prefetch_span(int R, const char * const * next, size_t off, size_t bytes) {
    for (int r = 0; r < R; r++) {
        for (size_t o = 0; o < bytes; o += 64) {
            _mm_prefetch(next[r] + off + o, _MM_HINT_T0);
        }
    }
}

// The 16-row layout (ts-kernels.h): a group is one stream, prefetched this far ahead of the
// block being read into L1, a cache line at a time (measured on Zen 4, 2 threads, Q4_0 from
// DRAM: 512 B ahead 41, 2 KB 45.5, 4 KB 46.5 GB/s; a plain read of the same memory 46), and
// R16_AHEAD_L2 ahead into L2. One core keeps only as many misses in flight as L1 has fill
// buffers, which capped a stream at ~10.5 GB/s per core on the Intel Xeon VM (Sapphire
// Rapids class); the L2 requests queue beyond that: bench_threshold_layer, one thread, Q4_0
// 4096 x 14336 from DRAM, 10.2-10.7 -> 13.1-14.6 GB/s (not measured on Zen 4).
#define R16_AHEAD    4096
#define R16_AHEAD_L2 (4 * R16_AHEAD)

static ALWAYS_INLINE void r16_prefetch(const char * blk16, size_t bs16) {
    for (size_t o = 0; o < bs16; o += 64) {
        _mm_prefetch(blk16 + R16_AHEAD + o, _MM_HINT_T0);
        _mm_prefetch(blk16 + R16_AHEAD_L2 + o, _MM_HINT_T1);
    }
}
