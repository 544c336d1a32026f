"""Thin typed helpers over ggml and the sparse-FFN ops through cffi.

    ctx = Context()
    x = ctx.from_numpy(x_f32)                          # [T, n_embd] array -> ggml [n_embd, T]
    w = ctx.from_numpy(quantize(w_f32, "q4_0"), "q4_0", n_embd)
    y = ctx.sparse_ffn(x, ..., kind="drelu", mode="exact", down_layout="neuron_major")
    graph = Graph([y])
    with ThreadPool(2) as pool:
        graph.compute(2, pool)
    y.numpy()

Tensors made from numpy arrays are views (ggml reads the array's memory; the Tensor keeps
the array alive); graph nodes live in the Context's own memory. Shapes follow numpy on the
Python side (rows last in ggml: a numpy [rows, n] is ggml [n, rows]).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ._closeable import Closeable
from ._lib import load

FFN_KINDS = {"swiglu": 0, "reglu": 1, "drelu": 2}
MODES = {"dense": 0, "predicted": 1, "exact": 2, "threshold": 3}
DOWN_LAYOUTS = {"standard": 0, "neuron_major": 1}

_ERR_SIZE = 512


class GgmlSparseError(ValueError):
    """An op refused its inputs (the message names the tensor), or a compute failed."""


def _native() -> tuple[Any, Any]:
    return load()


def ggml_type(name: str) -> int:
    """The ggml type id of a name such as "f32", "q4_0", "q4_K" (case-insensitive)."""
    _, lib = _native()
    try:
        return int(getattr(lib, "GGML_TYPE_" + name.upper()))
    except AttributeError:
        raise GgmlSparseError(f"unknown ggml type {name!r}") from None


def type_name(type_id: int) -> str:
    ffi, lib = _native()
    return ffi.string(lib.ggml_type_name(type_id)).decode()


def row_size(type_: str, n: int) -> int:
    _, lib = _native()
    return int(lib.ggml_row_size(ggml_type(type_), n))


def quantize(values: np.ndarray, type_: str) -> np.ndarray:
    """Rows of f32 values -> uint8 [rows, row_size] in a ggml type (ggml_quantize_chunk)."""
    ffi, lib = _native()
    src = np.ascontiguousarray(values, dtype=np.float32)
    if src.ndim == 1:
        src = src[None, :]
    rows, n = src.shape
    tid = ggml_type(type_)
    if n % lib.ggml_blck_size(tid) != 0:
        raise GgmlSparseError(f"{type_}: row length {n} is not a multiple of the block size {lib.ggml_blck_size(tid)}")
    if lib.ggml_quantize_requires_imatrix(tid):
        raise GgmlSparseError(f"{type_}: quantising needs an importance matrix")
    out = np.empty((rows, lib.ggml_row_size(tid, n)), dtype=np.uint8)
    lib.ggml_quantize_chunk(tid, ffi.from_buffer("float[]", src), ffi.from_buffer(out), 0, rows, n, ffi.NULL)
    return out


def dequantize(raw: np.ndarray, type_: str, n: int) -> np.ndarray:
    """uint8 [rows, row_size] in a ggml type -> f32 [rows, n] (ggml's to_float)."""
    ffi, lib = _native()
    tid = ggml_type(type_)
    data = np.ascontiguousarray(raw)
    rows = data.size // lib.ggml_row_size(tid, n)
    out = np.empty((rows, n), dtype=np.float32)
    if tid == lib.GGML_TYPE_F32:
        out[:] = data.view(np.float32).reshape(rows, n)
        return out
    to_float = lib.ggml_get_type_traits(tid).to_float
    if to_float == ffi.NULL:
        raise GgmlSparseError(f"{type_}: ggml has no to_float for this type")
    to_float(ffi.from_buffer(data), ffi.from_buffer("float[]", out), rows * n)
    return out


class Tensor:
    """A ggml tensor and what must stay alive while ggml may read it."""

    def __init__(self, ptr: Any, keep: Any = None) -> None:
        self.ptr = ptr
        self._keep = keep

    @property
    def ne(self) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.ptr.ne)  # type: ignore[return-value]

    @property
    def type(self) -> str:
        return type_name(self.ptr.type)

    def numpy(self) -> np.ndarray:
        """A copy of an f32 tensor's data as numpy [ne1, ne0] (2-D tensors)."""
        ffi, lib = _native()
        if self.ptr.type != lib.GGML_TYPE_F32:
            raise GgmlSparseError(f"numpy(): tensor is {self.type}, only f32 is converted")
        if self.ptr.data == ffi.NULL:
            raise GgmlSparseError("numpy(): tensor has no data (not computed or not allocated)")
        ne0, ne1, ne2, ne3 = self.ne
        buf = ffi.buffer(self.ptr.data, lib.ggml_nbytes(self.ptr))
        return np.frombuffer(buf, dtype=np.float32).reshape(ne3 * ne2 * ne1, ne0).copy()


