// profile.h: per-node timing of a context's graphs, on when TURBOSPARSE_PROFILE is set
// (runtime-internal; see profile.c).
#pragma once

#include "ggml.h"
#include "ggml-cpu.h"

struct ts_profile;

struct ts_profile * ts_profile_new_from_env(void); // NULL unless TURBOSPARSE_PROFILE=1
enum ggml_status    ts_profile_compute(struct ts_profile * p, struct ggml_cgraph * gf, int n_threads,
                                       struct ggml_threadpool * tp);
void                ts_profile_free(struct ts_profile * p); // prints the table, then frees
