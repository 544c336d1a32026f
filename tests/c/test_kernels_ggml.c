// test_kernels_ggml.c: our reference conversions and quantisers are byte-identical to ggml's,
// and our dot products agree with ggml's own vec_dot on the same bytes. This is what lets a
// GGUF written by ggml's quantisers be read by our kernels with ggml's numerics.
//
// Tolerance of the dot products against ggml's vec_dot: both compute the same integer block
// sums (Q4_0/Q8_0) or the same products (F32/F16/BF16 with activations that are exact in the
// row type), only the float summation order differs, so |ours - ggml| <= 1e-5 * sum |terms|.
// With arbitrary f32 activations (our float rows take x in f32; ggml first rounds x to the
// row type) the difference also includes that rounding: 2^-8 (bf16) or 2^-11 (f16) of sum |terms|.
#include "check.h"
#include "ts-kernels.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float rng_wide(void) {
    float m = ldexpf(1.0f + 0.5f * (rng_sym() + 1.0f), (int) (rng_u64() % 29) - 20);
    return rng_u64() & 1 ? m : -m;
}

static enum ggml_type ggml_type_of(enum ts_type type) {
    switch (type) {
        case TS_TYPE_F32:  return GGML_TYPE_F32;
        case TS_TYPE_F16:  return GGML_TYPE_F16;
        case TS_TYPE_BF16: return GGML_TYPE_BF16;
        case TS_TYPE_Q8_0: return GGML_TYPE_Q8_0;
        default:           return GGML_TYPE_Q4_0;
    }
}

static void test_conversions(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float ours = ts_fp16_to_fp32((uint16_t) h), theirs = ggml_fp16_to_fp32((ggml_fp16_t) h);
        CHECK(memcmp(&ours, &theirs, 4) == 0 || (isnan(ours) && isnan(theirs)), "fp16 %04x -> f32", h);
        const float b_ours = ts_bf16_to_fp32((uint16_t) h);
        ggml_bf16_t bh = { (uint16_t) h };
        const float b_theirs = ggml_bf16_to_fp32(bh);
        CHECK(memcmp(&b_ours, &b_theirs, 4) == 0, "bf16 %04x -> f32", h);
        if (!isnan(ours)) {
            CHECK(ts_fp32_to_fp16(ours) == ggml_fp32_to_fp16(ours), "f32 %a -> fp16", ours);
        }
    }
    for (int t = 0; t < 1000000; t++) {
        uint32_t bits = (uint32_t) rng_u64();
        if (t % 2) bits = (bits & 0x807FFFFFu) | ((uint32_t) (96 + rng_u64() % 50) << 23); // around the half range
        if (t % 8 == 1) bits = (bits & ~0x1FFFu) | 0x1000u;                                // fp16 ties
        if (t % 8 == 3) bits = (bits & ~0xFFFFu) | 0x8000u;                                // bf16 ties
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) {
            continue; // NaN payloads are not part of the contract, only NaN-ness (test_kernels)
        }
        CHECK(ts_fp32_to_fp16(f) == ggml_fp32_to_fp16(f), "f32 %a -> fp16: %04x vs ggml %04x", f,
              ts_fp32_to_fp16(f), ggml_fp32_to_fp16(f));
        CHECK(ts_fp32_to_bf16(f) == ggml_fp32_to_bf16(f).bits, "f32 %a -> bf16: %04x vs ggml %04x", f,
              ts_fp32_to_bf16(f), ggml_fp32_to_bf16(f).bits);
    }
}

