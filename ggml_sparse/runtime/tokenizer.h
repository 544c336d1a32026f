// The tokenizer read from a GGUF's tokenizer.ggml.* keys. Two kinds:
//  - SentencePiece (`tokenizer.ggml.model` = "llama"), giving the ids SentencePiece's BPE model
//    gives (tokenizer-spm.c; the rest of this comment up to "Byte-level BPE" is about it);
//  - byte-level BPE ("gpt2", Llama 3, Qwen2, GPT-2, StarCoder, SmolLM, DeepSeek-LLM), giving
//    the ids llama.cpp gives (tokenizer-bpe.c, pretokenize.c).
//
// Normaliser assumption: Llama/Mistral vocabularies are trained with an identity normaliser
// (no NFKC, no collapsing of whitespace), byte fallback and a dummy prefix. So the only text
// transforms are: a leading U+2581 when add_space_prefix, each ' ' -> U+2581, and each byte that
// is not part of valid UTF-8 -> U+FFFD (as SentencePiece's normaliser does). A vocabulary
// trained with nmt_nfkc or remove_extra_whitespaces would need those rules too; they are not
// in the GGUF, so they are not applied.
//
// Special tokens: with special=true, the text of every control (type 3) and user-defined
// (type 4) token is matched in the input (longest match first) and becomes that token, never
// merged with its neighbours; SentencePiece itself always matches user-defined symbols, so
// special=true is the mode that equals SentencePieceProcessor.encode. With special=false all
// input is plain text (a user's "<|im_end|>" cannot end a turn).
// Like SentencePiece, the dummy prefix goes before the whole text only: "<|im_start|>user"
// gives [U+2581, <|im_start|>, user]. llama.cpp and HF's legacy Llama tokenizer instead split
// at special tokens and give every text fragment its own prefix ([<|im_start|>, U+2581user]);
// to build that, tokenize each fragment with special=false and put the ids of the special
// tokens (ts_token_lookup) between them.
//
// Byte-level BPE follows llama.cpp (llama-vocab.cpp) rather than SentencePiece: the text is cut
// at special tokens first, longest token text first (user-defined tokens always; control and
// unknown tokens only with special=true), then each plain fragment is pre-tokenized by the
// rules `tokenizer.ggml.pre` names and merged by `tokenizer.ggml.merges` rank. No dummy prefix.
// Invalid UTF-8 in the input becomes U+FFFD per byte, as llama.cpp. Decoding gives each normal
// token's bytes (a character split over tokens is printed once complete, by the streaming
// decoder), user-defined tokens as stored, control tokens only with render_special; no
// clean-up of spaces (what llama.cpp's token_to_piece, and so llama-cli, prints).
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gguf_context;
struct ts_tokenizer;

// llama.cpp's token type codes (tokenizer.ggml.token_type)
enum ts_token_type {
    TS_TOKEN_UNDEFINED    = 0,
    TS_TOKEN_NORMAL       = 1,
    TS_TOKEN_UNKNOWN      = 2,
    TS_TOKEN_CONTROL      = 3,
    TS_TOKEN_USER_DEFINED = 4,
    TS_TOKEN_UNUSED       = 5,
    TS_TOKEN_BYTE         = 6,
};

// What the runtime needs to know about the vocabulary. Ids are -1 when the file has none.
struct ts_tokenizer_info {
    int32_t n_vocab;
    int32_t bos_id;
    int32_t eos_id;
    int32_t eot_id;
    int32_t unk_id;
    int32_t pad_id;
    bool    add_bos;           // tokenizer.ggml.add_bos_token (default true)
    bool    add_eos;           // tokenizer.ggml.add_eos_token (default false)
    bool    add_space_prefix;  // tokenizer.ggml.add_space_prefix (default true)
    bool    byte_fallback;     // all 256 <0xXX> byte tokens are present
    int32_t max_piece_bytes;   // longest token text, in bytes
};

