// test_cuda_kernels: every CUDA kernel (ts-cuda.h) against the CPU scalar reference
// (kernels/scalar.c) on random inputs: every weight type, odd sizes, padded rows, T in {1, 3}.
//   bit-exact:  Q8_0 quantisation, active-set selection, down projection with n_split == 1
//   tolerance:  dots (gate/up, exact mode, dense rows): the GPU sums in another order, so each
//               result may differ by a bound on float summation error (2 n eps sum|terms|),
//               carried through the activation; down with n_split > 1 likewise, and it must
//               repeat bit for bit.
// `--args-only` runs the argument checks alone (no GPU needed). Exit 0 = all passed.
#include "ts-cuda.h"
#include "ts-kernels.h"

#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

extern "C" const struct ts_kernels ts_kernels_scalar;
static const struct ts_kernels * REF = &ts_kernels_scalar;

static int n_fail = 0, n_pass = 0;

#define CHECK(cond, ...) do { if (cond) { n_pass++; } else { n_fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)
#define CUDA_OK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
    printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)
#define TS_OK(call) do { const char * m_ = (call); if (m_) { printf("ts_cuda error '%s' at %s:%d\n", m_, __FILE__, __LINE__); \
    exit(1); } } while (0)

// ---- helpers -----------------------------------------------------------------------------------

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { // uniform in [-1, 1)
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (float) ((rng_state >> 40) * (1.0 / (1ull << 23))) - 1.0f;
}

