// batch.c: decoding a batch of entries from one or several sequences (turbosparse.h,
// ts_decode_batch) and the sequence calls. A decode checks the batch, picks a free KV cell
// per entry, builds the batch's graph (cheap: tensor headers only), lets the graph allocator
// place the intermediates in its one reused buffer, computes it on the context's thread
// pool, and only then records the entries in the cell table, so a failed decode leaves the
// cache as it was.
#include "context.h"
#include "graph.h"

#include <stdlib.h>
#include <string.h>

int32_t ts_seq_n_past(const struct ts_context * c, int32_t seq) {
    return seq >= 0 && seq < c->cells.n_seq ? c->cells.next_pos[seq] : -1;
}

int32_t ts_seq_remove(struct ts_context * c, int32_t seq) {
    if (seq < 0 || seq >= c->cells.n_seq) {
        return ts_context_fail(c, TS_ERR_INVALID, "sequence id %d is out of range (this context holds 0..%d)",
                               seq, c->cells.n_seq - 1);
    }
    ts_kv_cells_remove_seq(&c->cells, seq);
    return TS_OK;
}

void ts_kv_clear(struct ts_context * c) {
    ts_kv_cache_clear(&c->kv);
    ts_kv_cells_clear(&c->cells);
}

// The first problem with the batch's entries, or TS_OK. next[] receives each sequence's
// position after the batch (scratch of n_seq).
static int32_t check_batch(struct ts_context * c, const struct ts_batch * b, int32_t * next) {
    const struct ts_model_meta * h = &c->model->meta;
    const struct ts_kv_cells * kc = &c->cells;
    if (!b || b->n_tokens <= 0 || !b->tokens || !b->pos || !b->seq) {
        return ts_context_fail(c, TS_ERR_INVALID, "empty batch (n_tokens = %d, or a NULL array)", b ? b->n_tokens : 0);
    }
    memcpy(next, kc->next_pos, sizeof(int32_t) * (size_t) kc->n_seq);
    for (int32_t i = 0; i < b->n_tokens; i++) {
        const int32_t t = b->tokens[i], s = b->seq[i], p = b->pos[i];
        if (t < 0 || t >= h->n_vocab) {
            return ts_context_fail(c, TS_ERR_INVALID, "token %d at batch index %d is outside the vocabulary (0..%d)",
                                   t, i, h->n_vocab - 1);
        }
        if (s < 0 || s >= kc->n_seq) {
            return ts_context_fail(c, TS_ERR_INVALID, "sequence id %d at batch index %d is out of range "
                                   "(this context holds sequences 0..%d: ts_context_params.n_seq_max)", s, i, kc->n_seq - 1);
        }
        if (p != next[s]) {
            return ts_context_fail(c, TS_ERR_INVALID, "position %d at batch index %d is out of order: sequence %d "
                                   "continues at position %d (entries append to their sequence)", p, i, s, next[s]);
        }
        next[s]++;
    }
    if (b->n_tokens > c->n_ctx - kc->n_used) {
        return ts_context_fail(c, TS_ERR_CONTEXT_FULL,
                               "context full: %d tokens need KV cells and %d of the context's %d are free "
                               "(remove finished sequences, start a new context, or make it larger)",
                               b->n_tokens, c->n_ctx - kc->n_used, c->n_ctx);
    }
    return TS_OK;
}

// The statistics of a finished decode: entries of a sequence with one entry in the batch
// count as generated tokens, the others as prompt tokens; the time is shared by count.
static void count_decode(struct ts_context * c, const struct ts_batch * b, const int32_t * next, double ms,
                         const struct ggml_sparse_stats * before) {
    int64_t n_gen = 0;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        const int32_t s = b->seq[i];
        n_gen += next[s] - c->cells.next_pos[s] == 1; // next[] is after the batch, cells before
    }
    const int64_t n_prompt = b->n_tokens - n_gen;
    c->stats.n_gen_tokens += n_gen;
    c->stats.gen_ms += ms * (double) n_gen / b->n_tokens;
    c->stats.n_prompt_tokens += n_prompt;
    c->stats.prompt_ms += ms * (double) n_prompt / b->n_tokens;

    const struct ggml_sparse_stats * now = &c->sparse_stats;
    const int64_t computed = now->neurons_computed - before->neurons_computed;
    int64_t total = now->neurons_total - before->neurons_total;
    const struct ts_model_meta * h = &c->model->meta;
    if (h->n_expert > 0) total = total / h->n_expert * h->n_expert_used; // as ts_context_get_stats
    const int64_t rows = now->rows_read - before->rows_read, rows_total = now->rows_total - before->rows_total;
    c->stats.last_n_tokens = b->n_tokens;
    c->stats.last_ms = ms;
    c->stats.last_ffn_density = total > 0 ? (double) computed / (double) total : 1.0;
    c->stats.last_ffn_union_density = rows_total > 0 ? (double) rows / (double) rows_total : 1.0;
}

