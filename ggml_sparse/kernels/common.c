// common.c: type facts, exact scalar conversions, reference quantisers and the small
// ISA-independent pieces (activation, active-set selection) shared by every kernel table.
#include "ts-kernels.h"

#include <math.h>
#include <string.h>

static const char * const TYPE_NAMES[TS_TYPE_COUNT] = { "f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K", "q8_K" };

const char * ts_type_name(enum ts_type type) {
    return (unsigned) type < TS_TYPE_COUNT ? TYPE_NAMES[type] : "unknown";
}

size_t ts_block_size(enum ts_type type) {
    switch (type) {
        case TS_TYPE_Q8_0: case TS_TYPE_Q4_0: return TS_QK;
        case TS_TYPE_Q4_K: case TS_TYPE_Q6_K: case TS_TYPE_Q8_K: return TS_QK_K;
        default: return 1;
    }
}

size_t ts_row_size(enum ts_type type, int64_t n) {
    switch (type) {
        case TS_TYPE_F32:  return (size_t) n * 4;
        case TS_TYPE_F16:  return (size_t) n * 2;
        case TS_TYPE_BF16: return (size_t) n * 2;
        case TS_TYPE_Q8_0: return (size_t) (n / TS_QK) * sizeof(ts_block_q8_0);
        case TS_TYPE_Q4_0: return (size_t) (n / TS_QK) * sizeof(ts_block_q4_0);
        case TS_TYPE_Q4_K: return (size_t) (n / TS_QK_K) * sizeof(ts_block_q4_K);
        case TS_TYPE_Q6_K: return (size_t) (n / TS_QK_K) * sizeof(ts_block_q6_K);
        case TS_TYPE_Q8_K: return (size_t) (n / TS_QK_K) * sizeof(ts_block_q8_K);
        default:           return 0;
    }
}

enum ts_type ts_dot_type(enum ts_type type) {
    switch (type) {
        case TS_TYPE_Q8_0: case TS_TYPE_Q4_0: return TS_TYPE_Q8_0;
        case TS_TYPE_Q4_K: case TS_TYPE_Q6_K: return TS_TYPE_Q8_K;
        default: return TS_TYPE_F32;
    }
}

bool ts_row_ok(enum ts_type type, int64_t n) {
    return (unsigned) type < TS_TYPE_COUNT && type != TS_TYPE_Q8_K && n > 0 && n % (int64_t) ts_block_size(type) == 0;
}

// ---- conversions ------------------------------------------------------------------------

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float    float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// IEEE half <-> single by the classic exponent-rebias method: normal halves are shifted
// into a single's layout and rescaled by 2^-112; subnormal halves are built from a magic
// constant; rounding on the way down is done by the FPU (nearest even) on a value
// pre-scaled so that the half's rounding point falls on the single's.
float ts_fp16_to_fp32(uint16_t h) {
    const uint32_t w      = (uint32_t) h << 16;
    const uint32_t sign   = w & 0x80000000u;
    const uint32_t two_w  = w + w;
    const float normal    = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float subnormal = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t mag    = two_w < (1u << 27) ? bits_of(subnormal) : bits_of(normal);
    return float_of(sign | mag);
}

uint16_t ts_fp32_to_fp16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w     = bits_of(f);
    const uint32_t shl1  = w + w;
    const uint32_t sign  = w & 0x80000000u;
    uint32_t bias = shl1 & 0xFF000000u;
    if (bias < 0x71000000u) {
        bias = 0x71000000u;
    }
    base = float_of((bias >> 1) + 0x07800000u) + base;
    const uint32_t b        = bits_of(base);
    const uint32_t exp_bits = (b >> 13) & 0x00007C00u;
    const uint32_t man_bits = b & 0x00000FFFu;
    return (uint16_t) ((sign >> 16) | (shl1 > 0xFF000000u ? 0x7E00u : exp_bits + man_bits));
}

float ts_bf16_to_fp32(uint16_t h) {
    return float_of((uint32_t) h << 16);
}

