// test_kernels.c: every kernel table this CPU runs against the scalar reference (and the
// scalar reference against double-precision sums), on random data with a fixed seed, for
// every weight type, odd sizes and tails, gathered and dense rows, and 1..4 thread splits.
// Free of ggml: it is also cross-compiled for aarch64 and run under qemu (tests/neon/run.sh).
#include "ts-kernels.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

// ---- random data ----------------------------------------------------------------------------

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_unit(void) { return (float) (rng_u64() >> 40) / (float) (1 << 24); } // [0, 1)
static float rng_sym(void)  { return 2.0f * rng_unit() - 1.0f; }                     // [-1, 1)

enum data_mode {
    DATA_NORMAL, // uniform in [-1, 1)
    DATA_WIDE,   // random sign, magnitudes 2^-20 .. 2^8 (subnormal halves, large scales)
    DATA_RAW,    // quantised rows only: arbitrary quant bytes (incl. -128) and scales
    DATA_COUNT
};
static const char * const DATA_NAMES[DATA_COUNT] = { "normal", "wide", "raw" };

static float rng_value(enum data_mode mode) {
    if (mode == DATA_WIDE) {
        float m = ldexpf(1.0f + rng_unit(), (int) (rng_u64() % 29) - 20);
        return rng_u64() & 1 ? m : -m;
    }
    return rng_sym();
}

static bool is_kquant(enum ts_type type) { return type == TS_TYPE_Q4_K || type == TS_TYPE_Q6_K; }
static bool is_quant(enum ts_type type) { return type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0 || is_kquant(type); }

// A K-quant row of random quant and scale bytes (ggml's quantiser is tested against ours in
// test_kernels_ggml; here any bytes are valid input). The super-block scales are halves of
// a magnitude set by the mode: normal 2^-8..2^-4, wide 2^-24..2^4, raw any finite half.
static void make_kquant_row(enum ts_type type, enum data_mode mode, int64_t n, char * row, bool zero_block) {
    const size_t bs = ts_row_size(type, TS_QK_K);
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        char * blk = row + (size_t) b * bs;
        for (size_t k = 0; k < bs; k++) blk[k] = (char) rng_u64();
        for (int h = 0; h < (type == TS_TYPE_Q4_K ? 2 : 1); h++) {
            float v;
            if (mode == DATA_RAW) {
                uint16_t bits;
                do { bits = (uint16_t) rng_u64(); } while ((bits & 0x7C00) == 0x7C00); // not inf/NaN
                v = ts_fp16_to_fp32(bits);
            } else {
                v = ldexpf(rng_sym(), mode == DATA_WIDE ? (int) (rng_u64() % 29) - 24 : -(int) (rng_u64() % 5) - 4);
            }
            const uint16_t d = ts_fp32_to_fp16(v);
            memcpy(blk + (type == TS_TYPE_Q4_K ? (size_t) (2 * h) : offsetof(ts_block_q6_K, d)), &d, 2);
        }
        if (zero_block && b == 0) { // a block whose scales are all zero
            if (type == TS_TYPE_Q4_K) memset(blk, 0, 16);
            else memset(blk + offsetof(ts_block_q6_K, scales), 0, 16);
        }
    }
}

// Element e of a K-quant row exactly (double), and the magnitude of the terms that make it
// (Q4_K: |d sc q| + |dmin m|): the scale of any float evaluation's rounding errors.
static double kquant_elem(enum ts_type type, const void * row, int64_t e, double * mag) {
    if (type == TS_TYPE_Q4_K) {
        const ts_block_q4_K * blk = (const ts_block_q4_K *) row + e / TS_QK_K;
        const int k = (int) (e % TS_QK_K);
        int sc, m;
        ts_q4_K_scale_min(blk->scales, k / 32, &sc, &m);
        const uint8_t byte = blk->qs[32 * (k / 64) + k % 32];
        const int q = (k % 64) < 32 ? byte & 0x0F : byte >> 4;
        const double a = (double) ts_fp16_to_fp32(blk->d) * sc * q, c = (double) ts_fp16_to_fp32(blk->dmin) * m;
        *mag = fabs(a) + fabs(c);
        return a - c;
    }
    const ts_block_q6_K * blk = (const ts_block_q6_K *) row + e / TS_QK_K;
    const int k = (int) (e % TS_QK_K);
    const double v = (double) ts_fp16_to_fp32(blk->d) * blk->scales[k / 16] * (ts_q6_K_quant(blk, k) - 32);
    *mag = fabs(v);
    return v;
}

// n_rows rows of n elements, row_bytes apart.
static void * make_rows(enum ts_type type, enum data_mode mode, int64_t n_rows, int64_t n, size_t row_bytes) {
    char * w = calloc((size_t) n_rows, row_bytes);
    float * tmp = malloc((size_t) n * sizeof(float));
    for (int64_t i = 0; i < n_rows; i++) {
        char * row = w + (size_t) i * row_bytes;
        if (is_kquant(type)) {
            make_kquant_row(type, mode, n, row, i % 7 == 3);
            continue;
        }
        if (mode == DATA_RAW && is_quant(type)) {
            size_t bs = ts_row_size(type, TS_QK);
            for (int64_t b = 0; b < n / TS_QK; b++) {
                char * blk = row + (size_t) b * bs;
                for (size_t k = 2; k < bs; k++) blk[k] = (char) rng_u64();
                uint16_t d = ts_fp32_to_fp16(ldexpf(rng_sym(), -(int) (rng_u64() % 12)));
                memcpy(blk, &d, 2);
            }
            continue;
        }
        for (int64_t k = 0; k < n; k++) tmp[k] = rng_value(mode);
        if (i % 7 == 3 && is_quant(type)) { // an all-zero block in some rows
            memset(tmp, 0, TS_QK * sizeof(float));
        }
        ts_from_float(type, tmp, row, n);
    }
    free(tmp);
    return w;
}

