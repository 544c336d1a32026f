"""ggml's own quantiser (libggml-base's ggml_quantize_chunk) through ctypes: the reference the
converter's blocks are compared with, and the encoder of fixtures in types the converter does
not write (a Q6_K head as llama.cpp's and PowerInfer's quantize make it)."""

from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
# ggml's enum ggml_type values (ggml.h of libggml-python 0.20.2)
GGML_TYPE = {Q.F16: 1, Q.Q4_0: 2, Q.Q5_0: 6, Q.Q5_1: 7, Q.Q8_0: 8, Q.Q4_K: 12, Q.Q5_K: 13, Q.Q6_K: 14, Q.BF16: 30}


@lru_cache(maxsize=1)
def libggml_base() -> ctypes.CDLL:
    spec = importlib.util.find_spec("libggml")
    assert spec is not None and spec.origin, "libggml-python (a dependency of turbosparse) is not installed"
    lib_dir = Path(spec.origin).parent / "lib64"
    candidates = sorted(lib_dir.glob("libggml-base.so*")) or sorted((Path(spec.origin).parent / "lib").glob(
        "libggml-base.so*"))
    assert candidates, f"libggml-base.so not found under {lib_dir}"
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_encode(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Rows of float32 -> ggml's blocks of qtype, as bytes."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    nrows, n_per_row = data.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    out = np.zeros(nrows * (n_per_row // block) * type_size, dtype=np.uint8)
    written = libggml_base().ggml_quantize_chunk(GGML_TYPE[qtype], data.ctypes.data, out.ctypes.data, 0, nrows,
                                                 n_per_row, None)
    assert written == out.nbytes
    return out