template <class T> static T * to_dev(const std::vector<T> & h) {
    T * d = NULL;
    CUDA_OK(cudaMalloc(&d, h.size() * sizeof(T) + 16));
    CUDA_OK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <class T> static std::vector<T> to_host(const T * d, size_t count) {
    std::vector<T> h(count);
    CUDA_OK(cudaMemcpy(h.data(), d, count * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// A matrix of n_rows random rows of `type`, row_bytes apart, and its values as f32.
struct matrix {
    std::vector<uint8_t> bytes;
    std::vector<float>   values; // dequantised, [n_rows][n]
};
static matrix random_matrix(enum ts_type type, int64_t n, int64_t n_rows, size_t row_bytes) {
    matrix m;
    m.bytes.assign((size_t) n_rows * row_bytes, 0xAB); // padding gets garbage
    m.values.resize((size_t) n_rows * n);
    std::vector<float> row(n);
    for (int64_t i = 0; i < n_rows; i++) {
        for (int64_t k = 0; k < n; k++) row[k] = frand();
        ts_from_float(type, row.data(), m.bytes.data() + i * row_bytes, n);
        ts_to_float(type, m.bytes.data() + i * row_bytes, m.values.data() + i * n, n);
    }
    return m;
}

// sum_k |w_k x_k| of one row: the scale of the summation error of its dot.
static double abs_dot(const float * w, const float * x, int64_t n) {
    double s = 0.0;
    for (int64_t k = 0; k < n; k++) s += fabs((double) w[k] * x[k]);
    return s;
}

// Error allowed on act(g, u) when g and u may each be off by tg and tu.
static double act_tol(float g, float u, double tg, double tu) {
    return tg * fabs(u) + tu * fabs(g) + tg * tu + 1e-30;
}

// ---- one configuration ------------------------------------------------------------------------

struct config { int64_t n, n_ff; size_t pad; int64_t T; };

static void test_config(enum ts_type type, const config & c) {
    const int64_t n = c.n, n_ff = c.n_ff, T = c.T;
    const size_t  row_bytes = ts_row_size(type, n) + c.pad;
    const bool    quant = ts_dot_type(type) == TS_TYPE_Q8_0;
    const size_t  x_bytes = ts_row_size(ts_dot_type(type), n);
    const double  eps = 1.1920929e-7;
    char where[128];
    snprintf(where, sizeof where, "%s n=%lld n_ff=%lld pad=%zu T=%lld", ts_type_name(type), (long long) n,
             (long long) n_ff, c.pad, (long long) T);

    matrix wg = random_matrix(type, n, n_ff, row_bytes);
    matrix wu = random_matrix(type, n, n_ff, row_bytes);
    matrix wd = random_matrix(type, n, n_ff, row_bytes); // neuron-major down
    std::vector<float> x((size_t) T * n), logits((size_t) T * n_ff);
    for (auto & v : x) v = frand();
    for (auto & v : logits) v = frand();
    const float tau = 0.3f; // ~35% active

    // x in the dot type, on the CPU and the GPU (which must agree bit for bit).
    std::vector<uint8_t> xd_ref((size_t) T * x_bytes);
    std::vector<float>   x_deq((size_t) T * n); // what the dots multiply with
    for (int64_t t = 0; t < T; t++) {
        if (quant) {
            ts_quantize_row_q8_0_ref(&x[t * n], (ts_block_q8_0 *) &xd_ref[t * x_bytes], n);
            ts_to_float(TS_TYPE_Q8_0, &xd_ref[t * x_bytes], &x_deq[t * n], n);
        } else {
            memcpy(&xd_ref[t * x_bytes], &x[t * n], x_bytes);
            memcpy(&x_deq[t * n], &x[t * n], x_bytes);
        }
    }
    float * d_x = to_dev(x);
    uint8_t * d_xd;
    if (quant) {
        CUDA_OK(cudaMalloc(&d_xd, xd_ref.size()));
        TS_OK(ts_cuda_quantize_q8_0(d_x, (ts_block_q8_0 *) d_xd, n, T, NULL));
        std::vector<uint8_t> got = to_host(d_xd, xd_ref.size());
        CHECK(got == xd_ref, "%s: quantize_q8_0 differs from ts_quantize_row_q8_0_ref", where);
    } else {
        d_xd = to_dev(xd_ref);
    }

    uint8_t * d_wg = to_dev(wg.bytes), * d_wu = to_dev(wu.bytes), * d_wd = to_dev(wd.bytes);
    float * d_logits = to_dev(logits);
    int32_t * d_idx, * d_count;
    float * d_a, * d_ac, * d_y, * d_part;
    CUDA_OK(cudaMalloc(&d_idx, T * n_ff * 4));
    CUDA_OK(cudaMalloc(&d_count, T * 4));
    CUDA_OK(cudaMalloc(&d_a, T * n_ff * 4));
    CUDA_OK(cudaMalloc(&d_ac, T * n_ff * 4));
    CUDA_OK(cudaMalloc(&d_y, T * n * 4));
    CUDA_OK(cudaMalloc(&d_part, ts_cuda_down_partial_bytes(n, T, 7)));

    // Reference gate and up values of every neuron, and their error scales.
    std::vector<float> g_ref((size_t) T * n_ff), u_ref((size_t) T * n_ff);
    std::vector<double> g_tol((size_t) T * n_ff), u_tol((size_t) T * n_ff);
    for (int64_t t = 0; t < T; t++) {
        REF->dot_rows(type, n, wg.bytes.data(), row_bytes, &xd_ref[t * x_bytes], NULL, n_ff, &g_ref[t * n_ff]);
        REF->dot_rows(type, n, wu.bytes.data(), row_bytes, &xd_ref[t * x_bytes], NULL, n_ff, &u_ref[t * n_ff]);
        for (int64_t i = 0; i < n_ff; i++) {
            g_tol[t * n_ff + i] = 2.0 * n * eps * abs_dot(&wg.values[i * n], &x_deq[t * n], n) + 1e-30;
            u_tol[t * n_ff + i] = 2.0 * n * eps * abs_dot(&wu.values[i * n], &x_deq[t * n], n) + 1e-30;
        }
    }

    // dense rows, plain and relu
    for (int relu = 0; relu < 2; relu++) {
        TS_OK(ts_cuda_dot_rows(type, n, d_wg, row_bytes, n_ff, d_xd, T, relu, d_a, NULL));
        std::vector<float> got = to_host(d_a, T * n_ff);
        int bad = 0;
        for (int64_t e = 0; e < T * n_ff; e++) {
            const float want = relu && g_ref[e] < 0.0f ? 0.0f : g_ref[e];
            bad += !(fabs(got[e] - want) <= g_tol[e]);
        }
        CHECK(bad == 0, "%s: dot_rows relu=%d: %d of %lld beyond tolerance", where, relu, bad, (long long) (T * n_ff));
    }

    // select_active: exact
    TS_OK(ts_cuda_select_active(d_logits, n_ff, T, tau, d_idx, d_count, NULL));
    std::vector<int32_t> idx_gpu = to_host(d_idx, T * n_ff), cnt_gpu = to_host(d_count, T);
    std::vector<int32_t> idx_ref((size_t) T * n_ff);
    std::vector<int64_t> cnt_ref(T);
    bool sel_ok = true;
    for (int64_t t = 0; t < T; t++) {
        cnt_ref[t] = ts_select_active(&logits[t * n_ff], n_ff, tau, &idx_ref[t * n_ff]);
        sel_ok = sel_ok && cnt_gpu[t] == cnt_ref[t] &&
                 memcmp(&idx_gpu[t * n_ff], &idx_ref[t * n_ff], cnt_ref[t] * 4) == 0;
    }
    CHECK(sel_ok, "%s: select_active differs from ts_select_active", where);

    // predicted gate/up on that list, both activations
    for (int act = 0; act < 2; act++) {
        TS_OK(ts_cuda_gate_up(type, (enum ts_act) act, n, d_wg, d_wu, row_bytes, n_ff, d_xd, T, d_idx, d_count, d_ac, NULL));
        std::vector<float> got = to_host(d_ac, T * n_ff);
        int bad = 0;
        for (int64_t t = 0; t < T; t++) {
            std::vector<float> want(cnt_ref[t] + 1);
            REF->gate_up(type, (enum ts_act) act, n, wg.bytes.data(), wu.bytes.data(), row_bytes, &xd_ref[t * x_bytes],
                         &idx_ref[t * n_ff], cnt_ref[t], want.data());
            for (int64_t j = 0; j < cnt_ref[t]; j++) {
                const int64_t e = t * n_ff + idx_ref[t * n_ff + j];
                bad += !(fabs(got[t * n_ff + j] - want[j]) <= act_tol(g_ref[e], u_ref[e], g_tol[e], u_tol[e]));
            }
        }
        CHECK(bad == 0, "%s: gate_up act=%d: %d results beyond tolerance", where, act, bad);
    }

    // exact mode, then select_nonzero on its output
    for (int act = 0; act < 2; act++) {
        TS_OK(ts_cuda_gate_up_exact(type, (enum ts_act) act, n, d_wg, d_wu, row_bytes, n_ff, d_xd, T, d_a, NULL));
        std::vector<float> got = to_host(d_a, T * n_ff), want((size_t) T * n_ff);
        int bad = 0;
        for (int64_t t = 0; t < T; t++) {
            REF->gate_up_exact(type, (enum ts_act) act, n, wg.bytes.data(), wu.bytes.data(), row_bytes,
                               &xd_ref[t * x_bytes], 0, n_ff, &want[t * n_ff]);
        }
        for (int64_t e = 0; e < T * n_ff; e++) {
            bad += !(fabs(got[e] - want[e]) <= act_tol(g_ref[e], u_ref[e], g_tol[e], u_tol[e]));
        }
        CHECK(bad == 0, "%s: gate_up_exact act=%d: %d of %lld beyond tolerance", where, act, bad, (long long) (T * n_ff));

        TS_OK(ts_cuda_select_nonzero(d_a, n_ff, T, d_idx, d_ac, d_count, NULL));
        std::vector<int32_t> nz_idx = to_host(d_idx, T * n_ff), nz_cnt = to_host(d_count, T);
        std::vector<float> nz_a = to_host(d_ac, T * n_ff);
        bool nz_ok = true;
        for (int64_t t = 0; t < T; t++) {
            std::vector<int32_t> ri(n_ff);
            std::vector<float> ra(n_ff);
            const int64_t rc = ts_select_nonzero(&got[t * n_ff], n_ff, ri.data(), ra.data());
            nz_ok = nz_ok && nz_cnt[t] == rc && memcmp(&nz_idx[t * n_ff], ri.data(), rc * 4) == 0 &&
                    memcmp(&nz_a[t * n_ff], ra.data(), rc * 4) == 0;
        }
        CHECK(nz_ok, "%s: select_nonzero act=%d differs from ts_select_nonzero", where, act);
    }

    // down: the predicted list with random activations
    std::vector<float> ac((size_t) T * n_ff, 0.0f);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < cnt_ref[t]; j++) ac[t * n_ff + j] = frand();
    }
    TS_OK(ts_cuda_select_active(d_logits, n_ff, T, tau, d_idx, d_count, NULL));
    CUDA_OK(cudaMemcpy(d_ac, ac.data(), ac.size() * 4, cudaMemcpyHostToDevice));
    std::vector<float> y_ref((size_t) T * n);
    std::vector<double> y_tol((size_t) T * n, 1e-30);
    for (int64_t t = 0; t < T; t++) {
        REF->axpy_rows(type, n, wd.bytes.data(), row_bytes, &idx_ref[t * n_ff], &ac[t * n_ff], cnt_ref[t], 0, n, &y_ref[t * n]);
        for (int64_t j = 0; j < cnt_ref[t]; j++) {
            const float * row = &wd.values[(size_t) idx_ref[t * n_ff + j] * n];
            for (int64_t col = 0; col < n; col++) y_tol[t * n + col] += 2.0 * cnt_ref[t] * eps * fabs((double) ac[t * n_ff + j] * row[col]);
        }
    }
    TS_OK(ts_cuda_down(type, n, d_wd, row_bytes, n_ff, d_idx, d_ac, d_count, T, 1, NULL, d_y, NULL));
    std::vector<float> y1 = to_host(d_y, T * n);
    CHECK(memcmp(y1.data(), y_ref.data(), y_ref.size() * 4) == 0, "%s: down n_split=1 not bit-identical to axpy_rows", where);
    for (int split : { 3, 7 }) {
        TS_OK(ts_cuda_down(type, n, d_wd, row_bytes, n_ff, d_idx, d_ac, d_count, T, split, d_part, d_y, NULL));
        std::vector<float> ya = to_host(d_y, T * n);
        TS_OK(ts_cuda_down(type, n, d_wd, row_bytes, n_ff, d_idx, d_ac, d_count, T, split, d_part, d_y, NULL));
        std::vector<float> yb = to_host(d_y, T * n);
        int bad = 0;
        for (int64_t e = 0; e < T * n; e++) bad += !(fabs(ya[e] - y_ref[e]) <= y_tol[e]);
        CHECK(bad == 0, "%s: down n_split=%d: %d of %lld beyond tolerance", where, split, bad, (long long) (T * n));
        CHECK(memcmp(ya.data(), yb.data(), ya.size() * 4) == 0, "%s: down n_split=%d not repeatable", where, split);
    }

    for (void * p : { (void *) d_x, (void *) d_xd, (void *) d_wg, (void *) d_wu, (void *) d_wd, (void *) d_logits,
                      (void *) d_idx, (void *) d_count, (void *) d_a, (void *) d_ac, (void *) d_y, (void *) d_part }) {
        CUDA_OK(cudaFree(p));
    }
}

// ---- argument checks (no GPU needed: they return before any CUDA call) -------------------------

static void test_args(void) {
    char dummy[64];
    void * p = dummy;
    int32_t * ip = (int32_t *) dummy;
    float * fp = (float *) dummy;
    CHECK(ts_cuda_quantize_q8_0(fp, (ts_block_q8_0 *) p, 33, 1, NULL) != NULL, "quantize n=33 accepted");
    CHECK(ts_cuda_dot_rows(TS_TYPE_Q4_0, 48, p, 64, 4, p, 1, false, fp, NULL) != NULL, "q4_0 n=48 accepted");
    CHECK(ts_cuda_dot_rows(TS_TYPE_F16, 64, p, 64, 4, p, 1, false, fp, NULL) != NULL, "row_bytes < row accepted");
    CHECK(ts_cuda_dot_rows((enum ts_type) 9, 64, p, 512, 4, p, 1, false, fp, NULL) != NULL, "bad type accepted");
    CHECK(ts_cuda_gate_up(TS_TYPE_F32, (enum ts_act) 7, 64, p, p, 256, 4, p, 1, ip, ip, fp, NULL) != NULL, "bad act accepted");
    CHECK(ts_cuda_gate_up(TS_TYPE_F32, TS_ACT_DRELU, 64, p, NULL, 256, 4, p, 1, ip, ip, fp, NULL) != NULL, "NULL w_up accepted");
    CHECK(ts_cuda_gate_up_exact(TS_TYPE_F32, TS_ACT_DRELU, 64, p, p, 256, 4, p, 0, fp, NULL) != NULL, "T=0 accepted");
    CHECK(ts_cuda_select_active(fp, 8, 1, NAN, ip, ip, NULL) != NULL, "NaN tau accepted");
    CHECK(ts_cuda_down(TS_TYPE_F32, 64, p, 256, 4, ip, fp, ip, 1, 0, NULL, fp, NULL) != NULL, "n_split=0 accepted");
    CHECK(ts_cuda_down(TS_TYPE_F32, 64, p, 256, 4, ip, fp, ip, 1, 4, NULL, fp, NULL) != NULL, "split without partial accepted");
    const char * m = ts_cuda_down(TS_TYPE_F32, 64, p, 256, 4, ip, fp, ip, 1, 0, NULL, fp, NULL);
    CHECK(m && strstr(m, "n_split"), "n_split error does not name n_split: %s", m ? m : "(null)");
}

int main(int argc, char ** argv) {
    test_args();
    if (argc > 1 && strcmp(argv[1], "--args-only") == 0) {
        printf("test_cuda_kernels --args-only: %d passed, %d failed\n", n_pass, n_fail);
        return n_fail ? 1 : 0;
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_cuda_kernels: no CUDA device (this test needs one; --args-only runs without)\n");
        return 2;
    }
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

    // Float types: odd n (scalar-load path) and n % 8 == 0 (16-byte loads), padded rows that
    // break the vector alignment. Quantised types: odd block counts.
    const config float_cfgs[] = { { 67, 37, 0, 1 }, { 67, 301, 4, 3 }, { 256, 301, 0, 1 }, { 256, 37, 0, 3 },
                                  { 264, 129, 8, 3 }, { 1000, 515, 0, 3 } };
    const config quant_cfgs[] = { { 96, 37, 0, 1 }, { 96, 301, 2, 3 }, { 224, 129, 0, 3 }, { 1024, 515, 0, 1 },
                                  { 4096, 131, 0, 3 } };
    const enum ts_type types[] = { TS_TYPE_F32, TS_TYPE_F16, TS_TYPE_BF16, TS_TYPE_Q8_0, TS_TYPE_Q4_0 };
    for (enum ts_type type : types) {
        const int before = n_fail;
        const bool quant = ts_dot_type(type) == TS_TYPE_Q8_0;
        for (const config & c : quant ? std::vector<config>(quant_cfgs, quant_cfgs + 5)
                                      : std::vector<config>(float_cfgs, float_cfgs + 6)) {
            test_config(type, c);
        }
        printf("%-5s %s\n", ts_type_name(type), n_fail == before ? "ok" : "FAILED");
    }
    printf("test_cuda_kernels: %d checks passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
