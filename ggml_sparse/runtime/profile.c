// profile.c: TURBOSPARSE_PROFILE=1 computes each batch's graph one node at a time and adds the
// node's wall time to its kind (the op, and for matrix products the weight's name without its
// layer number), printed to stderr when the context is freed. A developer's tool for finding
// where decode time goes; each node then pays a thread-pool wake-up, so totals run high.
#include "profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TS_PROFILE_MAX_KINDS = 128 };

struct ts_profile_kind {
    char    name[96];
    int64_t us;
    int64_t calls;
};

struct ts_profile {
    struct ts_profile_kind kinds[TS_PROFILE_MAX_KINDS];
    int                    n_kinds;
    int64_t                n_graphs;
    uint8_t              * work;
    size_t                 work_size;
};

struct ts_profile * ts_profile_new_from_env(void) {
    const char * v = getenv("TURBOSPARSE_PROFILE");
    if (!v || !*v || strcmp(v, "0") == 0) return NULL;
    return calloc(1, sizeof(struct ts_profile));
}

// "blk.12.attn_q.weight" -> "attn_q.weight"
static const char * strip_layer(const char * name) {
    if (strncmp(name, "blk.", 4) != 0) return name;
    const char * dot = strchr(name + 4, '.');
    return dot ? dot + 1 : name;
}

static void kind_of(const struct ggml_tensor * t, char * out, size_t size) {
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_GET_ROWS) && t->src[0]->name[0] && t->src[0]->op == GGML_OP_NONE) {
        snprintf(out, size, "%s %s", ggml_op_desc(t), strip_layer(t->src[0]->name));
    } else if (t->op == GGML_OP_CUSTOM) {
        snprintf(out, size, "CUSTOM %s", t->name);
    } else {
        snprintf(out, size, "%s", ggml_op_desc(t));
    }
}

static struct ts_profile_kind * find_kind(struct ts_profile * p, const char * name) {
    for (int i = 0; i < p->n_kinds; i++) {
        if (strcmp(p->kinds[i].name, name) == 0) return &p->kinds[i];
    }
    if (p->n_kinds == TS_PROFILE_MAX_KINDS) return &p->kinds[TS_PROFILE_MAX_KINDS - 1];
    struct ts_profile_kind * k = &p->kinds[p->n_kinds++];
    snprintf(k->name, sizeof(k->name), "%s", name);
    return k;
}

enum ggml_status ts_profile_compute(struct ts_profile * p, struct ggml_cgraph * gf, int n_threads,
                                    struct ggml_threadpool * tp) {
    char meta[1 << 14];
    struct ggml_init_params ip = { .mem_size = sizeof(meta), .mem_buffer = meta, .no_alloc = true };
    struct ggml_context * g = ggml_init(ip);
    struct ggml_cgraph * one = ggml_new_graph_custom(g, 1, false);
    enum ggml_status st = GGML_STATUS_SUCCESS;
    for (int i = 0; i < ggml_graph_n_nodes(gf) && st == GGML_STATUS_SUCCESS; i++) {
        struct ggml_tensor * t = ggml_graph_node(gf, i);
        ggml_graph_clear(one);
        ggml_graph_add_node(one, t);
        struct ggml_cplan plan = ggml_graph_plan(one, n_threads, tp);
        if (plan.work_size > p->work_size) {
            free(p->work);
            p->work = malloc(plan.work_size);
            p->work_size = p->work ? plan.work_size : 0;
            if (!p->work) { st = GGML_STATUS_ALLOC_FAILED; break; }
        }
        plan.work_data = p->work;
        const int64_t t0 = ggml_time_us();
        st = ggml_graph_compute(one, &plan);
        char name[96];
        kind_of(t, name, sizeof(name));
        struct ts_profile_kind * k = find_kind(p, name);
        k->us += ggml_time_us() - t0;
        k->calls++;
    }
    ggml_free(g);
    p->n_graphs++;
    return st;
}

static int by_time_desc(const void * a, const void * b) {
    const int64_t x = ((const struct ts_profile_kind *) a)->us, y = ((const struct ts_profile_kind *) b)->us;
    return (x < y) - (x > y);
}

void ts_profile_free(struct ts_profile * p) {
    if (!p) return;
    int64_t total = 0;
    for (int i = 0; i < p->n_kinds; i++) total += p->kinds[i].us;
    qsort(p->kinds, (size_t) p->n_kinds, sizeof(p->kinds[0]), by_time_desc);
    fprintf(stderr, "profile: %lld graphs, %.1f ms in nodes (%.3f ms per graph)\n", (long long) p->n_graphs,
            total / 1e3, p->n_graphs ? total / 1e3 / (double) p->n_graphs : 0.0);
    for (int i = 0; i < p->n_kinds; i++) {
        const struct ts_profile_kind * k = &p->kinds[i];
        fprintf(stderr, "  %6.2f%% %10.3f ms/graph %8lld calls  %s\n", total ? 100.0 * (double) k->us / (double) total : 0.0,
                p->n_graphs ? k->us / 1e3 / (double) p->n_graphs : 0.0, (long long) k->calls, k->name);
    }
    free(p->work);
    free(p);
}
