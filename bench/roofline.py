"""The decode roofline: weight bytes one token touches in each FFN mode, and the machine's
read bandwidth measured in the same run (SPEC §5).

Bandwidth: `n_threads` Python threads each take a slice of a 1 GiB float32 array and reduce
it with BLAS sdot (x . x, one pass of reads; BLAS releases the GIL), BLAS pinned to one thread
so that exactly n_threads cores read. Run in a child process, so the pinning does not slow
the parent's numpy. The best of several passes is kept (as STREAM does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _bandwidth_child(n_threads: int, mib: int, passes: int) -> float:
    import threading
    import time

    import numpy as np

    a = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(a, n_threads)
    best = 0.0
    for _ in range(passes):
        threads = [threading.Thread(target=np.dot, args=(p, p)) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best / 1e9


def measure_bandwidth(n_threads: int, mib: int = 1024, passes: int = 8) -> float:
    """Read bandwidth in GB/s with n_threads threads."""
    env = dict(os.environ) | {k: "1" for k in _BLAS_ENV}
    out = subprocess.run([sys.executable, __file__, str(n_threads), str(mib), str(passes)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["gb_s"])


@dataclass
class FileBytes:
    """Bytes of one GGUF file's tensors, grouped by what reads them."""
    attn: int        # attention matrices and all norms, all layers
    gate: int
    up: int
    down: int
    predictor: int
    output: int      # output head + one row of the token embedding
    n_layer: int
    down_neuron_major: bool  # ffn_down_t only: the runtime's down projection skips zero activations
    down_t: int = 0          # ffn_down_t beside ffn_down (down_layout both: the threshold mode reads it)

    def per_token(self, mode: str, density: float = 1.0, gate_positive: float = 1.0, active: float = 1.0) -> float:
        """Weight bytes one decoded token reads. predicted: density = share of neurons computed;
        exact: gate_positive = share of up rows read, density = share of down rows read.
        dense: everything, except that a neuron-major down projection (dReLU files) goes
        through the sparse down op in every mode, which reads only the `active` share."""
        base = self.attn + self.output
        if mode == "dense":
            return base + self.gate + self.up + (active if self.down_neuron_major else 1.0) * self.down
        if mode == "predicted":
            return base + self.predictor + density * (self.gate + self.up + self.down)
        if mode == "exact":
            return base + self.gate + gate_positive * self.up + density * self.down
        if mode == "threshold":  # SwiGLU: every gate row, up and down rows of the computed share
            return base + self.gate + density * (self.up + (self.down_t or self.down))
        raise ValueError(mode)


def file_bytes(path: Path) -> FileBytes:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    b = dict(attn=0, gate=0, up=0, down=0, predictor=0, output=0)
    n_layer = 0
    names = {t.name for t in r.tensors}
    both = any(".ffn_down_t." in n for n in names) and any(".ffn_down." in n for n in names)
    neuron_major = any(".ffn_down_t." in n for n in names) and not both
    down_t = 0
    for t in r.tensors:
        name, n = t.name, int(t.n_bytes)
        if name == "token_embd.weight":
            b["output"] += n // int(t.shape[-1])  # one row per token
        elif name in ("output.weight", "output_norm.weight"):
            b["output"] += n
        elif ".ffn_gate." in name:
            b["gate"] += n
        elif ".ffn_up." in name:
            b["up"] += n
        elif both and ".ffn_down_t." in name:
            down_t += n
        elif ".ffn_down" in name:
            b["down"] += n
        elif ".ffn_pred_" in name:
            b["predictor"] += n
        else:
            b["attn"] += n
        if name.startswith("blk."):
            n_layer = max(n_layer, int(name.split(".")[1]) + 1)
    if not any(t.name == "output.weight" for t in r.tensors):  # tied: the head is token_embd
        b["output"] += sum(int(t.n_bytes) for t in r.tensors if t.name == "token_embd.weight")
    return FileBytes(n_layer=n_layer, down_neuron_major=neuron_major, down_t=down_t, **b)


if __name__ == "__main__":
    print(json.dumps({"gb_s": _bandwidth_child(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))}))
