// The tokenizer's vocabulary from GGUF metadata (what every kind shares: token texts, types,
// special ids, the piece -> id map), the choice of kind, and decoding (ids -> text, streaming).
// The encoders are tokenizer-spm.c (SentencePiece) and tokenizer-bpe.c (byte-level BPE).
#include "tokenizer-impl.h"

#include "gguf.h"

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

static bool is_mergeable_type(int t) {
    return t == TS_TOKEN_NORMAL || t == TS_TOKEN_USER_DEFINED || t == TS_TOKEN_UNUSED || t == TS_TOKEN_UNDEFINED;
}

struct tok_slot * ts_tok_find_slot(const struct ts_tokenizer * tok, const char * s, size_t n) {
    const uint32_t h = ts_hash_bytes(TS_HASH_INIT, s, n);
    for (uint32_t i = h & tok->slot_mask;; i = (i + 1) & tok->slot_mask) {
        struct tok_slot * slot = &tok->slots[i];
        if (slot->merge_id < 0 && slot->reserved_id < 0) return slot;  // empty: not present
        const int32_t id = slot->merge_id >= 0 ? slot->merge_id : slot->reserved_id;
        if (slot->hash == h && tok->text_len[id] == n && memcmp(tok->text[id], s, n) == 0) return slot;
    }
}

// ---- loading ----------------------------------------------------------------------------------

static bool read_opt_id(const struct gguf_context * ctx, const char * key, int32_t n_vocab, int32_t * out,
                        char * err, size_t err_size) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) return true;
    int64_t v;
    switch (gguf_get_kv_type(ctx, k)) {
        case GGUF_TYPE_UINT32: v = gguf_get_val_u32(ctx, k); break;
        case GGUF_TYPE_INT32:  v = gguf_get_val_i32(ctx, k); break;
        case GGUF_TYPE_UINT64: v = (int64_t) gguf_get_val_u64(ctx, k); break;
        case GGUF_TYPE_INT64:  v = gguf_get_val_i64(ctx, k); break;
        default:
            ts_context_fail(err, err_size, "%s has type %s, expected u32", key, gguf_type_name(gguf_get_kv_type(ctx, k)));
            return false;
    }
    if (v < 0 || v >= n_vocab) {
        ts_context_fail(err, err_size, "%s = %lld is outside the vocabulary (%d tokens)", key, (long long) v, n_vocab);
        return false;
    }
    *out = (int32_t) v;
    return true;
}

static bool read_opt_bool(const struct gguf_context * ctx, const char * key, bool * out, char * err, size_t err_size) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) return true;
    if (gguf_get_kv_type(ctx, k) != GGUF_TYPE_BOOL) {
        ts_context_fail(err, err_size, "%s has type %s, expected bool", key, gguf_type_name(gguf_get_kv_type(ctx, k)));
        return false;
    }
    *out = gguf_get_val_bool(ctx, k);
    return true;
}

// Finds an array key of the given element type and n elements; -1 when absent (and optional).
static int64_t find_array(const struct gguf_context * ctx, const char * key, enum gguf_type type, int64_t n,
                          bool required, bool * ok, char * err, size_t err_size) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) {
        if (required) {
            ts_context_fail(err, err_size, "%s is missing", key);
            *ok = false;
        }
        return -1;
    }
    if (gguf_get_kv_type(ctx, k) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx, k) != type) {
        ts_context_fail(err, err_size, "%s must be an array of %s", key, gguf_type_name(type));
        *ok = false;
        return -1;
    }
    if (n >= 0 && (int64_t) gguf_get_arr_n(ctx, k) != n) {
        ts_context_fail(err, err_size, "%s has %zu entries, tokenizer.ggml.tokens has %lld", key, gguf_get_arr_n(ctx, k),
                (long long) n);
        *ok = false;
        return -1;
    }
    return k;
}

static int parse_byte_piece(const char * s, size_t n) {  // "<0xAB>" -> 0xAB, else -1
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        const char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else return -1;
    }
    return v;
}

struct special_key {
    unsigned char first;
    uint32_t      len;
    int32_t       id;
};

