// turbosparse.h: the model runtime's public C API (load a GGUF model, run batches of tokens
// through it, read logits and statistics).
//
// Plain C with opaque handles and plain parameter structs so that the Python package can call
// it through cffi in ABI mode and ts-main through an ordinary link. No callbacks: a long
// computation is stopped by ts_context_abort() from another thread (or a signal handler); it
// is checked between graph nodes and the decode returns TS_ERR_ABORTED.
//
// Errors: functions that can fail return NULL or a negative status and write a message naming
// the problem into the caller's buffer (load / context creation) or into the context
// (ts_context_error()).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Same values as enum ggml_sparse_ffn_kind / ggml_sparse_mode in ggml-sparse.h.
enum ts_ffn_kind {
    TS_FFN_SWIGLU = 0,
    TS_FFN_REGLU  = 1,
    TS_FFN_DRELU  = 2,
};

enum ts_ffn_mode {
    TS_FFN_MODE_AUTO      = -1, // predicted if the file has predictors, else exact if the FFN
                                // has natural zeros (ReGLU/dReLU), else threshold if the file
                                // carries activation thresholds (SwiGLU), else dense
    TS_FFN_MODE_DENSE     = 0,
    TS_FFN_MODE_PREDICTED = 1,
    TS_FFN_MODE_EXACT     = 2,
    TS_FFN_MODE_THRESHOLD = 3, // SwiGLU (CATS): up/down rows only where |silu(gate)| >= the
                               // layer's threshold (turbosparse.act_threshold.values); lossy
};

enum ts_predictor_input {
    TS_PRED_INPUT_RESIDUAL  = 0, // residual stream before the FFN RMSNorm
    TS_PRED_INPUT_FFN_INPUT = 1, // the normed FFN (expert) input
};

enum ts_status {
    TS_OK                 = 0,
    TS_ERR_INVALID        = -1, // bad argument (token id out of range, n <= 0, bad sequence id,
                                // a position that does not continue its sequence, ...)
    TS_ERR_CONTEXT_FULL   = -2, // the batch would pass the context size (no free KV cells left)
    TS_ERR_COMPUTE        = -3, // graph building or computing failed
    TS_ERR_ABORTED        = -4, // ts_context_abort() was called
};

struct ts_model_params {
    int32_t use_mmap; // 1: the file is memory-mapped (default; repack copies weights out of it); 0: read into RAM
    int32_t repack;   // 1 (default): weights only ever read by dense products (attention,
                      // output, router, predictors, SwiGLU FFNs) are copied into RAM in the layout
                      // of the faster kernel (ours in huge pages, or ggml's CPU repack buffer), and
                      // the sparse FFN weights into huge pages in the file's layout when they fit
                      // in the available memory; they then live in RAM, not the page cache
};

// What a loaded file says about the model. Strings are NUL-terminated (truncated if longer).
struct ts_model_meta {
    char    name[128];
    char    source_model_type[64]; // turbosparse.source_model_type, "" for plain llama.cpp files
    int32_t is_turbosparse;        // the file has turbosparse.* keys
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_ff;                  // per expert for MoE
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_rot;                 // RoPE dimensions (the head size)
    int32_t head_dim;              // llama.attention.key_length, default n_embd / n_head
    int32_t n_expert;              // 0 for dense models
    int32_t n_expert_used;
    int32_t sliding_window;        // 0 = none
    float   rms_eps;
    float   rope_theta;
    float   rope_freq_scale;       // 1 / llama.rope.scaling.factor (linear scaling), else 1
    int32_t ffn_kind;              // enum ts_ffn_kind
    int32_t down_neuron_major;     // 1: ffn_down_t (neuron-major), 0: ffn_down
    int32_t has_predictor;
    int32_t predictor_input;       // enum ts_predictor_input
    float   threshold;             // the file's default predictor threshold (0 if absent)
    int32_t tied_output;           // output matrix is token_embd
    int32_t file_type;             // general.file_type, -1 if absent
    int64_t n_params;              // elements of all tensors
    int64_t n_bytes;               // bytes of all tensors
    double  load_ms;
    int32_t n_repacked;            // tensors held in ggml's CPU repack buffer (ts_model_params.repack)
    int64_t n_bytes_repacked;      // RAM that buffer takes (the file bytes of those tensors are not read again)
    int32_t has_down_t;            // the neuron-major down projection is in the file (layout neuron_major or both)
    int32_t has_act_thresholds;    // turbosparse.act_threshold.values is in the file (threshold mode)
};

