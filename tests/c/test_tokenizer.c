// Tokenizer checks that run under the sanitizers (ctest): a vocabulary built in memory with
// ggml's gguf API, random texts (valid and broken UTF-8, special tokens, NULs) and random ids.
// Checks: ids against a naive O(n^2) BPE (repeatedly merge the best-scoring adjacent pair,
// leftmost on ties), text round trips, the streaming decoder equals ts_detokenize and prints
// only whole characters, -(needed) on small buffers. Exact agreement with the sentencepiece
// library is tested in tests/python/test_tokenizer.py.
#include "check.h"
#include "tokenizer.h"

#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rnd(uint32_t n) { return (uint32_t) (rng_u64() % n); }

#define SP "\xe2\x96\x81"

// Normal pieces after the single characters; score = -(rank), so earlier merges win.
static const char * MERGES[] = {
    SP "t", "he", SP "the", "in", "ing", SP "a", "an", "nd", SP "and", SP SP, SP SP SP SP, "er", SP "w",
    "or", "ld", SP "wor", SP "world", "\xc3\xa9t", "\xe6\x97\xa5\xe6\x9c\xac", "ab", "ba", "aba", "bab", "abab",
    SP "<", "|>", "im", "<|", "1", "2", "3",
};
static const char * CHARS[] = {
    SP, "a", "b", "d", "e", "g", "h", "i", "l", "m", "n", "o", "r", "t", "w", "<", ">", "|", "_", "\xc3\xa9",
    "\xe6\x97\xa5", "\xe6\x9c\xac",
};

#define N_CHARS  (int) (sizeof(CHARS) / sizeof(CHARS[0]))
#define N_MERGES (int) (sizeof(MERGES) / sizeof(MERGES[0]))
#define N_VOCAB  (3 + 256 + 2 + N_CHARS + N_MERGES)

static char * texts[N_VOCAB];
static float scores[N_VOCAB];
static int32_t types[N_VOCAB];

static char * dup(const char * s) {  // strdup is POSIX, not C11
    char * d = malloc(strlen(s) + 1);
    if (!d) exit(1);
    return strcpy(d, s);
}

static struct ts_tokenizer * build(void) {
    int n = 0;
    texts[n] = dup("<unk>"); types[n++] = TS_TOKEN_UNKNOWN;
    texts[n] = dup("<s>");   types[n++] = TS_TOKEN_CONTROL;
    texts[n] = dup("</s>");  types[n++] = TS_TOKEN_CONTROL;
    for (int b = 0; b < 256; b++) {
        char buf[8];
        snprintf(buf, sizeof(buf), "<0x%02X>", b);
        texts[n] = dup(buf);
        types[n++] = TS_TOKEN_BYTE;
    }
    texts[n] = dup("<|im_start|>"); types[n++] = TS_TOKEN_USER_DEFINED;
    texts[n] = dup("<|im_end|>");   types[n++] = TS_TOKEN_CONTROL;
    for (int i = 0; i < N_MERGES; i++) {
        texts[n] = dup(MERGES[i]);
        scores[n] = (float) -i;
        types[n++] = TS_TOKEN_NORMAL;
    }
    for (int i = 0; i < N_CHARS; i++) {
        texts[n] = dup(CHARS[i]);
        scores[n] = (float) (-N_MERGES - i);
        types[n++] = TS_TOKEN_NORMAL;
    }
    scores[3 + 256 + 2 + 20] = scores[3 + 256 + 2 + 19];  // "ba" ties "ab": the leftmost pair must win

