// Byte-level BPE checks on a small vocabulary built in memory (runs under the sanitizers):
// merge order by rank, special and user-defined tokens as llama.cpp splits them, round trips of
// random text (valid and broken UTF-8), the streaming decoder against ts_detokenize, and clear
// errors for files that cannot be used. llama.cpp's own vectors are test_tokenizer_vocab.c.
#include "check.h"
#include "tokenizer.h"

#include "gguf.h"

#include <stdlib.h>
#include <string.h>

// GPT-2's bytes_to_unicode, written out independently of the runtime's: the printable bytes
// stand for themselves, the rest get U+0100.. in byte order.
static void byte_text(int b, char * out) {
    int cp = b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        int n = 0;
        for (int i = 0; i < b; i++) n += !((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE);
        cp = 256 + n;
    }
    if (cp < 0x80) { out[0] = (char) cp; out[1] = 0; }
    else { out[0] = (char) (0xC0 | (cp >> 6)); out[1] = (char) (0x80 | (cp & 0x3F)); out[2] = 0; }
}

#define G "\xc4\xa0"  // U+0120, GPT-2's space
static const char * MERGES[] = { G " t", "h e", G "t he", "i n", "in g", G " " G, "\xc3\xa9 t" };
static const char * MERGED[] = { G "t", "he", G "the", "in", "ing", G G, "\xc3\xa9t" };
#define N_MERGES (int) (sizeof(MERGES) / sizeof(MERGES[0]))
#define N_VOCAB (256 + N_MERGES + 2)

static struct gguf_context * vocab(const char * model, const char * pre, bool merges) {
    static char bytes[256][4];
    const char * texts[N_VOCAB];
    int32_t types[N_VOCAB];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        byte_text(b, bytes[b]);
        texts[n] = bytes[b];
        types[n++] = TS_TOKEN_NORMAL;
    }
    for (int i = 0; i < N_MERGES; i++) { texts[n] = MERGED[i]; types[n++] = TS_TOKEN_NORMAL; }
    texts[n] = "<|endoftext|>"; types[n++] = TS_TOKEN_CONTROL;
    texts[n] = "<|user|>"; types[n++] = TS_TOKEN_USER_DEFINED;
    struct gguf_context * ctx = gguf_init_empty();
    gguf_set_val_str(ctx, "tokenizer.ggml.model", model);
    if (pre) gguf_set_val_str(ctx, "tokenizer.ggml.pre", pre);
    gguf_set_arr_str(ctx, "tokenizer.ggml.tokens", texts, N_VOCAB);
    gguf_set_arr_data(ctx, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, N_VOCAB);
    if (merges) gguf_set_arr_str(ctx, "tokenizer.ggml.merges", MERGES, N_MERGES);
    gguf_set_val_u32(ctx, "tokenizer.ggml.eos_token_id", N_VOCAB - 2);
    gguf_set_val_u32(ctx, "tokenizer.ggml.bos_token_id", N_VOCAB - 2);
    return ctx;
}

static void test_errors(void) {
    char err[512];
    struct { const char * model, * pre; bool merges; const char * want; } cases[] = {
        { "bert", "gpt-2", true, "'bert'" },
        { "gpt2", "no-such-pre", true, "tokenizer.ggml.pre 'no-such-pre'" },
        { "gpt2", NULL, true, "tokenizer.ggml.pre is missing" },
        { "gpt2", "gpt-2", false, "tokenizer.ggml.merges is missing" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct gguf_context * ctx = vocab(cases[i].model, cases[i].pre, cases[i].merges);
        struct ts_tokenizer * tok = ts_tokenizer_from_gguf(ctx, err, sizeof(err));
        CHECK(tok == NULL && strstr(err, cases[i].want), "case %zu: want an error naming %s, got '%s'", i,
              cases[i].want, tok ? "(accepted)" : err);
        ts_tokenizer_free(tok);
        gguf_free(ctx);
    }
}

static int32_t id_of(const struct ts_tokenizer * tok, const char * text) {
    return ts_token_lookup(tok, text, strlen(text));
}

static void test_fixed(const struct ts_tokenizer * tok) {
    int32_t ids[256];
    // "the thing": "the" has no Ġ, so only "h e" applies; " thing" merges Ġ t (rank 0) and
    // i n, in g, but never "he" (no h e pair left)
    int n = ts_tokenize(tok, "the thing", 9, false, false, ids, 256);
    const int32_t want[] = { id_of(tok, "t"), id_of(tok, "he"), id_of(tok, G "t"), id_of(tok, "h"), id_of(tok, "ing") };
    CHECK(n == 5 && !memcmp(ids, want, sizeof(want)), "'the thing' gives %d ids", n);
    // rank order: Ġ t first, then h e, then Ġt he
    n = ts_tokenize(tok, " the", 4, false, false, ids, 256);
    CHECK(n == 1 && ids[0] == id_of(tok, G "the"), "' the' must merge to one token (n=%d)", n);
    // "\s+(?!\S)": of three spaces before a word, two stand alone (merged) and one joins the word
    n = ts_tokenize(tok, "   the", 6, false, false, ids, 256);
    CHECK(n == 2 && ids[0] == id_of(tok, G G) && ids[1] == id_of(tok, G "the"), "'   the' (n=%d)", n);
    // special tokens: control ones only with special, user-defined ones always (llama.cpp)
    const char * s = "a<|endoftext|>b<|user|>c";
    n = ts_tokenize(tok, s, strlen(s), false, true, ids, 256);
    CHECK(n == 5 && ids[1] == N_VOCAB - 2 && ids[3] == N_VOCAB - 1, "special=true (n=%d)", n);
    n = ts_tokenize(tok, s, strlen(s), false, false, ids, 256);
    bool has_eot = false, has_user = false;
    for (int i = 0; i < n; i++) { has_eot |= ids[i] == N_VOCAB - 2; has_user |= ids[i] == N_VOCAB - 1; }
    CHECK(n > 5 && !has_eot && has_user, "special=false must keep <|endoftext|> as text, not <|user|> (n=%d)", n);
    char out[256];
    int m = ts_detokenize(tok, ids, n, false, out, sizeof(out));
    CHECK(m == (int) strlen(s) && !memcmp(out, s, (size_t) m), "detokenize of special=false ids");
    // BOS only when asked; small buffers report the size needed
    CHECK(ts_tokenize(tok, "the", 3, true, false, ids, 256) == 3 && ids[0] == N_VOCAB - 2, "BOS");
    CHECK(ts_tokenize(tok, "the thing", 9, false, false, ids, 2) == -5, "small buffer");
    CHECK(ts_tokenize(tok, "", 0, false, false, ids, 256) == 0, "empty text");
    const int32_t eot = N_VOCAB - 2;
    CHECK(ts_detokenize(tok, &eot, 1, false, out, sizeof(out)) == 0, "control token hidden");
    CHECK(ts_detokenize(tok, &eot, 1, true, out, sizeof(out)) == 13, "control token rendered");
    CHECK(ts_tokenizer_get_info(tok)->eot_id == eot, "EOT found by its text");
    CHECK(!ts_tokenizer_get_info(tok)->add_bos && !ts_tokenizer_get_info(tok)->add_space_prefix, "BPE defaults");
}

static bool valid_utf8(const unsigned char * s, int n) {
    for (int i = 0; i < n;) {
        const unsigned char c = s[i];
        const int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n) return false;
        for (int k = 1; k < len; k++) if ((s[i + k] & 0xC0) != 0x80) return false;
        i += len;
    }
    return true;
}

