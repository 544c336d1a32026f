# ggml_sparse_matmul, the dense product on the turbosparse kernels (src/matmul.c).
ts_add_test(test_matmul SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_matmul.c LIBS ggml-sparse)
