// See pretokenize.h. Every splitter maps a list of pieces (lengths in code points) to a finer
// one, as llama.cpp's unicode_regex_split applies a list of regexes: each regex runs within
// each piece of the previous one, and both its matches and the text between them become pieces.
#include "pretokenize.h"

#include "unicode.h"

#include <string.h>

struct names { const char * name; enum ts_pretok kind; bool ignore_merges; };

// Only names llama.cpp gives exactly these regexes (llama-vocab.cpp, llm_tokenizer_bpe).
static const struct names NAMES[] = {
    { "llama3", TS_PRETOK_LLAMA3, true }, { "llama-v3", TS_PRETOK_LLAMA3, true },
    { "llama-bpe", TS_PRETOK_LLAMA3, true }, { "falcon3", TS_PRETOK_LLAMA3, true },
    { "pixtral", TS_PRETOK_LLAMA3, true }, { "dbrx", TS_PRETOK_LLAMA3, false },
    { "smaug-bpe", TS_PRETOK_LLAMA3, false },
    { "qwen2", TS_PRETOK_QWEN2, false }, { "deepseek-r1-qwen", TS_PRETOK_QWEN2, false },
    { "stablelm2", TS_PRETOK_QWEN2, false }, { "megrez", TS_PRETOK_QWEN2, false },
    { "gpt-2", TS_PRETOK_GPT2, false }, { "phi-2", TS_PRETOK_GPT2, false }, { "mpt", TS_PRETOK_GPT2, false },
    { "olmo", TS_PRETOK_GPT2, false }, { "jais", TS_PRETOK_GPT2, false }, { "roberta-bpe", TS_PRETOK_GPT2, false },
    { "starcoder", TS_PRETOK_STARCODER, false }, { "refact", TS_PRETOK_STARCODER, false },
    { "command-r", TS_PRETOK_STARCODER, false }, { "smollm", TS_PRETOK_STARCODER, false },
    { "codeshell", TS_PRETOK_STARCODER, false }, { "exaone", TS_PRETOK_STARCODER, false },
    { "minerva-7b", TS_PRETOK_STARCODER, false },
    { "deepseek-llm", TS_PRETOK_DEEPSEEK_LLM, false },
};

bool ts_pretok_from_name(const char * name, enum ts_pretok * kind, bool * ignore_merges) {
    for (size_t i = 0; i < sizeof(NAMES) / sizeof(NAMES[0]); i++) {
        if (strcmp(NAMES[i].name, name) == 0) {
            *kind = NAMES[i].kind;
            *ignore_merges = NAMES[i].ignore_merges;
            return true;
        }
    }
    return false;
}

// One piece being cut: code points [ini, end) of cps; positions outside read as "none".
struct piece {
    const uint32_t * cps;
    size_t ini, end, prev_end;
    uint32_t * out;
    size_t n_out;
};

#define OUT_OF_RANGE 0xFFFFFFFFu

static uint32_t cpt(const struct piece * p, size_t pos) { return pos >= p->ini && pos < p->end ? p->cps[pos] : OUT_OF_RANGE; }
static unsigned flg(const struct piece * p, size_t pos) {
    return pos >= p->ini && pos < p->end ? ts_unicode_flags(p->cps[pos]) : 0;
}
static size_t add(struct piece * p, size_t end) {  // ends the current word at end
    const size_t len = end - p->prev_end;
    if (len > 0) p->out[p->n_out++] = (uint32_t) len;
    p->prev_end = end;
    return len;
}

#define IS_L(f) ((f) & TS_UCP_LETTER)
#define IS_N(f) ((f) & TS_UCP_NUMBER)
#define IS_WS(f) ((f) & TS_UCP_WHITESPACE)

