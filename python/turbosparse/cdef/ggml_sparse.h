// cffi declarations of the sparse-FFN ops (ggml_sparse/include/ggml-sparse.h, comments
// dropped). Keep in sync with that header.

enum ggml_sparse_ffn_kind {
    GGML_SPARSE_FFN_SWIGLU = 0,
    GGML_SPARSE_FFN_REGLU  = 1,
    GGML_SPARSE_FFN_DRELU  = 2,
};

enum ggml_sparse_mode {
    GGML_SPARSE_MODE_DENSE     = 0,
    GGML_SPARSE_MODE_PREDICTED = 1,
    GGML_SPARSE_MODE_EXACT     = 2,
    GGML_SPARSE_MODE_THRESHOLD = 3,
};

enum ggml_sparse_down_layout {
    GGML_SPARSE_DOWN_STANDARD     = 0,
    GGML_SPARSE_DOWN_NEURON_MAJOR = 1,
};

struct ggml_sparse_stats {
    int64_t neurons_computed;
    int64_t neurons_total;
    int64_t tokens;
    int64_t rows_read;
    int64_t rows_total;
};

#define GGML_SPARSE_ACT_HIST_BINS 32768
struct ggml_sparse_act_hist {
    int64_t counts[32768];
};
float ggml_sparse_act_hist_edge(int32_t bin);

struct ggml_sparse_ffn_params {
    enum ggml_sparse_ffn_kind    kind;
    enum ggml_sparse_mode        mode;
    enum ggml_sparse_down_layout down_layout;
    float                        threshold;
    struct ggml_sparse_stats   * stats;
    struct ggml_sparse_act_hist * hist;
};

struct ggml_tensor * ggml_sparse_ffn(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * u,
        struct ggml_tensor * fc1, struct ggml_tensor * fc2, struct ggml_tensor * w_gate, struct ggml_tensor * w_up,
        struct ggml_tensor * w_down, const struct ggml_sparse_ffn_params * params, char * err, size_t err_size);
bool ggml_sparse_check_ffn(const struct ggml_tensor * x, const struct ggml_tensor * u,
        const struct ggml_tensor * fc1, const struct ggml_tensor * fc2, const struct ggml_tensor * w_gate,
        const struct ggml_tensor * w_up, const struct ggml_tensor * w_down,
        const struct ggml_sparse_ffn_params * params, char * err, size_t err_size);
size_t ggml_sparse_ffn_ctx_size(void);
struct ggml_tensor * ggml_sparse_predictor(struct ggml_context * ctx, struct ggml_tensor * fc1,
        struct ggml_tensor * fc2, struct ggml_tensor * u, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_gate_up(struct ggml_context * ctx, struct ggml_tensor * w_gate,
        struct ggml_tensor * w_up, struct ggml_tensor * x, struct ggml_tensor * logits,
        enum ggml_sparse_ffn_kind kind, float threshold, struct ggml_sparse_stats * stats,
        char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_up_threshold(struct ggml_context * ctx, struct ggml_tensor * w_up,
        struct ggml_tensor * x, struct ggml_tensor * s, float threshold, struct ggml_sparse_stats * stats,
        struct ggml_sparse_act_hist * hist, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_down(struct ggml_context * ctx, struct ggml_tensor * w_down_t,
        struct ggml_tensor * a, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_down_chunked(struct ggml_context * ctx, struct ggml_tensor * w_down_t,
        struct ggml_tensor * a, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_matmul(struct ggml_context * ctx, struct ggml_tensor * w,
        struct ggml_tensor * x, char * err, size_t err_size);
bool ggml_sparse_matmul_preferred(const struct ggml_tensor * w);
bool ggml_sparse_matmul_packable(const struct ggml_tensor * w);
bool ggml_sparse_matmul_pack(struct ggml_tensor * w, void * dst);
struct ggml_tensor * ggml_sparse_mul_mat(struct ggml_context * ctx, struct ggml_tensor * w,
        struct ggml_tensor * x);
struct ggml_tensor * ggml_sparse_moe_route(struct ggml_context * ctx, struct ggml_tensor * logits, int k,
        char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_tokens(struct ggml_context * ctx, struct ggml_tensor * route, int64_t n_pairs);
struct ggml_tensor * ggml_sparse_moe_matmul(struct ggml_context * ctx, struct ggml_tensor * w, struct ggml_tensor * x,
        struct ggml_tensor * route, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_gate_up(struct ggml_context * ctx, struct ggml_tensor * w_gate,
        struct ggml_tensor * w_up, struct ggml_tensor * x, struct ggml_tensor * logits, struct ggml_tensor * route,
        int k, enum ggml_sparse_ffn_kind kind, float threshold, struct ggml_sparse_stats * stats,
        char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_down(struct ggml_context * ctx, struct ggml_tensor * w_down_t,
        struct ggml_tensor * a, struct ggml_tensor * route, char * err, size_t err_size);
struct ggml_tensor * ggml_sparse_moe_combine(struct ggml_context * ctx, struct ggml_tensor * y,
        struct ggml_tensor * route, int k, char * err, size_t err_size);
const char * ggml_sparse_isa(void);
