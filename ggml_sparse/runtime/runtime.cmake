# The model runtime (GGUF loading, transformer graph, KV cache, tokenizer, sampler) goes into
# libggml-sparse; each file in runtime/ has one job. ts-main is the command-line front end.
file(GLOB TS_RUNTIME_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.c)
if(TS_RUNTIME_SOURCES)
    target_sources(ggml-sparse PRIVATE ${TS_RUNTIME_SOURCES})
    target_include_directories(ggml-sparse PRIVATE ${CMAKE_CURRENT_LIST_DIR})
endif()

if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/../tools/ts-main.c)
    add_executable(ts-main ${CMAKE_CURRENT_LIST_DIR}/../tools/ts-main.c)
    target_include_directories(ts-main PRIVATE ${CMAKE_CURRENT_LIST_DIR})
    target_link_libraries(ts-main PRIVATE ggml-sparse)
endif()
