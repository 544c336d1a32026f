"""Rewrites a SwiGLU GGUF (a plain llama.cpp file or one of ours) for the threshold FFN mode:
adds the neuron-major down projection blk.N.ffn_down_t.weight beside ffn_down (down_layout
"both": the dense mode and llama.cpp keep reading ffn_down) and/or the per-layer activation
thresholds (turbosparse.act_threshold.*). Every other key and tensor is copied unchanged,
bytes and all; the writer is the converter's (temporary file, then rename).

ffn_down_t is ffn_down dequantised, transposed and encoded again: exact for f32/f16/bf16,
one more rounding for quantised types: q8_0 stays q8_0, 4-bit types become q8_0 by default
(a second 4-bit rounding costs real quality; --down-type q4_0 trades it for fewer bytes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf import quants

from .errors import ConvertError
from .plan import KEY_DOWN_LAYOUT, KEY_FFN_KIND, KEY_FORMAT_VERSION, FORMAT_VERSION, ModelPlan, OutTensor
from .qtypes import OUTTYPES, Role, decode, encode

KEY_ACT_THRESHOLDS = "turbosparse.act_threshold.values"
KEY_ACT_TARGET = "turbosparse.act_threshold.target"

Q = GGMLQuantizationType
ProgressFn = Callable[[str, int], None]


def _field_value(field: Any) -> Any:
    from .powerinfer import _field_value as fv
    return fv(field)


def _key(reader: GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    v = None if f is None else _field_value(f)
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def check_swiglu(reader: GGUFReader, path: Path) -> int:
    """n_layer of a dense SwiGLU llama-architecture file; ConvertError naming what is not."""
    arch = _key(reader, "general.architecture")
    if arch != "llama":
        raise ConvertError(f"{path}: architecture {arch!r}; the threshold mode needs a llama-architecture "
                           "(Llama/Mistral/SmolLM) SwiGLU model")
    kind = _key(reader, KEY_FFN_KIND) or "swiglu"
    if kind != "swiglu":
        raise ConvertError(f"{path}: FFN kind {kind!r}; activation thresholds are for SwiGLU models "
                           "(ReGLU/dReLU models have exact zeros: use the exact or predicted mode)")
    if _key(reader, "llama.expert_count"):
        raise ConvertError(f"{path}: a mixture-of-experts model; the threshold mode is for dense SwiGLU models")
    n_layer = _key(reader, "llama.block_count")
    if not n_layer:
        raise ConvertError(f"{path}: no llama.block_count")
    return int(n_layer)


def down_layout(reader: GGUFReader) -> str:
    return str(_key(reader, KEY_DOWN_LAYOUT) or "standard")


def _down_t_type(src: Q, down_type: Optional[str]) -> Q:
    """f32/f16/bf16/q8_0 keep their type (exact, or a fine second rounding); 4-bit and other
    types become q8_0: rounding a 4-bit matrix again costs real quality (SmolLM2-135M, Q4_1
    ffn_down: perplexity +5.4% with ffn_down_t in Q4_1 again, +0.5% in Q8_0)."""
    if down_type is not None:
        return OUTTYPES[down_type]
    return src if src in (Q.F32, Q.F16, Q.BF16, Q.Q8_0) else Q.Q8_0


def _encode(arr: np.ndarray, qtype: Q, where: str) -> np.ndarray:
    if qtype == Q.Q4_1:  # not an --outtype, but llama.cpp files use it (SmolLM2's)
        return quants.quantize(np.ascontiguousarray(arr), qtype).reshape(-1)
    return encode(np.ascontiguousarray(arr, dtype=np.float32), qtype, where)


def rewrite(src: Path, out: Path, *, thresholds: Optional[Sequence[float]] = None, target: Optional[float] = None,
            down_type: Optional[str] = None, force: bool = False, progress: Optional[ProgressFn] = None) -> Path:
    """Writes `out`: `src` plus ffn_down_t (when it has none) and the thresholds (when given)."""
    from .writer import write_plan

    reader = GGUFReader(src)
    n_layer = check_swiglu(reader, src)
    if thresholds is not None:
        if len(thresholds) != n_layer:
            raise ConvertError(f"{len(thresholds)} thresholds for {n_layer} layers")
        if any(math.isnan(t) for t in thresholds):
            raise ConvertError("a threshold is NaN")
    layout = down_layout(reader)
    add_down_t = layout == "standard"
    replaced = {KEY_DOWN_LAYOUT, KEY_ACT_THRESHOLDS, KEY_ACT_TARGET} if thresholds is not None else {KEY_DOWN_LAYOUT}
    plan = ModelPlan(name=src.stem, source_model_type="", ffn_kind="swiglu")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in replaced:
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1 else None
        plan.add(key, _field_value(field), field.types[0], sub)
    if KEY_FORMAT_VERSION not in reader.fields:
        plan.u32(KEY_FORMAT_VERSION, FORMAT_VERSION)
    if KEY_FFN_KIND not in reader.fields:
        plan.string(KEY_FFN_KIND, "swiglu")
    plan.string(KEY_DOWN_LAYOUT, "both" if add_down_t else layout)
    if thresholds is not None:
        plan.array(KEY_ACT_THRESHOLDS, [float(t) for t in thresholds], GGUFValueType.FLOAT32)
        if target is not None:
            plan.f32(KEY_ACT_TARGET, float(target))

    types: list[Q] = []
    downs = {}
    for t in reader.tensors:
        qtype = Q(int(t.tensor_type))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        plan.tensor(OutTensor(t.name, shape, Role.WEIGHT, lambda: np.zeros(0), raw_type=qtype,
                              load_raw=lambda t=t: t.data))
        types.append(qtype)
        if t.name.endswith(".ffn_down.weight"):
            downs[t.name] = (t, qtype, shape)
    if add_down_t:
        for il in range(n_layer):
            name = f"blk.{il}.ffn_down.weight"
            if name not in downs:
                raise ConvertError(f"{src}: missing tensor {name!r}")
            t, qtype, shape = downs[name]  # numpy shape [n_embd, n_ff]
            dtype = _down_t_type(qtype, down_type)
            if shape[0] % GGML_QUANT_SIZES[dtype][0] != 0:
                dtype = Q.F16  # rows (n_embd long) that are not whole blocks

            def load_raw(t=t, qtype=qtype, shape=shape, dtype=dtype, name=name) -> np.ndarray:
                return _encode(decode(t.data, qtype, shape).T, dtype, f"tensor {name!r} transposed")

            plan.tensor(OutTensor(f"blk.{il}.ffn_down_t.weight", (shape[1], shape[0]), Role.WEIGHT,
                                  lambda: np.zeros(0), raw_type=dtype, load_raw=load_raw))
            types.append(dtype)
    same = out.exists() and out.resolve() == Path(src).resolve()
    if same and not force:
        raise ConvertError(f"{out} is the input file; pass --force (or --in-place) to replace it")
    del reader  # the writer renames over `out`; the memory map of the source stays valid until then
    write_plan(plan, out, types, force=force or same, progress=progress)
    return out
