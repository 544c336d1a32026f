# Kernel tests. test_kernels needs no ggml (it is also cross-compiled for aarch64 by
# tests/neon/run.sh); test_kernels_ggml checks our numerics against ggml's own.
ts_add_test(test_kernels SOURCES test_kernels.c $<TARGET_OBJECTS:ts_kernels>)
ts_add_test(test_kernels_ggml SOURCES test_kernels_ggml.c $<TARGET_OBJECTS:ts_kernels>
            LIBS ggml::ggml-base ggml::ggml-cpu)

# Micro-benchmark of the gather kernels (not a test; built on request only).
add_executable(bench_kernels EXCLUDE_FROM_ALL ${PROJECT_SOURCE_DIR}/bench/bench_kernels.c $<TARGET_OBJECTS:ts_kernels>)
target_include_directories(bench_kernels PRIVATE ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels)
target_link_libraries(bench_kernels PRIVATE m)

# One thread, one FFN layer: the dense mode's 16-row streams against the threshold mode's
# kernels (not a test; built on request only).
add_executable(bench_threshold_layer EXCLUDE_FROM_ALL ${PROJECT_SOURCE_DIR}/bench/bench_threshold_layer.c $<TARGET_OBJECTS:ts_kernels>)
target_include_directories(bench_threshold_layer PRIVATE ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels)
target_link_libraries(bench_threshold_layer PRIVATE m)
