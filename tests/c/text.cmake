# Tokenizer and sampler (runtime/tokenizer.c, runtime/sampler.c). The tokenizer's tests compare
# with the sentencepiece library, so they live in tests/python/test_tokenizer.py.
ts_add_test(test_sampler SOURCES test_sampler.c LIBS ggml-sparse)
ts_add_test(test_tokenizer SOURCES test_tokenizer.c LIBS ggml-sparse)
