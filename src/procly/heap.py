"""Shared memory blocks (``multiprocessing.heap``): see :mod:`procly._heap`."""

from __future__ import annotations

from typing import Any

from . import _heap
from ._heap import Arena as Arena
from ._heap import Block as Block

__all__ = ["Arena", "Block", "BufferWrapper"]


class BufferWrapper:
    """*size* bytes of shared memory that survive pickling to a child being started."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"Size {size} out of range")
        self._block = _heap.allocate(size)
        self._size = size

    def create_memoryview(self) -> memoryview:
        """A writable view of the block."""
        return self._block.view()

    def __reduce__(self) -> Any:
        return _rebuild_wrapper, (self._block, self._size)


def _rebuild_wrapper(block: Block, size: int) -> BufferWrapper:
    wrapper = BufferWrapper.__new__(BufferWrapper)
    wrapper._block = block
    wrapper._size = size
    return wrapper


# --------------------------------------------------------------------------- standard library names

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from ._heap import Heap as Heap  # noqa: E402 - procly's: allocate(size) -> Block (no malloc/free)
from .context import assert_spawning as assert_spawning  # noqa: E402

rebuild_arena = _heap._rebuild_arena


def reduce_arena(a: Arena) -> Any:
    """How *a* pickles: its descriptor travels (to a child being started, or lent)."""
    return a.__reduce__()


__getattr__ = _lazy_submodules(__name__, "reduction", "util")