static int32_t * make_subset(int64_t n_rows, int64_t * n_idx) {
    int32_t * idx = malloc((size_t) (n_rows + 1) * sizeof(int32_t));
    int64_t count = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        if (rng_unit() < 0.4f) idx[count++] = (int32_t) i;
    }
    if (count == 0) idx[count++] = (int32_t) (n_rows - 1);
    *n_idx = count;
    return idx;
}

// ---- double-precision references ---------------------------------------------------------------

// dot(row, x) in double; *abs_sum gets the sum of the magnitudes of its terms (the scale of
// the rounding error any float evaluation order can make).
static double ref_dot(enum ts_type type, int64_t n, const void * row, const void * x, double * abs_sum) {
    double sum = 0.0, mag = 0.0;
    if (is_kquant(type)) {
        const ts_block_q8_K * xb = x;
        for (int64_t e = 0; e < n; e++) {
            double m;
            const double xv = (double) xb[e / TS_QK_K].d * xb[e / TS_QK_K].qs[e % TS_QK_K];
            sum += kquant_elem(type, row, e, &m) * xv;
            mag += m * fabs(xv);
        }
    } else if (is_quant(type)) {
        const ts_block_q8_0 * xb = x;
        for (int64_t b = 0; b < n / TS_QK; b++) {
            uint16_t dw;
            memcpy(&dw, (const char *) row + (size_t) b * ts_row_size(type, TS_QK), 2);
            // the integer quants of this block, exactly
            const ts_block_q8_0 * b8 = (const ts_block_q8_0 *) row + b;
            const ts_block_q4_0 * b4 = (const ts_block_q4_0 *) row + b;
            long sumi = 0, sumi_abs = 0; // partial sums of any order are bounded by sumi_abs
            for (int j = 0; j < TS_QK; j++) {
                int q = type == TS_TYPE_Q8_0 ? b8->qs[j]
                      : (j < 16 ? (b4->qs[j] & 0x0F) : (b4->qs[j - 16] >> 4)) - 8;
                sumi += (long) q * xb[b].qs[j];
                sumi_abs += labs((long) q * xb[b].qs[j]);
            }
            const float scale = ts_fp16_to_fp32(dw) * ts_fp16_to_fp32(xb[b].d);
            sum += (double) sumi * scale;
            mag += fabs((double) sumi_abs * scale);
        }
    } else {
        float * w = malloc((size_t) n * sizeof(float));
        ts_to_float(type, row, w, n);
        const float * xf = x;
        for (int64_t k = 0; k < n; k++) {
            sum += (double) w[k] * xf[k];
            mag += fabs((double) w[k] * xf[k]);
        }
        free(w);
    }
    *abs_sum = mag;
    return sum;
}

static const double DOT_RTOL = 1e-5; // of the sum of |terms|; float summation in any order

static double dot_tol(double abs_sum) { return DOT_RTOL * abs_sum + 1e-37; }

static double act_d(enum ts_act act, double g, double u) {
    double rg = g > 0 ? g : 0;
    return act == TS_ACT_DRELU ? rg * (u > 0 ? u : 0) : rg * u;
}

// ---- the list of tables under test ---------------------------------------------------------------

static const struct ts_kernels * tables[TS_ISA_COUNT];
static int n_tables = 0;

static const enum ts_type TYPES[] = { TS_TYPE_F32, TS_TYPE_F16, TS_TYPE_BF16, TS_TYPE_Q8_0, TS_TYPE_Q4_0,
                                      TS_TYPE_Q4_K, TS_TYPE_Q6_K };
static const int64_t FLOAT_SIZES[] = { 1, 7, 33, 100, 4096 + 17 };
static const int64_t QUANT_SIZES[] = { 32, 64, 96, 32 * 15, 4096 + 32 }; // 15: one 8-block step + 7 left
static const int64_t KQUANT_SIZES[] = { 256, 768, 256 * 17 }; // odd numbers of super-blocks

// ---- conversions and helpers in common.c -----------------------------------------------------------

static double half_value(uint16_t h) { // IEEE binary16 by its definition
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -v : v;
}

// ts_cpu_halves_512 (the matmul policy's Zen 4 test) against what Linux says of the CPU:
// AuthenticAMD, family 25 (19h), with avx512f.
static void test_cpu_halves_512(void) {
    FILE * f = fopen("/proc/cpuinfo", "r");
    if (!f) {
        return; // not Linux: nothing to compare with
    }
    char line[4096];
    bool amd = false, avx512 = false, have_family = false;
    int family = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "vendor_id", 9) == 0) amd = strstr(line, "AuthenticAMD") != NULL;
        if (strncmp(line, "cpu family", 10) == 0 && !have_family) have_family = sscanf(strchr(line, ':') + 1, "%d", &family) == 1;
        if (strncmp(line, "flags", 5) == 0) { avx512 = strstr(line, " avx512f") != NULL; break; }
    }
    fclose(f);
#if defined(__x86_64__) || defined(__i386__)
    const bool expected = amd && avx512 && family == 25;
#else
    const bool expected = false;
    (void) amd; (void) avx512;
#endif
    CHECK(ts_cpu_halves_512() == expected, "ts_cpu_halves_512() = %d, /proc/cpuinfo says AMD %d family %d avx512f %d",
          (int) ts_cpu_halves_512(), (int) amd, family, (int) avx512);
}

