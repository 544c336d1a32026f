"""One FFN layer of the Mistral-7B shape: the sparse ops against ggml's dense FFN.

    python bench/bench_ffn.py [--json FILE] [--repeats N] [--types q4_0,q4_K,f16] [--threads 2] [--moe]
                              [--batch T [--sub-batch auto,1,4,16]]

n_embd 4096, n_ff 14336, predictor rank 1024, batch 1 (or T tokens). For each weight type (Q4_0, Q4_K
(every FFN matrix in Q4_K: the bulk type of llama.cpp's Q4_K_M mix), F16; the predictor in the same type) and each row below, the sparse graph and ggml's dense FFN (three
ggml_mul_mat + ggml's activation ops, standard-layout down) on the same weights are timed
in the same process, interleaved call by call (round robin over the rows, each sparse call
followed by a dense one), and the medians are compared:
  - predicted mode at a predicted density of 100/50/25/10/5%, predictor included; the
    density is hit by setting the threshold at the matching quantile of the real predictor
    logits for this input;
  - exact mode (no predictor): gate for every neuron, up where the gate is positive, down
    where the activation is non-zero; the weights are drawn so that about half of the gates
    are positive and about a sixth of the neurons are active after dReLU (W_up is
    -0.5 W_gate + noise), and the measured active share is reported;
  - all active, no predictor: every neuron marked active by a constant logits tensor, so the
    sparse gate/up and down kernels do all of dense's work;
  - threshold mode (SwiGLU, CATS) at 40% and 50% sparsity: the gate by the dense product,
    up and down rows only where |silu(gate)| reaches the cut, set at the matching quantile of
    this input's |silu(gate)| (computed in numpy from the float weights).
Every timed call starts with a cold last-level cache (a 96 MB buffer is read first), as in a
real model where the other layers' weights evict this one's; without this, a sparse call's
few megabytes would stay cached between repeats and flatter it.

--batch T (prompt processing): x and u hold T independent random tokens, the densities are
25% and 10% (threshold at the quantile of all T tokens' logits) plus exact mode, against
ggml's dense FFN at the same T. --sub-batch lists the TURBOSPARSE_SUB_BATCH settings to time
(auto: the ops' adaptive sizing; N: fixed sub-batches of N tokens); each is a row. Random
tokens use independent neurons, so a sub-batch's union grows faster here than in a real
model, where hot neurons are shared: this is the hard case for batching.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from turbosparse import _ggml as G

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ffn_moe import bench_moe_type  # noqa: E402

N_EMBD, N_FF, RANK = 4096, 14336, 1024
DENSITIES = [1.0, 0.5, 0.25, 0.10, 0.05]
BATCH_DENSITIES = [0.25, 0.10]
THRESHOLD_SPARSITIES = [0.4, 0.5]
FLUSH_BYTES = 96 << 20


@dataclass
class Row:
    type: str
    mode: str            # "predicted", "exact", "all_active", "threshold"
    density: float       # share of neurons computed (measured)
    ms: float
    ms_dense: float
    speedup: float
    predictor: bool
    batch: int = 1
    sub_batch: str = "auto"


class Layer:
    """Weights of one FFN layer in one ggml type, as ggml tensors over numpy memory."""

    def __init__(self, type_: str, rng: np.random.Generator, ctx: G.Context, x: np.ndarray) -> None:
        def store(w: np.ndarray) -> G.Tensor:
            if type_ == "f16":
                return ctx.from_numpy(w.astype(np.float16))
            return ctx.from_numpy(G.quantize(w, type_), type_, w.shape[1])

        def normal(rows: int, cols: int, scale: float) -> np.ndarray:
            return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale)

        s = 1.0 / np.sqrt(N_EMBD)
        gate = normal(N_FF, N_EMBD, s)
        # up correlated -0.5 with gate: P(gate > 0 and up > 0) = 1/4 - asin(0.5)/(2 pi) = 1/6
        up = -0.5 * gate + normal(N_FF, N_EMBD, s * np.sqrt(0.75))
        self.gate, self.up = store(gate), store(up)
        g = x @ gate.T  # [T, n_ff]: where the threshold mode's cuts come from
        self.silu_abs = np.abs(g / (1.0 + np.exp(-g)))
        del gate, up
        down_t = normal(N_FF, N_EMBD, 1.0 / np.sqrt(N_FF))
        self.down_t = store(down_t)                              # neuron-major
        self.down = store(np.ascontiguousarray(down_t.T))        # standard: ggml [n_ff, n_embd]
        del down_t
        self.fc1 = store(normal(RANK, N_EMBD, s))
        self.fc2 = store(normal(N_FF, RANK, 1.0 / np.sqrt(RANK)))


def cold_cache(buf: np.ndarray) -> None:
    buf.sum()


def time_rows(graphs: list[Callable[[], None]], dense: Callable[[], None], repeats: int,
              flush: np.ndarray, stat: Callable[[list[float]], float] = statistics.median) -> list[tuple[float, float]]:
    """Per graph, the medians (ms; or `stat`) of it and of dense. Calls go round robin over the graphs,
    each followed by a dense call, so that a burst of load elsewhere on the machine touches
    every row alike instead of spoiling one."""
    t_s: list[list[float]] = [[] for _ in graphs]
    t_d: list[list[float]] = [[] for _ in graphs]
    for fn in graphs:  # warm-up
        fn()
        dense()
    for _ in range(repeats):
        for k, fn in enumerate(graphs):
            for f, out in ((fn, t_s[k]), (dense, t_d[k])):
                cold_cache(flush)
                t0 = time.perf_counter()
                f()
                out.append((time.perf_counter() - t0) * 1e3)
    return [(stat(s), stat(d)) for s, d in zip(t_s, t_d)]


def bench_type(type_: str, n_threads: int, repeats: int, pool: G.ThreadPool, flush: np.ndarray,
               log: Callable[[str], None], batch: int = 1, sub_batches: tuple[str, ...] = ("auto",),
               stat: Callable[[list[float]], float] = statistics.median) -> list[Row]:
    rng = np.random.default_rng(1234)
    # node outputs: about two [n_ff, T] tensors per sparse case and eight for dense mode
    n_cases = 3 * len(sub_batches) + 6
    ctx = G.Context(mem_size=(16 << 20) + (2 * n_cases + 8) * N_FF * batch * 4)
    t0 = time.perf_counter()
    x_np = rng.standard_normal((batch, N_EMBD), dtype=np.float32)
    layer = Layer(type_, rng, ctx, x_np)
    u_np = rng.standard_normal((batch, N_EMBD), dtype=np.float32)
    x, u = ctx.from_numpy(x_np), ctx.from_numpy(u_np)
    log(f"{type_}: weights ready in {time.perf_counter() - t0:.1f} s")

    def run(graph: G.Graph) -> Callable[[], None]:
        return lambda: graph.compute(n_threads, pool)

    dense_y = ctx.sparse_ffn(x, layer.gate, layer.up, layer.down, kind="drelu", mode="dense", down_layout="standard")
    dense = run(G.Graph([dense_y]))

    logits_t = ctx.sparse_predictor(layer.fc1, layer.fc2, u)
    G.Graph([logits_t]).compute(n_threads, pool)
    logits = logits_t.numpy().ravel()

    # mode, predictor, sub-batch setting, graph, measured density
    cases: list[tuple[str, bool, str, G.Graph, float]] = []

    def add(mode: str, y: G.Tensor, stats, predictor: bool, sub: str) -> None:
        graph = G.Graph([y])
        graph.compute(n_threads, pool)
        stats.neurons_computed = stats.neurons_total = stats.tokens = 0
        graph.compute(n_threads, pool)
        cases.append((mode, predictor, sub, graph, stats.neurons_computed / max(stats.neurons_total, 1)))

    densities = DENSITIES if batch == 1 else BATCH_DENSITIES
    for sub in sub_batches:
        # the ops read the setting when a node is built
        os.environ["TURBOSPARSE_SUB_BATCH"] = "0" if sub == "auto" else sub
        for d in densities:
            tau = float(np.min(logits)) - 1.0 if d >= 1.0 else float(np.quantile(logits, 1.0 - d))
            stats = ctx.stats()
            y = ctx.sparse_ffn(x, layer.gate, layer.up, layer.down_t, kind="drelu", mode="predicted",
                               down_layout="neuron_major", u=u, fc1=layer.fc1, fc2=layer.fc2, threshold=tau,
                               stats=stats)
            add("predicted", y, stats, True, sub)

        stats = ctx.stats()
        y = ctx.sparse_ffn(x, layer.gate, layer.up, layer.down_t, kind="drelu", mode="exact",
                           down_layout="neuron_major", stats=stats)
        add("exact", y, stats, False, sub)

    if batch == 1:
        ones = ctx.from_numpy(np.ones((1, N_FF), dtype=np.float32))
        stats = ctx.stats()
        a = ctx.sparse_gate_up(layer.gate, layer.up, x, ones, kind="drelu", threshold=0.0, stats=stats)
        add("all_active", ctx.sparse_down(layer.down_t, a), stats, False, "auto")
        for sparsity in THRESHOLD_SPARSITIES:
            stats = ctx.stats()
            y = ctx.sparse_ffn(x, layer.gate, layer.up, layer.down_t, kind="swiglu", mode="threshold",
                               down_layout="neuron_major", threshold=float(np.quantile(layer.silu_abs, sparsity)),
                               stats=stats)
            add("threshold", y, stats, False, "auto")
    os.environ.pop("TURBOSPARSE_SUB_BATCH", None)

    rows: list[Row] = []
    times = time_rows([run(graph) for _, _, _, graph, _ in cases], dense, repeats, flush, stat)
    for (mode, predictor, sub, _, density), (ms, ms_dense) in zip(cases, times):
        rows.append(Row(type_, mode, round(density, 4), round(ms, 3), round(ms_dense, 3),
                        round(ms_dense / ms, 3), predictor, batch, sub))
        log(f"{type_:5s} {mode:10s} T={batch} sub {sub:4s} density {density:6.1%}  {ms:8.2f} ms  "
            f"dense {ms_dense:8.2f} ms  x{ms_dense / ms:5.2f}")
    ctx.close()
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    ap.add_argument("--types", default="q4_0,q4_K,f16", help="comma list of ggml type names (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="per-row statistic of the repeats; min resists load from other processes")
    ap.add_argument("--moe", action="store_true",
                    help="one TurboSparse-Mixtral MoE layer (router + 2 of 8 experts) against ggml's mul_mat_id "
                         "graph instead (bench_ffn_moe.py)")
    ap.add_argument("--batch", type=int, default=1, help="tokens per call (prompt processing when > 1)")
    ap.add_argument("--sub-batch", default="auto",
                    help="comma-separated TURBOSPARSE_SUB_BATCH settings to time: auto or a token count")
    ap.add_argument("--no-pin", action="store_true",
                    help="let the OS place the threads (default: thread i pinned to CPU i, as llama-bench --cpu-strict 1)")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    sub_batches = tuple(args.sub_batch.split(","))
    for sub in sub_batches:
        if sub != "auto" and not (sub.isdigit() and int(sub) > 0):
            ap.error(f"--sub-batch: {sub!r} is neither auto nor a positive token count")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"kernels {G.isa()}, {args.threads} threads, batch {args.batch}, n_embd {N_EMBD}, n_ff {N_FF}, rank {RANK}, "
        f"{args.stat} of {args.repeats}, {'not pinned' if args.no_pin else 'pinned'}, load average {os.getloadavg()[0]:.2f}")
    flush = np.ones(FLUSH_BYTES // 4, dtype=np.float32)
    rows: list[Row] = []
    moe_rows: list[dict] = []
    cpus = None if args.no_pin else sorted(os.sched_getaffinity(0))[:args.threads]
    with G.ThreadPool(args.threads, cpus) as pool:
        for type_ in args.types.split(","):
            if args.moe:
                moe_rows += bench_moe_type(type_, args.threads, args.repeats, pool, flush, log)
                continue
            rows += bench_type(type_, args.threads, args.repeats, pool, flush, log, args.batch, sub_batches,
                               min if args.stat == "min" else statistics.median)
    log(f"load average at the end {os.getloadavg()[0]:.2f}")

    if args.moe:
        print(f"{'type':6s}{'MoE layer, mode':18s}{'density':>9s}{'ms':>9s}{'mul_mat_id ms':>15s}{'speed-up':>10s}")
        for m in moe_rows:
            print(f"{m['type']:6s}{m['mode']:18s}{m['density']:>9.1%}{m['ms']:>9.2f}{m['ms_ggml_mul_mat_id']:>15.2f}"
                  f"{m['speedup']:>9.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(moe_rows, f, indent=1)
        return 0
    print(f"{'type':6s}{'mode':12s}{'T':>5s}{'sub':>6s}{'predictor':>10s}{'density':>9s}{'ms':>9s}{'dense ms':>10s}"
          f"{'speed-up':>10s}")
    for r in rows:
        print(f"{r.type:6s}{r.mode:12s}{r.batch:>5d}{r.sub_batch:>6s}{'yes' if r.predictor else 'no':>10s}"
              f"{r.density:>9.1%}{r.ms:>9.2f}{r.ms_dense:>10.2f}{r.speedup:>9.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