class Context(Closeable):
    """Two ggml contexts freed together: one holding only the metadata of numpy views, one
    holding graph nodes and their data."""

    def __init__(self, mem_size: int = 64 << 20, max_views: int = 256) -> None:
        ffi, lib = _native()
        self._ffi, self._lib = ffi, lib
        meta = ffi.new("struct ggml_init_params *", {"mem_size": max_views * lib.ggml_tensor_overhead(),
                                                     "mem_buffer": ffi.NULL, "no_alloc": True})
        nodes = ffi.new("struct ggml_init_params *", {"mem_size": mem_size, "mem_buffer": ffi.NULL,
                                                      "no_alloc": False})
        self._meta = lib.ggml_init(meta[0])
        self.ptr = lib.ggml_init(nodes[0])
        if self._meta == ffi.NULL or self.ptr == ffi.NULL:
            raise MemoryError("ggml_init failed")
        self._keep: list[Any] = []  # stats and arrays the C side points at

    def close(self) -> None:
        if self.ptr is not None:
            self._lib.ggml_free(self.ptr)
            self._lib.ggml_free(self._meta)
            self.ptr = None

    # ---- tensors ---------------------------------------------------------------------------

    def new(self, type_: str, ne0: int, ne1: int = 1) -> Tensor:
        """A tensor with its own (uninitialised) data in this context."""
        t = self._lib.ggml_new_tensor_2d(self.ptr, ggml_type(type_), ne0, ne1)
        if t == self._ffi.NULL:
            raise MemoryError("ggml context is full")
        return Tensor(t, self)

    def from_numpy(self, arr: np.ndarray, type_: Optional[str] = None, ne0: Optional[int] = None) -> Tensor:
        """A 2-D tensor over a C-contiguous numpy array (no copy).

        float32 / float16 arrays [rows, n] give f32 / f16 [n, rows]; raw uint8 arrays
        [rows, row_bytes] from quantize() need their type and row length ne0.
        """
        if not arr.flags["C_CONTIGUOUS"]:
            raise GgmlSparseError("from_numpy: the array must be C-contiguous")
        a2 = arr[None, :] if arr.ndim == 1 else arr
        if a2.ndim != 2:
            raise GgmlSparseError(f"from_numpy: expected 1-D or 2-D, got {arr.ndim}-D")
        rows = a2.shape[0]
        if type_ is None:
            if arr.dtype == np.float32:
                type_ = "f32"
            elif arr.dtype == np.float16:
                type_ = "f16"
            else:
                raise GgmlSparseError(f"from_numpy: give the ggml type of a {arr.dtype} array")
        tid = ggml_type(type_)
        if ne0 is None:
            ne0 = a2.shape[1] * a2.itemsize // self._lib.ggml_type_size(tid) * self._lib.ggml_blck_size(tid)
        row_bytes = self._lib.ggml_row_size(tid, ne0)
        if a2.shape[1] * a2.itemsize != row_bytes:
            raise GgmlSparseError(f"from_numpy: rows of {a2.shape[1] * a2.itemsize} bytes, but {ne0} "
                                  f"elements of {type_} take {row_bytes}")
        t = self._lib.ggml_new_tensor_2d(self._meta, tid, ne0, rows)
        if t == self._ffi.NULL:
            raise MemoryError("too many numpy views in this Context (max_views)")
        t.data = self._ffi.cast("void *", arr.ctypes.data)
        return Tensor(t, arr)

    def from_numpy_experts(self, arr: np.ndarray, type_: str, ne0: int) -> Tensor:
        """A 3-D tensor [ne0, rows, n_expert] over a C-contiguous numpy array [n_expert, rows, row_bytes]
        (raw bytes of `type_`, as quantize() gives per expert) or [n_expert, rows, ne0] f32/f16 values."""
        if not arr.flags["C_CONTIGUOUS"] or arr.ndim != 3:
            raise GgmlSparseError("from_numpy_experts: expected a C-contiguous 3-D array")
        tid = ggml_type(type_)
        if arr.shape[2] * arr.itemsize != self._lib.ggml_row_size(tid, ne0):
            raise GgmlSparseError(f"from_numpy_experts: rows of {arr.shape[2] * arr.itemsize} bytes do not hold "
                                  f"{ne0} elements of {type_}")
        t = self._lib.ggml_new_tensor_3d(self._meta, tid, ne0, arr.shape[1], arr.shape[0])
        if t == self._ffi.NULL:
            raise MemoryError("too many numpy views in this Context (max_views)")
        t.data = self._ffi.cast("void *", arr.ctypes.data)
        return Tensor(t, arr)

    # ---- ops -----------------------------------------------------------------------------------

    def _checked(self, ptr: Any, err: Any, what: str) -> Tensor:
        if ptr == self._ffi.NULL:
            raise GgmlSparseError(f"{what}: {self._ffi.string(err).decode()}")
        return Tensor(ptr, self)

    def mul_mat(self, a: Tensor, b: Tensor) -> Tensor:
        return Tensor(self._lib.ggml_mul_mat(self.ptr, a.ptr, b.ptr), self)

    def stats(self) -> Any:
        """A zeroed struct ggml_sparse_stats kept alive by this context."""
        s = self._ffi.new("struct ggml_sparse_stats *")
        self._keep.append(s)
        return s

    def sparse_ffn(self, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, *,
                   kind: str, mode: str, down_layout: str, u: Optional[Tensor] = None,
                   fc1: Optional[Tensor] = None, fc2: Optional[Tensor] = None,
                   threshold: float = 0.0, stats: Any = None) -> Tensor:
        ffi, lib = self._ffi, self._lib
        params = ffi.new("struct ggml_sparse_ffn_params *", {
            "kind": FFN_KINDS[kind], "mode": MODES[mode], "down_layout": DOWN_LAYOUTS[down_layout],
            "threshold": threshold, "stats": stats if stats is not None else ffi.NULL})
        err = ffi.new("char[]", _ERR_SIZE)
        opt = lambda t: t.ptr if t is not None else ffi.NULL  # noqa: E731
        y = lib.ggml_sparse_ffn(self.ptr, x.ptr, opt(u), opt(fc1), opt(fc2), w_gate.ptr, w_up.ptr, w_down.ptr,
                                params, err, _ERR_SIZE)
        return self._checked(y, err, "ggml_sparse_ffn")

    def sparse_predictor(self, fc1: Tensor, fc2: Tensor, u: Tensor) -> Tensor:
        err = self._ffi.new("char[]", _ERR_SIZE)
        t = self._lib.ggml_sparse_predictor(self.ptr, fc1.ptr, fc2.ptr, u.ptr, err, _ERR_SIZE)
        return self._checked(t, err, "ggml_sparse_predictor")

    def sparse_gate_up(self, w_gate: Tensor, w_up: Tensor, x: Tensor, logits: Optional[Tensor], *,
                       kind: str, threshold: float = 0.0, stats: Any = None) -> Tensor:
        ffi = self._ffi
        err = ffi.new("char[]", _ERR_SIZE)
        t = self._lib.ggml_sparse_gate_up(self.ptr, w_gate.ptr, w_up.ptr, x.ptr,
                                          logits.ptr if logits is not None else ffi.NULL, FFN_KINDS[kind],
                                          threshold, stats if stats is not None else ffi.NULL, err, _ERR_SIZE)
        return self._checked(t, err, "ggml_sparse_gate_up")

    def sparse_down(self, w_down_t: Tensor, a: Tensor) -> Tensor:
        err = self._ffi.new("char[]", _ERR_SIZE)
        t = self._lib.ggml_sparse_down(self.ptr, w_down_t.ptr, a.ptr, err, _ERR_SIZE)
        return self._checked(t, err, "ggml_sparse_down")

    def sparse_down_chunked(self, w_down_t: Tensor, a: Tensor) -> Tensor:
        """The down projection in 4 neuron ranges added in order (SwiGLU's neuron-major down)."""
        err = self._ffi.new("char[]", _ERR_SIZE)
        t = self._lib.ggml_sparse_down_chunked(self.ptr, w_down_t.ptr, a.ptr, err, _ERR_SIZE)
        return self._checked(t, err, "ggml_sparse_down_chunked")


