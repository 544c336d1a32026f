// Pre-tokenizers of byte-level BPE vocabularies (`tokenizer.ggml.pre`): they cut text into the
// words that BPE merges within. Each is written out by hand, as llama.cpp's unicode.cpp does
// for the common ones, and cuts exactly where llama.cpp cuts (its custom splitters, or
// std::regex's leftmost-match semantics for the regexes it has no splitter for), so no regex
// library is needed.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ts_pretok {
    TS_PRETOK_GPT2,          // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    TS_PRETOK_LLAMA3,        // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    TS_PRETOK_QWEN2,         // LLAMA3 with \p{N} (one digit) for \p{N}{1,3}
    TS_PRETOK_STARCODER,     // \p{N} (each digit alone), then GPT2
    TS_PRETOK_DEEPSEEK_LLM,  // six regexes in turn, see pretokenize.c
};

// The pre-tokenizer named by tokenizer.ggml.pre, with llama.cpp's names; false when unknown.
// ignore_merges: llama.cpp's flag for this name (a word that is a whole token is not merged).
bool ts_pretok_from_name(const char * name, enum ts_pretok * kind, bool * ignore_merges);

// Cuts the code points cps[0..n) into words: writes each word's length (in code points) to
// lens (room for n entries) and returns the number of words. scratch: room for n entries.
size_t ts_pretokenize(enum ts_pretok kind, const uint32_t * cps, size_t n, uint32_t * lens, uint32_t * scratch);
