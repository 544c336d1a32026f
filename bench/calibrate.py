"""Predictor thresholds for target predicted densities, from real forward passes.

Method: a numpy float32 forward of the bf16 checkpoint (HF conventions: RMSNorm, rotate-half
RoPE, grouped-query causal attention, dReLU FFN) over `n_tokens` random token ids as one
sequence, one layer at a time (only that layer's weights are in memory). At every layer the
predictor logits fc2 relu(fc1 u) are collected, u being the residual stream before the FFN
RMSNorm (turbosparse.predictor.input = residual). The runtime takes one threshold for all
layers, so tau for density d is the (1 - d) quantile of all layers' logits together: the mean
predicted density over layers and tokens is then d (single layers may differ; they are
reported). The same pass measures the natural dReLU statistics (share of gate > 0 and of
active neurons) that the exact mode's cost depends on.

The benchmark files hold the predictor in their own type (q4_0 / f16), so the density the
runtime reports differs slightly from the target; the benchmark prints and records it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from turbosparse.convert.safetensors_lazy import Checkpoint  # noqa: E402


@dataclass
class Calibration:
    n_tokens: int
    taus: dict[float, float]                              # target density -> threshold
    layer_density: dict[float, list[float]]               # target density -> per-layer density at tau
    gate_positive: list[float] = field(default_factory=list)  # per layer: share of gate pre-activations > 0
    active: list[float] = field(default_factory=list)         # per layer: share of relu(g) * relu(u) != 0

    def to_json(self) -> dict:
        return {"n_tokens": self.n_tokens,
                "taus": {f"{d:g}": t for d, t in self.taus.items()},
                "layer_density": {f"{d:g}": v for d, v in self.layer_density.items()},
                "gate_positive": self.gate_positive, "active": self.active}

    @staticmethod
    def from_json(j: dict) -> "Calibration":
        return Calibration(j["n_tokens"], {float(k): v for k, v in j["taus"].items()},
                           {float(k): v for k, v in j["layer_density"].items()}, j["gate_positive"], j["active"])


def _rms_norm(h: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """x: [T, heads, hd], HF rotate-half convention, positions 0..T-1."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :].astype(np.float32)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :].astype(np.float32)
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def _attention(x: np.ndarray, ck: Checkpoint, p: str, cfg: dict) -> np.ndarray:
    t = x.shape[0]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    q = (x @ ck.load_f32(f"{p}.self_attn.q_proj.weight").T).reshape(t, nh, hd)
    k = (x @ ck.load_f32(f"{p}.self_attn.k_proj.weight").T).reshape(t, nkv, hd)
    v = (x @ ck.load_f32(f"{p}.self_attn.v_proj.weight").T).reshape(t, nkv, hd)
    q, k = _rope(q, cfg["rope_theta"]), _rope(k, cfg["rope_theta"])
    group = nh // nkv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool))[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    prob = np.exp(scores)
    prob /= prob.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", prob, v).reshape(t, nh * hd)
    return out @ ck.load_f32(f"{p}.self_attn.o_proj.weight").T


def calibrate(folder: Path, cfg: dict, densities: list[float], n_tokens: int = 64, seed: int = 1) -> Calibration:
    ck = Checkpoint(folder)
    eps = cfg["rms_norm_eps"]
    ids = np.random.default_rng(seed).integers(3, cfg["vocab_size"], size=n_tokens)
    h = ck.load_f32("model.embed_tokens.weight")[ids]
    logits: list[np.ndarray] = []
    gate_pos, active = [], []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = h + _attention(_rms_norm(h, ck.load_f32(f"{p}.input_layernorm.weight"), eps), ck, p, cfg)
        fc1 = ck.load_f32(f"{p}.mlp.predictor.fc1.weight")
        fc2 = ck.load_f32(f"{p}.mlp.predictor.fc2.weight")
        logits.append(np.maximum(h @ fc1.T, 0.0) @ fc2.T)
        x = _rms_norm(h, ck.load_f32(f"{p}.post_attention_layernorm.weight"), eps)
        g = x @ ck.load_f32(f"{p}.mlp.gate_proj.weight").T
        u = x @ ck.load_f32(f"{p}.mlp.up_proj.weight").T
        a = np.maximum(g, 0.0) * np.maximum(u, 0.0)
        gate_pos.append(float((g > 0).mean()))
        active.append(float((a != 0).mean()))
        h = h + a @ ck.load_f32(f"{p}.mlp.down_proj.weight").T
        del g, u, a
    everything = np.concatenate([lg.reshape(-1) for lg in logits])
    taus = {d: float(np.quantile(everything, 1.0 - d)) for d in densities}
    per_layer = {d: [float((lg > taus[d]).mean()) for lg in logits] for d in densities}
    return Calibration(n_tokens, taus, per_layer, gate_pos, active)