static int cmp_special(const void * a, const void * b) {  // by first byte, then longest first
    const struct special_key * x = a, * y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

struct ts_tokenizer * ts_tokenizer_from_gguf(const struct gguf_context * ctx, char * err, size_t err_size) {
    ts_context_fail(err, err_size, "%s", "");
    if (!ctx) {
        ts_context_fail(err, err_size, "no gguf context");
        return NULL;
    }
    const int64_t k_model = gguf_find_key(ctx, "tokenizer.ggml.model");
    if (k_model < 0) {
        ts_context_fail(err, err_size, "tokenizer.ggml.model is missing");
        return NULL;
    }
    if (gguf_get_kv_type(ctx, k_model) != GGUF_TYPE_STRING) {
        ts_context_fail(err, err_size, "tokenizer.ggml.model must be a string");
        return NULL;
    }
    const char * model = gguf_get_val_str(ctx, k_model);
    enum ts_tok_kind kind;
    if (strcmp(model, "llama") == 0) {
        kind = TS_TOK_SPM;
    } else if (strcmp(model, "gpt2") == 0) {
        kind = TS_TOK_BPE;
    } else {
        ts_context_fail(err, err_size, "tokenizer.ggml.model '%s' is not supported (only 'llama', SentencePiece, and "
                "'gpt2', byte-level BPE)", model);
        return NULL;
    }

    bool ok = true;
    const int64_t k_tokens = find_array(ctx, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, -1, true, &ok, err, err_size);
    if (!ok) return NULL;
    const int64_t n_vocab = (int64_t) gguf_get_arr_n(ctx, k_tokens);
    if (n_vocab <= 0 || n_vocab > INT32_MAX / 2) {
        ts_context_fail(err, err_size, "tokenizer.ggml.tokens has %lld entries", (long long) n_vocab);
        return NULL;
    }
    const int64_t k_scores = find_array(ctx, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, n_vocab, false, &ok, err, err_size);
    if (!ok) return NULL;
    const int64_t k_types = find_array(ctx, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n_vocab, false, &ok, err, err_size);
    if (!ok) return NULL;

    struct ts_tokenizer * tok = calloc(1, sizeof(*tok));
    if (!tok) goto oom;
    struct ts_tokenizer_info * info = &tok->info;
    info->n_vocab = (int32_t) n_vocab;
    info->bos_id = info->eos_id = info->eot_id = info->unk_id = info->pad_id = -1;
    info->add_bos = true;
    info->add_eos = false;
    // llama.cpp's defaults: BPE vocabularies add no dummy prefix; BOS as the file says (the
    // pre-tokenizer may change it, see ts_bpe_load)
    info->add_space_prefix = kind == TS_TOK_SPM;
    tok->kind = kind;

    tok->text     = calloc((size_t) n_vocab, sizeof(char *));
    tok->text_len = calloc((size_t) n_vocab, sizeof(uint32_t));
    tok->scores   = calloc((size_t) n_vocab, sizeof(float));
    tok->types    = calloc((size_t) n_vocab, sizeof(uint8_t));
    if (!tok->text || !tok->text_len || !tok->scores || !tok->types) goto oom;

    size_t pool_size = 0;
    for (int64_t i = 0; i < n_vocab; i++) pool_size += strlen(gguf_get_arr_str(ctx, k_tokens, (size_t) i)) + 1;
    tok->text_pool = malloc(pool_size);
    if (!tok->text_pool) goto oom;
    size_t pos = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        const char * s = gguf_get_arr_str(ctx, k_tokens, (size_t) i);
        const size_t n = strlen(s);
        if (n == 0) {
            ts_context_fail(err, err_size, "token %lld has empty text", (long long) i);
            goto fail;
        }
        memcpy(tok->text_pool + pos, s, n + 1);
        tok->text[i] = tok->text_pool + pos;
        tok->text_len[i] = (uint32_t) n;
        if ((int32_t) n > info->max_piece_bytes) info->max_piece_bytes = (int32_t) n;
        pos += n + 1;
    }
    const float * scores = k_scores >= 0 ? gguf_get_arr_data(ctx, k_scores) : NULL;
    const int32_t * types = k_types >= 0 ? gguf_get_arr_data(ctx, k_types) : NULL;
    for (int64_t i = 0; i < n_vocab; i++) {
        // Without scores, llama.cpp uses 0 for all; merges then go leftmost first.
        tok->scores[i] = scores ? scores[i] : 0.0f;
        int t = TS_TOKEN_NORMAL;
        if (types) {
            t = types[i];
            if (t < TS_TOKEN_UNDEFINED || t > TS_TOKEN_BYTE) {
                ts_context_fail(err, err_size, "tokenizer.ggml.token_type[%lld] = %d is not a llama.cpp token type (0..6)",
                        (long long) i, t);
                goto fail;
            }
        } else if (parse_byte_piece(tok->text[i], tok->text_len[i]) >= 0) {
            t = TS_TOKEN_BYTE;
        }
        tok->types[i] = (uint8_t) t;
    }

    // piece -> id map
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t) n_vocab) cap <<= 1;
    tok->slots = malloc(cap * sizeof(*tok->slots));
    if (!tok->slots) goto oom;
    for (uint32_t i = 0; i < cap; i++) tok->slots[i] = (struct tok_slot) { 0, -1, -1 };
    tok->slot_mask = cap - 1;
    for (int32_t id = 0; id < info->n_vocab; id++) {
        struct tok_slot * slot = ts_tok_find_slot(tok, tok->text[id], tok->text_len[id]);
        slot->hash = ts_hash_bytes(TS_HASH_INIT, tok->text[id], tok->text_len[id]);
        // first id wins on duplicates, as the first one is what a lookup must return
        if (is_mergeable_type(tok->types[id])) {
            if (slot->merge_id < 0) slot->merge_id = id;
        } else if (slot->reserved_id < 0) {
            slot->reserved_id = id;
        }
    }

    // byte fallback
    for (int b = 0; b < 256; b++) tok->byte_id[b] = -1;
    int n_bytes = 0;
    for (int32_t id = 0; id < info->n_vocab; id++) {
        if (tok->types[id] != TS_TOKEN_BYTE) continue;
        const int b = parse_byte_piece(tok->text[id], tok->text_len[id]);
        if (b < 0) {
            ts_context_fail(err, err_size, "byte token %d has text '%s', expected <0xXX>", id, tok->text[id]);
            goto fail;
        }
        if (tok->byte_id[b] < 0) {
            tok->byte_id[b] = id;
            n_bytes++;
        }
    }
    info->byte_fallback = n_bytes == 256;
    tok->n_byte_tokens = n_bytes;

    if (kind == TS_TOK_BPE) {
        info->add_bos = false;  // llama.cpp's default for BPE; ts_bpe_load sets it for Llama 3
        if (!ts_bpe_load(tok, ctx, err, err_size)) goto fail;
    }
    if (!read_opt_id(ctx, "tokenizer.ggml.bos_token_id", info->n_vocab, &info->bos_id, err, err_size) ||
        !read_opt_id(ctx, "tokenizer.ggml.eos_token_id", info->n_vocab, &info->eos_id, err, err_size) ||
        !read_opt_id(ctx, "tokenizer.ggml.eot_token_id", info->n_vocab, &info->eot_id, err, err_size) ||
        !read_opt_id(ctx, "tokenizer.ggml.unknown_token_id", info->n_vocab, &info->unk_id, err, err_size) ||
        !read_opt_id(ctx, "tokenizer.ggml.padding_token_id", info->n_vocab, &info->pad_id, err, err_size) ||
        !read_opt_bool(ctx, "tokenizer.ggml.add_bos_token", &info->add_bos, err, err_size) ||
        !read_opt_bool(ctx, "tokenizer.ggml.add_eos_token", &info->add_eos, err, err_size) ||
        !read_opt_bool(ctx, "tokenizer.ggml.add_space_prefix", &info->add_space_prefix, err, err_size)) {
        goto fail;
    }
    if (info->unk_id < 0) {
        for (int32_t id = 0; id < info->n_vocab; id++) {
            if (tok->types[id] == TS_TOKEN_UNKNOWN) {
                info->unk_id = id;
                break;
            }
        }
    }
    if (kind == TS_TOK_SPM && info->unk_id < 0 && !info->byte_fallback) {
        ts_context_fail(err, err_size, "the vocabulary has no unknown token and only %d of the 256 byte tokens: "
                "some text could not be tokenized", n_bytes);
        goto fail;
    }

    // special tokens
    int n_special = 0;
    for (int32_t id = 0; id < info->n_vocab; id++) {
        n_special += tok->types[id] == TS_TOKEN_CONTROL || tok->types[id] == TS_TOKEN_USER_DEFINED;
    }
    tok->special = malloc(((size_t) n_special + 1) * sizeof(int32_t));
    struct special_key * keys = malloc(((size_t) n_special + 1) * sizeof(*keys));
    if (!tok->special || !keys) {
        free(keys);
        goto oom;
    }
    n_special = 0;
    for (int32_t id = 0; id < info->n_vocab; id++) {
        if (tok->types[id] == TS_TOKEN_CONTROL || tok->types[id] == TS_TOKEN_USER_DEFINED) {
            keys[n_special++] = (struct special_key) { (unsigned char) tok->text[id][0], tok->text_len[id], id };
        }
    }
    qsort(keys, (size_t) n_special, sizeof(*keys), cmp_special);
    for (int i = 0; i < n_special; i++) tok->special[i] = keys[i].id;
    free(keys);
    for (int b = 0, i = 0; b <= 256; b++) {
        while (i < n_special && (unsigned char) tok->text[tok->special[i]][0] < b) i++;
        tok->special_start[b] = i;
    }
    return tok;

