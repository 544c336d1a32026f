"""End to end: tiny Hugging Face checkpoints of each architecture, converted by
convert-turbosparse, run by the runtime, against the numpy reference on the HF weights
themselves (un-permuted Q/K, rotate_half RoPE): validates the converter's layout and the
runtime together."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_fixtures import predictor_dir, read_tiny_tensors, write_tiny_checkpoint
from numpy_reference import RefConfig, RefTrace, forward
from runtime_api import Context, Model

TOKENS = [1, 40, 7, 211, 99, 3, 150, 64, 12, 250]
DRELU = {"bamboo", "turbosparsemixtral"}


def convert(folder: Path, out: Path, outtype: str, *extra: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "turbosparse.convert", str(folder), "--outfile", str(out),
                        "--outtype", outtype, "--quiet", *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def ref_config(cfg: dict) -> RefConfig:
    mt = cfg["model_type"]
    kind = "swiglu" if cfg["hidden_act"] == "silu" else ("drelu" if mt in DRELU else "reglu")
    return RefConfig(n_vocab=cfg["vocab_size"], n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                     n_ff=cfg["intermediate_size"], n_head=cfg["num_attention_heads"],
                     n_head_kv=cfg["num_key_value_heads"], rms_eps=cfg["rms_norm_eps"],
                     rope_theta=cfg["rope_theta"], sliding_window=cfg.get("sliding_window") or 0,
                     ffn_kind=kind, n_expert=cfg.get("num_local_experts", 0),
                     n_expert_used=cfg.get("num_experts_per_tok", 0),
                     predictor_input="ffn_input" if mt == "turbosparsemixtral" else "residual")


def hf_weights(folder: Path, n_layer: int) -> dict:
    w = read_tiny_tensors(folder)
    for i in range(n_layer):  # relu-llama's separate predictors, under the in-model names
        for k in ("fc1", "fc2"):
            if f"predictor.{i}.{k}.weight" in w:
                w[f"model.layers.{i}.mlp.predictor.{k}.weight"] = w.pop(f"predictor.{i}.{k}.weight")
    return w


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("arch", ["bamboo", "relu-llama", "llama", "mistral", "turbosparsemixtral", "mixtral"])
def test_converted_f32_matches_hf_reference(tmp_path, arch):
    cfg = write_tiny_checkpoint(tmp_path / "hf", arch=arch, dtype="f32", seed=3)
    extra = ["--predictors", str(predictor_dir(tmp_path / "hf"))] if arch == "relu-llama" else []
    path = convert(tmp_path / "hf", tmp_path / "m.gguf", "f32", *extra)
    rc = ref_config(cfg)
    w = hf_weights(tmp_path / "hf", rc.n_layer)
    model = Model(path)
    assert model.meta.n_vocab == rc.n_vocab and model.meta.ffn_kind == ["swiglu", "reglu", "drelu"].index(rc.ffn_kind)
    modes = ["dense"] if rc.ffn_kind == "swiglu" else ["dense", "exact"]
    if model.meta.has_predictor:
        modes.append("predicted")
    assert model.meta.has_predictor == (arch in ("bamboo", "relu-llama", "turbosparsemixtral"))
    for mode in modes:
        trace = RefTrace()
        ref = forward(rc, w, TOKENS, mode="predicted" if mode == "predicted" else "dense",
                      tau=model.meta.threshold, trace=trace)
        if mode == "predicted":
            # float32 vs float64 moves these logits by ~1e-8; a margin far above that keeps
            # the runtime's masks equal to the reference's
            assert trace.min_margin > 1e-6, "a predictor logit sits on the threshold"
        got = Context(model, mode=mode).decode(TOKENS)
        assert rel_err(got, ref) < 1e-4, (arch, mode)


@pytest.mark.parametrize("outtype, tol", [("f16", 5e-3), ("q8_0", 3e-2), ("q4_0", 0.35)])
def test_converted_quantised_close_to_hf_reference(tmp_path, outtype, tol):
    """Against the unquantised HF weights: bounds the weights' quantisation error plus the
    arithmetic (4-bit weights move a 64-wide random model's logits by ~20%; test_runtime.py
    checks the arithmetic alone, on the dequantised values)."""
    cfg = write_tiny_checkpoint(tmp_path / "hf", arch="bamboo", dtype="f32", seed=4)
    path = convert(tmp_path / "hf", tmp_path / "m.gguf", outtype)
    rc = ref_config(cfg)
    ref = forward(rc, hf_weights(tmp_path / "hf", rc.n_layer), TOKENS)
    got = Context(Model(path), mode="dense").decode(TOKENS)
    assert rel_err(got, ref) < tol
