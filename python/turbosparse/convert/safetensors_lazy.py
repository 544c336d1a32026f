"""Lazy reader of (possibly sharded) safetensors checkpoints, without torch.

Only headers are read up front. A tensor's bytes are mapped when it is asked for, converted
to float32, and unmapped again, so reading a 90 GB checkpoint costs the memory of one tensor.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConvertError

INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype -> (numpy storage dtype, bytes per element); BF16 is read as raw uint16.
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}

# a header larger than this is a corrupt file, not a checkpoint
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: Path
    dtype: str               # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int               # absolute byte offset in `file`
    end: int

    @property
    def where(self) -> str:
        return f"tensor {self.name!r} in {self.file}"


def read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ConvertError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _MAX_HEADER:
                raise ConvertError(f"{path}: safetensors header of {n} bytes; the file is corrupt")
            header_bytes = f.read(n)
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror}") from e
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: safetensors header is not valid JSON ({e})") from e
    file_size = path.stat().st_size
    data_start = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        entry = TensorEntry(name, path, info["dtype"], tuple(int(d) for d in info["shape"]),
                            data_start + int(begin), data_start + int(end))
        if entry.end > file_size:
            raise ConvertError(f"{entry.where}: data runs past the end of the file (truncated download?)")
        entries[name] = entry
    return entries


class Checkpoint:
    """All safetensors tensors of one checkpoint folder, by name."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, TensorEntry] = {}
        for shard in self._shard_files(folder):
            for name, entry in read_header(shard).items():
                if name in self.entries:
                    raise ConvertError(f"tensor {name!r} appears in both {self.entries[name].file} and {shard}")
                self.entries[name] = entry

    @staticmethod
    def _shard_files(folder: Path) -> list[Path]:
        index = folder / INDEX_NAME
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConvertError(f"{index}: not a safetensors index ({e})") from e
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (folder / shard).is_file():
                    raise ConvertError(f"shard {folder / shard} listed in {index} is missing")
            return [folder / s for s in shards]
        single = folder / "model.safetensors"
        if single.is_file():
            return [single]
        found = sorted(folder.glob("*.safetensors"))
        if found:
            return found
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise ConvertError(f"{folder}: only PyTorch .bin/.pt weights found; convert them to safetensors first")
        raise ConvertError(f"{folder}: no model.safetensors, {INDEX_NAME} or *.safetensors found")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise ConvertError(f"tensor {name!r} is missing from the checkpoint in {self.folder}") from None

    def load_f32(self, name: str) -> np.ndarray:
        return load_entry_f32(self.entry(name))


def check_dtype(entry: TensorEntry) -> np.dtype:
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise ConvertError(f"{entry.where} has dtype {entry.dtype}; supported are {', '.join(_DTYPES)}")
    return dtype


def load_entry_f32(entry: TensorEntry) -> np.ndarray:
    """Read one tensor as a fresh float32 array; the file mapping is gone when this returns."""
    dtype = check_dtype(entry)
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.end - entry.begin != count * dtype.itemsize:
        raise ConvertError(f"{entry.where}: {entry.end - entry.begin} bytes for shape {list(entry.shape)} of {entry.dtype}")
    if count == 0:
        return np.zeros(entry.shape, dtype=np.float32)
    page = mmap.ALLOCATIONGRANULARITY
    map_begin = entry.begin - entry.begin % page
    with open(entry.file, "rb") as f, mmap.mmap(f.fileno(), entry.end - map_begin, offset=map_begin,
                                                access=mmap.ACCESS_READ) as mm:
        raw = np.frombuffer(mm, dtype=dtype, count=count, offset=entry.begin - map_begin)
        if entry.dtype == "BF16":
            out = np.empty(count, dtype=np.uint32)
            np.left_shift(raw, 16, out=out, dtype=np.uint32)
            out = out.view(np.float32)
        else:
            out = raw.astype(np.float32)
        del raw  # the mapping can only close once no view of it is left
    return out.reshape(entry.shape)
