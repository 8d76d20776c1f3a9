"""Serialization used for every message procly sends (``multiprocessing.reduction``).

pickle protocol 5 with cloudpickle for lambdas, closures and ``__main__`` objects, and
large buffers kept out of the pickle stream. See :mod:`procly._serialization`.
"""

from __future__ import annotations

import io
from typing import Any

from ._serialization import OUT_OF_BAND_THRESHOLD as OUT_OF_BAND_THRESHOLD
from ._serialization import PROTOCOL as PROTOCOL
from ._serialization import BufferTransport as BufferTransport
from ._serialization import Pickler as Pickler
from ._serialization import dumps as dumps
from ._serialization import loads as loads
from ._serialization import register as register

__all__ = ["ForkingPickler", "Pickler", "dump", "dumps", "loads", "register"]

HAVE_SEND_HANDLE = False


class ForkingPickler(Pickler):
    """The standard library's name for procly's Pickler, with its classmethods."""

    @classmethod
    def register(cls, type_: type, reduce: Any) -> None:
        register(type_, reduce)

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:  # type: ignore[override]
        return memoryview(dumps(obj))

    loads = staticmethod(loads)


def dump(obj: Any, file: io.IOBase, protocol: int | None = None) -> None:
    """Pickle *obj* to *file* with procly's Pickler."""
    file.write(dumps(obj))  # type: ignore[arg-type]
