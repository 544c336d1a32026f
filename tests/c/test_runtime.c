// The runtime's loader and decode paths from C (also run under ASan/UBSan): a tiny model
// written with ggml's GGUF writer loads and decodes; every broken variant of it (missing
// file, bad magic, each truncation, corrupted bytes, missing tensor, wrong shape) is refused
// with a message and never crashes.
#include "check.h"
#include "turbosparse.h"
#include "ggml.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { E = 32, HEADS = 2, HEADS_KV = 1, FF = 64, VOCAB = 16, LAYERS = 1 };

struct variant {
    const char * skip;      // tensor left out
    const char * bad_shape; // tensor written with one row fewer
};

static void add(struct gguf_context * g, struct ggml_context * ctx, const struct variant * v, const char * name,
                int64_t ne0, int64_t ne1) {
    if (v->skip && !strcmp(v->skip, name)) return;
    if (v->bad_shape && !strcmp(v->bad_shape, name)) ne1 = ne1 > 1 ? ne1 - 1 : ne1;
    struct ggml_tensor * t = ne1 > 1 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ne1) : ggml_new_tensor_1d(ctx, GGML_TYPE_F32, ne0);
    ggml_set_name(t, name);
    float * d = t->data;
    for (int64_t i = 0; i < ggml_nelements(t); i++) d[i] = ne1 > 1 ? (float) ((rand() % 2001) - 1000) / 8000.0f : 1.0f;
    gguf_add_tensor(g, t);
}

static void write_model(const char * path, const struct variant * v) {
    struct ggml_init_params ip = { .mem_size = 4 << 20, .mem_buffer = NULL, .no_alloc = false };
    struct ggml_context * ctx = ggml_init(ip);
    struct gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_u32(g, "llama.context_length", 64);
    gguf_set_val_u32(g, "llama.embedding_length", E);
    gguf_set_val_u32(g, "llama.block_count", LAYERS);
    gguf_set_val_u32(g, "llama.feed_forward_length", FF);
    gguf_set_val_u32(g, "llama.attention.head_count", HEADS);
    gguf_set_val_u32(g, "llama.attention.head_count_kv", HEADS_KV);
    gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_set_val_u32(g, "llama.vocab_size", VOCAB);
    const int64_t E_kv = E / HEADS * HEADS_KV;
    add(g, ctx, v, "token_embd.weight", E, VOCAB);
    add(g, ctx, v, "output_norm.weight", E, 1);
    add(g, ctx, v, "output.weight", E, VOCAB);
    add(g, ctx, v, "blk.0.attn_norm.weight", E, 1);
    add(g, ctx, v, "blk.0.attn_q.weight", E, E);
    add(g, ctx, v, "blk.0.attn_k.weight", E, E_kv);
    add(g, ctx, v, "blk.0.attn_v.weight", E, E_kv);
    add(g, ctx, v, "blk.0.attn_output.weight", E, E);
    add(g, ctx, v, "blk.0.ffn_norm.weight", E, 1);
    add(g, ctx, v, "blk.0.ffn_gate.weight", E, FF);
    add(g, ctx, v, "blk.0.ffn_up.weight", E, FF);
    add(g, ctx, v, "blk.0.ffn_down.weight", FF, E);
    gguf_write_to_file(g, path, false);
    gguf_free(g);
    ggml_free(ctx);
}

static unsigned char * slurp(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t) ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char * b = malloc(*n);
    if (fread(b, 1, *n, f) != *n) { fclose(f); free(b); return NULL; }
    fclose(f);
    return b;
}

static void spit(const char * path, const unsigned char * b, size_t n) {
    FILE * f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

// NULL model expected: the message must contain `want`.
static void expect_refused(const char * path, const char * want) {
    char err[512] = "";
    struct ts_model * m = ts_model_load(path, NULL, err, sizeof(err));
    CHECK(m == NULL, "%s loaded, expected an error containing '%s'", path, want);
    CHECK(err[0] && (!want || strstr(err, want)), "message '%s' lacks '%s'", err, want ? want : "(any)");
    ts_model_free(m);
}

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) level; (void) text; (void) user; // ggml's reader explains each refusal; we check ours
}

