"""What a conversion writes: metadata and an ordered list of tensors, each loaded on demand.

Source readers (hf_llama, powerinfer) build a ModelPlan without touching tensor data; the
writer then loads, encodes and writes one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .qtypes import Role

ARCH = "llama"
FORMAT_VERSION = 1

# our keys (docs/gguf-format.md, "turbosparse keys")
KEY_FORMAT_VERSION = "turbosparse.format_version"
KEY_SOURCE_MODEL_TYPE = "turbosparse.source_model_type"
KEY_FFN_KIND = "turbosparse.ffn_kind"
KEY_DOWN_LAYOUT = "turbosparse.down_layout"
KEY_PREDICTOR_PRESENT = "turbosparse.predictor.present"
KEY_PREDICTOR_INPUT = "turbosparse.predictor.input"
KEY_PREDICTOR_THRESHOLD = "turbosparse.predictor.threshold"

FFN_KINDS = ("swiglu", "reglu", "drelu")
PREDICTOR_INPUTS = ("residual", "ffn_input")


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of an input file: its shape is known, its data is read by load()."""
    name: str
    shape: tuple[int, ...]
    where: str                               # "tensor 'x' in /path/file", for error messages
    load: Callable[[], np.ndarray]           # float32 array of `shape`


@dataclass
class Meta:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: Optional[GGUFValueType] = None


@dataclass
class OutTensor:
    name: str                                # GGUF tensor name
    shape: tuple[int, ...]                   # numpy (row-major) shape: ggml's ne reversed
    role: Role
    load: Callable[[], np.ndarray]           # float32 array of `shape`
    # A source already holding ggml bytes (PowerInfer import) may be copied as is when the
    # chosen type equals its type: that keeps quantised blocks bit-exact.
    raw_type: Optional[GGMLQuantizationType] = None
    load_raw: Optional[Callable[[], np.ndarray]] = None
    is_predictor: bool = False


@dataclass
class ModelPlan:
    name: str
    source_model_type: str
    ffn_kind: str
    metadata: list[Meta] = field(default_factory=list)
    tensors: list[OutTensor] = field(default_factory=list)

    def add(self, key: str, value: Any, vtype: GGUFValueType, sub_type: Optional[GGUFValueType] = None) -> None:
        if any(m.key == key for m in self.metadata):
            raise ValueError(f"duplicate metadata key {key}")
        self.metadata.append(Meta(key, value, vtype, sub_type))

    def u32(self, key: str, value: int) -> None:
        self.add(key, int(value), GGUFValueType.UINT32)

    def f32(self, key: str, value: float) -> None:
        self.add(key, float(value), GGUFValueType.FLOAT32)

    def string(self, key: str, value: str) -> None:
        self.add(key, str(value), GGUFValueType.STRING)

    def boolean(self, key: str, value: bool) -> None:
        self.add(key, bool(value), GGUFValueType.BOOL)

    def array(self, key: str, values: list[Any], sub_type: GGUFValueType) -> None:
        self.add(key, list(values), GGUFValueType.ARRAY, sub_type)

    def tensor(self, t: OutTensor) -> None:
        if any(x.name == t.name for x in self.tensors):
            raise ValueError(f"duplicate tensor {t.name}")
        self.tensors.append(t)


@dataclass
class ConvertOptions:
    """What the command line decides about a conversion (see cli.py for each flag's help)."""
    outtype: Optional[str] = None          # None: f16 for checkpoints, source types for imports
    predictor_type: Optional[str] = None   # None: same as outtype
    predictors_dir: Optional[Path] = None  # --predictors DIR
    no_predictor: bool = False
    predictor_input: Optional[str] = None  # override of the architecture's default
    threshold: Optional[float] = None      # override of the default tau
    ffn_kind: Optional[str] = None         # PowerInfer import: override of the architecture's kind
    name: Optional[str] = None
    sparse_ffn: bool = False               # SwiGLU: also write ffn_down_t (down_layout "both")