oom:
    ts_context_fail(err, err_size, "out of memory loading the tokenizer (%lld tokens)", (long long) n_vocab);
fail:
    ts_tokenizer_free(tok);
    return NULL;
}

struct ts_tokenizer * ts_tokenizer_from_file(const char * path, char * err, size_t err_size) {
    struct gguf_init_params params = { .no_alloc = true, .ctx = NULL };
    struct gguf_context * ctx = gguf_init_from_file(path, params);
    if (!ctx) {
        ts_context_fail(err, err_size, "cannot read GGUF file '%s'", path);
        return NULL;
    }
    struct ts_tokenizer * tok = ts_tokenizer_from_gguf(ctx, err, err_size);
    gguf_free(ctx);
    return tok;
}

void ts_tokenizer_free(struct ts_tokenizer * tok) {
    if (!tok) return;
    free(tok->text);
    free(tok->text_len);
    free(tok->scores);
    free(tok->types);
    free(tok->text_pool);
    free(tok->slots);
    free(tok->special);
    ts_bpe_free(tok);
    free(tok);
}

const struct ts_tokenizer_info * ts_tokenizer_get_info(const struct ts_tokenizer * tok) { return &tok->info; }

const char * ts_token_text(const struct ts_tokenizer * tok, int32_t id) {
    return id >= 0 && id < tok->info.n_vocab ? tok->text[id] : NULL;
}

