// Several sequences in one context (ts_decode_batch) on the bundled model, in each FFN mode:
// three sequences prefilled and decoded together give the logits each gives decoded alone in
// a context of its own; a removed sequence's cells are reused by a new one, which again
// matches its run alone; bad batches (sequence id, position order, token, full cache) are
// refused with a message and leave the cache as it was; the union density of a batch lies
// between its tokens' mean density and their sum.
//
// Exactness: every op of the graph computes each batch entry (column) on its own with the
// same arithmetic whatever the other columns are (ggml's per-row ops; the sparse kernels
// promise dot_rows' bits per (row, token) pair, ggml-sparse.h; flash attention skips the -inf
// cells of other sequences and visits a sequence's own cells in cell order, which is position
// order while no sequence is removed in between). The dense weight products are the
// exception: ggml's mul_mat may take a GEMM path for a batch and a GEMV path for one token
// (different summation order), and the comparison then needs a tolerance, taken as 1e-3 of
// the logits' scale. The test prints how far apart the runs were.
#include "check.h"
#include "turbosparse.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum { N_SEQ = 3, STEPS = 6, MAXP = 16 };

static const int32_t PROMPTS[4][MAXP] = { // ids below the bundled model's 4096
    { 1, 450, 3996, 1735, 1701, 432, 1720 },
    { 1, 938, 2501, 263, 931, 2989, 727, 471, 263, 2217, 782 },
    { 1, 3869, 2990 },
    { 1, 306, 763, 304, 4059, 1048 },
};
static const int32_t PROMPT_LEN[4] = { 7, 11, 3, 6 };

static struct ts_model * model;
static int32_t n_vocab;
static double max_diff, max_scale;

static int32_t argmax(const float * x) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++) if (x[i] > x[best]) best = i;
    return best;
}

static struct ts_context * new_ctx(int32_t mode, int32_t n_seq, int32_t n_ctx) {
    struct ts_context_params cp;
    ts_context_params_init(&cp);
    cp.ffn_mode = mode;
    cp.n_seq_max = n_seq;
    cp.n_ctx = n_ctx;
    cp.n_threads = 2;
    char err[256];
    struct ts_context * c = ts_context_new(model, &cp, err, sizeof(err));
    CHECK(c, "context: %s", err);
    return c;
}

// logits[step][vocab] of prompt p run alone with greedy decoding (step 0: after the prompt)
static void run_alone(int32_t mode, int p, float * logits) {
    struct ts_context * c = new_ctx(mode, 1, 64);
    CHECK(ts_decode(c, PROMPTS[p], PROMPT_LEN[p], logits, 0) == TS_OK, "alone prefill: %s", ts_context_error(c));
    for (int s = 1; s <= STEPS; s++) {
        int32_t t = argmax(logits + (size_t) (s - 1) * n_vocab);
        CHECK(ts_decode(c, &t, 1, logits + (size_t) s * n_vocab, 0) == TS_OK, "alone step: %s", ts_context_error(c));
    }
    ts_context_free(c);
}

static void compare(const float * got, const float * want, bool exact, const char * what, int32_t mode, int step) {
    double diff = 0, scale = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        diff = fmax(diff, fabs((double) got[i] - want[i]));
        scale = fmax(scale, fabs((double) want[i]));
    }
    max_diff = fmax(max_diff, diff);
    max_scale = fmax(max_scale, scale);
    if (exact) CHECK(diff == 0, "%s (mode %d, step %d): batched logits differ from alone by %g", what, mode, step, diff);
    else CHECK(diff <= 1e-3 * scale, "%s (mode %d, step %d): batched logits differ from alone by %g (scale %g)",
               what, mode, step, diff, scale);
    CHECK(argmax(got) == argmax(want), "%s (mode %d, step %d): a different greedy token", what, mode, step);
}

