// Token sampling. See sampler.h for the order of the steps.
#include "sampler.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct candidate {
    float   logit;
    int32_t id;
};

struct ts_sampler {
    struct ts_sampler_params params;
    uint64_t rng;  // splitmix64 state

    int32_t * history;    // ring of the last repeat_last_n accepted ids
    int32_t   n_history;  // how many are valid (<= repeat_last_n)
    int32_t   history_pos;

    int32_t            n_vocab;     // of the buffers below; 0 before the first call
    struct candidate * cand;
    float            * work;        // penalized logits
    uint8_t          * penalized;   // per id: already penalized this step
};

static void ts_context_fail(char * err, size_t err_size, const char * fmt, ...) {
    if (!err || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

static uint64_t splitmix64(uint64_t * state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t * state) {  // [0, 1) with 53 random bits
    return (double) (splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

struct ts_sampler_params ts_sampler_default_params(void) {
    return (struct ts_sampler_params) {
        .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
        .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0,
    };
}

struct ts_sampler * ts_sampler_new(const struct ts_sampler_params * p, char * err, size_t err_size) {
    ts_context_fail(err, err_size, "%s", "");
    if (!p) {
        ts_context_fail(err, err_size, "no sampler parameters");
        return NULL;
    }
    if (isnan(p->temperature)) { ts_context_fail(err, err_size, "temperature is NaN"); return NULL; }
    if (isnan(p->top_p))       { ts_context_fail(err, err_size, "top_p is NaN"); return NULL; }
    if (isnan(p->min_p))       { ts_context_fail(err, err_size, "min_p is NaN"); return NULL; }
    // Out of range values are refused, not clamped: --top-p 7 or a negative temperature is a
    // mistake (a typo, a misread API) that silently sampling something else would hide.
    if (!(p->temperature >= 0.0f) || isinf(p->temperature)) {
        ts_context_fail(err, err_size, "temperature must be a finite number >= 0 (0: greedy), got %g", (double) p->temperature);
        return NULL;
    }
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f)) {
        ts_context_fail(err, err_size, "top_p must be between 0 and 1 (1: off), got %g", (double) p->top_p);
        return NULL;
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        ts_context_fail(err, err_size, "min_p must be between 0 and 1 (0: off), got %g", (double) p->min_p);
        return NULL;
    }
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty)) {
        ts_context_fail(err, err_size, "repeat_penalty must be a positive finite number, got %g", (double) p->repeat_penalty);
        return NULL;
    }
    if (p->repeat_last_n < 0) {
        ts_context_fail(err, err_size, "repeat_last_n must be >= 0, got %d", p->repeat_last_n);
        return NULL;
    }
    struct ts_sampler * s = calloc(1, sizeof(*s));
    if (s && p->repeat_last_n > 0) s->history = malloc((size_t) p->repeat_last_n * sizeof(int32_t));
    if (!s || (p->repeat_last_n > 0 && !s->history)) {
        free(s);
        ts_context_fail(err, err_size, "out of memory");
        return NULL;
    }
    s->params = *p;
    s->rng = p->seed;
    return s;
}

void ts_sampler_free(struct ts_sampler * s) {
    if (!s) return;
    free(s->history);
    free(s->cand);
    free(s->work);
    free(s->penalized);
    free(s);
}

void ts_sampler_accept(struct ts_sampler * s, int32_t id) {
    if (!s || s->params.repeat_last_n == 0) return;
    s->history[s->history_pos] = id;
    s->history_pos = (s->history_pos + 1) % s->params.repeat_last_n;
    if (s->n_history < s->params.repeat_last_n) s->n_history++;
}

void ts_sampler_reset(struct ts_sampler * s) {
    if (!s) return;
    s->n_history = 0;
    s->history_pos = 0;
    s->rng = s->params.seed;
}

const char * ts_sample_error_str(int32_t code) {
    switch (code) {
        case TS_SAMPLE_ERR_NONFINITE: return "a logit is NaN or +Inf";
        case TS_SAMPLE_ERR_ARGS:      return "bad arguments (NULL sampler or logits, n_vocab <= 0)";
        case TS_SAMPLE_ERR_EMPTY:     return "every logit is -Inf";
        case TS_SAMPLE_ERR_NOMEM:     return "out of memory";
        default:                      return code >= 0 ? "no error" : "unknown sampler error";
    }
}

