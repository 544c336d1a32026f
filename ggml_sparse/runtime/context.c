// context.c: inference contexts: their KV cache, thread pool and graph allocator, settings and
// statistics, and computing a graph on them (decoding a batch is batch.c).
#include "context.h"
#include "graph.h"
#include "profile.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(TS_KV_MAX_SEQ == TS_MAX_SEQ, "kvcells.h's bound is turbosparse.h's");

int32_t ts_context_fail(struct ts_context * c, int32_t status, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    return status;
}

void ts_context_params_init(struct ts_context_params * p) {
    memset(p, 0, sizeof(*p));
    p->ffn_mode = TS_FFN_MODE_AUTO;
    p->n_seq_max = 1;
}

static const char * mode_name(int32_t mode) {
    switch (mode) {
        case TS_FFN_MODE_DENSE:     return "dense";
        case TS_FFN_MODE_PREDICTED: return "predicted";
        case TS_FFN_MODE_EXACT:     return "exact";
        case TS_FFN_MODE_THRESHOLD: return "threshold";
        default:                    return "auto";
    }
}

struct ts_context * ts_context_new(struct ts_model * model, const struct ts_context_params * params,
                                   char * err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    struct ts_context_params def;
    ts_context_params_init(&def);
    if (!params) params = &def;
    const struct ts_model_meta * h = &model->meta;

    int32_t mode = params->ffn_mode;
    if (mode == TS_FFN_MODE_AUTO) {
        mode = h->has_predictor ? TS_FFN_MODE_PREDICTED
             : h->ffn_kind != TS_FFN_SWIGLU ? TS_FFN_MODE_EXACT
             : h->has_act_thresholds && h->has_down_t ? TS_FFN_MODE_THRESHOLD : TS_FFN_MODE_DENSE;
    }
    if (mode < TS_FFN_MODE_DENSE || mode > TS_FFN_MODE_THRESHOLD) {
        snprintf(err, err_size, "unknown FFN mode %d", mode);
        return NULL;
    }
    if (mode == TS_FFN_MODE_PREDICTED && !h->has_predictor) {
        snprintf(err, err_size, "FFN mode 'predicted' needs predictor tensors, and this model file has none "
                 "(turbosparse.predictor.present is false): use 'exact' or 'dense'");
        return NULL;
    }
    if (mode != TS_FFN_MODE_DENSE && mode != TS_FFN_MODE_THRESHOLD && h->ffn_kind == TS_FFN_SWIGLU) {
        snprintf(err, err_size, "FFN mode '%s' needs a ReGLU or dReLU FFN; this model's FFN is SwiGLU "
                 "(no natural zeros): use 'dense', or 'threshold' after ts-calibrate-sparsity", mode_name(mode));
        return NULL;
    }
    if (mode == TS_FFN_MODE_THRESHOLD) {
        if (h->ffn_kind != TS_FFN_SWIGLU || h->n_expert > 0) {
            snprintf(err, err_size, "FFN mode 'threshold' is for dense (non-MoE) SwiGLU models; this model's FFN is %s%s: "
                     "use 'exact' or 'predicted'", h->ffn_kind == TS_FFN_REGLU ? "ReGLU" : h->ffn_kind == TS_FFN_DRELU ? "dReLU" : "SwiGLU",
                     h->n_expert > 0 ? " (mixture of experts)" : "");
            return NULL;
        }
        if (!h->has_down_t) {
            snprintf(err, err_size, "FFN mode 'threshold' needs the neuron-major down projection (ffn_down_t), and this "
                     "file has none: add it (and thresholds) with ts-calibrate-sparsity, or convert with --sparse-ffn");
            return NULL;
        }
        if (!h->has_act_thresholds && !params->collect_act_hist && !params->act_thresholds) {
            snprintf(err, err_size, "FFN mode 'threshold' needs per-layer activation thresholds "
                     "(turbosparse.act_threshold.values), and this file has none: run ts-calibrate-sparsity on it");
            return NULL;
        }
        for (int il = 0; params->act_thresholds && il < h->n_layer; il++) {
            if (isnan(params->act_thresholds[il])) {
                snprintf(err, err_size, "act_thresholds[%d] is NaN", il);
                return NULL;
            }
        }
    } else if (params->collect_act_hist || params->act_thresholds) {
        snprintf(err, err_size, "%s needs FFN mode 'threshold' (got '%s')",
                 params->collect_act_hist ? "collect_act_hist" : "act_thresholds", mode_name(mode));
        return NULL;
    }
    int32_t n_ctx = params->n_ctx > 0 ? params->n_ctx : (h->n_ctx_train < 4096 ? h->n_ctx_train : 4096);
    if (n_ctx < 1) {
        snprintf(err, err_size, "context size must be positive (got %d)", params->n_ctx);
        return NULL;
    }
    const int32_t n_seq = params->n_seq_max > 0 ? params->n_seq_max : 1;
    if (n_seq > TS_MAX_SEQ) {
        snprintf(err, err_size, "n_seq_max %d is above the supported %d sequences", params->n_seq_max, TS_MAX_SEQ);
        return NULL;
    }
    int32_t n_threads = params->n_threads;
    if (n_threads <= 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = ncpu > 0 ? (int32_t) ncpu : 1;
    }
    if (n_threads > GGML_MAX_N_THREADS) n_threads = GGML_MAX_N_THREADS;

    struct ts_context * c = calloc(1, sizeof(*c));
    if (!c) { snprintf(err, err_size, "out of memory"); return NULL; }
    c->model = model;
    c->n_ctx = n_ctx;
    c->n_threads = n_threads;
    c->ffn_mode = mode;
    c->threshold = params->use_threshold ? params->threshold : h->threshold;
    if (mode == TS_FFN_MODE_THRESHOLD) {
        c->act_thresholds = malloc(sizeof(float) * (size_t) h->n_layer);
        c->layer_stats = calloc((size_t) h->n_layer, sizeof(struct ggml_sparse_stats));
        c->act_hist = params->collect_act_hist ? calloc((size_t) h->n_layer, sizeof(struct ggml_sparse_act_hist)) : NULL;
        if (!c->act_thresholds || !c->layer_stats || (params->collect_act_hist && !c->act_hist)) {
            snprintf(err, err_size, "out of memory");
            ts_context_free(c);
            return NULL;
        }
        for (int il = 0; il < h->n_layer; il++) {
            c->act_thresholds[il] = params->act_thresholds ? params->act_thresholds[il]
                                  : h->has_act_thresholds ? c->model->act_thresholds[il] : -INFINITY;
        }
    }

    const int32_t n_embd_kv = h->head_dim * h->n_head_kv;
    if (!ts_kv_cache_init(&c->kv, h->n_layer, n_embd_kv, n_ctx, params->kv_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16,
                          err, err_size)) {
        free(c);
        return NULL;
    }
    c->cell_seq = malloc(sizeof(int32_t) * (size_t) n_ctx);
    c->cell_pos = malloc(sizeof(int32_t) * (size_t) n_ctx);
    if (!c->cell_seq || !c->cell_pos || !ts_kv_cells_init(&c->cells, n_ctx, n_seq, err, err_size)) {
        if (!c->cell_seq || !c->cell_pos) snprintf(err, err_size, "out of memory for the KV cell table (%d cells)", n_ctx);
        ts_context_free(c);
        return NULL;
    }
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    c->threadpool = ggml_threadpool_new(&tpp);
    c->galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    c->graph_size = 256 + h->n_layer * (64 + 24 * h->n_expert);
    c->graph_meta_size = ggml_tensor_overhead() * (size_t) c->graph_size * 2 +
                         ggml_graph_overhead_custom(c->graph_size, false) +
                         ggml_sparse_ffn_ctx_size() * (size_t) h->n_layer * (h->n_expert ? h->n_expert : 1);
    c->graph_meta = malloc(c->graph_meta_size);
    if (!c->threadpool || !c->galloc || !c->graph_meta) {
        snprintf(err, err_size, "cannot create the thread pool or graph allocator");
        ts_context_free(c);
        return NULL;
    }
    c->profile = ts_profile_new_from_env();
    ts_context_reset(c);
    return c;
}