int main(void) {
    ggml_log_set(quiet, NULL);
    const char * dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char good[512], bad[512];
    snprintf(good, sizeof(good), "%s/ts-runtime-test-%d.gguf", dir, (int) getpid());
    snprintf(bad, sizeof(bad), "%s/ts-runtime-test-bad-%d.gguf", dir, (int) getpid());
    struct variant ok = { 0 };
    write_model(good, &ok);

    // the good file loads and decodes, in one batch and token by token alike
    char err[512] = "";
    struct ts_model * m = ts_model_load(good, NULL, err, sizeof(err));
    CHECK(m != NULL, "load: %s", err);
    if (m) {
        struct ts_context_params cp;
        ts_context_params_init(&cp);
        cp.n_ctx = 8;
        cp.n_threads = 2;
        cp.kv_f32 = 1;
        struct ts_context * c = ts_context_new(m, &cp, err, sizeof(err));
        CHECK(c != NULL, "context: %s", err);
        const int32_t toks[4] = { 1, 5, 9, 15 };
        float batch[4 * VOCAB], one[VOCAB];
        CHECK(ts_decode(c, toks, 4, batch, 1) == TS_OK, "decode: %s", ts_context_error(c));
        ts_context_reset(c);
        for (int i = 0; i < 4; i++) {
            CHECK(ts_decode(c, &toks[i], 1, one, 0) == TS_OK, "decode 1: %s", ts_context_error(c));
            for (int j = 0; j < VOCAB; j++) {
                CHECK(isfinite(one[j]) && fabsf(one[j] - batch[i * VOCAB + j]) <= 1e-4f * (1.0f + fabsf(one[j])),
                      "token %d logit %d: %g vs %g", i, j, one[j], batch[i * VOCAB + j]);
            }
        }
        const int32_t five[5] = { 1, 2, 3, 4, 5 };
        CHECK(ts_decode(c, five, 5, NULL, 0) == TS_ERR_CONTEXT_FULL, "overflow not refused");
        CHECK(strstr(ts_context_error(c), "context full") != NULL, "message: %s", ts_context_error(c));
        const int32_t bad_tok = VOCAB;
        CHECK(ts_decode(c, &bad_tok, 1, NULL, 0) == TS_ERR_INVALID, "token out of range not refused");
        cp.ffn_mode = TS_FFN_MODE_PREDICTED;
        struct ts_context * c2 = ts_context_new(m, &cp, err, sizeof(err));
        CHECK(c2 == NULL && strstr(err, "predictor"), "predicted mode without predictors: %s", err);
        // a context whose KV cache cannot be had is an error naming the sizes, never an abort
        // (2^31-1 positions of this model: 2 x 16 x 4 bytes each, 256 GiB; skipped on a
        // machine that large, where it would be allocated)
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0 && (double) pages * (double) page < 250.0 * (1u << 30)) {
            cp.ffn_mode = TS_FFN_MODE_AUTO;
            cp.n_ctx = 2147483647;
            struct ts_context * big = ts_context_new(m, &cp, err, sizeof(err));
            CHECK(big == NULL && strstr(err, "KV cache") && strstr(err, "2147483647") && strstr(err, "MiB"),
                  "huge context not refused with the sizes: %s", err);
            ts_context_free(big);
        }
        ts_context_free(c);
        ts_model_free(m);
    }

    expect_refused("/nonexistent/model.gguf", "cannot open");

    size_t n;
    unsigned char * bytes = slurp(good, &n);
    CHECK(bytes != NULL, "cannot read back %s", good);
    if (bytes) {
        unsigned char * copy = malloc(n);
        memcpy(copy, bytes, n);
        memcpy(copy, "PWRI", 4);
        spit(bad, copy, n);
        expect_refused(bad, "bad magic");

        // every truncation point in the header, then coarser through the data
        for (size_t len = 0; len < n; len += len < 2048 ? 1 : 509) {
            spit(bad, bytes, len);
            expect_refused(bad, NULL);
        }
        // corrupted bytes: refused or loaded, never a crash (and a loaded one must decode)
        srand(7);
        for (int trial = 0; trial < 300; trial++) {
            memcpy(copy, bytes, n);
            for (int k = 0; k < 3; k++) copy[rand() % (n < 1024 ? n : 1024)] ^= (unsigned char) (1 + rand() % 255);
            spit(bad, copy, n);
            struct ts_model * mm = ts_model_load(bad, NULL, err, sizeof(err));
            if (mm) {
                struct ts_context * c = ts_context_new(mm, NULL, err, sizeof(err));
                const int32_t t0 = 1;
                if (c) ts_decode(c, &t0, 1, NULL, 0);
                ts_context_free(c);
                ts_model_free(mm);
            } else {
                CHECK(err[0] != '\0', "refused without a message");
            }
        }
        free(copy);
        free(bytes);
    }

    struct variant missing = { .skip = "blk.0.ffn_up.weight" };
    write_model(bad, &missing);
    expect_refused(bad, "missing tensor 'blk.0.ffn_up.weight'");
    struct variant shape = { .bad_shape = "blk.0.attn_k.weight" };
    write_model(bad, &shape);
    expect_refused(bad, "tensor 'blk.0.attn_k.weight' has shape");

    remove(good);
    remove(bad);
    return check_summary("test_runtime");
}
