# Installs the native parts of the Python package into the wheel: libggml-sparse (and
# ts-main) under turbosparse/lib, and the out-of-line ABI-mode cffi module generated from
# python/turbosparse/_ffi_build.py and every declaration file in cdef/*.h.
install(TARGETS ggml-sparse LIBRARY DESTINATION turbosparse/lib)

# ts-main, the command-line front end (ggml_sparse/tools/ts-main.c)
if(TARGET ts-main)
    # turbosparse/bin/ts-main finds libggml-sparse in turbosparse/lib, ggml as the library does
    set_target_properties(ts-main PROPERTIES INSTALL_RPATH "$ORIGIN/../lib;${TS_RPATH}")
    install(TARGETS ts-main RUNTIME DESTINATION turbosparse/bin)
endif()

# ---- the cffi module: turbosparse/_turbosparse_cffi.py (pure Python, see _ffi_build.py) ----
file(GLOB TS_CDEF_FILES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/cdef/*.h)
set(TS_CFFI_MODULE ${CMAKE_CURRENT_BINARY_DIR}/turbosparse/_turbosparse_cffi.py)
add_custom_command(
    OUTPUT  ${TS_CFFI_MODULE}
    COMMAND ${Python_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/_ffi_build.py ${TS_CFFI_MODULE}
    DEPENDS ${CMAKE_CURRENT_LIST_DIR}/_ffi_build.py ${TS_CDEF_FILES}
    COMMENT "cffi: generating turbosparse/_turbosparse_cffi.py"
    VERBATIM)
add_custom_target(turbosparse_cffi ALL DEPENDS ${TS_CFFI_MODULE})
install(FILES ${TS_CFFI_MODULE} DESTINATION turbosparse)
