"""The sparse-FFN ops through cffi (the installed package) against a numpy float64
reference on the dequantised weights (SPEC §1)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from turbosparse import _ggml as G

N_EMBD, N_FF, RANK = 256, 80, 32
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_K", "q6_K"]
KERNEL_Q8_TYPES = {"q8_0", "q4_0"}  # x meets these rows as Q8_0 blocks, as in ggml
KERNEL_Q8K_TYPES = {"q4_K", "q6_K"}  # and these as Q8_K super-blocks
TOL_SPARSE = 1e-4                   # same x as the reference: f32 rounding only


def tol_dense(type_: str) -> float:
    # ggml's mul_mat converts x to the weights' dot type (f16, bf16, Q8_0, Q8_K, ...)
    return 1e-4 if type_ == "f32" else 2e-2


def act(kind: str, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    if kind == "drelu":
        return np.maximum(g, 0) * np.maximum(u, 0)
    if kind == "reglu":
        return np.maximum(g, 0) * u
    return g / (1 + np.exp(-g)) * u


def reference(w: dict, x: np.ndarray, kind: str, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """y [T, n_embd] and the per-element scale sum_i |a_i W_down_T[i, c]|."""
    x64 = x.astype(np.float64)
    g = x64 @ w["gate"].T
    u = x64 @ w["up"].T
    a = act(kind, g, u)
    if mask is not None:
        a = np.where(mask, a, 0.0)
    return a @ w["down_t"], np.abs(a) @ np.abs(w["down_t"])


def rel_err(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> float:
    assert np.all(np.isfinite(got))
    return float(np.max(np.abs(got - want)) / max(float(np.max(scale)), 1e-30))


def q8_K_round_trip(x: np.ndarray) -> np.ndarray:
    """x through ggml's quantize_row_q8_K_ref and back, in float32 as ggml computes it: per 256
    values, the one of largest magnitude (first) maps to -127, q = round-half-even, at most 127."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 256)
    out = np.zeros_like(blocks)
    for i, b in enumerate(blocks):
        j = int(np.argmax(np.abs(b)))
        if b[j] == 0:
            continue
        iscale = np.float32(-127.0) / b[j]
        q = np.minimum(np.rint(iscale * b), 127).astype(np.float32)
        out[i] = (np.float32(1.0) / iscale) * q
    return out.reshape(x.shape)


def x_as_kernels_see_it(x: np.ndarray, type_: str) -> np.ndarray:
    if type_ in KERNEL_Q8_TYPES:
        return G.dequantize(G.quantize(x, "q8_0"), "q8_0", x.shape[1])
    if type_ in KERNEL_Q8K_TYPES:
        return q8_K_round_trip(x)
    return x


