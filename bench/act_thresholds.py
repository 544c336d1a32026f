"""Per-layer activation thresholds (the threshold FFN mode of SwiGLU files) for a target
sparsity, from the runtime's own |silu(gate)| histograms over a forward pass of random tokens:
the benchmark needs files that skip a known share of neurons, not a quality-tuned cut (for that,
ts-calibrate-sparsity on real text). Each sparsity is a uniform per-layer quantile."""

from __future__ import annotations

import random

import numpy as np

from ts_runtime import Context, Model


def threshold_cuts(model: Model, sparsities: list[float], n_tokens: int, n_threads: int,
                   seed: int = 0) -> dict[float, list[float]]:
    rt = model.rt
    n_layer, n_vocab = int(model.meta.n_layer), int(model.meta.n_vocab)
    rng = random.Random(seed)
    ctx = Context(model, "threshold", n_threads, n_tokens + 8, collect_act_hist=True)
    try:
        ctx.time_prefill([rng.randrange(3, n_vocab) for _ in range(n_tokens)])
        hists = [ctx.act_hist(il) for il in range(n_layer)]
    finally:
        ctx.close()
    out: dict[float, list[float]] = {}
    for s in sparsities:
        cuts = []
        for h in hists:
            below = np.concatenate([[0], np.cumsum(h)]) / h.sum()
            cuts.append(float(rt.lib.ts_act_hist_edge(int(np.argmin(np.abs(below - s))))))
        out[s] = cuts
    return out
