# ggml_sparse_matmul, the dense product on the turbosparse kernels (src/matmul.c).
ts_add_test(test_matmul SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_matmul.c LIBS ggml-sparse)

# ggml's mul_mat against ggml_sparse_matmul on one matrix (not a test; built on request only).
add_executable(bench_matmul EXCLUDE_FROM_ALL ${PROJECT_SOURCE_DIR}/bench/bench_matmul.c)
target_include_directories(bench_matmul PRIVATE ${PROJECT_SOURCE_DIR}/ggml_sparse/include)
target_link_libraries(bench_matmul PRIVATE ggml-sparse m)