enum ts_token_type ts_token_get_type(const struct ts_tokenizer * tok, int32_t id) {
    return id >= 0 && id < tok->info.n_vocab ? (enum ts_token_type) tok->types[id] : TS_TOKEN_UNDEFINED;
}

int32_t ts_token_lookup(const struct ts_tokenizer * tok, const char * text, size_t len) {
    if (!tok || !text || len == 0 || len > (size_t) tok->info.max_piece_bytes) return -1;
    const struct tok_slot * slot = ts_tok_find_slot(tok, text, len);
    return slot->reserved_id >= 0 ? slot->reserved_id : slot->merge_id;
}

bool ts_token_is_eog(const struct ts_tokenizer * tok, int32_t id) {
    return id >= 0 && (id == tok->info.eos_id || id == tok->info.eot_id);
}

// ---- UTF-8 --------------------------------------------------------------------------------

int ts_utf8_valid_len(const unsigned char * s, size_t n) {
    if (n == 0) return 0;
    const unsigned char c = s[0];
    uint32_t cp;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) {
        if (n < 2 || !ts_is_trail(s[1])) return 0;
        cp = ((uint32_t) (c & 0x1F) << 6) | (s[1] & 0x3F);
        return cp >= 0x80 ? 2 : 0;
    }
    if ((c & 0xF0) == 0xE0) {
        if (n < 3 || !ts_is_trail(s[1]) || !ts_is_trail(s[2])) return 0;
        cp = ((uint32_t) (c & 0x0F) << 12) | ((uint32_t) (s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF) ? 3 : 0;
    }
    if ((c & 0xF8) == 0xF0) {
        if (n < 4 || !ts_is_trail(s[1]) || !ts_is_trail(s[2]) || !ts_is_trail(s[3])) return 0;
        cp = ((uint32_t) (c & 0x07) << 18) | ((uint32_t) (s[1] & 0x3F) << 12) | ((uint32_t) (s[2] & 0x3F) << 6) |
             (s[3] & 0x3F);
        return cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
    }
    return 0;
}

