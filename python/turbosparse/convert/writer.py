"""Streams a ModelPlan into a GGUF file: header and tensor table first, then one tensor at a time.

The file is written under a temporary name beside the output and renamed only when complete,
so a failed or interrupted conversion never leaves a partial file under the final name.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from .errors import ConvertError
from .plan import ARCH, ModelPlan, OutTensor
from .kmix import MIXES, mix_types
from .qtypes import OUTTYPES, choose_type, encode, nbytes_of

# called after each tensor: (tensor name, bytes written for it)
ProgressFn = Callable[[str, int], None]


@dataclass
class WriteResult:
    path: Path
    n_params: int = 0
    n_predictor_params: int = 0
    file_size: int = 0
    seconds: float = 0.0
    types: dict[str, int] = field(default_factory=dict)  # ggml type name -> number of tensors


def tensor_types(plan: ModelPlan, outtype: Optional[str], predictor_type: Optional[str]
                 ) -> list[GGMLQuantizationType]:
    """The type of every tensor of the plan, in order. outtype None keeps raw source types;
    a K-quant mix (kmix.MIXES) gives each tensor llama.cpp's type for it."""
    out: list[GGMLQuantizationType] = []
    mix = outtype if outtype in MIXES else None
    for t in plan.tensors:
        if outtype is None and t.raw_type is not None:
            out.append(t.raw_type)
            continue
        bulk = MIXES[mix][1] if mix else OUTTYPES[outtype or "f16"]
        pred = OUTTYPES[predictor_type] if predictor_type else bulk
        out.append(choose_type(t.role, t.shape, bulk, pred))
    if mix:
        return mix_types(plan, mix, OUTTYPES[predictor_type] if predictor_type else None, out)
    return out


def _tensor_bytes(t: OutTensor, qtype: GGMLQuantizationType) -> np.ndarray:
    where = f"tensor {t.name!r}"
    if t.raw_type == qtype and t.load_raw is not None:
        raw = np.asarray(t.load_raw()).view(np.uint8).reshape(-1)
    else:
        data = t.load()
        if data.shape != t.shape:
            raise ConvertError(f"{where}: source gave shape {list(data.shape)}, expected {list(t.shape)}")
        raw = encode(np.asarray(data, dtype=np.float32), qtype, where)
    return raw


def write_plan(plan: ModelPlan, out_path: Path, types: list[GGMLQuantizationType], force: bool,
               progress: Optional[ProgressFn] = None) -> WriteResult:
    start = time.monotonic()
    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise ConvertError(f"{out_path} exists; pass --force to overwrite it")
    if out_path.is_dir():
        raise ConvertError(f"{out_path} is a directory")
    out_dir = out_path.parent if str(out_path.parent) else Path(".")
    if not out_dir.is_dir():
        raise ConvertError(f"output directory {out_dir} does not exist")

    writer = GGUFWriter(path=None, arch=ARCH)
    for m in plan.metadata:
        writer.add_key_value(m.key, m.value, m.vtype, sub_type=m.sub_type)
    result = WriteResult(path=out_path)
    for t, qtype in zip(plan.tensors, types):
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes_of(t.shape, qtype), raw_dtype=qtype)
        n = int(np.prod(t.shape, dtype=np.int64))
        result.n_params += n
        result.n_predictor_params += n if t.is_predictor else 0
        result.types[qtype.name] = result.types.get(qtype.name, 0) + 1

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the output should read like any new file
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, qtype in zip(plan.tensors, types):
            raw = _tensor_bytes(t, qtype)
            expected = nbytes_of(t.shape, qtype)
            if raw.nbytes != expected:
                raise ConvertError(f"tensor {t.name!r}: {raw.nbytes} bytes encoded, expected {expected}")
            writer.write_tensor_data(raw)
            del raw
            if progress is not None:
                progress(t.name, expected)
        assert writer.fout is not None
        for f in writer.fout:
            f.flush()
            os.fsync(f.fileno())
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    result.file_size = out_path.stat().st_size
    result.seconds = time.monotonic() - start
    return result
