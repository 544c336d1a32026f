"""ts-perplexity on a tiny converted dReLU model: its perplexity equals an independent numpy
computation (tests/python/numpy_reference.py on the HF weights) in every mode, and its
density and recall figures agree with the runtime and with their limits."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hf_fixtures import _TEXT, read_tiny_tensors, write_tiny_checkpoint
from numpy_reference import RefConfig, RefTrace, forward

CTX = 48


def ppl_cli(*args: object, command: tuple[str, ...] = (sys.executable, "-m", "turbosparse.perplexity")
            ) -> subprocess.CompletedProcess:
    # one BLAS thread for the numpy pass: tiny matrices, and threads on a busy machine only wait
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ppl")
    cfg = write_tiny_checkpoint(d / "hf", arch="bamboo", n_layer=2, dtype="f32", seed=7)
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(d / "hf"), "--outfile", str(d / "m.gguf"),
                        "--outtype", "f32", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(3)
    # no "tiny": the fixture's tokenizer_config adds a user-defined token " tiny" that the
    # runtime matches and the sentencepiece library (the reference's tokenizer) does not know
    words = [w for w in " ".join(_TEXT).split() if "tiny" not in w]
    (d / "text.txt").write_text(" ".join(rng.choice(words, 60)))
    return {"dir": d, "cfg": cfg, "gguf": d / "m.gguf", "text": d / "text.txt"}


def reference(tiny: dict, mode: str, tau: float) -> tuple[float, float]:
    """(perplexity, predicted share) of the text, chunked as ts-perplexity documents: BOS + the
    next CTX-1 tokens, every prediction scored; tokens from the sentencepiece library."""
    import sentencepiece as spm

    cfg = tiny["cfg"]
    sp = spm.SentencePieceProcessor(model_file=str(tiny["dir"] / "hf" / "tokenizer.model"))
    ids = sp.encode(tiny["text"].read_text())
    rc = RefConfig(n_vocab=cfg["vocab_size"], n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                   n_ff=cfg["intermediate_size"], n_head=cfg["num_attention_heads"],
                   n_head_kv=cfg["num_key_value_heads"], rms_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"],
                   sliding_window=cfg["sliding_window"] or 0, ffn_kind="drelu")
    w = read_tiny_tensors(tiny["dir"] / "hf")
    nll, trace = [], RefTrace()
    for a in range(0, len(ids), CTX - 1):
        chunk = [1] + ids[a:a + CTX - 1]
        logits = forward(rc, w, chunk, mode="predicted" if mode == "predicted" else "dense", tau=tau, trace=trace)
        z = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
        nll.append(np.log(np.exp(z).sum(-1)) - z[np.arange(len(chunk) - 1), chunk[1:]])
    share = float(np.mean(np.concatenate(trace.masks))) if trace.masks else 1.0
    return float(np.exp(np.concatenate(nll).mean())), share


def test_perplexity_matches_numpy_in_every_mode(tiny, tmp_path) -> None:
    out = tmp_path / "ppl.json"
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", CTX, "--per-layer", "--json", out, "-t", 1)
    assert r.returncode == 0, r.stderr
    results = {x["mode"]: x for x in json.loads(out.read_text())["results"]}
    assert sorted(results) == ["dense", "exact", "predicted"]
    from turbosparse.train.weights import GGUFModel

    tau = GGUFModel(tiny["gguf"]).threshold
    dense_ppl, _ = reference(tiny, "dense", tau)
    pred_ppl, pred_share = reference(tiny, "predicted", tau)
    assert results["dense"]["perplexity"] == pytest.approx(dense_ppl, rel=1e-3)
    assert results["exact"]["perplexity"] == pytest.approx(dense_ppl, rel=1e-3)  # exact is lossless
    assert results["predicted"]["perplexity"] == pytest.approx(pred_ppl, rel=1e-3)
    assert results["predicted"]["perplexity"] != pytest.approx(dense_ppl, rel=1e-4)  # the masks matter

    n_tokens = results["dense"]["n_tokens"]
    assert n_tokens > CTX and all(x["n_tokens"] == n_tokens for x in results.values())
    assert results["dense"]["computed_share"] == 1.0
    # exact computes exactly the active neurons; predicted exactly the predicted ones
    assert results["exact"]["computed_share"] == pytest.approx(results["exact"]["true_density"], abs=2e-3)
    assert results["predicted"]["computed_share"] == pytest.approx(pred_share, abs=2e-3)
    assert results["predicted"]["predicted_density"] == pytest.approx(pred_share, abs=2e-3)
    for x in results.values():
        assert 0 < x["true_density"] < 1 and 0 < x["recall"] < 1
        assert len(x["layers"]) == 2
    assert "recall" in r.stdout and "layer" in r.stdout


def test_threshold_limits_recall_and_density(tiny) -> None:
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", CTX, "--ffn-mode", "predicted", "--threshold=-1e30",
                "--json", tiny["dir"] / "low.json")
    assert r.returncode == 0, r.stderr
    low = json.loads((tiny["dir"] / "low.json").read_text())["results"][0]
    assert low["recall"] == 1.0 and low["predicted_density"] == 1.0 and low["computed_share"] == 1.0
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", CTX, "--ffn-mode", "predicted", "--threshold", "1e30",
                "--json", tiny["dir"] / "high.json")
    assert r.returncode == 0, r.stderr
    high = json.loads((tiny["dir"] / "high.json").read_text())["results"][0]
    assert high["recall"] == 0.0 and high["predicted_density"] == 0.0 and high["computed_share"] == 0.0


def test_chunks_and_no_recall(tiny) -> None:
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", CTX, "--ffn-mode", "exact", "--chunks", 1,
                "--no-recall", "--json", tiny["dir"] / "one.json")
    assert r.returncode == 0, r.stderr
    one = json.loads((tiny["dir"] / "one.json").read_text())["results"][0]
    assert one["n_tokens"] == CTX - 1 and one["recall"] is None and one["true_density"] is None


def test_errors(tiny, tmp_path) -> None:
    r = ppl_cli("-m", tiny["gguf"], "-f", tmp_path / "missing.txt")
    assert r.returncode == 1 and "missing.txt" in r.stderr
    r = ppl_cli("-m", tmp_path / "missing.gguf", "-f", tiny["text"])
    assert r.returncode == 1 and "missing.gguf" in r.stderr
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", 1)
    assert r.returncode == 1 and "ctx-size" in r.stderr
    nopred = tmp_path / "nopred.gguf"
    subprocess.run([sys.executable, "-m", "turbosparse.convert", str(tiny["dir"] / "hf"), "--outfile", str(nopred),
                    "--outtype", "f32", "--no-predictor", "--quiet"], check=True, timeout=300)
    r = ppl_cli("-m", nopred, "-f", tiny["text"], "--ffn-mode", "predicted")
    assert r.returncode == 1 and "predict" in r.stderr


def test_swiglu_model_gets_dense_only(tiny, tmp_path) -> None:
    write_tiny_checkpoint(tmp_path / "llama", arch="llama", n_layer=1, dtype="f32")
    gguf = tmp_path / "llama.gguf"
    subprocess.run([sys.executable, "-m", "turbosparse.convert", str(tmp_path / "llama"), "--outfile", str(gguf),
                    "--outtype", "f32", "--quiet"], check=True, timeout=300)
    r = ppl_cli("-m", gguf, "-f", tiny["text"], "-c", CTX, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert res["mode"] == "dense" and res["true_density"] is None and res["perplexity"] > 1


def test_installed_command(tiny) -> None:
    exe = shutil.which("ts-perplexity")
    if exe is None:
        pytest.skip("ts-perplexity is not installed (pip install . installs it)")
    r = ppl_cli("-m", tiny["gguf"], "-f", tiny["text"], "-c", CTX, "--ffn-mode", "dense", "--no-recall",
                command=(exe,))
    assert r.returncode == 0, r.stderr
    assert "dense" in r.stdout