static int cmp_candidate(const void * a, const void * b) {  // best first; ties: lowest id first
    const struct candidate * x = a, * y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

static bool candidate_before(const struct candidate * a, const struct candidate * b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

// Keeps the k best of c[0..n) in c[0..k), sorted: a min-heap of the k best, O(n log k).
static int select_top_k(struct candidate * c, int n, int k) {
    if (k >= n) {
        qsort(c, (size_t) n, sizeof(*c), cmp_candidate);
        return n;
    }
    // c[0..k) is a heap whose root is the worst of the kept ones
    for (int i = 0; i < n; i++) {
        struct candidate x = c[i];
        int pos;
        if (i < k) {
            pos = i;
            while (pos > 0 && candidate_before(&c[(pos - 1) / 2], &x)) {
                c[pos] = c[(pos - 1) / 2];
                pos = (pos - 1) / 2;
            }
            c[pos] = x;
            continue;
        }
        if (!candidate_before(&x, &c[0])) continue;
        pos = 0;
        for (;;) {
            int child = 2 * pos + 1;
            if (child >= k) break;
            if (child + 1 < k && candidate_before(&c[child], &c[child + 1])) child++;
            if (!candidate_before(&x, &c[child])) break;
            c[pos] = c[child];
            pos = child;
        }
        c[pos] = x;
    }
    qsort(c, (size_t) k, sizeof(*c), cmp_candidate);
    return k;
}

static bool ensure_buffers(struct ts_sampler * s, int n_vocab) {
    if (s->n_vocab == n_vocab) return true;
    free(s->cand);
    free(s->work);
    free(s->penalized);
    s->cand = malloc((size_t) n_vocab * sizeof(*s->cand));
    s->work = malloc((size_t) n_vocab * sizeof(float));
    s->penalized = calloc((size_t) n_vocab, 1);
    s->n_vocab = (s->cand && s->work && s->penalized) ? n_vocab : 0;
    return s->n_vocab == n_vocab;
}

int32_t ts_sample(struct ts_sampler * s, const float * logits, int n_vocab) {
    if (!s || !logits || n_vocab <= 0) return TS_SAMPLE_ERR_ARGS;
    for (int i = 0; i < n_vocab; i++) {
        if (isnan(logits[i]) || (isinf(logits[i]) && logits[i] > 0)) return TS_SAMPLE_ERR_NONFINITE;
    }
    if (!ensure_buffers(s, n_vocab)) return TS_SAMPLE_ERR_NOMEM;
    const struct ts_sampler_params * p = &s->params;
    float * work = s->work;
    memcpy(work, logits, (size_t) n_vocab * sizeof(float));

    // repetition penalty, once per distinct recent token
    if (p->repeat_penalty != 1.0f) {
        for (int i = 0; i < s->n_history; i++) {
            const int32_t id = s->history[i];
            if (id < 0 || id >= n_vocab || s->penalized[id]) continue;
            s->penalized[id] = 1;
            work[id] = work[id] > 0.0f ? work[id] / p->repeat_penalty : work[id] * p->repeat_penalty;
        }
        for (int i = 0; i < s->n_history; i++) {
            const int32_t id = s->history[i];
            if (id >= 0 && id < n_vocab) s->penalized[id] = 0;
        }
    }

    if (p->temperature <= 0.0f) {
        int32_t best = -1;
        for (int i = 0; i < n_vocab; i++) {
            if (isinf(work[i])) continue;  // -Inf only: +Inf was rejected above
            if (best < 0 || work[i] > work[best]) best = i;
        }
        return best >= 0 ? best : TS_SAMPLE_ERR_EMPTY;
    }

    struct candidate * c = s->cand;
    int n = 0;
    float max_logit = -INFINITY;
    for (int i = 0; i < n_vocab; i++) {
        if (isinf(work[i])) continue;
        if (work[i] > max_logit) max_logit = work[i];
    }
    if (isinf(max_logit)) return TS_SAMPLE_ERR_EMPTY;
    for (int i = 0; i < n_vocab; i++) {
        if (!isinf(work[i])) c[n++] = (struct candidate) { work[i], i };
    }

    if (p->top_k > 0) {
        n = select_top_k(c, n, p->top_k);
    } else if (p->top_p < 1.0f) {
        qsort(c, (size_t) n, sizeof(*c), cmp_candidate);
    }

    // top-p on the untempered distribution of what top-k left: the shortest prefix whose mass
    // reaches top_p (at least one token)
    if (p->top_p < 1.0f) {
        double z = 0.0;
        for (int i = 0; i < n; i++) z += exp((double) c[i].logit - max_logit);
        double cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += exp((double) c[i].logit - max_logit) / z;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }

    // min-p: p_i >= min_p * p_max, i.e. l_i >= l_max + log(min_p); the best token always stays
    if (p->min_p > 0.0f) {
        const double cut = (double) max_logit + log((double) p->min_p);
        int kept = 0;
        for (int i = 0; i < n; i++) {
            if ((double) c[i].logit >= cut) c[kept++] = c[i];
        }
        n = kept;
    }

    // temperature and the draw
    double z = 0.0;
    for (int i = 0; i < n; i++) z += exp(((double) c[i].logit - max_logit) / p->temperature);
    const double u = uniform01(&s->rng) * z;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += exp(((double) c[i].logit - max_logit) / p->temperature);
        if (u < cum) return c[i].id;
    }
    return c[n - 1].id;  // rounding: u landed past the last partial sum
}