class ThreadPool(Closeable):
    """A ggml threadpool kept across computes (threads are started once).

    cpus: pin thread i to cpus[i] (ggml's cpumask with strict placement; the calling thread
    is thread 0 and is pinned too). Without it the OS places the threads, and on a machine
    with other busy processes two of them may end up sharing one core, where every barrier
    of ggml's spin-waiting threads costs a scheduler time slice.
    """

    def __init__(self, n_threads: int, cpus: Optional[Sequence[int]] = None) -> None:
        ffi, lib = _native()
        self._lib = lib
        self.n_threads = n_threads
        params = ffi.new("struct ggml_threadpool_params *")
        lib.ggml_threadpool_params_init(params, n_threads)
        if cpus is not None:
            if len(cpus) < n_threads:
                raise GgmlSparseError(f"ThreadPool: {n_threads} threads but only {len(cpus)} cpus to pin them to")
            for c in cpus:
                params.cpumask[c] = True
            params.strict_cpu = True
        self.ptr = lib.ggml_threadpool_new(params)
        if self.ptr == ffi.NULL:
            raise RuntimeError(f"ggml_threadpool_new({n_threads}) failed")

    def close(self) -> None:
        if self.ptr is not None:
            self._lib.ggml_threadpool_free(self.ptr)
            self.ptr = None


