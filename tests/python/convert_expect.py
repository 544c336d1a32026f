"""What a converted tiny checkpoint must contain, computed independently of the converter.

Shared by the test_convert*.py files: the expected float32 tensor (numpy order) for every
GGUF tensor name, built from the fixture's own reader with loop-based rearrangements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, quants

from hf_fixtures import read_tiny_tensors, round_to_dtype

Q = GGMLQuantizationType


def permute_reference(w: np.ndarray, n_head: int) -> np.ndarray:
    """Within each head, row 2j <- row j and row 2j+1 <- row j + head_dim/2 (written as loops)."""
    hd = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for j in range(hd // 2):
            out[h * hd + 2 * j] = w[h * hd + j]
            out[h * hd + 2 * j + 1] = w[h * hd + hd // 2 + j]
    return out


def expected_tensors(folder: Path, config: dict[str, Any], with_predictor: bool = True,
                     predictors_from_dir: bool = False) -> dict[str, np.ndarray]:
    src = read_tiny_tensors(folder)
    sparse = config["hidden_act"] == "relu"
    moe = "num_local_experts" in config
    n_layer = config["num_hidden_layers"]
    out: dict[str, np.ndarray] = {"token_embd.weight": src["model.embed_tokens.weight"],
                                  "output_norm.weight": src["model.norm.weight"]}
    if "lm_head.weight" in src:
        out["output.weight"] = src["lm_head.weight"]
    for i in range(n_layer):
        p, b = f"model.layers.{i}", f"blk.{i}"
        out[f"{b}.attn_norm.weight"] = src[f"{p}.input_layernorm.weight"]
        out[f"{b}.attn_q.weight"] = permute_reference(src[f"{p}.self_attn.q_proj.weight"],
                                                      config["num_attention_heads"])
        out[f"{b}.attn_k.weight"] = permute_reference(src[f"{p}.self_attn.k_proj.weight"],
                                                      config["num_key_value_heads"])
        out[f"{b}.attn_v.weight"] = src[f"{p}.self_attn.v_proj.weight"]
        out[f"{b}.attn_output.weight"] = src[f"{p}.self_attn.o_proj.weight"]
        out[f"{b}.ffn_norm.weight"] = src[f"{p}.post_attention_layernorm.weight"]
        if moe:
            m = f"{p}.block_sparse_moe"
            E = config["num_local_experts"]
            out[f"{b}.ffn_gate_inp.weight"] = src[f"{m}.gate.weight"]
            out[f"{b}.ffn_gate_exps.weight"] = np.stack([src[f"{m}.experts.{e}.w1.weight"] for e in range(E)])
            out[f"{b}.ffn_up_exps.weight"] = np.stack([src[f"{m}.experts.{e}.w3.weight"] for e in range(E)])
            downs = [src[f"{m}.experts.{e}.w2.weight"] for e in range(E)]
            if sparse:
                out[f"{b}.ffn_down_t_exps.weight"] = np.stack([d.T for d in downs])
            else:
                out[f"{b}.ffn_down_exps.weight"] = np.stack(downs)
            if with_predictor and sparse:
                for k in ("fc1", "fc2"):
                    out[f"{b}.ffn_pred_{k}_exps.weight"] = np.stack(
                        [src[f"{m}.experts.{e}.predictor.{k}.weight"] for e in range(E)])
        else:
            out[f"{b}.ffn_gate.weight"] = src[f"{p}.mlp.gate_proj.weight"]
            out[f"{b}.ffn_up.weight"] = src[f"{p}.mlp.up_proj.weight"]
            if sparse:
                out[f"{b}.ffn_down_t.weight"] = src[f"{p}.mlp.down_proj.weight"].T.copy()
            else:
                out[f"{b}.ffn_down.weight"] = src[f"{p}.mlp.down_proj.weight"]
            if with_predictor and sparse:
                for k in ("fc1", "fc2"):
                    name = f"predictor.{i}.{k}.weight" if predictors_from_dir else f"{p}.mlp.predictor.{k}.weight"
                    out[f"{b}.ffn_pred_{k}.weight"] = src[name]
    return out


def expected_type(name: str, shape: tuple[int, ...], outtype: str, predictor_type: str | None = None) -> Q:
    """The type policy of docs/gguf-format.md, restated."""
    bulk = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
    if len(shape) == 1 or name.endswith("_norm.weight"):
        return Q.F32
    if "ffn_gate_inp" in name:
        return Q.F32 if outtype == "f32" else Q.F16
    t = bulk[predictor_type or outtype] if "ffn_pred" in name else bulk[outtype]
    if name == "output.weight" and outtype == "q4_0":
        t = Q.Q8_0
    if t in (Q.Q8_0, Q.Q4_0) and shape[-1] % 32 != 0:
        t = Q.F16
    return t


def encoded_expected(a: np.ndarray, qtype: Q) -> np.ndarray:
    """The bytes a tensor of these float32 values must have in the file."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if qtype == Q.F32:
        return a.view(np.uint8).reshape(-1)
    if qtype == Q.F16:
        return a.astype(np.float16).view(np.uint8).reshape(-1)
    if qtype == Q.BF16:
        return round_to_dtype(a, "bf16").view(np.uint32).__rshift__(16).astype(np.uint16).view(np.uint8).reshape(-1)
    return quants.quantize(a, qtype).reshape(-1)


def tensor_bytes(reader: GGUFReader, name: str) -> tuple[np.ndarray, Q, tuple[int, ...]]:
    """(raw bytes, type, numpy-order shape) of a tensor in a GGUF file."""
    for t in reader.tensors:
        if t.name == name:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            return np.asarray(t.data).view(np.uint8).reshape(-1), Q(int(t.tensor_type)), shape
    raise KeyError(name)


def field(reader: GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        raise KeyError(key)
    return f.contents()