int32_t ts_match_special(const struct ts_tokenizer * tok, const char * s, size_t n) {
    const unsigned char c = (unsigned char) s[0];
    for (int i = tok->special_start[c]; i < tok->special_start[c + 1]; i++) {
        const int32_t id = tok->special[i];
        if (tok->text_len[id] <= n && memcmp(tok->text[id], s, tok->text_len[id]) == 0) return id;
    }
    return -1;
}

// ---- decoding -----------------------------------------------------------------------------

// Writes what fits, counts everything: the caller compares the count with the room.
struct sink {
    char * buf;
    int    size;
    int    n;
};

static void put(struct sink * k, const char * s, size_t n) {
    if (k->n + (int) n <= k->size) memcpy(k->buf + k->n, s, n);
    k->n += (int) n;
}

// Emits every complete character of the pending bytes; at the end of a byte run (final),
// what is left is invalid and becomes U+FFFD per byte. Same results as SentencePiece decoding
// the whole run at once, because a character is only judged once all its bytes are there.
static void drain(struct ts_utf8_stream * s, struct sink * k, bool final) {
    while (s->n_pending > 0) {
        const int need = ts_utf8_lead_len(s->pending[0]);
        int used = 1;
        if (s->n_pending < need) {
            bool may_complete = !final;
            for (int i = 1; i < s->n_pending; i++) may_complete = may_complete && ts_is_trail(s->pending[i]);
            if (may_complete) break;
            put(k, TS_REPLACEMENT, 3);
        } else {
            const int cl = ts_utf8_valid_len(s->pending, (size_t) need);
            if (cl > 0) {
                put(k, (const char *) s->pending, (size_t) cl);
                used = cl;
            } else {
                put(k, TS_REPLACEMENT, 3);
            }
        }
        memmove(s->pending, s->pending + used, (size_t) (s->n_pending - used));
        s->n_pending -= used;
        s->strip_space = false;
    }
}

// The text of a non-byte token, ▁ -> ' ', into k; strips one leading ▁ when asked.
static void put_piece(const struct ts_tokenizer * tok, int32_t id, bool render_special, bool strip, struct sink * k) {
    const int t = tok->types[id];
    if (t == TS_TOKEN_CONTROL && !render_special) return;
    if ((t == TS_TOKEN_UNKNOWN || id == tok->info.unk_id) && !render_special) {
        put(k, TS_UNK_SURFACE, sizeof(TS_UNK_SURFACE) - 1);
        return;
    }
    const char * s = tok->text[id];
    size_t n = tok->text_len[id];
    if (t == TS_TOKEN_CONTROL || t == TS_TOKEN_UNKNOWN) {  // rendered as stored
        put(k, s, n);
        return;
    }
    if (strip && n >= 3 && memcmp(s, TS_SPACE_SYMBOL, 3) == 0) {
        s += 3;
        n -= 3;
    }
    size_t run = 0;  // bytes copied verbatim since the last ▁
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, TS_SPACE_SYMBOL, 3) == 0) {
            put(k, s + i - run, run);
            put(k, " ", 1);
            run = 0;
            i += 3;
        } else {
            run++;
            i++;
        }
    }
    put(k, s + n - run, run);
}

// Byte-level BPE, as llama.cpp's token_to_piece: a normal token is the bytes its text encodes,
// a user-defined one its text as stored, a control or unknown one its text when render_special
// and nothing otherwise, and any other type nothing.
static bool bpe_is_bytes(const struct ts_tokenizer * tok, int32_t id) { return tok->types[id] == TS_TOKEN_NORMAL; }

static void put_bpe_piece(const struct ts_tokenizer * tok, int32_t id, bool render_special, struct sink * k) {
    const int t = tok->types[id];
    if (t == TS_TOKEN_NORMAL) {
        put(k, tok->bpe_bytes[id], tok->bpe_bytes_len[id]);
    } else if (t == TS_TOKEN_USER_DEFINED || (render_special && (t == TS_TOKEN_CONTROL || t == TS_TOKEN_UNKNOWN))) {
        put(k, tok->text[id], tok->text_len[id]);
    }
}

