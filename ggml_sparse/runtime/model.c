// model.c: loads a GGUF model (docs/gguf-format.md) for the runtime. Metadata is read by
// ggml's GGUF reader; tensor data stay in the memory-mapped file. Every hyper-parameter,
// tensor name, shape and type is checked against what the architecture needs, and the
// first mismatch is reported by name: a bad file gives an error, never a crash later.
#define _GNU_SOURCE // pread, MAP_POPULATE
#include "model.h"
#include "repack.h"

#include "ggml-cpu.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef MAP_POPULATE
#define TS_MAP_POPULATE MAP_POPULATE // read the weights in now, not on first use
#else
#define TS_MAP_POPULATE 0
#endif

struct loader {
    struct ts_model * m;
    const char      * path;
    char            * err;
    size_t            err_size;
    size_t            file_size;
    size_t            data_offset;
};

static bool fail(struct loader * L, const char * fmt, ...) {
    if (L->err && L->err_size) {
        int n = snprintf(L->err, L->err_size, "%s: ", L->path);
        if (n < 0 || (size_t) n >= L->err_size) n = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err + n, L->err_size - n, fmt, ap);
        va_end(ap);
    }
    return false;
}

// ---- metadata ------------------------------------------------------------------------------

static bool is_int_type(enum gguf_type t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16 ||
           t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

// An integer key of any integer type; `def` < 0 with required=false leaves *out as def.
static bool key_int(struct loader * L, const char * key, bool required, int64_t def, int64_t * out) {
    const struct gguf_context * g = L->m->gguf;
    int64_t id = gguf_find_key(g, key);
    *out = def;
    if (id < 0) {
        return required ? fail(L, "missing metadata key '%s'", key) : true;
    }
    enum gguf_type t = gguf_get_kv_type(g, id);
    switch (t) {
        case GGUF_TYPE_UINT8:  *out = gguf_get_val_u8 (g, id); break;
        case GGUF_TYPE_INT8:   *out = gguf_get_val_i8 (g, id); break;
        case GGUF_TYPE_UINT16: *out = gguf_get_val_u16(g, id); break;
        case GGUF_TYPE_INT16:  *out = gguf_get_val_i16(g, id); break;
        case GGUF_TYPE_UINT32: *out = gguf_get_val_u32(g, id); break;
        case GGUF_TYPE_INT32:  *out = gguf_get_val_i32(g, id); break;
        case GGUF_TYPE_UINT64: *out = (int64_t) gguf_get_val_u64(g, id); break;
        case GGUF_TYPE_INT64:  *out = gguf_get_val_i64(g, id); break;
        default:
            return fail(L, "metadata key '%s' has type %s, expected an integer", key, gguf_type_name(t));
    }
    return true;
}

static bool key_i32(struct loader * L, const char * key, bool required, int64_t def, int64_t lo, int32_t * out) {
    int64_t v;
    if (!key_int(L, key, required, def, &v)) return false;
    if (v < lo || v > INT32_MAX) {
        return fail(L, "metadata key '%s' = %lld is out of range (must be >= %lld)", key, (long long) v, (long long) lo);
    }
    *out = (int32_t) v;
    return true;
}

static bool key_f32(struct loader * L, const char * key, bool required, float def, float * out) {
    const struct gguf_context * g = L->m->gguf;
    int64_t id = gguf_find_key(g, key);
    *out = def;
    if (id < 0) {
        return required ? fail(L, "missing metadata key '%s'", key) : true;
    }
    enum gguf_type t = gguf_get_kv_type(g, id);
    if (t == GGUF_TYPE_FLOAT32)      *out = gguf_get_val_f32(g, id);
    else if (t == GGUF_TYPE_FLOAT64) *out = (float) gguf_get_val_f64(g, id);
    else return fail(L, "metadata key '%s' has type %s, expected a float", key, gguf_type_name(t));
    if (!isfinite(*out)) return fail(L, "metadata key '%s' is not a finite number", key);
    return true;
}

// A string key; NULL in *out when absent and not required.
static bool key_str(struct loader * L, const char * key, bool required, const char ** out) {
    const struct gguf_context * g = L->m->gguf;
    int64_t id = gguf_find_key(g, key);
    *out = NULL;
    if (id < 0) {
        return required ? fail(L, "missing metadata key '%s'", key) : true;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        return fail(L, "metadata key '%s' has type %s, expected a string", key, gguf_type_name(gguf_get_kv_type(g, id)));
    }
    *out = gguf_get_val_str(g, id);
    return true;
}

static bool read_act_thresholds(struct loader * L);

static bool key_bool(struct loader * L, const char * key, bool def, bool * out) {
    const struct gguf_context * g = L->m->gguf;
    int64_t id = gguf_find_key(g, key);
    *out = def;
    if (id < 0) return true;
    enum gguf_type t = gguf_get_kv_type(g, id);
    if (t == GGUF_TYPE_BOOL) { *out = gguf_get_val_bool(g, id); return true; }
    if (is_int_type(t)) { int64_t v; key_int(L, key, true, 0, &v); *out = v != 0; return true; }
    return fail(L, "metadata key '%s' has type %s, expected a bool", key, gguf_type_name(t));
}

static void copy_str(char * dst, size_t size, const char * src) {
    snprintf(dst, size, "%s", src ? src : "");
}

static bool read_hparams(struct loader * L) {
    struct ts_model_meta * h = &L->m->meta;
    const struct gguf_context * g = L->m->gguf;

    const char * arch;
    if (!key_str(L, "general.architecture", true, &arch)) return false;
    if (strcmp(arch, "llama") != 0) {
        return fail(L, "unknown architecture '%s' (general.architecture must be 'llama': the Llama/Mistral/Mixtral family)", arch);
    }
    const char * name;
    if (!key_str(L, "general.name", false, &name)) return false;
    copy_str(h->name, sizeof(h->name), name);

    int32_t ftype;
    if (!key_i32(L, "general.file_type", false, -1, -1, &ftype)) return false;
    h->file_type = ftype;

    int64_t id = gguf_find_key(g, "llama.feed_forward_length");
    if (id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY) {
        return fail(L, "per-layer 'llama.feed_forward_length' arrays are not supported");
    }

    if (!key_i32(L, "llama.embedding_length",   true, 0, 1, &h->n_embd))   return false;
    if (!key_i32(L, "llama.block_count",        true, 0, 1, &h->n_layer))  return false;
    if (!key_i32(L, "llama.feed_forward_length", true, 0, 1, &h->n_ff))    return false;
    if (!key_i32(L, "llama.attention.head_count", true, 0, 1, &h->n_head)) return false;
    if (!key_i32(L, "llama.attention.head_count_kv", false, h->n_head, 1, &h->n_head_kv)) return false;
    if (!key_i32(L, "llama.context_length", false, 2048, 1, &h->n_ctx_train)) return false;
    if (!key_f32(L, "llama.attention.layer_norm_rms_epsilon", true, 0.0f, &h->rms_eps)) return false;
    if (!key_f32(L, "llama.rope.freq_base", false, 10000.0f, &h->rope_theta)) return false;
    if (!key_i32(L, "llama.attention.sliding_window", false, 0, 0, &h->sliding_window)) return false;
    if (!key_i32(L, "llama.expert_count", false, 0, 0, &h->n_expert)) return false;
    if (!key_i32(L, "llama.expert_used_count", false, 0, 0, &h->n_expert_used)) return false;

    if (!key_i32(L, "llama.attention.key_length", false, h->n_embd / h->n_head, 1, &h->head_dim)) return false;
    int32_t v_len;
    if (!key_i32(L, "llama.attention.value_length", false, h->head_dim, 1, &v_len)) return false;
    if (v_len != h->head_dim) {
        return fail(L, "llama.attention.value_length %d differs from key_length %d (not supported)", v_len, h->head_dim);
    }
    if (gguf_find_key(g, "llama.attention.key_length") < 0 && h->n_embd % h->n_head != 0) {
        return fail(L, "llama.embedding_length %d is not a multiple of llama.attention.head_count %d", h->n_embd, h->n_head);
    }
    if (h->n_head % h->n_head_kv != 0) {
        return fail(L, "llama.attention.head_count %d is not a multiple of llama.attention.head_count_kv %d", h->n_head, h->n_head_kv);
    }
    const int32_t head_dim = h->head_dim;
    if (!key_i32(L, "llama.rope.dimension_count", false, head_dim, 1, &h->n_rot)) return false;
    if (h->n_rot != head_dim || head_dim % 2 != 0) {
        return fail(L, "llama.rope.dimension_count %d must equal the (even) head size %d", h->n_rot, head_dim);
    }
    if (!(h->rms_eps > 0.0f) || !(h->rope_theta > 0.0f)) {
        return fail(L, "llama.attention.layer_norm_rms_epsilon and llama.rope.freq_base must be positive");
    }
    if (h->n_expert == 1 || (h->n_expert > 0 && (h->n_expert_used < 1 || h->n_expert_used > h->n_expert))) {
        return fail(L, "llama.expert_count %d / llama.expert_used_count %d: need 2+ experts and 1..expert_count used",
                    h->n_expert, h->n_expert_used);
    }
    // RoPE scaling: linear (positions divided by the factor) is ggml's freq_scale; others refused
    h->rope_freq_scale = 1.0f;
    const char * scaling;
    if (!key_str(L, "llama.rope.scaling.type", false, &scaling)) return false;
    if (scaling && strcmp(scaling, "none") != 0) {
        if (strcmp(scaling, "linear") != 0) {
            return fail(L, "llama.rope.scaling.type '%s' is not supported (only linear)", scaling);
        }
        float factor;
        if (!key_f32(L, "llama.rope.scaling.factor", true, 1.0f, &factor)) return false;
        if (!(factor > 0.0f)) return fail(L, "llama.rope.scaling.factor must be positive");
        h->rope_freq_scale = 1.0f / factor;
    }
    if (h->n_expert > 256) return fail(L, "llama.expert_count %d is above the supported 256", h->n_expert);
    if (h->n_expert == 0) h->n_expert_used = 0;

    // turbosparse keys; a file without them is a plain llama.cpp dense SwiGLU file
    h->is_turbosparse = gguf_find_key(g, "turbosparse.format_version") >= 0 ||
                        gguf_find_key(g, "turbosparse.ffn_kind") >= 0;
    int32_t fver;
    if (!key_i32(L, "turbosparse.format_version", false, 1, 0, &fver)) return false;
    if (fver != 1) return fail(L, "unsupported turbosparse.format_version %d (this runtime reads 1)", fver);

    const char * s;
    if (!key_str(L, "turbosparse.source_model_type", false, &s)) return false;
    copy_str(h->source_model_type, sizeof(h->source_model_type), s);

    if (!key_str(L, "turbosparse.ffn_kind", false, &s)) return false;
    if (!s || strcmp(s, "swiglu") == 0) h->ffn_kind = TS_FFN_SWIGLU;
    else if (strcmp(s, "reglu") == 0)   h->ffn_kind = TS_FFN_REGLU;
    else if (strcmp(s, "drelu") == 0)   h->ffn_kind = TS_FFN_DRELU;
    else return fail(L, "unknown turbosparse.ffn_kind '%s' (expected swiglu, reglu or drelu)", s);

    // "both": ffn_down for the dense mode (and llama.cpp) plus ffn_down_t for the threshold mode
    if (!key_str(L, "turbosparse.down_layout", false, &s)) return false;
    if (!s || strcmp(s, "standard") == 0)    { h->down_neuron_major = 0; h->has_down_t = 0; }
    else if (strcmp(s, "neuron_major") == 0) { h->down_neuron_major = 1; h->has_down_t = 1; }
    else if (strcmp(s, "both") == 0)         { h->down_neuron_major = 0; h->has_down_t = 1; }
    else return fail(L, "unknown turbosparse.down_layout '%s' (expected standard, neuron_major or both)", s);
    if (h->has_down_t && !h->down_neuron_major && (h->ffn_kind != TS_FFN_SWIGLU || h->n_expert > 0)) {
        return fail(L, "turbosparse.down_layout 'both' is for dense (non-MoE) SwiGLU models only");
    }

    bool present;
    if (!key_bool(L, "turbosparse.predictor.present", false, &present)) return false;
    h->has_predictor = present;
    if (present && h->ffn_kind == TS_FFN_SWIGLU) {
        return fail(L, "turbosparse.predictor.present is true for a swiglu FFN (predictors need ReGLU or dReLU)");
    }
    if (!key_str(L, "turbosparse.predictor.input", false, &s)) return false;
    if (!s) h->predictor_input = h->n_expert > 0 ? TS_PRED_INPUT_FFN_INPUT : TS_PRED_INPUT_RESIDUAL;
    else if (strcmp(s, "residual") == 0)  h->predictor_input = TS_PRED_INPUT_RESIDUAL;
    else if (strcmp(s, "ffn_input") == 0) h->predictor_input = TS_PRED_INPUT_FFN_INPUT;
    else return fail(L, "unknown turbosparse.predictor.input '%s' (expected residual or ffn_input)", s);
    if (!key_f32(L, "turbosparse.predictor.threshold", false, 0.0f, &h->threshold)) return false;
    return read_act_thresholds(L);
}

// turbosparse.act_threshold.values: one f32 cut on |silu(gate)| per layer (threshold mode).
static bool read_act_thresholds(struct loader * L) {
    struct ts_model * m = L->m;
    struct ts_model_meta * h = &m->meta;
    const char * key = "turbosparse.act_threshold.values";
    int64_t id = gguf_find_key(m->gguf, key);
    if (id < 0) return true;
    if (h->ffn_kind != TS_FFN_SWIGLU || h->n_expert > 0) {
        return fail(L, "%s is for dense (non-MoE) SwiGLU models; this one is not", key);
    }
    if (gguf_get_kv_type(m->gguf, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(m->gguf, id) != GGUF_TYPE_FLOAT32) {
        return fail(L, "%s must be an array of f32", key);
    }
    if ((int64_t) gguf_get_arr_n(m->gguf, id) != h->n_layer) {
        return fail(L, "%s has %lld values, expected one per layer (%d)", key,
                    (long long) gguf_get_arr_n(m->gguf, id), h->n_layer);
    }
    m->act_thresholds = malloc(sizeof(float) * (size_t) h->n_layer);
    if (!m->act_thresholds) return fail(L, "out of memory");
    memcpy(m->act_thresholds, gguf_get_arr_data(m->gguf, id), sizeof(float) * (size_t) h->n_layer);
    for (int il = 0; il < h->n_layer; il++) {
        if (isnan(m->act_thresholds[il])) return fail(L, "%s[%d] is NaN", key, il);
    }
    h->has_act_thresholds = 1;
    return true;
}

// ---- tensors -------------------------------------------------------------------------------

enum want_type { W_ANY, W_F32 };

// The tensor `name`, checked for shape {ne0, ne1, ne2} (-1: any, taken from the file), type and
// bounds; NULL (and an error unless !required) otherwise. *missing tells the two apart.
static struct ggml_tensor * want(struct loader * L, const char * name, int64_t ne0, int64_t ne1, int64_t ne2,
                                 enum want_type wt, bool required, bool * missing) {
    struct ts_model * m = L->m;
    if (missing) *missing = false;
    int64_t id = gguf_find_tensor(m->gguf, name);
    if (id < 0) {
        if (missing) *missing = true;
        if (required) fail(L, "missing tensor '%s'", name);
        return NULL;
    }
    struct ggml_tensor * t = ggml_get_tensor(m->ctx_w, name);
    if (!t) { fail(L, "tensor '%s' is in the index but not in the ggml context", name); return NULL; }
    const int64_t want_ne[4] = { ne0, ne1, ne2, 1 };
    for (int d = 0; d < 4; d++) {
        if (want_ne[d] >= 0 && t->ne[d] != want_ne[d]) {
            fail(L, "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, 1] (ggml order)",
                 name, (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                 (long long) ne0, (long long) ne1, (long long) ne2);
            return NULL;
        }
    }
    if (wt == W_F32 && t->type != GGML_TYPE_F32) {
        fail(L, "tensor '%s' has type %s, expected f32", name, ggml_type_name(t->type));
        return NULL;
    }
    if (wt == W_ANY) {
        const struct ggml_type_traits * tr = ggml_get_type_traits(t->type);
        if (t->type != GGML_TYPE_F32 && (!tr || !tr->to_float || tr->blck_size == 0)) {
            fail(L, "tensor '%s' has type %s, which this runtime cannot compute with", name, ggml_type_name(t->type));
            return NULL;
        }
    }
    size_t off = L->data_offset + gguf_get_tensor_offset(m->gguf, id);
    size_t nbytes = ggml_nbytes(t);
    if (off > L->file_size || nbytes > L->file_size - off) {
        fail(L, "tensor '%s' data (%zu bytes at offset %zu) runs past the end of the file (%zu bytes): truncated?",
             name, nbytes, off, L->file_size);
        return NULL;
    }
    t->data = (char *) m->mapping + off;
    return t;
}

static bool load_tensors(struct loader * L) {
    struct ts_model * m = L->m;
    struct ts_model_meta * h = &m->meta;
    const int64_t E = h->n_embd, F = h->n_ff, V = h->n_vocab;
    const int64_t E_q = (int64_t) h->head_dim * h->n_head, E_kv = (int64_t) h->head_dim * h->n_head_kv;
    const int64_t X = h->n_expert;
    char name[128];
    bool missing;

    if (!(m->tok_embd = want(L, "token_embd.weight", E, V, 1, W_ANY, true, NULL))) return false;
    if (!(m->output_norm = want(L, "output_norm.weight", E, 1, 1, W_F32, true, NULL))) return false;
    m->output = want(L, "output.weight", E, V, 1, W_ANY, false, &missing);
    if (!m->output && !missing) return false;
    h->tied_output = missing;
    if (missing) m->output = m->tok_embd;

    // each block has at least 9 tensors: a larger count is a corrupted key, not a model
    if ((int64_t) h->n_layer * 9 > gguf_get_n_tensors(m->gguf)) {
        return fail(L, "llama.block_count is %d but the file holds only %lld tensors", h->n_layer,
                    (long long) gguf_get_n_tensors(m->gguf));
    }
    m->layers = calloc(h->n_layer, sizeof(struct ts_layer));
    if (!m->layers) return fail(L, "out of memory");

    for (int il = 0; il < h->n_layer; il++) {
        struct ts_layer * l = &m->layers[il];
#define T(field, suffix, a, b, c, wt) \
        snprintf(name, sizeof(name), "blk.%d.%s.weight", il, suffix); \
        if (!(l->field = want(L, name, a, b, c, wt, true, NULL))) return false;
        T(attn_norm, "attn_norm", E, 1, 1, W_F32);
        T(wq, "attn_q", E, E_q, 1, W_ANY);
        T(wk, "attn_k", E, E_kv, 1, W_ANY);
        T(wv, "attn_v", E, E_kv, 1, W_ANY);
        T(wo, "attn_output", E_q, E, 1, W_ANY);
        T(ffn_norm, "ffn_norm", E, 1, 1, W_F32);
        if (X == 0) {
            T(ffn_gate, "ffn_gate", E, F, 1, W_ANY);
            T(ffn_up, "ffn_up", E, F, 1, W_ANY);
            if (h->down_neuron_major) { T(ffn_down, "ffn_down_t", E, F, 1, W_ANY); }
            else                      { T(ffn_down, "ffn_down", F, E, 1, W_ANY); }
            if (h->down_neuron_major) l->ffn_down_t = l->ffn_down;
            else if (h->has_down_t)   { T(ffn_down_t, "ffn_down_t", E, F, 1, W_ANY); }
            if (h->has_predictor) {
                T(pred_fc1, "ffn_pred_fc1", E, -1, 1, W_ANY);
                T(pred_fc2, "ffn_pred_fc2", l->pred_fc1->ne[1], F, 1, W_ANY);
            }
        } else {
            T(ffn_gate_inp, "ffn_gate_inp", E, X, 1, W_ANY);
            T(ffn_gate, "ffn_gate_exps", E, F, X, W_ANY);
            T(ffn_up, "ffn_up_exps", E, F, X, W_ANY);
            if (h->down_neuron_major) { T(ffn_down, "ffn_down_t_exps", E, F, X, W_ANY); }
            else                      { T(ffn_down, "ffn_down_exps", F, E, X, W_ANY); }
            if (h->has_predictor) {
                T(pred_fc1, "ffn_pred_fc1_exps", E, -1, X, W_ANY);
                T(pred_fc2, "ffn_pred_fc2_exps", l->pred_fc1->ne[1], F, X, W_ANY);
            }
        }
#undef T
    }
    return true;
}

// ---- the file ------------------------------------------------------------------------------

static bool map_file(struct loader * L, bool use_mmap) {
    struct ts_model * m = L->m;
    int fd = open(L->path, O_RDONLY);
    if (fd < 0) return fail(L, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(L, "not a regular file");
    }
    L->file_size = (size_t) st.st_size;
    if (L->file_size < 8) { close(fd); return fail(L, "file is too short to be a GGUF file (%zu bytes)", L->file_size); }
    char magic[4];
    if (pread(fd, magic, 4, 0) != 4) { close(fd); return fail(L, "cannot read the header"); }
    if (memcmp(magic, "GGUF", 4) != 0) {
        close(fd);
        return fail(L, "bad magic '%c%c%c%c' (0x%02x%02x%02x%02x): not a GGUF file",
                    magic[0] >= 32 && magic[0] < 127 ? magic[0] : '?', magic[1] >= 32 && magic[1] < 127 ? magic[1] : '?',
                    magic[2] >= 32 && magic[2] < 127 ? magic[2] : '?', magic[3] >= 32 && magic[3] < 127 ? magic[3] : '?',
                    (unsigned char) magic[0], (unsigned char) magic[1], (unsigned char) magic[2], (unsigned char) magic[3]);
    }
    if (use_mmap) {
        void * p = mmap(NULL, L->file_size, PROT_READ, MAP_PRIVATE | TS_MAP_POPULATE, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return fail(L, "mmap failed: %s", strerror(errno));
        m->mapping = p;
        m->mapped = true;
    } else {
        // huge pages: the dense and sparse kernels stream the weights faster through 2 MiB
        // pages than through the 4 KiB pages of a file mapping (repack.c)
        m->mapping = ts_alloc_huge(L->file_size);
        if (!m->mapping) { close(fd); return fail(L, "out of memory reading %zu bytes", L->file_size); }
        size_t done = 0;
        while (done < L->file_size) {
            ssize_t r = pread(fd, (char *) m->mapping + done, L->file_size - done, (off_t) done);
            if (r <= 0) { close(fd); return fail(L, "read failed: %s", r < 0 ? strerror(errno) : "unexpected end of file"); }
            done += (size_t) r;
        }
        close(fd);
    }
    m->mapping_size = L->file_size;
    return true;
}

void ts_model_params_init(struct ts_model_params * params) {
    params->use_mmap = 1;
    params->repack = 1;
}

struct ts_model * ts_model_load(const char * path, const struct ts_model_params * params, char * err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    ggml_time_init();
    ggml_cpu_init();
    const int64_t t0 = ggml_time_us();

    struct ts_model_params def;
    ts_model_params_init(&def);
    if (!params) params = &def;

    struct ts_model * m = calloc(1, sizeof(*m));
    struct loader L = { .m = m, .path = path ? path : "(null)", .err = err, .err_size = err_size };
    if (!m) { fail(&L, "out of memory"); return NULL; }
    if (!path) { fail(&L, "no model path given"); goto bad; }

    if (!map_file(&L, params->use_mmap != 0)) goto bad;

    struct gguf_init_params gp = { .no_alloc = true, .ctx = &m->ctx_w };
    m->gguf = gguf_init_from_file(path, gp);
    if (!m->gguf) {
        fail(&L, "ggml's GGUF reader rejected the file (truncated or corrupted header, metadata or tensor index)");
        goto bad;
    }
    L.data_offset = gguf_get_data_offset(m->gguf);
    if (!read_hparams(&L)) goto bad;

    // the vocabulary size: the key, else the tokenizer's length, else the embedding's rows
    {
        int64_t id = gguf_find_key(m->gguf, "tokenizer.ggml.tokens");
        int64_t n_tok = id >= 0 ? (int64_t) gguf_get_arr_n(m->gguf, id) : -1;
        int64_t emb = gguf_find_tensor(m->gguf, "token_embd.weight");
        int64_t n_emb = emb >= 0 ? gguf_get_tensor_ne(m->gguf, emb)[1] : -1;
        int32_t v;
        if (!key_i32(&L, "llama.vocab_size", false, n_tok > 0 ? n_tok : n_emb, 1, &v)) goto bad;
        m->meta.n_vocab = v;
        if (n_tok > 0 && n_tok != v) {
            fail(&L, "tokenizer.ggml.tokens has %lld entries but the vocabulary size is %d", (long long) n_tok, v);
            goto bad;
        }
    }
    if (!load_tensors(&L)) goto bad;
    if (params->repack && !ts_model_repack(m, L.err, L.err_size)) goto bad;

    for (int64_t i = 0; i < gguf_get_n_tensors(m->gguf); i++) {
        struct ggml_tensor * t = ggml_get_tensor(m->ctx_w, gguf_get_tensor_name(m->gguf, i));
        if (t) { m->meta.n_params += ggml_nelements(t); m->meta.n_bytes += (int64_t) ggml_nbytes(t); }
    }
    m->meta.load_ms = (ggml_time_us() - t0) / 1000.0;
    return m;

bad:
    ts_model_free(m);
    return NULL;
}

void ts_model_free(struct ts_model * m) {
    if (!m) return;
    ts_model_repack_free(m);
    free(m->layers);
    free(m->act_thresholds);
    if (m->gguf) gguf_free(m->gguf);
    if (m->ctx_w) ggml_free(m->ctx_w);
    if (m->mapping) {
        if (m->mapped) munmap(m->mapping, m->mapping_size);
        else free(m->mapping);
    }
    free(m);
}

void ts_model_get_meta(const struct ts_model * m, struct ts_model_meta * meta) {
    *meta = m->meta;
}

const void * ts_model_gguf(const struct ts_model * m) {
    return m->gguf;
}
