"""Reads the key/value metadata of a GGUF file (not the tensors), for Model.metadata and the
chat template. The C loader has validated the file before this runs; this reader still checks
every length against the file size so that a file changed underneath raises, never crashes."""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

MetaValue = Union[int, float, bool, str]

# GGUF value type -> struct format of one scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, buf: "mmap.mmap | bytes", path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"{self.path}: GGUF metadata runs past the end of the file")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: GGUF string runs past the end of the file")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_array(self) -> None:
        elem, count = self.take("<I"), self.take("<Q")
        if elem in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[elem]) * count
            if self.pos > len(self.buf):
                raise ValueError(f"{self.path}: GGUF array runs past the end of the file")
        elif elem == _STRING:
            for _ in range(count):
                n = self.take("<Q")  # read before adding: take() moves pos
                self.pos += n
            if self.pos > len(self.buf):
                raise ValueError(f"{self.path}: GGUF array runs past the end of the file")
        elif elem == _ARRAY:
            for _ in range(count):
                self.skip_array()
        else:
            raise ValueError(f"{self.path}: unknown GGUF array type {elem}")


def read_metadata(path: Union[str, Path]) -> Tuple[Dict[str, MetaValue], List[str]]:
    """(scalar and string keys -> values, names of the array keys) of the GGUF file at path."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, str(path))
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        r.pos = 4
        r.take("<I")  # version
        r.take("<Q")  # tensor count
        n_kv = r.take("<Q")
        values: Dict[str, MetaValue] = {}
        arrays: List[str] = []
        for _ in range(n_kv):
            key = r.string()
            kind = r.take("<I")
            if kind in _SCALARS:
                values[key] = r.take(_SCALARS[kind])
            elif kind == _STRING:
                values[key] = r.string()
            elif kind == _ARRAY:
                r.skip_array()
                arrays.append(key)
            else:
                raise ValueError(f"{path}: key {key!r} has unknown GGUF type {kind}")
        return values, arrays
