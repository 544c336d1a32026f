// See unicode.h.
#include "unicode.h"

unsigned ts_unicode_flags(uint32_t cp) {
    if (cp > 0x10FFFF) return TS_UCP_UNDEFINED;
    int lo = 0, hi = ts_unicode_n_ranges - 1;  // last range whose first <= cp
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (ts_unicode_ranges[mid].first <= cp) lo = mid;
        else hi = mid - 1;
    }
    return ts_unicode_ranges[lo].flags;
}

static int is_trail(unsigned char c) { return (c & 0xC0) == 0x80; }

size_t ts_utf8_decode(const char * text, size_t len, uint32_t * out) {
    const unsigned char * s = (const unsigned char *) text;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        const unsigned char c = s[i];
        int need;
        uint32_t cp;
        if (c < 0x80) { need = 1; cp = c; }
        else if ((c & 0xE0) == 0xC0) { need = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { need = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { need = 4; cp = c & 0x07; }
        else { need = 0; cp = 0; }  // a trail byte or F8..FF
        int ok = need > 0 && i + (size_t) need <= len;
        for (int k = 1; ok && k < need; k++) {
            ok = is_trail(s[i + k]);
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (ok) {
            out[n++] = cp;
            i += (size_t) need;
        } else {
            out[n++] = 0xFFFD;
            i += 1;
        }
    }
    return n;
}

int ts_utf8_encode(uint32_t cp, char * out) {
    unsigned char * o = (unsigned char *) out;
    if (cp < 0x80) { o[0] = (unsigned char) cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char) (0xC0 | (cp >> 6)); o[1] = (unsigned char) (0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char) (0xE0 | (cp >> 12));
        o[1] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char) (0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char) (0xF0 | ((cp >> 18) & 0x07));
    o[1] = (unsigned char) (0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char) (0x80 | (cp & 0x3F));
    return 4;
}

// GPT-2 keeps '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF as themselves; the other 68 bytes
// get U+0100, U+0101, ... in byte order.
static int byte_is_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

uint32_t ts_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++) n += !byte_is_printable(i);
    return 0x100 + n;
}

int ts_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable((int) cp) ? (int) cp : -1;
    uint32_t n = 0x100;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b)) continue;
        if (n++ == cp) return b;
    }
    return -1;
}