static void test_conversions(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = ts_fp16_to_fp32((uint16_t) h);
        const double v = half_value((uint16_t) h);
        if (isnan(v)) {
            CHECK(isnan(f), "fp16 %04x: NaN expected", h);
            CHECK(isnan(ts_fp16_to_fp32(ts_fp32_to_fp16(f))), "fp16 %04x: NaN round trip", h);
        } else {
            CHECK((double) f == v && !!signbit(f) == !!(h & 0x8000), "fp16 %04x -> %g, expected %g", h, f, v);
            CHECK(ts_fp32_to_fp16(f) == h, "fp16 %04x: round trip gives %04x", h, ts_fp32_to_fp16(f));
        }
        const float bf = ts_bf16_to_fp32((uint16_t) h);
        uint32_t bits;
        memcpy(&bits, &bf, 4);
        CHECK(bits == h << 16, "bf16 %04x", h);
        if (!isnan(bf)) CHECK(ts_fp32_to_bf16(bf) == h, "bf16 %04x: round trip", h);
    }
    // float -> half/bf16 rounds to nearest, ties to even, over every magnitude
    for (int t = 0; t < 200000; t++) {
        uint32_t bits = (uint32_t) rng_u64();
        if (t % 2) bits = (bits & 0x807FFFFFu) | ((uint32_t) (96 + rng_u64() % 50) << 23); // near the half range
        if (t % 16 == 1) bits &= ~0x1FFFu;  // exact halves
        if (t % 16 == 3) bits = (bits & ~0x1FFFu) | 0x1000u; // ties
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) {
            CHECK(isnan(ts_fp16_to_fp32(ts_fp32_to_fp16(f))) && isnan(ts_bf16_to_fp32(ts_fp32_to_bf16(f))), "NaN kept");
            continue;
        }
        const uint16_t h = ts_fp32_to_fp16(f);
        const uint16_t mag = h & 0x7FFF;
        CHECK((h >> 15) == (bits >> 31), "fp16 sign of %a", f);
        if (fabsf(f) >= 65520.0f) {
            CHECK(mag == 0x7C00, "fp16 of %a should overflow to inf, got %04x", f, h);
        } else {
            const double e = fabs(fabs((double) f) - half_value(mag));
            const double e_lo = mag > 0 ? fabs(fabs((double) f) - half_value(mag - 1)) : INFINITY;
            const double e_hi = fabs(fabs((double) f) - half_value(mag + 1));
            CHECK(mag < 0x7C00 && e <= e_lo && e <= e_hi && ((e != e_lo && e != e_hi) || (mag & 1) == 0),
                  "fp16 of %a is %04x: not nearest-even", f, h);
        }
        const uint16_t b = ts_fp32_to_bf16(f);
        const double vb = ts_bf16_to_fp32(b), vb_hi = ts_bf16_to_fp32(b + 1);
        const double vb_lo = (b & 0x7FFF) ? ts_bf16_to_fp32(b - 1) : INFINITY; // no neighbour below 0
        if (!isinf(vb)) {
            const double e = fabs(f - vb);
            CHECK(e <= fabs(f - vb_lo) && e <= fabs(f - vb_hi) &&
                  ((e != fabs(f - vb_lo) && e != fabs(f - vb_hi)) || (b & 1) == 0),
                  "bf16 of %a is %04x: not nearest-even", f, b);
        }
    }
}

static void test_select_and_split(void) {
    for (int t = 0; t < 50; t++) {
        const int64_t n = 1 + (int64_t) (rng_u64() % 3000);
        float * v = malloc((size_t) n * sizeof(float)), * compact = malloc((size_t) n * sizeof(float));
        int32_t * idx = malloc((size_t) n * sizeof(int32_t));
        const float tau = t % 3 == 0 ? 0.0f : rng_sym();
        for (int64_t i = 0; i < n; i++) v[i] = rng_unit() < 0.3f ? rng_sym() : (t % 2 ? 0.0f : -1.0f);
        int64_t count = ts_select_active(v, n, tau, idx), k = 0;
        for (int64_t i = 0; i < n; i++) {
            if (v[i] > tau) {
                CHECK(k < count && idx[k] == i, "select_active: missing %lld", (long long) i);
                k++;
            }
        }
        CHECK(k == count, "select_active: count %lld, expected %lld", (long long) count, (long long) k);
        count = ts_select_nonzero(v, n, idx, compact);
        k = 0;
        for (int64_t i = 0; i < n; i++) {
            if (v[i] != 0.0f) {
                CHECK(k < count && idx[k] == i && compact[k] == v[i], "select_nonzero: entry %lld", (long long) i);
                k++;
            }
        }
        CHECK(k == count, "select_nonzero: count");
        free(v); free(compact); free(idx);
    }
    const int64_t ns[] = { 1, 32, 63, 64, 65, 96, 100, 4096, 4113, 14336 };
    for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
        for (int nth = 1; nth <= 9; nth++) {
            int64_t expect = 0;
            for (int ith = 0; ith < nth; ith++) {
                int64_t c0, c1;
                ts_split_cols(ns[t], ith, nth, &c0, &c1);
                CHECK(c0 == expect && c1 >= c0 && c1 <= ns[t], "split_cols n=%lld %d/%d: [%lld,%lld)",
                      (long long) ns[t], ith, nth, (long long) c0, (long long) c1);
                CHECK(c0 % TS_COL_ALIGN == 0 && (c1 % TS_COL_ALIGN == 0 || c1 == ns[t]), "split_cols alignment");
                expect = c1;
            }
            CHECK(expect == ns[t], "split_cols n=%lld nth=%d covers [0,%lld)", (long long) ns[t], nth, (long long) expect);
        }
    }
}

// ---- kernels -------------------------------------------------------------------------------------

static void test_quantize(void) {
    const int64_t n = 4096 + 32;
    float * x = malloc((size_t) n * sizeof(float));
    ts_block_q8_0 * ref = malloc(ts_row_size(TS_TYPE_Q8_0, n));
    ts_block_q8_0 * got = malloc(ts_row_size(TS_TYPE_Q8_0, n));
    for (int mode = 0; mode < 3; mode++) {
        for (int64_t k = 0; k < n; k++) x[k] = rng_value(mode == 1 ? DATA_WIDE : DATA_NORMAL);
        if (mode == 2) { // ties: amax 127 gives d = 1, so k + 0.5 lands exactly on a tie
            for (int64_t k = 0; k < n; k++) x[k] = (k % TS_QK == 0) ? 127.0f : (float) ((int) (rng_u64() % 253) - 126) + 0.5f;
            for (int64_t k = 0; k < TS_QK; k++) x[k] = 0.0f; // an all-zero block
        }
        ts_quantize_row_q8_0_ref(x, ref, n);
        for (int t = 0; t < n_tables; t++) {
            memset(got, 0xAB, ts_row_size(TS_TYPE_Q8_0, n));
            tables[t]->quantize_q8_0(x, got, n);
            CHECK(memcmp(got, ref, ts_row_size(TS_TYPE_Q8_0, n)) == 0, "%s quantize_q8_0 differs from the reference (mode %d)",
                  tables[t]->name, mode);
        }
        // the reference round-trips within half a step
        float * back = malloc((size_t) n * sizeof(float));
        ts_to_float(TS_TYPE_Q8_0, ref, back, n);
        for (int64_t k = 0; k < n; k++) {
            const float d = ts_fp16_to_fp32(ref[k / TS_QK].d);
            // half a step, plus 127 times the error of storing d as a half
            CHECK(fabsf(back[k] - x[k]) <= 0.5f * d + 127.0f * fmaxf(d * 0x1p-11f, 0x1p-25f), "q8_0 round trip %lld", (long long) k);
        }
        free(back);
    }
    free(x); free(ref); free(got);
}

