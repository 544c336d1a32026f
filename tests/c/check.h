// What every C test shares: CHECK, which counts a failed condition and keeps going (one run
// shows every broken case; only the first 30 are printed), and splitmix64 test data, seeded
// so that a failure repeats run after run.
#pragma once

#include <stdint.h>
#include <stdio.h>

static long n_checks = 0, n_failed = 0;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        n_checks++;                                                         \
        if (!(cond)) {                                                      \
            if (n_failed++ < 30) {                                          \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);        \
                fprintf(stderr, __VA_ARGS__);                               \
                fprintf(stderr, "\n");                                      \
            }                                                               \
        }                                                                   \
    } while (0)

// The line a test ends with and its exit status: 0 when every check passed.
static inline int check_summary(const char * test) {
    printf("%s: %ld checks, %ld failed\n", test, n_checks, n_failed);
    return n_failed ? 1 : 0;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static inline uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline float rng_unit(void) { return (float) (rng_u64() >> 40) / (float) (1 << 24); } // [0, 1)
static inline float rng_sym(void)  { return 2.0f * rng_unit() - 1.0f; }                     // [-1, 1)
