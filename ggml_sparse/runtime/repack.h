// repack.h: moves the weights that only ggml's dense mul_mat ever reads into ggml's CPU
// "extra" buffer types (the repack buffer: Q4_0/Q8_0/... rows interleaved for faster GEMV and
// GEMM kernels), as llama.cpp does by default (runtime-internal).
#pragma once

#include "model.h"

#include <stddef.h>

// Repacks every eligible tensor of `m` for which ggml has an extra buffer type; the others keep
// pointing into the mapping. Fills meta.n_repacked / n_bytes_repacked. False with err filled
// only when a buffer cannot be allocated.
bool ts_model_repack(struct ts_model * m, char * err, size_t err_size);

// Frees the buffers of ts_model_repack.
void ts_model_repack_free(struct ts_model * m);