// llama.cpp's unicode_regex_split_custom_gpt2
// The last alternatives of the GPT-2 and Llama-3 patterns at pos, where n_ws white-space code
// points start: '\s+(?!\S)' (all but the last one when more follow), '\s+', else the code
// point alone. Ends the word; returns the new position.
static size_t split_ws_tail(struct piece * p, size_t pos, size_t n_ws) {
    if (n_ws > 1 && cpt(p, pos + n_ws) != OUT_OF_RANGE) {
        pos += n_ws - 1;
    } else if (n_ws > 0) {
        pos += n_ws;
    } else {
        pos++;
    }
    add(p, pos);
    return pos;
}

static void split_gpt2(struct piece * p) {
    for (size_t pos = p->ini; pos < p->end;) {
        const uint32_t c = cpt(p, pos);
        const unsigned f = flg(p, pos);
        if (c == '\'' && pos + 1 < p->end) {  // 's|'t|'re|'ve|'m|'ll|'d
            const uint32_t n1 = cpt(p, pos + 1);
            if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') { pos += add(p, pos + 2); continue; }
            if (pos + 2 < p->end) {
                const uint32_t n2 = cpt(p, pos + 2);
                if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
                    pos += add(p, pos + 3);
                    continue;
                }
            }
        }
        unsigned f2 = c == ' ' ? flg(p, pos + 1) : f;
        if (IS_L(f2)) {  // ' ?\p{L}+'
            pos += c == ' ';
            while (IS_L(f2)) f2 = flg(p, ++pos);
            add(p, pos);
            continue;
        }
        if (IS_N(f2)) {  // ' ?\p{N}+'
            pos += c == ' ';
            while (IS_N(f2)) f2 = flg(p, ++pos);
            add(p, pos);
            continue;
        }
        if (!(IS_WS(f2) || IS_L(f2) || IS_N(f2)) && f2) {  // ' ?[^\s\p{L}\p{N}]+'
            pos += c == ' ';
            while (!(IS_WS(f2) || IS_L(f2) || IS_N(f2)) && f2) f2 = flg(p, ++pos);
            add(p, pos);
            continue;
        }
        size_t n_ws = 0;
        while (IS_WS(flg(p, pos + n_ws))) n_ws++;
        pos = split_ws_tail(p, pos, n_ws);
    }
}

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// llama.cpp's unicode_regex_split_custom_llama3 (max_digits 3) and _qwen2 (max_digits 1).
// Case folding after the apostrophe is ASCII only: no other code point lowercases to one of
// s, t, m, d, r, e, v, l.
static void split_llama3(struct piece * p, size_t max_digits) {
    for (size_t pos = p->ini; pos < p->end;) {
        const uint32_t c = cpt(p, pos);
        const unsigned f = flg(p, pos);
        if (c == '\'' && pos + 1 < p->end) {
            const uint32_t n1 = ascii_lower(cpt(p, pos + 1));
            if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') { pos += add(p, pos + 2); continue; }
            if (pos + 2 < p->end) {
                const uint32_t n2 = ascii_lower(cpt(p, pos + 2));
                if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
                    pos += add(p, pos + 3);
                    continue;
                }
            }
        }
        if (!(c == '\r' || c == '\n' || IS_N(f))) {  // '[^\r\n\p{L}\p{N}]?\p{L}+'
            if (IS_L(f) || IS_L(flg(p, pos + 1))) {
                pos++;
                while (IS_L(flg(p, pos))) pos++;
                add(p, pos);
                continue;
            }
        }
        if (IS_N(f)) {  // '\p{N}{1,max_digits}'
            size_t ini = pos;
            while (IS_N(flg(p, pos))) {
                if (++pos - ini >= max_digits) {
                    add(p, pos);
                    ini = pos;
                }
            }
            add(p, pos);
            continue;
        }
        unsigned f2 = c == ' ' ? flg(p, pos + 1) : f;  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        if (!(IS_WS(f2) || IS_L(f2) || IS_N(f2)) && f) {
            pos += c == ' ';
            while (!(IS_WS(f2) || IS_L(f2) || IS_N(f2)) && f2) f2 = flg(p, ++pos);
            uint32_t c2 = cpt(p, pos);
            while (c2 == '\r' || c2 == '\n') c2 = cpt(p, ++pos);
            add(p, pos);
            continue;
        }
        size_t n_ws = 0, last_rn_end = 0;
        while (IS_WS(flg(p, pos + n_ws))) {
            const uint32_t c2 = cpt(p, pos + n_ws);
            if (c2 == '\r' || c2 == '\n') last_rn_end = pos + n_ws + 1;
            n_ws++;
        }
        if (last_rn_end > 0) {  // '\s*[\r\n]+'
            pos = last_rn_end;
            add(p, pos);
            continue;
        }
        pos = split_ws_tail(p, pos, n_ws);
    }
}

