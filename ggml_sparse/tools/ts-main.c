// ts-main: generates text from a turbosparse (or plain llama.cpp) GGUF model, with
// llama.cpp-style flags. Streams the text as it is generated and ends with a statistics line.
#include "turbosparse.h"
#include "tokenizer.h"
#include "sampler.h"
#include "gguf.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct options {
    const char * model;
    const char * prompt;
    const char * prompt_file;
    int          n_predict;
    int          n_threads;
    int          n_ctx;
    struct ts_sampler_params sampling;
    bool         seed_set;
    int          ffn_mode;
    bool         threshold_set;
    float        threshold;
    bool         chat;
    bool         interactive;
    bool         no_repack;
    bool         no_mmap;
    bool         verbose_prompt;
    bool         ignore_eos;
};

static void usage(FILE * f) {
    fprintf(f,
        "usage: ts-main -m MODEL [options]\n"
        "\n"
        "  -m, --model PATH         GGUF model file (turbosparse or plain llama.cpp dense Llama/Mistral;\n"
        "                           default: the bundled model, when the package ships one)\n"
        "  -p, --prompt TEXT        prompt\n"
        "  -f, --file PATH          read the prompt from a file\n"
        "  -n, --n-predict N        tokens to generate (default 128; -1: until end of text or context)\n"
        "  -t, --threads N          threads (default: the online CPUs)\n"
        "  -c, --ctx-size N         context size in tokens (default: the model's, at most 4096)\n"
        "      --temp F             temperature (default 0.8; 0 = greedy)\n"
        "      --top-k N            top-k (default 40; 0 = off)\n"
        "      --top-p F            top-p (default 0.95; 1 = off)\n"
        "      --min-p F            min-p (default 0.05; 0 = off)\n"
        "      --repeat-penalty F   repetition penalty over the last 64 tokens (default 1 = off)\n"
        "      --seed N             random seed (default: from the clock; printed)\n"
        "      --ffn-mode MODE      dense | predicted | exact | threshold (default: predicted when the\n"
        "                           file has predictors, else exact for ReGLU/dReLU, else threshold\n"
        "                           for a SwiGLU file calibrated by ts-calibrate-sparsity, else dense)\n"
        "      --threshold F        predictor logit threshold (default: the file's)\n"
        "      --chat               wrap the prompt in the model's chat format (from the file's chat\n"
        "                           template: ChatML, [INST] or Llama-3; the user's text is never\n"
        "                           parsed for special tokens)\n"
        "  -i, --interactive        chat on stdin, turn by turn (Ctrl-C stops a reply, Ctrl-D quits)\n"
        "      --no-repack          keep every weight in the mapped file (default: weights only read\n"
        "                           densely are copied into RAM in the layout of the faster kernel:\n"
        "                           huge pages for turbosparse's AVX-512 matmul, else ggml's repack;\n"
        "                           the sparse FFN weights copied to huge pages when they fit in RAM)\n"
        "      --no-mmap            read the whole file into RAM (huge pages) instead of mapping it\n"
        "      --verbose-prompt     print the prompt's token ids (each turn's, with -i) on stderr\n"
        "      --ignore-eos         generate all -n tokens, past end-of-text (for timing, as llama.cpp's)\n"
        "  -h, --help               this help\n");
}

// The bundled default model: in an installed package ts-main is turbosparse/bin/ts-main and
// the model turbosparse/models/default.gguf. NULL when there is none.
static const char * bundled_model_path(void) {
    static char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n <= 0) {
        return NULL;
    }
    path[n] = '\0';
    char * slash = strrchr(path, '/');
    if (!slash) {
        return NULL;
    }
    *slash = '\0';
    const char * rel = "/../models/default.gguf";
    if (strlen(path) + strlen(rel) + 1 > sizeof(path)) {
        return NULL;
    }
    strcat(path, rel);
    return access(path, R_OK) == 0 ? path : NULL;
}

static bool parse_int(const char * s, int * out) {
    char * end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) return false;
    *out = (int) v;
    return true;
}

static bool parse_float(const char * s, float * out) {
    char * end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || v != v) return false;
    *out = v;
    return true;
}

