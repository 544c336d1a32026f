// Byte-level BPE (tokenizer.ggml.model "gpt2"), as llama.cpp's llm_tokenizer_bpe: the text is
// cut at special tokens (tokenizer_st_partition), each plain fragment into words by the
// pre-tokenizer (pretokenize.c), each word's bytes are written as GPT-2's printable code
// points and merged by rank (tokenizer.ggml.merges: lowest rank first, leftmost on ties).
#include "tokenizer-impl.h"

#include "gguf.h"
#include "unicode.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ts_context_fail(char * err, size_t err_size, const char * fmt, ...) {
    if (!err || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

static uint32_t merge_hash(const char * l, size_t ln, const char * r, size_t rn) {
    uint32_t h = ts_hash_bytes(TS_HASH_INIT, l, ln);
    h = ts_hash_bytes(h, " ", 1);
    return ts_hash_bytes(h, r, rn);
}

// The rank of merging l and r, -1 when the merges have no such pair.
static int32_t merge_rank(const struct ts_tokenizer * tok, const char * l, size_t ln, const char * r, size_t rn) {
    const uint32_t h = merge_hash(l, ln, r, rn);
    for (uint32_t i = h & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        const struct merge_slot * s = &tok->merges[i];
        if (s->rank < 0) return -1;
        const char * m = tok->merge_text[s->rank];
        if (s->hash == h && tok->merge_left_len[s->rank] == ln && memcmp(m, l, ln) == 0 &&
            memcmp(m + ln + 1, r, rn) == 0 && m[ln + 1 + rn] == '\0') {
            return s->rank;
        }
    }
}

// llama.cpp's text_to_token: the id whose text is exactly s, -1 when none.
static int32_t lookup(const struct ts_tokenizer * tok, const char * s, size_t n) {
    if (n == 0 || n > (size_t) tok->info.max_piece_bytes) return -1;
    const struct tok_slot * slot = ts_tok_find_slot(tok, s, n);
    return slot->merge_id >= 0 ? slot->merge_id : slot->reserved_id;
}


struct len_id { uint32_t len; int32_t id; };

static int cmp_by_length(const void * a, const void * b) {  // longest first, then by id
    const struct len_id * x = a, * y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

bool ts_bpe_load(struct ts_tokenizer * tok, const struct gguf_context * ctx, char * err, size_t err_size) {
    // pre-tokenizer
    const int64_t k_pre = gguf_find_key(ctx, "tokenizer.ggml.pre");
    if (k_pre < 0 || gguf_get_kv_type(ctx, k_pre) != GGUF_TYPE_STRING) {
        ts_context_fail(err, err_size, "tokenizer.ggml.pre is %s: a byte-level BPE vocabulary (tokenizer.ggml.model 'gpt2') "
                "needs its pre-tokenizer named (llama.cpp's 'default' guess is not supported)", k_pre < 0 ? "missing" : "not a string");
        return false;
    }
    const char * pre = gguf_get_val_str(ctx, k_pre);
    if (!ts_pretok_from_name(pre, &tok->pretok, &tok->ignore_merges)) {
        ts_context_fail(err, err_size, "tokenizer.ggml.pre '%s' is not supported (supported: llama-bpe/llama3, qwen2, gpt-2, "
                "starcoder, smollm, deepseek-llm and the names llama.cpp gives the same rules)", pre);
        return false;
    }
    // llama.cpp adds BOS by default for the Llama 3 names, the ones that ignore merges too
    if (tok->ignore_merges) tok->info.add_bos = true;

    // merges
    const int64_t k_merges = gguf_find_key(ctx, "tokenizer.ggml.merges");
    if (k_merges < 0) {
        ts_context_fail(err, err_size, "tokenizer.ggml.merges is missing (byte-level BPE needs its merges)");
        return false;
    }
    if (gguf_get_kv_type(ctx, k_merges) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx, k_merges) != GGUF_TYPE_STRING) {
        ts_context_fail(err, err_size, "tokenizer.ggml.merges must be an array of strings");
        return false;
    }
    const size_t n_merges = gguf_get_arr_n(ctx, k_merges);
    if (n_merges > (size_t) INT32_MAX / 4) {
        ts_context_fail(err, err_size, "tokenizer.ggml.merges has %zu entries", n_merges);
        return false;
    }
    size_t pool = 0;
    for (size_t i = 0; i < n_merges; i++) pool += strlen(gguf_get_arr_str(ctx, k_merges, i)) + 1;
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t) n_merges) cap <<= 1;
    tok->merge_pool = malloc(pool + 1);
    tok->merge_text = malloc((n_merges + 1) * sizeof(char *));
    tok->merge_left_len = malloc((n_merges + 1) * sizeof(uint32_t));
    tok->merges = malloc(cap * sizeof(*tok->merges));
    if (!tok->merge_pool || !tok->merge_text || !tok->merge_left_len || !tok->merges) goto oom;
    tok->merge_mask = cap - 1;
    for (uint32_t i = 0; i < cap; i++) tok->merges[i] = (struct merge_slot) { 0, -1 };
    size_t pos = 0;
    for (size_t i = 0; i < n_merges; i++) {
        const char * m = gguf_get_arr_str(ctx, k_merges, i);
        const size_t n = strlen(m);
        memcpy(tok->merge_pool + pos, m, n + 1);
        tok->merge_text[i] = tok->merge_pool + pos;
        pos += n + 1;
        // "left right", split at the first space after the first byte (llama.cpp); a merge
        // without one can never apply
        const char * sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
        if (!sp) {
            tok->merge_left_len[i] = UINT32_MAX;
            continue;
        }
        const size_t ln = (size_t) (sp - m);
        tok->merge_left_len[i] = (uint32_t) ln;
        const uint32_t h = merge_hash(m, ln, sp + 1, n - ln - 1);
        for (uint32_t j = h & tok->merge_mask;; j = (j + 1) & tok->merge_mask) {
            struct merge_slot * s = &tok->merges[j];
            if (s->rank < 0) {
                *s = (struct merge_slot) { h, (int32_t) i };
                break;
            }
            // the same pair again: the first rank stays (llama.cpp's emplace)
            if (s->hash == h && tok->merge_left_len[s->rank] == ln && strcmp(tok->merge_text[s->rank], m) == 0) break;
        }
    }

    // GPT-2's byte encoding, and its inverse for every normal token
    for (int b = 0; b < 256; b++) tok->byte_enc_len[b] = (uint8_t) ts_utf8_encode(ts_byte_to_cp((uint8_t) b), tok->byte_enc[b]);
    int cp_byte[0x144];  // code point -> byte, -1 for none; all of GPT-2's code points are below U+0144
    for (int c = 0; c < 0x144; c++) cp_byte[c] = ts_cp_to_byte((uint32_t) c);
    const int32_t n_vocab = tok->info.n_vocab;
    size_t total = 0;
    for (int32_t id = 0; id < n_vocab; id++) total += tok->text_len[id];
    tok->bpe_bytes = calloc((size_t) n_vocab, sizeof(char *));
    tok->bpe_bytes_len = calloc((size_t) n_vocab, sizeof(uint32_t));
    tok->bpe_bytes_pool = malloc(total + 1);
    uint32_t * cps = malloc(((size_t) tok->info.max_piece_bytes + 1) * sizeof(uint32_t));
    if (!tok->bpe_bytes || !tok->bpe_bytes_len || !tok->bpe_bytes_pool || !cps) {
        free(cps);
        goto oom;
    }
    pos = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        tok->bpe_bytes[id] = tok->bpe_bytes_pool + pos;
        if (tok->types[id] != TS_TOKEN_NORMAL) continue;
        const size_t n_cps = ts_utf8_decode(tok->text[id], tok->text_len[id], cps);
        for (size_t i = 0; i < n_cps; i++) {
            // never longer than the text: one byte per code point, or the code point's own UTF-8
            if (cps[i] < 0x144 && cp_byte[cps[i]] >= 0) {
                tok->bpe_bytes_pool[pos++] = (char) cp_byte[cps[i]];
            } else {
                // llama.cpp writes "[UNK_BYTE_0x..]" here; the code point itself is more useful
                pos += (size_t) ts_utf8_encode(cps[i], tok->bpe_bytes_pool + pos);
            }
        }
        tok->bpe_bytes_len[id] = (uint32_t) (tok->bpe_bytes_pool + pos - tok->bpe_bytes[id]);
    }
    free(cps);

    // special tokens in llama.cpp's partition order: longest text first
    int32_t n = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        const int t = tok->types[id];
        n += t == TS_TOKEN_CONTROL || t == TS_TOKEN_USER_DEFINED || t == TS_TOKEN_UNKNOWN;
    }
    tok->by_length = malloc(((size_t) n + 1) * sizeof(int32_t));
    struct len_id * keys = malloc(((size_t) n + 1) * sizeof(*keys));
    if (!tok->by_length || !keys) {
        free(keys);
        goto oom;
    }
    n = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        const int t = tok->types[id];
        if (t == TS_TOKEN_CONTROL || t == TS_TOKEN_USER_DEFINED || t == TS_TOKEN_UNKNOWN) {
            keys[n++] = (struct len_id) { tok->text_len[id], id };
        }
    }
    qsort(keys, (size_t) n, sizeof(*keys), cmp_by_length);
    for (int32_t i = 0; i < n; i++) tok->by_length[i] = keys[i].id;
    free(keys);
    tok->n_by_length = n;

    // End of turn, found by its text when the file does not say, as llama.cpp does
    if (tok->info.eot_id < 0) {
        static const char * EOT[] = { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>" };
        for (size_t i = 0; i < sizeof(EOT) / sizeof(EOT[0]) && tok->info.eot_id < 0; i++) {
            const int32_t id = lookup(tok, EOT[i], strlen(EOT[i]));
            if (id >= 0 && tok->types[id] == TS_TOKEN_CONTROL) tok->info.eot_id = id;
        }
    }
    return true;

oom:
    ts_context_fail(err, err_size, "out of memory loading the BPE merges (%zu)", n_merges);
    return false;
}

