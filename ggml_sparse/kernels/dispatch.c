// dispatch.c: picks the kernel table at run time from what the CPU has. One build carries
// every table its target can run (CMake defines TS_HAVE_<ISA> for each compiled file).
#include "ts-kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

extern const struct ts_kernels ts_kernels_scalar;
#ifdef TS_HAVE_AVX2
extern const struct ts_kernels ts_kernels_avx2;
#endif
#ifdef TS_HAVE_AVX512
extern const struct ts_kernels ts_kernels_avx512;
#endif
#ifdef TS_HAVE_NEON
extern const struct ts_kernels ts_kernels_neon;
#endif

#if defined(__x86_64__) || defined(__i386__)
// The x86 family number (CPUID leaf 1: base family, plus the extended family when base is 0xF).
static unsigned cpu_family(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return 0;
    }
    const unsigned base = (a >> 8) & 0xF;
    return base == 0xF ? base + ((a >> 20) & 0xFF) : base;
}
#endif

static const char * const ISA_NAMES[TS_ISA_COUNT] = { "scalar", "avx2", "avx512", "neon" };

const char * ts_isa_name(enum ts_isa isa) {
    return (unsigned) isa < TS_ISA_COUNT ? ISA_NAMES[isa] : "unknown";
}

const struct ts_kernels * ts_kernels_for(enum ts_isa isa) {
    switch (isa) {
        case TS_ISA_SCALAR:
            return &ts_kernels_scalar;
#ifdef TS_HAVE_AVX2
        case TS_ISA_AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c") ? &ts_kernels_avx2 : NULL;
#endif
#ifdef TS_HAVE_AVX512
        case TS_ISA_AVX512:
            __builtin_cpu_init();
            // avx512.c is compiled with all of these; VNNI is required (CPUs with AVX-512
            // but without VNNI, i.e. Skylake-SP/X, get the AVX2 table).
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
                   __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") ? &ts_kernels_avx512 : NULL;
#endif
#ifdef TS_HAVE_NEON
        case TS_ISA_NEON:
            return &ts_kernels_neon; // NEON is part of the aarch64 base ISA
#endif
        default:
            return NULL;
    }
}

bool ts_cpu_halves_512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f") && cpu_family() == 0x19;
#else
    return false;
#endif
}

static const struct ts_kernels * best_available(void) {
    for (int isa = TS_ISA_COUNT - 1; isa > TS_ISA_SCALAR; isa--) {
        const struct ts_kernels * k = ts_kernels_for((enum ts_isa) isa);
        if (k) {
            return k;
        }
    }
    return &ts_kernels_scalar;
}

const struct ts_kernels * ts_kernels_best(void) {
    // Chosen once; the choice is pure (same CPU, same environment), so a race between
    // two first callers stores the same pointer.
    static const struct ts_kernels * chosen = NULL;
    if (chosen) {
        return chosen;
    }
    const struct ts_kernels * k = best_available();
    const char * want = getenv("TURBOSPARSE_ISA");
    if (want && *want) {
        const struct ts_kernels * forced = NULL;
        for (int isa = 0; isa < TS_ISA_COUNT; isa++) {
            if (strcmp(want, ISA_NAMES[isa]) == 0) {
                forced = ts_kernels_for((enum ts_isa) isa);
            }
        }
        if (forced) {
            k = forced;
        } else {
            fprintf(stderr, "turbosparse: TURBOSPARSE_ISA=%s is not available on this CPU/build; using %s\n",
                    want, k->name);
        }
    }
    chosen = k;
    return chosen;
}