void ts_context_free(struct ts_context * c) {
    if (!c) return;
    ts_profile_free(c->profile);
    if (c->threadpool) ggml_threadpool_free(c->threadpool);
    if (c->galloc) ggml_gallocr_free(c->galloc);
    ts_kv_cache_free(&c->kv);
    ts_kv_cells_free(&c->cells);
    free(c->cell_seq);
    free(c->cell_pos);
    free(c->graph_meta);
    free(c->work);
    free(c->act_thresholds);
    free(c->layer_stats);
    free(c->act_hist);
    free(c);
}

void ts_context_reset(struct ts_context * c) {
    ts_kv_clear(c);
    memset(&c->sparse_stats, 0, sizeof(c->sparse_stats));
    memset(&c->stats, 0, sizeof(c->stats));
    const size_t n_layer = (size_t) c->model->meta.n_layer;
    if (c->layer_stats) memset(c->layer_stats, 0, n_layer * sizeof(*c->layer_stats));
    if (c->act_hist) memset(c->act_hist, 0, n_layer * sizeof(*c->act_hist));
    atomic_store(&c->abort, 0);
    c->err[0] = '\0';
}

int32_t ts_context_n_ctx(const struct ts_context * c)     { return c->n_ctx; }
int32_t ts_context_n_past(const struct ts_context * c)    { return c->cells.next_pos[0]; }
int32_t ts_context_n_seq_max(const struct ts_context * c) { return c->cells.n_seq; }
int32_t ts_context_n_free(const struct ts_context * c)    { return c->cells.n_ctx - c->cells.n_used; }
int32_t ts_context_n_threads(const struct ts_context * c) { return c->n_threads; }
int32_t ts_context_ffn_mode(const struct ts_context * c)  { return c->ffn_mode; }
float   ts_context_threshold(const struct ts_context * c) { return c->threshold; }
const char * ts_context_error(const struct ts_context * c) { return c->err; }
void ts_context_abort(struct ts_context * c) { atomic_store(&c->abort, 1); }