// ---- regexes llama.cpp runs through std::regex ----------------------------------------------
// std::regex_iterator takes the leftmost match, then searches on after it; the text between
// matches is a piece too. None of these regexes matches the empty string. A matcher returns the
// length of the match starting at pos, 0 for none. llama.cpp gives std::regex the code points
// with non-ASCII whitespace replaced by U+000B, so \s is exactly TS_UCP_WHITESPACE and
// whitespace never matches an explicit character class.

typedef size_t (*matcher)(const struct piece * p, size_t pos);

static void split_regex(struct piece * p, matcher m) {
    size_t pos = p->ini;
    while (pos < p->end) {
        const size_t len = m(p, pos);
        if (len == 0) {
            pos++;
            continue;
        }
        add(p, pos);  // the text before the match
        add(p, pos + len);
        pos += len;
    }
    add(p, p->end);
}

static bool ws(const struct piece * p, size_t pos) { return IS_WS(flg(p, pos)) != 0; }

static size_t m_digit(const struct piece * p, size_t pos) { return IS_N(flg(p, pos)) ? 1 : 0; }  // \p{N}

static size_t m_digits(const struct piece * p, size_t pos) {  // \p{N}+
    size_t n = 0;
    while (IS_N(flg(p, pos + n))) n++;
    return n;
}

static size_t m_newline(const struct piece * p, size_t pos) {  // [\r\n]
    const uint32_t c = cpt(p, pos);
    return c == '\r' || c == '\n';
}

static bool in_ranges(uint32_t c, const uint32_t (*r)[2], size_t n) {
    for (size_t i = 0; i < n; i++) if (c >= r[i][0] && c <= r[i][1]) return true;
    return false;
}