struct dot_case {
    enum ts_type type;
    int64_t n, n_rows;
    size_t row_bytes;
    void * w;
    void * x;       // in the dot type
    double * ref;   // per row
    double * tol;   // per row
};

static void make_dot_case(struct dot_case * c, enum ts_type type, enum data_mode mode, int64_t n, int64_t n_rows) {
    c->type = type; c->n = n; c->n_rows = n_rows;
    c->row_bytes = ts_row_size(type, n) + (mode == DATA_WIDE ? 8 : 0); // a padded stride sometimes
    c->w = make_rows(type, mode, n_rows, n, c->row_bytes);
    float * xf = malloc((size_t) n * sizeof(float));
    for (int64_t k = 0; k < n; k++) xf[k] = rng_value(mode == DATA_RAW ? DATA_NORMAL : mode);
    if (is_quant(type)) {
        c->x = malloc(ts_row_size(ts_dot_type(type), n));
        ts_from_float(ts_dot_type(type), xf, c->x, n);
        free(xf);
    } else {
        c->x = xf;
    }
    c->ref = malloc((size_t) n_rows * sizeof(double));
    c->tol = malloc((size_t) n_rows * sizeof(double));
    for (int64_t i = 0; i < n_rows; i++) {
        double mag;
        c->ref[i] = ref_dot(type, n, (char *) c->w + (size_t) i * c->row_bytes, c->x, &mag);
        c->tol[i] = dot_tol(mag);
    }
}

static void free_dot_case(struct dot_case * c) { free(c->w); free(c->x); free(c->ref); free(c->tol); }

static void test_dot_and_gate_up(enum ts_type type, enum data_mode mode, int64_t n) {
    // short rows: enough rows for several of exact mode's 256-row chunks (simd-drivers.h)
    const int64_t n_rows = n <= 512 ? 600 : 37;
    struct dot_case G, U;
    make_dot_case(&G, type, mode, n, n_rows);
    make_dot_case(&U, type, mode, n, n_rows);
    // U needs the same x as G
    free(U.x);
    U.x = G.x;
    for (int64_t i = 0; i < n_rows; i++) {
        double mag;
        U.ref[i] = ref_dot(type, n, (char *) U.w + (size_t) i * U.row_bytes, G.x, &mag);
        U.tol[i] = dot_tol(mag);
    }
    const char * tn = ts_type_name(type);
    float * out = malloc((size_t) n_rows * sizeof(float));
    float * out_scalar = malloc((size_t) n_rows * sizeof(float));

    for (int im = 0; im < 3; im++) { // idx: NULL, subset, empty
        int64_t n_idx = n_rows;
        int32_t * idx = NULL;
        if (im == 1) idx = make_subset(n_rows, &n_idx);
        if (im == 2) { idx = malloc(sizeof(int32_t)); n_idx = 0; }
        for (int t = 0; t < n_tables; t++) {
            const struct ts_kernels * K = tables[t];
            // dot_rows
            for (int64_t j = 0; j < n_rows; j++) out[j] = 12345.0f;
            K->dot_rows(type, n, G.w, G.row_bytes, G.x, idx, n_idx, out);
            if (t == 0) memcpy(out_scalar, out, (size_t) n_rows * sizeof(float));
            for (int64_t j = 0; j < n_idx; j++) {
                const int64_t i = idx ? idx[j] : j;
                CHECK(fabs(out[j] - G.ref[i]) <= G.tol[i], "%s dot_rows %s/%s n=%lld row %lld: %.9g vs %.9g (tol %.3g)",
                      K->name, tn, DATA_NAMES[mode], (long long) n, (long long) i, out[j], G.ref[i], G.tol[i]);
                CHECK(fabs(out[j] - out_scalar[j]) <= 2 * G.tol[i], "%s dot_rows vs scalar", K->name);
            }
            for (int64_t j = n_idx; j < n_rows; j++) CHECK(out[j] == 12345.0f, "%s dot_rows wrote past n_idx", K->name);

            // gate_up, both activations
            for (int act = 0; act < 2; act++) {
                K->gate_up(type, act, n, G.w, U.w, G.row_bytes, G.x, idx, n_idx, out);
                for (int64_t j = 0; j < n_idx; j++) {
                    const int64_t i = idx ? idx[j] : j;
                    const double e = act_d(act, G.ref[i], U.ref[i]);
                    const double bound = G.tol[i] * fabs(U.ref[i]) + U.tol[i] * fabs(G.ref[i]) + G.tol[i] * U.tol[i]
                                       + 1e-6 * fabs(e) + 1e-37;
                    CHECK(fabs(out[j] - e) <= bound, "%s gate_up act=%d %s/%s n=%lld row %lld: %.9g vs %.9g",
                          K->name, act, tn, DATA_NAMES[mode], (long long) n, (long long) i, out[j], e);
                }
            }
        }
        free(idx);
    }

    // exact mode: poison the up rows whose gate is clearly negative, they must never be read
    const size_t bs = ts_row_size(type, ts_block_size(type));
    for (int64_t i = 0; i < n_rows; i++) {
        if (G.ref[i] < -G.tol[i]) {
            char * row = (char *) U.w + (size_t) i * U.row_bytes;
            for (int64_t b = 0; b < n / (int64_t) ts_block_size(type); b++) {
                const uint16_t nan16 = type == TS_TYPE_BF16 ? 0x7FC0 : 0x7E00;
                const float nan32 = NAN;
                const size_t d_at = type == TS_TYPE_Q6_K ? offsetof(ts_block_q6_K, d) : 0;
                if (type == TS_TYPE_F32) memcpy(row + (size_t) b * bs, &nan32, 4);
                else                     memcpy(row + (size_t) b * bs + d_at, &nan16, 2); // a half/bf16 or a block scale
            }
        }
    }
    const int64_t ranges[2][2] = { { 0, n_rows }, { 3, n_rows - 2 } };
    for (int r = 0; r < 2; r++) {
        const int64_t i0 = ranges[r][0], i1 = ranges[r][1];
        for (int act = 0; act < 2; act++) {
            int64_t count_scalar = -1;
            for (int t = 0; t < n_tables; t++) {
                const struct ts_kernels * K = tables[t];
                for (int64_t j = 0; j < n_rows; j++) out[j] = 12345.0f;
                const int64_t count = K->gate_up_exact(type, act, n, G.w, U.w, G.row_bytes, G.x, i0, i1, out);
                if (t == 0) count_scalar = count;
                int64_t nonzero = 0, borderline = 0;
                for (int64_t i = i0; i < i1; i++) {
                    const float v = out[i - i0];
                    nonzero += v != 0.0f;
                    const bool border = fabs(G.ref[i]) <= G.tol[i] || (act == TS_ACT_DRELU && fabs(U.ref[i]) <= U.tol[i]);
                    borderline += border;
                    if (G.ref[i] < -G.tol[i]) {
                        CHECK(v == 0.0f, "%s gate_up_exact %s: inactive neuron %lld is %g", K->name, tn, (long long) i, v);
                        continue;
                    }
                    const double e = act_d(act, G.ref[i], U.ref[i]);
                    const double bound = G.tol[i] * fabs(U.ref[i]) + U.tol[i] * fabs(G.ref[i]) + G.tol[i] * U.tol[i]
                                       + 1e-6 * fabs(e) + 1e-37;
                    CHECK(fabs(v - e) <= bound, "%s gate_up_exact act=%d %s/%s n=%lld row %lld: %.9g vs %.9g",
                          K->name, act, tn, DATA_NAMES[mode], (long long) n, (long long) i, v, e);
                }
                CHECK(count == nonzero, "%s gate_up_exact returned %lld, %lld non-zero", K->name, (long long) count, (long long) nonzero);
                CHECK(llabs(count - count_scalar) <= borderline, "%s gate_up_exact count %lld vs scalar %lld",
                      K->name, (long long) count, (long long) count_scalar);
                for (int64_t j = i1 - i0; j < n_rows; j++) CHECK(out[j] == 12345.0f, "gate_up_exact wrote past i1");
            }
        }
    }
    free(out); free(out_scalar);
    U.x = NULL;
    free_dot_case(&G); free_dot_case(&U);
}