// 0 ok, 1 error (message printed), 2 help printed
static int parse_args(int argc, char ** argv, struct options * o) {
    memset(o, 0, sizeof(*o));
    o->n_predict = 128;
    o->ffn_mode = TS_FFN_MODE_AUTO;
    o->sampling = ts_sampler_default_params();
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 2; }
        if (!strcmp(a, "--chat")) { o->chat = true; continue; }
        if (!strcmp(a, "--no-repack")) { o->no_repack = true; continue; }
        if (!strcmp(a, "--no-mmap")) { o->no_mmap = true; continue; }
        if (!strcmp(a, "--verbose-prompt")) { o->verbose_prompt = true; continue; }
        if (!strcmp(a, "--ignore-eos")) { o->ignore_eos = true; continue; }
        if (!strcmp(a, "-i") || !strcmp(a, "--interactive")) { o->interactive = true; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "error: unknown option or missing value: %s\n", a); return 1; }
        const char * v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->prompt_file = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) ok = parse_int(v, &o->n_predict) && o->n_predict >= -1;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = parse_int(v, &o->n_threads) && o->n_threads >= 1;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) ok = parse_int(v, &o->n_ctx) && o->n_ctx >= 1;
        else if (!strcmp(a, "--temp")) ok = parse_float(v, &o->sampling.temperature);
        else if (!strcmp(a, "--top-k")) ok = parse_int(v, &o->sampling.top_k);
        else if (!strcmp(a, "--top-p")) ok = parse_float(v, &o->sampling.top_p);
        else if (!strcmp(a, "--min-p")) ok = parse_float(v, &o->sampling.min_p);
        else if (!strcmp(a, "--repeat-penalty")) ok = parse_float(v, &o->sampling.repeat_penalty) && o->sampling.repeat_penalty > 0;
        else if (!strcmp(a, "--seed")) {
            char * end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            ok = !errno && end != v && !*end;
            o->sampling.seed = s;
            o->seed_set = true;
        }
        else if (!strcmp(a, "--ffn-mode")) {
            if (!strcmp(v, "dense")) o->ffn_mode = TS_FFN_MODE_DENSE;
            else if (!strcmp(v, "predicted")) o->ffn_mode = TS_FFN_MODE_PREDICTED;
            else if (!strcmp(v, "exact")) o->ffn_mode = TS_FFN_MODE_EXACT;
            else if (!strcmp(v, "threshold")) o->ffn_mode = TS_FFN_MODE_THRESHOLD;
            else ok = false;
        }
        else if (!strcmp(a, "--threshold")) { ok = parse_float(v, &o->threshold); o->threshold_set = true; }
        else { fprintf(stderr, "error: unknown option: %s (see --help)\n", a); return 1; }
        if (!ok) { fprintf(stderr, "error: bad value for %s: '%s'\n", a, v); return 1; }
    }
    if (!o->model) {
        o->model = bundled_model_path();
        if (!o->model) {
            fprintf(stderr, "error: no model given (-m PATH; see --help) and no bundled default model "
                            "(models/default.gguf beside this program's folder)\n");
            return 1;
        }
    }
    if (o->prompt && o->prompt_file) { fprintf(stderr, "error: give -p or -f, not both\n"); return 1; }
    if (!o->prompt && !o->prompt_file && !o->interactive) {
        fprintf(stderr, "error: no prompt (-p TEXT, -f FILE or -i)\n");
        return 1;
    }
    if (!o->seed_set) o->sampling.seed = (uint64_t) time(NULL);
    return 0;
}

static char * read_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "error: cannot open prompt file '%s': %s\n", path, strerror(errno)); return NULL; }
    size_t cap = 4096, len = 0;
    char * buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len - 1 == 0) { cap *= 2; buf = realloc(buf, cap); }
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

// ---- the session -----------------------------------------------------------------------------

static volatile sig_atomic_t g_interrupted = 0;
static struct ts_context * g_ctx = NULL;

static void on_sigint(int sig) {
    (void) sig;
    if (g_interrupted) _exit(130); // a second Ctrl-C: leave now
    g_interrupted = 1;
    if (g_ctx) ts_context_abort(g_ctx);
}

// A chat format: the template text around a user's message and after the assistant's reply.
// The template's markers ("<|im_start|>", "[INST]" when the vocabulary has it as a token...)
// become their special tokens; the user's text is always plain text, so a user who types
// "<|im_end|>" cannot end the turn or forge one.
struct chat_format {
    const char * name;
    const char * user_prefix; // before the user's text
    const char * user_suffix; // after it, up to where the assistant's reply begins
    const char * reply_end;   // closes the assistant's reply before the next user turn
};

static const struct chat_format CHAT_CHATML  = { "ChatML", "<|im_start|>user\n",
                                                 "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n" };