class Ffn:
    """Random FFN weights in one ggml type, their dequantised values, and the inputs."""

    def __init__(self, type_: str, T: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.type = type_
        self.x = rng.standard_normal((T, N_EMBD)).astype(np.float32)
        self.u = rng.standard_normal((T, N_EMBD)).astype(np.float32)
        self.fc1 = (rng.standard_normal((RANK, N_EMBD)) * 0.1).astype(np.float32)
        self.fc2 = (rng.standard_normal((N_FF, RANK)) * 0.1).astype(np.float32)
        self.raw, self.ref = {}, {}
        for name in ("gate", "up", "down_t"):
            w = (rng.standard_normal((N_FF, N_EMBD)) * 0.05).astype(np.float32)
            self.raw[name] = G.quantize(w, type_)
            self.ref[name] = G.dequantize(self.raw[name], type_, N_EMBD).astype(np.float64)
        # standard layout (ggml [n_ff, n_embd]): the same values, transposed, in f32
        self.down_std = np.ascontiguousarray(self.ref["down_t"].T.astype(np.float32))

    def tensors(self, ctx: G.Context) -> dict:
        t = {name: ctx.from_numpy(raw, self.type, N_EMBD) for name, raw in self.raw.items()}
        t["down_std"] = ctx.from_numpy(self.down_std)
        t["x"], t["u"] = ctx.from_numpy(self.x), ctx.from_numpy(self.u)
        t["fc1"], t["fc2"] = ctx.from_numpy(self.fc1), ctx.from_numpy(self.fc2)
        return t


def test_import_is_lazy():
    code = ("import sys, turbosparse, turbosparse.convert; "
            "print(any(m in sys.modules for m in ('turbosparse._lib', 'turbosparse._turbosparse_cffi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tensor_struct_layout_matches_ggml():
    ffi, lib = G._native()
    # ggml_tensor_overhead = sizeof(struct ggml_object) (32) + sizeof(struct ggml_tensor)
    assert ffi.sizeof("struct ggml_tensor") + 32 == lib.ggml_tensor_overhead()
    ctx = G.Context(mem_size=1 << 20)
    t = ctx.new("f32", 7, 3)
    assert t.ne == (7, 3, 1, 1)
    assert tuple(t.ptr.nb) == (4, 28, 84, 84)
    lib.ggml_set_name(t.ptr, b"probe")
    assert ffi.string(t.ptr.name) == b"probe"
    # an allocating context puts the data right after the tensor struct
    base = int(ffi.cast("uintptr_t", t.ptr))
    assert int(ffi.cast("uintptr_t", t.ptr.data)) == base + ffi.sizeof("struct ggml_tensor")
    assert lib.ggml_nbytes(t.ptr) == 84


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("kind", ["drelu", "reglu"])
@pytest.mark.parametrize("type_", TYPES)
def test_ffn_modes_against_numpy(type_: str, kind: str, T: int):
    f = Ffn(type_, T)
    ctx = G.Context()
    t = f.tensors(ctx)
    x_dot = x_as_kernels_see_it(f.x, type_)
    tau = 0.01

    dense = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_std"], kind=kind, mode="dense", down_layout="standard")
    dense_nm = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind=kind, mode="dense",
                              down_layout="neuron_major")
    stats = ctx.stats()
    exact = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind=kind, mode="exact",
                           down_layout="neuron_major", stats=stats)
    logits = ctx.sparse_predictor(t["fc1"], t["fc2"], t["u"])
    pred = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind=kind, mode="predicted",
                          down_layout="neuron_major", u=t["u"], fc1=t["fc1"], fc2=t["fc2"], threshold=tau)
    graph = G.Graph([dense, dense_nm, exact, logits, pred])
    graph.compute(2)

    want, scale = reference(f.ref, f.x, kind)
    for y, name in ((dense, "dense standard"), (dense_nm, "dense neuron-major")):
        assert rel_err(y.numpy(), want, scale) <= tol_dense(type_), name

    want_dot, scale_dot = reference(f.ref, x_dot, kind)
    assert rel_err(exact.numpy(), want_dot, scale_dot) <= TOL_SPARSE
    # exact mode is lossless: dense within the dense tolerance
    assert rel_err(exact.numpy(), dense.numpy(), np.abs(dense.numpy())) <= 4 * tol_dense(type_)
    n_active = int(np.count_nonzero(act(kind, x_dot.astype(np.float64) @ f.ref["gate"].T,
                                        x_dot.astype(np.float64) @ f.ref["up"].T)))
    assert stats.tokens == T and stats.neurons_total == N_FF * T
    assert abs(stats.neurons_computed - n_active) <= 2  # neurons at the edge of 0 may differ

    mask = logits.numpy() > tau
    assert 0.1 < mask.mean() < 0.9, "the predictor should give a useful test density"
    want_p, scale_p = reference(f.ref, x_dot, kind, mask)
    assert rel_err(pred.numpy(), want_p, scale_p) <= TOL_SPARSE


def test_swiglu_dense():
    f = Ffn("f16", 3)
    ctx = G.Context()
    t = f.tensors(ctx)
    y = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_std"], kind="swiglu", mode="dense", down_layout="standard")
    G.Graph([y]).compute(1)
    want, scale = reference(f.ref, f.x, "swiglu")
    assert rel_err(y.numpy(), want, scale) <= tol_dense("f16")


@pytest.mark.parametrize("type_", ["q4_0", "f16", "q4_K"])
def test_bit_identical_for_any_thread_count(type_: str):
    f = Ffn(type_, 3, seed=1)
    ctx = G.Context()
    t = f.tensors(ctx)
    exact = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="exact",
                           down_layout="neuron_major")
    logits = ctx.from_numpy(np.random.default_rng(2).standard_normal((3, N_FF)).astype(np.float32))
    a = ctx.sparse_gate_up(t["gate"], t["up"], t["x"], logits, kind="reglu", threshold=0.3)
    y = ctx.sparse_down(t["down_t"], a)
    graph = G.Graph([exact, y])
    results = []
    for n in range(1, 5):
        with G.ThreadPool(n) as pool:
            graph.compute(n, pool)
            graph.compute(n, pool)  # a kept pool runs the same graph again
        results.append((exact.numpy(), a.numpy(), y.numpy()))
    for n, r in enumerate(results[1:], start=2):
        for got, want, name in zip(r, results[0], ("exact", "gate_up", "down")):
            assert np.array_equal(got, want), f"{name} differs between 1 and {n} threads"
    # the mask was honoured
    assert np.all(results[0][1][logits.numpy() <= 0.3] == 0)


