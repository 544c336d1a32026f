// cffi declarations of the sampler (ggml_sparse/runtime/sampler.h, comments dropped).
// Keep in sync with that header.
struct ts_sampler_params {
    float    temperature;
    int32_t  top_k;
    float    top_p;
    float    min_p;
    float    repeat_penalty;
    int32_t  repeat_last_n;
    uint64_t seed;
};
enum ts_sample_error {
    TS_SAMPLE_ERR_NONFINITE = -1,
    TS_SAMPLE_ERR_ARGS      = -2,
    TS_SAMPLE_ERR_EMPTY     = -3,
    TS_SAMPLE_ERR_NOMEM     = -4,
};
struct ts_sampler;
struct ts_sampler_params ts_sampler_default_params(void);
struct ts_sampler * ts_sampler_new(const struct ts_sampler_params * params, char * err, size_t err_size);
void ts_sampler_free(struct ts_sampler * smpl);
int32_t ts_sample(struct ts_sampler * smpl, const float * logits, int n_vocab);
void ts_sampler_accept(struct ts_sampler * smpl, int32_t id);
void ts_sampler_reset(struct ts_sampler * smpl);
const char * ts_sample_error_str(int32_t code);