static const struct chat_format CHAT_MISTRAL = { "Mistral [INST]", "[INST] ", " [/INST]", "</s>" };
// Llama-2 puts BOS before every user turn and " </s>" after every reply
static const struct chat_format CHAT_LLAMA2  = { "Llama-2 [INST]", "<s>[INST] ", " [/INST]", " </s>" };
static const struct chat_format CHAT_LLAMA3  = { "Llama-3", "<|start_header_id|>user<|end_header_id|>\n\n",
                                                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                                                 "<|eot_id|>" };

// A control or user-defined token: what a template marker is matched against.
struct special_token {
    const char * text;
    size_t       len;
    int32_t      id;
};

struct session {
    struct options        o;
    struct ts_model     * model;
    struct ts_context   * ctx;
    struct ts_tokenizer * tok;
    struct ts_sampler   * smpl;
    const struct ts_tokenizer_info * info;
    float               * logits;
    int                   n_vocab;
    const struct chat_format * chat;
    struct special_token * specials;
    int                   n_specials;
};

// Tokenizes text: special=true recognises special tokens' texts (the raw -p prompt), false
// gives plain text. Returns a malloc'd array or NULL.
static int32_t * tokenize(struct session * s, const char * text, size_t len, bool add_bos, bool special,
                          int * n_out) {
    int cap = (int) len + 8;
    int32_t * ids = malloc(sizeof(int32_t) * cap);
    int n = ids ? ts_tokenize(s->tok, text, len, add_bos, special, ids, cap) : TS_TOKENIZE_ERROR;
    if (n < 0 && n != TS_TOKENIZE_ERROR) {
        cap = -n;
        int32_t * grown = realloc(ids, sizeof(int32_t) * cap);
        if (grown) ids = grown;
        n = grown ? ts_tokenize(s->tok, text, len, add_bos, special, ids, cap) : TS_TOKENIZE_ERROR;
    }
    if (n < 0) { fprintf(stderr, "error: cannot tokenize the prompt\n"); free(ids); return NULL; }
    *n_out = n;
    return ids;
}

// ---- chat prompts ----------------------------------------------------------------------------

// Builds a chat turn's ids the way llama.cpp and the Python API tokenize a rendered template:
// special tokens stand alone and the text between two of them is tokenized as one piece
// (so "user\n" + the user's text is one piece, as in the rendered string). Only the
// template's text is searched for special tokens.
struct chat_ids {
    int32_t * ids;
    int       n, cap;
    char    * text; // plain text since the last special token
    size_t    len, text_cap;
    bool      failed;
};

static void chat_push_id(struct chat_ids * c, int32_t id) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        int32_t * grown = realloc(c->ids, sizeof(int32_t) * cap);
        if (!grown) { c->failed = true; return; }
        c->ids = grown;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
}

static void chat_push_text(struct chat_ids * c, const char * text, size_t len) {
    if (c->len + len + 1 > c->text_cap) {
        size_t cap = 2 * (c->len + len) + 64;
        char * grown = realloc(c->text, cap);
        if (!grown) { c->failed = true; return; }
        c->text = grown;
        c->text_cap = cap;
    }
    memcpy(c->text + c->len, text, len);
    c->len += len;
}

static void chat_flush_text(struct session * s, struct chat_ids * c) {
    if (c->len == 0 || c->failed) return;
    int n;
    int32_t * ids = tokenize(s, c->text, c->len, false, false, &n);
    if (!ids) { c->failed = true; return; }
    for (int i = 0; i < n; i++) chat_push_id(c, ids[i]);
    free(ids);
    c->len = 0;
}

// Template text: its special tokens' texts (longest match) become those tokens.
static void chat_add_template(struct session * s, struct chat_ids * c, const char * text) {
    size_t len = strlen(text), start = 0;
    for (size_t i = 0; i < len;) {
        const struct special_token * match = NULL;
        for (int k = 0; k < s->n_specials; k++) {
            const struct special_token * t = &s->specials[k];
            if (t->len <= len - i && (!match || t->len > match->len) && !memcmp(text + i, t->text, t->len)) match = t;
        }
        if (!match) { i++; continue; }
        chat_push_text(c, text + start, i - start);
        chat_flush_text(s, c);
        chat_push_id(c, match->id);
        i += match->len;
        start = i;
    }
    chat_push_text(c, text + start, len - start);
}

