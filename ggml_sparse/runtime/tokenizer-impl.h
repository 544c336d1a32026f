// The vocabulary shared by the tokenizer kinds (tokenizer.c loads it) and what each kind's
// encoder needs: tokenizer-spm.c (SentencePiece, tokenizer.ggml.model "llama") and
// tokenizer-bpe.c (byte-level BPE, "gpt2"). Internal to the runtime.
#pragma once

#include "pretokenize.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

enum ts_tok_kind { TS_TOK_SPM, TS_TOK_BPE };

struct ts_tokenizer {
    struct ts_tokenizer_info info;
    enum ts_tok_kind kind;

    char    ** text;       // token texts, NUL-terminated, in one allocation (text_pool)
    uint32_t * text_len;
    float    * scores;
    uint8_t  * types;      // enum ts_token_type
    char     * text_pool;

    // piece -> id. merge_id: the id SentencePiece's BPE merges see (normal, user-defined,
    // unused pieces); reserved_id: control, unknown and byte pieces, which lookups of a final
    // piece see first.
    struct tok_slot { uint32_t hash; int32_t merge_id; int32_t reserved_id; } * slots;
    uint32_t slot_mask;

    int32_t byte_id[256];  // <0xXX> token per byte, -1 when missing (SentencePiece)
    int     n_byte_tokens;

    // control and user-defined tokens, bucketed by first byte and longest first in each
    // bucket, so the first match found at a position is the longest one.
    int32_t * special;
    int32_t   special_start[257];

    // byte-level BPE only (tokenizer-bpe.c)
    enum ts_pretok pretok;
    bool       ignore_merges;
    int32_t  * by_length;      // control/user-defined/unknown ids, longest text first (llama.cpp's partition order)
    int32_t    n_by_length;
    struct merge_slot { uint32_t hash; int32_t rank; } * merges;  // (left, right) -> rank
    uint32_t   merge_mask;
    char    ** merge_text;     // "left right" per rank, NUL-terminated, in merge_pool
    uint32_t * merge_left_len;
    char     * merge_pool;
    char    ** bpe_bytes;      // per normal token: the bytes it stands for (GPT-2's byte encoding undone)
    uint32_t * bpe_bytes_len;
    char     * bpe_bytes_pool;
    char       byte_enc[256][3];  // UTF-8 of the code point GPT-2 writes byte b as
    uint8_t    byte_enc_len[256];
};

static inline uint32_t ts_hash_bytes(uint32_t h, const char * s, size_t n) {  // FNV-1a; start at 2166136261u
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char) s[i];
        h *= 16777619u;
    }
    return h;
}
#define TS_HASH_INIT 2166136261u

struct tok_slot * ts_tok_find_slot(const struct ts_tokenizer * tok, const char * s, size_t n);

static const char TS_SPACE_SYMBOL[] = "\xe2\x96\x81";   // U+2581, SentencePiece's escaped space
static const char TS_REPLACEMENT[]  = "\xef\xbf\xbd";   // U+FFFD
static const char TS_UNK_SURFACE[]  = " \xe2\x81\x87 ";  // " ⁇ ", SentencePiece's default unk_surface

static inline int ts_utf8_lead_len(unsigned char c) {  // SentencePiece's OneCharLen
    static const unsigned char len[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
    return len[c >> 4];
}

static inline bool ts_is_trail(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the valid UTF-8 character at s (strict: no overlongs, surrogates or > U+10FFFF),
// 0 when invalid.
int ts_utf8_valid_len(const unsigned char * s, size_t n);

// Longest control/user-defined token whose text starts s; -1 when none.
int32_t ts_match_special(const struct ts_tokenizer * tok, const char * s, size_t n);

// Growable arrays of the encoders
bool ts_grow(void ** p, int * cap, int need, size_t elem);

// The queue of candidate merges both encoders run (SentencePiece and BPE): a binary heap
// whose top is the highest priority (SentencePiece: the merged piece's score; BPE: minus
// the merge's rank, exact in a double), ties going to the leftmost pair. size is the two
// symbols' combined length when queued: an entry whose symbols changed since is stale.
struct ts_merge {
    double   priority;
    int32_t  left, right;
    uint32_t size;
};
struct ts_merge_queue {
    struct ts_merge * heap;
    int               n, cap;
};
bool ts_merge_push(struct ts_merge_queue * q, struct ts_merge m); // false: out of memory
struct ts_merge ts_merge_pop(struct ts_merge_queue * q);           // q->n > 0

// SentencePiece encoder (tokenizer-spm.c), the contract of ts_tokenize
int ts_spm_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                    int32_t * out, int n_max);

// Byte-level BPE (tokenizer-bpe.c): reads tokenizer.ggml.merges and .pre after the shared
// vocabulary is loaded; false with err set when the file cannot be used.
struct gguf_context;
bool ts_bpe_load(struct ts_tokenizer * tok, const struct gguf_context * ctx, char * err, size_t err_size);
void ts_bpe_free(struct ts_tokenizer * tok);
int ts_bpe_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                    int32_t * out, int n_max);
