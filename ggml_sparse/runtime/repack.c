// repack.c: moves the weights that are only ever read densely out of the memory-mapped file,
// each into the layout of the kernel that will read it:
//   - where ggml_sparse_matmul_preferred (src/matmul.c: our kernels beat ggml's on this CPU),
//     a copy in anonymous memory backed by transparent huge pages, in the kernels' 16-row
//     layout where they have one (ggml_sparse_matmul_pack), else in the file's own:
//     the file mapping uses 4 KiB pages, and streaming a weight through 2 MiB pages measured
//     markedly faster (2 threads: output head 4.1 -> 2.9 ms/token, sparse gate/up 2.5 -> 1.5);
//   - else ggml's CPU "extra" buffer types. Setting a tensor in such a buffer rearranges its
//     blocks (e.g. Q4_0 as 8x8 interleaved rows) and ggml's CPU compute then runs its faster
//     GEMV/GEMM on them: the tensor's `buffer` names the buffer type and `extra` its kernels,
//     which ggml_graph_plan / ggml_graph_compute pick up for MUL_MAT nodes.
// Either costs the same RAM (one copy of those weights); their file pages are dropped.
//
// Only tensors that no other op reads in another layout are eligible: the sparse kernels and
// get_rows need the file's own layout, and a 2-D view of a repacked 3-D tensor would be read
// with the wrong layout. So: attention, a separate output matrix, the MoE router, dense-model
// predictors, and the FFN of SwiGLU models (down only in the standard layout, experts only
// where they all go through mul_mat_id; up only without ffn_down_t, i.e. when the threshold
// mode cannot run). A tied output matrix (= the token
// embedding, read by get_rows) qualifies for the huge-page copy, which keeps the layout, as do
// ffn_up and ffn_down_t of a dense SwiGLU file that has both down layouts (the threshold
// mode gathers their rows in the file's layout).
//
// The sparse FFN weights (those of dReLU/ReGLU models, and MoE experts read by the MoE ops)
// are read in the file's layout too, by row gathers and, in exact mode, a dense pass over
// the gate; they are also copied to huge pages as they are, when the copy fits in the memory
// the system has available (else they stay in the mapping, as with --no-repack).
#define _GNU_SOURCE // madvise
#include "repack.h"
#include "ffn.h"

#include "ggml-cpu.h"
#include "ggml-sparse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_BUFTS 4

struct candidates {
    struct ggml_tensor ** t;
    int                   n;
};

static void add(struct candidates * c, struct ggml_tensor * t) {
    if (t) c->t[c->n++] = t;
}

