"""Smoke test of the decode benchmark's machinery (bench/bench_decode.py) on a tiny model,
without llama.cpp: synthetic checkpoint, threshold calibration, conversion, timing, JSON rows.
Timings are machine-dependent: only their sanity is checked, never their values."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_decode.py"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[list[dict], str]:
    work = tmp_path_factory.mktemp("bench")
    out = work / "rows.json"
    # --no-wait-quiet: a test must not wait for other processes (test_quiet_gate covers the gate)
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--quick", "--no-llama-cpp", "--no-powerinfer",
                           "--no-wait-quiet",
                           "--workdir", str(work), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_rows_cover_every_mode_and_phase(result):
    rows, _ = result
    keys = {(r["type"], r["mode"], r["density"] if r["mode"] in ("predicted", "threshold") else None, r["file"],
             r["phase"], r["style"], r["natural_density"]) for r in rows}
    want = {("q4_0", m, d, f, ph, st, 0.10) for ph in ("decode", "prefill") for st in ("api", "process")
            for m, d, f in (("dense", None, "drelu"), ("predicted", 0.10, "drelu"), ("predicted", 0.25, "drelu"),
                            ("exact", None, "drelu"), ("dense", None, "swiglu"))}
    # the threshold mode at 40% and 50% sparsity: api style only
    want |= {("q4_0", "threshold", d, "swiglu-sparse-ffn", ph, "api", 0.10) for ph in ("decode", "prefill")
             for d in (0.6, 0.5)}
    assert keys == want
    assert len(rows) == len(want)


def test_rows_are_sane(result):
    rows, _ = result
    for r in rows:
        for k in ("type", "mode", "density", "phase", "tok_s", "llama_cpp_tok_s", "vs_llama_cpp", "style",
                  "natural_density", "powerinfer_tok_s", "vs_powerinfer"):
            assert k in r, (k, r)
        assert math.isfinite(r["tok_s"]) and r["tok_s"] > 0, r
        assert r["llama_cpp_tok_s"] is None and r["vs_llama_cpp"] is None  # --no-llama-cpp
        assert r["powerinfer_tok_s"] is None and r["vs_powerinfer"] is None  # --no-powerinfer
        assert len(r["samples"]) == 1  # --quick: one round
        if r["phase"] == "decode":
            assert r["bytes_per_token"] > 0 and r["roofline_tok_s"] > 0 and r["roofline_share"] > 0


def test_densities_hit_their_targets(result):
    rows, _ = result
    for r in rows:
        if r["mode"] == "dense":
            assert r["density"] == 1.0 and r["density_measured"] == pytest.approx(1.0)
        elif r["mode"] == "predicted":
            # threshold calibrated on the bf16 checkpoint, measured on the q4_0 file with other tokens
            assert abs(r["density_measured"] - r["density"]) < 0.05, r
        elif r["mode"] == "threshold":
            # cuts from a 16-token random forward, measured on other random tokens
            assert abs(r["density_measured"] - r["density"]) < 0.1, r
            assert r["vs_ts_dense"] is not None and r["vs_ts_dense"] > 0
        else:  # exact: the synthetic weights are built for ~10% natural dReLU activity
            assert abs(r["density_measured"] - 0.10) < 0.05, r


def test_sparse_modes_read_fewer_bytes(result):
    rows, _ = result
    by = {(r["mode"], r["density"], r["file"]): r["bytes_per_token"] for r in rows
          if r["phase"] == "decode" and r["style"] == "api"}
    dense = by[("dense", 1.0, "swiglu")]
    # the dReLU file's dense mode skips the down rows of zero activations (neuron-major down)
    assert by[("predicted", 0.10, "drelu")] < by[("predicted", 0.25, "drelu")] < by[("dense", 1.0, "drelu")] < dense
    assert by[("threshold", 0.5, "swiglu-sparse-ffn")] < by[("threshold", 0.6, "swiglu-sparse-ffn")] < dense


def test_table_is_printed(result):
    _, stdout = result
    assert "ts threshold 50% sparse" in stdout
    assert "ts predicted 10%" in stdout and "read bandwidth" in stdout and "command: python bench/bench_decode.py" in stdout


def test_help_says_how_to_build_llama_bench():
    proc = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python" in proc.stdout
    assert "--target llama-bench" in proc.stdout
    assert "SJTU-IPADS/PowerInfer" in proc.stdout and "--target main quantize" in proc.stdout


def test_process_style_reads_each_engines_own_timings():
    """The process-style parsers on the lines each engine prints (formats of llama.cpp 0c1e570,
    PowerInfer's Dec 2023 llama.cpp, ts-main)."""
    sys.path.insert(0, str(BENCH.parent))
    from process_runs import _LLAMA_GEN, _LLAMA_PROMPT, _TS_STATS

    llama_new = ("llama_perf_context_print: prompt eval time =    1234.50 ms /   128 tokens (    9.64 ms per token,"
                 "   103.69 tokens per second)\n"
                 "llama_perf_context_print:        eval time =    2000.00 ms /    63 runs   (   31.75 ms per token,"
                 "    31.50 tokens per second)\n")
    powerinfer = ("llama_print_timings: prompt eval time =    2469.00 ms /   128 tokens (   19.29 ms per token,"
                  "    51.84 tokens per second)\n"
                  "llama_print_timings:        eval time =    4000.00 ms /    63 runs   (   63.49 ms per token,"
                  "    15.75 tokens per second)\n")
    for text, prompt_ms, gen_ms in ((llama_new, 1234.5, 2000.0), (powerinfer, 2469.0, 4000.0)):
        p, g = _LLAMA_PROMPT.search(text), _LLAMA_GEN.search(text)
        assert (float(p.group(1)), int(p.group(2))) == (prompt_ms, 128)
        assert (float(g.group(1)), int(g.group(2))) == (gen_ms, 63)  # not the prompt line
    ts = ("stats: prompt 128 tokens, 250.10 tok/s | generation 64 tokens, 40.25 tok/s | "
          "FFN neurons computed 10.3% (predicted) | load 812 ms")
    m = _TS_STATS.search(ts)
    assert m.groups() == ("128", "250.10", "64", "40.25", "10.3")


def test_quiet_gate_counts_other_processes():
    sys.path.insert(0, str(BENCH.parent))
    import quiet

    q = quiet.Quiet(enabled=True, max_others=64.0, timeout_s=10, log=lambda msg: None)
    result, busy = q.measure("sum", lambda: sum(range(10**6)))
    assert result == sum(range(10**6)) and busy >= 0.0
    # this process's own CPU time is what gets subtracted from the machine's: it must grow
    s = quiet.snapshot()
    x = 0
    for i in range(5 * 10**6):
        x += i
    s1 = quiet.snapshot()
    assert s1.own > s.own and s1.busy - s.busy >= s1.own - s.own - 2  # the machine counts our work too
    assert quiet.others_since(s) >= 0.0
