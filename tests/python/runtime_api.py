"""A thin test-side wrapper of the runtime C API (turbosparse.h) over cffi."""
from __future__ import annotations

import os
from pathlib import Path

import cffi
import numpy as np


def _open():
    """The installed package's library and declarations; TS_LIB=path overrides the library
    (a build tree's libggml-sparse.so)."""
    try:
        import turbosparse

        pkg = Path(list(turbosparse.__path__)[0])
    except ImportError:  # not installed: the source tree (TS_LIB must then name the library)
        pkg = Path(__file__).resolve().parents[2] / "python" / "turbosparse"
    lib_path = os.environ.get("TS_LIB") or str(pkg / "lib" / "libggml-sparse.so")
    ffi = cffi.FFI()
    ffi.cdef((pkg / "cdef" / "runtime.h").read_text())
    return ffi, ffi.dlopen(lib_path), pkg / "cdef"


ffi, lib, CDEF_DIR = _open()

MODES = {"auto": -1, "dense": 0, "predicted": 1, "exact": 2, "threshold": 3}


class RuntimeError_(Exception):
    pass


class Model:
    def __init__(self, path: str | Path, use_mmap: bool = True, repack: bool = True):
        err = ffi.new("char[1024]")
        params = ffi.new("struct ts_model_params *")
        lib.ts_model_params_init(params)
        params.use_mmap = int(use_mmap)
        params.repack = int(repack)
        self.ptr = lib.ts_model_load(str(path).encode(), params, err, 1024)
        if self.ptr == ffi.NULL:
            raise RuntimeError_(ffi.string(err).decode())
        self.meta = ffi.new("struct ts_model_meta *")
        lib.ts_model_get_meta(self.ptr, self.meta)

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.ts_model_free(self.ptr)
            self.ptr = ffi.NULL

    def __del__(self):
        self.close()


class Context:
    def __init__(self, model: Model, n_ctx: int = 128, n_threads: int = 1, mode: str = "auto",
                 threshold: float | None = None, kv_f32: bool = True):
        self.model = model
        err = ffi.new("char[1024]")
        p = ffi.new("struct ts_context_params *")
        lib.ts_context_params_init(p)
        p.n_ctx, p.n_threads, p.ffn_mode, p.kv_f32 = n_ctx, n_threads, MODES[mode], int(kv_f32)
        if threshold is not None:
            p.use_threshold, p.threshold = 1, threshold
        self.ptr = lib.ts_context_new(model.ptr, p, err, 1024)
        if self.ptr == ffi.NULL:
            raise RuntimeError_(ffi.string(err).decode())
        self.n_vocab = model.meta.n_vocab

    def decode(self, tokens: list[int], logits_all: bool = True) -> np.ndarray:
        n = len(tokens)
        toks = ffi.new("int32_t[]", list(tokens))
        out = np.zeros((n if logits_all else 1, self.n_vocab), dtype=np.float32)
        rc = lib.ts_decode(self.ptr, toks, n, ffi.cast("float *", out.ctypes.data), int(logits_all))
        if rc != 0:
            raise RuntimeError_(ffi.string(lib.ts_context_error(self.ptr)).decode())
        return out

    def set_act_thresholds(self, values) -> None:
        vals = [float(v) for v in values]
        if lib.ts_context_set_act_thresholds(self.ptr, ffi.new("float[]", vals), len(vals)) != 0:
            raise RuntimeError_(ffi.string(lib.ts_context_error(self.ptr)).decode())

    def layer_density(self, il: int) -> float:
        c, t = ffi.new("int64_t *"), ffi.new("int64_t *")
        assert lib.ts_context_layer_stats(self.ptr, il, c, t) == 0
        return c[0] / t[0]

    def stats(self):
        s = ffi.new("struct ts_stats *")
        lib.ts_context_get_stats(self.ptr, s)
        return s

    @property
    def n_past(self) -> int:
        return lib.ts_context_n_past(self.ptr)

    def reset(self) -> None:
        lib.ts_context_reset(self.ptr)

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.ts_context_free(self.ptr)
            self.ptr = ffi.NULL

    def __del__(self):
        self.close()