struct ts_context_params {
    int32_t n_ctx;         // KV cache size in tokens (0: the model's training context, at most 4096)
    int32_t n_threads;     // ggml threads (0: the online CPUs)
    int32_t ffn_mode;      // enum ts_ffn_mode
    int32_t use_threshold; // 1: use `threshold` below instead of the file's
    float   threshold;
    int32_t kv_f32;        // 1: f32 KV cache (for exact comparisons); 0: f16 (default)
    int32_t collect_act_hist; // threshold mode: keep a histogram of |silu(gate)| per layer
                              // (ts_context_act_hist; for calibration). A file without
                              // thresholds then runs with -inf (every neuron) until set.
    const float * act_thresholds; // threshold mode: n_layer cuts to use instead of the file's
                                  // (NULL: the file's); copied
    int32_t n_seq_max;     // sequences the context holds at once, ids 0..n_seq_max-1 (0 or 1:
                           // one; at most TS_MAX_SEQ). They share the n_ctx cells of the KV cache.
};

#define TS_MAX_SEQ 256

// Running statistics since the context was made or reset. A decode of more than one token
// counts as prompt processing, a decode of one token as generation.
struct ts_stats {
    int64_t n_prompt_tokens;
    double  prompt_ms;
    int64_t n_gen_tokens;
    double  gen_ms;
    int64_t ffn_neurons_computed; // over all sparse FFN evaluations (dense mode counts all)
    int64_t ffn_neurons_total;
    double  ffn_density;          // computed / total, 1 when nothing sparse ran
    double  load_ms;              // model load time
    // Weight rows the sparse gate/up nodes read: a batch reads the union of its tokens' rows
    // once (per sub-batch, ggml-sparse.h), so with several sequences in a batch this is below
    // the sum of their own rows. rows_total counts n_ff per node evaluation.
    int64_t ffn_rows_read;
    int64_t ffn_rows_total;
    double  ffn_union_density;    // rows_read / rows_total, 1 when nothing sparse ran
    // The last successful decode alone (one step of a batched generation)
    int32_t last_n_tokens;
    double  last_ms;
    double  last_ffn_density;
    double  last_ffn_union_density;
};

struct ts_model;
struct ts_context;

void ts_model_params_init(struct ts_model_params * params);
void ts_context_params_init(struct ts_context_params * params);

// NULL on failure with the first problem written to err.
struct ts_model * ts_model_load(const char * path, const struct ts_model_params * params,
                                char * err, size_t err_size);
void ts_model_free(struct ts_model * model);
void ts_model_get_meta(const struct ts_model * model, struct ts_model_meta * meta);
// The model's GGUF metadata (struct gguf_context *), valid while the model lives: the
// tokenizer reads its vocabulary from it.
const void * ts_model_gguf(const struct ts_model * model);

struct ts_context * ts_context_new(struct ts_model * model, const struct ts_context_params * params,
                                   char * err, size_t err_size);
void ts_context_free(struct ts_context * ctx);
// Empties the KV cache and the statistics.
void ts_context_reset(struct ts_context * ctx);
int32_t ts_context_n_ctx(const struct ts_context * ctx);
int32_t ts_context_n_past(const struct ts_context * ctx);
int32_t ts_context_n_threads(const struct ts_context * ctx);
int32_t ts_context_ffn_mode(const struct ts_context * ctx); // the mode in use (never AUTO)
float   ts_context_threshold(const struct ts_context * ctx);

