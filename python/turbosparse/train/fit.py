"""Trains one layer's predictor, logits = W_fc2 relu(W_fc1 u) (SPEC §2, no biases), on a
recording, then picks the logit cut that reaches a requested recall on held-out rows.

- Loss: binary cross-entropy per neuron with positives weighted by (1 - p) / p (p = the
  layer's share of active neurons), so that rare positives are not drowned out.
- Inputs are divided per dimension by their RMS while training (Adam then sees well-scaled
  features); the division is folded into W_fc1 afterwards, so the predictor reads raw u.
- Held-out rows: the last val_fraction of the recording, never trained on (the command line
  puts every 1/val_fraction-th window of the corpus there: corpus.hold_out_last); early
  stopping keeps the weights of the best held-out loss.
- Backends: "numpy" (hand-written backward pass and Adam) or "torch" (same model, loss,
  optimiser and initial weights), "auto" = torch when installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from .errors import TrainError
from .record import Recording

_BLOCK_ROWS = 8192  # rows read from the memmaps at a time


@dataclass
class FitConfig:
    rank: int = 64
    recall: float = 0.95
    epochs: int = 30
    patience: int = 3
    batch: int = 256
    lr: float = 2e-3
    val_fraction: float = 0.1
    val_max_rows: int = 20000      # held-out rows used for the loss during training
    max_pos_weight: float = 100.0
    backend: str = "auto"          # auto | numpy | torch
    seed: int = 0
    threads: Optional[int] = None  # torch threads (None: torch's default)


@dataclass
class LayerFit:
    fc1: np.ndarray               # [rank, n_embd], float32, reads raw u
    fc2: np.ndarray               # [n_ff, rank]
    tau: float                    # this layer's cut for the requested recall
    recall: float                 # on the held-out rows at tau
    predicted_density: float      # share of neurons predicted active at tau (held-out)
    true_density: float           # share truly active (held-out)
    epochs: int                   # epochs run
    best_val_loss: float
    backend: str
    val_rows: range = range(0)    # the held-out rows the figures are measured on


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "torch" if torch_available() else "numpy"
    if name == "torch" and not torch_available():
        raise TrainError("--backend torch: torch is not installed (pip install torch), or use --backend numpy")
    if name not in ("numpy", "torch"):
        raise TrainError(f"unknown backend {name!r} (numpy, torch or auto)")
    return name


def _blocks(rows: range) -> Iterator[slice]:
    for a in range(rows.start, rows.stop, _BLOCK_ROWS):
        yield slice(a, min(a + _BLOCK_ROWS, rows.stop))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x))


def weighted_bce(logits: np.ndarray, y: np.ndarray, pos_weight: float) -> float:
    loss = pos_weight * y * _softplus(-logits) + (1 - y) * _softplus(logits)
    return float(loss.mean())


class _NumpyNet:
    """fc1 -> ReLU -> fc2 with Adam, float32."""

    def __init__(self, w1: np.ndarray, w2: np.ndarray, lr: float):
        self.w = [w1.copy(), w2.copy()]
        self.m = [np.zeros_like(a) for a in self.w]
        self.v = [np.zeros_like(a) for a in self.w]
        self.t = 0
        self.lr = lr

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.w[0].T, 0) @ self.w[1].T

    def step(self, x: np.ndarray, y: np.ndarray, pos_weight: float) -> None:
        z = x @ self.w[0].T
        h = np.maximum(z, 0)
        logits = h @ self.w[1].T
        sig = _sigmoid(logits)
        # d/dlogit of pos_weight*y*softplus(-l) + (1-y)*softplus(l), averaged over all entries
        dl = ((pos_weight * y * (sig - 1) + (1 - y) * sig) / y.size).astype(np.float32)
        g2 = dl.T @ h
        dz = (dl @ self.w[1]) * (z > 0)
        g1 = dz.T @ x
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for i, g in enumerate((g1, g2)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            mhat = self.m[i] / (1 - b1 ** self.t)
            vhat = self.v[i] / (1 - b2 ** self.t)
            self.w[i] -= (self.lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w[0].copy(), self.w[1].copy()


class _TorchNet:
    def __init__(self, w1: np.ndarray, w2: np.ndarray, lr: float, pos_weight: float, threads: Optional[int]):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        self.w1 = torch.nn.Parameter(torch.from_numpy(w1.copy()))
        self.w2 = torch.nn.Parameter(torch.from_numpy(w2.copy()))
        self.opt = torch.optim.Adam([self.w1, self.w2], lr=lr)
        self.loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))

    def logits(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x))
            return (torch.relu(xt @ self.w1.T) @ self.w2.T).numpy()

    def step(self, x: np.ndarray, y: np.ndarray, pos_weight: float) -> None:
        torch = self.torch
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        self.opt.zero_grad()
        loss = self.loss(torch.relu(xt @ self.w1.T) @ self.w2.T, yt)
        loss.backward()
        self.opt.step()

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w1.detach().numpy().copy(), self.w2.detach().numpy().copy()


def recall_cut(pos_logits: np.ndarray, recall: float) -> float:
    """A cut tau with (pos_logits > tau).mean() >= recall, as high as possible (midway between
    the last positive allowed to miss and the first that must be kept)."""
    if pos_logits.size == 0:
        return 0.0
    p = np.sort(pos_logits.astype(np.float64))
    n_miss = p.size - int(math.ceil(recall * p.size - 1e-9))
    if n_miss <= 0:
        return float(p[0] - max(1e-3, 1e-3 * abs(p[0])))
    lo, hi = p[n_miss - 1], p[n_miss]
    if hi > lo:
        return float((lo + hi) / 2)
    # ties at the boundary: keep them all
    return float(np.nextafter(hi, -np.inf))


MIN_ROWS = 20  # fewer recorded rows than this cannot be split into training and held-out rows


def fit_layer(rec: Recording, layer: int, cfg: FitConfig, log=None, expert: int = -1) -> LayerFit:  # type: ignore[no-untyped-def]
    """The predictor of `layer` (of its `expert` for MoE)."""
    if not 0 < cfg.recall <= 1:
        raise TrainError(f"recall must be in (0, 1], got {cfg.recall}")
    if cfg.rank < 1:
        raise TrainError(f"rank must be at least 1, got {cfg.rank}")
    backend = resolve_backend(cfg.backend)
    where = f"layer {layer}" + (f" expert {expert}" if expert >= 0 else "")
    n = rec.n_rows(layer, expert)
    if n < MIN_ROWS:
        raise TrainError(f"{where}: only {n} tokens recorded (routed to it); give a larger corpus or --max-tokens")
    n_val = max(1, int(round(n * cfg.val_fraction)))
    train_rows, val_rows = range(0, n - n_val), range(n - n_val, n)
    inputs = rec.inputs(layer, expert)

    def masks(rows: slice) -> np.ndarray:
        return rec.masks(layer, rows, expert)

    # per-dimension RMS of the training inputs, and the share of active neurons
    sq = np.zeros(rec.n_embd, dtype=np.float64)
    n_pos = 0
    for rows in _blocks(train_rows):
        x = np.asarray(inputs[rows], dtype=np.float64)
        sq += (x * x).sum(axis=0)
        n_pos += int(masks(rows).sum())
    scale = np.sqrt(sq / len(train_rows)).astype(np.float32)
    scale[scale == 0] = 1
    p = n_pos / (len(train_rows) * rec.n_ff)
    if n_pos == 0:
        raise TrainError(f"{where}: no neuron is ever active in the training rows; nothing to predict")
    pos_weight = float(min(cfg.max_pos_weight, max(1.0, (1 - p) / p)))

    rng = np.random.default_rng(cfg.seed + 1000 * layer + expert + 1)
    w1 = (rng.standard_normal((cfg.rank, rec.n_embd)) * math.sqrt(2 / rec.n_embd)).astype(np.float32)
    w2 = (rng.standard_normal((rec.n_ff, cfg.rank)) * math.sqrt(1 / cfg.rank)).astype(np.float32)
    net = _TorchNet(w1, w2, cfg.lr, pos_weight, cfg.threads) if backend == "torch" else _NumpyNet(w1, w2, cfg.lr)

    val_loss_rows = range(val_rows.start, min(val_rows.stop, val_rows.start + cfg.val_max_rows))

    def val_loss() -> float:
        total, count = 0.0, 0
        for rows in _blocks(val_loss_rows):
            x = np.asarray(inputs[rows], dtype=np.float32) / scale
            y = masks(rows).astype(np.float32)
            total += weighted_bce(net.logits(x), y, pos_weight) * y.size
            count += y.size
        return total / count

    best = (val_loss(), *net.weights())
    bad, epochs = 0, 0
    blocks = list(_blocks(train_rows))
    for epoch in range(cfg.epochs):
        epochs = epoch + 1
        for bi in rng.permutation(len(blocks)):
            rows = blocks[bi]
            x_block = np.asarray(inputs[rows], dtype=np.float32) / scale
            y_block = masks(rows).astype(np.float32)
            order = rng.permutation(len(x_block))
            for a in range(0, len(order), cfg.batch):
                idx = order[a:a + cfg.batch]
                net.step(x_block[idx], y_block[idx], pos_weight)
        loss = val_loss()
        if log is not None:
            log(f"{where}: epoch {epochs} held-out loss {loss:.4f}")
        if loss < best[0] - 1e-5:
            best, bad = (loss, *net.weights()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break

    best_loss, fc1, fc2 = best
    fc1 = (fc1 / scale[None, :]).astype(np.float32)  # fold the input scaling into fc1
    fc2 = fc2.astype(np.float32)

    # the cut for the requested recall, and what it gives, on all held-out rows
    pos = []
    for rows in _blocks(val_rows):
        logits = np.maximum(np.asarray(inputs[rows], dtype=np.float32) @ fc1.T, 0) @ fc2.T
        pos.append(logits[masks(rows)])
    tau = recall_cut(np.concatenate(pos), cfg.recall)
    stats = evaluate(rec, layer, fc1, fc2, tau, val_rows, expert)
    return LayerFit(fc1, fc2, tau, stats[0], stats[1], stats[2], epochs, best_loss, backend, val_rows)


def evaluate(rec: Recording, layer: int, fc1: np.ndarray, fc2: np.ndarray, tau: float,
             rows_range: Optional[range] = None, expert: int = -1) -> tuple[float, float, float]:
    """(recall, predicted density, true density) of a predictor at cut tau on recorded rows."""
    rows_range = rows_range if rows_range is not None else range(rec.n_rows(layer, expert))
    inputs = rec.inputs(layer, expert)
    hit = active = predicted = total = 0
    for rows in _blocks(rows_range):
        logits = np.maximum(np.asarray(inputs[rows], dtype=np.float32) @ fc1.T, 0) @ fc2.T
        keep = logits > tau
        y = rec.masks(layer, rows, expert)
        hit += int((keep & y).sum())
        active += int(y.sum())
        predicted += int(keep.sum())
        total += y.size
    return (hit / active if active else 1.0), predicted / total, active / total
