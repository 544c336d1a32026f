// ts-kernels.h: the sparse-FFN compute kernels, free of ggml and of the runtime.
//
// Every function here is a pure function on pointers. One table of function pointers
// (struct ts_kernels) exists per instruction set; scalar.c is the reference that every
// other table is tested against. The ggml glue (src/ops.c) and the CUDA path call these
// and nothing else does the arithmetic.
//
// Conventions
//   - A weight matrix is a row-major array of `n_rows` rows; each row holds `n` elements
//     of one ts_type, `row_bytes` apart (ts_row_size(type, n) for a packed matrix).
//   - W_gate, W_up: row i = neuron i (length n_embd).  W_down_T: row i = neuron i's output
//     vector (length n_embd), i.e. the down projection stored neuron-major (SPEC §1).
//   - The activation vector x that meets a weight row in a dot product is given in the
//     row type's "dot type" (ts_dot_type): f32 for F32/F16/BF16 rows, Q8_0 blocks for
//     Q8_0/Q4_0 rows, Q8_K super-blocks for Q4_K/Q6_K rows, exactly as ggml quantises
//     activations for those types (ts_quantize_dot).
//   - Neuron lists (idx) are int32, ascending, without duplicates.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ts_type {
    TS_TYPE_F32  = 0,
    TS_TYPE_F16  = 1,
    TS_TYPE_BF16 = 2,
    TS_TYPE_Q8_0 = 3,
    TS_TYPE_Q4_0 = 4,
    TS_TYPE_Q4_K = 5,
    TS_TYPE_Q6_K = 6,
    TS_TYPE_Q8_K = 7, // the dot type of Q4_K/Q6_K (activations only: no kernel takes it as weights)
    TS_TYPE_COUNT
};

// The gated activation a = act(g, u) of the FFN kinds with natural sparsity (SPEC §1).
enum ts_act {
    TS_ACT_DRELU = 0, // relu(g) * relu(u)
    TS_ACT_REGLU = 1, // relu(g) * u
};

enum ts_isa {
    TS_ISA_SCALAR = 0,
    TS_ISA_AVX2   = 1, // AVX2 + FMA + F16C
    TS_ISA_AVX512 = 2, // AVX-512 F/BW/VL/DQ + VNNI (else the AVX2 table is used)
    TS_ISA_NEON   = 3,
    TS_ISA_COUNT
};

// Block formats, byte-identical to ggml's block_q8_0 / block_q4_0.
#define TS_QK 32
typedef struct { uint16_t d; int8_t  qs[TS_QK];     } ts_block_q8_0; // x = d * q
typedef struct { uint16_t d; uint8_t qs[TS_QK / 2]; } ts_block_q4_0; // x = d * (q - 8); qs[j]: lo nibble = x[j], hi = x[j+16]

// K-quant super-blocks, byte-identical to ggml's block_q4_K / block_q6_K / block_q8_K.
#define TS_QK_K 256
// Q4_K: eight sub-blocks of 32, x = d * sc[s] * q - dmin * m[s], q in 0..15; sc and m are
// 6-bit, packed in `scales` (ts_q4_K_scale_min); qs[32 c + l]: lo nibble = x[64 c + l], hi =
// x[64 c + 32 + l].
typedef struct { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[TS_QK_K / 2]; } ts_block_q4_K;
// Q6_K: sixteen sub-blocks of 16, x = d * scales[e / 16] * (q - 32), q in 0..63 of four low
// bits in ql and two high bits in qh; element e = 128 h + 32 k + l (k < 4, l < 32): low bits
// in ql[64 h + 32 (k & 1) + l] (lo nibble for k < 2, hi for k >= 2), high bits are bits
// 2k..2k+1 of qh[32 h + l].
typedef struct { uint8_t ql[TS_QK_K / 2]; uint8_t qh[TS_QK_K / 4]; int8_t scales[TS_QK_K / 16]; uint16_t d; } ts_block_q6_K;
// Q8_K: x = d * q (d an f32); bsums[g] = sum of qs[16 g .. 16 g + 15].
typedef struct { float d; int8_t qs[TS_QK_K]; int16_t bsums[TS_QK_K / 16]; } ts_block_q8_K;