void ts_bpe_free(struct ts_tokenizer * tok) {
    free(tok->by_length);
    free(tok->merges);
    free(tok->merge_text);
    free(tok->merge_left_len);
    free(tok->merge_pool);
    free(tok->bpe_bytes);
    free(tok->bpe_bytes_len);
    free(tok->bpe_bytes_pool);
}

// ---- encoding -----------------------------------------------------------------------------

struct fragment {  // a run of text (id < 0) or a special token
    size_t  start, len;
    int32_t id;
};

struct symbol {
    int32_t  prev, next;
    uint32_t start, len;  // bytes of the encoded word; len 0 = merged into its left neighbour
};

struct encoder {
    const struct ts_tokenizer * tok;
    char          * word;  // the current word, byte-encoded
    int             n_word, cap_word;
    struct symbol * sym;
    int             cap_sym;
    struct ts_merge_queue merges;
    int32_t       * out;
    int             n_out, cap_out;
    bool            oom;
};

static void emit(struct encoder * e, int32_t id) {
    if (!ts_grow((void **) &e->out, &e->cap_out, e->n_out + 1, sizeof(int32_t))) {
        e->oom = true;
        return;
    }
    e->out[e->n_out++] = id;
}

static void maybe_add_pair(struct encoder * e, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const struct symbol * l = &e->sym[left], * r = &e->sym[right];
    const int32_t rank = merge_rank(e->tok, e->word + l->start, l->len, e->word + r->start, r->len);
    // lower rank first: priority -rank (exact in a double)
    if (rank >= 0 && !ts_merge_push(&e->merges, (struct ts_merge) { -(double) rank, left, right, l->len + r->len })) {
        e->oom = true;
    }
}