static void test_batched_equals_alone(int32_t mode, bool exact) {
    const size_t row = (size_t) n_vocab;
    float * alone = malloc(sizeof(float) * row * (STEPS + 1) * 4);
    for (int p = 0; p < 4; p++) run_alone(mode, p, alone + (size_t) p * row * (STEPS + 1));

    struct ts_context * c = new_ctx(mode, N_SEQ, 128);
    // one batch holds all three prompts; each wants the logits of its last entry
    int32_t tok[3 * MAXP], pos[3 * MAXP], seq[3 * MAXP];
    int8_t want[3 * MAXP];
    int32_t n = 0;
    for (int s = 0; s < N_SEQ; s++) {
        for (int32_t i = 0; i < PROMPT_LEN[s]; i++, n++) {
            tok[n] = PROMPTS[s][i]; pos[n] = i; seq[n] = s; want[n] = i == PROMPT_LEN[s] - 1;
        }
    }
    float * out = malloc(sizeof(float) * row * N_SEQ);
    struct ts_batch b = { n, tok, pos, seq, want };
    CHECK(ts_decode_batch(c, &b, out) == TS_OK, "batched prefill: %s", ts_context_error(c));
    for (int s = 0; s < N_SEQ; s++) compare(out + s * row, alone + (size_t) s * row * (STEPS + 1), exact, "prefill", mode, 0);

    struct ts_stats st;
    int32_t cur[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) cur[s] = argmax(out + s * row);
    for (int step = 1; step <= STEPS; step++) {
        int32_t t[N_SEQ], p[N_SEQ], q[N_SEQ];
        for (int s = 0; s < N_SEQ; s++) { t[s] = cur[s]; p[s] = ts_seq_n_past(c, s); q[s] = s; }
        struct ts_batch d = { N_SEQ, t, p, q, NULL };
        int8_t all[N_SEQ] = { 1, 1, 1 };
        d.logits = all;
        CHECK(ts_decode_batch(c, &d, out) == TS_OK, "batched step: %s", ts_context_error(c));
        for (int s = 0; s < N_SEQ; s++) {
            compare(out + s * row, alone + ((size_t) s * (STEPS + 1) + step) * row, exact, "step", mode, step);
            cur[s] = argmax(out + s * row);
        }
        ts_context_get_stats(c, &st);
        CHECK(st.last_n_tokens == N_SEQ, "last_n_tokens %d", st.last_n_tokens);
        if (mode == TS_FFN_MODE_PREDICTED) {
            // the union of 3 tokens' selected rows: at least their mean share, at most the sum
            CHECK(st.last_ffn_union_density >= st.last_ffn_density - 1e-9 &&
                  st.last_ffn_union_density <= N_SEQ * st.last_ffn_density + 1e-9,
                  "union density %g outside [%g, %g]", st.last_ffn_union_density, st.last_ffn_density,
                  N_SEQ * st.last_ffn_density);
        } else if (mode == TS_FFN_MODE_EXACT) {
            // the up rows read hold every token's non-zero neurons
            CHECK(st.last_ffn_union_density >= st.last_ffn_density - 1e-9 && st.last_ffn_union_density <= 1.0,
                  "exact mode: union density %g, density %g", st.last_ffn_union_density, st.last_ffn_density);
        } else {
            CHECK(st.last_ffn_union_density == 1.0, "dense mode reads every row (got %g)", st.last_ffn_union_density);
        }
    }
    CHECK(st.n_gen_tokens == N_SEQ * STEPS, "generated tokens counted %lld", (long long) st.n_gen_tokens);
    CHECK(st.n_prompt_tokens == n, "prompt tokens counted %lld of %d", (long long) st.n_prompt_tokens, n);

    // sequence 1 ends; its cells go to a new prompt (prompt 3) in sequence 1, decoded while
    // sequences 0 and 2 go on: it matches prompt 3 alone
    const int32_t free_before = ts_context_n_free(c);
    CHECK(ts_seq_remove(c, 1) == TS_OK, "remove: %s", ts_context_error(c));
    CHECK(ts_seq_n_past(c, 1) == 0, "a removed sequence starts again at 0 (got %d)", ts_seq_n_past(c, 1));
    CHECK(ts_context_n_free(c) == free_before + PROMPT_LEN[1] + STEPS, "removal freed %d cells, want %d",
          ts_context_n_free(c) - free_before, PROMPT_LEN[1] + STEPS);
    n = 0;
    for (int32_t i = 0; i < PROMPT_LEN[3]; i++, n++) {
        tok[n] = PROMPTS[3][i]; pos[n] = i; seq[n] = 1; want[n] = i == PROMPT_LEN[3] - 1;
    }
    for (int s = 0; s < N_SEQ; s += 2, n++) { // 0 and 2 continue in the same batch
        tok[n] = cur[s]; pos[n] = ts_seq_n_past(c, s); seq[n] = s; want[n] = 0;
    }
    b = (struct ts_batch) { n, tok, pos, seq, want };
    CHECK(ts_decode_batch(c, &b, out) == TS_OK, "reuse prefill: %s", ts_context_error(c));
    const float * alone3 = alone + (size_t) 3 * row * (STEPS + 1);
    compare(out, alone3, exact, "reused sequence prefill", mode, 0);
    int32_t t1 = argmax(out);
    for (int step = 1; step <= 3; step++) {
        int32_t t[1] = { t1 }, p[1] = { ts_seq_n_past(c, 1) }, q[1] = { 1 };
        struct ts_batch d = { 1, t, p, q, NULL };
        CHECK(ts_decode_batch(c, &d, out) == TS_OK, "reuse step: %s", ts_context_error(c));
        compare(out, alone3 + (size_t) step * row, exact, "reused sequence step", mode, step);
        t1 = argmax(out);
    }
    ts_context_free(c);
    free(out);
    free(alone);
}

static void expect_refused(struct ts_context * c, const struct ts_batch * b, int32_t status, const char * words) {
    const int32_t free_before = ts_context_n_free(c), past0 = ts_seq_n_past(c, 0), past1 = ts_seq_n_past(c, 1);
    const int32_t rc = ts_decode_batch(c, b, NULL);
    CHECK(rc == status, "status %d, want %d (%s)", rc, status, words);
    CHECK(strstr(ts_context_error(c), words), "message '%s' lacks '%s'", ts_context_error(c), words);
    CHECK(ts_context_n_free(c) == free_before && ts_seq_n_past(c, 0) == past0 && ts_seq_n_past(c, 1) == past1,
          "a refused batch changed the cache (%s)", words);
}