uint16_t ts_fp32_to_bf16(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t) ((u >> 16) | 64); // NaN: keep it a quiet NaN
    }
    return (uint16_t) ((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

void ts_quantize_row_q8_0_ref(const float * x, ts_block_q8_0 * y, int64_t n) {
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const float * xb = x + b * TS_QK;
        float amax = 0.0f;
        for (int j = 0; j < TS_QK; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        const float d  = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ts_fp32_to_fp16(d);
        for (int j = 0; j < TS_QK; j++) {
            y[b].qs[j] = (int8_t) roundf(xb[j] * id);
        }
    }
}

void ts_quantize_row_q4_0_ref(const float * x, ts_block_q4_0 * y, int64_t n) {
    for (int64_t b = 0; b < n / TS_QK; b++) {
        const float * xb = x + b * TS_QK;
        float amax = 0.0f, max = 0.0f; // max keeps its sign: the scale maps it to -8
        for (int j = 0; j < TS_QK; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max  = xb[j];
            }
        }
        const float d  = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ts_fp32_to_fp16(d);
        for (int j = 0; j < TS_QK / 2; j++) {
            int8_t lo = (int8_t) (xb[j] * id + 8.5f);
            int8_t hi = (int8_t) (xb[j + TS_QK / 2] * id + 8.5f);
            lo = lo < 15 ? lo : 15;
            hi = hi < 15 ? hi : 15;
            y[b].qs[j] = (uint8_t) (lo | (hi << 4));
        }
    }
}

// ggml's nearest_int: round to nearest, ties to even, by the float addition of 1.5 * 2^23.
static inline int nearest_int(float f) {
    const float v = f + 12582912.0f;
    int i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

void ts_quantize_row_q8_K_ref(const float * x, ts_block_q8_K * y, int64_t n) {
    for (int64_t b = 0; b < n / TS_QK_K; b++) {
        const float * xb = x + b * TS_QK_K;
        float amax = 0.0f, max = 0.0f; // max keeps its sign: the scale maps it to -127
        for (int j = 0; j < TS_QK_K; j++) {
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                max  = xb[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < TS_QK_K; j++) {
            const int v = nearest_int(iscale * xb[j]);
            y[b].qs[j] = (int8_t) (v < 127 ? v : 127);
        }
        for (int g = 0; g < TS_QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) {
                sum += y[b].qs[16 * g + j];
            }
            y[b].bsums[g] = (int16_t) sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

void ts_quantize_dot(const struct ts_kernels * k, enum ts_type type, const float * x, void * y, int64_t n) {
    switch (ts_dot_type(type)) {
        case TS_TYPE_Q8_0: k->quantize_q8_0(x, y, n); break;
        case TS_TYPE_Q8_K: ts_quantize_row_q8_K_ref(x, y, n); break;
        default:           memcpy(y, x, (size_t) n * sizeof(float)); break;
    }
}

void ts_from_float(enum ts_type type, const float * x, void * y, int64_t n) {
    switch (type) {
        case TS_TYPE_F32:  memcpy(y, x, (size_t) n * 4); break;
        case TS_TYPE_F16:  for (int64_t i = 0; i < n; i++) ((uint16_t *) y)[i] = ts_fp32_to_fp16(x[i]); break;
        case TS_TYPE_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *) y)[i] = ts_fp32_to_bf16(x[i]); break;
        case TS_TYPE_Q8_0: ts_quantize_row_q8_0_ref(x, y, n); break;
        case TS_TYPE_Q4_0: ts_quantize_row_q4_0_ref(x, y, n); break;
        case TS_TYPE_Q8_K: ts_quantize_row_q8_K_ref(x, y, n); break;
        default: break;
    }
}

void ts_to_float(enum ts_type type, const void * x, float * y, int64_t n) {
    switch (type) {
        case TS_TYPE_F32:  memcpy(y, x, (size_t) n * 4); break;
        case TS_TYPE_F16:  for (int64_t i = 0; i < n; i++) y[i] = ts_fp16_to_fp32(((const uint16_t *) x)[i]); break;
        case TS_TYPE_BF16: for (int64_t i = 0; i < n; i++) y[i] = ts_bf16_to_fp32(((const uint16_t *) x)[i]); break;
        case TS_TYPE_Q8_0:
            for (int64_t b = 0; b < n / TS_QK; b++) {
                const ts_block_q8_0 * blk = (const ts_block_q8_0 *) x + b;
                const float d = ts_fp16_to_fp32(blk->d);
                for (int j = 0; j < TS_QK; j++) y[b * TS_QK + j] = d * blk->qs[j];
            }
            break;
        case TS_TYPE_Q4_0:
            for (int64_t b = 0; b < n / TS_QK; b++) {
                const ts_block_q4_0 * blk = (const ts_block_q4_0 *) x + b;
                const float d = ts_fp16_to_fp32(blk->d);
                for (int j = 0; j < TS_QK / 2; j++) {
                    y[b * TS_QK + j]             = d * ((blk->qs[j] & 0x0F) - 8);
                    y[b * TS_QK + j + TS_QK / 2] = d * ((blk->qs[j] >> 4) - 8);
                }
            }
            break;
        case TS_TYPE_Q4_K:
            for (int64_t b = 0; b < n / TS_QK_K; b++) {
                const ts_block_q4_K * blk = (const ts_block_q4_K *) x + b;
                const float d = ts_fp16_to_fp32(blk->d), dmin = ts_fp16_to_fp32(blk->dmin);
                for (int e = 0; e < TS_QK_K; e++) {
                    int sc, m;
                    ts_q4_K_scale_min(blk->scales, e / 32, &sc, &m);
                    const uint8_t byte = blk->qs[32 * (e / 64) + e % 32];
                    const int q = (e % 64) < 32 ? byte & 0x0F : byte >> 4;
                    y[b * TS_QK_K + e] = (d * (float) sc) * (float) q - dmin * (float) m;
                }
            }
            break;
        case TS_TYPE_Q6_K:
            for (int64_t b = 0; b < n / TS_QK_K; b++) {
                const ts_block_q6_K * blk = (const ts_block_q6_K *) x + b;
                const float d = ts_fp16_to_fp32(blk->d);
                for (int e = 0; e < TS_QK_K; e++) {
                    y[b * TS_QK_K + e] = (d * (float) blk->scales[e / 16]) * (float) (ts_q6_K_quant(blk, e) - 32);
                }
            }
            break;
        case TS_TYPE_Q8_K:
            for (int64_t b = 0; b < n / TS_QK_K; b++) {
                const ts_block_q8_K * blk = (const ts_block_q8_K *) x + b;
                for (int e = 0; e < TS_QK_K; e++) y[b * TS_QK_K + e] = blk->d * blk->qs[e];
            }
            break;
        default: break;
    }
}

// ---- activation and selection ------------------------------------------------------------

void ts_act_rows(enum ts_act act, int64_t n, const float * g, const float * u, float * out) {
    for (int64_t i = 0; i < n; i++) {
        out[i] = ts_act_apply(act, g[i], u[i]);
    }
}

int64_t ts_select_active(const float * logits, int64_t n, float tau, int32_t * idx) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        idx[count] = (int32_t) i;
        count += logits[i] > tau; // branch-free: the store is kept only when active
    }
    return count;
}

int64_t ts_select_nonzero(const float * a, int64_t n, int32_t * idx, float * a_compact) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        idx[count]       = (int32_t) i;
        a_compact[count] = a[i];
        count += a[i] != 0.0f;
    }
    return count;
}

