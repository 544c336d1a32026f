// Picks the next token from a logits vector: repetition penalty, then top-k, top-p, min-p
// (on the untempered distribution), then temperature, then a seeded draw — llama.cpp's order.
// temperature 0 is greedy (argmax after the penalty; ties go to the lowest id).
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ts_sampler_params {
    float    temperature;     // >= 0, finite; 0: greedy
    int32_t  top_k;           // <= 0: off
    float    top_p;           // 0..1; 1: off
    float    min_p;           // 0..1; 0: off
    float    repeat_penalty;  // 1: off. llama.cpp's rule: positive logits / p, negative * p
    int32_t  repeat_last_n;   // how many of the last accepted tokens the penalty looks at
    uint64_t seed;            // same seed, same logits, same accepted tokens -> same choices
};

// Errors returned by ts_sample instead of a token id.
enum ts_sample_error {
    TS_SAMPLE_ERR_NONFINITE = -1,  // a logit is NaN or +Inf (-Inf is allowed: "never this token")
    TS_SAMPLE_ERR_ARGS      = -2,  // NULL sampler or logits, n_vocab <= 0
    TS_SAMPLE_ERR_EMPTY     = -3,  // every logit is -Inf
    TS_SAMPLE_ERR_NOMEM     = -4,
};

struct ts_sampler;

// llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalty, last 64, seed 0.
struct ts_sampler_params ts_sampler_default_params(void);

// NULL when a parameter is out of range (NaN, temperature < 0 or infinite, top_p or min_p
// outside 0..1, repeat_penalty <= 0, repeat_last_n < 0), with a message naming it in err.
struct ts_sampler * ts_sampler_new(const struct ts_sampler_params * params, char * err, size_t err_size);
void ts_sampler_free(struct ts_sampler * smpl);

// Returns the chosen id (>= 0) or an enum ts_sample_error. Does not record the choice: call
// ts_sampler_accept with every token that enters the context (prompt tokens too, for the
// penalty).
int32_t ts_sample(struct ts_sampler * smpl, const float * logits, int n_vocab);
void ts_sampler_accept(struct ts_sampler * smpl, int32_t id);
// Forgets the accepted tokens and restarts the random sequence from the seed.
void ts_sampler_reset(struct ts_sampler * smpl);

const char * ts_sample_error_str(int32_t code);

#ifdef __cplusplus
}
#endif
