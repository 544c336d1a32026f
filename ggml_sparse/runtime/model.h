// model.h: a loaded model: hyper-parameters and ggml tensors whose data point into the
// memory-mapped GGUF file (runtime-internal).
#pragma once

#include "turbosparse.h"
#include "ggml.h"
#include "gguf.h"
#include "ggml-backend.h"

#include <stdbool.h>

// One transformer block's weights. FFN tensors are 2-D for dense models and stacked 3-D
// (_exps, expert index in ne2) for MoE; predictor tensors are NULL when absent.
struct ts_layer {
    struct ggml_tensor * attn_norm;
    struct ggml_tensor * wq, * wk, * wv, * wo;
    struct ggml_tensor * ffn_norm;
    struct ggml_tensor * ffn_gate_inp; // MoE router
    struct ggml_tensor * ffn_gate, * ffn_up, * ffn_down; // ffn_down is ffn_down_t when neuron-major
    struct ggml_tensor * ffn_down_t;   // the neuron-major down (== ffn_down when that is neuron-major;
                                       // also present for down_layout "both"), else NULL
    struct ggml_tensor * pred_fc1, * pred_fc2;
};

struct ts_model {
    struct ts_model_meta meta;

    struct gguf_context * gguf;
    struct ggml_context * ctx_w;   // tensor metadata, data in `mapping`
    void   * mapping;              // mmap of the whole file, or a copy in huge-page memory
    size_t   mapping_size;
    bool     mapped;

    struct ggml_tensor * tok_embd;
    struct ggml_tensor * output_norm;
    struct ggml_tensor * output;   // == tok_embd when tied
    struct ts_layer    * layers;
    float              * act_thresholds; // [n_layer] turbosparse.act_threshold.values, or NULL

    // ggml's CPU extra buffers holding the repacked weights (repack.c), one per buffer type
    ggml_backend_buffer_t repack_bufs[4];
    int                   n_repack_bufs;
    // the huge-page copies of the weights turbosparse's matmul reads (repack.c)
    void                * hp_buf;
    size_t                hp_size;
};
