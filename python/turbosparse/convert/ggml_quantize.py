"""The pinned ggml's own quantiser (libggml-base's ggml_quantize_chunk) through ctypes, for the
types whose blocks must be llama-quantize's bit for bit (K-quants and their fallbacks). Loaded
on first use only: the converter imports no native code until it encodes such a tensor.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import ConvertError


@lru_cache(maxsize=1)
def _libggml_base() -> ctypes.CDLL:
    spec = importlib.util.find_spec("libggml")
    if spec is None or not spec.origin:
        raise ConvertError("libggml-python (a dependency of turbosparse) is not installed; "
                           "it is needed to write K-quant types")
    root = Path(spec.origin).parent
    candidates = sorted((root / "lib64").glob("libggml-base.so*")) + sorted((root / "lib").glob("libggml-base.so*"))
    if not candidates:
        raise ConvertError(f"libggml-base.so not found under {root}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 [n_rows, n] -> uint8 [n_rows, row bytes] of qtype, by ggml_quantize_chunk (no
    importance matrix). gguf's type numbers are ggml's enum ggml_type values."""
    data = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n = data.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    if n % block != 0:
        raise ConvertError(f"{qtype.name}: row length {n} is not a multiple of its block size {block}")
    lib = _libggml_base()
    if lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise ConvertError(f"{qtype.name}: ggml needs an importance matrix to quantise it")
    out = np.empty((n_rows, n // block * type_size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), data.ctypes.data, out.ctypes.data, 0, n_rows, n, None)
    if written != out.nbytes:
        raise ConvertError(f"{qtype.name}: ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out