// BPE on e->word (llm_tokenizer_bpe_session::tokenize for one word)
static void encode_word(struct encoder * e) {
    const struct ts_tokenizer * tok = e->tok;
    const int n = e->n_word;
    if (tok->ignore_merges) {
        const int32_t id = lookup(tok, e->word, (size_t) n);
        if (id >= 0) {
            emit(e, id);
            return;
        }
    }
    if (!ts_grow((void **) &e->sym, &e->cap_sym, n + 1, sizeof(struct symbol))) {
        e->oom = true;
        return;
    }
    int32_t n_sym = 0;
    for (int i = 0; i < n;) {
        int cl = ts_utf8_lead_len((unsigned char) e->word[i]);
        if (cl > n - i) cl = n - i;
        e->sym[n_sym] = (struct symbol) { n_sym - 1, -1, (uint32_t) i, (uint32_t) cl };
        if (n_sym > 0) e->sym[n_sym - 1].next = n_sym;
        n_sym++;
        i += cl;
    }
    e->merges.n = 0;
    for (int32_t i = 1; i < n_sym; i++) maybe_add_pair(e, i - 1, i);
    while (e->merges.n > 0 && !e->oom) {
        const struct ts_merge top = ts_merge_pop(&e->merges);
        struct symbol * l = &e->sym[top.left];
        struct symbol * r = &e->sym[top.right];
        // stale: both still live and adjacent means the same text exactly when the size is the same
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) e->sym[r->next].prev = top.left;
        r->len = 0;
        maybe_add_pair(e, l->prev, top.left);
        maybe_add_pair(e, top.left, l->next);
    }
    for (int32_t i = n_sym > 0 ? 0 : -1; i >= 0 && !e->oom; i = e->sym[i].next) {
        const char * s = e->word + e->sym[i].start;
        const int32_t id = lookup(tok, s, e->sym[i].len);
        if (id >= 0) {
            emit(e, id);
            continue;
        }
        // no such token: each byte of the symbol that is a token on its own (llama.cpp)
        for (uint32_t j = 0; j < e->sym[i].len; j++) {
            const int32_t b = lookup(tok, s + j, 1);
            if (b >= 0) emit(e, b);
        }
    }
}