static void test_random(const struct ts_tokenizer * tok) {
    static const char * POOL[] = { "the", " the", "thing", " ", "  ", "\n", "\t", "'s", "'ll", "12", "345",
                                   "\xc3\xa9t", "\xe6\x97\xa5", "\xf0\x9f\xa6\x99", "!?", "<|user|>", "<|endoftext|>",
                                   "\xe2\x80\x83", "\xc2\xa0" };
    char text[512], out[4096], streamed[4096];
    int32_t ids[1024];
    for (int iter = 0; iter < 3000; iter++) {
        const bool broken = iter % 3 == 0;
        int len = 0;
        const int parts = (int) (rng_u64() % 12);
        for (int p = 0; p < parts; p++) {
            if (broken && rng_u64() % 4 == 0) {
                text[len++] = (char) (rng_u64() & 0xFF);  // any byte: broken UTF-8 too
            } else {
                const char * s = POOL[rng_u64() % (sizeof(POOL) / sizeof(POOL[0]))];
                memcpy(text + len, s, strlen(s));
                len += (int) strlen(s);
            }
        }
        const bool special = rng_u64() & 1;
        const int n = ts_tokenize(tok, text, (size_t) len, false, special, ids, 1024);
        CHECK(n >= 0, "tokenize failed (%d)", n);
        if (n < 0) continue;
        for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < N_VOCAB, "id %d out of range", ids[i]);
        const int m = ts_detokenize(tok, ids, n, true, out, sizeof(out));
        CHECK(m >= 0 && valid_utf8((unsigned char *) out, m), "decoded text is not valid UTF-8");
        if (!broken || valid_utf8((unsigned char *) text, len)) {
            CHECK(m == len && !memcmp(out, text, (size_t) len), "round trip of '%.*s' gave '%.*s'", len, text,
                  m < 0 ? 0 : m, out);
        }
        // the stream gives the same text, in whole characters only
        struct ts_utf8_stream st;
        ts_utf8_stream_init(&st, tok, true, true);
        int ns = 0;
        for (int i = 0; i < n; i++) {
            const int k = ts_utf8_stream_push(&st, tok, ids[i], streamed + ns, (int) sizeof(streamed) - ns);
            CHECK(k >= 0 && valid_utf8((unsigned char *) streamed + ns, k), "stream piece not whole characters");
            if (k > 0) ns += k;
        }
        const int k = ts_utf8_stream_flush(&st, streamed + ns, (int) sizeof(streamed) - ns);
        if (k > 0) ns += k;
        CHECK(ns == m && !memcmp(streamed, out, (size_t) ns), "stream differs from ts_detokenize");
    }
}

int main(void) {
    test_errors();
    char err[512];
    struct gguf_context * ctx = vocab("gpt2", "gpt-2", true);
    struct ts_tokenizer * tok = ts_tokenizer_from_gguf(ctx, err, sizeof(err));
    gguf_free(ctx);  // the tokenizer must not point into the gguf context
    CHECK(tok != NULL, "gpt2 vocabulary refused: %s", err);
    if (tok) {
        test_fixed(tok);
        test_random(tok);
        ts_tokenizer_free(tok);
    }
    return check_summary("test_tokenizer_bpe");
}