// One user turn, ready to decode: the previous reply's end (unless this is the first turn),
// the user's message in the chat format and the start of the assistant's reply. NULL on error.
static int32_t * chat_turn(struct session * s, const char * user, bool first, int * n_out) {
    struct chat_ids c = { 0 };
    if (!first) chat_add_template(s, &c, s->chat->reply_end);
    chat_add_template(s, &c, s->chat->user_prefix);
    chat_push_text(&c, user, strlen(user));
    chat_add_template(s, &c, s->chat->user_suffix);
    chat_flush_text(s, &c);
    // BOS starts the text, unless the format's first turn begins with it already (Llama-2)
    if (!c.failed && first && s->info->add_bos && s->info->bos_id >= 0 && !(c.n > 0 && c.ids[0] == s->info->bos_id)) {
        chat_push_id(&c, s->info->bos_id);
        memmove(c.ids + 1, c.ids, sizeof(int32_t) * (c.n - 1));
        c.ids[0] = s->info->bos_id;
    }
    free(c.text);
    if (c.failed) {
        fprintf(stderr, "error: cannot tokenize the chat turn\n");
        free(c.ids);
        return NULL;
    }
    *n_out = c.n;
    return c.ids;
}

static bool has_token(const struct session * s, const char * text) {
    for (int k = 0; k < s->n_specials; k++) {
        if (!strcmp(s->specials[k].text, text)) return true;
    }
    return false;
}

// The chat format: from the file's tokenizer.chat_template when ts-main knows its family,
// else ChatML when the vocabulary has <|im_start|>, else [INST]. Says which on stderr.
static bool chat_setup(struct session * s) {
    for (int32_t id = 0; id < s->n_vocab; id++) {
        enum ts_token_type type = ts_token_get_type(s->tok, id);
        const char * text = ts_token_text(s->tok, id);
        if ((type != TS_TOKEN_CONTROL && type != TS_TOKEN_USER_DEFINED) || !text || !*text) continue;
        struct special_token * grown = realloc(s->specials, sizeof(*grown) * (s->n_specials + 1));
        if (!grown) { fprintf(stderr, "error: out of memory\n"); return false; }
        s->specials = grown;
        s->specials[s->n_specials++] = (struct special_token) { text, strlen(text), id };
    }
    const struct gguf_context * g = ts_model_gguf(s->model);
    int64_t key = g ? gguf_find_key(g, "tokenizer.chat_template") : -1;
    const char * tmpl = key >= 0 && gguf_get_kv_type(g, key) == GGUF_TYPE_STRING ? gguf_get_val_str(g, key) : NULL;
    const char * why = "from the file's chat template";
    s->chat = NULL;
    if (tmpl && strstr(tmpl, "<|im_start|>")) {
        s->chat = &CHAT_CHATML;
    } else if (tmpl && strstr(tmpl, "<|start_header_id|>")) {
        s->chat = &CHAT_LLAMA3;
    } else if (tmpl && strstr(tmpl, "[INST]")) {
        bool bos_each_turn = strstr(tmpl, "bos_token + '[INST]") || strstr(tmpl, "bos_token + \"[INST]");
        s->chat = bos_each_turn ? &CHAT_LLAMA2 : &CHAT_MISTRAL;
    } else {
        bool chatml = has_token(s, "<|im_start|>");
        s->chat = chatml ? &CHAT_CHATML : &CHAT_MISTRAL;
        why = tmpl ? (chatml ? "the file's chat template is not one ts-main knows; the vocabulary has <|im_start|>"
                             : "the file's chat template is not one ts-main knows; the vocabulary has no <|im_start|>")
                   : (chatml ? "the file has no chat template; the vocabulary has <|im_start|>"
                             : "the file has no chat template; the vocabulary has no <|im_start|>");
    }
    fprintf(stderr, "chat format: %s (%s)\n", s->chat->name, why);
    return true;
}

// --verbose-prompt: the ids about to be decoded, one a line with their text, as llama.cpp does.
static void print_prompt_ids(const struct session * s, const int32_t * ids, int n_ids) {
    const int size = s->info->max_piece_bytes + 16;
    char * piece = malloc(size);
    if (!piece) return;
    fprintf(stderr, "prompt: %d tokens\n", n_ids);
    for (int i = 0; i < n_ids; i++) {
        int n = ts_token_piece(s->tok, ids[i], true, piece, size);
        fprintf(stderr, "%6d -> '", ids[i]);
        for (int j = 0; j < n; j++) {
            unsigned char ch = (unsigned char) piece[j];
            if (ch == '\n') fputs("\\n", stderr);
            else if (ch < 0x20 || ch == 0x7f) fprintf(stderr, "\\x%02x", ch);
            else fputc(ch, stderr);
        }
        fputs("'\n", stderr);
    }
    free(piece);
}

