"""llama.cpp's K-quant mixes (--outtype q4_k_m, q4_k_s, q5_k_m, q6_k): which type each tensor gets.

The rules are llama.cpp's llama_tensor_get_type (src/llama-quant.cpp, as vendored by
llama-cpp-python 0.3.36) for the llama architecture, restricted to these four file types;
docs/convert.md states them as a table. A tensor is quantised when it is at least 2-D, its
name ends in "weight" and it is not a norm or the MoE router (those keep our own choice:
f32 norms, f16 router). Then, from the mix's base type (q4_K, q4_K, q5_K, q6_K):

- output.weight (or token_embd.weight when there is no output.weight: tied embeddings): q6_K
  (q8_0 when its rows are not whole 256-blocks);
- attn_v: q6_K in the "more bits" layers for q4_k_m/q5_k_m, q5_K in the first 4 for q4_k_s;
  q5_K for a q4_K/q3_K choice in 70B models (80 layers with grouped KV heads); q8_0 with 8 experts;
- attn_k: q8_0 with 8 experts;
- ffn_down (ours: ffn_down_t, the same matrix neuron-major): q6_K in the "more bits" layers for
  q4_k_m/q5_k_m, q5_K in the first n_layer/8 for q4_k_s;
- attn_output: q5_K with 8 experts for q4_k_s/q4_k_m;
- every other weight (attn_q, ffn_gate, ffn_up, token_embd, predictors): the base type;
- "more bits" layers: i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2 (attn_v counted in file order);
- a row length that is not a multiple of 256 falls back: q4_K -> q5_0, q5_K -> q5_1,
  q6_K -> q8_0, and to f16 if not a multiple of 32 either.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from .plan import ModelPlan, OutTensor
from .qtypes import Role

Q = GGMLQuantizationType

# --outtype name -> (llama.cpp file type, base type)
MIXES: dict[str, tuple[int, GGMLQuantizationType]] = {
    "q4_k_m": (int(LlamaFileType.MOSTLY_Q4_K_M), Q.Q4_K),
    "q4_k_s": (int(LlamaFileType.MOSTLY_Q4_K_S), Q.Q4_K),
    "q5_k_m": (int(LlamaFileType.MOSTLY_Q5_K_M), Q.Q5_K),
    "q6_k": (int(LlamaFileType.MOSTLY_Q6_K), Q.Q6_K),
}

# llama.cpp's tensor_type_fallback for rows that are not whole 256-blocks
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _meta(plan: ModelPlan, key: str, default: int) -> int:
    for m in plan.metadata:
        if m.key == key:
            return int(m.value)
    return default


def _quantizable(t: OutTensor) -> bool:
    return (len(t.shape) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name
            and t.role not in (Role.NORM, Role.ROUTER))


def _layer(name: str) -> Optional[int]:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def fallback(qtype: GGMLQuantizationType, row: int) -> GGMLQuantizationType:
    """llama.cpp's fallback for a row length the chosen type's blocks do not divide."""
    if row % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if row % GGML_QUANT_SIZES[qtype][0] == 0 else Q.F16


def mix_types(plan: ModelPlan, mix: str, predictor_type: Optional[GGMLQuantizationType] = None,
              plain_choice: Optional[Sequence[GGMLQuantizationType]] = None) -> list[GGMLQuantizationType]:
    """The type of every tensor of the plan under a mix. plain_choice[i] is the type the
    non-mix rules give tensor i (used for tensors llama.cpp does not quantise: norms, router)."""
    _, base = MIXES[mix]
    n_layer = _meta(plan, "llama.block_count", 0)
    n_expert = _meta(plan, "llama.expert_count", 0)
    n_head = _meta(plan, "llama.attention.head_count", 0)
    n_head_kv = _meta(plan, "llama.attention.head_count_kv", n_head)
    is_70b = n_layer == 80 and n_head != n_head_kv
    names = [t.name for t in plan.tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(1 for n in names if "attn_v.weight" in n)
    i_attn_v = 0
    i_ffn_down = 0

    out: list[GGMLQuantizationType] = []
    for k, t in enumerate(plan.tensors):
        if not _quantizable(t):
            out.append(plain_choice[k] if plain_choice is not None else Q.F32)
            continue
        row = t.shape[-1]
        name = t.name
        qtype = base
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            qtype = Q.Q8_0 if row % GGML_QUANT_SIZES[base][0] != 0 else Q.Q6_K
        elif t.role is Role.PREDICTOR and predictor_type is not None:
            qtype = predictor_type
        elif "attn_v.weight" in name:
            if mix in ("q4_k_m", "q5_k_m") and use_more_bits(i_attn_v, n_attn_v):
                qtype = Q.Q6_K
            elif mix == "q4_k_s" and i_attn_v < 4:
                qtype = Q.Q5_K
            if is_70b and qtype in (Q.Q3_K, Q.Q4_K):
                qtype = Q.Q5_K
            if n_expert == 8:
                qtype = Q.Q8_0
            i_attn_v += 1
        elif "attn_k.weight" in name:
            if n_expert == 8:
                qtype = Q.Q8_0
        elif "ffn_down" in name:
            # one tensor per layer (ours are 3-D for experts); llama.cpp reads the layer from
            # the name with experts, else counts the tensors: the same number here
            i_layer = _layer(name) if n_expert > 1 else i_ffn_down
            i_layer = i_layer if i_layer is not None else i_ffn_down
            if mix in ("q4_k_m", "q5_k_m") and use_more_bits(i_layer, n_layer):
                qtype = Q.Q6_K
            elif mix == "q4_k_s" and i_layer < n_layer // 8:
                qtype = Q.Q5_K
            i_ffn_down += 1
        elif "attn_output.weight" in name:
            if n_expert == 8 and mix in ("q4_k_s", "q4_k_m"):
                qtype = Q.Q5_K
        out.append(fallback(qtype, row))
    return out