static void test_axpy(enum ts_type type, enum data_mode mode, int64_t n) {
    const int64_t n_rows = 23;
    const size_t row_bytes = ts_row_size(type, n) + (mode == DATA_WIDE ? 8 : 0);
    void * w = make_rows(type, mode, n_rows, n, row_bytes);
    float * a = malloc((size_t) n_rows * sizeof(float));
    for (int64_t j = 0; j < n_rows; j++) a[j] = j % 5 == 2 ? 0.0f : rng_value(mode == DATA_RAW ? DATA_NORMAL : mode);
    float * y_ref = malloc((size_t) n * sizeof(float));
    float * y = malloc((size_t) n * sizeof(float));
    float * wf = malloc((size_t) n * sizeof(float));
    double * sum = malloc((size_t) n * sizeof(double)), * mag = malloc((size_t) n * sizeof(double));
    const char * tn = ts_type_name(type);
    const uint32_t sentinel = 0x7FBADBADu;

    for (int im = 0; im < 3; im++) {
        int64_t n_idx = n_rows;
        int32_t * idx = NULL;
        if (im == 1) idx = make_subset(n_rows, &n_idx);
        if (im == 2) { idx = malloc(sizeof(int32_t)); n_idx = 0; }

        // the scalar reference against double sums
        for (int64_t c = 0; c < n; c++) { sum[c] = 0; mag[c] = 0; }
        for (int64_t j = 0; j < n_idx; j++) {
            const char * row = (char *) w + (size_t) (idx ? idx[j] : j) * row_bytes;
            ts_to_float(type, row, wf, n);
            for (int64_t c = 0; c < n; c++) {
                double m = fabs((double) wf[c]);
                const double v = is_kquant(type) ? kquant_elem(type, row, c, &m) : wf[c];
                sum[c] += (double) a[j] * v;
                mag[c] += fabs((double) a[j]) * m;
            }
        }
        for (int64_t c = 0; c < n; c++) memcpy(&y_ref[c], &sentinel, 4);
        tables[0]->axpy_rows(type, n, w, row_bytes, idx, a, n_idx, 0, n, y_ref);
        for (int64_t c = 0; c < n; c++) {
            CHECK(fabs(y_ref[c] - sum[c]) <= 1e-5 * mag[c] + 1e-37, "scalar axpy %s/%s n=%lld col %lld: %.9g vs %.9g",
                  tn, DATA_NAMES[mode], (long long) n, (long long) c, y_ref[c], sum[c]);
        }

        for (int t = 0; t < n_tables; t++) {
            const struct ts_kernels * K = tables[t];
            for (int nth = 1; nth <= 4; nth++) {
                for (int64_t c = 0; c < n; c++) memcpy(&y[c], &sentinel, 4);
                for (int ith = 0; ith < nth; ith++) {
                    int64_t c0, c1;
                    ts_split_cols(n, ith, nth, &c0, &c1);
                    K->axpy_rows(type, n, w, row_bytes, idx, a, n_idx, c0, c1, y);
                    // nothing outside [c0, c1) is written: later slices still hold the sentinel
                    if (c1 < n) CHECK(memcmp(&y[c1], &sentinel, 4) == 0, "%s axpy wrote past c1", K->name);
                }
                CHECK(memcmp(y, y_ref, (size_t) n * sizeof(float)) == 0,
                      "%s axpy_rows %s/%s n=%lld idx mode %d, %d threads: not bit-identical to scalar",
                      K->name, tn, DATA_NAMES[mode], (long long) n, im, nth);
            }
        }
        free(idx);
    }
    free(w); free(a); free(y_ref); free(y); free(wf); free(sum); free(mag);
}