int32_t ts_decode_batch(struct ts_context * c, const struct ts_batch * b, float * logits) {
    const struct ts_model_meta * h = &c->model->meta;
    c->err[0] = '\0';
    const int32_t n = b ? b->n_tokens : 0;
    // scratch: each sequence's next position, each entry's cell, the wanted entries
    int32_t * next = malloc(sizeof(int32_t) * (size_t) c->cells.n_seq);
    int32_t * cells = n > 0 ? malloc(sizeof(int32_t) * (size_t) n) : NULL;
    int32_t * out = n > 0 ? malloc(sizeof(int32_t) * (size_t) n) : NULL;
    int32_t rc = TS_OK;
    struct ggml_context * g = NULL;
    if (!next || (n > 0 && (!cells || !out))) {
        rc = ts_context_fail(c, TS_ERR_COMPUTE, "out of memory for a batch of %d entries", n);
        goto done;
    }
    if ((rc = check_batch(c, b, next)) != TS_OK) goto done;
    if (atomic_exchange(&c->abort, 0)) { rc = ts_context_fail(c, TS_ERR_ABORTED, "aborted"); goto done; }

    struct ts_batch_plan plan = { .batch = b, .cells = cells, .out_rows = out };
    // check_batch made sure there are n free cells; the taken scratch is the mask's cell_seq
    ts_kv_cells_find(&c->cells, b->seq, n, cells, (uint8_t *) c->cell_seq);
    plan.n_kv = ts_kv_cells_span(&c->cells);
    for (int32_t i = 0; i < n; i++) {
        if (cells[i] + 1 > plan.n_kv) plan.n_kv = cells[i] + 1;
        if (b->logits ? b->logits[i] != 0 : i == n - 1) out[plan.n_out++] = i;
    }

    const int64_t t0 = ggml_time_us();
    const struct ggml_sparse_stats before = c->sparse_stats;
    struct ggml_init_params ip = { .mem_size = c->graph_meta_size, .mem_buffer = c->graph_meta, .no_alloc = true };
    g = ggml_init(ip);
    struct ts_graph_io io;
    struct ggml_cgraph * gf = ts_graph_build(c, g, &plan, &io);
    if (!gf) {
        rc = ts_context_fail(c, TS_ERR_COMPUTE, "cannot build the graph: %s", c->err[0] ? c->err : "unknown reason");
        goto done;
    }
    if (!ggml_gallocr_alloc_graph(c->galloc, gf)) {
        rc = ts_context_fail(c, TS_ERR_COMPUTE, "cannot allocate the compute buffer");
        goto done;
    }
    ts_graph_set_inputs(c, &io, &plan);
    if ((rc = ts_context_compute(c, gf)) != TS_OK) goto done;
    if (logits && plan.n_out > 0) {
        memcpy(logits, io.logits->data, sizeof(float) * (size_t) h->n_vocab * (size_t) plan.n_out);
    }
    count_decode(c, b, next, (ggml_time_us() - t0) / 1000.0, &before);
    ts_kv_cells_commit(&c->cells, cells, b->pos, b->seq, n);

done:
    if (g) ggml_free(g);
    free(next);
    free(cells);
    free(out);
    return rc;
}

// The single-sequence call: the batch of tokens[0..n) in sequence 0.
int32_t ts_decode(struct ts_context * c, const int32_t * tokens, int32_t n, float * logits, int32_t logits_all) {
    c->err[0] = '\0';
    if (n <= 0 || !tokens) return ts_context_fail(c, TS_ERR_INVALID, "empty batch (n = %d)", n);
    const int32_t n_past = c->cells.next_pos[0];
    if (n > c->n_ctx - c->cells.n_used) {
        if (c->cells.n_seq == 1) { // the message of a one-sequence context, in its terms
            return ts_context_fail(c, TS_ERR_CONTEXT_FULL,
                                   "context full: %d tokens at position %d would pass the context size %d "
                                   "(start a new context, or make it larger)", n, n_past, c->n_ctx);
        }
    }
    int32_t * pos = malloc(sizeof(int32_t) * (size_t) n);
    int32_t * seq = calloc((size_t) n, sizeof(int32_t));
    int8_t * want = malloc((size_t) n);
    if (!pos || !seq || !want) {
        free(pos); free(seq); free(want);
        return ts_context_fail(c, TS_ERR_COMPUTE, "out of memory for a batch of %d tokens", n);
    }
    for (int32_t i = 0; i < n; i++) {
        pos[i] = n_past + i;
        want[i] = logits_all || i == n - 1;
    }
    const struct ts_batch b = { .n_tokens = n, .tokens = tokens, .pos = pos, .seq = seq, .logits = want };
    const int32_t rc = ts_decode_batch(c, &b, logits);
    free(pos); free(seq); free(want);
    return rc;
}
