# Installs the native parts of the Python package into the wheel: libggml-sparse (and
# later ts-main) under turbosparse/lib, and the out-of-line ABI-mode cffi module generated
# from python/turbosparse/_ffi_build.py.
install(TARGETS ggml-sparse LIBRARY DESTINATION turbosparse/lib)
