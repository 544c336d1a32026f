"""A synthetic TurboSparse-Mixtral-shaped pair of GGUF files for the MoE benchmark, written
directly (no HF checkpoint, no converter: at this size those take an hour on 2 cores).

Two files hold the same bytes of attention, router and gate/up experts:
  ts-<type>.gguf      turbosparse: dReLU experts, neuron-major down (ffn_down_t_exps), per-expert
                      predictors (ffn_pred_fc1_exps / fc2_exps), as convert-turbosparse writes them
  mixtral-<type>.gguf a plain llama.cpp Mixtral file (SwiGLU, standard ffn_down_exps)
The down projections hold the same values transposed in F16; in Q4_0 each file gets its own
random blocks of the same distribution (transposing Q4_0 needs a requantisation that costs
more than the whole file), which reads the same bytes per token.

Weights are random, made without quantising: Q4_0 blocks are random nibbles 1..15 (values
-7..7, mean 0) with a scale that gives the wanted standard deviation; F16 rows are slices of
one pool of Gaussians. The natural dReLU density comes from a massive residual dimension, as
synth_model.py explains: every token's embedding holds C in dimension MASSIVE_DIM, no layer
writes into it (that row of o_proj / down is zero), every gate/up row has -7 scale units
there, and the FFN norm weight at MASSIVE_DIM (`norm_scale`) sets how far that shifts each
pre-activation: P(g > 0) = Phi(-1.675 s). The norm weights are the only bytes that depend on
the density, so `set_natural_density` rewrites them in place and one pair of files serves
every density (disk: 2 x 3.3 GB in Q4_0, 2 x 11.6 GB in F16 at 4 layers).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

MASSIVE_DIM = 7
Q4_STD = math.sqrt(2 * sum(v * v for v in range(1, 8)) / 15)  # std of the values -7..7 in scale units
GATE_SHIFT_UNITS = 7.0  # the gate/up weight at MASSIVE_DIM, in scale units (negative)


@dataclass(frozen=True)
class MoeShape:
    n_layer: int = 4
    n_embd: int = 4096
    n_ff: int = 14336
    n_expert: int = 8
    n_expert_used: int = 2
    n_head: int = 32
    n_head_kv: int = 8
    n_vocab: int = 32000
    rank: int = 1024

    def key(self) -> str:
        return (f"moe-L{self.n_layer}-E{self.n_embd}-F{self.n_ff}-X{self.n_expert}k{self.n_expert_used}"
                f"-H{self.n_head}-K{self.n_head_kv}-V{self.n_vocab}-R{self.rank}")


def norm_scale(natural_density: float) -> float:
    """The FFN norm weight at MASSIVE_DIM giving P(g > 0) = P(u > 0) = sqrt(density)."""
    z = -NormalDist().inv_cdf(math.sqrt(natural_density))
    return max(0.0, z * Q4_STD / GATE_SHIFT_UNITS)


class Maker:
    """Random tensors as the bytes a GGUF holds: Q4_0 / Q8_0 blocks or F16 rows."""

    def __init__(self, seed: int, pool_size: int = 1 << 24):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.standard_normal(pool_size, dtype=np.float32).astype(np.float16)

    def q4_0(self, rows: int, n: int, std: float, shift_dim: int = -1, zero_row: int = -1,
             zero_col: int = -1) -> np.ndarray:
        """[rows, n/32 * 18] bytes; shift_dim: that column gets -GATE_SHIFT_UNITS scale units;
        zero_row: a row of zeros; zero_col: that column zero."""
        nb = n // 32
        blk = np.empty((rows, nb, 18), dtype=np.uint8)
        d = np.float16(std / Q4_STD)
        blk[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        q = np.frombuffer(self.rng.bytes(rows * nb * 16), dtype=np.uint8).reshape(rows, nb, 16)
        lo, hi = q & 15, q >> 4
        lo = np.where(lo == 0, 8, lo).astype(np.uint8)  # nibble 0 (-8) -> 8 (0): values -7..7, mean 0
        hi = np.where(hi == 0, 8, hi).astype(np.uint8)
        for dim, nib in ((shift_dim, 8 - int(GATE_SHIFT_UNITS)), (zero_col, 8)):
            if dim >= 0:
                b, j = divmod(dim, 32)
                if j < 16:
                    lo[:, b, j] = nib
                else:
                    hi[:, b, j - 16] = nib
        blk[:, :, 2:] = lo | (hi << 4)
        if zero_row >= 0:
            blk[zero_row, :, 0:2] = 0
        return blk.reshape(rows, nb * 18)

    def q8_0(self, rows: int, n: int, std: float) -> np.ndarray:
        nb = n // 32
        blk = np.empty((rows, nb, 34), dtype=np.uint8)
        d = np.float16(std / 73.3)  # int8 values uniform in -127..127
        blk[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        q = np.frombuffer(self.rng.bytes(rows * nb * 32), dtype=np.uint8).reshape(rows, nb, 32)
        blk[:, :, 2:] = np.where(q == 128, 0, q).astype(np.uint8)
        return blk.reshape(rows, nb * 34)

    def f16(self, rows: int, n: int, std: float, shift_dim: int = -1, zero_row: int = -1,
            zero_col: int = -1) -> np.ndarray:
        size = rows * n
        start = int(self.rng.integers(0, self.pool.size))
        idx = (start + np.arange(size, dtype=np.int64) * 7) % self.pool.size  # stride 7: rows differ
        a = (self.pool[idx] * np.float16(std)).reshape(rows, n)
        if shift_dim >= 0:
            a[:, shift_dim] = -GATE_SHIFT_UNITS * std / Q4_STD
        if zero_col >= 0:
            a[:, zero_col] = 0
        if zero_row >= 0:
            a[zero_row, :] = 0
        return a


@dataclass
class Tensor:
    name: str
    ne: tuple[int, ...]        # ggml order: ne0 first
    qtype: str                 # f32 | f16 | q4_0 | q8_0
    make: Callable[[], np.ndarray]
    files: tuple[str, ...]     # "ts", "mixtral"


def _nbytes(ne: tuple[int, ...], qtype: str) -> int:
    n = math.prod(ne)
    return {"f32": 4 * n, "f16": 2 * n, "q4_0": n // 32 * 18, "q8_0": n // 32 * 34}[qtype]


def tensors(s: MoeShape, qtype: str, mk: Maker, natural_density: float) -> Iterator[Tensor]:
    n, f, X, hd = s.n_embd, s.n_ff, s.n_expert, s.n_embd // s.n_head
    kv = s.n_head_kv * hd
    both = ("ts", "mixtral")

    def mat(rows: int, cols: int, std: float, t: str = qtype, **kw) -> np.ndarray:
        return getattr(mk, t)(rows, cols, std, **kw)

    def stack(rows: int, cols: int, std: float, **kw) -> Callable[[], np.ndarray]:
        return lambda: np.stack([mat(rows, cols, std, **kw) for _ in range(X)])

    def embd() -> np.ndarray:
        a = mat(s.n_vocab, n, 1.0)
        if qtype == "q4_0":  # block 0: zeros but C at MASSIVE_DIM (7 units of C/7)
            b = np.frombuffer(np.float16(math.sqrt(n) / 7).tobytes(), dtype=np.uint8)
            a[:, 0:2] = b
            a[:, 2:18] = 0x88
            a[:, 2 + MASSIVE_DIM] = 0x8F
        else:
            a[:, MASSIVE_DIM] = math.sqrt(n)
        return a

    ones = lambda: np.ones(n, dtype=np.float32)  # noqa: E731
    yield Tensor("token_embd.weight", (n, s.n_vocab), qtype, embd, both)
    yield Tensor("output_norm.weight", (n,), "f32", ones, both)
    yield Tensor("output.weight", (n, s.n_vocab), "q8_0" if qtype == "q4_0" else qtype,
                 lambda: mat(s.n_vocab, n, 1 / math.sqrt(n), "q8_0" if qtype == "q4_0" else qtype), both)
    for il in range(s.n_layer):
        b = f"blk.{il}"
        yield Tensor(f"{b}.attn_norm.weight", (n,), "f32", ones, both)
        yield Tensor(f"{b}.ffn_norm.weight", (n,), "f32", lambda: ffn_norm(n, natural_density), both)
        yield Tensor(f"{b}.attn_q.weight", (n, n), qtype, lambda: mat(n, n, 1 / math.sqrt(n)), both)
        yield Tensor(f"{b}.attn_k.weight", (n, kv), qtype, lambda: mat(kv, n, 1 / math.sqrt(n)), both)
        yield Tensor(f"{b}.attn_v.weight", (n, kv), qtype, lambda: mat(kv, n, 1 / math.sqrt(n)), both)
        yield Tensor(f"{b}.attn_output.weight", (n, n), qtype,
                     lambda: mat(n, n, 0.1 / math.sqrt(n), zero_row=MASSIVE_DIM), both)
        router = lambda: mk.f16(X, n, 4 / math.sqrt(n), zero_col=MASSIVE_DIM)  # noqa: E731
        yield Tensor(f"{b}.ffn_gate_inp.weight", (n, X), "f16", router, both)
        for name in ("ffn_gate_exps", "ffn_up_exps"):
            yield Tensor(f"{b}.{name}.weight", (n, f, X), qtype,
                         stack(f, n, 1 / math.sqrt(n), shift_dim=MASSIVE_DIM), both)
        down_std = 0.3 / math.sqrt(f * 0.1)
        if qtype == "f16":  # one draw, the llama.cpp layout and its transpose
            held: dict[str, np.ndarray] = {}

            def down_std_layout() -> np.ndarray:
                held["d"] = np.stack([mat(n, f, down_std, zero_row=MASSIVE_DIM) for _ in range(X)])
                return held["d"]

            yield Tensor(f"{b}.ffn_down_exps.weight", (f, n, X), qtype, down_std_layout, ("mixtral",))
            yield Tensor(f"{b}.ffn_down_t_exps.weight", (n, f, X), qtype,
                         lambda: np.ascontiguousarray(held.pop("d").transpose(0, 2, 1)), ("ts",))
        else:
            yield Tensor(f"{b}.ffn_down_exps.weight", (f, n, X), qtype,
                         stack(n, f, down_std, zero_row=MASSIVE_DIM), ("mixtral",))
            yield Tensor(f"{b}.ffn_down_t_exps.weight", (n, f, X), qtype,
                         stack(f, n, down_std, zero_col=MASSIVE_DIM), ("ts",))
        yield Tensor(f"{b}.ffn_pred_fc1_exps.weight", (n, s.rank, X), qtype,
                     stack(s.rank, n, 1 / math.sqrt(n), zero_col=MASSIVE_DIM), ("ts",))
        yield Tensor(f"{b}.ffn_pred_fc2_exps.weight", (s.rank, f, X), qtype,
                     stack(f, s.rank, 1 / math.sqrt(s.rank)), ("ts",))


def ffn_norm(n: int, natural_density: float) -> np.ndarray:
    a = np.ones(n, dtype=np.float32)
    a[MASSIVE_DIM] = norm_scale(natural_density)
    return a


def _writer(path: Path, s: MoeShape, qtype: str, ts: bool):
    import gguf
    from tiny_gguf import vocab

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic TurboSparse-Mixtral shape" if ts else "synthetic Mixtral shape")
    w.add_file_type({"f16": 1, "q4_0": 2}[qtype])
    w.add_context_length(4096)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(1e6)
    w.add_rope_dimension_count(s.n_embd // s.n_head)
    w.add_vocab_size(s.n_vocab)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    tokens, scores, types = vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if ts:
        w.add_uint32("turbosparse.format_version", 1)
        w.add_string("turbosparse.source_model_type", "turbosparsemixtral")
        w.add_string("turbosparse.ffn_kind", "drelu")
        w.add_string("turbosparse.down_layout", "neuron_major")
        w.add_bool("turbosparse.predictor.present", True)
        w.add_string("turbosparse.predictor.input", "ffn_input")
        w.add_float32("turbosparse.predictor.threshold", 0.0)
    return w


def write_pair(root: Path, s: MoeShape, qtype: str, natural_density: float, seed: int = 0,
               log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Writes (once) ts-<qtype>.gguf and mixtral-<qtype>.gguf under root; returns their paths."""
    from gguf import GGMLQuantizationType as QT

    paths = {"ts": root / f"ts-{qtype}.gguf", "mixtral": root / f"mixtral-{qtype}.gguf"}
    if all(p.is_file() for p in paths.values()):
        return paths["ts"], paths["mixtral"]
    root.mkdir(parents=True, exist_ok=True)
    part = {k: p.with_suffix(".part") for k, p in paths.items()}
    writers = {k: _writer(part[k], s, qtype, k == "ts") for k in paths}
    raw = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0}
    listed = list(tensors(s, qtype, Maker(seed, min(1 << 24, 2 * s.n_ff * s.n_embd)), natural_density))
    for t in listed:
        for k in t.files:
            shape = tuple(reversed(t.ne))
            if t.qtype in raw:
                nbytes = _nbytes(t.ne, t.qtype)
                bshape = shape[:-1] + (shape[-1] // 32 * (18 if t.qtype == "q4_0" else 34),)
                writers[k].add_tensor_info(t.name, bshape, np.dtype(np.uint8), nbytes, raw_dtype=raw[t.qtype])
            else:
                writers[k].add_tensor_info(t.name, shape, np.dtype(np.float16 if t.qtype == "f16" else np.float32),
                                           _nbytes(t.ne, t.qtype))
    for w in writers.values():
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
    total = sum(_nbytes(t.ne, t.qtype) * len(t.files) for t in listed)
    log(f"writing {paths['ts'].name} + {paths['mixtral'].name}: {total / 1e9:.1f} GB")
    for t in listed:
        a = t.make()
        for k in t.files:
            writers[k].write_tensor_data(a)
    for k, w in writers.items():
        w.close()
        part[k].rename(paths[k])
    return paths["ts"], paths["mixtral"]


def set_natural_density(path: Path, natural_density: float) -> None:
    """Rewrites every blk.*.ffn_norm.weight of the file in place for this natural density."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    offsets = [(int(t.data_offset), int(t.n_elements)) for t in r.tensors if t.name.endswith(".ffn_norm.weight")]
    del r
    with open(path, "r+b") as fh:
        for off, n in offsets:
            fh.seek(off)
            fh.write(ffn_norm(n, natural_density).tobytes())
