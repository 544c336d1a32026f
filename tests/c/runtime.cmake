# The runtime's loader and decode paths (tests/c/test_runtime.c).
ts_add_test(test_runtime SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_runtime.c LIBS ggml-sparse)
# Several sequences in one context (tests/c/test_batch.c), on the bundled model.
ts_add_test(test_batch SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_batch.c LIBS ggml-sparse
            ARGS ${PROJECT_SOURCE_DIR}/python/turbosparse/models/default.gguf)