// ---- batches of tokens ---------------------------------------------------------------------------

// n_tok activation vectors in the dot type dt, x_stride apart (every third one of wide range).
static char * make_tokens(enum ts_type dt, int64_t n, int64_t n_tok, size_t x_stride) {
    char * x = calloc((size_t) n_tok, x_stride);
    float * xf = malloc((size_t) n * sizeof(float));
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t k = 0; k < n; k++) xf[k] = rng_value(t % 3 == 1 ? DATA_WIDE : DATA_NORMAL);
        ts_from_float(dt, xf, x + (size_t) t * x_stride, n);
    }
    free(xf);
    return x;
}

// 29: a 24-token block then 5; 62, 70: 64-token blocks' tails; 140: AVX-512's 132-token float
// down blocks and a tail of 8
static const int64_t BATCH_TOKENS[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 29, 37, 62, 70, 140 };
#define N_TOK_MAX 140
#define N_BATCH_TOKENS ((int) (sizeof(BATCH_TOKENS) / sizeof(BATCH_TOKENS[0])))
static const float SENTINEL_F = 12345.0f;

// dot_rows_batch: every table's result is bit for bit its own dot_rows per token (so batch
// size and row grouping never change a bit), and within the dot tolerance of the double
// reference. Strides are odd on purpose (gaps between tokens' outputs must stay untouched).
static void test_dot_batch(enum ts_type type, int64_t n) {
    const int64_t n_rows = 37; // two full groups of 16 and a partial one
    const int64_t n_tok_max = N_TOK_MAX;
    const size_t row_bytes = ts_row_size(type, n) + 8;
    void * w = make_rows(type, DATA_NORMAL, n_rows, n, row_bytes);
    const enum ts_type dt = ts_dot_type(type);
    const size_t x_stride = ts_row_size(dt, n) + (is_kquant(type) ? 4 : is_quant(type) ? 2 : 12); // unaligned blocks/floats (Q8_K: its f32 d aligned)
    char * x = make_tokens(dt, n, n_tok_max, x_stride);
    const int64_t out_stride = n_rows + 3;
    float * out = malloc((size_t) (n_tok_max * out_stride) * sizeof(float));
    float * blocked = malloc((size_t) (n_tok_max * out_stride) * sizeof(float));
    float * one = malloc((size_t) n_rows * sizeof(float));
    const char * tn = ts_type_name(type);
    // the double reference and its tolerance, per token and row
    double * ref = malloc((size_t) (n_tok_max * n_rows) * sizeof(double));
    double * tol = malloc((size_t) (n_tok_max * n_rows) * sizeof(double));
    for (int64_t tk = 0; tk < n_tok_max; tk++) {
        for (int64_t i = 0; i < n_rows; i++) {
            double mag;
            ref[tk * n_rows + i] = ref_dot(type, n, (const char *) w + (size_t) i * row_bytes, x + (size_t) tk * x_stride, &mag);
            tol[tk * n_rows + i] = dot_tol(mag);
        }
    }

    for (int im = 0; im < 2; im++) {
        int64_t n_idx = n_rows;
        int32_t * idx = im ? make_subset(n_rows, &n_idx) : NULL;
        for (int t = 0; t < n_tables; t++) {
            const struct ts_kernels * K = tables[t];
            for (int nt = 0; nt < N_BATCH_TOKENS; nt++) {
                const int64_t n_tok = BATCH_TOKENS[nt];
                for (int64_t i = 0; i < n_tok_max * out_stride; i++) out[i] = SENTINEL_F;
                K->dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
                int64_t bad = 0, far = 0;
                for (int64_t tk = 0; tk < n_tok_max; tk++) {
                    const char * xt = x + (size_t) tk * x_stride;
                    const float * o = out + tk * out_stride;
                    if (tk >= n_tok) {
                        for (int64_t j = 0; j < out_stride; j++) bad += o[j] != SENTINEL_F;
                        continue;
                    }
                    K->dot_rows(type, n, w, row_bytes, xt, idx, n_idx, one);
                    for (int64_t j = 0; j < n_idx; j++) {
                        const int64_t i = idx ? idx[j] : j;
                        bad += memcmp(&o[j], &one[j], sizeof(float)) != 0;
                        far += !(fabs(o[j] - ref[tk * n_rows + i]) <= tol[tk * n_rows + i]);
                    }
                    for (int64_t j = n_idx; j < out_stride; j++) bad += o[j] != SENTINEL_F;
                }
                CHECK(bad == 0, "%s dot_rows_batch %s n=%lld n_tok=%lld idx mode %d: %lld outputs differ from dot_rows or were written outside",
                      K->name, tn, (long long) n, (long long) n_tok, im, (long long) bad);
                CHECK(far == 0, "%s dot_rows_batch %s n=%lld n_tok=%lld: %lld outputs outside the reference tolerance",
                      K->name, tn, (long long) n, (long long) n_tok, (long long) far);
                // the L2-blocked driver (rows of 4096 + 17 floats: several row blocks and
                // token chunks) writes exactly what the one call wrote, and nothing else
                for (int64_t i = 0; i < n_tok_max * out_stride; i++) blocked[i] = SENTINEL_F;
                ts_dot_rows_blocked(K, type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, blocked, out_stride);
                CHECK(memcmp(blocked, out, (size_t) (n_tok_max * out_stride) * sizeof(float)) == 0,
                      "%s ts_dot_rows_blocked %s n=%lld n_tok=%lld idx mode %d: differs from dot_rows_batch",
                      K->name, tn, (long long) n, (long long) n_tok, im);
            }
        }
        free(idx);
    }
    free(w); free(x); free(out); free(blocked); free(one); free(ref); free(tol);
}