static void test_quantisers(void) {
    const int64_t n = 4096 + 32, n_rows = 9;
    float * x = malloc((size_t) (n * n_rows) * sizeof(float));
    for (int mode = 0; mode < 3; mode++) {
        for (int64_t k = 0; k < n * n_rows; k++) {
            x[k] = mode == 0 ? rng_sym() : mode == 1 ? rng_wide() : (float) ((int) (rng_u64() % 33) - 16) * 0.25f;
        }
        memset(x + 5 * TS_QK, 0, TS_QK * sizeof(float));   // all-zero blocks
        memset(x + n + 7 * TS_QK, 0, TS_QK * sizeof(float));
        for (int q = 0; q < 2; q++) {
            const enum ts_type type = q ? TS_TYPE_Q4_0 : TS_TYPE_Q8_0;
            const enum ggml_type gt = ggml_type_of(type);
            const size_t row_size = ts_row_size(type, n);
            CHECK(row_size == ggml_row_size(gt, n), "%s row size", ts_type_name(type));
            char * ours = malloc(row_size * (size_t) n_rows), * theirs = malloc(row_size * (size_t) n_rows);
            memset(ours, 0x55, row_size * (size_t) n_rows);
            memset(theirs, 0xAA, row_size * (size_t) n_rows);
            for (int64_t r = 0; r < n_rows; r++) ts_from_float(type, x + r * n, ours + r * row_size, n);
            const size_t written = ggml_quantize_chunk(gt, x, theirs, 0, n_rows, n, NULL);
            CHECK(written == row_size * (size_t) n_rows, "ggml_quantize_chunk size");
            CHECK(memcmp(ours, theirs, row_size * (size_t) n_rows) == 0, "%s quantiser differs from ggml (mode %d)",
                  ts_type_name(type), mode);
            free(ours);
            free(theirs);
        }
    }
    free(x);
}

// Our dot_rows (every table) against ggml's vec_dot on the same weight and activation bytes.
static void test_dots(void) {
    const enum ts_type types[] = { TS_TYPE_F32, TS_TYPE_F16, TS_TYPE_BF16, TS_TYPE_Q8_0, TS_TYPE_Q4_0 };
    const int64_t sizes[] = { 32, 96, 4096, 14336 };
    const int64_t n_rows = 8;
    for (size_t ti = 0; ti < 5; ti++) {
        const enum ts_type type = types[ti];
        const struct ggml_type_traits_cpu * tr = ggml_get_type_traits_cpu(ggml_type_of(type));
        const enum ts_type dot_type = ts_dot_type(type);
        for (size_t si = 0; si < 4; si++) {
            const int64_t n = sizes[si];
            const size_t row_bytes = ts_row_size(type, n);
            char * w = malloc(row_bytes * (size_t) n_rows);
            float * xf = malloc((size_t) n * sizeof(float));
            float * tmp = malloc((size_t) n * sizeof(float));
            for (int64_t r = 0; r < n_rows; r++) {
                for (int64_t k = 0; k < n; k++) tmp[k] = r % 2 ? rng_wide() : rng_sym();
                ts_from_float(type, tmp, w + r * row_bytes, n);
            }
            for (int exact_x = 0; exact_x < 2; exact_x++) {
                for (int64_t k = 0; k < n; k++) xf[k] = rng_sym();
                if (exact_x && !(type == TS_TYPE_Q8_0 || type == TS_TYPE_Q4_0)) {
                    // activations that are exact in the row type: ggml's rounding of x is then a no-op
                    ts_from_float(type, xf, tmp, n);
                    ts_to_float(type, tmp, xf, n);
                }
                // x as our kernels take it, and as ggml's vec_dot takes it
                void * x_ours = dot_type == TS_TYPE_F32 ? (void *) xf : malloc(ts_row_size(TS_TYPE_Q8_0, n));
                if (x_ours != xf) ts_quantize_row_q8_0_ref(xf, x_ours, n);
                void * x_ggml = x_ours;
                if (tr->vec_dot_type != GGML_TYPE_F32 && tr->vec_dot_type != GGML_TYPE_Q8_0) {
                    x_ggml = malloc(ggml_row_size(tr->vec_dot_type, n));
                    ts_from_float(tr->vec_dot_type == GGML_TYPE_F16 ? TS_TYPE_F16 : TS_TYPE_BF16, xf, x_ggml, n);
                }
                const double x_rel = x_ggml == x_ours || exact_x ? 0.0
                                   : tr->vec_dot_type == GGML_TYPE_F16 ? 0x1p-11 : 0x1p-8;
                for (int64_t r = 0; r < n_rows; r++) {
                    const char * row = w + r * row_bytes;
                    float theirs = 0.0f;
                    tr->vec_dot((int) n, &theirs, 0, row, 0, x_ggml, 0, 1);
                    // sum |terms| from the dequantised row and activations
                    ts_to_float(type, row, tmp, n);
                    float * xd = malloc((size_t) n * sizeof(float));
                    ts_to_float(dot_type, x_ours, xd, n);
                    double mag = 0.0;
                    for (int64_t k = 0; k < n; k++) mag += fabs((double) tmp[k] * xd[k]);
                    free(xd);
                    const double tol = (1e-5 + x_rel) * mag + 1e-30;
                    for (int isa = 0; isa < TS_ISA_COUNT; isa++) {
                        const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
                        if (!K) continue;
                        float ours = 0.0f;
                        K->dot_rows(type, n, row, row_bytes, x_ours, NULL, 1, &ours);
                        CHECK(fabs((double) ours - theirs) <= tol, "%s %s n=%lld row %lld: %.9g vs ggml %.9g (tol %.3g)",
                              K->name, ts_type_name(type), (long long) n, (long long) r, ours, theirs, tol);
                    }
                }
                if (x_ggml != x_ours) free(x_ggml);
                if (x_ours != xf) free(x_ours);
            }
            free(w); free(xf); free(tmp);
        }
    }
}

