"""Predictors published apart from the model (ReLU-LLaMA, ProSparse): --predictors DIR.

DIR holds one file per layer, model_{i}.pt (torch.save of {"fc1.weight", "fc2.weight"}) or
model_{i}.safetensors with the same names, and optionally config.json with
"sparse_threshold", PowerInfer's default logit cut.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import ConvertError
from .plan import SourceTensor
from .safetensors_lazy import read_header, load_entry_f32
from .torch_zip import read_state_dict

PREDICTOR_KEYS = ("fc1.weight", "fc2.weight")


def _layer_tensors(folder: Path, layer: int) -> dict[str, SourceTensor]:
    st = folder / f"model_{layer}.safetensors"
    pt = folder / f"model_{layer}.pt"
    found: dict[str, SourceTensor] = {}
    if st.is_file():
        for name, entry in read_header(st).items():
            found[name] = SourceTensor(name, entry.shape, entry.where, lambda e=entry: load_entry_f32(e))
    elif pt.is_file():
        for name, tensor in read_state_dict(pt).items():
            found[name] = SourceTensor(name, tensor.shape, tensor.where, tensor.load_f32)
    else:
        raise ConvertError(f"predictor for layer {layer} missing: neither {pt} nor {st} exists")
    where = st if st.is_file() else pt
    for key in PREDICTOR_KEYS:
        if key not in found:
            raise ConvertError(f"{where}: no tensor {key!r} (found {sorted(found)})")
    return {key: found[key] for key in PREDICTOR_KEYS}


def load_predictor_dir(folder: Path, n_layer: int) -> tuple[list[dict[str, SourceTensor]], Optional[float]]:
    """Per layer {"fc1.weight", "fc2.weight"}, and the threshold of config.json if any."""
    if not folder.is_dir():
        raise ConvertError(f"--predictors {folder}: not a directory")
    layers = [_layer_tensors(folder, i) for i in range(n_layer)]
    extra = folder / f"model_{n_layer}.pt", folder / f"model_{n_layer}.safetensors"
    if any(p.exists() for p in extra):
        raise ConvertError(f"--predictors {folder} holds more predictor files than the model's {n_layer} layers")
    threshold: Optional[float] = None
    config = folder / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("sparse_threshold")
        except json.JSONDecodeError as e:
            raise ConvertError(f"{config}: not valid JSON ({e})") from e
        if value is not None:
            threshold = float(value)
    return layers, threshold
