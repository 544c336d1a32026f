// SentencePiece BPE encoder (tokenizer.ggml.model "llama"). See tokenizer.h for the normaliser
// assumption and the special-token rules. The encoder follows SentencePiece's BPE model step
// by step (same symbol split, same merge order: best score first, leftmost on ties), because
// anything else gives different ids on some input.
#include "tokenizer-impl.h"

#include <stdlib.h>
#include <string.h>

// ---- encoding -----------------------------------------------------------------------------

struct symbol {
    int32_t  prev, next;  // linked list of live symbols; -1 at the ends
    uint32_t start, len;  // bytes of the normalized text; len 0 = merged into its left neighbour
    bool     frozen;      // a special token: never merged
};

struct encoder {
    const struct ts_tokenizer * tok;
    bool            special;
    const char    * norm;
    struct symbol * sym;
    struct ts_merge_queue merges;
    int32_t       * out;
    int             n_out, cap_out;
    struct { int32_t id; uint32_t left_len; } * unused_split;  // rev_merge of unused pieces
    int             n_unused, cap_unused;
    bool            oom;
};

bool ts_grow(void ** p, int * cap, int need, size_t elem) {
    if (need <= *cap) return true;
    int c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void * q = realloc(*p, (size_t) c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool merge_before(const struct ts_merge * a, const struct ts_merge * b) {
    return a->priority > b->priority || (a->priority == b->priority && a->left < b->left);
}

bool ts_merge_push(struct ts_merge_queue * q, struct ts_merge m) {
    if (!ts_grow((void **) &q->heap, &q->cap, q->n + 1, sizeof(struct ts_merge))) return false;
    int i = q->n++;
    while (i > 0) {
        const int parent = (i - 1) / 2;
        if (!merge_before(&m, &q->heap[parent])) break;
        q->heap[i] = q->heap[parent];
        i = parent;
    }
    q->heap[i] = m;
    return true;
}

struct ts_merge ts_merge_pop(struct ts_merge_queue * q) {
    const struct ts_merge top = q->heap[0];
    const struct ts_merge last = q->heap[--q->n];
    int i = 0;
    for (;;) {
        int best = 2 * i + 1;
        if (best >= q->n) break;
        if (best + 1 < q->n && merge_before(&q->heap[best + 1], &q->heap[best])) best++;
        if (!merge_before(&q->heap[best], &last)) break;
        q->heap[i] = q->heap[best];
        i = best;
    }
    if (q->n > 0) q->heap[i] = last;
    return top;
}

// The id a BPE merge may produce for this text, or -1.
static int32_t merge_id(const struct encoder * e, const char * s, size_t n) {
    if (n > (size_t) e->tok->info.max_piece_bytes) return -1;
    const struct tok_slot * slot = ts_tok_find_slot(e->tok, s, n);
    const int32_t id = slot->merge_id;
    if (id >= 0 && !e->special && e->tok->types[id] == TS_TOKEN_USER_DEFINED) return -1;  // plain text
    return id;
}

static void maybe_add_pair(struct encoder * e, int32_t left, int32_t right) {
    if (left < 0 || right < 0 || e->sym[left].frozen || e->sym[right].frozen) return;
    const uint32_t size = e->sym[left].len + e->sym[right].len;
    const char * s = e->norm + e->sym[left].start;
    const int32_t id = merge_id(e, s, size);
    if (id < 0) return;
    if (!ts_merge_push(&e->merges, (struct ts_merge) { e->tok->scores[id], left, right, size })) {
        e->oom = true;
        return;
    }
    if (e->tok->types[id] == TS_TOKEN_UNUSED) {
        // An unused piece is split back into the two pieces it was last made from.
        int i = 0;
        while (i < e->n_unused && e->unused_split[i].id != id) i++;
        if (i == e->n_unused) {
            if (!ts_grow((void **) &e->unused_split, &e->cap_unused, i + 1, sizeof(*e->unused_split))) {
                e->oom = true;
                return;
            }
            e->n_unused++;
        }
        e->unused_split[i].id = id;
        e->unused_split[i].left_len = e->sym[left].len;
    }
}

static void emit(struct encoder * e, int32_t id) {
    if (!ts_grow((void **) &e->out, &e->cap_out, e->n_out + 1, sizeof(int32_t))) {
        e->oom = true;
        return;
    }
    e->out[e->n_out++] = id;
}

// PieceToId: reserved pieces first, then mergeable ones; -1 = unknown.
static int32_t final_id(const struct encoder * e, const char * s, size_t n) {
    if (n > (size_t) e->tok->info.max_piece_bytes) return -1;
    const struct tok_slot * slot = ts_tok_find_slot(e->tok, s, n);
    const int32_t id = slot->reserved_id >= 0 ? slot->reserved_id : slot->merge_id;
    if (id >= 0 && !e->special) {
        const int t = e->tok->types[id];
        if (t == TS_TOKEN_CONTROL || t == TS_TOKEN_USER_DEFINED) return -1;
    }
    return id;
}

static void emit_piece(struct encoder * e, const char * s, size_t n, bool * prev_unk, int depth) {
    const struct ts_tokenizer * tok = e->tok;
    int32_t id = final_id(e, s, n);
    if (id >= 0 && tok->types[id] == TS_TOKEN_UNUSED && depth < 64) {
        for (int i = 0; i < e->n_unused; i++) {
            if (e->unused_split[i].id == id) {
                const uint32_t l = e->unused_split[i].left_len;
                emit_piece(e, s, l, prev_unk, depth + 1);
                emit_piece(e, s + l, n - l, prev_unk, depth + 1);
                return;
            }
        }
    }
    if (id < 0) id = tok->info.unk_id;
    const bool is_unk = id == tok->info.unk_id;
    if (is_unk && tok->n_byte_tokens > 0) {
        // byte fallback; a byte without its token is unknown, as SentencePiece's PieceToId
        for (size_t i = 0; i < n; i++) {
            const int32_t b = tok->byte_id[(unsigned char) s[i]];
            emit(e, b >= 0 ? b : tok->info.unk_id);
        }
    } else if (!(is_unk && *prev_unk)) {
        // without byte fallback, SentencePiece merges a run of unknown pieces into one
        emit(e, id);
    }
    *prev_unk = is_unk;
}

// SentencePiece's normaliser with the identity rule (see tokenizer.h): dummy prefix, ' ' ->
// U+2581, invalid UTF-8 -> U+FFFD per byte; special tokens are copied as they are.
static size_t normalize(const struct ts_tokenizer * tok, const char * text, size_t len, bool special, char * norm) {
    size_t n = 0;
    if (len == 0) return 0;
    if (tok->info.add_space_prefix) {
        memcpy(norm, TS_SPACE_SYMBOL, 3);
        n = 3;
    }
    size_t i = 0;
    while (i < len) {
        if (special) {
            const int32_t id = ts_match_special(tok, text + i, len - i);
            if (id >= 0) {
                memcpy(norm + n, text + i, tok->text_len[id]);
                n += tok->text_len[id];
                i += tok->text_len[id];
                continue;
            }
        }
        const int cl = ts_utf8_valid_len((const unsigned char *) text + i, len - i);
        if (cl == 0) {
            memcpy(norm + n, TS_REPLACEMENT, 3);
            n += 3;
            i += 1;
        } else if (text[i] == ' ') {
            memcpy(norm + n, TS_SPACE_SYMBOL, 3);
            n += 3;
            i += 1;
        } else {
            memcpy(norm + n, text + i, (size_t) cl);
            n += (size_t) cl;
            i += (size_t) cl;
        }
    }
    return n;
}

int ts_spm_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                int32_t * out, int n_max) {
    if (!tok || (!text && len > 0) || n_max < 0 || (!out && n_max > 0)) return TS_TOKENIZE_ERROR;
    // every input byte becomes at most 3 normalized bytes; symbol indices are int32
    if (len > (size_t) (INT32_MAX / 4)) return TS_TOKENIZE_ERROR;

    struct encoder e = { .tok = tok, .special = special };
    char * norm = malloc(3 + 3 * len + 1);
    e.sym = malloc((3 + 3 * len + 1) * sizeof(struct symbol));
    if (!norm || !e.sym) {
        free(norm);
        free(e.sym);
        return TS_TOKENIZE_ERROR;
    }
    e.norm = norm;

    if (add_bos && tok->info.bos_id >= 0) emit(&e, tok->info.bos_id);

    const size_t n_norm = normalize(tok, text, len, special, norm);

    // Split into characters (special tokens whole and frozen), as SentencePiece's BPE model.
    int32_t n_sym = 0;
    for (size_t i = 0; i < n_norm;) {
        int32_t sid = special ? ts_match_special(tok, norm + i, n_norm - i) : -1;
        size_t cl = sid >= 0 ? tok->text_len[sid] : (size_t) ts_utf8_lead_len((unsigned char) norm[i]);
        if (cl > n_norm - i) cl = n_norm - i;
        e.sym[n_sym] = (struct symbol) { n_sym - 1, -1, (uint32_t) i, (uint32_t) cl, sid >= 0 };
        if (n_sym > 0) e.sym[n_sym - 1].next = n_sym;
        n_sym++;
        i += cl;
    }

    for (int32_t i = 1; i < n_sym; i++) maybe_add_pair(&e, i - 1, i);

    while (e.merges.n > 0 && !e.oom) {
        const struct ts_merge top = ts_merge_pop(&e.merges);
        struct symbol * l = &e.sym[top.left];
        struct symbol * r = &e.sym[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) continue;  // stale
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) e.sym[r->next].prev = top.left;
        r->len = 0;
        maybe_add_pair(&e, l->prev, top.left);
        maybe_add_pair(&e, top.left, l->next);
    }

    bool prev_unk = false;
    for (int32_t i = n_sym > 0 ? 0 : -1; i >= 0 && !e.oom; i = e.sym[i].next) {
        emit_piece(&e, norm + e.sym[i].start, e.sym[i].len, &prev_unk, 0);
    }

    int result;
    if (e.oom) {
        result = TS_TOKENIZE_ERROR;
    } else if (e.n_out > n_max) {
        result = -e.n_out;
    } else {
        if (e.n_out > 0) memcpy(out, e.out, (size_t) e.n_out * sizeof(int32_t));
        result = e.n_out;
    }
    free(norm);
    free(e.sym);
    free(e.merges.heap);
    free(e.out);
    free(e.unused_split);
    return result;
}

