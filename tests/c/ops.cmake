# The sparse-FFN ggml ops in real ggml graphs (ggml-sparse.h).
ts_add_test(test_ops SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ops.c LIBS ggml-sparse)
