"""Trains the bundled model from scratch: next-token cross-entropy on packed documents, plus a
per-layer L1 penalty on the FFN activations whose weight follows the layer's measured active
share toward a target (a multiplicative controller). dReLU alone leaves roughly 3/4 of the
neurons inactive in a small, briefly trained model; the penalty takes each layer to the
target (about 90% inactive on held-out text, like TurboSparse) at a small cost in perplexity.

Runs on CUDA when available, else on the CPU; the schedule is a fixed number of steps, so a
run is the same work wherever it runs. The weights returned are those of the evaluation with
the lowest held-out loss in the second half of training (small corpus: later passes can overfit).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .llama_torch import LlamaConfig, LlamaDRelu


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 16               # sequences per step
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    target_density: float = 0.08  # per-layer share of active FFN neurons the penalty aims at (training
                                  # batches; held-out text runs a little denser)
    l1_start: float = 1e-3        # initial penalty weight
    l1_gain: float = 0.02         # controller: log-step per unit of relative density error
    sparsity_after: int = 100     # steps before the controller starts
    eval_every: int = 250
    eval_batches: int = 8
    seed: int = 0


@dataclass
class TrainResult:
    steps: int
    seconds: float
    train_loss: float
    eval_loss: float
    densities: list[float]        # per layer, on held-out text, at the end
    l1_weights: list[float]
    device: str
    history: list[dict]
    kept_step: int                # the step whose weights are returned (best held-out loss)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(stream: np.ndarray, n_ctx: int, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = rng.integers(0, len(stream) - n_ctx - 1, size=batch)
    x = np.stack([stream[s:s + n_ctx] for s in starts]).astype(np.int64)
    y = np.stack([stream[s + 1:s + n_ctx + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate(model: LlamaDRelu, stream: np.ndarray, n_ctx: int, batch: int, n_batches: int,
             device: torch.device) -> tuple[float, list[float]]:
    """Mean loss and per-layer active share over consecutive windows of the held-out stream."""
    model.eval()
    windows = [(s, s + n_ctx) for s in range(0, len(stream) - n_ctx - 1, n_ctx)][: batch * n_batches]
    total, count = 0.0, 0
    active = np.zeros(model.cfg.n_layer)
    for i in range(0, len(windows), batch):
        part = windows[i:i + batch]
        x = torch.from_numpy(np.stack([stream[a:b] for a, b in part]).astype(np.int64)).to(device)
        y = torch.from_numpy(np.stack([stream[a + 1:b + 1] for a, b in part]).astype(np.int64)).to(device)
        logits, acts = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
        active += np.array([(a > 0).float().sum().item() / a.shape[-1] for a in acts])
    model.train()
    return total / max(count, 1), list(active / max(count, 1))


def train(model_cfg: LlamaConfig, cfg: TrainConfig, train_stream: np.ndarray, eval_stream: np.ndarray,
          device: torch.device, log: Optional[Callable[[str], None]] = None) -> tuple[LlamaDRelu, TrainResult]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LlamaDRelu(model_cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    l1 = np.full(model_cfg.n_layer, cfg.l1_start)
    history: list[dict] = []
    best: Optional[tuple[float, dict]] = None  # (held-out loss, state) of the best evaluation
    start = time.monotonic()
    loss_avg = None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = batches(train_stream, model_cfg.n_ctx, cfg.batch, rng)
        logits, acts = model(x.to(device))
        ce = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten())
        penalty = sum(w * a.mean() for w, a in zip(l1, acts)) if step >= cfg.sparsity_after else 0.0
        loss = ce + penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            density = np.array([(a > 0).float().mean().item() for a in acts])
        if step >= cfg.sparsity_after:
            l1 *= np.exp(cfg.l1_gain * (density - cfg.target_density) / cfg.target_density)
            l1 = np.clip(l1, 1e-6, 100.0)
        loss_avg = ce.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * ce.item()
        if log is not None and (step % 50 == 0 or step == cfg.steps - 1):
            tok_s = (step + 1) * cfg.batch * model_cfg.n_ctx / (time.monotonic() - start)
            log(f"step {step:5d}  loss {loss_avg:.4f}  density {density.mean():.3f} "
                f"(max {density.max():.3f})  l1 {l1.mean():.2e}  lr {lr_at(step, cfg):.2e}  {tok_s:.0f} tok/s")
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            ev_loss, ev_density = evaluate(model, eval_stream, model_cfg.n_ctx, cfg.batch, cfg.eval_batches, device)
            history.append({"step": step + 1, "train_loss": loss_avg, "eval_loss": ev_loss,
                            "eval_density": ev_density, "l1": l1.tolist(), "seconds": time.monotonic() - start})
            if log is not None:
                log(f"eval @ {step + 1}: loss {ev_loss:.4f} (ppl {math.exp(ev_loss):.2f}), "
                    f"density per layer {' '.join(f'{d:.3f}' for d in ev_density)}")
            # the sparsity must have settled before a checkpoint may win
            if step >= cfg.steps // 2 and (best is None or ev_loss < best[0]):
                best = (ev_loss, {k: v.detach().clone() for k, v in model.state_dict().items()})
                history[-1]["best"] = True
    if best is not None:
        model.load_state_dict(best[1])
    kept = next((h for h in reversed(history) if h.get("best")), history[-1])
    result = TrainResult(cfg.steps, time.monotonic() - start, float(loss_avg or 0.0), kept["eval_loss"],
                         kept["eval_density"], l1.tolist(), str(device), history, int(kept["step"]))
    return model, result


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
