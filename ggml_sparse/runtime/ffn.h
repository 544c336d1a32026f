// ffn.h: the feed-forward block of one layer, dense or mixture of experts (runtime-internal).
#pragma once

#include "context.h"

// y [n_embd, n] for the FFN input x (normed) and the residual stream before the norm.
struct ggml_tensor * ts_build_ffn(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                  struct ggml_tensor * x, struct ggml_tensor * residual);

// One FFN (one layer, or one expert's 2-D slices): what ggml_sparse_ffn computes.
// logit_bias: NULL, or f32 [1, n] added to the predictor logits of each token (predicted mode):
// -INFINITY there makes the token predict no neuron (an MoE token not routed to this expert).
struct ggml_tensor * ts_build_ffn_one(struct ts_context * c, struct ggml_context * g,
                                      struct ggml_tensor * x, struct ggml_tensor * u,
                                      struct ggml_tensor * fc1, struct ggml_tensor * fc2,
                                      struct ggml_tensor * w_gate, struct ggml_tensor * w_up,
                                      struct ggml_tensor * w_down, struct ggml_tensor * logit_bias);

// Whether the MoE ops read these experts' stacked weights with our kernels (types with
// kernels where ours beat ggml's on this CPU, plain layout): then they stay out of ggml's
// repacked buffers (repack.c) and dense mode runs through the MoE ops too (moe.c).
bool ts_moe_experts_ours(const struct ts_layer * l);

// The mixture-of-experts FFN (moe.c).
struct ggml_tensor * ts_build_moe(struct ts_context * c, struct ggml_context * g, const struct ts_layer * l,
                                  struct ggml_tensor * x, struct ggml_tensor * residual);