static void test_errors(void) {
    struct ts_context * c = new_ctx(TS_FFN_MODE_AUTO, 2, 8);
    int32_t tok[4] = { 1, 450, 3996, 1735 }, pos[4] = { 0, 1, 2, 3 }, seq[4] = { 0, 0, 0, 0 };
    struct ts_batch ok = { 2, tok, pos, seq, NULL };
    CHECK(ts_decode_batch(c, &ok, NULL) == TS_OK, "first batch: %s", ts_context_error(c));

    int32_t bad_seq[1] = { 2 }, neg_seq[1] = { -1 }, p2[1] = { 2 }, p5[1] = { 5 }, p1[1] = { 1 };
    expect_refused(c, &(struct ts_batch) { 1, tok, p2, bad_seq, NULL }, TS_ERR_INVALID, "sequence id 2");
    expect_refused(c, &(struct ts_batch) { 1, tok, p2, neg_seq, NULL }, TS_ERR_INVALID, "sequence id -1");
    expect_refused(c, &(struct ts_batch) { 1, tok, p5, seq, NULL }, TS_ERR_INVALID, "out of order");
    expect_refused(c, &(struct ts_batch) { 1, tok, p1, seq, NULL }, TS_ERR_INVALID, "out of order"); // a repeat
    int32_t twice[2] = { 2, 2 };
    expect_refused(c, &(struct ts_batch) { 2, tok, twice, seq, NULL }, TS_ERR_INVALID, "out of order");
    int32_t big[1] = { 1 << 30 };
    expect_refused(c, &(struct ts_batch) { 1, big, p2, seq, NULL }, TS_ERR_INVALID, "outside the vocabulary");
    expect_refused(c, &(struct ts_batch) { 0, tok, pos, seq, NULL }, TS_ERR_INVALID, "empty batch");
    expect_refused(c, NULL, TS_ERR_INVALID, "empty batch");
    // 6 of 8 cells free: 7 entries (sequence 1 from 0) do not fit
    int32_t tok7[7] = { 1, 2, 3, 4, 5, 6, 7 }, pos7[7] = { 0, 1, 2, 3, 4, 5, 6 }, seq7[7] = { 1, 1, 1, 1, 1, 1, 1 };
    expect_refused(c, &(struct ts_batch) { 7, tok7, pos7, seq7, NULL }, TS_ERR_CONTEXT_FULL, "context full");
    CHECK(ts_seq_remove(c, 5) == TS_ERR_INVALID && strstr(ts_context_error(c), "out of range"),
          "removing sequence 5: %s", ts_context_error(c));
    // still usable: sequence 1 takes the 6 free cells
    CHECK(ts_decode_batch(c, &(struct ts_batch) { 6, tok7, pos7, seq7, NULL }, NULL) == TS_OK, "after errors: %s",
          ts_context_error(c));
    CHECK(ts_context_n_free(c) == 0, "free cells %d", ts_context_n_free(c));
    // the single-sequence call on a shared context: full is full
    CHECK(ts_decode(c, tok, 1, NULL, 0) == TS_ERR_CONTEXT_FULL, "ts_decode on a full cache");
    ts_kv_clear(c);
    CHECK(ts_context_n_free(c) == 8 && ts_seq_n_past(c, 0) == 0 && ts_seq_n_past(c, 1) == 0, "clear left cells");
    CHECK(ts_decode(c, tok, 4, NULL, 0) == TS_OK && ts_context_n_past(c) == 4, "ts_decode after clear: %s",
          ts_context_error(c));
    ts_context_free(c);

    struct ts_context_params cp;
    ts_context_params_init(&cp);
    cp.n_seq_max = TS_MAX_SEQ + 1;
    char err[256];
    CHECK(!ts_context_new(model, &cp, err, sizeof(err)) && strstr(err, "n_seq_max"), "n_seq_max too large: %s", err);
}

int main(int argc, char ** argv) {
    if (argc < 2) { fprintf(stderr, "usage: test_batch MODEL.gguf\n"); return 2; }
    char err[512];
    model = ts_model_load(argv[1], NULL, err, sizeof(err));
    if (!model) { fprintf(stderr, "%s\n", err); return 1; }
    struct ts_model_meta meta;
    ts_model_get_meta(model, &meta);
    n_vocab = meta.n_vocab;
    const bool exact = getenv("TS_TEST_BATCH_TOLERANCE") == NULL;
    const int32_t modes[3] = { TS_FFN_MODE_PREDICTED, TS_FFN_MODE_EXACT, TS_FFN_MODE_DENSE };
    for (int m = 0; m < 3; m++) {
        max_diff = max_scale = 0;
        test_batched_equals_alone(modes[m], exact);
        printf("mode %d: batched vs alone max |diff| %g (logit scale %g)\n", modes[m], max_diff, max_scale);
    }
    test_errors();
    ts_model_free(model);
    return check_summary("test_batch");
}
