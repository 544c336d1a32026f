// cffi declarations of the runtime API (ggml_sparse/include/turbosparse.h, comments dropped).
// Keep in sync with that header (tests/python/test_runtime.py checks it).
enum ts_ffn_kind {
    TS_FFN_SWIGLU = 0,
    TS_FFN_REGLU  = 1,
    TS_FFN_DRELU  = 2,
};
enum ts_ffn_mode {
    TS_FFN_MODE_AUTO      = -1,
    TS_FFN_MODE_DENSE     = 0,
    TS_FFN_MODE_PREDICTED = 1,
    TS_FFN_MODE_EXACT     = 2,
    TS_FFN_MODE_THRESHOLD = 3,
};
enum ts_predictor_input {
    TS_PRED_INPUT_RESIDUAL  = 0,
    TS_PRED_INPUT_FFN_INPUT = 1,
};
enum ts_status {
    TS_OK                 = 0,
    TS_ERR_INVALID        = -1,
    TS_ERR_CONTEXT_FULL   = -2,
    TS_ERR_COMPUTE        = -3,
    TS_ERR_ABORTED        = -4,
};
struct ts_model_params {
    int32_t use_mmap;
    int32_t repack;
};
struct ts_model_meta {
    char    name[128];
    char    source_model_type[64];
    int32_t is_turbosparse;
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_ff;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_rot;
    int32_t head_dim;
    int32_t n_expert;
    int32_t n_expert_used;
    int32_t sliding_window;
    float   rms_eps;
    float   rope_theta;
    float   rope_freq_scale;
    int32_t ffn_kind;
    int32_t down_neuron_major;
    int32_t has_predictor;
    int32_t predictor_input;
    float   threshold;
    int32_t tied_output;
    int32_t file_type;
    int64_t n_params;
    int64_t n_bytes;
    double  load_ms;
    int32_t n_repacked;
    int64_t n_bytes_repacked;
    int32_t has_down_t;
    int32_t has_act_thresholds;
};
struct ts_context_params {
    int32_t n_ctx;
    int32_t n_threads;
    int32_t ffn_mode;
    int32_t use_threshold;
    float   threshold;
    int32_t kv_f32;
    int32_t collect_act_hist;
    const float * act_thresholds;
    int32_t n_seq_max;
};
#define TS_MAX_SEQ 256
struct ts_stats {
    int64_t n_prompt_tokens;
    double  prompt_ms;
    int64_t n_gen_tokens;
    double  gen_ms;
    int64_t ffn_neurons_computed;
    int64_t ffn_neurons_total;
    double  ffn_density;
    double  load_ms;
    int64_t ffn_rows_read;
    int64_t ffn_rows_total;
    double  ffn_union_density;
    int32_t last_n_tokens;
    double  last_ms;
    double  last_ffn_density;
    double  last_ffn_union_density;
};
struct ts_model;
struct ts_context;
void ts_model_params_init(struct ts_model_params * params);
void ts_context_params_init(struct ts_context_params * params);
struct ts_model * ts_model_load(const char * path, const struct ts_model_params * params,
                                char * err, size_t err_size);
void ts_model_free(struct ts_model * model);
void ts_model_get_meta(const struct ts_model * model, struct ts_model_meta * meta);
const void * ts_model_gguf(const struct ts_model * model);
struct ts_context * ts_context_new(struct ts_model * model, const struct ts_context_params * params,
                                   char * err, size_t err_size);
void ts_context_free(struct ts_context * ctx);
void ts_context_reset(struct ts_context * ctx);
int32_t ts_context_n_ctx(const struct ts_context * ctx);
int32_t ts_context_n_past(const struct ts_context * ctx);
int32_t ts_context_n_threads(const struct ts_context * ctx);
int32_t ts_context_ffn_mode(const struct ts_context * ctx);
float   ts_context_threshold(const struct ts_context * ctx);
int32_t ts_decode(struct ts_context * ctx, const int32_t * tokens, int32_t n,
                  float * logits, int32_t logits_all);
struct ts_batch {
    int32_t         n_tokens;
    const int32_t * tokens;
    const int32_t * pos;
    const int32_t * seq;
    const int8_t  * logits;
};
int32_t ts_decode_batch(struct ts_context * ctx, const struct ts_batch * batch, float * logits);
int32_t ts_seq_n_past(const struct ts_context * ctx, int32_t seq);
int32_t ts_seq_remove(struct ts_context * ctx, int32_t seq);
void ts_kv_clear(struct ts_context * ctx);
int32_t ts_context_n_seq_max(const struct ts_context * ctx);
int32_t ts_context_n_free(const struct ts_context * ctx);
void ts_context_abort(struct ts_context * ctx);
const char * ts_context_error(const struct ts_context * ctx);
int32_t ts_context_set_act_thresholds(struct ts_context * ctx, const float * thresholds, int32_t n);
int32_t ts_context_get_act_thresholds(const struct ts_context * ctx, float * thresholds, int32_t n);
int32_t ts_context_layer_stats(const struct ts_context * ctx, int32_t il, int64_t * computed, int64_t * total);
int32_t ts_context_act_hist(const struct ts_context * ctx, int32_t il, int64_t * counts, int32_t n_bins);
float   ts_act_hist_edge(int32_t bin);
void ts_context_get_stats(const struct ts_context * ctx, struct ts_stats * stats);
