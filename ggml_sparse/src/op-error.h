// op-error.h: how the ggml-sparse op builders report a refusal (shared by ops.c, matmul.c,
// moe-ops.c, threshold.c).
#pragma once

#include <stdbool.h>
#include <stddef.h>

// Writes the message into err (when err is not NULL and err_size > 0) and returns false, so a
// check reads `return ts_op_fail(err, err_size, "...", ...);`.
bool ts_op_fail(char * err, size_t err_size, const char * fmt, ...) __attribute__((format(printf, 3, 4)));
