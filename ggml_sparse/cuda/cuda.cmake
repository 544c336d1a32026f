# cuda.cmake: the CUDA kernels (ts-cuda.h), their unit test and micro-benchmark, built when
# the top-level CMakeLists.txt is configured with -DTS_CUDA=ON (needs nvcc; no GPU is needed
# to build). The library is free of ggml; the test and benchmark run on a GPU only
# (tests/cuda/run.sh).
#
# Architectures: sm_80 SASS, sm_90 SASS + compute_90 PTX (newer GPUs JIT the PTX). Override
# with -DCMAKE_CUDA_ARCHITECTURES=... (e.g. "90" alone for a faster build on an H100/H200).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80-real 90)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

set(TS_CUDA_DIR ${CMAKE_CURRENT_LIST_DIR})
add_library(ts_cuda_kernels STATIC
    ${TS_CUDA_DIR}/quantize.cu
    ${TS_CUDA_DIR}/select.cu
    ${TS_CUDA_DIR}/dot_rows.cu
    ${TS_CUDA_DIR}/gate_up.cu
    ${TS_CUDA_DIR}/gate_up_exact.cu
    ${TS_CUDA_DIR}/down.cu)
target_include_directories(ts_cuda_kernels PUBLIC ${TS_CUDA_DIR} ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels)
target_link_libraries(ts_cuda_kernels PUBLIC CUDA::cudart)
# Warnings are errors here so that CI's compile-only stage catches what it can.
target_compile_options(ts_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --Werror=all-warnings>)

# The CPU reference the test compares against: the scalar table, compiled as the CPU build
# compiles it (no contraction).
add_library(ts_cuda_cpu_ref OBJECT ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels/common.c
                                   ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels/r16.c
                                   ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels/scalar.c)
target_include_directories(ts_cuda_cpu_ref PUBLIC ${PROJECT_SOURCE_DIR}/ggml_sparse/kernels)
target_compile_options(ts_cuda_cpu_ref PRIVATE -ffp-contract=off)

add_executable(test_cuda_kernels ${PROJECT_SOURCE_DIR}/tests/cuda/test_cuda_kernels.cu $<TARGET_OBJECTS:ts_cuda_cpu_ref>)
target_link_libraries(test_cuda_kernels PRIVATE ts_cuda_kernels m)

add_executable(bench_cuda_kernels ${PROJECT_SOURCE_DIR}/tests/cuda/bench_cuda_kernels.cu $<TARGET_OBJECTS:ts_cuda_cpu_ref>)
target_link_libraries(bench_cuda_kernels PRIVATE ts_cuda_kernels)
