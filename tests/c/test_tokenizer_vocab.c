// llama.cpp's own tokenizer vectors: for each models/ggml-vocab-<name>.gguf with its .inp/.out
// (llama.cpp's tests/test-tokenizer-0.cpp reads the same files: inputs separated by
// "\n__ggml_vocab_test__\n", one line of ids per input), tokenizes every input as llama.cpp's
// test does (no BOS, no special-token parsing) and checks the ids are the same.
//
//     test_tokenizer_vocab DIR NAME...
//
// DIR is llama.cpp's models/ folder (tests/run.sh fetches it from the llama-cpp-python sdist,
// see tests/c/text.cmake). It also checks that decoding the ids gives the input back for inputs
// that are valid UTF-8 (byte-level BPE loses nothing).
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char * read_all(const char * path, size_t * len) {
    FILE * f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char * buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            char * b = realloc(buf, cap + 1);
            if (!b) { free(buf); buf = NULL; }
            else buf = b;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static const char SEP[] = "\n__ggml_vocab_test__\n";

static int run_vocab(const char * dir, const char * name, int * n_checked) {
    char path[4096], err[512];
    snprintf(path, sizeof(path), "%s/ggml-vocab-%s.gguf", dir, name);
    struct ts_tokenizer * tok = ts_tokenizer_from_file(path, err, sizeof(err));
    if (!tok) {
        fprintf(stderr, "%s: cannot load: %s\n", path, err);
        return 1;
    }
    size_t n_inp = 0, n_out = 0;
    char p_inp[4200], p_out[4200];
    snprintf(p_inp, sizeof(p_inp), "%s.inp", path);
    snprintf(p_out, sizeof(p_out), "%s.out", path);
    char * inp = read_all(p_inp, &n_inp);
    char * out = read_all(p_out, &n_out);
    if (!inp || !out) {
        fprintf(stderr, "%s: cannot read %s\n", name, !inp ? p_inp : p_out);
        free(inp);
        free(out);
        ts_tokenizer_free(tok);
        return 1;
    }
    int fails = 0, n_tests = 0;
    size_t ip = 0;
    char * line = out;
    int32_t * ids = malloc(sizeof(int32_t) * (n_inp * 4 + 16));
    char * dec = malloc(n_inp * 4 + 16);
    while (ip < n_inp && line && *line) {
        const char * s = strstr(inp + ip, SEP);
        const size_t len = s ? (size_t) (s - (inp + ip)) : n_inp - ip;
        char * eol = strchr(line, '\n');
        if (eol) *eol = '\0';
        int32_t want[1024];
        int n_want = 0;
        for (char * q = line; *q;) {
            char * e;
            const long v = strtol(q, &e, 10);
            if (e == q) { q++; continue; }
            if (n_want < 1024) want[n_want++] = (int32_t) v;
            q = e;
        }
        const int n = ts_tokenize(tok, inp + ip, len, false, false, ids, (int) (n_inp * 4 + 16));
        int same = n == n_want;
        for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
        if (!same) {
            fails++;
            fprintf(stderr, "%s: input %d '%.*s': got", name, n_tests, (int) len, inp + ip);
            for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, ", llama.cpp:");
            for (int i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
            fprintf(stderr, "\n");
        }
        // decoding gives the text back (the inputs are valid UTF-8)
        if (same && n >= 0) {
            const int nd = ts_detokenize(tok, ids, n, false, dec, (int) (n_inp * 4 + 16));
            if (nd != (int) len || memcmp(dec, inp + ip, len) != 0) {
                fails++;
                fprintf(stderr, "%s: input %d '%.*s' decodes to '%.*s'\n", name, n_tests, (int) len, inp + ip,
                        nd < 0 ? 0 : nd, dec);
            }
        }
        n_tests++;
        ip += len + (s ? sizeof(SEP) - 1 : 0);
        line = eol ? eol + 1 : NULL;
        if (!s) break;
    }
    if (ip < n_inp || (line && *line)) {
        fprintf(stderr, "%s: .inp and .out hold different numbers of tests\n", name);
        fails++;
    }
    if (n_tests == 0) {
        fprintf(stderr, "%s: no tests found\n", name);
        fails++;
    }
    printf("%-14s %d inputs, %d differ from llama.cpp\n", name, n_tests, fails);
    *n_checked += n_tests;
    free(ids);
    free(dec);
    free(inp);
    free(out);
    ts_tokenizer_free(tok);
    return fails;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LLAMA_CPP_MODELS_DIR VOCAB...\n", argv[0]);
        return 2;
    }
    if (argv[1][0] == '\0') {
        const char * ci = getenv("CI");
        if (ci && strcmp(ci, "true") == 0) {
            fprintf(stderr, "CI must run llama.cpp's tokenizer vectors: TS_LLAMACPP_MODELS is not set\n");
            return 1;
        }
        printf("skipped: no llama.cpp models/ folder given (configure with -DTS_LLAMACPP_MODELS=DIR; "
               "tests/run.sh does)\n");
        return 77;
    }
    int fails = 0, n_checked = 0;
    for (int i = 2; i < argc; i++) fails += run_vocab(argv[1], argv[i], &n_checked);
    printf("%d inputs checked, %d failures\n", n_checked, fails);
    return fails ? 1 : 0;
}
