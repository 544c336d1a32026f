// Unicode helpers for the byte-level BPE tokenizer: code point flags (the categories the
// pre-tokenizer regexes test), UTF-8 decoding and encoding as llama.cpp's unicode.cpp does it,
// and GPT-2's byte <-> code point map.
#pragma once

#include <stddef.h>
#include <stdint.h>

// llama.cpp's unicode_cpt_flags bits (src/unicode.h)
enum {
    TS_UCP_UNDEFINED   = 0x001,  // unassigned (Cn), or not a code point
    TS_UCP_NUMBER      = 0x002,  // \p{N}
    TS_UCP_LETTER      = 0x004,  // \p{L}
    TS_UCP_SEPARATOR   = 0x008,  // \p{Z}
    TS_UCP_MARK        = 0x010,  // \p{M}
    TS_UCP_PUNCTUATION = 0x020,  // \p{P}
    TS_UCP_SYMBOL      = 0x040,  // \p{S}
    TS_UCP_CONTROL     = 0x080,  // \p{C}
    TS_UCP_WHITESPACE  = 0x100,  // \s
};

struct ts_unicode_range {
    uint32_t first;  // the range runs to the next entry's first
    uint16_t flags;
};

// unicode-data.c (generated)
extern const int ts_unicode_n_ranges;
extern const struct ts_unicode_range ts_unicode_ranges[];

// Flags of code point cp; TS_UCP_UNDEFINED beyond U+10FFFF.
unsigned ts_unicode_flags(uint32_t cp);

// Decodes text[0..len) to code points as llama.cpp's unicode_cpts_from_utf8: a byte that does
// not start a complete sequence becomes U+FFFD and decoding goes on at the next byte. (Like
// llama.cpp it does not reject overlong forms or surrogates: such sequences decode to their
// value and are re-encoded canonically.) out needs room for len code points; returns the count.
size_t ts_utf8_decode(const char * text, size_t len, uint32_t * out);

// UTF-8 of cp into out (4 bytes of room); returns the length. Values beyond U+10FFFF (only
// from 5-bit F5..F7 leads) are written with the 4-byte pattern as well.
int ts_utf8_encode(uint32_t cp, char * out);

// GPT-2's byte-level encoding: byte b is written as code point ts_byte_to_cp(b) (printable
// bytes as themselves, the others shifted to U+0100..). ts_cp_to_byte is the inverse, -1 for
// code points that stand for no byte.
uint32_t ts_byte_to_cp(uint8_t b);
int ts_cp_to_byte(uint32_t cp);
