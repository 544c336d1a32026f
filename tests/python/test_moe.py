"""The MoE ops (ggml-sparse.h: route, per-expert matmul, gate/up, down, combine) through the
runtime on a tiny Mixtral-shaped model with 8 experts, odd FFN width and a batch long enough
that experts serve several tokens at once: against the numpy reference in every mode,
against the per-expert graph they replace (TURBOSPARSE_MOE_PER_EXPERT=1, an independent
build of the same FFN), and bit for bit the same logits for 1..4 threads."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from numpy_reference import RefTrace, forward
from runtime_api import Context, Model
from tiny_gguf import random_weights, tiny_config, write_gguf

TOKENS = [1, 5, 17, 300, 42, 9, 100, 7, 260, 33, 2, 64, 11, 250, 3, 77, 123, 45, 6, 200, 31, 8]
TOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 3e-2, "q4_0": 3e-2}
MODES = ("dense", "exact", "predicted")
TAU = 0.3  # the files' threshold: no predictor logit of the reference lies within 1e-4 of it (seed 4)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def make(tmp_path: Path, outtype: str, neuron_major: bool = True, seed: int = 4):
    # n_ff 300: not a multiple of the 16-row tiles nor of the 256-row gate/up chunks
    cfg = tiny_config("drelu", moe=True, n_expert=8, n_expert_used=2, n_ff=300)
    w = random_weights(cfg, seed, predictor_rank=24)
    path = tmp_path / f"moe8-{outtype}-{int(neuron_major)}.gguf"
    held = write_gguf(path, cfg, w, outtype, neuron_major=neuron_major, threshold=TAU)
    return cfg, held, path


def decode(model: Model, mode: str, n_threads: int = 2) -> tuple[np.ndarray, float]:
    ctx = Context(model, mode=mode, n_threads=n_threads)
    out = ctx.decode(TOKENS)
    return out, ctx.stats().ffn_density


@pytest.mark.parametrize("neuron_major", [True, False])
def test_moe_matches_reference_every_mode(tmp_path, neuron_major):
    cfg, held, path = make(tmp_path, "f32", neuron_major)
    model = Model(path)
    for mode in MODES:
        trace = RefTrace()
        ref = forward(cfg, held, TOKENS, mode="predicted" if mode == "predicted" else "dense", tau=TAU,
                      trace=trace)
        if mode == "predicted":
            assert trace.min_margin > 1e-4, "a predictor logit sits on the threshold: pick another seed"
            assert 0 < np.mean(np.concatenate(trace.masks)) < 1
        routes = np.concatenate(trace.routes)
        assert len(np.unique(routes)) == cfg.n_expert  # every expert serves some token
        assert np.bincount(routes.ravel()).max() > 2   # and some serve several at once
        got, density = decode(model, mode)
        assert rel_err(got, ref) < TOL["f32"], mode
        if mode == "predicted":
            assert density == pytest.approx(np.mean(np.concatenate(trace.masks)), abs=1e-12)


def test_moe_ops_match_per_expert_graph(tmp_path, monkeypatch):
    """The fused MoE nodes and the per-expert graph compute the same FFN by different code:
    the same logits (f32 summation order only) and the same density counts."""
    _, _, path = make(tmp_path, "f32")
    model = Model(path)
    fused = {m: decode(model, m) for m in MODES}
    monkeypatch.setenv("TURBOSPARSE_MOE_PER_EXPERT", "1")
    for mode in MODES:
        got, density = decode(model, mode)
        assert rel_err(got, fused[mode][0]) < 1e-5, mode
        assert density == fused[mode][1], mode


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_0"])
def test_moe_quantised_and_thread_count_independent(tmp_path, outtype):
    # seed 5: no token's top-2 is a near-tie that the rounded activations could flip (seeds 1-4
    # have one at q8_0 or q4_0: an error of 0.04-0.23, in the per-expert graph too)
    cfg, held, path = make(tmp_path, outtype, seed=5)
    model = Model(path)
    ref = forward(cfg, held, TOKENS)
    for mode in MODES:
        one, d1 = decode(model, mode, n_threads=1)
        if mode != "predicted":  # rounded activations may move a logit across the threshold
            assert rel_err(one, ref) < TOL[outtype], mode
        for n in (2, 3, 4):
            got, dn = decode(model, mode, n_threads=n)
            assert np.array_equal(got, one), (mode, n)
            assert dn == d1, (mode, n)


def test_moe_sub_batch_sizes_agree(tmp_path, monkeypatch):
    """Fixed sub-batches of 1, 3 and 64 tokens per expert give the adaptive plan's logits bit
    for bit (each pair's result never depends on which others share its sub-batch)."""
    _, _, path = make(tmp_path, "q4_0")
    model = Model(path)
    base = {m: decode(model, m)[0] for m in ("exact", "predicted")}
    for n in ("1", "3", "64"):
        monkeypatch.setenv("TURBOSPARSE_SUB_BATCH", n)
        for mode, want in base.items():
            assert np.array_equal(decode(model, mode)[0], want), (mode, n)
    monkeypatch.delenv("TURBOSPARSE_SUB_BATCH")
    assert os.environ.get("TURBOSPARSE_SUB_BATCH") is None


def test_moe_ops_refuse_bad_inputs():
    """Each builder names what does not fit instead of building a node that would crash."""
    from turbosparse import _ggml as G
    from turbosparse._lib import load

    ffi, lib = load()
    ctx = G.Context(mem_size=1 << 20)
    err = ffi.new("char[256]")
    logits = ctx.new("f32", 4, 3)  # 4 experts, 3 tokens

    def msg() -> str:
        return ffi.string(err).decode()

    assert lib.ggml_sparse_moe_route(ctx.ptr, logits.ptr, 5, err, 256) == ffi.NULL
    assert "used" in msg()
    route = lib.ggml_sparse_moe_route(ctx.ptr, logits.ptr, 2, err, 256)
    assert route != ffi.NULL
    w = ctx.from_numpy_experts(np.zeros((4, 16, 64), dtype=np.float32), "f32", 64)
    x_bad = ctx.new("f32", 32, 6)
    assert lib.ggml_sparse_moe_matmul(ctx.ptr, w.ptr, x_bad.ptr, route, err, 256) == ffi.NULL
    assert "W: shape [64, 16, 4, 1], expected a contiguous [32, 16, n_expert]" in msg()  # x is 32 wide
    x_pairs = ctx.new("f32", 64, 5)  # 5 pairs, but the route has 3 tokens x 2
    assert lib.ggml_sparse_moe_matmul(ctx.ptr, w.ptr, x_pairs.ptr, route, err, 256) == ffi.NULL
    assert "route" in msg()
    x = ctx.new("f32", 64, 6)
    assert lib.ggml_sparse_moe_matmul(ctx.ptr, w.ptr, x.ptr, route, err, 256) != ffi.NULL
    up = ctx.from_numpy_experts(np.zeros((4, 16, 64), dtype=np.float32), "f32", 64)
    assert lib.ggml_sparse_moe_gate_up(ctx.ptr, w.ptr, up.ptr, x.ptr, ffi.NULL, route, 2, G.FFN_KINDS["swiglu"],
                                       0.0, ffi.NULL, err, 256) == ffi.NULL
    assert "ReGLU and dReLU" in msg()
    q = ctx.from_numpy_experts(np.zeros((4, 16, 64 // 32 * 22), dtype=np.uint8), "q5_0", 64)
    assert lib.ggml_sparse_moe_matmul(ctx.ptr, q.ptr, x.ptr, route, err, 256) == ffi.NULL
    assert "q5_0" in msg()
    ctx.close()


@pytest.mark.parametrize("outtype", ["f32", "q4_0"])
def test_moe_swiglu_dense_file(tmp_path, outtype, monkeypatch):
    """A plain llama.cpp Mixtral file (SwiGLU, standard down): dense mode through the MoE ops
    where ours are the faster kernels (AVX-512), else ggml_mul_mat_id: the reference's logits,
    bit for bit the same for 1..4 threads."""
    cfg = tiny_config("swiglu", moe=True, n_expert=8, n_expert_used=2, n_ff=320)
    w = random_weights(cfg, 5)
    path = tmp_path / f"mixtral-{outtype}.gguf"
    held = write_gguf(path, cfg, w, outtype, plain_llamacpp=True, neuron_major=False)
    model = Model(path)
    ref = forward(cfg, held, TOKENS)
    one, _ = decode(model, "dense", n_threads=1)
    assert rel_err(one, ref) < TOL[outtype]
    for n in (2, 3, 4):
        assert np.array_equal(decode(model, "dense", n_threads=n)[0], one), n
    monkeypatch.setenv("TURBOSPARSE_MOE_PER_EXPERT", "1")  # dense SwiGLU: ggml_mul_mat_id
    assert rel_err(decode(model, "dense", n_threads=2)[0], one) < TOL[outtype]
