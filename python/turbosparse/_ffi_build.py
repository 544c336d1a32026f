"""Generates turbosparse/_turbosparse_cffi.py, the cffi module of the package.

cffi's out-of-line ABI mode: ``set_source(..., None)`` emits a pure-Python module holding the
parsed declarations, and the native library is opened at run time with ``ffi.dlopen``
(turbosparse/_lib.py). Why ABI mode and not API mode: the wheel then carries no
CPython-ABI-specific extension module, only libggml-sparse.so and a .py file, so one native
build serves every Python version (and PyPy); nothing but cffi's own backend is compiled
against Python. The price, declarations that must match the C headers by hand instead of
being checked by a C compiler, is paid once: the declarations are small, kept beside the
headers they copy, and the tests check the one struct whose layout matters
(struct ggml_tensor). cffi releases the GIL around every call in either mode, so ggml's
worker threads run while other Python threads do.

Every declaration file in cdef/*.h is read, in sorted order, so each part of the library
(ggml, the ops, the runtime, the tokenizer, ...) keeps its own file.

Usage: python _ffi_build.py [OUTPUT.py]   (default: _turbosparse_cffi.py beside this file)
"""
from __future__ import annotations

import sys
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent


def cdef_files() -> list[Path]:
    return sorted((HERE / "cdef").glob("*.h"))


def build_ffi() -> cffi.FFI:
    ffibuilder = cffi.FFI()
    for path in cdef_files():
        try:
            ffibuilder.cdef(path.read_text())
        except cffi.CDefError as e:
            raise SystemExit(f"{path}: {e}") from e
    ffibuilder.set_source("turbosparse._turbosparse_cffi", None)
    return ffibuilder


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else HERE / "_turbosparse_cffi.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    build_ffi().emit_python_code(str(out))


if __name__ == "__main__":
    main(sys.argv)
