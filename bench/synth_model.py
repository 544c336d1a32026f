"""A synthetic Mistral-shaped checkpoint for the decode benchmark, written tensor by tensor.

Two tiny-HF-style folders share one weights file:
  hf-drelu/   model_type "bamboo" (TurboSparse-Mistral layout, dReLU), with predictors
  hf-swiglu/  model_type "mistral" (dense SwiGLU): the same attention and FFN matrices, no
              predictors; its weights shard is a symlink to hf-drelu's
so `convert-turbosparse` turns them into a sparse file and a plain llama.cpp file that hold
the same bytes of attention/FFN weights.

Why the weights are not plain Gaussians: with independent Gaussian rows, relu(g)*relu(u) is
non-zero for 1/4 of the neurons, while TurboSparse-Mistral leaves ~10% active. Real models
get their sparsity from a few "massive" residual dimensions that act as biases; we copy that:
every token's embedding holds a large constant C in one dimension (MASSIVE_DIM), the layers
never write into it (row MASSIVE_DIM of o_proj and down_proj is zero), and every gate/up row
has a negative weight -b there. After the RMSNorm this shifts each gate/up pre-activation by
a fixed multiple of its own standard deviation, so P(g > 0) = P(u > 0) = p and the share of
active neurons is p^2 = `natural_density` (tokens still pick different neurons: the rest of
each embedding is random).

The predictor (rank r) is random: fc1 ignores the massive dimension and every fc2 row has
zero mean, so which neurons it picks changes from token to token (no static hot set that
would sit in the CPU caches and flatter the sparse modes). Its threshold is calibrated
afterwards (calibrate.py) to hit a predicted density; its recall is meaningless and not
what this benchmark measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from hf_fixtures import write_safetensors_lazy, write_tokenizer  # noqa: E402

MASSIVE_DIM = 7
WEIGHTS_SHARD = "model-00001-of-00002.safetensors"
PREDICTOR_SHARD = "model-00002-of-00002.safetensors"


@dataclass(frozen=True)
class SynthShape:
    n_layer: int = 8
    n_embd: int = 4096
    n_ff: int = 14336
    n_head: int = 32
    n_head_kv: int = 8
    n_vocab: int = 32000
    rank: int = 1024
    natural_density: float = 0.10  # share of dReLU neurons active per token (p_gate * p_up)
    seed: int = 0

    def key(self) -> str:
        """A folder name that changes whenever anything that shapes the files changes."""
        return (f"L{self.n_layer}-E{self.n_embd}-F{self.n_ff}-H{self.n_head}-K{self.n_head_kv}-V{self.n_vocab}"
                f"-R{self.rank}-D{self.natural_density:g}-S{self.seed}")


def hf_config(shape: SynthShape, model_type: str) -> dict:
    drelu = model_type == "bamboo"
    return {
        "architectures": ["BambooForCausalLM" if drelu else "MistralForCausalLM"],
        "model_type": model_type,
        "hidden_act": "relu" if drelu else "silu",
        "hidden_size": shape.n_embd,
        "intermediate_size": shape.n_ff,
        "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "vocab_size": shape.n_vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def weight_shapes(shape: SynthShape) -> dict[str, tuple[int, ...]]:
    n, f, hd = shape.n_embd, shape.n_ff, shape.n_embd // shape.n_head
    kv = shape.n_head_kv * hd
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.n_vocab, n)}
    for i in range(shape.n_layer):
        p = f"model.layers.{i}"
        out.update({
            f"{p}.input_layernorm.weight": (n,),
            f"{p}.self_attn.q_proj.weight": (n, n),
            f"{p}.self_attn.k_proj.weight": (kv, n),
            f"{p}.self_attn.v_proj.weight": (kv, n),
            f"{p}.self_attn.o_proj.weight": (n, n),
            f"{p}.post_attention_layernorm.weight": (n,),
            f"{p}.mlp.gate_proj.weight": (f, n),
            f"{p}.mlp.up_proj.weight": (f, n),
            f"{p}.mlp.down_proj.weight": (n, f),
        })
    out["model.norm.weight"] = (n,)
    out["lm_head.weight"] = (shape.n_vocab, n)
    return out


def predictor_shapes(shape: SynthShape) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(shape.n_layer):
        p = f"model.layers.{i}.mlp.predictor"
        out[f"{p}.fc1.weight"] = (shape.rank, shape.n_embd)
        out[f"{p}.fc2.weight"] = (shape.n_ff, shape.rank)
    return out


def gate_shift(shape: SynthShape) -> float:
    """-b, the gate/up weight on the massive dimension (see the module comment).

    After the RMSNorm x = h / rms(h) with h = noise (std 1 per dim) + C e_k, C = sqrt(n):
    x_k = sqrt(n / 2) and the noise part has norm sqrt(n / 2). A row with N(0, 1/n) entries
    gives a pre-activation of std sqrt(1/2) from the noise plus -b * sqrt(n / 2) from x_k, so
    P(> 0) = Phi(-b sqrt(n)) and b = z / sqrt(n) with Phi(-z) = p."""
    p = math.sqrt(shape.natural_density)
    z = -NormalDist().inv_cdf(p)
    return -z / math.sqrt(shape.n_embd)


def _maker(shape: SynthShape) -> Callable[[str, tuple[int, ...]], np.ndarray]:
    n, f = shape.n_embd, shape.n_ff
    shift = gate_shift(shape)

    def make(name: str, dims: tuple[int, ...]) -> np.ndarray:
        # one generator per tensor, seeded by its name: files are reproducible and any
        # tensor can be made without making the ones before it
        rng = np.random.default_rng([shape.seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])

        def normal(scale: float) -> np.ndarray:
            a = rng.standard_normal(dims, dtype=np.float32)
            a *= scale
            return a

        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            a = 1.0 + normal(0.05)
            a[MASSIVE_DIM] = 1.0
            return a
        if name == "model.embed_tokens.weight":
            a = normal(1.0)
            a[:, MASSIVE_DIM] = math.sqrt(n)
            return a
        if name == "lm_head.weight" or name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            return normal(1.0 / math.sqrt(n))
        if name.endswith("o_proj.weight"):
            a = normal(0.1 / math.sqrt(n))
            a[MASSIVE_DIM, :] = 0.0
            return a
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            a = normal(1.0 / math.sqrt(n))
            a[:, MASSIVE_DIM] = shift
            return a
        if name.endswith("down_proj.weight"):
            # ~natural_density * f active activations of size ~0.3: outputs of std ~0.1
            a = normal(0.3 / math.sqrt(f * shape.natural_density))
            a[MASSIVE_DIM, :] = 0.0
            return a
        if name.endswith("predictor.fc1.weight"):
            a = normal(1.0 / math.sqrt(n))
            a[:, MASSIVE_DIM] = 0.0
            return a
        if name.endswith("predictor.fc2.weight"):
            a = normal(1.0 / math.sqrt(dims[1]))
            a -= a.mean(axis=1, keepdims=True)
            return a
        raise ValueError(f"no recipe for {name}")

    return make


def _link_or_copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())


def write_checkpoints(root: Path, shape: SynthShape, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Writes (once; a finished pair is reused) hf-drelu/ and hf-swiglu/ under root."""
    drelu, swiglu = root / "hf-drelu", root / "hf-swiglu"
    done = root / "checkpoints.done"
    if done.is_file() and json.loads(done.read_text()) == asdict(shape):
        return drelu, swiglu
    drelu.mkdir(parents=True, exist_ok=True)
    swiglu.mkdir(parents=True, exist_ok=True)
    make = _maker(shape)
    weights, preds = weight_shapes(shape), predictor_shapes(shape)
    log(f"writing {drelu} ({sum(math.prod(s) for s in weights.values()) / 1e9:.2f}G weights "
        f"+ {sum(math.prod(s) for s in preds.values()) / 1e9:.2f}G predictor, bf16)")
    size = write_safetensors_lazy(drelu / WEIGHTS_SHARD, weights, make, dtype="bf16")
    size += write_safetensors_lazy(drelu / PREDICTOR_SHARD, preds, make, dtype="bf16")
    weight_map = {name: WEIGHTS_SHARD for name in weights} | {name: PREDICTOR_SHARD for name in preds}
    (drelu / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    (drelu / "config.json").write_text(json.dumps(hf_config(shape, "bamboo"), indent=1))
    write_tokenizer(drelu, hf_config(shape, "bamboo"))

    link = swiglu / "model.safetensors"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(drelu / WEIGHTS_SHARD, swiglu), link)
    (swiglu / "config.json").write_text(json.dumps(hf_config(shape, "mistral"), indent=1))
    _link_or_copy_tokenizer(drelu, swiglu)
    done.write_text(json.dumps(asdict(shape)))
    return drelu, swiglu