// Feeds ids (one batch), then samples and streams up to n_predict tokens. Returns 0, or 1
// on an error (printed). *last is the last sampled token (an end-of-generation token when
// the reply ended by itself) or -1.
static int run_turn(struct session * s, const int32_t * ids, int n_ids, int32_t * last) {
    *last = -1;
    int32_t n_ctx = ts_context_n_ctx(s->ctx), n_past = ts_context_n_past(s->ctx);
    if (n_past + n_ids > n_ctx) {
        fprintf(stderr, "\nerror: the prompt (%d tokens) does not fit in the context: %d of %d tokens are free "
                        "(use -c to raise the context size)\n", n_ids, n_ctx - n_past, n_ctx);
        return 1;
    }
    for (int i = 0; i < n_ids; i++) ts_sampler_accept(s->smpl, ids[i]);
    int32_t rc = ts_decode(s->ctx, ids, n_ids, s->logits, 0);
    struct ts_utf8_stream stream;
    ts_utf8_stream_init(&stream, s->tok, false, false);
    const int out_size = 3 * (s->info->max_piece_bytes + 4) + 16;
    char * out = malloc(out_size);
    for (int i = 0; rc == TS_OK && (s->o.n_predict < 0 || i < s->o.n_predict); i++) {
        int32_t t = ts_sample(s->smpl, s->logits, s->n_vocab);
        if (t < 0) {
            fprintf(stderr, "\nerror: sampling failed: %s\n", ts_sample_error_str(t));
            free(out);
            return 1;
        }
        *last = t;
        if (!s->o.ignore_eos && ts_token_is_eog(s->tok, t)) break;
        ts_sampler_accept(s->smpl, t);
        int n = ts_utf8_stream_push(&stream, s->tok, t, out, out_size);
        if (n > 0) { fwrite(out, 1, n, stdout); fflush(stdout); }
        if (ts_context_n_past(s->ctx) >= n_ctx) {
            fprintf(stderr, "\n[context full at %d tokens: generation stopped; use -c to raise it]\n", n_ctx);
            break;
        }
        if (i + 1 == s->o.n_predict) break; // the last token needs no decode
        rc = ts_decode(s->ctx, &t, 1, s->logits, 0);
    }
    int n = ts_utf8_stream_flush(&stream, out, out_size);
    if (n > 0) fwrite(out, 1, n, stdout);
    fflush(stdout);
    free(out);
    if (rc == TS_ERR_ABORTED) return 0;
    if (rc != TS_OK) {
        fprintf(stderr, "\nerror: %s\n", ts_context_error(s->ctx));
        return 1;
    }
    return 0;
}

static void print_stats(const struct session * s) {
    struct ts_stats st;
    ts_context_get_stats(s->ctx, &st);
    static const char * modes[] = { "dense", "predicted", "exact", "threshold" };
    fprintf(stderr,
            "\n\nstats: prompt %lld tokens, %.2f tok/s | generation %lld tokens, %.2f tok/s | "
            "FFN neurons computed %.1f%% (%s) | load %.0f ms\n",
            (long long) st.n_prompt_tokens, st.prompt_ms > 0 ? st.n_prompt_tokens * 1000.0 / st.prompt_ms : 0.0,
            (long long) st.n_gen_tokens, st.gen_ms > 0 ? st.n_gen_tokens * 1000.0 / st.gen_ms : 0.0,
            100.0 * st.ffn_density, modes[ts_context_ffn_mode(s->ctx)], st.load_ms);
}

static int interactive(struct session * s) {
    char line[8192];
    bool first = true;
    for (;;) {
        const char * text = NULL;
        if (first && s->o.prompt) {
            text = s->o.prompt; // a given prompt is the first user turn
        } else {
            fprintf(stderr, "\n> ");
            fflush(stderr);
            if (!fgets(line, sizeof(line), stdin)) break;
            line[strcspn(line, "\n")] = '\0';
            text = line;
        }
        // The reply's own end-of-turn token (when it ended by itself) was sampled but not
        // decoded: the next turn starts with the format's reply end, which closes replies
        // cut short by -n or Ctrl-C the same way.
        int n_ids;
        int32_t * ids = chat_turn(s, text, first, &n_ids);
        if (!ids) return 1;
        if (s->o.verbose_prompt) print_prompt_ids(s, ids, n_ids);
        first = false;
        g_interrupted = 0;
        int32_t last;
        int rc = run_turn(s, ids, n_ids, &last);
        free(ids);
        if (rc) return rc;
    }
    return 0;
}