// DeepSeek-LLM's letter class [A-Za-zµÀ-ÖØ-öø-ƺ...𞤀-𞥃]
static const uint32_t DS_LETTERS[][2] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA}, {0x1BC, 0x1BF},
    {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377}, {0x37B, 0x37D}, {0x37F, 0x37F},
    {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481},
    {0x48A, 0x52F}, {0x531, 0x556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126},
    {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3},
    {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E}, {0xAB70, 0xABBF},
    {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
static const uint32_t DS_PUNCT[][2] = {
    {0x21, 0x2F}, {0x3A, 0x7E}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};
// [一-龥ࠀ-一가-퟿]
static const uint32_t DS_CJK[][2] = { {0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF} };

#define N_OF(a) (sizeof(a) / sizeof(a[0]))

static bool in_class(const struct piece * p, size_t pos, const uint32_t (*r)[2], size_t n) {
    const uint32_t c = cpt(p, pos);
    return c != OUT_OF_RANGE && !ws(p, pos) && in_ranges(c, r, n);
}

static size_t m_ws_opt_class(const struct piece * p, size_t pos, const uint32_t (*r)[2], size_t n) {  // \s?[...]+
    size_t i = pos;
    if (ws(p, i) && in_class(p, i + 1, r, n)) i++;
    if (!in_class(p, i, r, n)) return 0;
    while (in_class(p, i, r, n)) i++;
    return i - pos;
}
static size_t m_ds_letters(const struct piece * p, size_t pos) { return m_ws_opt_class(p, pos, DS_LETTERS, N_OF(DS_LETTERS)); }
static size_t m_ds_punct(const struct piece * p, size_t pos) { return m_ws_opt_class(p, pos, DS_PUNCT, N_OF(DS_PUNCT)); }
static size_t m_ds_cjk(const struct piece * p, size_t pos) {
    size_t i = pos;
    while (in_class(p, i, DS_CJK, N_OF(DS_CJK))) i++;
    return i - pos;
}
static size_t m_trailing_ws(const struct piece * p, size_t pos) {  // \s+$ (the end of the piece)
    size_t i = pos;
    while (ws(p, i)) i++;
    return i > pos && i == p->end ? i - pos : 0;
}


// One regex of llama.cpp's regex_exprs lists
enum stage {
    S_GPT2, S_LLAMA3, S_QWEN2, S_DIGIT, S_NEWLINE, S_DS_LETTERS, S_DS_PUNCT, S_TRAILING_WS, S_DS_CJK, S_DIGITS,
    S_END = -1,
};

// Runs one stage over all pieces: in[0..n_in) -> out, returns the new count.
static size_t stage(const uint32_t * cps, const uint32_t * in, size_t n_in, uint32_t * out, enum stage which) {
    struct piece p = { cps, 0, 0, 0, out, 0 };
    size_t start = 0;
    for (size_t i = 0; i < n_in; i++) {
        p.ini = p.prev_end = start;
        p.end = start + in[i];
        switch (which) {
            case S_GPT2: split_gpt2(&p); break;
            case S_LLAMA3: split_llama3(&p, 3); break;
            case S_QWEN2: split_llama3(&p, 1); break;
            case S_DIGIT: split_regex(&p, m_digit); break;
            case S_NEWLINE: split_regex(&p, m_newline); break;
            case S_DS_LETTERS: split_regex(&p, m_ds_letters); break;
            case S_DS_PUNCT: split_regex(&p, m_ds_punct); break;
            case S_TRAILING_WS: split_regex(&p, m_trailing_ws); break;
            case S_DS_CJK: split_regex(&p, m_ds_cjk); break;
            case S_DIGITS: split_regex(&p, m_digits); break;
            case S_END: break;
        }
        start = p.end;
    }
    return p.n_out;
}

size_t ts_pretokenize(enum ts_pretok kind, const uint32_t * cps, size_t n, uint32_t * lens, uint32_t * scratch) {
    if (n == 0) return 0;
    // stages as in llama.cpp's regex_exprs for the kind
    static const enum stage GPT2[] = { S_GPT2, S_END }, LLAMA3[] = { S_LLAMA3, S_END },
                            QWEN2[] = { S_QWEN2, S_END }, STARCODER[] = { S_DIGIT, S_GPT2, S_END },
                            DEEPSEEK[] = { S_NEWLINE, S_DS_LETTERS, S_DS_PUNCT, S_TRAILING_WS, S_DS_CJK, S_DIGITS, S_END };
    const enum stage * stages = kind == TS_PRETOK_GPT2 ? GPT2 : kind == TS_PRETOK_LLAMA3 ? LLAMA3
                       : kind == TS_PRETOK_QWEN2 ? QWEN2 : kind == TS_PRETOK_STARCODER ? STARCODER : DEEPSEEK;
    // ping-pong between lens and scratch, ending in lens
    int n_stages = 0;
    while (stages[n_stages] != S_END) n_stages++;
    uint32_t * bufs[2] = { n_stages % 2 ? scratch : lens, n_stages % 2 ? lens : scratch };
    bufs[0][0] = (uint32_t) n;
    size_t count = 1;
    for (int s = 0; s < n_stages; s++) count = stage(cps, bufs[s % 2], count, bufs[(s + 1) % 2], stages[s]);
    return count;
}