int ts_token_piece(const struct ts_tokenizer * tok, int32_t id, bool render_special, char * buf, int size) {
    if (id < 0 || id >= tok->info.n_vocab) return 0;
    struct sink k = { buf, size < 0 ? 0 : size, 0 };
    if (tok->kind == TS_TOK_BPE) {
        put_bpe_piece(tok, id, render_special, &k);
    } else if (tok->types[id] == TS_TOKEN_BYTE) {
        const char b = (char) parse_byte_piece(tok->text[id], tok->text_len[id]);
        put(&k, &b, 1);
    } else {
        put_piece(tok, id, render_special, false, &k);
    }
    return k.n <= k.size ? k.n : -k.n;
}

void ts_utf8_stream_init(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, bool at_text_start,
                         bool render_special) {
    memset(s, 0, sizeof(*s));
    s->strip_space = at_text_start && tok->info.add_space_prefix;
    s->render_special = render_special;
}

static void stream_step(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, int32_t id, struct sink * k) {
    if (tok->kind == TS_TOK_BPE) {
        if (bpe_is_bytes(tok, id)) {
            // a character may span tokens: its bytes wait in pending until it is complete
            const char * b = tok->bpe_bytes[id];
            for (uint32_t i = 0; i < tok->bpe_bytes_len[id]; i++) {
                s->pending[s->n_pending++] = (unsigned char) b[i];
                drain(s, k, false);
            }
        } else {
            drain(s, k, true);  // a special token ends the byte run
            put_bpe_piece(tok, id, s->render_special, k);
        }
        return;
    }
    if (tok->types[id] == TS_TOKEN_BYTE) {
        s->pending[s->n_pending++] = (unsigned char) parse_byte_piece(tok->text[id], tok->text_len[id]);
        drain(s, k, false);
        return;
    }
    drain(s, k, true);  // a byte run ends at any other token
    const int before = k->n;
    const bool starts_with_space = tok->text_len[id] >= 3 && memcmp(tok->text[id], TS_SPACE_SYMBOL, 3) == 0;
    const bool is_text = tok->types[id] != TS_TOKEN_CONTROL && tok->types[id] != TS_TOKEN_UNKNOWN &&
                         id != tok->info.unk_id;
    put_piece(tok, id, s->render_special, s->strip_space, k);
    // the dummy prefix is only the first visible piece's
    if (k->n > before || (is_text && starts_with_space)) s->strip_space = false;
}

int ts_utf8_stream_push(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, int32_t id, char * out, int size) {
    if (!s || !tok || id < 0 || id >= tok->info.n_vocab) return TS_TOKENIZE_ERROR;
    struct ts_utf8_stream next = *s;
    struct sink k = { out, size < 0 ? 0 : size, 0 };
    stream_step(&next, tok, id, &k);
    if (k.n > k.size) return -k.n;
    *s = next;
    return k.n;
}

int ts_utf8_stream_flush(struct ts_utf8_stream * s, char * out, int size) {
    struct ts_utf8_stream next = *s;
    struct sink k = { out, size < 0 ? 0 : size, 0 };
    drain(&next, &k, true);
    if (k.n > k.size) return -k.n;
    *s = next;
    return k.n;
}

int ts_detokenize(const struct ts_tokenizer * tok, const int32_t * ids, int n_ids, bool render_special, char * out,
                  int size) {
    if (!tok || n_ids < 0 || (!ids && n_ids > 0)) return TS_TOKENIZE_ERROR;
    struct ts_utf8_stream s;
    ts_utf8_stream_init(&s, tok, true, render_special);
    struct sink k = { out, size < 0 ? 0 : size, 0 };
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->info.n_vocab) return TS_TOKENIZE_ERROR;
        stream_step(&s, tok, ids[i], &k);
        if (k.n < 0) return TS_TOKENIZE_ERROR;  // int overflow on absurd input
    }
    drain(&s, &k, true);
    return k.n <= k.size ? k.n : -k.n;
}

int ts_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                int32_t * out, int n_max) {
    if (!tok) return TS_TOKENIZE_ERROR;
    return tok->kind == TS_TOK_BPE ? ts_bpe_tokenize(tok, text, len, add_bos, special, out, n_max)
                                   : ts_spm_tokenize(tok, text, len, add_bos, special, out, n_max);
}