// Appends the eligible tensors; c->t has room for 10 per layer + 2. `keep` gets the tensors
// that the threshold mode's sparse nodes read (ffn_up's rows gathered, ffn_down_t's rows
// scaled and added): they are copied to huge pages as they are, in the file's layout
// (room for 2 per layer). `sparse` gets the sparse FFN's weights, copied the same way when
// they fit in memory (room for 6 per layer).
static void collect(const struct ts_model * m, struct candidates * c, struct candidates * keep,
                    struct candidates * sparse) {
    const struct ts_model_meta * h = &m->meta;
    const bool dense_ffn = h->ffn_kind == TS_FFN_SWIGLU;
    const bool moe = h->n_expert > 0;
    // MoE experts go through mul_mat_id only when nothing slices them (moe.c): SwiGLU with a
    // standard down projection and ggml's kernels faster than ours for them
    const bool ffn_ok = dense_ffn && (!moe || !h->down_neuron_major);
    if (!h->tied_output) add(c, m->output);
    else if (ggml_sparse_matmul_preferred(m->output)) add(c, m->output); // keeps its layout for get_rows
    for (int il = 0; il < h->n_layer; il++) {
        const struct ts_layer * l = &m->layers[il];
        add(c, l->wq); add(c, l->wk); add(c, l->wv); add(c, l->wo);
        add(c, l->ffn_gate_inp);
        if (!moe) { add(c, l->pred_fc1); add(c, l->pred_fc2); }
        const bool ffn_in_c = ffn_ok && !(moe && ts_moe_experts_ours(l));
        if (ffn_in_c) {
            // with ffn_down_t in the file the threshold mode may run, whose up node reads
            // ffn_up's rows sparsely in the file's layout (the gate stays dense in every mode)
            add(c, l->ffn_gate);
            if (!h->has_down_t) add(c, l->ffn_up);
            if (!h->down_neuron_major) add(c, l->ffn_down);
            if (!moe && h->has_down_t && !h->down_neuron_major) {
                // the gathered rows of the threshold mode, from 2 MiB pages: one thread, Q4_0
                // 4096 x 7168 of 14336 rows from DRAM, 4 KiB -> 2 MiB pages: down (axpy)
                // over half the columns (a thread's share) 1.33 -> 1.11 ms, up (dot) 1.70 ->
                // 1.51 ms. ffn_down_t only in a "both" file: a neuron-major file's down is
                // also the exact/predicted modes' and stays as it was.
                add(keep, l->ffn_up);
                add(keep, l->ffn_down_t);
            }
        }
        // The sparse FFN: every weight the sparse nodes gather rows of, whichever mode runs.
        // A 2-MiB page holds ~900 Q4_0 rows of 4096 against 1.8 in a 4-KiB page, so gathered
        // rows stop missing the TLB; exact mode's dense gate pass streams faster too.
        if (!ffn_in_c && (!dense_ffn || moe)) {
            add(sparse, l->ffn_gate);
            add(sparse, l->ffn_up);
            add(sparse, l->ffn_down);
            if (l->ffn_down_t != l->ffn_down) add(sparse, l->ffn_down_t);
            if (moe) { add(sparse, l->pred_fc1); add(sparse, l->pred_fc2); }
        }
    }
}

// The number at the start of a file, or 0 when the file is missing or holds none ("max").
static unsigned long long read_number(const char * path) {
    FILE * f = fopen(path, "r");
    if (!f) return 0;
    unsigned long long v = 0;
    if (fscanf(f, "%llu", &v) != 1) v = 0;
    fclose(f);
    return v;
}

// Bytes the memory cgroup of this process may still charge (its limit less its usage, page
// cache included, so on the safe side), or 0 when it sets no limit. A container sees its own
// cgroup at the root of /sys/fs/cgroup (cgroup namespaces), where MemAvailable still
// describes the whole host: a copy that fits the host can exceed the container's limit.
static size_t cgroup_headroom(void) {
    static const char * const files[][2] = {
        { "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current" },                        // v2
        { "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes" }, // v1
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        const unsigned long long limit = read_number(files[i][0]);
        if (limit == 0 || limit >= (1ull << 60)) continue; // none, or v1's "unlimited"
        const unsigned long long usage = read_number(files[i][1]);
        return limit > usage ? (size_t) (limit - usage) : 1;
    }
    return 0;
}

// Bytes the system can still give this process: MemAvailable (free memory plus reclaimable
// page cache, which includes the file's own cached pages), or the cgroup's headroom when that
// is smaller; 0 when unknown. TURBOSPARSE_MEM_AVAILABLE=bytes replaces both (a budget for the
// copies; 0: none).
static size_t available_memory(void) {
    const char * env = getenv("TURBOSPARSE_MEM_AVAILABLE");
    if (env && *env) {
        char * end = NULL;
        const unsigned long long budget = strtoull(env, &end, 10);
        if (*end == '\0' && env[0] != '-') return (size_t) budget;
        fprintf(stderr, "turbosparse: TURBOSPARSE_MEM_AVAILABLE=%s is not a number of bytes; ignored\n", env);
    }
    size_t avail = 0;
    FILE * f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kib = 0;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
        }
        fclose(f);
        avail = (size_t) kib * 1024;
    }
    const size_t headroom = cgroup_headroom();
    return headroom && (avail == 0 || headroom < avail) ? headroom : avail;
}

static size_t bytes_of(const struct candidates * c) {
    size_t total = 0;
    for (int i = 0; i < c->n; i++) total += GGML_PAD(ggml_nbytes(c->t[i]), 64);
    return total;
}

