"""Writes trained predictors: into a new GGUF (the converter's writer: temporary file, then
rename) or as a Hugging Face predictor folder (model_{i}.safetensors with fc1.weight and
fc2.weight, config.json with sparse_threshold: the ReLU-LLaMA/ProSparse layout that
`convert-turbosparse --predictors DIR` reads).

Per-layer cuts: the file format has one threshold T for all layers. Layer l's fc2 is multiplied
by T / cut_l (> 0), which scales its logits and turns "logit > cut_l" into "logit' > T"
exactly; cut_l is the layer's own cut wherever the signs allow, else a lower one (more recall,
a little more density): see fold_thresholds.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..convert.errors import ConvertError
from .errors import TrainError
from .weights import GGUFModel, HFModel

_MAX_SCALE = 100.0  # cuts nearer zero than T / _MAX_SCALE are lowered rather than scaled further


@dataclass
class Predictor:
    fc1: np.ndarray  # [r, n_embd]; MoE: the layer's experts stacked, [E, r, n_embd]
    fc2: np.ndarray  # [n_ff, r]; MoE: [E, n_ff, r]


def stack_experts(preds: Sequence[Predictor]) -> Predictor:
    return Predictor(np.stack([p.fc1 for p in preds]), np.stack([p.fc2 for p in preds]))


def _set_meta(plan, key: str, value, vtype) -> None:  # type: ignore[no-untyped-def]
    for m in plan.metadata:
        if m.key == key:
            m.value, m.vtype = value, vtype
            return
    plan.add(key, value, vtype)


def _predictor_tensors(plan, preds: Sequence[Predictor], pred_q) -> list:  # type: ignore[no-untyped-def]
    """Adds blk.N.ffn_pred_fc{1,2}[_exps].weight to plan; returns their types."""
    from ..convert.plan import OutTensor
    from ..convert.qtypes import Role, choose_type

    types = []
    for i, p in enumerate(preds):
        suffix = "_exps" if p.fc1.ndim == 3 else ""
        for key, a in (("fc1", p.fc1), ("fc2", p.fc2)):
            a = np.ascontiguousarray(a, dtype=np.float32)
            plan.tensor(OutTensor(f"blk.{i}.ffn_pred_{key}{suffix}.weight", a.shape, Role.PREDICTOR, lambda a=a: a,
                                  is_predictor=True))
            types.append(choose_type(Role.PREDICTOR, a.shape, pred_q, pred_q))
    return types


def fold_thresholds(preds: Sequence[Predictor], taus: Sequence[float]) -> tuple[list[Predictor], float, list[float]]:
    """(predictors to write, the file's threshold T, each predictor's effective cut).

    Predictor l keeps "logit > cut_l" exactly in the file: its fc2 is multiplied by
    T / cut_l > 0. cut_l is tau_l wherever that works, else it is lowered (recall can only rise):
    - every tau_l > 0: T = their median, all exact;
    - otherwise T = the median of the negative cuts, and a cut above T / _MAX_SCALE (near
      zero, or positive) becomes T / _MAX_SCALE, so no fc2 is scaled by more than _MAX_SCALE;
    - no negative cut at all (zeros and positives): T = 0 and every cut is 0.
    """
    t = np.asarray(taus, dtype=np.float64)
    if np.all(t > 0):
        common = float(np.median(t))
        cuts = t
    elif np.any(t < 0):
        common = float(np.median(t[t < 0]))
        cuts = np.minimum(t, common / _MAX_SCALE)
    else:
        return list(preds), 0.0, [0.0] * len(t)
    scales = common / cuts
    return ([Predictor(p.fc1, (p.fc2 * np.float32(sc)).astype(np.float32)) for p, sc in zip(preds, scales)],
            common, [float(c) for c in cuts])


def _check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise TrainError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise TrainError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise TrainError(f"output directory {path.parent} does not exist")


def write_predictor_dir(folder: Path, preds: Sequence[Predictor], threshold: float, force: bool) -> None:
    from safetensors.numpy import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TrainError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("model_*.safetensors")) or any(folder.glob("model_*.pt")):
        if not force:
            raise TrainError(f"{folder} already holds predictors; pass --force to overwrite them")
        for old in list(folder.glob("model_*.safetensors")) + list(folder.glob("model_*.pt")):
            old.unlink()

    def atomic(name: str, write) -> None:  # type: ignore[no-untyped-def]
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    for i, p in enumerate(preds):
        atomic(f"model_{i}.safetensors", lambda tmp, p=p: save_file(
            {"fc1.weight": np.ascontiguousarray(p.fc1), "fc2.weight": np.ascontiguousarray(p.fc2)}, tmp))
    atomic("config.json", lambda tmp: Path(tmp).write_text(json.dumps({"sparse_threshold": threshold}, indent=1)))


def write_gguf_from_hf(src: HFModel, out: Path, predictor_dir: Path, threshold: float, outtype: str,
                       predictor_type: Optional[str], force: bool) -> None:
    """Converts the checkpoint with the new predictors (convert-turbosparse --predictors DIR)."""
    from ..convert.hf_llama import build_hf_plan
    from ..convert.plan import ConvertOptions
    from ..convert.writer import tensor_types, write_plan

    _check_target(out, force)
    opts = ConvertOptions(outtype=outtype, predictor_type=predictor_type, predictors_dir=predictor_dir,
                          threshold=threshold)
    try:
        plan = build_hf_plan(src.path, src.config, opts)
        write_plan(plan, out, tensor_types(plan, outtype, predictor_type), force=force)
    except ConvertError as e:
        raise TrainError(str(e)) from e


def write_gguf_from_hf_moe(src: HFModel, out: Path, preds: Sequence[Predictor], threshold: float, outtype: str,
                           predictor_type: Optional[str], force: bool) -> None:
    """MoE checkpoints keep predictors inside (the converter reads no predictor folder for
    them): convert without predictors, then add the new ones to the same plan."""
    from gguf import GGUFValueType

    from ..convert.hf_llama import build_hf_plan
    from ..convert.plan import KEY_PREDICTOR_PRESENT, KEY_PREDICTOR_THRESHOLD, ConvertOptions
    from ..convert.qtypes import OUTTYPES
    from ..convert.writer import tensor_types, write_plan

    _check_target(out, force)
    try:
        plan = build_hf_plan(src.path, src.config, ConvertOptions(outtype=outtype, no_predictor=True))
        types = tensor_types(plan, outtype, None)
        _set_meta(plan, KEY_PREDICTOR_PRESENT, True, GGUFValueType.BOOL)
        _set_meta(plan, KEY_PREDICTOR_THRESHOLD, float(threshold), GGUFValueType.FLOAT32)
        types += _predictor_tensors(plan, preds, OUTTYPES[predictor_type or outtype])
        write_plan(plan, out, types, force=force)
    except ConvertError as e:
        raise TrainError(str(e)) from e


def write_gguf_from_gguf(src: GGUFModel, out: Path, preds: Sequence[Predictor], threshold: float,
                         predictor_type: str, force: bool) -> None:
    """A copy of the source GGUF (metadata and tensor bytes unchanged) with its predictors
    replaced by `preds` and the predictor keys set."""
    from gguf import GGMLQuantizationType, GGUFValueType

    from ..convert.plan import (KEY_PREDICTOR_INPUT, KEY_PREDICTOR_PRESENT, KEY_PREDICTOR_THRESHOLD, ModelPlan,
                                OutTensor)
    from ..convert.powerinfer import _field_value
    from ..convert.qtypes import OUTTYPES, Role
    from ..convert.writer import write_plan

    _check_target(out, force)
    if out.exists() and out.resolve() == src.path.resolve():
        raise TrainError(f"{out} is the input file; write to a new file")
    reader = src.reader
    replaced = (KEY_PREDICTOR_PRESENT, KEY_PREDICTOR_THRESHOLD, KEY_PREDICTOR_INPUT)
    plan = ModelPlan(name=src.path.stem, source_model_type="", ffn_kind=src.shape.ffn_kind)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in replaced:
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1 else None
        plan.add(key, _field_value(field), field.types[0], sub)
    plan.boolean(KEY_PREDICTOR_PRESENT, True)
    plan.string(KEY_PREDICTOR_INPUT, src.shape.predictor_input)
    plan.f32(KEY_PREDICTOR_THRESHOLD, threshold)

    types: list[GGMLQuantizationType] = []
    for t in reader.tensors:
        if "ffn_pred_" in t.name:
            continue
        qtype = GGMLQuantizationType(int(t.tensor_type))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        plan.tensor(OutTensor(t.name, shape, Role.WEIGHT, lambda: np.zeros(0), raw_type=qtype,
                              load_raw=lambda t=t: t.data))
        types.append(qtype)
    types += _predictor_tensors(plan, preds, OUTTYPES[predictor_type])
    try:
        write_plan(plan, out, types, force=force)
    except ConvertError as e:
        raise TrainError(str(e)) from e