// Runs tokens[0..n) of sequence 0 as one batch at positions n_past.. and appends them to the
// KV cache (ts_decode_batch with every entry in sequence 0).
// logits: NULL, or [n, n_vocab] floats when logits_all, else [n_vocab] for the last token.
// Returns TS_OK or a negative enum ts_status (message in ts_context_error()); on error the
// KV cache is left as it was before the call.
int32_t ts_decode(struct ts_context * ctx, const int32_t * tokens, int32_t n,
                  float * logits, int32_t logits_all);

// ---- several sequences in one context (continuous batching) ----------------------------------
//
// A batch holds entries (token, position, sequence, whether its logits are wanted) of one or
// several sequences; one graph computes them all, so the weights (and the sparse FFN's union
// of active rows) are read once for the batch. Each entry attends to its own sequence's
// cells at positions up to its own. A sequence grows by appending: its entries in a batch
// take the positions ts_seq_n_past(seq), +1, ... in entry order.
struct ts_batch {
    int32_t         n_tokens;
    const int32_t * tokens; // [n_tokens]
    const int32_t * pos;    // [n_tokens]
    const int32_t * seq;    // [n_tokens] 0..n_seq_max-1
    const int8_t  * logits; // [n_tokens] nonzero: this entry's logits are wanted; NULL: the last entry's only
};

// Decodes the batch and adds its entries to the KV cache. logits: NULL, or [n_wanted, n_vocab]
// floats, the wanted entries' rows in entry order. TS_OK or a negative enum ts_status with the
// message in ts_context_error() (full cache, bad sequence id, a position out of order, a token
// outside the vocabulary); on error the KV cache is left as it was.
int32_t ts_decode_batch(struct ts_context * ctx, const struct ts_batch * batch, float * logits);
// The position sequence seq's next entry takes (its length); -1 for an id out of range.
int32_t ts_seq_n_past(const struct ts_context * ctx, int32_t seq);
// Frees sequence seq's cells (it starts again at position 0). TS_OK or TS_ERR_INVALID.
int32_t ts_seq_remove(struct ts_context * ctx, int32_t seq);
// Frees every sequence's cells; unlike ts_context_reset the statistics are kept.
void ts_kv_clear(struct ts_context * ctx);
int32_t ts_context_n_seq_max(const struct ts_context * ctx);
int32_t ts_context_n_free(const struct ts_context * ctx); // KV cells not holding any sequence

// Asks a running (or the next) ts_decode to stop; safe from another thread or a signal handler.
void ts_context_abort(struct ts_context * ctx);
const char * ts_context_error(const struct ts_context * ctx);

// Threshold mode: the per-layer cuts on |silu(gate)| in use (n = n_layer floats). Set takes
// effect from the next decode; -INFINITY computes every neuron. TS_OK, or TS_ERR_INVALID
// (message in ts_context_error) for another mode, a wrong n or a NaN.
int32_t ts_context_set_act_thresholds(struct ts_context * ctx, const float * thresholds, int32_t n);
int32_t ts_context_get_act_thresholds(const struct ts_context * ctx, float * thresholds, int32_t n);
// Threshold mode, since the last reset: neurons computed and evaluated in layer il.
int32_t ts_context_layer_stats(const struct ts_context * ctx, int32_t il, int64_t * computed, int64_t * total);
// With collect_act_hist: layer il's histogram of |silu(gate)| (n_bins = GGML_SPARSE_ACT_HIST_BINS
// = 32768; bin b holds the values v with ts_act_hist_edge(b) <= |v| < ts_act_hist_edge(b + 1)).
int32_t ts_context_act_hist(const struct ts_context * ctx, int32_t il, int64_t * counts, int32_t n_bins);
float   ts_act_hist_edge(int32_t bin);
void ts_context_get_stats(const struct ts_context * ctx, struct ts_stats * stats);

#ifdef __cplusplus
}
#endif