int main(int argc, char ** argv) {
    struct session s;
    memset(&s, 0, sizeof(s));
    int prc = parse_args(argc, argv, &s.o);
    if (prc) return prc == 2 ? 0 : 1;
    char err[1024];
    int rc = 1;

    struct ts_model_params mp;
    ts_model_params_init(&mp);
    mp.repack = !s.o.no_repack;
    mp.use_mmap = !s.o.no_mmap;
    s.model = ts_model_load(s.o.model, &mp, err, sizeof(err));
    if (!s.model) { fprintf(stderr, "error: cannot load the model: %s\n", err); return 1; }
    s.tok = ts_tokenizer_from_gguf(ts_model_gguf(s.model), err, sizeof(err));
    if (!s.tok) { fprintf(stderr, "error: cannot read the tokenizer: %s\n", err); goto done; }
    s.info = ts_tokenizer_get_info(s.tok);

    struct ts_model_meta meta;
    ts_model_get_meta(s.model, &meta);
    s.n_vocab = meta.n_vocab;
    if (s.info->n_vocab != meta.n_vocab) {
        fprintf(stderr, "error: the tokenizer has %d tokens but the model %d\n", s.info->n_vocab, meta.n_vocab);
        goto done;
    }
    struct ts_context_params cp;
    ts_context_params_init(&cp);
    cp.n_ctx = s.o.n_ctx;
    cp.n_threads = s.o.n_threads;
    cp.ffn_mode = s.o.ffn_mode;
    cp.use_threshold = s.o.threshold_set;
    cp.threshold = s.o.threshold;
    s.ctx = ts_context_new(s.model, &cp, err, sizeof(err));
    if (!s.ctx) { fprintf(stderr, "error: %s\n", err); goto done; }
    s.smpl = ts_sampler_new(&s.o.sampling, err, sizeof(err));
    if (!s.smpl) { fprintf(stderr, "error: %s\n", err); goto done; }
    s.logits = malloc(sizeof(float) * (size_t) s.n_vocab);

    if ((s.o.chat || s.o.interactive) && !chat_setup(&s)) goto done;
    static const char * modes[] = { "dense", "predicted", "exact", "threshold" };
    fprintf(stderr, "model: %s | %d layers, n_embd %d, n_ff %d%s | ffn %s, mode %s%s | threshold %.3g | ctx %d | "
                    "threads %d | seed %llu\n",
            meta.name[0] ? meta.name : s.o.model, meta.n_layer, meta.n_embd, meta.n_ff,
            meta.n_expert ? ", MoE" : "", meta.ffn_kind == TS_FFN_DRELU ? "dReLU" : meta.ffn_kind == TS_FFN_REGLU ? "ReGLU" : "SwiGLU",
            modes[ts_context_ffn_mode(s.ctx)], meta.has_predictor ? "" : " (no predictor in the file)",
            ts_context_threshold(s.ctx), ts_context_n_ctx(s.ctx),
            ts_context_n_threads(s.ctx), (unsigned long long) s.o.sampling.seed);

    g_ctx = s.ctx;
    signal(SIGINT, on_sigint);

    if (s.o.interactive) {
        rc = interactive(&s);
    } else {
        char * prompt = s.o.prompt_file ? read_file(s.o.prompt_file) : strdup(s.o.prompt);
        if (!prompt) goto done;
        int n_ids;
        int32_t * ids = s.o.chat ? chat_turn(&s, prompt, true, &n_ids)
                                 : tokenize(&s, prompt, strlen(prompt), s.info->add_bos, true, &n_ids);
        if (ids && n_ids == 0) {
            fprintf(stderr, "error: the prompt is empty\n");
        } else if (ids) {
            if (s.o.verbose_prompt) print_prompt_ids(&s, ids, n_ids);
            if (!s.o.chat) { fwrite(prompt, 1, strlen(prompt), stdout); fflush(stdout); }
            int32_t last;
            rc = run_turn(&s, ids, n_ids, &last);
        }
        free(ids);
        free(prompt);
    }
    if (s.ctx) print_stats(&s);
    if (g_interrupted && rc == 0) rc = 130;

done:
    g_ctx = NULL;
    free(s.logits);
    free(s.specials);
    if (s.smpl) ts_sampler_free(s.smpl);
    ts_context_free(s.ctx);
    if (s.tok) ts_tokenizer_free(s.tok);
    ts_model_free(s.model);
    return rc;
}
