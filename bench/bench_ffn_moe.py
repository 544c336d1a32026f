"""One TurboSparse-Mixtral MoE layer (bench_ffn.py --moe): router + the two routed experts of
8 (n_embd 4096, n_ff 14336, rank-1024 per-expert predictors) through the MoE ops of
ggml-sparse.h, against ggml's dense MoE graph as llama.cpp builds it (router mul_mat,
soft_max, argsort_top_k, get_rows of the weights, three ggml_mul_mat_id, the activation,
the weighted sum) on the same weights (down in the standard layout for ggml, neuron-major for
ours, the same values). One token per call, a different one each call (so that calls route
to different experts), each call after a cold-cache flush; calls interleaved round robin
with the dense one; medians.

Rows: predicted at 25% / 10% / 5% (threshold at that quantile of the routed experts'
predictor logits over the tokens), exact (gate rows all read; weights drawn so that about
half of the gates are positive and a sixth of the neurons active, as bench_ffn.py), and
dense mode of ours (moe_matmul gate/up, sparse down over the dReLU zeros)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from turbosparse import _ggml as G
from turbosparse._lib import load

N_EMBD, N_FF, RANK, N_EXPERT, K = 4096, 14336, 1024, 8, 2
N_TOKENS = 16  # distinct tokens cycled through the calls


def _err() -> Any:
    ffi, _ = load()
    return ffi.new("char[512]")


def _ok(ptr: Any, err: Any, what: str) -> Any:
    ffi, _ = load()
    if ptr == ffi.NULL:
        raise G.GgmlSparseError(f"{what}: {ffi.string(err).decode()}")
    return ptr


class MoeLayer:
    def __init__(self, type_: str, rng: np.random.Generator, ctx: G.Context) -> None:
        self.ctx = ctx
        s = 1.0 / np.sqrt(N_EMBD)

        def normal(rows: int, cols: int, scale: float) -> np.ndarray:
            return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale)

        def enc(m: np.ndarray) -> np.ndarray:
            return m.astype(np.float16) if type_ == "f16" else G.quantize(m, type_)

        def store(mats: list[np.ndarray], n: int) -> G.Tensor:
            return ctx.from_numpy_experts(np.stack(mats), type_, n)

        # encoded expert by expert: the f32 values of all 8 would not fit in memory
        gates, ups, downs_t, downs, fc1, fc2 = [], [], [], [], [], []
        for _ in range(N_EXPERT):
            g = normal(N_FF, N_EMBD, s)
            gates.append(enc(g))
            ups.append(enc(-0.5 * g + normal(N_FF, N_EMBD, s * np.sqrt(0.75))))
            del g
            d_t = normal(N_FF, N_EMBD, 1.0 / np.sqrt(N_FF))
            downs_t.append(enc(d_t))
            downs.append(enc(np.ascontiguousarray(d_t.T)))
            del d_t
            fc1.append(enc(normal(RANK, N_EMBD, s)))
            fc2.append(enc(normal(N_FF, RANK, 1.0 / np.sqrt(RANK))))
        self.gate, self.up = store(gates, N_EMBD), store(ups, N_EMBD)
        self.down_t, self.down = store(downs_t, N_EMBD), store(downs, N_FF)
        self.fc1, self.fc2 = store(fc1, N_EMBD), store(fc2, RANK)
        del gates, ups, downs_t, downs, fc1, fc2
        self.router = ctx.from_numpy(normal(N_EXPERT, N_EMBD, 4 * s).astype(np.float16))

    def ours(self, x: G.Tensor, mode: str, tau: float, stats: Any) -> tuple[G.Tensor, G.Tensor]:
        """(y, logits of the routed pairs or the route)."""
        ffi, lib = load()
        c, e = self.ctx.ptr, _err()
        route = _ok(lib.ggml_sparse_moe_route(c, lib.ggml_sparse_mul_mat(c, self.router.ptr, x.ptr), K, e, 512), e, "route")
        xp = lib.ggml_get_rows(c, x.ptr, lib.ggml_sparse_moe_tokens(c, route, x.ne[1] * K))
        logits = ffi.NULL
        if mode == "predicted":
            h = _ok(lib.ggml_sparse_moe_matmul(c, self.fc1.ptr, xp, route, e, 512), e, "fc1")
            logits = _ok(lib.ggml_sparse_moe_matmul(c, self.fc2.ptr, lib.ggml_relu(c, h), route, e, 512), e, "fc2")
        if mode == "dense":
            g = _ok(lib.ggml_sparse_moe_matmul(c, self.gate.ptr, xp, route, e, 512), e, "gate")
            u = _ok(lib.ggml_sparse_moe_matmul(c, self.up.ptr, xp, route, e, 512), e, "up")
            a = lib.ggml_mul(c, lib.ggml_relu(c, g), lib.ggml_relu(c, u))
        else:
            a = _ok(lib.ggml_sparse_moe_gate_up(c, self.gate.ptr, self.up.ptr, xp, logits, route, K, G.FFN_KINDS["drelu"],
                                                tau, stats, e, 512), e, "gate/up")
        y = _ok(lib.ggml_sparse_moe_down(c, self.down_t.ptr, a, route, e, 512), e, "down")
        y = _ok(lib.ggml_sparse_moe_combine(c, y, route, K, e, 512), e, "combine")
        return G.Tensor(y, self.ctx), G.Tensor(logits if logits != ffi.NULL else route, self.ctx)

    def ggml_dense(self, x: G.Tensor) -> G.Tensor:
        """llama.cpp's MoE FFN graph (dReLU activation)."""
        _, lib = load()
        c = self.ctx.ptr
        n = x.ne[1]
        probs = lib.ggml_soft_max(c, lib.ggml_mul_mat(c, self.router.ptr, x.ptr))
        ids = lib.ggml_argsort_top_k(c, probs, K)
        w = lib.ggml_get_rows(c, lib.ggml_reshape_3d(c, probs, 1, N_EXPERT, n), ids)
        w = lib.ggml_reshape_2d(c, w, K, n)
        w = lib.ggml_reshape_3d(c, lib.ggml_div(c, w, lib.ggml_sum_rows(c, w)), 1, K, n)
        x3 = lib.ggml_reshape_3d(c, x.ptr, N_EMBD, 1, n)
        g = lib.ggml_mul_mat_id(c, self.gate.ptr, x3, ids)
        u = lib.ggml_mul_mat_id(c, self.up.ptr, x3, ids)
        a = lib.ggml_mul(c, lib.ggml_relu(c, g), lib.ggml_relu(c, u))
        ys = lib.ggml_mul(c, lib.ggml_mul_mat_id(c, self.down.ptr, a, ids), w)  # [n_embd, K, n]
        out = None
        for j in range(K):
            y = lib.ggml_view_2d(c, ys, N_EMBD, n, ys.nb[2], ys.nb[1] * j)
            out = y if out is None else lib.ggml_add(c, out, y)
        return G.Tensor(out, self.ctx)


