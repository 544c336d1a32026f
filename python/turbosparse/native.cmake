# Installs the native parts of the Python package into the wheel: libggml-sparse (and
# later ts-main) under turbosparse/lib, and the out-of-line ABI-mode cffi module generated
# from python/turbosparse/_ffi_build.py.
install(TARGETS ggml-sparse LIBRARY DESTINATION turbosparse/lib)

# ts-main, the command-line front end (ggml_sparse/tools/ts-main.c)
if(TARGET ts-main)
    # turbosparse/bin/ts-main finds libggml-sparse in turbosparse/lib, ggml as the library does
    set_target_properties(ts-main PROPERTIES INSTALL_RPATH "$ORIGIN/../lib;${TS_RPATH}")
    install(TARGETS ts-main RUNTIME DESTINATION turbosparse/bin)
endif()
