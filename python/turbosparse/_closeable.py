"""The lifetime protocol of the objects that own native memory: close() frees it (and must be
safe to call twice), a `with` block closes at its end and the garbage collector closes what a
program forgot (errors there are swallowed: __del__ may run during interpreter shutdown)."""
from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T", bound="Closeable")


class Closeable:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