// The 6-bit scale and min of Q4_K sub-block s (0..7), as ggml's get_scale_min_k4.
static inline void ts_q4_K_scale_min(const uint8_t * scales, int s, int * sc, int * m) {
    if (s < 4) {
        *sc = scales[s] & 63;
        *m  = scales[s + 4] & 63;
    } else {
        *sc = (scales[s + 4] & 0x0F) | ((scales[s - 4] >> 6) << 4);
        *m  = (scales[s + 4] >> 4)   | ((scales[s]     >> 6) << 4);
    }
}

// Quant e (0..255, in 0..63) of a Q6_K super-block.
static inline int ts_q6_K_quant(const ts_block_q6_K * blk, int e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uint8_t lo = blk->ql[64 * h + 32 * (k & 1) + l];
    return ((k < 2 ? lo & 0x0F : lo >> 4) | (((blk->qh[32 * h + l] >> (2 * k)) & 3) << 4));
}

static inline bool ts_is_kquant(int type) { return type == TS_TYPE_Q4_K || type == TS_TYPE_Q6_K; }
static inline bool ts_is_float(int type) { return type == TS_TYPE_F32 || type == TS_TYPE_F16 || type == TS_TYPE_BF16; }

// Column slices handed to threads by ts_axpy_rows start at multiples of this, so that
// no element's arithmetic depends on where a slice begins (see axpy_rows).
#define TS_COL_ALIGN 64

// ---- type facts -------------------------------------------------------------------------

const char * ts_type_name(enum ts_type type);
size_t       ts_block_size(enum ts_type type);        // elements per block (1, 32 or 256)
size_t       ts_row_size(enum ts_type type, int64_t n); // bytes of n elements; n % block == 0
enum ts_type ts_dot_type(enum ts_type type);          // F32, Q8_0 or Q8_K, see above
bool         ts_row_ok(enum ts_type type, int64_t n); // a weight type and n a whole number of its blocks

// ---- scalar conversions (exact, portable) -----------------------------------------------

float    ts_fp16_to_fp32(uint16_t h);
uint16_t ts_fp32_to_fp16(float f);   // round to nearest even, as F16C / ggml
float    ts_bf16_to_fp32(uint16_t h);
uint16_t ts_fp32_to_bf16(float f);   // round to nearest even, NaN kept quiet, as ggml

// Reference quantisers, bit-identical to ggml's quantize_row_*_ref. n % 32 == 0.
void ts_quantize_row_q8_0_ref(const float * x, ts_block_q8_0 * y, int64_t n);
void ts_quantize_row_q4_0_ref(const float * x, ts_block_q4_0 * y, int64_t n);
// Bit-identical to ggml's quantize_row_q8_K_ref (which ggml's CPU backend also uses for
// activations on x86 and ARM). n % 256 == 0.
void ts_quantize_row_q8_K_ref(const float * x, ts_block_q8_K * y, int64_t n);
// Any row type from f32 (F32 copy, F16/BF16 rounding, Q8_0/Q4_0/Q8_K reference quantisers;
// Q4_K/Q6_K weights are made by ggml's quantiser, not here: the row is left untouched).
void ts_from_float(enum ts_type type, const float * x, void * y, int64_t n);
// Any row type to f32.
void ts_to_float(enum ts_type type, const void * x, float * y, int64_t n);

// An activation row x (n floats) in the dot type of weight type `type`, as the kernels of
// table k take it (Q8_0: k->quantize_q8_0; Q8_K: the reference; f32: a copy). y holds
// ts_row_size(ts_dot_type(type), n) bytes.
struct ts_kernels;
void ts_quantize_dot(const struct ts_kernels * k, enum ts_type type, const float * x, void * y, int64_t n);