// Moves the sparse FFN weights into `keep` when their copy, with the rest copied at load,
// leaves an eighth of the available memory (at least 1 GiB) free: a model larger than that
// is read from the mapping, where the page cache can drop and re-read its pages.
// TURBOSPARSE_FFN_MAPPED=1 keeps them mapped (to measure the difference).
static void keep_sparse_if_fits(const struct ts_model * m, const struct candidates * c, struct candidates * keep,
                                const struct candidates * sparse) {
    const char * env = getenv("TURBOSPARSE_FFN_MAPPED");
    if (!m->mapped || sparse->n == 0 || (env && env[0] == '1')) return;
    const size_t avail = available_memory();
    const size_t reserve = avail / 8 > ((size_t) 1 << 30) ? avail / 8 : ((size_t) 1 << 30);
    const size_t need = bytes_of(c) + bytes_of(keep) + bytes_of(sparse);
    if (avail == 0 || need + reserve > avail) return;
    for (int i = 0; i < sparse->n; i++) keep->t[keep->n++] = sparse->t[i];
}

// The first extra buffer type whose kernels take a mul_mat (2-D) or mul_mat_id (3-D) with this
// weight, or -1. ggml answers through supports_op on a node whose weight sits in a (zero-size)
// buffer of that type, as llama.cpp asks it.
static int pick_buft(ggml_backend_dev_t dev, ggml_backend_buffer_t * dummies, int n_bufts,
                     const struct ggml_tensor * w) {
    char mem[16 * 1024];
    struct ggml_init_params ip = { .mem_size = sizeof(mem), .mem_buffer = mem, .no_alloc = true };
    struct ggml_context * g = ggml_init(ip);
    if (!g) return -1;
    struct ggml_tensor * wc = ggml_new_tensor(g, w->type, 4, w->ne);
    struct ggml_tensor * op;
    if (w->ne[2] == 1) {
        op = ggml_mul_mat(g, wc, ggml_new_tensor_2d(g, GGML_TYPE_F32, w->ne[0], 1));
    } else {
        struct ggml_tensor * x = ggml_new_tensor_3d(g, GGML_TYPE_F32, w->ne[0], 1, 1);
        op = ggml_mul_mat_id(g, wc, x, ggml_new_tensor_2d(g, GGML_TYPE_I32, 1, 1));
    }
    int found = -1;
    for (int i = 0; i < n_bufts && found < 0; i++) {
        wc->buffer = dummies[i];
        if (ggml_backend_dev_supports_op(dev, op)) found = i;
    }
    ggml_free(g);
    return found;
}

// Drops the file pages of a tensor now held elsewhere from this process (they stay in the page
// cache, reclaimable): the resident size then counts each weight once.
static void release_pages(const struct ts_model * m, const void * data, size_t size) {
    if (!m->mapped) return;
    const uintptr_t page = (uintptr_t) sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t) data + page - 1) / page * page;
    uintptr_t hi = ((uintptr_t) data + size) / page * page;
    if (hi > lo) madvise((void *) lo, hi - lo, MADV_DONTNEED);
}

// ggml logs every repacked tensor at debug level, which its default logger prints: while
// repacking, debug lines are dropped and the rest goes to the logger in place before.
struct log_target {
    ggml_log_callback cb;
    void            * data;
};

static void log_filter(enum ggml_log_level level, const char * text, void * user_data) {
    const struct log_target * prev = user_data;
    if (level == GGML_LOG_LEVEL_DEBUG || level == GGML_LOG_LEVEL_CONT) return;
    if (prev->cb) prev->cb(level, text, prev->data);
}

#define HUGE_PAGE ((size_t) 2 << 20)