// axpy_rows_batch: every token's columns are bit for bit the table's axpy_rows with that
// token's values (zeros included), for every column split; axpy_rows itself equals scalar
// (test_axpy), so this also pins the batch to the scalar reference.
static void test_axpy_batch(enum ts_type type, int64_t n) {
    const int64_t n_rows = 71, n_tok_max = N_TOK_MAX; // rows: past a 64-row chunk
    const size_t row_bytes = ts_row_size(type, n) + 8;
    void * w = make_rows(type, DATA_NORMAL, n_rows, n, row_bytes);
    const int64_t a_stride = n_rows + 5, y_stride = n + 7;
    float * a = malloc((size_t) (n_tok_max * a_stride) * sizeof(float));
    for (int64_t i = 0; i < n_tok_max * a_stride; i++) a[i] = rng_unit() < 0.3f ? 0.0f : rng_sym();
    float * y = malloc((size_t) (n_tok_max * y_stride) * sizeof(float));
    float * one = malloc((size_t) n * sizeof(float));
    const char * tn = ts_type_name(type);

    for (int im = 0; im < 2; im++) {
        int64_t n_idx = n_rows;
        int32_t * idx = im ? make_subset(n_rows, &n_idx) : NULL;
        for (int t = 0; t < n_tables; t++) {
            const struct ts_kernels * K = tables[t];
            for (int nt = 0; nt < N_BATCH_TOKENS; nt++) {
                const int64_t n_tok = BATCH_TOKENS[nt];
                const int nth = 1 + nt % 3;
                for (int64_t i = 0; i < n_tok_max * y_stride; i++) y[i] = SENTINEL_F;
                for (int ith = 0; ith < nth; ith++) {
                    int64_t c0, c1;
                    ts_split_cols(n, ith, nth, &c0, &c1);
                    K->axpy_rows_batch(type, n, w, row_bytes, idx, a, a_stride, n_idx, n_tok, c0, c1, y, y_stride);
                }
                int64_t bad = 0;
                for (int64_t tk = 0; tk < n_tok_max; tk++) {
                    const float * yt = y + tk * y_stride;
                    if (tk >= n_tok) {
                        for (int64_t c = 0; c < y_stride; c++) bad += yt[c] != SENTINEL_F;
                        continue;
                    }
                    tables[0]->axpy_rows(type, n, w, row_bytes, idx, a + tk * a_stride, n_idx, 0, n, one);
                    bad += memcmp(yt, one, (size_t) n * sizeof(float)) != 0;
                    K->axpy_rows(type, n, w, row_bytes, idx, a + tk * a_stride, n_idx, 0, n, one);
                    bad += memcmp(yt, one, (size_t) n * sizeof(float)) != 0;
                    for (int64_t c = n; c < y_stride; c++) bad += yt[c] != SENTINEL_F;
                }
                CHECK(bad == 0, "%s axpy_rows_batch %s n=%lld n_tok=%lld idx mode %d, %d threads: %lld mismatches",
                      K->name, tn, (long long) n, (long long) n_tok, im, nth, (long long) bad);
            }
        }
        free(idx);
    }
    free(w); free(a); free(y); free(one);
}

// The F16 16-row layout's arithmetic (ts-kernels.h): one FMA chain per row and token.
static void f16_chain(int64_t n, const char * w, size_t row_bytes, int64_t n_rows, const char * x,
                      size_t x_stride, int64_t n_tok, float * out, int64_t out_stride) {
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = 0; r < n_rows; r++) {
            const uint16_t * wr = (const uint16_t *) (w + (size_t) r * row_bytes);
            float sum = 0.0f;
            for (int64_t k = 0; k < n; k++) {
                float xk;
                memcpy(&xk, x + (size_t) t * x_stride + (size_t) k * sizeof(float), sizeof(xk));
                sum = fmaf(ts_fp16_to_fp32(wr[k]), xk, sum);
            }
            out[t * out_stride + r] = sum;
        }
    }
}

