# The runtime's loader and decode paths (tests/c/test_runtime.c).
ts_add_test(test_runtime SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_runtime.c LIBS ggml-sparse)