void * ts_alloc_huge(size_t size) {
    const size_t padded = (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void * p = NULL;
    if (padded == 0 || posix_memalign(&p, HUGE_PAGE, padded) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    // before the first touch, so that the page faults already map 2 MiB pages; a kernel with
    // THP off just keeps 4 KiB pages
    madvise(p, padded, MADV_HUGEPAGE);
#endif
    return p;
}

// Weights our matmul reads go into the kernels' 16-row layout where it has one; the token
// embedding (a tied output matrix) keeps the file's, since get_rows reads it too.
static bool packable(const struct ts_model * m, const struct ggml_tensor * t) {
    return t != m->tok_embd && ggml_sparse_matmul_packable(t);
}

// Copies the tensors of `c` that our matmul reads into one huge-page buffer (packed where
// packable) and takes them out of `c` (the rest goes to ggml's repack), and the tensors of
// `keep` into the same buffer unchanged. When the whole file is already in huge-page RAM
// (use_mmap = 0, model.c) they stay where they are, packed in place.
static bool copy_for_matmul(struct ts_model * m, struct candidates * c, const struct candidates * keep,
                            char * err, size_t err_size) {
    if (!m->mapped) { // packed in place (through a copy) where the layout applies
        int kept = 0;
        for (int i = 0; i < c->n; i++) {
            struct ggml_tensor * t = c->t[i];
            if (!ggml_sparse_matmul_preferred(t)) {
                c->t[kept++] = t;
            } else if (packable(m, t)) {
                const size_t size = ggml_nbytes(t);
                void * plain = malloc(size), * data = t->data;
                if (!plain) {
                    snprintf(err, err_size, "out of memory while packing %s (%zu MiB)", t->name, size >> 20);
                    return false;
                }
                memcpy(plain, data, size);
                t->data = plain;
                ggml_sparse_matmul_pack(t, data);
                free(plain);
                m->meta.n_repacked++;
            }
        }
        c->n = kept;
        return true;
    }
    size_t total = 0;
    for (int i = 0; i < c->n; i++) {
        if (ggml_sparse_matmul_preferred(c->t[i])) total += GGML_PAD(ggml_nbytes(c->t[i]), 64);
    }
    total += bytes_of(keep);
    if (total == 0) return true;
    char * buf = ts_alloc_huge(total);
    if (!buf) {
        snprintf(err, err_size, "cannot allocate %zu MiB for the weights read densely; load with repack off",
                 total >> 20);
        return false;
    }
    m->hp_buf = buf;
    m->hp_size = total;
    size_t off = 0;
    int kept = 0;
    for (int i = 0; i < c->n; i++) {
        struct ggml_tensor * t = c->t[i];
        if (!ggml_sparse_matmul_preferred(t)) {
            c->t[kept++] = t;
            continue;
        }
        const size_t size = ggml_nbytes(t);
        void * src = t->data;
        if (!(packable(m, t) && ggml_sparse_matmul_pack(t, buf + off))) {
            memcpy(buf + off, src, size);
            t->data = buf + off;
        }
        release_pages(m, src, size);
        off += GGML_PAD(size, 64);
        m->meta.n_repacked++;
    }
    for (int i = 0; i < keep->n; i++) {
        struct ggml_tensor * t = keep->t[i];
        const size_t size = ggml_nbytes(t);
        void * src = t->data;
        memcpy(buf + off, src, size);
        t->data = buf + off;
        release_pages(m, src, size);
        off += GGML_PAD(size, 64);
        m->meta.n_repacked++;
    }
    m->meta.n_bytes_repacked += (int64_t) total;
    c->n = kept;
    return true;
}

static bool repack_tensors(struct ts_model * m, char * err, size_t err_size);

bool ts_model_repack(struct ts_model * m, char * err, size_t err_size) {
    struct log_target prev;
    ggml_log_get(&prev.cb, &prev.data);
    ggml_log_set(log_filter, &prev);
    const bool ok = repack_tensors(m, err, err_size);
    ggml_log_set(prev.cb, prev.data);
    return ok;
}

static bool repack_tensors(struct ts_model * m, char * err, size_t err_size) {
    m->meta.n_repacked = 0;
    m->meta.n_bytes_repacked = 0;
    const size_t n_max = 10 * (size_t) m->meta.n_layer + 2;
    struct candidates c = { .t = malloc(n_max * sizeof(*c.t)), .n = 0 };
    struct candidates keep = { .t = malloc((8 * (size_t) m->meta.n_layer + 1) * sizeof(*keep.t)), .n = 0 };
    struct candidates sparse = { .t = malloc((6 * (size_t) m->meta.n_layer + 1) * sizeof(*sparse.t)), .n = 0 };
    int * chosen = malloc(n_max * sizeof(int));
    if (!c.t || !chosen || !keep.t || !sparse.t) {
        free(c.t);
        free(keep.t);
        free(sparse.t);
        free(chosen);
        snprintf(err, err_size, "out of memory");
        return false;
    }
    collect(m, &c, &keep, &sparse);
    keep_sparse_if_fits(m, &c, &keep, &sparse);
    free(sparse.t);
    const bool copied = copy_for_matmul(m, &c, &keep, err, err_size);
    free(keep.t);
    if (!copied) {
        free(c.t);
        free(chosen);
        return false;
    }

    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    ggml_backend_dev_t dev = reg ? ggml_backend_reg_dev_get(reg, 0) : NULL;
    typedef ggml_backend_buffer_type_t * (*get_extra_t)(ggml_backend_dev_t);
    get_extra_t get_extra = reg ? (get_extra_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts") : NULL;
    ggml_backend_buffer_type_t * list = get_extra && dev ? get_extra(dev) : NULL;
    if (!list || !list[0] || c.n == 0) { // this ggml has none: the rest stays mapped
        free(c.t);
        free(chosen);
        return true;
    }

    ggml_backend_buffer_type_t bufts[MAX_BUFTS];
    ggml_backend_buffer_t dummies[MAX_BUFTS];
    int n_bufts = 0;
    for (; list[n_bufts] && n_bufts < MAX_BUFTS; n_bufts++) {
        bufts[n_bufts] = list[n_bufts];
        dummies[n_bufts] = ggml_backend_buft_alloc_buffer(bufts[n_bufts], 0);
    }

    size_t sizes[MAX_BUFTS] = { 0 };
    for (int i = 0; i < c.n; i++) {
        chosen[i] = pick_buft(dev, dummies, n_bufts, c.t[i]);
        if (chosen[i] >= 0) {
            const size_t align = ggml_backend_buft_get_alignment(bufts[chosen[i]]);
            sizes[chosen[i]] += GGML_PAD(ggml_backend_buft_get_alloc_size(bufts[chosen[i]], c.t[i]), align);
        }
    }
    for (int b = 0; b < n_bufts; b++) {
        if (dummies[b]) ggml_backend_buffer_free(dummies[b]);
    }

    bool ok = true;
    for (int b = 0; b < n_bufts && ok; b++) {
        if (sizes[b] == 0) continue;
        ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(bufts[b], sizes[b]);
        if (!buf) {
            snprintf(err, err_size, "cannot allocate %zu MiB for the repacked weights (%s); load with repack off",
                     sizes[b] >> 20, ggml_backend_buft_name(bufts[b]));
            ok = false;
            break;
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        m->repack_bufs[m->n_repack_bufs++] = buf;
        m->meta.n_bytes_repacked += (int64_t) ggml_backend_buffer_get_size(buf);
        char * base = ggml_backend_buffer_get_base(buf);
        const size_t align = ggml_backend_buft_get_alignment(bufts[b]);
        size_t off = 0;
        for (int i = 0; i < c.n; i++) {
            if (chosen[i] != b) continue;
            struct ggml_tensor * t = c.t[i];
            void * src = t->data;
            const size_t size = ggml_backend_buft_get_alloc_size(bufts[b], t);
            t->data = NULL;
            if (ggml_backend_tensor_alloc(buf, t, base + off) != GGML_STATUS_SUCCESS) {
                t->data = src; // stays mapped
                continue;
            }
            ggml_backend_tensor_set(t, src, 0, ggml_nbytes(t)); // repacks
            release_pages(m, src, ggml_nbytes(t));
            off += GGML_PAD(size, align);
            m->meta.n_repacked++;
        }
    }
    free(c.t);
    free(chosen);
    return ok;
}

void ts_model_repack_free(struct ts_model * m) {
    for (int b = 0; b < m->n_repack_bufs; b++) {
        ggml_backend_buffer_free(m->repack_bufs[b]);
    }
    m->n_repack_bufs = 0;
    free(m->hp_buf);
    m->hp_buf = NULL;
    m->hp_size = 0;
}
