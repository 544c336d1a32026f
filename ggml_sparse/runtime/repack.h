// repack.h: moves the weights that only dense products ever read out of the file mapping,
// into the layout of the kernel that reads them (runtime-internal; see repack.c): huge-page
// copies in the file's layout for turbosparse's matmul where it is the faster choice
// (ggml_sparse_matmul_preferred), ggml's CPU repack buffer (interleaved rows for its faster
// GEMV/GEMM, as llama.cpp does by default) for the rest.
#pragma once

#include "model.h"

#include <stddef.h>

// Moves every eligible tensor of `m` that either kernel wants in RAM; the others keep pointing
// into the mapping. Fills meta.n_repacked / n_bytes_repacked with both kinds together (tensors
// and bytes moved into RAM). False with err filled only when a buffer cannot be allocated.
bool ts_model_repack(struct ts_model * m, char * err, size_t err_size);

// Frees the buffers of ts_model_repack.
void ts_model_repack_free(struct ts_model * m);

// `size` bytes aligned to 2 MiB, advised for transparent huge pages before the first touch
// (free with free()); NULL when out of memory.
void * ts_alloc_huge(size_t size);
