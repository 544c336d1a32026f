"""Runs a model densely over token sequences and records, per layer (per expert for MoE), the
predictor input and the true active mask, straight into .npy files opened as memmaps
(nothing accumulates in memory: rows are written as each layer computes them).

Files in the recording folder, for layer L (and expert E of an MoE layer: suffix _eE):
    u_L.npy      float32 [rows, n_embd]        predictor input (SPEC §2)
    mask_L.npy   uint8   [rows, ceil(n_ff/8)]  np.packbits of the active mask (a_i != 0)
A dense layer has a row per token; an expert, a row per token routed to it (in token order),
its files sized for every token and only the first n_rows(L, E) written (sparse on disk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib.format import open_memmap

from .forward import LayerObservation, LayerwiseForward
from .weights import ModelSource

Key = tuple[int, int]  # (layer, expert); expert -1 for a dense FFN


def _suffix(layer: int, expert: int) -> str:
    return f"{layer}" if expert < 0 else f"{layer}_e{expert}"


@dataclass
class Recording:
    folder: Path
    n_layer: int
    n_tokens: int
    n_embd: int
    n_ff: int
    seq_starts: np.ndarray  # first row of each sequence, plus N at the end
    rows: dict[Key, int]    # rows recorded per (layer, expert)

    def keys(self) -> list[Key]:
        return sorted(self.rows)

    def n_rows(self, layer: int, expert: int = -1) -> int:
        return self.rows.get((layer, expert), 0)

    def inputs(self, layer: int, expert: int = -1) -> np.ndarray:
        return np.load(self.folder / f"u_{_suffix(layer, expert)}.npy", mmap_mode="r")

    def packed_masks(self, layer: int, expert: int = -1) -> np.ndarray:
        return np.load(self.folder / f"mask_{_suffix(layer, expert)}.npy", mmap_mode="r")

    def masks(self, layer: int, rows: slice, expert: int = -1) -> np.ndarray:
        """Active masks of `rows` as bool [n, n_ff]."""
        packed = np.asarray(self.packed_masks(layer, expert)[rows])
        return np.unpackbits(packed, axis=1, count=self.n_ff).astype(bool)


def record(src: ModelSource, sequences: Sequence[np.ndarray], folder: Path) -> Recording:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = src.shape
    fwd = LayerwiseForward(src, sequences, folder)
    n = fwd.n_tokens
    n_bytes = (s.n_ff + 7) // 8
    files: dict[Key, tuple[np.memmap, np.memmap]] = {}
    rows: dict[Key, int] = {}
    layer_open = [-1]

    def observe(obs: LayerObservation) -> None:
        key = (obs.layer, obs.expert)
        if obs.layer != layer_open[0]:
            files.clear()  # the previous layer's memmaps flush and close as they go
            layer_open[0] = obs.layer
        if key not in files:
            sfx = _suffix(*key)
            files[key] = (open_memmap(folder / f"u_{sfx}.npy", mode="w+", dtype=np.float32, shape=(n, s.n_embd)),
                          open_memmap(folder / f"mask_{sfx}.npy", mode="w+", dtype=np.uint8, shape=(n, n_bytes)))
            rows[key] = 0
        u, m = files[key]
        if obs.expert < 0:  # a dense layer: row i is token i
            at = slice(int(obs.rows[0]), int(obs.rows[-1]) + 1)
        else:
            at = slice(rows[key], rows[key] + len(obs.rows))
        u[at] = obs.u
        m[at] = np.packbits(obs.active, axis=1)
        rows[key] = max(rows[key], at.stop)

    fwd.run("dense", observe=observe)
    files.clear()
    for name in ("hidden_a.f32", "hidden_b.f32"):
        (folder / name).unlink(missing_ok=True)
    (folder / "rows.json").write_text(json.dumps({_suffix(*k): v for k, v in rows.items()}))
    return Recording(folder, s.n_layer, n, s.n_embd, s.n_ff, fwd.starts.copy(), rows)