// The 16-row layout: packing keeps every row (read back bit for bit, tail rows included), and
// dot_rows_r16 of every table that has one gives that table's dot_rows_batch on the plain
// matrix bit for bit (so the layout never changes a result) for the quantised types, and the
// FMA chain of f16_chain for F16, for any split of the groups among calls, writing nothing
// else, within the reference tolerance; the scalar table has one (the reference).
static void test_dot_r16(enum ts_type type, enum data_mode mode, int64_t n, int64_t n_rows) {
    static const int64_t TOKENS[] = { 1, 2, 3, 8, 9, 37 };
    const int64_t n_tok_max = 37, n_groups = n_rows / TS_R16;
    const size_t row_bytes = ts_row_size(type, n);
    char * w = make_rows(type, mode, n_rows, n, row_bytes);
    char * w16 = malloc((size_t) n_rows * row_bytes);
    char * back = malloc(row_bytes);
    ts_pack_r16(type, n, n_rows, w, w16);
    int64_t lost = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        ts_r16_row(type, n, n_rows, w16, r, back);
        lost += memcmp(back, w + (size_t) r * row_bytes, row_bytes) != 0;
    }
    const char * tn = ts_type_name(type);
    CHECK(lost == 0, "r16 %s n=%lld rows=%lld: %lld rows do not read back", tn, (long long) n, (long long) n_rows, (long long) lost);
    CHECK(tables[0]->dot_rows_r16 != NULL, "the scalar table has no dot_rows_r16");

    const enum ts_type dt = ts_dot_type(type);
    // unaligned rows, as far as their types allow (Q8_K: its f32 d aligned; f32 activations of F16 rows)
    const size_t x_stride = ts_row_size(dt, n) + (dt == TS_TYPE_Q8_K || dt == TS_TYPE_F32 ? 4 : 2);
    char * x = make_tokens(dt, n, n_tok_max, x_stride);
    const int64_t out_stride = n_rows + 3;
    float * out = malloc((size_t) (n_tok_max * out_stride) * sizeof(float));
    float * want = malloc((size_t) (n_tok_max * out_stride) * sizeof(float));
    for (int t = 0; t < n_tables; t++) {
        const struct ts_kernels * K = tables[t];
        if (!K->dot_rows_r16) continue;
        for (size_t nt = 0; nt < sizeof(TOKENS) / sizeof(TOKENS[0]); nt++) {
            const int64_t n_tok = TOKENS[nt];
            const int n_calls = 1 + (int) (nt % 3);
            for (int64_t i = 0; i < n_tok_max * out_stride; i++) out[i] = SENTINEL_F;
            for (int c = 0; c < n_calls; c++) {
                const int64_t g0 = n_groups * c / n_calls, g1 = n_groups * (c + 1) / n_calls;
                K->dot_rows_r16(type, n, w16, g0, g1, x, x_stride, n_tok, out + g0 * TS_R16, out_stride);
            }
            if (type == TS_TYPE_F16) {
                f16_chain(n, w, row_bytes, n_groups * TS_R16, x, x_stride, n_tok, want, out_stride);
            } else {
                K->dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, NULL, n_groups * TS_R16, want, out_stride);
            }
            int64_t bad = 0, far = 0;
            for (int64_t tk = 0; tk < n_tok_max; tk++) {
                const float * o = out + tk * out_stride;
                for (int64_t j = 0; j < out_stride; j++) {
                    if (tk < n_tok && j < n_groups * TS_R16) {
                        double mag;
                        const double ref = ref_dot(type, n, w + (size_t) j * row_bytes, x + (size_t) tk * x_stride, &mag);
                        bad += memcmp(&o[j], &want[tk * out_stride + j], sizeof(float)) != 0;
                        far += !(fabs(o[j] - ref) <= dot_tol(mag));
                    } else {
                        bad += o[j] != SENTINEL_F;
                    }
                }
            }
            CHECK(bad == 0, "%s dot_rows_r16 %s %s n=%lld rows=%lld n_tok=%lld, %d calls: %lld outputs differ from dot_rows_batch "
                  "on the plain rows (F16: the FMA chain) or were written outside", K->name, tn, DATA_NAMES[mode], (long long) n, (long long) n_rows,
                  (long long) n_tok, n_calls, (long long) bad);
            CHECK(far == 0, "%s dot_rows_r16 %s n=%lld n_tok=%lld: %lld outputs outside the reference tolerance",
                  K->name, tn, (long long) n, (long long) n_tok, (long long) far);
        }
    }
    free(w); free(w16); free(back); free(x); free(out); free(want);
}

int main(void) {
    for (int isa = 0; isa < TS_ISA_COUNT; isa++) {
        const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
        if (K) {
            CHECK(K->isa == (enum ts_isa) isa && K->quantize_q8_0 && K->dot_rows && K->gate_up &&
                  K->gate_up_exact && K->axpy_rows && K->dot_rows_batch && K->axpy_rows_batch, "table %s is incomplete", ts_isa_name((enum ts_isa) isa));
            tables[n_tables++] = K;
        }
    }
    CHECK(n_tables > 0 && tables[0]->isa == TS_ISA_SCALAR, "scalar table first");
#if defined(__aarch64__)
    CHECK(ts_kernels_for(TS_ISA_NEON) != NULL, "aarch64 build without the NEON table");
#endif
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        CHECK(ts_kernels_for(TS_ISA_AVX2) != NULL, "this CPU has AVX2 but the build has no AVX2 table");
    }
#endif
    printf("tables:");
    for (int t = 0; t < n_tables; t++) printf(" %s", tables[t]->name);
    printf("  (best: %s)\n", ts_kernels_best()->name);

    test_cpu_halves_512();
    test_conversions();
    test_select_and_split();
    test_quantize();
    for (size_t ti = 0; ti < sizeof(TYPES) / sizeof(TYPES[0]); ti++) {
        const enum ts_type type = TYPES[ti];
        const int64_t * sizes = is_kquant(type) ? KQUANT_SIZES : is_quant(type) ? QUANT_SIZES : FLOAT_SIZES;
        const size_t n_sizes = is_kquant(type) ? sizeof(KQUANT_SIZES) / sizeof(int64_t)
                             : is_quant(type) ? sizeof(QUANT_SIZES) / sizeof(int64_t) : sizeof(FLOAT_SIZES) / sizeof(int64_t);
        for (size_t si = 0; si < n_sizes; si++) {
            for (int mode = 0; mode < DATA_COUNT; mode++) {
                if (mode == DATA_RAW && !is_quant(type)) continue;
                test_dot_and_gate_up(type, mode, sizes[si]);
                test_axpy(type, mode, sizes[si]);
            }
            test_dot_batch(type, sizes[si]);
            test_axpy_batch(type, sizes[si]);
            if (ts_r16_ok(type, sizes[si])) {
                for (int mode = 0; mode < DATA_COUNT; mode++) {
                    test_dot_r16(type, mode, sizes[si], 37); // two groups and a tail of 5
                }
                test_dot_r16(type, DATA_NORMAL, sizes[si], 5);  // only a tail
                test_dot_r16(type, DATA_NORMAL, sizes[si], 48); // only groups
            }
        }
    }
    // rows longer than the one-token kernels' per-call tables (1024 blocks): their fallback
    test_dot_batch(TS_TYPE_Q4_0, TS_QK * 1025);
    test_dot_batch(TS_TYPE_Q8_0, TS_QK * 1025);
    test_dot_r16(TS_TYPE_Q4_0, DATA_NORMAL, TS_QK * 1025, 20);
    test_dot_r16(TS_TYPE_Q8_0, DATA_NORMAL, TS_QK * 1025, 20);
    test_dot_r16(TS_TYPE_F16, DATA_NORMAL, 2049, 70); // element chunks of the batch tiles and a tail
    test_dot_r16(TS_TYPE_F16, DATA_NORMAL, 100, 16 * 9 + 3); // one token: 8 groups at a time, then 1
    printf("%ld checks, %ld failed\n", n_checks, n_failed);
    return n_failed ? 1 : 0;
}
