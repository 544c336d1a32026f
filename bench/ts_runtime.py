"""Timing turbosparse through its C API (turbosparse.h) over cffi, in this process.

The library is found as: --lib PATH, else $TS_LIB or $TURBOSPARSE_LIB, else the installed
package's lib/libggml-sparse.so. Declarations come from the checkout's python/turbosparse/cdef/runtime.h.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cffi

MODES = {"dense": 0, "predicted": 1, "exact": 2, "threshold": 3}
_REPO = Path(__file__).resolve().parents[1]


def default_lib() -> Optional[Path]:
    """$TS_LIB or $TURBOSPARSE_LIB, else the installed package's library. Found through the
    installed distribution's files, not `import turbosparse`: the benchmark puts the checkout's
    python/ first on sys.path (for the converter), which shadows the installed package."""
    for var in ("TS_LIB", "TURBOSPARSE_LIB"):
        if os.environ.get(var):
            return Path(os.environ[var])
    try:
        from importlib import metadata

        cand = Path(str(metadata.distribution("turbosparse").locate_file("turbosparse/lib/libggml-sparse.so")))
        return cand if cand.is_file() else None
    except metadata.PackageNotFoundError:
        return None


class Runtime:
    def __init__(self, lib_path: Path):
        self.ffi = cffi.FFI()
        self.ffi.cdef((_REPO / "python" / "turbosparse" / "cdef" / "runtime.h").read_text())
        self.lib = self.ffi.dlopen(str(lib_path))
        self.path = lib_path


class BenchError(Exception):
    pass


@dataclass
class Timing:
    tok_s: float
    density: float  # ffn_density the runtime reports for the timed tokens


class Model:
    def __init__(self, rt: Runtime, path: Path, use_mmap: bool = True):
        self.rt = rt
        err = rt.ffi.new("char[1024]")
        params = rt.ffi.new("struct ts_model_params *")
        rt.lib.ts_model_params_init(params)
        params.use_mmap = 1 if use_mmap else 0  # 0: the whole file in huge-page RAM
        self.ptr = rt.lib.ts_model_load(str(path).encode(), params, err, 1024)
        if self.ptr == rt.ffi.NULL:
            raise BenchError(f"{path}: {rt.ffi.string(err).decode()}")
        self.meta = rt.ffi.new("struct ts_model_meta *")
        rt.lib.ts_model_get_meta(self.ptr, self.meta)

    def close(self) -> None:
        if self.ptr != self.rt.ffi.NULL:
            self.rt.lib.ts_model_free(self.ptr)
            self.ptr = self.rt.ffi.NULL


class Context:
    """One context per (model, mode, threshold); reset between measurements."""

    def __init__(self, model: Model, mode: str, n_threads: int, n_ctx: int, threshold: Optional[float] = None,
                 act_thresholds: Optional[list[float]] = None, collect_act_hist: bool = False):
        rt = model.rt
        self.rt, self.model = rt, model
        err = rt.ffi.new("char[1024]")
        p = rt.ffi.new("struct ts_context_params *")
        rt.lib.ts_context_params_init(p)
        p.n_ctx, p.n_threads, p.ffn_mode = n_ctx, n_threads, MODES[mode]
        if threshold is not None:
            p.use_threshold, p.threshold = 1, threshold
        p.collect_act_hist = int(collect_act_hist)
        if act_thresholds is not None:
            if len(act_thresholds) != model.meta.n_layer:
                raise BenchError(f"{len(act_thresholds)} thresholds for {model.meta.n_layer} layers")
            cuts = rt.ffi.new("float[]", [float(t) for t in act_thresholds])
            p.act_thresholds = cuts  # copied by ts_context_new
        self.ptr = rt.lib.ts_context_new(model.ptr, p, err, 1024)
        if self.ptr == rt.ffi.NULL:
            raise BenchError(f"context ({mode}): {rt.ffi.string(err).decode()}")
        self._logits = None
        got = rt.lib.ts_context_ffn_mode(self.ptr)
        if got != MODES[mode]:
            raise BenchError(f"asked for ffn mode {mode}, the runtime runs mode {got}")

    def _decode(self, tokens: list[int]) -> None:
        # the last token's logits are fetched, as llama-bench fetches them, so the output head runs
        toks = self.rt.ffi.new("int32_t[]", tokens)
        if self._logits is None:
            self._logits = self.rt.ffi.new("float[]", self.model.meta.n_vocab)
        rc = self.rt.lib.ts_decode(self.ptr, toks, len(tokens), self._logits, 0)
        if rc != 0:
            raise BenchError(f"ts_decode: {self.rt.ffi.string(self.rt.lib.ts_context_error(self.ptr)).decode()}")

    def _density(self) -> float:
        s = self.rt.ffi.new("struct ts_stats *")
        self.rt.lib.ts_context_get_stats(self.ptr, s)
        return float(s.ffn_density)

    def time_decode(self, tokens: list[int]) -> Timing:
        """As llama-bench's tg test: an empty cache, one warm-up token, then len(tokens) single
        token decodes (the warm-up is dropped, as llama-bench drops its warm-up run)."""
        self.rt.lib.ts_context_reset(self.ptr)
        self._decode(tokens[:1])
        self.rt.lib.ts_context_reset(self.ptr)
        t0 = time.perf_counter()
        for t in tokens:
            self._decode([t])
        dt = time.perf_counter() - t0
        return Timing(len(tokens) / dt, self._density())

    def time_prefill(self, tokens: list[int]) -> Timing:
        """As llama-bench's pp test: the prompt as one batch into an empty cache."""
        self.rt.lib.ts_context_reset(self.ptr)
        t0 = time.perf_counter()
        self._decode(tokens)
        dt = time.perf_counter() - t0
        return Timing(len(tokens) / dt, self._density())

    def act_hist(self, il: int):  # type: ignore[no-untyped-def]
        """collect_act_hist: layer il's |silu(gate)| histogram (numpy int64 [32768])."""
        import numpy as np
        out = np.zeros(32768, np.int64)
        ptr = self.rt.ffi.cast("int64_t *", self.rt.ffi.from_buffer(out))
        if self.rt.lib.ts_context_act_hist(self.ptr, il, ptr, out.size) != 0:
            raise BenchError("no activation histogram (collect_act_hist and the threshold mode)")
        return out

    def close(self) -> None:
        if self.ptr != self.rt.ffi.NULL:
            self.rt.lib.ts_context_free(self.ptr)
            self.ptr = self.rt.ffi.NULL
