// cffi declarations of the tokenizer (ggml_sparse/runtime/tokenizer.h, comments dropped).
// Keep in sync with that header. TS_TOKENIZE_ERROR is INT32_MIN.
enum ts_token_type {
    TS_TOKEN_UNDEFINED    = 0,
    TS_TOKEN_NORMAL       = 1,
    TS_TOKEN_UNKNOWN      = 2,
    TS_TOKEN_CONTROL      = 3,
    TS_TOKEN_USER_DEFINED = 4,
    TS_TOKEN_UNUSED       = 5,
    TS_TOKEN_BYTE         = 6,
};
struct ts_tokenizer_info {
    int32_t n_vocab;
    int32_t bos_id;
    int32_t eos_id;
    int32_t eot_id;
    int32_t unk_id;
    int32_t pad_id;
    bool    add_bos;
    bool    add_eos;
    bool    add_space_prefix;
    bool    byte_fallback;
    int32_t max_piece_bytes;
};
struct ts_tokenizer;
struct ts_tokenizer * ts_tokenizer_from_gguf(const struct gguf_context * ctx, char * err, size_t err_size);
struct ts_tokenizer * ts_tokenizer_from_file(const char * path, char * err, size_t err_size);
void ts_tokenizer_free(struct ts_tokenizer * tok);
const struct ts_tokenizer_info * ts_tokenizer_get_info(const struct ts_tokenizer * tok);
int ts_tokenize(const struct ts_tokenizer * tok, const char * text, size_t len, bool add_bos, bool special,
                int32_t * out, int n_max);
const char * ts_token_text(const struct ts_tokenizer * tok, int32_t id);
enum ts_token_type ts_token_get_type(const struct ts_tokenizer * tok, int32_t id);
int32_t ts_token_lookup(const struct ts_tokenizer * tok, const char * text, size_t len);
bool ts_token_is_eog(const struct ts_tokenizer * tok, int32_t id);
int ts_token_piece(const struct ts_tokenizer * tok, int32_t id, bool render_special, char * buf, int size);
struct ts_utf8_stream {
    unsigned char pending[4];
    int32_t       n_pending;
    bool          strip_space;
    bool          render_special;
};
void ts_utf8_stream_init(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, bool at_text_start,
                         bool render_special);
int ts_utf8_stream_push(struct ts_utf8_stream * s, const struct ts_tokenizer * tok, int32_t id, char * out, int size);
int ts_utf8_stream_flush(struct ts_utf8_stream * s, char * out, int size);
int ts_detokenize(const struct ts_tokenizer * tok, const int32_t * ids, int n_ids, bool render_special,
                  char * out, int size);
