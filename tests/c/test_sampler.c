// Sampler tests: greedy is argmax, top-k=1 is greedy, top-p/min-p bound the support, seeds
// repeat, the repetition penalty follows llama.cpp's rule, non-finite logits are refused.
#include "check.h"
#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float randf(void) { return 8.0f * rng_unit() - 4.0f; } // [-4, 4)

static struct ts_sampler * make(struct ts_sampler_params p) {
    char err[256];
    struct ts_sampler * s = ts_sampler_new(&p, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "ts_sampler_new: %s\n", err);
        exit(1);
    }
    return s;
}

static struct ts_sampler_params plain(float temp, uint64_t seed) {
    struct ts_sampler_params p = ts_sampler_default_params();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.seed = seed;
    return p;
}

static int argmax(const float * x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static void test_greedy(void) {
    enum { N = 1000 };
    float logits[N];
    struct ts_sampler * g = make(plain(0.0f, 1));
    struct ts_sampler_params pk = plain(1.0f, 7);
    pk.top_k = 1;
    struct ts_sampler * k1 = make(pk);
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < N; i++) logits[i] = randf();
        const int want = argmax(logits, N);
        CHECK(ts_sample(g, logits, N) == want, "greedy is not argmax (trial %d)", trial);
        CHECK(ts_sample(k1, logits, N) == want, "top-k=1 differs from greedy (trial %d)", trial);
    }
    // ties go to the lowest id, in both
    for (int i = 0; i < N; i++) logits[i] = 0.0f;
    logits[17] = logits[400] = 3.0f;
    CHECK(ts_sample(g, logits, N) == 17, "greedy tie not broken towards the lowest id");
    CHECK(ts_sample(k1, logits, N) == 17, "top-k=1 tie not broken towards the lowest id");
    ts_sampler_free(g);
    ts_sampler_free(k1);
}

// Samples many times, marks which ids came up.
static void support(struct ts_sampler * s, const float * logits, int n, int draws, int * seen) {
    memset(seen, 0, (size_t) n * sizeof(int));
    for (int d = 0; d < draws; d++) {
        const int id = ts_sample(s, logits, n);
        if (id < 0 || id >= n) {
            CHECK(0, "ts_sample returned %d", id);
            return;
        }
        seen[id]++;
    }
}

static void test_top_p_min_p_top_k(void) {
    enum { N = 8 };
    // probabilities (temperature 1): 0.4, 0.3, 0.2, 0.05, 0.02, 0.02, 0.005, 0.005
    const double probs[N] = { 0.4, 0.3, 0.2, 0.05, 0.02, 0.02, 0.005, 0.005 };
    float logits[N];
    for (int i = 0; i < N; i++) logits[i] = (float) log(probs[i]);
    int seen[N];

    struct ts_sampler_params p = plain(1.0f, 3);
    p.top_p = 0.85f;  // 0.4 + 0.3 + 0.2 = 0.9 >= 0.85: ids 0..2
    struct ts_sampler * s = make(p);
    support(s, logits, N, 4000, seen);
    for (int i = 0; i < N; i++) {
        if (i < 3) CHECK(seen[i] > 0, "top-p: id %d should be drawn", i);
        else CHECK(seen[i] == 0, "top-p: id %d is outside the nucleus but drawn %d times", i, seen[i]);
    }
    // frequencies follow the renormalized nucleus: 0.4/0.9 of the draws for id 0
    CHECK(fabs(seen[0] / 4000.0 - 0.4 / 0.9) < 0.04, "top-p: id 0 share %.3f, want %.3f", seen[0] / 4000.0, 0.4 / 0.9);
    ts_sampler_free(s);

    p = plain(1.0f, 4);
    p.min_p = 0.1f;  // keeps p >= 0.04: ids 0..3
    s = make(p);
    support(s, logits, N, 4000, seen);
    for (int i = 0; i < N; i++) {
        if (i < 4) CHECK(seen[i] > 0, "min-p: id %d should be drawn", i);
        else CHECK(seen[i] == 0, "min-p: id %d is below min-p but drawn %d times", i, seen[i]);
    }
    ts_sampler_free(s);

    p = plain(1.0f, 5);
    p.top_k = 2;
    s = make(p);
    support(s, logits, N, 2000, seen);
    for (int i = 0; i < N; i++) {
        if (i < 2) CHECK(seen[i] > 0, "top-k: id %d should be drawn", i);
        else CHECK(seen[i] == 0, "top-k=2: id %d drawn %d times", i, seen[i]);
    }
    ts_sampler_free(s);

    // with no filter, every id with some mass shows up, in proportion
    p = plain(1.0f, 6);
    s = make(p);
    support(s, logits, N, 20000, seen);
    for (int i = 0; i < N; i++) {
        CHECK(fabs(seen[i] / 20000.0 - probs[i]) < 0.015, "plain: id %d share %.4f, want %.4f", i,
              seen[i] / 20000.0, probs[i]);
    }
    ts_sampler_free(s);

    // -Inf logits are never drawn
    logits[0] = -INFINITY;
    s = make(plain(1.0f, 8));
    support(s, logits, N, 2000, seen);
    CHECK(seen[0] == 0, "a -Inf logit was drawn %d times", seen[0]);
    ts_sampler_free(s);
}

