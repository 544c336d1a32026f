"""Read a state dict saved by torch.save (zip format) without torch, and without running code.

The pickle inside is loaded by an unpickler that knows a short allow-list of names (the
tensor rebuild functions, storage types, OrderedDict) and refuses every other global, so a
hostile .pt file cannot execute anything. Tensor data is read from the zip only when asked.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    archive: zipfile.ZipFile
    member: str
    kind: str  # key of _STORAGE_DTYPES


@dataclass
class TorchTensor:
    """A tensor of a .pt file, not yet read."""
    storage: _Storage
    offset: int                 # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]     # in elements
    where: str

    def load_f32(self) -> np.ndarray:
        dtype = _STORAGE_DTYPES[self.storage.kind]
        raw = np.frombuffer(self.storage.archive.read(self.storage.member), dtype=dtype)
        count = int(np.prod(self.shape, dtype=np.int64))
        if count == 0:
            return np.zeros(self.shape, dtype=np.float32)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if self.offset < 0 or last >= raw.size:
            raise ConvertError(f"{self.where}: tensor runs past its storage")
        view = np.lib.stride_tricks.as_strided(
            raw[self.offset:], shape=self.shape, strides=[s * dtype.itemsize for s in self.stride], writeable=False)
        if self.storage.kind == "BFloat16Storage":
            return (view.astype(np.uint32) << 16).view(np.float32)
        return view.astype(np.float32)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, backward_hooks, *rest: data
        if module == "torch" and name.endswith("Storage"):
            if name not in _STORAGE_DTYPES:
                raise ConvertError(f"{self.path}: tensors of torch.{name} are not supported "
                                   f"(supported: {', '.join(_STORAGE_DTYPES)})")
            return _StorageType(name)
        raise ConvertError(f"{self.path}: refusing to load {module}.{name} from a pickle "
                           "(only plain state dicts of tensors are read)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise ConvertError(f"{self.path}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise ConvertError(f"{self.path}: storage of unsupported type {storage_type!r}")
        member = f"{self.prefix}data/{key}"
        try:
            self.archive.getinfo(member)
        except KeyError:
            raise ConvertError(f"{self.path}: storage {member} missing from the archive") from None
        return _Storage(self.archive, member, storage_type.name)

    def _rebuild_tensor(self, storage: _Storage, offset: int, size: Any, stride: Any, *_rest: Any) -> TorchTensor:
        return TorchTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride),
                           f"{self.path}")


def read_state_dict(path: Path) -> dict[str, TorchTensor]:
    """Tensors of a torch.save'd dict, by name (their data is read lazily)."""
    if not zipfile.is_zipfile(path):
        raise ConvertError(f"{path}: not a zip-format torch file (legacy torch.save format is not "
                           "supported; re-save it with a recent torch or as safetensors)")
    archive = zipfile.ZipFile(path)
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
        raise ConvertError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
        raise ConvertError(f"{path}: big-endian torch files are not supported")
    with archive.open(pickles[0]) as f:
        obj = _RestrictedUnpickler(f, archive, prefix, path).load()
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, TorchTensor] = {}
    for name, value in obj.items():
        if not isinstance(value, TorchTensor):
            raise ConvertError(f"{path}: entry {name!r} is not a tensor")
        value.where = f"tensor {name!r} in {path}"
        out[str(name)] = value
    return out
