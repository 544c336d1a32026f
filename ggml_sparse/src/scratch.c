// scratch.c: the per-thread scratch buffer (see scratch.h).
#include "scratch.h"

#include "ggml.h"

#include <pthread.h>
#include <stdlib.h>

struct scratch {
    void * data;
    size_t size;
};

static _Thread_local struct scratch tls_scratch;

// The key exists only for its destructor: it frees a thread's buffer when the thread ends
// (ggml's disposable threadpools create and end threads on every compute).
static pthread_key_t  scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_release(void * data) {
    free(data);
}

static void scratch_key_create(void) {
    if (pthread_key_create(&scratch_key, scratch_release) != 0) {
        GGML_ABORT("turbosparse: pthread_key_create failed");
    }
}

void * ts_scratch(size_t size) {
    if (tls_scratch.size >= size && tls_scratch.data) {
        return tls_scratch.data;
    }
    pthread_once(&scratch_once, scratch_key_create);
    free(tls_scratch.data);
    // Grow geometrically in 64 KiB steps so that a sequence of growing layers settles fast.
    size_t want = tls_scratch.size * 2 > size ? tls_scratch.size * 2 : size;
    want = (want + 65535) & ~(size_t) 65535;
    tls_scratch.data = aligned_alloc(64, want);
    if (!tls_scratch.data) {
        GGML_ABORT("turbosparse: out of memory for %zu bytes of op scratch", want);
    }
    tls_scratch.size = want;
    pthread_setspecific(scratch_key, tls_scratch.data);
    return tls_scratch.data;
}