// ---- K-quants ---------------------------------------------------------------------------------

// ggml's reference Q8_K quantiser: exported by libggml-base (ggml-quants.h, not an installed
// header; Q8_K's type traits carry no from_float_ref).
void quantize_row_q8_K_ref(const float * x, void * y, int64_t k);

// Sum over a row of the magnitudes of the terms of dot(row, x) (Q4_K: the scale and the min
// parts separately, which can cancel): the scale of any float evaluation's rounding errors.
static double kquant_mag(enum ts_type type, const void * row, const float * x, int64_t n) {
    double mag = 0.0;
    for (int64_t e = 0; e < n; e++) {
        const int k = (int) (e % TS_QK_K);
        double t;
        if (type == TS_TYPE_Q4_K) {
            const ts_block_q4_K * blk = (const ts_block_q4_K *) row + e / TS_QK_K;
            int sc, m;
            ts_q4_K_scale_min(blk->scales, k / 32, &sc, &m);
            t = fabs((double) ts_fp16_to_fp32(blk->d) * sc * 15) + fabs((double) ts_fp16_to_fp32(blk->dmin) * m);
        } else {
            const ts_block_q6_K * blk = (const ts_block_q6_K *) row + e / TS_QK_K;
            t = fabs((double) ts_fp16_to_fp32(blk->d) * blk->scales[k / 16] * 32);
        }
        mag += t * fabs(x[e]);
    }
    return mag;
}

