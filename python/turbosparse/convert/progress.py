"""Progress bar while writing, and the summary printed at the end."""

from __future__ import annotations

import sys
from typing import Optional

from tqdm import tqdm

from .writer import ProgressFn, WriteResult


class Progress:
    """A tqdm bar over bytes written, showing the tensor just written."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.bar: Optional[tqdm] = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                                        desc="writing", file=sys.stderr, dynamic_ncols=True) if enabled else None

    def callback(self) -> Optional[ProgressFn]:
        if self.bar is None:
            return None
        bar = self.bar

        def update(name: str, nbytes: int) -> None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(nbytes)
        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.2f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return str(n)


def summary(result: WriteResult) -> str:
    types = ", ".join(f"{name} x{count}" for name, count in sorted(result.types.items()))
    return "\n".join([
        f"wrote {result.path}",
        f"  parameters:           {_human(result.n_params)} ({result.n_params})",
        f"  predictor parameters: {_human(result.n_predictor_params)} ({result.n_predictor_params})",
        f"  tensor types:         {types}",
        f"  file size:            {result.file_size / 2**20:.1f} MiB ({result.file_size} bytes)",
        f"  time:                 {result.seconds:.1f} s",
    ])
