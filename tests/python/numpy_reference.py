"""An independent numpy forward pass of the Llama/Mistral/Mixtral family, written from the
math in SPEC §1-§3 in the Hugging Face convention (un-permuted Q/K, rotate_half RoPE), in
float64. It validates the runtime and the converter's Q/K permutation at once.

Weights are a dict of HF-named numpy arrays in HF shapes ([out, in]).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RefConfig:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 0  # 0 = none
    ffn_kind: str = "swiglu"  # swiglu | reglu | drelu
    n_expert: int = 0
    n_expert_used: int = 0
    predictor_input: str = "residual"  # residual | ffn_input
    head_dim_override: int = 0  # HF config head_dim when it is not n_embd / n_head
    rope_linear_factor: float = 1.0  # HF rope_scaling {"type": "linear", "factor": ...}

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.n_embd // self.n_head


@dataclass
class RefTrace:
    """What the forward pass saw, for tests that compare internals."""

    masks: list[np.ndarray] = field(default_factory=list)  # predicted masks [T, n_ff] per FFN
    routes: list[np.ndarray] = field(default_factory=list)  # chosen experts [T, k] per layer
    min_margin: float = np.inf  # smallest |predictor logit - tau| seen


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: np.ndarray, pos: np.ndarray, theta: float, linear_factor: float = 1.0) -> np.ndarray:
    """HF LlamaRotaryEmbedding (linear scaling divides the positions) + apply_rotary_pos_emb;
    x is [T, heads, head_dim]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = np.outer(pos.astype(np.float64) / linear_factor, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    return x * cos + rotate_half(x) * sin


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def activation(kind: str, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    if kind == "swiglu":
        return silu(g) * u
    if kind == "reglu":
        return relu(g) * u
    if kind == "drelu":
        return relu(g) * relu(u)
    raise ValueError(kind)


def ffn(cfg: RefConfig, w: dict, prefix: str, x: np.ndarray, u: np.ndarray, mode: str, tau: float,
        trace: RefTrace, gate: str = "gate_proj", up: str = "up_proj", down: str = "down_proj") -> np.ndarray:
    """SPEC §1: y = W_down act(W_gate x, W_up x); predicted mode keeps neurons whose
    predictor logit W_fc2 relu(W_fc1 u) is above tau (SPEC §2)."""
    a = activation(cfg.ffn_kind, x @ w[f"{prefix}.{gate}.weight"].T, x @ w[f"{prefix}.{up}.weight"].T)
    if mode == "predicted":
        logits = relu(u @ w[f"{prefix}.predictor.fc1.weight"].T) @ w[f"{prefix}.predictor.fc2.weight"].T
        keep = logits > tau
        trace.masks.append(keep)
        trace.min_margin = min(trace.min_margin, float(np.min(np.abs(logits - tau))))
        a = a * keep
    return a @ w[f"{prefix}.{down}.weight"].T


def attention(cfg: RefConfig, w: dict, p: str, h: np.ndarray, pos: np.ndarray) -> np.ndarray:
    T, hd = h.shape[0], cfg.head_dim
    q = (h @ w[f"{p}.q_proj.weight"].T).reshape(T, cfg.n_head, hd)
    k = (h @ w[f"{p}.k_proj.weight"].T).reshape(T, cfg.n_head_kv, hd)
    v = (h @ w[f"{p}.v_proj.weight"].T).reshape(T, cfg.n_head_kv, hd)
    q, k = (rope(t, pos, cfg.rope_theta, cfg.rope_linear_factor) for t in (q, k))
    group = cfg.n_head // cfg.n_head_kv
    k = np.repeat(k, group, axis=1)  # HF repeat_kv: query head i uses kv head i // group
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    qi, kj = pos[:, None], pos[None, :]
    visible = kj <= qi
    if cfg.sliding_window:
        visible &= (qi - kj) < cfg.sliding_window
    scores = np.where(visible[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hts,shd->thd", probs, v).reshape(T, cfg.n_head * hd)
    return out @ w[f"{p}.o_proj.weight"].T


def moe(cfg: RefConfig, w: dict, p: str, x: np.ndarray, resid: np.ndarray, mode: str, tau: float,
        trace: RefTrace) -> np.ndarray:
    """Mixtral: softmax over router logits, top-k, renormalised weights."""
    logits = x @ w[f"{p}.gate.weight"].T
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, : cfg.n_expert_used]
    trace.routes.append(np.sort(top, axis=-1))
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        sel = top[t]
        weights = probs[t, sel] / probs[t, sel].sum()
        for e, wt in zip(sel, weights):
            u = resid[t : t + 1] if cfg.predictor_input == "residual" else x[t : t + 1]
            y = ffn(cfg, w, f"{p}.experts.{e}", x[t : t + 1], u, mode, tau, trace, "w1", "w3", "w2")
            out[t] += wt * y[0]
    return out


def forward(cfg: RefConfig, w: dict, tokens: list[int], mode: str = "dense", tau: float = 0.0,
            trace: RefTrace | None = None) -> np.ndarray:
    """Logits [T, n_vocab] of `tokens` at positions 0..T-1. mode: dense or predicted (exact
    is dense by definition)."""
    trace = trace if trace is not None else RefTrace()
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    pos = np.arange(len(tokens))
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for il in range(cfg.n_layer):
        p = f"model.layers.{il}"
        h = rms_norm(x, w[f"{p}.input_layernorm.weight"], cfg.rms_eps)
        resid = x + attention(cfg, w, f"{p}.self_attn", h, pos)
        f_in = rms_norm(resid, w[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
        if cfg.n_expert:
            f = moe(cfg, w, f"{p}.block_sparse_moe", f_in, resid, mode, tau, trace)
        else:
            u = resid if cfg.predictor_input == "residual" else f_in
            f = ffn(cfg, w, f"{p}.mlp", f_in, u, mode, tau, trace)
        x = resid + f
    x = rms_norm(x, w["model.norm.weight"], cfg.rms_eps)
    out = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ out.T