static void test_seed(void) {
    enum { N = 300, STEPS = 200 };
    float logits[N];
    for (int i = 0; i < N; i++) logits[i] = randf();
    struct ts_sampler_params p = ts_sampler_default_params();
    p.temperature = 1.5f;
    p.top_k = 100;
    p.top_p = 0.98f;
    p.min_p = 0.01f;
    p.repeat_penalty = 1.1f;
    p.seed = 42;
    int a[STEPS], b[STEPS], c[STEPS];
    struct ts_sampler * s1 = make(p);
    struct ts_sampler * s2 = make(p);
    p.seed = 43;
    struct ts_sampler * s3 = make(p);
    for (int t = 0; t < STEPS; t++) {
        a[t] = ts_sample(s1, logits, N);
        b[t] = ts_sample(s2, logits, N);
        c[t] = ts_sample(s3, logits, N);
        ts_sampler_accept(s1, a[t]);
        ts_sampler_accept(s2, b[t]);
        ts_sampler_accept(s3, c[t]);
    }
    CHECK(memcmp(a, b, sizeof(a)) == 0, "same seed gave different choices");
    CHECK(memcmp(a, c, sizeof(a)) != 0, "different seeds gave the same %d choices", STEPS);
    // reset replays the sequence
    ts_sampler_reset(s1);
    int same = 1;
    for (int t = 0; t < STEPS; t++) {
        const int id = ts_sample(s1, logits, N);
        ts_sampler_accept(s1, id);
        same &= id == a[t];
    }
    CHECK(same, "reset did not replay the same choices");
    ts_sampler_free(s1);
    ts_sampler_free(s2);
    ts_sampler_free(s3);
}

static void test_repeat_penalty(void) {
    enum { N = 4 };
    struct ts_sampler_params p = plain(0.0f, 1);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    struct ts_sampler * s = make(p);
    // positive logit divided: 3.0 -> 1.5 < 2.0
    float pos[N] = { 3.0f, 2.0f, 0.0f, -1.0f };
    CHECK(ts_sample(s, pos, N) == 0, "before any history, argmax is 0");
    ts_sampler_accept(s, 0);
    ts_sampler_accept(s, 0);  // repeated: still penalized once
    CHECK(ts_sample(s, pos, N) == 1, "3.0/2 = 1.5 should lose to 2.0");
    // negative logit multiplied: -1 -> -2 < -1.5
    float neg[N] = { -1.0f, -1.5f, -3.0f, -4.0f };
    ts_sampler_reset(s);
    ts_sampler_accept(s, 0);
    CHECK(ts_sample(s, neg, N) == 1, "-1*2 = -2 should lose to -1.5");
    // the window forgets: after 3 other tokens, id 0 is no longer penalized
    ts_sampler_accept(s, 2);
    ts_sampler_accept(s, 3);
    ts_sampler_accept(s, 3);
    CHECK(ts_sample(s, neg, N) == 0, "id 0 left the last-3 window but is still penalized");
    // the logits passed in are not modified
    CHECK(pos[0] == 3.0f && neg[0] == -1.0f, "ts_sample modified the caller's logits");
    ts_sampler_free(s);

    // with penalty 1 the history changes nothing
    p.repeat_penalty = 1.0f;
    s = make(p);
    ts_sampler_accept(s, 0);
    CHECK(ts_sample(s, pos, N) == 0, "penalty 1 changed the choice");
    ts_sampler_free(s);
}

