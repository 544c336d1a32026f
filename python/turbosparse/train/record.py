"""Runs a model densely over token sequences and records, per layer, the predictor input and
the true active mask, straight into .npy files opened as memmaps (nothing accumulates in
memory: each sequence's rows are written as the layer computes them).

Files in the recording folder, for layer L:
    u_L.npy      float32 [N, n_embd]        predictor input (SPEC §2)
    mask_L.npy   uint8   [N, ceil(n_ff/8)]  np.packbits of the active mask (a_i != 0), per row
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib.format import open_memmap

from .forward import LayerObservation, LayerwiseForward
from .weights import ModelSource


@dataclass
class Recording:
    folder: Path
    n_layer: int
    n_tokens: int
    n_embd: int
    n_ff: int
    seq_starts: np.ndarray  # first row of each sequence, plus N at the end

    def inputs(self, layer: int) -> np.ndarray:
        return np.load(self.folder / f"u_{layer}.npy", mmap_mode="r")

    def packed_masks(self, layer: int) -> np.ndarray:
        return np.load(self.folder / f"mask_{layer}.npy", mmap_mode="r")

    def masks(self, layer: int, rows: slice) -> np.ndarray:
        """Active masks of `rows` as bool [n, n_ff]."""
        packed = np.asarray(self.packed_masks(layer)[rows])
        return np.unpackbits(packed, axis=1, count=self.n_ff).astype(bool)


def record(src: ModelSource, sequences: Sequence[np.ndarray], folder: Path) -> Recording:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = src.shape
    fwd = LayerwiseForward(src, sequences, folder)
    n = fwd.n_tokens
    n_bytes = (s.n_ff + 7) // 8
    files: dict[int, tuple[np.memmap, np.memmap]] = {}

    def observe(obs: LayerObservation) -> None:
        if obs.layer not in files:
            files.clear()  # the previous layer's memmaps flush and close as they go
            files[obs.layer] = (
                open_memmap(folder / f"u_{obs.layer}.npy", mode="w+", dtype=np.float32, shape=(n, s.n_embd)),
                open_memmap(folder / f"mask_{obs.layer}.npy", mode="w+", dtype=np.uint8, shape=(n, n_bytes)))
        u, m = files[obs.layer]
        rows = slice(obs.start, obs.start + len(obs.u))
        u[rows] = obs.u
        m[rows] = np.packbits(obs.active, axis=1)

    fwd.run("dense", observe=observe)
    for u, m in files.values():
        u.flush()
        m.flush()
    files.clear()
    for name in ("hidden_a.f32", "hidden_b.f32"):
        (folder / name).unlink(missing_ok=True)
    return Recording(folder, s.n_layer, n, s.n_embd, s.n_ff, fwd.starts.copy())
