// bench_cuda_kernels: achieved DRAM bandwidth of the sparse gate/up and down kernels at the
// Mistral-7B FFN shape (n_embd 4096, n_ff 14336), T = 1, predicted density 10% (and exact
// mode), against the H200's ~4.8 TB/s. Layers are rotated (16 copies, far more than the L2)
// so the weights come from DRAM, each with its own random active set. Bytes counted are the
// weight rows the kernel must read; timings are CUDA-event medians over the rotation.
// Not a test: prints a table, asserts nothing.
#include "ts-cuda.h"

#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#define CUDA_OK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
    printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)
#define TS_OK(call) do { const char * m_ = (call); if (m_) { printf("ts_cuda error '%s' at %s:%d\n", m_, __FILE__, __LINE__); exit(1); } } while (0)

static const int64_t N_EMBD = 4096, N_FF = 14336, LAYERS = 16, REPS = 4;
static const double  PEAK_GBS = 4800.0;

static __device__ uint32_t hash32(uint64_t v) {
    v ^= v >> 33; v *= 0xff51afd7ed558ccdull; v ^= v >> 33; v *= 0xc4ceb9fe1a85ec53ull; v ^= v >> 33;
    return (uint32_t) v;
}
static __device__ float hash_unit(uint64_t v) { return (hash32(v) >> 8) * (2.0f / (1 << 24)) - 1.0f; } // [-1, 1)

// Random but valid bytes for a matrix of `type`: finite halves, small block scales.
static __global__ void fill_kernel(int type, uint8_t * w, int64_t n_bytes, int64_t block_bytes, uint64_t seed) {
    for (int64_t e = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; e < n_bytes / 2; e += (int64_t) gridDim.x * blockDim.x) {
        uint16_t * h = (uint16_t *) w + e;
        const float v = hash_unit(seed + e);
        if (type == TS_TYPE_F16) *h = __half_as_ushort(__float2half_rn(v * 0.05f));
        else if (type == TS_TYPE_BF16) *h = (uint16_t) (__float_as_uint(v * 0.05f) >> 16);
        else if ((e * 2) % block_bytes == 0) *h = __half_as_ushort(__float2half_rn(0.001f + 0.001f * fabsf(v))); // scale
        else *h = (uint16_t) hash32(seed + e);
    }
}
static __global__ void fill_f32(float * x, int64_t n, uint64_t seed, float lo) {
    for (int64_t e = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t) gridDim.x * blockDim.x) {
        x[e] = lo < 0 ? hash_unit(seed + e) : 0.5f * (hash_unit(seed + e) + 1.0f); // logits in [0, 1)
    }
}

struct timer {
    cudaEvent_t a, b;
    timer() { CUDA_OK(cudaEventCreate(&a)); CUDA_OK(cudaEventCreate(&b)); }
    void start() { CUDA_OK(cudaEventRecord(a)); }
    float stop_ms() { CUDA_OK(cudaEventRecord(b)); CUDA_OK(cudaEventSynchronize(b)); float ms; CUDA_OK(cudaEventElapsedTime(&ms, a, b)); return ms; }
};