class Graph(Closeable):
    """The forward graph of some outputs; computed any number of times."""

    def __init__(self, outputs: Sequence[Tensor], size: int = 2048) -> None:
        ffi, lib = _native()
        self._ffi, self._lib = ffi, lib
        # the graph's own small context, so graphs can be rebuilt without filling the nodes' one
        params = ffi.new("struct ggml_init_params *", {
            "mem_size": lib.ggml_graph_overhead_custom(size, False), "mem_buffer": ffi.NULL, "no_alloc": True})
        self._ctx = lib.ggml_init(params[0])
        self.ptr = lib.ggml_new_graph_custom(self._ctx, size, False)
        for t in outputs:
            lib.ggml_build_forward_expand(self.ptr, t.ptr)
        self._outputs = list(outputs)  # keeps their contexts alive
        self._work = np.empty(0, dtype=np.uint8)

    @property
    def n_nodes(self) -> int:
        return int(self._lib.ggml_graph_n_nodes(self.ptr))

    def compute(self, n_threads: int = 1, pool: Optional[ThreadPool] = None) -> None:
        ffi, lib = self._ffi, self._lib
        if pool is not None and n_threads > pool.n_threads:
            raise GgmlSparseError(f"compute: {n_threads} threads asked, the pool has {pool.n_threads}")
        plan = lib.ggml_graph_plan(self.ptr, n_threads, pool.ptr if pool is not None else ffi.NULL)
        if plan.work_size > self._work.size:
            self._work = np.empty(plan.work_size, dtype=np.uint8)
        plan.work_data = ffi.from_buffer("uint8_t[]", self._work) if self._work.size else ffi.NULL
        status = lib.ggml_graph_compute(self.ptr, ffi.addressof(plan))
        if status != lib.GGML_STATUS_SUCCESS:
            raise GgmlSparseError(f"ggml_graph_compute failed with status {status}")

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.ggml_free(self._ctx)
            self._ctx = None


def isa() -> str:
    """The kernel table in use ("scalar", "avx2", "avx512", "neon")."""
    ffi, lib = _native()
    return ffi.string(lib.ggml_sparse_isa()).decode()