// Returned by ts_tokenize when the text cannot be tokenized at all (out of memory, too long).
#define TS_TOKENIZE_ERROR INT32_MIN

// Builds the tokenizer from a GGUF's metadata (copies what it needs: the gguf context may be
// freed afterwards). NULL on error, with a message naming the problem in err.
struct ts_tokenizer * ts_tokenizer_from_gguf(const struct gguf_context * ctx, char * err, size_t err_size);
// Same, reading only the metadata of the file at path.
struct ts_tokenizer * ts_tokenizer_from_file(const char * path, char * err, size_t err_size);
void ts_tokenizer_free(struct ts_tokenizer * tok);

const struct ts_tokenizer_info * ts_tokenizer_get_info(const struct ts_tokenizer * tok);

// Tokenizes len bytes of text (no NUL needed). add_bos prepends BOS (when the vocabulary has
// one; callers normally pass info->add_bos). Returns the number of ids written to out,
// -(the number needed) when n_max is too small (nothing useful is written then), or
// TS_TOKENIZE_ERROR.
int ts_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                int32_t * out, int n_max);

// The raw text of token id as stored in the vocabulary (e.g. "\xe2\x96\x81the", "<0x0A>",
// "<|im_end|>"); NULL when id is out of range.
const char * ts_token_text(const struct ts_tokenizer * tok, int32_t id);
enum ts_token_type ts_token_get_type(const struct ts_tokenizer * tok, int32_t id);
// The id of the token whose stored text is exactly text[0..len) (e.g. "<|im_start|>"), -1
// when none. Control and byte tokens are found first, as SentencePiece's PieceToId.
int32_t ts_token_lookup(const struct ts_tokenizer * tok, const char * text, size_t len);
// End of generation: EOS or EOT.
bool ts_token_is_eog(const struct ts_tokenizer * tok, int32_t id);

// The bytes token id stands for in decoded text: U+2581 -> ' ', a byte token -> its byte,
// control tokens -> "" (or their text when render_special), unknown -> " \xe2\x81\x87 " (" ⁇ ",
// as SentencePiece). No leading-space stripping. Returns the length written to buf (not
// NUL-terminated), or -(length needed) when size is too small; 0 for an out-of-range id.
int ts_token_piece(const struct ts_tokenizer * tok, int32_t id, bool render_special, char * buf, int size);

// Streaming decoder: feed generated ids one by one; each push returns only complete UTF-8
// characters, so a character split over byte tokens is printed once, whole, when complete.
// Invalid byte sequences become U+FFFD, one per byte, exactly as SentencePiece's decoder.
// A plain struct: keep it on the stack, no allocation.
struct ts_utf8_stream {
    unsigned char pending[4];  // bytes of an incomplete character
    int32_t       n_pending;
    bool          strip_space;   // the first visible piece loses its leading ' ' (dummy prefix)
    bool          render_special;
};

// at_text_start: the ids start the text (as in ts_detokenize), so the dummy-prefix space of
// the first piece is dropped when the vocabulary adds one. Pass false when continuing a text
// already shown (e.g. tokens generated after a prompt).
void ts_utf8_stream_init(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, bool at_text_start,
                         bool render_special);
// Appends token id; writes the text now complete to out. Returns its length, or -(needed)
// when size is too small (the stream is then unchanged; 3 * (max_piece_bytes + 4) always
// suffices).
int ts_utf8_stream_push(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, int32_t id, char * out, int size);
// Ends the text: an incomplete character left over becomes U+FFFD per byte. Needs at most 12.
int ts_utf8_stream_flush(struct ts_utf8_stream * s, char * out, int size);

// ids -> text, as SentencePieceProcessor.decode does (when render_special is false). Returns
// the length written (not NUL-terminated), or -(needed) when size is too small.
int ts_detokenize(const struct ts_tokenizer * tok, const int32_t * ids, int n_ids, bool render_special,
                  char * out, int size);

#ifdef __cplusplus
}
#endif