// ---- the 16-row layout of a dense matrix ----------------------------------------------------
// Weights only ever read whole (attention, output head, predictor) can be stored for the
// AVX-512 dense product: Q8_0/Q4_0/Q4_K rows in groups of 16, a group's blocks in order, block
// b of a group being the 16 rows' f16 scales (32 bytes; Q4_K: d, then dmin, 64 bytes) and then
// their other bytes transposed in dwords: 64-byte vector g holds bytes 4g..4g+3 of them of row
// r in dword r (Q4_0: 4 vectors of nibble pairs, Q8_0: 8 of quants, Q4_K: 3 of packed scales
// and mins, then 32 of nibble pairs). F16 rows: element k of the 16 rows, 32 bytes, then
// element k + 1 (a row per lane of a vector), and the sum of each row and token is one FMA chain
// over the elements in order from 0, sum = fma(w_k, x_k, sum), in every table that reads it:
// its own arithmetic, not dot_rows' (whose float rows keep two partial sums in the SIMD
// tables), so an F16 matrix's results depend on its layout, never on tokens, threads or ISA.
// The last n_rows % 16 rows follow in the plain layout.
// The matrix keeps its size. A group is one sequential stream (the plain layout makes 16 row
// streams, which the hardware prefetcher follows worse) and needs no transposing: the dense
// product reads DRAM about 25% faster (2 threads, Q4_0 4096 x 4096, 35 -> 44-46 GB/s).
#define TS_R16 16

bool ts_r16_ok(enum ts_type type, int64_t n); // a type and row length the layout holds
// w (n_rows plain rows of n elements) -> dst in the 16-row layout; dst must not overlap w.
void ts_pack_r16(enum ts_type type, int64_t n, int64_t n_rows, const void * w, void * dst);
// Row r (or only its block b) of a matrix in the 16-row layout, back in the plain layout.
void ts_r16_row(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, void * row);
void ts_r16_block(enum ts_type type, int64_t n, int64_t n_rows, const void * w16, int64_t r, int64_t b, void * blk);

// ---- the kernel table ---------------------------------------------------------------------

struct ts_kernels {
    enum ts_isa isa;
    const char * name;

    // Quantise an activation row to Q8_0 (n % 32 == 0). Must equal ts_quantize_row_q8_0_ref
    // up to round-half ties of the SIMD rounding mode.
    void (*quantize_q8_0)(const float * x, ts_block_q8_0 * y, int64_t n);

    // out[j] = dot(W[idx[j]], x) for j < n_idx.  idx == NULL means rows 0..n_idx-1.
    // x is in ts_dot_type(type).
    void (*dot_rows)(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                     const void * x, const int32_t * idx, int64_t n_idx, float * out);

    // The same rows against a batch of activation vectors (prompt processing): for tokens
    // t < n_tok and j < n_idx, out[t * out_stride + j] = dot(W[i], x_t) with i = idx[j] (or j
    // when idx == NULL) and x_t = (const char *) x + t * x_stride, in ts_dot_type(type).
    // Every result is bit-identical to dot_rows' for the same row and token, so batch size,
    // row split and thread count never change a bit; the fast tables read each weight row
    // once per batch (register tiles of rows x tokens) instead of once per token.
    // Pass many rows per call where possible (a thread's whole range, or the whole idx list):
    // the kernel tiles them itself (AVX-512 quantised rows: groups of 16) and prefetches the
    // next group while computing one, which a caller's 16-row calls cannot get. n_tok == 1
    // is dot_rows.
    void (*dot_rows_batch)(enum ts_type type, int64_t n, const void * w, size_t row_bytes,
                           const void * x, size_t x_stride, int64_t n_tok,
                           const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride);
    // True where dot_rows_batch blocks float rows (F32/F16/BF16) for the caches itself, so
    // ts_dot_rows_blocked hands it every token and row of a call at once.
    bool float_batch_blocked;

