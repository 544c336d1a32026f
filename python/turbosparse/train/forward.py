"""A float32 numpy forward pass of a dense-FFN Llama/Mistral model with a ReGLU/dReLU FFN,
run one layer at a time over every sequence.

Layer-major order keeps one layer's weights in memory at a time; the hidden states of all
tokens live in a memory-mapped file between layers. At each layer an observer sees, per
sequence, the predictor input (SPEC §2), the true active mask (a_i != 0, SPEC §1) and, when
the model has a predictor, the predicted mask. mode "predicted" feeds the predicted-masked
FFN output forward (what the runtime's predicted mode computes); "dense" feeds the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .weights import LayerWeights, ModelShape, ModelSource


@dataclass
class LayerObservation:
    layer: int
    rows: np.ndarray                    # rows of the token stream these tokens are (ascending)
    u: np.ndarray                       # predictor input [n, n_embd]
    active: np.ndarray                  # true active mask [n, n_ff] (bool)
    predicted: Optional[np.ndarray]     # predicted mask [n, n_ff], None without a predictor
    expert: int = -1                    # MoE: the expert these tokens were routed to; -1 dense


Observer = Callable[[LayerObservation], None]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """HF rotate_half RoPE on x [T, heads, head_dim]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def rope_tables(s: ModelShape, n: int) -> tuple[np.ndarray, np.ndarray]:
    d = s.head_dim
    inv_freq = 1.0 / (s.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = np.outer(np.arange(n, dtype=np.float64) / s.rope_linear_factor, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb)[:, None, :].astype(np.float32), np.sin(emb)[:, None, :].astype(np.float32)


def attention(s: ModelShape, w: LayerWeights, h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    T, hd = h.shape[0], s.head_dim
    q = _rope((h @ w.wq.T).reshape(T, s.n_head, hd), cos[:T], sin[:T])
    k = _rope((h @ w.wk.T).reshape(T, s.n_head_kv, hd), cos[:T], sin[:T])
    v = (h @ w.wv.T).reshape(T, s.n_head_kv, hd)
    group = s.n_head // s.n_head_kv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(hd))
    pos = np.arange(T)
    visible = pos[None, :] <= pos[:, None]
    if s.sliding_window:
        visible &= (pos[:, None] - pos[None, :]) < s.sliding_window
    scores = np.where(visible[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", probs, v).reshape(T, s.n_head * hd) @ w.wo.T


def activation(kind: str, x: np.ndarray, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = x @ gate.T
    u = x @ up.T
    if kind == "drelu":
        return np.maximum(g, 0) * np.maximum(u, 0)
    return np.maximum(g, 0) * u  # reglu


def ffn_activation(kind: str, x: np.ndarray, w: LayerWeights) -> np.ndarray:
    return activation(kind, x, w.gate, w.up)


def predictor_logits(fc1: np.ndarray, fc2: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.maximum(u @ fc1.T, 0) @ fc2.T


def moe_ffn(s: ModelShape, w: LayerWeights, il: int, rows: np.ndarray, f_in: np.ndarray, u: np.ndarray,
            mode: str, tau: float, observe: Optional["Observer"]) -> np.ndarray:
    """Mixtral routing (softmax over the router logits, top-k, weights renormalised), each
    expert's FFN on the tokens routed to it."""
    assert w.router is not None
    logits = f_in @ w.router.T
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, : s.n_expert_used]
    norm = np.take_along_axis(probs, top, axis=-1).sum(axis=-1)
    out = np.zeros_like(f_in)
    for e in range(s.n_expert):
        t = np.nonzero((top == e).any(axis=-1))[0]
        if t.size == 0:
            continue
        act = activation(s.ffn_kind, f_in[t], w.gate[e], w.up[e])
        predicted = None
        if w.fc1 is not None and w.fc2 is not None:
            predicted = predictor_logits(w.fc1[e], w.fc2[e], u[t]) > tau
        if observe is not None:
            observe(LayerObservation(il, rows[t], u[t], act != 0, predicted, e))
        if mode == "predicted":
            assert predicted is not None
            act = act * predicted
        out[t] += (probs[t, e] / norm[t])[:, None] * (act @ w.down[e].T)
    return out


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - z[np.arange(len(targets)), targets]


class LayerwiseForward:
    """Runs `sequences` (each a 1-D array of token ids, evaluated from position 0) through
    the model; hidden states go to two float32 memmaps in `workdir`."""

    def __init__(self, src: ModelSource, sequences: Sequence[np.ndarray], workdir: Path):
        self.src = src
        self.sequences = [np.asarray(q, dtype=np.int64) for q in sequences]
        if not self.sequences or any(len(q) == 0 for q in self.sequences):
            raise ValueError("LayerwiseForward needs non-empty sequences")
        s = src.shape
        for q in self.sequences:
            if q.min() < 0 or q.max() >= s.n_vocab:
                raise ValueError(f"token id out of range [0, {s.n_vocab})")
        self.starts = np.cumsum([0] + [len(q) for q in self.sequences])
        self.n_tokens = int(self.starts[-1])
        self.workdir = Path(workdir)
        self.cos, self.sin = rope_tables(s, max(len(q) for q in self.sequences))

    def run(self, mode: str = "dense", tau: Optional[float] = None, observe: Optional[Observer] = None,
            want_nll: bool = False) -> Optional[np.ndarray]:
        """Returns the negative log-likelihood of each next token (sequence by sequence,
        len(q) - 1 values each) when want_nll."""
        s, src = self.src.shape, self.src
        if mode not in ("dense", "predicted"):
            raise ValueError(f"mode must be dense or predicted, not {mode!r}")
        if mode == "predicted" and not src.has_predictor:
            raise ValueError("mode 'predicted' needs a model with predictors")
        tau = src.threshold if tau is None else tau
        shape = (self.n_tokens, s.n_embd)
        x = np.memmap(self.workdir / "hidden_a.f32", dtype=np.float32, mode="w+", shape=shape)
        y = np.memmap(self.workdir / "hidden_b.f32", dtype=np.float32, mode="w+", shape=shape)
        emb = src.embeddings()
        for q, a in zip(self.sequences, self.starts):
            x[a:a + len(q)] = emb[q]
        del emb
        for il in range(s.n_layer):
            w = src.layer(il)
            for q, a in zip(self.sequences, self.starts):
                b = a + len(q)
                h = np.asarray(x[a:b])
                resid = h + attention(s, w, rms_norm(h, w.attn_norm, s.rms_eps), self.cos, self.sin)
                f_in = rms_norm(resid, w.ffn_norm, s.rms_eps)
                u = resid if s.predictor_input == "residual" else f_in
                rows = np.arange(a, b)
                if s.n_expert:
                    y[a:b] = resid + moe_ffn(s, w, il, rows, f_in, u, mode, tau, observe)
                    continue
                act = ffn_activation(s.ffn_kind, f_in, w)
                predicted = predictor_logits(w.fc1, w.fc2, u) > tau if w.fc1 is not None and w.fc2 is not None \
                    else None
                if observe is not None:
                    observe(LayerObservation(il, rows, u, act != 0, predicted))
                if mode == "predicted":
                    assert predicted is not None
                    act = act * predicted
                y[a:b] = resid + act @ w.down.T
            x, y = y, x
        if not want_nll:
            return None
        norm, head = src.output()
        out = []
        for q, a in zip(self.sequences, self.starts):
            if len(q) < 2:
                continue
            h = rms_norm(np.asarray(x[a:a + len(q) - 1]), norm, s.rms_eps)
            out.append(log_softmax_nll(h @ head.T, q[1:]))
        return np.concatenate(out) if out else np.zeros(0)
