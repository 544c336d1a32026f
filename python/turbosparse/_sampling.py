"""The C sampler (ggml_sparse/runtime/sampler.h) and the stop-string filter of generation."""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, List, Sequence, Union

import numpy as np

from ._lib import load

ffi, lib = load()
from .errors import SamplingError


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return v


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's sampling chain: repetition penalty, top-k, top-p, min-p, temperature."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    @staticmethod
    def checked(temperature: Any, top_k: Any, top_p: Any, min_p: Any, repeat_penalty: Any,
                repeat_last_n: Any) -> "SamplingParams":
        p = SamplingParams(_real("temperature", temperature), _int("top_k", top_k), _real("top_p", top_p),
                           _real("min_p", min_p), _real("repeat_penalty", repeat_penalty),
                           _int("repeat_last_n", repeat_last_n))
        # the ranges of ts_sampler_new (sampler.h), checked here too so that a bad value
        # raises at the call rather than at a stream's first piece
        if p.temperature < 0 or math.isinf(p.temperature):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {p.temperature}")
        if not 0.0 <= p.top_p <= 1.0:
            raise ValueError(f"top_p must be between 0 and 1 (1: off), got {p.top_p}")
        if not 0.0 <= p.min_p <= 1.0:
            raise ValueError(f"min_p must be between 0 and 1 (0: off), got {p.min_p}")
        if p.repeat_penalty <= 0 or math.isinf(p.repeat_penalty):
            raise ValueError(f"repeat_penalty must be a positive finite number (got {p.repeat_penalty})")
        if p.repeat_last_n < 0 or p.repeat_last_n > 2**31 - 1:
            raise ValueError(f"repeat_last_n must be in 0..2**31-1 (got {p.repeat_last_n})")
        if not -2**31 <= p.top_k <= 2**31 - 1:
            raise ValueError(f"top_k is out of range (got {p.top_k})")
        return p


def check_seed(seed: Any) -> int:
    s = _int("seed", seed)
    if not 0 <= s < 2**64:
        raise ValueError(f"seed must be in 0..2**64-1 (got {s})")
    return s


class Sampler:
    """Owns one struct ts_sampler (one per generation, so concurrent streams do not mix)."""

    def __init__(self, params: SamplingParams, seed: int) -> None:
        c = ffi.new("struct ts_sampler_params *")
        c.temperature, c.top_k, c.top_p, c.min_p = params.temperature, params.top_k, params.top_p, params.min_p
        c.repeat_penalty, c.repeat_last_n, c.seed = params.repeat_penalty, params.repeat_last_n, seed
        err = ffi.new("char[]", 512)
        ptr = lib.ts_sampler_new(c, err, 512)
        if ptr == ffi.NULL:
            raise SamplingError(ffi.string(err).decode("utf-8", "replace") or "bad sampling parameters")
        self._ptr = ptr
        self.repeat_last_n = params.repeat_last_n

    def accept(self, token: int) -> None:
        lib.ts_sampler_accept(self._ptr, token)

    def sample(self, logits: np.ndarray) -> int:
        ptr = ffi.cast("float *", ffi.from_buffer(logits))
        t = int(lib.ts_sample(self._ptr, ptr, logits.shape[-1]))
        if t < 0:
            raise SamplingError(ffi.string(lib.ts_sample_error_str(t)).decode("utf-8", "replace"))
        return t

    def close(self) -> None:
        if self._ptr is not None:
            lib.ts_sampler_free(self._ptr)
            self._ptr = None


def stop_list(stop: Union[None, str, Sequence[str]]) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = []
    for s in stop:
        if not isinstance(s, str):
            raise TypeError(f"stop strings must be str, not {type(s).__name__}")
        if s:
            out.append(s)
    return out


class StopFilter:
    """Holds back generated text that may be the start of a stop string; cuts at the first
    complete one. The text before a stop string is emitted; the stop string is not."""

    def __init__(self, stops: List[str]) -> None:
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return out
        keep = max((self._partial(s) for s in self.stops), default=0)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out

    def _partial(self, stop: str) -> int:
        """Length of the longest end of `pending` that is a beginning of `stop`."""
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:n]):
                return n
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