static bool abort_requested(void * data) {
    return atomic_load(&((struct ts_context *) data)->abort) != 0;
}

int32_t ts_context_compute(struct ts_context * c, struct ggml_cgraph * gf) {
    struct ggml_cplan plan = ggml_graph_plan(gf, c->n_threads, c->threadpool);
    if (plan.work_size > c->work_size) {
        free(c->work);
        c->work = malloc(plan.work_size);
        c->work_size = c->work ? plan.work_size : 0;
        if (!c->work) return ts_context_fail(c, TS_ERR_COMPUTE, "out of memory for the work buffer");
    }
    plan.work_data = c->work;
    plan.abort_callback = abort_requested;
    plan.abort_callback_data = c;
    enum ggml_status st = c->profile ? ts_profile_compute(c->profile, gf, c->n_threads, c->threadpool)
                                     : ggml_graph_compute(gf, &plan);
    if (st != GGML_STATUS_SUCCESS) {
        if (st == GGML_STATUS_ABORTED || atomic_exchange(&c->abort, 0)) {
            atomic_store(&c->abort, 0);
            return ts_context_fail(c, TS_ERR_ABORTED, "aborted");
        }
        return ts_context_fail(c, TS_ERR_COMPUTE, "graph compute failed (ggml status %d)", (int) st);
    }
    return TS_OK;
}

void ts_context_get_stats(const struct ts_context * c, struct ts_stats * s) {
    *s = c->stats;
    s->ffn_neurons_computed = c->sparse_stats.neurons_computed;
    s->ffn_neurons_total = c->sparse_stats.neurons_total;
    for (int32_t il = 0; c->layer_stats && il < c->model->meta.n_layer; il++) {
        s->ffn_neurons_computed += c->layer_stats[il].neurons_computed;
        s->ffn_neurons_total += c->layer_stats[il].neurons_total;
    }
    // MoE: every expert's sparse node runs on the whole batch and counts n_ff per token, but
    // computes nothing for the tokens not routed to it (zero input; -inf predictor logits,
    // moe.c): the share is of the routed experts' neurons
    const struct ts_model_meta * h = &c->model->meta;
    if (h->n_expert > 0) s->ffn_neurons_total = s->ffn_neurons_total / h->n_expert * h->n_expert_used;
    s->ffn_density = s->ffn_neurons_total > 0 ? (double) s->ffn_neurons_computed / (double) s->ffn_neurons_total : 1.0;
    s->load_ms = c->model->meta.load_ms;
    s->ffn_rows_read = c->sparse_stats.rows_read;
    s->ffn_rows_total = c->sparse_stats.rows_total;
    s->ffn_union_density = s->ffn_rows_total > 0 ? (double) s->ffn_rows_read / (double) s->ffn_rows_total : 1.0;
}

// ---- threshold mode ------------------------------------------------------------------------

int32_t ts_context_set_act_thresholds(struct ts_context * c, const float * t, int32_t n) {
    if (!c->act_thresholds) return ts_context_fail(c, TS_ERR_INVALID, "activation thresholds apply to FFN mode 'threshold' only");
    if (!t || n != c->model->meta.n_layer) {
        return ts_context_fail(c, TS_ERR_INVALID, "expected %d thresholds (one per layer), got %d", c->model->meta.n_layer, n);
    }
    for (int32_t il = 0; il < n; il++) {
        if (isnan(t[il])) return ts_context_fail(c, TS_ERR_INVALID, "threshold of layer %d is NaN", il);
    }
    memcpy(c->act_thresholds, t, sizeof(float) * (size_t) n);
    return TS_OK;
}

int32_t ts_context_get_act_thresholds(const struct ts_context * c, float * t, int32_t n) {
    if (!c->act_thresholds || !t || n != c->model->meta.n_layer) return TS_ERR_INVALID;
    memcpy(t, c->act_thresholds, sizeof(float) * (size_t) n);
    return TS_OK;
}

int32_t ts_context_layer_stats(const struct ts_context * c, int32_t il, int64_t * computed, int64_t * total) {
    if (!c->layer_stats || il < 0 || il >= c->model->meta.n_layer || !computed || !total) return TS_ERR_INVALID;
    *computed = c->layer_stats[il].neurons_computed;
    *total = c->layer_stats[il].neurons_total;
    return TS_OK;
}

int32_t ts_context_act_hist(const struct ts_context * c, int32_t il, int64_t * counts, int32_t n_bins) {
    if (!c->act_hist || il < 0 || il >= c->model->meta.n_layer || !counts || n_bins != GGML_SPARSE_ACT_HIST_BINS) {
        return TS_ERR_INVALID;
    }
    memcpy(counts, c->act_hist[il].counts, sizeof(c->act_hist[il].counts));
    return TS_OK;
}

float ts_act_hist_edge(int32_t bin) {
    return ggml_sparse_act_hist_edge(bin);
}