def bench_moe_type(type_: str, n_threads: int, repeats: int, pool: G.ThreadPool, flush: np.ndarray,
                   log: Callable[[str], None]) -> list[dict]:
    rng = np.random.default_rng(4321)
    ctx = G.Context(mem_size=64 << 20, max_views=64)
    t0 = time.perf_counter()
    layer = MoeLayer(type_, rng, ctx)
    log(f"{type_}: MoE weights ready in {time.perf_counter() - t0:.1f} s")
    xs = [ctx.from_numpy(rng.standard_normal((1, N_EMBD), dtype=np.float32)) for _ in range(N_TOKENS)]

    # the routed experts' predictor logits of every token: the thresholds' quantiles
    all_logits = []
    for x in xs:
        _, lg = layer.ours(x, "predicted", 0.0, ctx.stats())
        G.Graph([lg]).compute(n_threads, pool)
        all_logits.append(lg.numpy().ravel())
    logits = np.concatenate(all_logits)

    cases: list[tuple[str, float, list[G.Graph], Any]] = []
    for label, mode, tau in ([(f"predicted {d:.0%}", "predicted", float(np.quantile(logits, 1 - d)))
                              for d in (0.25, 0.10, 0.05)] + [("exact", "exact", 0.0), ("dense (ours)", "dense", 0.0)]):
        stats = ctx.stats()
        cases.append((label, tau, [G.Graph([layer.ours(x, mode, tau, stats)[0]]) for x in xs], stats))
    dense = [G.Graph([layer.ggml_dense(x)]) for x in xs]

    def timed(g: G.Graph) -> float:
        flush.sum()
        t = time.perf_counter()
        g.compute(n_threads, pool)
        return (time.perf_counter() - t) * 1e3

    t_ours: list[list[float]] = [[] for _ in cases]
    t_dense: list[float] = []
    for r in range(repeats + 1):  # round 0: warm-up
        for i in range(N_TOKENS):
            for k, (_, _, graphs, _) in enumerate(cases):
                ms = timed(graphs[i])
                if r:
                    t_ours[k].append(ms)
            ms = timed(dense[i])
            if r:
                t_dense.append(ms)
    rows = []
    md = statistics.median(t_dense)
    for (label, _, _, stats), t in zip(cases, t_ours):
        density = stats.neurons_computed / max(1, stats.neurons_total // N_EXPERT * K) if label != "dense (ours)" else 1.0
        m = statistics.median(t)
        rows.append({"type": type_, "mode": label, "density": round(density, 4), "ms": round(m, 3),
                     "ms_ggml_mul_mat_id": round(md, 3), "speedup": round(md / m, 3)})
        log(f"{type_:5s} MoE {label:14s} density {density:6.1%}  {m:8.2f} ms  ggml mul_mat_id {md:8.2f} ms  x{md / m:5.2f}")
    ctx.close()
    return rows