// Q8_K activations byte-identical to ggml's (its reference and its CPU backend's from_float);
// Q4_K/Q6_K rows made by ggml's quantiser dequantise bit for bit as ggml's to_float, and
// every table's dot_rows agrees with ggml's vec_dot_q4_K_q8_K / vec_dot_q6_K_q8_K.
static void test_kquants(void) {
    const int64_t n = 4096 + 256, n_rows = 6;
    float * x = malloc((size_t) (n * n_rows) * sizeof(float));
    for (int mode = 0; mode < 3; mode++) {
        for (int64_t k = 0; k < n * n_rows; k++) {
            x[k] = mode == 0 ? rng_sym() : mode == 1 ? rng_wide() : (float) ((int) (rng_u64() % 33) - 16) * 0.25f;
        }
        memset(x + 3 * TS_QK_K, 0, TS_QK_K * sizeof(float)); // an all-zero super-block
        const size_t q8_size = ts_row_size(TS_TYPE_Q8_K, n);
        CHECK(q8_size == ggml_row_size(GGML_TYPE_Q8_K, n), "q8_K row size");
        char * ours = malloc(q8_size), * ref = malloc(q8_size), * cpu = malloc(q8_size);
        for (int64_t r = 0; r < n_rows; r++) {
            // ggml leaves an all-zero super-block's bsums unwritten (ours are 0): its buffers start at 0
            memset(ours, 0x55, q8_size); memset(ref, 0, q8_size); memset(cpu, 0, q8_size);
            ts_quantize_row_q8_K_ref(x + r * n, (ts_block_q8_K *) ours, n);
            quantize_row_q8_K_ref(x + r * n, ref, n);
            ggml_get_type_traits_cpu(GGML_TYPE_Q8_K)->from_float(x + r * n, cpu, n);
            CHECK(memcmp(ours, ref, q8_size) == 0, "q8_K quantiser differs from ggml's reference (mode %d row %lld)", mode, (long long) r);
            CHECK(memcmp(ours, cpu, q8_size) == 0, "q8_K quantiser differs from ggml's CPU from_float (mode %d row %lld)", mode, (long long) r);
        }
        for (int q = 0; q < 2; q++) {
            const enum ts_type type = q ? TS_TYPE_Q6_K : TS_TYPE_Q4_K;
            const enum ggml_type gt = q ? GGML_TYPE_Q6_K : GGML_TYPE_Q4_K;
            const size_t row_size = ts_row_size(type, n);
            CHECK(row_size == ggml_row_size(gt, n), "%s row size", ts_type_name(type));
            char * w = malloc(row_size * (size_t) n_rows);
            ggml_quantize_chunk(gt, x, w, 0, n_rows, n, NULL);
            float * a = malloc((size_t) n * sizeof(float)), * b = malloc((size_t) n * sizeof(float));
            float * xf = malloc((size_t) n * sizeof(float));
            for (int64_t k = 0; k < n; k++) xf[k] = rng_sym();
            ts_quantize_row_q8_K_ref(xf, (ts_block_q8_K *) ours, n);
            ts_to_float(TS_TYPE_Q8_K, ours, xf, n);
            for (int64_t r = 0; r < n_rows; r++) {
                const char * row = w + r * row_size;
                ts_to_float(type, row, a, n);
                ggml_get_type_traits(gt)->to_float(row, b, n);
                CHECK(memcmp(a, b, (size_t) n * sizeof(float)) == 0, "%s to_float differs from ggml's (mode %d row %lld)",
                      ts_type_name(type), mode, (long long) r);
                float theirs = 0.0f;
                ggml_get_type_traits_cpu(gt)->vec_dot((int) n, &theirs, 0, row, 0, ours, 0, 1);
                const double tol = 1e-5 * kquant_mag(type, row, xf, n) + 1e-30;
                for (int isa = 0; isa < TS_ISA_COUNT; isa++) {
                    const struct ts_kernels * K = ts_kernels_for((enum ts_isa) isa);
                    if (!K) continue;
                    float mine = 0.0f;
                    K->dot_rows(type, n, row, row_size, ours, NULL, 1, &mine);
                    CHECK(fabs((double) mine - theirs) <= tol, "%s %s mode %d row %lld: %.9g vs ggml %.9g (tol %.3g)",
                          K->name, ts_type_name(type), mode, (long long) r, mine, theirs, tol);
                }
            }
            free(w); free(a); free(b); free(xf);
        }
        free(ours); free(ref); free(cpu);
    }
    free(x);
}

int main(void) {
    rng_state = 0x2545F4914F6CDD1Dull;
    ggml_cpu_init();
    test_conversions();
    test_quantisers();
    test_dots();
    test_kquants();
    return check_summary("test_kernels_ggml");
}