    // Dense rows of a matrix in the 16-row layout (ts_pack_r16; Q8_0/Q4_0/Q4_K/F16, ts_r16_ok),
    // its groups [g0, g1) (rows 16 g0 .. 16 g1 - 1) against n_tok tokens laid out as for
    // dot_rows_batch: out[t * out_stride + 16 (g - g0) + r] = dot(row 16 g + r, x_t). Quantised
    // rows: each bit-identical to dot_rows on the plain matrix (so their layout never changes
    // a result); F16 rows: the FMA chain above, the same bits in every table. The plain tail
    // rows are dot_rows' job. NULL in tables without it: their matrices stay plain.
    void (*dot_rows_r16)(enum ts_type type, int64_t n, const void * w16, int64_t g0, int64_t g1,
                         const void * x, size_t x_stride, int64_t n_tok, float * out, int64_t out_stride);

    // Sparse gate/up fused with the activation: for j < n_idx, i = idx[j] (or j when
    // idx == NULL): a[j] = act(dot(W_gate[i], x), dot(W_up[i], x)).
    void (*gate_up)(enum ts_type type, enum ts_act act, int64_t n,
                    const void * w_gate, const void * w_up, size_t row_bytes,
                    const void * x, const int32_t * idx, int64_t n_idx, float * a);

    // Exact-mode gate/up over neurons [i0, i1): g = dot(W_gate[i], x); where g > 0 also
    // u = dot(W_up[i], x) and a = act(g, u); elsewhere a = 0 (W_up row never read).
    // Writes a[i - i0] for every i in the range; returns how many were non-zero.
    int64_t (*gate_up_exact)(enum ts_type type, enum ts_act act, int64_t n,
                             const void * w_gate, const void * w_up, size_t row_bytes,
                             const void * x, int64_t i0, int64_t i1, float * a);

    // Sparse down projection over the column slice [c0, c1) of the output:
    //   y[c] = sum over j = 0..n_idx-1, in that order, of a[j] * W_T[idx[j]][c]
    // written (not accumulated) for c0 <= c < c1; idx == NULL means rows 0..n_idx-1.
    // Each y[c] is a chain of fused multiply-adds starting from 0:
    //   F32/F16/BF16: y = fma(a[j], w, y) with w the row element as f32;
    //   Q8_0/Q4_0:    y = fma(a[j] * d, (float) q, y) with d the block scale as f32 and
    //                 q the integer quant (q - 8 for Q4_0).
    //   Q6_K:         y = fma(a[j] * (d * sc), (float) (q - 32), y), d * sc the f32 product
    //                 of the super-block scale and the sub-block's int8 scale (exact).
    //   Q4_K:         y = fma(a[j] * (d * sc), (float) q, y - a[j] * (dmin * m)), with the
    //                 exact f32 products d * sc and dmin * m of the sub-block's 6-bit scale
    //                 and min: one subtraction and one FMA per row and element.
    // So the result is bit-identical across ISAs and for any split of the columns into
    // slices (c0 a multiple of TS_COL_ALIGN, c1 likewise or == n): thread count never
    // changes a bit. c0, c1 multiples of 32 for the quantised types (64 for K-quants).
    void (*axpy_rows)(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                      const int32_t * idx, const float * a, int64_t n_idx,
                      int64_t c0, int64_t c1, float * y);

