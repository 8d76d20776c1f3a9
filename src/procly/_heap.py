"""Shared memory for small objects: semaphores, Values, Arrays.

Memory comes from *arenas*: anonymous memfd files mapped ``MAP_SHARED``. An arena has
no name, so nothing can be left behind in /dev/shm; the kernel frees it when the last
process that maps it (or holds its descriptor) is gone, SIGKILL included.

* fork: children inherit the mappings.
* spawn / forkserver: an object's arena travels as its descriptor (``procly._handoff``);
  the child maps it once, however many objects of that arena it receives.

The allocator is per process. A forked child starts a fresh heap (new arenas) so that it
never hands out memory its parent also hands out; blocks it inherited stay valid and
are simply never recycled there.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import Any

from . import _handoff

ARENA_SIZE = 1 << 20
ALIGNMENT = 16
#: Semaphores get whole cache lines: processes contending for one lock must not also
#: bounce the line that holds another lock or a shared value (the standard library's
#: named semaphores each have a page of their own).
CACHE_LINE = 64


class Arena:
    """One shared mapping backed by a memfd."""

    def __init__(self, size: int, fd: int | None = None, key: tuple[int, int] | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("procly-heap", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except OSError:
                os.close(fd)
                raise
        self.size = size
        self.fd = fd
        self.key = key or (os.getpid(), id(self))
        self.buffer = mmap.mmap(fd, size)

    def __reduce__(self) -> Any:
        return _rebuild_arena, (self.size, _handoff.share_fd(self.fd, "shared memory"), self.key)

    def __del__(self, _close: Any = os.close) -> None:
        # os.close is bound now: at interpreter exit the os module may be cleared first.
        fd = getattr(self, "fd", None)
        if fd is not None:
            self.fd = None  # type: ignore[assignment]
            try:
                _close(fd)
            except OSError:
                pass


# Arenas received from other processes, so each is mapped once per process.
_received: weakref.WeakValueDictionary[tuple[int, int], Arena] = weakref.WeakValueDictionary()


def _rebuild_arena(size: int, fd: int, key: tuple[int, int]) -> Arena:
    arena = _received.get(key)
    if arena is not None:
        os.close(fd)
        return arena
    arena = Arena(size, fd, key)
    _received[key] = arena
    return arena


class Block:
    """*size* bytes at *offset* in *arena*; returned to the heap when collected."""

    __slots__ = ("arena", "offset", "size", "__weakref__")

    def __init__(self, arena: Arena, offset: int, size: int) -> None:
        self.arena = arena
        self.offset = offset
        self.size = size

    def view(self) -> memoryview:
        """A writable memoryview of exactly this block."""
        return memoryview(self.arena.buffer)[self.offset : self.offset + self.size]

    def __reduce__(self) -> Any:
        return Block, (self.arena, self.offset, self.size)


class Heap:
    """Bump allocation in arenas, with free lists per rounded size."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._arenas: list[Arena] = []
        self._free: dict[int, list[tuple[Arena, int]]] = {}
        self._arena: Arena | None = None
        self._next = 0
        self._live: dict[int, int] = {}  # id(arena) -> blocks in use

    def allocate(self, size: int, alignment: int = ALIGNMENT) -> Block:
        """A zero-filled shared block of at least *size* bytes, at an offset (and of a
        length) that is a multiple of *alignment* (a power of two, at least ALIGNMENT).

        Raises:
            ValueError: *size* is negative.
            OSError: the system has no memory for a new arena.
        """
        if size < 0:
            raise ValueError(f"size {size} is negative")
        alignment = max(ALIGNMENT, alignment)
        rounded = max(alignment, (size + alignment - 1) // alignment * alignment)
        key = rounded if alignment == ALIGNMENT else -rounded  # aligned blocks have a free list of their own
        with self._lock:
            free = self._free.get(key)
            if free:
                arena, offset = free.pop()
                arena.buffer[offset : offset + rounded] = bytes(rounded)
            else:
                start = (self._next + alignment - 1) // alignment * alignment
                if self._arena is None or start + rounded > self._arena.size:
                    self._arena = Arena(max(ARENA_SIZE, rounded))
                    self._arenas.append(self._arena)
                    start = 0
                arena, offset = self._arena, start
                self._next = start + rounded
            self._live[id(arena)] = self._live.get(id(arena), 0) + 1
        block = Block(arena, offset, size)
        weakref.finalize(block, self._release, arena, offset, key)
        return block

    def _release(self, arena: Arena, offset: int, rounded: int) -> None:
        if os.getpid() != self.pid:
            return  # an inherited block in a forked child: the parent owns that memory
        with self._lock:
            self._live[id(arena)] -= 1
            if self._live[id(arena)] == 0 and arena is not self._arena:
                # A full arena nobody uses any more: unmap it (other processes keep
                # their own mappings for as long as they need them).
                del self._live[id(arena)]
                self._arenas.remove(arena)
                for size, entries in list(self._free.items()):
                    self._free[size] = [e for e in entries if e[0] is not arena]
                return
            self._free.setdefault(rounded, []).append((arena, offset))


_heap: Heap | None = None


def allocate(size: int, alignment: int = ALIGNMENT) -> Block:
    """Allocate from this process's heap (created on first use, anew after fork)."""
    global _heap
    heap = _heap
    if heap is None or heap.pid != os.getpid():
        heap = _heap = Heap()
    return heap.allocate(size, alignment)