    struct gguf_context * ctx = gguf_init_empty();
    gguf_set_val_str(ctx, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(ctx, "tokenizer.ggml.tokens", (const char **) texts, N_VOCAB);
    gguf_set_arr_data(ctx, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, N_VOCAB);
    gguf_set_arr_data(ctx, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, N_VOCAB);
    gguf_set_val_u32(ctx, "tokenizer.ggml.unknown_token_id", 0);
    gguf_set_val_u32(ctx, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_val_u32(ctx, "tokenizer.ggml.eos_token_id", 2);
    char err[256];
    struct ts_tokenizer * tok = ts_tokenizer_from_gguf(ctx, err, sizeof(err));
    if (!tok) {
        fprintf(stderr, "ts_tokenizer_from_gguf: %s\n", err);
        exit(1);
    }
    // the tokenizer must not point into the gguf context
    gguf_free(ctx);

    // bad files are refused with a message naming the key
    ctx = gguf_init_empty();
    gguf_set_val_str(ctx, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(ctx, "tokenizer.ggml.tokens", (const char **) texts, N_VOCAB);
    gguf_set_arr_data(ctx, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, N_VOCAB - 1);
    CHECK(ts_tokenizer_from_gguf(ctx, err, sizeof(err)) == NULL && strstr(err, "tokenizer.ggml.scores"),
          "short scores array accepted (%s)", err);
    gguf_set_arr_data(ctx, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, N_VOCAB);
    gguf_set_val_u32(ctx, "tokenizer.ggml.bos_token_id", N_VOCAB);
    CHECK(ts_tokenizer_from_gguf(ctx, err, sizeof(err)) == NULL && strstr(err, "bos_token_id"),
          "out-of-range BOS accepted (%s)", err);
    gguf_set_val_str(ctx, "tokenizer.ggml.bos_token_id", "one");
    CHECK(ts_tokenizer_from_gguf(ctx, err, sizeof(err)) == NULL && strstr(err, "bos_token_id"),
          "string BOS accepted (%s)", err);
    gguf_free(ctx);
    return tok;
}

static int valid_utf8(const unsigned char * s, int n) {
    for (int i = 0; i < n;) {
        const unsigned char c = s[i];
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n) return 0;
        for (int k = 1; k < len; k++) if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

// Naive BPE over valid UTF-8 text with no special tokens: the reference for the ids.
static int naive(const struct ts_tokenizer * tok, const char * text, int len, int32_t * out) {
    if (len == 0) return 0;
    char * norm = malloc((size_t) len * 3 + 4);
    int n = 0;
    memcpy(norm, SP, 3);
    n = 3;
    for (int i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(norm + n, SP, 3); n += 3; }
        else norm[n++] = text[i];
    }
    int * start = malloc(sizeof(int) * (size_t) (n + 1));
    int n_sym = 0;
    for (int i = 0; i < n;) {
        const unsigned char c = (unsigned char) norm[i];
        const int l = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        start[n_sym++] = i;
        i += l;
    }
    start[n_sym] = n;
    for (;;) {
        int best = -1;
        float best_score = 0;
        for (int i = 0; i + 1 < n_sym; i++) {
            const int32_t id = ts_token_lookup(tok, norm + start[i], (size_t) (start[i + 2] - start[i]));
            if (id < 0 || ts_token_get_type(tok, id) != TS_TOKEN_NORMAL) continue;
            if (best < 0 || scores[id] > best_score) {
                best = i;
                best_score = scores[id];
            }
        }
        if (best < 0) break;
        memmove(start + best + 1, start + best + 2, sizeof(int) * (size_t) (n_sym - best - 1));
        n_sym--;
    }
    int n_out = 0;
    for (int i = 0; i < n_sym; i++) {
        const int32_t id = ts_token_lookup(tok, norm + start[i], (size_t) (start[i + 1] - start[i]));
        if (id >= 0 && ts_token_get_type(tok, id) == TS_TOKEN_NORMAL) {
            out[n_out++] = id;
        } else {
            for (int k = start[i]; k < start[i + 1]; k++) out[n_out++] = 3 + (unsigned char) norm[k];
        }
    }
    free(norm);
    free(start);
    return n_out;
}

static const char * POOL[] = {
    " ", " ", "  ", "a", "b", "ab", "the", "and", "world", "ing", "\n", "\t", "1", "23", "\xc3\xa9", "\xc3\xa9t",
    "\xe6\x97\xa5\xe6\x9c\xac", "\xf0\x9f\x98\x80", "<|im_start|>", "<|im_end|>", "<|", "|>", "<s>", "x", "Z",
    "\xff", "\xc3", "\xe2\x82", "\x80", "\xf0\x9f", "\xed\xa0\x80", "\xc0\xaf",
};
#define N_POOL (int) (sizeof(POOL) / sizeof(POOL[0]))

static int random_text(char * buf, int cap, int valid_only) {
    int n = 0;
    const int parts = (int) rnd(40);
    for (int p = 0; p < parts; p++) {
        const char * s = POOL[rnd(valid_only ? 25 : N_POOL)];
        const int l = (int) strlen(s);
        if (n + l + 1 >= cap) break;
        memcpy(buf + n, s, (size_t) l);
        n += l;
    }
    if (!valid_only && rnd(4) == 0 && n + 1 < cap) buf[n++] = '\0';  // NUL inside the text
    return n;
}

static void test_random(const struct ts_tokenizer * tok) {
    char text[1024];
    int32_t ids[4096], ref[4096];
    char dec[8192], chunk[512];
    for (int trial = 0; trial < 3000; trial++) {
        const int valid = trial % 2 == 0;
        const int len = random_text(text, sizeof(text), valid);
        for (int special = 0; special < 2; special++) {
            const int n = ts_tokenize(tok, text, (size_t) len, false, special, ids, 4096);
            CHECK(n >= 0, "ts_tokenize returned %d", n);
            if (n < 0) continue;
            for (int i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < N_VOCAB, "id %d out of range", ids[i]);
            if (n > 0) CHECK(ts_tokenize(tok, text, (size_t) len, false, special, ids, n - 1) == -n, "no -(needed)");

            const int m = ts_detokenize(tok, ids, n, special, dec, sizeof(dec));
            CHECK(m >= 0 && valid_utf8((unsigned char *) dec, m), "decoded text is not UTF-8");
            if (valid) {
                CHECK(m == len && memcmp(dec, text, (size_t) len) == 0, "round trip failed (special=%d): '%.*s'",
                      special, len, text);
                if (!special && !strstr(text, "<|")) {
                    const int r = naive(tok, text, len, ref);
                    CHECK(r == n && memcmp(ref, ids, sizeof(int32_t) * (size_t) n) == 0,
                          "differs from the naive BPE: '%.*s'", len, text);
                }
            }
            if (m < 0) continue;
            // the stream prints the same text, whole characters per chunk
            struct ts_utf8_stream s;
            ts_utf8_stream_init(&s, tok, true, special);
            int total = 0;
            for (int i = 0; i <= n; i++) {
                const int c = i < n ? ts_utf8_stream_push(&s, tok, ids[i], chunk, sizeof(chunk))
                                    : ts_utf8_stream_flush(&s, chunk, sizeof(chunk));
                CHECK(c >= 0 && valid_utf8((unsigned char *) chunk, c), "stream chunk is not whole UTF-8");
                if (c < 0) break;
                CHECK(total + c <= m && memcmp(dec + total, chunk, (size_t) c) == 0, "stream differs from detokenize");
                total += c;
            }
            CHECK(total == m, "stream printed %d bytes, detokenize %d", total, m);
        }
    }
    // random ids: byte soup included
    for (int trial = 0; trial < 3000; trial++) {
        const int n = (int) rnd(20);
        for (int i = 0; i < n; i++) ids[i] = rnd(3) == 0 ? (int32_t) rnd(N_VOCAB) : 3 + (int32_t) (0x80 + rnd(0x78));
        const int m = ts_detokenize(tok, ids, n, false, dec, sizeof(dec));
        CHECK(m >= 0 && valid_utf8((unsigned char *) dec, m), "random ids decode to broken UTF-8");
        CHECK(ts_detokenize(tok, ids, n, false, dec, 0) == (m > 0 ? -m : 0), "no -(needed) from detokenize");
    }
    const int32_t bad = N_VOCAB;
    CHECK(ts_detokenize(tok, &bad, 1, false, dec, sizeof(dec)) == TS_TOKENIZE_ERROR, "bad id accepted");
}

static void test_fixed(const struct ts_tokenizer * tok) {
    int32_t ids[64];
    // "<|im_start|>" is user-defined: a token with special=true only; "<|im_end|>" is control
    const int32_t im_start = ts_token_lookup(tok, "<|im_start|>", 12);
    const int32_t im_end = ts_token_lookup(tok, "<|im_end|>", 10);
    CHECK(im_start == 259 && im_end == 260, "lookup gave %d %d", im_start, im_end);
    int n = ts_tokenize(tok, "<|im_start|>a<|im_end|>", 23, true, true, ids, 64);
    CHECK(n == 5 && ids[0] == 1 && ids[2] == im_start && ids[4] == im_end, "special=true ids wrong (n=%d)", n);
    n = ts_tokenize(tok, "<|im_start|>a<|im_end|>", 23, false, false, ids, 64);
    for (int i = 0; i < n; i++) CHECK(ids[i] != im_start && ids[i] != im_end, "special=false made a special token");
    // equal scores merge leftmost first: 5 x U+2581 gives [4][1], rightmost first would give [1][4]
    n = ts_tokenize(tok, "    ", 4, false, false, ids, 64);  // dummy prefix + 4 spaces = 5 x U+2581
    const int32_t sp4 = ts_token_lookup(tok, SP SP SP SP, 12), sp1 = ts_token_lookup(tok, SP, 3);
    CHECK(n == 2 && ids[0] == sp4 && ids[1] == sp1, "runs of spaces must merge from the left (n=%d)", n);
    CHECK(ts_tokenize(tok, "", 0, true, true, ids, 64) == 1 && ids[0] == 1, "empty text with BOS");
    CHECK(ts_tokenize(tok, "", 0, false, true, ids, 64) == 0, "empty text");
    CHECK(ts_tokenize(tok, NULL, 3, false, true, ids, 64) == TS_TOKENIZE_ERROR, "NULL text accepted");
    const struct ts_tokenizer_info * info = ts_tokenizer_get_info(tok);
    CHECK(info->n_vocab == N_VOCAB && info->byte_fallback && info->add_space_prefix && info->add_bos,
          "info wrong");
}

int main(void) {
    struct ts_tokenizer * tok = build();
    test_fixed(tok);
    test_random(tok);
    ts_tokenizer_free(tok);
    for (int i = 0; i < N_VOCAB; i++) free(texts[i]);
    return check_summary("test_tokenizer");
}
