# Tokenizer and sampler (runtime/tokenizer.c, runtime/sampler.c). The tokenizer's tests compare
# with the sentencepiece library, so they live in tests/python/test_tokenizer.py.
ts_add_test(test_sampler SOURCES test_sampler.c LIBS ggml-sparse)
ts_add_test(test_tokenizer SOURCES test_tokenizer.c LIBS ggml-sparse)
ts_add_test(test_tokenizer_bpe SOURCES test_tokenizer_bpe.c LIBS ggml-sparse)

# llama.cpp's tokenizer vectors (models/ggml-vocab-*.gguf with .inp/.out). They are not in this
# repository (the vocabularies are 1.7-7.8 MB each): tests/run.sh downloads the llama-cpp-python
# sdist into build/ and passes its models/ folder as TS_LLAMACPP_MODELS; without it the test
# reports itself skipped (exit 77), and run.sh never leaves it unset.
set(TS_LLAMACPP_MODELS "$ENV{TS_LLAMACPP_MODELS}" CACHE PATH "llama.cpp's models/ folder (tokenizer vectors)")
ts_add_test(test_tokenizer_vocab SOURCES test_tokenizer_vocab.c LIBS ggml-sparse
    ARGS "${TS_LLAMACPP_MODELS}" llama-spm llama-bpe qwen2 gpt-2 deepseek-llm starcoder)
set_tests_properties(test_tokenizer_vocab PROPERTIES SKIP_RETURN_CODE 77)