static void encode_text(struct encoder * e, const char * text, size_t len) {
    uint32_t * cps = malloc((len + 1) * sizeof(uint32_t));
    uint32_t * lens = malloc((len + 1) * sizeof(uint32_t));
    uint32_t * scratch = malloc((len + 1) * sizeof(uint32_t));
    if (!cps || !lens || !scratch) {
        e->oom = true;
    } else {
        const size_t n_cps = ts_utf8_decode(text, len, cps);
        const size_t n_words = ts_pretokenize(e->tok->pretok, cps, n_cps, lens, scratch);
        size_t at = 0;
        for (size_t w = 0; w < n_words && !e->oom; w++) {
            e->n_word = 0;
            for (size_t i = at; i < at + lens[w]; i++) {
                char u[4];
                const int nu = ts_utf8_encode(cps[i], u);
                if (!ts_grow((void **) &e->word, &e->cap_word, e->n_word + 3 * nu, 1)) {
                    e->oom = true;
                    break;
                }
                for (int k = 0; k < nu; k++) {
                    const uint8_t b = (uint8_t) u[k];
                    memcpy(e->word + e->n_word, e->tok->byte_enc[b], e->tok->byte_enc_len[b]);
                    e->n_word += e->tok->byte_enc_len[b];
                }
            }
            at += lens[w];
            if (!e->oom && e->n_word > 0) encode_word(e);
        }
    }
    free(cps);
    free(lens);
    free(scratch);
}

static const char * find(const char * hay, size_t n, const char * needle, size_t m) {
    if (m == 0 || m > n) return NULL;
    const char * end = hay + n - m + 1;
    for (const char * p = hay; p < end; p++) {
        p = memchr(p, needle[0], (size_t) (end - p));
        if (!p) return NULL;
        if (memcmp(p, needle, m) == 0) return p;
    }
    return NULL;
}

// llama.cpp's tokenizer_st_partition: for each special token, longest first, every text
// fragment is cut at each of its occurrences. Control and unknown tokens only when special.
static struct fragment * partition(const struct ts_tokenizer * tok, const char * text, size_t len, bool special,
                                   int * n_frag) {
    int cap = 16, n = 0;
    struct fragment * f = malloc((size_t) cap * sizeof(*f));
    if (!f) return NULL;
    if (len > 0) f[n++] = (struct fragment) { 0, len, -1 };
    for (int32_t k = 0; k < tok->n_by_length; k++) {
        const int32_t id = tok->by_length[k];
        const int t = tok->types[id];
        if (!special && t != TS_TOKEN_USER_DEFINED) continue;
        const char * s = tok->text[id];
        const size_t m = tok->text_len[id];
        for (int i = 0; i < n; i++) {
            if (f[i].id >= 0) continue;
            const char * p = find(text + f[i].start, f[i].len, s, m);
            if (!p) continue;
            // text before | token | text after (searched again on the next turn of i)
            const size_t at = (size_t) (p - text);
            const size_t before = at - f[i].start, after = f[i].start + f[i].len - at - m;
            const int add = (before > 0) + 1 + (after > 0) - 1;
            if (!ts_grow((void **) &f, &cap, n + add, sizeof(*f))) {
                free(f);
                return NULL;
            }
            const struct fragment old = f[i];
            memmove(f + i + 1 + add, f + i + 1, (size_t) (n - i - 1) * sizeof(*f));
            n += add;
            int j = i;
            if (before > 0) f[j++] = (struct fragment) { old.start, before, -1 };
            f[j++] = (struct fragment) { at, m, id };
            if (after > 0) f[j] = (struct fragment) { at + m, after, -1 };
            i = j - 1;  // continue with the text after the token
        }
    }
    *n_frag = n;
    return f;
}

int ts_bpe_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                    int32_t * out, int n_max) {
    if (!tok || (!text && len > 0) || n_max < 0 || (!out && n_max > 0)) return TS_TOKENIZE_ERROR;
    if (len > (size_t) (INT32_MAX / 8)) return TS_TOKENIZE_ERROR;
    struct encoder e = { .tok = tok };
    if (add_bos && tok->info.bos_id >= 0) emit(&e, tok->info.bos_id);
    int n_frag = 0;
    struct fragment * f = partition(tok, text, len, special, &n_frag);
    if (!f) e.oom = true;
    for (int i = 0; i < n_frag && !e.oom; i++) {
        if (f[i].id >= 0) emit(&e, f[i].id);
        else encode_text(&e, text + f[i].start, f[i].len);
    }
    int result;
    if (e.oom) result = TS_TOKENIZE_ERROR;
    else if (e.n_out > n_max) result = -e.n_out;
    else {
        if (e.n_out > 0) memcpy(out, e.out, (size_t) e.n_out * sizeof(int32_t));
        result = e.n_out;
    }
    free(f);
    free(e.word);
    free(e.sym);
    free(e.merges.heap);
    free(e.out);
    return result;
}
