"""Text files -> token sequences of at most n_ctx tokens, each starting with BOS.

A corpus is a file or a folder (every *.txt under it, sorted, so runs are reproducible).
Each file is tokenized whole (special-token texts become their ids) and cut into windows of
n_ctx - 1 tokens; every window gets BOS in front and is evaluated from position 0, so no token
is scored twice and none is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import TrainError
from .weights import ModelSource


def corpus_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not found:
                raise TrainError(f"corpus folder {p} holds no .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise TrainError(f"corpus {p}: no such file or folder")
    if not files:
        raise TrainError("no corpus given")
    return files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrainError(f"{path}: not UTF-8 text ({e})") from e


def chunk(tokens: list[int], bos: int, n_ctx: int) -> list[np.ndarray]:
    if n_ctx < 2:
        raise TrainError(f"context size {n_ctx} is too small (at least 2)")
    step = n_ctx - 1
    return [np.asarray([bos] + tokens[i:i + step], dtype=np.int32) for i in range(0, len(tokens), step)]


def token_sequences(src: ModelSource, paths: Iterable[Path], n_ctx: int,
                    max_tokens: Optional[int] = None) -> list[np.ndarray]:
    """Windows of the corpus files, at most max_tokens tokens (BOS included) in all. When the
    corpus is larger, the windows are taken evenly across all of it (a corpus is often sorted
    by topic, so its first tokens are no fair sample); files beyond 20 x max_tokens are not read."""
    out: list[np.ndarray] = []
    total = 0
    for path in corpus_files(paths):
        for seq in chunk(src.tokenize(read_text(path)), src.bos_id, n_ctx):
            out.append(seq)
            total += len(seq)
        if max_tokens is not None and total >= 20 * max_tokens:
            break
    if not out:
        raise TrainError("the corpus holds no text")
    if max_tokens is None or total <= max_tokens:
        return out
    n_keep = max(1, min(len(out), int(len(out) * max_tokens / total)))
    picked = [out[i] for i in np.linspace(0, len(out) - 1, n_keep).round().astype(int)]
    kept, budget = [], max_tokens
    for seq in picked:
        if budget < 2:
            break
        kept.append(seq[:budget])
        budget -= len(kept[-1])
    return kept


def hold_out_last(sequences: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """The same windows with every round(1/fraction)-th one moved to the end, so that the last
    `fraction` of the rows (the held-out rows of fit.py) is spread over the whole corpus."""
    if not 0 < fraction < 1 or len(sequences) < 2:
        return list(sequences)
    step = max(2, int(round(1 / fraction)))
    held = [q for i, q in enumerate(sequences) if i % step == step - 1]
    return [q for i, q in enumerate(sequences) if i % step != step - 1] + held
