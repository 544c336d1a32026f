#!/bin/sh
# tests/neon/run.sh: cross-compiles the kernels and tests/c/test_kernels.c for aarch64 and
# runs the test under qemu-aarch64, once for the base ISA (armv8-a: NEON) and once with the
# dot-product extension (armv8.2-a+dotprod), so both code paths of kernels/neon.c run.
# Needs the Debian packages gcc-aarch64-linux-gnu and qemu-user.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cc=${CC_AARCH64:-aarch64-linux-gnu-gcc}
qemu=${QEMU_AARCH64:-qemu-aarch64}

for tool in "$cc" "$qemu"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "tests/neon/run.sh: '$tool' not found; install the Debian packages gcc-aarch64-linux-gnu and qemu-user" >&2
        exit 2
    fi
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
k="$root/ggml_sparse/kernels"

for march in armv8-a armv8.2-a+dotprod; do
    echo "== aarch64 -march=$march"
    # -ffp-contract=off as in the CMake build: gcc contracts by default on aarch64, and the
    # bit-identity of the down projection relies on only the FMAs the code asks for.
    "$cc" -std=c11 -O2 -static -march="$march" -ffp-contract=off -Wall -Wextra -DTS_HAVE_NEON -I"$k" \
        "$k/common.c" "$k/dispatch.c" "$k/r16.c" "$k/scalar.c" "$k/neon.c" "$k/neon-kquants.c" "$root/tests/c/test_kernels.c" \
        -lm -o "$out/test_kernels"
    "$qemu" -cpu max "$out/test_kernels"
done
echo "tests/neon/run.sh: passed"
