"""Import a PowerInfer GGUF (SPEC §4) into our format.

PowerInfer writes an ordinary GGUF and then overwrites its magic with "PWRI". Its tensors
already have ggml's layout (Q/K permuted by llama.cpp's converter, `ffn_down_t` neuron-major),
so they are renamed and, when the type is kept, copied byte for byte:

| PowerInfer                        | turbosparse                         |
|-----------------------------------|-------------------------------------|
| magic PWRI                        | magic GGUF                          |
| general.architecture bamboo/llama | llama, turbosparse.ffn_kind drelu/reglu |
| `{arch}.*` keys                   | `llama.*`                           |
| powerinfer.sparse_threshold       | turbosparse.predictor.threshold     |
| blk.N.fc1(.weight), blk.N.fc2     | blk.N.ffn_pred_fc1.weight, ..._fc2  |

The file is read through a memory map with the GGUF magic presented in place of PWRI; it is
never copied into memory as a whole.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField, ReaderTensor

from .errors import ConvertError
from .plan import (FORMAT_VERSION, KEY_DOWN_LAYOUT, KEY_FFN_KIND, KEY_FORMAT_VERSION, KEY_PREDICTOR_INPUT,
                   KEY_PREDICTOR_PRESENT, KEY_PREDICTOR_THRESHOLD, KEY_SOURCE_MODEL_TYPE, ConvertOptions,
                   ModelPlan, OutTensor)
from .qtypes import FILE_TYPES, SUPPORTED, Role, decode
from .transforms import neuron_major

PWRI_MAGIC = int.from_bytes(b"PWRI", "little")

_ARCH_FFN_KIND = {"bamboo": "drelu", "llama": "reglu"}
_PRED_RE = re.compile(r"^blk\.(\d+)\.fc([12])(\.weight)?$")
_BLK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")
_GLOBAL_TENSORS = {"token_embd.weight", "output_norm.weight", "output.weight"}
_BLOCK_TENSORS = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down", "ffn_down_t"}
# keys only meaningful to PowerInfer's own GPU split, or rewritten by us
_DROPPED_KEYS = ("general.architecture", "general.file_type", "powerinfer.sparse_threshold")


class _PowerInferReader(GGUFReader):
    """GGUFReader that sees GGUF where the file says PWRI; everything else is read as is."""

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        got = super()._get(offset, dtype, count, override_order)
        if offset == 0 and count == 1 and np.dtype(dtype) == np.uint32 and int(got[0]) == PWRI_MAGIC:
            return np.array([GGUF_MAGIC], dtype=got.dtype)
        return got


def open_powerinfer(path: Path) -> GGUFReader:
    if not path.is_file():
        raise ConvertError(f"--from-powerinfer {path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PWRI":
        what = "a plain GGUF file" if magic == b"GGUF" else f"magic {magic!r}"
        raise ConvertError(f"{path}: not a PowerInfer GGUF (expected magic b'PWRI', found {what})")
    try:
        return _PowerInferReader(path)
    except (ValueError, IndexError, KeyError) as e:
        raise ConvertError(f"{path}: cannot parse the GGUF inside ({e})") from e


def _field_value(field: ReaderField) -> Any:
    """The value of a field as the writer takes it; strings stay bytes so nothing is re-decoded."""
    vtype = field.types[0]
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def _scalar(reader: GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise ConvertError(f"PowerInfer file has no {key!r}")
    value = _field_value(field)
    return value.decode() if isinstance(value, bytes) else value


def build_powerinfer_plan(path: Path, opts: ConvertOptions) -> ModelPlan:
    reader = open_powerinfer(path)
    arch = str(_scalar(reader, "general.architecture"))
    if arch not in _ARCH_FFN_KIND:
        raise ConvertError(f"{path}: PowerInfer architecture {arch!r} is not supported "
                           f"(supported: {', '.join(_ARCH_FFN_KIND)})")
    kind = opts.ffn_kind or _ARCH_FFN_KIND[arch]
    sparse = kind != "swiglu"
    n_embd = int(_scalar(reader, f"{arch}.embedding_length"))
    n_ff = int(_scalar(reader, f"{arch}.feed_forward_length"))
    n_layer = int(_scalar(reader, f"{arch}.block_count"))

    name = opts.name or (str(_scalar(reader, "general.name")) if reader.get_field("general.name") else path.stem)
    plan = ModelPlan(name=name, source_model_type="powerinfer", ffn_kind=kind)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _DROPPED_KEYS or key.startswith("split."):
            continue
        out_key = "llama." + key[len(arch) + 1:] if key.startswith(arch + ".") else key
        if out_key == "general.name":
            plan.string(out_key, name)
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1 else None
        plan.add(out_key, _field_value(field), field.types[0], sub)
    if reader.get_field("general.name") is None:
        plan.string("general.name", name)
    if opts.outtype is not None:
        plan.u32("general.file_type", FILE_TYPES[opts.outtype])
    elif reader.get_field("general.file_type") is not None:
        plan.u32("general.file_type", int(_scalar(reader, "general.file_type")))
    tokens_field = reader.get_field("tokenizer.ggml.tokens")
    if reader.get_field(f"{arch}.vocab_size") is None and tokens_field is not None:
        plan.u32("llama.vocab_size", len(tokens_field.data))
    if reader.get_field("tokenizer.ggml.eot_token_id") is None and tokens_field is not None:
        tokens = _field_value(tokens_field)
        if b"<|im_end|>" in tokens:
            plan.u32("tokenizer.ggml.eot_token_id", tokens.index(b"<|im_end|>"))

    tensors = {t.name: t for t in reader.tensors}
    preds: dict[tuple[int, int], ReaderTensor] = {}
    for t in reader.tensors:
        m = _PRED_RE.match(t.name)
        if m:
            preds[(int(m.group(1)), int(m.group(2)))] = t
    have_predictors = sparse and bool(preds) and not opts.no_predictor
    if sparse and not preds and not opts.no_predictor:
        raise ConvertError(f"{path} has no predictor tensors (blk.N.fc1/fc2); pass --no-predictor to import it "
                           "for the exact and dense modes only")
    threshold = opts.threshold
    if threshold is None and reader.get_field("powerinfer.sparse_threshold") is not None:
        threshold = float(_scalar(reader, "powerinfer.sparse_threshold"))

    plan.u32(KEY_FORMAT_VERSION, FORMAT_VERSION)
    plan.string(KEY_SOURCE_MODEL_TYPE, "powerinfer")
    plan.string(KEY_FFN_KIND, kind)
    plan.string(KEY_DOWN_LAYOUT, "neuron_major" if sparse else "standard")
    plan.boolean(KEY_PREDICTOR_PRESENT, have_predictors)
    if sparse:
        plan.string(KEY_PREDICTOR_INPUT, opts.predictor_input or "residual")
        plan.f32(KEY_PREDICTOR_THRESHOLD, threshold if threshold is not None else 0.0)

    for t in reader.tensors:
        if _PRED_RE.match(t.name):
            continue
        if t.name in _GLOBAL_TENSORS:
            _add(plan, path, t, t.name, opts)
            continue
        m = _BLK_RE.match(t.name)
        if not m or m.group(2) not in _BLOCK_TENSORS or int(m.group(1)) >= n_layer:
            raise ConvertError(f"{path}: unexpected tensor {t.name!r} in a PowerInfer {arch} file")
        blk, part = f"blk.{m.group(1)}", m.group(2)
        if part in ("ffn_gate", "ffn_up"):
            _expect(path, t, (n_ff, n_embd))
        if part in ("ffn_down", "ffn_down_t"):
            _expect(path, t, (n_embd, n_ff) if part == "ffn_down" else (n_ff, n_embd))
            want_t = sparse
            if (part == "ffn_down_t") == want_t:
                _add(plan, path, t, t.name, opts)
            else:  # the layout on disk is not the one the FFN kind wants: transpose
                out = f"{blk}.ffn_down_t.weight" if want_t else f"{blk}.ffn_down.weight"
                _add(plan, path, t, out, opts, transform=neuron_major)
            continue
        _add(plan, path, t, t.name, opts)
        if part == "ffn_norm" and have_predictors:
            layer = int(m.group(1))
            for k in (1, 2):
                p = preds.get((layer, k))
                if p is None:
                    raise ConvertError(f"{path}: blk.{layer}.fc{k} missing (other layers have predictors)")
            fc1, fc2 = preds[(layer, 1)], preds[(layer, 2)]
            r = _np_shape(fc1)[0]
            _expect(path, fc1, (r, n_embd))
            _expect(path, fc2, (n_ff, r))
            _add(plan, path, fc1, f"{blk}.ffn_pred_fc1.weight", opts, predictor=True)
            _add(plan, path, fc2, f"{blk}.ffn_pred_fc2.weight", opts, predictor=True)
    if "token_embd.weight" not in tensors:
        raise ConvertError(f"{path}: token_embd.weight missing")
    return plan


def _np_shape(t: ReaderTensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def _expect(path: Path, t: ReaderTensor, shape: tuple[int, ...]) -> None:
    if _np_shape(t) != shape:
        raise ConvertError(f"{path}: tensor {t.name!r} has ggml shape {list(reversed(_np_shape(t)))}, "
                           f"expected {list(reversed(shape))}")


def _role(name: str, predictor: bool) -> Role:
    if predictor:
        return Role.PREDICTOR
    if name.endswith("_norm.weight"):
        return Role.NORM
    if name == "output.weight":
        return Role.OUTPUT
    return Role.WEIGHT


def _add(plan: ModelPlan, path: Path, t: ReaderTensor, out_name: str, opts: ConvertOptions,
         transform: Optional[Callable[[np.ndarray], np.ndarray]] = None, predictor: bool = False) -> None:
    qtype = GGMLQuantizationType(int(t.tensor_type))
    shape = _np_shape(t)
    role = _role(out_name, predictor)
    # A tensor copied unchanged keeps any type ggml computes with (a Q6_K head from PowerInfer's
    # quantize, for one); one that must be transposed (a down projection in the other layout) is
    # decoded, which our decoders do for the types we write.
    copyable = transform is None and qtype in GGML_QUANT_SIZES
    if opts.outtype is None and not (qtype in SUPPORTED or copyable) and role is not Role.NORM:
        raise ConvertError(f"{path}: tensor {t.name!r} has type {qtype.name}, which turbosparse cannot "
                           f"{'transpose' if transform is not None else 'read'}; pass --outtype to convert it")

    def load() -> np.ndarray:
        data = decode(t.data, qtype, shape)
        return transform(data) if transform is not None else data

    out_shape = shape if transform is None else tuple(reversed(shape))
    # without --outtype a tensor keeps its type (norms become f32); untransformed ones are copied
    keep = (qtype in SUPPORTED or copyable) and not (role is Role.NORM and qtype != GGMLQuantizationType.F32)
    plan.tensor(OutTensor(out_name, out_shape, role, load,
                          raw_type=qtype if keep else None,
                          load_raw=(lambda: t.data) if keep and transform is None else None,
                          is_predictor=predictor))