@pytest.mark.parametrize("type_", TYPES)
def test_down_chunked(type_: str):
    """ggml_sparse_down_chunked (SwiGLU's neuron-major down): numpy's product within the type's
    tolerance; the same bits for 1..5 threads (5: column slices of the neuron ranges), for each
    token alone and in the batch, and, with fewer neurons than ranges (empty ranges), still the
    product."""
    f = Ffn(type_, 5, seed=7)
    rng = np.random.default_rng(8)
    a_np = (rng.standard_normal((5, N_FF)) * (rng.random((5, N_FF)) < 0.5)).astype(np.float32)
    ctx = G.Context()
    t = f.tensors(ctx)
    a = ctx.from_numpy(a_np)
    y = ctx.sparse_down_chunked(t["down_t"], a)
    single = [ctx.sparse_down_chunked(t["down_t"], ctx.from_numpy(a_np[i:i + 1])) for i in range(5)]
    graph = G.Graph([y, *single])
    results = []
    for n in range(1, 6):
        with G.ThreadPool(n) as pool:
            graph.compute(n, pool)
        results.append([y.numpy().copy(), *[s.numpy().copy() for s in single]])
    for n, r in enumerate(results[1:], start=2):
        assert all(np.array_equal(g, w) for g, w in zip(r, results[0])), f"differs between 1 and {n} threads"
    assert np.array_equal(np.concatenate(results[0][1:]), results[0][0]), "a token alone differs from the batch"
    want = a_np.astype(np.float64) @ f.ref["down_t"]
    scale = np.abs(a_np.astype(np.float64)) @ np.abs(f.ref["down_t"])
    assert rel_err(results[0][0], want, scale) <= 1e-5
    if type_ == "f32":  # 3 neurons, 4 ranges: one is empty
        few = ctx.from_numpy(np.ascontiguousarray(f.ref["down_t"][:3].astype(np.float32)))
        y3 = ctx.sparse_down_chunked(few, ctx.from_numpy(np.ascontiguousarray(a_np[:, :3])))
        G.Graph([y3]).compute(2)
        assert rel_err(y3.numpy(), a_np[:, :3].astype(np.float64) @ f.ref["down_t"][:3],
                       np.abs(a_np[:, :3].astype(np.float64)) @ np.abs(f.ref["down_t"][:3])) <= 1e-5


def test_errors_are_exceptions():
    f = Ffn("q4_0", 1)
    ctx = G.Context()
    t = f.tensors(ctx)
    with pytest.raises(G.GgmlSparseError, match="u: missing"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="predicted",
                       down_layout="neuron_major")
    with pytest.raises(G.GgmlSparseError, match="SwiGLU"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="swiglu", mode="exact",
                       down_layout="neuron_major")
    with pytest.raises(G.GgmlSparseError, match="w_down"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="exact", down_layout="standard")
    short = ctx.from_numpy(G.quantize(np.zeros((N_FF - 1, N_EMBD), np.float32), "q4_0"), "q4_0", N_EMBD)
    with pytest.raises(G.GgmlSparseError, match="w_up"):
        ctx.sparse_ffn(t["x"], t["gate"], short, t["down_t"], kind="drelu", mode="exact", down_layout="neuron_major")
    f16_up = ctx.from_numpy(np.zeros((N_FF, N_EMBD), np.float16))
    with pytest.raises(G.GgmlSparseError, match="w_up: type f16 differs"):
        ctx.sparse_ffn(t["x"], t["gate"], f16_up, t["down_t"], kind="drelu", mode="exact", down_layout="neuron_major")
    ints = ctx.from_numpy(np.zeros((N_FF, N_EMBD), np.int32), "i32")
    with pytest.raises(G.GgmlSparseError, match="i32"):
        ctx.sparse_down(ints, ctx.new("f32", N_FF, 1))
    with pytest.raises(G.GgmlSparseError, match="logits"):
        ctx.sparse_gate_up(t["gate"], t["up"], t["x"], t["x"], kind="drelu")
    with pytest.raises(G.GgmlSparseError, match="threshold"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="predicted",
                       down_layout="neuron_major", u=t["u"], fc1=t["fc1"], fc2=t["fc2"], threshold=float("nan"))
    with pytest.raises(G.GgmlSparseError, match="from_numpy"):
        ctx.from_numpy(np.zeros((4, 8), np.float32)[:, ::2])
    # after all that, the context still computes
    y = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="exact", down_layout="neuron_major")
    G.Graph([y]).compute(2)
    assert np.all(np.isfinite(y.numpy()))