void ts_dot_rows_blocked(const struct ts_kernels * k, enum ts_type type, int64_t n, const void * w,
                         size_t row_bytes, const void * x, size_t x_stride, int64_t n_tok,
                         const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride) {
    if (k->float_batch_blocked && ts_is_float(type)) {
        k->dot_rows_batch(type, n, w, row_bytes, x, x_stride, n_tok, idx, n_idx, out, out_stride);
        return;
    }
    int64_t block_rows = TS_BATCH_BLOCK_BYTES / (int64_t) row_bytes / 16 * 16;
    block_rows = block_rows > 16 ? block_rows : 16;
    int64_t chunk_tok = TS_BATCH_BLOCK_BYTES / (int64_t) x_stride / 12 * 12;
    chunk_tok = chunk_tok > 12 ? chunk_tok : 12;
    for (int64_t j0 = 0; j0 < n_idx; j0 += block_rows) {
        const int64_t nj = n_idx - j0 < block_rows ? n_idx - j0 : block_rows;
        // a block of consecutive rows (idx == NULL) starts at its first row
        const void * wb = idx ? w : (const char *) w + (size_t) j0 * row_bytes;
        const int32_t * ib = idx ? idx + j0 : NULL;
        for (int64_t t0 = 0; t0 < n_tok; t0 += chunk_tok) {
            const int64_t nt = n_tok - t0 < chunk_tok ? n_tok - t0 : chunk_tok;
            k->dot_rows_batch(type, n, wb, row_bytes, (const char *) x + (size_t) t0 * x_stride, x_stride, nt,
                              ib, nj, out + t0 * out_stride + j0, out_stride);
        }
    }
}
