"""The MoE benchmark's synthetic files (bench/synth_moe.py) and byte counts (bench/bench_moe.py)
on a tiny shape: both files load, hold the same attention/router/gate/up bytes, the natural
dReLU density the exact mode measures follows the FFN norms rewritten in place, routing
reaches every expert, and the bytes per token add up to the files' tensors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_moe import moe_bytes  # noqa: E402
from synth_moe import MoeShape, set_natural_density, write_pair  # noqa: E402

from runtime_api import Context, Model  # noqa: E402

SHAPE = MoeShape(n_layer=2, n_embd=512, n_ff=1024, n_head=4, n_head_kv=2, n_vocab=1024, rank=64)
TOKENS = list(range(3, 131))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("moe"), SHAPE, "q4_0", 0.10, log=lambda _: None)


def test_pair_shares_bytes(files):
    ts, mix = (GGUFReader(str(p)) for p in files)
    ts_t = {t.name: t for t in ts.tensors}
    mix_t = {t.name: t for t in mix.tensors}
    shared = [n for n in mix_t if n in ts_t]
    assert "blk.0.ffn_gate_exps.weight" in shared and "blk.0.ffn_gate_inp.weight" in shared
    for n in shared:
        assert np.array_equal(np.asarray(ts_t[n].data), np.asarray(mix_t[n].data)), n
    assert "blk.0.ffn_down_t_exps.weight" in ts_t and "blk.0.ffn_down_exps.weight" in mix_t
    assert "blk.0.ffn_pred_fc1_exps.weight" in ts_t and "blk.0.ffn_pred_fc1_exps.weight" not in mix_t


def test_natural_density_follows_the_norms(files):
    ts, mix = files
    got = {}
    for natural in (0.10, 0.25):
        set_natural_density(ts, natural)
        ctx = Context(Model(ts), mode="exact", n_ctx=256)
        ctx.decode(TOKENS)
        got[natural] = ctx.stats().ffn_density
    assert got[0.10] == pytest.approx(0.10, abs=0.04)
    assert got[0.25] == pytest.approx(0.25, abs=0.05)
    assert Context(Model(mix), mode="dense", n_ctx=256).decode(TOKENS[:8]).shape == (8, SHAPE.n_vocab)


def test_bytes_per_token_add_up(files):
    ts, mix = files
    b_ts, b_mix = moe_bytes(ts), moe_bytes(mix)
    assert (b_ts.n_expert, b_ts.n_used) == (8, 2)
    total = sum(int(t.n_bytes) for t in GGUFReader(str(ts)).tensors)
    embd = next(t for t in GGUFReader(str(ts)).tensors if t.name == "token_embd.weight")
    assert b_ts.base + b_ts.gate + b_ts.up + b_ts.down + b_ts.predictor == total - int(embd.n_bytes) + \
        int(embd.n_bytes) // SHAPE.n_vocab
    dense_mix = b_mix.per_token("dense")
    assert dense_mix == b_mix.base + (b_mix.gate + b_mix.up + b_mix.down) / 4
    assert b_ts.per_token("predicted", 0.1) < b_ts.per_token("exact", 0.1, 0.32) < dense_mix


def test_bench_runs_every_mode_in_both_styles(tmp_path):
    """bench_moe.py end to end on the tiny shape without llama.cpp: every mode of ours in both
    styles (the API model opened per file and closed before ts-main runs), positive speeds."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_moe.py"
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(bench), "--tiny", "--types", "q4_0", "--natural-densities", "0.25",
                           "--repeats", "1", "--no-llama-cpp", "--no-wait-quiet", "--workdir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    engines = {"ts dense", "ts predicted 10%", "ts predicted 25%", "ts exact", "ts dense (swiglu file)"}
    keys = {(r["engine"], r["style"], r["phase"]) for r in rows}
    assert keys == {(e, s, p) for e in engines for s in ("api", "process") for p in ("decode", "prefill")}
    assert all(r["tok_s"] > 0 and r["samples"] and len(r["samples"]) == 1 for r in rows)