static double median(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

static void row(const char * what, const char * type, double bytes, double us) {
    const double gbs = bytes / (us * 1e-6) / 1e9;
    printf("%-34s %-5s %10.1f MB %9.1f us %8.0f GB/s %5.1f%% of %.1f TB/s\n", what, type, bytes / 1e6, us, gbs,
           100.0 * gbs / PEAK_GBS, PEAK_GBS / 1000.0);
}

static void bench_type(enum ts_type type) {
    const size_t rb = ts_row_size(type, N_EMBD);
    const size_t mat = rb * N_FF;
    const bool quant = ts_dot_type(type) == TS_TYPE_Q8_0;
    uint8_t * w;
    CUDA_OK(cudaMalloc(&w, 3 * mat * LAYERS));
    const int64_t block_bytes = type == TS_TYPE_Q8_0 ? 34 : type == TS_TYPE_Q4_0 ? 18 : 2;
    for (int64_t m = 0; m < 3 * LAYERS; m++) {
        fill_kernel<<<1024, 256>>>((int) type, w + m * mat, (int64_t) mat, block_bytes, 1000003ull * m);
    }
    float * x, * logits, * a, * ac, * y, * part;
    void * xd;
    int32_t * idx, * count;
    const int split = 32;
    CUDA_OK(cudaMalloc(&x, N_EMBD * 4));
    CUDA_OK(cudaMalloc(&xd, N_EMBD * 4));
    CUDA_OK(cudaMalloc(&logits, LAYERS * N_FF * 4));
    CUDA_OK(cudaMalloc(&a, N_FF * 4));
    CUDA_OK(cudaMalloc(&ac, LAYERS * N_FF * 4));
    CUDA_OK(cudaMalloc(&y, N_EMBD * 4));
    CUDA_OK(cudaMalloc(&part, ts_cuda_down_partial_bytes(N_EMBD, 1, split)));
    CUDA_OK(cudaMalloc(&idx, LAYERS * N_FF * 4));
    CUDA_OK(cudaMalloc(&count, LAYERS * 4));
    fill_f32<<<64, 256>>>(x, N_EMBD, 7, -1.0f);
    fill_f32<<<1024, 256>>>(logits, LAYERS * N_FF, 11, 0.0f);
    fill_f32<<<1024, 256>>>(ac, LAYERS * N_FF, 13, -1.0f);
    if (quant) TS_OK(ts_cuda_quantize_q8_0(x, (ts_block_q8_0 *) xd, N_EMBD, 1, NULL));
    else CUDA_OK(cudaMemcpy(xd, x, N_EMBD * 4, cudaMemcpyDeviceToDevice));
    for (int64_t l = 0; l < LAYERS; l++) { // 10% density: logits uniform in [0, 1), tau 0.9
        TS_OK(ts_cuda_select_active(logits + l * N_FF, N_FF, 1, 0.9f, idx + l * N_FF, count + l, NULL));
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<int32_t> cnt(LAYERS);
    CUDA_OK(cudaMemcpy(cnt.data(), count, LAYERS * 4, cudaMemcpyDeviceToHost));
    double mean_cnt = 0;
    for (int32_t c : cnt) mean_cnt += c / (double) LAYERS;

    const char * tn = ts_type_name(type);
    timer tm;
    auto layer = [&](int64_t l, int64_t m) { return w + (3 * l + m) * mat; };
    std::vector<double> us;

    // predicted gate/up
    us.clear();
    for (int r = 0; r < REPS; r++) for (int64_t l = 0; l < LAYERS; l++) {
        tm.start();
        TS_OK(ts_cuda_gate_up(type, TS_ACT_DRELU, N_EMBD, layer(l, 0), layer(l, 1), rb, N_FF, xd, 1, idx + l * N_FF, count + l, ac + l * N_FF, NULL));
        us.push_back(1000.0 * tm.stop_ms());
    }
    row("gate_up predicted (10%)", tn, 2.0 * mean_cnt * rb, median(us));

    // dense-equivalent: the same kernel on every row (count = n_ff), the kernel's ceiling
    std::vector<int32_t> all(N_FF);
    for (int64_t i = 0; i < N_FF; i++) all[i] = (int32_t) i;
    int32_t * idx_all, * cnt_all;
    CUDA_OK(cudaMalloc(&idx_all, N_FF * 4));
    CUDA_OK(cudaMalloc(&cnt_all, 4));
    const int32_t nff = (int32_t) N_FF;
    CUDA_OK(cudaMemcpy(idx_all, all.data(), N_FF * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(cnt_all, &nff, 4, cudaMemcpyHostToDevice));
    us.clear();
    for (int64_t l = 0; l < LAYERS; l++) {
        tm.start();
        TS_OK(ts_cuda_gate_up(type, TS_ACT_DRELU, N_EMBD, layer(l, 0), layer(l, 1), rb, N_FF, xd, 1, idx_all, cnt_all, a, NULL));
        us.push_back(1000.0 * tm.stop_ms());
    }
    row("gate_up all rows (100%)", tn, 2.0 * N_FF * rb, median(us));

    // exact mode: every gate row, up rows where gate > 0 (counted after the fact)
    us.clear();
    std::vector<double> bytes;
    std::vector<float> ah(N_FF);
    for (int64_t l = 0; l < LAYERS; l++) {
        tm.start();
        TS_OK(ts_cuda_gate_up_exact(type, TS_ACT_DRELU, N_EMBD, layer(l, 0), layer(l, 1), rb, N_FF, xd, 1, a, NULL));
        us.push_back(1000.0 * tm.stop_ms());
    }
    // the positive-gate share is that of the last layer's inputs; dots are random, ~half
    int64_t n_pos = 0;
    TS_OK(ts_cuda_dot_rows(type, N_EMBD, layer(LAYERS - 1, 0), rb, N_FF, xd, 1, false, a, NULL));
    CUDA_OK(cudaMemcpy(ah.data(), a, N_FF * 4, cudaMemcpyDeviceToHost));
    for (float v : ah) n_pos += v > 0.0f;
    row("gate_up exact (gate>0 share below)", tn, (double) (N_FF + n_pos) * rb, median(us));
    printf("%-34s %-5s gate>0 share %.2f\n", "", tn, n_pos / (double) N_FF);

    // down, one chain per column (bit-identical to the CPU) and split
    for (int s : { 1, 8, split }) {
        us.clear();
        for (int r = 0; r < REPS; r++) for (int64_t l = 0; l < LAYERS; l++) {
            tm.start();
            TS_OK(ts_cuda_down(type, N_EMBD, layer(l, 2), rb, N_FF, idx + l * N_FF, ac + l * N_FF, count + l, 1, s, part, y, NULL));
            us.push_back(1000.0 * tm.stop_ms());
        }
        char what[64];
        snprintf(what, sizeof what, "down predicted (10%%) n_split=%d", s);
        row(what, tn, mean_cnt * rb, median(us));
    }

    // selection
    us.clear();
    for (int64_t l = 0; l < LAYERS; l++) {
        tm.start();
        TS_OK(ts_cuda_select_active(logits + l * N_FF, N_FF, 1, 0.9f, idx + l * N_FF, count + l, NULL));
        us.push_back(1000.0 * tm.stop_ms());
    }
    printf("%-34s %-5s %23.1f us (n_ff logits -> list)\n", "select_active", tn, median(us));
    printf("%-34s %-5s mean active %.0f of %lld (%.1f%%)\n\n", "", tn, mean_cnt, (long long) N_FF, 100.0 * mean_cnt / N_FF);

    for (void * p : { (void *) w, (void *) x, (void *) xd, (void *) logits, (void *) a, (void *) ac, (void *) y,
                      (void *) part, (void *) idx, (void *) count, (void *) idx_all, (void *) cnt_all }) {
        CUDA_OK(cudaFree(p));
    }
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("bench_cuda_kernels: no CUDA device\n");
        return 2;
    }
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB; shape n_embd %lld n_ff %lld, T 1, %lld layers rotated\n\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, (long long) N_EMBD, (long long) N_FF, (long long) LAYERS);
    for (enum ts_type type : { TS_TYPE_F16, TS_TYPE_BF16, TS_TYPE_Q8_0, TS_TYPE_Q4_0 }) bench_type(type);
    return 0;
}