    // The down projection of a batch of tokens over the column slice [c0, c1): for t < n_tok,
    // y_t = y + t * y_stride gets the axpy_rows sum of the rows idx[0..n_idx) with the
    // token's values a_t = a + t * a_stride (zeros allowed: a token that does not use a
    // row of the batch's union gives it 0). Every y_t[c] is the FMA chain axpy_rows gives
    // for a_t, bit for bit (zeros included: fma(0 * d, q, y) is y, up to the sign of a zero
    // sum, exactly as axpy_rows with that a_t); the fast tables dequantise each row's column
    // tile once for a tile of tokens. y_t's columns outside [c0, c1) are not touched, so
    // threads may split the columns (ts_split_cols) as for axpy_rows.
    void (*axpy_rows_batch)(enum ts_type type, int64_t n, const void * w_t, size_t row_bytes,
                            const int32_t * idx, const float * a, int64_t a_stride, int64_t n_idx,
                            int64_t n_tok, int64_t c0, int64_t c1, float * y, int64_t y_stride);
};

// The table for an instruction set, or NULL when it was not compiled in or this CPU
// lacks it.
const struct ts_kernels * ts_kernels_for(enum ts_isa isa);
// The fastest table this CPU runs; TURBOSPARSE_ISA=scalar|avx2|avx512|neon overrides
// (an unavailable choice falls back to the best available and is reported on stderr).
const struct ts_kernels * ts_kernels_best(void);
const char * ts_isa_name(enum ts_isa isa);
// True on CPUs that run a 512-bit vector operation as two 256-bit halves (AMD Zen 4, family
// 19h): there ggml's AVX2 kernels can beat ours for a type (src/matmul.c's policy).
bool ts_cpu_halves_512(void);

// dot_rows_batch over a batch larger than L2, in blocks that fit: the rows in blocks of about
// TS_BATCH_BLOCK_BYTES of weights, the tokens in chunks of about as many bytes of x (a
// multiple of 12 tokens: whole register tiles in every table), every row block meeting every
// token chunk while both sit in L2. Same results as one dot_rows_batch call, bit for bit.
// (f32 activations of 128 tokens of 4096 are 2 MB: without the chunks the whole of x was
// streamed from L3 for every group of rows, and F16 prompt processing ran at that speed.)
// Tables whose float kernels block for the caches themselves (float_batch_blocked) get
// float rows in one call.
#define TS_BATCH_BLOCK_BYTES (256 * 1024)
void ts_dot_rows_blocked(const struct ts_kernels * k, enum ts_type type, int64_t n, const void * w,
                         size_t row_bytes, const void * x, size_t x_stride, int64_t n_tok,
                         const int32_t * idx, int64_t n_idx, float * out, int64_t out_stride);

// ---- small helpers shared by every ISA ------------------------------------------------------

static inline float ts_act_apply(enum ts_act act, float g, float u) {
    float rg = g > 0.0f ? g : 0.0f;
    if (act == TS_ACT_DRELU) {
        return u > 0.0f ? rg * u : 0.0f;
    }
    return rg * u;
}

// Activation vectors, elementwise: out = act(g, u).
void ts_act_rows(enum ts_act act, int64_t n, const float * g, const float * u, float * out);

// Predictor -> active set: idx gets every i with logits[i] > tau, ascending; returns the
// count. idx must hold n entries.
int64_t ts_select_active(const float * logits, int64_t n, float tau, int32_t * idx);

// The active (non-zero) entries of an activation vector: idx and the compact values.
int64_t ts_select_nonzero(const float * a, int64_t n, int32_t * idx, float * a_compact);

// The column slice [c0, c1) of thread ith of nth over n output columns, aligned to
// TS_COL_ALIGN; slices of later threads may be empty.
static inline void ts_split_cols(int64_t n, int ith, int nth, int64_t * c0, int64_t * c1) {
    int64_t n_chunks = (n + TS_COL_ALIGN - 1) / TS_COL_ALIGN;
    int64_t k0 = n_chunks * ith / nth;
    int64_t k1 = n_chunks * (ith + 1) / nth;
    *c0 = k0 * TS_COL_ALIGN < n ? k0 * TS_COL_ALIGN : n;
    *c1 = k1 * TS_COL_ALIGN < n ? k1 * TS_COL_ALIGN : n;
}

#ifdef __cplusplus
}
#endif