static void test_errors(void) {
    enum { N = 16 };
    float logits[N];
    for (int i = 0; i < N; i++) logits[i] = (float) i;
    struct ts_sampler * g = make(plain(0.0f, 1));
    struct ts_sampler * r = make(plain(0.7f, 1));
    logits[5] = NAN;
    CHECK(ts_sample(g, logits, N) == TS_SAMPLE_ERR_NONFINITE, "NaN not refused (greedy)");
    CHECK(ts_sample(r, logits, N) == TS_SAMPLE_ERR_NONFINITE, "NaN not refused (sampling)");
    logits[5] = INFINITY;
    CHECK(ts_sample(g, logits, N) == TS_SAMPLE_ERR_NONFINITE, "+Inf not refused");
    for (int i = 0; i < N; i++) logits[i] = -INFINITY;
    CHECK(ts_sample(g, logits, N) == TS_SAMPLE_ERR_EMPTY, "all -Inf not refused (greedy)");
    CHECK(ts_sample(r, logits, N) == TS_SAMPLE_ERR_EMPTY, "all -Inf not refused (sampling)");
    CHECK(ts_sample(g, NULL, N) == TS_SAMPLE_ERR_ARGS, "NULL logits not refused");
    CHECK(ts_sample(g, logits, 0) == TS_SAMPLE_ERR_ARGS, "n_vocab 0 not refused");
    CHECK(strlen(ts_sample_error_str(TS_SAMPLE_ERR_NONFINITE)) > 0, "no error text");
    ts_sampler_free(g);
    ts_sampler_free(r);

    char err[256] = "";
    struct ts_sampler_params p = plain(NAN, 1);
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "temperature"), "NaN temperature accepted: %s", err);
    p = plain(1.0f, 1);
    p.repeat_penalty = 0.0f;
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "repeat_penalty"), "penalty 0 accepted: %s", err);
    p = plain(-0.5f, 1);
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "temperature") && strstr(err, "-0.5"),
          "negative temperature accepted: %s", err);
    p = plain(INFINITY, 1);
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "temperature"), "inf temperature accepted: %s", err);
    p = plain(1.0f, 1);
    p.top_p = 7.0f;
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "top_p") && strstr(err, "7"),
          "top_p 7 accepted: %s", err);
    p = plain(1.0f, 1);
    p.min_p = -0.1f;
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "min_p"), "min_p -0.1 accepted: %s", err);
    p = plain(0.0f, 1);
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    struct ts_sampler * edge = ts_sampler_new(&p, err, sizeof(err));
    CHECK(edge != NULL, "the range ends (temp 0, top_p 1, min_p 1) refused: %s", err);
    ts_sampler_free(edge);
    p = plain(1.0f, 1);
    p.repeat_last_n = -1;
    CHECK(ts_sampler_new(&p, err, sizeof(err)) == NULL && strstr(err, "repeat_last_n"), "last_n -1 accepted: %s", err);
}

int main(void) {
    test_greedy();
    test_top_p_min_p_top_k();
    test_seed();
    test_repeat_penalty();
    test_errors();
    return check_summary("test_sampler");
}
