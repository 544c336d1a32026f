// op-error.c: see op-error.h.
#include "op-error.h"

#include <stdarg.h>
#include <stdio.h>

bool ts_op_fail(char * err, size_t err_size, const char * fmt, ...) {
    if (err && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return false;
}