def test_quantize_roundtrip_and_isa():
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    assert np.array_equal(G.dequantize(G.quantize(x, "f32"), "f32", 64), x)
    assert np.max(np.abs(G.dequantize(G.quantize(x, "q8_0"), "q8_0", 64) - x)) < 0.05
    assert G.isa() in ("scalar", "avx2", "avx512", "neon")


def widest_gap_cut(values: np.ndarray, lo: float = 0.3, hi: float = 0.7) -> tuple[float, float]:
    """A cut in the widest gap between the sorted values of ranks lo..hi, and half that gap."""
    srt = np.sort(values.reshape(-1))
    a, b = int(lo * srt.size), int(hi * srt.size)
    k = a + int(np.argmax(np.diff(srt[a:b + 1])))
    return float((srt[k] + srt[k + 1]) / 2), float((srt[k + 1] - srt[k]) / 2)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("type_", TYPES)
def test_threshold_mode_against_numpy(type_: str, T: int):
    """SwiGLU threshold mode (CATS): y = W_down (mask * silu(g) * u) with mask = |silu(g)| >= t,
    against numpy with the same mask (the cut sits in a wide gap of the reference's |silu(g)|,
    so the op's rounding cannot move a neuron across it); neurons counted; the same bits for
    1..4 threads; -inf keeps every neuron, and equals the dense mode on the neuron-major
    layout bit for bit where our matmul computes the dense mode's up (AVX-512, auto policy)."""
    f = Ffn(type_, T, seed=4)
    ctx = G.Context()
    t = f.tensors(ctx)
    x_dot = x_as_kernels_see_it(f.x, type_).astype(np.float64)
    s_ref = np.abs(act("swiglu", x_dot @ f.ref["gate"].T, np.ones((T, N_FF))))
    cut, margin = widest_gap_cut(s_ref)
    assert margin > 2e-4 * float(s_ref.max()), "no clear gap for the cut"
    stats = ctx.stats()
    thr = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="swiglu", mode="threshold",
                         down_layout="neuron_major", threshold=cut, stats=stats)
    inf = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="swiglu", mode="threshold",
                         down_layout="neuron_major", threshold=-np.inf)
    dense_nm = ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="swiglu", mode="dense",
                              down_layout="neuron_major")
    graph = G.Graph([thr, inf, dense_nm])
    results = []
    for n in range(1, 5):
        with G.ThreadPool(n) as pool:
            graph.compute(n, pool)
        results.append((thr.numpy().copy(), inf.numpy().copy()))
    for n, r in enumerate(results[1:], start=2):
        assert np.array_equal(r[0], results[0][0]) and np.array_equal(r[1], results[0][1]), n
    mask = s_ref >= cut
    assert 0.2 < mask.mean() < 0.8
    assert stats.neurons_computed == int(mask.sum()) * 4 and stats.neurons_total == N_FF * T * 4  # 4 computes
    want, scale = reference(f.ref, x_dot, "swiglu", mask)
    assert rel_err(results[0][0], want, scale) <= tol_dense(type_)
    want_all, scale_all = reference(f.ref, x_dot, "swiglu")
    assert rel_err(results[0][1], want_all, scale_all) <= tol_dense(type_)
    ours = G.isa() == "avx512" and os.environ.get("TURBOSPARSE_MATMUL", "auto") == "auto"
    # (q4_K, q6_K: the auto policy leaves their dense products to ggml, whose sums differ)
    if ours and type_ in ("f32", "f16", "bf16", "q8_0", "q4_0"):
        assert np.array_equal(results[0][1], dense_nm.numpy())


def test_threshold_mode_errors():
    f = Ffn("q4_0", 1)
    ctx = G.Context()
    t = f.tensors(ctx)
    with pytest.raises(G.GgmlSparseError, match="threshold mode is for SwiGLU"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="drelu", mode="threshold",
                       down_layout="neuron_major")
    with pytest.raises(G.GgmlSparseError, match="NaN"):
        ctx.sparse_ffn(t["x"], t["gate"], t["up"], t["down_t"], kind="swiglu", mode="threshold",
                       down_layout="neuron_major", threshold=float("nan"))
